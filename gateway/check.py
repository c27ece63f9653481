"""`tonewall check`: evidence that a deployment keeps card data out of scope (DESIGN.md "Card data rules").

Each check is named and ends PASS, WARN or FAIL with a one-line reason; the exit
status is 0 when nothing FAILs and 1 otherwise. The check reads; it never writes
to the data dir (no key, certificate or audit file is created by looking).

Public API:

    Status                                   PASS | WARN | FAIL
    CheckResult(name, status, detail)
    CheckSettings(config_path=None, data_dir=None, kek_max_age_days=365.0, ...)
    run_checks(settings) -> list[CheckResult]
    scan_bytes(data) -> int                  Luhn-valid 13-19 digit runs in a buffer (counted, never returned)
    scan_tree(root) -> TreeScan              the same over every regular file under a folder
    render_text(report) / render_json(report) -> str
    main(argv) -> int                        `tonewall check [--config FILE] [--data-dir DIR] [--json]`

Whatever is printed passes through `redact()`: no run of 7 or more digits from
any file, path or message ever reaches the report.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from gateway import audit as audit_mod
from gateway import pki
from gateway.config import DEFAULT_DATA_DIR, Config, ConfigError, load_config

DEFAULT_KEK_MAX_AGE_DAYS = 365.0
DEFAULT_HARDEN = "gateway.app:disable_core_dumps"
PROBE_TIMEOUT_S = 30.0
CERT_EXPIRY_WARN_DAYS = 30
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

SECRET_KEYS = (
    ("sip", "tls_key_file"),
    ("api", "tls_key_file"),
    ("processor", "client_key_file"),
    ("processor", "api_key_file"),
    ("vault", "kek_file"),
)
"""Config keys that name files holding secrets: readable by the service user only."""
TRUST_KEYS = (
    ("sip", "tls_cert_file"), ("sip", "tls_ca_file"),
    ("api", "tls_cert_file"), ("api", "jwt_public_key_file"), ("api", "jwks_file"),
    ("processor", "ca_file"), ("processor", "client_cert_file"),
)
"""Config keys that name public files whose integrity matters: nobody else may write them."""


class Status(Enum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class CheckResult:
    """One line of the report."""

    name: str
    """Dotted, stable across releases: scripts key on it."""
    status: Status
    detail: str
    """One line for a person; never a secret or a card digit."""


@dataclass(frozen=True)
class CheckSettings:
    """What to check and the thresholds."""

    config_path: str | None = None
    data_dir: str | None = None
    """Overrides the config's data_dir (same as `tonewall run --data-dir`)."""
    kek_max_age_days: float = DEFAULT_KEK_MAX_AGE_DAYS
    env: Mapping[str, str] | None = None
    """Environment for `*_env` settings; os.environ when None."""
    now: float | None = None
    """Wall clock (epoch seconds) for ages; time.time() when None."""
    harden: str | None = DEFAULT_HARDEN
    """module:function the gateway calls at start to harden its process; None skips the probe."""


@dataclass
class Report:
    """All results plus what was checked."""

    config: str
    data_dir: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(r.status is Status.FAIL for r in self.results)

    def counts(self) -> dict[str, int]:
        return {s.value.lower(): sum(r.status is s for r in self.results) for s in Status}


_DIGIT_RUN = re.compile(r"\d{7,}")


def redact(text: str) -> str:
    """Replace every run of 7+ digits: the report never repeats a possible card number."""
    return _DIGIT_RUN.sub("[digits]", text)


def _pass(name: str, detail: str) -> CheckResult:
    return CheckResult(name, Status.PASS, redact(detail))


def _warn(name: str, detail: str) -> CheckResult:
    return CheckResult(name, Status.WARN, redact(detail))


def _fail(name: str, detail: str) -> CheckResult:
    return CheckResult(name, Status.FAIL, redact(detail))


# ---- card numbers in bytes

# A PAN is a maximal run of 13-19 ASCII digits (ISO/IEC 7812-1), or 3-5 groups split by one
# space or dash, the first of 4 digits (4-4-4-4, 4-6-5, 4-4-4-4-3); dates and addresses
# never fit either shape, so the regex (in C) rejects them before Python sees a match. Hex strings of 32+
# characters are hashes and keys (audit `prev`/`hmac`, KEKs): a digit stretch inside one
# is not a PAN, and at (10/16)^13 per position such stretches are common enough in an
# audit log to drown real findings (about 8 per 1,000 records).
# Leading [0-9] with no look-behind lets the regex engine skip to digits; a match that
# starts inside a longer run is dropped in Python instead.
_CANDIDATE = re.compile(rb"[0-9](?:[0-9]{12,}|[0-9]{3}(?P<sep>[ -])[0-9]{4,6}(?:(?P=sep)[0-9]{3,6}){1,3})(?![0-9])")
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_HEX_LETTERS = frozenset(b"abcdefABCDEF")
HEX_CONTEXT_CHARS = 32


def _luhn_ok(digits: bytes) -> bool:
    """ISO/IEC 7812-1 annex B check digit over ASCII digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ch - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _pan_like(digits: bytes) -> bool:
    # One repeated digit (padding, "0000...") passes Luhn but is never an issued PAN.
    return 13 <= len(digits) <= 19 and digits.count(digits[:1]) != len(digits) and _luhn_ok(digits)


def _inside_hex(data: Any, start: int, end: int) -> bool:
    """Whether data[start:end] (digits) sits in a 32+ character hex string that has a letter."""
    lo, hi, letter = start, end, False
    while lo > 0 and lo > start - HEX_CONTEXT_CHARS and data[lo - 1] in _HEX:
        lo -= 1
        letter = letter or data[lo] in _HEX_LETTERS
    while hi < len(data) and hi < end + HEX_CONTEXT_CHARS and data[hi] in _HEX:
        letter = letter or data[hi] in _HEX_LETTERS
        hi += 1
    return letter and hi - lo >= HEX_CONTEXT_CHARS


def _count_pans(data: Any, lo: int = 0, hi: int | None = None) -> int:
    """Card numbers whose first digit lies in data[lo:hi]; data around the range is context only."""
    hi = len(data) if hi is None else hi
    found, pos = 0, lo
    while True:
        m = _CANDIDATE.search(data, pos)
        if m is None or m.start() >= hi:
            return found
        start, end, sep = m.start(), m.end(), m.group("sep")
        mid_run = start > 0 and data[start - 1] in _DIGITS
        if sep is None:
            if not mid_run and _pan_like(m.group()) and not _inside_hex(data, start, end):
                found += 1
            pos = end
            continue
        groups = m.group().split(sep)
        pos = start + len(groups[0]) + 1  # a PAN may start at the next group of a longer sequence
        if mid_run:
            continue
        for k in range(len(groups), 2, -1):  # longest prefix of 3+ groups first
            if _pan_like(b"".join(groups[:k])):
                found += 1
                pos = start + sum(map(len, groups[:k])) + k - 1
                break


def scan_bytes(data: bytes | bytearray | memoryview) -> int:
    """How many Luhn-valid 13-19 digit runs `data` holds; the digits themselves never leave."""
    return _count_pans(data)


CHUNK_BYTES = 8 << 20
LEFT_CONTEXT_BYTES = 64
"""Look-behind kept from the previous chunk: the digit before a match and hex context."""
RIGHT_CONTEXT_BYTES = 256
"""Read past each chunk so a match that starts in it is seen whole (a grouped PAN is at most 32 bytes)."""


def scan_file(path: Path) -> int:
    """Card-number count of one file read in chunks (no mmap: a live SQLite WAL may shrink under us)."""
    found = 0
    with open(path, "rb") as handle:
        tail = b""
        data = handle.read(CHUNK_BYTES + RIGHT_CONTEXT_BYTES)
        while data:
            more = handle.read(CHUNK_BYTES)
            window = tail + data
            lo = len(tail)
            found += _count_pans(window, lo, lo + CHUNK_BYTES if more else len(window))
            if not more:
                break
            tail = data[CHUNK_BYTES - LEFT_CONTEXT_BYTES:CHUNK_BYTES]
            data = data[CHUNK_BYTES:] + more
    return found


@dataclass
class TreeScan:
    """Outcome of scanning a folder: file count, files with hits (relative names), unreadable ones."""

    files: int = 0
    bytes: int = 0
    hits: dict[str, int] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)


def scan_tree(root: Path, extra: Iterable[Path] = ()) -> TreeScan:
    """Scan every regular file under `root` (symlinks not followed; FIFOs and sockets skipped)."""
    result = TreeScan()

    def one(path: Path, name: str) -> None:
        try:
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                return
            count = scan_file(path)
        except (OSError, ValueError):
            result.unreadable.append(name)
            return
        result.files += 1
        result.bytes += info.st_size
        if count:
            result.hits[name] = count

    for folder, dirs, files in os.walk(root, onerror=lambda exc: result.unreadable.append(
            os.path.relpath(exc.filename, root) if exc.filename else "?")):
        dirs.sort()
        for file_name in sorted(files):
            path = Path(folder) / file_name
            one(path, str(path.relative_to(root)))
    for path in extra:
        one(path, str(path))
    return result


# ---- file modes


def _mode_text(mode: int) -> str:
    return f"{stat.S_IMODE(mode):04o}"


def _secret_mode_problem(mode: int) -> tuple[Status, str] | None:
    """Secret files: owner only. World or group write/world read fails; group read warns."""
    if mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP):
        return Status.FAIL, f"mode {_mode_text(mode)}"
    if mode & (stat.S_IRGRP | stat.S_IXGRP | stat.S_IXOTH):
        return Status.WARN, f"mode {_mode_text(mode)} (group-readable)"
    return None


def _trust_mode_problem(mode: int) -> tuple[Status, str] | None:
    """Public files that decide whom we trust: nobody but the owner may change them."""
    if mode & (stat.S_IWOTH | stat.S_IWGRP):
        return Status.FAIL, f"mode {_mode_text(mode)} (writable by others)"
    return None


def _worst(statuses: Iterable[Status]) -> Status:
    order = {Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2}
    return max(statuses, key=order.__getitem__, default=Status.PASS)


# ---- config


def _raw_toml(path: str | None) -> tuple[str, dict[str, Any]]:
    """The config's text and its TOML tree; the text alone when it does not parse (still scanned)."""
    if path is None:
        return "", {}
    try:
        text = Path(path).read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return "", {}
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return text, {}


def _leaves(data: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _leaves(value, f"{prefix}[{i}]")
    else:
        yield prefix, data


_SECRET_NAME = re.compile(r"(^|_)(password|passwd|passphrase|secret|api_key|apikey|kek|private_key|token|key)$")
_SECRET_VALUE = (
    (re.compile(r"PRIVATE KEY-----"), "a PEM private key"),
    (re.compile(r"\b[sr]k_(live|test)_[A-Za-z0-9]{8,}"), "a processor API key"),
    (re.compile(r"^[0-9A-Fa-f]{32,}$"), "a hex key"),
    (re.compile(r"^(?=.*[A-Z])(?=.*[a-z])(?=.*[0-9])[A-Za-z0-9+_=-]{40,}$"), "a base64 key"),
    (re.compile(r"://[^/@\s:]+:[^/@\s]+@"), "a password in a URL"),
)


def check_inline_secrets(text: str, data: dict[str, Any]) -> CheckResult:
    """DESIGN.md: secrets come from files or the environment, never from the config text."""
    name = "config.inline_secrets"
    found: list[str] = []
    for key, value in _leaves(data):
        last = key.rsplit(".", 1)[-1]
        if _SECRET_NAME.search(last) and not last.endswith(("_file", "_env")):
            found.append(f"{key} (secret-named key)")
            continue
        if isinstance(value, str):
            for pattern, what in _SECRET_VALUE:
                if pattern.search(value):
                    found.append(f"{key} ({what})")
                    break
    if "PRIVATE KEY-----" in text and not any("PEM" in f for f in found):
        found.append("a PEM private key in the text")
    if scan_bytes(text.encode("utf-8")):
        found.append("a card number in the text")
    if found:
        return _fail(name, "config text holds secrets: " + ", ".join(found) + "; use *_file or *_env")
    return _pass(name, "no secret values in the config text (only *_file paths and *_env names)")


def check_config_files(config_path: str | None, data: dict[str, Any]) -> CheckResult:
    """Secret files the config names are owner-only; trust files and the config itself are not writable by others."""
    name = "config.secret_files"
    problems: list[tuple[Status, str]] = []
    checked = 0
    targets: list[tuple[str, str, Callable[[int], tuple[Status, str] | None]]] = []
    for keys, judge in ((SECRET_KEYS, _secret_mode_problem), (TRUST_KEYS, _trust_mode_problem)):
        for section, key in keys:
            value = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
            if isinstance(value, str) and value:
                targets.append((f"{section}.{key}", value, judge))
    if config_path is not None:
        targets.append(("config file", config_path, _trust_mode_problem))
    for label, path, judge in targets:
        try:
            info = os.stat(path)
        except OSError:
            problems.append((Status.FAIL, f"{label}: missing or unreadable"))
            continue
        checked += 1
        problem = judge(info.st_mode)
        if problem is not None:
            problems.append((problem[0], f"{label}: {problem[1]}"))
    if not targets:
        return _pass(name, "no secret files configured (embedded defaults keep keys in the data dir)")
    if problems:
        return CheckResult(name, _worst(s for s, _ in problems),
                           redact("; ".join(text for _, text in problems) + ": chmod 600 secrets, go-w the rest"))
    return _pass(name, f"{checked} configured files: secrets owner-only, none writable by others")


# ---- TLS


def _is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def _tls_floor_ok(context: ssl.SSLContext) -> bool:
    """RFC 8996: TLS 1.0 and 1.1 are deprecated; MINIMUM_SUPPORTED (-2) also fails this."""
    return context.minimum_version >= ssl.TLSVersion.TLSv1_2


def _server_context(cert: Path | None, key: Path | None, *, mtls: bool = False) -> ssl.SSLContext:
    """The server context the gateway builds (pki); from a throwaway cert outside the data dir when none exists yet."""
    if cert is not None and key is not None:
        return pki.server_ssl_context(pki.CertFiles(cert, key))
    with tempfile.TemporaryDirectory() as tmp:
        files = pki.issue_server_cert(tmp, "probe")
        if mtls:
            return pki.server_ssl_context(files, client_ca=pki.tls_dir(tmp) / "ca.pem", require_client_cert=True)
        return pki.server_ssl_context(files)


def _cert_expiry_problem(path: Path, now: float) -> tuple[Status, str] | None:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return Status.FAIL, "certificate cannot be read"
    days = (cert.not_valid_after_utc.timestamp() - now) / 86400
    if days < 0:
        return Status.FAIL, "certificate has expired"
    if days < CERT_EXPIRY_WARN_DAYS:
        return Status.WARN, f"certificate expires in {days:.0f} days"
    return None


def check_api_tls(config: Config, data_dir: Path, now: float) -> CheckResult:
    """The agent API carries bearer tokens: HTTPS only, TLS 1.2+ (RFC 8996 deprecates 1.0/1.1)."""
    from gateway.api.server import require_modern_tls

    name = "tls.api"
    api = config.api
    cert = Path(api.tls_cert_file) if api.tls_cert_file else None
    key = Path(api.tls_key_file) if api.tls_key_file else None
    try:
        context = require_modern_tls(_server_context(cert, key))
        weak = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        weak.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        floor_enforced = _tls_floor_ok(require_modern_tls(weak))
    except (ssl.SSLError, OSError, ValueError, TypeError):
        return _fail(name, "the configured API certificate and key cannot be loaded together")
    if not (_tls_floor_ok(context) and floor_enforced):
        return _fail(name, "the API server context allows TLS older than 1.2")
    source = "configured certificate" if cert else "development certificate from DATA_DIR/tls"
    if cert is not None:
        problem = _cert_expiry_problem(cert, now)
        if problem is not None:
            return CheckResult(name, problem[0], f"HTTPS on {api.listen}: {problem[1]}")
    return _pass(name, f"HTTPS only on {api.listen}, TLS 1.2+ ({source})")


def check_vault_tls(config: Config, data_dir: Path) -> CheckResult:
    """The embedded vault takes PANs: TLS 1.2+ with client certificates required."""
    name = "tls.vault"
    if config.processor.kind != "vault":
        return _pass(name, f"embedded vault not used (processor.kind = {config.processor.kind})")
    folder = pki.tls_dir(data_dir)
    cert, key = folder / "vault.pem", folder / "vault-key.pem"
    ca = folder / "ca.pem"
    try:
        if cert.exists() and key.exists() and ca.exists():
            context = pki.server_ssl_context(pki.CertFiles(cert, key), client_ca=ca, require_client_cert=True)
        else:
            context = _server_context(None, None, mtls=True)
    except (ssl.SSLError, OSError, ValueError):
        return _fail(name, "the vault's certificate and key in DATA_DIR/tls cannot be loaded together")
    if not _tls_floor_ok(context):
        return _fail(name, "the vault's server context allows TLS older than 1.2")
    if context.verify_mode != ssl.CERT_REQUIRED:
        return _fail(name, "the vault does not require client certificates")
    return _pass(name, f"vault on {config.vault.listen}: TLS 1.2+, client certificate required (mTLS)")


def check_processor_tls(config: Config) -> CheckResult:
    """Card data to the processor: https:// only, server verified, TLS 1.2+."""
    name = "tls.processor"
    proc = config.processor
    if proc.kind == "vault":
        url = f"https://{config.vault.listen}"
    else:
        url = proc.url or ""
    if not url.startswith("https://"):
        return _fail(name, f"processor URL is not https:// ({proc.kind})")
    try:
        context = pki.client_ssl_context(proc.ca_file if proc.kind != "vault" else None)
    except (ssl.SSLError, OSError, ValueError):
        return _fail(name, "processor.ca_file cannot be loaded")
    if context.verify_mode != ssl.CERT_REQUIRED or not context.check_hostname:
        return _fail(name, "processor certificate verification is off")
    if not _tls_floor_ok(context):
        return _fail(name, "processor client context allows TLS older than 1.2")
    trust = "processor.ca_file" if proc.ca_file and proc.kind != "vault" else (
        "the development CA" if proc.kind == "vault" else "the system trust store")
    return _pass(name, f"{proc.kind} over https, TLS 1.2+, certificate and host name verified against {trust}")


def _client_certs(folder: Path, role: str) -> list[str]:
    """Names of client certificates in DATA_DIR/tls with OU=role and a key beside them."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    names = []
    for cert_path in sorted(folder.glob("*.pem")):
        if cert_path.name.endswith("-key.pem") or cert_path.name == "ca.pem":
            continue
        key_path = cert_path.with_name(cert_path.stem + "-key.pem")
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (OSError, ValueError, x509.ExtensionNotFound):
            continue
        units = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
        if ExtendedKeyUsageOID.CLIENT_AUTH in usage and role in units and key_path.exists():
            names.append(cert_path.name)
    return names


def check_processor_mtls(config: Config, data_dir: Path) -> CheckResult:
    """DESIGN.md: mutual TLS to the processor where it supports it (vault, https-json)."""
    name = "tls.processor_mtls"
    proc = config.processor
    if proc.kind == "https-json":
        if proc.client_cert_file and proc.client_key_file:
            return _pass(name, "https-json processor: client certificate and key configured")
        return _fail(name, "https-json processor without processor.client_cert_file/client_key_file (mTLS)")
    if proc.kind == "vault":
        found = _client_certs(pki.tls_dir(data_dir), "gateway")
        if found:
            return _pass(name, f"vault client certificate for role gateway present ({found[0]})")
        return _warn(name, "no client certificate with role gateway in DATA_DIR/tls yet (issued on first start)")
    return _pass(name, f"{proc.kind} authenticates with an API key (no mTLS offered)")


def check_sip_tls(config: Config) -> CheckResult:
    """SIP INFO DTMF carries keyed digits on the caller leg: TLS when the signalling leaves the host."""
    name = "tls.sip"
    sip = config.sip
    notes: list[str] = []
    status = Status.PASS
    if sip.tls_listen is not None:
        try:
            context = pki.server_ssl_context(pki.CertFiles(Path(sip.tls_cert_file or ""), Path(sip.tls_key_file or "")))
        except (ssl.SSLError, OSError, ValueError):
            return _fail(name, "sip.tls_cert_file and sip.tls_key_file cannot be loaded together")
        if not _tls_floor_ok(context):
            return _fail(name, "SIP TLS server context allows TLS older than 1.2")
        notes.append(f"SIP TLS on {sip.tls_listen}, TLS 1.2+")
    elif _is_loopback(sip.listen.host):
        notes.append(f"SIP on loopback only ({sip.listen})")
    else:
        status = Status.WARN
        notes.append(f"SIP on {sip.listen} without TLS (SIP INFO digits cross in clear; set sip.tls_listen)")
    hop = sip.next_hop
    if hop is not None and hop.transport == "tls" and not sip.tls_verify_peer:
        status = Status.WARN if status is Status.PASS else status
        notes.append("next hop over TLS with sip.tls_verify_peer = false")
    return CheckResult(name, status, redact("; ".join(notes)))


def check_dev_ca(config: Config, data_dir: Path, now: float) -> CheckResult:
    """The development CA is for loopback and tests; an exposed API needs a certificate clients already trust."""
    name = "tls.dev_ca"
    if config.api.tls_cert_file:
        return _pass(name, "API uses a configured certificate")
    if _is_loopback(config.api.listen.host):
        return _pass(name, "API uses the development CA (DATA_DIR/tls/ca.pem), loopback only")
    return _warn(name, f"API on {config.api.listen} uses the development CA: set api.tls_cert_file in production")


def check_dev_key(config: Config) -> CheckResult:
    """Tokens signed by the local development key can be minted by anyone who reads the data dir."""
    name = "api.dev_key"
    if config.api.jwks_file:
        return _pass(name, "API verifies bearer tokens against api.jwks_file (IdP)")
    if config.api.jwt_public_key_file:
        return _pass(name, "API verifies bearer tokens against api.jwt_public_key_file")
    return _warn(name, "API verifies tokens signed by the development key in DATA_DIR/keys: "
                       "production should set api.jwks_file to the IdP's JWKS")


# ---- data dir

_KEY_FILE = re.compile(r"(-key\.pem|\.key|\.keys)$")


def _private_file(rel: str) -> bool:
    """Files that must be owner-only: keys, the vault database and the audit log."""
    parts = rel.split(os.sep)
    base = parts[-1]
    return bool(_KEY_FILE.search(base)) or parts[0] in ("keys", "vault", "audit")


def check_data_dir_modes(data_dir: Path) -> list[CheckResult]:
    """The data dir and its folders 0700; key files, vault and audit files 0600."""
    dir_name, key_name = "data_dir.permissions", "data_dir.key_files"
    try:
        top = os.stat(data_dir)
    except OSError:
        return [_warn(dir_name, f"{data_dir} does not exist yet (created 0700 on first run)"),
                _pass(key_name, "no data dir, no key files")]
    if not stat.S_ISDIR(top.st_mode):
        # os.walk of a file yields nothing: without this a file would pass as an owner-only dir
        return [_fail(dir_name, f"{data_dir} is not a directory"), _pass(key_name, "no data dir, no key files")]
    dir_problems: list[tuple[Status, str]] = []
    key_problems: list[tuple[Status, str]] = []
    private = 0
    for folder, dirs, files in os.walk(data_dir):
        dirs.sort()
        rel_dir = os.path.relpath(folder, data_dir)
        mode = os.lstat(folder).st_mode
        label = "data dir" if rel_dir == "." else rel_dir + "/"
        if mode & (stat.S_IWOTH | stat.S_IWGRP):
            dir_problems.append((Status.FAIL, f"{label} mode {_mode_text(mode)} (writable by others)"))
        elif mode & (stat.S_IROTH | stat.S_IXOTH):
            # An open folder inside a private data dir is still unreachable: warn; open at the top fails.
            top_private = not top.st_mode & (stat.S_IROTH | stat.S_IXOTH)
            status = Status.WARN if rel_dir != "." and top_private else Status.FAIL
            dir_problems.append((status, f"{label} mode {_mode_text(mode)} (others may enter)"))
        elif mode & (stat.S_IRGRP | stat.S_IXGRP):
            dir_problems.append((Status.WARN, f"{label} mode {_mode_text(mode)} (group access)"))
        for file_name in sorted(files):
            path = Path(folder) / file_name
            rel = str(path.relative_to(data_dir))
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue
            if not stat.S_ISREG(mode):
                continue
            if _private_file(rel):
                private += 1
                problem = _secret_mode_problem(mode)
                if problem is None and mode & 0o077:
                    problem = (Status.FAIL, f"mode {_mode_text(mode)}")
            else:
                problem = _trust_mode_problem(mode)
            if problem is not None:
                key_problems.append((Status.FAIL if _private_file(rel) else problem[0], f"{rel} {problem[1]}"))
    out = []
    if dir_problems:
        out.append(CheckResult(dir_name, _worst(s for s, _ in dir_problems),
                               redact("; ".join(t for _, t in dir_problems[:5]) + ": chmod 700")))
    else:
        out.append(_pass(dir_name, f"{data_dir} and its folders are owner-only ({_mode_text(top.st_mode)})"))
    if key_problems:
        more = f" (+{len(key_problems) - 5} more)" if len(key_problems) > 5 else ""
        out.append(_fail(key_name, "; ".join(t for _, t in key_problems[:5]) + more + ": chmod 600"))
    else:
        out.append(_pass(key_name, f"{private} key, vault and audit files are owner-only (0600)"))
    return out


def check_card_data_at_rest(data_dir: Path, extra: Sequence[Path] = ()) -> CheckResult:
    """No file under the data dir holds a Luhn-valid 13-19 digit run (the vault keeps ciphertext only)."""
    name = "data_dir.card_numbers"
    if not data_dir.exists():
        return _pass(name, "no data dir yet: nothing stored")
    scan = scan_tree(data_dir, extra)
    if scan.hits:
        files = sorted(scan.hits)
        more = f" (+{len(files) - 5} more)" if len(files) > 5 else ""
        return _fail(name, f"card numbers found in {len(files)} of {scan.files} files: "
                           + ", ".join(files[:5]) + more)
    if scan.unreadable:
        return _warn(name, f"{scan.files} files clean; could not read {len(scan.unreadable)}: "
                           + ", ".join(scan.unreadable[:5]))
    return _pass(name, f"{scan.files} files ({scan.bytes} bytes, SQLite included) hold no Luhn-valid 13-19 digit run")


# ---- audit


def check_audit(data_dir: Path) -> list[CheckResult]:
    """The hash chain verifies (`tonewall audit verify`) and its HMAC key is owner-only."""
    chain, key_name = "audit.chain", "audit.key_file"
    folder = data_dir / "audit"
    key_path, log_path = folder / "audit.key", folder / "audit.jsonl"
    if not key_path.exists():
        if log_path.exists():
            return [_fail(chain, "audit log present but its key is missing: records cannot be verified"),
                    _fail(key_name, "DATA_DIR/audit/audit.key is missing")]
        return [_warn(chain, "no audit log yet (created on first start)"),
                _pass(key_name, "no audit key yet")]
    mode = os.stat(key_path).st_mode
    key_result = (_fail(key_name, f"audit.key mode {_mode_text(mode)}: readable or writable by others, chmod 600")
                  if mode & 0o077 else _pass(key_name, "audit.key is owner-only (0600)"))
    try:
        if mode & 0o077:
            # verify_data_dir refuses such a key; read it directly so the chain is still judged.
            result = audit_mod.verify(log_path, bytes.fromhex(key_path.read_text().strip()))
        else:
            result = audit_mod.verify_data_dir(data_dir)
    except (OSError, ValueError):
        return [_fail(chain, "audit key cannot be read"), key_result]
    if not result.ok:
        more = f" (+{len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
        return [_fail(chain, f"{len(result.problems)} problems in {result.records} records: "
                             f"{result.problems[0]}{more}"), key_result]
    return [_pass(chain, f"{result.records} records: HMACs, sequence, links and head verify"), key_result]


# ---- process hardening

_PROBE = r"""
import ctypes, importlib, json, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
try:
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))  # as a service manager allowing cores would start us
except (ValueError, OSError):
    pass
module, _, func = sys.argv[1].partition(":")
getattr(importlib.import_module(module), func)()
libc = ctypes.CDLL(None, use_errno=True)
PR_GET_DUMPABLE = 3
print(json.dumps({"core": list(resource.getrlimit(resource.RLIMIT_CORE)),
                  "dumpable": libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)}))
"""


def probe_process(harden: str) -> dict[str, Any]:
    """Start a Python process, apply the gateway's start-up hardening, report RLIMIT_CORE and dumpability."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    done = subprocess.run([sys.executable, "-c", _PROBE, harden], capture_output=True, text=True,
                          timeout=PROBE_TIMEOUT_S, env=env, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError("hardening probe failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _read_proc(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "unknown"


def check_core_dumps(harden: str | None) -> list[CheckResult]:
    """DESIGN.md: core dumps disabled in the gateway process (a dump would hold card digits)."""
    limit_name, dump_name = "process.core_limit", "process.dumpable"
    pattern = _read_proc("/proc/sys/kernel/core_pattern")
    suid = _read_proc("/proc/sys/fs/suid_dumpable")
    if harden is None:
        return [_warn(limit_name, "process probe skipped"), _warn(dump_name, "process probe skipped")]
    try:
        probe = probe_process(harden)
        soft, hard = (int(v) for v in probe["core"])
        dumpable = int(probe["dumpable"])
    except (RuntimeError, OSError, ValueError, KeyError, TypeError, subprocess.TimeoutExpired):
        return [_fail(limit_name, f"could not start a process with {harden}"),
                _fail(dump_name, f"could not start a process with {harden}")]
    pipe = pattern.startswith("|")
    where = f"core_pattern {'pipes to ' + pattern[1:].split()[0] if pipe else repr(pattern)}"
    if soft == 0 and hard == 0:
        limit = _pass(limit_name, f"gateway start-up sets RLIMIT_CORE to 0 (soft and hard); {where}")
    elif soft == 0:
        limit = _warn(limit_name, f"RLIMIT_CORE soft 0 but hard limit allows raising it; {where}")
    else:
        limit = _fail(limit_name, f"gateway start-up leaves RLIMIT_CORE at {soft}: core dumps would hold card digits")
    if dumpable == 0 and suid != "2":
        dump = _pass(dump_name, "gateway start-up sets PR_SET_DUMPABLE 0 (no dumps, no same-user ptrace)")
    elif dumpable == 0:
        dump = _warn(dump_name, "PR_SET_DUMPABLE 0 but fs.suid_dumpable = 2 still dumps the process (root-readable)")
    elif pipe:
        # fs/coredump.c: a pipe handler still receives the dump whatever RLIMIT_CORE says (only 1 is special).
        dump = _warn(dump_name, f"process stays dumpable and {where}: the kernel hands the handler the dump "
                                "despite RLIMIT_CORE 0; set PR_SET_DUMPABLE 0 at start-up")
    else:
        dump = _warn(dump_name, "process stays dumpable: same-user processes may ptrace it and read memory; "
                                "set PR_SET_DUMPABLE 0 at start-up")
    return [limit, dump]


# ---- vault keys and policy


def check_kek_age(config: Config, data_dir: Path, env: Mapping[str, str], now: float,
                  max_age_days: float) -> CheckResult:
    """KEKs are rotated on a schedule: the KEK file changes only when `tonewall vault rotate-key` adds one."""
    from gateway.vault.keyring import KEK_ENV

    name = "vault.kek_age"
    if config.processor.kind != "vault":
        return _pass(name, "embedded vault not used")
    if env.get(KEK_ENV) or config.vault.kek_env:
        return _warn(name, "KEKs come from the environment: their age cannot be checked here")
    path = Path(config.vault.kek_file) if config.vault.kek_file else data_dir / "vault" / "kek.keys"
    try:
        info = os.stat(path)
        keys = sum(1 for line in path.read_text().splitlines() if line.strip())
    except (OSError, UnicodeDecodeError):
        return _warn(name, "no KEK file yet (generated on first start)")
    age_days = max(0.0, (now - info.st_mtime) / 86400)
    if age_days > max_age_days:
        return _warn(name, f"active KEK last rotated {age_days:.0f} days ago (limit {max_age_days:g}): "
                           "run `tonewall vault rotate-key`")
    return _pass(name, f"{keys} KEK(s); active one added {age_days:.0f} days ago (limit {max_age_days:g})")


def check_mask_policy(config: Config) -> CheckResult:
    """Caller DTMF is masked during captures at least (DESIGN.md rules of the path)."""
    name = "capture.mask_policy"
    allowed = ("capture", "always")
    bad = [] if config.capture.mask in allowed else ["capture.mask"]
    bad += [f"routes[{i}].mask" for i, r in enumerate(config.routes) if r.mask is not None and r.mask not in allowed]
    if bad:
        return _fail(name, f"{', '.join(bad)} not 'capture' or 'always'")
    overrides = sum(r.mask is not None for r in config.routes)
    extra = f", {overrides} route override(s)" if overrides else ""
    return _pass(name, f"mask = {config.capture.mask!r} ({config.capture.mask_mode}){extra}")


def check_codecs() -> CheckResult:
    """The gateway negotiates only codecs its detector can decode, so a capture can always be inspected."""
    from dtmf.g711 import DECODE_TABLES
    from gateway.sip.sdp import SUPPORTED_CODECS

    name = "media.codecs"
    blind = [c for c in SUPPORTED_CODECS if c not in DECODE_TABLES]
    if blind or not SUPPORTED_CODECS:
        return _fail(name, f"negotiable codecs the detector cannot decode: {', '.join(blind) or 'none listed'}")
    return _pass(name, f"only {', '.join(SUPPORTED_CODECS)} (+ telephone-event) are negotiated; all inspectable")


def check_relay_path(config: Config) -> CheckResult:
    """Whether RTP takes the C relay path (`media.accelerator`): the pure-Python one costs more CPU per packet."""
    from gateway.transport import rtp as edge

    name = "media.accelerator"
    setting = config.media.accelerator
    usable = edge.FastRelay is not None and ":" not in config.media.address
    if setting == "off":
        return _pass(name, "off by configuration: the pure-Python relay path")
    if usable:
        from dtmf.masker import accelerated

        step = "built" if accelerated() else "not built (captures cost more CPU)"
        return _pass(name, f"{setting}: the C relay path is built and used; the masker's C quiet step is {step}")
    why = "not built (reinstall with a C compiler)" if edge.FastRelay is None else "IPv6 media address"
    if setting == "on":
        return _fail(name, f"'on' but the C relay path cannot be used: {why}; `tonewall run` will refuse to start")
    return _warn(name, f"the C relay path cannot be used ({why}): the pure-Python path costs more CPU per packet")


# ---- the run


def _guard(name: str, check: Callable[[], CheckResult | list[CheckResult]]) -> list[CheckResult]:
    """One broken check becomes a FAIL naming the exception type only (its text might echo data)."""
    try:
        result = check()
    except Exception as exc:  # noqa: BLE001 - a report, not a crash
        return [_fail(name, f"check crashed ({type(exc).__name__})")]
    return result if isinstance(result, list) else [result]


def run_checks(settings: CheckSettings) -> Report:
    """Every check, in report order."""
    env = os.environ if settings.env is None else settings.env
    now = time.time() if settings.now is None else settings.now
    text, raw = _raw_toml(settings.config_path)
    overrides = {"data_dir": settings.data_dir} if settings.data_dir else None
    results: list[CheckResult] = []
    config: Config | None
    try:
        config = load_config(settings.config_path, overrides, env=dict(env))
        results.append(_pass("config.load", f"loaded {config.source}" if settings.config_path
                             else "embedded defaults (no --config)"))
    except ConfigError as exc:
        config = None
        results.append(_fail("config.load", str(exc)))
    results += _guard("config.inline_secrets", lambda: check_inline_secrets(text, raw))
    results += _guard("config.secret_files", lambda: check_config_files(settings.config_path, raw))

    if settings.data_dir:
        data_dir = Path(settings.data_dir)
    elif config is not None:
        data_dir = Path(config.data_dir)
    else:
        data_dir = Path(raw["data_dir"] if isinstance(raw.get("data_dir"), str) else DEFAULT_DATA_DIR)
    report = Report(config=config.source if config else str(settings.config_path), data_dir=str(data_dir))
    if config is not None:
        cfg = config
        results += _guard("tls.api", lambda: check_api_tls(cfg, data_dir, now))
        results += _guard("tls.vault", lambda: check_vault_tls(cfg, data_dir))
        results += _guard("tls.processor", lambda: check_processor_tls(cfg))
        results += _guard("tls.processor_mtls", lambda: check_processor_mtls(cfg, data_dir))
        results += _guard("tls.sip", lambda: check_sip_tls(cfg))
        results += _guard("tls.dev_ca", lambda: check_dev_ca(cfg, data_dir, now))
        results += _guard("api.dev_key", lambda: check_dev_key(cfg))
    else:
        results.append(_fail("tls", "not checked: the config does not load"))
    results += _guard("data_dir.permissions", lambda: check_data_dir_modes(data_dir))
    extra = []
    if config is not None and config.audit.path:
        audit_path = Path(config.audit.path)
        if audit_path.exists() and data_dir.resolve() not in audit_path.resolve().parents:
            extra.append(audit_path)
    results += _guard("data_dir.card_numbers", lambda: check_card_data_at_rest(data_dir, extra))
    results += _guard("audit.chain", lambda: check_audit(data_dir))
    results += _guard("process.core_limit", lambda: check_core_dumps(settings.harden))
    if config is not None:
        cfg = config
        results += _guard("vault.kek_age", lambda: check_kek_age(cfg, data_dir, env, now, settings.kek_max_age_days))
        results += _guard("capture.mask_policy", lambda: check_mask_policy(cfg))
        results += _guard("media.accelerator", lambda: check_relay_path(cfg))
    results += _guard("media.codecs", check_codecs)
    report.results = results
    return report


def render_text(report: Report) -> str:
    """One line per check, then the counts; redacted."""
    width = max((len(r.name) for r in report.results), default=10)
    lines = [f"tonewall check: config {report.config}, data dir {report.data_dir}"]
    lines += [f"{r.status.value}  {r.name.ljust(width)}  {r.detail}" for r in report.results]
    counts = report.counts()
    verdict = "OK" if report.ok else "FAILED"
    lines.append(f"{counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail: {verdict}")
    return redact("\n".join(lines))


def render_json(report: Report) -> str:
    """{"ok", "config", "data_dir", "counts", "checks": [{"name", "status", "detail"}]}; redacted."""
    body = {
        "ok": report.ok,
        "config": report.config,
        "data_dir": report.data_dir,
        "counts": report.counts(),
        "checks": [{"name": r.name, "status": r.status.value, "detail": r.detail} for r in report.results],
    }
    return redact(json.dumps(body, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tonewall check",
                                     description="Compliance report: is card data kept out of scope?")
    parser.add_argument("--config", metavar="FILE", help="TOML config (embedded defaults without it)")
    parser.add_argument("--data-dir", metavar="DIR", help="data dir (overrides the config; default ./tonewall-data)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--kek-max-age-days", type=float, default=DEFAULT_KEK_MAX_AGE_DAYS, metavar="DAYS",
                        help=f"warn when the active vault KEK is older (default {DEFAULT_KEK_MAX_AGE_DAYS:g})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`tonewall check`: exit 0 when no check FAILs, 1 otherwise (2 for a usage error)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    report = run_checks(CheckSettings(config_path=args.config, data_dir=args.data_dir,
                                      kek_max_age_days=args.kek_max_age_days))
    print(render_json(report) if args.json else render_text(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
