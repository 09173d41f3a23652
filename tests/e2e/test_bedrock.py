"""AWS Bedrock Runtime through real Envoy with the official `boto3` client (`bedrock-runtime`, `endpoint_url`
at Envoy, dummy SigV4 credentials): Converse, ConverseStream, InvokeModel and InvokeModelWithResponseStream
hits, streams rendered from plain assets and recorded streams served verbatim, misses and bad bodies as
botocore's own `ClientError`s, synthesized answers, and keys that ignore credentials. Nothing reaches the
upstream."""

from __future__ import annotations

import base64
import json
import math
import shutil

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

import eventstream
from conftest import EXAMPLE_ASSETS, asset_keys, load_asset

HAIKU = "anthropic.claude-3-5-haiku-20241022-v1:0"
PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-haiku-20241022-v1:0"
CAPITAL = load_asset("bedrock/converse.json", 0)
WEATHER = load_asset("bedrock/converse.json", 1)
RECORDED = load_asset("bedrock/converse-stream-recorded.json")
CLAUDE = load_asset("bedrock/invoke-claude.json")
TITAN = load_asset("bedrock/titan-embed.json")
EVENTSTREAM = "application/vnd.amazon.eventstream"

RULES = [
    {"operation": "bedrock.converse", "model": "amazon.nova-*", "text": "A modeled Converse answer."},
    {"operation": "anthropic.messages", "model": "anthropic.claude-3-haiku-*", "echo": True},
    {"operation": "bedrock.titan_embeddings", "model": "*"},
]

# A Claude stream recorded on InvokeModelWithResponseStream: Anthropic's events in `chunk`s, padded as AWS pads.
CLAUDE_STREAM_REQUEST = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
                         "messages": [{"role": "user", "content": "Count to three."}]}
CLAUDE_STREAM_EVENTS = [
    {"type": "message_start", "message": {"id": "msg_bdrk_01Rec", "type": "message", "role": "assistant",
                                          "model": "claude-3-5-haiku-20241022", "content": [], "stop_reason": None,
                                          "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "One, two,"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " three."}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 6}},
    {"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 12, "outputTokenCount": 6,
                                                                   "invocationLatency": 402, "firstByteLatency": 215}},
]
CLAUDE_STREAM = b"".join(eventstream.chunk(e, pad="abcdefghij"[: i + 3]) for i, e in enumerate(CLAUDE_STREAM_EVENTS))


@pytest.fixture(scope="module")
def bedrock(tmp_path_factory, request):
    """One `understudy up` for this file: the Bedrock example assets, a recorded Claude stream, an ARN asset,
    and synthesize rules."""
    from conftest import start_understudy

    d = tmp_path_factory.mktemp("bedrock")
    assets = d / "assets"
    shutil.copytree(EXAMPLE_ASSETS / "bedrock", assets)
    extra = [
        {"name": "claude stream recorded on Bedrock",
         "request": {"path": f"/model/{HAIKU}/invoke-with-response-stream", "body": CLAUDE_STREAM_REQUEST},
         "response": {"headers": {"content-type": EVENTSTREAM}, "body_base64": base64.b64encode(CLAUDE_STREAM).decode()}},
        {"name": "converse on an inference profile ARN",
         "request": {"path": f"/model/{PROFILE_ARN}/converse", "body": CAPITAL["request"]["body"]},
         "response": CAPITAL["response"]},
    ]
    (assets / "recorded.json").write_text(json.dumps(extra))
    rules = d / "rules.json"
    rules.write_text(json.dumps(RULES))
    upstream = request.getfixturevalue("upstream")
    u = start_understudy("bedrock", assets, d, upstream=upstream.url, extra=["--synthesize", str(rules)])
    yield u
    u.stop()


def client(u, key="AKIAIOSFODNN7EXAMPLE", token=None):
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=u.root_url,
        aws_access_key_id=key,
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        aws_session_token=token,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=30, connect_timeout=10),
    )


@pytest.fixture(scope="module")
def brt(bedrock):
    c = client(bedrock)
    yield c
    c.close()


def headers(resp) -> dict:
    return resp["ResponseMetadata"]["HTTPHeaders"]


def converse_args(asset) -> dict:
    return {"modelId": HAIKU, **asset["request"]["body"]}


def stream_events(stream) -> list[tuple[str, dict]]:
    return [next(iter(e.items())) for e in stream]


def test_converse_hits_with_text_tool_use_and_usage(brt, upstream):
    r = brt.converse(**converse_args(CAPITAL))
    want = CAPITAL["response"]["body"]
    assert headers(r)["x-understudy"] == "hit"
    assert r["output"] == want["output"] and r["stopReason"] == "end_turn"
    assert r["usage"] == want["usage"] and r["metrics"] == want["metrics"]
    assert r["ResponseMetadata"]["RequestId"] == CAPITAL["response"]["headers"]["x-amzn-requestid"]

    r = brt.converse(**converse_args(WEATHER))
    assert r["stopReason"] == "tool_use"
    tool = r["output"]["message"]["content"][1]["toolUse"]
    assert tool == {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "get_weather", "input": {"city": "Oslo"}}
    assert upstream.snapshot() == (0, 0, 0)


def test_converse_stream_is_rendered_from_the_plain_asset(brt, upstream):
    r = brt.converse_stream(**converse_args(WEATHER))
    assert headers(r)["content-type"] == EVENTSTREAM and headers(r)["x-understudy"] == "hit"
    events = stream_events(r["stream"])
    names = [n for n, _ in events]
    assert names[0] == "messageStart" and names[-2:] == ["messageStop", "metadata"], names
    text = "".join(e["delta"].get("text", "") for n, e in events if n == "contentBlockDelta" and e["contentBlockIndex"] == 0)
    assert text == "I'll check the current weather in Oslo."
    starts = [e for n, e in events if n == "contentBlockStart"]
    assert starts == [{"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q",
                                                                     "name": "get_weather"}}}]
    tool_input = "".join(e["delta"]["toolUse"]["input"] for n, e in events if n == "contentBlockDelta" and e["contentBlockIndex"] == 1)
    assert json.loads(tool_input) == {"city": "Oslo"}
    assert dict(events)["messageStop"]["stopReason"] == "tool_use"
    assert dict(events)["metadata"]["usage"] == WEATHER["response"]["body"]["usage"]
    assert upstream.snapshot() == (0, 0, 0)


def test_recorded_streams_are_served_verbatim_and_assembled(bedrock, brt, upstream):
    recorded = base64.b64decode(RECORDED["response"]["body_base64"])
    raw = bedrock.post(f"/model/{HAIKU.replace(':', '%3A')}/converse-stream", RECORDED["request"]["body"])
    assert raw.status == 200 and raw.header("content-type") == EVENTSTREAM
    assert raw.body == recorded, "a recorded stream is served byte for byte"
    r = brt.converse_stream(**converse_args(RECORDED))
    text = "".join(e["delta"]["text"] for n, e in stream_events(r["stream"]) if n == "contentBlockDelta")
    assert text == "Red, yellow and blue."
    r = brt.converse(**converse_args(RECORDED))
    assert r["output"]["message"]["content"] == [{"text": "Red, yellow and blue."}]
    assert r["usage"]["totalTokens"] == 22 and r["metrics"] == {"latencyMs": 318}

    raw = bedrock.post(f"/model/{HAIKU}/invoke-with-response-stream", CLAUDE_STREAM_REQUEST)
    assert raw.body == CLAUDE_STREAM
    r = brt.invoke_model_with_response_stream(modelId=HAIKU, body=json.dumps(CLAUDE_STREAM_REQUEST))
    assert [json.loads(e["chunk"]["bytes"]) for e in r["body"]] == CLAUDE_STREAM_EVENTS
    r = brt.invoke_model(modelId=HAIKU, body=json.dumps(CLAUDE_STREAM_REQUEST))
    msg = json.loads(r["body"].read())
    assert msg["content"] == [{"type": "text", "text": "One, two, three."}] and msg["usage"]["output_tokens"] == 6
    assert upstream.snapshot() == (0, 0, 0)


def test_claude_on_invoke_model_hits_streams_and_refreshes_ids(brt, upstream):
    body = json.dumps(CLAUDE["request"]["body"])
    want = CLAUDE["response"]["body"]
    ids = set()
    for _ in range(2):
        r = brt.invoke_model(modelId=HAIKU, body=body, contentType="application/json", accept="application/json")
        msg = json.loads(r["body"].read())
        assert msg["content"] == want["content"] and msg["usage"] == want["usage"]
        assert msg["id"].startswith("msg_") and len(msg["id"]) == len(want["id"])
        ids.add(msg["id"])
    assert len(ids) == 2 and want["id"] not in ids, "fresh ids per hit"
    r = brt.invoke_model_with_response_stream(modelId=HAIKU, body=body)
    events = [json.loads(e["chunk"]["bytes"]) for e in r["body"]]
    assert [e["type"] for e in events][0] == "message_start" and events[-1]["type"] == "message_stop"
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == want["content"][0]["text"]
    assert events[-2]["usage"]["output_tokens"] == 24
    assert upstream.snapshot() == (0, 0, 0)


def test_titan_embeddings_hit_and_arn_model_ids(brt, upstream):
    r = brt.invoke_model(modelId="amazon.titan-embed-text-v2:0", body=json.dumps(TITAN["request"]["body"]))
    v = json.loads(r["body"].read())
    assert v == TITAN["response"]["body"]
    r = brt.converse(modelId=PROFILE_ARN, **CAPITAL["request"]["body"])
    assert headers(r)["x-understudy"] == "hit"
    assert r["output"] == CAPITAL["response"]["body"]["output"]
    assert upstream.snapshot() == (0, 0, 0)


def test_misses_and_bad_bodies_raise_botocores_own_errors(brt, upstream):
    with pytest.raises(brt.exceptions.ResourceNotFoundException) as exc:
        brt.converse(modelId=HAIKU, messages=[{"role": "user", "content": [{"text": "never recorded"}]}])
    e = exc.value.response
    assert e["Error"]["Code"] == "ResourceNotFoundException" and e["ResponseMetadata"]["HTTPStatusCode"] == 404
    key = e["ResponseMetadata"]["HTTPHeaders"]["x-understudy-key"]
    assert "Understudy has no asset" in e["Error"]["Message"] and key in e["Error"]["Message"]
    assert "Closest asset" in e["Error"]["Message"]
    with pytest.raises(brt.exceptions.ResourceNotFoundException):
        brt.converse_stream(modelId=HAIKU, messages=[{"role": "user", "content": [{"text": "never recorded"}]}])
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        brt.invoke_model(modelId=HAIKU, body=b"{not json")
    e = exc.value.response
    assert (e["Error"]["Code"], e["ResponseMetadata"]["HTTPStatusCode"]) == ("ValidationException", 400)
    assert e["ResponseMetadata"]["HTTPHeaders"]["x-understudy"] == "bad-request"
    assert isinstance(exc.value, brt.exceptions.ValidationException)
    assert upstream.snapshot() == (0, 0, 0)


def test_synthesized_converse_claude_and_titan_answers(brt, bedrock, upstream):
    ask = [{"role": "user", "content": [{"text": "Anything new?"}]}]
    r = brt.converse(modelId="amazon.nova-lite-v1:0", messages=ask)
    assert headers(r)["x-understudy"] == "synthesized"
    assert r["output"]["message"]["content"] == [{"text": "A modeled Converse answer."}]
    assert r["usage"]["inputTokens"] > 0 and r["usage"]["outputTokens"] > 0 and "latencyMs" in r["metrics"]
    r = brt.converse_stream(modelId="amazon.nova-lite-v1:0", messages=ask)
    events = stream_events(r["stream"])
    assert "".join(e["delta"].get("text", "") for n, e in events if n == "contentBlockDelta") == "A modeled Converse answer."
    assert dict(events)["metadata"]["usage"]["outputTokens"] > 0

    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 32,
                       "messages": [{"role": "user", "content": "Echo me back"}]})
    msg = json.loads(brt.invoke_model(modelId="anthropic.claude-3-haiku-20240307-v1:0", body=body)["body"].read())
    assert msg["content"][0]["text"] == "Echo me back" and msg["usage"]["input_tokens"] > 0
    r = brt.invoke_model_with_response_stream(modelId="anthropic.claude-3-haiku-20240307-v1:0", body=body)
    events = [json.loads(e["chunk"]["bytes"]) for e in r["body"]]
    assert "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta") == "Echo me back"

    vectors = []
    for text in ("never recorded", "never recorded", "something else"):
        r = brt.invoke_model(modelId="amazon.titan-embed-text-v2:0", body=json.dumps({"inputText": text, "dimensions": 256}))
        assert headers(r)["x-understudy"] == "synthesized"
        v = json.loads(r["body"].read())
        assert len(v["embedding"]) == 256 and v["inputTextTokenCount"] > 0
        assert abs(math.sqrt(sum(x * x for x in v["embedding"])) - 1) < 1e-4
        vectors.append(v["embedding"])
    assert vectors[0] == vectors[1] and vectors[0] != vectors[2]
    r = brt.invoke_model(modelId="amazon.titan-embed-text-v2:0", body=json.dumps({"inputText": "default size"}))
    assert len(json.loads(r["body"].read())["embedding"]) == 1024
    assert upstream.snapshot() == (0, 0, 0)


def test_credentials_never_count_in_keys(bedrock, upstream):
    want = asset_keys(EXAMPLE_ASSETS / "bedrock" / "converse.json")[0]
    seen = []
    for key, token in [("AKIAIOSFODNN7EXAMPLE", None), ("ASIAY34FZKBOKMUTVV7A", "FwoGZXIvYXdzEXAMPLESESSIONTOKEN")]:
        c = client(bedrock, key, token)
        try:
            seen.append(headers(c.converse(**converse_args(CAPITAL)))["x-understudy-key"])
        finally:
            c.close()
    raw = bedrock.post(f"/model/{HAIKU}/converse", CAPITAL["request"]["body"])  # unsigned
    seen.append(raw.header("x-understudy-key"))
    assert seen == [want] * 3
    assert upstream.snapshot() == (0, 0, 0)
