"""The official OpenAI and Anthropic Python SDKs against `understudy up`: no live model, no upstream bytes."""

from __future__ import annotations

import json
import struct

import anthropic
import openai
import pytest

from conftest import asset_key, load_asset

CAPITAL = load_asset("openai/chat-capital.json")
WEATHER = load_asset("openai/chat-weather-tool.json")
FOX = load_asset("openai/embeddings-fox.json")
HAIKU = load_asset("anthropic/messages-haiku.json", 0)
TOOL_USE = load_asset("anthropic/messages-haiku.json", 1)


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


@pytest.fixture
def oai(strict):
    with openai.OpenAI(base_url=strict.base_url, api_key="sk-test", max_retries=0, timeout=30) as c:
        yield c


@pytest.fixture
def claude(strict):
    with anthropic.Anthropic(base_url=strict.root_url, api_key="sk-ant-test", max_retries=0, timeout=30) as c:
        yield c


def test_openai_sdk_chat_content_and_tool_call(oai, upstream):
    req = CAPITAL["request"]["body"]
    resp = oai.chat.completions.create(model=req["model"], messages=req["messages"], temperature=req["temperature"])
    assert resp.id.startswith("chatcmpl-") and len(resp.id) == len(CAPITAL["response"]["body"]["id"])
    assert resp.choices[0].message.content == "The capital of France is Paris."
    assert resp.usage.total_tokens == 32

    req = WEATHER["request"]["body"]
    resp = oai.chat.completions.create(model=req["model"], messages=req["messages"], tools=req["tools"])
    msg = resp.choices[0].message
    assert resp.choices[0].finish_reason == "tool_calls"
    assert msg.content is None
    assert len(msg.tool_calls) == 1
    call = msg.tool_calls[0]
    assert call.id == "call_Xr4k2mQ9tLz1pN7vB3cW8yHs"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    assert upstream.snapshot() == (0, 0, 0)


def test_openai_sdk_raw_response_headers(oai, upstream):
    req = CAPITAL["request"]["body"]
    raw = oai.chat.completions.with_raw_response.create(**req)
    assert raw.headers.get("x-understudy") == "hit"
    assert raw.headers.get("openai-processing-ms") == "312"
    assert raw.parse().choices[0].message.content == "The capital of France is Paris."
    assert upstream.snapshot() == (0, 0, 0)


def test_openai_sdk_embeddings_default_base64(oai, upstream):
    req = FOX["request"]["body"]
    raw = oai.embeddings.with_raw_response.create(model=req["model"], input=req["input"], dimensions=req["dimensions"])
    # The SDK asked for base64 (its default) and the wire body carried base64 strings...
    wire = json.loads(raw.http_response.content)
    assert all(isinstance(d["embedding"], str) for d in wire["data"]), wire
    # ...which it decoded back into the recorded vectors.
    resp = raw.parse()
    want = [d["embedding"] for d in FOX["response"]["body"]["data"]]
    assert len(resp.data) == 2
    for got, vec in zip(resp.data, want):
        assert [f32(x) for x in got.embedding] == [f32(x) for x in vec]
    assert resp.model == "text-embedding-3-small"

    resp = oai.embeddings.create(model=req["model"], input=req["input"], dimensions=req["dimensions"])
    assert [f32(x) for x in resp.data[1].embedding] == [f32(x) for x in want[1]]
    resp = oai.embeddings.create(model=req["model"], input=req["input"], dimensions=req["dimensions"], encoding_format="float")
    assert resp.data[0].embedding == want[0]
    assert upstream.snapshot() == (0, 0, 0)


def test_anthropic_sdk_text_and_tool_use(claude, upstream):
    req = HAIKU["request"]["body"]
    msg = claude.messages.create(**req)
    assert msg.id.startswith("msg_01") and msg.id != "msg_01XFDUDYJgAACzvnptvVoYEL"  # fresh per hit
    assert msg.content[0].type == "text"
    assert msg.content[0].text == HAIKU["response"]["body"]["content"][0]["text"]
    assert msg.stop_reason == "end_turn"

    req = TOOL_USE["request"]["body"]
    msg = claude.messages.create(**req)
    assert msg.stop_reason == "tool_use"
    assert [b.type for b in msg.content] == ["text", "tool_use"]
    assert msg.content[0].text == "I'll check the weather in Oslo."
    tool = msg.content[1]
    assert tool.name == "get_weather"
    assert tool.id == "toolu_01A09q90qw90lq917835lq9"
    assert tool.input == {"city": "Oslo"}
    assert upstream.snapshot() == (0, 0, 0)


def test_openai_sdk_strict_miss_raises_not_found(oai, upstream):
    with pytest.raises(openai.NotFoundError) as exc:
        oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "never recorded"}])
    e = exc.value
    assert e.status_code == 404
    assert e.response.headers.get("x-understudy") == "miss"
    assert e.code == "understudy_no_matching_asset"
    assert "Understudy has no asset" in e.message and "Closest asset" in e.message
    with pytest.raises(openai.NotFoundError):
        oai.embeddings.create(model="text-embedding-3-small", input="never recorded")
    assert upstream.snapshot() == (0, 0, 0)


def test_anthropic_sdk_strict_miss_raises_not_found(claude, upstream):
    with pytest.raises(anthropic.NotFoundError) as exc:
        claude.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "never recorded"}])
    e = exc.value
    assert e.status_code == 404
    assert e.response.headers.get("x-understudy") == "miss"
    assert isinstance(e.body, dict), e.body
    assert e.body["type"] == "error" and e.body["error"]["type"] == "not_found_error", e.body
    assert "Understudy has no asset" in str(e)
    assert upstream.snapshot() == (0, 0, 0)


def test_sdk_bad_request_raises_bad_request(strict, upstream):
    with openai.OpenAI(base_url=strict.base_url, api_key="sk-test", max_retries=0) as c:
        with pytest.raises(openai.BadRequestError):
            c.post("/chat/completions", body=None, cast_to=object, options={"headers": {"content-type": "application/json"}})
    assert upstream.snapshot() == (0, 0, 0)


@pytest.mark.parametrize("prefix", ["/openai/v1", "/api/v1"], ids=["groq", "openrouter"])
def test_openai_compatible_base_urls_are_the_openai_dialect(strict, upstream, prefix):
    """Groq's (`/openai/v1`) and OpenRouter's (`/api/v1`) base URLs: the same assets and keys as OpenAI's, and
    OpenAI's error shape on a miss (OpenRouter's `/api/...` is not Ollama's)."""
    req = CAPITAL["request"]["body"]
    with openai.OpenAI(base_url=strict.root_url + prefix, api_key="sk-or-test", max_retries=0, timeout=30) as c:
        raw = c.chat.completions.with_raw_response.create(**req)
        assert (raw.headers.get("x-understudy"), raw.headers.get("x-understudy-key")) == (
            "hit",
            asset_key("openai/chat-capital.json"),
        )
        assert raw.parse().choices[0].message.content == "The capital of France is Paris."
        with pytest.raises(openai.NotFoundError) as exc:
            c.chat.completions.create(model="llama-3.3-70b-versatile", messages=[{"role": "user", "content": "new"}])
        assert exc.value.code == "understudy_no_matching_asset"
        assert "openai.chat_completions" in exc.value.message
    assert upstream.snapshot() == (0, 0, 0)
