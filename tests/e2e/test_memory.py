"""One request must never take virtualization down: every class of memory-hungry request through real Envoy.

Each class runs on its own `understudy up --workers 1` (default limits: 64 MiB bodies, the budgets of
`docs/limits.md`), so its peak is its own: the hostile request gets its answer (a typed 413 naming the budget,
or the miss/answer it deserves), then an ordinary hit on the same worker must still succeed, and the fake
upstream receives zero bytes. The peak wasm memory (`understudy.wasm_memory_bytes`) and Envoy's peak RSS per
class go to target/e2e-results/memory.md (a copy of a run is committed as bench/results/memory.md).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from conftest import admin_get, load_asset, write_result

CHAT = "/v1/chat/completions"
EMB = "/v1/embeddings"
MIB = 1 << 20
LIMIT = 64 * MIB  # understudy up's default --max-body-bytes
CAPITAL_ASSET = load_asset("openai/chat-capital.json")
CAPITAL = CAPITAL_ASSET["request"]["body"]
SYNTH_RULES = [
    {"operation": "openai.chat_completions", "model": "echo*", "echo": True},
    {"operation": "openai.chat_completions", "model": "slow*", "echo": True, "latency": {"ttft_ms": 10000}},
    {"operation": "openai.embeddings", "model": "*"},
]


def filled(prefix: str, unit: str, suffix: str, size: int = LIMIT) -> bytes:
    """`prefix + unit,unit,… + suffix`, as close to `size` bytes as whole units allow."""
    n = (size - len(prefix) - len(suffix)) // (len(unit) + 1)
    return (prefix + ",".join([unit] * n) + suffix).encode()


def chat_with(field: str, value_prefix: str, unit: str, value_suffix: str) -> bytes:
    return filled('{"model":"gpt-4o-mini","messages":[],"' + field + '":' + value_prefix, unit, value_suffix + "}")


def many_keys() -> bytes:
    head, tail = '{"model":"gpt-4o-mini","messages":[],"metadata":{', "}}"
    parts, size, i = [], len(head) + len(tail), 0
    while True:
        p = f'"k{i:07d}":0'
        if size + len(p) + 1 > LIMIT:
            break
        parts.append(p)
        size += len(p) + 1
        i += 1
    return (head + ",".join(parts) + tail).encode()


def long_string(escaped: bool) -> bytes:
    head, tail = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"', '"}]}'
    unit = "\\u00e9\\n" if escaped else "All work and no play. "
    return (head + unit * ((LIMIT - len(head) - len(tail)) // len(unit)) + tail).encode()


def nested() -> bytes:
    chain = "[" * 125 + "0" + "]" * 125  # with the body and the `stop` array: 127 levels, the most that is read
    return chat_with("stop", "[", chain, "]")


def echo(n: int, stream: bool, words: int) -> bytes:
    return json.dumps({"model": "echo-1", "n": n, "stream": stream,
                       "messages": [{"role": "user", "content": "a " * words}]}).encode()


@dataclass
class Case:
    name: str
    what: str
    path: str
    body: Callable[[], bytes]
    status: int
    label: str  # x-understudy
    message: str = ""


CASES = [
    Case("numbers", "`[0,0,…]` filling 64 MiB", CHAT, lambda: chat_with("stop", "[", "0", "]"), 413, "over-budget",
         "REQUEST_BUDGET"),
    Case("numbers-4mib", "`[0,0,…]` of 4 MiB (fits the budget)", CHAT,
         lambda: filled('{"model":"gpt-4o-mini","messages":[],"stop":[', "0", "]}", 4 * MIB), 404, "miss"),
    Case("empty-objects", "`[{},{},…]` filling 64 MiB", CHAT, lambda: chat_with("stop", "[", "{}", "]"), 413,
         "over-budget", "REQUEST_BUDGET"),
    Case("empty-arrays", "`[[],[],…]` filling 64 MiB", CHAT, lambda: chat_with("stop", "[", "[]", "]"), 413,
         "over-budget", "REQUEST_BUDGET"),
    Case("one-key-objects", '`[{"":0},…]` filling 64 MiB', CHAT, lambda: chat_with("stop", "[", '{"":0}', "]"), 413,
         "over-budget", "REQUEST_BUDGET"),
    Case("many-keys", "one object with ~5M short keys (64 MiB)", CHAT, many_keys, 413, "over-budget",
         "REQUEST_BUDGET"),
    Case("long-string", "one 64 MiB string", CHAT, lambda: long_string(False), 404, "miss"),
    Case("long-escaped-string", "one 64 MiB string of `\\u00e9\\n` escapes", CHAT, lambda: long_string(True), 404,
         "miss"),
    Case("nesting", "127-level chains filling 64 MiB", CHAT, nested, 413, "over-budget", "REQUEST_BUDGET"),
    Case("echo-n-stream", "echo of 256 KiB × n=128, streamed", CHAT, lambda: echo(128, True, 128 << 10), 413,
         "over-budget", "ANSWER_BUDGET"),
    Case("echo-n", "echo of 300 KiB × n=128", CHAT, lambda: echo(128, False, 150 << 10), 413, "over-budget",
         "MAX_TEXT_BYTES"),
    Case("echo-stream", "echo of 64 KiB, streamed (fits)", CHAT, lambda: echo(1, True, 32 << 10), 200, "synthesized"),
    Case("embeddings-dimensions", "2,048 inputs × 65,536 dimensions", EMB,
         lambda: json.dumps({"model": "e", "dimensions": 65536, "input": ["x"] * 2048}).encode(), 413, "over-budget",
         "MAX_EMBEDDING_FLOATS"),
    Case("embeddings-float", "2,048 inputs × 3,072 dimensions as floats", EMB,
         lambda: json.dumps({"model": "text-embedding-3-large", "input": ["x"] * 2048}).encode(), 413,
         "over-budget", "ANSWER_BUDGET"),
    Case("embeddings-base64", "2,048 inputs × 3,072 dimensions, base64 (fits)", EMB,
         lambda: json.dumps({"model": "text-embedding-3-large", "encoding_format": "base64",
                             "input": ["x"] * 2048}).encode(), 200, "synthesized"),
]

ROWS: list[str] = []


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("memory-assets")
    (d / "capital.json").write_text(json.dumps(CAPITAL_ASSET))
    rules = d.parent / "memory-rules.json"
    rules.write_text(json.dumps(SYNTH_RULES))
    return d, rules


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    if not ROWS:
        return
    lines = [
        "# Memory per class of hostile request",
        "",
        "Written by `tests/e2e/test_memory.py`: one `understudy up --workers 1` per class (default limits: 64 MiB",
        "bodies, `REQUEST_BUDGET` 384 MiB, `ANSWER_BUDGET` 128 MiB, see docs/limits.md), `on_miss: error`, an",
        "ordinary hit before and after the hostile request on the same worker, zero bytes upstream. *wasm MiB* is",
        "the `understudy.wasm_memory_bytes` gauge (the VM's linear memory, which only grows): after the load and",
        "after the class; *Envoy RSS MiB* is Envoy's peak resident set (VmHWM) at the end.",
        "",
        "| class | request | answer | seconds | wasm MiB: load → peak | Envoy RSS MiB (peak) |",
        "|---|---|---|---:|---:|---:|",
        *ROWS,
        "",
    ]
    write_result("memory.md", "\n".join(lines))


def gauge(admin: str) -> int:
    for line in admin_get(admin, "/stats?filter=wasm_memory_bytes").splitlines():
        k, _, v = line.partition(": ")
        if k.endswith("understudy.wasm_memory_bytes"):
            return int(v)
    raise AssertionError("no understudy.wasm_memory_bytes gauge")


def envoy_hwm_mib(pid: int) -> float:
    """Peak RSS of the Envoy that `understudy up` (pid) runs as its child."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in children:
        status = Path(f"/proc/{child}/status").read_text()
        if "envoy" in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace"):
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    raise AssertionError(f"no envoy child of {pid}: {children}")


def hit(u) -> None:
    r = u.post(CHAT, CAPITAL)
    assert r.status == 200 and r.header("x-understudy") == "hit", (r.status, r.headers, r.body[:300])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_memory_class(understudy_factory, upstream, assets, case):
    d, rules = assets
    u = understudy_factory(d, name=f"memory-{case.name}", extra=["--synthesize", str(rules)])
    r = u.request("GET", "/v1/models")  # a pooled upstream connection: a leak would be immediate
    assert r.status == 200
    upstream.wait_for_requests(1)
    before = upstream.snapshot()
    hit(u)
    load = gauge(u.admin)
    body = case.body()
    assert len(body) <= LIMIT, len(body)
    t0 = time.monotonic()
    r = u.post(case.path, body, timeout=120)
    seconds = time.monotonic() - t0
    del body
    assert (r.status, r.header("x-understudy")) == (case.status, case.label), (r.status, r.headers, r.body[:600])
    if case.message:
        text = r.body.decode()
        assert case.message in text and "docs/limits.md" in text, text[:600]
        assert r.json()["error"]["code"].endswith("_over_budget"), text[:600]
    hit(u)
    peak = gauge(u.admin)
    rss = envoy_hwm_mib(u.proc.pid)
    upstream.assert_untouched_since(before)
    s = u.stats()
    assert s["over_budget"] == (1 if case.label == "over-budget" else 0), s
    assert s["requests"] == s["hits"] + s["synthesized"] + s["misses"] + s["bad_requests"] + s["over_budget"], s
    ROWS.append(f"| {case.name}: {case.what} | {case.path} | {case.status} {case.label} | {seconds:.2f} | "
                f"{load / MIB:.0f} → {peak / MIB:.0f} | {rss:.0f} |")
    assert peak < 900 * MIB, f"{case.name}: the VM grew to {peak / MIB:.0f} MiB"


def test_many_delayed_answers_at_once(understudy_factory, upstream, assets):
    """Answers waiting for their latency are bounded (DELAY_QUEUE_BYTES, 64 MiB): 40 echoes of 3 MiB with a 10 s
    time to first token, all at once (sent well within the 10 s): about 21 fit, wait and arrive; the rest get a
    503 in the API's shape at once, with `retry-after`; afterwards a hit works on the same worker."""
    d, rules = assets
    u = understudy_factory(d, name="memory-delayed", extra=["--synthesize", str(rules)])
    before = upstream.snapshot()
    hit(u)
    load = gauge(u.admin)
    body = json.dumps({"model": "slow-1", "messages": [{"role": "user", "content": "x" * (3 * MIB)}]}).encode()
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
        futures = [pool.submit(lambda: (u.post(CHAT, body, timeout=120), time.monotonic() - t0)) for _ in range(40)]
        results = [f.result() for f in futures]
    seconds = time.monotonic() - t0
    ok = [(r, t) for r, t in results if r.status == 200]
    full = [(r, t) for r, t in results if r.status == 503]
    assert len(ok) + len(full) == 40, [r.status for r, _ in results]
    assert ok and full, f"{len(ok)} answered, {len(full)} refused: the queue should hold some and refuse others"
    assert len(ok) <= 64 // 3, f"{len(ok)} answers of 3 MiB waited at once in a 64 MiB queue"
    assert all(t >= 9.9 for _, t in ok), "a queued answer came before its latency"
    assert all(t < 9.9 for _, t in full), "a refused answer was not refused at once"
    for r, _ in full:
        assert r.header("retry-after") == "1" and r.header("x-understudy") == "over-budget", r.headers
        assert r.json()["error"]["code"] == "understudy_delay_queue_full", r.body[:300]
    hit(u)
    peak = gauge(u.admin)
    rss = envoy_hwm_mib(u.proc.pid)
    upstream.assert_untouched_since(before)
    s = u.stats()
    assert s["over_budget"] == len(full) and s["synthesized"] == len(ok), s
    ROWS.append(f"| delayed: 40 × 3 MiB echoes with a 10 s latency at once | {CHAT} | {len(ok)} × 200 after ≥ 10 s, "
                f"{len(full)} × 503 delay_queue_full | {seconds:.2f} | {load / MIB:.0f} → {peak / MIB:.0f} | {rss:.0f} |")
