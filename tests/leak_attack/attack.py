"""The agent-side attacker: what a curious agent (or its call recorder) can do with the audio it gets.

Masking is judged by what can be turned back into a key, not by what a stock decoder
reports. The attacker here amplifies (+20..+40 dB, clipped, after notching out the
flat mask tone it knows), runs two independent decoders (the project's detector and
multimon-ng), guesses the key of a stretch from its strongest low and high DTMF
frequency (two Goertzel filters), and trains a nearest-centroid classifier on tone
windows (chance 1/16).
"""

from __future__ import annotations

import subprocess

import numpy as np

from dtmf.detector import DigitDetected, DtmfDetector
from dtmf.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from dtmf.masker import PACKET_SAMPLES, MaskerBank, MaskMode
from dtmf.tones import DIGITS, FLAT_MASK_FREQ_HZ, HIGH_FREQS_HZ, KEYPAD, LOW_FREQS_HZ
from tests.conftest import require_binary

RATE_HZ = 8000
ALL_FREQS_HZ = np.array(LOW_FREQS_HZ + HIGH_FREQS_HZ)
CHANCE = 1 / 16


def g711_round_trip(signal: np.ndarray, codec: str = "PCMU") -> np.ndarray:
    """Float samples as the gateway receives them: clipped, G.711-encoded and decoded."""
    x = np.clip(np.rint(signal), -32768, 32767).astype(np.int16)
    return ulaw_decode(ulaw_encode(x)) if codec == "PCMU" else alaw_decode(alaw_encode(x))


def mask_in_capture(audio: np.ndarray, mode: MaskMode = MaskMode.SILENCE) -> np.ndarray:
    """The caller's audio as the agent gets it during a capture: one MaskerBank slot, time-aligned."""
    n = len(audio)
    padded = np.concatenate([audio, np.zeros(-n % PACKET_SAMPLES, dtype=np.int16)])
    bank = MaskerBank(mode, capacity=1)
    slot = bank.add_stream()
    bank.set_capture(slot, True)
    rows = [bank.process(np.array([slot]), padded[None, i:i + PACKET_SAMPLES])[0][0]
            for i in range(0, len(padded), PACKET_SAMPLES)]
    rows.append(bank.flush(slot)[0])
    return np.concatenate(rows)[PACKET_SAMPLES:PACKET_SAMPLES + n]


def amplify(audio: np.ndarray, gain_db: float, notch_hz: float | None = FLAT_MASK_FREQ_HZ) -> np.ndarray:
    """The attacker's gain stage: notch the known flat-mask tone (+-30 Hz), amplify, clip to int16."""
    x = np.asarray(audio, dtype=np.float64)
    if notch_hz is not None and len(x):
        spec = np.fft.rfft(x)
        spec[np.abs(np.fft.rfftfreq(len(x), 1 / RATE_HZ) - notch_hz) <= 30.0] = 0.0
        x = np.fft.irfft(spec, len(x))
    return np.clip(np.rint(x * 10 ** (gain_db / 20)), -32768, 32767).astype(np.int16)


def detector_digits(audio: np.ndarray) -> str:
    """Keys the project's own receiver finds."""
    det = DtmfDetector()
    events = det.process(np.asarray(audio, dtype=np.int16)) + det.flush()
    return "".join(e.digit for e in events if isinstance(e, DigitDetected))


def multimon_digits(audio: np.ndarray) -> str:
    """Keys multimon-ng finds (PEERS.md: raw 16-bit mono at 22050 Hz through sox)."""
    sox, multimon = require_binary("sox"), require_binary("multimon-ng")
    raw = subprocess.run(
        [sox, "-D", "-t", "raw", "-r", str(RATE_HZ), "-e", "signed-integer", "-b", "16", "-c", "1", "-",
         "-t", "raw", "-r", "22050", "-e", "signed-integer", "-b", "16", "-c", "1", "-"],
        input=np.asarray(audio, dtype="<i2").tobytes(), capture_output=True, check=True, timeout=60).stdout
    text = subprocess.run([multimon, "-q", "-c", "-a", "DTMF", "-t", "raw", "-"], input=raw,
                          capture_output=True, check=True, timeout=60).stdout.decode()
    return "".join(line.split("DTMF:", 1)[1].strip() for line in text.splitlines() if "DTMF:" in line)


def dtmf_powers(segment: np.ndarray) -> np.ndarray:
    """Power at the eight DTMF frequencies of a Hann-windowed stretch (two Goertzel filters per key)."""
    x = np.asarray(segment, dtype=np.float64)
    x = x * np.hanning(len(x))
    t = np.arange(len(x)) / RATE_HZ
    return np.abs(np.exp(-2j * np.pi * np.outer(ALL_FREQS_HZ, t)) @ x) ** 2


def pair_guess(segment: np.ndarray, floor: float = 1.0) -> str | None:
    """The key whose low and high frequency are the strongest of their groups; None for a silent stretch."""
    p = dtmf_powers(segment)
    if p.sum() <= floor:
        return None
    return KEYPAD[int(p[:4].argmax())][int(p[4:].argmax())]


def guess_accuracy(audio: np.ndarray, spans: list[tuple[str, int, int]]) -> float:
    """Share of (key, start, end) spans whose pair guess on `audio` names the key."""
    return float(np.mean([pair_guess(audio[s:e]) == key for key, s, e in spans]))


def window_features(audio: np.ndarray, start: int, end: int, sub: int = 40) -> np.ndarray:
    """Per DTMF frequency, the largest power over `sub`-sample windows (half hop) of a stretch, in log10."""
    x = np.asarray(audio, dtype=np.float64)
    t = np.arange(sub) / RATE_HZ
    basis = np.exp(-2j * np.pi * np.outer(t, ALL_FREQS_HZ))
    starts = np.arange(start, max(start + 1, end - sub + 1), sub // 2)
    segs = np.stack([x[s:s + sub] for s in starts])
    return np.log10((np.abs(segs @ basis) ** 2).max(axis=0) + 1.0)


def centroid_accuracy(features: np.ndarray, labels: list[str]) -> float:
    """Nearest-centroid key guess, trained on even items and tested on odd ones (chance 1/16)."""
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    y = np.array([DIGITS.index(k) for k in labels])
    train = np.arange(len(y)) % 2 == 0
    centroids = np.array([x[train & (y == c)].mean(axis=0) if np.any(train & (y == c))
                          else np.full(x.shape[1], np.inf) for c in range(16)])
    d = ((x[~train, None, :] - centroids[None]) ** 2).sum(axis=2)
    return float(np.mean(d.argmin(axis=1) == y[~train]))
