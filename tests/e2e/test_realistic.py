"""Realistic responses end to end, through real Envoy, with the official SDKs as clients.

Covers: SSE streams rendered from ordinary (non-stream) assets for every dialect, assets recorded as streams
(verbatim to streaming clients, assembled JSON to the others), fresh ids/timestamps and placeholders,
response variants and sequences (retries, cycle, seeded random), dialect-shaped error responses, and simulated
latency (time to first token, per-token time, a worker that keeps serving while replies wait).

Assets: tests/e2e/assets/realistic/. The module's own Envoy (`rs`) loads only those, with one worker, so
sequence positions are deterministic; every test hits its own assets, so test order does not matter.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import struct
import threading
import time
import uuid
from pathlib import Path

import anthropic
import openai
import pytest

from conftest import (
    E2E_ASSETS,
    Understudy,
    id_prefix,
    load_asset,
    register_log,
    start_understudy,
)

REALISTIC = E2E_ASSETS / "realistic"
SSE = "text/event-stream; charset=utf-8"
BASE62 = re.compile(r"^[0-9A-Za-z]+$")


def asset(file: str, index: int = 0) -> dict:
    v = json.loads((REALISTIC / file).read_text(encoding="utf-8"))
    return v[index] if isinstance(v, list) else v


def body_of(a: dict) -> dict:
    return a["request"]["body"]


# Streaming from ordinary assets
CHAT_TEXT = asset("chat-stream.json", 0)
CHAT_TOOLS = asset("chat-stream.json", 1)
LEGACY = asset("chat-stream.json", 2)
MESSAGES = asset("messages-stream.json")
RESPONSES = asset("responses.json")
# Recorded as streams
REC_CHAT_TEXT = asset("recorded-streams.json", 0)
REC_CHAT_TOOL = asset("recorded-streams.json", 1)
REC_MESSAGES = asset("recorded-streams.json", 2)
REC_BRACES = asset("recorded-streams.json", 3)
# Dynamic data
REFRESH = asset("dynamic.json", 0)
FROZEN = asset("dynamic.json", 1)
REFRESH_ANTHROPIC = asset("dynamic.json", 2)
PLACEHOLDERS = asset("dynamic.json", 3)
# Sequences and errors
RETRY_SDK = asset("sequences.json", 0)
RETRY_RAW = asset("sequences.json", 1)
RETRY_STREAM = asset("sequences.json", 2)
OVERLOADED = asset("sequences.json", 3)
CYCLE = asset("sequences.json", 4)
RANDOM_SEQ = asset("sequences.json", 5)
API_ERROR = asset("sequences.json", 6)
API_ERROR_ANTHROPIC = asset("sequences.json", 7)
# Latency
TTFT = asset("latency.json", 0)
PER_TOKEN = asset("latency.json", 1)
SLOW = asset("latency.json", 2)
SLOW_ANTHROPIC = asset("latency.json", 3)


# --------------------------------------------------------------------------------------------------
# Instances and clients
# --------------------------------------------------------------------------------------------------


def _start(name: str, upstream, log_dir: Path, tmp_path_factory) -> Understudy:
    d = tmp_path_factory.mktemp(name)
    shutil.copytree(REALISTIC, d / "realistic")
    u = start_understudy(name, d, log_dir, upstream=upstream.url, on_miss="error")
    # Sequence positions and seeded choices are per worker: the assertions below need exactly one.
    assert u.args[u.args.index("--workers") + 1] == "1", u.args
    return u


@pytest.fixture(scope="module")
def _rs(upstream, log_dir, tmp_path_factory):
    u = _start("realistic", upstream, log_dir, tmp_path_factory)
    yield u
    u.stop()


@pytest.fixture
def rs(_rs) -> Understudy:
    """The module's Understudy over tests/e2e/assets/realistic (1 worker, on_miss=error)."""
    assert _rs.proc.poll() is None, f"the realistic Envoy died ({_rs.proc.returncode})"
    return _rs


@pytest.fixture(scope="module")
def _fresh_pair(upstream, log_dir, tmp_path_factory):
    a = _start("realistic-fresh-a", upstream, log_dir, tmp_path_factory)
    try:
        b = _start("realistic-fresh-b", upstream, log_dir, tmp_path_factory)
    except BaseException:
        a.stop()
        raise
    yield a, b
    b.stop()
    a.stop()


@pytest.fixture
def fresh_pair(_fresh_pair, request) -> tuple[Understudy, Understudy]:
    """Two more freshly started instances over the same assets; only the seeded-randomness tests use them."""
    for u in _fresh_pair:
        register_log(request, u.name, u.log_path)
    return _fresh_pair


def oai(u: Understudy, max_retries: int = 0, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=u.base_url, api_key="sk-virtual", max_retries=max_retries, timeout=30, **kw)


def claude(u: Understudy, max_retries: int = 0, **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=u.root_url, api_key="sk-ant-virtual", max_retries=max_retries, timeout=30, **kw)


def status_recorder(sdk):
    """An SDK http client that records the status of every response the SDK receives (retries included)."""
    statuses: list[int] = []
    client = sdk.DefaultHttpxClient(event_hooks={"response": [lambda r: statuses.append(r.status_code)]})
    return client, statuses


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def sse_events(body: bytes) -> list[tuple[str | None, str]]:
    """Strictly parses an SSE body as the live APIs write it: `event:`/`data:` lines, blank-line separated."""
    text = body.decode("utf-8")
    assert text.endswith("\n\n"), text[-200:]
    out = []
    for block in text[:-2].split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])
            else:
                raise AssertionError(f"unexpected SSE line {line!r} in block {block!r}")
        assert data, f"event without data: {block!r}"
        out.append((name, "\n".join(data)))
    return out


def assert_fresh_id(new: str, old: str) -> None:
    p = id_prefix(old)
    assert new != old, "id was not refreshed"
    assert new.startswith(p) and len(new) == max(len(old), len(p) + 8), (old, new)
    assert BASE62.match(new[len(p):]), new


def assert_now(ts) -> None:
    assert isinstance(ts, int) and abs(ts - time.time()) < 120, ts


def assert_virtual(r, upstream) -> None:
    """A virtual answer: a hit, and nothing reached the upstream."""
    assert r.header("x-understudy") == "hit", r.headers
    assert upstream.snapshot() == (0, 0, 0)


def timed(fn):
    t = time.monotonic()
    out = fn()
    return out, time.monotonic() - t


# ==================================================================================================
# 1. Streaming from an ordinary (non-stream) asset
# ==================================================================================================


def test_chat_stream_reassembles_text_role_finish_and_usage(rs, upstream):
    rec = CHAT_TEXT["response"]["body"]
    want_text = rec["choices"][0]["message"]["content"]
    with oai(rs) as c:
        stream = c.chat.completions.create(**body_of(CHAT_TEXT), stream=True, stream_options={"include_usage": True})
        h = stream.response.headers
        chunks = list(stream)
    assert h["content-type"] == SSE
    assert h["x-understudy"] == "hit" and h["cache-control"] == "no-cache"
    assert h["openai-processing-ms"] == "287"  # the asset's own headers still apply

    assert len(chunks) > 5
    assert {ch.object for ch in chunks} == {"chat.completion.chunk"}
    ids = {ch.id for ch in chunks}
    assert len(ids) == 1, ids  # one id for the whole stream...
    assert_fresh_id(ids.pop(), rec["id"])  # ...fresh per hit, in the recorded format
    for ch in chunks:
        assert_now(ch.created)
        assert ch.model == rec["model"] and ch.system_fingerprint == rec["system_fingerprint"]

    first, *middle, finish, usage_chunk = chunks
    assert first.choices[0].delta.role == "assistant"
    assert all(ch.choices[0].delta.role is None for ch in middle + [finish])
    pieces = [ch.choices[0].delta.content for ch in middle]
    assert len(pieces) > 3 and all(pieces), pieces  # really streamed in pieces
    assert (first.choices[0].delta.content or "") + "".join(pieces) == want_text
    assert [ch.choices[0].finish_reason for ch in [first] + middle] == [None] * (1 + len(middle))
    assert finish.choices[0].finish_reason == "stop" and not finish.choices[0].delta.content
    # include_usage: every chunk has usage null except the last, which has no choices and the asset's usage.
    assert all(ch.usage is None for ch in chunks[:-1])
    assert usage_chunk.choices == []
    assert usage_chunk.usage.model_dump(exclude_unset=True) == rec["usage"]
    assert upstream.snapshot() == (0, 0, 0)


def test_chat_stream_wire_format_without_usage(rs, upstream):
    rec = CHAT_TEXT["response"]["body"]
    r = rs.post("/v1/chat/completions", {**body_of(CHAT_TEXT), "stream": True})
    assert r.status == 200, r.body
    assert r.header("content-type") == SSE
    events = sse_events(r.body)
    assert all(name is None for name, _ in events), "chat streams carry no `event:` lines"
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(d) for _, d in events[:-1]]
    assert all("usage" not in ch for ch in chunks), "no usage without stream_options.include_usage"
    text = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks)
    assert text == rec["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert_virtual(r, upstream)


def test_chat_stream_helper_tool_calls(rs, upstream):
    rec = CHAT_TOOLS["response"]["body"]
    want = rec["choices"][0]["message"]["tool_calls"]
    with oai(rs) as c:
        with c.chat.completions.stream(**body_of(CHAT_TOOLS), stream_options={"include_usage": True}) as stream:
            kinds = [ev.type for ev in stream]
            final = stream.get_final_completion()
    assert kinds.count("tool_calls.function.arguments.done") == 2
    assert kinds.count("tool_calls.function.arguments.delta") > 4, kinds  # arguments arrive in pieces
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    got = [(t.id, t.type, t.function.name, t.function.arguments) for t in choice.message.tool_calls]
    assert got == [(t["id"], "function", t["function"]["name"], t["function"]["arguments"]) for t in want]
    assert [json.loads(t.function.arguments) for t in choice.message.tool_calls] == [
        {"city": "Oslo", "unit": "celsius", "days": 3},
        {"city": "Bergen", "unit": "celsius", "days": 3},
    ]
    assert final.usage.model_dump(exclude_unset=True) == rec["usage"]
    assert_fresh_id(final.id, rec["id"])
    assert upstream.snapshot() == (0, 0, 0)


def test_anthropic_messages_stream_text_and_tool_use(rs, upstream):
    rec = MESSAGES["response"]["body"]
    text_block, tool_block = rec["content"]
    with claude(rs) as c:
        with c.messages.stream(**body_of(MESSAGES)) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
            h = stream.response.headers
    assert h["content-type"] == SSE and h["x-understudy"] == "hit"
    assert h["request-id"] == "req_011CVbRealisticStream01"
    assert text == text_block["text"]
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[0].text == text_block["text"]
    tool = final.content[1]
    assert (tool.id, tool.name) == (tool_block["id"], tool_block["name"])
    assert tool.input == tool_block["input"]
    assert final.stop_reason == "tool_use" and final.stop_sequence is None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (412, 71)
    assert final.model == rec["model"] and final.role == "assistant"
    assert_fresh_id(final.id, rec["id"])
    assert final.id.startswith("msg_01")
    assert upstream.snapshot() == (0, 0, 0)


def test_anthropic_stream_wire_format(rs, upstream):
    r = rs.post("/v1/messages", {**body_of(MESSAGES), "stream": True})
    assert r.status == 200 and r.header("content-type") == SSE
    events = sse_events(r.body)
    names = [n for n, _ in events]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 2
    for name, data in events:
        assert json.loads(data)["type"] == name  # `event:` always matches the data's type
    assert "[DONE]" not in r.body.decode()
    assert_virtual(r, upstream)


def test_responses_stream_create_and_helper(rs, upstream):
    rec = RESPONSES["response"]["body"]
    want_text = rec["output"][0]["content"][0]["text"]
    with oai(rs) as c:
        stream = c.responses.create(**body_of(RESPONSES), stream=True)
        assert stream.response.headers["content-type"] == SSE
        events = list(stream)
        with c.responses.stream(**body_of(RESPONSES)) as helper:
            helper_text = "".join(ev.delta for ev in helper if ev.type == "response.output_text.delta")
            final = helper.get_final_response()
        plain = c.responses.create(**body_of(RESPONSES))
    types = [ev.type for ev in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert [ev.sequence_number for ev in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    deltas = [ev.delta for ev in events if ev.type == "response.output_text.delta"]
    assert len(deltas) > 3 and "".join(deltas) == want_text
    done = events[-1].response
    assert done.status == "completed" and done.output_text == want_text
    assert done.usage.model_dump(exclude_unset=True) == rec["usage"]
    assert events[0].response.id == done.id
    assert_fresh_id(done.id, rec["id"])
    assert re.fullmatch(r"resp_[0-9a-f]{48}", done.id), done.id
    assert_now(int(done.created_at))

    assert helper_text == want_text
    assert final.output_text == want_text and final.id != done.id
    assert plain.output_text == want_text and plain.usage.total_tokens == 33
    assert upstream.snapshot() == (0, 0, 0)


def test_legacy_completions_stream(rs, upstream):
    rec = LEGACY["response"]["body"]
    with oai(rs) as c:
        stream = c.completions.create(**body_of(LEGACY), stream=True, stream_options={"include_usage": True})
        assert stream.response.headers["content-type"] == SSE
        chunks = list(stream)
    *texts, usage_chunk = chunks
    assert {ch.object for ch in chunks} == {"text_completion"}
    assert len(texts) > 3
    assert "".join(ch.choices[0].text for ch in texts) == rec["choices"][0]["text"]
    assert [ch.choices[0].finish_reason for ch in texts] == [None] * (len(texts) - 1) + ["stop"]
    assert usage_chunk.choices == [] and usage_chunk.usage.model_dump(exclude_unset=True) == rec["usage"]
    assert_fresh_id(chunks[0].id, rec["id"])
    assert upstream.snapshot() == (0, 0, 0)


def test_azure_client_streams_the_same_asset(rs, upstream):
    want = CHAT_TEXT["response"]["body"]["choices"][0]["message"]["content"]
    with openai.AzureOpenAI(
        azure_endpoint=rs.root_url, azure_deployment="gpt-4o-mini", api_version="2024-10-21",
        api_key="azure-virtual", max_retries=0, timeout=30,
    ) as c:
        stream = c.chat.completions.create(**body_of(CHAT_TEXT), stream=True)
        assert stream.response.headers["content-type"] == SSE
        assert stream.response.headers["x-understudy"] == "hit"
        text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert text == want
    assert upstream.snapshot() == (0, 0, 0)


# ==================================================================================================
# 2. Assets recorded as streams
# ==================================================================================================


def test_recorded_chat_stream_verbatim_and_assembled(rs, upstream):
    recorded = REC_CHAT_TEXT["response"]["body_text"]
    req = body_of(REC_CHAT_TEXT)
    for _ in range(2):
        r = rs.post("/v1/chat/completions", {**req, "stream": True})
        assert r.status == 200 and r.header("content-type") == SSE
        assert r.body == recorded.encode("utf-8")  # byte for byte, every time
    with oai(rs) as c:
        chunks = list(c.chat.completions.create(**req, stream=True))
        raw = c.chat.completions.with_raw_response.create(**req)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "Recorded streams replay byte for byte — même en français."
    assert chunks[-1].usage.total_tokens == 29

    assert raw.headers["content-type"] == "application/json"
    resp = raw.parse()
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == text
    assert resp.choices[0].finish_reason == "stop"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (17, 12, 29)
    assert (resp.model, resp.system_fingerprint) == ("gpt-4o-mini-2024-07-18", "fp_560af6e559")
    assert_fresh_id(resp.id, chunks[0].id)
    assert_now(resp.created)
    assert upstream.snapshot() == (0, 0, 0)


def test_recorded_chat_tool_stream_verbatim_and_assembled(rs, upstream):
    recorded = REC_CHAT_TOOL["response"]["body_text"]
    req = body_of(REC_CHAT_TOOL)
    r = rs.post("/v1/chat/completions", {**req, "stream": True})
    assert r.status == 200 and r.header("content-type") == SSE and r.body == recorded.encode()
    with oai(rs) as c:
        resp = c.chat.completions.create(**req)
        with c.chat.completions.stream(**req) as stream:
            final = stream.get_final_completion()
    for msg, finish in ((resp.choices[0].message, resp.choices[0].finish_reason), (final.choices[0].message, final.choices[0].finish_reason)):
        assert finish == "tool_calls" and msg.content is None
        assert len(msg.tool_calls) == 1
        call = msg.tool_calls[0]
        assert (call.id, call.type, call.function.name) == ("call_RecStreamToolAaBbCcDdEe", "function", "get_forecast")
        assert call.function.arguments == '{"city": "Oslo", "unit": "celsius", "days": 2}'
    assert final.id == "chatcmpl-RecOrdedToOlStReAm0aBcDeFgHiJk"  # the stream is verbatim: the recorded id
    assert_fresh_id(resp.id, final.id)  # the assembled body is refreshed
    assert upstream.snapshot() == (0, 0, 0)


def test_recorded_anthropic_stream_verbatim_and_assembled(rs, upstream):
    recorded = REC_MESSAGES["response"]["body_text"]
    req = body_of(REC_MESSAGES)
    r = rs.post("/v1/messages", {**req, "stream": True})
    assert r.status == 200 and r.header("content-type") == SSE and r.body == recorded.encode("utf-8")
    with claude(rs) as c:
        with c.messages.stream(**req) as stream:
            text = "".join(stream.text_stream)
            streamed = stream.get_final_message()
        raw = c.messages.with_raw_response.create(**req)
    assert raw.headers["content-type"] == "application/json"
    msg = raw.parse()
    for m in (streamed, msg):
        assert [b.type for b in m.content] == ["text", "tool_use"]
        assert m.content[0].text == "Sure — here's what I found."
        assert (m.content[1].id, m.content[1].name) == ("toolu_01RecordedStreamToolXyZ", "get_forecast")
        assert m.content[1].input == {"city": "Reykjavík", "days": 1}
        assert m.stop_reason == "tool_use"
        assert (m.usage.input_tokens, m.usage.output_tokens) == (390, 58)
    assert text == "Sure — here's what I found."
    assert streamed.id == "msg_01RecordedStreamAbCdEfGh"
    assert_fresh_id(msg.id, streamed.id)
    assert upstream.snapshot() == (0, 0, 0)


def test_recorded_stream_text_is_the_same_streamed_or_not(rs, upstream):
    req = body_of(REC_BRACES)
    with oai(rs) as c:
        streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(**req, stream=True))
        plain = c.chat.completions.create(**req).choices[0].message.content
    assert streamed == "Served for {{request.model}}."  # verbatim, as recorded
    assert plain == streamed
    assert upstream.snapshot() == (0, 0, 0)


def test_recorded_stream_with_template_syntax_in_the_answer_loads(understudy_factory, upstream, tmp_path):
    text = "Use {{ user.name }} in the template."
    head = {"id": "chatcmpl-JiNjA0aBcDeFgHiJkLmNoPqRsTuVwX", "object": "chat.completion.chunk", "created": 1764403660, "model": "gpt-4o-mini"}
    sse = "".join(
        f"data: {json.dumps({**head, 'choices': [c]})}\n\n"
        for c in (
            {"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None},
            {"index": 0, "delta": {}, "finish_reason": "stop"},
        )
    ) + "data: [DONE]\n\n"
    req = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "How do I print a variable in Jinja?"}]}
    (tmp_path / "jinja.json").write_text(json.dumps({
        "request": {"path": "/v1/chat/completions", "body": req},
        "response": {"body_text": sse},
    }))
    u = understudy_factory(tmp_path, name="recorded-jinja")
    r = u.post("/v1/chat/completions", {**req, "stream": True})
    assert r.status == 200 and r.body == sse.encode()
    assert u.post("/v1/chat/completions", req).json()["choices"][0]["message"]["content"] == text
    assert upstream.snapshot() == (0, 0, 0)


# ==================================================================================================
# 3. Dynamic data: refresh and placeholders
# ==================================================================================================


def test_default_refresh_gives_fresh_ids_and_now(rs, upstream):
    for a, path in ((REFRESH, "/v1/chat/completions"), (REFRESH_ANTHROPIC, "/v1/messages")):
        rec = a["response"]["body"]
        r1, r2 = rs.post(path, body_of(a)), rs.post(path, body_of(a))
        assert r1.status == r2.status == 200
        b1, b2 = r1.json(), r2.json()
        assert b1["id"] != b2["id"]
        for b in (b1, b2):
            assert_fresh_id(b["id"], rec["id"])
            if "created" in rec:
                assert_now(b["created"])
            rest = {k: v for k, v in b.items() if k not in ("id", "created")}
            assert rest == {k: v for k, v in rec.items() if k not in ("id", "created")}
    assert upstream.snapshot() == (0, 0, 0)


def test_refresh_false_is_byte_identical(rs, upstream):
    rec = FROZEN["response"]["body"]
    r1, r2 = rs.post("/v1/chat/completions", body_of(FROZEN)), rs.post("/v1/chat/completions", body_of(FROZEN))
    assert r1.status == r2.status == 200
    assert r1.body == r2.body
    assert r1.json() == rec  # recorded id and created (2023) kept
    s1 = rs.post("/v1/chat/completions", {**body_of(FROZEN), "stream": True})
    s2 = rs.post("/v1/chat/completions", {**body_of(FROZEN), "stream": True})
    assert s1.header("content-type") == SSE and s1.body == s2.body
    chunks = [json.loads(d) for _, d in sse_events(s1.body)[:-1]]
    assert {(c["id"], c["created"]) for c in chunks} == {(rec["id"], rec["created"])}
    assert upstream.snapshot() == (0, 0, 0)


def _check_placeholders(b: dict) -> tuple[str, str]:
    """Checks one served placeholders body; returns its seeded choices (verdict, fingerprint)."""
    req = body_of(PLACEHOLDERS)
    assert re.fullmatch(r"chatcmpl-[0-9A-Za-z]{29}", b["id"]), b["id"]
    assert_now(b["created"])
    assert b["model"] == "gpt-4o-mini"
    msg = b["choices"][0]["message"]
    m = re.fullmatch(r"You asked: (.*) \(model gpt-4o-mini\)\. Verdict: (\w+)\.", msg["content"])
    assert m, msg["content"]
    assert m.group(1) == req["messages"][0]["content"]
    assert m.group(2) in ("sunny", "rainy", "windy")
    call = msg["tool_calls"][0]
    assert re.fullmatch(r"call_[0-9A-Za-z]{24}", call["id"]), call["id"]
    ticket = json.loads(call["function"]["arguments"])["ticket"]
    assert uuid.UUID(ticket).version == 4 and str(uuid.UUID(ticket)) == ticket
    assert b["system_fingerprint"] in ("fp_aaaa", "fp_bbbb", "fp_cccc")
    assert "{{" not in json.dumps(b)
    return m.group(2), b["system_fingerprint"]


def test_placeholders_expand(rs, upstream):
    req = body_of(PLACEHOLDERS)
    r1, r2 = rs.post("/v1/chat/completions", req), rs.post("/v1/chat/completions", req)
    assert r1.status == r2.status == 200, r1.body
    b1, b2 = r1.json(), r2.json()
    _check_placeholders(b1)
    _check_placeholders(b2)
    c1, c2 = b1["choices"][0]["message"]["tool_calls"][0], b2["choices"][0]["message"]["tool_calls"][0]
    assert b1["id"] != b2["id"] and c1["id"] != c2["id"] and c1["function"]["arguments"] != c2["function"]["arguments"]
    # The SDK parses it, streamed or not.
    with oai(rs) as c:
        resp = c.chat.completions.create(**req)
        assert resp.choices[0].message.tool_calls[0].id.startswith("call_")
        with c.chat.completions.stream(**req) as stream:
            final = stream.get_final_completion()
    streamed = final.choices[0].message
    assert streamed.content.startswith("You asked: " + req["messages"][0]["content"] + " (model gpt-4o-mini)")
    assert re.fullmatch(r"call_[0-9A-Za-z]{24}", streamed.tool_calls[0].id)
    assert re.fullmatch(r"chatcmpl-[0-9A-Za-z]{29}", final.id) and final.model == "gpt-4o-mini"
    assert upstream.snapshot() == (0, 0, 0)


def test_random_placeholders_are_seeded_across_restarts(fresh_pair, upstream):
    req = body_of(PLACEHOLDERS)
    runs = []
    for u in fresh_pair:
        bodies = [u.post("/v1/chat/completions", req).json() for _ in range(20)]
        runs.append(([_check_placeholders(b) for b in bodies], [b["id"] for b in bodies]))
    (choices_a, ids_a), (choices_b, ids_b) = runs
    assert choices_a == choices_b  # same seed, same call numbers: same choices on a fresh Envoy
    assert len({v for v, _ in choices_a}) > 1 and len({fp for _, fp in choices_a}) > 1, choices_a
    assert not set(ids_a) & set(ids_b)  # ids stay fresh
    assert upstream.snapshot() == (0, 0, 0)


# ==================================================================================================
# 4. Variants and sequences
# ==================================================================================================


def test_openai_sdk_retries_a_429_then_gets_the_200(rs, upstream):
    before = rs.stats()
    http, statuses = status_recorder(openai)
    with oai(rs, max_retries=2, http_client=http) as c:
        raw, secs = timed(lambda: c.chat.completions.with_raw_response.create(**body_of(RETRY_SDK)))
    assert statuses == [429, 200]
    assert raw.retries_taken == 1
    assert raw.headers["x-understudy-response"] == "2/2"
    assert raw.parse().choices[0].message.content == "Second time lucky."
    after = rs.stats()
    assert (after["hits"] - before["hits"], after["requests"] - before["requests"]) == (2, 2)
    assert secs < 5
    assert upstream.snapshot() == (0, 0, 0)


def test_sequence_positions_on_raw_requests(rs, upstream):
    answers = [rs.post("/v1/chat/completions", body_of(RETRY_RAW)) for _ in range(3)]
    assert [r.status for r in answers] == [429, 200, 200]
    assert [r.header("x-understudy-response") for r in answers] == ["1/2", "2/2", "2/2"]
    assert all(r.header("x-understudy") == "hit" for r in answers)
    err = answers[0]
    assert err.header("retry-after") == "0" and err.header("x-ratelimit-remaining-requests") == "0"
    assert err.header("content-type") == "application/json"
    spec = RETRY_RAW["responses"][0]["error"]
    assert err.json() == {"error": {"message": spec["message"], "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}}
    assert [r.json()["choices"][0]["message"]["content"] for r in answers[1:]] == ["Second time lucky."] * 2
    assert upstream.snapshot() == (0, 0, 0)


def test_openai_sdk_stream_retries_a_429(rs, upstream):
    http, statuses = status_recorder(openai)
    with oai(rs, max_retries=2, http_client=http) as c:
        stream = c.chat.completions.create(**body_of(RETRY_STREAM), stream=True)
        assert stream.response.headers["x-understudy-response"] == "2/2"
        text = "".join(ch.choices[0].delta.content or "" for ch in stream)
    assert statuses == [429, 200]
    assert text == "Streamed after one retry."
    assert upstream.snapshot() == (0, 0, 0)


def test_anthropic_sdk_retries_a_529_overloaded(rs, upstream):
    before = rs.stats()
    http, statuses = status_recorder(anthropic)
    with claude(rs, max_retries=2, http_client=http) as c:
        raw = c.messages.with_raw_response.create(**body_of(OVERLOADED))
    assert statuses == [529, 200]  # overloaded_error defaults to 529
    assert raw.headers["x-understudy-response"] == "2/2"
    msg = raw.parse()
    assert msg.content[0].text == "Back after a short overload." and msg.stop_reason == "end_turn"
    after = rs.stats()
    assert after["hits"] - before["hits"] == 2
    # The position stays on the last response (repeat_last).
    with claude(rs) as c:
        assert c.messages.create(**body_of(OVERLOADED)).content[0].text == "Back after a short overload."
    assert upstream.snapshot() == (0, 0, 0)


def test_cycle_sequence_cycles(rs, upstream):
    got = []
    for _ in range(7):
        r = rs.post("/v1/chat/completions", body_of(CYCLE))
        assert r.header("x-understudy") == "hit"
        b = r.json()
        what = b["error"]["message"] if r.status >= 400 else b["choices"][0]["message"]["content"]
        got.append((r.status, r.header("x-understudy-response"), what))
    one, two, three = (200, "1/3", "first"), (200, "2/3", "second"), (429, "3/3", "third is a rate limit")
    assert got == [one, two, three, one, two, three, one]
    assert upstream.snapshot() == (0, 0, 0)


def test_random_sequence_is_seeded_across_restarts(fresh_pair, upstream):
    names = [r["body"]["choices"][0]["message"]["content"] for r in RANDOM_SEQ["responses"]]
    runs = []
    for u in fresh_pair:
        run = []
        for _ in range(12):
            r = u.post("/v1/chat/completions", body_of(RANDOM_SEQ))
            assert r.status == 200 and r.header("x-understudy") == "hit"
            pos, n = r.header("x-understudy-response").split("/")
            assert n == "4"
            assert r.json()["choices"][0]["message"]["content"] == names[int(pos) - 1]
            run.append(int(pos))
        runs.append(run)
    assert runs[0] == runs[1], runs
    assert len(set(runs[0])) > 1, runs[0]
    assert runs[0] != [i % 4 + 1 for i in range(12)], "that is `cycle`, not `random`"
    assert upstream.snapshot() == (0, 0, 0)


def test_api_error_500_raises_internal_server_error(rs, upstream):
    spec = API_ERROR["response"]["error"]
    with oai(rs) as c, pytest.raises(openai.InternalServerError) as exc:
        c.chat.completions.create(**body_of(API_ERROR))
    e = exc.value
    assert e.status_code == 500 and e.response.headers["x-understudy"] == "hit"
    assert e.body == {"message": spec["message"], "type": "api_error", "param": None, "code": None}
    assert e.type == "api_error" and spec["message"] in e.message

    spec = API_ERROR_ANTHROPIC["response"]["error"]
    with claude(rs) as c, pytest.raises(anthropic.InternalServerError) as exc:
        c.messages.create(**body_of(API_ERROR_ANTHROPIC))
    e = exc.value
    assert e.status_code == 500
    assert e.body == {"type": "error", "error": {"type": "api_error", "message": spec["message"]}}
    # Errors are never streamed: a streaming client gets the JSON error too.
    r = rs.post("/v1/chat/completions", {**body_of(API_ERROR), "stream": True})
    assert r.status == 500 and r.header("content-type") == "application/json"
    assert r.json()["error"]["type"] == "api_error"
    assert upstream.snapshot() == (0, 0, 0)


# ==================================================================================================
# 5. Latency
# ==================================================================================================


def test_ttft_delays_the_answer(rs, upstream):
    r, secs = timed(lambda: rs.post("/v1/chat/completions", body_of(TTFT)))
    assert r.status == 200 and r.json()["choices"][0]["message"]["content"] == "Worth the wait."
    assert 0.3 <= secs < 3, secs
    with oai(rs) as c:
        resp, secs = timed(lambda: c.chat.completions.create(**body_of(TTFT)))
    assert resp.choices[0].message.content == "Worth the wait."
    assert 0.3 <= secs < 3, secs
    assert_virtual(r, upstream)


def test_per_token_latency_adds_output_tokens(rs, upstream):
    lat = PER_TOKEN["latency"]
    tokens = PER_TOKEN["response"]["body"]["usage"]["completion_tokens"]
    want = (lat["ttft_ms"] + tokens * lat["per_token_ms"]) / 1000  # 0.1 + 40 × 0.015 = 0.7 s
    r, secs = timed(lambda: rs.post("/v1/chat/completions", body_of(PER_TOKEN)))
    assert r.status == 200
    assert want <= secs < want + 1.5, (secs, want)
    assert_virtual(r, upstream)


def test_anthropic_stream_waits_for_first_token(rs, upstream):
    with claude(rs) as c:
        t = time.monotonic()
        with c.messages.stream(**body_of(SLOW_ANTHROPIC)) as stream:
            first = next(iter(stream))
            ttft = time.monotonic() - t
            rest = stream.get_final_message()
    assert first.type == "message_start"
    assert 0.3 <= ttft < 3, ttft
    assert rest.content[0].text == "Slow but steady."
    assert upstream.snapshot() == (0, 0, 0)


def test_waiting_reply_does_not_block_the_worker(rs, upstream):
    results: dict[str, tuple[int, float]] = {}

    def call(name, a):
        r, secs = timed(lambda: rs.post("/v1/chat/completions", body_of(a), timeout=10))
        results[name] = (r.status, secs)

    slow = threading.Thread(target=call, args=("slow", SLOW))
    slow.start()
    time.sleep(0.2)
    # Same single worker, while the 1.5 s reply waits: an instant asset answers at once...
    for _ in range(3):
        r, secs = timed(lambda: rs.post("/v1/chat/completions", body_of(CHAT_TEXT)))
        assert r.status == 200 and secs < 0.15, secs
    # ...and a 300 ms one in about 300 ms: replies leave when due, not in arrival order.
    call("ttft", TTFT)
    assert "slow" not in results, "the slow reply came back too early"
    slow.join(10)
    assert results["ttft"][0] == 200 and 0.3 <= results["ttft"][1] < 1.0, results
    assert results["slow"][0] == 200 and 1.5 <= results["slow"][1] < 4, results
    assert upstream.snapshot() == (0, 0, 0)


def test_client_hanging_up_during_the_delay_is_harmless(rs, upstream):
    before = rs.stats()
    for _ in range(3):
        with pytest.raises((socket.timeout, TimeoutError)):
            rs.post("/v1/chat/completions", body_of(SLOW), timeout=0.2)
    time.sleep(1.8)  # past the due time of all three replies: the tick finds their streams gone
    assert rs.proc.poll() is None
    r = rs.post("/v1/chat/completions", body_of(CHAT_TEXT))
    assert r.status == 200 and r.header("x-understudy") == "hit"
    r, secs = timed(lambda: rs.post("/v1/chat/completions", body_of(TTFT)))  # the timer still works
    assert r.status == 200 and 0.3 <= secs < 3, secs
    after = rs.stats()
    assert after["hits"] - before["hits"] == 5
    log = rs.log_path.read_text(errors="replace")
    assert not re.search(r"\]\[(error|critical)\]\[|panicked", log), "Envoy or the filter logged an error"
    assert upstream.snapshot() == (0, 0, 0)


# ==================================================================================================
# 6. Embeddings from a base64-recorded asset through the SDK (float assets: test_sdks.py)
# ==================================================================================================


def test_sdk_embeddings_from_base64_asset(strict, upstream):
    b64 = load_asset("embeddings-base64.json")
    want = [list(struct.unpack("<4f", base64.b64decode(d["embedding"]))) for d in b64["response"]["body"]["data"]]
    req = {k: v for k, v in b64["request"]["body"].items() if k != "encoding_format"}
    with oai(strict) as c:
        default = c.embeddings.create(**req)  # the SDK asks for base64 and decodes it
        floats = c.embeddings.create(**req, encoding_format="float")
    assert [d.embedding for d in default.data] == want
    f32 = lambda x: struct.unpack("<f", struct.pack("<f", x))[0]  # noqa: E731
    assert [[f32(x) for x in d.embedding] for d in floats.data] == want
    assert upstream.snapshot() == (0, 0, 0)
