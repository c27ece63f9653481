"""What the demo's endpoints put on the line, 20 ms at a time: room noise, talk, keyed DTMF.

Sans-IO: the RTP edge asks `next_frame()` on its 20 ms clock. Everything queued
is mixed over a constant room-noise floor, as a handset would send it. Keying
uses `dtmf.tones` with a person's timing (tone and gap lengths vary per key, a
longer pause after each `#` while the caller reads the next field), and records
where each tone sits in the sent stream so the checks can look there.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from dtmf.tones import SAMPLE_RATE_HZ, dbm0_to_amplitude, dtmf_tone, to_int16, white_noise

FRAME_SAMPLES = 160
"""20 ms at 8 kHz: one PCMU packet (RFC 3551 4.5: ptime 20 by default)."""


@dataclass(frozen=True)
class KeyedSpan:
    """Where one keyed tone sits in the sent stream (samples since the first frame); no digit kept."""

    start_sample: int
    end_sample: int


class SensitiveKeys:
    """The keys a caller will press: card digits, so the repr never shows them."""

    __slots__ = ("_keys",)

    def __init__(self, keys: str) -> None:
        if not keys or any(k not in "0123456789*#" for k in keys):
            raise ValueError("keys must be keypad characters")
        self._keys = bytearray(keys.encode())

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self):
        return iter(self._keys.decode())

    def __repr__(self) -> str:
        return f"SensitiveKeys(<{len(self._keys)} keys>)"

    __str__ = __repr__

    def wipe(self) -> None:
        for i in range(len(self._keys)):
            self._keys[i] = 0
        self._keys = bytearray()


@dataclass(frozen=True)
class KeyingTiming:
    """A person on a keypad: tone and gap lengths drawn per key, a pause to read after each `#`."""

    tone_ms: tuple[float, float] = (80.0, 130.0)
    gap_ms: tuple[float, float] = (120.0, 260.0)
    field_pause_ms: tuple[float, float] = (700.0, 1200.0)
    level_dbm0: tuple[float, float] = (-13.0, -9.0)
    twist_db: tuple[float, float] = (-1.0, 2.0)


class CallerVoice:
    """A handset's microphone: a room-noise floor plus whatever is queued (talk, tones, pauses)."""

    def __init__(self, rng: np.random.Generator, noise_dbm0: float = -55.0) -> None:
        self._rng = rng
        self._noise_dbm0 = noise_dbm0
        self._queue: deque[np.ndarray] = deque()
        self._queued_samples = 0
        self._head: np.ndarray | None = None
        self._head_pos = 0
        self.samples_sent = 0

    @property
    def idle(self) -> bool:
        """Nothing queued: only room noise is going out."""
        return self._queued_samples == 0

    @property
    def queued_s(self) -> float:
        return self._queued_samples / SAMPLE_RATE_HZ

    def _append(self, samples: np.ndarray) -> int:
        """Queue float samples; return the stream position where they will start."""
        start = self.samples_sent + self._queued_samples
        self._queue.append(samples.astype(np.float64))
        self._queued_samples += len(samples)
        return start

    def pause(self, duration_s: float) -> None:
        self._append(np.zeros(int(round(duration_s * SAMPLE_RATE_HZ))))

    def talk(self, duration_s: float, level_dbm0: float = -20.0) -> tuple[int, int]:
        """Speech-like sound: band-limited noise in syllables (about 4 a second); returns its span."""
        n = int(round(duration_s * SAMPLE_RATE_HZ))
        spectrum = np.fft.rfft(self._rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE_HZ)
        spectrum *= (freqs > 200.0) & (freqs < 3400.0)
        spectrum *= 1.0 / np.sqrt(1.0 + freqs / 500.0)  # speech falls off above the first formant
        sound = np.fft.irfft(spectrum, n)
        t = np.arange(n) / SAMPLE_RATE_HZ
        rate_hz = 4.0 + self._rng.uniform(-0.5, 0.5)
        envelope = np.abs(np.sin(np.pi * rate_hz * t + self._rng.uniform(0, np.pi))) ** 0.7
        sound *= envelope
        rms = float(np.sqrt(np.mean(sound**2))) or 1.0
        sound *= (dbm0_to_amplitude(level_dbm0) / np.sqrt(2.0)) / rms
        start = self._append(sound)
        return start, start + n

    def key(self, keys: SensitiveKeys, timing: KeyingTiming = KeyingTiming()) -> list[KeyedSpan]:
        """Queue the keys as in-band DTMF with a person's timing; return where each tone lands."""
        rng = self._rng
        spans: list[KeyedSpan] = []
        for key in keys:
            tone = dtmf_tone(key, rng.uniform(*timing.tone_ms), level_dbm0=rng.uniform(*timing.level_dbm0),
                             twist_db=rng.uniform(*timing.twist_db))
            start = self._append(tone)
            # The span is where the tone is not zero: a tone starting at phase 0 begins with an exact
            # 0.0, and a packet holding only that sample carries no tone (the agent may hear it as is).
            sounding = np.flatnonzero(tone)
            spans.append(KeyedSpan(start + int(sounding[0]), start + int(sounding[-1]) + 1))
            gap = timing.field_pause_ms if key == "#" else timing.gap_ms
            self.pause(rng.uniform(*gap) / 1000.0)
        return spans

    def next_frame(self) -> np.ndarray:
        """The next 20 ms as int16 samples."""
        frame = white_noise(FRAME_SAMPLES, self._noise_dbm0, self._rng)
        filled = 0
        while filled < FRAME_SAMPLES and (self._head is not None or self._queue):
            if self._head is None:
                self._head, self._head_pos = self._queue.popleft(), 0
            take = min(FRAME_SAMPLES - filled, len(self._head) - self._head_pos)
            frame[filled:filled + take] += self._head[self._head_pos:self._head_pos + take]
            filled += take
            self._head_pos += take
            self._queued_samples -= take
            if self._head_pos >= len(self._head):
                self._head = None
        self.samples_sent += FRAME_SAMPLES
        return to_int16(frame)
