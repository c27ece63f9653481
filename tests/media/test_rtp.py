"""RTP/RTCP packet model: parse, serialise, malformed input, sequence arithmetic."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.media.rtp import (
    RtcpError,
    RtcpPacket,
    RtpBadExtension,
    RtpBadPadding,
    RtpBadVersion,
    RtpError,
    RtpPacket,
    RtpTooShort,
    is_rtcp,
    parse_rtcp,
    rtp_payload_bounds,
    seq_add,
    seq_diff,
    seq_gt,
    translate_rtcp,
    ts_diff,
    with_payload_type,
)

PLAIN = bytes.fromhex("80 00 04d2 0000162e 12345678") + bytes(range(160))


def test_parse_plain_packet() -> None:
    p = RtpPacket.parse(PLAIN)
    assert (p.payload_type, p.sequence_number, p.timestamp, p.ssrc) == (0, 1234, 5678, 0x12345678)
    assert p.payload == bytes(range(160))
    assert not p.marker and p.csrc == [] and p.extension_profile is None and p.padding_size == 0
    assert bytes(p) == PLAIN


def test_marker_csrc_extension_padding_round_trip() -> None:
    p = RtpPacket(payload_type=101, sequence_number=65535, timestamp=0xFFFFFFFF, ssrc=7,
                  payload=b"\x05\x8a\x03\x20", marker=True, csrc=[1, 2, 3],
                  extension_profile=0xBEDE, extension_data=b"\x10\xff\x00\x00", padding_size=4)
    raw = bytes(p)
    assert raw[0] == 0x80 | 0x20 | 0x10 | 3
    assert raw[1] == 0x80 | 101
    assert len(raw) == 12 + 12 + 4 + 4 + 4 + 4
    assert raw[-1] == 4
    assert RtpPacket.parse(raw) == p
    assert rtp_payload_bounds(raw) == (32, 36)


def test_trailing_bytes_are_payload() -> None:
    # A datagram is one packet: anything after the header belongs to the payload.
    assert RtpPacket.parse(PLAIN + b"xy").payload == bytes(range(160)) + b"xy"


@pytest.mark.parametrize(
    "raw, error, message",
    [
        (b"", RtpTooShort, "RTP packet is too short"),
        (PLAIN[:11], RtpTooShort, "RTP packet is too short"),
        (b"\x40" + PLAIN[1:], RtpBadVersion, "RTP packet has invalid version"),
        (b"\x83" + PLAIN[1:20], RtpTooShort, "RTP packet is too short"),
        (b"\x90" + PLAIN[1:14], RtpBadExtension, "RTP header extension is truncated"),
        (b"\x90" + PLAIN[1:12] + b"\xbe\xde\x00\x09" + bytes(8), RtpBadExtension,
         "RTP header extension is truncated"),
        (b"\xa0" + PLAIN[1:12] + b"ab\x00", RtpBadPadding, "RTP packet has invalid padding"),
        (b"\xa0" + PLAIN[1:12] + b"ab\x04", RtpBadPadding, "RTP packet has invalid padding"),
    ],
)
def test_malformed(raw: bytes, error: type[RtpError], message: str) -> None:
    with pytest.raises(error) as info:
        RtpPacket.parse(raw)
    assert str(info.value) == message
    assert info.value.reason in {"short", "version", "padding", "extension"}


def test_every_truncation_of_a_full_packet_is_rejected_or_shorter() -> None:
    raw = bytes(RtpPacket(payload_type=8, csrc=[9], extension_profile=1,
                          extension_data=bytes(8), payload=b"abcd", padding_size=2))
    header_len = 12 + 4 + 4 + 8
    for n in range(len(raw)):
        cut = raw[:n]
        if n < header_len:
            with pytest.raises(RtpError):
                RtpPacket.parse(cut)
        else:
            # Cut into the payload: the last byte read as a padding count is rejected or
            # (by chance) valid; it never escapes as another exception type.
            try:
                RtpPacket.parse(cut)
            except RtpError:
                pass


@given(st.binary(max_size=80))
def test_arbitrary_bytes_only_raise_value_errors(raw: bytes) -> None:
    try:
        p = RtpPacket.parse(raw)
    except RtpError:
        return
    assert bytes(p) == raw or raw[0] & 0x20  # padding octets are normalised to zeros


@given(st.binary(max_size=80))
def test_arbitrary_rtcp_only_raises_value_errors(raw: bytes) -> None:
    try:
        packets = parse_rtcp(raw)
    except RtcpError:
        return
    assert packets and packets[0].packet_type in (200, 201)


@given(
    pt=st.integers(0, 127), seq=st.integers(0, 65535), ts=st.integers(0, 2**32 - 1),
    ssrc=st.integers(0, 2**32 - 1), payload=st.binary(max_size=64), marker=st.booleans(),
    csrc=st.lists(st.integers(0, 2**32 - 1), max_size=15),
    ext=st.none() | st.tuples(st.integers(0, 65535), st.integers(0, 4)),
    pad=st.integers(0, 255),
)
def test_round_trip(pt, seq, ts, ssrc, payload, marker, csrc, ext, pad) -> None:
    p = RtpPacket(payload_type=pt, sequence_number=seq, timestamp=ts, ssrc=ssrc, payload=payload,
                  marker=marker, csrc=csrc,
                  extension_profile=None if ext is None else ext[0],
                  extension_data=b"" if ext is None else bytes(4 * ext[1]), padding_size=pad)
    assert RtpPacket.parse(bytes(p)) == p


def test_with_payload_type_keeps_marker_and_everything_else() -> None:
    raw = bytes(RtpPacket(payload_type=101, marker=True, sequence_number=5, payload=b"\x01\x02\x03\x04"))
    out = with_payload_type(raw, 96)
    assert out[1] == 0x80 | 96
    assert out[:1] + out[2:] == raw[:1] + raw[2:]


def test_sequence_arithmetic_wraps() -> None:
    assert seq_add(65535, 1) == 0
    assert seq_add(0, -1) == 65535
    assert seq_diff(0, 65535) == 1
    assert seq_diff(65535, 0) == -1
    assert seq_diff(100, 100) == 0
    assert seq_diff(32768, 0) == 32768 - 65536 or seq_diff(32768, 0) == 32768
    assert seq_gt(3, 65530) and not seq_gt(65530, 3)
    assert ts_diff(5, 2**32 - 5) == 10
    assert ts_diff(2**32 - 5, 5) == -10


@given(st.integers(0, 65535), st.integers(-32767, 32767))
def test_seq_diff_inverts_seq_add(seq: int, n: int) -> None:
    assert seq_diff(seq_add(seq, n), seq) == n


def _rr(ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


_RTCP_PACKETS = st.builds(
    RtcpPacket, st.sampled_from([200, 201, 202, 203, 204]), st.integers(0, 31),
    st.integers(0, 40).flatmap(lambda words: st.binary(min_size=4 * words, max_size=4 * words)))


@given(st.sampled_from([200, 201]), st.integers(0, 31), st.binary(max_size=160).map(lambda b: b[:len(b) // 4 * 4]),
       st.lists(_RTCP_PACKETS, max_size=3), st.integers(0, 2**40), st.integers(0, 2**40))
def test_translating_any_valid_compound_keeps_it_valid(pt, count, body, rest, packets, octets) -> None:
    """Counts are rewritten in place, report counts that overrun their packet are bounded: whatever
    passed parse_rtcp passes it again, with the same length."""
    raw = b"".join(bytes(p) for p in [RtcpPacket(pt, count, body), *rest])
    try:
        before = parse_rtcp(raw)
    except RtcpError:
        return
    ssrcs = {int.from_bytes(raw[i:i + 4], "big"): [packets, octets] for i in range(0, len(raw) - 3, 4)}
    out = translate_rtcp(raw, ssrcs, ssrcs)
    after = parse_rtcp(out)
    assert len(out) == len(raw) and [(p.packet_type, p.count) for p in after] == [(p.packet_type, p.count) for p in before]


def test_rtcp_compound_parse_and_serialise() -> None:
    sdes = RtcpPacket(202, 1, struct.pack("!I", 0x1234) + b"\x01\x02ab" + bytes(4))
    raw = _rr() + bytes(sdes)
    packets = parse_rtcp(raw)
    assert [p.packet_type for p in packets] == [201, 202]
    assert packets[0].sender_ssrc == 0x1234
    assert b"".join(bytes(p) for p in packets) == raw
    assert is_rtcp(raw) and not is_rtcp(PLAIN)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x80\xc9\x00", "RTCP packet is too short"),
        (b"\x80\xc9\x00\x05" + bytes(4), "RTCP packet is truncated"),
        (b"\x40\xc9\x00\x01" + bytes(4), "RTCP packet has invalid version"),
        (b"\x80\x10\x00\x01" + bytes(4), "RTCP packet type is out of range"),
        (b"\x80\xca\x00\x01" + bytes(4), "RTCP compound does not start with SR or RR"),
        (b"\xa0\xc9\x00\x01" + bytes(3) + b"\x09", "RTCP packet has invalid padding"),
        (b"\xa0\xc9\x00\x01" + bytes(3) + b"\x04" + _rr(), "RTCP padding before the last packet"),
        (_rr() + b"\x80", "RTCP packet is truncated"),
    ],
)
def test_rtcp_malformed(raw: bytes, message: str) -> None:
    with pytest.raises(RtcpError) as info:
        parse_rtcp(raw)
    assert str(info.value) == message
