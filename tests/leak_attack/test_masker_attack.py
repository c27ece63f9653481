"""Attacks on dtmf.masker.MaskerBank in capture (silence mode, mu-law round trip): no gateway needed.

Each case keys all 16 keys once, 150 ms apart, and attacks the masked audio with the
amplifying decoders and the two-Goertzel pair guess (tests/leak_attack/attack.py).
Cases the receiver takes must leave nothing; cases it refuses must still leave no
key a decoder or a guess can name.
"""

from __future__ import annotations

import numpy as np
import pytest

from dtmf.tones import DIGITS, dtmf_tone

from .attack import (
    CHANCE,
    amplify,
    detector_digits,
    g711_round_trip,
    guess_accuracy,
    mask_in_capture,
    multimon_digits,
)

GAP = 1200
"""150 ms between keys: every key is decided on its own."""


def _keyed(parts: list[np.ndarray], codec: str = "PCMU", align: int | None = None
           ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int, int]]]:
    """(caller audio, masked audio, spans) for one part per key in DIGITS order."""
    pos, spans = 800, []
    for key, part in zip(DIGITS, parts):
        if align is not None:
            pos = pos // 160 * 160 + align
        spans.append((key, pos, pos + len(part)))
        pos += len(part) + GAP
    signal = np.zeros(pos + 1600)
    for (_, start, end), part in zip(spans, parts):
        signal[start:end] += part
    audio = g711_round_trip(signal, codec)
    return audio, mask_in_capture(audio), spans


def _phases(rng: np.random.Generator) -> tuple[float, float]:
    return tuple(rng.uniform(0, 2 * np.pi, 2))


def _gated(tone: np.ndarray, on_ms: float, off_ms: float) -> np.ndarray:
    t_ms = np.arange(len(tone)) / 8.0
    return tone * ((t_ms % (on_ms + off_ms)) < on_ms)


@pytest.mark.parametrize("level_dbm0", [-30.0, -35.0, -40.0, -45.0, -48.0])
def test_weak_keys_down_to_minus_48_dbm0_are_removed(level_dbm0):
    rng = np.random.default_rng(1)
    audio, out, spans = _keyed([dtmf_tone(k, 80, level_dbm0, phase_rad=_phases(rng)) for k in DIGITS])
    assert len(detector_digits(amplify(audio, 40.0, None))) == 16  # positive control
    loud = amplify(out, 40.0, None)
    assert detector_digits(loud) == "" and multimon_digits(loud) == ""
    assert guess_accuracy(out, spans) == 0.0


@pytest.mark.parametrize("level_dbm0", [-50.0, -60.0, -66.0, -70.0])
def test_weak_keys_under_the_masker_floor_are_removed(level_dbm0):
    rng = np.random.default_rng(2)
    _, out, spans = _keyed([dtmf_tone(k, 80, level_dbm0, phase_rad=_phases(rng)) for k in DIGITS])
    loud = amplify(out, 40.0, None)
    assert detector_digits(loud) == "" and multimon_digits(loud) == ""
    assert guess_accuracy(out, spans) <= CHANCE


@pytest.mark.parametrize("twist_db", [-12.0, -10.0, 10.0, 12.0])
def test_extreme_twist_within_12_db_is_removed(twist_db):
    rng = np.random.default_rng(3)
    low = -8.0 if twist_db < 0 else -8.0 - twist_db
    _, out, spans = _keyed([dtmf_tone(k, 80, low, twist_db, phase_rad=_phases(rng)) for k in DIGITS])
    assert guess_accuracy(out, spans) == 0.0


@pytest.mark.parametrize("twist_db", [-18.0, 18.0])
def test_twist_beyond_14_db_is_removed(twist_db):
    rng = np.random.default_rng(4)
    low = -8.0 if twist_db < 0 else -8.0 - twist_db
    _, out, spans = _keyed([dtmf_tone(k, 80, low, twist_db, phase_rad=_phases(rng)) for k in DIGITS])
    assert guess_accuracy(out, spans) <= CHANCE


@pytest.mark.parametrize("offset_pct", [-5.0, -3.5, -2.0, 2.0, 3.5, 5.0])
def test_keys_off_frequency_up_to_5_percent_are_removed(offset_pct):
    rng = np.random.default_rng(5)
    _, out, spans = _keyed([dtmf_tone(k, 80, -10.0, 0.0, offset_pct, -offset_pct, phase_rad=_phases(rng))
                            for k in DIGITS])
    assert guess_accuracy(out, spans) == 0.0


@pytest.mark.parametrize("align", [0, 155, 159])
@pytest.mark.parametrize("duration_ms", [14, 20, 30, 40])
def test_short_keys_from_14_ms_at_packet_edges_are_removed(duration_ms, align):
    rng = np.random.default_rng(6)
    _, out, spans = _keyed([dtmf_tone(k, duration_ms, -10.0, phase_rad=_phases(rng)) for k in DIGITS],
                           align=align)
    assert guess_accuracy(out, spans) == 0.0


@pytest.mark.parametrize("align", [0, 20, 77, 155])
def test_10_ms_bursts_are_removed(align):
    rng = np.random.default_rng(7)
    _, out, spans = _keyed([dtmf_tone(k, 10, -10.0, phase_rad=_phases(rng)) for k in DIGITS], align=align)
    assert guess_accuracy(out, spans) <= CHANCE


@pytest.mark.parametrize("on_ms,off_ms", [(10, 1), (10, 2), (15, 5), (20, 5)])
def test_tones_with_short_drop_outs_are_removed(on_ms, off_ms):
    rng = np.random.default_rng(8)
    parts = [_gated(dtmf_tone(k, 160, -10.0, phase_rad=_phases(rng)), on_ms, off_ms) for k in DIGITS]
    _, out, spans = _keyed(parts)
    assert detector_digits(out) == "" and multimon_digits(amplify(out, 20.0, None)) == ""


def test_tones_broken_into_10_ms_pieces_are_removed():
    rng = np.random.default_rng(9)
    parts = [_gated(dtmf_tone(k, 160, -10.0, phase_rad=_phases(rng)), 10, 5) for k in DIGITS]
    _, out, _ = _keyed(parts)
    assert multimon_digits(out) == ""


@pytest.mark.parametrize("on_ms,off_ms", [(10, 5), (5, 5), (9, 6), (10, 10)])
@pytest.mark.parametrize("align", [5, 20, 37])
def test_tones_broken_into_pieces_at_any_alignment_are_removed(on_ms, off_ms, align):
    """Regression: pieces that straddle the 5 ms blocks leave blocks holding a few samples of tone."""
    rng = np.random.default_rng(13)
    parts = [_gated(dtmf_tone(k, 160, -10.0, phase_rad=_phases(rng)), on_ms, off_ms) for k in DIGITS]
    _, out, spans = _keyed(parts, align=align)
    assert multimon_digits(out) == "" and multimon_digits(amplify(out, 20.0, None)) == ""
    assert detector_digits(amplify(out, 20.0, None)) == ""
    assert guess_accuracy(out, spans) <= CHANCE


def test_a_bounce_before_an_accepted_key_is_removed():
    rng = np.random.default_rng(10)
    parts = []
    for k in DIGITS:
        tone = dtmf_tone(k, 100, -10.0, phase_rad=_phases(rng))
        tone[80:160] = 0.0  # 10 ms burst, 10 ms gap, then 80 ms of key
        parts.append(tone)
    audio, out, spans = _keyed(parts)
    assert len(detector_digits(audio)) == 16  # the receiver takes every key: these are card digits
    assert guess_accuracy(out, spans) <= CHANCE


def test_a_bounce_after_an_accepted_key_is_removed():
    rng = np.random.default_rng(11)
    parts = []
    for k in DIGITS:
        tone = dtmf_tone(k, 100, -10.0, phase_rad=_phases(rng))
        tone[640:720] = 0.0  # 80 ms of key, 10 ms gap, 10 ms burst
        parts.append(tone)
    audio, out, spans = _keyed(parts)
    assert len(detector_digits(audio)) == 16
    assert guess_accuracy(out, spans) <= CHANCE


@pytest.mark.parametrize("gap_ms", [5, 20, 30])
@pytest.mark.parametrize("before", [True, False])
def test_a_bounce_5_to_30_ms_from_an_accepted_key_is_removed(gap_ms, before):
    """Regression: a 10 ms fragment a few blocks from the key confirms on its own."""
    rng = np.random.default_rng(14)
    parts = []
    for k in DIGITS:
        key, burst = dtmf_tone(k, 80, -10.0, phase_rad=_phases(rng)), dtmf_tone(k, 10, -10.0, phase_rad=_phases(rng))
        gap = np.zeros(gap_ms * 8)
        parts.append(np.concatenate([burst, gap, key] if before else [key, gap, burst]))
    audio, out, spans = _keyed(parts)
    assert len(detector_digits(audio)) == 16
    assert guess_accuracy(out, spans) <= CHANCE
    fragments = [(k, s, s + 80) if before else (k, e - 80, e) for k, s, e in spans]
    assert guess_accuracy(out, fragments) <= CHANCE


def test_pcma_keys_at_packet_edges_are_removed():
    rng = np.random.default_rng(12)
    _, out, spans = _keyed([dtmf_tone(k, 40, float(rng.uniform(-25, 0)), float(rng.uniform(-8, 4)),
                                      phase_rad=_phases(rng)) for k in DIGITS], codec="PCMA", align=157)
    assert guess_accuracy(out, spans) == 0.0
    assert multimon_digits(amplify(out, 30.0, None)) == ""
