"""Contract 3: `tonewall demo` takes no input, uses loopback only, finishes in about a minute, exits 0."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from .gateway_run import tonewall_cmd

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(200)]

ABOUT_A_MINUTE_S = 120


def _loopback_only_prefix() -> list[str]:
    """Run in a fresh network namespace holding only `lo` (root), so any non-loopback use fails."""
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10) if shutil.which("unshare") \
        else None
    if probe is None or probe.returncode != 0 or not shutil.which("ip"):
        return []
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "tonewall-demo"]


def test_demo_end_to_end_on_loopback(tmp_path):
    cwd, tmp, home = tmp_path / "cwd", tmp_path / "tmp", tmp_path / "home"
    for d in (cwd, tmp, home):
        d.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp), HOME=str(home), PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run(_loopback_only_prefix() + tonewall_cmd() + ["demo"], cwd=cwd, env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=ABOUT_A_MINUTE_S)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "FAIL" not in r.stdout
    assert "tok_" in r.stdout  # the token is printed
    # Nothing left behind: the temporary data dir is removed, the cwd untouched.
    assert list(cwd.iterdir()) == [] and list(home.iterdir()) == [] and list(tmp.iterdir()) == []
