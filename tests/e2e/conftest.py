"""End-to-end harness for Understudy: a fake upstream LLM, `understudy up` instances, raw HTTP helpers.

Everything runs against the real Envoy from `.venv/bin/envoy` (version pinned in `envoy/ENVOY_VERSION`) and
the release builds of the CLI and the wasm filter. Envoy/understudy output goes to a log file per instance
and is attached to the report of a failing test only.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import threading
import time
import urllib.request
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
E2E_DIR = Path(__file__).resolve().parent
ENVOY = ROOT / ".venv" / "bin" / "envoy"
UNDERSTUDY = ROOT / "target" / "release" / "understudy"
WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "understudy.wasm"
EXAMPLE_ASSETS = ROOT / "examples" / "assets"
E2E_ASSETS = E2E_DIR / "assets"

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
COUNTERS = ("requests", "hits", "synthesized", "misses", "bad_requests", "passthroughs", "misconfigured", "over_budget")
# Measurements some tests write (gitignored; a copy of a run is committed under bench/results/).
RESULTS_DIR = ROOT / "target" / "e2e-results"


def write_result(name: str, text: str) -> Path:
    """Writes a measurement report of this run to target/e2e-results/NAME."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------------
# Failure reporting: attach the logs of every Understudy/Envoy a failing test used.
# --------------------------------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    if not rep.failed:
        return
    logs: dict[str, str] = {}
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Understudy):
            logs.setdefault(str(value.log_path), value.name)
    for name, path in getattr(item, "_e2e_logs", []):
        logs.setdefault(str(path), name)
    for path, name in logs.items():
        rep.sections.append((f"understudy/envoy log: {name} ({path})", tail(Path(path))))


def tail(path: Path, max_bytes: int = 64 * 1024) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    if len(data) > max_bytes:
        data = b"...[truncated]...\n" + data[-max_bytes:]
    return data.decode("utf-8", "replace")


def register_log(request: pytest.FixtureRequest, name: str, path: Path) -> None:
    """Makes `path` part of the failure report of the requesting test."""
    node = request.node
    if not hasattr(node, "_e2e_logs"):
        node._e2e_logs = []
    node._e2e_logs.append((name, path))


# --------------------------------------------------------------------------------------------------
# Prerequisites
# --------------------------------------------------------------------------------------------------


def pinned_envoy_version() -> str:
    return (ROOT / "envoy" / "ENVOY_VERSION").read_text().strip()


@pytest.fixture(scope="session", autouse=True)
def envoy_version() -> str:
    for p in (ENVOY, UNDERSTUDY, WASM):
        assert p.exists(), f"{p} is missing: run `bash scripts/setup.sh`"
    want = pinned_envoy_version()
    out = subprocess.run([str(ENVOY), "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    m = re.search(r"/(\d+\.\d+\.\d+)/", out.stdout)
    assert m, f"cannot parse `envoy --version`: {out.stdout!r}"
    assert m.group(1) == want, f".venv/bin/envoy is {m.group(1)}, envoy/ENVOY_VERSION pins {want}"
    return want


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------
# Fake upstream LLM
# --------------------------------------------------------------------------------------------------

FAKE_CHAT = {
    "id": "chatcmpl-fake-upstream",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-fake",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "live answer from the fake upstream"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}
FAKE_MESSAGE = {
    "id": "msg_fake_upstream",
    "type": "message",
    "role": "assistant",
    "model": "claude-fake",
    "content": [{"type": "text", "text": "live answer from the fake upstream"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 1, "output_tokens": 1},
}
FAKE_MODELS = {"object": "list", "data": []}


@dataclass
class UpstreamRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    # False when the connection ended before the whole body arrived (headers-only leaks show up like this).
    complete: bool = True


class _Conn:
    """Reads from a client socket, counting every byte the moment it arrives."""

    def __init__(self, sock: socket.socket, upstream: "FakeUpstream"):
        self.sock = sock
        self.up = upstream
        self.buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.up._count(len(data))
        self.buf += data
        return True

    def read_until(self, sep: bytes) -> bytes | None:
        while sep not in self.buf:
            if not self._fill():
                return None
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_exact(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not self._fill():
                return None
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


class FakeUpstream:
    """A threaded raw-TCP HTTP/1.1 server playing the live LLM API. Counts connections and bytes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes_received = 0
        self.connections = 0
        self.requests: list[UpstreamRequest] = []
        self._socks: set[socket.socket] = set()
        upstream = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                upstream._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-upstream", daemon=True)
        self.thread.start()

    # -- counters -----------------------------------------------------------------------------------
    def _count(self, n: int) -> None:
        with self.lock:
            self.bytes_received += n

    def reset(self) -> None:
        with self.lock:
            self.bytes_received = 0
            self.connections = 0
            self.requests.clear()

    def snapshot(self) -> tuple[int, int, int]:
        with self.lock:
            return self.bytes_received, self.connections, len(self.requests)

    def assert_untouched_since(self, before: tuple[int, int, int], settle: float = 0.3) -> None:
        """Waits a moment (anything sent asynchronously would arrive by then), then compares."""
        time.sleep(settle)
        now = self.snapshot()
        assert now == before, (
            f"the upstream was contacted: (bytes, connections, requests) went from {before} to {now}; "
            f"requests: {[(r.method, r.path) for r in self.requests]}"
        )

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= n:
                    return
            time.sleep(0.02)

    # -- serving ------------------------------------------------------------------------------------
    def _serve(self, sock: socket.socket) -> None:
        with self.lock:
            self.connections += 1
            self._socks.add(sock)
        conn = _Conn(sock, self)
        try:
            while True:
                req = self._read_request(conn)
                if req is None:
                    return
                with self.lock:
                    self.requests.append(req)
                if not req.complete:
                    return
                self._respond(sock, req)
                if req.headers.get("connection", "").lower() == "close":
                    return
        except OSError:
            return
        finally:
            with self.lock:
                self._socks.discard(sock)

    def _respond(self, sock: socket.socket, req: UpstreamRequest) -> None:
        status, body = self._answer(req)
        head = (
            f"HTTP/1.1 {status} {'OK' if status == 200 else 'Not Found'}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            "x-fake-upstream: 1\r\n"
            "\r\n"
        ).encode()
        sock.sendall(head + body)

    @staticmethod
    def _read_request(conn: _Conn) -> UpstreamRequest | None:
        head = conn.read_until(b"\r\n\r\n")
        if head is None:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, path, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        body = b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            while True:
                size_line = conn.read_until(b"\r\n")
                if size_line is None:
                    return UpstreamRequest(method, path, headers, b"".join(parts) + conn.buf, complete=False)
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    # Trailers (if any) up to the empty line.
                    while True:
                        t = conn.read_until(b"\r\n")
                        if t is None or t == b"\r\n":
                            break
                    break
                chunk = conn.read_exact(size + 2)
                if chunk is None:
                    return UpstreamRequest(method, path, headers, b"".join(parts) + conn.buf, complete=False)
                parts.append(chunk[:-2])
            body = b"".join(parts)
        elif "content-length" in headers:
            got = conn.read_exact(int(headers["content-length"]))
            if got is None:
                return UpstreamRequest(method, path, headers, conn.buf, complete=False)
            body = got
        return UpstreamRequest(method, path, headers, body)

    @staticmethod
    def _answer(req: UpstreamRequest) -> tuple[int, bytes]:
        path = req.path.split("?")[0]
        if req.method == "GET" and path.endswith("/models"):
            return 200, json.dumps(FAKE_MODELS).encode()
        if path.endswith("/v1/messages"):
            return 200, json.dumps(FAKE_MESSAGE).encode()
        return 200, json.dumps(FAKE_CHAT).encode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _last_text(v) -> str:
    """The newest prompt text of a request body in any API's shape (what the live model would answer)."""
    found = ""
    if isinstance(v, dict):
        for k, x in v.items():
            if k in ("system", "instructions", "systemInstruction"):
                continue
            if k in ("content", "text", "prompt", "input") and isinstance(x, str):
                found = x
            else:
                found = _last_text(x) or found
    elif isinstance(v, list):
        for x in v:
            found = _last_text(x) or found
    return found


class LlmUpstream(FakeUpstream):
    """A fake live LLM API that answers each API's paths in its own shape, derived from the question (so
    different requests get different answers), streams when asked (SSE, chunked, `stream_gap` seconds between
    events), and sends the response headers the live APIs send, credentials included (`SECRET_ORG`)."""

    SECRET_ORG = "org-LIVEUPSTREAMSECRET0001"

    def __init__(self) -> None:
        self.stream_gap = 0.0
        self.status = 200
        # Stop a stream halfway and close the connection (a live API dropping mid-answer).
        self.cut_streams = False
        super().__init__()

    def answer_text(self, body: dict) -> str:
        return f"Live answer to: {_last_text(body)}"

    def _respond(self, sock: socket.socket, req: UpstreamRequest) -> None:
        path = req.path.split("?")[0]
        try:
            body = json.loads(req.body or b"{}")
        except ValueError:
            body = {}
        text = self.answer_text(body)
        headers = {
            "content-type": "application/json",
            "x-fake-upstream": "1",
            "x-request-id": "req_live_0001",
            "openai-organization": self.SECRET_ORG,
            "set-cookie": "__cf_bm=LIVECOOKIESECRET; path=/; HttpOnly",
            "x-ratelimit-remaining-requests": "4999",
        }
        events: list[bytes] | None = None
        if self.status != 200:
            payload = {"error": {"message": "The server had an error", "type": "server_error"}}
            return self._send(sock, self.status, headers, json.dumps(payload).encode())
        if path.endswith("/embeddings"):
            inputs = body.get("input", "")
            inputs = inputs if isinstance(inputs, list) else [inputs]
            data = [{"object": "embedding", "index": i, "embedding": [round(0.001 * len(str(x)) + 0.01 * i, 6), 0.5, -0.25]}
                    for i, x in enumerate(inputs)]
            payload = {"object": "list", "data": data, "model": body.get("model"), "usage": {"prompt_tokens": 3, "total_tokens": 3}}
        elif path.endswith("/responses"):
            payload = {"id": "resp_live1", "object": "response", "created_at": 1700000000, "status": "completed",
                       "model": body.get("model"), "output": [{"type": "message", "id": "msg_live1", "status": "completed",
                       "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}],
                       "usage": {"input_tokens": 5, "output_tokens": 6, "total_tokens": 11}}
        elif path.endswith("/v1/messages"):
            payload = dict(FAKE_MESSAGE, model=body.get("model"), content=[{"type": "text", "text": text}])
            if body.get("stream"):
                events = _anthropic_events(payload)
        elif ":generatecontent" in path.lower() or ":streamgeneratecontent" in path.lower():
            payload = {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}],
                       "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 6, "totalTokenCount": 10},
                       "modelVersion": "gemini-2.5-flash", "responseId": "live-resp-1"}
            if ":streamgeneratecontent" in path.lower():
                words = text.split(" ")
                events = []
                for i, w in enumerate(words):
                    chunk = {"candidates": [{"content": {"role": "model", "parts": [{"text": w if i == 0 else " " + w}]}, "index": 0}],
                             "modelVersion": "gemini-2.5-flash", "responseId": "live-resp-1"}
                    if i == len(words) - 1:
                        chunk["candidates"][0]["finishReason"] = "STOP"
                        chunk["usageMetadata"] = payload["usageMetadata"]
                    events.append(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n")
        else:
            payload = dict(FAKE_CHAT, model=body.get("model"),
                           choices=[{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}])
            if body.get("stream"):
                events = _chat_events(payload)
        if events is None:
            return self._send(sock, 200, headers, json.dumps(payload).encode())
        headers["content-type"] = "text/event-stream; charset=utf-8"
        head = "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall((head + "transfer-encoding: chunked\r\n\r\n").encode())
        for i, ev in enumerate(events):
            if i and self.stream_gap:
                time.sleep(self.stream_gap)
            if self.cut_streams and i == len(events) // 2:
                sock.shutdown(socket.SHUT_RDWR)
                raise OSError("stream cut on purpose")
            sock.sendall(f"{len(ev):x}\r\n".encode() + ev + b"\r\n")
        sock.sendall(b"0\r\n\r\n")

    @staticmethod
    def _send(sock: socket.socket, status: int, headers: dict[str, str], body: bytes) -> None:
        head = f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + f"content-length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body)


def _chat_events(payload: dict) -> list[bytes]:
    base = {k: payload[k] for k in ("id", "created", "model")}
    words = payload["choices"][0]["message"]["content"].split(" ")
    chunks = [dict(base, object="chat.completion.chunk", choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
    for i, w in enumerate(words):
        chunks.append(dict(base, object="chat.completion.chunk", choices=[{"index": 0, "delta": {"content": w if i == 0 else " " + w}, "finish_reason": None}]))
    chunks.append(dict(base, object="chat.completion.chunk", choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    return [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]


def _anthropic_events(msg: dict) -> list[bytes]:
    def ev(name: str, data: dict) -> bytes:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

    start = dict(msg, content=[], stop_reason=None, usage={"input_tokens": 1, "output_tokens": 0})
    out = [ev("message_start", {"type": "message_start", "message": start}),
           ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})]
    for i, w in enumerate(msg["content"][0]["text"].split(" ")):
        out.append(ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w if i == 0 else " " + w}}))
    out += [ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 5}}),
            ev("message_stop", {"type": "message_stop"})]
    return out


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream()
    yield up
    up.close()


@pytest.fixture(autouse=True)
def _fresh_upstream_counters(request: pytest.FixtureRequest) -> None:
    """Each test starts with zeroed upstream counters (without restarting anything)."""
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").reset()


# --------------------------------------------------------------------------------------------------
# HTTP helpers
# --------------------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    # False when the connection ended before the whole body arrived (headers-only leaks show up like this).
    complete: bool = True

    def json(self):
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | str | dict | list | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Response:
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    hdrs = {"content-type": "application/json"} if body is not None else {}
    hdrs.update(headers or {})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    finally:
        conn.close()


def admin_get(admin: str, path: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(f"http://{admin}{path}", timeout=timeout) as r:
        return r.read().decode()


def parse_stats(text: str) -> dict[str, int]:
    """`wasmcustom.understudy.hits: 3` lines → {"hits": 3, ...}."""
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r"(?:wasmcustom\.)?understudy\.(\w+): (\d+)", line.strip())
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def parse_prometheus(text: str) -> dict[str, int]:
    """`understudy_hits{} 3` lines → {"hits": 3, ...}."""
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r"understudy_(\w+)(?:\{[^}]*\})? (\d+)", line.strip())
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


# --------------------------------------------------------------------------------------------------
# `understudy up`
# --------------------------------------------------------------------------------------------------

_URL_RE = re.compile(r"OpenAI base URL:\s+(http://127\.0\.0\.1:(\d+)/v1)")
_STATS_RE = re.compile(r"Stats:\s+http://([\d.]+:\d+)/stats")


@dataclass
class Understudy:
    name: str
    proc: subprocess.Popen
    log_path: Path
    port: int
    admin: str
    args: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (`.../v1`)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        """The Anthropic base URL (no `/v1`)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin}"

    def request(self, method: str, path: str, body=None, headers=None, timeout: float = 30.0) -> Response:
        assert self.proc.poll() is None, f"understudy {self.name} exited ({self.proc.returncode})"
        return http_request(self.port, method, path, body, headers, timeout)

    def post(self, path: str, body=None, headers=None, timeout: float = 30.0) -> Response:
        return self.request("POST", path, body, headers, timeout)

    def stats(self) -> dict[str, int]:
        s = parse_stats(admin_get(self.admin, "/stats?filter=understudy"))
        missing = [c for c in COUNTERS if c not in s]
        assert not missing, f"counters missing from /stats: {missing} (got {s})"
        return {c: s[c] for c in COUNTERS}

    def prometheus(self) -> dict[str, int]:
        s = parse_prometheus(admin_get(self.admin, "/stats/prometheus"))
        missing = [c for c in COUNTERS if c not in s]
        assert not missing, f"counters missing from /stats/prometheus: {missing} (got {s})"
        return {c: s[c] for c in COUNTERS}

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, wait, then SIGKILL the process group we created (understudy + its Envoy)."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    # Envoy is understudy's child in the same (new) process group; make sure nothing of ours lingers.
    try:
        os.killpg(proc.pid, 0)
    except (ProcessLookupError, PermissionError):
        return
    time.sleep(0.5)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_understudy(
    name: str,
    assets: Path | None,
    log_dir: Path,
    *,
    upstream: str | None,
    on_miss: str = "error",
    extra: list[str] | None = None,
    timeout: float = READY_TIMEOUT,
    workers: int = 1,
    log_level: str = "info",
) -> Understudy:
    args = [
        str(UNDERSTUDY), "up",
        # No --assets: the remote store or the module's embedded bundle only.
        *(["--assets", str(assets)] if assets is not None else []),
        "--port", "0",
        "--admin-port", "0",
        "--workers", str(workers),
        "--on-miss", on_miss,
        "--log-level", log_level,
    ]
    if upstream:
        args += ["--upstream", upstream]
    args += extra or []
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=str(log_dir),
        start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + timeout
    try:
        while True:
            text = log_path.read_text(errors="replace")
            url, stats = _URL_RE.search(text), _STATS_RE.search(text)
            if url and stats:
                return Understudy(name, proc, log_path, int(url.group(2)), stats.group(1), args)
            if proc.poll() is not None:
                raise AssertionError(
                    f"understudy up ({name}) exited with {proc.returncode} before it was ready:\n{tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"understudy up ({name}) not ready within {timeout}s:\n{tail(log_path)}")
            time.sleep(0.05)
    except BaseException:
        stop_process(proc)
        raise


@pytest.fixture(scope="session")
def assets_dir(tmp_path_factory) -> Path:
    """examples/assets plus tests/e2e/assets, in one directory (`up` takes one)."""
    d = tmp_path_factory.mktemp("assets")
    shutil.copytree(EXAMPLE_ASSETS, d / "examples")
    shutil.copytree(E2E_ASSETS, d / "e2e")
    return d


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


class UnderstudyFactory:
    def __init__(self, log_dir: Path, default_upstream: str, on_start: Callable[[Understudy], None]):
        self.log_dir = log_dir
        self.default_upstream = default_upstream
        self.on_start = on_start
        self.started: list[Understudy] = []
        self._n = 0

    def __call__(
        self,
        assets: Path | None,
        *,
        on_miss: str = "error",
        upstream: str | None = "default",
        extra: list[str] | None = None,
        name: str | None = None,
    ) -> Understudy:
        self._n += 1
        name = name or f"understudy-{on_miss}-{self._n}"
        up = self.default_upstream if upstream == "default" else upstream
        u = start_understudy(name, assets, self.log_dir, upstream=up, on_miss=on_miss, extra=extra)
        self.started.append(u)
        self.on_start(u)
        return u

    def stop_all(self) -> None:
        while self.started:
            self.started.pop().stop()


def _unique_log_dir(base: Path, label: str) -> Path:
    d = base / re.sub(r"[^\w.-]+", "_", label)[:80]
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def understudy_factory(request, upstream, log_dir) -> Iterator[UnderstudyFactory]:
    """Starts `understudy up` instances for one test; all are stopped when it ends.

    Their logs are attached to the test's report if it fails."""
    f = UnderstudyFactory(
        _unique_log_dir(log_dir, request.node.name),
        upstream.url,
        lambda u: register_log(request, u.name, u.log_path),
    )
    yield f
    f.stop_all()


@pytest.fixture(scope="session")
def strict(upstream, assets_dir, log_dir) -> Iterator[Understudy]:
    """One shared on_miss=error instance over all assets, forwarding (non-LLM calls only) to the fake upstream."""
    u = start_understudy("strict", assets_dir, log_dir, upstream=upstream.url, on_miss="error")
    yield u
    u.stop()


@pytest.fixture(scope="session")
def passthrough(upstream, assets_dir, log_dir) -> Iterator[Understudy]:
    """One shared on_miss=passthrough instance over all assets, forwarding to the fake upstream."""
    u = start_understudy("passthrough", assets_dir, log_dir, upstream=upstream.url, on_miss="passthrough")
    yield u
    u.stop()


# --------------------------------------------------------------------------------------------------
# Assets
# --------------------------------------------------------------------------------------------------


def print_config(out: Path, assets: Path, *extra: str, port: int = 10000, admin_port: int = 9901) -> dict:
    """The bootstrap `understudy up --print-config` writes for `assets` (and `extra` flags), parsed."""
    cmd = [str(UNDERSTUDY), "up", "--assets", str(assets), "--port", str(port), "--admin-port", str(admin_port),
           "--print-config", str(out), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=str(out.parent))
    assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
    return json.loads(out.read_text())


def load_asset(rel: str, index: int = 0) -> dict:
    """An asset from examples/assets or tests/e2e/assets by relative path (`openai/chat-capital.json`)."""
    for base in (EXAMPLE_ASSETS, E2E_ASSETS):
        p = base / rel
        if p.exists():
            v = json.loads(p.read_text(encoding="utf-8"))
            return v[index] if isinstance(v, list) else v
    raise FileNotFoundError(rel)


PRICES = ROOT / "matcher" / "src" / "cost" / "prices.json"


def builtin_rate(pattern: str) -> dict:
    """A built-in price table entry (USD per 1M tokens as exact Decimals; `cached_input` defaults to `input`)."""
    from decimal import Decimal

    entry = json.loads(PRICES.read_text(), parse_float=Decimal)["prices"][pattern]
    out = {"input": Decimal(entry["input"]), "output": Decimal(entry.get("output", 0))}
    out["cached_input"] = Decimal(entry.get("cached_input", entry["input"]))
    return out


def asset_keys(path: Path) -> list[str]:
    """Keys of an asset file's requests, as `understudy key` computes them."""
    out = subprocess.run([str(UNDERSTUDY), "key", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def asset_key(rel: str, index: int = 0) -> str:
    for base in (EXAMPLE_ASSETS, E2E_ASSETS):
        p = base / rel
        if p.exists():
            return asset_keys(p)[index]
    raise FileNotFoundError(rel)


# --------------------------------------------------------------------------------------------------
# Served bodies
# --------------------------------------------------------------------------------------------------

FRESH_FIELDS = ("id", "created", "created_at")


def id_prefix(i: str) -> str:
    """`chatcmpl-`, `msg_01`, `resp_`: the part of an id that stays when Understudy refreshes it."""
    m = re.match(r"^[A-Za-z]*[-_](01)?", i)
    return m.group(0) if m else ""


def assert_served_body(served: dict, recorded: dict) -> None:
    """A hit serves the recorded body, except that the top-level id is fresh (same format) and
    created/created_at is now, as live APIs do (assets opt out with "refresh": false)."""
    assert {k: v for k, v in served.items() if k not in FRESH_FIELDS} == {
        k: v for k, v in recorded.items() if k not in FRESH_FIELDS
    }
    if isinstance(recorded.get("id"), str):
        old, new = recorded["id"], served["id"]
        assert new != old, "id was not refreshed"
        # Same prefix and length; very short recorded ids grow to 8 random characters.
        # The kept prefix comes from the old id: a fresh random part may itself start with "01".
        p = id_prefix(old)
        # startswith, not id_prefix(new) == p: a fresh id may itself begin with "01" after its prefix.
        assert new.startswith(p) and len(new) == max(len(old), len(p) + 8), (old, new)
    for f in ("created", "created_at"):
        if isinstance(recorded.get(f), int):
            assert abs(served[f] - time.time()) < 120, (f, served[f])


# --------------------------------------------------------------------------------------------------
# A real OCI registry on loopback (Debian's docker-registry; scripts/install-deploy-tools.sh installs it)
# --------------------------------------------------------------------------------------------------


@dataclass
class LocalRegistry:
    host: str  # 127.0.0.1:PORT
    proc: subprocess.Popen
    log_path: Path

    def url(self, path: str) -> str:
        return f"http://{self.host}{path}"

    def get(self, path: str, accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url(path), headers={"accept": accept} if accept else {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def _registry_binary() -> str:
    path = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    assert os.path.exists(path), "docker-registry is missing: run `bash scripts/install-deploy-tools.sh`"
    return path


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> Iterator[LocalRegistry]:
    """A docker-registry (distribution 2.x) on a random loopback port with filesystem storage."""
    d = tmp_path_factory.mktemp("registry")
    port = free_port()
    (d / "config.yml").write_text(
        "version: 0.1\nlog: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {d / 'data'}}}, delete: {{enabled: true}}}}\n"
        f'http: {{addr: "127.0.0.1:{port}"}}\n'
    )
    log_path = d / "registry.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([_registry_binary(), "serve", str(d / "config.yml")], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    reg = LocalRegistry(f"127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + 30
    while True:
        try:
            if reg.get("/v2/")[0] == 200:
                break
        except OSError:
            pass
        assert proc.poll() is None, f"docker-registry exited:\n{tail(log_path)}"
        assert time.monotonic() < deadline, f"docker-registry not ready:\n{tail(log_path)}"
        time.sleep(0.1)
    yield reg
    stop_process(proc)
