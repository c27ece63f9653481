"""Masker rules: onsets never leak, speech outside the guard passes bit-exact, switching keeps every sample."""

from __future__ import annotations

import numpy as np
import pytest

from dtmf.g711 import ULAW_DECODE, alaw_decode, alaw_encode, ulaw_encode
from dtmf.masker import (
    LOOKAHEAD_SAMPLES,
    PACKET_SAMPLES,
    Masker,
    MaskerBank,
    MaskMode,
    analyse_blocks,
    encode_masked,
)
from dtmf.tones import DIGITS, DTMF_FREQS_HZ, dtmf_tone, to_int16, white_noise

from .calls import goertzel_power, mask_single, speech_like

PRE_GUARD = 80  # samples: 1 block + alignment
HANG_OVER = 120  # samples: 2 blocks + alignment


def _with_tone(n: int, start: int, digit: str = "5", ms: float = 60.0, level: float = -20.0,
               twist: float = 0.0, noise_dbm0: float | None = -55.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros(n)
    if noise_dbm0 is not None:
        x += white_noise(n, noise_dbm0, rng)
    tone = dtmf_tone(digit, ms, level, twist)
    x[start:start + len(tone)] += tone
    return to_int16(x)


@pytest.mark.parametrize("digit", list(DIGITS))
@pytest.mark.parametrize("twist,offset_pct", [(0, 0), (-8, 1.5), (4, -1.5), (-8, -3.5), (4, 3.5)])
def test_every_key_at_minus_25_dbm0_is_flagged(digit, twist, offset_pct):
    x = to_int16(dtmf_tone(digit, 40, -25, twist, offset_pct, offset_pct))
    flags, _ = analyse_blocks(x.reshape(-1, 40))
    assert flags.all()


def test_noise_and_silence_are_not_flagged():
    rng = np.random.default_rng(1)
    for level in (-60, -40, -20):
        flags, _ = analyse_blocks(to_int16(white_noise(8000, level, rng)).reshape(-1, 40))
        assert not flags.any()
    flags, _ = analyse_blocks(np.zeros((10, 40), dtype=np.int16))
    assert not flags.any()


@pytest.mark.parametrize("offset", [0, 1, 39, 40, 80, 120, 150, 155, 156, 157, 158, 159])
@pytest.mark.parametrize("mode", list(MaskMode))
def test_onset_anywhere_in_a_packet_is_masked_with_lookahead(offset, mode):
    start = 5 * PACKET_SAMPLES + offset
    x = _with_tone(16 * PACKET_SAMPLES, start, ms=45)
    out = mask_single(x, mode)
    end = start + 360
    assert len(out) == len(x)
    tone_in = goertzel_power(x[start:end], DTMF_FREQS_HZ["5"]).sum()
    tone_out = goertzel_power(out[start:end], DTMF_FREQS_HZ["5"]).sum()
    assert tone_out < tone_in * 1e-4
    if mode is MaskMode.SILENCE:
        assert not out[start:end].any()
    changed = np.flatnonzero(out != x)
    assert changed.min() >= start - PRE_GUARD
    assert changed.max() < end + HANG_OVER


@pytest.mark.parametrize("ms", [20, 25, 30])
def test_short_tones_are_masked_from_their_first_sample(ms):
    """A lenient receiver may take a 20-40 ms tone: every sample of it goes, at any alignment."""
    for i, offset in enumerate(list(range(0, 160, 9)) + [156, 159]):
        digit = DIGITS[i % 16]
        start = 5 * PACKET_SAMPLES + offset
        x = _with_tone(12 * PACKET_SAMPLES, start, digit=digit, ms=ms, level=-25, twist=-8 if i % 2 else 4)
        out = mask_single(x, MaskMode.SILENCE)
        end = start + ms * 8
        assert not out[start:end].any(), (offset, digit)
        changed = np.flatnonzero(out != x)
        assert changed.min() >= start - PRE_GUARD and changed.max() < end + HANG_OVER, (offset, digit)


@pytest.mark.parametrize("digit", list(DIGITS))
def test_off_nominal_and_twisted_tones_are_masked(digit):
    """Off by 3.5 % (Q.24's reject limit) and twisted by 12 dB either way, at -25 dBm0."""
    for offset_pct in (-3.5, 3.5):
        for twist in (-12.0, 12.0):
            start = 5 * PACKET_SAMPLES + 157
            x = np.zeros(14 * PACKET_SAMPLES)
            tone = dtmf_tone(digit, 40, -25 - max(twist, 0), twist, offset_pct, -offset_pct)
            x[start:start + len(tone)] += tone
            out = mask_single(to_int16(x), MaskMode.SILENCE)
            assert not out[start:start + len(tone)].any(), (offset_pct, twist)


def test_without_lookahead_a_late_onset_leaks_at_most_one_block():
    start = 5 * PACKET_SAMPLES + 157
    x = _with_tone(16 * PACKET_SAMPLES, start, ms=60)
    out = mask_single(x, MaskMode.SILENCE, lookahead=False)
    leaked = np.flatnonzero(out[start:start + 480] != 0)
    assert 0 < len(leaked) <= 3  # the 3 onset samples before the first analysed block


@pytest.mark.parametrize("chunk", [1, 80, 160, 1000, 37])
def test_same_output_whatever_the_chunk_size(chunk):
    x = _with_tone(30 * PACKET_SAMPLES, 1234, ms=90, noise_dbm0=-40, seed=3)
    ref = mask_single(x, MaskMode.COMFORT_NOISE, chunk=160)
    assert np.array_equal(mask_single(x, MaskMode.COMFORT_NOISE, chunk=chunk), ref)


def test_lookahead_delays_by_exactly_one_packet_and_changes_nothing_else():
    rng = np.random.default_rng(5)
    x = to_int16(speech_like(50 * PACKET_SAMPLES, rng, -60) + white_noise(8000, -50, rng)[:8000])
    m = Masker(MaskMode.SILENCE)
    out = np.concatenate([m.process(x[i:i + 160]) for i in range(0, len(x), 160)])
    assert m.lookahead_samples == LOOKAHEAD_SAMPLES
    assert not out[:LOOKAHEAD_SAMPLES].any()  # the filler
    assert np.array_equal(out[LOOKAHEAD_SAMPLES:], x[:-LOOKAHEAD_SAMPLES])
    assert np.array_equal(m.flush(), x[-LOOKAHEAD_SAMPLES:])


def test_bank_outside_capture_is_bit_exact_pass_through_even_for_tones():
    x = _with_tone(20 * PACKET_SAMPLES, 700).reshape(-1, PACKET_SAMPLES)
    bank = MaskerBank(MaskMode.FLAT)
    slot = bank.add_stream()
    for row in x:
        out, changed = bank.process(np.array([slot]), row[None, :])
        assert np.array_equal(out[0], row) and not changed[0]
    assert bank.flush(slot) is None


def test_mask_always_masks_without_delay():
    x = _with_tone(20 * PACKET_SAMPLES, 700, ms=80).reshape(-1, PACKET_SAMPLES)
    bank = MaskerBank(MaskMode.SILENCE)
    slot = bank.add_stream(mask_always=True)
    out = np.concatenate([bank.process(np.array([slot]), r[None, :])[0][0] for r in x])
    flat_x = x.ravel()
    assert not out[720:700 + 640].any()  # from the first full block of the tone onwards
    assert np.array_equal(out[:680], flat_x[:680])


def _stream_through_bank(bank, slot, packets, toggles):
    """Run packets through one slot, applying capture toggles before given packet indices."""
    out = []
    for i, row in enumerate(packets):
        if i in toggles:
            held = bank.set_capture(slot, toggles[i])
            if held is not None:
                out.append(held[0])
        rows, _ = bank.process(np.array([slot]), row[None, :])
        out.append(rows[0])
    return out


def test_capture_on_inserts_one_filler_packet_and_off_returns_the_held_one():
    rng = np.random.default_rng(6)
    x = to_int16(white_noise(40 * PACKET_SAMPLES, -50, rng)).reshape(-1, PACKET_SAMPLES)
    bank = MaskerBank(MaskMode.SILENCE)
    slot = bank.add_stream()
    out = _stream_through_bank(bank, slot, x, {5: True, 20: False})
    assert len(out) == len(x) + 1
    assert not out[5].any()  # filler
    expected = list(x[:5]) + [out[5]] + list(x[5:])
    assert all(np.array_equal(a, b) for a, b in zip(out, expected))


def test_flush_when_packets_stop_and_resume():
    rng = np.random.default_rng(7)
    x = to_int16(white_noise(10 * PACKET_SAMPLES, -50, rng)).reshape(-1, PACKET_SAMPLES)
    bank = MaskerBank(MaskMode.SILENCE)
    slot = bank.add_stream()
    bank.set_capture(slot, True)
    first, _ = bank.process(np.array([slot]), x[:1])
    assert not first.any()
    held, changed = bank.flush(slot)
    assert np.array_equal(held, x[0]) and not changed
    assert bank.flush(slot) is None
    again, changed = bank.process(np.array([slot]), x[1:2])
    assert not again.any() and changed[0]  # a new filler re-establishes the delay
    nxt, changed = bank.process(np.array([slot]), x[2:3])
    assert np.array_equal(nxt[0], x[1]) and not changed[0]


@pytest.mark.parametrize("mode", list(MaskMode))
def test_bank_equals_single_maskers(mode):
    """Several slots, in shuffled batch order, with capture toggles, equal N single Maskers."""
    rng = np.random.default_rng(8)
    n_streams, n_packets = 5, 60
    streams = []
    for s in range(n_streams):
        x = white_noise(n_packets * PACKET_SAMPLES, -45 - 3 * s, rng)
        for start in rng.integers(0, (n_packets - 10) * PACKET_SAMPLES, 4):
            tone = dtmf_tone(DIGITS[int(rng.integers(16))], 70, -15)
            x[start:start + len(tone)] += tone
        streams.append(to_int16(x).reshape(-1, PACKET_SAMPLES))
    toggles = [{int(rng.integers(1, 20)): True, int(rng.integers(25, 40)): False,
                int(rng.integers(45, 55)): True} for _ in range(n_streams)]

    expected = []
    for x, tg in zip(streams, toggles):
        m = Masker(mode, lookahead=False)
        out = []
        for i, row in enumerate(x):
            if i in tg:
                held = m.set_lookahead(tg[i])
                if len(held):
                    out.append(held)
            out.append(m.process(row))
        expected.append(np.concatenate(out))

    bank = MaskerBank(mode, capacity=2)
    slots = [bank.add_stream(mask_always=True) for _ in range(n_streams)]
    got: list[list[np.ndarray]] = [[] for _ in range(n_streams)]
    for i in range(n_packets):
        members = [int(s) for s in rng.permutation(n_streams)]
        for s in members:
            if i in toggles[s]:
                held = bank.set_capture(slots[s], toggles[s][i])
                if held is not None:
                    got[s].append(held[0])
        rows, changed = bank.process(np.array([slots[s] for s in members]),
                                     np.stack([streams[s][i] for s in members]))
        for r, s in zip(rows, members):
            got[s].append(r)
    for s in range(n_streams):
        assert np.array_equal(np.concatenate(got[s]), expected[s]), s


def test_changed_flag_marks_exactly_the_rows_that_differ():
    x = _with_tone(30 * PACKET_SAMPLES, 1500, ms=100).reshape(-1, PACKET_SAMPLES)
    bank = MaskerBank(MaskMode.COMFORT_NOISE)
    slot = bank.add_stream()
    bank.set_capture(slot, True)
    prev = None
    for row in x:
        out, changed = bank.process(np.array([slot]), row[None, :])
        if prev is not None:
            assert changed[0] == (not np.array_equal(out[0], prev))
        prev = row


@pytest.mark.parametrize("mode", [MaskMode.FLAT, MaskMode.COMFORT_NOISE, MaskMode.SILENCE])
def test_fill_is_the_same_whatever_the_key(mode):
    outs = []
    for digit in "19#D":
        x = _with_tone(20 * PACKET_SAMPLES, 1003, digit=digit, ms=80, seed=11)
        outs.append(mask_single(x, mode)[1003:1003 + 640])
    assert all(np.array_equal(o, outs[0]) for o in outs)


def test_comfort_noise_follows_the_background_level():
    rng = np.random.default_rng(12)
    for bg_dbm0, expected_dbm0 in ((-55, -55), (-45, -45), (-20, -35)):
        n = 3 * 8000
        x = white_noise(n, bg_dbm0, rng)
        tone = dtmf_tone("8", 200, -10)
        start = 2 * 8000
        x[start:start + len(tone)] += tone
        out = mask_single(to_int16(x), MaskMode.COMFORT_NOISE)
        fill = out[start + 80:start + len(tone) - 80].astype(float)
        rms = np.sqrt(np.mean(fill**2))
        expected_rms = 32767 * 10 ** ((expected_dbm0 - 3.14) / 20) / np.sqrt(2)
        assert abs(20 * np.log10(rms / expected_rms)) < 3.0, bg_dbm0


def test_speech_without_tones_mostly_passes():
    rng = np.random.default_rng(13)
    x = to_int16(speech_like(5 * 8000, rng, -25))
    out = mask_single(x, MaskMode.SILENCE)
    assert np.mean(out != x) < 0.2  # formants parked on DTMF lines; figure in loadtests/README-masker.md


@pytest.mark.parametrize("codec,encode", [("PCMU", ulaw_encode), ("PCMA", alaw_encode)])
def test_encode_masked_keeps_unchanged_codes_bit_exact(codec, encode):
    codes = np.arange(256, dtype=np.uint8)
    decoded = ULAW_DECODE[codes] if codec == "PCMU" else alaw_decode(codes)
    masked = decoded.copy()
    masked[10:20] = 0
    out = encode_masked(codes, masked, codec)
    same = decoded == masked
    assert np.array_equal(out[same], codes[same])  # includes mu-law 0x7F (-0)
    assert np.array_equal(out[~same], encode(masked[~same]))


def test_slot_errors_and_reuse():
    bank = MaskerBank()
    slot = bank.add_stream()
    with pytest.raises(ValueError):
        bank.process(np.array([slot]), np.zeros((1, 80), dtype=np.int16))
    bank.set_capture(slot, True)
    bank.remove_stream(slot)
    with pytest.raises(ValueError):
        bank.flush(slot)
    again = bank.add_stream()
    assert again == slot
    x = np.ones((1, PACKET_SAMPLES), dtype=np.int16)
    out, changed = bank.process(np.array([again]), x)
    assert np.array_equal(out, x) and not changed[0]  # fresh state: capture off
