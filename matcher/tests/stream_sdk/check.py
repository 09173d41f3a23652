#!/usr/bin/env python3
"""Feeds SSE streams rendered by `understudy_matcher::stream::render_sse` to the official OpenAI, Anthropic and
Google GenAI Python SDKs' streaming helpers, without any network, and checks they reassemble exactly the asset's
text and tool calls.

    UNDERSTUDY_SSE_OUT=/tmp/x cargo test -p understudy-matcher stream
    .venv/bin/python matcher/tests/stream_sdk/check.py /tmp/x

The Rust test `stream::tests::stream_fixtures_for_sdk_check` writes one `.sse` file per asset and variant
(examples/assets/** and matcher/tests/stream_sdk/fixtures/**) plus `manifest.json` naming the operation, the
request, the expected (non-streaming) body and the Rust-assembled body. Each stream is served by an
`httpx.MockTransport` (the module the SDKs import: `httpx2` here), once whole and once in 7-byte pieces that
split lines and UTF-8 characters, to:

- every event, validated strictly (pydantic) against the SDK's own event/chunk types;
- OpenAI chat: `client.chat.completions.stream(...)` -> `get_final_completion()`, and the raw
  `create(stream=True)` chunks;
- OpenAI legacy completions: `client.completions.create(stream=True)` chunks;
- OpenAI responses: `client.responses.stream(...)`: the SDK's per-delta snapshots and `get_final_response()`;
- Anthropic: `client.messages.stream(...)` -> `get_final_message()` (built from the deltas by the SDK);
- Gemini (google-genai): `client.models.generate_content_stream(...)` chunks, each validated against
  `GenerateContentResponse` (unknown fields are errors), their text, thoughts, function calls and usage;
- Ollama chat and generate (NDJSON, not SSE): every line validated against the `ollama` SDK's `ChatResponse` /
  `GenerateResponse`, then `client.chat(stream=True)` / `client.generate(stream=True)`: the pieces must add up
  to the asset's text, thinking, tool calls and logprobs, the last line carry its counts and timings.

Exit status 0 when every check passes.
"""

from __future__ import annotations

import json
import sys
import traceback
import typing
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

import anthropic
import ollama
import ollama._client  # noqa: F401 - loads the module `ollama_httpx` is read from
import openai
import openai._base_client
from google import genai
from google.genai import types as genai_types

# The SDKs in this venv import `httpx2` (a fork of httpx); use whatever module they use.
httpx = getattr(openai._base_client, "httpx2", None) or getattr(openai._base_client, "httpx")
# The ollama SDK imports its own httpx (`ollama._client` the attribute is its default client, not the module).
ollama_httpx = sys.modules["ollama._client"].httpx

BASE = "http://understudy.invalid"
warnings.filterwarnings("ignore", category=DeprecationWarning)  # e.g. the SDK's model deprecation notices
SPLITS = (None, 7)


class CheckFailed(AssertionError):
    pass


def expect(cond: bool, what: str, got: Any = None, want: Any = None) -> None:
    if not cond:
        detail = "" if got is None and want is None else f"\n      got:  {got!r}\n      want: {want!r}"
        raise CheckFailed(f"{what}{detail}")


def equal(got: Any, want: Any, what: str) -> None:
    expect(got == want, what, got, want)


def strip_none(v: Any) -> Any:
    """Drops null-valued keys recursively: the SDK models add optional fields as None."""
    if isinstance(v, dict):
        return {k: strip_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [strip_none(x) for x in v]
    return v


def drop_keys(v: Any, keys: set[str]) -> Any:
    if isinstance(v, dict):
        return {k: drop_keys(x, keys) for k, x in v.items() if k not in keys}
    if isinstance(v, list):
        return [drop_keys(x, keys) for x in v]
    return v


def mock_transport(
    module: Any, sse: bytes, split: int | None, requests: list[dict], content_type: str = "text/event-stream; charset=utf-8"
) -> Any:
    """An `httpx` (of `module`) transport answering every request with the stream, in `split`-byte pieces."""

    def handler(request: Any) -> Any:
        body = json.loads(request.read() or b"{}")
        requests.append({"path": request.url.path, "body": body})

        def pieces() -> Iterator[bytes]:
            step = split or len(sse) or 1
            for i in range(0, len(sse), step):
                yield sse[i : i + step]

        return module.Response(200, headers={"content-type": content_type}, content=pieces())

    return module.MockTransport(handler)


def mock_client(sse: bytes, split: int | None, requests: list[dict]) -> Any:
    return httpx.Client(transport=mock_transport(httpx, sse, split, requests))


def raw_events(sse: bytes) -> list[Any]:
    """The stream's events as the OpenAI SDK's own SSE decoder sees them."""
    from openai._streaming import SSEDecoder

    return list(SSEDecoder().iter_bytes(iter([sse])))


def models_by_type(union: Any) -> dict[str, Any]:
    """`{"response.created": ResponseCreatedEvent, ...}` from an SDK's discriminated event union, so each event is
    validated strictly against its own model (a plain union validation reports every member's errors)."""
    while typing.get_origin(union) is typing.Annotated:
        union = typing.get_args(union)[0]
    out = {}
    for model in typing.get_args(union):
        for tag in typing.get_args(model.model_fields["type"].annotation):
            out[tag] = model
    return out


def validate_events(op: str, sse: bytes) -> int:
    if op.startswith("ollama."):
        model = ollama.ChatResponse if op == "ollama.chat" else ollama.GenerateResponse
        lines = [json.loads(line) for line in sse.decode().split("\n") if line.strip()]
        expect(len(lines) > 0, "the stream has lines")
        for i, data in enumerate(lines):
            equal(data["done"], i == len(lines) - 1, f"line {i}: done")
            model.model_validate(data)
        return len(lines)
    events = raw_events(sse)
    expect(len(events) > 0, "the stream has events")
    n = 0
    if op in ("openai.chat_completions", "openai.completions"):
        equal(events[-1].data, "[DONE]", "last event")
        expect(all(e.event is None for e in events), "OpenAI chunk streams have no `event:` lines")
        for e in events[:-1]:
            data = e.json()
            if op == "openai.chat_completions":
                openai.types.chat.ChatCompletionChunk.model_validate(data)
            else:
                # `Completion.choices[].finish_reason` is typed non-null although every live stream chunk but the
                # last one sends null: validate the rest of the chunk.
                for c in data["choices"]:
                    c["finish_reason"] = c["finish_reason"] or "stop"
                openai.types.Completion.model_validate(data)
            n += 1
    elif op == "openai.responses":
        models = models_by_type(openai.types.responses.ResponseStreamEvent)
        seq = -1
        for e in events:
            data = e.json()
            equal(e.event, data["type"], "event name == data.type")
            expect(data["sequence_number"] > seq, "sequence_number increases", data["sequence_number"], seq)
            seq = data["sequence_number"]
            expect(data["type"] in models, f"{data['type']} is an SDK event type")
            models[data["type"]].model_validate(data)
            n += 1
        equal(events[0].json()["type"], "response.created", "first event")
        expect(events[-1].json()["type"].startswith("response."), "terminal event")
    elif op == "gemini.generate_content":
        for e in events:
            expect(e.event is None, "Gemini streams have no `event:` lines")
            genai_types.GenerateContentResponse.model_validate(e.json())
            n += 1
    elif op == "anthropic.messages":
        models = models_by_type(anthropic.types.RawMessageStreamEvent)
        for e in events:
            data = e.json()
            equal(e.event, data["type"], "event name == data.type")
            if e.event == "ping":
                continue
            expect(data["type"] in models, f"{data['type']} is an SDK event type")
            models[data["type"]].model_validate(data)
            n += 1
    return n


# --------------------------------------------------------------------------------------------------------------


def openai_client(http_client: Any) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-understudy-test", base_url=f"{BASE}/v1", http_client=http_client, max_retries=0)


def pick(req: dict, *keys: str) -> dict:
    return {k: req[k] for k in keys if k in req}


def check_chat(case: dict, sse: bytes, split: int | None) -> None:
    req, want = case["request"], case["expected"]
    include_usage = case["include_usage"]
    requests: list[dict] = []
    client = openai_client(mock_client(sse, split, requests))
    kwargs = pick(req, "model", "messages", "tools", "n", "logprobs", "max_tokens")
    if include_usage:
        kwargs["stream_options"] = {"include_usage": True}

    with client.chat.completions.stream(**kwargs) as stream:
        events = list(stream)
        try:
            final = stream.get_final_completion()
        except openai.LengthFinishReasonError as e:
            # The helper raises for `finish_reason: "length"` by design; the exception holds the completion.
            expect(any(c["finish_reason"] == "length" for c in want["choices"]), "LengthFinishReasonError")
            final = e.completion
    equal(requests[0]["body"].get("stream"), True, "the SDK asked for a stream")

    for k in ("id", "created", "model", "system_fingerprint", "service_tier"):
        equal(getattr(final, k), want.get(k), f"completion.{k}")
    strict_tools = {
        t["function"]["name"] for t in req.get("tools", []) if t.get("function", {}).get("strict") is True
    }
    equal(len(final.choices), len(want["choices"]), "number of choices")
    for wc in want["choices"]:
        i = wc["index"]
        got = final.choices[i]
        wm = wc["message"]
        equal(got.index, i, f"choices[{i}].index")
        equal(got.message.role, wm["role"], f"choices[{i}].message.role")
        equal(got.message.content, wm.get("content"), f"choices[{i}].message.content")
        equal(got.message.refusal, wm.get("refusal"), f"choices[{i}].message.refusal")
        equal(got.finish_reason, wc["finish_reason"], f"choices[{i}].finish_reason")
        got_calls = [
            {"id": c.id, "type": c.type, "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in (got.message.tool_calls or [])
        ]
        equal(got_calls, wm.get("tool_calls") or [], f"choices[{i}].message.tool_calls")
        for c in got.message.tool_calls or []:
            if c.function.name in strict_tools:
                equal(c.function.parsed_arguments, json.loads(c.function.arguments), "parsed_arguments")
        if wc.get("logprobs"):
            got_lp = got.logprobs.to_dict() if got.logprobs else None
            equal(strip_none(got_lp), strip_none(wc["logprobs"]), f"choices[{i}].logprobs")
    if include_usage:
        equal(final.usage.to_dict() if final.usage else None, want.get("usage"), "usage")
    else:
        equal(final.usage, None, "usage without include_usage")

    # The helper's own events: content.done / tool-call arguments.done carry the reassembled values.
    if len(want["choices"]) == 1:
        wm = want["choices"][0]["message"]
        done = [e.content for e in events if e.type == "content.done"]
        equal(done, [wm["content"]] if wm.get("content") else [], "content.done events")
        args_done = [(e.index, e.name, e.arguments) for e in events if e.type == "tool_calls.function.arguments.done"]
        want_args = [(k, c["function"]["name"], c["function"]["arguments"]) for k, c in enumerate(wm.get("tool_calls") or [])]
        equal(args_done, want_args, "tool_calls.function.arguments.done events")
        refusal_done = [e.refusal for e in events if e.type == "refusal.done"]
        equal(refusal_done, [wm["refusal"]] if wm.get("refusal") is not None else [], "refusal.done events")

    # Raw chunks through `create(stream=True)`.
    client = openai_client(mock_client(sse, split, []))
    texts: dict[int, str] = defaultdict(str)
    roles: dict[int, str] = {}
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    for chunk in chunks:
        for c in chunk.choices:
            if c.index not in roles:
                roles[c.index] = c.delta.role
            texts[c.index] += c.delta.content or ""
    for wc in want["choices"]:
        equal(roles.get(wc["index"]), "assistant", "first delta of each choice has the role")
        equal(texts[wc["index"]], wc["message"].get("content") or "", "raw chunk text")
    usage_chunks = [c for c in chunks if c.usage is not None]
    equal(len(usage_chunks), 1 if include_usage else 0, "usage chunks")
    if include_usage:
        equal(chunks[-1].choices, [], "the usage chunk has no choices")


def check_completions(case: dict, sse: bytes, split: int | None) -> None:
    req, want = case["request"], case["expected"]
    requests: list[dict] = []
    client = openai_client(mock_client(sse, split, requests))
    kwargs = pick(req, "model", "prompt", "n", "max_tokens")
    if case["include_usage"]:
        kwargs["stream_options"] = {"include_usage": True}
    texts: dict[int, str] = defaultdict(str)
    finish: dict[int, str] = {}
    usage = None
    for chunk in client.completions.create(stream=True, **kwargs):
        equal(chunk.object, "text_completion", "chunk.object")
        equal(chunk.id, want["id"], "chunk.id")
        for c in chunk.choices:
            texts[c.index] += c.text
            if c.finish_reason:
                finish[c.index] = c.finish_reason
        if chunk.usage is not None:
            usage = chunk.usage.to_dict()
    equal(requests[0]["body"].get("stream"), True, "the SDK asked for a stream")
    for wc in want["choices"]:
        equal(texts[wc["index"]], wc["text"], f"choices[{wc['index']}].text")
        equal(finish.get(wc["index"]), wc["finish_reason"], f"choices[{wc['index']}].finish_reason")
    equal(usage, want.get("usage") if case["include_usage"] else None, "usage")


def check_responses(case: dict, sse: bytes, split: int | None) -> None:
    req, want = case["request"], case["expected"]
    requests: list[dict] = []
    client = openai_client(mock_client(sse, split, requests))
    kwargs = pick(req, "model", "input", "tools")
    snapshots: dict[tuple, str] = {}
    text_done: dict[tuple, str] = {}
    with client.responses.stream(**kwargs) as stream:
        for e in stream:
            if e.type == "response.output_text.delta":
                snapshots[("text", e.output_index, e.content_index)] = e.snapshot
            elif e.type == "response.output_text.done":
                text_done[("text", e.output_index, e.content_index)] = e.text
            elif e.type == "response.function_call_arguments.delta":
                snapshots[("args", e.output_index)] = e.snapshot
        final = stream.get_final_response()
    equal(requests[0]["body"].get("stream"), True, "the SDK asked for a stream")

    want_texts: dict[tuple, str] = {}
    want_args: dict[tuple, str] = {}
    for oi, item in enumerate(want["output"]):
        if item["type"] == "message":
            for ci, part in enumerate(item["content"]):
                if part["type"] == "output_text" and part["text"]:
                    want_texts[("text", oi, ci)] = part["text"]
        elif item["type"] == "function_call" and item["arguments"]:
            want_args[("args", oi)] = item["arguments"]
    # The SDK builds these snapshots from the deltas alone.
    equal({k: v for k, v in snapshots.items() if k[0] == "text"}, want_texts, "text reassembled from deltas")
    equal({k: v for k, v in snapshots.items() if k[0] == "args"}, want_args, "arguments reassembled from deltas")
    equal(text_done, want_texts, "output_text.done texts")

    equal(final.id, want["id"], "response.id")
    equal(final.status, want["status"], "response.status")
    want_output_text = "".join(
        p["text"] for it in want["output"] if it["type"] == "message" for p in it["content"] if p["type"] == "output_text"
    )
    equal(final.output_text, want_output_text, "response.output_text")
    got_calls = [(o.call_id, o.name, o.arguments) for o in final.output if o.type == "function_call"]
    want_calls = [(o["call_id"], o["name"], o["arguments"]) for o in want["output"] if o["type"] == "function_call"]
    equal(got_calls, want_calls, "function calls")
    got = drop_keys(strip_none(final.to_dict()), {"parsed", "parsed_arguments"})
    equal(got, strip_none(want), "final response == asset body")


def check_messages(case: dict, sse: bytes, split: int | None) -> None:
    req, want = case["request"], case["expected"]
    requests: list[dict] = []
    client = anthropic.Anthropic(
        api_key="sk-ant-understudy-test", base_url=BASE, http_client=mock_client(sse, split, requests), max_retries=0
    )
    kwargs = pick(req, "model", "max_tokens", "messages", "tools", "thinking", "stop_sequences")
    text_events: dict[int, str] = defaultdict(str)
    with client.messages.stream(**kwargs) as stream:
        block = -1
        for e in stream:
            if e.type == "content_block_start":
                block = e.index
            elif e.type == "text":
                text_events[block] += e.text
        final = stream.get_final_message()
        final_text = stream.get_final_text() if any(b["type"] == "text" for b in want["content"]) else None
    equal(requests[0]["body"].get("stream"), True, "the SDK asked for a stream")
    equal(requests[0]["path"], "/v1/messages", "request path")

    want_texts = {i: b["text"] for i, b in enumerate(want["content"]) if b["type"] == "text" and b["text"]}
    equal(dict(text_events), want_texts, "text events per block")
    if final_text is not None:
        equal(final_text, "".join(b["text"] for b in want["content"] if b["type"] == "text"), "get_final_text()")
    got_tools = [(b.id, b.name, b.input) for b in final.content if b.type == "tool_use"]
    want_tools = [(b["id"], b["name"], b["input"]) for b in want["content"] if b["type"] == "tool_use"]
    equal(got_tools, want_tools, "tool_use blocks")
    equal(strip_none(final.to_dict()), strip_none(want), "final message == asset body")
    equal(strip_none(case["assembled"]), strip_none(want), "Rust assemble_sse == asset body")


def check_gemini(case: dict, sse: bytes, split: int | None) -> None:
    req, want = case["request"], case["expected"]
    requests: list[dict] = []
    http = mock_client(sse, split, requests)
    client = genai.Client(
        api_key="understudy-test", http_options=genai_types.HttpOptions(base_url=BASE, httpx_client=http)
    )
    chunks = list(client.models.generate_content_stream(model=req["model"], contents="streamed"))
    equal(requests[0]["path"], f"/v1/models/{req['model']}:streamGenerateContent", "request path")
    expect(len(chunks) > 0, "the SDK yielded chunks")

    def parts_of(cands: list, index: int) -> list:
        return [p for c in cands if (c.get("index") or 0) == index for p in (c.get("content") or {}).get("parts") or []]

    got_cands = [strip_none(c.model_dump(mode="json", by_alias=True)) for ch in chunks for c in ch.candidates or []]
    for pos, wc in enumerate(want.get("candidates") or []):
        index = wc.get("index", pos)
        wparts = (wc.get("content") or {}).get("parts") or []
        gparts = parts_of(got_cands, index)
        for thought in (False, True):
            want_text = "".join(p["text"] for p in wparts if "text" in p and bool(p.get("thought")) == thought)
            got_text = "".join(p["text"] for p in gparts if "text" in p and bool(p.get("thought")) == thought)
            equal(got_text, want_text, f"candidate {index} {'thought' if thought else 'answer'} text")
        calls = [p["functionCall"] for p in gparts if "functionCall" in p]
        equal(calls, [p["functionCall"] for p in wparts if "functionCall" in p], "function calls")
        sigs = [p["thoughtSignature"] for p in gparts if "thoughtSignature" in p]
        equal(sigs, [p["thoughtSignature"] for p in wparts if "thoughtSignature" in p], "thought signatures")
        finish = [c.get("finishReason") for c in got_cands if (c.get("index") or 0) == index and c.get("finishReason")]
        equal(finish[-1:], [wc["finishReason"]] if "finishReason" in wc else [], "finish reason")
    if "usageMetadata" in want:
        last = strip_none(chunks[-1].usage_metadata.model_dump(mode="json", by_alias=True))
        equal(last, want["usageMetadata"], "usage of the last chunk")
    for ch in chunks:
        equal(ch.response_id, want.get("responseId"), "every chunk's responseId")
        equal(ch.model_version, want.get("modelVersion"), "every chunk's modelVersion")
    equal(strip_none(case["assembled"]), strip_none(want), "Rust assemble == asset body")


def check_ollama(case: dict, stream: bytes, split: int | None) -> None:
    req, want, op = case["request"], case["expected"], case["operation"]
    requests: list[dict] = []
    transport = mock_transport(ollama_httpx, stream, split, requests, case["content_type"])
    client = ollama.Client(host=BASE, transport=transport)
    if op == "ollama.chat":
        parts = list(client.chat(**pick(req, "model", "messages", "tools", "think"), stream=True))
        wm = want["message"]
        equal("".join(p.message.content or "" for p in parts), wm.get("content") or "", "message.content")
        equal("".join(p.message.thinking or "" for p in parts), wm.get("thinking") or "", "message.thinking")
        got_calls = [c.function.model_dump() for p in parts for c in p.message.tool_calls or []]
        want_calls = [pick(c["function"], "name", "arguments") for c in wm.get("tool_calls") or []]
        equal(got_calls, want_calls, "tool calls")
    else:
        parts = list(client.generate(**pick(req, "model", "prompt", "logprobs"), stream=True))
        equal("".join(p.response or "" for p in parts), want.get("response") or "", "response")
        got_lp = [lp.model_dump(exclude_none=True) for p in parts for lp in p.logprobs or []]
        equal(got_lp, strip_none(want.get("logprobs") or []), "logprobs")
        equal(list(parts[-1].context or []), want.get("context") or [], "context")
    equal([p.done for p in parts], [False] * (len(parts) - 1) + [True], "done only on the last line")
    last = parts[-1]
    for k in ("model", "done_reason", "prompt_eval_count", "eval_count", "total_duration", "eval_duration"):
        equal(getattr(last, k), want.get(k), k)
    equal(parts[0].created_at, want["created_at"], "created_at")
    equal(requests[0]["body"].get("stream"), True, "the SDK asked for a stream")
    equal(requests[0]["path"], case["path"], "request path")
    equal(case["assembled"], want, "Rust assemble_stream == asset body")


CHECKS: dict[str, Callable[[dict, bytes, int | None], None]] = {
    "openai.chat_completions": check_chat,
    "openai.completions": check_completions,
    "openai.responses": check_responses,
    "anthropic.messages": check_messages,
    "gemini.generate_content": check_gemini,
    "ollama.chat": check_ollama,
    "ollama.generate": check_ollama,
}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1])
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    print(
        f"openai {openai.__version__}, anthropic {anthropic.__version__}, google-genai {genai.__version__}, "
        f"ollama {sys.modules['ollama._client'].__version__}, "
        f"{httpx.__name__} {httpx.__version__}"
    )
    failures = 0
    seen_ops: set[str] = set()
    for case in manifest:
        op = case["operation"]
        sse = (out / case["sse"]).read_bytes()
        label = f"{case['name']} ({case.get('label') or case['source']})"
        try:
            n = validate_events(op, sse)
            for split in SPLITS:
                CHECKS[op](case, sse, split)
            seen_ops.add(op)
            print(f"ok    {label}: {n} events")
        except Exception as e:  # noqa: BLE001 - report every case
            failures += 1
            print(f"FAIL  {label}: {e.__class__.__name__}: {e}")
            if not isinstance(e, CheckFailed):
                traceback.print_exc()
    missing = set(CHECKS) - seen_ops
    if missing and not failures:
        print(f"FAIL  no stream checked for {sorted(missing)}")
        failures += 1
    print(f"{len(manifest) - failures}/{len(manifest)} streams passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
