"""`tonewall demo`: its pieces without a gateway, then the whole story as a child process."""

from __future__ import annotations

import io
import os
import re
import shutil
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
    assert f"Kept: {story.work_dir}" in out.getvalue()  # kept for the log, since it failed
    shutil.rmtree(story.work_dir)


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


def _call_audio(mask: bool) -> tuple[Story, object, object]:
    """A caller who talks, keys the test card and talks again; the 'agent' hears it masked or not."""
    import datetime
    from types import SimpleNamespace

    import numpy as np

    from dtmf.g711 import ulaw_encode
    from gateway.demo.recording import Recording
    from gateway.demo.story import _test_card_keys
    from gateway.demo.voice import CallerVoice
    from gateway.media.rtp import RtpPacket

    voice = CallerVoice(np.random.default_rng(5))
    voice.talk(1.0)
    keys = _test_card_keys(datetime.date(2026, 1, 1))
    spans = voice.key(keys)
    voice.talk(1.0)
    sent, heard = Recording(), Recording()
    frames = []
    while not voice.idle:
        frames.append(voice.next_frame())
    tone_packets = sorted({i for s in spans for i in range(s.start_sample // 160, (s.end_sample - 1) // 160 + 1)})
    for i, frame in enumerate(frames):
        now = i * 0.02
        payload = ulaw_encode(frame).tobytes()
        sent.add(RtpPacket(payload=payload), now)
        if mask and i in tone_packets:
            payload = bytes([0xFF]) * 160
        heard.add(RtpPacket(payload=payload), now)
    story = Story(io.StringIO())
    story.caller, story.agent = SimpleNamespace(sent=sent), SimpleNamespace(received=heard)
    story.key_count, story.tone_packets = len(keys), tone_packets
    end_s = len(frames) * 0.02
    story.windows = {"before the capture": (0.1, 1.0), "keying": (1.0, end_s - 1.0),
                     "capture": (1.0, end_s - 0.5), "after the capture": (end_s - 0.9, end_s)}
    return story, sent, heard


@pytest.mark.parametrize("mask", [False, True])
def test_recording_checks_fail_when_tones_reach_the_agent(mask):
    story, _, _ = _call_audio(mask)
    story._check_recordings()
    result = {c.name: c for c in story.checks}
    no_dtmf = result["agent recording holds no DTMF"]
    assert no_dtmf.ok is mask, no_dtmf.detail
    assert "control: 26 of 26 keys" in no_dtmf.detail
    if not mask:
        assert "finds 26 key(s)" in no_dtmf.detail
    assert result["agent heard the caller outside the tones"].ok
    assert result["no RFC 4733 event reached the agent"].ok
    if result["multimon-ng agrees"].ok is not None:
        assert result["multimon-ng agrees"].ok is mask


def test_a_keyed_span_is_where_the_tone_sounds():
    """A packet holding only a tone's first sample (an exact 0.0 at phase 0) carries no tone: the demo's
    count of tone-bearing packets that reached the agent unchanged must not count it."""
    import datetime

    import numpy as np

    from gateway.demo.story import _test_card_keys
    from gateway.demo.voice import CallerVoice

    voice = CallerVoice(np.random.default_rng(3), noise_dbm0=-300.0)  # the noise rounds to 0
    voice.pause(0.1)
    spans = voice.key(_test_card_keys(datetime.date(2026, 1, 1)))
    samples = []
    while not voice.idle:
        samples.append(voice.next_frame())
    x = np.concatenate(samples)
    inside = np.zeros(len(x), dtype=bool)
    for span in spans:
        inside[span.start_sample:span.end_sample] = True
        assert x[span.start_sample] != 0 and x[span.end_sample - 1] != 0
    assert not x[~inside].any()
