"""Delivery as Istio does it, on plain Envoy: the filter arrives over ECDS, its module pulled from a real
registry and checked against its SHA-256, then a new plugin configuration rolls out under load with zero
failed requests. Everything comes from `understudy package --push` and `understudy manifests --flavor envoy`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import (
    ENVOY,
    EXAMPLE_ASSETS,
    UNDERSTUDY,
    WASM,
    admin_get,
    free_port,
    http_request,
    load_asset,
    register_log,
    stop_process,
    tail,
)

LOAD_SECONDS = 8
NEW_ASSET = {
    "name": "rolled out while under load",
    "request": {"path": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Which config is live?"}]}},
    "response": {"body": {"id": "chatcmpl-rollout", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": "The new one."}}]}},
}


def ecds_stats(admin: str) -> dict[str, int]:
    out = {}
    for line in admin_get(admin, "/stats?filter=extension_config_discovery").splitlines():
        m = re.fullmatch(r"extension_config_discovery\.(?:http_filter\.)?understudy\.(\w+): (\d+)", line.strip())
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def wait_for(cond, what: str, timeout: float = 60.0, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{tail(log)}" if log else ""))


def write_ecds(manifests_args: list[str], assets: Path, out: Path, ecds_path: Path) -> None:
    """Regenerates the ECDS file elsewhere, then moves it into the watched directory in one rename."""
    r = subprocess.run([str(UNDERSTUDY), "manifests", *manifests_args, "--assets", str(assets), "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    staged = ecds_path.with_name(".staged-ecds.yaml")
    shutil.copyfile(out / "understudy-ecds.yaml", staged)
    os.replace(staged, ecds_path)


@pytest.fixture
def delivered(request, registry, upstream, tmp_path):
    """A pushed image, and Envoy started from `understudy manifests --flavor envoy` with no filter inline."""
    pushed = subprocess.run([str(UNDERSTUDY), "package", "--wasm", str(WASM), "-o", str(tmp_path / "oci"), "--json",
                             "--plain-http", "--push", f"{registry.host}/understudy/ecds:e2e"],
                            capture_output=True, text=True, timeout=120)
    assert pushed.returncode == 0, pushed.stderr
    assets = tmp_path / "assets-v1"
    shutil.copytree(EXAMPLE_ASSETS, assets)
    watched = tmp_path / "ecds"
    watched.mkdir()
    ecds_path = watched / "understudy-ecds.yaml"
    port = free_port()
    args = ["--env", "e2e", "--image", f"{registry.host}/understudy/ecds:e2e", "--wasm", str(WASM), "--plain-http",
            "--flavor", "envoy", "--listen", "127.0.0.1", "--port", str(port), "--upstream", upstream.url,
            "--ecds-path", str(ecds_path)]
    write_ecds(args, assets, tmp_path / "gen-v1", ecds_path)
    boot = yaml.safe_load((tmp_path / "gen-v1" / "envoy.yaml").read_text())
    boot["admin"]["address"]["socket_address"]["port_value"] = 0
    (tmp_path / "envoy.json").write_text(json.dumps(boot))
    log = tmp_path / "envoy.log"
    register_log(request, "envoy (ecds)", log)
    with open(log, "wb") as f:
        proc = subprocess.Popen([str(ENVOY), "-c", str(tmp_path / "envoy.json"), "--concurrency", "2",
                                 "--admin-address-path", str(tmp_path / "admin"), "--disable-hot-restart",
                                 "--log-level", "info"], stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        admin = wait_for(lambda: (tmp_path / "admin").exists() and (tmp_path / "admin").read_text().strip(),
                         "the admin address", log=log)
        wait_for(lambda: ecds_stats(admin).get("config_reload", 0) >= 1, "the filter over ECDS", log=log)
        wait_for(lambda: admin_get(admin, "/ready").strip() == "LIVE", "Envoy ready", log=log)
        yield {"admin": admin, "port": port, "args": args, "assets": assets, "ecds": ecds_path, "tmp": tmp_path,
               "log": log, "pushed": json.loads(pushed.stdout)}
    finally:
        stop_process(proc)


def test_filter_arrives_over_ecds_from_the_registry_and_serves(delivered, registry, upstream):
    asset = load_asset("openai/chat-capital.json")
    r = http_request(delivered["port"], "POST", "/v1/chat/completions", asset["request"]["body"])
    assert r.status == 200 and r.header("x-understudy") == "hit", (r.status, r.headers, r.body[:300])
    # The module came from the registry's blob URL (the only place it exists for this Envoy).
    ecds = yaml.safe_load(delivered["ecds"].read_text())
    uri = ecds["resources"][0]["typed_config"]["config"]["vm_config"]["code"]["remote"]["http_uri"]["uri"]
    assert uri == f"http://{registry.host}/v2/understudy/ecds/blobs/sha256:{delivered['pushed']['module']['sha256']}"
    stats = admin_get(delivered["admin"], "/stats?filter=cluster.understudy_registry.upstream_rq_2xx")
    assert re.search(r"upstream_rq_2xx: [1-9]", stats), stats
    before = upstream.snapshot()
    r = http_request(delivered["port"], "POST", "/v1/chat/completions", NEW_ASSET["request"]["body"])
    assert r.status == 404 and r.header("x-understudy") == "miss"
    upstream.assert_untouched_since(before)


def test_new_plugin_config_rolls_out_under_load_with_zero_failed_requests(delivered, upstream, tmp_path):
    hey = shutil.which("hey")
    assert hey, "hey is missing: run `bash scripts/install-load-tools.sh`"
    body = tmp_path / "body.json"
    body.write_text(json.dumps(load_asset("openai/chat-capital.json")["request"]["body"]))
    before = ecds_stats(delivered["admin"])
    load = subprocess.Popen([hey, "-z", f"{LOAD_SECONDS}s", "-c", "8", "-m", "POST", "-T", "application/json",
                             "-D", str(body), f"http://127.0.0.1:{delivered['port']}/v1/chat/completions"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(LOAD_SECONDS / 3)
    v2 = tmp_path / "assets-v2"
    shutil.copytree(delivered["assets"], v2)
    (v2 / "rollout.json").write_text(json.dumps(NEW_ASSET))
    write_ecds(delivered["args"], v2, tmp_path / "gen-v2", delivered["ecds"])
    wait_for(lambda: ecds_stats(delivered["admin"]).get("config_reload", 0) > before.get("config_reload", 0),
             "the new configuration", timeout=LOAD_SECONDS, log=delivered["log"])
    reloaded_during_load = load.poll() is None
    out, _ = load.communicate(timeout=LOAD_SECONDS * 10)
    assert reloaded_during_load, "the configuration changed after the load ended: not a test under load"
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    assert codes and set(codes) == {200}, out
    assert "Error distribution" not in out, out
    assert sum(codes.values()) > 100, out
    # The new configuration is in effect on every worker: the new asset hits, the old one still does.
    for _ in range(8):
        r = http_request(delivered["port"], "POST", "/v1/chat/completions", NEW_ASSET["request"]["body"])
        assert r.status == 200 and r.header("x-understudy") == "hit", (r.status, r.headers, r.body[:300])
        assert r.json()["choices"][0]["message"]["content"] == "The new one."
    assert ecds_stats(delivered["admin"]).get("config_fail", 0) == before.get("config_fail", 0)
