"""A DTMF receiver test tape, built from the acceptance rules of issue 2 (ITU-T Q.24 as commonly implemented).

A lab tests a receiver from the outside: it plays a tape of conditions, each a
run of tones just inside or just outside one acceptance limit, and reads what the
receiver reports. Here a tape is one WAV file (8 kHz, or another rate for the
resampling rows), rendered linear or through a G.711 round trip, decoded by
`python -m dtmf decode FILE --json` as a subprocess, and scored per tone:

* each reported digit belongs to the tone it overlaps most in time (a digit
  overlapping no tone of its condition is a false digit);
* a `detect` tone passes when it got exactly its own digit once, a `reject` tone
  when it got nothing, an `either` tone (between Q.24's accept and reject limits)
  when it got its digit once or nothing: a wrong digit or a split never passes.

Levels are dBm0 per tone (`dtmf.tones`); twist is the high tone against the low
one (negative: high weaker, "normal" twist); SNR is the pair's total power
(or, on the rows that say so, the weaker tone's: data sheets' convention)
against white noise over the whole 0-4 kHz band.
"""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

import numpy as np

from dtmf.g711 import DECODE_TABLES, ENCODE_TABLES
from dtmf.tones import DIGITS, DTMF_FREQS_HZ, dbm0_to_amplitude, dtmf_tone, to_int16

ROOT = Path(__file__).resolve().parents[2]
LAWS = ("linear", "PCMU", "PCMA")
"""How a tape reaches the WAV file: straight to 16-bit, or through a G.711 encode/decode."""
SEGMENT_GUARD_MS = 250.0
"""Silence between two conditions on one tape: longer than any receiver's hang-over."""


class Expect(Enum):
    """What Q.24 asks of the receiver for a tone."""

    DETECT = "detect"
    REJECT = "reject"
    EITHER = "either"


@dataclass(frozen=True)
class Tone:
    """One keyed tone of a condition, as the generator plays it."""

    digit: str
    duration_ms: float = 60.0
    level_dbm0: float = -10.0
    """Level of the low tone."""
    twist_db: float = 0.0
    """High tone minus low tone."""
    low_offset_pct: float = 0.0
    high_offset_pct: float = 0.0
    gap_after_ms: float = 200.0
    """Silence after the tone (before the next tone of the condition)."""
    dropout_ms: float = 0.0
    """Silence cut into the middle of the tone (still one key press)."""


@dataclass(frozen=True)
class Condition:
    """One row of the battery: tones at one point of one parameter, and what Q.24 expects."""

    name: str
    rule: str
    """The parameter swept (the table groups rows by it)."""
    expect: Expect
    tones: tuple[Tone, ...]
    snr_db: float | None = None
    snr_ref: str = "pair"
    """What `snr_db` is measured against: "pair" (both tones' power) or "weaker" (the weaker tone, as
    receiver data sheets quote noise tolerance)."""
    echo: tuple[float, float] | None = None
    """(delay_ms, level_db) of one echo of the whole condition."""
    dc_offset: float = 0.0
    """Added to every sample (16-bit units), after the tones and the noise."""
    rate_hz: int = 8000
    """Sample rate of the WAV; conditions at other rates go on their own tape."""


@dataclass(frozen=True)
class Placed:
    """Where a tone of a condition landed on the tape, in ms from the start of the file."""

    condition: str
    index: int
    digit: str
    start_ms: float
    end_ms: float
    expect: Expect


@dataclass(frozen=True)
class Detection:
    """A digit a receiver reported, with the span it reported (ms from the start of the file)."""

    digit: str
    start_ms: float
    end_ms: float


@dataclass
class Tape:
    """Float samples of several conditions back to back, and where each tone is."""

    rate_hz: int
    samples: np.ndarray
    placed: list[Placed] = field(default_factory=list)
    spans_ms: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Each condition's stretch of the tape."""

    def pcm(self, law: str) -> np.ndarray:
        """Int16 samples as written to the WAV: clipped to 16 bits, then through the law's round trip."""
        x = to_int16(self.samples)
        if law == "linear":
            return x
        return DECODE_TABLES[law][ENCODE_TABLES[law][x.view(np.uint16)]]


@dataclass(frozen=True)
class ToneResult:
    """What a receiver reported for one placed tone."""

    placed: Placed
    got: str
    """The digits assigned to the tone, in order."""
    spans_ms: tuple[tuple[float, float], ...] = ()
    """The reported (start_ms, end_ms) of each of those digits."""

    @property
    def passed(self) -> bool:
        """Did the receiver do what Q.24 asks for this tone."""
        if self.placed.expect is Expect.DETECT:
            return self.got == self.placed.digit
        if self.placed.expect is Expect.REJECT:
            return self.got == ""
        return self.got in ("", self.placed.digit)


@dataclass(frozen=True)
class ConditionResult:
    """Per-tone results of one condition and the digits that matched no tone."""

    condition: str
    tones: tuple[ToneResult, ...]
    false_digits: str

    @property
    def passed(self) -> bool:
        """Every tone right and no false digit."""
        return not self.false_digits and all(t.passed for t in self.tones)

    @property
    def n_right(self) -> int:
        """Tones on which the receiver did the right thing."""
        return sum(t.passed for t in self.tones)

    @property
    def n_detected(self) -> int:
        """Tones reported as exactly their own digit."""
        return sum(t.got == t.placed.digit for t in self.tones)

    def describe(self) -> str:
        """The wrong tones, one short item each: for assertion messages and the report."""
        bad = [f"{t.placed.digit}@{t.placed.start_ms:.0f}ms->{t.got or '-'!r}" for t in self.tones if not t.passed]
        extra = [f"false {self.false_digits!r}"] if self.false_digits else []
        return f"{self.condition}: " + (", ".join(bad + extra) or "ok")


def q24_offset_pct(freq_hz: float, sign: int) -> float:
    """The Q.24 accept limit +-(1.5 % + 2 Hz) of one frequency, as a percentage."""
    return sign * (1.5 + 200.0 / freq_hz)


def _render_condition(cond: Condition, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Float samples of one condition (with random lead, random phases) and each tone's sample span."""
    per_ms = cond.rate_hz / 1000.0
    lead = int(rng.integers(int(60 * per_ms), int(140 * per_ms)))  # random start offset, not packet-aligned
    parts = [np.zeros(lead)]
    spans = []
    pos = lead
    for tone in cond.tones:
        phases = tuple(rng.uniform(0, 2 * np.pi, 2))
        x = dtmf_tone(tone.digit, tone.duration_ms, tone.level_dbm0, tone.twist_db, tone.low_offset_pct,
                      tone.high_offset_pct, sample_rate_hz=cond.rate_hz, phase_rad=phases)
        if tone.dropout_ms:
            cut = int(round(tone.dropout_ms * per_ms))
            mid = len(x) // 2 + int(rng.integers(-int(5 * per_ms), int(5 * per_ms) + 1))
            x[mid - cut // 2:mid - cut // 2 + cut] = 0.0
        spans.append((pos, pos + len(x)))
        gap = np.zeros(int(round(tone.gap_after_ms * per_ms)))
        parts += [x, gap]
        pos += len(x) + len(gap)
    sig = np.concatenate(parts)
    if cond.echo is not None:
        delay_ms, level_db = cond.echo
        d = int(round(delay_ms * per_ms))
        sig = np.concatenate([sig, np.zeros(d)])
        sig[d:] += 10 ** (level_db / 20) * sig[:len(sig) - d].copy()
    if cond.snr_db is not None:
        if cond.snr_ref == "pair":
            power = float(np.mean(np.concatenate([sig[a:b] for a, b in spans]) ** 2))
        else:  # a sine's power is half its squared peak
            t = cond.tones[0]
            power = dbm0_to_amplitude(min(t.level_dbm0, t.level_dbm0 + t.twist_db)) ** 2 / 2
        sig = sig + rng.standard_normal(len(sig)) * np.sqrt(power / 10 ** (cond.snr_db / 10))
    return sig + cond.dc_offset, spans


def build_tape(conditions: Sequence[Condition], seed: int) -> Tape:
    """One tape holding the conditions back to back, separated by guard silence."""
    rates = {c.rate_hz for c in conditions}
    if len(rates) != 1:
        raise ValueError("a tape has one sample rate")
    rate = rates.pop()
    per_ms = rate / 1000.0
    rng = np.random.default_rng(seed)
    guard = np.zeros(int(SEGMENT_GUARD_MS * per_ms))
    parts = [guard]
    pos = len(guard)
    tape = Tape(rate, np.zeros(0))
    for cond in conditions:
        if cond.name in tape.spans_ms:
            raise ValueError("condition names on a tape must be unique")
        sig, spans = _render_condition(cond, rng)
        for i, ((a, b), tone) in enumerate(zip(spans, cond.tones)):
            tape.placed.append(Placed(cond.name, i, tone.digit, (pos + a) / per_ms, (pos + b) / per_ms, cond.expect))
        tape.spans_ms[cond.name] = (pos / per_ms, (pos + len(sig)) / per_ms)
        parts += [sig, guard]
        pos += len(sig) + len(guard)
    tape.samples = np.concatenate(parts)
    return tape


def write_wav(path: Path, samples: np.ndarray, rate_hz: int) -> Path:
    """A mono 16-bit PCM WAV."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())
    return path


def cli_decode(path: Path, timeout_s: float = 120.0) -> list[Detection]:
    """Digits reported by `python -m dtmf decode PATH --json`, run as a subprocess as any other tool would."""
    r = subprocess.run([sys.executable, "-m", "dtmf", "decode", str(path), "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout_s)
    if r.returncode != 0:
        raise RuntimeError(f"python -m dtmf decode exited {r.returncode}: {r.stderr.strip()}")
    out = []
    for line in r.stdout.splitlines():
        obj = json.loads(line)
        out.append(Detection(obj["digit"], float(obj["start_ms"]), float(obj["end_ms"])))
    return out


def score(tape: Tape, detections: Iterable[Detection]) -> dict[str, ConditionResult]:
    """Each condition's result: digits go to the tone of their condition they overlap most."""
    by_cond: dict[str, list[Placed]] = {}
    for p in tape.placed:
        by_cond.setdefault(p.condition, []).append(p)
    got: dict[tuple[str, int], str] = {}
    spans: dict[tuple[str, int], tuple[tuple[float, float], ...]] = {}
    false: dict[str, str] = {name: "" for name in tape.spans_ms}
    for d in detections:
        mid = (d.start_ms + d.end_ms) / 2
        name = next((n for n, (a, b) in tape.spans_ms.items() if a <= mid < b), None)
        if name is None:
            name = min(tape.spans_ms, key=lambda n: min(abs(mid - tape.spans_ms[n][0]), abs(mid - tape.spans_ms[n][1])))
        overlaps = [min(d.end_ms, p.end_ms) - max(d.start_ms, p.start_ms) for p in by_cond[name]]
        best = int(np.argmax(overlaps))
        if overlaps[best] <= 0:
            false[name] += d.digit
            continue
        key = (name, by_cond[name][best].index)
        got[key] = got.get(key, "") + d.digit
        spans[key] = spans.get(key, ()) + ((d.start_ms, d.end_ms),)
    return {
        name: ConditionResult(name, tuple(ToneResult(p, got.get((name, p.index), ""), spans.get((name, p.index), ()))
                                          for p in by_cond[name]), false[name])
        for name in tape.spans_ms
    }


# ---------------------------------------------------------------------------------------------
# The battery: Q.24 limits as issue 2 states them, each swept to both sides with margins.

def _keys(keys: str, reps: int) -> str:
    return keys * reps


def _isolated(name: str, rule: str, expect: Expect, keys: str, **kw: float) -> Condition:
    return Condition(name, rule, expect, tuple(Tone(k, **kw) for k in keys))


def deviation_conditions(keys: str) -> list[Condition]:
    """Each group's frequency off by +-1.0 %, +-(1.5 % + 2 Hz) (accept), +-3.5 %, +-4 % (reject)."""
    out = []
    for group, idx in (("low", 0), ("high", 1)):
        for sign in (1, -1):
            s = "+" if sign > 0 else "-"
            steps = [(f"{s}1.0 %", lambda f: sign * 1.0, Expect.DETECT),
                     (f"{s}(1.5 % + 2 Hz)", lambda f: q24_offset_pct(f, sign), Expect.DETECT),
                     (f"{s}3.5 %", lambda f: sign * 3.5, Expect.REJECT),
                     (f"{s}4.0 %", lambda f: sign * 4.0, Expect.REJECT)]
            for label, pct_of, expect in steps:
                tones = tuple(Tone(k, **{f"{group}_offset_pct": pct_of(DTMF_FREQS_HZ[k][idx])}) for k in keys)
                out.append(Condition(f"{group} {label}", "deviation", expect, tones))
    return out


def twist_conditions(keys: str) -> list[Condition]:
    """Reverse twist (high louder) to 4 dB and normal twist (high weaker) to 8 dB accepted, beyond rejected."""
    rows = [(3.5, Expect.DETECT), (4.0, Expect.DETECT), (4.5, Expect.REJECT),
            (-7.5, Expect.DETECT), (-8.0, Expect.DETECT), (-8.5, Expect.REJECT)]
    return [_isolated(f"twist {t:+.1f} dB", "twist", e, keys, twist_db=t) for t, e in rows]


def duration_conditions(keys: str) -> list[Condition]:
    """40 ms accepted; under 20-23 ms rejected (the strictest administration: under 23 ms)."""
    rows = [(18, Expect.REJECT), (20, Expect.REJECT), (23, Expect.EITHER), (25, Expect.EITHER),
            (30, Expect.EITHER), (35, Expect.EITHER), (40, Expect.DETECT)]
    return [_isolated(f"duration {d} ms", "duration", e, keys, duration_ms=float(d)) for d, e in rows]


def pause_conditions(keys: str) -> list[Condition]:
    """The same key twice, 40 ms tones, separated by a pause: 40 ms always makes two digits."""
    rows = [(20, Expect.EITHER), (30, Expect.EITHER), (40, Expect.DETECT), (50, Expect.DETECT)]
    out = []
    for pause, expect in rows:
        tones = tuple(t for k in keys for t in (Tone(k, 40.0, gap_after_ms=float(pause)), Tone(k, 40.0)))
        out.append(Condition(f"pause {pause} ms", "pause", expect, tones))
    return out


def level_conditions(keys: str) -> list[Condition]:
    """0 to -25 dBm0 per tone detected; below is not specified (the table reports it)."""
    rows = [(0, Expect.DETECT), (-10, Expect.DETECT), (-20, Expect.DETECT), (-25, Expect.DETECT),
            (-26, Expect.EITHER), (-30, Expect.EITHER)]
    return [_isolated(f"level {lv} dBm0", "level", e, keys, level_dbm0=float(lv)) for lv, e in rows]


def snr_conditions(keys: str) -> list[Condition]:
    """Every digit at 15 dB SNR (white noise); 12 dB is not required."""
    rows = [(18, Expect.DETECT), (15, Expect.DETECT), (12, Expect.EITHER)]
    out = []
    for snr, expect in rows:
        for level in (-10.0, -25.0):
            tones = tuple(Tone(k, level_dbm0=level) for k in keys)
            out.append(Condition(f"SNR {snr} dB at {level:.0f} dBm0", "snr", expect, tones, snr_db=float(snr)))
    return out


def combined_conditions(keys: str) -> list[Condition]:
    """Worst cases together: both tones at the deviation limit, twist at the limit, the weaker tone at
    -25 dBm0, 15 dB SNR, 40 ms tones with 40 ms pauses (one keyed string), random phases and onset."""
    out = []
    for twist in (-8.0, 4.0):
        for s_low in (1, -1):
            for s_high in (1, -1):
                low_level = -25.0 - min(twist, 0.0)  # the weaker of the two tones sits at -25 dBm0
                tones = tuple(
                    Tone(k, 40.0, low_level, twist, q24_offset_pct(DTMF_FREQS_HZ[k][0], s_low),
                         q24_offset_pct(DTMF_FREQS_HZ[k][1], s_high), gap_after_ms=40.0)
                    for k in keys)
                name = f"combined twist {twist:+.0f} dB, low {'+-'[s_low < 0]}, high {'+-'[s_high < 0]}"
                out.append(Condition(name, "combined", Expect.DETECT, tones, snr_db=15.0))
                out.append(Condition(name + ", SNR re weaker", "combined", Expect.DETECT, tones,
                                     snr_db=15.0, snr_ref="weaker"))
    return out


def sequence_conditions(keys: str) -> list[Condition]:
    """Keyed strings: the same key four times with 40 ms pauses, and 10 digits per second."""
    out = [Condition(f"repeat {k * 4}", "sequence", Expect.DETECT,
                     tuple(Tone(k, 40.0, gap_after_ms=40.0) for _ in range(4))) for k in keys]
    out.append(Condition("10 digits/s (50 ms on, 50 ms off)", "sequence", Expect.DETECT,
                         tuple(Tone(k, 50.0, gap_after_ms=50.0) for k in keys)))
    return out


def impairment_conditions(keys: str) -> list[Condition]:
    """Line impairments a gateway meets: drop-outs, echo, DC offset, clipping."""
    out = [_isolated(f"dropout {d} ms mid-tone", "dropout", Expect.DETECT, keys, duration_ms=80.0,
                     dropout_ms=float(d)) for d in (5, 10)]
    for delay in (20, 40, 60):
        out.append(Condition(f"echo -15 dB at {delay} ms", "echo", Expect.DETECT,
                             tuple(Tone(k) for k in keys), echo=(float(delay), -15.0)))
    # A sound card's offset is a few hundred counts; Q.24 says nothing, but a DC blocker is one subtraction.
    for dc, level in ((3000.0, -10.0), (-3000.0, -10.0), (300.0, -25.0), (1000.0, -25.0), (-1000.0, -25.0)):
        out.append(Condition(f"DC offset {dc:+.0f}, tones at {level:.0f} dBm0", "dc offset", Expect.DETECT,
                             tuple(Tone(k, level_dbm0=level) for k in keys), dc_offset=dc))
    # +3 dBm0 per tone peaks at twice 16-bit full scale: about 6 dB of hard clipping.
    out.append(_isolated("clipped (+3 dBm0 per tone, ~6 dB over)", "clipping", Expect.DETECT, keys,
                         level_dbm0=3.0))
    return out


def echo_sequence_conditions(keys: str) -> list[Condition]:
    """Echo over a 40/40 keyed string: the echo eats the pause, so Q.24 says nothing (reported only)."""
    return [Condition(f"echo -15 dB at {d} ms over 40/40 string", "echo", Expect.EITHER,
                      tuple(Tone(k, 40.0, gap_after_ms=40.0) for k in keys), echo=(float(d), -15.0))
            for d in (20, 40, 60)]


def resampling_conditions(keys: str) -> list[Condition]:
    """The same keyed string in 16 kHz and 44.1 kHz WAVs (the CLI resamples)."""
    return [Condition(f"{rate} Hz WAV, 50/50 string", "rate", Expect.DETECT,
                      tuple(Tone(k, 50.0, gap_after_ms=50.0) for k in keys), rate_hz=rate)
            for rate in (16000, 44100)]


def battery(keys: str = DIGITS) -> list[Condition]:
    """Every 8 kHz condition of the battery, each over the given keys."""
    return (deviation_conditions(keys) + twist_conditions(keys) + duration_conditions(keys)
            + pause_conditions(keys) + level_conditions(keys) + snr_conditions(keys)
            + combined_conditions(keys) + sequence_conditions(keys) + impairment_conditions(keys)
            + echo_sequence_conditions(keys))


def with_keys(cond: Condition, reps: int) -> Condition:
    """The condition with its tones repeated (more random phases and onsets per row)."""
    return replace(cond, tones=cond.tones * reps)
