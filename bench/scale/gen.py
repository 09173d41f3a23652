#!/usr/bin/env python3
"""Generators for bench/scale.sh: assets and request bodies for the scale curves.

    gen.py body   --size BYTES  --out DIR   # DIR/assets/body.json + DIR/request.json (exactly BYTES long)
    gen.py store  --count N     --out DIR   # DIR/assets/dNNN/aNNNNNNN.json (N distinct assets) + DIR/bodies/*.json
    gen.py stream --chunks N    --out DIR   # DIR/assets/stream.json + DIR/request.json ("stream": true)

Everything is deterministic (seeded), written compactly, and printed as one JSON summary line on stdout.
Standard library only.
"""

import argparse
import json
import os
import random
import sys

PATH = "/v1/chat/completions"
WORDS = (
    "the of and to in is for on with as by at from that this it be are was or an which not have has can will "
    "city river museum spring summer train ticket morning evening market square bridge tower garden harbour "
    "coast island valley mountain cathedral palace gallery festival weather season ferry station airport route "
    "quiet busy early late open closed local guide walking cycling booking weekday weekend north south east west"
).split()
COUNTRIES = (
    "France Italy Spain Portugal Germany Austria Belgium Netherlands Denmark Sweden Norway Finland Poland Czechia "
    "Hungary Greece Croatia Slovenia Ireland Iceland Estonia Latvia Lithuania Romania Bulgaria Slovakia Malta "
    "Cyprus Luxembourg Switzerland"
).split()
MONTHS = "January February March April May June July August September October November December".split()


def dumps(v):
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def write(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = dumps(value)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return len(text.encode("utf-8"))


def completion(ident, content, created=1764403200, annotations=True):
    msg = {"role": "assistant", "content": content, "refusal": None}
    if annotations:
        msg["annotations"] = []
    return {
        "id": f"chatcmpl-scale{ident}",
        "object": "chat.completion",
        "created": created,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": msg, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 61, "completion_tokens": 52, "total_tokens": 113},
        "service_tier": "default",
        "system_fingerprint": "fp_560af6e559",
    }


def asset(name, body, response_body):
    return {
        "name": name,
        "request": {"method": "POST", "path": PATH, "body": body},
        "response": {"status": 200, "headers": {"content-type": "application/json"}, "body": response_body},
    }


def text_of(rng, n):
    """ASCII words (no JSON escapes) of exactly n bytes."""
    out, size = [], 0
    while size < n:
        w = rng.choice(WORDS)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)[:n].ljust(n, "x")


def cmd_body(a):
    """A chat request of exactly --size bytes: the last user message is padded with prose."""
    rng = random.Random(a.size)
    base = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You summarise long documents in three sentences."},
            {"role": "user", "content": ""},
        ],
        "temperature": 0,
        "max_tokens": 128,
    }
    framing = len(dumps(base).encode("utf-8"))
    if a.size < framing + 16:
        sys.exit(f"gen.py: --size {a.size} is below the framing ({framing} B) + 16")
    # Repeat a 64 KiB block of prose: building tens of MiB word by word would take seconds.
    block = text_of(rng, 65536)
    pad = a.size - framing
    head = f"Summarise this document (size {a.size}): "
    content = (head + block * (pad // len(block) + 1))[:pad]
    base["messages"][1]["content"] = content
    n = write(os.path.join(a.out, "request.json"), base)
    if n != a.size:
        sys.exit(f"gen.py: request is {n} B, wanted {a.size}")
    resp = completion(f"body{a.size}", "The document describes a long trip through European capitals.")
    m = write(os.path.join(a.out, "assets", "body.json"), asset(f"scale body {a.size} B", base, resp))
    print(dumps({"request_bytes": n, "asset_file_bytes": m}))


def store_request(i):
    rng = random.Random(i)
    country = COUNTRIES[i % len(COUNTRIES)]
    month = MONTHS[(i // len(COUNTRIES)) % 12]
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a concise travel assistant. Answer in two sentences."},
            {
                "role": "user",
                "content": f"Trip #{i}: I will be in {country} in {month}. "
                f"Which {rng.choice(['museum', 'market', 'park', 'festival', 'gallery'])} "
                f"should I see near the {rng.choice(['station', 'harbour', 'old town', 'river'])}?",
            },
        ],
        "temperature": 0,
        "max_tokens": 96,
        "user": f"scale-user-{i:07d}",
    }


def store_response(i):
    rng = random.Random(~i)
    country = COUNTRIES[i % len(COUNTRIES)]
    words = " ".join(rng.choice(WORDS) for _ in range(14))
    content = (
        f"For trip #{i} in {country}, start early at the main museum near the station, then walk to the old "
        f"market square; locals recommend it on weekday mornings. Notes: {words}."
    )
    return completion(f"store{i:07d}", content, created=1764403200 + i)


def cmd_store(a):
    """N distinct small chat assets, 1000 files per directory (--per-file K: K assets per file, as an array),
    and a rotation set of request bodies."""
    req_total = resp_total = 0
    batch = []
    for i in range(a.count):
        body, resp = store_request(i), store_response(i)
        req_total += len(dumps(body))
        resp_total += len(dumps(resp))
        if a.per_file == 1:
            write(os.path.join(a.out, "assets", f"d{i // 1000:03d}", f"a{i:07d}.json"), asset(f"scale store #{i}", body, resp))
            continue
        batch.append(asset(f"scale store #{i}", body, resp))
        if len(batch) == a.per_file or i == a.count - 1:
            f = i // a.per_file
            write(os.path.join(a.out, "assets", f"d{f // 1000:03d}", f"f{f:07d}.json"), batch)
            batch = []
    k = min(a.rotate, a.count)
    picks = sorted({(j * a.count) // k for j in range(k)})
    for j, i in enumerate(picks):
        write(os.path.join(a.out, "bodies", f"body-{j:04d}.json"), store_request(i))
    print(dumps({"assets": a.count, "rotation": len(picks), "avg_request_bytes": req_total // a.count,
                 "avg_response_bytes": resp_total // a.count}))


def cmd_stream(a):
    """An asset whose streamed chat answer has exactly --chunks `chat.completion.chunk` events.

    matcher/src/stream.rs splits content into pieces of <= 8 chars that end before whitespace, so a text of
    k words of 2..6 letters joined by single spaces gives k pieces ("word", " word", ...). The stream is one
    opening delta (role), k content deltas, one closing delta (finish_reason), then `data: [DONE]`:
    chunks = k + 2. The response has no `annotations` (they would add one delta).
    """
    if a.chunks < 3:
        sys.exit("gen.py: --chunks must be >= 3")
    k = a.chunks - 2
    rng = random.Random(a.chunks)
    short = [w for w in WORDS if 2 <= len(w) <= 6]
    content = " ".join(rng.choice(short) for _ in range(k))
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"Write {k} words about spring in Paris."}],
        "stream": True,
        "temperature": 0,
    }
    n = write(os.path.join(a.out, "request.json"), body)
    resp = completion(f"stream{a.chunks}", content, annotations=False)
    m = write(os.path.join(a.out, "assets", "stream.json"), asset(f"scale stream {a.chunks} chunks", body, resp))
    print(dumps({"chunks": a.chunks, "words": k, "content_bytes": len(content), "request_bytes": n,
                 "asset_file_bytes": m}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("body")
    b.add_argument("--size", type=int, required=True)
    b.add_argument("--out", required=True)
    s = sub.add_parser("store")
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--rotate", type=int, default=100)
    s.add_argument("--per-file", type=int, default=1)
    s.add_argument("--out", required=True)
    t = sub.add_parser("stream")
    t.add_argument("--chunks", type=int, required=True)
    t.add_argument("--out", required=True)
    a = p.parse_args()
    {"body": cmd_body, "store": cmd_store, "stream": cmd_stream}[a.cmd](a)


if __name__ == "__main__":
    main()
