"""Hits for every dialect and path shape, and request variants that must still hit the same asset."""

from __future__ import annotations

import json

import pytest

from conftest import assert_served_body, asset_key, load_asset

CAPITAL = "openai/chat-capital.json"
WEATHER = "openai/chat-weather-tool.json"
FOX = "openai/embeddings-fox.json"
HAIKU = "anthropic/messages-haiku.json"
CAFE = "chat-cafe.json"  # tests/e2e/assets


def assert_hit(resp, rel: str, index: int = 0, stream: bool = False) -> None:
    asset = load_asset(rel, index)
    want = asset["response"]
    assert resp.status == want.get("status", 200), resp.body[:2000]
    assert resp.header("x-understudy") == "hit", (resp.status, resp.headers, resp.body[:2000])
    assert resp.header("x-understudy-key") == asset_key(rel, index)
    if stream:
        # `stream` is not part of the key, but a streaming request gets the asset as SSE.
        assert resp.header("content-type") == "text/event-stream; charset=utf-8", resp.headers
        assert resp.body.rstrip().endswith(b"data: [DONE]"), resp.body[-200:]
        return
    assert_served_body(resp.json(), want["body"])
    for k, v in (want.get("headers") or {"content-type": "application/json"}).items():
        assert resp.header(k) == v, f"header {k}: {resp.headers}"


@pytest.mark.parametrize(
    "rel,index,path",
    [
        (CAPITAL, 0, "/v1/chat/completions"),
        (WEATHER, 0, "/v1/chat/completions"),
        (FOX, 0, "/v1/embeddings"),
        (HAIKU, 0, "/v1/messages"),
        (HAIKU, 1, "/v1/messages"),
        (CAFE, 0, "/v1/chat/completions"),
    ],
    ids=["openai-chat", "openai-chat-tools", "openai-embeddings", "anthropic-messages", "anthropic-tool-use", "chat-utf8"],
)
def test_each_dialect_hits_without_touching_the_upstream(strict, upstream, rel, index, path):
    body = load_asset(rel, index)["request"]["body"]
    before = upstream.snapshot()
    r = strict.post(path, json.dumps(body, ensure_ascii=False).encode())
    assert_hit(r, rel, index)
    upstream.assert_untouched_since(before)
    assert before == (0, 0, 0)


def test_azure_deployment_path_hits_openai_asset(strict, upstream):
    body = dict(load_asset(CAPITAL)["request"]["body"])
    assert body.pop("model") == "gpt-4o-mini"
    before = upstream.snapshot()
    r = strict.post(
        "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21",
        body,
        headers={"api-key": "azure-secret"},
    )
    assert_hit(r, CAPITAL)
    upstream.assert_untouched_since(before)


def test_azure_deployment_is_the_model(strict, upstream):
    """The deployment in the path counts as the model: another deployment must not hit."""
    body = dict(load_asset(CAPITAL)["request"]["body"])
    body.pop("model")
    before = upstream.snapshot()
    r = strict.post("/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", body)
    assert r.status == 404, r.body
    assert r.header("x-understudy") == "miss"
    upstream.assert_untouched_since(before)


@pytest.mark.parametrize(
    "path",
    ["/proxy/openai/v1/chat/completions", "/gateway/team-a/v1/chat/completions?trace=1", "/chat/completions"],
)
def test_gateway_prefixes_hit(strict, upstream, path):
    before = upstream.snapshot()
    r = strict.post(path, load_asset(CAPITAL)["request"]["body"])
    assert_hit(r, CAPITAL)
    upstream.assert_untouched_since(before)


def test_gateway_prefix_for_anthropic_hits(strict, upstream):
    before = upstream.snapshot()
    r = strict.post("/proxy/anthropic/v1/messages?beta=true", load_asset(HAIKU)["request"]["body"])
    assert_hit(r, HAIKU)
    upstream.assert_untouched_since(before)


# ---------------------------------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------------------------------


def reverse_keys(v):
    if isinstance(v, dict):
        return {k: reverse_keys(v[k]) for k in reversed(list(v))}
    if isinstance(v, list):
        return [reverse_keys(x) for x in v]
    return v


def with_raw_field(body: dict, field: str, raw: str) -> bytes:
    """`body` with `field` replaced by the literal JSON text `raw` (to control number spelling)."""
    rest = {k: v for k, v in body.items() if k != field}
    text = json.dumps(rest, ensure_ascii=False)
    return (text[:-1] + f', "{field}": {raw}}}').encode()


CAPITAL_BODY = load_asset(CAPITAL)["request"]["body"]
CAFE_BODY = load_asset(CAFE)["request"]["body"]
assert CAPITAL_BODY["temperature"] == 0 and CAFE_BODY["temperature"] == 0.7

VARIANTS = {
    # key order, at every level
    "capital-keys-reversed": (CAPITAL, json.dumps(reverse_keys(CAPITAL_BODY)).encode()),
    "cafe-keys-reversed": (CAFE, json.dumps(reverse_keys(CAFE_BODY), ensure_ascii=False).encode()),
    # whitespace
    "capital-pretty": (CAPITAL, b"\n\t " + json.dumps(CAPITAL_BODY, indent=4).encode() + b" \r\n"),
    "capital-compact": (CAPITAL, json.dumps(CAPITAL_BODY, separators=(",", ":")).encode()),
    # number spelling
    "temperature-0.0": (CAPITAL, with_raw_field(CAPITAL_BODY, "temperature", "0.0")),
    "temperature-0e0": (CAPITAL, with_raw_field(CAPITAL_BODY, "temperature", "0e0")),
    "temperature-0E+00": (CAPITAL, with_raw_field(CAPITAL_BODY, "temperature", "0E+00")),
    "temperature-0.70": (CAFE, with_raw_field(CAFE_BODY, "temperature", "0.70")),
    "temperature-7e-1": (CAFE, with_raw_field(CAFE_BODY, "temperature", "7e-1")),
    "max_tokens-64.0": (CAFE, with_raw_field(CAFE_BODY, "max_tokens", "64.0")),
    # string escapes
    "cafe-raw-utf8": (CAFE, json.dumps(CAFE_BODY, ensure_ascii=False).encode("utf-8")),
    "cafe-u00e9-escapes": (CAFE, json.dumps(CAFE_BODY, ensure_ascii=True).encode("ascii")),
    "capital-escaped-ascii": (
        CAPITAL,
        json.dumps(CAPITAL_BODY).replace("What is", "\\u0057hat\\u0020is").replace("France", "Fr\\u0061nce").encode(),
    ),
}
assert b"\\u00e9" in VARIANTS["cafe-u00e9-escapes"][1] and "é".encode() in VARIANTS["cafe-raw-utf8"][1]


@pytest.mark.parametrize("rel,raw", list(VARIANTS.values()), ids=list(VARIANTS))
def test_equivalent_spellings_hit(strict, upstream, rel, raw):
    before = upstream.snapshot()
    r = strict.post("/v1/chat/completions", raw)
    assert_hit(r, rel)
    upstream.assert_untouched_since(before)


IGNORED_OPENAI = {
    "stream-false": {"stream": False},
    "stream-true": {"stream": True},
    "stream_options": {"stream_options": {"include_usage": True}},
    "user": {"user": "user-1234"},
    "metadata": {"metadata": {"run": "e2e", "n": "1"}},
    "store": {"store": True},
    "service_tier": {"service_tier": "flex"},
    "safety_identifier": {"safety_identifier": "hash-abc"},
    "prompt_cache_key": {"prompt_cache_key": "cache-1"},
    "all-at-once": {
        "stream": False,
        "user": "u",
        "metadata": {"a": "b"},
        "store": False,
        "service_tier": "default",
        "safety_identifier": "s",
        "prompt_cache_key": "k",
    },
}


@pytest.mark.parametrize("extra", list(IGNORED_OPENAI.values()), ids=list(IGNORED_OPENAI))
def test_ignored_fields_still_hit_openai(strict, upstream, extra):
    before = upstream.snapshot()
    r = strict.post("/v1/chat/completions", {**CAPITAL_BODY, **extra})
    assert_hit(r, CAPITAL, stream=extra.get("stream") is True)
    upstream.assert_untouched_since(before)


@pytest.mark.parametrize(
    "extra",
    [{"metadata": {"user_id": "u-42"}}, {"stream": False}, {"service_tier": "auto"}],
    ids=["metadata", "stream", "service_tier"],
)
def test_ignored_fields_still_hit_anthropic(strict, upstream, extra):
    before = upstream.snapshot()
    r = strict.post("/v1/messages", {**load_asset(HAIKU)["request"]["body"], **extra})
    assert_hit(r, HAIKU)
    upstream.assert_untouched_since(before)


@pytest.mark.parametrize(
    "extra",
    [{"encoding_format": "float"}, {"encoding_format": "base64"}, {"user": "someone"}],
    ids=["float", "base64", "user"],
)
def test_ignored_fields_still_hit_embeddings(strict, upstream, extra):
    before = upstream.snapshot()
    r = strict.post("/v1/embeddings", {**load_asset(FOX)["request"]["body"], **extra})
    assert r.status == 200, r.body
    assert r.header("x-understudy") == "hit"
    assert r.header("x-understudy-key") == asset_key(FOX)
    upstream.assert_untouched_since(before)


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer sk-live-aaaa", "openai-organization": "org-1", "user-agent": "OpenAI/Python 9"},
        {"authorization": "Bearer sk-other", "x-request-id": "abc", "accept": "*/*", "openai-beta": "assistants=v2"},
        {"x-api-key": "sk-ant-xyz", "anthropic-version": "2023-06-01", "content-type": "application/json; charset=utf-8"},
        {"api-key": "azure", "x-stainless-retry-count": "3", "cookie": "a=b"},
    ],
    ids=["sdk-ish", "other-auth", "anthropic-ish", "azure-ish"],
)
def test_different_headers_still_hit(strict, upstream, headers):
    before = upstream.snapshot()
    r = strict.post("/v1/chat/completions", CAPITAL_BODY, headers=headers)
    assert_hit(r, CAPITAL)
    r = strict.post("/v1/messages", load_asset(HAIKU)["request"]["body"], headers=headers)
    assert_hit(r, HAIKU)
    upstream.assert_untouched_since(before)


def test_chunked_request_body_hits(strict, upstream):
    """A body sent with transfer-encoding: chunked, in several chunks, is buffered and matched."""
    import http.client

    raw = json.dumps(CAPITAL_BODY).encode()
    chunks = [raw[i : i + 17] for i in range(0, len(raw), 17)]
    before = upstream.snapshot()
    conn = http.client.HTTPConnection("127.0.0.1", strict.port, timeout=30)
    try:
        conn.request("POST", "/v1/chat/completions", body=iter(chunks), headers={"content-type": "application/json"}, encode_chunked=True)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200, body
    assert resp.getheader("x-understudy") == "hit"
    assert_served_body(json.loads(body), load_asset(CAPITAL)["response"]["body"])
    upstream.assert_untouched_since(before)
