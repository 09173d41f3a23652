"""`understudy up --watch` through real Envoy: an asset edited under load is served without a restart and
without a failed request (the filter configuration arrives over ECDS from a file replaced by rename), a
request in flight during the reload finishes, and a broken edit is reported (file and field) while the
previous assets keep serving.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

from conftest import EXAMPLE_ASSETS, http_request, load_asset

LOAD_SECONDS = 10
CHAT = "openai/chat-capital.json"


def wait_for_log(u, pattern: str, after: int, timeout: float = 30.0) -> str:
    """The log text after offset `after` once it matches `pattern`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = u.log_path.read_text(errors="replace")[after:]
        if re.search(pattern, text):
            return text
        time.sleep(0.1)
    raise AssertionError(f"no {pattern!r} in the log within {timeout}s:\n{u.log_path.read_text(errors='replace')[after:][-3000:]}")


def write_atomic(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def answer(r) -> str:
    return r.json()["choices"][0]["message"]["content"]


def test_an_edit_under_load_is_served_without_a_restart_or_a_failed_request_and_a_broken_one_is_refused(
        understudy_factory, upstream, tmp_path):
    hey = shutil.which("hey")
    assert hey, "hey is missing: run `bash scripts/install-load-tools.sh`"
    assets = tmp_path / "assets"
    shutil.copytree(EXAMPLE_ASSETS, assets)
    slow = {"request": {"path": "/v1/chat/completions",
                        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "slow"}]}},
            "response": {"body": {"id": "chatcmpl-slow", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": "slow answer"}}]}},
            "latency": {"ttft_ms": 2500}}
    (assets / "slow.json").write_text(json.dumps(slow))
    u = understudy_factory(assets, extra=["--watch"])
    chat = load_asset(CHAT)
    r = u.post("/v1/chat/completions", chat["request"]["body"])
    assert r.status == 200 and answer(r) == "The capital of France is Paris."
    body = tmp_path / "body.json"
    body.write_text(json.dumps(chat["request"]["body"]))
    before = upstream.snapshot()
    load = subprocess.Popen([hey, "-z", f"{LOAD_SECONDS}s", "-c", "8", "-m", "POST", "-T", "application/json",
                             "-D", str(body), f"http://127.0.0.1:{u.port}/v1/chat/completions"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.5)
    # A request in flight (held 2.5 s for its simulated latency) while the configuration changes.
    in_flight = {}
    t = threading.Thread(target=lambda: in_flight.update(r=http_request(u.port, "POST", "/v1/chat/completions",
                                                                          slow["request"]["body"])))
    t.start()
    time.sleep(0.3)
    mark = len(u.log_path.read_text(errors="replace"))
    edited = json.loads((assets / CHAT).read_text())
    edited["response"]["body"]["choices"][0]["message"]["content"] = "Paris, edited while serving."
    write_atomic(assets / CHAT, edited)
    wait_for_log(u, r"reloaded the assets", mark)
    r = u.post("/v1/chat/completions", chat["request"]["body"])
    assert r.status == 200 and answer(r) == "Paris, edited while serving.", (r.status, r.body[:300])
    t.join(timeout=30)
    assert in_flight["r"].status == 200 and answer(in_flight["r"]) == "slow answer", in_flight
    # A broken edit: the error names the file and the field; the previous assets keep serving.
    mark = len(u.log_path.read_text(errors="replace"))
    (assets / "openai" / "broken.json").write_text(json.dumps({"request": chat["request"], "respons": {}}))
    text = wait_for_log(u, r"still serving the previous assets", mark)
    assert "openai/broken.json#0: respons: unknown field `respons`" in text, text[-2000:]
    r = u.post("/v1/chat/completions", chat["request"]["body"])
    assert r.status == 200 and answer(r) == "Paris, edited while serving."
    reloaded_during_load = load.poll() is None
    out, _ = load.communicate(timeout=LOAD_SECONDS * 10)
    assert reloaded_during_load, "the edits were applied after the load ended: not a test under load"
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    assert codes and set(codes) == {200} and sum(codes.values()) > 100, out
    assert "Error distribution" not in out, out
    upstream.assert_untouched_since(before)
    # Fixing the file applies the assets again.
    mark = len(u.log_path.read_text(errors="replace"))
    (assets / "openai" / "broken.json").unlink()
    wait_for_log(u, r"the assets are valid again", mark)
