"""What an endpoint heard (or sent): RTP payloads with arrival times, as audio to check.

The agent endpoint is the demo's call recorder: every payload it receives is kept
with the loop time it arrived, so the story can ask about a window of the call
("before the capture", "while the caller keyed") in the same clock it used to
drive the call. Checks run the project's own DTMF receiver and, if installed,
multimon-ng as a second opinion (PEERS.md: sox to 22050 Hz raw first).
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dtmf.detector import DigitDetected, DtmfDetector
from dtmf.g711 import DECODE_TABLES
from dtmf.tones import DBM0_FULL_SCALE_SINE, SAMPLE_RATE_HZ
from gateway.media.rtp import RtpPacket

FRAME_S = 0.02


@dataclass(frozen=True)
class FoundTone:
    """A DTMF digit a decoder found, placed on the loop clock; `key` is never printed."""

    key: str = field(repr=False)
    at_s: float


@dataclass
class Recording:
    """Audio packets in arrival order, with their loop times; telephone-events counted apart."""

    codec: str = "PCMU"
    audio_pt: int = 0
    telephone_event_pt: int | None = None
    payloads: list[bytes] = field(default_factory=list)
    arrivals_s: list[float] = field(default_factory=list)
    telephone_events: int = 0
    """RFC 4733 packets received (any PT other than the audio one counts too)."""
    other_packets: int = 0

    def add(self, packet: RtpPacket, now: float) -> None:
        """Keep an audio payload with its time; count anything else by kind."""
        if packet.payload_type == self.audio_pt:
            self.payloads.append(packet.payload)
            self.arrivals_s.append(now)
        elif packet.payload_type == self.telephone_event_pt or packet.payload_type >= 96:
            self.telephone_events += 1
        else:
            self.other_packets += 1

    def __len__(self) -> int:
        return len(self.payloads)

    def samples(self, start_s: float | None = None, end_s: float | None = None) -> np.ndarray:
        """Linear int16 audio of the packets that arrived in [start_s, end_s), joined in order."""
        chosen = [p for p, t in zip(self.payloads, self.arrivals_s)
                  if (start_s is None or t >= start_s) and (end_s is None or t < end_s)]
        if not chosen:
            return np.zeros(0, dtype=np.int16)
        return DECODE_TABLES[self.codec][np.frombuffer(b"".join(chosen), dtype=np.uint8)]

    def level_dbm0(self, start_s: float | None = None, end_s: float | None = None) -> float:
        """RMS level in dBm0 (G.711 convention: a full-scale sine is +3.14 dBm0); -inf when silent."""
        x = self.samples(start_s, end_s).astype(np.float64)
        if not len(x):
            return float("-inf")
        rms = float(np.sqrt(np.mean(x**2)))
        if rms <= 0.0:
            return float("-inf")
        return 20.0 * np.log10(rms * np.sqrt(2.0) / 32767.0) + DBM0_FULL_SCALE_SINE

    def tones(self, start_s: float | None = None, end_s: float | None = None) -> list[FoundTone]:
        """Digits the project's DTMF receiver (dtmf.detector) finds in a window."""
        chosen = [(p, t) for p, t in zip(self.payloads, self.arrivals_s)
                  if (start_s is None or t >= start_s) and (end_s is None or t < end_s)]
        if not chosen:
            return []
        audio = self.samples(start_s, end_s)
        per_packet = len(audio) // len(chosen) or 1
        detector = DtmfDetector()
        events = detector.process(audio) + detector.flush()
        found = []
        for ev in events:
            if isinstance(ev, DigitDetected):
                idx = min(ev.start_sample // per_packet, len(chosen) - 1)
                found.append(FoundTone(ev.digit, chosen[idx][1]))
        return found

    def write_wav(self, path: Path) -> Path:
        """Mono 16-bit 8 kHz WAV of everything, in arrival order."""
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(SAMPLE_RATE_HZ)
            out.writeframes(self.samples().astype("<i2").tobytes())
        return path


def multimon_available() -> bool:
    return shutil.which("multimon-ng") is not None and shutil.which("sox") is not None


def multimon_tone_count(samples: np.ndarray, timeout_s: float = 20.0) -> int:
    """How many DTMF digits multimon-ng hears in 8 kHz audio, piped (no file holds the audio)."""
    raw = subprocess.run(["sox", "-D", "-t", "raw", "-r", str(SAMPLE_RATE_HZ), "-e", "signed-integer", "-b", "16",
                          "-c", "1", "-", "-t", "raw", "-r", "22050", "-e", "signed-integer", "-b", "16", "-c", "1",
                          "-"], input=samples.astype("<i2").tobytes(), capture_output=True, check=True,
                         timeout=timeout_s).stdout
    out = subprocess.run(["multimon-ng", "-q", "-c", "-a", "DTMF", "-t", "raw", "-"], input=raw,
                         capture_output=True, check=True, timeout=timeout_s).stdout.decode()
    return sum(1 for line in out.splitlines() if "DTMF:" in line)
