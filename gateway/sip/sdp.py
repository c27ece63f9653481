"""SDP (RFC 4566) parsing/serialising and the gateway's offer/answer rules (RFC 3264).

The B2BUA never relays SDP: it builds its own per leg, anchoring media on its own
address and port, offering only PCMU/PCMA (which it can inspect) plus
telephone-event, and mapping the telephone-event payload type per leg. It relays one
audio stream: the other m= lines of an offer are answered with port 0, line for line
(`MediaSlot`, RFC 3264 6). An answer in
the G.711 law we did not offer is accepted (`answer_codec`). SRTP keys
(RFC 4568 SDES) are generated per leg with `secrets` and never appear in a repr.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass, field

from gateway.media.leg import Direction, LegMedia, SrtpParams

SUPPORTED_CODECS = ("PCMU", "PCMA")
STATIC_PT = {"PCMU": 0, "PCMA": 8}  # RFC 3551 table 4
SRTP_SUITES = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")
_SRTP_KEY_SALT_BYTES = 30  # RFC 4568 6.2.1: 128-bit key + 112-bit salt


class SdpParseError(ValueError):
    """Malformed SDP; the edge answers 400 (or 488 for `NotAcceptable`)."""

    status = 400


class NotAcceptable(SdpParseError):
    """No common codec or transport: answer 488 Not Acceptable Here (RFC 3264 6)."""

    status = 488
    warning: tuple[int, str] | None = None
    """RFC 3261 20.43: warn-code and warn-text for a Warning header on the 488, when one says more."""


class IncompatibleAddress(NotAcceptable):
    """Media on an address family the gateway's media path does not have (IPv6 on an IPv4 relay)."""

    warning = (301, "Incompatible network address formats")  # RFC 3261 20.43


@dataclass
class MediaDescription:
    """One m= section; lines after m= are kept in order as (type, value)."""

    media: str
    port: int
    proto: str
    formats: list[str]
    lines: list[tuple[str, str]] = field(default_factory=list)
    port_count: int | None = None

    def attributes(self, name: str) -> list[str | None]:
        """Values of every a=name[:value] line (None for flag attributes)."""
        out: list[str | None] = []
        for t, v in self.lines:
            if t != "a":
                continue
            n, colon, val = v.partition(":")
            if n == name:
                out.append(val if colon else None)
        return out

    def attribute(self, name: str) -> str | None:
        vals = self.attributes(name)
        return vals[0] if vals else None

    def has_flag(self, name: str) -> bool:
        return any(t == "a" and v == name for t, v in self.lines)

    @property
    def connection_address(self) -> str | None:
        for t, v in self.lines:
            if t == "c":
                return _connection_address(v)
        return None


@dataclass
class SessionDescription:
    """A parsed SDP: session-level lines in order (v, o, s, c, t, a...) and media sections."""

    lines: list[tuple[str, str]]
    media: list[MediaDescription]

    def value(self, kind: str) -> str | None:
        for t, v in self.lines:
            if t == kind:
                return v
        return None

    def __bytes__(self) -> bytes:
        out = [f"{t}={v}" for t, v in self.lines]
        for m in self.media:
            count = f"/{m.port_count}" if m.port_count is not None else ""
            out.append(f"m={m.media} {m.port}{count} {m.proto} {' '.join(m.formats)}")
            out.extend(f"{t}={v}" for t, v in m.lines)
        return ("\r\n".join(out) + "\r\n").encode()


def _connection_address(value: str) -> str:
    return _connection(value)[1]


def _connection(value: str) -> tuple[str, str]:
    """(addrtype, address) of a c= line (RFC 4566 5.7)."""
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpParseError("SDP c= line is invalid")
    return parts[1], parts[2].split("/")[0]


def parse_sdp(data: bytes) -> SessionDescription:
    """Parse an SDP body (RFC 4566 5); tolerant of bare LF and a missing final newline."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SdpParseError("SDP is not valid UTF-8") from None
    session: list[tuple[str, str]] = []
    media: list[MediaDescription] = []
    for n, raw in enumerate(text.replace("\r\n", "\n").split("\n")):
        if not raw:
            continue
        if len(raw) < 2 or raw[1] != "=" or not raw[0].isalpha():
            raise SdpParseError("SDP line is malformed")
        kind, value = raw[0], raw[2:]
        if n == 0 and (kind != "v" or value != "0"):
            raise SdpParseError("SDP does not start with v=0")
        if kind == "m":
            media.append(_parse_m(value))
        elif media:
            media[-1].lines.append((kind, value))
        else:
            session.append((kind, value))
    if not session or session[0] != ("v", "0"):
        raise SdpParseError("SDP does not start with v=0")
    sd = SessionDescription(session, media)
    for t, v in session:
        if t == "c":
            _connection_address(v)
    for m in media:
        m.connection_address  # noqa: B018 - validates c= lines
    return sd


def _parse_m(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 3:
        raise SdpParseError("SDP m= line is invalid")
    port_text, _, count = parts[1].partition("/")
    if not _is_num(port_text) or int(port_text) > 65535 or (count and not _is_num(count)):
        raise SdpParseError("SDP m= line is invalid")
    return MediaDescription(parts[0], int(port_text), parts[2], parts[3:], port_count=int(count) if count else None)


def _is_num(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 9


# ---------------------------------------------------------------- what a peer's SDP says


@dataclass(frozen=True)
class Codec:
    pt: int
    name: str
    """Upper-case encoding name, e.g. PCMU, TELEPHONE-EVENT."""
    clock_hz: int


@dataclass(frozen=True)
class Crypto:
    """One a=crypto line (RFC 4568 9.1); the key is kept out of repr."""

    tag: int
    suite: str
    key_b64: str

    def __repr__(self) -> str:
        return f"Crypto(tag={self.tag}, suite={self.suite!r}, key=<redacted>)"


@dataclass(frozen=True)
class MediaSlot:
    """One m= line of a session as both sides keep it: RFC 3264 8 never removes or reorders a line."""

    media: str
    proto: str
    fmt: str
    """One of its formats: a rejected line still lists at least one (RFC 3264 6)."""

    def rejected(self) -> MediaDescription:
        """This line refused (RFC 3264 6) or kept disabled in a new offer (RFC 3264 8.2): port 0."""
        return MediaDescription(self.media, 0, self.proto, [self.fmt])


AUDIO_ONLY = (MediaSlot("audio", "RTP/AVP", "0"),)
"""The layout of a session the gateway opened itself: one audio line."""


@dataclass(frozen=True)
class RemoteAudio:
    """The audio stream of a peer's offer or answer the gateway relays, reduced to what it uses.

    `slots` are every m= line of that SDP, in order, and `index` is this stream's: an
    answer must have the same lines in the same order, the others rejected (RFC 3264 6).
    """

    address: str | None
    port: int
    proto: str
    codecs: tuple[Codec, ...]
    telephone_event: Codec | None
    ptime_ms: int | None
    direction: Direction
    rtcp: tuple[str, int] | None
    crypto: tuple[Crypto, ...]
    addrtype: str | None = None
    """IP4 or IP6 from the c= line that applies (None without one)."""
    slots: tuple[MediaSlot, ...] = AUDIO_ONLY
    index: int = 0

    @property
    def secure(self) -> bool:
        return "SAVP" in self.proto

    @property
    def rtp(self) -> tuple[str, int] | None:
        """Where to send RTP; None on port 0 or a 0.0.0.0 hold (RFC 3264 8.4)."""
        if self.port == 0 or self.address in (None, "0.0.0.0", "::"):
            return None
        return (self.address, self.port)


_RTPMAP = re.compile(r"^([0-9]{1,3})\s+([^/\s]+)/([0-9]{1,6})", re.ASCII)
_CRYPTO = re.compile(r"^([0-9]{1,9})\s+(\S+)\s+inline:([A-Za-z0-9+/=]+)(\|\S*)?", re.ASCII)


_DIRECTIONS = {d.value: d for d in Direction}
# Iterating an Enum class and reading .value are slow; the order is the precedence.
_DIRECTION_ORDER = tuple((d.value, d) for d in Direction)
_PTIME = re.compile(r"^[0-9]{1,4}(\.[0-9]{1,4})?$")


def remote_audio(sd: SessionDescription, index: int | None = None) -> RemoteAudio:
    """Extract the audio stream the gateway relays; raise NotAcceptable when there is none.

    `index` is the m= line an answer must use (the one we offered audio on); without it
    (an offer) the first audio line with a port wins, else the first audio line. An
    answer whose line at `index` is not audio falls back to that choice too (lenient,
    like `answer_codec`: some peers drop the lines we offered with port 0).
    """
    media = sd.media
    if index is not None and 0 <= index < len(media) and media[index].media == "audio":
        at = index
    else:
        at = next((i for i, m in enumerate(media) if m.media == "audio" and m.port), None)
        if at is None:
            at = next((i for i, m in enumerate(media) if m.media == "audio"), None)
    if at is None:
        raise NotAcceptable("SDP has no audio stream")
    audio = media[at]
    # One pass over the section's lines; the first of a kind wins where only one counts.
    media_c: tuple[str, str] | None = None
    names: dict[int, tuple[str, int]] = {}
    flags: set[str] = set()
    ptime: str | None = None
    rtcp_attr: str | None = None
    crypto_vals: list[str] = []
    for t, v in audio.lines:
        if t == "a":
            n, colon, val = v.partition(":")
            if not colon:
                flags.add(v)
            elif n == "rtpmap":
                m = _RTPMAP.match(val)
                if m:
                    names[int(m.group(1))] = (m.group(2).upper(), int(m.group(3)))
            elif n == "ptime":
                ptime = val if ptime is None else ptime
            elif n == "rtcp":
                rtcp_attr = val if rtcp_attr is None else rtcp_attr
            elif n == "crypto":
                crypto_vals.append(val)
        elif t == "c" and media_c is None:
            media_c = _connection(v)
    session_c = next((_connection(v) for t, v in sd.lines if t == "c"), None)
    addrtype, address = media_c or session_c or (None, None)
    codecs: list[Codec] = []
    te: Codec | None = None
    for fmt in audio.formats:
        if not _is_num(fmt) or int(fmt) > 127:
            continue
        pt = int(fmt)
        name, clock = names.get(pt, ({0: "PCMU", 8: "PCMA"}.get(pt, ""), 8000))
        if not name:
            continue
        codec = Codec(pt, name, clock)
        if name == "TELEPHONE-EVENT":
            if te is None and clock == 8000:
                te = codec
        else:
            codecs.append(codec)
    direction = None
    for value, d in _DIRECTION_ORDER:
        if value in flags:
            direction = d
            break
    else:
        session_flags = {v for t, v in sd.lines if t == "a" and v in _DIRECTIONS}
        for value, d in _DIRECTION_ORDER:
            if value in session_flags:
                direction = d
                break
    if direction is None:
        direction = Direction.SENDRECV
    ptime_ms = int(float(ptime)) if ptime and _PTIME.match(ptime) else None
    rtcp = None
    if rtcp_attr:
        parts = rtcp_attr.split()
        if not parts or not _is_num(parts[0]) or int(parts[0]) > 65535:
            raise SdpParseError("SDP a=rtcp is invalid")
        rtcp_addr = parts[3] if len(parts) >= 4 else address
        if rtcp_addr:
            rtcp = (rtcp_addr, int(parts[0]))
    elif address and audio.port:
        rtcp = (address, audio.port + 1)
    crypto = []
    for v in crypto_vals:
        m = _CRYPTO.match(v)
        if m:
            crypto.append(Crypto(int(m.group(1)), m.group(2), m.group(3)))
    slots = tuple(MediaSlot(m.media, m.proto, m.formats[0] if m.formats else "0") for m in media)
    return RemoteAudio(address, audio.port, audio.proto, tuple(codecs), te, ptime_ms, direction, rtcp, tuple(crypto),
                       addrtype, slots, at)


def check_address_family(audio: RemoteAudio, local_address: str) -> None:
    """Refuse media the relay cannot reach: an IPv6 stream on an IPv4 media address (or the reverse).

    RFC 3261 20.43: 488 with Warning 301; a 200 would set up a call whose media never flows.
    A rejected stream (port 0) or one without a c= line has nothing to reach.
    """
    if audio.port == 0 or audio.addrtype is None:
        return
    if audio.addrtype != ("IP6" if ":" in local_address else "IP4"):
        raise IncompatibleAddress("SDP address family is incompatible")


def _sections(layout: tuple[MediaSlot, ...], index: int, audio: MediaDescription) -> list[MediaDescription]:
    """Every line of `layout` with port 0 except `audio` at `index` (RFC 3264 6 and 8.2)."""
    if not layout:
        return [audio]
    return [audio if i == index else slot.rejected() for i, slot in enumerate(layout)]


# ---------------------------------------------------------------- building our side


def answer_direction(offered: Direction) -> Direction:
    """RFC 3264 6.1: sendonly is answered recvonly and vice versa."""
    return {
        Direction.SENDONLY: Direction.RECVONLY,
        Direction.RECVONLY: Direction.SENDONLY,
    }.get(offered, offered)


def new_srtp_key() -> str:
    """Fresh SDES inline key||salt, base64 (RFC 4568 6.1)."""
    return base64.b64encode(secrets.token_bytes(_SRTP_KEY_SALT_BYTES)).decode()


def _valid_key(key_b64: str) -> bool:
    try:
        return len(base64.b64decode(key_b64, validate=True)) == _SRTP_KEY_SALT_BYTES
    except (binascii.Error, ValueError):
        return False


@dataclass(frozen=True)
class LocalOffer:
    """What we offered on a leg, kept to interpret the answer; the key is kept out of repr."""

    codecs: tuple[str, ...]
    telephone_event_pt: int | None
    ptime_ms: int
    srtp_suite: str | None
    local_key_b64: str | None = field(default=None, repr=False)
    layout: tuple[MediaSlot, ...] = AUDIO_ONLY
    """Every m= line of the offer; the answer has the same ones (RFC 3264 6)."""
    index: int = 0
    """Which of them is our audio."""


def _session_lines(address: str, session_id: int, version: int) -> list[tuple[str, str]]:
    ip = "IP6" if ":" in address else "IP4"
    return [
        ("v", "0"),
        ("o", f"tonewall {session_id} {version} IN {ip} {address}"),
        ("s", "tonewall"),
        ("c", f"IN {ip} {address}"),
        ("t", "0 0"),
    ]


def _audio_section(
    port: int,
    codecs: list[tuple[int, str]],
    te_pt: int | None,
    direction: Direction,
    ptime_ms: int,
    address: str,
    crypto: Crypto | None,
) -> MediaDescription:
    fmts = [str(pt) for pt, _ in codecs] + ([str(te_pt)] if te_pt is not None else [])
    proto = "RTP/SAVP" if crypto else "RTP/AVP"
    lines = [("a", f"rtpmap:{pt} {name}/8000") for pt, name in codecs]
    if te_pt is not None:
        lines += [("a", f"rtpmap:{te_pt} telephone-event/8000"), ("a", f"fmtp:{te_pt} 0-16")]
    lines.append(("a", f"ptime:{ptime_ms}"))
    ip = "IP6" if ":" in address else "IP4"
    lines.append(("a", f"rtcp:{port + 1} IN {ip} {address}"))  # RFC 3605
    if crypto is not None:
        lines.append(("a", f"crypto:{crypto.tag} {crypto.suite} inline:{crypto.key_b64}"))
    lines.append(("a", direction.value))
    return MediaDescription("audio", port, proto, fmts, lines)


def build_offer(
    *,
    address: str,
    port: int,
    codecs: list[str],
    telephone_event_pt: int | None,
    direction: Direction = Direction.SENDRECV,
    ptime_ms: int = 20,
    srtp_suite: str | None = None,
    session_id: int,
    version: int,
    layout: tuple[MediaSlot, ...] = (),
    index: int = 0,
) -> tuple[SessionDescription, LocalOffer]:
    """Our offer on a leg: only PCMU/PCMA in the given order, telephone-event, optional SDES.

    `layout` is the leg's session so far (empty for a new session): RFC 3264 8 keeps
    every earlier m= line in a later offer, in order, so the lines we do not relay stay
    with port 0 and our audio stays at `index`. A new session gets the audio line alone:
    RFC 3264 5.1 allows port-0 lines in an initial offer, but they would offer nothing.
    """
    chosen = [c for c in codecs if c in SUPPORTED_CODECS] or list(SUPPORTED_CODECS)
    key = new_srtp_key() if srtp_suite else None
    crypto = Crypto(1, srtp_suite, key) if srtp_suite and key else None
    section = _audio_section(
        port, [(STATIC_PT[c], c) for c in chosen], telephone_event_pt, direction, ptime_ms, address, crypto
    )
    if not layout or not 0 <= index < len(layout):
        layout, index = (), 0
    sections = _sections(layout, index, section)
    sd = SessionDescription(_session_lines(address, session_id, version), sections)
    ours = MediaSlot("audio", section.proto, section.formats[0])
    new_layout = tuple(ours if i == index else slot for i, slot in enumerate(layout)) if layout else (ours,)
    return sd, LocalOffer(tuple(chosen), telephone_event_pt, ptime_ms, srtp_suite, key, new_layout, index)


def accepted_crypto(offer: RemoteAudio) -> Crypto | None:
    """The offer's crypto line an answer takes (RFC 4568 7.1.1: the first we support, key valid)."""
    return next((c for c in offer.crypto if c.suite in SRTP_SUITES and _valid_key(c.key_b64)), None)


def build_answer(
    offer: RemoteAudio,
    *,
    address: str,
    port: int,
    session_id: int,
    version: int,
    direction: Direction | None = None,
    allowed_codecs: tuple[str, ...] = SUPPORTED_CODECS,
    prefer: str | None = None,
) -> tuple[SessionDescription, LegMedia]:
    """Answer a peer's offer (RFC 3264 6): `prefer` if offered, else the first offered codec we can
    inspect; their PT numbers.

    Returns our SDP and the peer leg's media. `direction` overrides the plain
    complement of the offer (the B2BUA passes the other leg's state through);
    `prefer` is the other leg's codec, so that both legs share one law when they can.
    Raises NotAcceptable when no PCMU/PCMA is offered or SRTP is offered with no
    suite we support.
    """
    usable = [c for c in offer.codecs if c.name in allowed_codecs and c.clock_hz == 8000]
    codec = next((c for c in usable if c.name == prefer), usable[0] if usable else None)
    if codec is None:
        raise NotAcceptable("SDP offer has no acceptable codec")
    crypto: Crypto | None = None
    srtp: SrtpParams | None = None
    if offer.secure:
        theirs = accepted_crypto(offer)
        if theirs is None:
            raise NotAcceptable("SDP offer has no acceptable crypto suite")
        crypto = Crypto(theirs.tag, theirs.suite, new_srtp_key())
        srtp = SrtpParams(theirs.suite, crypto.key_b64, theirs.key_b64)
    te = offer.telephone_event
    ptime = offer.ptime_ms or 20
    ours = direction if direction is not None else answer_direction(offer.direction)
    if offer.port == 0:
        section = MediaDescription("audio", 0, offer.proto, [str(codec.pt)])
    else:
        section = _audio_section(
            port, [(codec.pt, codec.name)], te.pt if te else None, ours, ptime, address, crypto
        )
    # RFC 3264 6: one line per offered line, in order; those we do not relay get port 0.
    sd = SessionDescription(_session_lines(address, session_id, version),
                            _sections(offer.slots, offer.index, section))
    leg = LegMedia(
        remote_rtp=offer.rtp,
        remote_rtcp=offer.rtcp if offer.rtp else None,
        codec=codec.name,
        audio_pt=codec.pt,
        telephone_event_pt=te.pt if te else None,
        direction=offer.direction,
        ptime_ms=ptime,
        srtp=srtp,
    )
    return sd, leg


def answer_codec(offer: LocalOffer, answer: RemoteAudio) -> Codec:
    """The codec a peer's answer chose: one we offered, else any G.711 law (lenient, see below).

    RFC 3264 6.1 lets an answer use only offered formats, yet common peers (SIPp's built-in
    uas answers PCMU to anything) answer the other G.711 law. Both laws can be inspected and
    the relay converts between them, so that answer is accepted; anything else is refused
    (fail closed: audio the gateway cannot inspect could carry DTMF past the masker).
    """
    g711 = [c for c in answer.codecs if c.name in SUPPORTED_CODECS and c.clock_hz == 8000]
    codec = next((c for c in g711 if c.name in offer.codecs), g711[0] if g711 else None)
    if codec is None:
        raise NotAcceptable("SDP answer has no acceptable codec")
    return codec


def leg_from_answer(offer: LocalOffer, answer: RemoteAudio) -> LegMedia:
    """The leg's media once the peer answered our offer (codec chosen by `answer_codec`)."""
    codec = answer_codec(offer, answer)
    srtp: SrtpParams | None = None
    if offer.srtp_suite:
        theirs = next((c for c in answer.crypto if c.suite == offer.srtp_suite and _valid_key(c.key_b64)), None)
        if theirs is None or not answer.secure or offer.local_key_b64 is None:
            raise NotAcceptable("SDP answer has no acceptable crypto suite")
        srtp = SrtpParams(theirs.suite, offer.local_key_b64, theirs.key_b64)
    elif answer.secure:
        raise NotAcceptable("SDP answer has no acceptable crypto suite")
    te = answer.telephone_event if offer.telephone_event_pt is not None else None
    return LegMedia(
        remote_rtp=answer.rtp,
        remote_rtcp=answer.rtcp if answer.rtp else None,
        codec=codec.name,
        audio_pt=codec.pt,
        telephone_event_pt=te.pt if te else None,
        direction=answer.direction,
        ptime_ms=answer.ptime_ms or offer.ptime_ms,
        srtp=srtp,
    )


def build_rejection(offer: RemoteAudio, *, address: str, session_id: int, version: int) -> SessionDescription:
    """An answer that refuses every offered stream: port 0 and one offered format each (RFC 3264 6)."""
    fmt = str(offer.codecs[0].pt) if offer.codecs else (str(offer.telephone_event.pt) if offer.telephone_event else "0")
    section = MediaDescription("audio", 0, offer.proto, [fmt])
    return SessionDescription(_session_lines(address, session_id, version),
                              _sections(offer.slots, offer.index, section))
