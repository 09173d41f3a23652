"""The README's promise: a user's own test suite (examples/python-openai), unchanged, passes against
`understudy up` on the example assets, and nothing reaches the upstream."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import EXAMPLE_ASSETS, ROOT

EXAMPLE_SUITE = ROOT / "examples" / "python-openai"


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
