"""Test signals for the DTMF receiver: tones placed in silence or noise, after a G.711 round trip."""

from __future__ import annotations

import glob
import importlib.util
import sys
import wave
from pathlib import Path

import numpy as np

from dtmf.detector import DigitDetected, DigitEnded, DtmfDetector
from dtmf.g711 import DECODE_TABLES, ENCODE_TABLES
from dtmf.tones import dtmf_tone, to_int16

REPO = Path(__file__).resolve().parents[2]
SPEECH_GLOB = "/usr/share/asterisk/sounds/en_US_f_Allison/**/*.wav"
MUSIC_GLOB = "/usr/share/asterisk/moh/*.wav"


def g711_round_trip(signal: np.ndarray, law: str = "PCMU") -> np.ndarray:
    """Int16 samples of a float signal after encoding and decoding with the given law."""
    x = to_int16(signal)
    return DECODE_TABLES[law][ENCODE_TABLES[law][x.view(np.uint16)]]


def placed_tone(digit: str, rng: np.random.Generator, duration_ms: float = 60.0,
                lead: int | None = None, tail: int = 600, noise_snr_db: float | None = None,
                law: str = "PCMU", **tone_kw: float) -> tuple[np.ndarray, int, int]:
    """One tone with random phases at a random offset; returns (samples, start, end)."""
    tone = dtmf_tone(digit, duration_ms, phase_rad=tuple(rng.uniform(0, 2 * np.pi, 2)), **tone_kw)
    start = int(rng.integers(200, 400)) if lead is None else lead
    sig = np.zeros(start + len(tone) + tail)
    sig[start:start + len(tone)] = tone
    if noise_snr_db is not None:
        power = np.mean(tone ** 2)
        sig += rng.standard_normal(len(sig)) * np.sqrt(power / 10 ** (noise_snr_db / 10))
    return g711_round_trip(sig, law), start, start + len(tone)


def tone_train(spec: list[tuple[str, float, float]], rng: np.random.Generator,
               level_dbm0: float = -10.0) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """Float signal of (digit, tone_ms, gap_after_ms) segments with random phases."""
    parts = [np.zeros(int(rng.integers(100, 500)))]
    pos = len(parts[0])
    placed = []
    for digit, tone_ms, gap_ms in spec:
        tone = dtmf_tone(digit, tone_ms, level_dbm0, phase_rad=tuple(rng.uniform(0, 2 * np.pi, 2)))
        placed.append((digit, pos, pos + len(tone)))
        gap = np.zeros(int(round(gap_ms * 8)))
        parts += [tone, gap]
        pos += len(tone) + len(gap)
    return np.concatenate(parts), placed


def detect(samples: np.ndarray, chunk: int | None = None) -> list[DigitDetected | DigitEnded]:
    """Every event of one detector over the samples, fed in chunks, then flushed."""
    det = DtmfDetector()
    events: list[DigitDetected | DigitEnded] = []
    step = len(samples) if chunk is None else chunk
    for i in range(0, len(samples), max(step, 1)):
        events += det.process(samples[i:i + step])
    return events + det.flush()


def digits_of(events: list[DigitDetected | DigitEnded]) -> str:
    """The detected digits in order."""
    return "".join(e.digit for e in events if isinstance(e, DigitDetected))


def read_wav_int16(path: str) -> np.ndarray:
    """Samples of a mono 16-bit 8 kHz WAV."""
    with wave.open(path) as w:
        if w.getframerate() != 8000 or w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError("not a mono 16-bit 8 kHz WAV")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def audio_files(pattern: str) -> list[str]:
    """Sorted paths matching a glob (recursive)."""
    return sorted(glob.glob(pattern, recursive=True))


def load_spandsp_module():
    """loadtests/spandsp_rx.py as a module (loadtests is not a package)."""
    if "spandsp_rx" in sys.modules:
        return sys.modules["spandsp_rx"]
    spec = importlib.util.spec_from_file_location("spandsp_rx", REPO / "loadtests" / "spandsp_rx.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["spandsp_rx"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
