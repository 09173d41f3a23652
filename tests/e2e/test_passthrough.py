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


def test_each_api_forwards_to_its_own_upstream(understudy_factory, assets_dir, upstream):
    """`--upstream` is the default; `--upstream-anthropic` takes Anthropic's calls, whatever gateway prefix
    their path has (the filter names the provider, routing follows it), and the routing header never leaves
    Envoy. An Azure call with no upstream of its own goes to the default."""
    from conftest import FakeUpstream

    anthropic = FakeUpstream()
    try:
        u = understudy_factory(assets_dir, on_miss="passthrough", extra=["--upstream-anthropic", anthropic.url])
        body = {**HAIKU["request"]["body"], "max_tokens": 9}
        for path in ("/v1/messages", "/anthropic/v1/messages", "/gw/x/v1/messages?beta=true"):
            r = u.post(path, body)
            assert (r.status, r.header("x-understudy")) == (200, "passthrough"), (path, r.body)
        anthropic.wait_for_requests(3)
        assert [q.path for q in anthropic.requests] == ["/v1/messages", "/anthropic/v1/messages", "/gw/x/v1/messages?beta=true"]
        assert all("x-understudy-upstream" not in q.headers for q in anthropic.requests)
        # Anthropic's non-LLM paths go there too; OpenAI and Azure calls and other paths to the default.
        assert u.post("/v1/messages/count_tokens", body).status == 200
        chat = {**CAPITAL["request"]["body"], "temperature": 1.9}
        assert u.post("/v1/chat/completions", chat).header("x-understudy") == "passthrough"
        assert u.post("/openai/deployments/gpt4o/chat/completions?api-version=1", chat).status == 200
        assert u.request("GET", "/v1/models").status == 200
        anthropic.wait_for_requests(4)
        upstream.wait_for_requests(3)
        assert [q.path for q in anthropic.requests][3:] == ["/v1/messages/count_tokens"]
        assert [q.path for q in upstream.requests] == [
            "/v1/chat/completions", "/openai/deployments/gpt4o/chat/completions?api-version=1", "/v1/models"]
        assert all("x-understudy-upstream" not in q.headers for q in upstream.requests)
    finally:
        anthropic.close()
