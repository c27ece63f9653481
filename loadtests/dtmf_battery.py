"""The DTMF receiver battery an outside lab would run, in full: pass/fail table, spandsp beside it, boundaries.

    python3 loadtests/dtmf_battery.py              # 4 passes of the 16 keys per row (~1-2 min)
    python3 loadtests/dtmf_battery.py --reps 1     # quick look
    python3 loadtests/dtmf_battery.py --no-bisect --no-talkoff  # table only

For every rule of issue 2 (ITU-T Q.24 as commonly implemented) the tape of
`tests/dtmf_battery/tape.py` is rendered once per law (linear 16-bit, G.711
mu-law and A-law round trips) as its own 8 kHz WAV, one file per rule and law,
and decoded as a stranger would: `python -m dtmf decode FILE --json` in a
subprocess. The same samples go through spandsp's dtmf_rx (Debian libspandsp2,
`loadtests/spandsp_rx.py`, 160-sample frames); spandsp reports no onset, so its
digit spans the 30 ms before its decision to its end report. A cell is the
percentage of tones the receiver got right (detect: exactly its digit once;
reject: nothing), `!` when it also reported digits where no tone was. On
`either` rows (between Q.24's accept and reject limits, not scored) the cell is
the percentage of tones reported as their digit, `x` when a tone got a wrong
digit or was split in two.

Then, for each limit, the boundary the project's receiver really implements,
bisected: the last value at which every tone is detected and the first at which
none is (16 keys x 2, random phases and onsets, mu-law). The bisection calls
`dtmf.__main__.decode_events` on a written WAV, the code the CLI runs, in
process (a subprocess per step would only add start-up time).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "loadtests")]

import numpy as np  # noqa: E402

from dtmf.__main__ import decode_events, read_wav  # noqa: E402
from dtmf.detector import DigitEnded  # noqa: E402
from dtmf.tones import DIGITS  # noqa: E402
from tests.dtmf_battery.tape import (  # noqa: E402
    LAWS,
    Condition,
    ConditionResult,
    Detection,
    Expect,
    Tape,
    Tone,
    battery,
    build_tape,
    cli_decode,
    resampling_conditions,
    score,
    with_keys,
    write_wav,
)

SPANDSP_ONSET_MS = 30.0
"""spandsp reports no onset: its digit is taken to start this long before its decision (its median latency)."""


def spandsp_detections(samples: np.ndarray) -> list[Detection] | None:
    """Digits spandsp's dtmf_rx finds, as spans in ms; None when libspandsp is not installed."""
    import spandsp_rx

    if spandsp_rx.load_spandsp() is None:
        return None
    out = []
    for d in spandsp_rx.spandsp_decode(samples):
        end = d.end_sample if d.end_sample is not None else d.decided_sample
        out.append(Detection(d.digit, d.decided_sample / 8 - SPANDSP_ONSET_MS, max(end, d.decided_sample) / 8))
    return out


def _cell(r: ConditionResult | None, expect: Expect) -> str:
    if r is None:
        return "   n/a"
    # Every answer but a wrong one is right on an `either` row: show how often the digit was reported instead.
    pct = 100.0 * (r.n_detected if expect is Expect.EITHER else r.n_right) / len(r.tones)
    wrong = any(not t.passed for t in r.tones)
    return f"{pct:5.1f}{'!' if r.false_digits else 'x' if wrong and expect is Expect.EITHER else ' '}"


def run_table(reps: int, seed: int, folder: Path) -> tuple[list, float]:
    """Decode every rule's tape per law with the CLI and spandsp; print the table; return the rows."""
    by_rule: dict[str, list[Condition]] = {}
    for cond in battery():
        by_rule.setdefault(cond.rule, []).append(with_keys(cond, reps))
    rows = []
    cli_s = 0.0
    for i, (rule, conds) in enumerate(by_rule.items()):
        tape = build_tape(conds, seed + i)
        per_law = {}
        for law in LAWS:
            path = write_wav(folder / f"{rule}-{law}.wav", tape.pcm(law), tape.rate_hz)
            t0 = time.perf_counter()
            ours = score(tape, cli_decode(path))
            cli_s += time.perf_counter() - t0
            wav = read_wav(str(path))
            theirs_det = spandsp_detections(np.array(wav.samples()))
            theirs = score(tape, theirs_det) if theirs_det is not None else {}
            per_law[law] = (ours, theirs)
        for cond in conds:
            rows.append((rule, cond, {law: (per_law[law][0][cond.name], per_law[law][1].get(cond.name))
                                      for law in LAWS}))
    for j, cond in enumerate(resampling_conditions(DIGITS)):
        cond = with_keys(cond, reps)
        tape = build_tape([cond], seed + 100 + j)
        path = write_wav(folder / f"rate-{cond.rate_hz}.wav", tape.pcm("linear"), cond.rate_hz)
        ours = score(tape, cli_decode(path))[cond.name]
        rows.append((cond.rule, cond, {"linear": (ours, None), "PCMU": (None, None), "PCMA": (None, None)}))
    return rows, cli_s


def print_table(rows: list) -> None:
    head = (f"{'rule':<10} {'condition':<52} {'expect':<6} {'tones':>5}  {'tonewall lin / mu / A':<22}  "
            f"{'spandsp lin / mu / A':<22} verdict")
    print(head)
    print("-" * len(head))
    totals = {"tonewall": [0, 0], "spandsp": [0, 0]}
    failed = []
    for rule, cond, cells in rows:
        ours = [cells[law][0] for law in LAWS]
        theirs = [cells[law][1] for law in LAWS]
        n_tones = len(cond.tones)
        verdict = "pass" if all(r is None or r.passed for r in ours) else "FAIL"
        if cond.expect is Expect.EITHER:
            verdict = "info" if verdict == "pass" else "FAIL"
        if verdict == "FAIL":
            failed.append(cond.name)
        if cond.expect is not Expect.EITHER:
            for name, results in (("tonewall", ours), ("spandsp", theirs)):
                for r in results:
                    if r is not None:
                        totals[name][0] += r.n_right
                        totals[name][1] += len(r.tones)
        ours_s, theirs_s = (" ".join(_cell(r, cond.expect) for r in rs) for rs in (ours, theirs))
        print(f"{rule:<10} {cond.name[:52]:<52} {cond.expect.value:<6} {n_tones:>5}  "
              f"{ours_s:<22}  {theirs_s:<22} {verdict}")
    print()
    for name, (right, n) in totals.items():
        if n:
            print(f"right answers on scored rows (detect/reject), {name}: {right}/{n} = {100.0 * right / n:.1f} %")
    print(f"tonewall rows failing: {len(failed)}: {', '.join(failed) if failed else 'none'}")
    print_timing(rows)


def print_timing(rows: list) -> None:
    """How far tonewall's reported start_ms and end_ms are from the tone edges, per rule (detect rows)."""
    errs: dict[str, list[tuple[float, float]]] = {}
    for rule, cond, cells in rows:
        if cond.expect is not Expect.DETECT:
            continue
        for law in LAWS:
            r = cells[law][0]
            for t in r.tones if r is not None else ():
                if t.got == t.placed.digit:
                    (start, end), = t.spans_ms
                    errs.setdefault(rule, []).append((start - t.placed.start_ms, end - t.placed.end_ms))
    print("\ntonewall start_ms / end_ms minus the true tone edge (detect rows, tones reported right):")
    print(f"  {'rule':<12} {'tones':>6} {'start p50':>10} {'|start| max':>12} {'end p50':>9} {'|end| max':>10}")
    for rule, e in errs.items():
        a = np.array(e)
        print(f"  {rule:<12} {len(a):>6} {np.median(a[:, 0]):>+10.2f} {np.abs(a[:, 0]).max():>12.2f} "
              f"{np.median(a[:, 1]):>+9.2f} {np.abs(a[:, 1]).max():>10.2f}")


# ---------------------------------------------------------------------------------------------
# Talk-off: real speech and music shipped by Debian packages, through the CLI and spandsp.

TALKOFF_CORPORA = (
    ("speech: asterisk-core-sounds-en-wav", "/usr/share/asterisk/sounds/en_US_f_Allison/**/*.wav"),
    ("music: asterisk-moh-opsound-wav", "/usr/share/asterisk/moh/*.wav"),
)


def run_talkoff(folder: Path) -> None:
    """False digits on each corpus (files joined with 200 ms of silence), per law, for both receivers."""
    import glob

    print("\ntalk-off (false digits; every file of the corpus, joined with 200 ms of silence):")
    print(f"  {'corpus':<40} {'minutes':>7}  {'tonewall lin / mu / A':<22}  spandsp lin / mu / A")
    for label, pattern in TALKOFF_CORPORA:
        files = sorted(glob.glob(pattern, recursive=True))
        parts = []
        for f in files:
            wav = read_wav(f)
            if wav.rate_hz == 8000:
                parts += [np.array(wav.samples()), np.zeros(1600, dtype=np.int16)]
        if not parts:
            print(f"  {label:<40} not installed")
            continue
        audio = Tape(8000, np.concatenate(parts).astype(np.float64))
        ours, theirs = [], []
        for law in LAWS:
            pcm = audio.pcm(law)
            path = write_wav(folder / f"talkoff-{law}.wav", pcm, 8000)
            ours.append(str(len(cli_decode(path))))
            dets = spandsp_detections(pcm)
            theirs.append("n/a" if dets is None else str(len(dets)))
        minutes = len(audio.samples) / 8000 / 60
        print(f"  {label:<40} {minutes:>7.1f}  {' / '.join(ours):<22}  {' / '.join(theirs)}")


# ---------------------------------------------------------------------------------------------
# Boundaries the receiver implements.

def detected_share(conds: list[Condition], folder: Path, seed: int, receiver: str, law: str = "PCMU") -> float:
    """Share of tones reported as exactly their own digit by `receiver` ("tonewall": the CLI's decode path)."""
    tape = build_tape(conds, seed)
    pcm = tape.pcm(law)
    if receiver == "tonewall":
        path = write_wav(folder / "bisect.wav", pcm, tape.rate_hz)
        dets = [Detection(e.digit, e.start_sample / 8, e.end_sample / 8)
                for e in decode_events(str(path)) if isinstance(e, DigitEnded)]
    else:
        dets = spandsp_detections(pcm) or []
    res = score(tape, dets)
    n = sum(len(r.tones) for r in res.values())
    return sum(r.n_detected for r in res.values()) / n


def bisect(pred: Callable[[float], bool], good: float, bad: float, tol: float) -> float:
    """The last value from `good` towards `bad` where pred holds (pred(good) true, pred(bad) false)."""
    if not pred(good) or pred(bad):
        return float("nan")
    while abs(bad - good) > tol:
        mid = (good + bad) / 2
        if pred(mid):
            good = mid
        else:
            bad = mid
    return good


def boundaries(folder: Path, seed: int, receiver: str, reps: int = 2) -> list[tuple[str, str, float, float, str]]:
    """(limit, unit, last value where every tone is detected, last where any is, rule) per limit."""
    keys = DIGITS * reps

    def share_of(conds: list[Condition]) -> float:
        return detected_share(conds, folder, seed, receiver)

    def one(make: Callable[[str, float], Tone], **cond_kw) -> Callable[[float], float]:
        return lambda v: share_of([Condition("b", "b", Expect.DETECT, tuple(make(k, v) for k in keys),
                                                   **cond_kw)])

    specs: list[tuple[str, str, Callable[[float], float], float, float, float, str]] = []
    for group in ("low", "high"):
        for sign in (1, -1):
            s = "+" if sign > 0 else "-"
            specs.append((f"{group} group deviation {s}", "%",
                          one(lambda k, v, g=group, sg=sign: Tone(k, **{f"{g}_offset_pct": sg * v})),
                          0.0, 5.0, 0.02, "accept 1.5 % + 2 Hz, reject 3.5 %"))
    specs += [
        ("reverse twist (high louder)", "dB", one(lambda k, v: Tone(k, twist_db=v)), 0.0, 8.0, 0.05,
         "accept 4 dB, reject beyond"),
        ("normal twist (high weaker)", "dB", one(lambda k, v: Tone(k, twist_db=-v)), 0.0, 14.0, 0.05,
         "accept 8 dB, reject beyond"),
        ("reverse twist at 15 dB SNR", "dB", one(lambda k, v: Tone(k, twist_db=v), snr_db=15.0), 0.0, 8.0, 0.05,
         "accept 4 dB"),
        ("normal twist at 15 dB SNR", "dB", one(lambda k, v: Tone(k, twist_db=-v), snr_db=15.0), 0.0, 14.0, 0.05,
         "accept 8 dB"),
        ("duration (isolated tone)", "ms", one(lambda k, v: Tone(k, duration_ms=v)), 45.0, 10.0, 0.25,
         "accept 40 ms, reject < 20-23 ms"),
        ("level per tone", "dBm0", one(lambda k, v: Tone(k, level_dbm0=v)), -20.0, -50.0, 0.1,
         "accept 0 to -25 dBm0"),
        ("drop-out inside an 80 ms tone", "ms", one(lambda k, v: Tone(k, 80.0, dropout_ms=v)), 0.0, 40.0, 0.25,
         "one digit for short drop-outs"),
        ("SNR (white noise vs pair power)", "dB",
         lambda v: share_of([Condition("b", "b", Expect.DETECT, tuple(Tone(k) for k in keys), snr_db=v)]),
         30.0, 0.0, 0.1, "accept 15 dB"),
        ("DC offset, tones at -25 dBm0", "cnt",
         lambda v: share_of([Condition("b", "b", Expect.DETECT, tuple(Tone(k, level_dbm0=-25.0) for k in keys),
                                             dc_offset=v)]),
         0.0, 32767.0, 5.0, "not in Q.24"),
        ("DC offset, tones at -10 dBm0", "cnt",
         lambda v: share_of([Condition("b", "b", Expect.DETECT, tuple(Tone(k) for k in keys),
                                             dc_offset=v)]),
         0.0, 32767.0, 5.0, "not in Q.24"),
    ]

    def pause_share(v: float) -> float:
        tones = tuple(t for k in keys for t in (Tone(k, 40.0, gap_after_ms=v), Tone(k, 40.0)))
        return share_of([Condition("b", "b", Expect.DETECT, tones)])

    out = []
    for name, unit, share, good, bad, tol, rule in specs:
        always = bisect(lambda v: share(v) == 1.0, good, bad, tol)
        never = bisect(lambda v: share(v) > 0.0, good, bad, tol)
        out.append((name, unit, always, never, rule))
    # A pause either separates (both tones their digit) or bridges (one digit for the pair: share 0.5).
    always = bisect(lambda v: pause_share(v) == 1.0, 60.0, 0.0, 0.25)
    never = bisect(lambda v: pause_share(v) > 0.5, 60.0, 0.0, 0.25)
    out.append(("pause between two 40 ms tones of one key", "ms", always, never, "40 ms separates"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=4, help="passes of the 16 keys per row (default 4)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-bisect", action="store_true")
    parser.add_argument("--no-talkoff", action="store_true")
    args = parser.parse_args()
    print(f"load average before: {open('/proc/loadavg').read().split()[:3]}")
    cpu0 = os.times()
    with tempfile.TemporaryDirectory(prefix="dtmf-battery-") as tmp:
        folder = Path(tmp)
        rows, cli_s = run_table(args.reps, args.seed, folder)
        print(f"\nDTMF receiver battery: {args.reps} x 16 keys per row, random phases and onsets, seed {args.seed}; "
              f"CLI decode wall time {cli_s:.1f} s\n")
        print_table(rows)
        if not args.no_talkoff:
            run_talkoff(folder)
        if not args.no_bisect:
            print("\nboundaries the receivers implement (mu-law, 16 keys x 2, random phases and onsets; tonewall "
                  "through the CLI's decode path in process):")
            print(f"  {'limit':<42} {'tonewall 100 % .. 0 %':>24}  {'spandsp 100 % .. 0 %':>24}  rule")
            ours = boundaries(folder, args.seed, "tonewall")
            theirs = boundaries(folder, args.seed, "spandsp") if spandsp_detections(np.zeros(8)) is not None \
                else [(n, u, float("nan"), float("nan"), r) for n, u, _, _, r in ours]
            for (name, unit, always, never, rule), (_, _, s_always, s_never, _) in zip(ours, theirs):
                print(f"  {name:<42} {always:>9.2f} .. {never:>8.2f} {unit:<4} "
                      f"{s_always:>9.2f} .. {s_never:>8.2f} {unit:<4}  {rule}")
            print("  (100 %: every tone reported right up to this value; 0 %: none past it; nan: the swept range "
                  "does not reach that edge)")
    cpu1 = os.times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system) + (cpu1.children_user - cpu0.children_user) \
        + (cpu1.children_system - cpu0.children_system)
    print(f"\nCPU time (self + CLI subprocesses): {cpu:.1f} s; load average after: "
          f"{open('/proc/loadavg').read().split()[:3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
