"""An 8 MiB request body is buffered whole, matched and answered locally."""

from __future__ import annotations

import json

import pytest

from conftest import assert_served_body

EIGHT_MIB = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def big_asset(tmp_path_factory):
    d = tmp_path_factory.mktemp("big-assets")
    # ~8 MiB of varied text (so nothing compresses it into a shortcut), ending with a marker.
    line = "The quick brown fox jumps over the lazy dog; é ☕ 0123456789.\n"
    text = (line * (EIGHT_MIB // len(line.encode()) + 1))[: EIGHT_MIB - 1024] + "END-OF-BIG-MESSAGE"
    asset = {
        "name": "e2e: 8 MiB user message",
        "request": {
            "path": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "temperature": 0},
        },
        "response": {
            "body": {
                "id": "chatcmpl-e2e-big",
                "object": "chat.completion",
                "created": 1764403400,
                "model": "gpt-4o-mini-2024-07-18",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "That was long."}, "finish_reason": "stop"}],
            }
        },
    }
    (d / "big.json").write_text(json.dumps(asset, ensure_ascii=False), encoding="utf-8")
    return d, asset


def test_8_mib_body_hits(understudy_factory, upstream, big_asset):
    d, asset = big_asset
    u = understudy_factory(d, name="big-body")
    raw = json.dumps(asset["request"]["body"], ensure_ascii=True).encode()  # escapes make it even bigger
    assert len(raw) >= EIGHT_MIB, len(raw)

    # A pooled upstream connection exists (so a leak would be immediate), then the big request.
    r = u.request("GET", "/v1/models")
    assert r.status == 200
    upstream.wait_for_requests(1)
    before = upstream.snapshot()

    r = u.post("/v1/chat/completions", raw, timeout=60)
    assert r.status != 413, (
        f"Envoy answered 413 for an {len(raw)} byte body (x-understudy={r.header('x-understudy')}): {r.body[:300]!r}"
    )
    assert r.status == 200, r.body[:2000]
    assert r.header("x-understudy") == "hit"
    assert_served_body(r.json(), asset["response"]["body"])
    upstream.assert_untouched_since(before, settle=0.5)

    # The same size that does not match is a strict miss (not a 413, not a leak).
    miss = raw.replace(b"END-OF-BIG-MESSAGE", b"END-OF-BIG-MESSAGX")
    r = u.post("/v1/chat/completions", miss, timeout=60)
    assert r.status == 404, r.body[:2000]
    assert r.header("x-understudy") == "miss"
    upstream.assert_untouched_since(before, settle=0.5)
    assert u.stats()["hits"] == 1 and u.stats()["misses"] == 1


@pytest.fixture(scope="module")
def small_limit(upstream, assets_dir, log_dir):
    from conftest import assert_served_body, start_understudy

    u = start_understudy("small-limit", assets_dir, log_dir, upstream=upstream.url, extra=["--max-body-bytes", "65536"])
    yield u
    u.stop()


OVER_LIMIT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 200_000}]}


def test_body_over_max_body_bytes_is_413_and_not_forwarded(small_limit, upstream):
    r = small_limit.request("GET", "/v1/models")  # pooled upstream connection
    assert r.status == 200
    upstream.wait_for_requests(1)
    before = upstream.snapshot()
    r = small_limit.post("/v1/chat/completions", OVER_LIMIT)
    assert r.status == 413, (r.status, r.headers, r.body[:500])
    upstream.assert_untouched_since(before)
    # Under the limit still works on the same instance.
    r = small_limit.post("/v1/chat/completions", {**OVER_LIMIT, "messages": [{"role": "user", "content": "short"}]})
    assert r.status == 404 and r.header("x-understudy") == "miss"
    upstream.assert_untouched_since(before)


def test_body_over_max_body_bytes_is_not_reported_as_misconfigured(small_limit, upstream):
    before = small_limit.stats()
    r = small_limit.post("/v1/chat/completions", OVER_LIMIT)
    assert r.status == 413
    assert r.header("x-understudy") != "misconfigured", r.headers
    assert small_limit.stats()["misconfigured"] == before["misconfigured"]
