"""DTMF and caller-feedback tone generation.

Levels are in dBm0 per tone, using the G.711 convention that a full-scale sine
is +3.14 dBm0 (so 0 dBm0 peaks at about 22,826 in 16-bit linear).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE_HZ = 8000
LOW_FREQS_HZ = (697.0, 770.0, 852.0, 941.0)
HIGH_FREQS_HZ = (1209.0, 1336.0, 1477.0, 1633.0)
KEYPAD = ("123A", "456B", "789C", "*0#D")
DIGITS = "0123456789*#ABCD"
"""The sixteen DTMF keys, in RFC 4733 event order (events 0-15)."""

DTMF_FREQS_HZ: dict[str, tuple[float, float]] = {
    key: (LOW_FREQS_HZ[row], HIGH_FREQS_HZ[col])
    for row, keys in enumerate(KEYPAD)
    for col, key in enumerate(keys)
}
DBM0_FULL_SCALE_SINE = 3.14


def dbm0_to_amplitude(level_dbm0: float) -> float:
    """Peak amplitude (16-bit linear) of a sine at the given level."""
    return 32767.0 * 10.0 ** ((level_dbm0 - DBM0_FULL_SCALE_SINE) / 20.0)


def amplitude_to_dbm0(peak: float) -> float:
    """Level in dBm0 of a sine with the given peak amplitude."""
    return 20.0 * np.log10(max(peak, 1e-9) / 32767.0) + DBM0_FULL_SCALE_SINE


def to_int16(signal: np.ndarray) -> np.ndarray:
    """Round and clip a float signal to int16 samples."""
    return np.clip(np.rint(signal), -32768, 32767).astype(np.int16)


def sine(freq_hz: float, n_samples: int, level_dbm0: float, phase_rad: float = 0.0,
         sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """A float sine of n_samples at the given level."""
    t = np.arange(n_samples) / sample_rate_hz
    return dbm0_to_amplitude(level_dbm0) * np.sin(2 * np.pi * freq_hz * t + phase_rad)


def dtmf_tone(
    digit: str,
    duration_ms: float,
    level_dbm0: float = -10.0,
    twist_db: float = 0.0,
    low_offset_pct: float = 0.0,
    high_offset_pct: float = 0.0,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    phase_rad: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """A float DTMF tone pair.

    `level_dbm0` is the low tone's level; the high tone is `twist_db` above it
    (negative twist_db: high tone weaker, the "normal" twist of a phone line).
    """
    low_hz, high_hz = DTMF_FREQS_HZ[digit.upper()]
    n = int(round(duration_ms * sample_rate_hz / 1000.0))
    low = sine(low_hz * (1 + low_offset_pct / 100), n, level_dbm0, phase_rad[0], sample_rate_hz)
    high = sine(high_hz * (1 + high_offset_pct / 100), n, level_dbm0 + twist_db,
                phase_rad[1], sample_rate_hz)
    return low + high


@dataclass(frozen=True)
class PlacedDigit:
    """A digit placed in a generated signal, with its sample span."""

    digit: str
    start_sample: int
    """First sample of the tone."""
    end_sample: int
    """One past the last sample of the tone."""


def dtmf_sequence(
    digits: str,
    tone_ms: float = 80.0,
    gap_ms: float = 80.0,
    level_dbm0: float = -10.0,
    twist_db: float = 0.0,
    lead_ms: float = 100.0,
    tail_ms: float = 100.0,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
) -> tuple[np.ndarray, list[PlacedDigit]]:
    """Float signal of several DTMF digits with silence around them, and where they are."""
    rate = sample_rate_hz / 1000.0
    parts = [np.zeros(int(round(lead_ms * rate)))]
    placed = []
    pos = len(parts[0])
    for i, d in enumerate(digits):
        tone = dtmf_tone(d, tone_ms, level_dbm0, twist_db, sample_rate_hz=sample_rate_hz)
        placed.append(PlacedDigit(d, pos, pos + len(tone)))
        parts.append(tone)
        pos += len(tone)
        gap = np.zeros(int(round((gap_ms if i < len(digits) - 1 else tail_ms) * rate)))
        parts.append(gap)
        pos += len(gap)
    return np.concatenate(parts), placed


def white_noise(n_samples: int, level_dbm0: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian white noise with the given RMS level in dBm0."""
    rms = dbm0_to_amplitude(level_dbm0) / np.sqrt(2.0)
    return rng.standard_normal(n_samples) * rms


# Caller feedback: single frequencies well away from both DTMF groups, so a
# feedback tone can never be read as a key, and identical whatever was keyed.
FEEDBACK_TONES: dict[str, tuple[tuple[float, float, float], ...]] = {
    # (freq_hz, on_ms, off_ms) segments
    "accepted": ((1800.0, 120.0, 60.0), (1800.0, 120.0, 0.0)),
    "error": ((440.0, 400.0, 0.0),),
    "reenter": ((440.0, 150.0, 80.0), (440.0, 150.0, 80.0), (440.0, 150.0, 0.0)),
    "complete": ((1800.0, 100.0, 40.0), (2000.0, 100.0, 40.0), (2200.0, 200.0, 0.0)),
}
FLAT_MASK_FREQ_HZ = 1060.0
"""Frequency of the flat masking tone: between the DTMF groups (12 % from the nearest
DTMF frequency), and clear of the fax (1100, 2100 Hz), test (1004 Hz) and call-progress
(350-620 Hz) tones that network equipment reacts to."""


def feedback_tone(kind: str, level_dbm0: float = -15.0,
                  sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Int16 samples of a caller feedback tone ('accepted', 'error', 'reenter', 'complete')."""
    rate = sample_rate_hz / 1000.0
    parts = []
    for freq, on_ms, off_ms in FEEDBACK_TONES[kind]:
        parts.append(sine(freq, int(on_ms * rate), level_dbm0, sample_rate_hz=sample_rate_hz))
        parts.append(np.zeros(int(off_ms * rate)))
    return to_int16(np.concatenate(parts))
