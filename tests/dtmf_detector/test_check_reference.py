"""The fused exact checks against the same checks written plainly: the same hits on every window."""

from __future__ import annotations

import numpy as np

from dtmf import detector as detector_mod
from dtmf.detector import HELD_RATIO, HISTORY_WINDOWS, DetectorBank, DigitDetected
from dtmf.tones import DIGITS, DTMF_FREQS_HZ, dtmf_tone

from .synth import g711_round_trip, placed_tone


def reference_check(bank: DetectorBank, cand: np.ndarray, c: int, mag: np.ndarray, z_and_carry: np.ndarray,
                    energies: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The exact checks as they were written before the fusion (dtmf/detector.py at 3e09b5d), with the held bounds."""
    an = bank._an
    n = cand.size
    groups = mag.take(cand, axis=1).reshape(2, 4, n)
    bins, strongest = groups.argmax(axis=1), groups.max(axis=1)
    freq_idx = bins + np.array([[0], [4]])
    offset, stride = detector_mod._window_history(mag.shape[1], c).take(cand, axis=2)
    parts = z_and_carry.take((freq_idx + np.array([[[0]], [[8]]]))[:, :, None, :] * stride + offset, mode="clip")
    middle = parts[:, :, 1]
    cross = middle * (parts[:, :, 0] + parts[:, :, 2])
    cross_re = cross[0] + cross[1]
    cross = middle * (parts[::-1, :, 0] - parts[::-1, :, 2])
    cross_im = cross[0] - cross[1]
    phase = np.arctan2(cross_im, cross_re) - an.hop_phase.take(freq_idx)
    phase = np.remainder(phase + np.pi, 2 * np.pi) - np.pi
    in_band = np.abs(phase) <= an.freq_tol_rad.take(freq_idx)
    step = ((phase + np.pi) * an.power_steps_per_rad + 0.5).astype(np.intp)
    correction = an.power_per_mag.take(step, mode="clip")
    p = strongest * correction
    parts *= parts
    powers = parts.sum(axis=0)
    pair_powers = powers[0] + powers[1]
    held = pair_powers[HISTORY_WINDOWS - 1] < HELD_RATIO * pair_powers[0]
    p_tone = powers.sum(axis=1)
    p_tone *= correction
    f32 = np.float32
    level = p >= f32(an.min_tone_power)

    def twist(window_normal, window_reverse, normal, reverse):
        return ((p[1] >= p[0] * f32(window_normal)) & (-p[1] >= p[0] * -f32(window_reverse)),
                (p_tone[1] >= p_tone[0] * f32(normal)) & (-p_tone[1] >= p_tone[0] * -f32(reverse)))

    # Q.24's own twist bounds, and the looser ones that keep a held digit on (16 added to its code).
    window_twist, summed_twist = twist(an.window_normal_twist, an.window_reverse_twist,
                                       an.held_normal_twist, an.held_reverse_twist)
    strict_window, strict_summed = twist(an.window_normal_twist, an.window_reverse_twist, an.normal_twist,
                                         an.reverse_twist)
    pair = p[0] + p[1]
    chunk_sum, chunk_energy, window_sum, window_energy = energies.take(cand, axis=1)
    closing = chunk_energy + window_sum * (0.5 * window_sum - 2.0 * chunk_sum)
    louder = np.maximum(window_energy - closing, closing).astype(np.float64)
    energy = ((pair >= window_energy.astype(np.float64) * an.purity_per_energy)
              & (pair >= louder * an.coverage_per_energy) & (pair >= float(f32(an.min_pair_power))))
    hit = (in_band.all(axis=0) & level.all(axis=0) & window_twist & (summed_twist | held) & energy).nonzero()[0]
    if hit.size == 0:
        return None
    held_only = ~(strict_window & (strict_summed | held))
    return cand[hit], bins[0, hit] * 4 + bins[1, hit] + 16 * held_only[hit]


class _ComparingBank(DetectorBank):
    """Every window goes to both checks (no gate); counts the calls where they disagree."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.calls = self.differ = self.hits = 0

    def _gate(self, pair_max: np.ndarray, floor: np.ndarray, group_max: np.ndarray) -> np.ndarray:
        return np.arange(pair_max.size)

    def _check(self, cand: np.ndarray, c: int, mag: np.ndarray, z_and_carry: np.ndarray,
               energies: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        fused = super()._check(cand, c, mag, z_and_carry, energies)
        plain = reference_check(self, cand, c, mag, z_and_carry.copy(), energies)
        self.calls += 1
        if fused is None or plain is None:
            self.differ += (fused is None) != (plain is None)
        else:
            self.differ += not (np.array_equal(fused[0], plain[0]) and np.array_equal(fused[1], plain[1]))
            self.hits += fused[0].size
        return fused


def test_fused_checks_hit_the_windows_the_plain_ones_do() -> None:
    """Tones at the offset, twist and level limits, in noise, with DC, exactly periodic pairs, speech-like noise."""
    rng = np.random.default_rng(41)
    streams = []
    for i in range(64):
        digit = DIGITS[i % 16]
        kw: dict[str, float] = {"level_dbm0": float(rng.uniform(-34, -2))}
        kind = i % 8
        if kind == 0:
            kw["twist_db"] = float(rng.choice([-1, 1]) * rng.uniform(3.0, 10.0))
        elif kind == 1:
            group = "low" if rng.random() < 0.5 else "high"
            kw[f"{group}_offset_pct"] = float(rng.choice([-1, 1]) * rng.uniform(1.0, 4.0))
        elif kind == 2:
            kw["twist_db"] = float(rng.uniform(-9.5, 5.5))
            kw["high_offset_pct"] = float(rng.uniform(-3.0, 3.0))
        noise = float(rng.uniform(4, 30)) if kind in (3, 4) else None
        samples, _, _ = placed_tone(digit, rng, duration_ms=float(rng.integers(20, 110)), noise_snr_db=noise,
                                    law="PCMA" if i % 2 else "PCMU", **kw)
        samples = np.pad(samples, (0, 2400))[:2400]
        if kind == 5:
            samples = np.clip(samples.astype(np.int32) + int(rng.integers(-3000, 3000)), -32768, 32767)
        streams.append(samples.astype(np.int16))
    # Pairs of 100 Hz multiples repeat every 80 samples: windows two hops apart are equal to the bit.
    t = np.arange(2400)
    for low, high in ((700, 1200), (800, 1300), (900, 1500), (700, 1600)):
        periodic = 6000 * (np.sin(2 * np.pi * low * t / 8000) + np.sin(2 * np.pi * high * t / 8000))
        streams.append(g711_round_trip(periodic))
    for _ in range(8):
        streams.append(g711_round_trip(np.cumsum(rng.standard_normal(2400)) * 200.0))
    # Two tones too close in time and a tone over a tone: the history spans both.
    for a, b in (("1", "5"), ("9", "D")):
        sig = np.zeros(2400)
        first = dtmf_tone(a, 60.0, -8.0)
        sig[300:300 + first.size] += first
        second = dtmf_tone(b, 60.0, -14.0, low_offset_pct=1.2)
        sig[700:700 + second.size] += second
        streams.append(g711_round_trip(sig))
    audio = np.stack(streams)
    bank = _ComparingBank(audio.shape[0])
    slots = np.array([bank.add_stream() for _ in streams])
    events = []
    for pos in range(0, audio.shape[1], 160):
        events += bank.process(slots, audio[:, pos:pos + 160])
    assert bank.calls == audio.shape[1] // 160
    assert bank.differ == 0
    assert bank.hits >= 200
    assert sum(isinstance(e, DigitDetected) for e in events) >= 30


def test_the_level_check_is_implied_and_the_phase_shortcut_holds() -> None:
    """The fused checks leave out what the others imply (see _Analysis): true for the constants in use."""
    an = DetectorBank(1)._an
    assert an.level_implied
    assert float(an.freq_tol_rad.max()) < np.pi / 2
    # The widest tolerance is the high group's top tone: 2.5 % + 1 Hz of 1,633 Hz.
    assert max(DTMF_FREQS_HZ["D"]) == 1633


def _loop_state_machine(row: list[int], hit_row: list[int], chunk: int, slot: int, events: list) -> None:
    """The hit/miss state machine window by window (as DetectorBank._advance_each's loop): the reference."""
    run_code, run_len, run_first, active, active_start, last_hit, misses = row
    for h in hit_row:
        key = h - detector_mod._HELD_ONLY if h >= detector_mod._HELD_ONLY else h
        if h < 0 or h != key:
            run_code, run_len = -1, 0  # a held-only window keeps a digit on and breaks any run
        elif h == run_code:
            run_len += 1
        else:
            run_code, run_len, run_first = h, 1, chunk
        if active >= 0:
            if key == active:
                last_hit, misses = chunk, 0
            else:
                misses += 1
                if misses >= detector_mod.END_MISSES:
                    events.append(("ended", slot, active, active_start, last_hit))
                    active = -1
        if run_len == detector_mod.ACCEPT_HITS and run_code != active:
            if active >= 0:
                events.append(("ended", slot, active, active_start, last_hit))
            active, active_start = run_code, detector_mod._start_sample(run_first)
            last_hit, misses = chunk, 0
            events.append(("detected", slot, active, active_start, chunk))
        chunk += 1
    row[:] = run_code, run_len, run_first, active, active_start, last_hit, misses


def test_state_machine_steps_equal_the_window_loop() -> None:
    """Windows that all hit one key (or all miss) advance in one step: the same events and state as one by one."""
    rng = np.random.default_rng(43)
    codes = detector_mod._CODE_TO_DIGIT
    for trial in range(400):
        row = [-1, 0, 0, -1, 0, -1, 0]
        chunk = 0
        history = [int(v) for v in rng.choice([-1, -1, 3, 3, 3, 7, 19, 23], size=int(rng.integers(0, 30)))]
        _loop_state_machine(row, history, chunk, 0, [])
        chunk += len(history)
        n = int(rng.integers(1, 9))
        key = int(rng.choice([-1, 3, 7, 11, 19, 23]))
        expected: list = []
        ref_row = list(row)
        _loop_state_machine(ref_row, [key] * n, chunk, 5, expected)
        rows = [list(row)]
        events, busy, _ = DetectorBank._advance_each(np.array([5]), [[key] * n], rows, [chunk])
        got = [("ended", e.slot, codes.index(e.digit), e.start_sample, (e.end_sample - 34) // 40)
               if type(e).__name__ == "DigitEnded" else
               ("detected", e.slot, codes.index(e.digit), e.start_sample, e.decided_sample // 40 - 1)
               for e in events]
        assert got == expected, (trial, row, key, n)
        assert rows[0] == ref_row, (trial, row, key, n)
        assert busy == [ref_row[0] >= 0 or ref_row[3] >= 0]


def test_window_history_tables_stay_within_their_bound(monkeypatch) -> None:
    """Calls of many shapes (as a relay makes them) keep the cached tables under their bounds, same events."""
    monkeypatch.setattr(detector_mod, "_CHECK_CACHE_COLUMNS", 2048)
    tone = g711_round_trip(dtmf_tone("5", 100.0, -10.0))[:800]
    events: list[list] = [[], []]
    for i, bound in enumerate((1 << 19, 1 << 30)):
        monkeypatch.setattr(detector_mod, "_HISTORY_CACHE_BYTES", bound)
        bank = DetectorBank(400)
        slots = np.array([bank.add_stream() for _ in range(400)])
        built = 0
        for k in range(1, 400, 9):
            for pos in range(0, 800, 160):
                events[i] += bank.process(slots[:k], np.tile(tone[pos:pos + 160], (k, 1)))
            built += 64 * 4 * k
            assert bank._window_history_bytes <= bound
            assert bank._window_history_bytes == sum(t.nbytes for t in bank._window_history.values())
            assert sum(bank._check_plans) <= detector_mod._CHECK_CACHE_COLUMNS
        assert built > 2 * (1 << 20)
    assert events[0] == events[1]
    assert sum(isinstance(e, DigitDetected) for e in events[0]) >= 300
