"""Envoy configuration: generated and shipped bootstraps validate; a missing buffer filter is loud."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (
    ENVOY,
    ROOT,
    UNDERSTUDY,
    admin_get,
    free_port,
    http_request,
    load_asset,
    parse_stats,
    print_config,
    register_log,
    stop_process,
    tail,
)

SHIPPED = sorted((ROOT / "envoy").glob("*.yaml")) + sorted((ROOT / "envoy").glob("*.yml"))


def validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "--log-level", "warning"],
        capture_output=True, text=True, timeout=120, cwd=str(ROOT),
    )


def http_filter_names(boot: dict) -> list[str]:
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return [f["name"] for f in hcm["http_filters"]]


@pytest.mark.parametrize(
    "extra",
    [[], ["--upstream", "https://llm-gateway.example.com:8443/openai-proxy"], ["--upstream", "http://127.0.0.1:9"],
     ["--on-miss", "passthrough", "--max-body-bytes", "1048576"],
     ["--upstream", "http://127.0.0.1:9", "--upstream-anthropic", "https://anthropic.internal", "--upstream-azure",
      "https://res.openai.azure.com"]],
    ids=["default-upstreams", "https-upstream", "http-upstream", "passthrough", "per-provider"],
)
def test_print_config_bootstrap_validates(tmp_path, assets_dir, extra):
    out = tmp_path / "bootstrap.json"
    boot = print_config(out, assets_dir, *extra)
    assert http_filter_names(boot) == [
        "envoy.filters.http.decompressor", "understudy", "envoy.filters.http.buffer", "envoy.filters.http.router"
    ]
    clusters = {c["name"]: c for c in boot["static_resources"]["clusters"]}
    upstream = extra[extra.index("--upstream") + 1] if "--upstream" in extra else None
    own = {"upstream-" + p.replace(".", "-") for p, f in (("anthropic", "--upstream-anthropic"),
                                                          ("azure.ai.openai", "--upstream-azure")) if f in extra}
    if upstream is None:
        # Every API's public endpoint (Azure has none: its calls get a 502 naming --upstream-azure).
        assert set(clusters) == {"upstream", "upstream-openai", "upstream-anthropic", "upstream-gcp-gemini",
                                 "upstream-gcp-vertex_ai", "upstream-aws-bedrock", "upstream-ollama"}
        assert all("transport_socket" in c for n, c in clusters.items() if n != "upstream-ollama")
    else:
        assert set(clusters) == {"upstream"} | own
        assert ("transport_socket" in clusters["upstream"]) == upstream.startswith("https://")
    r = validate(out)
    assert r.returncode == 0, f"envoy --mode validate failed for {extra}:\n{r.stdout}\n{r.stderr}"


@pytest.mark.skipif(not SHIPPED, reason="no envoy/*.yaml files in the repo yet")
@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_envoy_yaml_validates(path):
    r = validate(path)
    assert r.returncode == 0, f"envoy --mode validate -c {path} failed:\n{r.stdout}\n{r.stderr}"


# ---------------------------------------------------------------------------------------------------
# Misconfiguration: no buffer filter between understudy and the router
# ---------------------------------------------------------------------------------------------------


def wait_envoy_ready(proc, admin: str, port: int, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"envoy exited with {proc.returncode}:\n{tail(log)}")
        try:
            if admin_get(admin, "/ready", timeout=2).strip() == "LIVE":
                listeners = json.loads(admin_get(admin, "/listeners?format=json", timeout=2))
                ports = [
                    l["local_address"]["socket_address"]["port_value"] for l in listeners.get("listener_statuses", [])
                ]
                if port in ports:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"envoy not ready within {timeout}s:\n{tail(log)}")


def test_missing_buffer_filter_is_reported_as_misconfigured(request, tmp_path, assets_dir, upstream):
    port, admin_port = free_port(), free_port()
    while admin_port == port:
        admin_port = free_port()
    cfg = tmp_path / "bootstrap.json"
    boot = print_config(cfg, assets_dir, "--upstream", upstream.url, port=port, admin_port=admin_port)
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.buffer"]
    assert http_filter_names(boot) == ["envoy.filters.http.decompressor", "understudy", "envoy.filters.http.router"]
    cfg.write_text(json.dumps(boot))

    log = tmp_path / "envoy-misconfigured.log"
    register_log(request, "envoy-without-buffer", log)
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [str(ENVOY), "-c", str(cfg), "--disable-hot-restart", "--concurrency", "1", "--log-level", "info",
             "--admin-address-path", str(tmp_path / "admin-address")],
            stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, cwd=str(tmp_path), start_new_session=True,
        )
    admin = f"127.0.0.1:{admin_port}"
    try:
        wait_envoy_ready(proc, admin, port, log)

        def counters() -> dict[str, int]:
            return parse_stats(admin_get(admin, "/stats?filter=understudy"))

        assert counters().get("misconfigured") == 0, counters()

        # A pooled upstream connection, so the router can start the upstream request immediately.
        r = http_request(port, "GET", "/v1/models")
        assert r.status == 200
        upstream.wait_for_requests(1)
        before = upstream.snapshot()

        body = {**load_asset("openai/chat-capital.json")["request"]["body"], "messages": [{"role": "user", "content": "leak?"}]}
        r = http_request(port, "POST", "/v1/chat/completions", body)
        time.sleep(0.5)
        after = upstream.snapshot()
        c = counters()
        observed = (
            f"status={r.status} x-understudy={r.header('x-understudy')} counters={c} "
            f"upstream(bytes,conns,reqs) before={before} after={after}"
        )
        print(observed)  # shown with -rP
        assert c.get("misconfigured", 0) > 0, f"misconfiguration was not reported: {observed}"
        assert "MISCONFIGURED" in log.read_text(errors="replace"), f"no MISCONFIGURED log line: {observed}"
        # The whole point of the check: without the buffer, the upstream did see the request (its headers).
        assert after[0] > before[0], f"expected the headers to leak upstream without the buffer: {observed}"
        leaked = upstream.requests[-1]
        assert (leaked.method, leaked.path) == ("POST", "/v1/chat/completions"), observed
        print(f"leaked upstream: complete={leaked.complete} body={leaked.body!r}")
    finally:
        stop_process(proc)
