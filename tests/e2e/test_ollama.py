"""Ollama's native API through real Envoy, with the official `ollama` Python SDK as the client: hits, NDJSON
streams (on by default), recorded streams, misses, bad requests, synthesized answers, and no upstream bytes."""

from __future__ import annotations

import json
import math
import re
import time
from datetime import datetime

import ollama
import pytest

from conftest import EXAMPLE_ASSETS, asset_key, load_asset, start_understudy

CHAT = load_asset("ollama/chat-sky.json")
TOOL = load_asset("ollama/chat-weather-tool.json")
GEN = load_asset("ollama/generate-sky.json")
REC = load_asset("ollama/generate-recorded-stream.json")
EMBED = load_asset("ollama/embed-sky.json", 0)
LEGACY = load_asset("ollama/embed-sky.json", 1)
RECORDED_TEXT = "Recorded streams replay line by line."


@pytest.fixture
def client(strict):
    c = ollama.Client(host=strict.root_url, timeout=30)
    yield c
    c.close()


def sdk_body(asset: dict) -> dict:
    """The body the SDK sends for an asset's request (it always adds `stream` and, for chat, `tools`)."""
    body = dict(asset["request"]["body"], stream=False)
    if asset["request"]["path"] == "/api/chat":
        body.setdefault("tools", [])
    return body


def assert_now(created_at: str, recorded: str | None = None) -> None:
    """`created_at` is now, RFC 3339, in the recorded string's precision."""
    t = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    assert abs(t.timestamp() - time.time()) < 120, created_at
    if recorded is not None:
        assert created_at != recorded and len(created_at) == len(recorded), (created_at, recorded)


def test_chat_generate_and_embed_hits(client, upstream):
    req, rec = CHAT["request"]["body"], CHAT["response"]["body"]
    r = client.chat(model=req["model"], messages=req["messages"])
    assert r.message.role == "assistant" and r.message.content == rec["message"]["content"]
    assert (r.done, r.done_reason, r.prompt_eval_count, r.eval_count) == (True, "stop", 31, 35)
    assert r.total_duration == rec["total_duration"]
    assert_now(r.created_at, rec["created_at"])

    req = TOOL["request"]["body"]
    r = client.chat(model=req["model"], messages=req["messages"], tools=req["tools"])
    (call,) = r.message.tool_calls
    assert (call.function.name, call.function.arguments) == ("get_current_weather", {"city": "Toronto"})

    req = GEN["request"]["body"]
    r = client.generate(model=req["model"], prompt=req["prompt"], options=req["options"])
    assert r.response == GEN["response"]["body"]["response"]
    assert list(r.context) == GEN["response"]["body"]["context"]

    req = EMBED["request"]["body"]
    r = client.embed(model=req["model"], input=req["input"], dimensions=req["dimensions"])
    assert [list(v) for v in r.embeddings] == EMBED["response"]["body"]["embeddings"]
    assert r.prompt_eval_count == 16
    req = LEGACY["request"]["body"]
    assert list(client.embeddings(model=req["model"], prompt=req["prompt"]).embedding) == LEGACY["response"]["body"]["embedding"]
    assert upstream.snapshot() == (0, 0, 0)


def test_streams_are_rendered_from_plain_assets_and_are_the_default(client, strict, upstream):
    req, rec = CHAT["request"]["body"], CHAT["response"]["body"]
    parts = list(client.chat(model=req["model"], messages=req["messages"], stream=True))
    assert len(parts) > 10
    assert "".join(p.message.content for p in parts) == rec["message"]["content"]
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert (parts[-1].done_reason, parts[-1].eval_count) == ("stop", 35)
    assert_now(parts[0].created_at, rec["created_at"])

    req = GEN["request"]["body"]
    parts = list(client.generate(model=req["model"], prompt=req["prompt"], options=req["options"], stream=True))
    assert "".join(p.response for p in parts) == GEN["response"]["body"]["response"]
    assert list(parts[-1].context) == GEN["response"]["body"]["context"]

    # curl's view: a body without `stream` gets NDJSON, one JSON object a line.
    raw = strict.post("/api/chat", CHAT["request"]["body"])
    assert (raw.status, raw.header("content-type"), raw.header("x-understudy")) == (200, "application/x-ndjson", "hit")
    lines = [json.loads(line) for line in raw.body.decode().splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == rec["message"]["content"]
    assert lines[-1]["done"] is True and all(line["done"] is False for line in lines[:-1])
    # Embeddings never stream, whatever `stream` says.
    raw = strict.post("/api/embed", EMBED["request"]["body"])
    assert raw.header("content-type") == "application/json" and "embeddings" in raw.json()
    assert upstream.snapshot() == (0, 0, 0)


def test_a_recorded_stream_is_served_verbatim_and_assembled(client, strict, upstream):
    req = REC["request"]["body"]
    raw = strict.post("/api/generate", req)
    assert raw.body.decode() == REC["response"]["body_text"]
    assert raw.header("content-type") == "application/x-ndjson"
    parts = list(client.generate(model=req["model"], prompt=req["prompt"], stream=True))
    assert "".join(p.response for p in parts) == RECORDED_TEXT and len(parts) == 7
    r = client.generate(model=req["model"], prompt=req["prompt"])
    assert (r.response, r.eval_count, r.prompt_eval_count) == (RECORDED_TEXT, 6, 12)
    assert list(r.context) == [128006, 882, 128007, 271, 128009]
    assert upstream.snapshot() == (0, 0, 0)


def test_a_miss_raises_the_sdks_response_error_naming_the_key(client, strict, upstream):
    messages = [{"role": "user", "content": "never recorded"}]
    with pytest.raises(ollama.ResponseError) as exc:
        client.chat(model="llama3.2", messages=messages)
    e = exc.value
    assert e.status_code == 404 and "Understudy has no asset for this ollama.chat request" in e.error
    key = re.search(r"\(key ([0-9a-f]{64})\)", e.error).group(1)
    raw = strict.post("/api/chat", {"model": "llama3.2", "messages": messages, "tools": [], "stream": False})
    assert (raw.status, raw.header("x-understudy"), raw.header("x-understudy-key")) == (404, "miss", key)
    assert set(raw.json()) == {"error"}
    with pytest.raises(ollama.ResponseError) as exc:
        list(client.generate(model="llama3.2", prompt="never recorded", stream=True))
    assert exc.value.status_code == 404 and "ollama.generate" in exc.value.error
    assert upstream.snapshot() == (0, 0, 0)


def test_a_malformed_body_is_a_400_in_ollamas_shape(client, strict, upstream):
    with pytest.raises(ollama.ResponseError) as exc:
        client._request_raw("POST", "/api/chat", content=b'{"model": "llama3.2", "messages": [')
    assert exc.value.status_code == 400 and "could not read this ollama.chat request" in exc.value.error
    raw = strict.post("/api/generate", "[1, 2]")
    assert (raw.status, raw.header("x-understudy"), list(raw.json())) == (400, "bad-request", ["error"])
    assert upstream.snapshot() == (0, 0, 0)


def test_credentials_never_count_in_a_key(strict, upstream):
    want = asset_key("ollama/chat-sky.json")
    req = CHAT["request"]["body"]
    for headers in (None, {"Authorization": "Bearer sk-one"}, {"Authorization": "Bearer other", "Cookie": "s=1"}):
        with ollama.Client(host=strict.root_url, headers=headers, timeout=30) as c:
            assert c.chat(model=req["model"], messages=req["messages"]).message.content
        raw = strict.post("/api/chat", sdk_body(CHAT), headers=headers)
        assert (raw.header("x-understudy"), raw.header("x-understudy-key")) == ("hit", want), headers
    assert upstream.snapshot() == (0, 0, 0)


RULES = [
    {"operation": "ollama.chat", "model": "llama3*", "text": "A modeled answer."},
    {"operation": "ollama.generate", "echo": True},
    {"operation": "ollama.embed"},
    {"operation": "ollama.embeddings", "dimensions": 32},
]


@pytest.fixture(scope="module")
def synth(tmp_path_factory, request):
    d = tmp_path_factory.mktemp("ollama-synth")
    rules = d / "rules.json"
    rules.write_text(json.dumps(RULES))
    upstream = request.getfixturevalue("upstream")
    u = start_understudy("ollama-synth", EXAMPLE_ASSETS, d, upstream=upstream.url, extra=["--synthesize", str(rules)])
    yield u
    u.stop()


def test_synthesized_text_streams_and_embeddings(synth, upstream):
    before = upstream.snapshot()
    stats0 = synth.stats()
    with ollama.Client(host=synth.root_url, timeout=30) as c:
        messages = [{"role": "user", "content": "never recorded, modeled"}]
        r = c.chat(model="llama3.2", messages=messages)
        assert (r.message.content, r.done, r.done_reason) == ("A modeled answer.", True, "stop")
        assert r.prompt_eval_count > 0 and r.eval_count > 0
        assert r.total_duration > r.load_duration + r.prompt_eval_duration + r.eval_duration > 0
        assert_now(r.created_at)
        parts = list(c.chat(model="llama3.2", messages=messages, stream=True))
        assert "".join(p.message.content for p in parts) == "A modeled answer." and parts[-1].done

        assert c.generate(model="qwen3", prompt="echo me, please").response == "echo me, please"

        a = c.embed(model="all-minilm", input=["never recorded", "also new"])
        b = c.embed(model="all-minilm", input="never recorded")
        assert len(a.embeddings) == 2 and len(a.embeddings[0]) == 384
        assert list(a.embeddings[0]) == list(b.embeddings[0]), "same model and text, same vector"
        assert abs(math.sqrt(sum(x * x for x in a.embeddings[1])) - 1) < 1e-4
        assert a.prompt_eval_count > 0
        assert len(c.embed(model="nomic-embed-text", input="x", dimensions=64).embeddings[0]) == 64
        assert len(c.embeddings(model="nomic-embed-text", prompt="x").embedding) == 32
    stats = synth.stats()
    assert stats["synthesized"] - stats0["synthesized"] == 7 and stats["misses"] == stats0["misses"], stats
    upstream.assert_untouched_since(before)
