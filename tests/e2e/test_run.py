"""`understudy run -- CMD`: a test suite wrapped in one command, through the real CLI and Envoy.

Every run here forwards to the fake upstream, which counts every byte: a virtualized run sends none."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import (
    EXAMPLE_ASSETS, ROOT, UNDERSTUDY, asset_key, builtin_rate, load_asset, register_log, stop_process,
)

EXAMPLE_SUITE = ROOT / "examples" / "python-openai"
# Variables a CI machine might carry; each run starts without them unless a test sets them.
CLIENT_VARS = [
    k for k in os.environ
    if k.startswith(("OPENAI_", "ANTHROPIC_", "AZURE_OPENAI_", "UNDERSTUDY_", "AWS_", "GEMINI_", "GOOGLE_", "OLLAMA_"))
]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    log_dir: Path
    summary_path: Path

    @property
    def summary(self) -> dict:
        return json.loads(self.summary_path.read_text())


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARS}
    env.update(extra)
    return env


def run_args(tmp: Path, upstream, extra: list[str] | None = None) -> list[str]:
    return [
        str(UNDERSTUDY), "run",
        "--assets", str(EXAMPLE_ASSETS),
        "--upstream", upstream.url,
        "--workers", "1",
        "--log-dir", str(tmp / "logs"),
        "--summary-json", str(tmp / "summary.json"),
        *(extra or []),
    ]


def understudy_run(request, tmp: Path, upstream, cmd: list[str], *, extra=None, env=None, timeout=180) -> Run:
    register_log(request, "envoy (understudy run)", tmp / "logs" / "envoy.log")
    p = subprocess.run(
        run_args(tmp, upstream, extra) + ["--", *cmd],
        env=env or clean_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        start_new_session=True,
    )
    return Run(p.returncode, p.stdout, p.stderr, tmp / "logs", tmp / "summary.json")


def port_open(url: str) -> bool:
    host, port = url.removeprefix("http://").split("/")[0].rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


def wait_for(path: Path, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written within {timeout}s")


def test_the_example_suite_passes_unchanged_with_zero_bytes_upstream(request, tmp_path, upstream):
    before = upstream.snapshot()
    r = understudy_run(
        request, tmp_path, upstream,
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE_SUITE)],
        # Envoy at info level writes plenty: none of it may reach the command's output.
        extra=["--log-level", "info"],
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 passed" in r.stdout, r.stdout
    upstream.assert_untouched_since(before)
    s = r.summary
    assert s["verdict"] == "passed" and s["exit_status"] == 0 and s["command"]["status"] == 0
    assert s["counts"]["hits"] == 3 and s["counts"]["requests"] == 3 and s["counts"]["misses"] == 0, s
    assert s["stats"]["hits"] == 3 and s["consistent"] is True, s
    # Tokens and dollars avoided: the three answers' recorded usage, priced with the built-in table.
    av = s["avoided"]
    assert av["calls"] == 3 and av["estimated_requests"] == 0 and av["unpriced_requests"] == 0, av
    chat = [load_asset(f"openai/{n}.json")["response"]["body"]["usage"] for n in ("chat-capital", "chat-weather-tool")]
    emb = load_asset("openai/embeddings-fox.json")["response"]["body"]["usage"]
    assert av["input_tokens"] == sum(u["prompt_tokens"] for u in chat) + emb["prompt_tokens"], av
    assert av["output_tokens"] == sum(u["completion_tokens"] for u in chat) and av["cached_input_tokens"] == 0, av
    # Dollars per label set, floored to the micro-dollar (USD per 1M tokens × tokens = micro-dollars).
    mini, small = builtin_rate("gpt-4o-mini*"), builtin_rate("text-embedding-3-small")
    want_micros = math.floor(
        sum(u["prompt_tokens"] for u in chat) * mini["input"] + sum(u["completion_tokens"] for u in chat) * mini["output"]
    ) + math.floor(emb["prompt_tokens"] * small["input"])
    assert av["usd_micros"] == want_micros, av
    assert {m["model"] for m in av["models"]} == {"gpt-4o-mini", "text-embedding-3-small"}, av
    assert "live LLM calls: " in r.stderr and "gpt-4o-mini (openai chat): 2 calls" in r.stderr, r.stderr
    # Envoy's output went to its log file, named at the end, not into the test output.
    envoy_log = Path(s["envoy_log"])
    assert envoy_log.parent == tmp_path / "logs"
    assert "starting main dispatch loop" in envoy_log.read_text()
    for out in (r.stdout, r.stderr):
        assert "[info]" not in out and "main dispatch" not in out, out
    assert r.stderr.rstrip().endswith(f"Envoy log     {envoy_log}"), r.stderr
    assert "verdict       PASSED: exit status 0" in r.stderr


@pytest.mark.parametrize(
    "script, status",
    [("exit 0", 0), ("exit 3", 3), ("kill -TERM $$", 128 + 15), ("kill -KILL $$", 128 + 9)],
    ids=["success", "failure", "SIGTERM", "SIGKILL"],
)
def test_the_command_status_is_the_run_status_and_envoy_is_gone_after(request, tmp_path, upstream, script, status):
    url_file = tmp_path / "url"
    r = understudy_run(request, tmp_path, upstream, ["sh", "-c", f'echo "$UNDERSTUDY_ADMIN_URL" > {url_file}; {script}'])
    assert r.returncode == status, r.stderr
    admin = url_file.read_text().strip()
    assert admin.startswith("http://127.0.0.1:"), admin
    assert not port_open(admin), "Envoy's admin still answers after understudy run exited"
    s = r.summary
    assert s["exit_status"] == status
    if status > 128:
        assert s["command"] == {"status": None, "signal": status - 128, "error": None}
        assert f"killed by signal {status - 128}" in r.stderr
    else:
        assert s["command"]["status"] == status
    assert s["verdict"] == ("passed" if status == 0 else "failed")


def test_envoy_dying_under_the_command_stops_it_and_fails_the_run(request, tmp_path, upstream):
    # $PPID is `understudy run`; its Envoy child is killed as a crash would end it. The command would then
    # sleep for a minute: understudy stops it (the `timeout` would fail the test otherwise).
    r = understudy_run(
        request, tmp_path, upstream, ["sh", "-c", "kill -KILL $(pgrep -P $PPID envoy); exec sleep 60"], timeout=45
    )
    assert r.returncode == 125, r.stderr
    assert r.summary["command"]["signal"] == signal.SIGTERM
    assert "Envoy exited unexpectedly" in r.stderr
    assert r.summary["command"]["error"].startswith("was stopped because Envoy exited unexpectedly")


def test_a_missing_or_unrunnable_command_is_a_clear_error(request, tmp_path, upstream):
    r = understudy_run(request, tmp_path, upstream, ["understudy-no-such-command", "--flag"])
    assert r.returncode == 127, r.stderr
    assert "understudy-no-such-command: command not found" in r.stderr
    assert "serving" not in r.stderr, "Envoy should not even start for a command that doesn't exist"
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    r = understudy_run(request, tmp_path, upstream, [str(script)])
    assert r.returncode == 126, r.stderr
    assert "permission denied" in r.stderr
    # Understudy's own failures (a usage error, a bad asset) are 125, never a status the command could mean.
    p = subprocess.run([str(UNDERSTUDY), "run", "--no-such-option", "--", "true"], capture_output=True, text=True)
    assert p.returncode == 125, p.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.json").write_text('{"request": {"path": "/v1/chat/completions"}, "respons": {}}')
    p = subprocess.run(
        [str(UNDERSTUDY), "run", "--assets", str(tmp_path / "bad"), "--", "true"], capture_output=True, text=True
    )
    assert p.returncode == 125 and "broken.json" in p.stderr, p.stderr


SWALLOW_A_MISS = """
import openai
client = openai.OpenAI(max_retries=0)
try:
    client.chat.completions.create(model="gpt-4o-mini", temperature=0, messages=MESSAGES)
except openai.NotFoundError:
    print("miss swallowed")
"""
MISSING_MESSAGES = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is the capital of Spain?"},
]


def test_fail_on_miss_fails_a_passing_suite_and_names_the_missing_key(request, tmp_path, upstream):
    script = tmp_path / "swallow.py"
    script.write_text(f"MESSAGES = {MISSING_MESSAGES!r}\n" + SWALLOW_A_MISS)
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"model": "gpt-4o-mini", "temperature": 0, "messages": MISSING_MESSAGES}))
    out = subprocess.run(
        [str(UNDERSTUDY), "key", str(body), "--path", "/v1/chat/completions"], capture_output=True, text=True
    )
    missing_key, closest_key = out.stdout.strip(), asset_key("openai/chat-capital.json")
    before = upstream.snapshot()

    r = understudy_run(request, tmp_path / "plain", upstream, [sys.executable, str(script)])
    assert r.returncode == 0, r.stderr
    assert "miss swallowed" in r.stdout
    assert "--fail-on-miss would fail this run" in r.stderr

    r = understudy_run(request, tmp_path / "strict", upstream, [sys.executable, str(script)], extra=["--fail-on-miss"])
    assert r.returncode == 122, r.stderr
    assert "miss swallowed" in r.stdout
    upstream.assert_untouched_since(before)
    s = r.summary
    assert s["verdict"] == "failed" and s["command"]["status"] == 0 and s["fail_on_miss"] is True
    assert s["counts"]["misses"] == 1 and s["stats"]["misses"] == 1 and s["consistent"], s
    [miss] = s["misses"]
    assert miss["key"] == missing_key and miss["count"] == 1
    assert miss["operation"] == "openai.chat_completions" and miss["path"] == "/v1/chat/completions"
    assert miss["closest"]["key"] == closest_key
    assert "openai/chat-capital.json#0" in miss["closest"]["asset"]
    assert missing_key in r.stderr and closest_key in r.stderr and "chat-capital.json" in r.stderr
    assert "verdict       FAILED: exit status 122" in r.stderr
    # The access log behind the summary holds outcomes and keys, not request content.
    access = Path(s["access_log"]).read_text()
    assert missing_key in access and "Spain" not in access


SDKS_BY_DEFAULT = """
import os
from openai import OpenAI, AzureOpenAI
from anthropic import Anthropic

chat = OpenAI(max_retries=0).chat.completions.create(
    model="gpt-4o-mini", temperature=0, messages=MESSAGES)
print("openai:", chat.choices[0].message.content)
azure = AzureOpenAI(max_retries=0).chat.completions.create(
    model="gpt-4o-mini", temperature=0, messages=MESSAGES)
print("azure:", azure.choices[0].message.content)
msg = Anthropic(max_retries=0).messages.create(**ANTHROPIC)
print("anthropic:", msg.content[0].text)
print("keys:", os.environ["OPENAI_API_KEY"], os.environ["ANTHROPIC_API_KEY"])
"""


def test_the_environment_reaches_each_official_sdk_without_a_base_url_in_code(request, tmp_path, upstream):
    capital, haiku = load_asset("openai/chat-capital.json"), load_asset("anthropic/messages-haiku.json")
    script = tmp_path / "sdks.py"
    script.write_text(
        f"MESSAGES = {capital['request']['body']['messages']!r}\n"
        f"ANTHROPIC = {haiku['request']['body']!r}\n" + SDKS_BY_DEFAULT
    )
    before = upstream.snapshot()
    # A real-looking key stays the user's; a base URL pointing elsewhere is replaced by Envoy's.
    env = clean_env(OPENAI_API_KEY="sk-users-own", OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    r = understudy_run(request, tmp_path, upstream, [sys.executable, str(script)], env=env, extra=["--fail-on-miss"])
    assert r.returncode == 0, r.stdout + r.stderr
    answer = capital["response"]["body"]["choices"][0]["message"]["content"]
    assert f"openai: {answer}" in r.stdout and f"azure: {answer}" in r.stdout, r.stdout
    assert f"anthropic: {haiku['response']['body']['content'][0]['text']}" in r.stdout, r.stdout
    assert "keys: sk-users-own understudy-placeholder-key" in r.stdout, r.stdout
    upstream.assert_untouched_since(before)
    s = r.summary
    assert s["counts"]["hits"] == 3 and s["counts"]["requests"] == 3 and s["consistent"], s


def test_sigterm_to_run_reaches_the_command_and_tears_envoy_down(request, tmp_path, upstream):
    url_file = tmp_path / "url"
    register_log(request, "envoy (understudy run)", tmp_path / "logs" / "envoy.log")
    proc = subprocess.Popen(
        run_args(tmp_path, upstream) + ["--", "sh", "-c", f'echo "$UNDERSTUDY_BASE_URL" > {url_file}; exec sleep 120'],
        env=clean_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        base = wait_for(url_file)
        assert port_open(base)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "killed by signal 15" in err, err
    assert not port_open(base), "Envoy's listener is still open after understudy run exited"
    assert json.loads((tmp_path / "summary.json").read_text())["command"]["signal"] == signal.SIGTERM


COUNT_SIGINTS = """
import json, os, signal, sys, time, urllib.request
count = 0
def on_sigint(*_):
    global count
    count += 1
signal.signal(signal.SIGINT, on_sigint)
open(READY, "w").write(str(os.getpid()))
deadline = time.monotonic() + 60
while count == 0 and time.monotonic() < deadline:
    time.sleep(0.02)
time.sleep(1.0)  # a second, duplicate SIGINT would have arrived by now
# Envoy still serves the command after the Ctrl-C: it is not in the terminal's process group.
req = urllib.request.Request(os.environ["OPENAI_BASE_URL"] + "/chat/completions", data=json.dumps(BODY).encode(),
                             headers={"content-type": "application/json"})
status = urllib.request.urlopen(req, timeout=30).status
open(RESULT, "w").write(f"{count} {status}")
"""


@pytest.mark.parametrize("sender", ["terminal", "process"])
def test_sigint_reaches_the_command_exactly_once_and_envoy_keeps_serving_it(request, tmp_path, upstream, sender):
    """Ctrl-C in a terminal goes to the whole foreground process group (the command already has it: not
    forwarded again); a SIGINT sent to `understudy run` alone is forwarded."""
    import pty

    ready, result = tmp_path / "ready", tmp_path / "result"
    script = tmp_path / "count.py"
    body = load_asset("openai/chat-capital.json")["request"]["body"]
    script.write_text(f"READY, RESULT, BODY = {str(ready)!r}, {str(result)!r}, {body!r}\n" + COUNT_SIGINTS)
    register_log(request, "envoy (understudy run)", tmp_path / "logs" / "envoy.log")
    args = run_args(tmp_path, upstream) + ["--", sys.executable, str(script)]
    pid, fd = pty.fork()
    if pid == 0:  # the child: a new session whose controlling terminal is the pty
        os.chdir(ROOT)
        os.execve(args[0], args, clean_env())
    output = b""
    try:
        wait_for(ready)
        if sender == "terminal":
            os.write(fd, b"\x03")
        else:
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child side closed
                break
            if not chunk:
                break
            output += chunk
        _, wstatus = os.waitpid(pid, 0)
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(fd)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(wstatus) == 0, text
    assert result.read_text() == "1 200", text


FORWARDED = """
import os, urllib.request, openai
base = os.environ["OPENAI_BASE_URL"]
reply = openai.OpenAI(max_retries=0).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
print("live:", reply.choices[0].message.content)
bad = urllib.request.Request(base + "/embeddings", data=b'{"model": "e", "input": ', headers={"content-type": "application/json"})
print("malformed:", urllib.request.urlopen(bad, timeout=30).status)
print("models:", urllib.request.urlopen(base + "/models?api_key=not-logged", timeout=30).status)
"""


def test_passthrough_runs_count_forwarded_misses_and_agree_with_the_counters(request, tmp_path, upstream):
    script = tmp_path / "forwarded.py"
    script.write_text(f"MESSAGES = {MISSING_MESSAGES!r}\n" + FORWARDED)
    r = understudy_run(
        request, tmp_path, upstream, [sys.executable, str(script)], extra=["--on-miss", "passthrough", "--fail-on-miss"]
    )
    assert "live: live answer from the fake upstream" in r.stdout, r.stdout + r.stderr
    assert "malformed: 200" in r.stdout and "models: 200" in r.stdout, r.stdout
    assert r.returncode == 122, r.stderr
    upstream.wait_for_requests(3)
    assert sorted(q.path.split("?")[0] for q in upstream.requests) == ["/v1/chat/completions", "/v1/embeddings", "/v1/models"]
    s = r.summary
    c = s["counts"]
    assert (c["requests"], c["passthroughs"], c["misses"], c["untouched"]) == (2, 2, 0, 1), s
    assert (s["stats"]["misses"], s["stats"]["bad_requests"], s["stats"]["passthroughs"]) == (1, 1, 2), s
    assert s["consistent"] is True and s["on_miss"] == "passthrough"
    assert {(g["operation"], g["path"], g["count"]) for g in s["passthroughs"]} == {
        ("openai.chat_completions", "/v1/chat/completions", 1),
        ("openai.embeddings", "/v1/embeddings", 1),
    }
    assert any("forwarded to the live upstream" in n for n in s["notes"]), s["notes"]
    assert "not-logged" not in Path(s["access_log"]).read_text(), "query strings must not reach the access log"


MORE_SDKS_BY_DEFAULT = """
import boto3
import ollama
from google import genai

client = genai.Client()
g = client.models.generate_content(model="gemini-2.0-flash", contents=GEMINI_PROMPT)
print("gemini:", g.text)
o = ollama.Client().chat(model="llama3.2", messages=OLLAMA_MESSAGES)
print("ollama:", o.message.content)
brt = boto3.client("bedrock-runtime", config=__import__("botocore.config").config.Config(retries={"max_attempts": 1}))
c = brt.converse(modelId=BEDROCK_MODEL, messages=BEDROCK_MESSAGES, inferenceConfig=BEDROCK_CONFIG)
print("bedrock:", c["output"]["message"]["content"][0]["text"])
"""


def test_the_environment_reaches_the_gemini_ollama_and_bedrock_sdks_too(request, tmp_path, upstream):
    gemini = load_asset("gemini/generate-capital.json")
    chat_sky = load_asset("ollama/chat-sky.json")
    converse = load_asset("bedrock/converse.json")
    model = converse["request"]["path"].split("/")[2]
    script = tmp_path / "more_sdks.py"
    script.write_text(
        f"GEMINI_PROMPT = {gemini['request']['body']['contents'][0]['parts'][0]['text']!r}\n"
        f"OLLAMA_MESSAGES = {chat_sky['request']['body']['messages']!r}\n"
        f"BEDROCK_MODEL = {model!r}\n"
        f"BEDROCK_MESSAGES = {converse['request']['body']['messages']!r}\n"
        f"BEDROCK_CONFIG = {converse['request']['body']['inferenceConfig']!r}\n" + MORE_SDKS_BY_DEFAULT
    )
    before = upstream.snapshot()
    r = understudy_run(request, tmp_path, upstream, [sys.executable, str(script)], env=clean_env(),
                       extra=["--fail-on-miss"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"gemini: {gemini['response']['body']['candidates'][0]['content']['parts'][0]['text']}" in r.stdout
    assert f"ollama: {chat_sky['response']['body']['message']['content']}" in r.stdout, r.stdout
    assert f"bedrock: {converse['response']['body']['output']['message']['content'][0]['text']}" in r.stdout
    upstream.assert_untouched_since(before)
    s = r.summary
    assert s["counts"]["hits"] == 3 and s["counts"]["requests"] == 3 and s["consistent"], s
