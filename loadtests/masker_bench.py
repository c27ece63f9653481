"""Masker figures: CPU per call and per packet, speech and music masked during a capture, the leak measures.

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python3 loadtests/masker_bench.py [--against REV] [--calls-only]

`--against REV` also runs dtmf/masker.py as it was at git revision REV (loaded
from `git show`, nothing checked out) through the same cost, speech/music and
speech-mix measures, side by side, and checks that both give byte-identical
output on randomised calls (capture toggles, flushes, mask = "always", batches of
every size, all modes). `--calls-only` stops after the per-call costs. Recorded audio: Debian
asterisk-core-sounds-en-wav (speech) and asterisk-moh-opsound-wav (music on
hold); those sections are skipped when absent.

Bounded: each batch size runs for at most ~1 s of CPU and at most 2,000 batches;
the whole run takes about a minute of CPU per masker.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import dtmf.masker as current  # noqa: E402
from dtmf.detector import DigitDetected, DtmfDetector  # noqa: E402
from dtmf.g711 import ulaw_decode, ulaw_encode  # noqa: E402
from dtmf.tones import DIGITS, dtmf_tone, to_int16, white_noise  # noqa: E402
from tests.dtmf_masker.calls import (  # noqa: E402
    MUSIC_GLOB, SPEECH_GLOB, Call, Tone, classifier_accuracy, flat_fill_reference, leaked_ms, make_call,
    make_speech_call, mask_single, naive_mask, read_corpus, residual_db, speech_like, tone_free,
)

PACKET = 160


def load_revision(rev: str) -> ModuleType:
    """dtmf/masker.py at a git revision, as a module of its own."""
    text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:dtmf/masker.py"],
                          capture_output=True, check=True, text=True, timeout=30).stdout
    path = Path(tempfile.mkdtemp()) / "masker_at_rev.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"masker_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_bank(m: ModuleType, k: int, mode_name: str, tone_share: float = 0.1, max_batches: int = 2000,
               max_cpu_s: float = 1.0) -> float:
    """CPU microseconds per packet for batches of k rows, every slot in capture."""
    rng = np.random.default_rng(k)
    n_packets = 50
    audio = white_noise(n_packets * PACKET * k, -45, rng).reshape(k, -1)
    for s in range(int(k * tone_share) or 1):
        audio[s, 1000:1000 + 640] += dtmf_tone("5", 80, -10)
    frames = to_int16(audio).reshape(k, n_packets, PACKET)
    bank = m.MaskerBank(m.MaskMode(mode_name), capacity=k)
    slots = np.array([bank.add_stream() for _ in range(k)])
    for s in slots:
        bank.set_capture(int(s), True)
    done = 0
    t0 = time.process_time()
    while done < max_batches and time.process_time() - t0 < max_cpu_s:
        bank.process(slots, frames[:, done % n_packets])
        done += 1
    return (time.process_time() - t0) / (done * k) * 1e6


def call_rows(kind: str, k: int, n_packets: int, rng: np.random.Generator) -> np.ndarray:
    """(n_packets, k, 160) int16 rows for a bank in capture.

    quiet: relay_bench's payload (mu-law bytes 0xF0..0xFF, under the flag floor);
    capture: that, with 10 % of the callers keying digits (0..-25 dBm0, 40-120 ms);
    speech: recorded prompts on every row at their own level (None without the corpus).
    """
    if kind == "speech":
        speech = _speech()
        if speech is None:
            return None
        starts = rng.integers(0, len(speech) - n_packets * PACKET, k)
        x = np.stack([speech[a:a + n_packets * PACKET] for a in starts])
    else:
        x = ulaw_decode(rng.integers(0xF0, 0x100, k * n_packets * PACKET, dtype=np.uint8)).reshape(k, -1)
        if kind == "capture":
            x = x.astype(np.float64)
            for r in range(max(1, k // 10)):
                pos = int(rng.integers(0, 800))
                while pos < x.shape[1] - 1000:
                    tone = dtmf_tone(DIGITS[int(rng.integers(16))], float(rng.integers(40, 121)),
                                     float(rng.uniform(-25, 0)))
                    x[r, pos:pos + len(tone)] += tone
                    pos += len(tone) + int(rng.integers(400, 1600))
            x = ulaw_decode(ulaw_encode(to_int16(x)))
    return np.ascontiguousarray(x.reshape(k, n_packets, PACKET).transpose(1, 0, 2))


_SPEECH: list[np.ndarray | None] = []


def _speech() -> np.ndarray | None:
    if not _SPEECH:
        corpus = read_corpus(SPEECH_GLOB)
        _SPEECH.append(np.concatenate(corpus) if corpus else None)
    return _SPEECH[0]


def call_cost(m: ModuleType, rows: np.ndarray, mode_name: str) -> float:
    """CPU microseconds per `MaskerBank.process` call over `rows`, every slot in capture."""
    k = rows.shape[1]
    bank = m.MaskerBank(m.MaskMode(mode_name), capacity=k)
    slots = np.array([bank.add_stream() for _ in range(k)])
    for s in slots:
        bank.set_capture(int(s), True)
    for i in range(3):  # filler rows and the first held packets
        bank.process(slots, rows[i])
    t0 = time.process_time_ns()
    for i in range(3, len(rows)):
        bank.process(slots, rows[i])
    return (time.process_time_ns() - t0) / (len(rows) - 3) / 1e3


def bench_calls(maskers: list[tuple[str, ModuleType]], rounds: int = 5) -> None:
    """Per-call cost A/B: interleaved rounds (the order alternates), min of the rounds."""
    print(f"MaskerBank.process per call (CPU us, min of {rounds} interleaved rounds), capture on every row; "
          f"/proc/loadavg {_loadavg()}")
    names = [name for name, _ in maskers]
    print(f"{'workload':>8} {'mode':>13} {'k':>4} " + " ".join(f"{n:>12}" for n in names)
          + ("   ratio" if len(maskers) == 2 else "") + "   us/row")
    for kind in ("quiet", "capture", "speech"):
        for mode_name in ("flat", "comfort-noise"):
            for k in (1, 5, 22, 50, 256):
                rows = call_rows(kind, k, 120 if k <= 50 else 30, np.random.default_rng(k))
                if rows is None:
                    continue
                best = {n: float("inf") for n in names}
                for r in range(rounds):
                    for name, m in (maskers if r % 2 == 0 else maskers[::-1]):
                        best[name] = min(best[name], call_cost(m, rows, mode_name))
                ratio = f" {best[names[1]] / best[names[0]]:7.2f}" if len(maskers) == 2 else ""
                print(f"{kind:>8} {mode_name:>13} {k:>4} " + " ".join(f"{best[n]:12.1f}" for n in names)
                      + ratio + f" {best[names[0]] / k:8.2f}", flush=True)
    print(f"/proc/loadavg after: {_loadavg()}")


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def identical_outputs(a: ModuleType, b: ModuleType, seeds: int = 12) -> tuple[int, int, int]:
    """Randomised calls through two maskers' banks: (scenarios identical, scenarios, rows compared).

    Streams of quiet noise, noise, speech-like talk and tones (onsets in a packet's last 10
    samples, -40..0 dBm0, twist +-12 dB, 15-120 ms); capture on/off, flushes, mask = "always"
    toggles, slots removed and re-added, lost packets; batches of random size and order.
    """
    def run(m: ModuleType, mode: str, seed: int, n_streams: int, n_packets: int = 50) -> list:
        rng = np.random.default_rng(seed)
        audio = []
        for s in range(n_streams):
            x = white_noise(n_packets * PACKET, float(rng.uniform(-75, -30)), rng)
            if s % 3 == 1:
                x += speech_like(len(x), rng, float(rng.uniform(-40, -15)))
            pos = int(rng.integers(0, 400))
            while pos < len(x) - 1200:
                if rng.random() < 0.4:
                    pos = pos // PACKET * PACKET + int(rng.integers(150, 160))
                tone = dtmf_tone(DIGITS[int(rng.integers(16))], float(rng.integers(15, 121)),
                                 float(rng.uniform(-40, 0)),
                                 float(rng.uniform(-12, 12)), phase_rad=tuple(rng.uniform(0, 2 * np.pi, 2)))
                x[pos:pos + len(tone)] += tone
                pos += len(tone) + int(rng.integers(0, 1600))
            audio.append(ulaw_decode(ulaw_encode(to_int16(x))).reshape(n_packets, PACKET))
        bank = m.MaskerBank(m.MaskMode(mode), capacity=int(rng.integers(1, 8)))
        slots, pos, got = {}, {}, []
        for s in range(n_streams):
            slots[s], pos[s] = bank.add_stream(mask_always=bool(rng.random() < 0.2)), 0
            if rng.random() < 0.85:
                bank.set_capture(slots[s], True)
        for _ in range(2 * n_packets):
            for s in slots:
                if rng.random() < 0.05:
                    op = int(rng.integers(6))
                    if op == 0:
                        got.append(bank.set_capture(slots[s], True))
                    elif op == 1:
                        got.append(bank.set_capture(slots[s], False))
                    elif op == 2:
                        got.append(bank.flush(slots[s]))
                    elif op == 3:
                        bank.set_mask_always(slots[s], bool(rng.random() < 0.5))
                    elif op == 4:
                        got.append(bank.flush(slots[s]))
                        bank.remove_stream(slots[s])
                        slots[s] = bank.add_stream(mask_always=bool(rng.random() < 0.3))
                        bank.set_capture(slots[s], bool(rng.random() < 0.7))
                    else:
                        pos[s] += 1  # a lost packet
            pick = [s for s in slots if pos[s] < n_packets and rng.random() < 0.8]
            rng.shuffle(pick)
            while pick:
                n = int(rng.integers(1, len(pick) + 1)) if rng.random() < 0.5 else len(pick)
                batch, pick = pick[:n], pick[n:]
                frames = np.stack([audio[s][pos[s]] for s in batch])
                for s in batch:
                    pos[s] += 1
                out, changed = bank.process(np.array([slots[s] for s in batch]), frames)
                got.append((out.copy(), changed.copy()))
        got.extend(bank.flush(slots[s]) for s in slots)
        return [None if g is None else (np.asarray(g[0]).tobytes(), np.asarray(g[1]).tobytes()) for g in got]

    same = total = rows = 0
    for seed in range(seeds):
        for mode in ("silence", "comfort-noise", "flat"):
            n_streams = (1, 3, 7, 12, 25, 60)[seed % 6]
            ra, rb = run(a, mode, seed, n_streams), run(b, mode, seed, n_streams)
            total += 1
            same += ra == rb
            rows += sum(len(g[1]) for g in ra if g is not None)
    return same, total, rows


def mask_rows(m: ModuleType, rows: np.ndarray, mode_name: str = "silence") -> np.ndarray:
    """Equal-length streams through one bank in capture, time-aligned (k, n)."""
    bank = m.MaskerBank(m.MaskMode(mode_name), capacity=len(rows))
    slots = np.array([bank.add_stream() for _ in rows])
    for s in slots:
        bank.set_capture(int(s), True)
    outs = [bank.process(slots, rows[:, i:i + PACKET])[0] for i in range(0, rows.shape[1], PACKET)]
    outs.append(np.stack([bank.flush(int(s))[0] for s in slots]))
    return np.concatenate(outs, axis=1)[:, PACKET:]


def masked_share(m: ModuleType, audio: np.ndarray, mode_name: str, rows: int = 32) -> tuple[float, float]:
    """Share of all samples, and of samples in active 5 ms blocks (> -45 dBm0), changed in a capture."""
    n = len(audio) // (rows * PACKET) * rows * PACKET
    x = audio[:n].reshape(rows, -1)
    changed = mask_rows(m, x, mode_name) != x
    blocks = x.reshape(-1, 40).astype(np.float64)
    active = np.repeat(np.mean(blocks**2, axis=1) >= (32767 * 10 ** ((-45 - 3.14) / 20)) ** 2 / 2, 40)
    return float(changed.mean()), float(changed.ravel()[active].mean())


def speech_calls(speech: np.ndarray, gain_db: float, seed: int, n_calls: int, n_digits: int) -> list[Call]:
    rng = np.random.default_rng(seed)
    made = [make_speech_call(rng, speech, n_digits, gain_db) for _ in range(n_calls)]
    n = min(len(c.audio) for c in made)
    for c in made:
        c.audio, c.tones_only = c.audio[:n], c.tones_only[:n]
        c.tones = [t for t in c.tones if t.end + 200 < n]
    return made


def noisy_call(noise_dbm0: float, seconds: int = 40) -> Call:
    """Digits at -25 dBm0 every 100-300 ms in white noise, 40 % of onsets in a packet's last 5 ms."""
    rng = np.random.default_rng(3)
    n = seconds * 8000
    tones_only = np.zeros(n)
    placed = []
    pos = 1000
    while pos < n - 3000:
        if rng.random() < 0.4:
            pos = pos // PACKET * PACKET + int(rng.integers(155, 160))
        digit, dur, twist = DIGITS[int(rng.integers(16))], int(rng.integers(320, 961)), float(rng.uniform(-8, 4))
        tone = dtmf_tone(digit, dur / 8, -25.0, twist, phase_rad=tuple(rng.uniform(0, 2 * np.pi, 2)))
        tones_only[pos:pos + len(tone)] += tone
        placed.append(Tone(digit, pos, pos + len(tone), -25.0, twist))
        pos += len(tone) + int(rng.integers(800, 2400))
    noisy = np.clip(np.rint(tones_only + white_noise(n, noise_dbm0, rng)), -32768, 32767).astype(np.int16)
    return Call(ulaw_decode(ulaw_encode(noisy)), tones_only, placed, "noise")


def detected(audio: np.ndarray) -> list[str]:
    det = DtmfDetector()
    return [e.digit for e in det.process(audio) + det.flush() if isinstance(e, DigitDetected)]


def leak_row(name: str, outs: list[np.ndarray], calls: list[Call], fill_ref: np.ndarray | None = None) -> None:
    leaks = np.array([leaked_ms(o, c, t, fill_ref=fill_ref) for o, c in zip(outs, calls) for t in c.tones])
    resid = max(residual_db(o, c, t) for o, c in zip(outs, calls) for t in c.tones)
    acc = classifier_accuracy(outs, calls)
    print(f"{name:>34} {leaks.max():11.1f} {int((leaks > 0).sum()):8d} {leaks.mean():8.2f} "
          f"{resid:12.1f} {acc:10.3f}")


def leak_header() -> None:
    print(f"{'masker':>34} {'leak ms max':>11} {'tones>0':>8} {'mean ms':>8} {'resid dB max':>12} {'classifier':>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", metavar="REV", help="also measure dtmf/masker.py at this git revision")
    parser.add_argument("--calls-only", action="store_true", help="stop after the per-call costs")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the per-call costs (min taken)")
    args = parser.parse_args()
    maskers = [("current", current)]
    if args.against:
        maskers.append((args.against, load_revision(args.against)))
    modes = [mode.value for mode in current.MaskMode]

    if len(maskers) == 2:
        same, total, rows = identical_outputs(maskers[0][1], maskers[1][1])
        print(f"Identical output, current vs {args.against}: {same} of {total} randomised scenarios "
              f"({rows} rows and flushes compared byte for byte)\n")
    bench_calls(maskers, args.rounds)
    if args.calls_only:
        return

    print("\nMaskerBank, capture on, 10 % of streams keying a digit; CPU us per packet (row)")
    print(f"{'masker':>10} {'k':>5} " + " ".join(f"{m:>14}" for m in modes))
    for k in (1, 10, 100, 500):
        for name, m in maskers:
            print(f"{name:>10} {k:>5} " + " ".join(f"{bench_bank(m, k, mode):14.2f}" for mode in modes))

    speech = read_corpus(SPEECH_GLOB)
    music = read_corpus(MUSIC_GLOB)
    if speech and music:
        speech_all, music_all = np.concatenate(speech), np.concatenate(music)
        print("\nRecorded audio masked during a capture (32 streams through one bank): "
              "% of all samples / % of samples in active blocks (> -45 dBm0)")
        for label, audio in (("speech", speech_all), ("music", music_all)):
            print(f"  {label}: {len(audio) / 8000 / 60:.1f} min")
            for name, m in maskers:
                shares = [masked_share(m, audio, mode) for mode in modes]
                print(f"{name:>12} " + " ".join(f"{mode}: {100 * a:.2f} / {100 * b:.2f}"
                                                for mode, (a, b) in zip(modes, shares)))

        print("\nDigits over recorded speech (0..-25 dBm0, twist -8..+4 dB, 40-120 ms, +-1.5 %), "
              "silence mode; 'speech alone' is the unmasked speech without the digits, scored on the "
              "same tone windows: what the leaked-ms measure gives when there is no tone at all")
        leak_header()
        for gain_db in (-20.0, -15.0, -10.0):
            calls = speech_calls(speech_all, gain_db, seed=11, n_calls=4, n_digits=100)
            n = len(calls[0].audio)
            alone = [np.rint(c.audio - c.tones_only).astype(np.int16) for c in calls]
            leak_row(f"speech {gain_db:+.0f} dB: speech alone", alone, calls)
            for name, m in maskers:
                outs = list(mask_rows(m, np.stack([c.audio for c in calls])))
                free = np.concatenate([(o != c.audio)[tone_free(n, c.tones)] for o, c in zip(outs, calls)])
                leak_row(f"{name} (speech masked {100 * free.mean():.2f} %)", outs, calls)

    print("\nDigits at -25 dBm0 (twist -8..+4 dB, 40-120 ms) in white noise, silence mode")
    print(f"{'noise':>10} {'tones':>6} {'detector in':>11} " + " ".join(f"{name + ' leak max / >0':>24}"
                                                                   for name, _ in maskers))
    for noise_dbm0 in (-40.0, -35.0, -30.0, -28.0):
        call = noisy_call(noise_dbm0)
        cells = []
        for _, m in maskers:
            out = mask_rows(m, call.audio[None, :])[0]
            leaks = [leaked_ms(out, call, t) for t in call.tones]
            cells.append(f"{max(leaks):.1f} / {sum(v > 0 for v in leaks)}")
        print(f"{noise_dbm0:>10.0f} {len(call.tones):>6} {len(detected(call.audio)):>11} "
              + " ".join(f"{c:>24}" for c in cells))

    rng = np.random.default_rng(20240611)
    calls = [make_call(rng, 120, bg) for bg in ("silence", "noise", "speech")]
    n = min(len(c.audio) for c in calls)
    for c in calls:
        c.audio, c.tones_only = c.audio[:n], c.tones_only[:n]
        c.tones = [t for t in c.tones if t.end + 200 < n]
    n_tones = sum(len(c.tones) for c in calls)
    late = sum(t.start % PACKET >= 155 for c in calls for t in c.tones)
    print(f"\nSynthetic calls: {n_tones} tones ({late} with onset in the last 5 ms of a packet), "
          "3 calls (silence / noise -45 dBm0 / speech-like -35 dBm0)")
    leak_header()
    ref = flat_fill_reference(n)
    for mode in current.MaskMode:
        fr = ref if mode is current.MaskMode.FLAT else None
        leak_row(f"{mode.value} single", [mask_single(c.audio, mode) for c in calls], calls, fr)
        leak_row(f"{mode.value} bank", list(mask_rows(current, np.stack([c.audio for c in calls]), mode.value)),
                 calls, fr)
    leak_row("no look-ahead (silence)",
             [mask_single(c.audio, current.MaskMode.SILENCE, lookahead=False) for c in calls], calls)
    leak_row("strawman 20 ms zeroing", [naive_mask(c.audio) for c in calls], calls)
    leak_row("unmasked", [c.audio for c in calls], calls)

    x = to_int16(speech_like(60 * 8000, np.random.default_rng(5), -25))
    for name, m in maskers:
        changed = np.mean(mask_rows(m, x.reshape(1, -1)) != x)
        print(f"\nspeech-like synthetic talk (60 s, -25 dBm0, formants parked on DTMF lines), {name}: "
              f"{100 * changed:.1f} % of samples masked during a capture")


if __name__ == "__main__":
    main()
