// A tiny "application" that calls an LLM: the code under test in this example (the Node twin of
// examples/python-openai/app.py).
import OpenAI from "openai";

export function client() {
  return new OpenAI({
    baseURL: process.env.OPENAI_BASE_URL ?? "http://127.0.0.1:10000/v1",
    apiKey: process.env.OPENAI_API_KEY ?? "sk-virtual",
    maxRetries: 0,
  });
}

export async function capitalOf(openai, country) {
  const reply = await openai.chat.completions.create({
    model: "gpt-4o-mini",
    temperature: 0,
    messages: [
      { role: "system", content: "You are a concise assistant." },
      { role: "user", content: `What is the capital of ${country}?` },
    ],
  });
  return reply.choices[0].message.content ?? "";
}

// Returns the city the model asked the weather tool about.
export async function weatherToolCity(openai, question) {
  const reply = await openai.chat.completions.create({
    model: "gpt-4o-mini",
    messages: [{ role: "user", content: question }],
    tools: [
      {
        type: "function",
        function: {
          name: "get_weather",
          description: "Current weather for a city",
          parameters: {
            type: "object",
            properties: { city: { type: "string" } },
            required: ["city"],
          },
        },
      },
    ],
  });
  const call = reply.choices[0].message.tool_calls[0];
  return JSON.parse(call.function.arguments).city;
}

export async function embed(openai, texts) {
  const reply = await openai.embeddings.create({ model: "text-embedding-3-small", input: texts, dimensions: 8 });
  return reply.data.map((d) => d.embedding);
}
