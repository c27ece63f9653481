"""G.711 tables checked exhaustively against the segment rules of ITU-T G.711."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from dtmf import g711


def _ulaw_decode_reference(code: int) -> int:
    # G.711 table 2a: invert, split into sign, segment (3 bits) and step (4 bits).
    u = ~code & 0xFF
    sign, segment, step = u & 0x80, (u >> 4) & 0x07, u & 0x0F
    magnitude = (((step << 1) + 33) << segment) - 33  # 14-bit magnitude, per G.711
    return -(magnitude << 2) if sign else magnitude << 2


def _alaw_decode_reference(code: int) -> int:
    # G.711 table 1a: even bits inverted; segment 0 is linear, others double per segment.
    a = code ^ 0x55
    sign, segment, step = a & 0x80, (a >> 4) & 0x07, a & 0x0F
    if segment == 0:
        magnitude = (step << 1) + 1
    else:
        magnitude = ((step << 1) + 33) << (segment - 1)
    magnitude <<= 3  # 13-bit to 16-bit
    return magnitude if sign else -magnitude


def test_ulaw_decode_all_codes_match_g711_rules():
    expected = [_ulaw_decode_reference(c) for c in range(256)]
    assert g711.ULAW_DECODE.tolist() == expected


def test_alaw_decode_all_codes_match_g711_rules():
    expected = [_alaw_decode_reference(c) for c in range(256)]
    assert g711.ALAW_DECODE.tolist() == expected


@pytest.mark.parametrize("law", ["PCMU", "PCMA"])
def test_encode_picks_nearest_decision_level_for_all_65536_inputs(law):
    """Every linear input encodes to the code whose decoded value is nearest (ties away from zero
    permitted by the quantiser boundaries), and encoding a decoded value returns a code that
    decodes to the same value."""
    decode = g711.DECODE_TABLES[law]
    encode = g711.ENCODE_TABLES[law]
    x = np.arange(-32768, 32768, dtype=np.int32)
    codes = encode[x.astype(np.int16).view(np.uint16)]
    y = decode[codes].astype(np.int32)
    # The quantisation error never exceeds half the step of the segment the value lies in.
    levels = np.unique(decode.astype(np.int32))
    idx = np.clip(np.searchsorted(levels, x), 1, len(levels) - 1)
    gap = levels[idx] - levels[idx - 1]
    limit = np.where(np.abs(x) > levels.max(), np.abs(x) - levels.max(), gap)
    assert np.all(np.abs(y - x) <= limit)
    # Sign is kept (zero aside).
    assert np.all(np.sign(y[np.abs(x) > 16]) == np.sign(x[np.abs(x) > 16]))
    # Idempotent on decoded values.
    assert np.array_equal(decode[encode[decode.view(np.uint16)]], decode)


@pytest.mark.parametrize("law", ["PCMU", "PCMA"])
def test_monotonic(law):
    x = np.arange(-32768, 32768, dtype=np.int16)
    y = g711.DECODE_TABLES[law][g711.ENCODE_TABLES[law][x.view(np.uint16)]]
    assert np.all(np.diff(y.astype(np.int32)) >= 0)


def test_silence_codes_decode_to_zero_or_smallest_step():
    assert g711.ULAW_DECODE[g711.ULAW_SILENCE] == 0
    assert abs(int(g711.ALAW_DECODE[g711.ALAW_SILENCE])) == 8


def test_audioop_second_opinion():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    x = np.arange(-32768, 32768, dtype=np.int16)
    assert bytes(g711.ulaw_encode(x)) == audioop.lin2ulaw(x.tobytes(), 2)
    assert bytes(g711.alaw_encode(x)) == audioop.lin2alaw(x.tobytes(), 2)
    codes = bytes(range(256))
    assert g711.ulaw_decode(codes).tobytes() == audioop.ulaw2lin(codes, 2)
    assert g711.alaw_decode(codes).tobytes() == audioop.alaw2lin(codes, 2)


def test_tables_are_read_only():
    with pytest.raises(ValueError):
        g711.ULAW_DECODE[0] = 1
