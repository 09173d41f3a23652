"""on_miss=passthrough: misses reach the (fake) live upstream, hits still never do."""

from __future__ import annotations

import json

from conftest import assert_served_body, FAKE_CHAT, FAKE_MESSAGE, asset_key, load_asset

CAPITAL = load_asset("openai/chat-capital.json")
HAIKU = load_asset("anthropic/messages-haiku.json")


def test_passthrough_miss_reaches_upstream(passthrough, upstream):
    body = {**CAPITAL["request"]["body"], "messages": [{"role": "user", "content": "Not recorded: go live"}]}
    raw = json.dumps(body).encode()
    r = passthrough.post("/v1/chat/completions", raw, headers={"authorization": "Bearer sk-live"})
    assert r.status == 200, r.body
    assert r.header("x-understudy") == "passthrough"
    assert r.header("x-fake-upstream") == "1"
    assert r.json() == FAKE_CHAT
    upstream.wait_for_requests(1)
    nbytes, conns, nreq = upstream.snapshot()
    assert nbytes > len(raw) and conns >= 1 and nreq == 1
    got = upstream.requests[0]
    assert (got.method, got.path) == ("POST", "/v1/chat/completions")
    assert got.body == raw, "the buffered body must be forwarded unchanged"
    assert got.headers.get("authorization") == "Bearer sk-live"


def test_passthrough_anthropic_miss_reaches_upstream(passthrough, upstream):
    body = {**HAIKU["request"]["body"], "max_tokens": 7}
    r = passthrough.post("/v1/messages", body)
    assert r.status == 200, r.body
    assert r.header("x-understudy") == "passthrough"
    assert r.json() == FAKE_MESSAGE
    upstream.wait_for_requests(1)
    assert upstream.requests[0].path == "/v1/messages"
    assert json.loads(upstream.requests[0].body) == body


def test_passthrough_bad_request_is_forwarded(passthrough, upstream):
    r = passthrough.post("/v1/chat/completions", b"{broken")
    assert r.status == 200, r.body
    assert r.header("x-understudy") == "passthrough"
    upstream.wait_for_requests(1)
    assert upstream.requests[0].body == b"{broken"


def test_hit_in_passthrough_mode_sends_nothing_upstream(passthrough, upstream):
    # Make sure Envoy holds a pooled upstream connection first.
    r = passthrough.post("/v1/chat/completions", {**CAPITAL["request"]["body"], "temperature": 1.5})
    assert r.header("x-understudy") == "passthrough"
    upstream.wait_for_requests(1)
    before = upstream.snapshot()
    assert before[0] > 0

    r = passthrough.post("/v1/chat/completions", CAPITAL["request"]["body"])
    assert r.status == 200, r.body
    assert r.header("x-understudy") == "hit"
    assert r.header("x-understudy-key") == asset_key("openai/chat-capital.json")
    assert_served_body(r.json(), CAPITAL["response"]["body"])
    r = passthrough.post("/v1/messages", HAIKU["request"]["body"])
    assert r.header("x-understudy") == "hit"
    assert_served_body(r.json(), HAIKU["response"]["body"])
    upstream.assert_untouched_since(before)
