"""Tone generation: the right frequencies at the right levels."""

from __future__ import annotations

import numpy as np
import pytest

from dtmf import tones


def _peak_freqs(signal: np.ndarray, rate: int = 8000) -> list[float]:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    freqs = np.fft.rfftfreq(len(signal), 1 / rate)
    top = np.argsort(spectrum)[::-1]
    found: list[float] = []
    for i in top:
        if all(abs(freqs[i] - f) > 40 for f in found):
            found.append(float(freqs[i]))
        if len(found) == 2:
            break
    return sorted(found)


@pytest.mark.parametrize("digit", list(tones.DIGITS))
def test_each_digit_has_its_two_frequencies(digit):
    x = tones.dtmf_tone(digit, 1000)
    low, high = _peak_freqs(x)
    assert low == pytest.approx(tones.DTMF_FREQS_HZ[digit][0], abs=2)
    assert high == pytest.approx(tones.DTMF_FREQS_HZ[digit][1], abs=2)


def test_level_and_twist():
    x = tones.dtmf_tone("5", 1000, level_dbm0=-10, twist_db=-6)
    low_hz, high_hz = tones.DTMF_FREQS_HZ["5"]
    t = np.arange(len(x)) / 8000
    amp = [2 * abs(np.dot(x, np.exp(-2j * np.pi * f * t))) / len(x) for f in (low_hz, high_hz)]
    assert tones.amplitude_to_dbm0(amp[0]) == pytest.approx(-10, abs=0.1)
    assert tones.amplitude_to_dbm0(amp[1]) == pytest.approx(-16, abs=0.1)


def test_zero_dbm0_is_g711_reference():
    assert tones.dbm0_to_amplitude(3.14) == pytest.approx(32767)
    assert tones.dbm0_to_amplitude(0) == pytest.approx(22826, abs=2)


def test_sequence_places_digits():
    signal, placed = tones.dtmf_sequence("159", tone_ms=50, gap_ms=50, lead_ms=10, tail_ms=20)
    assert [p.digit for p in placed] == list("159")
    assert placed[0].start_sample == 80 and placed[0].end_sample == 480
    assert placed[1].start_sample == 880
    assert len(signal) == placed[-1].end_sample + 160


@pytest.mark.parametrize("kind", sorted(tones.FEEDBACK_TONES))
def test_feedback_tones_avoid_dtmf_frequencies(kind):
    dtmf_freqs = set(tones.LOW_FREQS_HZ) | set(tones.HIGH_FREQS_HZ)
    for freq, _, _ in tones.FEEDBACK_TONES[kind]:
        assert all(abs(freq - f) / f > 0.05 for f in dtmf_freqs)
    assert tones.feedback_tone(kind).dtype == np.int16


def test_flat_mask_tone_is_far_from_dtmf():
    for f in tones.LOW_FREQS_HZ + tones.HIGH_FREQS_HZ:
        assert abs(tones.FLAT_MASK_FREQ_HZ - f) / f > 0.1
