"""The receiver battery an outside lab would run, through `python -m dtmf decode FILE --json`.

One tape per law (linear 16-bit, G.711 mu-law, A-law round trips) holds every
8 kHz condition of `tape.battery()` over all 16 keys; each is decoded once by
the CLI as a subprocess and every condition is scored from that decode. The
16 kHz and 44.1 kHz rows get their own WAVs. The full sweep with more keys per
row, spandsp beside it and the bisected boundaries is `loadtests/dtmf_battery.py`.

Rows the receiver fails today are strict xfails (a fix makes them fail loudly
so the marker gets removed); see KNOWN_FAILURES for what was measured.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dtmf.tones import DIGITS, DTMF_FREQS_HZ

from .tape import (
    LAWS,
    ROOT,
    Condition,
    Detection,
    Expect,
    Placed,
    Tape,
    Tone,
    battery,
    build_tape,
    cli_decode,
    combined_conditions,
    q24_offset_pct,
    resampling_conditions,
    score,
    with_keys,
    write_wav,
)

SEED = 20261129
COMBINED_REPS = 3
"""The combined worst cases carry each key three times (48 tones a row): they fail by a share of tones."""


def _tape_conditions() -> list[Condition]:
    combined = {c.name for c in combined_conditions(DIGITS)}
    return [with_keys(c, COMBINED_REPS) if c.name in combined else c for c in battery()]


CONDITIONS = _tape_conditions()

_COMBINED_REASON = ("twist at the limit (-8 or +4 dB) with 15 dB white noise against the pair: the weaker tone is "
                    "then ~6 dB above the noise in the band, and no estimate from a 40 ms tone is better than "
                    "+-0.23 dB (1 sigma, Cramer-Rao), while 8.5 / 4.5 dB clean must be rejected: the twist is "
                    "decided over 25 ms (dtmf/detector.py HISTORY_WINDOWS) at 8.4 / 4.4 dB; 73-86 % of the -8 dB "
                    "and 78-98 % of the +4 dB tones detected (4 x 16 keys; was 42-53 / 62-80 %), spandsp 0-14 %")
KNOWN_FAILURES: dict[str, str] = {
    **{c.name: _COMBINED_REASON for c in combined_conditions(DIGITS) if c.snr_ref == "pair"},
}
"""Rows the receiver fails today, by condition name, with what was measured."""


WEAKER_REF = [c.name for c in CONDITIONS if c.snr_ref == "weaker"]
"""Combined worst cases with the noise measured against the weaker tone: about 1 tone in 50 is missed,
so which row fails depends on the phases; they are scored together below."""


def _params() -> list:
    out = []
    for cond in CONDITIONS:
        if cond.name in WEAKER_REF:
            continue
        marks = []
        if cond.name in KNOWN_FAILURES:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[cond.name]))
        out.append(pytest.param(cond.name, marks=marks, id=cond.name))
    return out


@pytest.fixture(scope="module")
def tapes() -> dict[str, Tape]:
    tape = build_tape(CONDITIONS, SEED)
    return {law: tape for law in LAWS}


@pytest.fixture(scope="module")
def raw(tapes, tmp_path_factory) -> dict[str, tuple[Path, list[Detection]]]:
    """Each law's tape written as a WAV and decoded by the CLI once."""
    out = {}
    folder = tmp_path_factory.mktemp("battery")
    for law, tape in tapes.items():
        path = write_wav(folder / f"battery-{law}.wav", tape.pcm(law), tape.rate_hz)
        out[law] = (path, cli_decode(path))
    return out


@pytest.fixture(scope="module")
def decoded(tapes, raw) -> dict[str, dict]:
    """Each law's CLI digits scored per condition."""
    return {law: score(tapes[law], raw[law][1]) for law in LAWS}


def test_plain_output_is_the_json_digits_on_one_line(raw) -> None:
    path, detections = raw["PCMU"]
    r = subprocess.run([sys.executable, "-m", "dtmf", "decode", str(path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert (r.returncode, r.stderr) == (0, "")
    assert len(detections) > 1000
    assert r.stdout == "".join(d.digit for d in detections) + "\n"


@pytest.mark.parametrize("name", _params())
@pytest.mark.parametrize("law", LAWS)
def test_condition(decoded, law: str, name: str) -> None:
    result = decoded[law][name]
    assert result.passed, result.describe()


TIMING_RULES_MS = {"deviation": 5.0, "twist": 5.0, "duration": 5.0, "level": 5.0, "pause": 5.0, "sequence": 5.0,
                   "snr": 12.0, "combined": 12.0}
"""How far a reported start_ms/end_ms may be from the tone's edge. Measured (loadtests/dtmf_battery.py, 4 x 16
keys, two seeds): at most 4.25 ms on clean rows (the README says 4 ms), 10.1 ms on the combined worst cases.
Drop-out and echo rows are left out (an echo lengthens the tone)."""


@pytest.mark.parametrize("law", LAWS)
def test_reported_start_and_end_are_at_the_tone_edges(decoded, law: str) -> None:
    rule_of = {c.name: c.rule for c in CONDITIONS}
    expect_of = {c.name: c.expect for c in CONDITIONS}
    checked = 0
    worst: list[str] = []
    for name, result in decoded[law].items():
        bound = TIMING_RULES_MS.get(rule_of[name])
        if bound is None or expect_of[name] is not Expect.DETECT:
            continue
        for t in result.tones:
            if t.got != t.placed.digit:
                continue  # scored by test_condition
            (start, end), = t.spans_ms
            checked += 1
            if max(abs(start - t.placed.start_ms), abs(end - t.placed.end_ms)) > bound:
                err = f"{start - t.placed.start_ms:+.2f}/{end - t.placed.end_ms:+.2f} ms"
                worst.append(f"{name} {t.placed.digit}: {err}")
    assert checked > 500
    assert worst == []


@pytest.mark.xfail(strict=True, reason="combined worst case with 15 dB SNR against the weaker tone "
                   "(data-sheet convention): 92-100 % of tones per row, not all; see _COMBINED_REASON")
@pytest.mark.parametrize("law", LAWS)
def test_combined_worst_cases_snr_vs_weaker_tone(decoded, law: str) -> None:
    results = [decoded[law][name] for name in WEAKER_REF]
    assert len(results) == 8
    assert all(r.passed for r in results), "; ".join(r.describe() for r in results if not r.passed)


@pytest.mark.parametrize("cond", resampling_conditions(DIGITS), ids=lambda c: f"{c.rate_hz}Hz")
def test_other_sample_rates_are_resampled(tmp_path, cond: Condition) -> None:
    tape = build_tape([cond], SEED)
    path = write_wav(tmp_path / f"r{cond.rate_hz}.wav", tape.pcm("linear"), cond.rate_hz)
    result = score(tape, cli_decode(path))[cond.name]
    assert result.passed, result.describe()


def test_the_tape_holds_every_rule_for_every_key() -> None:
    """Each rule of issue 2 is on the tape on both sides of its limit, for all 16 keys."""
    rules: dict[str, set[Expect]] = {}
    for cond in CONDITIONS:
        rules.setdefault(cond.rule, set()).add(cond.expect)
        if cond.rule not in ("sequence",):
            assert set(DIGITS) <= {t.digit for t in cond.tones}, cond.name
    for rule in ("deviation", "twist", "duration", "level", "snr", "pause"):
        assert Expect.DETECT in rules[rule], rule
    for rule in ("deviation", "twist", "duration"):
        assert Expect.REJECT in rules[rule], rule
    assert {c.name for c in CONDITIONS if c.rule == "sequence"} >= {f"repeat {k * 4}" for k in DIGITS}


# The tape itself: a battery is only as good as the signals it plays.

def _spectrum_peak_hz(x: np.ndarray, lo_hz: float, hi_hz: float, rate: int = 8000) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), 1 << 18))
    freqs = np.fft.rfftfreq(1 << 18, 1 / rate)
    band = (freqs >= lo_hz) & (freqs <= hi_hz)
    return float(freqs[band][np.argmax(spec[band])])


def _tone_samples(tape: Tape, p: Placed) -> np.ndarray:
    a, b = int(round(p.start_ms * 8)), int(round(p.end_ms * 8))
    return tape.samples[a:b]


def test_rendered_deviation_twist_and_snr_are_what_the_rows_say() -> None:
    conds = [
        Condition("dev", "deviation", Expect.DETECT,
                  (Tone("D", 200.0, low_offset_pct=q24_offset_pct(941.0, -1), high_offset_pct=-3.5),)),
        Condition("twist", "twist", Expect.DETECT, (Tone("5", 200.0, -25.0, -8.0),)),
        Condition("snr", "snr", Expect.DETECT, (Tone("9", 200.0, gap_after_ms=400.0),), snr_db=15.0),
    ]
    tape = build_tape(conds, 3)
    dev, twist, snr = tape.placed
    x = _tone_samples(tape, dev)
    assert abs(_spectrum_peak_hz(x, 850, 1000) - (941.0 * 0.985 - 2.0)) < 0.5
    assert abs(_spectrum_peak_hz(x, 1500, 1700) - 1633.0 * 0.965) < 0.5
    x = _tone_samples(tape, twist)
    t = np.arange(len(x)) / 8000
    low, high = (abs(np.sum(x * np.exp(-2j * np.pi * f * t))) for f in DTMF_FREQS_HZ["5"])
    assert abs(20 * np.log10(high / low) + 8.0) < 0.1
    assert abs(20 * np.log10(low / len(x) * 2 / 32767) + 3.14 + 25.0) < 0.1  # -25 dBm0 (dtmf.tones scale)
    tone = _tone_samples(tape, snr)
    a, b = (int(v * 8) for v in tape.spans_ms["snr"])
    noise = tape.samples[int(snr.end_ms * 8) + 80:b]
    assert abs(10 * np.log10(np.mean(tone ** 2) / np.mean(noise ** 2)) - 15.0) < 0.5
    assert tape.samples[a:int(snr.start_ms * 8)].std() > 0  # noise before the tone too


def test_dropout_echo_and_dc_offset_are_rendered() -> None:
    conds = [
        Condition("drop", "impairment", Expect.DETECT, (Tone("1", 80.0, dropout_ms=10.0),)),
        Condition("echo", "impairment", Expect.DETECT, (Tone("2", 60.0),), echo=(40.0, -15.0)),
        Condition("dc", "impairment", Expect.DETECT, (Tone("3", 60.0),), dc_offset=3000.0),
    ]
    tape = build_tape(conds, 4)
    drop, echo, dc = tape.placed
    x = _tone_samples(tape, drop)
    zero_run = max(len(r) for r in np.split(x, np.flatnonzero(x != 0)) if len(r)) - 1
    assert zero_run == 80
    end = int(round(echo.end_ms * 8))
    tail = tape.samples[end:end + 320]
    assert 20 * np.log10(np.abs(tail).max() / np.abs(_tone_samples(tape, echo)).max()) == pytest.approx(-15, abs=1)
    a, _ = (int(v * 8) for v in tape.spans_ms["dc"])
    assert tape.samples[a] == 3000.0 and abs(_tone_samples(tape, dc).mean() - 3000.0) < 100


# The scorer: it must fail a receiver that misses, adds, splits or mistakes digits.

def _one_row_tape() -> Tape:
    conds = [
        Condition("must", "x", Expect.DETECT, (Tone("7"), Tone("8"))),
        Condition("must-not", "x", Expect.REJECT, (Tone("9", 20.0),)),
        Condition("may", "x", Expect.EITHER, (Tone("0", 30.0),)),
    ]
    return build_tape(conds, 5)


def _at(p: Placed, digit: str | None = None, shift_ms: float = 2.0) -> Detection:
    return Detection(digit or p.digit, p.start_ms + shift_ms, p.end_ms + shift_ms)


def test_scorer_passes_the_right_answers() -> None:
    tape = _one_row_tape()
    seven, eight, nine, zero = tape.placed
    for dets in ([_at(seven), _at(eight)], [_at(seven), _at(eight), _at(zero)]):
        res = score(tape, dets)
        assert [r.passed for r in res.values()] == [True, True, True]
    assert score(tape, [_at(seven), _at(eight)])["must"].n_detected == 2


@pytest.mark.parametrize("wrong", ["missed", "wrong digit", "split", "false digit", "reject detected",
                                   "either split"])
def test_scorer_fails_each_kind_of_wrong_answer(wrong: str) -> None:
    tape = _one_row_tape()
    seven, eight, nine, zero = tape.placed
    dets = {
        "missed": [_at(seven)],
        "wrong digit": [_at(seven), _at(eight, "5")],
        "split": [_at(seven), Detection("8", eight.start_ms, eight.start_ms + 20),
                  Detection("8", eight.start_ms + 30, eight.end_ms)],
        "false digit": [_at(seven), _at(eight), Detection("4", eight.end_ms + 120, eight.end_ms + 170)],
        "reject detected": [_at(seven), _at(eight), _at(nine)],
        "either split": [_at(seven), _at(eight), Detection("0", zero.start_ms, zero.start_ms + 10),
                         Detection("0", zero.start_ms + 15, zero.end_ms)],
    }[wrong]
    res = score(tape, dets)
    assert not all(r.passed for r in res.values())
