"""MaskerBank.process cost per row for quiet mask = "always" streams (no capture).

    OPENBLAS_NUM_THREADS=1 python3 loadtests/masker_rows_bench.py [--tree PATH] [--batches 4000]

500 streams with mask = "always", quiet line noise (-20 rms), 25-row batches as the relay's
per-iteration call gives them at 500 calls; process_time per row. `--tree` measures another
checkout's dtmf/ (e.g. a `git worktree` of an older commit, with its C step built in place).
Before 2026-11-30 such rows always took the numpy step (their `unsteady` bit kept the C quiet
step away); see loadtests/README-relay.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--batches", type=int, default=4000)
    args = ap.parse_args()
    sys.path.insert(0, args.tree)
    import numpy as np

    from dtmf.masker import MaskerBank, MaskMode

    bank = MaskerBank(MaskMode.FLAT, capacity=512)
    slots = [bank.add_stream(mask_always=True) for _ in range(500)]
    frames = np.clip(np.random.default_rng(1).normal(0, 20, (25, 160)), -32768, 32767).astype(np.int16)
    t = time.process_time()
    for it in range(args.batches):
        start = (it * 25) % 500
        bank.process(np.array(slots[start:start + 25], dtype=np.intp), frames)
    per_row = (time.process_time() - t) / (args.batches * 25)
    print(f"{args.tree}: mask=always, quiet, 25-row batches: {per_row * 1e6:.2f} us per row")


if __name__ == "__main__":
    main()
