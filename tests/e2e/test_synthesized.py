"""Synthesized (modeled) answers for requests no asset matches, through real Envoy and the official SDKs."""

from __future__ import annotations

import json
import math
import struct

import anthropic
import openai
import pytest

from conftest import EXAMPLE_ASSETS, load_asset

RULES = [
    {"operation": "openai.embeddings", "model": "*"},
    {"operation": "openai.chat_completions", "model": "gpt-4o*", "echo": True},
    {"operation": "anthropic.messages", "model": "claude-*", "text": "A modeled answer."},
]


@pytest.fixture(scope="module")
def synth(tmp_path_factory, request):
    from conftest import start_understudy  # module-scoped: one Envoy for this file

    d = tmp_path_factory.mktemp("synth")
    rules = d / "rules.json"
    rules.write_text(json.dumps(RULES))
    upstream = request.getfixturevalue("upstream")
    u = start_understudy("synth", EXAMPLE_ASSETS, d, upstream=upstream.url, extra=["--synthesize", str(rules)])
    yield u
    u.stop()


@pytest.fixture
def oai(synth):
    with openai.OpenAI(base_url=synth.base_url, api_key="sk-test", max_retries=0, timeout=30) as c:
        yield c


def f32(v):
    """Floats as the float32 values they encode (the SDK decodes base64 to exact f32 doubles)."""
    return [struct.unpack("<f", struct.pack("<f", x))[0] for x in v]


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def test_unknown_embedding_inputs_get_stable_unit_vectors(oai, synth, upstream):
    before = upstream.snapshot()
    a = oai.embeddings.create(model="text-embedding-3-small", input=["never recorded", "also new"])  # SDK: base64
    b = oai.embeddings.create(model="text-embedding-3-small", input="never recorded", encoding_format="float")
    c = oai.embeddings.create(model="text-embedding-3-large", input="never recorded", dimensions=256)
    va, vb = a.data[0].embedding, b.data[0].embedding
    assert len(va) == 1536 and len(c.data[0].embedding) == 256
    assert f32(va) == f32(vb), "same text, same vector, whatever the encoding"
    assert abs(norm(va) - 1) < 1e-4 and abs(norm(a.data[1].embedding) - 1) < 1e-4
    cos = sum(x * y for x, y in zip(va, a.data[1].embedding))
    assert abs(cos) < 0.2, cos
    assert a.usage.prompt_tokens > 0
    upstream.assert_untouched_since(before)


def test_chat_echo_and_streaming_are_synthesized(oai, synth, upstream):
    before = upstream.snapshot()
    stats0 = synth.stats()
    raw = oai.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Echo me, please."}])
    assert raw.headers["x-understudy"] == "synthesized"
    r = raw.parse()
    assert r.choices[0].message.content == "Echo me, please."
    assert r.id.startswith("chatcmpl-") and r.usage.completion_tokens > 0
    stream = oai.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Stream this echo back"}], stream=True
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert text == "Stream this echo back"
    stats = synth.stats()
    assert stats["synthesized"] == stats0["synthesized"] + 2
    assert stats["misses"] == stats0["misses"]
    upstream.assert_untouched_since(before)


def test_anthropic_fixed_text_and_uncovered_models_still_miss(synth, upstream):
    before = upstream.snapshot()
    with anthropic.Anthropic(base_url=synth.root_url, api_key="sk-ant-test", max_retries=0, timeout=30) as c:
        msg = c.messages.create(model="claude-haiku-4-5", max_tokens=32, messages=[{"role": "user", "content": "anything"}])
        assert msg.content[0].text == "A modeled answer."
        assert msg.id.startswith("msg_01") and msg.usage.output_tokens > 0
    with openai.OpenAI(base_url=synth.base_url, api_key="sk-test", max_retries=0) as o:
        with pytest.raises(openai.NotFoundError):
            o.chat.completions.create(model="o3-mini", messages=[{"role": "user", "content": "no rule for o3"}])
    # Recorded assets still win over rules.
    hit = load_asset("openai/chat-capital.json")["request"]["body"]
    r = synth.post("/v1/chat/completions", hit)
    assert r.header("x-understudy") == "hit"
    upstream.assert_untouched_since(before)
