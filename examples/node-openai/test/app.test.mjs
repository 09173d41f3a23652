// A user's test suite, unchanged except for where OPENAI_BASE_URL points. With `make up` running:
//   cd examples/node-openai && npm ci && OPENAI_BASE_URL=http://127.0.0.1:10000/v1 npm test
// Every call below is answered by Understudy from examples/assets: no tokens are spent.
import assert from "node:assert/strict";
import { test } from "node:test";

import { capitalOf, client, embed, weatherToolCity } from "../app.mjs";

test("capital", async () => {
  assert.match(await capitalOf(client(), "France"), /Paris/);
});

test("tool call", async () => {
  assert.equal(await weatherToolCity(client(), "What's the weather in Oslo?"), "Oslo");
});

test("embeddings are unit vectors", async () => {
  const vectors = await embed(client(), ["The quick brown fox", "jumps over the lazy dog"]);
  assert.equal(vectors.length, 2);
  for (const v of vectors) {
    assert.equal(v.length, 8);
    const norm = Math.sqrt(v.reduce((s, x) => s + x * x, 0));
    assert.ok(Math.abs(norm - 1) < 1e-4, `norm ${norm}`);
  }
});
