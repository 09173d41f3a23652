#!/usr/bin/env python3
"""Latency of one request at a time, per request, for bench/store.sh: cold (the first request for a key: a
fetch from the remote store, or the first use of an embedded or inline asset) and warm (the same keys again).

    client.py --port P --bodies LIST [--threads T]

LIST names one JSON request body per line; each is POSTed once to /v1/chat/completions over keep-alive
connections (T threads share the list). Prints one JSON line: n, statuses, how many were hits, how many the
store answered `fetched` / `cached`, and latency p50 / p90 / p99 / mean / max in milliseconds (one thread
only: with several, latency is not reported). Standard library only.
"""

import argparse
import http.client
import json
import threading
import time


def run(port, bodies, out, lock):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for b in bodies:
        t0 = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=b, headers={"content-type": "application/json"})
        r = conn.getresponse()
        r.read()
        ms = (time.perf_counter() - t0) * 1000
        with lock:
            out.append((r.status, r.getheader("x-understudy"), r.getheader("x-understudy-store"), ms))
    conn.close()


def pct(sorted_ms, p):
    return sorted_ms[min(len(sorted_ms) - 1, int(p / 100 * len(sorted_ms)))]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bodies", required=True)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    paths = [line.strip() for line in open(a.bodies) if line.strip()]
    bodies = [open(x, "rb").read() for x in paths]
    out, lock = [], threading.Lock()
    shares = [bodies[i :: a.threads] for i in range(a.threads)]
    threads = [threading.Thread(target=run, args=(a.port, s, out, lock)) for s in shares]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    statuses = {}
    for s, _, _, _ in out:
        statuses[s] = statuses.get(s, 0) + 1
    res = {
        "n": len(out),
        "statuses": statuses,
        "hits": sum(1 for _, u, _, _ in out if u == "hit"),
        "fetched": sum(1 for _, _, st, _ in out if st == "fetched"),
        "cached": sum(1 for _, _, st, _ in out if st == "cached"),
        "wall_s": round(wall, 2),
    }
    if a.threads == 1 and out:
        ms = sorted(x[3] for x in out)
        res.update({"p50": round(pct(ms, 50), 3), "p90": round(pct(ms, 90), 3), "p99": round(pct(ms, 99), 3),
                    "mean": round(sum(ms) / len(ms), 3), "max": round(ms[-1], 3)})
    print(json.dumps(res))


if __name__ == "__main__":
    main()
