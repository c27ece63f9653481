"""DTMF masking: turns the caller's audio into the audio the agent may hear.

What drives it: packets of 16-bit linear samples (decoded G.711), nothing else;
no clock. Its safe state is "mask": every decision errs towards masking.

How it decides. The audio is cut into 5 ms blocks (40 samples, four per 20 ms
packet, aligned to the stream's first sample). Each block is projected onto the
eight DTMF frequencies (one matrix product for every row of a batch). Two tests:

  * the *loose flag* of a block: loud enough, and >= half its energy at the best
    low-group plus best high-group frequency. 5 ms cannot resolve 200 Hz, so
    speech formants and music trip it; it decides alone where there is no
    look-ahead (outside a capture, mask = "always"), and joins in when held audio
    is flushed.
  * the *confirmed window* (with look-ahead): three consecutive blocks (15 ms).
    A DTMF tone is two steady sinusoids, so a window is confirmed when the best
    low and best high lines of its 120-sample DFT (at each DTMF frequency +-1 %
    and +-3 %, so off-nominal tones a lenient receiver takes still count; ~70 Hz
    wide) hold >= half the window's energy, with both groups present
    (twist within +-12 dB, generous next to Q.24's +4/-8 dB) and every block
    carrying them (steady within 10 dB); or 40 % of it when the lines also pass
    a receiver's own tests (twist +6/-10 dB, steady within 4 dB), which catches
    a tone as loud as the speech over it. Speech and music rarely put that much
    energy into two such narrow lines; that is what lets them pass. The DFT runs
    only for windows whose blocks' own line energies allow a confirmation, so
    its cost follows the tones, not the streams.

A block is *in a tone* when a confirmed window covers it, or when it is loosely
flagged right after a block in a tone (speech over a tone can spoil its windows
but not undo the tone). With look-ahead a block is masked when it, the next
block (pre-guard: the tone's first full blocks confirm the partial onset block
before them), or one of the two blocks before it (hang-over for tone tails and
echo) is in a tone. A block's decision reads the blocks up to three after it,
all inside the 20 ms look-ahead:

    guard before a tone onset: 1 block + block alignment  <= 10 ms (look-ahead only)
    hang-over after a tone end: 2 blocks + block alignment <= 15 ms

A tone starting in the last 5 ms of a packet has its first full blocks in the
next packet; their window confirms and its pre-guard masks the onset, which is
why one packet of look-ahead (160 samples, 20 ms) is enough and is all we hold.
Any tone of 20 ms or more has a window of three full blocks (the steadiness
test keeps a window from confirming on a block before the onset, which holds the
pre-guard to one block). Without look-ahead a block is masked when it or one of
the two blocks before it is loosely flagged. Outside the guard every sample
passes unchanged (bit-exact once re-encoded; see `encode_masked`).

Look-ahead switching, for one stream (`Masker`) or one slot (`MaskerBank`):
  * on: the output stream gets one packet (160 samples) of *filler* (the mode's
    background: comfort noise, or silence) inserted, then carries the input
    delayed by exactly 160 samples. No caller sample is lost or repeated.
  * off (or `flush` when packets stop): the held 160 samples are returned at
    once, masked with what is known (windows confirmed so far, and loose flags
    with their pre-guard, unseen blocks counting as unflagged), and the stream
    continues without delay. After a `flush` with look-ahead still on,
    the next packet starts a new filler packet.
So over a capture the agent's stream is one packet longer than the caller's:
the relay sends the filler as an extra packet (its RTP timestamp offset grows by
160 and its sequence offset by 1 per capture).

Masking modes replace masked samples with: zeros (SILENCE); comfort noise at the
caller's background level tracked outside tones (COMFORT_NOISE; white noise with
the eight DTMF frequencies notched out, so the fill itself never carries DTMF
energy); or a fixed 1060 Hz tone at -20 dBm0 whose phase follows the stream's
sample clock (FLAT). None of the fills depends on the key pressed.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import numpy as np

from dtmf.g711 import DECODE_TABLES, ENCODE_TABLES
from dtmf.tones import DTMF_FREQS_HZ, FLAT_MASK_FREQ_HZ, HIGH_FREQS_HZ, LOW_FREQS_HZ, dbm0_to_amplitude

SAMPLE_RATE_HZ = 8000
PACKET_SAMPLES = 160
"""One 20 ms packet at 8 kHz: the bank's row length and the look-ahead."""
BLOCK_SAMPLES = 40
"""5 ms analysis block."""
BLOCKS_PER_PACKET = PACKET_SAMPLES // BLOCK_SAMPLES
LOOKAHEAD_SAMPLES = PACKET_SAMPLES
PRE_GUARD_BLOCKS = 1
HANGOVER_BLOCKS = 2
WINDOW_BLOCKS = 3
"""Confirmation window: 15 ms, the longest whose pre-guard still fits in the look-ahead."""
_HISTORY_BLOCKS = 2
"""Blocks kept before the held packet: windows that start there still cover held blocks."""
_CONFIRM_BEFORE = HANGOVER_BLOCKS + WINDOW_BLOCKS - 1
"""A window confirmed at block s masks blocks s-1 .. s+4 (its own three and the hang-over)."""
_WINDOWS_PER_CALL = BLOCKS_PER_PACKET
_KNOWN_WINDOWS = _CONFIRM_BEFORE + 1
"""Windows a bank slot remembers from the last call: those starting 4 blocks before the held
packet up to its first block (its last three blocks are kept for the windows after)."""

FLAG_CONCENTRATION = 0.5
"""Loose flag when the best low + best high DTMF frequency hold this share of the block energy."""
FLAG_MIN_LEVEL_DBM0 = -45.0
"""Flag only blocks at least as loud as one sine at this level (well under Q.24's -25 dBm0 floor)."""
CONFIRM_CONCENTRATION = 0.5
"""Confirm a window when its two narrow DTMF lines hold this share of its energy ..."""
MIXED_CONCENTRATION = 0.4
"""... or this share when they also look like a tone by a receiver's own tests (twist within
MIXED_TWIST_DB, steady within MIXED_STEADY_DB): a tone as loud as the speech over it."""
MIXED_TWIST_DB = (6.0, -10.0)
"""High group at most this much above / below the low group (Q.24's +4/-8 dB, plus 2 dB)."""
MIXED_STEADY_DB = 4.0
"""Every block's line energy within this many dB of the window's strongest block: a steady tone."""
TWIST_LIMIT_DB = 14.0
"""High group within this many dB of the low group, either way: any tone twisted up to 12 dB
(Q.24 asks for +4/-8 dB), with 2 dB for the window's leakage and off-nominal frequencies."""
STEADY_DB = 10.0
"""Each block of a confirmed window carries DTMF-line energy within this many dB of its strongest block."""
HOLD_CONCENTRATION = 0.5
"""A block right after a tone block stays in the tone when its best low + high hold this share of its energy."""
FREQ_OFFSETS = (-0.03, -0.01, 0.01, 0.03)
"""Relative offsets at which a window looks for each DTMF frequency (Q.24 rejects beyond 3.5 %):
a tone up to 4 % off nominal loses at most 0.5 dB of window power to the nearest one."""

FLAT_LEVEL_DBM0 = -20.0
COMFORT_NOISE_MAX_DBM0 = -35.0
"""Comfort noise never louder than this, whatever the background was."""
NOISE_RISE_DB_PER_BLOCK = 0.05
"""Background tracker: falls at once to a quieter block, rises 10 dB/s at most."""
_NOISE_RISE = 10.0 ** (NOISE_RISE_DB_PER_BLOCK / 10.0)
_NOISE_RISE_ABS = 10.0  # lets the tracker leave zero (mean power, ~ -80 dBm0)
_UNTRACKED = -1.0  # background power before the first unflagged block
_NOTCH_HZ = 60.0
"""Comfort-noise notch half-width around each DTMF frequency: wider than the +-3.5 % a
receiver must reject, so the fill never carries energy a receiver could take for a tone."""


class MaskMode(Enum):
    """What replaces masked samples."""

    SILENCE = "silence"
    COMFORT_NOISE = "comfort-noise"
    FLAT = "flat"


def _analysis_basis() -> np.ndarray:
    t = np.arange(BLOCK_SAMPLES) / SAMPLE_RATE_HZ
    freqs = np.array(LOW_FREQS_HZ + HIGH_FREQS_HZ)
    w = 2 * np.pi * freqs[None, :] * t[:, None]
    return np.concatenate([np.cos(w), np.sin(w)], axis=1)  # (40, 16)


def _window_basis() -> np.ndarray:
    """(120, 2 * offsets * 8): cos then sin at each DTMF frequency times (1 + offset), offset-major."""
    t = np.arange(WINDOW_BLOCKS * BLOCK_SAMPLES) / SAMPLE_RATE_HZ
    freqs = np.array(LOW_FREQS_HZ + HIGH_FREQS_HZ)
    f = (freqs[None, :] * (1.0 + np.array(FREQ_OFFSETS))[:, None]).ravel()
    w = 2 * np.pi * f[None, :] * t[:, None]
    return np.concatenate([np.cos(w), np.sin(w)], axis=1)


_BASIS = _analysis_basis()
_WINDOW_BASIS = _window_basis().astype(np.float32)  # samples are int16: float32 products are exact enough
_WINDOW_OFFSETS = np.arange(WINDOW_BLOCKS)[None, :]
_N_LINES = len(FREQ_OFFSETS) * 8
_MIN_BLOCK_ENERGY = BLOCK_SAMPLES * dbm0_to_amplitude(FLAG_MIN_LEVEL_DBM0) ** 2 / 2.0
_MIN_WINDOW_ENERGY = WINDOW_BLOCKS * _MIN_BLOCK_ENERGY
_TWIST_LIMIT = 10.0 ** (TWIST_LIMIT_DB / 10.0)
_STEADY = 10.0 ** (-STEADY_DB / 10.0)
_PREFILTER = 0.7
_MIXED_TWIST_HIGH = 10.0 ** (MIXED_TWIST_DB[0] / 10.0)
_MIXED_TWIST_LOW = 10.0 ** (-MIXED_TWIST_DB[1] / 10.0)
_MIXED_STEADY = 10.0 ** (-MIXED_STEADY_DB / 10.0)
_WINDOW_SCALE = 2.0 / (WINDOW_BLOCKS * BLOCK_SAMPLES)  # |DFT|^2 -> energy of a sine on the frequency


def _noise_power(level_dbm0: float) -> float:
    """Mean power per sample of noise whose RMS is a sine at level_dbm0 over sqrt(2)."""
    return dbm0_to_amplitude(level_dbm0) ** 2 / 2.0


_CN_MAX_POWER = _noise_power(COMFORT_NOISE_MAX_DBM0)


def _comfort_noise_table(n: int = 8000, seed: int = 4733) -> np.ndarray:
    """Unit-RMS periodic white noise with the DTMF frequencies notched out (1 Hz bins)."""
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE_HZ)
    for f in LOW_FREQS_HZ + HIGH_FREQS_HZ:
        spec[np.abs(freqs - f) <= _NOTCH_HZ] = 0.0
    noise = np.fft.irfft(spec, n)
    return noise / np.sqrt(np.mean(noise**2))


def _flat_table() -> np.ndarray:
    """One exact period of the flat tone: 1060/8000 = 53/400, so 400 samples."""
    period = 400
    cycles = FLAT_MASK_FREQ_HZ * period / SAMPLE_RATE_HZ
    if abs(cycles - round(cycles)) > 1e-9:
        raise ValueError("flat mask frequency has no short period")
    t = np.arange(period)
    tone = dbm0_to_amplitude(FLAT_LEVEL_DBM0) * np.sin(2 * np.pi * round(cycles) * t / period)
    return np.rint(tone).astype(np.int16)


_CN_TABLE = _comfort_noise_table()
_FLAT_TABLE = _flat_table()
for _t in (_CN_TABLE, _FLAT_TABLE):
    _t.setflags(write=False)


_ENERGY = 0
_LINES = 1
_N_FEATURES = 2


def _block_features(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(m, 40) samples -> features (m, 2) and loose flags (m,).

    Features per block: the energy, and the line energy: that of the best low
    plus the best high DTMF frequency, as if each were a sine on its bin.
    """
    x = np.asarray(blocks, dtype=np.float64)
    proj = x @ _BASIS
    np.square(proj, out=proj)
    p = proj[:, :8] + proj[:, 8:]  # ~ (amplitude * 20)^2 per frequency
    feats = np.empty((len(x), _N_FEATURES))
    energy = feats[:, _ENERGY]
    energy[:] = (x * x).sum(axis=1)  # int16 squares: exact in float64 in any summation order
    lines = feats[:, _LINES]
    best = p.reshape(-1, 2, 4).max(axis=2)  # best low, best high
    lines[:] = (best[:, 0] + best[:, 1]) * (2.0 / BLOCK_SAMPLES)
    flags = (energy >= _MIN_BLOCK_ENERGY) & (lines >= FLAG_CONCENTRATION * energy)
    return feats, flags


def analyse_blocks(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Loose flag and mean power of each 40-sample block: (m, 40) -> bool (m,), float64 (m,)."""
    feats, flags = _block_features(blocks)
    return flags, feats[:, _ENERGY] / BLOCK_SAMPLES


def confirm_windows(blocks: np.ndarray) -> np.ndarray:
    """Confirmed windows of consecutive blocks: (..., m, 40) samples -> bool (..., m - 2)."""
    x = np.asarray(blocks)
    feats, _ = _block_features(x.reshape(-1, BLOCK_SAMPLES))
    flat = x.reshape(-1, x.shape[-2] * BLOCK_SAMPLES)
    return _confirm(feats.reshape(x.shape[:-1] + (_N_FEATURES,)), lambda rows: flat[rows], 0)


def _confirm(feats: np.ndarray, samples_of: Callable[[np.ndarray], np.ndarray], first_block: int) -> np.ndarray:
    """Confirmed windows from block features (..., m, 2) -> bool (..., m - 2).

    Window s covers blocks s, s+1, s+2: two narrow lines, one per DTMF group,
    within the twist limit, holding most of the window's energy, and steady:
    every block carries DTMF-line energy (so a window confirms only from the
    block where the tone is, and its pre-guard stays within a block of the onset).
    `samples_of(rows)` gives the samples of those rows (leading dimensions flattened),
    block j of `feats` from sample 40 * (j + first_block): built only when needed.
    """
    m = feats.shape[-2]
    n = m - WINDOW_BLOCKS + 1
    el = feats[..., 0:n, :] + feats[..., 1:n + 1, :] + feats[..., 2:n + 2, :]
    e = el[..., _ENERGY]
    # The window's line energy at a frequency is at most its blocks' summed line
    # energies there (Cauchy-Schwarz), and a block sees a line up to 4 % off a DTMF
    # frequency with at least 0.7 of its energy at the nominal one; so only windows
    # passing this cheap test (rare outside tones) can confirm and get the DFT:
    # 120 samples, at each DTMF frequency and the offsets of it.
    l0, l1, l2 = feats[..., 0:n, _LINES], feats[..., 1:n + 1, _LINES], feats[..., 2:n + 2, _LINES]
    lines_min = np.minimum(np.minimum(l0, l1), l2)
    lines_max = np.maximum(np.maximum(l0, l1), l2)
    confirmed = ((e >= _MIN_WINDOW_ENERGY) & (el[..., _LINES] >= _PREFILTER * MIXED_CONCENTRATION * e)
                 & (lines_min >= _STEADY * lines_max))
    if not np.count_nonzero(confirmed):  # the common case outside tones
        return confirmed
    flat = confirmed.reshape(-1, n)
    rows, starts = np.nonzero(flat)
    if len(rows):
        steady = (lines_min >= _MIXED_STEADY * lines_max).reshape(-1, n)[rows, starts]
        x = samples_of(rows)
        blocks = x.reshape(len(rows), -1, BLOCK_SAMPLES)
        seg = blocks[np.arange(len(rows))[:, None], starts[:, None] + first_block + _WINDOW_OFFSETS]
        proj = seg.reshape(len(rows), -1).astype(np.float32) @ _WINDOW_BASIS
        proj = proj.astype(np.float64)
        p = (proj[:, :_N_LINES] ** 2 + proj[:, _N_LINES:] ** 2).reshape(-1, len(FREQ_OFFSETS), 8).max(axis=1)
        low = p[:, :4].max(axis=-1)
        high = p[:, 4:].max(axis=-1)
        conc = (low + high) * _WINDOW_SCALE / e.reshape(-1, n)[rows, starts]
        tone_like = (high * _MIXED_TWIST_LOW >= low) & (high <= low * _MIXED_TWIST_HIGH) & steady
        flat[rows, starts] = (((conc >= CONFIRM_CONCENTRATION) | ((conc >= MIXED_CONCENTRATION) & tone_like))
                              & (high * _TWIST_LIMIT >= low) & (low * _TWIST_LIMIT >= high))
    return confirmed


_SCALAR_GATE_ROWS = 12
"""Up to this many rows `_may_confirm` checks the cheap window test on Python floats."""


def _may_confirm(feats: np.ndarray) -> bool:
    """Whether any window of (k, m, 2) block features passes `_confirm`'s cheap test (same float64 arithmetic).

    False means `_confirm` would return all False: the caller skips it.
    """
    for row in feats.tolist():
        for s in range(len(row) - WINDOW_BLOCKS + 1):
            (e0, l0), (e1, l1), (e2, l2) = row[s], row[s + 1], row[s + 2]
            e = e0 + e1 + e2
            if (e >= _MIN_WINDOW_ENERGY and l0 + l1 + l2 >= _PREFILTER * MIXED_CONCENTRATION * e
                    and min(l0, l1, l2) >= _STEADY * max(l0, l1, l2)):
                return True
    return False


def _track(level: np.ndarray | float, power: np.ndarray | float, flag: np.ndarray | bool):
    """Background power after one block: flagged blocks leave it alone; the first block sets it."""
    rise = np.minimum(power, level * _NOISE_RISE + _NOISE_RISE_ABS)
    new = np.where((power < level) | (level < 0), power, rise)
    return np.where(flag, level, new)


_SCALAR_TRACK_ROWS = 16
"""Up to this many rows the tracker runs on Python floats: four numpy calls per block cost more
(break-even near 20 rows)."""


def _track_rows(level: list[float], power: list[list[float]], flag: list[list[bool]]) -> tuple[np.ndarray, np.ndarray]:
    """`_track` over each row's blocks: levels before each block (k, 4) and after the last (k,)."""
    levels = []
    for r, lv in enumerate(level):
        row = []
        for p, f in zip(power[r], flag[r]):
            row.append(lv)
            if not f:
                lv = p if (p < lv or lv < 0) else min(p, lv * _NOISE_RISE + _NOISE_RISE_ABS)
        levels.append(row)
        level[r] = lv
    return np.array(levels, dtype=np.float64).reshape(len(level), BLOCKS_PER_PACKET), np.array(level, dtype=np.float64)


def _fill(mode: MaskMode, index: np.ndarray, power: np.ndarray) -> np.ndarray:
    """Fill samples for absolute stream sample indices `index` (int64) at background `power`."""
    if mode is MaskMode.SILENCE:
        return np.zeros(index.shape, dtype=np.int16)
    if mode is MaskMode.FLAT:
        return _FLAT_TABLE[index % len(_FLAT_TABLE)]
    rms = np.sqrt(np.clip(power, 0.0, _CN_MAX_POWER))
    noise = _CN_TABLE[index % len(_CN_TABLE)] * rms
    return np.clip(np.rint(noise), -32768, 32767).astype(np.int16)


def _window_or(flags: np.ndarray, before: int, after: int) -> np.ndarray:
    """OR of each block's flag with `before` earlier and `after` later ones (axis -1).

    `flags` holds `before` leading and `after` trailing context blocks; the result
    is for the blocks between them.
    """
    n = flags.shape[-1] - before - after
    out = np.zeros(flags.shape[:-1] + (n,), dtype=bool)
    for shift in range(before + after + 1):
        out |= flags[..., shift:shift + n]
    return out


def _holds(feats: np.ndarray) -> np.ndarray:
    """Blocks that keep a confirmed tone going: (..., 18) features -> bool (...)."""
    energy = feats[..., _ENERGY]
    return (energy >= _MIN_BLOCK_ENERGY) & (feats[..., _LINES] >= HOLD_CONCENTRATION * energy)


def _tone_run(pre_tone: np.ndarray, confirmed: np.ndarray, holds: np.ndarray) -> np.ndarray:
    """Tone state of blocks -2..4 (held packet's first block = 0), rows of a batch.

    pre_tone (k, 3): blocks -2..0, known; confirmed (k, 9): windows starting at
    -4..4; holds (k, 4): blocks 1..4 hold a tone. A block is in a tone when a
    confirmed window covers it, or when it holds one right after a block in a
    tone (a confirmed tone stays masked while speech over it spoils windows).
    """
    tone = np.empty((len(pre_tone), HANGOVER_BLOCKS + 1 + BLOCKS_PER_PACKET), dtype=bool)
    tone[:, :HANGOVER_BLOCKS + 1] = pre_tone
    prev = pre_tone[:, -1]
    for b in range(1, BLOCKS_PER_PACKET + 1):
        c = b + _CONFIRM_BEFORE  # window starting at block b
        prev = confirmed[:, c - 2] | confirmed[:, c - 1] | confirmed[:, c] | (prev & holds[:, b - 1])
        tone[:, b + HANGOVER_BLOCKS] = prev
    return tone


class Masker:
    """Masks one stream; output has the input's length, delayed by `lookahead_samples` when on.

    Any chunk size works with look-ahead on. Without look-ahead, a block split
    across calls is decided on its hang-over alone until it completes, so feed
    whole blocks (the relay's 160-sample packets are) for chunk-independent output.
    """

    def __init__(self, mode: MaskMode = MaskMode.COMFORT_NOISE, lookahead: bool = True) -> None:
        self.mode = MaskMode(mode)
        self._lookahead = False
        self._n_in = 0  # samples received
        self._partial = np.zeros(0, dtype=np.int16)  # incomplete trailing block
        # Per block from block index self._base; the stream starts after two silent
        # blocks, as a fresh MaskerBank slot's history does.
        self._base = -_HISTORY_BLOCKS
        self._feats: list[np.ndarray] = [np.zeros(_N_FEATURES)] * _HISTORY_BLOCKS
        self._holds: list[bool] = [False] * _HISTORY_BLOCKS
        self._window_samples = np.zeros(_HISTORY_BLOCKS * BLOCK_SAMPLES, dtype=np.int16)  # from the next window's block
        self._flags: list[bool] = [False] * _HISTORY_BLOCKS
        self._levels: list[float] = [_UNTRACKED] * _HISTORY_BLOCKS  # background power before each block
        self._confirmed: list[bool] = []  # per window, by its first block
        self._tone: list[bool] = [False] * _HISTORY_BLOCKS  # per block, while its windows are known
        self._level = _UNTRACKED
        self._pending = np.zeros(0, dtype=np.int16)  # received, not yet output
        self._pending_start = 0  # stream index of _pending[0]
        self._filler_left = 0
        self._filler_start = 0
        self._filler_level = 0.0
        self.set_lookahead(lookahead)

    @property
    def lookahead_samples(self) -> int:
        """Current output delay in samples (0 or 160)."""
        return LOOKAHEAD_SAMPLES if self._lookahead else 0

    def set_lookahead(self, on: bool) -> np.ndarray:
        """Switch look-ahead; switching off returns the held samples, masked."""
        if on and not self._lookahead:
            self._lookahead = True
            self._start_filler()
            return np.zeros(0, dtype=np.int16)
        if not on and self._lookahead:
            held = self.flush()
            self._lookahead = False
            self._filler_left = 0
            return held
        return np.zeros(0, dtype=np.int16)

    def _start_filler(self) -> None:
        self._filler_left = LOOKAHEAD_SAMPLES
        self._filler_start = self._n_in
        self._filler_level = self._level

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Masked output of the same length as `samples` (int16)."""
        x = np.asarray(samples, dtype=np.int16).ravel()
        self._analyse(x)
        self._pending = np.concatenate([self._pending, x])
        self._n_in += len(x)
        n_fill = min(self._filler_left, len(x))
        parts = []
        if n_fill:
            done = LOOKAHEAD_SAMPLES - self._filler_left
            idx = np.arange(self._filler_start + done, self._filler_start + done + n_fill)
            parts.append(self._background(idx))
            self._filler_left -= n_fill
        parts.append(self._emit(len(x) - n_fill, "lookahead" if self._lookahead else "direct"))
        return np.concatenate(parts)

    def flush(self) -> np.ndarray:
        """Held samples, masked with what is known; with look-ahead on, the next input starts a new filler."""
        held = self._emit(len(self._pending), "flush")
        if self._lookahead:
            self._start_filler()
        return held

    def _background(self, idx: np.ndarray) -> np.ndarray:
        if self.mode is MaskMode.COMFORT_NOISE:
            return _fill(self.mode, idx, np.full(idx.shape, self._filler_level))
        return np.zeros(idx.shape, dtype=np.int16)

    def _analyse(self, x: np.ndarray) -> None:
        data = np.concatenate([self._partial, x])
        n_blocks = len(data) // BLOCK_SAMPLES
        if n_blocks:
            feats, flags = _block_features(data[: n_blocks * BLOCK_SAMPLES].reshape(-1, BLOCK_SAMPLES))
            self._feats.extend(feats)
            self._holds.extend(_holds(feats).tolist())
            for e, f in zip(feats[:, _ENERGY].tolist(), flags.tolist()):
                self._levels.append(self._level)
                self._flags.append(f)
                self._level = float(_track(self._level, e / BLOCK_SAMPLES, f))
            first = len(self._confirmed)
            self._window_samples = np.concatenate([self._window_samples, data[: n_blocks * BLOCK_SAMPLES]])
            if len(self._feats) - first >= WINDOW_BLOCKS:
                recent = self._window_samples[None, :]
                self._confirmed.extend(_confirm(np.array(self._feats[first:]), lambda rows: recent[rows], 0).tolist())
                keep = len(self._feats) - len(self._confirmed)  # blocks of the next window already seen
                self._window_samples = self._window_samples[len(self._window_samples) - keep * BLOCK_SAMPLES:]
            self._tone.extend(self._tone_run(len(self._tone), len(self._confirmed)))
        self._partial = data[n_blocks * BLOCK_SAMPLES:]

    def _hold(self, block: int) -> bool:
        i = block - self._base
        return 0 <= i < len(self._holds) and self._holds[i]

    def _flag(self, block: int) -> bool:
        i = block - self._base
        return 0 <= i < len(self._flags) and self._flags[i]

    def _confirm(self, start_block: int) -> bool:
        i = start_block - self._base
        return 0 <= i < len(self._confirmed) and self._confirmed[i]

    def _tone_run(self, first: int, stop: int) -> list[bool]:
        """Tone state of blocks first..stop-1 (list indices), following `_tone[first - 1]`.

        Windows and flags not yet seen count as absent (flush uses that).
        """
        out: list[bool] = []
        prev = self._tone[first - 1] if first > 0 else False
        for i in range(first, stop):
            b = self._base + i
            prev = (any(self._confirm(s) for s in range(b - WINDOW_BLOCKS + 1, b + 1))
                    or (prev and self._hold(b)))
            out.append(prev)
        return out

    def _masked(self, block: int, rule: str, tone: list[bool]) -> bool:
        """Whether a block is masked; `tone` is `_tone` extended as far as needed."""
        if rule == "direct":
            return any(self._flag(j) for j in range(block - HANGOVER_BLOCKS, block + 1))
        lo = block - HANGOVER_BLOCKS - self._base
        if any(tone[max(lo, 0):block + PRE_GUARD_BLOCKS + 1 - self._base]):
            return True
        return rule == "flush" and any(
            self._flag(j) for j in range(block - HANGOVER_BLOCKS, block + PRE_GUARD_BLOCKS + 1))

    def _emit(self, n: int, rule: str) -> np.ndarray:
        """Take n samples from the pending queue and mask them."""
        if n == 0:
            return np.zeros(0, dtype=np.int16)
        out = self._pending[:n].copy()
        start = self._pending_start
        self._pending = self._pending[n:]
        self._pending_start += n
        first_b, last_b = start // BLOCK_SAMPLES, (start + n - 1) // BLOCK_SAMPLES
        tone = self._tone
        if rule == "flush":  # blocks whose windows are not all seen yet, as far as known
            tone = tone + self._tone_run(len(tone), last_b + PRE_GUARD_BLOCKS + 1 - self._base)
        for b in range(first_b, last_b + 1):
            if not self._masked(b, rule, tone):
                continue
            lo = max(b * BLOCK_SAMPLES, start) - start
            hi = min((b + 1) * BLOCK_SAMPLES, start + n) - start
            idx = np.arange(start + lo, start + hi)
            i = b - self._base
            level = self._levels[i] if 0 <= i < len(self._levels) else self._level
            out[lo:hi] = _fill(self.mode, idx, np.full(idx.shape, level))
        keep_from = self._pending_start // BLOCK_SAMPLES - HANGOVER_BLOCKS - WINDOW_BLOCKS
        if keep_from > self._base + 64:
            drop = keep_from - self._base
            for name in ("_feats", "_holds", "_flags", "_levels", "_confirmed", "_tone"):
                del getattr(self, name)[:drop]
            self._base = keep_from
        return out


class MaskerBank:
    """Masks many streams' 20 ms packets in one vectorised pass; each slot equals one `Masker`.

    Slots start with capture off: no masking, no delay. `set_capture(slot, True)`
    turns masking and look-ahead on: that slot's next row is filler, and each
    row after it is the slot's previous packet, masked. A slot may appear at
    most once per `process` call.
    """

    def __init__(self, mode: MaskMode = MaskMode.COMFORT_NOISE, capacity: int = 64) -> None:
        self.mode = MaskMode(mode)
        self._free: list[int] = []
        self._n_slots = 0
        self._alloc(max(1, capacity))

    def _alloc(self, cap: int) -> None:
        old = getattr(self, "_cap", 0)

        def grow(name: str, shape: tuple[int, ...], dtype) -> None:
            new = np.zeros((cap,) + shape, dtype=dtype)
            if old:
                new[:old] = getattr(self, name)
            setattr(self, name, new)

        grow("_held", (PACKET_SAMPLES,), np.int16)
        # The held packet's last three blocks (for windows that reach into the next packet) ...
        grow("_hist_feats", (WINDOW_BLOCKS, _N_FEATURES), np.float64)
        # ... and the loose flags of the two blocks before it and of its four.
        grow("_hist_flags", (_HISTORY_BLOCKS + BLOCKS_PER_PACKET,), bool)
        # Windows known from the last call, then the tone state of the blocks -2..0: one array,
        # so `process` reads and writes both with one gather and one scatter.
        grow("_tone_state", (_KNOWN_WINDOWS + HANGOVER_BLOCKS + 1,), bool)
        self._pre_confirmed = self._tone_state[:, :_KNOWN_WINDOWS]
        self._pre_tone = self._tone_state[:, _KNOWN_WINDOWS:]
        grow("_held_levels", (BLOCKS_PER_PACKET,), np.float64)
        grow("_level", (), np.float64)
        grow("_filler_level", (), np.float64)
        grow("_n_in", (), np.int64)
        grow("_switches", (3,), bool)  # held_valid, capture, always: one gather in `process`
        self._held_valid, self._capture, self._always = (self._switches[:, i] for i in range(3))
        self._cap = cap

    def add_stream(self, mask_always: bool = False) -> int:
        """A new slot, capture off; `mask_always` masks outside captures too (no look-ahead there)."""
        if self._free:
            slot = self._free.pop()
        else:
            if self._n_slots == self._cap:
                self._alloc(self._cap * 2)
            slot = self._n_slots
            self._n_slots += 1
        for name in ("_held", "_hist_feats", "_hist_flags", "_tone_state", "_held_levels",
                     "_filler_level", "_n_in", "_held_valid", "_capture"):
            getattr(self, name)[slot] = 0
        self._level[slot] = _UNTRACKED
        self._always[slot] = mask_always
        return slot

    def remove_stream(self, slot: int) -> None:
        """Free a slot (flush it first if its held packet should still go out)."""
        self._check(slot)
        self._capture[slot] = False
        self._held_valid[slot] = False
        self._free.append(slot)

    def _check(self, slot: int) -> None:
        if not (0 <= slot < self._n_slots) or slot in self._free:
            raise ValueError("masker slot is not in use")

    def set_mask_always(self, slot: int, on: bool) -> None:
        """Policy mask = "always": mask outside captures too, from detection onwards."""
        self._check(slot)
        self._always[slot] = on

    def set_capture(self, slot: int, on: bool) -> tuple[np.ndarray, bool] | None:
        """Capture on/off; turning off returns the held packet (masked) and its changed flag."""
        self._check(slot)
        if on and not self._capture[slot]:
            self._capture[slot] = True
            self._held_valid[slot] = False
            self._filler_level[slot] = self._level[slot]
            return None
        if not on and self._capture[slot]:
            held = self.flush(slot)
            self._capture[slot] = False
            return held
        return None

    def flush(self, slot: int) -> tuple[np.ndarray, bool] | None:
        """The held packet, masked with what is known (packets stopped); None when nothing is held."""
        self._check(slot)
        if not self._held_valid[slot]:
            return None
        if not (np.count_nonzero(self._hist_flags[slot]) or np.count_nonzero(self._tone_state[slot])
                or _may_confirm(self._hist_feats[slot][None])):  # nothing flagged, no tone: nothing masked
            self._held_valid[slot] = False
            self._filler_level[slot] = self._level[slot]
            return self._held[slot].copy(), False
        confirmed = np.concatenate([
            self._pre_confirmed[slot],
            _confirm(self._hist_feats[slot], lambda rows: self._held[slot][None, :][rows], 1),
            np.zeros(_WINDOWS_PER_CALL - 1, dtype=bool),  # windows reaching unseen blocks
        ])
        flags = np.concatenate([self._hist_flags[slot], np.zeros(PRE_GUARD_BLOCKS, dtype=bool)])
        holds = np.concatenate([_holds(self._hist_feats[slot]), np.zeros(1, dtype=bool)])
        tone = _tone_run(self._pre_tone[slot][None, :], confirmed[None, :], holds[None, :])[0]
        mask = (_window_or(tone, HANGOVER_BLOCKS, PRE_GUARD_BLOCKS)
                | _window_or(flags, HANGOVER_BLOCKS, PRE_GUARD_BLOCKS))
        out = self._held[slot].copy()
        if mask.any():
            base = int(self._n_in[slot]) - PACKET_SAMPLES
            idx = base + np.arange(PACKET_SAMPLES)
            fill = _fill(self.mode, idx, np.repeat(self._held_levels[slot], BLOCK_SAMPLES))
            m = np.repeat(mask, BLOCK_SAMPLES)
            out[m] = fill[m]
        self._held_valid[slot] = False
        self._filler_level[slot] = self._level[slot]
        return out, bool(mask.any())

    def process(self, slots: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masked rows (k, 160) int16 and a per-row `changed` flag for packets of the given slots."""
        slots = np.asarray(slots, dtype=np.intp)
        frames = np.asarray(frames, dtype=np.int16)
        k = len(slots)
        if frames.shape != (k, PACKET_SAMPLES):
            raise ValueError("masker frames must be (k, 160)")
        feats, flags = _block_features(frames.reshape(-1, BLOCK_SAMPLES))
        feats = feats.reshape(k, BLOCKS_PER_PACKET, _N_FEATURES)
        flags = flags.reshape(k, BLOCKS_PER_PACKET)
        power = feats[:, :, _ENERGY] * (1.0 / BLOCK_SAMPLES)

        if k <= _SCALAR_TRACK_ROWS:  # same float64 arithmetic as `_track`, without its per-call numpy cost
            levels, level = _track_rows(self._level[slots].tolist(), power.tolist(), flags.tolist())
        else:
            level = self._level[slots]
            levels = np.empty((k, BLOCKS_PER_PACKET))
            for j in range(BLOCKS_PER_PACKET):  # the tracker is a recursion in time
                levels[:, j] = level
                level = _track(level, power[:, j], flags[:, j])

        switches = self._switches[slots]
        held_valid, capture, always = switches[:, 0], switches[:, 1], switches[:, 2]
        delayed = capture & held_valid
        filler = capture & ~held_valid
        direct_mask = always & ~capture

        # Blocks numbered from the held packet's first = 0. A held block b is masked by
        # the windows starting at b-4 .. b+1: those at -4..0 are known from the last
        # call, those at 1..4 (held blocks 1-3 and this packet's 0-2) are new.
        win_feats = np.concatenate([self._hist_feats[slots], feats[:, :WINDOW_BLOCKS]], axis=1)
        tone_state = self._tone_state[slots]
        near_tone = bool(np.count_nonzero(tone_state))  # count_nonzero: cheaper than .any() on small arrays
        if k <= _SCALAR_GATE_ROWS and not _may_confirm(win_feats):
            new_confirmed = np.zeros((k, _WINDOWS_PER_CALL), dtype=bool)
        else:
            new_confirmed = _confirm(win_feats, lambda rows: np.concatenate(
                [self._held[slots[rows]], frames[rows]], axis=1), 1)  # the held packet, then this one
            near_tone = near_tone or bool(np.count_nonzero(new_confirmed))
        all_flags = np.concatenate([self._hist_flags[slots], flags], axis=1)
        if near_tone:
            confirmed = np.concatenate([tone_state[:, :_KNOWN_WINDOWS], new_confirmed], axis=1)
            tone = _tone_run(tone_state[:, _KNOWN_WINDOWS:], confirmed, _holds(win_feats[:, :BLOCKS_PER_PACKET]))
            la_mask = _window_or(tone, HANGOVER_BLOCKS, PRE_GUARD_BLOCKS)
            new_state = np.concatenate([confirmed[:, BLOCKS_PER_PACKET:], tone[:, BLOCKS_PER_PACKET:]], axis=1)
        else:  # no tone anywhere near, nothing confirmed: the common case in speech
            la_mask = np.zeros((k, BLOCKS_PER_PACKET), dtype=bool)
            new_state = False
        if np.count_nonzero(direct_mask):  # direct rows: this packet, loose flags with hang-over only (no look-ahead)
            dm = _window_or(all_flags[:, BLOCKS_PER_PACKET:], HANGOVER_BLOCKS, 0) & direct_mask[:, None]
            block_mask = np.where(delayed[:, None], la_mask, dm)
            changed = block_mask.any(axis=1) | filler
        elif near_tone:
            block_mask = la_mask & delayed[:, None]
            changed = block_mask.any(axis=1) | filler
        else:  # only filler rows change
            block_mask = la_mask
            changed = filler

        n_in = self._n_in[slots]
        if np.count_nonzero(delayed) == k:  # every row in capture, past its filler
            out = self._held[slots]
        else:
            out = np.where(delayed[:, None], self._held[slots], frames)
        if np.count_nonzero(changed):
            rows = np.flatnonzero(changed)
            base = np.where(delayed, n_in - PACKET_SAMPLES, n_in)[rows]
            idx = base[:, None] + np.arange(PACKET_SAMPLES)[None, :]
            blk_levels = np.where(delayed[rows, None], self._held_levels[slots[rows]], levels[rows])
            fill_power = np.repeat(blk_levels, BLOCK_SAMPLES, axis=1)
            is_filler = filler[rows]
            if is_filler.any():
                fill_power[is_filler] = self._filler_level[slots[rows[is_filler]], None]
            fill = _fill(self.mode, idx, fill_power)
            if self.mode is not MaskMode.COMFORT_NOISE and is_filler.any():
                fill[is_filler] = 0
            m = np.repeat(block_mask[rows], BLOCK_SAMPLES, axis=1) | is_filler[:, None]
            sub = out[rows]
            sub[m] = fill[m]
            out[rows] = sub

        self._level[slots] = level
        self._hist_feats[slots] = feats[:, BLOCKS_PER_PACKET - WINDOW_BLOCKS:]
        self._hist_flags[slots] = all_flags[:, BLOCKS_PER_PACKET:]
        self._tone_state[slots] = new_state
        self._held_levels[slots] = levels
        self._held[slots] = frames
        self._n_in[slots] = n_in + PACKET_SAMPLES
        self._held_valid[slots] = capture
        return out, changed


def encode_masked(original_codes: np.ndarray, masked: np.ndarray, codec: str) -> np.ndarray:
    """G.711 codes for masked samples, keeping the original code wherever the sample is unchanged.

    `original_codes` are the payload bytes the masked samples came from (with
    look-ahead: the slot's previous packet). Unchanged samples keep their exact
    code (G.711 decode-encode is not the identity for mu-law's two zeros).
    """
    codes = np.asarray(original_codes, dtype=np.uint8)
    masked = np.asarray(masked, dtype=np.int16)
    same = DECODE_TABLES[codec][codes] == masked
    return np.where(same, codes, ENCODE_TABLES[codec][masked.view(np.uint16)])


__all__ = [
    "BLOCK_SAMPLES", "LOOKAHEAD_SAMPLES", "PACKET_SAMPLES", "MaskMode", "Masker", "MaskerBank",
    "analyse_blocks", "confirm_windows", "encode_masked", "DTMF_FREQS_HZ",
]
