"""The masker bank's quiet step in C (`dtmf/_maskstep.c`) is the numpy step, to the bit.

Two banks get the same calls, one with the C step and one without: every output, every
changed flag and every byte of their state must stay equal, over captures that go quiet,
loud, into tones and out, in all three fill modes, with strided frames as the relay passes.
"""

from __future__ import annotations

import numpy as np
import pytest

import dtmf.masker as masker_mod
from dtmf.masker import PACKET_SAMPLES, MaskerBank, MaskMode
from dtmf.tones import dtmf_tone, white_noise
from tests.conftest import require


def require_step() -> None:
    require(masker_mod.accelerated(), "the masker's C step is not built (pip install -e . with a C compiler)")


class Counted:
    def __init__(self, step) -> None:
        self.step, self.quiet, self.calls, self.restarts, self.direct = step, 0, 0, 0, 0

    def __call__(self, *args):
        self.calls += 1
        done = self.step(*args)
        self.quiet += bool(done)
        if done and len(args) > 7:
            # Rows whose look-ahead restarted (a filler row) and rows outside a capture, taken in C.
            fs, slots = args[0], args[2]
            bits = fs[slots, masker_mod._F_BITS:].view(np.bool_)
            self.restarts += int(args[7].sum())
            self.direct += int((~bits[:, masker_mod._B_CAPTURE]).sum())
        return done


def _signal(rng: np.random.Generator, n_packets: int) -> np.ndarray:
    """One stream: mostly line noise, with talk spurts, keys and silence."""
    x = white_noise(n_packets * PACKET_SAMPLES, -70.0, rng)
    at = 0
    while at < len(x) - 4000:
        at += int(rng.integers(800, 6000))
        if at >= len(x):
            break
        kind = rng.integers(0, 5)
        if kind == 4:  # a weak key that stops dead: hangover into digital silence
            burst = np.concatenate([dtmf_tone("0123456789*#ABCD"[int(rng.integers(0, 16))],
                                              float(rng.uniform(20, 80)), level_dbm0=float(rng.uniform(-72, -35))),
                                    np.zeros(int(rng.integers(40, 400)))])
            end = min(len(x), at + len(burst))
            x[at:end] = burst[:end - at]
            continue
        if kind == 0:
            burst = white_noise(int(rng.integers(400, 3000)), float(rng.uniform(-30, -10)), rng)
        elif kind == 1:
            burst = dtmf_tone("0123456789*#ABCD"[int(rng.integers(0, 16))], float(rng.uniform(30, 120)),
                              level_dbm0=float(rng.uniform(-30, -5)))
        elif kind == 2:
            burst = np.zeros(int(rng.integers(200, 2000)))
        else:
            burst = white_noise(int(rng.integers(200, 800)), -45.0, rng)
        end = min(len(x), at + len(burst))
        x[at:end] += burst[:end - at]
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("mode", list(MaskMode))
@pytest.mark.parametrize("seed", [1, 2])
def test_the_c_step_and_the_numpy_step_agree_to_the_bit(monkeypatch, mode: MaskMode, seed: int) -> None:
    require_step()
    rng = np.random.default_rng(seed)
    n_streams, n_packets = 12, 150
    signals = [_signal(rng, n_packets).reshape(n_packets, PACKET_SAMPLES) for _ in range(n_streams)]
    counted = Counted(masker_mod._quiet_step)
    banks = {True: MaskerBank(mode, capacity=4), False: MaskerBank(mode, capacity=4)}
    slots = {c: [b.add_stream(mask_always=(i == 3)) for i in range(n_streams)] for c, b in banks.items()}
    position = [0] * n_streams
    capture = [i not in (3, 7) for i in range(n_streams)]  # 3 masks always, 7 starts outside a capture

    def both(call):
        got = {}
        for c, bank in banks.items():
            monkeypatch.setattr(masker_mod, "_quiet_step", counted if c else None)
            got[c] = call(bank, slots[c])
        return got

    for i in range(n_streams):
        if capture[i]:
            both(lambda b, s, i=i: b.set_capture(s[i], True))
    for step in range(400):
        for i in range(n_streams):  # captures start and end
            if rng.random() < 0.01:
                capture[i] = not capture[i]
                got = both(lambda b, s, i=i: b.set_capture(s[i], capture[i]))
                a, b = got[True], got[False]
                assert (a is None) == (b is None)
                if a is not None:
                    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
            elif rng.random() < 0.003:
                got = both(lambda b, s, i=i: b.flush(s[i]))
        ready = [i for i in range(n_streams) if position[i] < n_packets]
        if not ready:
            break
        size = int(rng.integers(1, 4)) if rng.random() < 0.5 else int(rng.integers(1, len(ready) + 1))
        picked = [int(i) for i in rng.permutation(ready)[:size]]
        # Strided frames, as the relay's decode leaves them (payload columns of whole packets).
        wide = np.zeros((len(picked), PACKET_SAMPLES + 6), dtype=np.int16)
        for row, i in enumerate(picked):
            wide[row, 6:] = signals[i][position[i]]
            position[i] += 1
        frames = wide[:, 6:]
        got = both(lambda b, s: b.process(np.array([s[i] for i in picked], dtype=np.intp), frames))
        (out_c, changed_c), (out_n, changed_n) = got[True], got[False]
        assert np.array_equal(out_c, out_n), step
        assert np.array_equal(changed_c, changed_n), step
        assert banks[True]._fs.tobytes() == banks[False]._fs.tobytes(), step
        assert np.array_equal(banks[True]._held, banks[False]._held), step
    # The run went through both paths: quiet batches in C, the rest in numpy.
    assert counted.quiet >= 30, (counted.quiet, counted.calls)
    assert counted.calls - counted.quiet >= 30, (counted.quiet, counted.calls)
    # ... and the C step took restarted look-aheads (after a flush, a capture's start) and
    # rows outside a capture (mask = "always", or none), not only steady captures.
    assert counted.restarts >= 5 and counted.direct >= 20, (counted.restarts, counted.direct)


def test_the_c_step_refuses_arrays_that_do_not_fit() -> None:
    require_step()
    bank = MaskerBank(MaskMode.FLAT, capacity=4)
    slot = bank.add_stream()
    bank.set_capture(slot, True)
    frames = np.zeros((1, PACKET_SAMPLES), dtype=np.int16)
    out = np.empty((1, PACKET_SAMPLES), dtype=np.int16)
    bank.process(np.array([slot], dtype=np.intp), frames)  # makes the work arrays
    step = masker_mod._quiet_step
    with pytest.raises(ValueError):
        step(bank._fs, bank._held, np.array([slot], dtype=np.intp), frames.astype(np.int32), bank._wef, out, False)
    with pytest.raises(ValueError):
        step(bank._fs, bank._held, np.array([slot], dtype=np.intp), frames, bank._wef,
             np.empty((2, PACKET_SAMPLES), dtype=np.int16), False)
    with pytest.raises(ValueError):  # slots of another type than intp
        step(bank._fs, bank._held, np.array([float(slot)]), frames, bank._wef, out, False)
    with pytest.raises(IndexError):
        step(bank._fs, bank._held, np.array([10_000], dtype=np.intp), frames, bank._wef, out, False)
    with pytest.raises((ValueError, TypeError, BufferError)):
        step(bank._fs[:, ::2], bank._held, np.array([slot], dtype=np.intp), frames, bank._wef, out, False)


def test_the_c_step_takes_a_batch_only_when_no_row_is_active() -> None:
    """The gate, row by row near its limits: a block loud enough to flag, a weakly flagged block
    (line energy over half the block's), a flag or a tone state (words 0 and 1) in the history
    or the new packet makes the batch the numpy step's, and then nothing is written."""
    require_step()
    rng = np.random.default_rng(9)
    step = masker_mod._quiet_step
    e_min, e_weak = float(masker_mod._MIN_BLOCK_ENERGY), float(masker_mod._WEAK_ENERGY)
    bank = MaskerBank(MaskMode.COMFORT_NOISE, capacity=4)
    slot = bank.add_stream()
    bank.set_capture(slot, True)
    frames = np.zeros((1, PACKET_SAMPLES), dtype=np.int16)
    bank.process(np.array([slot], dtype=np.intp), frames)
    bank.process(np.array([slot], dtype=np.intp), frames)  # steady: held valid, capture on
    f0, b0 = masker_mod._F_HIST_E, masker_mod._F_BITS
    fl = masker_mod._F_HIST_L
    takes = refuses = 0
    for trial in range(3000):
        fs, held = bank._fs.copy(), bank._held.copy()
        wef = np.zeros_like(bank._wef)
        energies = rng.choice([0.0, e_weak * 0.5, e_weak, e_min * 0.999, e_min, e_min * 4], 7)
        ratio = rng.choice([0.0, 0.3, 0.4999, 0.5, 0.7, 1.0], 7)
        lines = energies * ratio
        if rng.random() < 0.5:  # most trials near-quiet: one block may cross
            energies[:] = np.minimum(energies, e_weak * 0.5)
            lines[:] = 0.0
            j = int(rng.integers(0, 7))
            energies[j] = rng.choice([e_weak * 0.9, e_min * 0.999, e_min])
            lines[j] = energies[j] * rng.choice([0.0, 0.4999, 0.5])
        fs[slot, f0:f0 + 3], fs[slot, fl:fl + 3] = energies[:3], lines[:3]
        wef[0, 0, 3:7], wef[1, 0, 3:7] = energies[3:], lines[3:]
        bits = fs[slot, b0:].view(np.bool_)
        bits[:16] = False
        if rng.random() < 0.1:
            bits[int(rng.integers(0, 16))] = True
        loud = energies >= e_min
        weak = lines * 2.0 >= np.maximum(energies, e_weak)
        active = bool(loud.any() or weak.any() or bits[:16].any())
        before = fs.tobytes(), held.tobytes()
        done = step(fs, held, np.array([slot], dtype=np.intp), frames, wef,
                    np.empty((1, PACKET_SAMPLES), dtype=np.int16), True)
        assert done is (not active), trial
        if active:
            refuses += 1
            assert (fs.tobytes(), held.tobytes()) == before, trial
        else:
            takes += 1
    assert takes > 300 and refuses > 300, (takes, refuses)


def _sequential_features(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The C features' definition in numpy: each basis row's products summed in sample order."""
    x = np.asarray(x, dtype=np.float64)
    acc = np.zeros((len(x), 16))
    for i in range(masker_mod.BLOCK_SAMPLES):
        acc = acc + x[:, i:i + 1] * masker_mod._BASIS[i][None, :]
    p = acc[:, :8] * acc[:, :8] + acc[:, 8:] * acc[:, 8:]
    best = p.reshape(-1, 2, 4).max(axis=2)
    energy = np.zeros(len(x))
    for i in range(masker_mod.BLOCK_SAMPLES):
        energy = energy + x[:, i] * x[:, i]
    return energy, (best[:, 0] + best[:, 1]) * (2.0 / masker_mod.BLOCK_SAMPLES)


def test_the_c_block_features_are_their_definition_on_every_path() -> None:
    """Built, the masker's block features come from C for the single stream and the bank alike:
    products summed in sample order, no fused multiply-add, the same bits on every machine."""
    require_step()
    rng = np.random.default_rng(11)
    for level in (-70.0, -30.0, -3.0):
        x = white_noise(300 * 40, level, rng)
        x[:4000] += dtmf_tone("5", 500, level_dbm0=level + 3)[:4000]
        blocks = np.clip(np.rint(x), -32768, 32767).astype(np.int16).reshape(-1, 40)
        energy, lines = _sequential_features(blocks)
        feats, _ = masker_mod._block_features(blocks)
        assert feats[:, 0].tobytes() == energy.tobytes()
        assert feats[:, 1].tobytes() == lines.tobytes()
        # The bank's path reads (k, 160) frames with any strides into its work rows.
        wide = np.zeros((75, 170), dtype=np.int16)
        wide[:, 5:165] = blocks.reshape(75, 160)
        e8, l8 = np.zeros((75, 8)), np.zeros((75, 8))
        masker_mod._features_packets(wide[:, 5:165], e8, l8)
        assert e8[:, 3:7].tobytes() == np.ascontiguousarray(energy.reshape(75, 4)).tobytes()
        assert l8[:, 3:7].tobytes() == np.ascontiguousarray(lines.reshape(75, 4)).tobytes()
        assert not e8[:, :3].any() and not e8[:, 7].any()  # only columns 3..6 are written
