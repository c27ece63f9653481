"""Streaming DTMF receiver (ITU-T Q.23 frequencies, Q.24 acceptance rules).

What drives it: blocks of linear samples per stream; nothing else (no clock).
Safe state: no digit active. `flush` returns a stream to it.

The signal is cut into 40-sample chunks at absolute positions (0, 40, 80, ...)
of each stream, so the decisions depend only on the samples, never on how they
were packetised. Each chunk closes one 80-sample Hann window (10 ms, hop 5 ms).
For every window and each of the 8 DTMF frequencies the bank computes the
complex DFT value from one matrix product over all streams' new chunks (each
chunk gives the opening half of one window and the closing half of the next; a
per-stream carry bridges calls); a cheap gate (implied by the exact checks)
leaves only the few windows that may hold a DTMF pair for the exact checks, and
only streams with a hit or a digit on reach the state machine. Per window:

* the strongest bin of each group names the candidate pair;
* the real frequency of each tone comes from the phase advance of that bin
  between windows 40 samples apart (unambiguous to +-100 Hz), averaged over two
  lags: this is what separates 1.5 % + 2 Hz (accept) from 3.5 % (reject),
  which bin magnitudes of ~100-sample blocks cannot;
* the tone powers, corrected for the window's roll-off at the estimated
  offset, give the level and two energy ratios: against the mean power of the
  window's 80 samples about their mean (purity: rejects speech and noise; a DC
  offset is neither) and against the louder of its two 40-sample chunks
  (coverage: a window counts only when the tone fills more than about half of
  it, so hits measure duration whatever the level);
* the twist is decided on the two tones' powers summed over the window and the
  three before it (noise and the leakage between the tones averaged: one
  window's estimate scatters by +-0.6 dB at 15 dB SNR), each window's own twist
  only within a looser bound.

A window that passes every check is a hit for that key. A digit is accepted
after `ACCEPT_HITS` consecutive hits of the same key (tones of 40 ms always,
tones under 23 ms never) and ends after `END_MISSES` consecutive windows
without it (its own key's windows keep it on with `CONTINUE_TWIST_DB` more twist): a pause of 25 ms or more (Q.24: 40 ms) always separates two digits, a
drop-out of up to 15 ms inside a tone never does (18-20 ms: either).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain

import numpy as np

from dtmf.tones import DBM0_FULL_SCALE_SINE, HIGH_FREQS_HZ, KEYPAD, LOW_FREQS_HZ

SAMPLE_RATE_HZ = 8000
CHUNK_SAMPLES = 40
"""Hop between analysis windows (5 ms)."""
WINDOW_SAMPLES = 2 * CHUNK_SAMPLES
"""Analysis window (10 ms): short enough to follow a 3.5 % offset tone, long
enough that the Hann window keeps the other group out of the bin."""

ACCEPT_HITS = 6
"""Consecutive hit windows that accept a digit: ~30 ms of tone (Q.24: accept 40 ms,
reject under 20-23 ms)."""
END_MISSES = 5
"""Consecutive missed windows that end a digit: a 40 ms pause always does (Q.24)."""

FREQ_TOL_PCT = 2.5
FREQ_TOL_HZ = 1.0
"""Decision threshold on the frequency estimate: halfway between the Q.24 accept
limit (1.5 % + 2 Hz) and the reject limit (3.5 %)."""
# ITU-T Q.24 (the administrations' receiver values, as commonly implemented, e.g. the North
# American figures of Bellcore GR-506): twist up to 8 dB normal (high group weaker) and 4 dB
# reverse accepted, beyond rejected.
# spandsp-style receivers compare one block's two Goertzel powers against 8 / 4 dB (power ratios
# 6.3 / 2.5), so noise on the weaker tone decides each block; here the tone's powers over 25 ms
# decide, and the 0.4 dB above 8 / 4 is its spread on clean tones (leakage, G.711), which keeps
# 8.5 / 4.5 dB rejected.
NORMAL_TWIST_DB = 8.4
"""Largest accepted high-below-low twist of a tone (Q.24 figures: accept 8 dB, reject beyond)."""
REVERSE_TWIST_DB = 4.4
"""Largest accepted high-above-low twist of a tone (Q.24 figures: accept 4 dB, reject beyond)."""
WINDOW_TWIST_SLACK_DB = 2.0
"""How far one window's own twist may pass the limits: noise scatters it, the tone's is decided over
`HISTORY_WINDOWS` windows."""
CONTINUE_TWIST_DB = 2.0
"""Hysteresis: while a digit is on, windows of its own key pass the tone's twist check (over
`HISTORY_WINDOWS`) with this much more twist; one window's own check stays. A key held at the
twist limit in noise (8 / 4 dB at 15-18 dB SNR: the measure over 25 ms scatters by ~0.25 dB)
otherwise missed `END_MISSES` windows in a row now and then and one press gave two digits. A
digit still starts only within the limits."""
HISTORY_WINDOWS = 4
"""A tone's twist is measured over the window and the three before it (25 ms of signal): at the hit
that accepts a digit (the sixth), hits 3-6, which the tone fills (at its onset the stronger tone's
transient leaks into the weaker one's bin)."""
HELD_RATIO = 0.5
"""The measure decides once the oldest of those windows holds the pair at this share of the newest's
power (from the tone's fourth hit on); before, the window's own twist does, with the slack."""
MIN_PAIR_LEVEL_DBM0 = -29.0
"""Minimum power of the two tones together (two tones of -32 dBm0)."""
MIN_TONE_LEVEL_DBM0 = -40.0
"""Minimum power of the weaker tone (twist is checked separately)."""
PURITY_MIN = 0.75
"""Share of the window's mean power that must be in the two tones (rejects speech)."""
COVERAGE_MIN = 0.4
"""Tone power against the louder 40-sample chunk: the tone fills >~55 % of the window."""

_FREQS_HZ = np.array(LOW_FREQS_HZ + HIGH_FREQS_HZ)
_CODE_TO_DIGIT = tuple(KEYPAD[row][col] for row in range(4) for col in range(4))
_NONE = -1


def _redacted_repr(event: object) -> str:
    # During a capture the digits are card data: a repr (logs, tracebacks) never shows them.
    fields = ", ".join(f"{k}=<redacted>" if k == "digit" else f"{k}={v!r}" for k, v in vars(event).items())
    return f"{type(event).__name__}({fields})"


@dataclass(frozen=True, repr=False)
class DigitDetected:
    """The receiver accepted a digit (emitted at the decision, while the tone is on)."""

    slot: int
    """Stream slot in the bank (0 for DtmfDetector)."""
    digit: str
    """One of "0123456789*#ABCD"."""
    start_sample: int
    """Estimated tone onset, samples since the stream began."""
    decided_sample: int
    """Sample count at which the decision was made."""

    __repr__ = _redacted_repr


@dataclass(frozen=True, repr=False)
class DigitEnded:
    """The tone of an accepted digit ended (pause seen, or flush)."""

    slot: int
    """Stream slot in the bank (0 for DtmfDetector)."""
    digit: str
    """One of "0123456789*#ABCD"."""
    start_sample: int
    """Estimated tone onset, as in the DigitDetected event."""
    end_sample: int
    """Estimated tone end (one past the last tone sample)."""

    __repr__ = _redacted_repr


DetectorEvent = DigitDetected | DigitEnded


class DetectorInputError(ValueError):
    """Malformed arguments to the detector."""


def _dbm0_power(level_dbm0: float) -> float:
    """Mean power (int16 units squared) of a sine at level_dbm0."""
    peak = 32767.0 * 10.0 ** ((level_dbm0 - DBM0_FULL_SCALE_SINE) / 20.0)
    return peak * peak / 2.0


class _Analysis:
    """Constant matrices of the window analysis, built once per sample rate."""

    def __init__(self, sample_rate_hz: int) -> None:
        n = np.arange(WINDOW_SAMPLES)
        window = 0.5 - 0.5 * np.cos(2 * np.pi * (n + 0.5) / WINDOW_SAMPLES)
        omega = 2 * np.pi * _FREQS_HZ / sample_rate_hz
        # Rows 0-7: real parts, rows 8-15: imaginary parts of window * exp(-j w n).
        rows = np.vstack([window * np.cos(np.outer(omega, n)), -window * np.sin(np.outer(omega, n))])
        # A window's DFT is (first half of the rows) . (older chunk) + (second half) .
        # (newer chunk): one product over the chunks, each chunk used once, gives
        # both halves (rows 0-15: opening half, rows 16-31: closing half).
        sum_w = window.sum()
        self.tone_power_norm = float(2.0 / sum_w ** 2)
        # Phase a bin at f0 advances over one hop for a tone exactly at f0 (wrapped).
        self.hop_phase = np.angle(np.exp(1j * omega * CHUNK_SAMPLES)).astype(np.float32)
        self.rad_to_hz = sample_rate_hz / (2 * np.pi * CHUNK_SAMPLES)
        self.freq_tol_hz = (_FREQS_HZ * FREQ_TOL_PCT / 100.0 + FREQ_TOL_HZ).astype(np.float32)
        self.freq_tol_rad = (self.freq_tol_hz / self.rad_to_hz).astype(np.float32)
        # Window gain at a frequency offset, to correct the tone power for it.
        self.gain_df_hz = np.linspace(-150.0, 150.0, 601)
        phasors = np.exp(2j * np.pi * np.outer(self.gain_df_hz, n) / sample_rate_hz)
        self.gain2 = (np.abs(phasors @ window) / sum_w) ** 2
        # The same as a table over the phase error of one hop (-pi..pi, steps of
        # 0.05 Hz): tone power per raw bin magnitude, looked up by rounding.
        self.power_steps_per_rad = _POWER_STEPS / (2 * np.pi)
        phase_df_hz = (np.arange(_POWER_STEPS + 1) / self.power_steps_per_rad - np.pi) * self.rad_to_hz
        phase_phasors = np.exp(2j * np.pi * np.outer(phase_df_hz, n) / sample_rate_hz)
        phase_gain2 = (np.abs(phase_phasors @ window) / sum_w) ** 2
        self.power_per_mag = (self.tone_power_norm / phase_gain2).astype(np.float32)
        # The gate sees raw bin magnitudes, before the roll-off correction (at most
        # 1 dB at an accepted offset): its bounds hold whenever the exact checks pass.
        self.gate_pair_mag = _dbm0_power(MIN_PAIR_LEVEL_DBM0 - 4.0) / self.tone_power_norm
        accepted_df = np.abs(self.gain_df_hz) <= self.freq_tol_hz.max() + 1.0
        pair_bound = self.tone_power_norm / self.gain2[accepted_df].min()
        self.gate_purity = pair_bound * WINDOW_SAMPLES / PURITY_MIN
        # Chunk energies are kept divided by the purity bound, so that level and
        # purity are one comparison: pair >= max(scaled energy, level floor).
        self.scaled_ones = np.full(CHUNK_SAMPLES, 1.0 / self.gate_purity, dtype=np.float32)
        # Row 32 of the product: each chunk's sum, scaled so that a window's DC energy on
        # that scale is the square of its two chunks' added values, (s1 + s2)^2 / 80.
        sum_row = np.full((1, CHUNK_SAMPLES), 1.0 / math.sqrt(WINDOW_SAMPLES * self.gate_purity))
        self.half_rows = np.ascontiguousarray(
            np.vstack([rows[:, :CHUNK_SAMPLES], rows[:, CHUNK_SAMPLES:], sum_row]), dtype=np.float32)
        self.purity_per_energy = PURITY_MIN * self.gate_purity / WINDOW_SAMPLES
        self.coverage_per_energy = COVERAGE_MIN * self.gate_purity / CHUNK_SAMPLES
        # The gate's twist sees raw magnitudes: at offsets the frequency check accepts,
        # the two tones' roll-off corrections differ by at most this ratio (~1 dB, from
        # the table itself), plus 0.1 % for float rounding.
        accepted_steps = np.abs(np.arange(_POWER_STEPS + 1) / self.power_steps_per_rad - np.pi) \
            <= self.freq_tol_rad.max() + 2.0 / self.power_steps_per_rad
        correction_ratio = float(self.power_per_mag[accepted_steps].max() / self.power_per_mag[accepted_steps].min())
        twist_slack = correction_ratio * 1.001
        self.window_normal_twist = 10.0 ** (-(NORMAL_TWIST_DB + WINDOW_TWIST_SLACK_DB) / 10)
        self.window_reverse_twist = 10.0 ** ((REVERSE_TWIST_DB + WINDOW_TWIST_SLACK_DB) / 10)
        self.normal_twist = 10.0 ** (-NORMAL_TWIST_DB / 10)
        self.reverse_twist = 10.0 ** (REVERSE_TWIST_DB / 10)
        # A held digit's own key (CONTINUE_TWIST_DB): the tone's twist may pass the limits by as
        # much as one window's may (WINDOW_TWIST_SLACK_DB), so the gate is the same.
        loosen = 10.0 ** (CONTINUE_TWIST_DB / 10)
        self.held_normal_twist = self.normal_twist / loosen
        self.held_reverse_twist = self.reverse_twist * loosen
        self.gate_normal_twist = self.window_normal_twist / twist_slack
        self.gate_reverse_twist = self.window_reverse_twist * twist_slack
        self.min_pair_power = _dbm0_power(MIN_PAIR_LEVEL_DBM0)
        self.min_tone_power = _dbm0_power(MIN_TONE_LEVEL_DBM0)
        # The gate's twist bounds as one column: hi >= lo * each, then one comparison.
        self.gate_normal32 = np.array(self.gate_normal_twist, dtype=np.float32)
        self.gate_reverse32 = np.array(self.gate_reverse_twist, dtype=np.float32)
        # Operands of the exact checks (see DetectorBank._check), each in the dtype its check
        # was written in: float32 for the phase, the twist and the level floors (Python floats
        # against float32), float64 for the energy ratios (numpy float64).
        self.hop_tol = np.concatenate([self.hop_phase, self.freq_tol_rad]).astype(np.float32)
        self.pi32 = np.array(np.pi, dtype=np.float32)
        self.two_pi32 = np.array(2 * np.pi, dtype=np.float32)
        self.power_steps32 = np.array(self.power_steps_per_rad, dtype=np.float32)
        self.half32 = np.array(0.5, dtype=np.float32)
        self.held32 = np.array(HELD_RATIO, dtype=np.float32)
        self.min_tone32 = np.array(self.min_tone_power, dtype=np.float32)
        self.half_two32 = np.array([[0.5], [2.0]], dtype=np.float32)
        self.twist_signs = np.array([[1.0], [-1.0]], dtype=np.float32)
        self.twist_bounds = np.array([[[self.window_normal_twist], [-self.window_reverse_twist]],
                                      [[self.normal_twist], [-self.reverse_twist]]], dtype=np.float32)
        self.held_twist_bounds = np.array([[[self.window_normal_twist], [-self.window_reverse_twist]],
                                           [[self.held_normal_twist], [-self.held_reverse_twist]]], dtype=np.float32)
        self.pair_bounds = np.array([[self.purity_per_energy], [self.coverage_per_energy],
                                     [self.coverage_per_energy], [float(np.float32(self.min_pair_power))]])
        # A window that passes the twist and pair level checks has each tone above the level
        # floor (the weaker at least the pair over 1 + the twist bound), with a margin far above
        # float32 rounding: then that check is left out (see _check).
        slack = 1.0 + 1e-6
        # (A held digit's own key, under its looser twist bounds, is held to the pair level and
        # these bounds only: its weaker tone ~1.6 dB under the floor may go on.)
        weakest = float(self.pair_bounds[3, 0]) / slack / max(
            1.0 + slack / float(np.float32(self.window_normal_twist)),
            1.0 + slack * float(np.float32(self.window_reverse_twist)))
        self.level_implied = weakest > float(self.min_tone32)
        # _check takes phase + pi as the remainder it came from: exact (Sterbenz) for phases
        # within pi / 2 of 0, hence on every window in band.
        if not float(self.freq_tol_rad.max()) < np.pi / 2:
            raise RuntimeError("DTMF frequency tolerance too wide for the roll-off lookup")


_ANALYSIS: dict[int, _Analysis] = {}
_POWER_STEPS = 4096
# Float carry of each stream between calls (one row per slot, gathered and
# scattered once per call).
_CARRY_OPEN = slice(0, 16)  # opening-half DFT of the last complete chunk (re 0-7, im 8-15)
_CARRY_STATS = slice(16, 18)  # sum (scaled, see _Analysis.sum_row) and energy of the last complete chunk
_CARRY_HIST = slice(18, 18 + 16 * (HISTORY_WINDOWS - 1))  # DFT of the last windows, older first
_CARRY_WIDTH = _CARRY_HIST.stop

# Integer state of the hit/miss state machine, one row per slot.
_RUN_CODE, _RUN_LEN, _RUN_FIRST, _ACTIVE, _ACTIVE_START, _LAST_HIT, _MISSES = range(7)
_SM_WIDTH = 7
_HELD_ONLY = 16
"""Added to a key's code for a window that only keeps that key's digit on (see CONTINUE_TWIST_DB)."""
_SM_FRESH = np.array([_NONE, 0, 0, _NONE, 0, _NONE, 0], dtype=np.int64)


_FEW_CANDIDATES = 16
"""Below this many candidate windows the frequency check runs first, alone."""


def _check_items() -> np.ndarray:
    """Which gathered DFT value each row of the exact checks' values holds (see _check).

    The gather holds, for the window and the HISTORY_WINDOWS - 1 before it (w, newest first), the
    real and imaginary part of the chosen low and high bin: row 4 w + 2 part + group. The values:
    rows 0-15 the real, then the imaginary part of each window, low and high bin, whose squares
    give the powers; rows 16-23 and 24-31: x0 and x2 (the window and the one two hops
    before) as re, im, im, re; rows 32-39: x1 as re, im, re, im.
    """
    re, im = 0, 1
    items = [(part, w, g) for part in (re, im) for w in range(HISTORY_WINDOWS) for g in (0, 1)]
    for w, parts in ((0, (re, im, im, re)), (2, (re, im, im, re)), (1, (re, im, re, im))):
        items += [(part, w, g) for part in parts for g in (0, 1)]
    return np.array([4 * w + 2 * part + g for part, w, g in items])


_ITEM_SOURCE = _check_items()
_HISTORY_CACHE_BYTES = 32 << 20
"""Bound on a bank's cached window-history tables (one per call shape)."""
_CHECK_CACHE_COLUMNS = 16384
"""Bound on the summed widths of a bank's exact-check work arrays (~1.4 kB per column: ~23 MB)."""
_GATHER_GROUP = np.tile([0, 1], 2 * HISTORY_WINDOWS)
_GATHER_WINDOW = np.repeat(np.arange(HISTORY_WINDOWS), 4)
_GATHER_ROW = np.tile([0, 4, 8, 12], HISTORY_WINDOWS)
"""Row 4 w + 2 part + group of the gather: that group's bin + this base is its DFT row (rows 0-7: the
real parts of the 8 bins, low group first; rows 8-15: the imaginary parts)."""
_CHECK_MIN_COLUMNS = 8
"""The exact checks' work arrays come in widths of 8, 16, 32, 64, then multiples of 64 windows
(padded with copies): a few widths, each made once per bank."""


class _CheckPlan:
    """The work arrays of the exact checks for up to m windows and their views, made once (see _check).

    Each dtype's arrays are rows of one buffer (few cache lines, one allocation); every view a
    step of _check uses is made here, so that each step is one ufunc call on contiguous rows.
    """

    def __init__(self, an: _Analysis, m: int) -> None:
        h = HISTORY_WINDOWS
        f = np.empty((152, m), dtype=np.float32)
        i = np.empty((5 + 22 * h, m), dtype=np.intp)
        self.cand, self.keys, self.held_only, self.bins = i[0], i[1], i[2], i[3:5]
        i = i[5:]
        # Per window (newest first): DFT row of the low and high bin's re, then im.
        self.dft_rows, self.dft_row_base = i[:4 * h], i[4 * h:8 * h]
        self.dft_row_base[:] = _GATHER_ROW[:, None]
        self.where = i[8 * h:16 * h].reshape(2, 4 * h, m)
        self.offset, self.stride = self.where
        self.idx = i[16 * h:20 * h]
        self.where_by_window = i[20 * h:].reshape(2, h, m)
        self.mag, f = f[:8], f[8:]
        self.mag_groups = self.mag.reshape(2, 4, m)
        self.dft, f = f[:4 * h], f[4 * h:]  # (window, part, group): the chosen bins' values
        self.g, f = f[:40], f[40:]
        self.re_im = self.g[:16]
        self.x0_sum, self.x0_diff = self.g[16:20], self.g[20:24]
        self.x2_sum, self.x2_diff = self.g[24:28], self.g[28:32]
        self.x1 = self.g[32:40]
        self.hop_tol, f = f[:4], f[4:]
        self.hop, self.tol = self.hop_tol[:2], self.hop_tol[2:]
        self.sd, f = f[:8], f[8:]
        self.sd_sum, self.sd_diff = self.sd[:4], self.sd[4:]
        self.cross, f = f[:8], f[8:]
        self.cross_re_a, self.cross_re_b = self.cross[0:2], self.cross[2:4]
        self.cross_im_a, self.cross_im_b = self.cross[4:6], self.cross[6:8]
        self.cross_re, self.cross_im, self.turn, self.phase, f = f[0:2], f[2:4], f[4:6], f[6:8], f[8:]
        self.abs_phase, self.step, self.correction, f = f[0:2], f[2:4], f[4:6], f[6:]
        self.squares, f = f[:4 * h], f[4 * h:]
        self.squares_re, self.squares_im = self.squares[:2 * h], self.squares[2 * h:]
        self.powers, f = f[:2 * h], f[2 * h:]
        self.powers_by_window = self.powers.reshape(h, 2, m)
        self.pair_low = self.powers[0:2 * h:2 * (h - 1)]  # low bin's, this window and the oldest
        self.pair_high = self.powers[1:2 * h:2 * (h - 1)]
        self.pair_powers, self.held_bound, self.total, f = f[0:2], f[2], f[3:5], f[5:]
        self.p, f = f[:4], f[4:]
        self.p_window, self.p_total = self.p[:2], self.p[2:]
        self.p_low, self.p_high = self.p[0::2], self.p[1::2]
        self.bound, self.normal_bounds, self.reverse_bounds, f = f[0:2], f[2:4], f[4:6], f[6:]
        self.normal_bounds[:] = an.held_twist_bounds[:, 0]
        self.reverse_bounds[:] = -an.held_twist_bounds[:, 1]
        self.strict_normal_bounds, self.strict_reverse_bounds, f = f[0:2], f[2:4], f[4:]
        self.strict_normal_bounds[:] = an.twist_bounds[:, 0]
        self.strict_reverse_bounds[:] = -an.twist_bounds[:, 1]
        self.e, f = f[:7], f[7:]
        self.e[6] = 1.0
        self.stats = self.e[:4]
        self.sum_and_chunk_sum = self.e[2::-2]
        self.energy_rows = self.e[3:7]
        self.half_two, self.halves, f = f[0:2], f[2:4], f[4:]
        self.half_two[:] = an.half_two32
        assert f.shape[0] == 0
        d = np.empty((12, m), dtype=np.float64)
        self.pair_bounds, self.energy_bounds, self.pair64 = d[:4], d[4:8], d[8:]
        self.pair_bounds[:] = an.pair_bounds
        b = np.empty((18, m), dtype=np.bool_)
        self.passed, self.strict, self.flag, self.hits = b[:12], b[12:16], b[16], b[17]
        self.strict_normal, self.strict_reverse = self.strict[0:2], self.strict[2:4]
        self.strict_summed_twist = self.strict[1:4:2]
        self.in_band, self.level = self.passed[0:2], self.passed[2:4]
        self.normal, self.reverse = self.passed[4:6], self.passed[6:8]
        self.summed_twist = self.passed[5:8:2]
        self.energy_passed = self.passed[8:12]
        if an.level_implied:
            self.level[:] = True


class _Plan:
    """The work arrays of one call shape (k streams, c chunks each) and their views, made once.

    Views of the bank's shared scratch buffers: building the ~30 views costs more than
    the arithmetic on some of them.
    """

    def __init__(self, bank: DetectorBank, k: int, c: int) -> None:
        kc = k * c
        self.x = bank._scratch("x", (k, c * CHUNK_SAMPLES))
        self.chunks_t = self.x.reshape(kc, CHUNK_SAMPLES).T
        self.sq = bank._scratch("x2", (k, c * CHUNK_SAMPLES))
        self.sq_chunks = self.sq.reshape(kc, CHUNK_SAMPLES)
        # The windows' DFT (16 rows) and the streams' carry share one flat array, so that
        # the check gathers a window and the two before it in one take (see _check).
        self.z_and_carry = bank._scratch("z_and_carry", (16 * kc + k * _CARRY_WIDTH,))
        self.z = self.z_and_carry[:16 * kc].reshape(16, kc)
        self.carry = self.z_and_carry[16 * kc:].reshape(k, _CARRY_WIDTH)
        # Rows 0-32: the product (opening halves, closing halves, chunk sums); rows 32-33:
        # each chunk's sum and energy; rows 34-35: each window's (its two chunks'); row 36:
        # the windows' DC energy. Rows 32-35 are what the check gathers per window.
        buf = bank._scratch("halves", (37, kc))
        self.halves = buf[:33]
        opening, closing = buf[:16], buf[16:32]
        self.opening_flat = opening.reshape(-1)[:-1]
        self.closing_flat = closing.reshape(-1)[1:]
        self.z_flat = self.z.reshape(-1)[1:]
        self.first_closing = closing[:, ::c]
        self.carry_opening = self.carry[:, _CARRY_OPEN].T
        self.z_first = self.z[:, ::c]
        chunk_stats, window_stats = buf[32:34], buf[34:36]
        self.stats = buf[32:36]
        self.energy = buf[33]
        self.window_sum, self.e_sum, self.window_dc = buf[34], buf[35], buf[36]
        chunk_flat, window_flat = chunk_stats.reshape(-1), window_stats.reshape(-1)
        self.chunk_prev, self.chunk_next, self.window_next = chunk_flat[:-1], chunk_flat[1:], window_flat[1:]
        self.chunk_first, self.window_first = chunk_stats[:, ::c], window_stats[:, ::c]
        self.carry_stats = self.carry[:, _CARRY_STATS].T
        self.zz = bank._scratch("zz", (16, kc))
        self.zz_re, self.zz_im = self.zz[:8], self.zz[8:]
        self.mag = bank._scratch("mag", (8, kc))
        self.mag_groups = self.mag.reshape(2, 4, kc)
        self.group_max = bank._scratch("gmax", (2, kc))
        self.pair_max = bank._scratch("pair", (kc,))
        self.floor = bank._scratch("floor", (kc,))
        # Carry to the next call: the last chunk's opening half and energy, the last two windows.
        self.new = bank._scratch("carry_new", (k, _CARRY_WIDTH))
        self.new_opening, self.last_opening = self.new[:, _CARRY_OPEN], opening[:, c - 1::c].T
        self.new_stats, self.last_stats = self.new[:, _CARRY_STATS], chunk_stats[:, c - 1::c].T
        h = HISTORY_WINDOWS - 1
        self.new_hist = self.new[:, _CARRY_HIST].reshape(k, h, 16)
        windows = self.z.reshape(16, k, c).transpose(1, 2, 0)
        if c >= h:
            self.last_windows = windows[:, c - h:]
            self.kept_hist = None
        else:
            # Fewer new windows than the history holds: the newest of the old ones stay.
            self.last_windows = windows
            self.kept_hist = self.carry[:, _CARRY_HIST].reshape(k, h, 16)[:, c:]


class DetectorBank:
    """DTMF receivers for many streams, advanced together by one numpy pass per call."""

    vector_min_streams = 48
    """From this many streams with a tone in progress, the state machine runs vectorised."""

    def __init__(self, capacity: int = 16, sample_rate_hz: int = SAMPLE_RATE_HZ) -> None:
        if sample_rate_hz != SAMPLE_RATE_HZ:
            raise DetectorInputError("DTMF detector supports 8000 Hz only")
        if capacity < 1:
            raise DetectorInputError("detector bank capacity must be positive")
        if sample_rate_hz not in _ANALYSIS:
            _ANALYSIS[sample_rate_hz] = _Analysis(sample_rate_hz)
        self._an = _ANALYSIS[sample_rate_hz]
        self._capacity = 0
        self._n_held = 0  # slots holding an incomplete chunk
        self._n_busy = 0  # slots with a run of hits or a digit on
        self._work: dict[str, np.ndarray] = {}
        self._views: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
        self._window_history: dict[tuple[int, int], np.ndarray] = {}
        self._window_history_bytes = 0
        self._plans: dict[tuple[int, int], _Plan] = {}
        self._check_plans: dict[int, _CheckPlan] = {}
        self._grow(capacity)

    @property
    def capacity(self) -> int:
        """Number of slots currently allocated."""
        return self._capacity

    def _grow(self, capacity: int) -> None:
        old = self._capacity

        def grown(arr: np.ndarray | None, shape: tuple[int, ...], dtype: type) -> np.ndarray:
            new = np.zeros((capacity, *shape), dtype=dtype)
            if arr is not None:
                new[:old] = arr
            return new

        first = old == 0
        self._held = grown(None if first else self._held, (CHUNK_SAMPLES,), np.float32)
        self._held_n = grown(None if first else self._held_n, (), np.int64)
        self._carry = grown(None if first else self._carry, (_CARRY_WIDTH,), np.float32)
        self._chunks = grown(None if first else self._chunks, (), np.int64)
        self._sm = grown(None if first else self._sm, (_SM_WIDTH,), np.int64)
        self._busy = grown(None if first else self._busy, (), np.bool_)
        self._in_use = grown(None if first else self._in_use, (), np.bool_)
        self._seen = np.zeros(capacity, dtype=np.bool_)
        self._capacity = capacity
        self._reset(np.arange(old, capacity))

    def _reset(self, slots: np.ndarray) -> None:
        self._n_held -= int(np.count_nonzero(self._held_n[slots]))
        self._n_busy -= int(np.count_nonzero(self._busy[slots]))
        for arr in (self._held, self._held_n, self._carry, self._chunks, self._busy, self._in_use):
            arr[slots] = 0
        self._sm[slots] = _SM_FRESH

    def add_stream(self) -> int:
        """Claim a free slot with fresh state; the bank grows when full."""
        free = np.flatnonzero(~self._in_use)
        if free.size == 0:
            slot = self._capacity
            self._grow(2 * self._capacity)
        else:
            slot = int(free[0])
        self._reset(np.array([slot]))
        self._in_use[slot] = True
        return slot

    def remove_stream(self, slot: int) -> None:
        """Release a slot (its open digit, if any, is dropped without an event)."""
        self._check_slot(slot)
        self._reset(np.array([slot]))

    def tone_present(self, slots: np.ndarray) -> np.ndarray:
        """Per slot: a DTMF pair was seen in the latest window or a digit is on.

        The cheap "tone may be starting" status for the masker: true from the first
        hit window, before the digit is accepted.
        """
        idx = np.asarray(slots, dtype=np.int64)
        sm = self._sm[idx]
        return (sm[:, _RUN_CODE] >= 0) | (sm[:, _ACTIVE] >= 0)

    def _check_slot(self, slot: int) -> None:
        if not (0 <= slot < self._capacity) or not self._in_use[slot]:
            raise DetectorInputError("detector slot is not in use")

    def process(self, slots: np.ndarray, frames: np.ndarray) -> list[DetectorEvent]:
        """Feed frames[i] (int16 or float in int16 units) to stream slots[i]; return events."""
        slots = np.asarray(slots)
        frames = np.asarray(frames)
        if slots.ndim != 1 or frames.ndim != 2 or frames.shape[0] != slots.shape[0]:
            raise DetectorInputError("detector input must be slots (k,) and frames (k, n)")
        k = slots.size
        if k == 0:
            return []
        if slots.dtype.kind not in "iu":
            raise DetectorInputError("detector slots must be integers")
        if k == 1:
            self._check_slot(int(slots[0]))
        else:
            # Negative slots become huge unsigned ones: the scatter range-checks them.
            unsigned = (slots if slots.dtype.itemsize == 8 else slots.astype(np.int64)).view(np.uint64)
            seen = self._seen
            try:
                seen[unsigned] = True
            except IndexError:
                raise DetectorInputError("detector slot is not in use") from None
            # One count checks both: k distinct slots, all in use.
            valid = np.count_nonzero(seen & self._in_use) == k
            seen[slots] = False
            if not valid:
                if not self._in_use[slots].all():
                    raise DetectorInputError("detector slot is not in use")
                raise DetectorInputError("detector slot given twice in one call")
        if self._n_held == 0 and frames.shape[1] % CHUNK_SAMPLES == 0:
            return self._process_group(slots, frames, 0)
        held_n = self._held_n[slots]
        r0 = int(held_n[0])
        if (held_n == r0).all():
            return self._process_group(slots, frames, r0)
        events: list[DetectorEvent] = []
        for r in np.unique(held_n):
            sel = held_n == r
            events.extend(self._process_group(slots[sel], frames[sel], int(r)))
        return events

    def flush(self, slot: int) -> list[DetectorEvent]:
        """End of stream: close the open digit, if any, and forget any partial run."""
        self._check_slot(slot)
        sm = self._sm[slot]
        events: list[DetectorEvent] = []
        code = int(sm[_ACTIVE])
        if code >= 0:
            events.append(DigitEnded(slot, _CODE_TO_DIGIT[code], int(sm[_ACTIVE_START]),
                                     _end_sample(int(sm[_LAST_HIT]))))
        sm[_ACTIVE] = _NONE
        sm[_RUN_CODE] = _NONE
        sm[_RUN_LEN] = 0
        sm[_MISSES] = 0
        self._n_busy -= int(self._busy[slot])
        self._busy[slot] = False
        return events

    def _scratch(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 work array reused across calls: fresh large arrays cost page faults."""
        view = self._views.get((name, shape))
        if view is not None:
            return view
        size = math.prod(shape)
        buf = self._work.get(name)
        if buf is None or buf.size < size:
            buf = np.empty(max(size, 0 if buf is None else 2 * buf.size), dtype=np.float32)
            self._work[name] = buf
            self._views.clear()
            self._plans.clear()
        if len(self._views) > 512:
            self._views.clear()
        view = self._views[(name, shape)] = buf[:size].reshape(shape)
        return view

    def _process_group(self, slots: np.ndarray, frames: np.ndarray, held: int) -> list[DetectorEvent]:
        """Streams that all hold `held` samples of an incomplete chunk."""
        n = frames.shape[1]
        if n == 0:
            return []
        total = held + n
        c = total // CHUNK_SAMPLES
        if c == 0:
            self._held[slots, held:total] = frames
            self._held_n[slots] = total
            self._n_held += slots.size if held == 0 else 0
            return []
        k = slots.size
        left = total - c * CHUNK_SAMPLES
        plan = self._plans.get((k, c))
        if plan is None:
            if len(self._plans) > 512:
                self._plans.clear()
            plan = self._plans[(k, c)] = _Plan(self, k, c)
        # x: the held samples, then the new ones up to the last complete chunk, as float32.
        x = plan.x
        if held:
            x[:, :held] = self._held[slots, :held]
        x[:, held:] = frames[:, :n - left]
        if held or left:
            if left:
                self._held[slots, :left] = frames[:, n - left:]
            self._held_n[slots] = left
            self._n_held += k * ((left > 0) - (held > 0))
        found = self._analyse(slots, plan, c)
        self._chunks[slots] += c
        # Only streams with a hit, a run or a digit on reach the state machine.
        if found is None:
            if self._n_busy == 0:
                return []
            rows = self._busy[slots].nonzero()[0]
            if rows.size == 0:
                return []
            if rows.size < self.vector_min_streams:
                return self._advance_few(slots[rows], [[_NONE] * c for _ in range(rows.size)], c)
            return self._advance(slots[rows], np.full((rows.size, c), _NONE, dtype=np.int64), c)
        hit_windows, keys = found
        # Each stream's key per new window, and the streams with a hit or a run or digit on.
        hits = np.full((k, c), _NONE, dtype=np.int64)
        hits.reshape(-1)[hit_windows] = keys
        on = self._busy[slots] if self._n_busy else np.zeros(k, dtype=np.bool_)
        on[hit_windows // c] = True
        rows = on.nonzero()[0]
        if rows.size < self.vector_min_streams:
            return self._advance_few(slots[rows], hits.take(rows, axis=0).tolist(), c)
        if rows.size < k:
            return self._advance(slots[rows], hits[rows], c)
        return self._advance(slots, hits, c)

    def _analyse(self, slots: np.ndarray, w: _Plan, c: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Hit windows (flat stream * c + window indices) and their keys; None when no window hits."""
        an = self._an
        self._carry.take(slots, axis=0, out=w.carry, mode="clip")
        # One matrix product over all chunks of all streams (32 rows: both window halves;
        # row 32: the chunk's sum).
        np.matmul(an.half_rows, w.chunks_t, out=w.halves)
        # Window t of a stream = opening half of chunk t-1 + closing half of chunk t;
        # the first one opens on the previous call's last chunk (the carry). The add runs
        # over the flat rows (contiguous: several times faster than over the 2-D views);
        # what it puts in each stream's first window is overwritten by the second add.
        np.add(w.opening_flat, w.closing_flat, out=w.z_flat)
        np.add(w.first_closing, w.carry_opening, out=w.z_first)
        np.multiply(w.x, w.x, out=w.sq)
        # Chunk energies over the purity bound (see _Analysis.scaled_ones); each window's
        # sum and energy from its two chunks' in one flat add (as for the DFT halves).
        np.matmul(w.sq_chunks, an.scaled_ones, out=w.energy)
        np.add(w.chunk_prev, w.chunk_next, out=w.window_next)
        np.add(w.chunk_first, w.carry_stats, out=w.window_first)
        # The window's mean (DC, e.g. a sound card's offset) is no tone and no noise the
        # purity check should count: its energy, 80 * mean^2, comes off the window's.
        np.multiply(w.window_sum, w.window_sum, out=w.window_dc)
        np.subtract(w.e_sum, w.window_dc, out=w.e_sum)

        # Cheap gate over every window, implied by the exact checks: the pair cannot
        # beat the strongest bin of each group, so a window whose two strongest bins
        # miss the level floor or the purity bound cannot pass them.
        np.multiply(w.z, w.z, out=w.zz)
        np.add(w.zz_re, w.zz_im, out=w.mag)
        np.maximum.reduce(w.mag_groups, axis=1, out=w.group_max)
        np.add(w.group_max[0], w.group_max[1], out=w.pair_max)
        np.maximum(w.e_sum, an.gate_pair_mag, out=w.floor)
        cand = self._gate(w.pair_max, w.floor, w.group_max)
        found = None if cand is None else self._check(cand, c, w.mag, w.z_and_carry, w.stats)

        # Carry to the next call: the last chunk's opening half and energy, the last two windows.
        np.copyto(w.new_opening, w.last_opening)
        np.copyto(w.new_stats, w.last_stats)
        if w.kept_hist is None:
            np.copyto(w.new_hist, w.last_windows)
        else:
            n_kept = w.kept_hist.shape[1]
            np.copyto(w.new_hist[:, :n_kept], w.kept_hist)
            np.copyto(w.new_hist[:, n_kept:], w.last_windows)
        self._carry[slots] = w.new
        return found

    def _gate(self, pair_max: np.ndarray, floor: np.ndarray, group_max: np.ndarray) -> np.ndarray | None:
        """Windows that may pass the exact checks (None: none)."""
        cand = np.greater_equal(pair_max, floor).nonzero()[0]
        if cand.size == 0:
            return None
        # Twist with slack for the roll-off correction, on the few windows left (the
        # 0.1 % in the slack also makes "<" as safe as "<=").
        low, high = group_max.take(cand, axis=1)
        twisted = np.greater_equal(high, np.multiply(low, self._an.gate_normal32))
        twisted &= np.less(high, np.multiply(low, self._an.gate_reverse32))
        n_left = np.count_nonzero(twisted)
        if n_left == 0:
            return None
        if n_left < cand.size:
            return cand[twisted]
        return cand

    def _check_plan(self, m: int) -> _CheckPlan:
        """The exact checks' work arrays for m windows, kept per m (a few widths)."""
        plan = self._check_plans.get(m)
        if plan is None:
            # Bounded (~1.4 kB per window of width): wide ones come only with tones on many streams.
            if sum(self._check_plans) + m > _CHECK_CACHE_COLUMNS:
                self._check_plans.clear()
            plan = self._check_plans[m] = _CheckPlan(self._an, m)
        return plan

    def _check(self, cand: np.ndarray, c: int, mag: np.ndarray, z_and_carry: np.ndarray,
               energies: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Full Q.24 checks on the windows that passed the gate: the hit windows and their keys.

        A key's code is 0-15 (row * 4 + column), or 16 more for a window that passes only under
        the held bounds (CONTINUE_TWIST_DB): it keeps that key's digit on, and starts none.

        All candidate windows of all streams at once, as rows of (values, windows) work arrays made
        once per width (see _CheckPlan): the count of numpy calls, not their size, is the cost here, and a
        call over contiguous rows with its output given is the cheapest kind. Every value is
        computed in the same dtype and order as the checks were written in, so every decision is
        the same.
        """
        an = self._an
        add, subtract, multiply = np.add, np.subtract, np.multiply
        kc = mag.shape[1]
        n = cand.size
        m = max(_CHECK_MIN_COLUMNS, 1 << (n - 1).bit_length()) if n <= 64 else -(-n // 64) * 64
        w = self._check_plan(m)
        if n < m:
            # Padded with copies of the first window: the same results, never counted.
            w.cand[:n] = cand
            w.cand[n:] = cand[0]
            columns = w.cand
        else:
            columns = cand
        # The strongest low and high bin, and for each window the DFT rows of their real and
        # imaginary parts.
        mag.take(columns, axis=1, out=w.mag, mode="clip")
        w.mag_groups.argmax(axis=1, out=w.bins)
        w.bins.take(_GATHER_GROUP, axis=0, out=w.dft_rows, mode="clip")
        add(w.dft_rows, w.dft_row_base, w.dft_rows)
        # Re and im of the chosen bins in the window and the ones before it, from this
        # call's windows or the stream's carry (where: offset and stride of each), in one
        # gather: (window, re/im, low/high), then in the rows the steps below take them in.
        where = self._window_history.get((kc, c))
        if where is None:
            where = _window_history(kc, c)
            # Bounded: a relay's calls come in many shapes (64 B per window each).
            if len(self._window_history) >= 256 or self._window_history_bytes + where.nbytes > _HISTORY_CACHE_BYTES:
                self._window_history.clear()
                self._window_history_bytes = 0
            self._window_history[(kc, c)] = where
            self._window_history_bytes += where.nbytes
        where.take(columns, axis=2, out=w.where_by_window, mode="clip")
        w.where_by_window.take(_GATHER_WINDOW, axis=1, out=w.where, mode="clip")
        multiply(w.dft_rows, w.stride, w.idx)
        add(w.idx, w.offset, w.idx)
        z_and_carry.take(w.idx, out=w.dft, mode="clip")
        w.dft.take(_ITEM_SOURCE, axis=0, out=w.g, mode="clip")
        # Each chosen bin's nominal hop phase and frequency tolerance.
        an.hop_tol.take(w.dft_rows[:4], out=w.hop_tol, mode="clip")
        # The phase advance of each bin over one hop, averaged over two hops
        # (angle of x0 x1* + x1 x2*), against the advance of a tone at the nominal
        # frequency, gives the tone's frequency offset: re x1 (re x0 + re x2) + im x1 (im x0 +
        # im x2) and re x1 (im x0 - im x2) - im x1 (re x0 - re x2), one product for the four terms.
        add(w.x0_sum, w.x2_sum, w.sd_sum)
        subtract(w.x0_diff, w.x2_diff, w.sd_diff)
        multiply(w.sd, w.x1, w.cross)
        add(w.cross_re_a, w.cross_re_b, w.cross_re)
        subtract(w.cross_im_a, w.cross_im_b, w.cross_im)
        turn = w.turn
        np.arctan2(w.cross_im, w.cross_re, turn)
        subtract(turn, w.hop, turn)
        add(turn, an.pi32, turn)
        np.remainder(turn, an.two_pi32, turn)
        phase = subtract(turn, an.pi32, w.phase)
        # Every check is one row of `passed`, reduced once:
        #   rows 0-1: Q.24 frequency, accept +-(1.5 % + 2 Hz), reject beyond +-3.5 %;
        #   rows 2-3: each tone's level (left out, passed, where the twist and the pair level
        #             imply it: _Analysis.level_implied);
        #   rows 4-7: Q.24 twist, high tone up to 8 dB below (high >= low * normal, rows 4-5)
        #             or 4 dB above the low one (high <= low * reverse, rows 6-7): rows 4 and 6
        #             on this window's with WINDOW_TWIST_SLACK_DB more, rows 5 and 7 on the tone
        #             powers summed over the window and the HISTORY_WINDOWS - 1 before it;
        #   rows 8-11: the pair against the purity bound, the coverage bound (each chunk
        #             about the window's mean) and its level.
        passed = w.passed
        np.less_equal(np.abs(phase, w.abs_phase), w.tol, w.in_band)
        if n < _FEW_CANDIDATES and not np.logical_and(w.in_band[0], w.in_band[1], w.flag).any():
            # Most speech windows that reach this point fail here.
            return None
        # Tone powers, corrected for the window's roll-off at the estimated offset.
        # (phase + pi is `turn` again on every window in band: turn - pi is exact there, see
        # _Analysis; the others never hit.)
        step = multiply(turn, an.power_steps32, w.step)
        add(step, an.half32, step)
        an.power_per_mag.take(step.astype(np.intp), out=w.correction, mode="clip")
        # Each window's power per bin, and their sum over the window and the three before it,
        # in that order: the tone's twist over 25 ms (a quarter of one window's noise and of
        # the leakage between the two tones, whose beat turns between windows), with the same
        # roll-off correction.
        multiply(w.re_im, w.re_im, w.squares)
        add(w.squares_re, w.squares_im, w.powers)
        total, powers = w.total, w.powers_by_window
        add(powers[0], powers[1], total)
        for i in range(2, HISTORY_WINDOWS):
            add(total, powers[i], total)
        # p: low and high this window, low and high summed.
        p = w.p
        multiply(powers[0], w.correction, w.p_window)
        multiply(total, w.correction, w.p_total)
        if not an.level_implied:
            np.greater_equal(w.p_window, an.min_tone32, w.level)
        # Twist under the held bounds here; Q.24's own for the hit windows below.
        multiply(w.p_low, w.normal_bounds, w.bound)
        np.greater_equal(w.p_high, w.bound, w.normal)
        multiply(w.p_low, w.reverse_bounds, w.bound)
        np.less_equal(w.p_high, w.bound, w.reverse)
        # The summed twist decides once the tone is old enough (see HELD_RATIO); before,
        # rows 5 and 7 pass.
        add(w.pair_low, w.pair_high, w.pair_powers)
        multiply(w.pair_powers[0], an.held32, w.held_bound)
        np.less(w.pair_powers[1], w.held_bound, w.flag)
        np.logical_or(w.summed_twist, w.flag, w.summed_twist)
        # Energies are stored over the purity bound (see _Analysis.scaled_ones): the
        # window's without its mean (purity) and each of its two chunks' about the window's
        # mean (coverage); row 6 is 1. The closing chunk about the window's mean m:
        # E2 - 2 m s2 + 40 m^2, on the scale of the sums: E2 + S (S / 2 - 2 s2); the
        # opening chunk holds the rest.
        e = w.e
        energies.take(columns, axis=1, out=w.stats, mode="clip")
        multiply(w.sum_and_chunk_sum, w.half_two, w.halves)  # S / 2, 2 s2
        subtract(w.halves[0], w.halves[1], e[5])
        multiply(e[2], e[5], e[5])
        add(e[1], e[5], e[5])
        subtract(e[3], e[5], e[4])
        add(p[0], p[1], w.pair64)
        multiply(w.energy_rows, w.pair_bounds, w.energy_bounds)
        np.greater_equal(w.pair64, w.energy_bounds, w.energy_passed)
        hits = np.minimum.reduce(passed, axis=0, out=w.hits)
        if n < m:
            hits[n:] = False
        hit = hits.nonzero()[0]
        if hit.size == 0:
            return None
        keys = add(multiply(w.bins[0], 4, w.keys), w.bins[1], w.keys)
        # A window that fails Q.24's own twist keeps a digit on only (its code + _HELD_ONLY).
        multiply(w.p_low, w.strict_normal_bounds, w.bound)
        np.greater_equal(w.p_high, w.bound, w.strict_normal)
        multiply(w.p_low, w.strict_reverse_bounds, w.bound)
        np.less_equal(w.p_high, w.bound, w.strict_reverse)
        np.logical_or(w.strict_summed_twist, w.flag, w.strict_summed_twist)
        np.minimum.reduce(w.strict, axis=0, out=w.flag)
        np.logical_not(w.flag, w.flag)
        multiply(w.flag, _HELD_ONLY, w.held_only)
        add(keys, w.held_only, keys)
        if hit.size < n:
            return cand.take(hit), keys.take(hit)
        return cand, keys[:n].copy()

    def _advance_few(self, slots: np.ndarray, hits: list[list[int]], c: int) -> list[DetectorEvent]:
        """`_advance` for a few streams, their keys per window given as lists."""
        rows = self._sm.take(slots, axis=0).tolist()
        chunk0 = [chunk - c for chunk in self._chunks.take(slots).tolist()]
        events, busy, n_busy_change = self._advance_each(slots, hits, rows, chunk0)
        self._sm[slots] = np.fromiter(chain.from_iterable(rows), np.int64, len(rows) * _SM_WIDTH).reshape(-1, _SM_WIDTH)
        self._busy[slots] = busy
        self._n_busy += n_busy_change
        return events

    def _advance(self, slots: np.ndarray, hits: np.ndarray, c: int) -> list[DetectorEvent]:
        """Run the hit/miss state machine of these streams (all busy or hit) over their `c` new windows."""
        if slots.size < self.vector_min_streams:
            return self._advance_few(slots, hits.tolist(), c)
        sm = self._sm
        state = sm[slots]
        chunk0 = self._chunks[slots] - c
        # Most of many streams see one value in every new window (the tone holds,
        # the run grows, or nothing): updated in bulk; the rest window by window.
        events = []
        first = hits[:, 0]
        uniform = (hits == first[:, None]).all(axis=1)
        if uniform.any():
            part = state[uniform]
            self._advance_uniform(slots[uniform], first[uniform], part, chunk0[uniform], c, events)
            state[uniform] = part
        mixed = ~uniform
        if mixed.any():
            part = state[mixed]
            few = np.count_nonzero(mixed) < self.vector_min_streams
            if few:
                rows = part.tolist()
                events += self._advance_each(slots[mixed], hits[mixed].tolist(), rows, chunk0[mixed].tolist())[0]
                part[:] = rows
            else:
                events += self._advance_vector(slots[mixed], hits[mixed], part, chunk0[mixed])
            state[mixed] = part
        sm[slots] = state
        busy = (state[:, _RUN_CODE] >= 0) | (state[:, _ACTIVE] >= 0)
        self._n_busy += int(np.count_nonzero(busy)) - int(np.count_nonzero(self._busy[slots]))
        self._busy[slots] = busy
        return events

    @staticmethod
    def _advance_uniform(slots: np.ndarray, h: np.ndarray, state: np.ndarray, chunk0: np.ndarray, c: int,
                         events: list[DetectorEvent]) -> None:
        """`_advance_each` for streams whose `c` new windows all hit key h (or all miss: -1)."""
        run_code, run_len, run_first = state[:, _RUN_CODE], state[:, _RUN_LEN], state[:, _RUN_FIRST]
        active, active_start = state[:, _ACTIVE], state[:, _ACTIVE_START]
        last_hit, misses = state[:, _LAST_HIT], state[:, _MISSES]
        held_only = h >= _HELD_ONLY
        hit = (h >= 0) & ~held_only
        held = (h >= 0) & (np.where(held_only, h - _HELD_ONLY, h) == active)
        # The run: continued, restarted at the first window, or broken (a held-only window too).
        same = hit & (h == run_code)
        before = np.where(same, run_len, 0)
        run_first[:] = np.where(hit & ~same, chunk0, run_first)
        run_len[:] = np.where(hit, before + c, 0)
        run_code[:] = np.where(held_only, _NONE, h)
        last = chunk0 + (c - 1)
        on = active >= 0
        # Q.24: a pause of 40 ms separates digits; short drop-outs do not.
        missing = on & ~held
        ends_at = END_MISSES - 1 - misses  # window of this call at which the digit ends
        ending = missing & (ends_at < c)
        # Q.24: a tone of 40 ms is a digit, one under 20-23 ms is not.
        accept_at = ACCEPT_HITS - 1 - before
        accepting = hit & ~held & (accept_at >= 0) & (accept_at < c)
        last_hit[:] = np.where(held, last, last_hit)
        misses[:] = np.where(held, 0, np.where(missing, misses + c, misses))
        for i in np.flatnonzero(ending | accepting).tolist():
            slot = int(slots[i])
            if active[i] >= 0:
                # Ended by the pause, or by the next key accepted without one: same event.
                events.append(DigitEnded(slot, _CODE_TO_DIGIT[active[i]], int(active_start[i]),
                                         _end_sample(int(last_hit[i]))))
                active[i] = _NONE
            if accepting[i]:
                t = int(accept_at[i])
                active[i] = h[i]
                active_start[i] = _start_sample(int(run_first[i]))
                last_hit[i] = last[i]
                misses[i] = 0
                events.append(DigitDetected(slot, _CODE_TO_DIGIT[h[i]], int(active_start[i]),
                                            int(chunk0[i] + t + 1) * CHUNK_SAMPLES))

    @staticmethod
    def _advance_each(slots: np.ndarray, hits: list[list[int]], rows: list[list[int]],
                      chunk0: list[int]) -> tuple[list[DetectorEvent], list[bool], int]:
        """The state machine stream by stream in Python (cheaper for a few streams); updates `rows`.

        Returns the events, each stream's busy flag after the windows, and the change
        in the number of busy streams.
        """
        events: list[DetectorEvent] = []
        busy: list[bool] = []
        n_busy_change = 0
        for slot, row, hit_row, chunk in zip(slots.tolist(), rows, hits, chunk0):
            run_code, run_len, run_first, active, active_start, last_hit, misses = row
            n_busy_change -= run_code >= 0 or active >= 0
            h = hit_row[0]
            n = len(hit_row)
            if hit_row.count(h) == n:
                # The same in every new window (most streams): the windows' effect in one step,
                # as the window-by-window loop below has it.
                if h >= _HELD_ONLY and h - _HELD_ONLY == active:
                    # The digit's tone holds, under the held bounds only: no run.
                    run_code, run_len = _NONE, 0
                    last_hit, misses = chunk + n - 1, 0
                elif h < 0 or h >= _HELD_ONLY:
                    run_code, run_len = _NONE, 0
                    if active >= 0:
                        misses += n
                        if misses >= END_MISSES:
                            # Q.24: a pause of 40 ms separates digits; short drop-outs do not.
                            events.append(DigitEnded(slot, _CODE_TO_DIGIT[active], active_start,
                                                     _end_sample(last_hit)))
                            active, misses = _NONE, END_MISSES
                elif h == active:
                    # The digit's tone holds: the run grows (or restarts after a drop-out).
                    if h == run_code:
                        run_len += n
                    else:
                        run_code, run_len, run_first = h, n, chunk
                    last_hit, misses = chunk + n - 1, 0
                else:
                    before = run_len if h == run_code else 0
                    if h != run_code:
                        run_code, run_first = h, chunk
                    run_len = before + n
                    accept_at = ACCEPT_HITS - 1 - before  # >= 0: a run that long has its digit on
                    if accept_at < n:
                        # Q.24: a tone of 40 ms is a digit. The digit on ends first (by the
                        # pause or by this key: the same event).
                        if active >= 0:
                            events.append(DigitEnded(slot, _CODE_TO_DIGIT[active], active_start,
                                                     _end_sample(last_hit)))
                        active, active_start = h, _start_sample(run_first)
                        last_hit, misses = chunk + n - 1, 0
                        events.append(DigitDetected(slot, _CODE_TO_DIGIT[h], active_start,
                                                    (chunk + accept_at + 1) * CHUNK_SAMPLES))
                    elif active >= 0:
                        misses += n
                        if misses >= END_MISSES:
                            events.append(DigitEnded(slot, _CODE_TO_DIGIT[active], active_start,
                                                     _end_sample(last_hit)))
                            active, misses = _NONE, END_MISSES
            else:
                for h in hit_row:
                    key = h
                    if h >= _HELD_ONLY:
                        key = h - _HELD_ONLY
                        run_code, run_len = _NONE, 0
                    elif h < 0:
                        run_code, run_len = _NONE, 0
                    elif h == run_code:
                        run_len += 1
                    else:
                        run_code, run_len, run_first = h, 1, chunk
                    if active >= 0:
                        if key == active:
                            last_hit, misses = chunk, 0
                        else:
                            # Q.24: a pause of 40 ms separates digits; short drop-outs do not.
                            misses += 1
                            if misses >= END_MISSES:
                                events.append(DigitEnded(slot, _CODE_TO_DIGIT[active], active_start,
                                                         _end_sample(last_hit)))
                                active = _NONE
                    # Q.24: a tone of 40 ms is a digit, one under 20-23 ms is not.
                    if run_len == ACCEPT_HITS and run_code != active:
                        if active >= 0:
                            events.append(DigitEnded(slot, _CODE_TO_DIGIT[active], active_start,
                                                     _end_sample(last_hit)))
                        active, active_start = run_code, _start_sample(run_first)
                        last_hit, misses = chunk, 0
                        events.append(DigitDetected(slot, _CODE_TO_DIGIT[active], active_start,
                                                    (chunk + 1) * CHUNK_SAMPLES))
                    chunk += 1
            row[:] = run_code, run_len, run_first, active, active_start, last_hit, misses
            on = run_code >= 0 or active >= 0
            busy.append(on)
            n_busy_change += on
        return events, busy, n_busy_change

    @staticmethod
    def _advance_vector(slots: np.ndarray, hits: np.ndarray, state: np.ndarray,
                        chunk0: np.ndarray) -> list[DetectorEvent]:
        """The state machine of `_advance_each`, vectorised over streams, window by window."""
        run_code = state[:, _RUN_CODE].copy()
        run_len = state[:, _RUN_LEN].copy()
        run_first = state[:, _RUN_FIRST].copy()
        active = state[:, _ACTIVE].copy()
        active_start = state[:, _ACTIVE_START].copy()
        last_hit = state[:, _LAST_HIT].copy()
        misses = state[:, _MISSES].copy()
        events: list[DetectorEvent] = []

        def pause(n_windows: int) -> None:
            # Windows without a hit in any of these streams: runs break, misses grow.
            nonlocal run_code, run_len, misses
            run_code = np.full_like(run_code, _NONE)
            run_len = np.zeros_like(run_len)
            misses = misses + n_windows
            for i in np.flatnonzero((active >= 0) & (misses >= END_MISSES)):
                events.append(DigitEnded(int(slots[i]), _CODE_TO_DIGIT[active[i]], int(active_start[i]),
                                         _end_sample(int(last_hit[i]))))
                active[i] = _NONE

        n_windows = hits.shape[1]
        done = 0
        for t in np.flatnonzero((hits >= 0).any(axis=0)):
            if t > done:
                pause(int(t - done))
            done = t + 1
            h = hits[:, t]
            chunk = chunk0 + t
            held_only = h >= _HELD_ONLY
            is_hit = (h >= 0) & ~held_only
            same = is_hit & (h == run_code)
            run_len = np.where(same, run_len + 1, is_hit.astype(np.int64))
            run_first = np.where(same, run_first, chunk)
            run_code = np.where(held_only, _NONE, h)
            on = active >= 0
            held = on & (np.where(held_only, h - _HELD_ONLY, h) == active)
            last_hit = np.where(held, chunk, last_hit)
            misses = np.where(held, 0, misses + 1)
            ending = on & ~held & (misses >= END_MISSES)
            accepting = (run_len == ACCEPT_HITS) & (run_code != active)
            if not (ending.any() or accepting.any()):
                continue
            for i in np.flatnonzero(ending | accepting):
                slot = int(slots[i])
                if active[i] >= 0:
                    events.append(DigitEnded(slot, _CODE_TO_DIGIT[active[i]], int(active_start[i]),
                                             _end_sample(int(last_hit[i]))))
                    active[i] = _NONE
                if accepting[i]:
                    active[i] = run_code[i]
                    active_start[i] = _start_sample(int(run_first[i]))
                    last_hit[i] = chunk[i]
                    misses[i] = 0
                    events.append(DigitDetected(slot, _CODE_TO_DIGIT[run_code[i]], int(active_start[i]),
                                                int(chunk[i] + 1) * CHUNK_SAMPLES))
        if n_windows > done:
            pause(n_windows - done)
        state[:, _RUN_CODE] = run_code
        state[:, _RUN_LEN] = run_len
        state[:, _RUN_FIRST] = run_first
        state[:, _ACTIVE] = active
        state[:, _ACTIVE_START] = active_start
        state[:, _LAST_HIT] = last_hit
        state[:, _MISSES] = misses
        return events



def _window_history(kc: int, c: int) -> np.ndarray:
    """Where window t - w (w < HISTORY_WINDOWS) of each of the kc windows is in the flat z-and-carry array.

    (offset, stride) for each w and window: the value of DFT row r is at offset + r * stride,
    in the windows' rows (stride kc) or, before the stream's first new window, in its
    carry (stride 1).
    """
    q = np.arange(kc)
    s, t = np.divmod(q, c)
    w = np.arange(HISTORY_WINDOWS)[:, None]
    inside = t >= w
    in_carry = 16 * kc + s * _CARRY_WIDTH + _CARRY_HIST.start + 16 * (t - w + HISTORY_WINDOWS - 1)
    return np.stack([np.where(inside, q - w, in_carry), np.where(inside, kc, 1)])


ONSET_BIAS_SAMPLES = 34
"""The first hit window is the first one the tone fills past the coverage ratio,
so the tone began about this far before that window's midpoint (and ended as
far after the last hit window's midpoint)."""


def _start_sample(first_hit_chunk: int) -> int:
    return max(0, first_hit_chunk * CHUNK_SAMPLES - ONSET_BIAS_SAMPLES)


def _end_sample(last_hit_chunk: int) -> int:
    return last_hit_chunk * CHUNK_SAMPLES + ONSET_BIAS_SAMPLES


class DtmfDetector:
    """DTMF receiver for one stream: any chunk size gives the same events."""

    def __init__(self, sample_rate_hz: int = SAMPLE_RATE_HZ) -> None:
        self._bank = DetectorBank(1, sample_rate_hz)
        self._slot = self._bank.add_stream()
        self._slots = np.array([self._slot])

    def process(self, samples: np.ndarray) -> list[DetectorEvent]:
        """Feed int16 (or float, int16 units) samples; return the events they complete."""
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise DetectorInputError("detector samples must be one-dimensional")
        return self._bank.process(self._slots, samples[None, :])

    def flush(self) -> list[DetectorEvent]:
        """End of stream: close the open digit, if any."""
        return self._bank.flush(self._slot)

    @property
    def tone_present(self) -> bool:
        """A DTMF pair was seen in the latest window or a digit is on."""
        return bool(self._bank.tone_present(self._slots)[0])
