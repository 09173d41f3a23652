"""Load and soak: a million virtual requests through Envoy with two workers.

No errors, exact stats (requests = hits + misses + bad_requests, and each equals what was sent), nothing
sent upstream, and flat memory: Envoy's resident set (which holds both wasm VMs) is measured after a
warm-up and again at the end. SOAK_REQUESTS sets the total (default 1,000,000). Results go to
tests/soak/.last-run.json for the hardening table in SECURITY.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from conftest import EXAMPLE_ASSETS, FakeUpstream, load_asset, start_understudy  # noqa: E402

TOTAL = int(os.environ.get("SOAK_REQUESTS", "1000000"))
# The mix: mostly hits, some strict misses, some malformed bodies.
SHARE = {"hit": 0.7, "miss": 0.2, "bad": 0.1}
MAX_RSS_GROWTH_MIB = 64


def rss_kib(pid: int) -> int:
    """Resident set of a process and its threads (Envoy runs the VMs in-process)."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1))


def envoy_pid(understudy_pid: int) -> int:
    children = Path(f"/proc/{understudy_pid}/task/{understudy_pid}/children").read_text().split()
    assert children, "understudy up has no Envoy child"
    return int(children[0])


CLIENTS = 32


def hey(url: str, body: Path, n: int, workers: int = CLIENTS) -> dict[int, int]:
    """Runs hey for exactly n POSTs (n a multiple of workers: hey splits n evenly); returns {status: count};
    fails on any transport error."""
    assert n % workers == 0, (n, workers)
    out = subprocess.run(
        ["hey", "-n", str(n), "-c", str(workers), "-m", "POST", "-T", "application/json", "-D", str(body), url],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.returncode == 0, out.stderr
    assert "Error distribution" not in out.stdout, out.stdout
    codes = {int(c): int(k) for c, k in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out.stdout)}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    codes_rps = float(rps.group(1)) if rps else 0.0
    hey.last_rps = codes_rps  # type: ignore[attr-defined]
    return codes


@pytest.fixture(scope="module")
def upstream():
    u = FakeUpstream()
    yield u
    u.close()


def test_a_million_virtual_requests_hold_steady(tmp_path, upstream):
    if shutil.which("hey") is None:
        pytest.fail("hey is not installed: run scripts/install-load-tools.sh (make test-soak does)")
    u = start_understudy(
        "soak", EXAMPLE_ASSETS, tmp_path, upstream=upstream.url, on_miss="error", workers=2, log_level="warning"
    )
    try:
        hit = load_asset("openai/chat-capital.json")["request"]["body"]
        bodies = {
            "hit": json.dumps(hit),
            "miss": json.dumps({**hit, "temperature": 0.5}),
            "bad": '{"model": "gpt-4o-mini", "messages": [',
        }
        files = {}
        for k, text in bodies.items():
            files[k] = tmp_path / f"{k}.json"
            files[k].write_text(text)
        url = u.base_url + "/chat/completions"
        status_of = {"hit": 200, "miss": 404, "bad": 400}

        warm = 20_000
        assert hey(url, files["hit"], warm) == {200: warm}
        pid = envoy_pid(u.proc.pid)
        rss_before = rss_kib(pid)
        before = u.stats()
        upstream_before = upstream.snapshot()

        plan = {k: int(TOTAL * share) // CLIENTS * CLIENTS for k, share in SHARE.items()}
        plan["hit"] += (TOTAL - sum(plan.values())) // CLIENTS * CLIENTS
        total = sum(plan.values())
        rates = {}
        for kind, n in plan.items():
            assert hey(url, files[kind], n) == {status_of[kind]: n}, kind
            rates[kind] = hey.last_rps  # type: ignore[attr-defined]

        after = u.stats()
        rss_after = rss_kib(pid)
        delta = {k: after[k] - before[k] for k in after}
        assert delta["requests"] == total, delta
        assert delta["hits"] == plan["hit"] and delta["misses"] == plan["miss"], delta
        assert delta["bad_requests"] == plan["bad"], delta
        assert delta["requests"] == delta["hits"] + delta["synthesized"] + delta["misses"] + delta["bad_requests"]
        assert delta["passthroughs"] == 0 and delta["misconfigured"] == 0, delta
        upstream.assert_untouched_since(upstream_before)
        growth_mib = (rss_after - rss_before) / 1024
        result = {
            "requests": total,
            "workers": 2,
            "mix": plan,
            "requests_per_second": rates,
            "envoy_rss_mib_before": round(rss_before / 1024, 1),
            "envoy_rss_mib_after": round(rss_after / 1024, 1),
            "stats_delta": delta,
        }
        Path(__file__).with_name(".last-run.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        assert growth_mib < MAX_RSS_GROWTH_MIB, f"Envoy RSS grew {growth_mib:.1f} MiB over {total} requests"
    finally:
        u.stop()
