"""Per-environment policy through real Envoy (docs/policy.md): the environment comes from node metadata in
its order of precedence, `live` leaves traffic alone, `live_sample` picks the same requests across restarts,
parity mode detects each kind of drift against a fake live upstream and reports it to the collector, and the
per-request override needs its secret."""

from __future__ import annotations

import hashlib
import http.server
import json
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import ENVOY, UNDERSTUDY, admin_get, register_log, start_understudy

SECRET = "e2e-override-secret"

POLICY = {
    "environments": {
        "prod": {"mode": "live"},
        "staging": {"mode": "parity"},
        "ci": {"mode": "replay"},
        "sampled": {"mode": "replay", "live_sample": 0.3},
    },
    "default": {"mode": "replay", "on_miss": "error"},
    "override": {"secret_sha256": hashlib.sha256(SECRET.encode()).hexdigest()},
}

CHAT_ANSWER = {
    "id": "chatcmpl-recorded", "object": "chat.completion", "created": 1764403300, "model": "gpt-4o-mini",
    "system_fingerprint": "fp_recorded",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Recorded answer."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
}
TOOL_ANSWER = {
    "id": "chatcmpl-tool", "object": "chat.completion", "created": 1764403300, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
}
EMBED_ANSWER = {"object": "list", "model": "text-embedding-3-small",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.6, 0.8, 0.0]}],
                "usage": {"prompt_tokens": 2, "total_tokens": 2}}


def chat_request(text: str) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


def embed_request() -> dict:
    return {"model": "text-embedding-3-small", "input": "case dim"}


def write_asset(d: Path, name: str, path: str, request: dict, answer: dict) -> None:
    doc = {"name": name, "request": {"path": path, "body": request},
           "response": {"status": 200, "headers": {"content-type": "application/json"}, "body": answer}}
    (d / f"{name}.json").write_text(json.dumps(doc))


# What the live upstream answers for each parity case, and the drift the comparison must name.
CASES = {
    "match": None,
    "schema": "missing",
    "type": "type",
    "usage": "usage_missing",
    "status": "status_class",
    "tool": "tool_name",
    "dim": "embedding_dimension",
}


def live_answer(case: str) -> tuple[int, dict]:
    a = json.loads(json.dumps(TOOL_ANSWER if case == "tool" else EMBED_ANSWER if case == "dim" else CHAT_ANSWER))
    # Volatile fields always differ: they must never count.
    if "id" in a:
        a["id"], a["created"], a["system_fingerprint"] = "chatcmpl-live", 1799999999, "fp_live"
    if case == "schema":
        a["results"] = a.pop("choices")
    elif case == "type":
        a["usage"]["completion_tokens"] = "3"
    elif case == "usage":
        del a["usage"]
    elif case == "status":
        return 503, {"error": {"message": "overloaded", "type": "server_error"}}
    elif case == "tool":
        a["choices"][0]["message"]["tool_calls"][0]["function"]["name"] = "lookup_weather"
    elif case == "dim":
        a["data"][0]["embedding"] = [0.6, 0.8, 0.0, 0.0]
    return 200, a


class _Server:
    """A tiny HTTP server on loopback recording every request; `answer(path, body)` gives (status, json)."""

    def __init__(self, answer):
        self.requests: list[tuple[str, dict, bytes]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                owner.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                status, doc = answer(self.path, body)
                out = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *_):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _parity_upstream_answer(_path: str, body: bytes) -> tuple[int, dict]:
    req = json.loads(body or b"{}")
    if "input" in req:
        return live_answer("dim")
    text = req["messages"][-1]["content"]
    case = text.removeprefix("case ")
    if case in CASES:
        return live_answer(case)
    return 200, dict(CHAT_ANSWER, choices=[{"index": 0, "message": {"role": "assistant", "content": f"live: {text}"},
                                             "finish_reason": "stop"}])


@pytest.fixture
def live():
    s = _Server(_parity_upstream_answer)
    yield s
    s.close()


@pytest.fixture
def policy_assets(tmp_path) -> Path:
    d = tmp_path / "assets"
    d.mkdir()
    for case in CASES:
        if case == "tool":
            write_asset(d, "tool", "/v1/chat/completions", chat_request("case tool"), TOOL_ANSWER)
        elif case == "dim":
            write_asset(d, "dim", "/v1/embeddings", embed_request(), EMBED_ANSWER)
        else:
            write_asset(d, case, "/v1/chat/completions", chat_request(f"case {case}"), CHAT_ANSWER)
    return d


@pytest.fixture
def policy_file(tmp_path) -> Path:
    p = tmp_path / "policy.json"
    p.write_text(json.dumps(POLICY))
    return p


def envoy_with_metadata(tmp_path: Path, metadata: dict) -> Path:
    """An Envoy wrapper that adds node metadata as Istio does (Envoy merges --config-yaml into the bootstrap)."""
    w = tmp_path / f"envoy-{abs(hash(json.dumps(metadata, sort_keys=True)))}"
    yaml = json.dumps({"node": {"id": "e2e", "cluster": "e2e", "metadata": metadata}})
    w.write_text(f"#!/bin/sh\nexec {ENVOY} \"$@\" --config-yaml '{yaml}'\n")
    w.chmod(w.stat().st_mode | stat.S_IXUSR)
    return w


def stats_of(u) -> tuple[set[str], dict[str, int]]:
    """The environments the filter's stats carry, and its counters summed over them."""
    envs, counters = set(), {}
    for line in admin_get(u.admin, "/stats?filter=wasmcustom.understudy").splitlines():
        name, _, value = line.strip().rpartition(": ")
        if not value.isdigit() or not name.startswith("wasmcustom.understudy."):
            continue
        rest = name.removeprefix("wasmcustom.understudy.")
        if rest.startswith("understudy_env=.="):
            env, _, rest = rest.removeprefix("understudy_env=.=").partition(";.;")
            envs.add(env)
        if "=.=" not in rest:
            counters[rest] = counters.get(rest, 0) + int(value)
    return envs, counters


def up(name, assets, log_dir, request, *, upstream, policy, extra=(), workers=1):
    u = start_understudy(name, assets, log_dir, upstream=upstream, workers=workers,
                         extra=["--policy", str(policy), *extra])
    register_log(request, name, u.log_path)
    request.addfinalizer(u.stop)
    return u


def test_the_environment_comes_from_node_metadata_in_order_of_precedence(
        tmp_path, log_dir, request, policy_assets, policy_file, live):
    labels = {"LABELS": {"understudy.io/env": "staging", "app": "x"}, "NAMESPACE": "ci"}
    cases = [
        # (extra args, node metadata, expected environment)
        (["--env", "prod"], labels, "prod"),
        ([], labels, "staging"),
        ([], {"NAMESPACE": "ci", "LABELS": {"app": "x"}}, "ci"),
        ([], {}, "default"),
        (["--env", "qa-7"], {}, "qa-7"),
    ]
    for i, (extra, metadata, want) in enumerate(cases):
        wrapper = envoy_with_metadata(tmp_path, metadata)
        u = up(f"policy-env-{i}", policy_assets, log_dir, request, upstream=live.url, policy=policy_file,
               extra=[*extra, "--envoy", str(wrapper)])
        before = len(live.requests)
        r = u.post("/v1/chat/completions", chat_request("not recorded anywhere"))
        envs, counters = stats_of(u)
        assert envs == {want}, (want, envs)
        if want == "prod":
            # live: the call reaches the upstream untouched (no Understudy header), counted as live only.
            assert r.status == 200 and r.header("x-understudy") is None, (r.status, r.headers)
            assert len(live.requests) == before + 1
            assert counters["live"] == 1 and counters["requests"] == 0
        elif want == "staging":
            # parity: a miss goes live (and would be recorded).
            assert r.header("x-understudy") == "passthrough"
        else:
            # ci, default and an unknown environment (the policy's default): strict replay, nothing leaks.
            assert r.status == 404 and r.header("x-understudy") == "miss", (want, r.status)
            assert len(live.requests) == before
        u.stop()


def test_parity_detects_each_kind_of_drift_and_reports_it_to_the_collector(
        log_dir, request, policy_assets, policy_file, live):
    # The collector `up` runs beside Envoy writes parity records under ASSETS/.parity and captures as assets.
    u = up("policy-parity", policy_assets, log_dir, request, upstream=live.url, policy=policy_file,
           extra=["--env", "staging"])
    for case in CASES:
        if case == "dim":
            r = u.post("/v1/embeddings", embed_request())
        else:
            r = u.post("/v1/chat/completions", chat_request(f"case {case}"))
        status, answer = live_answer(case)
        # The client gets the live answer, untouched.
        assert r.status == status, (case, r.status, r.body[:300])
        assert r.json() == answer, case
    # A request no asset matches is captured like record_missing.
    assert u.post("/v1/chat/completions", chat_request("brand new question")).status == 200
    parity_dir = policy_assets / ".parity"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(list(parity_dir.glob("*.json"))) < len(CASES):
        time.sleep(0.1)
    records = [json.loads(p.read_text()) for p in parity_dir.glob("*.json")]
    assert len(records) == len(CASES), [r["asset"] for r in records]
    by_asset = {r["asset"].split(" ")[0].strip("\"'"): r for r in records}
    for case, kind in CASES.items():
        rec = by_asset.get(case)
        assert rec is not None, (case, list(by_asset))
        assert rec["format"] == "understudy.parity/v1" and rec["env"] == "staging"
        kinds = {d["kind"] for d in rec["verdict"]["diffs"]}
        if kind is None:
            assert rec["verdict"]["matched"], rec
        else:
            assert not rec["verdict"]["matched"] and kind in kinds, (case, rec["verdict"])
    _, counters = stats_of(u)
    assert (counters["parity_match"], counters["parity_mismatch"]) == (1, len(CASES) - 1), counters
    assert counters["live_sampled"] == len(CASES)
    log = u.log_path.read_text(errors="replace")
    assert "parity MISMATCH" in log and "/choices" in log
    assert "Policy:             environment staging: parity (live_sample 1, on_miss error)" in log
    u.stop()  # drains: the capture of the miss is on disk
    assert any("brand new question" in p.read_text() for p in policy_assets.glob("**/*.json")
               if ".parity" not in p.parts), "the miss was not recorded"
    # The CI gate: 1 of 7 matched is under 95 %.
    gate = subprocess.run([str(UNDERSTUDY), "parity-report", str(policy_assets), "--min-parity", "0.95"],
                          capture_output=True, text=True, timeout=60)
    assert gate.returncode == 3, (gate.returncode, gate.stdout, gate.stderr)


def test_an_override_without_the_secret_changes_nothing_and_is_counted(
        log_dir, request, policy_assets, policy_file, live):
    u = up("policy-override", policy_assets, log_dir, request, upstream=live.url, policy=policy_file,
           extra=["--env", "ci"])
    body = chat_request("case match")
    for headers in ({"x-understudy-override": "live"},
                    {"x-understudy-override": "live", "x-understudy-override-token": "wrong"}):
        r = u.post("/v1/chat/completions", body, headers=headers)
        assert r.header("x-understudy") == "hit" and r.json()["choices"] == CHAT_ANSWER["choices"]
    assert not live.requests, "a refused override must not reach the live model"
    r = u.post("/v1/chat/completions", body,
               headers={"x-understudy-override": "live", "x-understudy-override-token": SECRET})
    assert r.header("x-understudy") == "passthrough" and r.json()["id"] == "chatcmpl-live"
    assert len(live.requests) == 1
    sent = live.requests[0][1]
    assert "x-understudy-override" not in sent and "x-understudy-override-token" not in sent, sent
    _, counters = stats_of(u)
    assert (counters["override_refused"], counters["override_applied"]) == (2, 1), counters
    assert SECRET not in u.log_path.read_text(errors="replace")


def test_the_same_requests_are_sampled_live_across_a_restart(tmp_path, log_dir, request, policy_file, live):
    assets = tmp_path / "many"
    assets.mkdir()
    n = 60
    for i in range(n):
        write_asset(assets, f"q{i:03d}", "/v1/chat/completions", chat_request(f"question {i}"), CHAT_ANSWER)
    runs = []
    for attempt in range(2):
        u = up(f"policy-sample-{attempt}", assets, log_dir, request, upstream=live.url, policy=policy_file,
               extra=["--env", "sampled"], workers=2)
        went_live = {i for i in range(n)
                     if u.post("/v1/chat/completions", chat_request(f"question {i}")).header("x-understudy") == "passthrough"}
        _, counters = stats_of(u)
        assert counters["live_sampled"] == len(went_live) and counters["hits"] == n - len(went_live)
        runs.append(went_live)
        u.stop()
    assert runs[0] == runs[1], "a request is in or out of the sample on every run"
    # 30 % of 60: 18 expected; 6 standard deviations either side still excludes none and all.
    assert 5 <= len(runs[0]) <= 31, len(runs[0])
