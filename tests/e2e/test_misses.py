"""Strict misses, bad requests and non-LLM traffic: what the client gets and what the upstream sees."""

from __future__ import annotations

import json
import re

import pytest

from conftest import FAKE_MODELS, load_asset

CAPITAL_BODY = load_asset("openai/chat-capital.json")["request"]["body"]
HAIKU_BODY = load_asset("anthropic/messages-haiku.json")["request"]["body"]
FOX_BODY = load_asset("openai/embeddings-fox.json")["request"]["body"]

KEY_RE = re.compile(r"^[0-9a-f]{64}$")


def assert_openai_miss(r, closest_name: str, operation: str) -> dict:
    assert r.status == 404, r.body
    assert r.header("x-understudy") == "miss"
    assert r.header("x-understudy-operation") == operation
    key = r.header("x-understudy-key")
    assert key and KEY_RE.match(key), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert err["type"] == "not_found_error"
    assert err["code"] == "understudy_no_matching_asset"
    assert "param" in err
    msg = err["message"]
    assert f"(key {key})" in msg, msg
    assert f"Closest asset: \"{closest_name}\"" in msg, msg
    return err


def test_strict_miss_openai_chat(strict, upstream):
    before = upstream.snapshot()
    body = {**CAPITAL_BODY, "temperature": 0.1}  # a real change: must not hit
    r = strict.post("/v1/chat/completions", body)
    err = assert_openai_miss(r, "chat: capital of France", "openai.chat_completions")
    assert "first difference at /temperature" in err["message"], err["message"]
    upstream.assert_untouched_since(before)
    assert upstream.snapshot() == (0, 0, 0)


def test_strict_miss_openai_embeddings(strict, upstream):
    before = upstream.snapshot()
    r = strict.post("/v1/embeddings", {**FOX_BODY, "input": ["The quick brown fox", "something else"]})
    assert_openai_miss(r, "embeddings: two sentences", "openai.embeddings")
    upstream.assert_untouched_since(before)


def test_strict_miss_azure_is_openai_shaped(strict, upstream):
    before = upstream.snapshot()
    body = {k: v for k, v in CAPITAL_BODY.items() if k != "model"}
    body["messages"] = [{"role": "user", "content": "Not recorded"}]
    r = strict.post("/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21", body)
    assert r.status == 404
    assert r.json()["error"]["type"] == "not_found_error"
    upstream.assert_untouched_since(before)


def test_strict_miss_anthropic(strict, upstream):
    before = upstream.snapshot()
    body = {**HAIKU_BODY, "messages": [{"role": "user", "content": "Write a haiku about caches."}]}
    r = strict.post("/v1/messages", body)
    assert r.status == 404, r.body
    assert r.header("x-understudy") == "miss"
    assert r.header("x-understudy-operation") == "anthropic.messages"
    key = r.header("x-understudy-key")
    assert key and KEY_RE.match(key)
    b = r.json()
    assert b["type"] == "error", b
    assert set(b) == {"type", "error"}, b
    assert b["error"]["type"] == "not_found_error"
    msg = b["error"]["message"]
    assert f"(key {key})" in msg, msg
    assert 'Closest asset: "messages: haiku about proxies"' in msg, msg
    upstream.assert_untouched_since(before)
    assert upstream.snapshot() == (0, 0, 0)


def test_pooled_upstream_connection_is_not_used_by_miss_or_bad_request(strict, upstream):
    """With a pooled upstream connection ready, a strict miss and a malformed body still send zero bytes."""
    r = strict.request("GET", "/v1/models", headers={"authorization": "Bearer sk-test"})
    assert r.status == 200, r.body
    assert r.json() == FAKE_MODELS
    assert r.header("x-understudy") is None
    upstream.wait_for_requests(1)
    bytes_after_models, conns, nreq = upstream.snapshot()
    assert bytes_after_models > 0 and conns >= 1 and nreq == 1
    assert upstream.requests[0].method == "GET" and upstream.requests[0].path == "/v1/models"
    before = upstream.snapshot()

    r = strict.post("/v1/chat/completions", {**CAPITAL_BODY, "messages": [{"role": "user", "content": "miss"}]})
    assert r.status == 404 and r.header("x-understudy") == "miss"
    upstream.assert_untouched_since(before)

    r = strict.post("/v1/chat/completions", b'{"model": "gpt-4o-mini", "messages": [')
    assert r.status == 400 and r.header("x-understudy") == "bad-request"
    upstream.assert_untouched_since(before)

    r = strict.post("/v1/messages", b"{not json")
    assert r.status == 400 and r.header("x-understudy") == "bad-request"
    upstream.assert_untouched_since(before)

    # The pooled connection is still usable for non-LLM traffic afterwards.
    r = strict.request("GET", "/v1/models")
    assert r.status == 200 and r.json() == FAKE_MODELS
    upstream.wait_for_requests(2)
    assert upstream.snapshot()[2] == 2


@pytest.mark.parametrize(
    "path,raw",
    [
        ("/v1/chat/completions", b'{"model": "gpt-4o-mini", "messages": [}'),
        ("/v1/chat/completions", b"not json at all"),
        ("/v1/embeddings", b'{"model": "x", "input": "a"} trailing'),
        ("/v1/chat/completions", b"[1, 2, 3"),
    ],
    ids=["broken-array", "text", "trailing-garbage", "truncated"],
)
def test_malformed_json_openai_is_400(strict, upstream, path, raw):
    before = upstream.snapshot()
    r = strict.post(path, raw)
    assert r.status == 400, r.body
    assert r.header("x-understudy") == "bad-request"
    b = r.json()
    assert set(b) == {"error"}, b
    assert b["error"]["type"] == "invalid_request_error"
    assert b["error"]["code"] == "understudy_bad_request"
    assert "could not read" in b["error"]["message"]
    upstream.assert_untouched_since(before)
    assert upstream.snapshot() == (0, 0, 0)


def test_malformed_json_anthropic_is_400(strict, upstream):
    before = upstream.snapshot()
    r = strict.post("/v1/messages", b'{"model": "claude", "max_tokens": 5,')
    assert r.status == 400, r.body
    assert r.header("x-understudy") == "bad-request"
    b = r.json()
    assert b["type"] == "error" and set(b) == {"type", "error"}, b
    assert b["error"]["type"] == "invalid_request_error"
    assert "anthropic.messages" in b["error"]["message"]
    upstream.assert_untouched_since(before)
    assert upstream.snapshot() == (0, 0, 0)


@pytest.mark.parametrize(
    "path,dialect",
    [("/v1/chat/completions", "openai"), ("/v1/embeddings", "openai"), ("/v1/messages", "anthropic")],
)
def test_empty_body_is_400(strict, upstream, path, dialect):
    before = upstream.snapshot()
    r = strict.post(path, b"")
    assert r.status == 400, r.body
    assert r.header("x-understudy") == "bad-request"
    b = r.json()
    if dialect == "openai":
        assert b["error"]["type"] == "invalid_request_error"
    else:
        assert b["type"] == "error" and b["error"]["type"] == "invalid_request_error"
    upstream.assert_untouched_since(before)
    assert upstream.snapshot() == (0, 0, 0)


def test_non_llm_paths_pass_through_untouched(strict, upstream):
    r = strict.request("GET", "/v1/models?limit=5", headers={"authorization": "Bearer sk-test", "x-trace": "t1"})
    assert r.status == 200, r.body
    assert r.json() == FAKE_MODELS
    assert r.header("x-fake-upstream") == "1"
    assert r.header("x-understudy") is None
    assert r.header("x-understudy-key") is None

    payload = b'{"purpose": "batch", "file": "abc"}'
    r = strict.post("/v1/files", payload)  # POST, but not an LLM operation
    assert r.status == 200
    assert r.header("x-fake-upstream") == "1"
    assert r.header("x-understudy") is None

    r = strict.request("GET", "/v1/chat/completions")  # wrong method for an LLM call: not ours
    assert r.status == 200 and r.header("x-understudy") is None

    upstream.wait_for_requests(3)
    reqs = upstream.requests
    assert [(q.method, q.path) for q in reqs] == [
        ("GET", "/v1/models?limit=5"),
        ("POST", "/v1/files"),
        ("GET", "/v1/chat/completions"),
    ]
    assert reqs[0].headers.get("authorization") == "Bearer sk-test"
    assert reqs[0].headers.get("x-trace") == "t1"
    assert reqs[1].body == payload
    total = sum(len(q.body) for q in reqs)
    assert upstream.snapshot()[0] > total  # headers counted as well as bodies
