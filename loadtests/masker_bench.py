"""Masker figures: microseconds per packet for the bank, and the leak measures on synthetic calls.

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python3 loadtests/masker_bench.py

Bounded: each batch size runs for at most ~1 s of CPU and at most 2,000 batches.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from dtmf.masker import PACKET_SAMPLES, MaskerBank, MaskMode  # noqa: E402
from dtmf.tones import dtmf_tone, to_int16, white_noise  # noqa: E402
from tests.dtmf_masker.calls import (  # noqa: E402
    classifier_accuracy, flat_fill_reference, leaked_ms, make_call, mask_bank, mask_single,
    naive_mask, residual_db, speech_like,
)


def bench_bank(k: int, mode: MaskMode, tone_share: float = 0.1, max_batches: int = 2000,
               max_cpu_s: float = 1.0) -> float:
    """CPU microseconds per packet for batches of k rows, every slot in capture."""
    rng = np.random.default_rng(k)
    n_packets = 50
    audio = white_noise(n_packets * PACKET_SAMPLES * k, -45, rng).reshape(k, -1)
    for s in range(int(k * tone_share) or 1):
        audio[s, 1000:1000 + 640] += dtmf_tone("5", 80, -10)
    frames = to_int16(audio).reshape(k, n_packets, PACKET_SAMPLES)
    bank = MaskerBank(mode, capacity=k)
    slots = np.array([bank.add_stream() for _ in range(k)])
    for s in slots:
        bank.set_capture(int(s), True)
    done = 0
    t0 = time.process_time()
    while done < max_batches and time.process_time() - t0 < max_cpu_s:
        bank.process(slots, frames[:, done % n_packets])
        done += 1
    return (time.process_time() - t0) / (done * k) * 1e6


def main() -> None:
    print("MaskerBank, capture on, 10 % of streams keying a digit; CPU us per packet (row)")
    print(f"{'k':>5} " + " ".join(f"{m.value:>14}" for m in MaskMode))
    for k in (1, 10, 100, 500):
        print(f"{k:>5} " + " ".join(f"{bench_bank(k, m):14.2f}" for m in MaskMode))

    rng = np.random.default_rng(20240611)
    calls = [make_call(rng, 120, bg) for bg in ("silence", "noise", "speech")]
    n = min(len(c.audio) for c in calls)
    for c in calls:
        c.audio, c.tones_only = c.audio[:n], c.tones_only[:n]
        c.tones = [t for t in c.tones if t.end + 200 < n]
    n_tones = sum(len(c.tones) for c in calls)
    late = sum(t.start % PACKET_SAMPLES >= 155 for c in calls for t in c.tones)
    print(f"\nleak measures: {n_tones} tones ({late} with onset in the last 5 ms of a packet), "
          "3 calls (silence / noise -45 dBm0 / speech-like -35 dBm0)")
    print(f"{'masker':>26} {'leak ms max':>11} {'p99':>6} {'resid dB max':>12} {'classifier':>10}")
    ref = flat_fill_reference(n)
    variants = []
    for m in MaskMode:
        variants.append((f"{m.value} single", [mask_single(c.audio, m) for c in calls], m))
        variants.append((f"{m.value} bank", mask_bank([c.audio for c in calls], m), m))
    variants.append(("no look-ahead (silence)",
                     [mask_single(c.audio, MaskMode.SILENCE, lookahead=False) for c in calls], MaskMode.SILENCE))
    variants.append(("strawman 20 ms zeroing", [naive_mask(c.audio) for c in calls], MaskMode.SILENCE))
    variants.append(("unmasked", [c.audio for c in calls], MaskMode.SILENCE))
    for name, outs, m in variants:
        fr = ref if m is MaskMode.FLAT else None
        leaks = [leaked_ms(o, c, t, fill_ref=fr) for o, c in zip(outs, calls) for t in c.tones]
        resid = max(residual_db(o, c, t) for o, c in zip(outs, calls) for t in c.tones)
        acc = classifier_accuracy(outs, calls)
        print(f"{name:>26} {max(leaks):11.1f} {np.percentile(leaks, 99):6.1f} {resid:12.1f} {acc:10.3f}")

    x = to_int16(speech_like(60 * 8000, np.random.default_rng(5), -25))
    changed = np.mean(mask_single(x, MaskMode.SILENCE) != x)
    print(f"\nspeech-like talk without tones (60 s, -25 dBm0) masked during a capture: {100 * changed:.1f} % of samples")


if __name__ == "__main__":
    main()
