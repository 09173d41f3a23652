"""Embeddings: float assets served as base64 (little-endian f32) on request, and back."""

from __future__ import annotations

import base64
import math
import struct

import pytest

from conftest import load_asset

FOX = load_asset("openai/embeddings-fox.json")
B64 = load_asset("embeddings-base64.json")  # tests/e2e/assets: recorded with base64 vectors


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def decode(b64: str) -> list[float]:
    raw = base64.b64decode(b64, validate=True)
    assert len(raw) % 4 == 0, len(raw)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def asset_vectors(asset) -> list[list[float]]:
    return [d["embedding"] for d in asset["response"]["body"]["data"]]


def test_float_asset_served_as_base64_when_asked(strict, upstream):
    before = upstream.snapshot()
    r = strict.post("/v1/embeddings", {**FOX["request"]["body"], "encoding_format": "base64"})
    assert r.status == 200, r.body
    assert r.header("x-understudy") == "hit"
    body = r.json()
    want = asset_vectors(FOX)
    assert len(body["data"]) == len(want)
    for item, vec in zip(body["data"], want):
        assert isinstance(item["embedding"], str), item
        got = decode(item["embedding"])
        assert len(got) == len(vec) == 8
        # Exactly the f32 rounding of each recorded value, hence within f32 precision of it.
        assert got == [f32(x) for x in vec]
        assert all(math.isclose(g, x, rel_tol=1e-6, abs_tol=1e-7) for g, x in zip(got, vec))
    # Everything else in the body is the recorded one.
    rest = {k: v for k, v in body.items() if k != "data"}
    assert rest == {k: v for k, v in FOX["response"]["body"].items() if k != "data"}
    assert [(d["object"], d["index"]) for d in body["data"]] == [(d["object"], d["index"]) for d in FOX["response"]["body"]["data"]]
    upstream.assert_untouched_since(before)


@pytest.mark.parametrize("extra", [{}, {"encoding_format": "float"}], ids=["default", "float"])
def test_float_asset_served_as_floats_otherwise(strict, upstream, extra):
    before = upstream.snapshot()
    r = strict.post("/v1/embeddings", {**FOX["request"]["body"], **extra})
    assert r.status == 200, r.body
    assert r.header("x-understudy") == "hit"
    assert r.json() == FOX["response"]["body"]
    upstream.assert_untouched_since(before)


def test_base64_asset_served_as_floats_when_not_asked(strict, upstream):
    before = upstream.snapshot()
    body = {k: v for k, v in B64["request"]["body"].items() if k != "encoding_format"}
    r = strict.post("/v1/embeddings", body)
    assert r.status == 200, r.body
    assert r.header("x-understudy") == "hit"
    for item, stored in zip(r.json()["data"], asset_vectors(B64)):
        assert isinstance(item["embedding"], list), item
        # Bit-identical float32 values after the client parses them.
        assert [f32(x) for x in item["embedding"]] == decode(stored)
    upstream.assert_untouched_since(before)


def test_base64_asset_served_verbatim_as_base64(strict, upstream):
    r = strict.post("/v1/embeddings", B64["request"]["body"])
    assert r.status == 200 and r.header("x-understudy") == "hit"
    assert r.json() == B64["response"]["body"]
    assert upstream.snapshot() == (0, 0, 0)
