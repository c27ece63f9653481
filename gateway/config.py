"""TOML configuration with secure embedded defaults (DESIGN.md contract 2).

Every setting has a TOML key; command-line flags override keys. A wrong value is
refused with one line naming the file, the line and the key, so that `tonewall run`
can print it and exit non-zero. Secrets never live in the config text: only paths
to files (which must not be world-readable) or names of environment variables.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import stat
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

DEFAULT_DATA_DIR = "./tonewall-data"


class ConfigError(ValueError):
    """A config value was refused; str() is the one-line message for the operator."""

    def __init__(self, source: str, line: int | None, key: str, reason: str) -> None:
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {key}: {reason}")
        self.source = source
        self.line = line
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class HostPort:
    """A listen or connect address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class NextHop:
    """Where calls go: a SIP URI reduced to what the transport needs."""

    uri: str
    """The URI as configured."""
    transport: str
    """"udp", "tcp" or "tls" (RFC 3261 19.1.1: sips: means TLS)."""
    host: str
    port: int
    user: str | None = None


@dataclass(frozen=True)
class SipConfig:
    listen: HostPort = HostPort("127.0.0.1", 5060)
    """UDP and TCP on the same address."""
    tls_listen: HostPort | None = None
    """TLS listener; off unless set."""
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_verify_peer: bool = True
    """Outbound TLS verifies the next hop's certificate."""
    tls_ca_file: str | None = None
    """CA bundle for outbound TLS; system store when unset."""
    next_hop: NextHop | None = None
    """None: INVITEs are refused because there is nowhere to route them."""
    public_address: str | None = None
    """Address written into Via/Contact when it differs from the listen host."""
    session_timeout_s: float = 4 * 3600.0
    media_timeout_s: float = 60.0
    max_message_bytes: int = 65535
    dialog_source_check: bool = True
    """In-dialog requests only from the host the leg's dialog was set up with (481 otherwise);
    turn off for peers whose in-dialog requests come from another address (multi-node SBCs)."""


@dataclass(frozen=True)
class MediaConfig:
    rtp_ports: tuple[int, int] = (20000, 29999)
    address: str = "127.0.0.1"
    strict_source: bool = False
    srtp: str = "optional"
    accelerator: str = "auto"
    """The relay's C path: "auto" uses it when it was built, "on" refuses to start without it, "off" never."""


@dataclass(frozen=True)
class ApiConfig:
    listen: HostPort = HostPort("127.0.0.1", 8443)
    tls_cert_file: str | None = None
    """None: a development certificate signed by DATA_DIR/tls/ca.pem is generated."""
    tls_key_file: str | None = None
    jwt_public_key_file: str | None = None
    jwks_file: str | None = None
    audience: str = "tonewall-api"


@dataclass(frozen=True)
class MetricsConfig:
    listen: HostPort = HostPort("127.0.0.1", 9464)


@dataclass(frozen=True)
class CaptureConfig:
    mask: str = "capture"
    mask_mode: str = "flat"
    fields: tuple[str, ...] = ("pan", "expiry", "cvv")
    inter_digit_timeout_s: float = 10.0
    total_timeout_s: float = 120.0
    max_attempts: int = 3


@dataclass(frozen=True)
class ProcessorConfig:
    kind: str = "vault"
    url: str | None = None
    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    api_key_file: str | None = None
    api_key_env: str | None = None
    timeout_s: float = 10.0
    retries: int = 2


@dataclass(frozen=True)
class VaultConfig:
    listen: HostPort = HostPort("127.0.0.1", 0)
    """The embedded vault listens on loopback; port 0 picks a free port (only the gateway calls it)."""
    kek_file: str | None = None
    """None with kek_env unset: a key is generated under DATA_DIR/vault."""
    kek_env: str | None = None


@dataclass(frozen=True)
class AuditConfig:
    path: str | None = None
    """None: DATA_DIR/audit/audit.jsonl (its HMAC key beside it, audit.key)."""


@dataclass(frozen=True)
class RouteConfig:
    """Per-route policy, chosen by the Request-URI user prefix (longest prefix wins)."""

    match_user_prefix: str
    next_hop: NextHop | None = None
    mask: str | None = None


@dataclass(frozen=True)
class Config:
    data_dir: str = DEFAULT_DATA_DIR
    sip: SipConfig = field(default_factory=SipConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    vault: VaultConfig = field(default_factory=VaultConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    routes: tuple[RouteConfig, ...] = ()
    source: str = "<defaults>"
    """Where the config came from, for messages."""

    def route_for(self, user: str | None) -> RouteConfig | None:
        """The route whose prefix is the longest match for a Request-URI user."""
        best: RouteConfig | None = None
        for route in self.routes:
            if user is not None and user.startswith(route.match_user_prefix):
                if best is None or len(route.match_user_prefix) > len(best.match_user_prefix):
                    best = route
        return best

    def audit_path(self) -> Path:
        return Path(self.audit.path) if self.audit.path else Path(self.data_dir) / "audit" / "audit.jsonl"


# ---- value parsers: each takes the raw value and raises ValueError with a short reason


def parse_host_port(value: Any) -> HostPort:
    """HOST:PORT or [IPv6]:PORT."""
    if not isinstance(value, str):
        raise ValueError("expected a string HOST:PORT")
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\s\[\]]+):(\d{1,5})", value.strip())
    if not m:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range 1-65535")
    if m.group(1):
        ipaddress.IPv6Address(host)
    return HostPort(host, port)


_SIP_URI = re.compile(
    r"(?P<scheme>sips?):(?:(?P<user>[^@;:]+)(?P<password>:[^@;]*)?@)?"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(?::(?P<port>\d{1,5}))?(?P<params>(?:;[^;?]+)*)",
    re.IGNORECASE,
)


def parse_next_hop(value: Any) -> NextHop:
    """sip:/sips: URI; RFC 3261 19.1.1 and 26.2: sips: and ;transport=tls mean TLS."""
    if not isinstance(value, str):
        raise ValueError("expected a SIP URI string")
    m = _SIP_URI.fullmatch(value.strip())
    if not m:
        # The userinfo part may hold a password: only echo a value that has none.
        shown = "" if "@" in value else f", got {value!r}"
        raise ValueError(f"expected a SIP URI like sip:host:port;transport=tcp{shown}")
    if m.group("password"):
        # RFC 3261 19.1.1: passwords in the userinfo are NOT RECOMMENDED; secrets never live in config text.
        raise ValueError("a password in the SIP URI is not allowed")
    scheme = m.group("scheme").lower()
    transport = "tls" if scheme == "sips" else "udp"
    for param in filter(None, m.group("params").split(";")):
        name, _, pvalue = param.partition("=")
        if name.lower() == "transport":
            pvalue = pvalue.lower()
            if pvalue not in ("udp", "tcp", "tls"):
                raise ValueError(f"unsupported transport {pvalue!r} (udp, tcp, tls)")
            if scheme == "sips" and pvalue == "udp":
                raise ValueError("sips: cannot use transport=udp")
            transport = pvalue
    port = int(m.group("port")) if m.group("port") else (5061 if transport == "tls" else 5060)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range 1-65535")
    return NextHop(uri=value.strip(), transport=transport, host=m.group("host").strip("[]"),
                   port=port, user=m.group("user"))


def parse_port_range(value: Any) -> tuple[int, int]:
    """LOW-HIGH, even LOW so RTP/RTCP pairs line up (RFC 3550 11), at least one pair."""
    if not isinstance(value, str):
        raise ValueError("expected a string LOW-HIGH")
    m = re.fullmatch(r"(\d{1,5})-(\d{1,5})", value.strip())
    if not m:
        raise ValueError(f"expected LOW-HIGH, got {value!r}")
    low, high = int(m.group(1)), int(m.group(2))
    if not (1024 <= low < high <= 65535):
        raise ValueError("range must satisfy 1024 <= LOW < HIGH <= 65535")
    if high - low + 1 < 4:
        raise ValueError("range must hold at least two RTP/RTCP port pairs")
    return low, high


def _ip(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected an IP address string")
    return str(ipaddress.ip_address(value.strip()))


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _positive_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError("expected a positive finite number")
    return float(value)


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected an integer {low}-{high}")
        return value
    return parse


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(repr(c) for c in choices)}")
        return value
    return parse


def _fields(value: Any) -> tuple[str, ...]:
    allowed = ("pan", "expiry", "cvv")
    if not isinstance(value, list) or not value or any(v not in allowed for v in value):
        raise ValueError("expected a non-empty list of 'pan', 'expiry', 'cvv'")
    if "pan" not in value or len(set(value)) != len(value):
        raise ValueError("fields must include 'pan' once and no duplicates")
    return tuple(value)


def _env_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError("expected an environment variable name")
    return value


_SECRET_PARAM = re.compile(r"(key|token|secret|passw|auth|sig|credential)", re.IGNORECASE)
"""Query parameter names that carry a credential (api_key=, access_token=, sig=...)."""


def _http_url(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"https?://\S+", value):
        raise ValueError("expected an http(s) URL")
    if "@" in value.split("://", 1)[1].split("/", 1)[0]:
        raise ValueError("credentials in the URL are not allowed: use api_key_file or api_key_env")
    query = urllib.parse.urlsplit(value).query
    if any(_SECRET_PARAM.search(name) for name, _ in urllib.parse.parse_qsl(query, keep_blank_values=True)):
        raise ValueError("a secret in the URL's query is not allowed: use api_key_file or api_key_env")
    return value


def check_secret_file(path: str) -> None:
    """DESIGN.md card data rules: secret files exist and are not world-readable.

    Messages never repeat the value: an operator who pasted the secret itself where its
    path belongs must not see it echoed into a terminal, a journal or a CI log.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ValueError(f"cannot read the file: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ValueError("the file is not a regular file")
    if mode & stat.S_IROTH:
        raise ValueError("the file is world-readable: chmod o-r it")


def _readable_file(value: Any) -> str:
    path = _str(value)
    if not os.path.isfile(path):
        raise ValueError(f"no such file: {path}")
    return path


def _secret_file(value: Any) -> str:
    path = _str(value)
    check_secret_file(path)
    return path


def _owner_only_file(value: Any) -> str:
    """The KEK and processor key files: their loaders refuse group access too (a TLS key may be
    0640 for an ssl-cert group; these may not), so the config refuses it first, with its line."""
    path = _secret_file(value)
    if os.stat(path).st_mode & 0o077:
        raise ValueError("the file is readable by group or others: chmod 600 it")
    return path


# ---- schema: section -> key -> (dataclass field, parser)

_Schema = dict[str, tuple[str, Callable[[Any], Any]]]

_SCHEMA: dict[str, _Schema] = {
    "": {"data_dir": ("data_dir", _str)},
    "sip": {
        "listen": ("listen", parse_host_port),
        "tls_listen": ("tls_listen", parse_host_port),
        "tls_cert_file": ("tls_cert_file", _readable_file),
        "tls_key_file": ("tls_key_file", _secret_file),
        "tls_verify_peer": ("tls_verify_peer", _bool),
        "tls_ca_file": ("tls_ca_file", _readable_file),
        "next_hop": ("next_hop", parse_next_hop),
        "public_address": ("public_address", _ip),
        "session_timeout_s": ("session_timeout_s", _positive_float),
        "media_timeout_s": ("media_timeout_s", _positive_float),
        "max_message_bytes": ("max_message_bytes", _int_range(1024, 1 << 20)),
        "dialog_source_check": ("dialog_source_check", _bool),
    },
    "media": {
        "rtp_ports": ("rtp_ports", parse_port_range),
        "address": ("address", _ip),
        "strict_source": ("strict_source", _bool),
        "srtp": ("srtp", _choice("optional", "off")),
        "accelerator": ("accelerator", _choice("auto", "on", "off")),
    },
    "api": {
        "listen": ("listen", parse_host_port),
        "tls_cert_file": ("tls_cert_file", _readable_file),
        "tls_key_file": ("tls_key_file", _secret_file),
        "jwt_public_key_file": ("jwt_public_key_file", _readable_file),
        "jwks_file": ("jwks_file", _readable_file),
        "audience": ("audience", _str),
    },
    "metrics": {"listen": ("listen", parse_host_port)},
    "capture": {
        "mask": ("mask", _choice("capture", "always")),
        "mask_mode": ("mask_mode", _choice("flat", "silence", "comfort-noise")),
        "fields": ("fields", _fields),
        "inter_digit_timeout_s": ("inter_digit_timeout_s", _positive_float),
        "total_timeout_s": ("total_timeout_s", _positive_float),
        "max_attempts": ("max_attempts", _int_range(1, 10)),
    },
    "processor": {
        "kind": ("kind", _choice("vault", "https-json", "stripe")),
        "url": ("url", _http_url),
        "ca_file": ("ca_file", _readable_file),
        "client_cert_file": ("client_cert_file", _readable_file),
        "client_key_file": ("client_key_file", _secret_file),
        "api_key_file": ("api_key_file", _owner_only_file),
        "api_key_env": ("api_key_env", _env_name),
        "timeout_s": ("timeout_s", _positive_float),
        "retries": ("retries", _int_range(0, 10)),
    },
    "vault": {
        "listen": ("listen", parse_host_port),
        "kek_file": ("kek_file", _owner_only_file),
        "kek_env": ("kek_env", _env_name),
    },
    "audit": {"path": ("path", _str)},
    "routes": {
        "match_user_prefix": ("match_user_prefix", lambda v: v if isinstance(v, str) else _str(v)),
        "next_hop": ("next_hop", parse_next_hop),
        "mask": ("mask", _choice("capture", "always")),
    },
}

_SECTION_TYPES: dict[str, type] = {
    "sip": SipConfig, "media": MediaConfig, "api": ApiConfig, "metrics": MetricsConfig,
    "capture": CaptureConfig, "processor": ProcessorConfig, "vault": VaultConfig,
    "audit": AuditConfig,
}

_SECRET_WORDS = re.compile(r"(^|_)(password|secret|api_key|kek|private_key|token)$")

FLAG_KEYS: dict[str, str] = {
    "--sip-listen": "sip.listen",
    "--next-hop": "sip.next_hop",
    "--api-listen": "api.listen",
    "--metrics-listen": "metrics.listen",
    "--rtp-ports": "media.rtp_ports",
    "--data-dir": "data_dir",
}
"""DESIGN.md contract 2: the flags of `tonewall run` and the keys they override."""


def _toml_path(raw: str) -> str:
    """A TOML key path as dotted text: `sip . "listen"` -> `sip.listen`."""
    return ".".join(part.strip().strip('"\'') for part in raw.split("."))


def find_key_line(text: str, section: str, key: str, index: int | None = None) -> int | None:
    """1-based line of `key` inside `[section]` (or the index-th `[[section]]`) in TOML text.

    A line scanner, not a parser: it is only used to point at an error that tomllib
    already accepted syntactically. It also finds keys written as dotted keys
    (`sip.listen = ...`) or sub-tables (`[sip.extra]`); a key inside an inline table
    (`sip = { listen = ... }`) points at the line that opens it, and a key that is
    not in the text points at its section's header.
    """
    target = f"{section}.{key}" if section and key else section or key
    current, seen = "", -1
    fallback = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        m = re.match(r"^\[\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]", line) or re.match(
            r"^\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]", line)
        if m:
            current = _toml_path(m.group(1))
            if line.startswith("[["):
                seen = seen + 1 if current == section else seen
            in_scope = index is None or (current == section and seen == index)
            if current == target and index is None:
                return lineno
            if current == section and in_scope and fallback is None:
                fallback = lineno
            continue
        if index is not None and (current != section or seen != index):
            continue
        m = re.match(r"^((?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_\-]+)(?:\s*\.\s*(?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_\-]+))*)\s*=",
                     line)
        if not m:
            continue
        full = _toml_path(f"{current}.{m.group(1)}" if current else m.group(1))
        if full == target:
            return lineno
        if fallback is None and section and (full == section or target.startswith(full + ".")):
            fallback = lineno  # an inline table (or a dotted prefix) that holds the key
    return fallback


def _build_section(cls: type, values: dict[str, Any], fail: Callable[[str, str], ConfigError],
                   schema: _Schema) -> Any:
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in schema:
            if _SECRET_WORDS.search(key):
                raise fail(key, "secrets are not allowed in the config text; use *_file or *_env")
            raise fail(key, "unknown key")
        attr, parse = schema[key]
        try:
            kwargs[attr] = parse(value)
        except ValueError as exc:
            raise fail(key, str(exc) or "invalid value") from None
    return cls(**kwargs)


def load_config(path: str | os.PathLike[str] | None = None,
                overrides: dict[str, str] | None = None,
                *, env: dict[str, str] | None = None) -> Config:
    """Embedded defaults, then the TOML file (if any), then flag overrides ("sip.listen": value).

    Raises ConfigError with a one-line message naming the file, line and key at fault.
    """
    env = os.environ if env is None else env
    source = str(path) if path is not None else "<defaults>"
    text = ""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(source, None, "file", f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            m = re.search(r"at line (\d+)", str(exc))
            line = int(m.group(1)) if m else None
            raise ConfigError(source, line, "syntax", re.sub(r"\s*\(at line.*\)$", "", str(exc))) from None

    def failer(section: str, index: int | None = None) -> Callable[[str, str], ConfigError]:
        def fail(key: str, reason: str) -> ConfigError:
            dotted = f"{section}.{key}" if section else key
            if index is not None:
                dotted = f"{section}[{index}].{key}"
            return ConfigError(source, find_key_line(text, section, key, index), dotted, reason)
        return fail

    # Flags land in the same tree as the file, but errors name the flag.
    flag_for = {v: k for k, v in FLAG_KEYS.items()}
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.rpartition(".")
        schema = _SCHEMA.get(section, {})
        if key not in schema:
            raise ConfigError(flag_for.get(dotted, dotted), None, dotted, "unknown key")
        try:
            schema[key][1](value)
        except ValueError as exc:
            raise ConfigError("command line", None, flag_for.get(dotted, dotted), str(exc)) from None
        (data.setdefault(section, {}) if section else data)[key] = value

    top: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTION_TYPES or key == "routes":
            sections[key] = value
        else:
            top[key] = value
    for key, value in list(top.items()):
        if isinstance(value, dict):
            raise ConfigError(source, find_key_line(text, key, ""), key, "unknown section")
    base = _build_section(dict, top, failer(""), _SCHEMA[""])

    built: dict[str, Any] = {}
    for name, cls in _SECTION_TYPES.items():
        values = sections.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(source, find_key_line(text, "", name), name, "expected a [table]")
        built[name] = _build_section(cls, values, failer(name), _SCHEMA[name])

    routes = []
    raw_routes = sections.get("routes", [])
    if not isinstance(raw_routes, list):
        raise ConfigError(source, find_key_line(text, "", "routes"), "routes", "expected [[routes]] tables")
    for i, values in enumerate(raw_routes):
        fail = failer("routes", i)
        if not isinstance(values, dict):
            raise ConfigError(source, find_key_line(text, "", "routes"), f"routes[{i}]", "expected a [[routes]] table")
        if "match_user_prefix" not in values:
            raise ConfigError(source, find_key_line(text, "routes", "", i), f"routes[{i}]",
                              "match_user_prefix is required")
        routes.append(_build_section(RouteConfig, values, fail, _SCHEMA["routes"]))

    config = Config(data_dir=base.get("data_dir", DEFAULT_DATA_DIR), routes=tuple(routes),
                    source=source, **built)
    _check_cross(config, text, source, env)
    _check_ipv4_sip(config, text, source, overrides or {})
    _check_listeners(config, text, source, overrides or {})
    return config


def _check_listeners(config: Config, text: str, source: str, overrides: dict[str, str]) -> None:
    """Two TCP listeners on one address would fail at bind time: name both keys at start instead."""
    flag_for = {v: k for k, v in FLAG_KEYS.items()}
    listeners = [("sip.listen", config.sip.listen), ("sip.tls_listen", config.sip.tls_listen),
                 ("api.listen", config.api.listen), ("metrics.listen", config.metrics.listen)]
    seen: list[tuple[str, HostPort]] = []
    for dotted, hp in listeners:
        if hp is None:
            continue
        for other, ohp in seen:
            wildcard = {"0.0.0.0", "::"} & {hp.host, ohp.host}
            if hp.port == ohp.port and (hp.host == ohp.host or wildcard):
                if other in overrides and dotted not in overrides:  # blame what the operator just typed
                    dotted, other, hp, ohp = other, dotted, ohp, hp

                def name(key: str) -> str:
                    return flag_for[key] if key in overrides else key
                reason = f"same address as {name(other)} ({ohp})"
                if dotted in overrides:
                    raise ConfigError("command line", None, flag_for.get(dotted, dotted), reason)
                section, _, key = dotted.partition(".")
                raise ConfigError(source, find_key_line(text, section, key), dotted, reason)
        seen.append((dotted, hp))


IPV6_REASON = "IPv6 is not supported for SIP and media yet (calls would fail): use an IPv4 address"


def _check_ipv4_sip(config: Config, text: str, source: str, overrides: dict[str, str]) -> None:
    """Refuse IPv6 where the SIP and media path would take it: better at start than a silent failed call."""
    flag_for = {v: k for k, v in FLAG_KEYS.items()}
    sip = config.sip
    hosts = [("sip.listen", sip.listen.host), ("sip.tls_listen", sip.tls_listen.host if sip.tls_listen else None),
             ("sip.next_hop", sip.next_hop.host if sip.next_hop else None), ("sip.public_address", sip.public_address),
             ("media.address", config.media.address)]
    hosts += [(f"routes[{i}].next_hop", r.next_hop.host if r.next_hop else None) for i, r in enumerate(config.routes)]
    for dotted, host in hosts:
        if host is None or ":" not in host:
            continue
        if dotted in overrides:
            raise ConfigError("command line", None, flag_for.get(dotted, dotted), IPV6_REASON)
        section, _, key = dotted.partition(".")
        index = None
        if section.startswith("routes["):
            index, section = int(section[7:-1]), "routes"
        raise ConfigError(source, find_key_line(text, section, key, index), dotted, IPV6_REASON)


def _check_cross(config: Config, text: str, source: str, env: dict[str, str]) -> None:
    """Rules that involve more than one key."""
    def fail(section: str, key: str, reason: str) -> ConfigError:
        return ConfigError(source, find_key_line(text, section, key), f"{section}.{key}", reason)

    sip = config.sip
    if sip.tls_listen is not None and not (sip.tls_cert_file and sip.tls_key_file):
        raise fail("sip", "tls_listen", "needs sip.tls_cert_file and sip.tls_key_file")
    if bool(sip.tls_cert_file) != bool(sip.tls_key_file):
        raise fail("sip", "tls_cert_file" if sip.tls_cert_file else "tls_key_file",
                   "tls_cert_file and tls_key_file go together")
    if bool(config.api.tls_cert_file) != bool(config.api.tls_key_file):
        raise fail("api", "tls_cert_file" if config.api.tls_cert_file else "tls_key_file",
                   "tls_cert_file and tls_key_file go together")
    if config.api.jwt_public_key_file and config.api.jwks_file:
        raise fail("api", "jwks_file", "set jwt_public_key_file or jwks_file, not both")
    low, high = config.media.rtp_ports
    if low % 2:
        raise fail("media", "rtp_ports", "LOW must be even (RTP on even ports, RFC 3550 11)")
    proc = config.processor
    if proc.kind == "https-json" and not proc.url:  # stripe defaults to api.stripe.com, vault to the embedded one
        raise fail("processor", "kind", f"kind {proc.kind!r} needs processor.url")
    if proc.kind == "stripe" and not (proc.api_key_file or proc.api_key_env or STRIPE_KEY_ENV in env):
        raise fail("processor", "kind", f"kind 'stripe' needs its secret key: api_key_file, api_key_env "
                                        f"or {STRIPE_KEY_ENV} in the environment")
    if proc.url and not proc.url.startswith("https://"):
        raise fail("processor", "url", "card data goes over TLS only: use https://")
    if proc.api_key_file and proc.api_key_env:
        raise fail("processor", "api_key_env", "set api_key_file or api_key_env, not both")
    if proc.api_key_env:
        _check_env_name(fail, "processor", "api_key_env", proc.api_key_env, env)
    if bool(proc.client_cert_file) != bool(proc.client_key_file):
        raise fail("processor", "client_cert_file" if proc.client_cert_file else "client_key_file",
                   "client_cert_file and client_key_file go together")
    vault = config.vault
    if vault.kek_file and vault.kek_env:
        raise fail("vault", "kek_env", "set kek_file or kek_env, not both")
    if vault.kek_env:
        _check_env_name(fail, "vault", "kek_env", vault.kek_env, env)


STRIPE_KEY_ENV = "TONEWALL_STRIPE_KEY"
"""Where the stripe adapter's secret key comes from when neither api_key_file nor api_key_env is set."""


def _check_env_name(fail: Callable[..., ConfigError], section: str, key: str, name: str,
                    env: Mapping[str, str]) -> None:
    """A `*_env` key names a variable that must be set. The value is never repeated: it may be the
    secret itself pasted in (a name can look like a key, AKIA...), and the file and line say which."""
    if name not in env:
        raise fail(section, key, "the environment variable it names is not set (a secret pasted "
                                 "here instead of a variable name? the value is not shown)")


def replace(config: Config, **changes: Any) -> Config:
    """A copy with top-level fields replaced (tests and the demo use it)."""
    return dataclasses.replace(config, **changes)
