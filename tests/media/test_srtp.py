"""SRTP/SRTCP with SDES keys through libsrtp on both ends."""

from __future__ import annotations

import base64
import os
import struct

import pytest

from gateway.media.leg import SrtpParams
from gateway.media.rtp import RtpPacket
from gateway.media.srtp import (
    SrtcpAuthFailed,
    SrtpAuthFailed,
    SrtpKeyInvalid,
    SrtpLeg,
    SrtpSuiteUnsupported,
)

SUITES = ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"]


def new_key() -> str:
    return base64.b64encode(os.urandom(30)).decode()


def pair(suite: str) -> tuple[SrtpLeg, SrtpLeg]:
    """Two ends of one SDES exchange: each protects with its key, unprotects with the other's."""
    a, b = new_key(), new_key()
    return SrtpLeg(SrtpParams(suite, a, b)), SrtpLeg(SrtpParams(suite, b, a))


def rtp(seq: int) -> bytes:
    return bytes(RtpPacket(payload_type=0, sequence_number=seq, timestamp=160 * seq, ssrc=0xABC,
                           payload=bytes((seq + i) & 0xFF for i in range(160))))


@pytest.mark.parametrize("suite", SUITES)
def test_round_trip_both_ways(suite: str) -> None:
    gw, peer = pair(suite)
    for seq in range(5):
        wire = peer.protect(rtp(seq))
        assert wire != rtp(seq)
        assert len(wire) == len(rtp(seq)) + (10 if suite.endswith("80") else 4)
        assert gw.unprotect(wire) == rtp(seq)
        assert peer.unprotect(gw.protect(rtp(seq))) == rtp(seq)


@pytest.mark.parametrize("suite", SUITES)
def test_tampered_packet_fails_authentication(suite: str) -> None:
    gw, peer = pair(suite)
    wire = bytearray(peer.protect(rtp(1)))
    wire[20] ^= 1
    with pytest.raises(SrtpAuthFailed) as info:
        gw.unprotect(bytes(wire))
    assert info.value.reason == "srtp_auth"
    assert gw.unprotect(peer.protect(rtp(2))) == rtp(2)  # the session carries on


def test_wrong_key_fails_authentication() -> None:
    gw, _ = pair(SUITES[0])
    stranger, _ = pair(SUITES[0])
    with pytest.raises(SrtpAuthFailed):
        gw.unprotect(stranger.protect(rtp(1)))


@pytest.mark.parametrize("suite", SUITES)
def test_srtcp_round_trip_and_auth_failure(suite: str) -> None:
    gw, peer = pair(suite)
    rr = struct.pack("!BBHI", 0x80, 201, 1, 0xABC)
    assert gw.unprotect_rtcp(peer.protect_rtcp(rr)) == rr
    wire = bytearray(peer.protect_rtcp(rr))
    wire[-1] ^= 1
    with pytest.raises(SrtcpAuthFailed):
        gw.unprotect_rtcp(bytes(wire))


def test_bad_keys_and_suites_are_refused() -> None:
    with pytest.raises(SrtpKeyInvalid):
        SrtpLeg(SrtpParams(SUITES[0], "not base64!", new_key()))
    with pytest.raises(SrtpKeyInvalid):
        SrtpLeg(SrtpParams(SUITES[0], base64.b64encode(bytes(16)).decode(), new_key()))
    with pytest.raises(SrtpSuiteUnsupported):
        SrtpLeg(SrtpParams("F8_128_HMAC_SHA1_80", new_key(), new_key()))


def test_lifetime_suffix_is_accepted_and_keys_stay_out_of_repr() -> None:
    key = new_key()
    leg = SrtpLeg(SrtpParams(SUITES[0], key + "|2^20", new_key()))
    assert key not in repr(leg) and "redacted" in repr(leg)
