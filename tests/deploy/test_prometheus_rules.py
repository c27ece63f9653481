"""Alert rules parse and fire as intended (promtool from Debian's prometheus package)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import require_binary

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def test_alert_rules_pass_promtool_check():
    promtool = require_binary("promtool")
    out = subprocess.run([promtool, "check", "rules", str(DEPLOY / "tonewall-alerts.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_rules_unit_tests():
    promtool = require_binary("promtool")
    out = subprocess.run([promtool, "test", "rules", "tonewall-alerts.test.yml"], cwd=DEPLOY,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout
