"""SRTP/SRTCP for one leg with SDES keys (RFC 4568), through libsrtp 2 (pylibsrtp).

One `SrtpLeg` holds two libsrtp sessions: inbound with the peer's key (to verify
and decrypt what the peer sends) and outbound with our key (to protect what we
send to the peer). Keys are never kept as text and never appear in a repr.
"""

from __future__ import annotations

import base64
import binascii

from pylibsrtp import Error as _LibSrtpError
from pylibsrtp import Policy, Session

from gateway.media.leg import SrtpParams

SUITES = {
    # RFC 4568 6.2.1: both suites use a 128-bit AES key and a 112-bit salt.
    "AES_CM_128_HMAC_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}
KEY_SALT_BYTES = 30
"""RFC 4568 6.2.1: inline key||salt is 16 + 14 octets."""


class SrtpError(ValueError):
    """SRTP input or key material was rejected; `reason` labels the counted drop."""

    reason = "srtp"


class SrtpAuthFailed(SrtpError):
    reason = "srtp_auth"

    def __init__(self) -> None:
        super().__init__("SRTP packet failed authentication")


class SrtcpAuthFailed(SrtpError):
    reason = "srtcp_auth"

    def __init__(self) -> None:
        super().__init__("SRTCP packet failed authentication")


class SrtpProtectFailed(SrtpError):
    reason = "srtp_protect"

    def __init__(self) -> None:
        super().__init__("SRTP protect failed")


class SrtpKeyInvalid(SrtpError):
    reason = "srtp_key"

    def __init__(self) -> None:
        super().__init__("SRTP key material is invalid")


class SrtpSuiteUnsupported(SrtpError):
    reason = "srtp_suite"

    def __init__(self) -> None:
        super().__init__("SRTP crypto suite is not supported")


def decode_inline_key(key_b64: str) -> bytes:
    """Base64 key||salt from an a=crypto inline parameter (without lifetime/MKI)."""
    try:
        raw = base64.b64decode(key_b64.split("|", 1)[0], validate=True)
    except (binascii.Error, ValueError):
        raise SrtpKeyInvalid() from None
    if len(raw) != KEY_SALT_BYTES:
        raise SrtpKeyInvalid()
    return raw


def _session(profile: int, key: bytes, ssrc_type: int) -> Session:
    policy = Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile)
    # Replays are the sender's business; allow_repeat_tx lets us re-send an identical
    # packet (e.g. an RFC 4733 end retransmit relayed unchanged) without an error.
    policy.allow_repeat_tx = True
    policy.window_size = 1024
    return Session(policy=policy)


class SrtpLeg:
    """Protect what we send to one peer and unprotect what it sends us."""

    __slots__ = ("suite", "_in", "_out")

    def __init__(self, params: SrtpParams) -> None:
        profile = SUITES.get(params.suite)
        if profile is None:
            raise SrtpSuiteUnsupported()
        self.suite = params.suite
        self._in = _session(profile, decode_inline_key(params.remote_key_b64), Policy.SSRC_ANY_INBOUND)
        self._out = _session(profile, decode_inline_key(params.local_key_b64), Policy.SSRC_ANY_OUTBOUND)

    def __repr__(self) -> str:
        return f"SrtpLeg(suite={self.suite!r}, keys=<redacted>)"

    def unprotect(self, data: bytes) -> bytes:
        """Verify and decrypt an SRTP packet from the peer (RFC 3711 3.3)."""
        try:
            return self._in.unprotect(data)
        except _LibSrtpError:
            raise SrtpAuthFailed() from None

    def protect(self, data: bytes) -> bytes:
        """Encrypt and authenticate an RTP packet for the peer."""
        try:
            return self._out.protect(data)
        except _LibSrtpError:
            raise SrtpProtectFailed() from None

    def unprotect_rtcp(self, data: bytes) -> bytes:
        """Verify and decrypt an SRTCP packet from the peer (RFC 3711 3.4)."""
        try:
            return self._in.unprotect_rtcp(data)
        except _LibSrtpError:
            raise SrtcpAuthFailed() from None

    def protect_rtcp(self, data: bytes) -> bytes:
        """Encrypt and authenticate an RTCP packet for the peer."""
        try:
            return self._out.protect_rtcp(data)
        except _LibSrtpError:
            raise SrtpProtectFailed() from None
