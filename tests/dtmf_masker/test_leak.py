"""Leak proofs: hundreds of random digits, masked as in a capture, give nothing back.

Three calls of 120 digits (silence, white noise at -45 dBm0, speech-like talk at
-35 dBm0 under the tones), about 40 % of onsets in the last 5 ms of a packet,
levels 0..-25 dBm0, twist -8..+4 dB, 40-200 ms. Every mode, one Masker per call
and all three calls through one MaskerBank. A strawman masker (zero a packet once
its own analysis sees the tone, no look-ahead) is run through the same measures to
show that they bite.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from dtmf.detector import DigitDetected, DtmfDetector
from dtmf.g711 import ulaw_decode, ulaw_encode
from dtmf.masker import MaskMode
from dtmf.tones import DIGITS, dtmf_tone, white_noise
from tests.conftest import require_binary

from .calls import (
    Call,
    Tone,
    classifier_accuracy,
    flat_fill_reference,
    leaked_ms,
    make_call,
    mask_bank,
    mask_single,
    naive_mask,
    residual_db,
)

N_DIGITS_PER_CALL = 120
CHANCE = 1 / 16


@pytest.fixture(scope="module")
def calls() -> list[Call]:
    rng = np.random.default_rng(20240611)
    made = [make_call(rng, N_DIGITS_PER_CALL, bg) for bg in ("silence", "noise", "speech")]
    n = min(len(c.audio) for c in made)
    for c in made:  # equal lengths for the bank; keep only tones that fit
        c.audio = c.audio[:n]
        c.tones_only = c.tones_only[:n]
        c.tones = [t for t in c.tones if t.end + 200 < n]
    return made


@pytest.fixture(scope="module")
def masked(calls) -> dict[tuple[str, str], list[np.ndarray]]:
    out = {}
    for mode in MaskMode:
        out[(mode.value, "single")] = [mask_single(c.audio, mode) for c in calls]
        out[(mode.value, "bank")] = mask_bank([c.audio for c in calls], mode)
    return out


KEYS = [(m.value, form) for m in MaskMode for form in ("single", "bank")]


def _detected(audio: np.ndarray) -> list[str]:
    det = DtmfDetector()
    events = det.process(audio) + det.flush()
    return [e.digit for e in events if isinstance(e, DigitDetected)]


def _multimon(audio: np.ndarray) -> str:
    sox, multimon = require_binary("sox"), require_binary("multimon-ng")
    raw = subprocess.run(
        [sox, "-D", "-t", "raw", "-r", "8000", "-e", "signed-integer", "-b", "16", "-c", "1", "-",
         "-t", "raw", "-r", "22050", "-e", "signed-integer", "-b", "16", "-c", "1", "-"],
        input=audio.astype("<i2").tobytes(), capture_output=True, check=True, timeout=60).stdout
    text = subprocess.run([multimon, "-q", "-c", "-a", "DTMF", "-t", "raw", "-"], input=raw,
                          capture_output=True, check=True, timeout=60).stdout.decode()
    return "".join(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("DTMF:"))


def test_the_calls_hold_hundreds_of_digits_both_decoders_find(calls):
    assert sum(len(c.tones) for c in calls) >= 300
    assert sum(t.start % 160 >= 155 for c in calls for t in c.tones) >= 100
    for c in calls:
        assert len(_detected(c.audio)) >= 0.95 * len(c.tones)
        found = _multimon(c.audio)
        assert len(found) >= 0.6 * len(c.tones), (c.background, len(found))  # it misses some short tones


@pytest.mark.parametrize("key", KEYS, ids=lambda k: "-".join(k))
def test_no_decoder_recovers_a_digit(calls, masked, key):
    for out, c in zip(masked[key], calls):
        assert _detected(out) == [], c.background
        assert _multimon(out) == "", c.background


@pytest.mark.parametrize("key", KEYS, ids=lambda k: "-".join(k))
def test_no_millisecond_of_any_tone_leaks(calls, masked, key):
    ref = flat_fill_reference(len(calls[0].audio)) if key[0] == "flat" else None
    leaks = [leaked_ms(out, c, t, fill_ref=ref) for out, c in zip(masked[key], calls) for t in c.tones]
    assert max(leaks) == 0.0


@pytest.mark.parametrize("key", KEYS, ids=lambda k: "-".join(k))
def test_residual_at_the_dtmf_frequencies_is_40_db_below_each_tone(calls, masked, key):
    worst = max(residual_db(out, c, t) for out, c in zip(masked[key], calls) for t in c.tones)
    assert worst <= -40.0


@pytest.mark.parametrize("key", KEYS, ids=lambda k: "-".join(k))
def test_a_classifier_on_the_tone_windows_is_at_chance(calls, masked, key):
    accuracy = classifier_accuracy(masked[key], calls)
    assert accuracy < CHANCE + 0.07  # ~180 test tones: chance +- 0.018


def test_single_and_bank_give_the_same_audio(masked):
    for mode in MaskMode:
        for a, b in zip(masked[(mode.value, "single")], masked[(mode.value, "bank")]):
            assert np.array_equal(a, b)


def test_the_measures_catch_the_strawman(calls):
    """Zeroing detected packets without look-ahead: no decoder finds a digit, yet it leaks."""
    outs = [naive_mask(c.audio) for c in calls]
    assert all(_detected(out) == [] for out in outs)
    leaks = [leaked_ms(out, c, t) for out, c in zip(outs, calls) for t in c.tones]
    assert max(leaks) >= 5.0
    assert classifier_accuracy(outs, calls) > CHANCE + 0.1


def test_without_lookahead_late_onsets_leak_a_few_ms(calls):
    """Look-ahead is what stops the last-5-ms onsets (outside a capture it is off)."""
    outs = [mask_single(c.audio, MaskMode.SILENCE, lookahead=False) for c in calls]
    late = [leaked_ms(out, c, t) for out, c in zip(outs, calls) for t in c.tones if t.start % 160 >= 155]
    assert max(late) > 0.0


@pytest.mark.parametrize("noise_dbm0", [-35.0, -29.0])
def test_digits_at_minus_25_dbm0_in_loud_white_noise_leak_nothing(noise_dbm0):
    """Down to an SNR where the detector still takes some: every digit fully masked."""
    rng = np.random.default_rng(3)
    n = 30 * 8000
    tones_only = np.zeros(n)
    placed = []
    pos = 1000
    while pos < n - 3000:
        if rng.random() < 0.4:
            pos = pos // 160 * 160 + int(rng.integers(155, 160))
        digit, dur, twist = DIGITS[int(rng.integers(16))], int(rng.integers(320, 961)), float(rng.uniform(-8, 4))
        tone = dtmf_tone(digit, dur / 8, -25.0, twist, phase_rad=tuple(rng.uniform(0, 2 * np.pi, 2)))
        tones_only[pos:pos + len(tone)] += tone
        placed.append(Tone(digit, pos, pos + len(tone), -25.0, twist))
        pos += len(tone) + int(rng.integers(800, 2400))
    noisy = np.clip(np.rint(tones_only + white_noise(n, noise_dbm0, rng)), -32768, 32767).astype(np.int16)
    call = Call(ulaw_decode(ulaw_encode(noisy)), tones_only, placed, "noise")
    assert len(_detected(call.audio)) >= 0.3 * len(placed)
    out = mask_bank([call.audio], MaskMode.SILENCE)[0]
    assert max(leaked_ms(out, call, t) for t in placed) == 0.0
    assert _detected(out) == []
