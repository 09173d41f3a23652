"""The README's promise: a user's own test suite (examples/python-openai, and its Node twin
examples/node-openai), unchanged, passes against `understudy up` on the example assets, and nothing reaches
the upstream."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLE_ASSETS, ROOT

EXAMPLE_SUITE = ROOT / "examples" / "python-openai"
NODE_SUITE = ROOT / "examples" / "node-openai"


def test_example_user_suite_passes_against_understudy(understudy_factory, upstream):
    u = understudy_factory(EXAMPLE_ASSETS, name="example-suite")
    before = upstream.snapshot()
    env = {**os.environ, "OPENAI_BASE_URL": u.base_url, "OPENAI_API_KEY": "sk-virtual"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE_SUITE)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 passed" in out.stdout, out.stdout
    stats = u.stats()
    assert stats["hits"] == 3 and stats["misses"] == 0, stats
    upstream.assert_untouched_since(before)


@pytest.fixture(scope="module")
def node_suite() -> Path:
    """examples/node-openai with its locked dependencies installed (`npm ci`, skipped while the lockfile is
    unchanged since the last install)."""
    for tool in ("node", "npm"):
        assert shutil.which(tool), f"{tool} is not on PATH (Node 20 or newer is a prerequisite, see README)"
    lock = hashlib.sha256((NODE_SUITE / "package-lock.json").read_bytes()).hexdigest()
    stamp = NODE_SUITE / "node_modules" / ".understudy-lock-sha256"
    if not stamp.exists() or stamp.read_text() != lock:
        out = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_SUITE,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        stamp.write_text(lock)
    return NODE_SUITE


def test_node_example_user_suite_passes_against_understudy(node_suite, understudy_factory, upstream):
    u = understudy_factory(EXAMPLE_ASSETS, name="node-example-suite")
    before = upstream.snapshot()
    env = {**os.environ, "OPENAI_BASE_URL": u.base_url, "OPENAI_API_KEY": "sk-virtual"}
    out = subprocess.run(["node", "--test"], env=env, cwd=node_suite, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "# pass 3" in out.stdout and "# fail 0" in out.stdout, out.stdout
    stats = u.stats()
    assert stats["hits"] == 3 and stats["misses"] == 0, stats
    upstream.assert_untouched_since(before)
