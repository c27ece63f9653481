"""Audio the real peers play and record: 8 kHz mono 16-bit WAVs, tone files, and level measures."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from dtmf.tones import dtmf_sequence, to_int16

RATE_HZ = 8000
CALLER_HZ, AGENT_HZ = 600.0, 1400.0
"""The tones each side plays in two-way audio checks: far enough apart to measure each in a mix."""


def write_wav(path: Path, samples: np.ndarray) -> Path:
    """An 8 kHz mono 16-bit WAV (float samples are rounded and clipped)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE_HZ)
        w.writeframes(to_int16(samples).astype("<i2").tobytes())
    return path


def read_wav(path: Path) -> np.ndarray:
    """Mono 16-bit samples (PJSIP records 8 kHz mono with the peers' endpoint config)."""
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() != RATE_HZ:
            raise ValueError("recording is not 8 kHz mono 16-bit")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def read_recording(path: Path) -> tuple[int, np.ndarray]:
    """(rate, samples) of a PCM WAV, also one whose writer was stopped before it patched the sizes."""
    data = path.read_bytes()
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE" or b"data" not in data[:200]:
        raise ValueError(f"{path.name} is not a PCM WAV")
    rate = int.from_bytes(data[24:28], "little")
    body = data[data.index(b"data", 12) + 8:]
    return rate, np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2").astype(np.float64)


def tones_wav(path: Path, digits: str) -> Path:
    """DTMF `digits` (100 ms tones, 100 ms gaps) after 600 ms of silence, 500 ms of silence after."""
    samples = to_int16(dtmf_sequence(digits, tone_ms=100, gap_ms=100)[0])
    return write_wav(path, np.concatenate([np.zeros(4800, np.int16), samples, np.zeros(4000, np.int16)]))


def tone_wav(path: Path, freq_hz: float, seconds: float) -> Path:
    """A steady sine at about -15 dBFS."""
    t = np.arange(int(RATE_HZ * seconds)) / RATE_HZ
    return write_wav(path, (np.sin(2 * np.pi * freq_hz * t) * 6000).astype("<i2"))


def level_db(path: Path, freq_hz: float, start_s: float, end_s: float) -> float:
    """Power of one frequency in a window of a recording, in dB relative to a full-scale sine."""
    rate, samples = read_recording(path)
    chunk = samples[int(start_s * rate): int(end_s * rate)]
    if chunk.size < rate // 10:
        return -200.0
    t = np.arange(chunk.size) / rate
    amplitude = 2 * abs(np.dot(chunk, np.exp(-2j * np.pi * freq_hz * t))) / chunk.size
    return 20 * np.log10(max(amplitude, 1e-9) / 32768)


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level relative to 16-bit full scale (-inf-safe)."""
    x = samples.astype(np.float64)
    return 10 * np.log10(max(float(np.mean(x * x)), 1e-12) / 32768.0**2)
