"""MaskerBank's paths give the same output: quiet calls, few active rows on Python scalars,
many rows vectorised, and the scalar shortcuts inside them (tracker, DFT decision, tone run, fill)."""

from __future__ import annotations

import numpy as np
import pytest

from dtmf import masker
from dtmf.masker import PACKET_SAMPLES, MaskerBank, MaskMode
from dtmf.tones import DIGITS, dtmf_tone, to_int16, white_noise

THRESHOLDS = ("_SCALAR_ACTIVE_ROWS", "_SCALAR_TONE_ROWS", "_SCALAR_FILL_ROWS", "_SCALAR_DECIDE_WINDOWS",
              "_SCALAR_TRACK_ROWS")
N_STREAMS = max(getattr(masker, name) for name in THRESHOLDS) + 4  # one batch of all takes the numpy paths
N_PACKETS = 30


def _streams(rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    t = np.arange(N_PACKETS * PACKET_SAMPLES) / 8000
    for s in range(N_STREAMS):
        quiet = s % 5 == 4  # under the flag floor between tones: quiet calls and inactive rows
        x = white_noise(len(t), -75.0 if quiet else float(rng.uniform(-65, -25)), rng)
        if s % 4 == 1:  # a loud steady line: loose flags without tones
            x += 3000 * np.sin(2 * np.pi * float(rng.uniform(650, 1500)) * t)
        for start in rng.integers(0, (N_PACKETS - 6) * PACKET_SAMPLES, 1 if quiet else 3):
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
    for s in slots:
        got.append(bank.flush(s))
    return got


def _flat(results: list) -> list:
    out = []
    for r in results:
        if r is None:
            out.append(None)
        else:
            out.append((np.asarray(r[0]).tobytes(), np.asarray(r[1]).tobytes()))
    return out


def _hostile_streams(rng: np.random.Generator) -> list[np.ndarray]:
    """The attacker's keys the newer confirmation paths exist for: weak, twisted, gated, short bursts."""
    out = []
    n = N_PACKETS * PACKET_SAMPLES
    for s in range(N_STREAMS):
        kind = s % 4
        x = white_noise(n, float(rng.uniform(-90, -60)), rng) if kind != 3 else np.zeros(n)
        for start in rng.integers(0, (N_PACKETS - 6) * PACKET_SAMPLES, 3):
            digit = DIGITS[int(rng.integers(16))]
            if kind == 0:  # under the -45 dBm0 flag floor
                tone = dtmf_tone(digit, float(rng.integers(15, 60)), float(rng.uniform(-72, -48)))
            elif kind == 1:  # twist 12-22 dB either way
                twist = float(rng.uniform(12, 22)) * (1 if rng.random() < 0.5 else -1)
                tone = dtmf_tone(digit, float(rng.integers(20, 60)), float(rng.uniform(-30, -5)) - max(twist, 0), twist)
            elif kind == 2:  # gated 5/5 or 10/10 ms
                on = int(rng.choice([40, 80]))
                tone = dtmf_tone(digit, 60, float(rng.uniform(-40, -10)))
                tone = tone * ((np.arange(len(tone)) // on) % 2 == 0)
            else:  # 5-15 ms bursts on digital silence
                tone = dtmf_tone(digit, float(rng.integers(5, 16)), float(rng.uniform(-60, -10)))
            x[start:start + len(tone)] += tone
        out.append(to_int16(x).reshape(-1, PACKET_SAMPLES))
    return out


def _scenario(seed: int, hostile: bool = False) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    streams = _hostile_streams(rng) if hostile else _streams(rng)
    ops = rng.choice(4, size=(N_PACKETS, N_STREAMS), p=[0.82, 0.08, 0.05, 0.05])
    ops[0] = 1
    return streams, ops


@pytest.mark.parametrize("mode", list(MaskMode))
def test_row_by_row_equals_one_big_batch(mode):
    streams, ops = _scenario(25)
    big = _run(mode, streams, ops, N_STREAMS)
    single = _run(mode, streams, ops, 1)
    # rows of a batch come out together: regroup the single-row results per packet
    regrouped = []
    it = iter(single)
    for i in range(N_PACKETS):
        regrouped.extend(next(it) for _ in range(int(np.count_nonzero(ops[i]))))
        rows = [next(it) for _ in range(N_STREAMS)]
        regrouped.append((np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])))
    regrouped.extend(it)
    masked = sum(int(r[1].sum()) for r in big if isinstance(r, tuple) and isinstance(r[1], np.ndarray))
    assert masked > 0
    assert _flat(regrouped) == _flat(big)


@pytest.mark.parametrize("hostile", [False, True], ids=["keys", "hostile-keys"])
@pytest.mark.parametrize("mode", list(MaskMode))
def test_scalar_and_vectorised_paths_agree(mode, hostile, monkeypatch):
    """The same calls with every shortcut forced on (Python scalars) and forced off (numpy)."""
    streams, ops = _scenario(26, hostile)
    taken = {"few": 0, "many": 0}

    def counting(name):
        inner = getattr(MaskerBank, f"_process_{name}")

        def wrapper(self, *args):
            taken[name] += 1
            return inner(self, *args)
        return wrapper

    monkeypatch.setattr(MaskerBank, "_process_few", counting("few"))
    monkeypatch.setattr(MaskerBank, "_process_many", counting("many"))
    results = {}
    for setting, value in (("scalar", 10**6), ("numpy", 0)):
        for name in THRESHOLDS:
            monkeypatch.setattr(masker, name, value)
        before = dict(taken)
        results[setting] = _flat(_run(mode, streams, ops, 7))
        assert taken["few" if setting == "scalar" else "many"] > before["few" if setting == "scalar" else "many"]
    monkeypatch.undo()
    default = _flat(_run(mode, streams, ops, 7))
    assert results["scalar"] == results["numpy"] == default
    assert sum(r is not None and r[1] != bytes(len(r[1])) for r in default) > 0  # something was masked


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


def test_bank_features_equal_the_single_stream_features():
    """The bank's block features (its own product layout) are `_block_features`' bit for bit."""
    rng = np.random.default_rng(3)
    for k in (1, 5, 22, 50):
        frames = to_int16(white_noise(k * PACKET_SAMPLES, float(rng.uniform(-60, 0)), rng)).reshape(k, -1)
        frames[0, :80] += to_int16(dtmf_tone("7", 10, -10))
        bank = MaskerBank(MaskMode.FLAT)
        bank._grow_work(k)
        w = bank._scratch_for(k)
        masker._block_features_into(frames, w)
        feats, _ = masker._block_features(frames.reshape(-1, 40))
        assert w.energy.tobytes() == np.ascontiguousarray(feats[:, 0].reshape(k, 4)).tobytes()
        assert w.lines.tobytes() == np.ascontiguousarray(feats[:, 1].reshape(k, 4)).tobytes()


def test_an_empty_call_returns_empty_rows():
    bank = MaskerBank(MaskMode.FLAT)
    out, changed = bank.process(np.zeros(0, dtype=np.intp), np.zeros((0, PACKET_SAMPLES), dtype=np.int16))
    assert out.shape == (0, PACKET_SAMPLES) and out.dtype == np.int16
    assert changed.shape == (0,) and changed.dtype == bool
