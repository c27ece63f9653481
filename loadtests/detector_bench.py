"""Benchmark: the DTMF bank against spandsp's dtmf_rx on the same audio, in the same run.

Prints samples per CPU-second (time.process_time, BLAS pinned to one thread) for
the bank at N = 1, 10, 100, 1000 streams of 160-sample frames, next to spandsp
(C, whole buffers, and fed frame by frame through ctypes; the repetitions of the
two interleaved, the best of each kept); detection latency
(onset to decision) p50/p99 for both; a Mitel-style accuracy battery for both;
and false digits per hour on the speech and music that Debian's Asterisk sound
packages ship (when installed).

    python3 loadtests/detector_bench.py [--quick]
    python3 loadtests/detector_bench.py --ab REV [--ab-streams 100] [--ab-rounds 15]
    python3 loadtests/detector_bench.py --streams 100 --throughput-only

--ab compares the working tree's dtmf/detector.py with the one at git revision REV
in the same process: both banks are fed the same frames call by call (interleaved,
so the machine's load hits both alike), each call's CPU time is the minimum over
the rounds, and the events must be identical.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported: one BLAS thread

import argparse  # noqa: E402
import ctypes  # noqa: E402
import glob  # noqa: E402
import importlib.util  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import wave  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "loadtests")]

from dtmf.detector import DetectorBank, DigitDetected, DtmfDetector  # noqa: E402
from dtmf.g711 import DECODE_TABLES, ENCODE_TABLES  # noqa: E402
from dtmf.tones import DIGITS, DTMF_FREQS_HZ, dtmf_tone, to_int16  # noqa: E402
from spandsp_rx import SpandspDtmfRx, load_spandsp, spandsp_decode  # noqa: E402

RATE = 8000
FRAME = 160
SPEECH_GLOB = "/usr/share/asterisk/sounds/en_US_f_Allison/**/*.wav"
MUSIC_GLOB = "/usr/share/asterisk/moh/*.wav"


def g711(signal: np.ndarray, law: str = "PCMU") -> np.ndarray:
    x = to_int16(signal)
    return DECODE_TABLES[law][ENCODE_TABLES[law][x.view(np.uint16)]]


def read_wav(path: str) -> np.ndarray:
    with wave.open(path) as w:
        if w.getframerate() != RATE or w.getsampwidth() != 2 or w.getnchannels() != 1:
            return np.zeros(0, dtype=np.int16)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def corpus(pattern: str) -> tuple[list[str], list[np.ndarray]]:
    files = sorted(glob.glob(pattern, recursive=True))
    return files, [read_wav(f) for f in files]


# ---------------------------------------------------------------- throughput

def stream_pool(n_pool: int, seconds: float, rng: np.random.Generator, background: np.ndarray,
                gap_min: int = 4000, gap_max: int = 24000, keyed: bool = True) -> list[tuple[np.ndarray, str]]:
    """Streams of speech/music background with a DTMF digit keyed every 0.5-3 s (or none)."""
    n = int(seconds * RATE)
    pool = []
    for _ in range(n_pool):
        if background.size > n:
            start = int(rng.integers(0, background.size - n))
            sig = background[start:start + n].astype(np.float64) * 0.5
        else:
            sig = rng.standard_normal(n) * 100.0
        pos = int(rng.integers(400, 4000)) if keyed else n
        digits = ""
        while pos + 1600 < n:
            digit = DIGITS[rng.integers(16)]
            tone = dtmf_tone(digit, float(rng.integers(50, 120)), float(rng.uniform(-20, -4)),
                             phase_rad=tuple(rng.uniform(0, 2 * np.pi, 2)))
            sig[pos:pos + len(tone)] = tone + sig[pos:pos + len(tone)] * 0.05
            digits += digit
            pos += len(tone) + int(rng.integers(gap_min, gap_max))
        pool.append((g711(sig), digits))
    return pool


def bank_rate(audio: np.ndarray, reps: int) -> float:
    """Best samples per CPU-second of the bank over `audio` (N, L) in 160-sample frames.

    Each call gets one contiguous (N, 160) array, as the relay builds it from the
    packets that arrived together.
    """
    n_streams, length = audio.shape
    n_frames = length // FRAME
    packets = np.ascontiguousarray(
        audio[:, :n_frames * FRAME].reshape(n_streams, n_frames, FRAME).transpose(1, 0, 2))
    best = 0.0
    for _ in range(reps):
        bank = DetectorBank(n_streams)
        slots = np.array([bank.add_stream() for _ in range(n_streams)])
        t0 = time.process_time()
        for f in range(n_frames):
            bank.process(slots, packets[f])
        dt = time.process_time() - t0
        best = max(best, n_streams * n_frames * FRAME / dt)
    return best


def spandsp_rates(audio: np.ndarray, reps: int) -> tuple[float, float]:
    """spandsp samples per CPU-second: whole buffers (pure C), and 160-sample frames via ctypes."""
    lib = load_spandsp()
    n_streams, length = audio.shape
    audio = np.ascontiguousarray(audio)
    ptr = audio.ctypes.data
    best_whole = best_frames = 0.0
    for _ in range(reps):
        states = [SpandspDtmfRx() for _ in range(n_streams)]
        raw = [s._state for s in states]  # noqa: SLF001 - the bare C context, for timing only
        t0 = time.process_time()
        for i, st in enumerate(raw):
            lib.dtmf_rx(st, ctypes.cast(ptr + 2 * i * length, ctypes.POINTER(ctypes.c_int16)), length)
        best_whole = max(best_whole, n_streams * length / (time.process_time() - t0))
        for s in states:
            s.close()
        states = [SpandspDtmfRx() for _ in range(n_streams)]
        raw = [s._state for s in states]  # noqa: SLF001
        pointers = [[ctypes.cast(ptr + 2 * (i * length + f), ctypes.POINTER(ctypes.c_int16))
                     for f in range(0, length - FRAME + 1, FRAME)] for i in range(n_streams)]
        rx = lib.dtmf_rx
        t0 = time.process_time()
        for f in range(len(pointers[0])):
            for i, st in enumerate(raw):
                rx(st, pointers[i][f], FRAME)
        best_frames = max(best_frames, n_streams * length / (time.process_time() - t0))
        for s in states:
            s.close()
    return best_whole, best_frames


def stream_accuracy(pool: list[tuple[np.ndarray, str]]) -> tuple[int, int, int, int]:
    """Keyed digits recovered exactly (as whole sequences per stream) by us and by spandsp."""
    ours = sp = 0
    ours_digits = sp_digits = 0
    for samples, keyed in pool:
        det = DtmfDetector()
        got = "".join(e.digit for e in det.process(samples) + det.flush() if isinstance(e, DigitDetected))
        sp_got = "".join(d.digit for d in spandsp_decode(samples))
        ours += got == keyed
        sp += sp_got == keyed
        ours_digits += sum(a == b for a, b in zip(got, keyed)) if len(got) == len(keyed) else 0
        sp_digits += sum(a == b for a, b in zip(sp_got, keyed)) if len(sp_got) == len(keyed) else 0
    return ours, sp, ours_digits, sp_digits


def detector_at(rev: str) -> object:
    """dtmf/detector.py as it was at git revision `rev`, loaded as a separate module."""
    source = subprocess.check_output(["git", "-C", str(ROOT), "show", f"{rev}:dtmf/detector.py"], text=True)
    path = Path(tempfile.mkdtemp()) / "detector_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("detector_at_rev", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def ab_per_call(banks: list, audio: np.ndarray, rounds: int) -> tuple[list[float], bool]:
    """Mean over calls of each call's minimum CPU time (s) per bank class, interleaved; same events?"""
    n_streams, length = audio.shape
    n_frames = length // FRAME
    packets = np.ascontiguousarray(
        audio[:, :n_frames * FRAME].reshape(n_streams, n_frames, FRAME).transpose(1, 0, 2))
    best = np.full((len(banks), n_frames), np.inf)
    same = True
    cpu = time.process_time_ns
    for _ in range(rounds):
        live = [make(n_streams) for make in banks]
        slots = [np.array([b.add_stream() for _ in range(n_streams)]) for b in live]
        events: list[list] = [[] for _ in live]
        for f in range(n_frames):
            for i, bank in enumerate(live):
                t0 = cpu()
                got = bank.process(slots[i], packets[f])
                dt = cpu() - t0
                events[i] += got
                best[i, f] = min(best[i, f], dt)
        keys = [[(type(e).__name__, e.slot, e.digit, e.start_sample, vars(e).get("decided_sample"),
                  vars(e).get("end_sample")) for e in ev] for ev in events]
        same &= all(k == keys[0] for k in keys)
    return [float(v) for v in best.mean(axis=1) / 1e9], same


def run_ab(rev: str, n_streams: int, rounds: int, seconds: float, pools: list[tuple[str, list]]) -> None:
    old = detector_at(rev)
    print(f"A/B at N={n_streams}: dtmf/detector.py at {rev} against the working tree, {FRAME}-sample frames, "
          f"interleaved call by call, each call's CPU time the min of {rounds} rounds "
          f"(load average {open('/proc/loadavg').read().split()[0]})")
    for title, streams in pools:
        audio = np.stack([streams[i % len(streams)][0] for i in range(n_streams)])
        (t_old, t_new), same = ab_per_call([old.DetectorBank, DetectorBank], audio, rounds)
        samples = n_streams * FRAME
        print(f"  {title}: {rev} {t_old * 1e6:6.1f} us/call ({samples / t_old / 1e6:5.1f}M/s), "
              f"working tree {t_new * 1e6:6.1f} us/call ({samples / t_new / 1e6:5.1f}M/s): "
              f"{t_old / t_new:4.2f}x, {'identical events' if same else 'EVENTS DIFFER'}")


# ---------------------------------------------------------------- accuracy battery

def battery() -> list[tuple[str, bool | None, dict]]:
    """(condition, should_detect or None for Q.24's undefined zone, tone arguments): Mitel-style."""
    rows: list[tuple[str, bool | None, dict]] = [("nominal -10 dBm0, 60 ms", True, {})]
    for pct, expect in ((1.5, True), (2.5, None), (3.5, False), (5.0, False)):
        for sign in (1, -1):
            for group in ("low", "high"):
                hz = (" + 2 Hz" if sign > 0 else " - 2 Hz") if expect else ""
                rows.append((f"{group} {sign * pct:+.1f} %{hz}", expect, {"offset": (group, sign * pct, bool(expect))}))
    rows += [(f"twist {t:+.0f} dB", -8 <= t <= 4, {"twist_db": t}) for t in (-8, 4, -10, 6)]
    rows += [(f"level {lv:+.0f} dBm0", {0: True, -25: True, -30: None, -36: False}[lv], {"level_dbm0": lv})
             for lv in (0, -25, -30, -36)]
    rows += [(f"SNR {snr:.0f} dB", True, {"snr_db": snr}) for snr in (20, 15, 12)]
    rows += [("SNR 15 dB at -25 dBm0", True, {"snr_db": 15, "level_dbm0": -25})]
    rows += [(f"duration {d} ms", {40: True, 30: None, 23: False, 20: False}[d], {"duration_ms": d})
             for d in (40, 30, 23, 20)]
    return rows


def battery_signal(digit: str, args: dict, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    kw = {"level_dbm0": args.get("level_dbm0", -10.0), "twist_db": args.get("twist_db", 0.0)}
    if "offset" in args:
        group, pct, plus_2hz = args["offset"]
        nominal = DTMF_FREQS_HZ[digit][0 if group == "low" else 1]
        pct = pct + (np.sign(pct) * 200.0 / nominal if plus_2hz else 0.0)
        kw[f"{group}_offset_pct"] = pct
    tone = dtmf_tone(digit, args.get("duration_ms", 60.0), phase_rad=tuple(rng.uniform(0, 2 * np.pi, 2)), **kw)
    start = int(rng.integers(400, 800))
    sig = np.zeros(start + len(tone) + 1200)
    sig[start:start + len(tone)] = tone
    if "snr_db" in args:
        sig += rng.standard_normal(len(sig)) * np.sqrt(np.mean(tone ** 2) / 10 ** (args["snr_db"] / 10))
    return g711(sig, "PCMU" if rng.random() < 0.5 else "PCMA"), start


def run_battery(reps: int, with_spandsp: bool) -> tuple[list[str], list[float], list[float]]:
    """Table lines, and the onset-to-decision latencies (ms) of both receivers on accept rows."""
    rng = np.random.default_rng(7)
    lines = [f"{'condition':28s} {'expect':>7s} {'tonewall':>9s} {'spandsp':>8s}   (% detected)"]
    lat_ours: list[float] = []
    lat_sp: list[float] = []
    score = [0, 0, 0]
    for name, expect, args in battery():
        found_ours = found_sp = trials = 0
        for digit in DIGITS * reps:
            samples, start = battery_signal(digit, args, rng)
            det = DtmfDetector()
            found = [e for e in det.process(samples) + det.flush() if isinstance(e, DigitDetected)]
            right = [e.digit for e in found] == [digit]
            found_ours += right
            if right:
                lat_ours.append((found[0].decided_sample - start) / 8.0)
            if with_spandsp:
                sp = spandsp_decode(samples, chunk=8)
                sp_right = [d.digit for d in sp] == [digit]
                found_sp += sp_right
                if sp_right:
                    lat_sp.append((sp[0].decided_sample - start) / 8.0)
            trials += 1
        if expect is not None:
            score[0] += found_ours if expect else trials - found_ours
            score[1] += found_sp if expect else trials - found_sp
            score[2] += trials
        sp_cell = f"{100 * found_sp / trials:7.1f}%" if with_spandsp else "      -"
        label = {True: "detect", False: "reject", None: "either"}[expect]
        lines.append(f"{name:28s} {label:>7s} {100 * found_ours / trials:8.1f}% {sp_cell}")
    lines.append(f"{'right answers (detect/reject)':28s} {'':7s} {100 * score[0] / score[2]:8.1f}% "
                 f"{100 * score[1] / score[2] if with_spandsp else 0:7.1f}%")
    return lines, lat_ours, lat_sp


# ---------------------------------------------------------------- talk-off

def talk_off(pattern: str, with_spandsp: bool) -> tuple[int, float, int, int]:
    """(files, minutes, false digits ours, false digits spandsp) over a corpus."""
    files, audio = corpus(pattern)
    minutes = sum(len(a) for a in audio) / RATE / 60
    ours = sp = 0
    for samples in audio:
        det = DtmfDetector()
        ours += sum(isinstance(e, DigitDetected) for e in det.process(samples) + det.flush())
        if with_spandsp:
            sp += len(spandsp_decode(samples, chunk=8000))
    return len(files), minutes, ours, sp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and shorter audio")
    parser.add_argument("--streams", default="1,10,100,1000")
    parser.add_argument("--ab", metavar="REV", help="A/B the bank against dtmf/detector.py at a git revision")
    parser.add_argument("--ab-streams", type=int, default=100)
    parser.add_argument("--ab-rounds", type=int, default=15)
    parser.add_argument("--throughput-only", action="store_true",
                        help="the throughput tables only (no keyed-stream accuracy, battery, latency, talk-off)")
    args = parser.parse_args()
    have_spandsp = load_spandsp() is not None
    seconds = 2.0 if args.quick else 4.0
    reps = 1 if args.quick else 3
    rng = np.random.default_rng(1)
    _, speech = corpus(SPEECH_GLOB)
    _, music = corpus(MUSIC_GLOB)
    background = np.concatenate(speech + music) if speech or music else np.zeros(0)
    pool = stream_pool(32, seconds, rng, background)
    print(f"audio: {len(pool)} distinct {seconds:.0f} s streams, "
          f"{'Asterisk speech+music' if background.size else 'white noise'} background with keyed digits, G.711 mu-law")
    speech_only = stream_pool(32, seconds, rng, background, keyed=False)
    if args.ab:
        noise = [(g711(rng.standard_normal(int(seconds * RATE)) * 300.0), "")]
        run_ab(args.ab, args.ab_streams, args.ab_rounds, seconds,
               [("speech/music only", speech_only), ("digit keyed every 0.5-3 s", pool),
                ("white noise (gate fails)", noise)])
        return
    for title, streams in (("speech/music only (no digits)", speech_only),
                           ("speech/music with a digit keyed every 0.5-3 s on every stream", pool)):
        print(f"\nthroughput on {title}: samples per CPU-second, 160-sample frames, one BLAS thread")
        print(f"{'N':>5s} {'bank':>10s} {'spandsp C':>10s} {'ratio':>6s} {'spandsp/ctypes':>15s} {'ratio':>6s}")
        for n in (int(v) for v in args.streams.split(",")):
            audio = np.stack([streams[i % len(streams)][0] for i in range(n)])
            # Interleaved repetitions, the best of each: a neighbour's load hits both receivers alike.
            ours = whole = frames = 0.0
            for _ in range(reps):
                ours = max(ours, bank_rate(audio, 1))
                if have_spandsp:
                    rates = spandsp_rates(audio, 1)
                    whole, frames = max(whole, rates[0]), max(frames, rates[1])
            if have_spandsp:
                print(f"{n:5d} {ours / 1e6:9.1f}M {whole / 1e6:9.1f}M {ours / whole:5.2f}x "
                      f"{frames / 1e6:14.1f}M {ours / frames:5.2f}x")
            else:
                print(f"{n:5d} {ours / 1e6:9.1f}M {'-':>10s}")
    if args.throughput_only:
        return
    ok, sp_ok, digits, sp_digits = stream_accuracy(pool)
    keyed = sum(len(k) for _, k in pool)
    print(f"keyed over speech/music: tonewall {ok}/{len(pool)} streams exact ({digits}/{keyed} digits), "
          f"spandsp {sp_ok}/{len(pool)} ({sp_digits}/{keyed} digits)")

    lines, lat_ours, lat_sp = run_battery(1 if args.quick else 4, have_spandsp)
    print("\naccuracy battery (16 digits x reps per row, random phase and offset, G.711 both laws)")
    print("\n".join(lines))
    print("\ndetection latency, tone onset to decision (ms)")
    print(f"  tonewall p50 {np.percentile(lat_ours, 50):.1f}  p99 {np.percentile(lat_ours, 99):.1f}  (n={len(lat_ours)})")
    if lat_sp:
        print(f"  spandsp  p50 {np.percentile(lat_sp, 50):.1f}  p99 {np.percentile(lat_sp, 99):.1f}  "
              f"(n={len(lat_sp)}, fed 8 samples per call)")

    print("\ntalk-off (false digits on real audio)")
    for name, pattern in (("speech", SPEECH_GLOB), ("music", MUSIC_GLOB)):
        n_files, minutes, ours, sp = talk_off(pattern, have_spandsp)
        if not n_files:
            print(f"  {name}: no files at {pattern} (apt install asterisk-core-sounds-en-wav asterisk-moh-opsound-wav)")
            continue
        per_hour = 60.0 / minutes
        print(f"  {name}: {n_files} files, {minutes:.1f} min ({pattern}): tonewall {ours} "
              f"({ours * per_hour:.1f}/h), spandsp {sp} ({sp * per_hour:.1f}/h)")


if __name__ == "__main__":
    main()
