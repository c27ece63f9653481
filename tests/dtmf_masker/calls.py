"""Synthetic calls with many random digits, and the leak measures run on masked audio.

Shared by the leak tests and loadtests/masker_bench.py (which prints the figures).
"""

from __future__ import annotations

import glob
import wave
from dataclasses import dataclass

import numpy as np

from dtmf.g711 import ulaw_decode, ulaw_encode
from dtmf.masker import BLOCK_SAMPLES, PACKET_SAMPLES, Masker, MaskerBank, MaskMode
from dtmf.tones import DIGITS, DTMF_FREQS_HZ, HIGH_FREQS_HZ, LOW_FREQS_HZ, dtmf_tone, white_noise

RATE = 8000
ALL_FREQS_HZ = LOW_FREQS_HZ + HIGH_FREQS_HZ
SPEECH_GLOB = "/usr/share/asterisk/sounds/en_US_f_Allison/**/*.wav"
"""Debian asterisk-core-sounds-en-wav: ~25 min of recorded prompts, 8 kHz 16-bit mono."""
MUSIC_GLOB = "/usr/share/asterisk/moh/*.wav"
"""Debian asterisk-moh-opsound-wav: ~18 min of music on hold."""


@dataclass(frozen=True)
class Tone:
    """One generated digit and where it is."""

    digit: str
    start: int
    end: int
    level_dbm0: float
    twist_db: float


@dataclass
class Call:
    """Caller audio (int16, after a mu-law round trip), the tones alone (float) and their placement."""

    audio: np.ndarray
    tones_only: np.ndarray
    tones: list[Tone]
    background: str


def speech_like(n: int, rng: np.random.Generator, level_dbm0: float = -30.0) -> np.ndarray:
    """Voiced, formant-shaped harmonic speech stand-in with syllabic bursts and pauses."""
    frame = 80
    n_frames = n // frame + 2
    f0 = np.clip(150 + np.cumsum(rng.normal(0, 4, n_frames)), 90, 250)
    syllable = rng.integers(12, 30, n_frames)  # frames per syllable
    f1 = np.empty(n_frames); f2 = np.empty(n_frames); env = np.empty(n_frames)
    i = 0
    while i < n_frames:
        j = min(n_frames, i + int(syllable[i]))
        f1[i:j] = rng.uniform(300, 850)
        f2[i:j] = rng.uniform(850, 2300)
        on = rng.random() < 0.75
        env[i:j] = np.sin(np.linspace(0, np.pi, j - i)) * (1.0 if on else 0.0)
        i = j
    t_frames = np.arange(n) / frame
    interp = lambda v: np.interp(t_frames, np.arange(n_frames), v)  # noqa: E731
    f0s, f1s, f2s, envs = interp(f0), interp(f1), interp(f2), interp(env)
    phase = 2 * np.pi * np.cumsum(f0s) / RATE
    out = np.zeros(n)
    for k in range(1, 25):
        fk = k * f0s
        amp = (np.exp(-((fk - f1s) / 150.0) ** 2) + 0.5 * np.exp(-((fk - f2s) / 200.0) ** 2)
               + 0.05 / k) * (fk < 3600)
        out += amp * np.sin(k * phase)
    out *= envs
    out += 0.02 * rng.standard_normal(n) * envs
    rms = np.sqrt(np.mean(out**2)) + 1e-12
    target = 32767.0 * 10 ** ((level_dbm0 - 3.14) / 20) / np.sqrt(2)
    return out * (target / rms)


def make_call(rng: np.random.Generator, n_digits: int, background: str,
              last_5ms_share: float = 0.4) -> Call:
    """Random digits at random offsets, levels (0..-25 dBm0), twists (-8..+4 dB), 40-200 ms.

    A share of onsets fall in the last 5 ms of a 20 ms packet, the hardest case.
    """
    placed: list[Tone] = []
    pos = int(rng.integers(800, 2400))
    for _ in range(n_digits):
        if rng.random() < last_5ms_share:
            pos = (pos // PACKET_SAMPLES) * PACKET_SAMPLES + int(rng.integers(155, 160))
        dur = int(rng.integers(40 * 8, 200 * 8 + 1))
        placed.append(Tone(DIGITS[int(rng.integers(0, 16))], pos, pos + dur,
                           float(rng.uniform(-25, 0)), float(rng.uniform(-8, 4))))
        pos += dur + int(rng.integers(60 * 8, 300 * 8))
    n = pos + 1600
    n -= n % PACKET_SAMPLES
    tones_only = np.zeros(n)
    for t in placed:
        phase = tuple(rng.uniform(0, 2 * np.pi, 2))
        tone = dtmf_tone(t.digit, (t.end - t.start) / 8.0, t.level_dbm0, t.twist_db, phase_rad=phase)
        tones_only[t.start:t.start + len(tone)] += tone
    if background == "silence":
        bg = np.zeros(n)
    elif background == "noise":
        bg = white_noise(n, -45.0, rng)
    elif background == "speech":
        bg = speech_like(n, rng, -35.0)
    else:
        raise ValueError(background)
    linear = np.clip(np.rint(tones_only + bg), -32768, 32767).astype(np.int16)
    audio = ulaw_decode(ulaw_encode(linear))
    return Call(audio, tones_only, placed, background)


def read_corpus(pattern: str) -> list[np.ndarray]:
    """The mono 16-bit 8 kHz WAVs matching a glob, sorted by path (others are skipped)."""
    out = []
    for path in sorted(glob.glob(pattern, recursive=True)):
        with wave.open(path) as w:
            if w.getframerate() == RATE and w.getsampwidth() == 2 and w.getnchannels() == 1:
                out.append(np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"))
    return out


def make_speech_call(rng: np.random.Generator, speech: np.ndarray, n_digits: int, gain_db: float,
                     last_5ms_share: float = 0.4) -> Call:
    """Recorded speech scaled by gain_db with random digits over it (0..-25 dBm0, twist -8..+4 dB,
    40-120 ms, frequencies off by up to 1.5 %, random phases), mu-law round trip.

    `speech` is cut at a random offset (wrapping around) to the call's length.
    """
    placed: list[Tone] = []
    pos = int(rng.integers(800, 2400))
    for _ in range(n_digits):
        if rng.random() < last_5ms_share:
            pos = (pos // PACKET_SAMPLES) * PACKET_SAMPLES + int(rng.integers(155, 160))
        dur = int(rng.integers(40 * 8, 120 * 8 + 1))
        placed.append(Tone(DIGITS[int(rng.integers(0, 16))], pos, pos + dur,
                           float(rng.uniform(-25, 0)), float(rng.uniform(-8, 4))))
        pos += dur + int(rng.integers(100 * 8, 600 * 8))
    n = pos + 1600
    n -= n % PACKET_SAMPLES
    tones_only = np.zeros(n)
    for t in placed:
        phase = tuple(rng.uniform(0, 2 * np.pi, 2))
        off = tuple(rng.uniform(-1.5, 1.5, 2))
        tone = dtmf_tone(t.digit, (t.end - t.start) / 8.0, t.level_dbm0, t.twist_db, off[0], off[1], phase_rad=phase)
        tones_only[t.start:t.start + len(tone)] += tone
    start = int(rng.integers(0, len(speech)))
    bg = np.resize(np.roll(speech, -start), n).astype(np.float64) * 10 ** (gain_db / 20)
    linear = np.clip(np.rint(tones_only + bg), -32768, 32767).astype(np.int16)
    audio = ulaw_decode(ulaw_encode(linear))
    return Call(audio, tones_only, placed, f"speech {gain_db:+.0f} dB")


def tone_free(n: int, tones: list[Tone], margin: int = 2 * PACKET_SAMPLES) -> np.ndarray:
    """Samples farther than `margin` from every tone (bool, length n)."""
    free = np.ones(n, dtype=bool)
    for t in tones:
        free[max(0, t.start - margin):t.end + margin] = False
    return free


def mask_single(audio: np.ndarray, mode: MaskMode, chunk: int = PACKET_SAMPLES,
                lookahead: bool = True) -> np.ndarray:
    """Mask with one Masker, returned time-aligned with the input."""
    m = Masker(mode, lookahead=lookahead)
    parts = [m.process(audio[i:i + chunk]) for i in range(0, len(audio), chunk)]
    parts.append(m.flush())
    return np.concatenate(parts)[m.lookahead_samples:]


def mask_bank(audios: list[np.ndarray] | np.ndarray, mode: MaskMode) -> list[np.ndarray]:
    """Mask several equal-length calls through one bank in capture, time-aligned."""
    bank = MaskerBank(mode, capacity=2)
    slots = np.array([bank.add_stream() for _ in audios])
    for s in slots:
        bank.set_capture(int(s), True)
    stacked = np.stack(list(audios))
    outs = []
    for i in range(0, stacked.shape[1], PACKET_SAMPLES):
        rows, _ = bank.process(slots, stacked[:, i:i + PACKET_SAMPLES])
        outs.append(rows)
    tail = [bank.flush(int(s))[0] for s in slots]
    out = np.concatenate(outs + [np.stack(tail)], axis=1)
    return list(out[:, PACKET_SAMPLES:])


def goertzel_power(x: np.ndarray, freqs_hz, window: bool = True) -> np.ndarray:
    """Power of x at each frequency (Hann-windowed DFT at exact frequencies)."""
    x = np.asarray(x, dtype=np.float64)
    if window:
        x = x * np.hanning(len(x))
    t = np.arange(len(x)) / RATE
    basis = np.exp(-2j * np.pi * np.outer(freqs_hz, t))
    return np.abs(basis @ x) ** 2


def leaked_ms(masked: np.ndarray, call: Call, tone: Tone, rel_db: float = -20.0,
              fill_ref: np.ndarray | None = None) -> float:
    """Milliseconds of the tone window where the output still carries both of the tone's frequencies.

    5 ms windows every 1 ms; a window leaks when the output's power at the low and
    at the high frequency are each within |rel_db| of the clean tone's own.
    A 5 ms window cannot tell the flat mask tone (1060 Hz) from 941 or 1209 Hz, so
    for FLAT pass `fill_ref` (the fill, a function of the sample index only, the
    same whatever the key): output samples equal to it count as carrying nothing.
    """
    if fill_ref is not None:
        masked = np.where(masked == fill_ref, 0, masked)
    f = DTMF_FREQS_HZ[tone.digit]
    hop, win = 8, BLOCK_SAMPLES
    starts = np.arange(tone.start - win // 2, tone.end - win // 2, hop)
    segs = np.stack([masked[s:s + win] for s in starts]).astype(np.float64)
    refs = np.stack([call.tones_only[s:s + win] for s in starts])
    t = np.arange(win) / RATE
    basis = np.exp(-2j * np.pi * np.outer(t, f))
    p_out = np.abs(segs @ basis) ** 2
    p_ref = np.abs(refs @ basis) ** 2
    leak = np.all(p_out >= p_ref * 10 ** (rel_db / 10) + 1.0, axis=1)
    return float(leak.sum() * hop / 8.0)


def flat_fill_reference(n: int) -> np.ndarray:
    """The FLAT mode fill for stream samples 0..n-1."""
    from dtmf.masker import _fill
    return _fill(MaskMode.FLAT, np.arange(n), np.zeros(n))


def naive_mask(audio: np.ndarray) -> np.ndarray:
    """The strawman of DESIGN.md: zero 20 ms packets from the detection on, no look-ahead.

    A packet is zeroed when its own analysis finds tone in all four blocks, or the
    previous packet's found tone in any: the onset packet leaks 0-20 ms.
    """
    from dtmf.masker import analyse_blocks
    flags, _ = analyse_blocks(audio.reshape(-1, BLOCK_SAMPLES))
    flags = flags.reshape(-1, PACKET_SAMPLES // BLOCK_SAMPLES)
    zero = flags.all(axis=1)
    zero[1:] |= flags[:-1].any(axis=1)
    out = audio.copy().reshape(-1, PACKET_SAMPLES)
    out[zero] = 0
    return out.ravel()


def residual_db(masked: np.ndarray, call: Call, tone: Tone) -> float:
    """Output power at all 8 DTMF frequencies over the tone, relative to the tone's own (dB)."""
    out = goertzel_power(masked[tone.start:tone.end], ALL_FREQS_HZ).sum()
    ref = goertzel_power(call.tones_only[tone.start:tone.end], DTMF_FREQS_HZ[tone.digit]).sum()
    return float(10 * np.log10((out + 1e-9) / ref))


def classifier_accuracy(masked_calls: list[np.ndarray], calls: list[Call]) -> float:
    """Nearest-centroid guess of the key from the output's tone windows; train on half, test on half.

    Features: for each of the 8 DTMF frequencies, the largest power over 5 ms
    sub-windows (2.5 ms hop) of the tone window, so a short onset or tail counts
    as much as a long one.
    """
    t = np.arange(BLOCK_SAMPLES) / RATE
    basis = np.exp(-2j * np.pi * np.outer(t, ALL_FREQS_HZ))
    feats, labels = [], []
    for masked, call in zip(masked_calls, calls):
        for tone in call.tones:
            starts = np.arange(tone.start, tone.end - BLOCK_SAMPLES + 1, BLOCK_SAMPLES // 2)
            segs = np.stack([masked[s:s + BLOCK_SAMPLES] for s in starts]).astype(np.float64)
            p = (np.abs(segs @ basis) ** 2).max(axis=0)
            feats.append(np.log10(p + 1.0))
            labels.append(DIGITS.index(tone.digit))
    x = np.array(feats)
    y = np.array(labels)
    x = x - x.mean(axis=1, keepdims=True)  # level-independent: the shape across the 8 frequencies
    train = np.arange(len(y)) % 2 == 0
    centroids = np.array([x[train & (y == c)].mean(axis=0) if np.any(train & (y == c))
                          else np.full(x.shape[1], np.inf) for c in range(16)])
    test = ~train
    d = ((x[test, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    return float(np.mean(d.argmin(axis=1) == y[test]))
