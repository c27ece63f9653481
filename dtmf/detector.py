"""Streaming DTMF receiver (ITU-T Q.23 frequencies, Q.24 acceptance rules).

What drives it: blocks of linear samples per stream; nothing else (no clock).
Safe state: no digit active. `flush` returns a stream to it.

The signal is cut into 40-sample chunks at absolute positions (0, 40, 80, ...)
of each stream, so the decisions depend only on the samples, never on how they
were packetised. Each chunk closes one 80-sample Hann window (10 ms, hop 5 ms).
For every window and each of the 8 DTMF frequencies the bank computes the
complex DFT value by one matrix product over all streams' windows; a cheap gate
(implied by the exact checks) leaves only the few windows that may hold a DTMF
pair for the exact checks. Per window:

* the strongest bin of each group names the candidate pair;
* the real frequency of each tone comes from the phase advance of that bin
  between windows 40 samples apart (unambiguous to +-100 Hz), averaged over two
  lags: this is what separates 1.5 % + 2 Hz (accept) from 3.5 % (reject),
  which bin magnitudes of ~100-sample blocks cannot;
* the tone powers, corrected for the window's roll-off at the estimated
  offset, give the twist, the level and two energy ratios: against the mean
  power of the window's 80 samples (purity: rejects speech and noise) and
  against the louder of its two 40-sample chunks (coverage: a window counts only
  when the tone fills more than about half of it, so hits measure duration
  whatever the level).

A window that passes every check is a hit for that key. A digit is accepted
after `ACCEPT_HITS` consecutive hits of the same key (tones of 40 ms always,
tones under 23 ms never) and ends after `END_MISSES` consecutive windows
without it: a pause of 25 ms or more (Q.24: 40 ms) always separates two digits, a
drop-out of up to 15 ms inside a tone never does (18-20 ms: either).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
NORMAL_TWIST_DB = 8.7
"""Largest accepted high-below-low twist (Q.24 figures: accept 8 dB)."""
REVERSE_TWIST_DB = 4.7
"""Largest accepted high-above-low twist (Q.24 figures: accept 4 dB)."""
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
        self.dft_rows = np.ascontiguousarray(rows, dtype=np.float32)
        self.ones = np.ones(CHUNK_SAMPLES, dtype=np.float32)
        sum_w = window.sum()
        self.tone_power_norm = float(2.0 / sum_w ** 2)
        # Phase a bin at f0 advances over one hop for a tone exactly at f0.
        self.hop_derotate = np.exp(-1j * omega * CHUNK_SAMPLES).astype(np.complex64)
        self.rad_to_hz = sample_rate_hz / (2 * np.pi * CHUNK_SAMPLES)
        self.freq_tol_hz = (_FREQS_HZ * FREQ_TOL_PCT / 100.0 + FREQ_TOL_HZ).astype(np.float32)
        # Window gain at a frequency offset, to correct the tone power for it.
        self.gain_df_hz = np.linspace(-150.0, 150.0, 601)
        phasors = np.exp(2j * np.pi * np.outer(self.gain_df_hz, n) / sample_rate_hz)
        self.gain2 = (np.abs(phasors @ window) / sum_w) ** 2
        # The gate sees raw bin magnitudes, before the roll-off correction (at most
        # 1 dB at an accepted offset): its bounds hold whenever the exact checks pass.
        self.gate_pair_mag = _dbm0_power(MIN_PAIR_LEVEL_DBM0 - 4.0) / self.tone_power_norm
        accepted_df = np.abs(self.gain_df_hz) <= self.freq_tol_hz.max() + 1.0
        pair_bound = self.tone_power_norm / self.gain2[accepted_df].min()
        self.gate_coverage = pair_bound * CHUNK_SAMPLES / COVERAGE_MIN
        self.gate_purity = pair_bound * WINDOW_SAMPLES / PURITY_MIN
        self.normal_twist = 10.0 ** (-NORMAL_TWIST_DB / 10)
        self.reverse_twist = 10.0 ** (REVERSE_TWIST_DB / 10)
        self.min_pair_power = _dbm0_power(MIN_PAIR_LEVEL_DBM0)
        self.min_tone_power = _dbm0_power(MIN_TONE_LEVEL_DBM0)
        self.gate_normal_twist = 10.0 ** (-(NORMAL_TWIST_DB + 4.0) / 10)
        self.gate_reverse_twist = 10.0 ** ((REVERSE_TWIST_DB + 4.0) / 10)


_ANALYSIS: dict[int, _Analysis] = {}

_STATE_FIELDS = (
    ("tail", np.float32, (WINDOW_SAMPLES,)),  # last complete chunk, then the incomplete one
    ("resid_n", np.int64, ()),  # samples of the incomplete chunk held in tail[40:]
    ("w_hist", np.float32, (2, 16)),  # DFT (8 re, 8 im) of the last two windows, older first
    ("chunks", np.int64, ()),  # complete chunks processed since the stream began
    ("run_code", np.int64, ()),  # key of the current run of hits, or -1
    ("run_len", np.int64, ()),
    ("run_first", np.int64, ()),  # chunk index of the run's first hit window
    ("active", np.int64, ()),  # accepted key whose tone is still on, or -1
    ("active_start", np.int64, ()),
    ("last_hit", np.int64, ()),  # chunk index of the active key's last hit window
    ("misses", np.int64, ()),
    ("busy", np.bool_, ()),  # a run of hits or a digit is on
    ("in_use", np.bool_, ()),
)


class DetectorBank:
    """DTMF receivers for many streams, advanced together by one numpy pass per call."""

    vector_min_streams = 24
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
        self._st: dict[str, np.ndarray] = {}
        self._work: dict[str, np.ndarray] = {}
        self._views: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
        self._grow(capacity)

    @property
    def capacity(self) -> int:
        """Number of slots currently allocated."""
        return self._capacity

    def _grow(self, capacity: int) -> None:
        old = self._capacity
        for name, dtype, shape in _STATE_FIELDS:
            arr = np.zeros((capacity, *shape), dtype=dtype)
            if old:
                arr[:old] = self._st[name]
            self._st[name] = arr
        self._seen = np.zeros(capacity, dtype=np.bool_)
        self._reset(np.arange(old, capacity))
        self._capacity = capacity

    def _reset(self, slots: np.ndarray) -> None:
        st = self._st
        for name, _, _ in _STATE_FIELDS:
            st[name][slots] = 0
        for name in ("run_code", "active", "last_hit"):
            st[name][slots] = _NONE

    def add_stream(self) -> int:
        """Claim a free slot with fresh state; the bank grows when full."""
        free = np.flatnonzero(~self._st["in_use"])
        if free.size == 0:
            slot = self._capacity
            self._grow(2 * self._capacity)
        else:
            slot = int(free[0])
        self._reset(np.array([slot]))
        self._st["in_use"][slot] = True
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
        return (self._st["run_code"][idx] >= 0) | (self._st["active"][idx] >= 0)

    def _check_slot(self, slot: int) -> None:
        if not (0 <= slot < self._capacity) or not self._st["in_use"][slot]:
            raise DetectorInputError("detector slot is not in use")

    def process(self, slots: np.ndarray, frames: np.ndarray) -> list[DetectorEvent]:
        """Feed frames[i] (int16 or float in int16 units) to stream slots[i]; return events."""
        slots = np.asarray(slots)
        frames = np.asarray(frames)
        if slots.ndim != 1 or frames.ndim != 2 or frames.shape[0] != slots.shape[0]:
            raise DetectorInputError("detector input must be slots (k,) and frames (k, n)")
        if slots.size == 0:
            return []
        if not np.issubdtype(slots.dtype, np.integer):
            raise DetectorInputError("detector slots must be integers")
        slots = slots.astype(np.int64, copy=False)
        if slots.min() < 0 or slots.max() >= self._capacity:
            raise DetectorInputError("detector slot is not in use")
        if not self._st["in_use"][slots].all():
            raise DetectorInputError("detector slot is not in use")
        if slots.size > 1:
            seen = self._seen
            seen[slots] = True
            unique = np.count_nonzero(seen) == slots.size
            seen[slots] = False
            if not unique:
                raise DetectorInputError("detector slot given twice in one call")
        resid_n = self._st["resid_n"][slots]
        r0 = int(resid_n[0])
        if (resid_n == r0).all():
            return self._process_group(slots, frames, r0)
        events: list[DetectorEvent] = []
        for r in np.unique(resid_n):
            sel = resid_n == r
            events.extend(self._process_group(slots[sel], frames[sel], int(r)))
        return events

    def flush(self, slot: int) -> list[DetectorEvent]:
        """End of stream: close the open digit, if any, and forget any partial run."""
        self._check_slot(slot)
        st = self._st
        events: list[DetectorEvent] = []
        code = int(st["active"][slot])
        if code >= 0:
            events.append(DigitEnded(slot, _CODE_TO_DIGIT[code], int(st["active_start"][slot]),
                                     _end_sample(int(st["last_hit"][slot]))))
        st["active"][slot] = _NONE
        st["busy"][slot] = False
        st["run_code"][slot] = _NONE
        st["run_len"][slot] = 0
        st["misses"][slot] = 0
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
        if len(self._views) > 512:
            self._views.clear()
        view = self._views[(name, shape)] = buf[:size].reshape(shape)
        return view

    def _process_group(self, slots: np.ndarray, frames: np.ndarray, resid: int) -> list[DetectorEvent]:
        st = self._st
        n = frames.shape[1]
        total = resid + n
        n_chunks = total // CHUNK_SAMPLES
        if n_chunks == 0:
            st["tail"][slots, CHUNK_SAMPLES + resid:CHUNK_SAMPLES + total] = frames
            st["resid_n"][slots] = total
            return []
        # x: the previous complete chunk (zeros before the stream began), the held
        # incomplete chunk, then the new samples up to the last complete chunk.
        k = slots.size
        used = n_chunks * CHUNK_SAMPLES
        left = total - used
        tail = self._scratch("tail", (k, WINDOW_SAMPLES))
        st["tail"].take(slots, axis=0, out=tail, mode="clip")  # slots were range-checked
        x = self._scratch("x", (k, CHUNK_SAMPLES + used))
        x[:, :CHUNK_SAMPLES + resid] = tail[:, :CHUNK_SAMPLES + resid]
        x[:, CHUNK_SAMPLES + resid:] = frames[:, :n - left]
        st["tail"][slots, :CHUNK_SAMPLES] = x[:, used:]
        if left:
            st["tail"][slots, CHUNK_SAMPLES:CHUNK_SAMPLES + left] = frames[:, n - left:]
        st["resid_n"][slots] = left
        hits = self._analyse(slots, x, n_chunks)
        if hits is None:
            if not st["busy"][slots].any():
                st["chunks"][slots] += n_chunks
                return []
            hits = np.full((k, n_chunks), _NONE, dtype=np.int64)
        return self._advance(slots, hits)

    def _analyse(self, slots: np.ndarray, x: np.ndarray, n_chunks: int) -> np.ndarray | None:
        """Hit key (0-15) or -1 for each (stream, window) closed by these chunks (None: no hit)."""
        an, st = self._an, self._st
        k, c = x.shape[0], n_chunks
        chunks = x.reshape(k, c + 1, CHUNK_SAMPLES)
        windows = self._scratch("windows", (k * c, WINDOW_SAMPLES))
        w3 = windows.reshape(k, c, WINDOW_SAMPLES)
        w3[:, :, :CHUNK_SAMPLES] = chunks[:, :-1]
        w3[:, :, CHUNK_SAMPLES:] = chunks[:, 1:]
        # One matrix product: the 8 DFT values of every window of every stream, as
        # rows (re of the 8 bins, then im) so that the gate runs on contiguous rows.
        kc = k * c
        z = np.matmul(an.dft_rows, windows.T, out=self._scratch("z", (16, kc)))

        # Cheap gate over every window, implied by the exact checks: level, twist
        # with slack, purity and coverage (the pair cannot beat the two strongest
        # bins; the chunk energies are exact).
        sq = np.multiply(z, z, out=self._scratch("sq", (16, kc)))
        mag = np.add(sq[:8], sq[8:], out=self._scratch("mag", (8, kc)))
        lo_max, hi_max = mag.reshape(2, 4, kc).max(axis=1)
        pair_max = lo_max + hi_max
        gate = pair_max >= an.gate_pair_mag
        gate &= hi_max >= lo_max * an.gate_normal_twist
        gate &= hi_max <= lo_max * an.gate_reverse_twist
        x2 = np.multiply(x, x, out=self._scratch("x2", x.shape))
        chunk_energy = np.matmul(x2.reshape(k * (c + 1), CHUNK_SAMPLES), an.ones,
                                 out=self._scratch("chunk_energy", (k * (c + 1),))).reshape(k, c + 1)
        e_open, e_close = chunk_energy[:, :-1].ravel(), chunk_energy[:, 1:].ravel()
        gate &= pair_max * an.gate_purity >= e_open + e_close
        pair_max *= an.gate_coverage
        gate &= pair_max >= e_open
        gate &= pair_max >= e_close
        cand = np.flatnonzero(gate)
        hits = None
        hist = st["w_hist"]
        if cand.size:
            hits = np.full(kc, _NONE, dtype=np.int64)
            hits[cand] = self._check(slots, cand, c, mag, z, hist, chunk_energy)
            hits = hits.reshape(k, c)
        # Keep the last two windows' DFT for the next call's phase advance.
        if c >= 2:
            hist[slots] = z.reshape(16, k, c)[:, :, -2:].transpose(1, 2, 0)
        else:
            hist[slots, 0] = hist[slots, 1]
            hist[slots, 1] = z.T
        return hits

    def _check(self, slots: np.ndarray, cand: np.ndarray, c: int, mag: np.ndarray, z: np.ndarray,
               hist: np.ndarray, chunk_energy: np.ndarray) -> np.ndarray:
        """Full Q.24 checks on the windows that passed the gate; key or -1 for each."""
        an = self._an
        si, ti = np.divmod(cand, c)
        mc = mag[:, cand].T
        bins = np.argmax(mc.reshape(-1, 2, 4), axis=2)  # strongest low and high bin
        bins[:, 1] += 4

        # Complex DFT of the chosen bins in the window itself and the two before it
        # (from this call's windows, or from the stream's history): (n, 3, 2).
        back = np.arange(3)
        inside = ti[:, None] >= back  # (n, 3)
        col = np.where(inside, cand[:, None] - back, 0)[:, :, None]
        b3 = bins[:, None, :]
        fresh = z[b3, col] + 1j * z[b3 + 8, col]
        if not inside.all():
            rows = np.arange(cand.size)[:, None, None]
            old = hist[slots[si]]  # (n, 2, 16), older first
            h = ((ti[:, None] - back + 2) & 1)[:, :, None]  # 0 or 1 where outside this call
            fresh = np.where(inside[:, :, None], fresh, old[rows, h, b3] + 1j * old[rows, h, b3 + 8])
        x0, x1, x2 = fresh[:, 0], fresh[:, 1], fresh[:, 2]
        # The phase advance of each bin over one hop, averaged over two hops, gives
        # the tone's frequency offset from nominal.
        df = np.angle((x0 * np.conj(x1) + x1 * np.conj(x2)) * an.hop_derotate[bins]) * an.rad_to_hz
        # Q.24: accept +-(1.5 % + 2 Hz), reject beyond +-3.5 %.
        ok = (np.abs(df) <= an.freq_tol_hz[bins]).all(axis=1)
        # Tone powers, corrected for the window's roll-off at the estimated offset.
        p = mc[np.arange(cand.size)[:, None], bins] * an.tone_power_norm
        p /= np.interp(df, an.gain_df_hz, an.gain2)
        p_lo, p_hi = p[:, 0], p[:, 1]
        pair = p_lo + p_hi
        # Q.24 twist: high tone up to 8 dB below or 4 dB above the low tone.
        ok &= p_hi >= p_lo * an.normal_twist
        ok &= p_hi <= p_lo * an.reverse_twist
        ok &= pair >= an.min_pair_power
        ok &= p_lo >= an.min_tone_power
        ok &= p_hi >= an.min_tone_power
        e_open, e_close = chunk_energy[si, ti], chunk_energy[si, ti + 1]
        ok &= pair * WINDOW_SAMPLES >= PURITY_MIN * (e_open + e_close)
        ok &= pair * CHUNK_SAMPLES >= COVERAGE_MIN * np.maximum(e_open, e_close)
        return np.where(ok, bins[:, 0] * 4 + bins[:, 1] - 4, _NONE)

    def _advance_each(self, slots: np.ndarray, hits: np.ndarray) -> list[DetectorEvent]:
        """The state machine of `_advance`, stream by stream in Python: cheaper for a few streams."""
        st = self._st
        names = ("run_code", "run_len", "run_first", "active", "active_start", "last_hit", "misses", "chunks")
        cols = [st[name][slots].tolist() for name in names]
        events: list[DetectorEvent] = []
        for i, (slot, row) in enumerate(zip(slots.tolist(), hits.tolist())):
            run_code, run_len, run_first, active, active_start, last_hit, misses, chunk0 = (
                col[i] for col in cols)
            for t, h in enumerate(row):
                chunk = chunk0 + t
                if h < 0:
                    run_code, run_len = _NONE, 0
                elif h == run_code:
                    run_len += 1
                else:
                    run_code, run_len, run_first = h, 1, chunk
                if active >= 0:
                    if h == active:
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
            for col, value in zip(cols, (run_code, run_len, run_first, active, active_start,
                                         last_hit, misses, chunk0 + len(row))):
                col[i] = value
        for name, col in zip(names, cols):
            st[name][slots] = col
        st["busy"][slots] = (st["run_code"][slots] >= 0) | (st["active"][slots] >= 0)
        return events

    def _advance(self, slots: np.ndarray, hits: np.ndarray) -> list[DetectorEvent]:
        """Run each stream's hit/miss state machine over its new windows."""
        st = self._st
        # Streams with no hit, no run and no digit on only count their windows.
        busy = (hits >= 0).any(axis=1) | st["busy"][slots]
        if not busy.all():
            st["chunks"][slots[~busy]] += hits.shape[1]
            slots, hits = slots[busy], hits[busy]
            if slots.size == 0:
                return []
        # Streams inside an accepted tone that hit it in every new window: bulk update.
        active = st["active"][slots]
        steady = (active >= 0) & (st["run_code"][slots] == active) & (hits == active[:, None]).all(axis=1)
        if steady.any():
            held = slots[steady]
            c = hits.shape[1]
            st["run_len"][held] += c
            st["last_hit"][held] = st["chunks"][held] + (c - 1)
            st["misses"][held] = 0
            st["chunks"][held] += c
            slots, hits = slots[~steady], hits[~steady]
            if slots.size == 0:
                return []
        if slots.size < self.vector_min_streams:
            return self._advance_each(slots, hits)
        run_code = st["run_code"][slots]
        run_len = st["run_len"][slots]
        run_first = st["run_first"][slots]
        active = st["active"][slots]
        active_start = st["active_start"][slots]
        last_hit = st["last_hit"][slots]
        misses = st["misses"][slots]
        chunk0 = st["chunks"][slots]
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
            is_hit = h >= 0
            same = is_hit & (h == run_code)
            run_len = np.where(same, run_len + 1, is_hit.astype(np.int64))
            run_first = np.where(same, run_first, chunk)
            run_code = h
            on = active >= 0
            held = on & (h == active)
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
        st["run_code"][slots] = run_code
        st["busy"][slots] = (run_code >= 0) | (active >= 0)
        st["run_len"][slots] = run_len
        st["run_first"][slots] = run_first
        st["active"][slots] = active
        st["active_start"][slots] = active_start
        st["last_hit"][slots] = last_hit
        st["misses"][slots] = misses
        st["chunks"][slots] = chunk0 + n_windows
        return events


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
