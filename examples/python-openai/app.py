"""A tiny "application" that calls an LLM: the code under test in this example."""

import json

from openai import OpenAI


def capital_of(client: OpenAI, country: str) -> str:
    reply = client.chat.completions.create(
        model="gpt-4o-mini",
        temperature=0,
        messages=[
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": f"What is the capital of {country}?"},
        ],
    )
    return reply.choices[0].message.content or ""


def weather_tool_city(client: OpenAI, question: str) -> str:
    """Returns the city the model asked the weather tool about."""
    reply = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": question}],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Current weather for a city",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                },
            }
        ],
    )
    call = reply.choices[0].message.tool_calls[0]
    return json.loads(call.function.arguments)["city"]


def embed(client: OpenAI, texts: list[str]) -> list[list[float]]:
    reply = client.embeddings.create(model="text-embedding-3-small", input=texts, dimensions=8)
    return [d.embedding for d in reply.data]
