"""Counters have exact values after a known sequence, in /stats and in /stats/prometheus."""

from __future__ import annotations

import re

from conftest import admin_get, load_asset

CAPITAL = load_asset("openai/chat-capital.json")["request"]["body"]
HAIKU = load_asset("anthropic/messages-haiku.json")["request"]["body"]
FOX = load_asset("openai/embeddings-fox.json")["request"]["body"]
ZERO = dict(requests=0, hits=0, synthesized=0, misses=0, bad_requests=0, passthroughs=0, misconfigured=0, over_budget=0)


def test_stats_strict(understudy_factory, assets_dir, upstream):
    u = understudy_factory(assets_dir, on_miss="error", name="stats-strict")
    assert u.stats() == ZERO
    assert u.prometheus() == ZERO

    statuses = [
        u.post("/v1/chat/completions", CAPITAL).status,  # hit
        u.post("/v1/messages", HAIKU).status,  # hit
        u.post("/v1/embeddings", {**FOX, "encoding_format": "base64"}).status,  # hit
        u.post("/v1/chat/completions", {**CAPITAL, "temperature": 2}).status,  # miss
        u.post("/v1/messages", {**HAIKU, "max_tokens": 1}).status,  # miss
        u.post("/v1/chat/completions", b"{oops").status,  # bad request
        u.post("/v1/messages", b"").status,  # bad request (empty)
        u.request("GET", "/v1/models").status,  # not an LLM call: not counted
        u.post("/v1/files", b"{}").status,  # not an LLM call: not counted
    ]
    assert statuses == [200, 200, 200, 404, 404, 400, 400, 200, 200]
    want = dict(requests=7, hits=3, synthesized=0, misses=2, bad_requests=2, passthroughs=0, misconfigured=0, over_budget=0)
    assert u.stats() == want
    assert u.prometheus() == want

    raw = admin_get(u.admin, "/stats?filter=understudy")
    assert "wasmcustom.understudy.hits: 3" in raw.splitlines(), raw
    prom = admin_get(u.admin, "/stats/prometheus")
    assert any(line.startswith("understudy_hits") and line.endswith(" 3") for line in prom.splitlines()), prom


def test_stats_passthrough(understudy_factory, assets_dir, upstream):
    u = understudy_factory(assets_dir, on_miss="passthrough", name="stats-passthrough")
    assert u.stats() == ZERO

    r = [
        u.post("/v1/chat/completions", CAPITAL),  # hit
        u.post("/v1/chat/completions", {**CAPITAL, "temperature": 2}),  # miss → forwarded
        u.post("/v1/messages", {**HAIKU, "max_tokens": 1}),  # miss → forwarded
        u.post("/v1/chat/completions", b"{oops"),  # bad request → forwarded
        u.request("GET", "/v1/models"),  # not counted
    ]
    assert [x.header("x-understudy") for x in r] == ["hit", "passthrough", "passthrough", "passthrough", None]
    want = dict(requests=4, hits=1, synthesized=0, misses=2, bad_requests=1, passthroughs=3, misconfigured=0, over_budget=0)
    assert u.stats() == want
    assert u.prometheus() == want
    upstream.wait_for_requests(4)
    assert len(upstream.requests) == 4


def test_wasm_memory_gauge_and_load_log(understudy_factory, assets_dir, upstream):
    """The load is logged with its duration and VM memory; the gauge shows the largest VM's linear memory,
    and it grows when a request needs more memory than the VM had."""
    u = understudy_factory(assets_dir, on_miss="error", name="stats-memory")
    loads = re.findall(r"understudy: loaded (\d+) assets in (\d+) ms \(wasm memory (\d+) bytes\)", u.log_path.read_text())
    assert loads, "no load line in the log"
    assert all(int(n) > 0 and int(mem) % 65536 == 0 and int(mem) > 0 for n, _, mem in loads), loads

    def gauge() -> int:
        m = re.search(r"^wasmcustom\.understudy\.wasm_memory_bytes: (\d+)$", admin_get(u.admin, "/stats"), re.M)
        assert m, "no understudy.wasm_memory_bytes gauge"
        return int(m.group(1))

    before = gauge()
    assert before == max(int(mem) for _, _, mem in loads)
    # A 24 MiB body (a miss) must be held in the VM's memory: the gauge follows.
    big = {**CAPITAL, "messages": [{"role": "user", "content": "x" * (24 << 20)}]}
    assert u.post("/v1/chat/completions", big, timeout=120).status == 404
    after = gauge()
    assert after >= before + (24 << 20), (before, after)
    assert "wasm_memory_bytes" in admin_get(u.admin, "/stats/prometheus")
