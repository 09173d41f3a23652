"""Cost avoidance through real Envoy: the labeled counters equal the assets' usage, dollars are exact to the
micro-dollar with overridden prices over two workers, unpriced models are counted as such, the model cap holds,
`understudy report` sums two Envoys, its HTML chart renders in headless Chromium, and a real Prometheus scraping
`understudy up`'s Envoy answers the Grafana dashboard's queries with the expected values.

Expected figures are computed here, independently: each API's usage fields read from the asset files, each
price from the --prices file or the built-in table, and Decimal arithmetic floored per label set.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import subprocess
import time
import urllib.parse
import urllib.request
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest

from conftest import (
    ROOT, UNDERSTUDY, Understudy, admin_get, builtin_rate, free_port, http_request, register_log, start_understudy,
    stop_process, tail,
)

DASHBOARD = ROOT / "envoy" / "grafana-understudy-cost.json"
MAX_MODEL_LABELS = int(re.search(r"pub const MAX_MODEL_LABELS: usize = (\d+);", (ROOT / "matcher/src/limits.rs").read_text())[1])

# --prices: overrides and a long-context tier (USD per 1M tokens, exact decimals).
PRICES = {
    "gpt-4.1*": {"input": 2.123456, "cached_input": 0.5, "output": 8.1},
    "ft:gpt-4.1-mini:*": {"input": 0.8, "cached_input": 0.2, "output": 3.2},
    "my-*": {"input": 1.111111, "output": 2.222223},
    "claude-sonnet-4-5*": {"input": 3.3, "cached_input": 0.33, "output": 15.7,
                           "long_context": {"above_input_tokens": 20000, "input": 6.6, "cached_input": 0.66, "output": 23.3}},
    "synth-*": {"input": 1.000001, "output": 2.000003},
}

# (file, path, body, response body or None, calls in phase 1 + phase 2, the price entry: ("override"|"builtin", pattern) or None)
CHAT = "/v1/chat/completions"


def chat(model: str, q: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": q}]}


def openai_answer(usage: dict | None) -> dict:
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "An answer of a few words."}, "finish_reason": "stop"}]}
    if usage is not None:
        body["usage"] = usage
    return body


def anthropic_answer(usage: dict) -> dict:
    return {"id": "msg_01x", "type": "message", "role": "assistant", "model": "m",
            "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "usage": usage}


ASSETS = [
    ("a1", CHAT, chat("gpt-4.1", "one"),
     openai_answer({"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500, "prompt_tokens_details": {"cached_tokens": 200}}),
     7, ("override", "gpt-4.1*")),
    ("a2", CHAT, chat("ft:gpt-4.1-mini:acme:cs:AbC123", "two"),
     openai_answer({"prompt_tokens": 333, "completion_tokens": 77, "prompt_tokens_details": {"cached_tokens": 33}}),
     5, ("override", "ft:gpt-4.1-mini:*")),
    ("a3", "/openai/deployments/my-gpt.deploy/chat/completions?api-version=2024-10-21", {"messages": [{"role": "user", "content": "three"}]},
     openai_answer({"prompt_tokens": 50, "completion_tokens": 5}), 3, ("override", "my-*")),
    ("a4", "/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 500, "messages": [{"role": "user", "content": "long"}]},
     anthropic_answer({"input_tokens": 10, "cache_read_input_tokens": 30000, "cache_creation_input_tokens": 5000, "output_tokens": 400}),
     2, ("override", "claude-sonnet-4-5*")),
    ("a5", "/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "short"}]},
     anthropic_answer({"input_tokens": 100, "output_tokens": 50}), 3, ("override", "claude-sonnet-4-5*")),
    ("a6", "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-opus-4-1@20250805:rawPredict",
     {"anthropic_version": "vertex-2023-10-16", "max_tokens": 20, "messages": [{"role": "user", "content": "vertex"}]},
     anthropic_answer({"input_tokens": 200, "output_tokens": 20}), 2, ("builtin", "claude-opus-4-1*")),
    ("a7", "/v1beta/models/gemini-2.5-flash:generateContent", {"contents": [{"role": "user", "parts": [{"text": "gemini"}]}]},
     {"candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]}, "finishReason": "STOP"}],
      "usageMetadata": {"promptTokenCount": 400, "candidatesTokenCount": 40, "cachedContentTokenCount": 100,
                        "thoughtsTokenCount": 10, "totalTokenCount": 450}},
     4, ("builtin", "gemini-2.5-flash*")),
    ("a8", CHAT, chat("accounts/fireworks/models/llama-v3p1-8b-instruct", "eight"),
     openai_answer({"prompt_tokens": 21, "completion_tokens": 4}), 2, None),
    ("a9", CHAT, chat('weird "m" \\ é', "nine"), openai_answer(None), 2, None),
    ("a10", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "ten"},
     {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.6, 0.8]}], "model": "text-embedding-3-small",
      "usage": {"prompt_tokens": 12, "total_tokens": 12}}, 6, ("builtin", "text-embedding-3-small")),
]
SYNTH_RULES = [{"operation": "anthropic.messages", "model": "synth-*", "text": "A synthesized answer."}]
SYNTH_CALLS = 3
MISSES = 2


def provider_operation_model(path: str, body: dict) -> tuple[str, str, str]:
    """OpenTelemetry provider and operation names of a path, and the model it is for (the spec, not the code)."""
    if path.startswith("/openai/deployments/"):
        return "azure.ai.openai", "chat", path.split("/")[3]
    if ":rawPredict" in path:
        return "gcp.vertex_ai", "chat", path.rsplit("/", 1)[1].split(":")[0]
    if ":generateContent" in path:
        return "gcp.gemini", "generate_content", path.rsplit("/", 1)[1].split(":")[0]
    if path == "/v1/messages":
        return "anthropic", "chat", body["model"]
    if path == "/v1/embeddings":
        return "openai", "embeddings", body["model"]
    return "openai", "chat", body["model"]


def usage_of(path: str, answer: dict | None) -> tuple[int, int, int] | None:
    """(input with cached, output, cached input) from each API's own usage fields; None without usage."""
    if answer is None:
        return None
    if "usageMetadata" in answer:
        u = answer["usageMetadata"]
        return (u.get("promptTokenCount", 0) + u.get("toolUsePromptTokenCount", 0),
                u.get("candidatesTokenCount", 0) + u.get("thoughtsTokenCount", 0), u.get("cachedContentTokenCount", 0))
    u = answer.get("usage")
    if u is None:
        return None
    if "input_tokens" in u:  # Anthropic: cache reads and writes are input too
        cached = u.get("cache_read_input_tokens", 0)
        return u["input_tokens"] + cached + u.get("cache_creation_input_tokens", 0), u.get("output_tokens", 0), cached
    return u.get("prompt_tokens", 0), u.get("completion_tokens", 0), u.get("prompt_tokens_details", {}).get("cached_tokens", 0)


def rate_of(entry) -> dict | None:
    if entry is None:
        return None
    kind, pattern = entry
    if kind == "builtin":
        return builtin_rate(pattern)
    spec = json.loads(json.dumps(PRICES[pattern]), parse_float=Decimal)
    r = {"input": Decimal(spec["input"]), "output": Decimal(spec.get("output", 0))}
    r["cached_input"] = Decimal(spec.get("cached_input", spec["input"]))
    if "long_context" in spec:
        t = spec["long_context"]
        tier = {"input": Decimal(t["input"]), "output": Decimal(t.get("output", 0))}
        tier["cached_input"] = Decimal(t.get("cached_input", t["input"]))
        r["tier"] = (t["above_input_tokens"], tier)
    return r


def cost_micros(rate: dict, inp: int, out: int, cached: int) -> Decimal:
    """USD per 1M tokens × tokens = micro-dollars, with the long-context tier above its threshold."""
    if "tier" in rate and inp > rate["tier"][0]:
        rate = rate["tier"][1]
    cached = min(cached, inp)
    return (inp - cached) * rate["input"] + cached * rate["cached_input"] + out * rate["output"]


@dataclass
class Expected:
    """Per label set: requests, input, output, cached input, exact micro-dollars (before flooring), priced."""
    rows: dict = field(default_factory=lambda: defaultdict(lambda: {"requests": 0, "input": 0, "output": 0, "cached": 0,
                                                                    "micros": Decimal(0), "priced": True, "estimated": 0}))

    def add(self, key, usage, rate, n):
        row = self.rows[key]
        row["requests"] += n
        if rate is None:
            row["priced"] = False
        if usage is None:
            row["estimated"] += n
            return
        inp, out, cached = usage
        row["input"] += inp * n
        row["output"] += out * n
        row["cached"] += min(cached, inp) * n
        if rate is not None:
            row["micros"] += cost_micros(rate, inp, out, cached) * n


# ------------------------------------------------------------------------------------------------------------
# Prometheus and Envoy's stats, parsed
# ------------------------------------------------------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def prometheus_samples(text: str) -> list[tuple[str, dict, float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"unparseable Prometheus line {line!r}"
        labels = {}
        for k, v in _LABEL.findall(m.group(2) or ""):
            labels[k] = re.sub(r'\\(.)', lambda x: "\n" if x.group(1) == "n" else x.group(1), v)
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def cost_series(u: Understudy) -> dict:
    """{(metric, token_type, provider, operation, model): value} from Envoy's /stats/prometheus."""
    out = {}
    for name, labels, value in prometheus_samples(admin_get(u.admin, "/stats/prometheus")):
        if name.startswith("understudy_") and "gen_ai_request_model" in labels:
            key = (name, labels.get("gen_ai_token_type"), labels["gen_ai_provider_name"],
                   labels["gen_ai_operation_name"], labels["gen_ai_request_model"])
            assert key not in out, key
            out[key] = int(value)
    return out


# ------------------------------------------------------------------------------------------------------------
# The Envoys and Prometheus, shared by the module
# ------------------------------------------------------------------------------------------------------------

def write_assets(d: Path) -> None:
    d.mkdir(parents=True)
    for name, path, body, answer, _, _ in ASSETS:
        resp = {"body": answer} if answer is not None else {"body": openai_answer(None)}
        (d / f"{name}.json").write_text(json.dumps({"name": name, "request": {"path": path, "body": body}, "response": resp},
                                                   ensure_ascii=False))


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen
    log: Path

    def query(self, expr: str, at: float | None = None) -> list:
        q = {"query": expr}
        if at is not None:
            q["time"] = f"{at:.3f}"
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{urllib.parse.urlencode(q)}", timeout=30) as r:
            data = json.load(r)
        assert data["status"] == "success", (expr, data)
        return data["data"]["result"]

    def value(self, expr: str, at: float | None = None) -> float | None:
        res = self.query(expr, at)
        assert len(res) <= 1, (expr, res)
        return float(res[0]["value"][1]) if res else None


def start_prometheus(tmp: Path, admin: str) -> Prometheus:
    prom = shutil.which("prometheus")
    assert prom, "prometheus is missing: run `bash scripts/install-cost-tools.sh`"
    port = free_port()
    cfg = tmp / "prometheus.yml"
    cfg.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "- job_name: understudy\n"
        "  metrics_path: /stats/prometheus\n"
        f"  static_configs: [{{targets: ['{admin}']}}]\n"
    )
    log = tmp / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [prom, f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    p = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{p.url}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return p
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise AssertionError(f"prometheus did not start:\n{tail(log)}")
        time.sleep(0.1)


def send(u: Understudy, path: str, body: dict, status: int = 200) -> None:
    # A new connection per request: the kernel spreads them over both workers.
    r = http_request(u.port, "POST", path, body)
    assert r.status == status, (path, r.status, r.body[:300])


@dataclass
class World:
    a: Understudy
    b: Understudy
    prom: Prometheus
    assets: Path
    prices: Path
    expected: Expected
    b_expected: Expected
    traffic_done_at: float
    outcomes: dict
    tmp: Path


def wait_scraped(prom: Prometheus, expr: str, want: float, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = prom.value(expr)
        if got is not None and got == want:
            return
        assert time.monotonic() < deadline, f"Prometheus has {expr} = {got}, want {want}:\n{tail(prom.log)}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def world(request, tmp_path_factory, log_dir, upstream) -> World:
    tmp = tmp_path_factory.mktemp("cost")
    assets = tmp / "assets"
    write_assets(assets)
    prices = tmp / "prices.json"
    prices.write_text(json.dumps(PRICES))
    rules = tmp / "rules.json"
    rules.write_text(json.dumps(SYNTH_RULES))
    extra = ["--prices", str(prices), "--synthesize", str(rules)]
    started = []
    try:
        a = start_understudy("cost-a", assets, log_dir, upstream=upstream.url, workers=2, extra=extra, log_level="warning")
        started.append(a.proc)
        prom = start_prometheus(tmp, a.admin)
        started.append(prom.proc)
        expected = Expected()
        outcomes = {"hits": 0, "synthesized": 0, "misses": 0}
        # Phase 1: one call of each kind, scraped; phase 2: the rest (so rates have two samples to compare).
        for phase in (1, 2):
            for name, path, body, answer, calls, price in ASSETS:
                n = 1 if phase == 1 else calls - 1
                for _ in range(n):
                    send(a, path, body)
                expected.add(provider_operation_model(path, body), usage_of(path, answer), rate_of(price), n)
                outcomes["hits"] += n
            n = 1 if phase == 1 else SYNTH_CALLS - 1
            for _ in range(n):
                send(a, "/v1/messages", {"model": "synth-model", "max_tokens": 5, "messages": [{"role": "user", "content": "s"}]})
            outcomes["synthesized"] += n
            expected.rows[("anthropic", "chat", "synth-model")]["requests"] += n
            expected.rows[("anthropic", "chat", "synth-model")]["estimated"] += n
            if phase == 2:
                for i in range(MISSES):
                    send(a, CHAT, chat("gpt-4.1", f"no asset {i}"), status=404)
                outcomes["misses"] += MISSES
            wait_scraped(prom, "sum(understudy_requests)", float(sum(outcomes.values())))
        traffic_done_at = time.time()

        # Envoy B: the same assets, a few known calls, then more models than the cap (synthesized, unpriced).
        b_rules = tmp / "b-rules.json"
        b_rules.write_text(json.dumps([{"operation": "openai.chat_completions", "model": "cap-*", "text": "capped"}]))
        b = start_understudy("cost-b", assets, log_dir, upstream=upstream.url, workers=2,
                             extra=["--prices", str(prices), "--synthesize", str(b_rules)], log_level="warning")
        started.append(b.proc)
        b_expected = Expected()
        name, path, body, answer, _, price = ASSETS[0]
        for _ in range(3):
            send(b, path, body)
        b_expected.add(provider_operation_model(path, body), usage_of(path, answer), rate_of(price), 3)
        for i in range(MAX_MODEL_LABELS + 5):
            send(b, CHAT, chat(f"cap-model-{i:03d}", "c"))
        yield World(a, b, prom, assets, prices, expected, b_expected, traffic_done_at, outcomes, tmp)
    finally:
        for p in reversed(started):
            stop_process(p)


@pytest.fixture(autouse=True)
def _logs(request, world):
    register_log(request, "cost-a", world.a.log_path)
    register_log(request, "cost-b", world.b.log_path)
    register_log(request, "prometheus", world.prom.log)


# ------------------------------------------------------------------------------------------------------------
# The counters
# ------------------------------------------------------------------------------------------------------------

def test_both_workers_served_and_counters_equal_the_assets_usage_per_label_set(world):
    # Both workers took connections: the exactness below holds across VMs.
    stats = admin_get(world.a.admin, "/stats?filter=worker_")
    per_worker = {m[1]: int(m[2]) for m in re.finditer(r"listener\.\S*\.worker_(\d+)\.downstream_cx_total: (\d+)", stats)}
    assert len(per_worker) == 2 and all(v > 0 for v in per_worker.values()), per_worker
    got = cost_series(world.a)
    for (provider, operation, model), row in world.expected.rows.items():
        key = lambda metric, t=None: (metric, t, provider, operation, model)  # noqa: E731
        assert got.get(key("understudy_virtual_requests_total")) == row["requests"], (model, got)
        if row["estimated"]:
            assert got.get(key("understudy_estimated_usage_requests_total")) == row["estimated"], model
            assert got.get(key("understudy_tokens_avoided_total", "input"), 0) > 0, model
            continue
        assert key("understudy_estimated_usage_requests_total") not in got, model
        assert got.get(key("understudy_tokens_avoided_total", "input"), 0) == row["input"], model
        assert got.get(key("understudy_tokens_avoided_total", "output"), 0) == row["output"], model
        assert got.get(key("understudy_tokens_avoided_total", "cached_input"), 0) == row["cached"], model
    # Every series belongs to a label set sent: nothing extra, nothing mangled.
    assert {k[2:] for k in got} == set(world.expected.rows), sorted({k[2:] for k in got} ^ set(world.expected.rows))


def test_model_names_round_trip_exactly_into_the_label(world):
    models = {k[4] for k in cost_series(world.a)}
    for want in ("gpt-4.1", "ft:gpt-4.1-mini:acme:cs:AbC123", "my-gpt.deploy", "claude-opus-4-1@20250805",
                 "accounts/fireworks/models/llama-v3p1-8b-instruct", 'weird "m" \\ é', "gemini-2.5-flash"):
        assert want in models, (want, models)
    # The JSON form carries the same names, in Istio's TAG=.=VALUE;.; encoding.
    text = admin_get(world.a.admin, "/stats?format=json&filter=understudy")
    names = [s["name"] for s in json.loads(text)["stats"] if "gen_ai_request_model=.=" in s.get("name", "")]
    assert any("gen_ai_request_model=.=claude-opus-4-1@20250805;.;" in n for n in names), names[:5]


def test_dollars_are_exact_to_the_microdollar_with_overridden_prices_over_two_workers(world):
    got = cost_series(world.a)
    checked = 0
    for (provider, operation, model), row in world.expected.rows.items():
        key = ("understudy_cost_avoided_usd_micros_total", None, provider, operation, model)
        if not row["priced"] or row["estimated"]:
            continue
        assert got.get(key) == math.floor(row["micros"]), (model, got.get(key), row["micros"])
        checked += 1
    assert checked >= 7
    # The long-context tier applied to the big Anthropic call only (the same label set as the small one).
    sonnet = world.expected.rows[("anthropic", "chat", "claude-sonnet-4-5")]
    base = rate_of(("override", "claude-sonnet-4-5*"))
    assert sonnet["micros"] != sum(cost_micros({k: v for k, v in base.items() if k != "tier"}, *u) * n
                                   for u, n in [((35010, 400, 30000), 2), ((100, 50, 0), 3)])
    # A synthesized answer is priced from its estimated tokens by its override.
    synth = ("anthropic", "chat", "synth-model")
    s_in = got[("understudy_tokens_avoided_total", "input", *synth)]
    s_out = got[("understudy_tokens_avoided_total", "output", *synth)]
    r = rate_of(("override", "synth-*"))
    assert got[("understudy_cost_avoided_usd_micros_total", None, *synth)] == math.floor(s_in * r["input"] + s_out * r["output"])


def test_unpriced_models_are_counted_and_never_priced(world):
    got = cost_series(world.a)
    for model in ("accounts/fireworks/models/llama-v3p1-8b-instruct", 'weird "m" \\ é'):
        key = ("openai", "chat", model)
        assert got[("understudy_unpriced_requests_total", None, *key)] == world.expected.rows[key]["requests"]
        assert ("understudy_cost_avoided_usd_micros_total", None, *key) not in got


def test_models_past_the_cap_are_counted_as_other(world):
    got = cost_series(world.b)
    models = {k[4] for k in got}
    assert len(models) == MAX_MODEL_LABELS + 1 and "other" in models, sorted(models)
    assert "gpt-4.1" in models, "the first model seen keeps its label"
    # gpt-4.1 took one slot, so MAX - 1 cap models got labels and the last 6 are `other` on both workers.
    assert got[("understudy_virtual_requests_total", None, "openai", "chat", "other")] == 6
    assert got[("understudy_unpriced_requests_total", None, "openai", "chat", "other")] == 6
    assert f"cap-model-{MAX_MODEL_LABELS - 2:03d}" in models and f"cap-model-{MAX_MODEL_LABELS - 1:03d}" not in models


# ------------------------------------------------------------------------------------------------------------
# understudy report
# ------------------------------------------------------------------------------------------------------------

def report(*args: str) -> subprocess.CompletedProcess:
    p = subprocess.run([str(UNDERSTUDY), "report", *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p


def expected_rows(*worlds: Expected) -> dict:
    """Rows as the report sums them: each Envoy's counters (floored per Envoy), added."""
    out = defaultdict(lambda: {"requests": 0, "usd_micros": 0, "input_tokens": 0, "output_tokens": 0, "cached_input_tokens": 0})
    for e in worlds:
        for key, row in e.rows.items():
            o = out[key]
            o["requests"] += row["requests"]
            o["usd_micros"] += math.floor(row["micros"]) if row["priced"] and not row["estimated"] else 0
            o["input_tokens"] += row["input"]
            o["output_tokens"] += row["output"]
            o["cached_input_tokens"] += row["cached"]
    return out


def test_report_json_sums_two_envoys_with_known_traffic(world):
    r = json.loads(report("--admin", world.a.admin_url, "--admin", world.b.admin_url, "--json").stdout)
    assert r["format"] == "understudy.cost-report/v1"
    assert [s["source"] for s in r["sources"]] == [world.a.admin_url, world.b.admin_url]
    rows = {(x["provider"], x["operation"], x["model"]): x for x in r["rows"]}
    want = expected_rows(world.expected, world.b_expected)
    for key, w in want.items():
        x = rows[key]
        assert x["requests"] == w["requests"], key
        if key[2] != "synth-model" and not world.expected.rows.get(key, {}).get("estimated"):
            for f in ("usd_micros", "input_tokens", "output_tokens", "cached_input_tokens"):
                assert x[f] == w[f], (key, f, x[f], w[f])
    gpt = rows[("openai", "chat", "gpt-4.1")]
    assert gpt["requests"] == 10, "7 from Envoy A and 3 from Envoy B, summed"
    assert Decimal(str(gpt["usd"])) == Decimal(gpt["usd_micros"]) / 1_000_000
    assert rows[("openai", "chat", "other")]["priced"] is False
    t = r["totals"]
    assert t["requests"] == sum(x["requests"] for x in r["rows"]) == sum(world.outcomes[k] for k in ("hits", "synthesized")) + 3 + MAX_MODEL_LABELS + 5
    assert t["usd_micros"] == sum(x["usd_micros"] for x in r["rows"]) and Decimal(str(t["usd"])) == Decimal(t["usd_micros"]) / 1_000_000
    for f in ("input_tokens", "output_tokens", "cached_input_tokens"):
        assert t[f] == sum(x[f] for x in r["rows"]), f
    assert r["outcomes"]["hits"] == world.outcomes["hits"] + 3 and r["outcomes"]["misses"] == MISSES
    p = r["projection"]
    assert p["basis"] == "observed_rate" and len(p["observed_seconds"]) == 2 and p["weekly"]["usd_micros"] > t["usd_micros"]
    # Per run: the figures as they are × runs a week.
    r = json.loads(report("--admin", world.a.admin_url, "--json", "--runs-per-week", "20").stdout)
    assert r["projection"]["basis"] == "runs_per_week"
    assert r["projection"]["weekly"]["requests"] == 20 * r["totals"]["requests"]
    assert r["projection"]["quarterly"]["usd_micros"] == 13 * r["projection"]["weekly"]["usd_micros"]


def test_report_reads_saved_prometheus_and_json_stats_the_same(world):
    prom = world.tmp / "a.prom"
    prom.write_text(admin_get(world.a.admin, "/stats/prometheus"))
    js = world.tmp / "b.json"
    js.write_text(admin_get(world.b.admin, "/stats?format=json"))
    live = json.loads(report("--admin", world.a.admin_url, "--admin", world.b.admin_url, "--json").stdout)
    saved = json.loads(report("--stats", str(prom), "--stats", str(js), "--json").stdout)
    assert saved["rows"] == live["rows"] and saved["totals"] == live["totals"]
    text = report("--admin", world.a.admin_url).stdout
    assert "avoided:" in text and "claude-opus-4-1@20250805" in text and "projection" in text, text


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """A minimal PNG reader (8-bit RGB/RGBA, not interlaced): width, height, rows of raw pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r[i:i + 3]) for r in rows for i in range(0, stride, bpp)]


def test_html_report_draws_its_chart_in_headless_chromium(world):
    html = world.tmp / "report.html"
    report("--admin", world.a.admin_url, "--admin", world.b.admin_url, "--html", str(html))
    page = html.read_text()
    assert "<script" not in page and "src=" not in page and "<link" not in page, "self-contained, no network"
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: run `bash scripts/install-cost-tools.sh`"
    shot = world.tmp / "report.png"
    profile = world.tmp / "chromium-profile"
    p = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--hide-scrollbars", "--window-size=1200,1400", f"--screenshot={shot}", html.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0 and shot.exists(), p.stderr[-2000:]
    width, height, pixels = png_pixels(shot.read_bytes())
    bar = bytes.fromhex("2b6cb0")  # report.rs BAR: the dollars-by-model bars
    drawn = sum(1 for px in pixels if px == bar)
    not_white = sum(1 for px in pixels if px != b"\xff\xff\xff")
    assert drawn > 2000, f"{drawn} bar pixels in a {width}x{height} screenshot: the chart was not drawn"
    assert not_white > drawn, "text and the token chart are drawn too"


# ------------------------------------------------------------------------------------------------------------
# Prometheus and the Grafana dashboard
# ------------------------------------------------------------------------------------------------------------

def dashboard_targets() -> list[tuple[str, str, str]]:
    d = json.loads(DASHBOARD.read_text())
    assert d["panels"] and all(p["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in d["panels"])
    return [(p["title"], t["refId"], t["expr"]) for p in d["panels"] for t in p["targets"]]


def test_prometheus_answers_the_dashboards_queries_with_the_expected_values(world):
    rows = world.expected.rows
    a = cost_series(world.a)  # tokens of estimated answers are the filter's own count
    tokens = defaultdict(int)
    for k, v in a.items():
        if k[0] == "understudy_tokens_avoided_total":
            tokens[k[1]] += v
    micros = {k[2:]: v for k, v in a.items() if k[0] == "understudy_cost_avoided_usd_micros_total"}
    requests = sum(world.outcomes.values())
    total_micros = sum(micros.values())
    # The priced, recorded rows are exactly what the price file and the assets say.
    for key, row in rows.items():
        if row["priced"] and not row["estimated"]:
            assert micros[key] == math.floor(row["micros"]), key
    exact = {
        ("Dollars avoided", "A"): total_micros / 1e6,
        ("Live LLM calls avoided", "A"): sum(r["requests"] for r in rows.values()),
        ("Tokens avoided", "A"): tokens["input"] + tokens["output"],
        ("Unpriced requests", "A"): sum(r["requests"] for r in rows.values() if not r["priced"]),
        ("Hit / synthesized / miss rates (since start)", "A"): world.outcomes["hits"] / requests,
        ("Hit / synthesized / miss rates (since start)", "B"): world.outcomes["synthesized"] / requests,
        ("Hit / synthesized / miss rates (since start)", "C"): world.outcomes["misses"] / requests,
    }
    by_model = defaultdict(int)
    for (provider, operation, model), v in micros.items():
        by_model[model] += v
    vectors = {
        ("Dollars avoided by model (cumulative)", "A"): ({"gen_ai_request_model"}, {(m,): v / 1e6 for m, v in by_model.items()}),
        ("Dollars avoided by provider and model", "A"): (
            {"gen_ai_provider_name", "gen_ai_request_model"},
            {(p, m): v / 1e6 for (p, _, m), v in micros.items()}),
        ("Tokens avoided by type", "A"): ({"gen_ai_token_type"}, {(t,): v for t, v in tokens.items()}),
        ("Virtual requests, tokens and dollars by provider, operation and model", "A"): (
            {"gen_ai_provider_name", "gen_ai_operation_name", "gen_ai_request_model"},
            {k: r["requests"] for k, r in rows.items()}),
        ("Virtual requests, tokens and dollars by provider, operation and model", "B"): (
            {"gen_ai_provider_name", "gen_ai_operation_name", "gen_ai_request_model"},
            {k: v / 1e6 for k, v in micros.items()}),
    }
    # Rates: the traffic came in two phases within the last minute, so they are positive (misses: phase 2 only).
    at = world.traffic_done_at + 1
    checked = set()
    for title, ref, expr in dashboard_targets():
        q = expr.replace("$__rate_interval", "1m")
        if (title, ref) in exact:
            got = world.prom.value(q)
            assert got is not None and math.isclose(got, exact[(title, ref)], rel_tol=1e-12, abs_tol=1e-9), (title, ref, q, got)
        elif (title, ref) in vectors:
            labels, want = vectors[(title, ref)]
            res = world.prom.query(q)
            got = {tuple(s["metric"][l] for l in sorted(labels, key=["gen_ai_provider_name", "gen_ai_operation_name",
                                                                    "gen_ai_request_model", "gen_ai_token_type"].index)):
                   float(s["value"][1]) for s in res}
            assert set(got) == set(want), (title, ref, sorted(set(got) ^ set(want)))
            for k, v in want.items():
                assert math.isclose(got[k], v, rel_tol=1e-12, abs_tol=1e-9), (title, ref, k, got[k], v)
        else:
            assert "rate(" in q, f"{title} {ref}: add its expected value to this test"
            res = world.prom.query(q, at=at)
            if "passthroughs" in q:
                assert all(float(s["value"][1]) == 0 for s in res), (title, res)
                continue
            assert res and all(float(s["value"][1]) > 0 for s in res), (title, ref, q, res)
        checked.add((title, ref))
    assert checked >= set(exact) | set(vectors)


# ------------------------------------------------------------------------------------------------------------
# understudy estimate
# ------------------------------------------------------------------------------------------------------------

def test_estimate_measures_the_assets_and_multiplies_out(world):
    p = subprocess.run(
        [str(UNDERSTUDY), "estimate", "--assets", str(world.assets), "--prices", str(world.prices),
         "--runs-per-week", "10", "--environments", "2", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert p.returncode == 0, p.stderr
    e = json.loads(p.stdout)
    assert e["format"] == "understudy.estimate/v1" and e["calls_per_run"] == len(ASSETS)
    lines = {(x["provider"], x["operation"], x["model"]): x for x in e["lines"]}
    # One recorded answer per asset and call per run; 10 runs a week × 2 environments.
    per_model = defaultdict(list)
    for name, path, body, answer, _, price in ASSETS:
        per_model[provider_operation_model(path, body)].append((usage_of(path, answer), rate_of(price)))
    for key, samples in per_model.items():
        line = lines[key]
        assert line["calls_per_run"] == len(samples), key
        recorded = [u for u, _ in samples if u is not None]
        if len(recorded) < len(samples):
            assert line["estimated_calls"] == len(samples) - len(recorded), key
            continue
        assert line["input_tokens_per_call"] == round(sum(u[0] for u in recorded) / len(recorded), 1), key
        assert line["output_tokens_per_call"] == round(sum(u[1] for u in recorded) / len(recorded), 1), key
        assert line["weekly_tokens"] == sum(u[0] + u[1] for u in recorded) * 20, key
        rate = samples[0][1]
        if rate is None:
            assert line["weekly_usd"] is None and key[2] in e["unpriced_models"], key
        else:
            want = sum(cost_micros(rate, *u) for u in recorded) * 20
            assert abs(line["weekly_usd_micros"] - want) <= 1, (key, line["weekly_usd_micros"], want)
    assert e["quarterly_tokens"] == 13 * e["weekly_tokens"]
    text = subprocess.run(
        [str(UNDERSTUDY), "estimate", "--tokens-per-call", "1000", "--output-tokens-per-call", "250", "--calls-per-run",
         "200", "--runs-per-week", "50", "--environments", "3", "--model", "gpt-4.1", "--prices", str(world.prices)],
        capture_output=True, text=True, timeout=60,
    )
    assert text.returncode == 0, text.stderr
    # (750 × 2.123456 + 250 × 8.1) micro-dollars a call × 30,000 calls a week
    want = (750 * Decimal("2.123456") + 250 * Decimal("8.1")) * 30_000
    assert f"weekly exposure:    30.0 million tokens, ${want / 1_000_000:,.2f}" in text.stdout, text.stdout
