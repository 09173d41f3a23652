"""Failing closed, and configuration safety, through real Envoy.

1. A VM that traps (the test-only `fault-injection` build, `x-understudy-fault: panic`) under `understudy up`'s
   `failure_policy: FAIL_RELOAD`: every request during the back-off gets a 5xx and nothing reaches the upstream,
   then Envoy recreates the VM and hits work again. FAIL_CLOSED and FAIL_OPEN are shown for contrast.
2. A plugin configuration the filter refuses: Envoy doesn't start (`envoy -c` and `envoy --mode validate` fail),
   naming the problem.
3. A bad listener update delivered by LDS is rejected; the running configuration keeps serving; a good update
   applies.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from conftest import (
    ENVOY,
    ROOT,
    UNDERSTUDY,
    admin_get,
    free_port,
    http_request,
    load_asset,
    print_config,
    register_log,
    stop_process,
    tail,
    write_result,
)

FAULT_WASM = ROOT / "target" / "fault" / "wasm32-wasip1" / "release" / "understudy.wasm"
CHAT = "/v1/chat/completions"
CAPITAL = load_asset("openai/chat-capital.json")["request"]["body"]
CAPITAL_MISS = {**CAPITAL, "temperature": 1}
HAIKU = load_asset("anthropic/messages-haiku.json")["request"]["body"]
PANIC = {"x-understudy-fault": "panic"}

needs_fault_wasm = pytest.mark.skipif(not FAULT_WASM.exists(), reason=f"{FAULT_WASM} is missing: run scripts/setup.sh")


# --------------------------------------------------------------------------------------------------
# Helpers: bootstraps from `understudy up --print-config`, raw Envoy processes, stats
# --------------------------------------------------------------------------------------------------


def two_free_ports() -> tuple[int, int]:
    port, admin = free_port(), free_port()
    while admin == port:
        admin = free_port()
    return port, admin


def hcm_of(listener: dict) -> dict:
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def wasm_config(listener: dict) -> dict:
    """The understudy wasm filter's PluginConfig inside a listener."""
    (f,) = [f for f in hcm_of(listener)["http_filters"] if f["name"] == "understudy"]
    return f["typed_config"]["config"]


def edit_plugin_config(listener: dict, edit: Callable[[str], str]) -> None:
    """Rewrites the plugin configuration (the JSON string the filter gets) of a listener in place."""
    cfg = wasm_config(listener)["configuration"]
    cfg["value"] = edit(cfg["value"])


def edit_json(fn: Callable[[dict], None]) -> Callable[[str], str]:
    def edit(text: str) -> str:
        v = json.loads(text)
        fn(v)
        return json.dumps(v)

    return edit


def start_envoy(cfg: Path, log: Path, *extra: str) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen(
            [str(ENVOY), "-c", str(cfg), "--disable-hot-restart", "--concurrency", "1", "--log-level", "info", *extra],
            stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, cwd=str(cfg.parent), start_new_session=True,
        )


def wait_envoy_ready(proc: subprocess.Popen, admin: str, port: int, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"envoy exited with {proc.returncode}:\n{tail(log)}")
        try:
            if admin_get(admin, "/ready", timeout=2).strip() == "LIVE":
                listeners = json.loads(admin_get(admin, "/listeners?format=json", timeout=2))
                ports = [l["local_address"]["socket_address"]["port_value"] for l in listeners.get("listener_statuses", [])]
                if port in ports:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"envoy not ready within {timeout}s:\n{tail(log)}")


def envoy_stats(admin: str, prefix: str = "") -> dict[str, str]:
    out = {}
    for line in admin_get(admin, "/stats").splitlines():
        k, sep, v = line.partition(": ")
        if sep and k.startswith(prefix):
            out[k] = v.strip()
    return out


def counter(admin: str, name: str) -> int:
    return int(envoy_stats(admin, name).get(name, "0"))


def is_hit(r) -> bool:
    return r.status == 200 and r.header("x-understudy") == "hit"


def describe(r) -> str:
    return f"{r.status} x-understudy={r.header('x-understudy')} headers={r.headers} body={r.body[:120]!r}"


# --------------------------------------------------------------------------------------------------
# 1. The VM traps
# --------------------------------------------------------------------------------------------------


def later_requests(post: Callable, request: Callable) -> list[tuple[str, Callable[[], object]]]:
    """Every kind of request on an LLM route, as sent after a crash. (Non-LLM routes don't run the filter at
    all, so a crash doesn't concern them: `test_vm_crash_fails_closed_then_recovers_by_itself` checks that.)"""
    return [
        ("hit", lambda: post(CHAT, CAPITAL)),
        ("miss", lambda: post(CHAT, CAPITAL_MISS)),
        ("anthropic hit", lambda: post("/v1/messages", HAIKU)),
        ("bad request", lambda: post(CHAT, b"{oops")),
        ("PUT on an LLM path", lambda: request("PUT", CHAT, CAPITAL)),
    ]


def assert_closed(r, name: str) -> None:
    """Envoy's own fail-closed answer: a 503 with an empty body, not Understudy's (no x-understudy)."""
    assert r.status == 503 and r.body == b"" and r.header("x-understudy") is None, f"{name}: {describe(r)}"


def crash_and_recover(post: Callable, request: Callable, timeout: float = 60) -> tuple[float, int, list[str]]:
    """Traps the VM, sends every kind of request during the back-off (all must fail closed), then polls with
    the hit until it is a hit again. Returns the seconds from the crash to the first hit, the number of 503s
    while waiting, and what was sent during the back-off."""
    t0 = time.monotonic()
    crash = post(CHAT, CAPITAL, headers=PANIC)
    assert_closed(crash, "the trapping request")
    during = []
    for name, call in later_requests(post, request):
        r = call()
        # Sent right after the crash: inside the back-off (1 s) unless the machine stalls; then a hit is fine.
        if is_hit(r):
            break
        assert_closed(r, f"{name} during the back-off")
        during.append(name)
    closed = 0
    while True:
        r = post(CHAT, CAPITAL)
        if is_hit(r):
            return time.monotonic() - t0, closed, during
        assert_closed(r, "the hit while the VM is down")
        closed += 1
        assert time.monotonic() - t0 < timeout, f"the VM was not recreated within {timeout}s ({closed} x 503)"
        time.sleep(0.05)


@needs_fault_wasm
def test_vm_crash_fails_closed_then_recovers_by_itself(understudy_factory, assets_dir, upstream):
    """`understudy up` uses FAIL_RELOAD: a VM that traps (the test-only fault build, `x-understudy-fault: panic`)
    answers 503 with nothing upstream during Envoy's back-off, then Envoy recreates it and hits work again, twice
    in a row. The time to recover goes to target/e2e-results/recovery.md."""
    u = understudy_factory(assets_dir, name="fault-fail-reload", extra=["--wasm", str(FAULT_WASM)])
    assert '"failure_policy": "FAIL_RELOAD"' in admin_get(u.admin, "/config_dump"), "understudy up uses FAIL_RELOAD"

    # A pooled upstream connection exists, so anything forwarded after the crash would arrive at once.
    r = u.request("GET", "/v1/models")
    assert r.status == 200 and r.header("x-fake-upstream") == "1"
    upstream.wait_for_requests(1)
    before = upstream.snapshot()
    assert is_hit(u.post(CHAT, CAPITAL))

    rounds = []
    for _ in range(2):
        rounds.append(crash_and_recover(u.post, u.request))
    upstream.assert_untouched_since(before, settle=0.5)

    # Non-LLM routes never run the filter (route scoping): a trapped VM doesn't take them down.
    assert_closed(u.post(CHAT, CAPITAL, headers=PANIC), "the trapping request")
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/files")):
        r = u.request(method, path, b"{}" if method == "POST" else None)
        assert r.status == 200 and r.header("x-fake-upstream") == "1", f"{method} {path}: {describe(r)}"

    log = u.log_path.read_text(errors="replace")
    assert "panicked at" in log and "fault injected by x-understudy-fault" in log, tail(u.log_path)
    assert u.proc.poll() is None and admin_get(u.admin, "/ready").strip() == "LIVE", "Envoy itself went down"
    s = envoy_stats(u.admin)
    wasm = {k: v for k, v in s.items() if k.startswith("wasm.understudy.")}
    print(f"FAIL_RELOAD rounds (seconds to recover, 503s meanwhile, sent during the back-off): {rounds}; {wasm}")
    assert int(s["wasm.understudy.vm_reload_success"]) >= 2, wasm
    for seconds, _, during in rounds:
        assert during, "nothing was sent during the back-off"
        assert seconds < 30, rounds
    lines = [
        "# Recovery from a trapped VM (FAIL_RELOAD)",
        "",
        "Written by `tests/e2e/test_failure.py::test_vm_crash_fails_closed_then_recovers_by_itself`: `understudy up",
        "--workers 1` with the fault-injection build; `x-understudy-fault: panic` traps the VM, every request until",
        "the VM is recreated gets Envoy's 503 (empty body), and the fake upstream receives zero bytes throughout.",
        "Back-off: `reload_config.backoff` base 1 s, max 10 s.",
        "",
        "| crash | seconds to the first hit again | 503s while polling every 50 ms | sent during the back-off (all 503) |",
        "|---:|---:|---:|---|",
    ]
    for i, (seconds, closed, during) in enumerate(rounds, start=1):
        lines.append(f"| {i} | {seconds:.2f} | {closed} | {', '.join(during)} |")
    lines += ["", f"Envoy stats after: {wasm}", f"Upstream bytes received during the test: 0", ""]
    write_result("recovery.md", "\n".join(lines))


@needs_fault_wasm
@pytest.mark.slow
@pytest.mark.parametrize("policy", ["FAIL_CLOSED", "FAIL_OPEN"])
def test_other_failure_policies_for_contrast(request, tmp_path, assets_dir, upstream, policy):
    """FAIL_CLOSED never recreates the VM (safe, but LLM traffic stays down until Envoy reloads the filter);
    FAIL_OPEN skips the dead filter, so a request that was a hit goes to the live upstream: why `understudy up`
    uses FAIL_RELOAD."""
    port, admin_port = two_free_ports()
    cfg = tmp_path / "bootstrap.json"
    boot = print_config(cfg, assets_dir, "--upstream", upstream.url, "--wasm", str(FAULT_WASM), port=port, admin_port=admin_port)
    listener = boot["static_resources"]["listeners"][0]
    assert wasm_config(listener)["failure_policy"] == "FAIL_RELOAD"
    wasm_config(listener)["failure_policy"] = policy
    cfg.write_text(json.dumps(boot))
    log = tmp_path / "envoy.log"
    register_log(request, f"envoy-{policy}", log)
    admin = f"127.0.0.1:{admin_port}"
    proc = start_envoy(cfg, log)
    try:
        wait_envoy_ready(proc, admin, port, log)
        before = upstream.snapshot()
        assert is_hit(http_request(port, "POST", CHAT, CAPITAL))
        crash = http_request(port, "POST", CHAT, CAPITAL, PANIC)
        assert crash.status == 503, describe(crash)
        if policy == "FAIL_OPEN":
            r = http_request(port, "POST", CHAT, CAPITAL)
            print(f"FAIL_OPEN, a recorded request after the crash: {describe(r)}")
            assert r.status == 200 and r.header("x-fake-upstream") == "1" and r.header("x-understudy") is None
            upstream.wait_for_requests(1)
            assert upstream.requests[-1].path == CHAT, "the live upstream was called"
            return
        post = lambda path, body=None, headers=None: http_request(port, "POST", path, body, headers)  # noqa: E731
        req = lambda method, path, body=None: http_request(port, method, path, body)  # noqa: E731
        # Twice, a few seconds apart (well past FAIL_RELOAD's back-off): still down.
        for attempt in range(2):
            for name, call in later_requests(post, req):
                assert_closed(call(), f"{name} after the crash")
            if attempt == 0:
                time.sleep(3)
        upstream.assert_untouched_since(before)
        s = envoy_stats(admin)
        assert all(s[f"wasm.understudy.{k}"] == "0" for k in ("vm_reload", "vm_reload_success", "vm_reload_failure"))
        assert s["wasmcustom.understudy.requests"] == "1" and s["wasmcustom.understudy.hits"] == "1"
    finally:
        stop_process(proc)


# --------------------------------------------------------------------------------------------------
# 2. The VM refuses its configuration: Envoy doesn't start
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_bootstrap(tmp_path_factory, assets_dir) -> dict:
    d = tmp_path_factory.mktemp("failure-bootstrap")
    port, admin_port = two_free_ports()
    return print_config(d / "bootstrap.json", assets_dir, "--upstream", "http://127.0.0.1:9", port=port, admin_port=admin_port)


def drop_sha_and(fn: Callable[[dict], None]) -> Callable[[dict], None]:
    def edit(pc: dict) -> None:
        del pc["bundle"]["sha256"]
        fn(pc)

    return edit


def set_first(path: list[str], value) -> Callable[[dict], None]:
    def edit(pc: dict) -> None:
        v = pc["bundle"]["assets"][0]
        for k in path[:-1]:
            v = v[k]
        v[path[-1]] = value

    return edit


BAD_CONFIGS: dict[str, tuple[Callable[[str], str], str]] = {
    "unknown-field": (edit_json(lambda pc: pc.update(on_mis="passthrough")),
                      "invalid plugin configuration: plugin configuration: on_mis: unknown field `on_mis`"),
    "bad-on-miss": (edit_json(lambda pc: pc.update(on_miss="sometimes")),
                    "invalid plugin configuration: plugin configuration: on_miss: unknown variant `sometimes`"),
    "edited-response": (edit_json(set_first(["asset", "response", "body", "id"], "chatcmpl-forged")),
                        "invalid plugin configuration: bundle.sha256: the assets do not match"),
    # Deleting the content hash does not switch the check off: the filter loads sealed bundles only.
    "wrong-key-unsealed": (edit_json(drop_sha_and(set_first(["key"], "f" * 64))),
                           "invalid plugin configuration: bundle.sha256: missing"),
    "truncated": (lambda text: text[: len(text) // 2], "invalid plugin configuration: plugin configuration:"),
    "empty": (lambda text: "", "understudy: no plugin configuration"),
}


@pytest.mark.parametrize("name", BAD_CONFIGS, ids=list(BAD_CONFIGS))
def test_bad_plugin_configuration_refuses_to_start(request, tmp_path, good_bootstrap, name):
    edit, message = BAD_CONFIGS[name]
    boot = copy.deepcopy(good_bootstrap)
    port, admin_port = two_free_ports()
    boot["admin"]["address"]["socket_address"]["port_value"] = admin_port
    listener = boot["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = port
    edit_plugin_config(listener, edit)
    cfg = tmp_path / "bootstrap.json"
    cfg.write_text(json.dumps(boot))
    log, vlog = tmp_path / "envoy.log", tmp_path / "validate.log"
    register_log(request, "envoy", log)
    register_log(request, "envoy --mode validate", vlog)

    # Both at once (two cores): the real start and the validation.
    proc = start_envoy(cfg, log)
    with open(vlog, "wb") as f:
        vproc = subprocess.Popen(
            [str(ENVOY), "--mode", "validate", "-c", str(cfg), "--disable-hot-restart", "--log-level", "warning"],
            stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, cwd=str(tmp_path), start_new_session=True,
        )
    try:
        try:
            rc = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"Envoy kept running with a bad plugin configuration ({name}):\n{tail(log)}")
        vrc = vproc.wait(timeout=90)
    finally:
        stop_process(proc)
        stop_process(vproc)
    text, vtext = log.read_text(errors="replace"), vlog.read_text(errors="replace")
    assert rc != 0, f"envoy exited with 0:\n{tail(log)}"
    assert message in text, f"no {message!r} in the log:\n{tail(log)}"
    assert "Plugin configured to fail closed failed to load" in text
    assert "Unable to create Wasm plugin understudy" in text
    assert vrc != 0, f"envoy --mode validate accepted it:\n{vtext[-3000:]}"
    assert message in vtext, f"no {message!r} in the validate output:\n{vtext[-3000:]}"


def test_unsealed_edited_bundle_is_refused(tmp_path, good_bootstrap):
    boot = copy.deepcopy(good_bootstrap)
    listener = boot["static_resources"]["listeners"][0]
    edit_plugin_config(listener, edit_json(drop_sha_and(set_first(["asset", "response", "body", "id"], "chatcmpl-forged"))))
    cfg = tmp_path / "bootstrap.json"
    cfg.write_text(json.dumps(boot))
    r = subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(cfg), "--disable-hot-restart",
                        "--log-level", "warning"], capture_output=True, text=True, timeout=90, cwd=str(tmp_path))
    assert r.returncode != 0, "an unsealed bundle with an edited response validates"


# --------------------------------------------------------------------------------------------------
# 3. Updates through LDS: a bad one is rejected, the old configuration keeps serving
# --------------------------------------------------------------------------------------------------

NEW_ASSET = {
    "name": "lds: added by an update",
    "request": {"path": CHAT, "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Added via LDS?"}]}},
    "response": {"body": {"id": "chatcmpl-lds-update", "object": "chat.completion", "created": 1764403500,
                          "model": "gpt-4o-mini", "choices": []}},
}


class LdsEnvoy:
    """Envoy whose listener comes from a watched LDS file (clusters static)."""

    def __init__(self, root: Path, proc: subprocess.Popen, port: int, admin: str, lds: Path, log: Path):
        self.root, self.proc, self.port, self.admin, self.lds, self.log = root, proc, port, admin, lds, log
        self.version = 0

    def publish(self, listener: dict) -> int:
        """Atomically replaces the LDS file (write a temp file in the watched directory, rename over)."""
        self.version += 1
        doc = {"version_info": str(self.version),
               "resources": [{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **listener}]}
        tmp = self.lds.parent / f".lds-{self.version}.tmp"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.lds)
        return self.version

    def lds_stats(self) -> dict[str, str]:
        return envoy_stats(self.admin, "listener_manager.")

    def wait_attempts(self, n: int, timeout: float = 30) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            s = self.lds_stats()
            if int(s["listener_manager.lds.update_attempt"]) >= n:
                return s
            assert time.monotonic() < deadline, f"LDS update {n} not seen within {timeout}s: {s}\n{tail(self.log)}"
            time.sleep(0.05)

    def post(self, body) -> object:
        return http_request(self.port, "POST", CHAT, body)


@pytest.fixture(scope="module")
def lds_envoy(tmp_path_factory, assets_dir, upstream, log_dir):
    root = tmp_path_factory.mktemp("lds")
    port, admin_port = two_free_ports()
    boot = print_config(root / "bootstrap-static.json", assets_dir, "--upstream", upstream.url, port=port, admin_port=admin_port)
    listener = boot["static_resources"].pop("listeners")[0]
    xds = root / "xds"
    xds.mkdir()
    lds = xds / "lds.json"
    boot["node"] = {"id": "understudy-e2e", "cluster": "understudy-e2e"}
    boot["dynamic_resources"] = {"lds_config": {
        "resource_api_version": "V3",
        "path_config_source": {"path": str(lds), "watched_directory": {"path": str(xds)}},
    }}
    cfg = root / "bootstrap.json"
    cfg.write_text(json.dumps(boot))
    log = log_dir / "envoy-lds.log"
    e = LdsEnvoy(root, None, port, f"127.0.0.1:{admin_port}", lds, log)  # type: ignore[arg-type]
    e.publish(listener)
    e.proc = start_envoy(cfg, log)
    try:
        wait_envoy_ready(e.proc, e.admin, port, log)
    except BaseException:
        stop_process(e.proc)
        raise
    e.listener = listener  # type: ignore[attr-defined]
    yield e
    stop_process(e.proc)


def test_bad_lds_update_is_rejected_and_old_config_keeps_serving(request, lds_envoy, assets_dir, upstream, tmp_path):
    e = lds_envoy
    register_log(request, "envoy-lds", e.log)
    new_body = NEW_ASSET["request"]["body"]

    r = e.post(CAPITAL)
    assert is_hit(r), describe(r)
    assert e.post(new_body).status == 404
    r = http_request(e.port, "GET", "/v1/models")  # a pooled upstream connection: leaks would be immediate
    assert r.status == 200
    upstream.wait_for_requests(1)
    before = upstream.snapshot()
    s0 = e.lds_stats()
    assert s0["listener_manager.lds.update_success"] == "1" and s0["listener_manager.lds.update_rejected"] == "0", s0

    def missing_wasm(listener: dict) -> None:
        wasm_config(listener)["vm_config"]["code"]["local"]["filename"] = str(tmp_path / "no-such.wasm")

    bad_updates: dict[str, Callable[[dict], None]] = {
        "tampered sha256": lambda l: edit_plugin_config(l, edit_json(lambda pc: pc["bundle"].update(sha256="0" * 64))),
        "unknown field": lambda l: edit_plugin_config(l, edit_json(lambda pc: pc.update(on_mis="passthrough"))),
        "missing wasm file": missing_wasm,
    }
    attempts = int(s0["listener_manager.lds.update_attempt"])
    for i, (name, edit) in enumerate(bad_updates.items(), start=1):
        bad = copy.deepcopy(e.listener)
        edit(bad)
        e.publish(bad)
        attempts += 1
        s = e.wait_attempts(attempts)
        print(f"bad update ({name}): { {k.split('.', 1)[1]: v for k, v in s.items() if 'lds.' in k or 'listener' in k} }")
        assert s["listener_manager.lds.update_rejected"] == str(i), s
        assert s["listener_manager.lds.update_success"] == "1", s
        assert s["listener_manager.lds.version_text"] == '"1"', s  # still the first version
        assert s["listener_manager.listener_modified"] == "0" and s["listener_manager.total_listeners_warming"] == "0", s
        assert s["listener_manager.total_listeners_active"] == "1", s
        # The old configuration keeps answering: hits, strict misses; nothing upstream.
        r = e.post(CAPITAL)
        assert is_hit(r), f"after the bad update ({name}): {describe(r)}"
        r = e.post(CAPITAL_MISS)
        assert r.status == 404 and r.header("x-understudy") == "miss", describe(r)
    log = e.log.read_text(errors="replace")
    assert "lds: listener 'understudy' config rejected: Unable to create Wasm plugin understudy" in log, tail(e.log)
    assert "understudy: invalid plugin configuration: bundle.sha256" in log
    assert "understudy: invalid plugin configuration: plugin configuration: on_mis: unknown field" in log
    assert "config rejected: Invalid path: " in log  # the missing wasm file
    upstream.assert_untouched_since(before)

    # A good update: the same assets plus one.
    assets2 = tmp_path / "assets"
    shutil.copytree(assets_dir, assets2)
    (assets2 / "lds-new.json").write_text(json.dumps(NEW_ASSET))
    port, admin_port = e.port, int(e.admin.rsplit(":", 1)[1])
    boot2 = print_config(tmp_path / "bootstrap2.json", assets2, "--upstream", upstream.url, port=port, admin_port=admin_port)
    e.publish(boot2["static_resources"]["listeners"][0])
    attempts += 1
    s = e.wait_attempts(attempts)
    print(f"good update: { {k.split('.', 1)[1]: v for k, v in s.items() if 'lds.' in k or 'listener' in k} }")
    assert s["listener_manager.lds.update_success"] == "2" and s["listener_manager.lds.version_text"] == f'"{e.version}"', s
    assert int(s["listener_manager.listener_modified"]) + int(s["listener_manager.listener_in_place_updated"]) >= 1, s
    deadline = time.monotonic() + 10  # workers pick the new filter chain up right away; allow for slow machines
    while True:
        r = e.post(new_body)
        if is_hit(r) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert is_hit(r) and r.json()["object"] == "chat.completion", describe(r)
    assert is_hit(e.post(CAPITAL))
    upstream.assert_untouched_since(before)
