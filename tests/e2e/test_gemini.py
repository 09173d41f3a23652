"""The Gemini API and Vertex AI (Gemini and Anthropic models) through real Envoy, driven by the official google-genai
and anthropic (`AnthropicVertex`) SDKs: hits, streams in both framings, recorded streams, misses, bad requests,
synthesized answers, usage and fresh ids, with nothing sent upstream."""

from __future__ import annotations

import datetime
import json
import math

import anthropic
import google.oauth2.credentials
import pytest
from google import genai
from google.genai import errors, types

from conftest import asset_key, load_asset, start_understudy

CAPITAL = load_asset("gemini/generate-capital.json")
WEATHER = load_asset("gemini/generate-weather-tool.json")
FOX = load_asset("gemini/embed-fox.json")
HAIKU = load_asset("gemini/vertex-haiku.json")
CLAUDE = load_asset("vertex-anthropic/messages-oslo.json")
RECORDED_SSE = load_asset("gemini/recorded-streams.json", 0)
RECORDED_ARRAY = load_asset("gemini/recorded-streams.json", 1)

API_KEY = "AIzaSyUnderstudy-e2e-secret-0001"
RULES = [
    {"operation": "gemini.generate_content", "model": "synth-*", "echo": True},
    {"operation": "gemini.embed_content", "model": "synth-*"},
    {"operation": "gemini.batch_embed_contents", "model": "synth-*"},
    {"operation": "gemini.count_tokens", "model": "synth-*"},
    {"operation": "anthropic.messages", "model": "synth-claude*", "text": "A modeled Claude answer."},
]


@pytest.fixture(scope="module")
def gem(tmp_path_factory, assets_dir, upstream):
    """One strict instance over all assets, with synthesize rules for `synth-*` models only."""
    d = tmp_path_factory.mktemp("gemini")
    rules = d / "rules.json"
    rules.write_text(json.dumps(RULES))
    u = start_understudy("gemini", assets_dir, d, upstream=upstream.url, extra=["--synthesize", str(rules)])
    yield u
    u.stop()


@pytest.fixture(scope="module")
def client(gem):
    # Keep the Client referenced for the module: it closes its connection pool when collected.
    return genai.Client(api_key=API_KEY, http_options=types.HttpOptions(base_url=gem.root_url, timeout=30_000))


@pytest.fixture(scope="module")
def vertex(gem):
    creds = google.oauth2.credentials.Credentials(token="ya29.understudy-e2e-token")
    return genai.Client(
        vertexai=True,
        project="my-project",
        location="us-central1",
        credentials=creds,
        http_options=types.HttpOptions(base_url=gem.root_url, timeout=30_000),
    )


@pytest.fixture(scope="module")
def claude(gem):
    with anthropic.AnthropicVertex(
        region="us-east5",
        project_id="my-project",
        access_token="ya29.understudy-e2e-token",
        base_url=f"{gem.root_url}/v1",
        max_retries=0,
        timeout=30,
    ) as c:
        yield c


def headers_of(resp) -> dict:
    return {k.lower(): v for k, v in (resp.sdk_http_response.headers or {}).items()}


def text_of(body: dict) -> str:
    return "".join(p.get("text", "") for p in body["candidates"][0]["content"]["parts"] if not p.get("thought"))


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def test_gemini_api_text_and_tool_call_hits(client, gem, upstream):
    before = upstream.snapshot()
    resp = client.models.generate_content(model="gemini-2.0-flash", contents="What is the capital of France?")
    assert resp.text == text_of(CAPITAL["response"]["body"])
    assert headers_of(resp)["x-understudy"] == "hit"
    recorded_id = CAPITAL["response"]["body"]["responseId"]
    assert resp.response_id != recorded_id and len(resp.response_id) == len(recorded_id)
    assert resp.model_version == "gemini-2.0-flash"
    u = resp.usage_metadata
    assert (u.prompt_token_count, u.candidates_token_count, u.total_token_count) == (7, 8, 15)
    assert resp.candidates[0].finish_reason == types.FinishReason.STOP
    # The same asset answers google-genai's v1beta.
    beta = genai.Client(api_key=API_KEY, http_options=types.HttpOptions(base_url=gem.root_url, api_version="v1beta"))
    again = beta.models.generate_content(model="gemini-2.0-flash", contents="What is the capital of France?")
    assert again.text == resp.text and again.response_id != resp.response_id

    tool = types.Tool(
        function_declarations=[
            types.FunctionDeclaration(
                name="get_weather",
                description="Get the current weather for a city.",
                parameters=types.Schema(
                    type="OBJECT",
                    properties={"city": types.Schema(type="STRING", description="City name, e.g. Oslo")},
                    required=["city"],
                ),
            )
        ]
    )
    resp = client.models.generate_content(
        model="gemini-2.5-flash", contents="What's the weather in Oslo right now?", config=types.GenerateContentConfig(tools=[tool])
    )
    call = resp.function_calls[0]
    assert (call.name, call.args) == ("get_weather", {"city": "Oslo"})
    assert resp.candidates[0].content.parts[0].thought_signature  # bytes, decoded by the SDK
    assert resp.usage_metadata.thoughts_token_count == 62
    upstream.assert_untouched_since(before)


def test_one_asset_serves_vertex_ai_and_the_gemini_api(client, vertex, gem, upstream):
    before = upstream.snapshot()
    v = vertex.models.generate_content(model="gemini-2.0-flash", contents="What is the capital of France?")
    g = client.models.generate_content(model="gemini-2.0-flash", contents="What is the capital of France?")
    assert v.text == g.text == text_of(CAPITAL["response"]["body"])
    key = asset_key("gemini/generate-capital.json")
    assert headers_of(v)["x-understudy-key"] == headers_of(g)["x-understudy-key"] == key
    # An asset recorded on Vertex AI (with `createTime`, refreshed to now) answers both too.
    config = types.GenerateContentConfig(temperature=0.2)
    for c in (vertex, client):
        r = c.models.generate_content(model="gemini-2.0-flash", contents="Write a haiku about Oslo.", config=config)
        assert r.text == text_of(HAIKU["response"]["body"])
        assert r.response_id != HAIKU["response"]["body"]["responseId"]
        if c is vertex:  # only google-genai's Vertex AI mode reads `createTime`
            age = datetime.datetime.now(datetime.timezone.utc) - r.create_time
            assert abs(age.total_seconds()) < 120, r.create_time
    upstream.assert_untouched_since(before)


def test_streams_rendered_from_a_plain_asset_in_both_framings(client, vertex, gem, upstream):
    before = upstream.snapshot()
    want = text_of(CAPITAL["response"]["body"])
    for c in (client, vertex):
        chunks = list(c.models.generate_content_stream(model="gemini-2.0-flash", contents="What is the capital of France?"))
        assert len(chunks) > 2
        assert "".join(ch.text or "" for ch in chunks) == want
        assert len({ch.response_id for ch in chunks}) == 1
        assert chunks[-1].usage_metadata.total_token_count == 15
        assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    # Without `alt=sse`: one JSON array, chunk by chunk.
    r = gem.post("/v1beta/models/gemini-2.0-flash:streamGenerateContent", CAPITAL["request"]["body"], {"x-goog-api-key": API_KEY})
    assert r.status == 200 and r.header("content-type").startswith("application/json")
    chunks = r.json()
    assert isinstance(chunks, list) and len(chunks) > 2
    assert "".join(text_of(ch) for ch in chunks) == want
    r = gem.post("/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse", CAPITAL["request"]["body"])
    assert r.header("content-type") == "text/event-stream" and r.body.startswith(b"data: {")
    upstream.assert_untouched_since(before)


def test_recorded_streams_verbatim_and_reframed(client, gem, upstream):
    before = upstream.snapshot()
    sse_text = RECORDED_SSE["response"]["body_text"]
    array_text = RECORDED_ARRAY["response"]["body_text"]
    # Verbatim in the framing they were recorded in.
    r = gem.post("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", RECORDED_SSE["request"]["body"])
    assert r.body.decode() == sse_text and r.header("x-understudy") == "hit"
    r = gem.post("/v1beta/models/gemini-2.0-flash:streamGenerateContent", RECORDED_ARRAY["request"]["body"])
    assert r.body.decode() == array_text
    # google-genai streams the SSE recording: thoughts and answer apart, the signature on the last piece.
    config = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(include_thoughts=True))
    chunks = list(client.models.generate_content_stream(
        model="gemini-2.5-flash", contents="Explain why the sky is blue in two sentences.", config=config
    ))
    parts = [p for ch in chunks for p in ch.candidates[0].content.parts]
    assert parts[0].thought and parts[0].text.startswith("**Explaining Rayleigh scattering**")
    assert "".join(p.text for p in parts if not p.thought).startswith("Sunlight is scattered by the molecules")
    assert parts[-1].thought_signature
    # The JSON-array recording, re-framed as SSE for the SDK.
    chunks = list(client.models.generate_content_stream(model="gemini-2.0-flash", contents="Count from one to five."))
    assert [ch.text for ch in chunks] == ["One, two,", " three, four, five."]
    # A plain request gets the assembled answer.
    resp = client.models.generate_content(model="gemini-2.0-flash", contents="Count from one to five.")
    assert resp.text == "One, two, three, four, five."
    assert resp.usage_metadata.candidates_token_count == 9
    upstream.assert_untouched_since(before)


def test_misses_raise_the_sdks_own_not_found_errors(client, vertex, claude, gem, upstream):
    before = upstream.snapshot()
    for c in (client, vertex):
        with pytest.raises(errors.ClientError) as exc:
            c.models.generate_content(model="gemini-2.0-flash", contents="never recorded")
        e = exc.value
        assert (e.code, e.status) == (404, "NOT_FOUND")
        key = e.response.headers["x-understudy-key"]
        assert e.response.headers["x-understudy"] == "miss"
        assert key in e.message and "gemini.generate_content" in e.message and "Closest asset" in e.message
    with pytest.raises(errors.ClientError) as exc:
        list(client.models.generate_content_stream(model="gemini-2.0-flash", contents="never recorded"))
    assert exc.value.code == 404
    with pytest.raises(errors.ClientError) as exc:
        client.models.embed_content(model="text-embedding-004", contents="never recorded")
    assert exc.value.code == 404 and "gemini.batch_embed_contents" in exc.value.message
    with pytest.raises(anthropic.NotFoundError) as exc:
        claude.messages.create(model="claude-haiku-4-5@20251001", max_tokens=10, messages=[{"role": "user", "content": "never recorded"}])
    assert exc.value.body["error"]["type"] == "not_found_error"
    assert "Understudy has no asset" in str(exc.value)
    upstream.assert_untouched_since(before)


def test_bad_requests_and_error_assets_in_googles_shape(client, gem, upstream):
    before = upstream.snapshot()
    for body in ("{not json", "[1, 2]", ""):
        r = gem.post("/v1beta/models/gemini-2.0-flash:generateContent", body)
        assert r.status == 400 and r.header("x-understudy") == "bad-request", body
        err = r.json()["error"]
        assert (err["code"], err["status"]) == (400, "INVALID_ARGUMENT")
        assert "could not read this gemini.generate_content request" in err["message"]
    with pytest.raises(errors.ClientError) as exc:
        client.models.generate_content(model="gemini-2.0-flash", contents="Trigger a quota error.")
    assert (exc.value.code, exc.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert exc.value.message == "Resource has been exhausted (e.g. check quota)."
    upstream.assert_untouched_since(before)


def test_embeddings_and_token_counts_hit(client, upstream):
    before = upstream.snapshot()
    resp = client.models.embed_content(
        model="text-embedding-004",
        contents=["The quick brown fox", "jumps over the lazy dog"],
        config=types.EmbedContentConfig(output_dimensionality=8),
    )
    assert [e.values for e in resp.embeddings] == [e["values"] for e in FOX["response"]["body"]["embeddings"]]
    n = client.models.count_tokens(model="gemini-2.0-flash", contents="What is the capital of France?")
    assert n.total_tokens == 7
    upstream.assert_untouched_since(before)


def test_synthesized_text_stream_embeddings_and_counts(client, vertex, claude, gem, upstream):
    before = upstream.snapshot()
    resp = client.models.generate_content(model="synth-flash", contents="Echo me, please.")
    assert resp.text == "Echo me, please."
    assert headers_of(resp)["x-understudy"] == "synthesized"
    assert resp.model_version == "synth-flash" and len(resp.response_id) == 22
    assert resp.usage_metadata.prompt_token_count > 0 and resp.usage_metadata.candidates_token_count > 0
    chunks = list(vertex.models.generate_content_stream(model="synth-flash", contents="Streamed echo, in pieces."))
    assert len(chunks) > 1 and "".join(ch.text for ch in chunks) == "Streamed echo, in pieces."

    texts = ["never recorded", "also new"]
    a = client.models.embed_content(model="synth-embed", contents=texts, config=types.EmbedContentConfig(output_dimensionality=16))
    b = client.models.embed_content(model="synth-embed", contents=texts[0], config=types.EmbedContentConfig(output_dimensionality=16))
    va, vb = a.embeddings[0].values, a.embeddings[1].values
    assert len(va) == 16 and va == b.embeddings[0].values, "same model and text, same vector"
    assert abs(norm(va) - 1) < 1e-4 and abs(sum(x * y for x, y in zip(va, vb))) < 0.9
    # Vertex AI's embedContent (a Gemini embedding model, one content), default dimension of the model.
    v = vertex.models.embed_content(model="synth-gemini-embedding", contents="never recorded")
    assert len(v.embeddings[0].values) == 3072 and abs(norm(v.embeddings[0].values) - 1) < 1e-4
    assert v.embeddings[0].statistics.token_count > 0

    assert client.models.count_tokens(model="synth-flash", contents="How many tokens is this sentence?").total_tokens > 3
    msg = claude.messages.create(model="synth-claude-haiku", max_tokens=64, messages=[{"role": "user", "content": "Hi"}])
    assert msg.content[0].text == "A modeled Claude answer." and msg.model == "synth-claude-haiku"
    upstream.assert_untouched_since(before)


def test_anthropic_on_vertex_hits_and_streams(claude, upstream):
    before = upstream.snapshot()
    req = CLAUDE["request"]["body"]
    model = "claude-haiku-4-5@20251001"
    msg = claude.messages.create(model=model, max_tokens=req["max_tokens"], messages=req["messages"])
    recorded = CLAUDE["response"]["body"]
    assert msg.content[0].text == recorded["content"][0]["text"]
    assert msg.id.startswith("msg_vrtx_01") and msg.id != recorded["id"] and len(msg.id) == len(recorded["id"])
    assert msg.usage.output_tokens == 24
    with claude.messages.stream(model=model, max_tokens=req["max_tokens"], messages=req["messages"]) as stream:
        pieces = [t for t in stream.text_stream]
        final = stream.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == recorded["content"][0]["text"]
    assert final.stop_reason == "end_turn"
    upstream.assert_untouched_since(before)


def test_credentials_never_count_or_get_logged(client, vertex, gem, upstream):
    before = upstream.snapshot()
    body = CAPITAL["request"]["body"]
    keys = set()
    for path, headers in [
        ("/v1beta/models/gemini-2.0-flash:generateContent", {}),
        ("/v1beta/models/gemini-2.0-flash:generateContent", {"x-goog-api-key": API_KEY}),
        ("/v1beta/models/gemini-2.0-flash:generateContent", {"x-goog-api-key": "AIzaSy-another-key"}),
        (f"/v1/models/gemini-2.0-flash:generateContent?key={API_KEY}", {}),
        (
            "/v1/projects/other-project/locations/europe-west4/publishers/google/models/gemini-2.0-flash:generateContent",
            {"authorization": "Bearer ya29.understudy-e2e-token"},
        ),
    ]:
        r = gem.post(path, body, headers)
        assert r.status == 200 and r.header("x-understudy") == "hit", path
        keys.add(r.header("x-understudy-key"))
    assert keys == {asset_key("gemini/generate-capital.json")}
    log = gem.log_path.read_text(errors="replace")
    assert API_KEY not in log and "ya29.understudy-e2e-token" not in log
    upstream.assert_untouched_since(before)
