"""What the caller keys and what the agent hears: keyed-card WAVs and two independent decoders.

A caller's keying is not a lab sequence: tones of 80-100 ms with gaps of 80-100 ms,
a little level and twist spread, and speech-like noise (bursts of shaped noise with
a syllable rhythm) before and after. The decoders are the project's own detector and
multimon-ng (tests/peers/multimon.py); a proof needs both to find nothing.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from dtmf.detector import DigitDetected, DtmfDetector
from dtmf.tones import dtmf_tone, white_noise
from tests.peers.audio import RATE_HZ, read_wav
from tests.peers.multimon import decode_dtmf


def future_expiry(today: datetime.date | None = None) -> str:
    """MMYY of a card that expires in two years (never in the past, whatever the date)."""
    today = today or datetime.date.today()
    return f"{today.month:02d}{(today.year + 2) % 100:02d}"


def speech_like(duration_ms: float, rng: np.random.Generator, level_dbm0: float = -22.0) -> np.ndarray:
    """Noise shaped and gated like talk: low-passed bursts with a ~4 Hz syllable rhythm."""
    n = int(duration_ms * RATE_HZ / 1000)
    noise = white_noise(n, level_dbm0, rng)
    # a crude vocal-tract low-pass (energy mostly below ~1 kHz)
    kernel = np.hanning(9)
    shaped = np.convolve(noise, kernel / kernel.sum() * 3.0, mode="same")
    t = np.arange(n) / RATE_HZ
    envelope = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, np.pi)), 0.0, None) ** 0.5
    return shaped * envelope


def keyed(keys: str, rng: np.random.Generator, *, lead_ms: float = 0.0, tail_ms: float = 300.0,
          talk_before_ms: float = 0.0, talk_after_ms: float = 0.0) -> np.ndarray:
    """Float samples of `keys` pressed by a person: 80-100 ms tones and gaps, varied level and twist."""
    parts = [np.zeros(int(lead_ms * RATE_HZ / 1000))]
    if talk_before_ms:
        parts += [speech_like(talk_before_ms, rng), np.zeros(int(0.3 * RATE_HZ))]
    for key in keys:
        tone = dtmf_tone(key, float(rng.uniform(80, 100)), level_dbm0=float(rng.uniform(-12, -7)),
                         twist_db=float(rng.uniform(-3, 1)))
        parts += [tone, np.zeros(int(rng.uniform(80, 100) * RATE_HZ / 1000))]
    if talk_after_ms:
        parts += [np.zeros(int(0.3 * RATE_HZ)), speech_like(talk_after_ms, rng)]
    parts.append(np.zeros(int(tail_ms * RATE_HZ / 1000)))
    return np.concatenate(parts)


def detector_digits(samples: np.ndarray) -> str:
    """Digits the project's detector finds in a whole signal."""
    detector = DtmfDetector()
    events = detector.process(samples.astype(np.int16)) + detector.flush()
    return "".join(e.digit for e in events if isinstance(e, DigitDetected))


def both_decoders(path: Path) -> tuple[str, str]:
    """(project detector, multimon-ng) digits in a WAV file."""
    return detector_digits(read_wav(path)), decode_dtmf(path)
