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
    a tone as loud as the speech over it. A block after the first may instead be
    a gap (its whole energy 5 dB under the strongest block's lines): a tone keyed
    in 10 ms pieces, or a lone 10 ms burst, then still confirms (the last block
    only when the block before the window is not flagged, so that the end of a
    tone keeps its 2-block hang-over). A window under the flag floor (-45 dBm0)
    is tested too when its first block holds half its energy in its two lines,
    down to -75 dBm0: a weak key on a quiet line (40 dB of gain gives it back).
    Twist up to 20 dB confirms when the lines hold >= 80 % of the window. Speech and music rarely put that much
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
import math
from enum import Enum

import numpy as np
from numpy.lib.stride_tricks import as_strided

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
WEAK_MIN_LEVEL_DBM0 = -75.0
"""A window under the flag floor still gets the confirmation tests when its first block is at least
this loud and holds half its energy in its best low + high line: a key keyed far under any receiver's
floor, on a quiet line, comes back with 40 dB of gain. In noise the concentration tests refuse it
(and no gain brings it back there), so this floor is relative to the line's background in effect."""
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
PURE_TWIST_LIMIT_DB = 20.0
PURE_CONCENTRATION = 0.8
"""Twisted beyond `TWIST_LIMIT_DB` but within this many dB, a window still confirms when its two lines
hold this share of its energy: a pair no receiver takes, but whose frequencies name the key."""
STEADY_DB = 10.0
"""Each block of a confirmed window carries DTMF-line energy within this many dB of its strongest block ..."""
GAP_DB = 5.0
"""... or is a gap: its whole energy this many dB under that block's line energy (a tone keyed in
10 ms pieces leaves blocks holding a few samples of it: -9 dB for 5 of 40)."""
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
_BASIS_T = np.ascontiguousarray(_BASIS.T)
_WINDOW_BASIS = _window_basis().astype(np.float32)  # samples are int16: float32 products are exact enough
_WINDOW_OFFSETS = np.arange(WINDOW_BLOCKS)[None, :]
_N_LINES = len(FREQ_OFFSETS) * 8
_MIN_BLOCK_ENERGY = BLOCK_SAMPLES * dbm0_to_amplitude(FLAG_MIN_LEVEL_DBM0) ** 2 / 2.0
_MIN_WINDOW_ENERGY = WINDOW_BLOCKS * _MIN_BLOCK_ENERGY
_WEAK_ENERGY = BLOCK_SAMPLES * dbm0_to_amplitude(WEAK_MIN_LEVEL_DBM0) ** 2 / 2.0
_TWIST_LIMIT = 10.0 ** (TWIST_LIMIT_DB / 10.0)
_PURE_TWIST_LIMIT = 10.0 ** (PURE_TWIST_LIMIT_DB / 10.0)
_STEADY = 10.0 ** (-STEADY_DB / 10.0)
_GAP = 10.0 ** (-GAP_DB / 10.0)
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
    feats = np.empty((len(x), _N_FEATURES))
    energy = feats[:, _ENERGY]
    lines = feats[:, _LINES]
    if _features_blocks is not None:
        _features_blocks(x, feats)  # the same steps in C, products summed in sample order
    else:
        proj = x @ _BASIS
        np.square(proj, out=proj)
        p = proj[:, :8] + proj[:, 8:]  # ~ (amplitude * 20)^2 per frequency
        energy[:] = (x * x).sum(axis=1)  # int16 squares: exact in float64 in any summation order
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
    feats, flags = _block_features(x.reshape(-1, BLOCK_SAMPLES))
    flat = x.reshape(-1, x.shape[-2] * BLOCK_SAMPLES)
    flags = flags.reshape(x.shape[:-1])
    before = np.zeros(flags.shape[:-1] + (max(flags.shape[-1] - WINDOW_BLOCKS + 1, 0),), dtype=bool)
    before[..., 1:] = flags[..., :before.shape[-1] - 1]
    return _confirm(feats.reshape(x.shape[:-1] + (_N_FEATURES,)), lambda rows: flat[rows], 0, before)


def _confirm(feats: np.ndarray, samples_of: Callable[[np.ndarray], np.ndarray], first_block: int,
             flagged_before: np.ndarray | None = None) -> np.ndarray:
    """Confirmed windows from block features (..., m, 2) -> bool (..., m - 2).

    Window s covers blocks s, s+1, s+2: two narrow lines, one per DTMF group,
    within the twist limit, holding most of the window's energy, and steady:
    every block carries DTMF-line energy (so a window confirms only from the
    block where the tone is, and its pre-guard stays within a block of the onset).
    `samples_of(rows)` gives the samples of those rows (leading dimensions flattened),
    block j of `feats` from sample 40 * (j + first_block): built only when needed.
    `flagged_before` (..., m - 2): the block before each window is loosely flagged (None: none is).
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
    t, g = _STEADY * lines_max, _GAP * lines_max
    e1, e2 = feats[..., 1:n + 1, _ENERGY], feats[..., 2:n + 2, _ENERGY]
    end_gap = e2 <= g
    if flagged_before is not None:
        end_gap &= ~flagged_before
    weak = 2.0 * l0 >= np.maximum(feats[..., 0:n, _ENERGY], _WEAK_ENERGY)  # see WEAK_MIN_LEVEL_DBM0
    confirmed = (((e >= _MIN_WINDOW_ENERGY) | weak) & (el[..., _LINES] >= _PREFILTER * MIXED_CONCENTRATION * e)
                 & (l0 >= t) & ((l1 >= t) | (e1 <= g)) & ((l2 >= t) | end_gap))
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
                              & (((high * _TWIST_LIMIT >= low) & (low * _TWIST_LIMIT >= high))
                                 | ((conc >= PURE_CONCENTRATION) & (high * _PURE_TWIST_LIMIT >= low)
                                    & (low * _PURE_TWIST_LIMIT >= high))))
    return confirmed


def _may_confirm(feats: np.ndarray) -> bool:
    """Whether any window of (k, m, 2) block features passes `_confirm`'s cheap test (same float64 arithmetic).

    False means `_confirm` would return all False: the caller skips it.
    """
    for row in feats.tolist():
        for s in range(len(row) - WINDOW_BLOCKS + 1):
            (e0, l0), (e1, l1), (e2, l2) = row[s], row[s + 1], row[s + 2]
            if _window_may_confirm(e0, e1, e2, l0, l1, l2):
                return True
    return False


def _window_may_confirm(e0: float, e1: float, e2: float, l0: float, l1: float, l2: float) -> bool:
    """`_confirm`'s cheap test of one window from its blocks' energies and line energies."""
    e = e0 + e1 + e2
    return ((e >= _MIN_WINDOW_ENERGY or 2.0 * l0 >= max(e0, _WEAK_ENERGY))
            and l0 + l1 + l2 >= _PREFILTER * MIXED_CONCENTRATION * e
            and _steady_or_gap(e1, e2, l0, l1, l2, False))


def _steady_or_gap(e1: float, e2: float, l0: float, l1: float, l2: float, flagged_before: bool) -> bool:
    """Every block of a window carries DTMF-line energy within `STEADY_DB` of the strongest, or is a
    gap (`GAP_DB`): a tone keyed in 10 ms pieces, a 10 ms burst. Never the first block: a window
    still confirms only from a block where the tone is (the pre-guard stays one block). The last
    block only when the block before the window is not loosely flagged: at the end of a tone a
    window ending on the silence after it would stretch the hang-over by a block."""
    hi = max(l0, l1, l2)
    t, g = _STEADY * hi, _GAP * hi
    return l0 >= t and (l1 >= t or e1 <= g) and (l2 >= t or (e2 <= g and not flagged_before))


def _track(level: np.ndarray | float, power: np.ndarray | float, flag: np.ndarray | bool):
    """Background power after one block: flagged blocks leave it alone; the first block sets it."""
    rise = np.minimum(power, level * _NOISE_RISE + _NOISE_RISE_ABS)
    new = np.where((power < level) | (level < 0), power, rise)
    return np.where(flag, level, new)


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
                before = [i > 0 and self._flags[i - 1] for i in range(first, len(self._feats) - WINDOW_BLOCKS + 1)]
                self._confirmed.extend(_confirm(np.array(self._feats[first:]), lambda rows: recent[rows], 0,
                                                np.array(before, dtype=bool)).tolist())
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


_BANK_UNTRACKED = np.inf
"""A bank slot's background power before its first unflagged block. With +inf the tracker step
is min(power, level * rise + abs) for every unflagged block (`_track` gives the same values);
fills read it as `_UNTRACKED`."""

# Per-slot state of `MaskerBank`: one float64 row (with the bool state in its last columns), so
# that `process` reads it with one gather and writes it with one scatter.
_WORK_BLOCKS = WINDOW_BLOCKS + BLOCKS_PER_PACKET
"""Blocks whose features `process` reads: the held packet's last three, then the new packet's four."""
_F_HIST_E = 0
"""Energies of blocks 0..6 (`_WORK_BLOCKS`), then their line energies (`_F_HIST_L`). Blocks 0..2,
the held packet's last three, are state (windows reaching into the next packet start there);
3..6 are the new packet's, filled by `process` in its gathered copy (stale in the bank)."""
_F_HIST_L = _F_HIST_E + _WORK_BLOCKS
_F_LEVELS = _F_HIST_L + _WORK_BLOCKS
"""Background power before each held block (4), then after the last one (`_F_LEVEL`)."""
_F_LEVEL = _F_LEVELS + BLOCKS_PER_PACKET
_F_FILLER = _F_LEVEL + 1
_F_N_IN = _F_FILLER + 1
"""Samples received (float64: exact far beyond any call's length)."""
_F_BITS = _F_N_IN + 1
"""The slot's bool state, 24 bytes in the last three float64 columns (read through a bool view, never
as numbers), so one gather and one scatter move all of a slot's state but its held packet."""
# Bool columns in 8-byte words, read as uint64 to test a whole group at once: word 0 holds the
# loose flags and `_B_UNSTEADY`, word 1 the tone state, word 2 the switches.
_B_FLAGS = 0
"""Loose flags of the two blocks before the held packet and of its four."""
_B_UNSTEADY = _B_FLAGS + _HISTORY_BLOCKS + BLOCKS_PER_PACKET
"""Not (capture and held_valid): the slot's row is filler, direct or unmasked."""
_B_CONFIRMED = 8
"""Windows known from the last call (starting 4 blocks before the held packet up to its first) ..."""
_B_TONE = _B_CONFIRMED + _KNOWN_WINDOWS
"""... and the tone state of the blocks -2..0."""
_B_HELD_VALID = 16
_B_CAPTURE = _B_HELD_VALID + 1
_B_ALWAYS = _B_CAPTURE + 1
_N_B = 24
_N_F = _F_BITS + _N_B // 8
_W_TONE = 1
"""The word of `_B_CONFIRMED` .. `_B_TONE` + 2; words 0 and 1 all zero: nothing flagged or in a
tone, every row delayed."""
if _B_TONE + HANGOVER_BLOCKS + 1 != 16 or _B_UNSTEADY >= _B_CONFIRMED:
    raise ValueError("masker bank state layout does not fit its words")

_SCALAR_TRACK_ROWS = 6
"""Up to this many rows the tracker runs on Python floats (same arithmetic as the numpy steps)."""
_SCALAR_DECIDE_WINDOWS = 16
"""Up to this many candidate windows the DFT decision runs on Python floats."""
_SCALAR_TONE_ROWS = 8
"""Up to this many rows near a tone the tone run runs on Python booleans."""
_SCALAR_FILL_ROWS = 8
"""Up to this many changed rows are filled block by block (table slices) instead of by gathers."""
_SCALAR_ACTIVE_ROWS = 8
"""Up to this many active rows a call runs row by row on Python scalars (`MaskerBank._process_few`)."""
_PREFILTER_SHARE = _PREFILTER * MIXED_CONCENTRATION


class _Scratch:
    """`MaskerBank.process`'s views of its scratch arrays for one batch size (set by `_scratch_for`)."""


def _block_features_into(frames: np.ndarray, w: _Scratch) -> None:
    """`_block_features` of (k, 160) packets into `w.energy` and `w.lines` (k, 4): same arithmetic, no flags.

    The product runs as basis^T @ blocks^T (bit-identical to blocks @ basis) so that the
    frequencies are rows: every step after it is a contiguous row operation, into scratch.
    With the C extension both run there instead (one definition, summed in sample order).
    """
    if _features_packets is not None:
        _features_packets(frames, w.energies8, w.lines8)
        return
    np.copyto(w.x3, frames.reshape(w.x3.shape))
    np.matmul(_BASIS_T, w.x.T, out=w.proj)
    np.square(w.proj, out=w.proj)
    np.add(w.proj_cos, w.proj_sin, out=w.p)
    w.p_f.max(axis=1, out=w.best)  # best low, best high: one reduction (max is exact in any order)
    np.add(w.best_low, w.best_high, out=w.lines)
    np.multiply(w.lines, 2.0 / BLOCK_SAMPLES, out=w.lines)
    np.vecdot(w.x3, w.x3, out=w.energy)  # int16 squares: exact in float64 in any summation order


def _window_decisions(p: np.ndarray, q: np.ndarray | list) -> list[bool] | np.ndarray:
    """`_confirm`'s DFT test of candidate windows.

    p (n, 8): line power at each DTMF frequency (best offset); q (n, 4): each window's
    energy, line sum, lines min and max. Returns confirmed (n,).
    """
    if len(p) <= _SCALAR_DECIDE_WINDOWS:  # same float64 operations, without ~20 numpy calls
        out = []
        for f, (e, _, lines_min, lines_max) in zip(p.tolist(), q.tolist() if isinstance(q, np.ndarray) else q):
            low, high = max(f[:4]), max(f[4:])
            conc = (low + high) * _WINDOW_SCALE / e
            tone_like = (high * _MIXED_TWIST_LOW >= low and high <= low * _MIXED_TWIST_HIGH
                         and lines_min >= _MIXED_STEADY * lines_max)
            out.append((conc >= CONFIRM_CONCENTRATION or (conc >= MIXED_CONCENTRATION and tone_like))
                       and (high * _TWIST_LIMIT >= low and low * _TWIST_LIMIT >= high
                            or conc >= PURE_CONCENTRATION and high * _PURE_TWIST_LIMIT >= low
                            and low * _PURE_TWIST_LIMIT >= high))
        return out
    q = np.asarray(q, dtype=np.float64)
    low, high = p[:, :4].max(axis=1), p[:, 4:].max(axis=1)
    conc = (low + high) * _WINDOW_SCALE / q[:, 0]
    steady = q[:, 2] >= _MIXED_STEADY * q[:, 3]
    tone_like = (high * _MIXED_TWIST_LOW >= low) & (high <= low * _MIXED_TWIST_HIGH) & steady
    return (((conc >= CONFIRM_CONCENTRATION) | ((conc >= MIXED_CONCENTRATION) & tone_like))
            & (((high * _TWIST_LIMIT >= low) & (low * _TWIST_LIMIT >= high))
               | ((conc >= PURE_CONCENTRATION) & (high * _PURE_TWIST_LIMIT >= low)
                  & (low * _PURE_TWIST_LIMIT >= high))))


_S_HOLDS = _B_FLAGS + _HISTORY_BLOCKS + 1
"""First column `_tone_rows` reads: the flags of held blocks 1..3, which hold a tone."""


def _tone_rows(state: list[list[bool]], confirmed: list[list[bool]], hold_next: list[bool]
               ) -> tuple[list[list[bool]], list[list[bool]]]:
    """`_tone_run` and the look-ahead mask on Python booleans, for a few rows.

    state: bool columns `_S_HOLDS` .. `_B_TONE` + 2 of each row; confirmed: windows
    1..4; hold_next: the new packet's first block holds a tone. Returns the held
    blocks' masks and the new tone state (windows 0..4, blocks 2..4).
    """
    masks, states = [], []
    w0, t0 = _B_CONFIRMED - _S_HOLDS, _B_TONE - _S_HOLDS
    for s, c, h in zip(state, confirmed, hold_next):
        holds = (s[0], s[1], s[2], h)
        windows = s[w0:t0] + c  # starting at blocks -4..4
        tone = s[t0:t0 + HANGOVER_BLOCKS + 1]  # blocks -2..0, then 1..4
        prev = tone[-1]
        for b in range(1, BLOCKS_PER_PACKET + 1):
            w = b + _CONFIRM_BEFORE  # window starting at block b
            prev = windows[w - 2] or windows[w - 1] or windows[w] or (prev and holds[b - 1])
            tone.append(prev)
        masks.append([tone[b] or tone[b + 1] or tone[b + 2] or tone[b + 3] for b in range(BLOCKS_PER_PACKET)])
        states.append(windows[BLOCKS_PER_PACKET:] + tone[BLOCKS_PER_PACKET:])
    return masks, states


def _fill_power(power):
    """A bank's stored background power as `_fill` takes it (untracked: `_UNTRACKED`)."""
    return np.where(power == _BANK_UNTRACKED, _UNTRACKED, power)


def _fill_packet(mode: MaskMode, start: int, levels: list[float]) -> np.ndarray:
    """`_fill` of one packet from stream sample `start` (a multiple of 160: no table wraps inside
    it) at each block's background `levels` (a bank's stored values)."""
    if mode is MaskMode.FLAT:
        i = start % len(_FLAT_TABLE)
        return _FLAT_TABLE[i:i + PACKET_SAMPLES] if i + PACKET_SAMPLES <= len(_FLAT_TABLE) else _fill(
            mode, start + np.arange(PACKET_SAMPLES), None)
    i = start % len(_CN_TABLE)
    rms = [math.sqrt(min(max(_UNTRACKED if lv == _BANK_UNTRACKED else lv, 0.0), _CN_MAX_POWER)) for lv in levels]
    noise = _CN_TABLE[i:i + PACKET_SAMPLES] * np.repeat(rms, BLOCK_SAMPLES)
    return np.clip(np.rint(noise), -32768, 32767).astype(np.int16)


if len(_CN_TABLE) % PACKET_SAMPLES:
    raise ValueError("comfort-noise table must hold whole packets")


class MaskerBank:
    """Masks many streams' 20 ms packets in one vectorised pass; each slot equals one `Masker`.

    Slots start with capture off: no masking, no delay. `set_capture(slot, True)`
    turns masking and look-ahead on: that slot's next row is filler, and each
    row after it is the slot's previous packet, masked. A slot may appear at
    most once per `process` call.

    The relay calls `process` once per loop iteration with the few rows that
    arrived, so a call costs mostly numpy calls, not samples: a call whose rows
    are all delayed, with no block loud enough to flag, no flag and no tone state
    (silence, quiet noise) takes a short path; sparse work (candidate windows, rows
    near a tone, masked rows) runs on Python scalars while there is little of it.
    """

    def __init__(self, mode: MaskMode = MaskMode.COMFORT_NOISE, capacity: int = 64) -> None:
        self._mode = MaskMode(mode)
        self._free: list[int] = []
        self._n_slots = 0
        self._work_rows = 0
        self._scratch: dict[int, _Scratch] = {}
        self._alloc(max(1, capacity))

    @property
    def mode(self) -> MaskMode:
        """The fill; fixed for the bank's life (only comfort noise tracks the background)."""
        return self._mode

    def _alloc(self, cap: int) -> None:
        old = getattr(self, "_cap", 0)

        def grow(name: str, shape: tuple[int, ...], dtype) -> None:
            new = np.zeros((cap,) + shape, dtype=dtype)
            if old:
                new[:old] = getattr(self, name)
            setattr(self, name, new)

        grow("_held", (PACKET_SAMPLES,), np.int16)
        grow("_fs", (_N_F,), np.float64)
        self._bs = self._fs[:, _F_BITS:].view(np.bool_)
        self._held_valid, self._capture, self._always, self._unsteady = (
            self._bs[:, i] for i in (_B_HELD_VALID, _B_CAPTURE, _B_ALWAYS, _B_UNSTEADY))
        self._cap = cap

    def _grow_work(self, rows: int) -> None:
        """Scratch arrays for `process`, reused across calls."""
        n = max(rows, 2 * self._work_rows, 64)
        self._scratch: dict[int, _Scratch] = {}
        self._wx = np.empty(n * BLOCKS_PER_PACKET * BLOCK_SAMPLES)
        self._wproj = np.empty(16 * n * BLOCKS_PER_PACKET)
        self._wp = np.empty(8 * n * BLOCKS_PER_PACKET)
        self._wbest = np.empty(2 * n * BLOCKS_PER_PACKET)
        self._wfs = np.zeros((n, _N_F))
        self._wq = np.zeros((n, 4, _WINDOWS_PER_CALL))  # per window: energy, line sum, lines min, max
        self._wt = np.zeros((n, _WINDOWS_PER_CALL))
        self._wg = np.zeros((n, 8), dtype=bool)  # blocks 0..6 loud enough to flag; column 7 stays False
        self._wweak = np.zeros((n, 8), dtype=bool)  # blocks 0..6 weakly flagged (WEAK_MIN_LEVEL_DBM0)
        self._wt7 = np.zeros((2, n, 8))
        self._wef = np.zeros((2, n, 8))
        """Energies, then line energies, of blocks 0..6 of each row, contiguous per feature so the row
        gate's ufuncs run one flat loop; column 7 stays 0 (never loud, never weakly flagged)."""
        self._wc = np.zeros((n, 2 * PACKET_SAMPLES), dtype=np.int16)  # held packet, then the new one
        c = self._wc.strides
        # Window s (120 samples) starts at the held packet's block s + 1: a view, no copy.
        self._wc_windows = as_strided(self._wc[:, BLOCK_SAMPLES:],
                                      (n, _WINDOWS_PER_CALL, WINDOW_BLOCKS * BLOCK_SAMPLES),
                                      (c[0], BLOCK_SAMPLES * c[1], c[1]), writeable=False)
        self._work_rows = n

    def add_stream(self, mask_always: bool = False) -> int:
        """A new slot, capture off; `mask_always` masks outside captures too (no look-ahead there)."""
        if self._free:
            slot = self._free.pop()
        else:
            if self._n_slots == self._cap:
                self._alloc(self._cap * 2)
            slot = self._n_slots
            self._n_slots += 1
        self._held[slot] = 0
        self._fs[slot] = 0.0  # and every bool column False
        self._fs[slot, _F_LEVEL] = _BANK_UNTRACKED
        self._always[slot] = mask_always
        self._unsteady[slot] = True
        return slot

    def remove_stream(self, slot: int) -> None:
        """Free a slot (flush it first if its held packet should still go out)."""
        self._check(slot)
        self._capture[slot] = False
        self._held_valid[slot] = False
        self._unsteady[slot] = True
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
            self._unsteady[slot] = True
            self._fs[slot, _F_FILLER] = self._fs[slot, _F_LEVEL]
            return None
        if not on and self._capture[slot]:
            held = self.flush(slot)
            self._capture[slot] = False
            return held
        return None

    def flush(self, slot: int) -> tuple[np.ndarray, bool] | None:
        """The held packet, masked with what is known (packets stopped); None when nothing is held."""
        self._check(slot)
        b, f = self._bs[slot], self._fs[slot]
        bits = b.tobytes()
        if not bits[_B_HELD_VALID]:
            return None
        out = self._held[slot].copy()
        masked = False
        # Nothing flagged, no tone, no window that may confirm: nothing masked (the full rule's answer).
        e0, e1, e2 = f[_F_HIST_E:_F_HIST_E + WINDOW_BLOCKS].tolist()
        l0, l1, l2 = f[_F_HIST_L:_F_HIST_L + WINDOW_BLOCKS].tolist()
        if (bits[_B_FLAGS:_B_UNSTEADY].count(0) < _B_UNSTEADY - _B_FLAGS
                or bits[_B_CONFIRMED:_B_HELD_VALID].count(0) < _B_HELD_VALID - _B_CONFIRMED
                or _window_may_confirm(e0, e1, e2, l0, l1, l2)):
            hist = np.array([[e0, l0], [e1, l1], [e2, l2]])  # (3, 2) block features
            confirmed = np.concatenate([
                b[_B_CONFIRMED:_B_TONE],
                _confirm(hist, lambda rows: out[None, :][rows], 1, b[_B_FLAGS + _HISTORY_BLOCKS:][:1]),
                np.zeros(_WINDOWS_PER_CALL - 1, dtype=bool),  # windows reaching unseen blocks
            ])
            flags = np.concatenate([b[_B_FLAGS:_B_UNSTEADY], np.zeros(PRE_GUARD_BLOCKS, dtype=bool)])
            holds = np.concatenate([_holds(hist), np.zeros(1, dtype=bool)])
            tone = _tone_run(b[None, _B_TONE:_B_TONE + HANGOVER_BLOCKS + 1], confirmed[None, :], holds[None, :])[0]
            mask = (_window_or(tone, HANGOVER_BLOCKS, PRE_GUARD_BLOCKS)
                    | _window_or(flags, HANGOVER_BLOCKS, PRE_GUARD_BLOCKS))
            masked = bool(mask.any())
            if masked:
                idx = int(f[_F_N_IN]) - PACKET_SAMPLES + np.arange(PACKET_SAMPLES)
                fill = _fill(self._mode, idx, np.repeat(_fill_power(f[_F_LEVELS:_F_LEVEL]), BLOCK_SAMPLES))
                m = np.repeat(mask, BLOCK_SAMPLES)
                out[m] = fill[m]
        b[_B_HELD_VALID] = False
        b[_B_UNSTEADY] = True
        f[_F_FILLER] = f[_F_LEVEL]
        return out, masked

    def flush_many(self, slots: list[int]) -> tuple[np.ndarray, list[bool | None]]:
        """`flush` for several slots at once (held packets released at their deadline together).

        Returns (k, 160) rows and per row its `changed` flag, None where nothing was held (that
        row's samples are meaningless). With the C step, the rows that flush's shortcut leaves
        unchanged (nearly all) are done in one pass; the rest go through `flush` one by one.
        """
        k = len(slots)
        out = np.empty((k, PACKET_SAMPLES), dtype=np.int16)
        masked: list[bool | None] = [False] * k
        if _flush_quiet is not None:
            done = _flush_quiet(self._fs, self._held, np.array(slots, dtype=np.intp), out)
            if done.count(0) == 0:
                return out, masked
        else:
            done = bytes(k)
        for r, slot in enumerate(slots):
            if not done[r]:
                got = self.flush(slot)
                if got is None:
                    masked[r] = None
                else:
                    out[r], masked[r] = got
        return out, masked

    def _levels(self, level: np.ndarray, energy: np.ndarray, flags: np.ndarray | None) -> np.ndarray:
        """Background tracker over the new blocks: (k, 5), the level before each block, then after the last."""
        k = len(level)
        power = energy * (1.0 / BLOCK_SAMPLES)
        if k <= _SCALAR_TRACK_ROWS:
            rows = []
            for lv, ps, fl in zip(level.tolist(), power.tolist(),
                                  flags.tolist() if flags is not None else [[False] * BLOCKS_PER_PACKET] * k):
                row = [lv]
                for p, f in zip(ps, fl):
                    if not f:
                        lv = min(p, lv * _NOISE_RISE + _NOISE_RISE_ABS)
                    row.append(lv)
                rows.append(row)
            return np.array(rows, dtype=np.float64)
        out = np.empty((k, BLOCKS_PER_PACKET + 1))
        out[:, 0] = level
        if flags is not None and np.count_nonzero(flags):  # a flagged block leaves the level alone
            rise = np.where(flags, 1.0, _NOISE_RISE)
            step = np.where(flags, 0.0, _NOISE_RISE_ABS)
            power = np.where(flags, np.inf, power)
        else:
            rise, step = None, None
        t = np.empty(k)
        for j in range(BLOCKS_PER_PACKET):
            if rise is None:
                np.multiply(out[:, j], _NOISE_RISE, out=t)
                t += _NOISE_RISE_ABS
            else:
                np.multiply(out[:, j], rise[:, j], out=t)
                t += step[:, j]
            np.minimum(power[:, j], t, out=out[:, j + 1])
        return out

    def process(self, slots: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masked rows (k, 160) int16 and a per-row `changed` flag for packets of the given slots."""
        slots = np.asarray(slots, dtype=np.intp)
        frames = np.asarray(frames, dtype=np.int16)
        k = len(slots)
        if frames.shape != (k, PACKET_SAMPLES):
            raise ValueError("masker frames must be (k, 160)")
        if not k:
            return np.zeros((0, PACKET_SAMPLES), dtype=np.int16), np.zeros(0, dtype=bool)
        if k > self._work_rows:
            self._grow_work(k)
        w = self._scratch.get(k) or self._scratch_for(k)
        # The new packet's blocks 0..3 (blocks 3..6 of the work rows).
        _block_features_into(frames, w)
        if _quiet_step is not None:
            # Every row quiet (the capture's common case): the C step moves the state alone. Rows
            # whose look-ahead restarts (after a held packet left at its deadline) get their filler
            # row there (comfort noise here, from the state before the call).
            out = np.empty((k, PACKET_SAMPLES), dtype=np.int16)
            changed = np.zeros(k, dtype=bool)
            comfort = self._mode is MaskMode.COMFORT_NOISE
            if _quiet_step(self._fs, self._held, slots, frames, self._wef, out, comfort, changed):
                if comfort:
                    for r in changed.nonzero()[0].tolist():
                        f = self._fs[slots[r]]
                        out[r] = _fill_packet(MaskMode.COMFORT_NOISE, int(f[_F_N_IN]) - PACKET_SAMPLES,
                                              [float(f[_F_FILLER])] * BLOCKS_PER_PACKET)
                return out, changed
        # ndarray methods, not the np.* wrappers: ~1 us less per call each (the relay calls this
        # once per loop iteration with few rows).
        held = self._held.take(slots, axis=0)
        fs = w.fs
        self._fs.take(slots, axis=0, out=fs)
        # Blocks 0..2: the held packet's blocks 1..3, kept from the last call.
        np.copyto(w.wf_hist, w.fs_hist)
        # A row is active when it is not delayed, has a flag or tone state, or has a block loud
        # enough to be flagged or to lift a window to the confirmation's energy floor. Nothing
        # in an inactive row is masked, and its flags and tone state stay clear.
        np.greater_equal(w.energies8, _MIN_BLOCK_ENERGY, out=w.loud8)
        np.maximum(w.energies8, _WEAK_ENERGY, out=w.t7[0])  # a window under the floor may still confirm
        np.multiply(w.lines8, 2.0, out=w.t7[1])  # from a weakly flagged first block
        np.greater_equal(w.t7[1], w.t7[0], out=w.weak8)
        active = (w.loud_word | w.weak_word | w.words[:, 0] | w.words[:, _W_TONE]).nonzero()[0]
        if not len(active):
            out, changed = held, np.zeros(k, dtype=bool)
            levels = self._levels(w.level, w.energy, None) if self._mode is MaskMode.COMFORT_NOISE else None
        elif len(active) <= _SCALAR_ACTIVE_ROWS:
            out, changed, levels = self._process_few(slots, frames, held, fs, w.bs, w.wf, active)
        else:
            out, changed, levels = self._process_many(frames, held, fs, w.bs, w.wf, w.weak)
        if levels is not None:
            fs[:, _F_LEVELS:_F_FILLER] = levels
        np.copyto(w.fs_hist, w.next_hist)
        np.add(w.n_in, float(PACKET_SAMPLES), out=w.n_in)
        self._fs[slots] = fs
        self._held[slots] = frames
        return out, changed

    def _scratch_for(self, k: int) -> _Scratch:
        """Views of the scratch arrays for a batch of k rows, made once per batch size."""
        w = _Scratch()
        m = k * BLOCKS_PER_PACKET
        w.fs = self._wfs[:k]
        w.bs = w.fs[:, _F_BITS:].view(np.bool_)
        w.words = w.fs[:, _F_BITS:].view(np.uint64)
        w.level = w.fs[:, _F_LEVEL]
        w.n_in = w.fs[:, _F_N_IN]
        # Energies and line energies of blocks 0..6 (k, 2, 7), a view of the contiguous `_wef`; the
        # state rows keep blocks 0..2 (`fs_hist`), copied in after the gather and out before the scatter.
        w.fs_hist = w.fs[:, _F_HIST_E:_F_LEVELS].reshape(k, 2, _WORK_BLOCKS)[:, :, :WINDOW_BLOCKS]
        w.wf = self._wef[:, :k, :_WORK_BLOCKS].transpose(1, 0, 2)
        w.wf_hist = w.wf[:, :, :WINDOW_BLOCKS]
        w.next_hist = w.wf[:, :, BLOCKS_PER_PACKET:]
        w.energies8, w.lines8 = self._wef[0, :k], self._wef[1, :k]
        w.energy = w.wf[:, 0, WINDOW_BLOCKS:]
        w.lines = w.wf[:, 1, WINDOW_BLOCKS:]
        w.x = self._wx[:m * BLOCK_SAMPLES].reshape(m, BLOCK_SAMPLES)
        w.x3 = w.x.reshape(k, BLOCKS_PER_PACKET, BLOCK_SAMPLES)
        w.proj = self._wproj[:16 * m].reshape(16, m)  # cos, then sin, of the eight frequencies
        w.proj_cos, w.proj_sin = w.proj[:8], w.proj[8:]
        w.p = self._wp[:8 * m].reshape(8, m)  # ~ (amplitude * 20)^2 per frequency
        w.p_f = w.p.reshape(2, 4, m)  # low group, high group
        w.best = self._wbest[:2 * m].reshape(2, m)
        w.best_low, w.best_high = w.best[0].reshape(k, BLOCKS_PER_PACKET), w.best[1].reshape(k, BLOCKS_PER_PACKET)
        loud = w.loud8 = self._wg[:k]
        w.loud_word = loud.view(np.uint64)[:, 0]
        weak = w.weak8 = self._wweak[:k]
        w.weak = weak[:, :_WORK_BLOCKS]
        w.weak_word = weak.view(np.uint64)[:, 0]
        w.t7 = self._wt7[:, :k]
        self._scratch[k] = w
        return w

    def _window_lines(self, rows: np.ndarray | list[int], starts: np.ndarray | list[int], held: np.ndarray,
                      frames: np.ndarray) -> np.ndarray:
        """Line power (n, 8) at each DTMF frequency, best offset, of the 120-sample windows
        (rows, starts): `_confirm`'s DFT, one product for every candidate of the call."""
        c = self._wc[:len(held)]
        c[:, :PACKET_SAMPLES] = held
        c[:, PACKET_SAMPLES:] = frames
        proj = np.square(np.matmul(self._wc_windows[rows, starts], _WINDOW_BASIS, dtype=np.float32), dtype=np.float64)
        p = proj[:, :_N_LINES] + proj[:, _N_LINES:]  # offset-major: (n, offsets * 8)
        best = np.maximum(p[:, 0:8], p[:, 8:16])
        for o in range(2, len(FREQ_OFFSETS)):
            np.maximum(best, p[:, 8 * o:8 * o + 8], out=best)
        return best

    def _process_few(self, slots: np.ndarray, frames: np.ndarray, held: np.ndarray, fs: np.ndarray,
                     bs: np.ndarray, wf: np.ndarray, active: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """A call with few active rows: those rows on Python scalars, the same arithmetic as
        `_process_many` (whose comments say what each step is); updates their rows of `bs`."""
        k = len(slots)
        rows = active.tolist()
        feats = wf[active].tolist()  # per row: energies of blocks 0..6, then line energies
        state = bs[active].tolist()
        row_flags, row_windows, cand_rows, cand_starts, cand_q = [], [], [], [], []
        for r, (en, li), st in zip(rows, feats, state):
            row_flags.append([en[b] >= _MIN_BLOCK_ENERGY and li[b] >= FLAG_CONCENTRATION * en[b]
                              for b in range(WINDOW_BLOCKS, _WORK_BLOCKS)])
            row_windows.append([False] * _WINDOWS_PER_CALL)
            for s in range(_WINDOWS_PER_CALL):
                e = en[s] + en[s + 1] + en[s + 2]
                if e >= _MIN_WINDOW_ENERGY or 2.0 * li[s] >= max(en[s], _WEAK_ENERGY):
                    l0, l1, l2 = li[s], li[s + 1], li[s + 2]
                    el, lo, hi = l0 + l1 + l2, min(l0, l1, l2), max(l0, l1, l2)
                    if el >= _PREFILTER_SHARE * e and (lo >= _STEADY * hi or _steady_or_gap(
                            en[s + 1], en[s + 2], l0, l1, l2, st[_B_FLAGS + _HISTORY_BLOCKS + s])):
                        cand_rows.append(r)
                        cand_starts.append(s)
                        cand_q.append((e, el, lo, hi))
        if cand_rows:  # in (row, start) order: the product `_process_many` would run
            at = {r: i for i, r in enumerate(rows)}
            decided = _window_decisions(self._window_lines(cand_rows, cand_starts, held, frames), cand_q)
            for r, s, ok in zip(cand_rows, cand_starts, decided):
                row_windows[at[r]][s] = bool(ok)
        levels = None
        if self._mode is MaskMode.COMFORT_NOISE:
            flags = np.zeros((k, BLOCKS_PER_PACKET), dtype=bool)
            flags[active] = row_flags
            levels = self._levels(fs[:, _F_LEVEL], wf[:, 0, WINDOW_BLOCKS:], flags)
        out = held
        changed = np.zeros(k, dtype=bool)
        new_state = []
        pad = [False] * (_N_B - _B_ALWAYS - 1)
        for r, b, fl, windows in zip(rows, state, row_flags, row_windows):
            capture, always = b[_B_CAPTURE], b[_B_ALWAYS]
            delayed = capture and b[_B_HELD_VALID]
            flags6 = b[_B_FLAGS + BLOCKS_PER_PACKET:_B_UNSTEADY] + fl
            if any(windows) or any(b[_B_CONFIRMED:_B_TONE + HANGOVER_BLOCKS + 1]):
                masks, states = _tone_rows([b[_S_HOLDS:_B_TONE + HANGOVER_BLOCKS + 1]], [windows], [fl[0]])
                la, tone_state = masks[0], states[0]
            else:
                la, tone_state = [False] * BLOCKS_PER_PACKET, [False] * (_KNOWN_WINDOWS + HANGOVER_BLOCKS + 1)
            if delayed:
                block_mask = la
            else:
                out[r] = frames[r]
                block_mask = ([flags6[j] or flags6[j + 1] or flags6[j + 2] for j in range(BLOCKS_PER_PACKET)]
                              if always and not capture else [False] * BLOCKS_PER_PACKET)
            if capture and not delayed or any(block_mask):
                changed[r] = True
                self._fill_row(out[r], block_mask, capture and not delayed, delayed, fs[r].tolist(),
                               levels[r, :BLOCKS_PER_PACKET].tolist() if levels is not None else None)
            new_state.append(flags6 + [not capture, False] + tone_state + [capture, capture, always] + pad)
        bs[active] = new_state
        return out, changed, levels

    def _process_many(self, frames: np.ndarray, held: np.ndarray, fs: np.ndarray, bs: np.ndarray,
                      wf: np.ndarray, weak: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """A call with many active rows, vectorised over all rows; updates `bs` in place.

        `weak` (k, 7): blocks 0..6 weakly flagged (`WEAK_MIN_LEVEL_DBM0`), from the row gate."""
        k = len(frames)
        energy, lines = wf[:, 0, WINDOW_BLOCKS:], wf[:, 1, WINDOW_BLOCKS:]
        flags = energy >= _MIN_BLOCK_ENERGY
        flags &= lines >= FLAG_CONCENTRATION * energy
        levels = self._levels(fs[:, _F_LEVEL], energy, flags) if self._mode is MaskMode.COMFORT_NOISE else None
        all_delayed = not np.count_nonzero(bs[:, _B_UNSTEADY])
        if all_delayed:
            delayed = filler = direct = None
            n_filler = n_direct = 0
        else:
            capture = bs[:, _B_CAPTURE]
            delayed = capture & bs[:, _B_HELD_VALID]
            filler = capture & ~bs[:, _B_HELD_VALID]
            direct = bs[:, _B_ALWAYS] & ~capture
            n_filler, n_direct = np.count_nonzero(filler), np.count_nonzero(direct)

        # Windows starting at the held packet's blocks 1..4 (`_confirm` with the same
        # arithmetic): the cheap test on all, the 120-sample DFT on those that pass it.
        q = self._wq[:k]
        n = _WINDOWS_PER_CALL
        np.add(wf[:, :, 0:n], wf[:, :, 1:n + 1], out=q[:, :2])
        q[:, :2] += wf[:, :, 2:n + 2]  # energy, line sum: (a + b) + c
        lin = wf[:, 1]
        lines_min, lines_max = q[:, 2], q[:, 3]
        np.minimum(lin[:, 0:n], lin[:, 1:n + 1], out=lines_min)
        np.minimum(lines_min, lin[:, 2:n + 2], out=lines_min)
        np.maximum(lin[:, 0:n], lin[:, 1:n + 1], out=lines_max)
        np.maximum(lines_max, lin[:, 2:n + 2], out=lines_max)
        e = q[:, 0]
        t = self._wt[:k]
        confirmed = e >= _MIN_WINDOW_ENERGY
        confirmed |= weak[:, 0:n]  # a weakly flagged first block (2 * lines >= max(energy, weak floor))
        confirmed &= q[:, 1] >= np.multiply(e, _PREFILTER_SHARE, out=t)
        steady = lines_min >= np.multiply(lines_max, _STEADY, out=t)
        unsteady = np.greater(confirmed, steady)  # passing but for the steadiness: a gap block?
        confirmed &= steady
        en = wf[:, 0]  # a gap is a block 1 or 2 under `_GAP` times the lines (never in noise)
        unsteady &= np.minimum(en[:, 1:n + 1], en[:, 2:n + 2]) <= np.multiply(lines_max, _GAP, out=t)
        if np.count_nonzero(unsteady):  # `_steady_or_gap` on these
            rows, starts = np.nonzero(unsteady)
            en, li = wf[rows, 0], wf[rows, 1]
            before = bs[rows, _B_FLAGS + _HISTORY_BLOCKS + starts]
            confirmed[rows, starts] = [_steady_or_gap(a[s + 1], a[s + 2], *c[s:s + WINDOW_BLOCKS], f)
                                       for a, c, s, f in zip(en.tolist(), li.tolist(), starts.tolist(),
                                                             before.tolist())]
        n_confirmed = np.count_nonzero(confirmed)
        if n_confirmed:
            rows, starts = np.nonzero(confirmed)
            confirmed[rows, starts] = _window_decisions(self._window_lines(rows, starts, held, frames),
                                                        q[rows, :, starts])
            n_confirmed = np.count_nonzero(confirmed)

        # Tone run (`_tone_run`) and look-ahead mask, only for rows near a tone.
        words = bs.view(np.uint64)
        block_mask = None
        if n_confirmed or np.count_nonzero(words[:, _W_TONE]):
            near = (words[:, _W_TONE] | confirmed.view(np.uint32)[:, 0]).nonzero()[0]
            if len(near) <= _SCALAR_TONE_ROWS:
                masks, states = _tone_rows(bs[near, _S_HOLDS:_B_TONE + HANGOVER_BLOCKS + 1].tolist(),
                                           confirmed[near].tolist(), flags[near, 0].tolist())
                block_mask = np.zeros((k, BLOCKS_PER_PACKET), dtype=bool)
                block_mask[near] = masks
                bs[near, _B_CONFIRMED:_B_TONE + HANGOVER_BLOCKS + 1] = states
            else:
                known = np.concatenate([bs[:, _B_CONFIRMED:_B_TONE], confirmed], axis=1)
                holds = np.concatenate([bs[:, _S_HOLDS:_B_UNSTEADY], flags[:, :1]], axis=1)
                tone = _tone_run(bs[:, _B_TONE:_B_TONE + HANGOVER_BLOCKS + 1], known, holds)
                block_mask = _window_or(tone, HANGOVER_BLOCKS, PRE_GUARD_BLOCKS)
                bs[:, _B_CONFIRMED:_B_TONE] = known[:, BLOCKS_PER_PACKET:]
                bs[:, _B_TONE:_B_TONE + HANGOVER_BLOCKS + 1] = tone[:, BLOCKS_PER_PACKET:]
            if not all_delayed:
                block_mask &= delayed[:, None]
        # Loose flags: those of the held packet's last two blocks, then the new packet's.
        bs[:, _B_FLAGS:_B_FLAGS + _HISTORY_BLOCKS] = bs[:, _B_FLAGS + BLOCKS_PER_PACKET:_B_UNSTEADY]
        bs[:, _B_FLAGS + _HISTORY_BLOCKS:_B_UNSTEADY] = flags
        if n_direct:  # this packet, loose flags with hang-over only (no look-ahead)
            f = bs[:, _B_FLAGS:_B_UNSTEADY]
            dm = (f[:, :-2] | f[:, 1:-1] | f[:, 2:]) & direct[:, None]
            block_mask = dm if block_mask is None else block_mask | dm
        if block_mask is not None:
            changed = block_mask.view(np.uint32)[:, 0] != 0
            if n_filler:
                changed |= filler
        else:
            changed = filler if n_filler else np.zeros(k, dtype=bool)

        out = held if all_delayed else np.where(delayed[:, None], held, frames)
        n_changed = np.count_nonzero(changed)
        if n_changed:
            self._fill_rows(out, changed, n_changed, block_mask, delayed, filler if n_filler else None, fs, levels)
        if not all_delayed:
            bs[:, _B_HELD_VALID] = bs[:, _B_CAPTURE]
            np.logical_not(bs[:, _B_CAPTURE], out=bs[:, _B_UNSTEADY])
        return out, changed, levels

    def _fill_row(self, out: np.ndarray, block_mask: list[bool], filler: bool, delayed: bool, f: list[float],
                  levels: list[float] | None) -> None:
        """One row's masked blocks (a filler row: all of it) replaced by the mode's fill, in place.

        `f` is the slot's float state before this call; a delayed row is the held packet
        (stream samples from n_in - 160, levels from the last call), others this packet.
        """
        mode = self._mode
        n_in = int(f[_F_N_IN])
        if filler:  # the look-ahead's first packet: background only (FLAT and SILENCE: silence)
            out[:] = (_fill_packet(mode, n_in, [f[_F_FILLER]] * BLOCKS_PER_PACKET)
                      if mode is MaskMode.COMFORT_NOISE else 0)
            return
        fill = None
        for b in range(BLOCKS_PER_PACKET):
            if block_mask[b]:
                blk = out[b * BLOCK_SAMPLES:(b + 1) * BLOCK_SAMPLES]
                if mode is MaskMode.SILENCE:
                    blk[:] = 0
                    continue
                if fill is None:
                    fill = _fill_packet(mode, n_in - PACKET_SAMPLES if delayed else n_in,
                                        f[_F_LEVELS:_F_LEVEL] if delayed else levels or [0.0] * BLOCKS_PER_PACKET)
                blk[:] = fill[b * BLOCK_SAMPLES:(b + 1) * BLOCK_SAMPLES]

    def _fill_rows(self, out: np.ndarray, changed: np.ndarray, n_changed: int, block_mask: np.ndarray | None,
                   delayed: np.ndarray | None, filler: np.ndarray | None, fs: np.ndarray,
                   levels: np.ndarray | None) -> None:
        """`_fill_row` for each changed row of `out` (few rows one by one, many by gathers)."""
        mode = self._mode
        rows = changed.nonzero()[0]
        if n_changed <= _SCALAR_FILL_ROWS:
            for r in rows.tolist():
                self._fill_row(out[r],
                               block_mask[r].tolist() if block_mask is not None else [False] * BLOCKS_PER_PACKET,
                               bool(filler[r]) if filler is not None else False,
                               bool(delayed[r]) if delayed is not None else True, fs[r].tolist(),
                               levels[r, :BLOCKS_PER_PACKET].tolist() if levels is not None else None)
            return
        m = (np.repeat(block_mask[rows], BLOCK_SAMPLES, axis=1) if block_mask is not None
             else np.zeros((len(rows), PACKET_SAMPLES), dtype=bool))
        is_filler = filler[rows] if filler is not None else None
        if is_filler is not None:
            m[is_filler] = True
        if mode is MaskMode.SILENCE:
            fill = _fill(mode, m, m)
        else:
            row_delayed = True if delayed is None else delayed[rows]
            base = (fs[rows, _F_N_IN] - np.where(row_delayed, PACKET_SAMPLES, 0)).astype(np.int64)
            idx = base[:, None] + np.arange(PACKET_SAMPLES)[None, :]
            if mode is MaskMode.COMFORT_NOISE:
                held_levels = fs[rows, _F_LEVELS:_F_LEVEL]
                blk = (held_levels if delayed is None
                       else np.where(delayed[rows, None], held_levels, levels[rows, :BLOCKS_PER_PACKET]))
                power = np.repeat(blk, BLOCK_SAMPLES, axis=1)
                if is_filler is not None:
                    power[is_filler] = fs[rows[is_filler], _F_FILLER, None]
                fill = _fill(mode, idx, _fill_power(power))
            else:
                fill = _fill(mode, idx, idx)
                if is_filler is not None:
                    fill[is_filler] = 0
        sub = out[rows]
        sub[m] = fill[m]
        out[rows] = sub


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
    "analyse_blocks", "confirm_windows", "encode_masked", "DTMF_FREQS_HZ", "accelerated",
]


try:
    from dtmf import _maskstep
except ImportError:  # built without a C compiler: numpy's product and step run every batch
    _quiet_step = _features_blocks = _features_packets = _flush_quiet = None
else:
    _maskstep.set_basis(np.ascontiguousarray(_BASIS))
    _features_blocks, _features_packets = _maskstep.features_blocks, _maskstep.features_packets
    _maskstep.configure(_N_F, _F_HIST_E, _F_HIST_L, _F_LEVELS, _F_LEVEL, _F_N_IN, _F_BITS,
                        float(_MIN_BLOCK_ENERGY), float(_WEAK_ENERGY), float(_NOISE_RISE),
                        float(_NOISE_RISE_ABS), 1.0 / BLOCK_SAMPLES)
    _quiet_step = _maskstep.quiet_step
    _maskstep.configure_flush(_F_FILLER, _B_UNSTEADY, _B_UNSTEADY, _B_CONFIRMED, _B_HELD_VALID, _B_CAPTURE,
                              float(_MIN_WINDOW_ENERGY), float(_WEAK_ENERGY), float(_PREFILTER * MIXED_CONCENTRATION),
                              float(_STEADY), float(_GAP))
    _flush_quiet = _maskstep.flush_quiet


def accelerated() -> bool:
    """Whether the C block features and quiet step (`dtmf/_maskstep.c`) are built and used."""
    return _quiet_step is not None
