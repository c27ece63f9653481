"""What SDP negotiation decided for one media leg: the contract between the B2BUA and the relay."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Direction(Enum):
    """RFC 3264 6.1 direction, as this leg's peer will send/receive."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"


@dataclass(frozen=True)
class SrtpParams:
    """SDES keys (RFC 4568) for one leg; key material is base64 inline key||salt."""

    suite: str
    """AES_CM_128_HMAC_SHA1_80 or AES_CM_128_HMAC_SHA1_32."""
    local_key_b64: str
    """Key we protect packets with (we put it in our a=crypto)."""
    remote_key_b64: str
    """Key the peer protects with (from its a=crypto)."""

    def __repr__(self) -> str:  # keys never reach logs
        return f"SrtpParams(suite={self.suite!r}, keys=<redacted>)"


@dataclass(frozen=True)
class LegMedia:
    """Negotiated media for one leg: where to send and which payload types it uses."""

    remote_rtp: tuple[str, int] | None
    """Destination for RTP from the SDP (None: not yet known, or port 0 / inactive)."""
    remote_rtcp: tuple[str, int] | None
    """Destination for RTCP (a=rtcp, else RTP port + 1)."""
    codec: str
    """"PCMU" or "PCMA": the only codecs the gateway negotiates, because it can inspect them."""
    audio_pt: int
    """Payload type of the audio codec on this leg."""
    telephone_event_pt: int | None
    """Payload type of RFC 4733 telephone-event on this leg, if negotiated."""
    direction: Direction = Direction.SENDRECV
    ptime_ms: int = 20
    srtp: SrtpParams | None = None
    fork_tag: str | None = None
    """The answering dialog's remote tag when the answer came in an 18x or 2xx (None in-dialog):
    with more than one fork answering, a switch of fork and the final answer restart latching."""
    early: bool = False
    """The answer came in an 18x (early media), not the 2xx."""
