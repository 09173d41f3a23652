"""Record mode through real Envoy: `understudy up --mode record` against a fake live LLM API, then strict replay
of what it wrote with the live model unused; secrets used by the clients never reach the disk; concurrent
clients lose nothing; a collector killed with SIGKILL and restarted loses nothing it acknowledged."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import (
    UNDERSTUDY,
    LlmUpstream,
    free_port,
    register_log,
    start_understudy,
    stop_process,
    tail,
)

# Every secret a client or the upstream uses in these tests: none may appear in any written file.
BEARER = "sk-live-CLIENTSECRET0123456789"
SECRETS = {
    "authorization": f"Bearer {BEARER}",
    "Api-Key": "azure-SECRETKEY-4455",
    "X-Api-Key": "sk-ant-SECRETKEY-6677",
    "x-goog-api-key": "AIzaSECRETGOOG8899",
    "Cookie": "session=COOKIESECRET1122",
    "OpenAI-Organization": "org-CLIENTORGSECRET",
    "openai-project": "proj_CLIENTPROJSECRET",
    "X-Amz-Security-Token": "AMZTOKENSECRET3344",
}
QUERY_KEY = "AIzaQUERYSECRET5566"
BODY_SECRET = "hunter2-BODYSECRET-77"
ALL_SECRETS = [v.split(" ")[-1] for v in SECRETS.values()] + [
    QUERY_KEY, BODY_SECRET, LlmUpstream.SECRET_ORG, "LIVECOOKIESECRET", "alice@example.com"]

NORMALIZATION = {"scrubbers": [{"pattern": "hunter2-[A-Z0-9-]+", "placeholder": "<password>"}],
                 "ignore_fields": ["/metadata/user_email"]}
RECORD_CONFIG = {"redact_patterns": NORMALIZATION["scrubbers"], "redact_request": ["/metadata/user_email"]}

# (path, body): every API and a streamed answer of each SSE grammar.
CALLS = [
    ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": f"My password is {BODY_SECRET}. What is the capital of France?"}],
        "metadata": {"user_email": "alice@example.com"}}),
    ("/v1/chat/completions", {"model": "gpt-4o-mini", "stream": True,
                              "messages": [{"role": "user", "content": "Name three primary colors."}]}),
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["first text", "second, longer text"]}),
    ("/v1/responses", {"model": "gpt-4o-mini", "input": "Write a haiku about proxies."}),
    ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 64,
                      "messages": [{"role": "user", "content": "Say hello in French."}]}),
    ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True,
                      "messages": [{"role": "user", "content": "Count to three."}]}),
    (f"/v1beta/models/gemini-2.5-flash:generateContent?key={QUERY_KEY}",
     {"contents": [{"role": "user", "parts": [{"text": "Why is the sky blue?"}]}]}),
    (f"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key={QUERY_KEY}",
     {"contents": [{"role": "user", "parts": [{"text": "Tell me a short story."}]}]}),
]


def sse_text(body: bytes) -> str:
    """The answer text of any of the three SSE grammars."""
    out = []
    for line in body.decode().splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        ev = json.loads(line[6:])
        for c in ev.get("choices", []):
            out.append(c.get("delta", {}).get("content") or "")
        if ev.get("type") == "content_block_delta":
            out.append(ev["delta"].get("text", ""))
        for c in ev.get("candidates", []):
            out.extend(p.get("text", "") for p in c.get("content", {}).get("parts", []))
    return "".join(out)


def content(path: str, r) -> object:
    """What a client takes from an answer: its text, or its vectors (ids and timestamps are refreshed)."""
    assert r.status == 200, (path, r.status, r.body[:300])
    if r.header("content-type", ).startswith("text/event-stream"):
        return sse_text(r.body)
    v = r.json()
    if "data" in v:
        return [d["embedding"] for d in v["data"]]
    if "output" in v:
        return v["output"][0]["content"][0]["text"]
    if "candidates" in v:
        return v["candidates"][0]["content"]["parts"][0]["text"]
    if "content" in v:
        return v["content"][0]["text"]
    return v["choices"][0]["message"]["content"]


def files_of(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file())


def assert_no_secret(d: Path) -> None:
    for f in files_of(d):
        data = f.read_bytes()
        for s in ALL_SECRETS:
            assert s.encode() not in data, f"secret {s!r} written to {f}"


def write_json(path: Path, v) -> Path:
    path.write_text(json.dumps(v))
    return path


def stop_and_read(u) -> str:
    """SIGTERM `understudy up`, wait for it to exit (it drains first), and return its output."""
    u.proc.send_signal(signal.SIGTERM)
    u.proc.wait(timeout=60)
    return u.log_path.read_text()


@pytest.fixture
def live(request):
    up = LlmUpstream()
    yield up
    up.close()


@pytest.fixture
def settings(tmp_path):
    return [
        "--normalization", str(write_json(tmp_path / "norm.json", NORMALIZATION)),
        "--record-config", str(write_json(tmp_path / "record.json", RECORD_CONFIG)),
    ]


def test_record_then_replay_strictly_with_zero_upstream_bytes_and_no_secret_on_disk(tmp_path, log_dir, live, settings, request):
    assets = tmp_path / "recorded"
    rec = start_understudy("record", assets, log_dir, upstream=live.url, extra=["--mode", "record", *settings])
    register_log(request, "record", rec.log_path)
    seen = []
    try:
        for path, body in CALLS:
            r = rec.post(path, body, headers=SECRETS)
            seen.append(content(path, r))
            assert r.header("x-understudy") == "passthrough"
        assert len(live.requests) == len(CALLS), "record mode sends every call live"
        assert live.requests[0].headers["authorization"] == SECRETS["authorization"], "the upstream gets the credentials"
    finally:
        out = stop_and_read(rec)
    assert f"Recorded {len(CALLS)} answer(s) into" in out, out
    assert "0 failed" in out, out
    files = [f for f in files_of(assets) if f.suffix == ".json"]
    assert len(files) == len(CALLS), files
    assert not [f for f in files_of(assets) if ".tmp-" in f.name], "no temporary file is left"
    assert_no_secret(assets)
    names = {str(f.relative_to(assets)) for f in files}
    assert any(n.startswith("openai.chat_completions/gpt-4o-mini--my-password-is-password-what-is-the-capital") for n in names), names
    assert any(n.startswith("gemini.generate_content/gemini-2-5-flash--why-is-the-sky-blue--") for n in names), names
    streamed = [json.loads(f.read_text()) for f in files if "primary-colors" in f.name]
    assert streamed and streamed[0]["response"]["body_text"].endswith("data: [DONE]\n\n")
    assert len(streamed[0]["response"]["timing"]["chunks"]) >= 1

    # Replay, strict, the live upstream still listening and counting: it gets nothing.
    live.reset()
    replay = start_understudy("replay", assets, log_dir, upstream=live.url, extra=settings[:2])
    register_log(request, "replay", replay.log_path)
    try:
        for (path, body), want in zip(CALLS, seen):
            r = replay.post(path, body, headers={"authorization": "Bearer sk-other"})
            assert r.header("x-understudy") == "hit", (path, r.status, r.body[:300])
            if isinstance(want, str):
                want = want.replace(BODY_SECRET, "<password>")  # redacted in the answer too
            assert content(path, r) == want, path
        # A redacted secret changes nothing: another password keys the same (the scrubber).
        body = json.loads(json.dumps(CALLS[0][1]).replace(BODY_SECRET, "hunter2-OTHER-1"))
        assert replay.post(CALLS[0][0], body).header("x-understudy") == "hit"
        assert replay.post(CALLS[0][0], dict(CALLS[0][1], temperature=0.1)).status == 404, "other requests miss"
        live.assert_untouched_since((0, 0, 0))
    finally:
        stop_process(replay.proc)


def test_sixteen_concurrent_clients_lose_no_recording(tmp_path, log_dir, live, settings, request):
    assets = tmp_path / "recorded"
    live.stream_gap = 0.01
    rec = start_understudy("record-16", assets, log_dir, upstream=live.url, workers=2,
                           extra=["--mode", "record", *settings])
    register_log(request, "record-16", rec.log_path)
    errors: list[str] = []

    def client(i: int) -> None:
        try:
            for j in range(3):
                body = {"model": "gpt-4o-mini", "stream": j == 1,
                        "messages": [{"role": "user", "content": f"client {i} question {j}"}]}
                r = rec.post("/v1/chat/completions", body, headers=SECRETS)
                assert f"client {i} question {j}" in str(content("/v1/chat/completions", r))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"client {i}: {e!r}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        out = stop_and_read(rec)
    assert not errors, errors
    assert "Recorded 48 answer(s)" in out and "0 failed" in out, out
    assert len([f for f in files_of(assets) if f.suffix == ".json"]) == 48
    assert_no_secret(assets)


def start_collector(out: Path, port: int, log: Path) -> subprocess.Popen:
    f = open(log, "ab")
    proc = subprocess.Popen([str(UNDERSTUDY), "collect", "--out", str(out), "--port", str(port)],
                            stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    f.close()
    deadline = time.monotonic() + 20
    while f"listening on http://127.0.0.1:{port}" not in log.read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, tail(log)
        time.sleep(0.05)
    return proc


def test_a_collector_killed_mid_run_and_restarted_loses_nothing(tmp_path, log_dir, live, request):
    assets = tmp_path / "collected"
    port = free_port()
    clog = log_dir / "collector.log"
    register_log(request, "collector", clog)
    collector = start_collector(assets, port, clog)
    rec = start_understudy("record-kill", assets, log_dir, upstream=live.url,
                           extra=["--mode", "record", "--collector", f"http://127.0.0.1:{port}"])
    register_log(request, "record-kill", rec.log_path)

    def ask(i: int) -> None:
        r = rec.post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]})
        assert r.status == 200

    def json_files() -> int:
        return len([f for f in files_of(assets) if f.suffix == ".json"])

    try:
        for i in range(5):
            ask(i)
        deadline = time.monotonic() + 20
        while json_files() < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        acknowledged = {f.name: f.read_bytes() for f in files_of(assets) if f.suffix == ".json"}
        assert len(acknowledged) == 5
        collector.send_signal(signal.SIGKILL)
        collector.wait(timeout=10)
        for i in range(5, 10):
            ask(i)  # answered live while the collector is down: their captures wait and retry
        time.sleep(1.0)
        assert rec.stats()["requests"] == 10
        collector = start_collector(assets, port, clog)
        deadline = time.monotonic() + 40
        while json_files() < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert json_files() == 10, tail(clog)
        for name, data in acknowledged.items():
            assert (next(assets.rglob(name))).read_bytes() == data, "an acknowledged recording is unchanged"
    finally:
        out = stop_and_read(rec)
        stop_process(collector)
    assert "10 capture(s) acknowledged" in out and "0 failed" in out, out


def stream_arrivals(port: int, path: str, body: dict) -> tuple[list[float], bytes]:
    """Posts a streaming request over a raw socket; returns when each SSE event arrived (s, from the request)
    and the body."""
    import socket as _socket

    data = json.dumps(body).encode()
    s = _socket.create_connection(("127.0.0.1", port), timeout=30)
    start = time.monotonic()
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
              "Connection: close\r\n\r\n".encode() + data)
    raw, arrivals, seen = b"", [], 0
    while True:
        got = s.recv(65536)
        if not got:
            break
        raw += got
        now = time.monotonic() - start
        events = raw.count(b"\n\n")
        arrivals += [now] * (events - seen)
        seen = events
    s.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], head
    return arrivals, rest


def test_a_recorded_stream_replays_its_pace_scaled_and_unpaced_without_replay_speed(tmp_path, log_dir, live, request):
    assets = tmp_path / "paced"
    live.stream_gap = 0.25
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "one two three four"}]}
    rec = start_understudy("record-pace", assets, log_dir, upstream=live.url, extra=["--mode", "record"])
    register_log(request, "record-pace", rec.log_path)
    try:
        live_arrivals, _ = stream_arrivals(rec.port, "/v1/chat/completions", body)
    finally:
        assert "Recorded 1 answer(s)" in stop_and_read(rec)
    (f,) = [f for f in files_of(assets) if f.suffix == ".json"]
    chunks = json.loads(f.read_text())["response"]["timing"]["chunks"]
    recorded_total = chunks[-1][0] / 1000
    assert recorded_total > 1.5, chunks  # 10 events, 0.25 s apart

    results = {}
    for speed in (None, 1, 2):
        extra = [] if speed is None else ["--replay-speed", str(speed)]
        u = start_understudy(f"replay-pace-{speed}", assets, log_dir, upstream=live.url, extra=extra)
        register_log(request, f"replay-pace-{speed}", u.log_path)
        try:
            live.reset()
            arrivals, text = stream_arrivals(u.port, "/v1/chat/completions", body)
            # The same asset answers a non-streaming request locally, assembled, paced or not.
            plain = u.post("/v1/chat/completions", dict(body, stream=False))
            assert plain.header("x-understudy") == "hit" and content("/", plain) == "Live answer to: one two three four"
            live.assert_untouched_since((0, 0, 0), settle=0.1)
        finally:
            stop_process(u.proc)
        assert sse_text(text) == "Live answer to: one two three four"
        results[speed] = arrivals
    gaps = lambda a: [b - x for x, b in zip(a, a[1:])]  # noqa: E731
    live_gaps = [g for g in gaps(live_arrivals) if g > 0.1]
    paced = [g for g in gaps(results[1]) if g > 0.1]
    # Ratios within one run, in a wide band: the recorded gaps come back, scaled; none of it is a fixed timing.
    ratio_1 = sum(paced) / sum(live_gaps)
    ratio_2 = results[2][-1] / results[1][-1]
    ratio_none = results[None][-1] / results[1][-1]
    report = (
        "# Paced replay of a recorded stream (tests/e2e/test_record.py)\n\n"
        "One chat completions stream recorded from an upstream sending 10 SSE events 250 ms apart, replayed through\n"
        "Envoy (1 worker) and the pacer; times at the client, in seconds.\n\n"
        "| run | first event | last event | gaps over 100 ms |\n|---|---|---|---|\n"
        f"| live (recording) | {live_arrivals[0]:.3f} | {live_arrivals[-1]:.3f} | {len(live_gaps)}, mean {sum(live_gaps) / max(1, len(live_gaps)):.3f} |\n"
        f"| --replay-speed 1 | {results[1][0]:.3f} | {results[1][-1]:.3f} | {len(paced)}, mean {sum(paced) / max(1, len(paced)):.3f} |\n"
        f"| --replay-speed 2 | {results[2][0]:.3f} | {results[2][-1]:.3f} | |\n"
        f"| no pacing | {results[None][0]:.3f} | {results[None][-1]:.3f} | |\n\n"
        f"Ratios: paced gaps / live gaps = {ratio_1:.2f}; speed 2 / speed 1 total = {ratio_2:.2f}; "
        f"unpaced / speed 1 total = {ratio_none:.2f}.\n"
    )
    from conftest import write_result
    write_result("pacing.md", report)
    assert len(paced) == len(live_gaps), report
    assert 0.7 < ratio_1 < 1.4, report
    assert 0.35 < ratio_2 < 0.7, report
    assert ratio_none < 0.2, report


def test_record_and_pacing_bootstraps_validate(tmp_path):
    from conftest import ENVOY, ROOT

    out = tmp_path / "bootstrap.json"
    cmd = [str(UNDERSTUDY), "up", "--assets", str(tmp_path / "new"), "--mode", "record", "--replay-speed", "1.5",
           "--upstream", "http://127.0.0.1:9", "--print-config", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    boot = json.loads(out.read_text())
    clusters = {c["name"] for c in boot["static_resources"]["clusters"]}
    assert clusters == {"upstream", "understudy_collector", "understudy_pacer"}
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert routes[0]["route"]["cluster"] == "understudy_pacer"
    assert {"name": "x-understudy-pace", "present_match": True} in routes[0]["match"]["headers"]
    wasm = hcm["http_filters"][1]["typed_config"]["config"]
    assert wasm["allow_on_headers_stop_iteration"] is True
    plugin = json.loads(wasm["configuration"]["value"])
    assert plugin["mode"] == "record" and plugin["pacing"] == {"speed": 1.5}
    v = subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(out), "--disable-hot-restart", "--log-level", "warning"],
                       capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert v.returncode == 0, v.stdout + v.stderr
    # Without timing nothing changes: no pacer, no flag.
    cmd = [str(UNDERSTUDY), "up", "--assets", str(tmp_path / "new"), "--print-config", str(out)]
    assert subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
    boot = json.loads(out.read_text())
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert "allow_on_headers_stop_iteration" not in hcm["http_filters"][1]["typed_config"]["config"]
    assert all(c["name"] != "understudy_pacer" for c in boot["static_resources"]["clusters"])


def test_run_records_around_a_command_and_reports_it(tmp_path, live):
    assets = tmp_path / "run-recorded"
    client = tmp_path / "client.py"
    client.write_text(
        "import json, os, urllib.request\n"
        "for q in ['first question', 'second question', 'first question']:\n"
        "    req = urllib.request.Request(os.environ['OPENAI_BASE_URL'] + '/chat/completions',\n"
        "        data=json.dumps({'model': 'gpt-4o-mini', 'messages': [{'role': 'user', 'content': q}]}).encode(),\n"
        "        headers={'content-type': 'application/json', 'authorization': 'Bearer " + BEARER + "'})\n"
        "    print(json.load(urllib.request.urlopen(req))['choices'][0]['message']['content'])\n"
    )
    summary = tmp_path / "summary.json"
    import sys
    r = subprocess.run([str(UNDERSTUDY), "run", "--mode", "record", "--assets", str(assets), "--upstream", live.url,
                        "--workers", "1", "--summary-json", str(summary), "--", sys.executable, str(client)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Live answer to: second question" in r.stdout
    assert "recorded      Recorded 2 answer(s)" in r.stderr and "(1 deduplicated" in r.stderr, r.stderr
    s = json.loads(summary.read_text())
    assert s["recorded"]["collector"] == {"recorded": 2, "deduplicated": 1, "redelivered": 0, "failed": 0}
    assert len(list(assets.rglob("*.json"))) == 2
    assert_no_secret(assets)


def test_captures_a_collector_never_takes_are_counted_as_failed_after_the_retries(tmp_path, log_dir, live, request):
    port = free_port()  # nothing listens there
    rec = start_understudy("record-nocollector", tmp_path / "unused", log_dir, upstream=live.url,
                           extra=["--mode", "record", "--collector", f"http://127.0.0.1:{port}"])
    register_log(request, "record-nocollector", rec.log_path)
    try:
        r = rec.post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "lost"}]})
        assert r.status == 200 and "lost" in content("/", r), "the client is served although the collector is down"
    finally:
        started = time.monotonic()
        out = stop_and_read(rec)
    # The drain waited for the retries (about 21 s) to end, then reported the capture.
    assert "0 capture(s) acknowledged" in out and "; 1 failed" in out, out
    assert time.monotonic() - started > 15, "the drain waited for the retries"
    assert "FAILED, not delivered" in out and "after 10 attempts" in out, out


def test_server_errors_and_cut_streams_are_counted_not_stored(tmp_path, log_dir, live, request):
    assets = tmp_path / "bad"
    rec = start_understudy("record-bad", assets, log_dir, upstream=live.url, extra=["--mode", "record"])
    register_log(request, "record-bad", rec.log_path)
    try:
        live.status = 500
        assert rec.post("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "a"}]}).status == 500
        live.status = 200
        live.cut_streams = True
        try:
            rec.post("/v1/chat/completions", {"model": "m", "stream": True, "messages": [{"role": "user", "content": "b c d e"}]})
        except Exception:  # noqa: BLE001 - the client may see the reset itself
            pass
        live.cut_streams = False
        time.sleep(0.5)
    finally:
        out = stop_and_read(rec)
    assert "Recorded 0 answer(s)" in out and "0 failed, 1 not stored (5xx/429 or unrecordable), 1 cut short" in out, out
    assert not [f for f in files_of(assets) if f.suffix == ".json"]


def test_imported_cassettes_and_har_files_replay_strictly(tmp_path, log_dir, live, request):
    from conftest import ROOT

    fixtures = ROOT / "cli" / "tests" / "fixtures"
    norm = write_json(tmp_path / "norm.json", {"scrubbers": [{"pattern": "sk-live-[A-Z0-9]+", "placeholder": "<key>"}]})
    rec_cfg = write_json(tmp_path / "rec.json", {"redact_patterns": [{"pattern": "sk-live-[A-Z0-9]+", "placeholder": "<key>"}]})
    assets = tmp_path / "imported"
    cmd = [str(UNDERSTUDY), "import", str(fixtures / "openai_cassette.yaml"), str(fixtures / "session.har"),
           "--to", str(assets), "--normalization", str(norm), "--record-config", str(rec_cfg)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Imported 4 of 7 entries" in r.stdout and "2 not LLM calls (skipped), 1 not stored" in r.stdout, r.stdout
    for secret in ("FIXTURESECRET42", "FIXTUREORG", "FIXTURECOOKIE", "FIXTUREKEY"):
        assert not any(secret.encode() in f.read_bytes() for f in files_of(assets)), secret
    u = start_understudy("replay-imported", assets, log_dir, upstream=live.url, extra=["--normalization", str(norm)])
    register_log(request, "replay-imported", u.log_path)
    try:
        live.reset()
        chat = {"messages": [{"role": "user", "content": "What is the capital of France? My key is sk-live-OTHERKEY1"}],
                "model": "gpt-4o-mini", "temperature": 0}
        r = u.post("/v1/chat/completions", chat)
        assert r.header("x-understudy") == "hit" and content("/", r) == "The capital of France is Paris."
        msg = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "Say hello in French."}]}
        r = u.post("/v1/messages", msg)
        assert r.header("x-understudy") == "hit" and content("/", r) == "Bonjour !"
        live.assert_untouched_since((0, 0, 0))
    finally:
        stop_process(u.proc)
