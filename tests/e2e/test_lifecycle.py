"""`understudy up` start-up and shutdown behaviour."""

from __future__ import annotations

import signal
import socket
import subprocess

import pytest

from conftest import UNDERSTUDY, stop_process


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_up_stops_cleanly_on_signal(understudy_factory, assets_dir, sig):
    u = understudy_factory(assets_dir, name=f"lifecycle-{sig.name}")
    admin_port = int(u.admin.rsplit(":", 1)[1])
    assert u.request("GET", "/v1/models").status == 200
    assert port_open(u.port) and port_open(admin_port)
    u.proc.send_signal(sig)
    try:
        rc = u.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        stop_process(u.proc)
        raise AssertionError(f"understudy up did not exit within 15s of {sig.name}")
    assert rc == 0, u.log_path.read_text(errors="replace")[-3000:]
    assert "Understudy stopped." in u.log_path.read_text(errors="replace")
    # Envoy went with it: nothing listens on its ports any more.
    assert not port_open(u.port), "Envoy's listener is still open after understudy exited"
    assert not port_open(admin_port), "Envoy's admin is still open after understudy exited"


def test_up_fails_loudly_on_a_bad_asset(tmp_path):
    (tmp_path / "broken.json").write_text('{"request": {"path": "/v1/chat/completions", "body": {}}, "respons": {}}')
    r = subprocess.run(
        [str(UNDERSTUDY), "up", "--assets", str(tmp_path), "--port", "0", "--admin-port", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode != 0
    assert "broken.json" in (r.stdout + r.stderr), r.stdout + r.stderr
