"""Small batches take scalar shortcuts (tracker, window pre-test, flush fast path): same output as big ones."""

from __future__ import annotations

import numpy as np
import pytest

from dtmf import masker
from dtmf.masker import PACKET_SAMPLES, MaskerBank, MaskMode
from dtmf.tones import DIGITS, dtmf_tone, to_int16, white_noise

N_STREAMS = masker._SCALAR_TRACK_ROWS + 4  # one batch of all of them takes the numpy paths
N_PACKETS = 30


def _streams(rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    t = np.arange(N_PACKETS * PACKET_SAMPLES) / 8000
    for s in range(N_STREAMS):
        x = white_noise(len(t), float(rng.uniform(-65, -25)), rng)
        if s % 4 == 1:  # a loud steady line: loose flags without tones
            x += 3000 * np.sin(2 * np.pi * float(rng.uniform(650, 1500)) * t)
        for start in rng.integers(0, (N_PACKETS - 6) * PACKET_SAMPLES, 3):
            tone = dtmf_tone(DIGITS[int(rng.integers(16))], float(rng.integers(15, 90)), float(rng.uniform(-35, -5)))
            x[start:start + len(tone)] += tone
        out.append(to_int16(x).reshape(-1, PACKET_SAMPLES))
    return out


def _run(mode: MaskMode, streams: list[np.ndarray], ops: np.ndarray, batch: int) -> list:
    bank = MaskerBank(mode, capacity=2)
    slots = [bank.add_stream(mask_always=s % 3 == 0) for s in range(N_STREAMS)]
    got: list = []
    for i in range(N_PACKETS):
        for s, op in enumerate(ops[i]):
            if op == 1:
                got.append(bank.set_capture(slots[s], True))
            elif op == 2:
                got.append(bank.set_capture(slots[s], False))
            elif op == 3:
                got.append(bank.flush(slots[s]))
        for lo in range(0, N_STREAMS, batch):
            members = range(lo, min(lo + batch, N_STREAMS))
            got.append(bank.process(np.array([slots[s] for s in members]), np.stack([streams[s][i] for s in members])))
    return got


def _flat(results: list) -> list:
    out = []
    for r in results:
        if r is None:
            out.append(None)
        else:
            out.append((np.asarray(r[0]).tobytes(), np.asarray(r[1]).tobytes()))
    return out


@pytest.mark.parametrize("mode", list(MaskMode))
def test_row_by_row_equals_one_big_batch(mode):
    rng = np.random.default_rng(25)
    streams = _streams(rng)
    ops = rng.choice(4, size=(N_PACKETS, N_STREAMS), p=[0.82, 0.08, 0.05, 0.05])
    ops[0] = 1
    big = _run(mode, streams, ops, N_STREAMS)
    single = _run(mode, streams, ops, 1)
    # rows of a batch come out together: regroup the single-row results per packet
    regrouped = []
    it = iter(single)
    for i in range(N_PACKETS):
        regrouped.extend(next(it) for _ in range(int(np.count_nonzero(ops[i]))))
        rows = [next(it) for _ in range(N_STREAMS)]
        regrouped.append((np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])))
    assert sum(int(r[1].sum()) for r in big if isinstance(r, tuple) and isinstance(r[1], np.ndarray)) > 0  # something was masked
    assert _flat(regrouped) == _flat(big)


def test_scalar_window_pretest_never_misses_a_window():
    """`_may_confirm` False must mean `_confirm` confirms nothing (features from tones, lines and noise)."""
    rng = np.random.default_rng(4733)
    misses = 0
    hits = 0
    for _ in range(300):
        x = white_noise(7 * 40, float(rng.uniform(-70, -20)), rng)
        if rng.random() < 0.6:
            at = int(rng.integers(0, 200))
            tone = dtmf_tone(DIGITS[int(rng.integers(16))], float(rng.integers(5, 40)), float(rng.uniform(-50, -5)))
            x[at:at + len(tone)] += tone[:len(x) - at]
        blocks = to_int16(x).reshape(7, 40)
        feats, _ = masker._block_features(blocks)
        confirmed = masker._confirm(feats[None], lambda rows: blocks.reshape(1, -1)[rows], 0)
        may = masker._may_confirm(feats[None])
        hits += may
        misses += bool(confirmed.any()) and not may
    assert misses == 0
    assert hits > 0
