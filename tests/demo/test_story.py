"""`tonewall demo`: its pieces without a gateway, then the whole story as a child process."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.demo.story import Display, ProgressPrinter, StepFailed, Story, _quantile, redact

ROOT = Path(__file__).resolve().parents[2]
TEST_PAN = "4" + "1" * 15
PAN_RUN = re.compile("|".join(re.escape(TEST_PAN[i:i + 7]) for i in range(len(TEST_PAN) - 6)))


def test_redact_hides_card_shaped_runs_only():
    assert redact(f"card {TEST_PAN} end") == "card [redacted] end"
    assert redact("port 5060, 1234567890123 (not Luhn)") == "port 5060, 1234567890123 (not Luhn)"


def test_progress_shows_dots_brand_and_last_four_never_digits():
    out = io.StringIO()
    printer = ProgressPrinter(Display(out))
    printer.handle("progress", {"type": "field_started", "field": "pan"})
    for n in range(1, 17):
        printer.handle("progress", {"type": "digit", "field": "pan", "count": n, "brand": "visa"})
    printer.handle("progress", {"type": "field_completed", "field": "pan", "valid": True, "brand": "visa",
                                "last4": "1111"})
    printer.handle("progress", {"type": "field_rejected", "field": "expiry", "reason": "expired",
                                "attempts_left": 2})
    text = out.getvalue()
    assert "." * 16 + "  Visa, valid, ends 1111\n" in text
    assert "rejected (expired), 2 attempts left" in text
    assert "\x1b[" not in text  # not a terminal: no colour codes


def test_quantile_reads_the_bucket_holding_p99():
    buckets = [(1e-4, 50.0), (5e-4, 99.0), (1e-3, 100.0), (float("inf"), 100.0)]
    assert _quantile(buckets, 0.99) == 5e-4
    assert _quantile([(float("inf"), 0.0)], 0.99) is None


async def test_a_failed_step_is_named_and_the_exit_status_is_1(monkeypatch):
    async def broken(self):
        raise StepFailed("gateway started", "tonewall run did not start")

    monkeypatch.setattr(Story, "_play", broken)
    out = io.StringIO()
    story = Story(out)
    assert await story.run() == 1
    assert "FAIL  gateway started: tonewall run did not start" in out.getvalue()
    assert "FAILED: gateway started" in out.getvalue()
    assert not story.work_dir.exists()


def _demo_command() -> list[str]:
    """`python -m gateway.cli demo` once the CLI hands `demo` to gateway.demo.main, else the module itself."""
    probe = subprocess.run([sys.executable, "-m", "gateway.cli", "demo", "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=30)
    if "--keep" in probe.stdout:
        return [sys.executable, "-m", "gateway.cli", "demo"]
    return [sys.executable, "-m", "gateway.demo"]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(200)
def test_the_whole_demo_passes_and_never_prints_the_card():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run(_demo_command() + ["--seed", "7"], cwd=ROOT, capture_output=True, text=True,
                          timeout=180, env=env, stdin=subprocess.DEVNULL)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert not PAN_RUN.search(out)
    assert "\x1b[" not in done.stdout
    for check in ("token arrived", "agent recording holds no DTMF", "no RFC 4733 event reached the agent",
                  "agent heard the caller outside the tones", "metrics"):
        assert f"PASS  {check}" in done.stdout
    assert re.search(r"state tokenized, brand visa, last four 1111, token \S+", done.stdout, re.IGNORECASE)
    assert re.search(r"Console: https://127\.0\.0\.1:\d+/", done.stdout)
