"""A user's test suite, unchanged except for where OPENAI_BASE_URL points.

Run `make up` in one terminal, then in another:
    OPENAI_BASE_URL=http://127.0.0.1:10000/v1 OPENAI_API_KEY=sk-virtual .venv/bin/python -m pytest examples/python-openai
Every call below is answered by Understudy from examples/assets: no tokens are spent.
"""

import math
import os

import pytest
from openai import OpenAI

from app import capital_of, embed, weather_tool_city


@pytest.fixture
def client() -> OpenAI:
    return OpenAI(
        base_url=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:10000/v1"),
        api_key=os.environ.get("OPENAI_API_KEY", "sk-virtual"),
        max_retries=0,
    )


def test_capital(client):
    assert "Paris" in capital_of(client, "France")


def test_tool_call(client):
    assert weather_tool_city(client, "What's the weather in Oslo?") == "Oslo"


def test_embeddings_are_unit_vectors(client):
    vectors = embed(client, ["The quick brown fox", "jumps over the lazy dog"])
    assert len(vectors) == 2
    for v in vectors:
        assert len(v) == 8
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4)
