"""SIP messages (RFC 3261 sections 7, 20, 25): parse one datagram, serialise, header helpers.

Parsing is strict where a wrong guess would misroute a message (start line, CSeq,
Via, Content-Length) and lenient where peers are sloppy in harmless ways (bare LF
line ends, folded header lines, leading CRLFs). Every malformed input raises
`SipParseError`, a `ValueError` carrying the status the edge should answer with.
"""

from __future__ import annotations

import re
from functools import lru_cache
from dataclasses import dataclass, field
from typing import Iterable, Iterator

SIP_VERSION = "SIP/2.0"
BRANCH_MAGIC = "z9hG4bK"  # RFC 3261 8.1.1.7

# RFC 3261 7.3.3 and the IANA registry: compact form -> full name.
COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}
_CANONICAL = {full.lower(): full for full in COMPACT_FORMS.values()}

# Headers whose values may contain commas that do not separate list elements
# (RFC 3261 7.3.1: auth challenges/credentials and dates are not comma lists).
_NOT_LISTS = frozenset(
    name.lower()
    for name in (
        "WWW-Authenticate",
        "Authorization",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Authentication-Info",
        "Date",
        "Call-ID",
        "CSeq",
        "From",
        "To",
        "Subject",
        "Content-Length",
        "Content-Type",
        "Max-Forwards",
        "Identity",
        "User-Agent",
        "Server",
    )
)

REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    420: "Bad Extension",
    422: "Session Interval Too Small",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    603: "Decline",
}

_TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")  # RFC 3261 25.1 token
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LINE_SPLIT = re.compile(r"\r?\n")
_HEADER_LINE = re.compile(r"^([^:\n]*):([^\n]*)$", re.MULTILINE)


class SipParseError(ValueError):
    """Malformed or unacceptable SIP input; `status` is what the edge should answer (if it can)."""

    def __init__(self, message: str, status: int = 400, unsupported: tuple[str, ...] = ()):
        super().__init__(message)
        self.status = status
        self.unsupported = unsupported


@dataclass(frozen=True)
class Limits:
    """Size limits; messages beyond them are refused before any further work."""

    max_message_bytes: int = 65535
    """A UDP datagram larger than this gets 513 (RFC 3261 18.1.1)."""
    max_body_bytes: int = 32768
    """A Content-Length above this gets 413."""
    max_headers: int = 128
    max_header_line_bytes: int = 8192


DEFAULT_LIMITS = Limits()


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts superscripts that int() refuses."""
    return text.isascii() and text.isdigit()


def canonical_name(name: str) -> str:
    """Full header name for lookups: expands compact forms, keeps unknown names as given."""
    low = name.lower()
    if low in COMPACT_FORMS:
        return COMPACT_FORMS[low]
    return _CANONICAL.get(low, name)


@lru_cache(maxsize=1024)
def _key(name: str) -> str:
    """Lookup key of a header name; cached because peers use a small set of spellings."""
    return canonical_name(name).lower()


@lru_cache(maxsize=1024)
def _wire_key(name: str) -> str | None:
    """Lookup key of a header name read off the wire, or None when it is not a token (RFC 3261 25.1)."""
    return _key(name) if _TOKEN.match(name) else None


@lru_cache(maxsize=256)
def _param_name(name: str) -> str | None:
    """Lower-cased parameter name, or None when it is not a token; peers use a handful of names."""
    return name.lower() if _TOKEN.match(name) else None


def split_list(value: str) -> list[str]:
    """Split a header value on commas outside quotes and <> (RFC 3261 7.3.1)."""
    if "," not in value and '"' not in value:
        value = value.strip()
        return [value] if value else []
    parts: list[str] = []
    start = 0
    quoted = False
    angle = 0
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            angle += 1
        elif ch == ">" and angle:
            angle -= 1
        elif ch == "," and not angle:
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    if quoted:
        raise SipParseError("SIP header has an unterminated quoted string")
    parts.append(value[start:].strip())
    return [p for p in parts if p]


class Headers:
    """Ordered (name as written, value) pairs with case-insensitive, compact-form-aware lookup.

    Lookup keys are computed once per line, and values parsed by the message
    accessors (From, To, Via, CSeq) are memoised here; every mutation clears the
    memo, so a changed header is parsed again on the next access.
    """

    __slots__ = ("_items", "_keys", "_memo")

    def __init__(self, items: Iterable[tuple[str, str]] = ()):
        self._items: list[tuple[str, str]] = list(items)
        self._keys: list[str] = [_key(n) for n, _ in self._items]
        self._memo: dict[str, object] = {}

    @classmethod
    def _trusted(cls, items: list[tuple[str, str]], keys: list[str]) -> Headers:
        """Build from pairs whose keys are already known (parser, response builder)."""
        h = cls.__new__(cls)
        h._items = items
        h._keys = keys
        h._memo = {}
        return h

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _key(name) in self._keys

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def items(self) -> list[tuple[str, str]]:
        """A copy of the raw pairs in wire order."""
        return list(self._items)

    def copy(self) -> Headers:
        h = Headers._trusted(list(self._items), list(self._keys))
        h._memo = dict(self._memo)  # memoised values are never mutated, so they can be shared
        return h

    def get(self, name: str, default: str | None = None) -> str | None:
        """Value of the first header with this name (any case, compact or full)."""
        try:
            return self._items[self._keys.index(_key(name))][1]
        except ValueError:
            return default

    def values(self, name: str) -> list[str]:
        """Raw values of every header line with this name, in order."""
        key = _key(name)
        if self._keys.count(key) == 1:
            return [self._items[self._keys.index(key)][1]]
        return [item[1] for k, item in zip(self._keys, self._items) if k == key]

    def get_all(self, name: str) -> list[str]:
        """Every element of a (possibly comma-separated, repeated) list header, in order."""
        vals = self.values(name)
        if _key(name) in _NOT_LISTS:
            return vals
        out: list[str] = []
        for v in vals:
            out.extend(split_list(v))
        return out

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        """Append a header line (or insert it before all others, e.g. a new top Via)."""
        key = _key(name)
        self._memo.clear()
        if first:
            try:
                i = self._keys.index(key)
            except ValueError:
                i = 0
            self._items.insert(i, (name, value))
            self._keys.insert(i, key)
        else:
            self._items.append((name, value))
            self._keys.append(key)

    def set(self, name: str, value: str) -> None:
        """Replace every line of this header with one line, at the first one's position."""
        key = _key(name)
        self._memo.clear()
        keys = self._keys
        if key not in keys:
            self._items.append((name, value))
            keys.append(key)
            return
        i = keys.index(key)
        self._items[i] = (self._items[i][0], value)
        if keys.count(key) > 1:
            pairs = [(k, it) for j, (k, it) in enumerate(zip(keys, self._items)) if k != key or j == i]
            self._keys = [k for k, _ in pairs]
            self._items = [it for _, it in pairs]

    def remove(self, name: str) -> None:
        key = _key(name)
        if key not in self._keys:
            return
        self._memo.clear()
        pairs = [(k, it) for k, it in zip(self._keys, self._items) if k != key]
        self._keys = [k for k, _ in pairs]
        self._items = [it for _, it in pairs]

    def pop_first(self, name: str) -> str | None:
        """Remove and return the first element of a list header (e.g. the top Via)."""
        key = _key(name)
        try:
            i = self._keys.index(key)
        except ValueError:
            return None
        self._memo.clear()
        n, v = self._items[i]
        parts = split_list(v) if key not in _NOT_LISTS else [v]
        if len(parts) <= 1:
            del self._items[i]
            del self._keys[i]
        else:
            self._items[i] = (n, ", ".join(parts[1:]))
        return parts[0] if parts else v

    def _replace_first_element(self, key: str, element: str) -> None:
        """Put `element` in place of the first element of a list header (e.g. a stamped top Via)."""
        i = self._keys.index(key)
        n, v = self._items[i]
        rest = split_list(v)[1:] if key not in _NOT_LISTS and ("," in v) else []
        self._items[i] = (n, ", ".join([element, *rest]))


# ---------------------------------------------------------------- URIs and addresses


def _parse_params(text: str) -> dict[str, str | None]:
    """`;a=b;c` -> {"a": "b", "c": None}; names lower-cased (RFC 3261 19.1.4 compares them so)."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    if text[0] != ";":
        raise SipParseError("SIP parameter list is malformed")
    for part in text[1:].split(";"):
        name, eq, value = part.partition("=")
        pname = _param_name(name.strip())
        if pname is None:
            raise SipParseError("SIP parameter list is malformed")
        params[pname] = value.strip() if eq else None
    return params


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def _split_params(text: str) -> tuple[str, str]:
    """Split `head;params` at the first ';' outside quotes."""
    quoted = False
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            return text[:i], text[i:]
    return text, ""


_URI_BAD = re.compile(r"[\s<>]")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+\-.]*$")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?::([0-9]{1,5}))?$")
# The common sip:/sips: URI in one match: user without ; ? @, host, port, params, no headers.
# Anything else takes the general path below, which gives the same result for these.
_SIP_URI_FAST = re.compile(
    r"([sS][iI][pP][sS]?):(?:([^:@;?\s<>]+)(?::([^@;?\s<>]*))?@)?"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?::([0-9]{1,5}))?((?:;[^;?@\s<>]*)*)"
)


@dataclass
class SipUri:
    """A sip: or sips: URI (RFC 3261 19.1); other schemes are kept opaque in `raw`."""

    scheme: str
    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str = ""
    raw: str | None = None
    """Original text for non-SIP schemes (tel:, urn:...), which are relayed untouched."""

    @property
    def is_sip(self) -> bool:
        return self.scheme in ("sip", "sips")

    @property
    def transport(self) -> str:
        """udp, tcp or tls: sips: means TLS (RFC 3261 26.2.2), else ;transport=, else UDP."""
        if self.scheme == "sips":
            return "tls"
        t = (self.params.get("transport") or "udp").lower()
        return t

    def __str__(self) -> str:
        if self.raw is not None:
            return self.raw
        userinfo = ""
        if self.user is not None:
            userinfo = self.user + (f":{self.password}" if self.password is not None else "") + "@"
        port = f":{self.port}" if self.port is not None else ""
        hdrs = f"?{self.headers}" if self.headers else ""
        return f"{self.scheme}:{userinfo}{self.host}{port}{_format_params(self.params)}{hdrs}"


def parse_uri(text: str) -> SipUri:
    """Parse a URI; sip:/sips: are decomposed, other schemes are kept as opaque text."""
    m = _SIP_URI_FAST.fullmatch(text)
    if m is not None:
        port = int(m.group(5)) if m.group(5) else None
        if port is not None and not 0 < port < 65536:
            raise SipParseError("SIP URI has an invalid port")
        ptext = m.group(6)
        return SipUri(
            m.group(1).lower(), m.group(4).lower(), m.group(2), m.group(3), port,
            _parse_params(ptext) if ptext else {}, "",
        )
    text = text.strip()
    if _URI_BAD.search(text):
        raise SipParseError("SIP URI contains whitespace or brackets")
    scheme, colon, rest = text.partition(":")
    if not colon or not scheme or not _SCHEME.match(scheme):
        raise SipParseError("SIP URI has no scheme")
    scheme = scheme.lower()
    if scheme not in ("sip", "sips"):
        return SipUri(scheme=scheme, host="", raw=text)
    rest, _, headers = rest.partition("?")
    user = password = None
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        user, pc, pw = userinfo.partition(":")
        password = pw if pc else None
        if not user:
            raise SipParseError("SIP URI has an empty user part")
    hostport, _, ptext = rest.partition(";")
    params = _parse_params(";" + ptext) if ptext else {}
    m = _HOST.match(hostport)
    if not m:
        raise SipParseError("SIP URI has an invalid host")
    port = int(m.group(2)) if m.group(2) else None
    if port is not None and not 0 < port < 65536:
        raise SipParseError("SIP URI has an invalid port")
    return SipUri(scheme, m.group(1).lower(), user, password, port, params, headers)


@dataclass
class NameAddr:
    """From/To/Contact/Route value: optional display name, URI, header params (RFC 3261 20.10)."""

    uri: SipUri
    display_name: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    bracketed: bool = True

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        params = _format_params(self.params)
        if not self.bracketed and not self.display_name:
            return f"{self.uri}{params}"
        name = f"{self.display_name} " if self.display_name else ""
        return f"{name}<{self.uri}>{params}"


_NAME_ADDR_FAST = re.compile(
    r'(?:("[^"\\]*")[ \t]*|([A-Za-z0-9\-.!%*_+`\'~]+(?:[ \t]+[A-Za-z0-9\-.!%*_+`\'~]+)*)[ \t]*)?'
    r'<([^<>"]*)>[ \t]*((?:;[^;<>"]*)*)'
)


def parse_name_addr(text: str) -> NameAddr:
    """Parse name-addr or addr-spec with params; in addr-spec form ';' starts header params."""
    text = text.strip()
    m = _NAME_ADDR_FAST.fullmatch(text)
    if m is not None:
        # The common `["Name"] <uri>;params` form in one match; others take the general path.
        ptext = m.group(4)
        return NameAddr(parse_uri(m.group(3)), m.group(1) or m.group(2), _parse_params(ptext) if ptext else {}, True)
    if not text:
        raise SipParseError("SIP address is empty")
    display: str | None = None
    if text.startswith('"'):
        i = 1
        while i < len(text):
            if text[i] == "\\":
                i += 2
                continue
            if text[i] == '"':
                break
            i += 1
        else:
            raise SipParseError("SIP header has an unterminated quoted string")
        display = text[: i + 1]
        text = text[i + 1 :].lstrip()
        if not text.startswith("<"):
            raise SipParseError("SIP address is malformed")
    lt = text.find("<")
    if lt >= 0:
        gt = text.find(">", lt)
        if gt < 0:
            raise SipParseError("SIP address is malformed")
        if display is None:
            name = text[:lt].strip()
            if name and not all(_TOKEN.match(w) for w in name.split()):
                raise SipParseError("SIP address is malformed")
            display = name or None
        uri = parse_uri(text[lt + 1 : gt])
        rest = text[gt + 1 :].strip()
        return NameAddr(uri, display, _parse_params(rest), True)
    head, rest = _split_params(text)
    return NameAddr(parse_uri(head), None, _parse_params(rest.strip()), False)


@dataclass
class Via:
    """One Via element (RFC 3261 20.42), with RFC 3581 rport."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return self.host, self.port

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {self.host}{port}{_format_params(self.params)}"


_VIA = re.compile(
    r"^SIP\s*/\s*2\.0\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s+(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?:\s*:\s*([0-9]{1,5}))?\s*(.*)$",
    re.IGNORECASE | re.DOTALL,
)


def parse_via(text: str) -> Via:
    """Parse one Via element; a Via without a branch is accepted here, transactions decide."""
    m = _VIA.match(text.strip())
    if not m:
        raise SipParseError("SIP Via header is malformed")
    port = int(m.group(3)) if m.group(3) else None
    if port is not None and not 0 < port < 65536:
        raise SipParseError("SIP Via header is malformed")
    params = _parse_params(m.group(4).strip())
    return Via(m.group(1).upper(), m.group(2).lower(), port, params)


# Parses shared between messages through the header memo: the same From/To/Via text
# comes back in every message of a transaction or dialog. The cached objects are
# never mutated; the public accessors hand out copies.
_shared_name_addr = lru_cache(maxsize=4096)(parse_name_addr)
_shared_uri = lru_cache(maxsize=1024)(parse_uri)
_shared_via = lru_cache(maxsize=4096)(parse_via)


def new_branch(token: str) -> str:
    """A branch with the RFC 3261 magic cookie; `token` must be unique (e.g. secrets.token_hex)."""
    return BRANCH_MAGIC + token


# ---------------------------------------------------------------- messages


def _copy_uri(uri: SipUri) -> SipUri:
    return SipUri(uri.scheme, uri.host, uri.user, uri.password, uri.port, dict(uri.params), uri.headers, uri.raw)


def _copy_name_addr(addr: NameAddr) -> NameAddr:
    return NameAddr(_copy_uri(addr.uri), addr.display_name, dict(addr.params), addr.bracketed)


def _copy_via(via: Via) -> Via:
    return Via(via.transport, via.host, via.port, dict(via.params))


class _Message:
    """What requests and responses share: headers, body and typed accessors.

    The accessors parse a header once and memoise the result in `headers`
    (cleared when a header changes); the public ones return copies the caller
    may change, the `first_via`/`*_tag` ones read the shared parse.
    """

    headers: Headers
    body: bytes
    version: str

    def _start_line(self) -> str:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        """Wire form; Content-Length always recomputed, header names as written."""
        lines = [self._start_line()]
        has_length = False
        for key, (name, value) in zip(self.headers._keys, self.headers._items):
            if key == "content-length":
                if has_length:
                    continue
                has_length = True
                value = str(len(self.body))
            lines.append(f"{name}: {value}")
        if not has_length:
            lines.append(f"Content-Length: {len(self.body)}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode() + self.body

    @property
    def call_id(self) -> str:
        memo = self.headers._memo
        v = memo.get("call-id")
        if v is None:
            v = self.headers.get("Call-ID")
            if not v:
                raise SipParseError("SIP message has no Call-ID")
            memo["call-id"] = v
        return v  # type: ignore[return-value]

    @property
    def cseq(self) -> tuple[int, str]:
        """(sequence number, method) from CSeq (RFC 3261 20.16)."""
        memo = self.headers._memo
        v = memo.get("cseq")
        if v is None:
            v = memo["cseq"] = _shared_cseq(self.headers.get("CSeq") or "")
        return v  # type: ignore[return-value]

    def _vias(self) -> list[Via]:
        memo = self.headers._memo
        v = memo.get("via")
        if v is None:
            v = memo["via"] = [_shared_via(x) for x in self.headers.get_all("Via")]
        return v  # type: ignore[return-value]

    @property
    def vias(self) -> list[Via]:
        return [_copy_via(v) for v in self._vias()]

    @property
    def first_via(self) -> Via:
        """The top Via as parsed; shared with the memo, so read it, never change it."""
        vias = self._vias()
        if not vias:
            raise SipParseError("SIP message has no Via")
        return vias[0]

    @property
    def top_via(self) -> Via:
        return _copy_via(self.first_via)

    def replace_top_via(self, via: Via) -> None:
        """Put a changed top Via in place (e.g. received/rport stamped), keeping the others."""
        old = self._vias()
        self.headers._replace_first_element("via", str(via))
        self.headers._memo.clear()
        self.headers._memo["via"] = [via, *old[1:]]

    def _addr(self, key: str, name: str) -> NameAddr:
        memo = self.headers._memo
        v = memo.get(key)
        if v is None:
            v = memo[key] = _shared_name_addr(self._required(name))
        return v  # type: ignore[return-value]

    @property
    def from_addr(self) -> NameAddr:
        return _copy_name_addr(self._addr("from", "From"))

    @property
    def to_addr(self) -> NameAddr:
        return _copy_name_addr(self._addr("to", "To"))

    @property
    def from_tag(self) -> str | None:
        return self._addr("from", "From").params.get("tag")

    @property
    def to_tag(self) -> str | None:
        return self._addr("to", "To").params.get("tag")

    @property
    def content_type(self) -> str | None:
        v = self.headers.get("Content-Type")
        return v.split(";")[0].strip().lower() if v else None

    @property
    def contact(self) -> NameAddr | None:
        first = next(iter(self.headers.get_all("Contact")), None)
        if first is None or first.strip() == "*":
            return None
        return parse_name_addr(first)

    def _required(self, name: str) -> str:
        v = self.headers.get(name)
        if v is None:
            raise SipParseError(f"SIP message has no {name}")
        return v


@dataclass(eq=False)
class SipRequest(_Message):
    """A SIP request; `uri` is kept as text so unknown schemes relay untouched."""

    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    @property
    def request_uri(self) -> SipUri:
        return parse_uri(self.uri)

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (RFC 3261 20.22) or None when absent."""
        v = self.headers.get("Max-Forwards")
        if v is None:
            return None
        if not _digits(v) or len(v) > 10 or int(v) > 255:
            raise SipParseError("SIP Max-Forwards is invalid")
        return int(v)

    def copy(self) -> SipRequest:
        return SipRequest(self.method, self.uri, self.headers.copy(), self.body, self.version)


@dataclass(eq=False)
class SipResponse(_Message):
    """A SIP response."""

    status: int
    reason: str = ""
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = SIP_VERSION

    def _start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def copy(self) -> SipResponse:
        return SipResponse(self.status, self.reason, self.headers.copy(), self.body, self.version)


SipMessage = SipRequest | SipResponse


def parse_cseq(value: str) -> tuple[int, str]:
    """CSeq = 1*DIGIT LWS Method; the number is below 2**31 (RFC 3261 8.1.1.5)."""
    parts = value.split()
    if len(parts) != 2 or not _digits(parts[0]) or len(parts[0]) > 10:
        raise SipParseError("SIP CSeq header is invalid")
    num = int(parts[0])
    if num >= 2**31 or not _TOKEN.match(parts[1]):
        raise SipParseError("SIP CSeq header is invalid")
    return num, parts[1]


_shared_cseq = lru_cache(maxsize=1024)(parse_cseq)


def check_require(request: SipRequest, supported: Iterable[str]) -> None:
    """Raise 420 listing option tags in Require that we do not support (RFC 3261 8.2.2.3)."""
    if request.method in ("ACK", "CANCEL"):
        return
    known = {s.lower() for s in supported}
    missing = tuple(t for t in request.headers.get_all("Require") if t.lower() not in known)
    if missing:
        raise SipParseError("SIP Require has an unsupported extension", 420, missing)


# ---------------------------------------------------------------- parsing


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("SIP header is not valid UTF-8") from None


def parse_head(head: bytes, limits: Limits = DEFAULT_LIMITS) -> SipRequest | SipResponse:
    """Parse a start line and header block (no blank line, no body); checks the mandatory headers."""
    text = _decode(head)
    start, nl, block = text.partition("\n")
    if start.endswith("\r"):
        start = start[:-1]
    if not start:
        raise SipParseError("SIP start line is empty")
    msg = _parse_start_line(start)
    headers = _fast_headers(block, limits) if nl else None
    if headers is None:
        headers = _slow_headers(_LINE_SPLIT.split(text)[1:], limits)
    msg.headers = headers
    _check_mandatory(msg)
    return msg


def _fast_headers(block: str, limits: Limits) -> Headers | None:
    """One regex pass over an unfolded header block; None sends anything unusual to the line loop."""
    if (
        len(block) > limits.max_header_line_bytes
        or "\n " in block
        or "\n\t" in block
        or block[:1] in (" ", "\t")
    ):
        return None
    found = _HEADER_LINE.findall(block)
    if len(found) != block.count("\n") + 1 or len(found) > limits.max_headers:
        return None
    items = [(n.rstrip(" \t"), v.strip()) for n, v in found]
    keys = [_wire_key(n) for n, _ in items]
    if None in keys:
        return None
    return Headers._trusted(items, keys)  # type: ignore[arg-type]


def _slow_headers(lines: list[str], limits: Limits) -> Headers:
    """The general header loop: folded lines (RFC 3261 7.3.1) and exact errors."""
    items: list[tuple[str, str]] = []
    keys: list[str] = []
    max_line = limits.max_header_line_bytes
    for line in lines:
        if len(line) > max_line:
            raise SipParseError("SIP header line is too long", 513)
        if line[:1] in (" ", "\t"):
            # RFC 3261 7.3.1: a line starting with whitespace continues the previous one.
            if not items:
                raise SipParseError("SIP header is malformed")
            name, value = items[-1]
            items[-1] = (name, f"{value} {line.strip()}".strip())
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        key = _wire_key(name)
        if not colon or key is None:
            raise SipParseError("SIP header is malformed")
        items.append((name, value.strip()))
        keys.append(key)
        if len(items) > limits.max_headers:
            raise SipParseError("SIP message has too many headers", 513)
    return Headers._trusted(items, keys)


def _parse_start_line(line: str) -> SipRequest | SipResponse:
    if line.startswith("SIP/"):
        version, sp1, rest = line.partition(" ")
        code, _, reason = rest.partition(" ")
        if version.upper() != SIP_VERSION:
            raise SipParseError("SIP version is not supported", 505)
        if len(code) != 3 or not _digits(code) or not 100 <= int(code) <= 699:
            raise SipParseError("SIP status code is invalid")
        return SipResponse(int(code), reason, version=version)
    parts = line.split(" ")
    # RFC 3261 7.1: Method SP Request-URI SP SIP-Version, single spaces, nothing after.
    if len(parts) != 3 or not all(parts):
        raise SipParseError("SIP request line is malformed")
    method, uri, version = parts
    if not _TOKEN.match(method):
        raise SipParseError("SIP method is invalid")
    if not version.upper().startswith("SIP/"):
        raise SipParseError("SIP request line is malformed")
    if version.upper() != SIP_VERSION:
        raise SipParseError("SIP version is not supported", 505)
    req_uri = _shared_uri(uri)
    if req_uri.is_sip and req_uri.headers:
        raise SipParseError("SIP Request-URI has headers")  # RFC 3261 19.1.5
    return SipRequest(method, uri, version=version)


_MANDATORY = tuple((name.lower(), name) for name in ("To", "From", "Call-ID", "CSeq", "Via"))
_SINGLE = tuple(
    (name.lower(), name)
    for name in ("To", "From", "Call-ID", "CSeq", "Content-Length", "Max-Forwards", "Content-Type")
)


def _check_mandatory(msg: SipRequest | SipResponse) -> None:
    """RFC 3261 8.1.1 / 8.2.1: To, From, Call-ID, CSeq and Via must be present and sane."""
    h = msg.headers
    keys = h._keys
    for key, name in _MANDATORY:
        if key not in keys:
            raise SipParseError(f"SIP message has no {name}")
    if len(set(keys)) != len(keys):  # repeated lines (several Via, say): check the single-valued ones
        for key, name in _SINGLE:
            if keys.count(key) > 1:
                raise SipParseError(f"SIP message has more than one {name}")
    _, method = msg.cseq
    msg.from_tag  # noqa: B018 - parse to validate (and memoise)
    msg.to_tag  # noqa: B018
    msg.first_via  # noqa: B018
    if isinstance(msg, SipRequest):
        msg.max_forwards  # noqa: B018
        # RFC 3261 8.2.1 / RFC 4475 3.1.2.13: CSeq method must match the request method.
        if method != msg.method and not (msg.method == "ACK" and method == "ACK"):
            raise SipParseError("SIP CSeq method does not match the request")
    content_length(msg.headers)


def content_length(headers: Headers) -> int | None:
    """Content-Length as an int, or None when absent."""
    memo = headers._memo
    if "content-length" in memo:
        return memo["content-length"]  # type: ignore[return-value]
    v = headers.get("Content-Length")
    if v is None:
        return None
    if not _digits(v) or len(v) > 10:
        raise SipParseError("SIP Content-Length is invalid")
    memo["content-length"] = n = int(v)
    return n


def parse_message(data: bytes, limits: Limits = DEFAULT_LIMITS) -> SipRequest | SipResponse:
    """Parse one UDP datagram holding exactly one message (RFC 3261 18.3 for the body length)."""
    if len(data) > limits.max_message_bytes:
        raise SipParseError("SIP message is too large", 513)
    data = data.lstrip(b"\r\n")  # RFC 3261 7.5: ignore CRLFs before the start line
    end = data.find(b"\r\n\r\n")
    if end >= 0 and b"\n\n" not in data[:end] and b"\n\r\n" not in data[: end + 2]:
        head, rest = data[:end], data[end + 4 :]  # the usual CRLF CRLF, and no earlier bare-LF end
    else:
        m = _HEADER_END.search(data)
        if m is None:
            # A message with no body may end without the blank line only if nothing follows.
            head = data.rstrip(b"\r\n")
            if not head:
                raise SipParseError("SIP message is empty")
            raise SipParseError("SIP message has no end of headers")
        head, rest = data[: m.start()], data[m.end() :]
    msg = parse_head(head, limits)
    length = content_length(msg.headers)
    if length is None:
        body = rest
    elif length > len(rest):
        raise SipParseError("SIP body is shorter than Content-Length")
    else:
        body = rest[:length]  # RFC 3261 18.3: octets beyond Content-Length are discarded
    if len(body) > limits.max_body_bytes:
        raise SipParseError("SIP body is too large", 413)
    msg.body = bytes(body)
    return msg


_RESPONSE_COPIED = frozenset(("via", "from", "to", "call-id", "cseq"))


def build_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    body: bytes = b"",
    extra: Iterable[tuple[str, str]] = (),
) -> SipResponse:
    """A response to `request` per RFC 3261 8.2.6.2: Via, From, To, Call-ID, CSeq copied."""
    items: list[tuple[str, str]] = []
    keys: list[str] = []
    tag_added = False
    for key, (name, value) in zip(request.headers._keys, request.headers._items):
        if key in _RESPONSE_COPIED or (key == "timestamp" and status == 100):
            if key == "to" and to_tag is not None and status != 100 and request.to_tag is None:
                # RFC 3261 8.2.6.2: the UAS adds its tag; after an addr-spec or name-addr alike,
                # a trailing ;tag= is a header parameter.
                value = f"{value};tag={to_tag}"
                tag_added = True
            items.append((name, value))
            keys.append(key)
    for name, value in extra:
        items.append((name, value))
        keys.append(_key(name))
    resp = SipResponse(
        status, reason if reason is not None else REASON_PHRASES.get(status, ""), Headers._trusted(items, keys), body
    )
    # The copied headers parse as they did in the request: share the request's parses.
    src = request.headers._memo
    memo = resp.headers._memo
    for k in ("via", "from", "call-id", "cseq"):
        if k in src:
            memo[k] = src[k]
    if not tag_added and "to" in src:
        memo["to"] = src["to"]
    return resp
