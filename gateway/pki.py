"""Development PKI: one local CA that issues server and client certificates for loopback TLS and mTLS.

Public API (all paths under ``DATA_DIR/tls/``; private keys are written 0600):

    ensure_ca(data_dir) -> CertFiles
        ``ca.pem`` and ``ca-key.pem``; created once, reused while valid.
    issue_server_cert(data_dir, name="server", hosts=()) -> CertFiles
        ``NAME.pem``/``NAME-key.pem`` with SANs localhost, 127.0.0.1 and ``hosts``.
    issue_client_cert(data_dir, name, role) -> CertFiles
        ``NAME.pem``/``NAME-key.pem`` with CN=name and OU=role ("gateway", "payments", ...).
    server_ssl_context(cert, *, client_ca=None, require_client_cert=False) -> ssl.SSLContext
    client_ssl_context(ca, *, cert=None) -> ssl.SSLContext
    peer_identity(peercert) -> PeerIdentity | None
        CN and OU of a verified peer from ``SSLObject.getpeercert()``.

Issuing is idempotent: an existing certificate is reused when it is signed by the current
CA, is not within RENEW_BEFORE_S of expiry and names what was asked; otherwise it is replaced.
"""

from __future__ import annotations

import datetime
import errno
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALID_DAYS = 3650
LEAF_VALID_DAYS = 397
RENEW_BEFORE_S = 7 * 24 * 3600
DEFAULT_SERVER_HOSTS = ("localhost", "127.0.0.1")


class PkiError(ValueError):
    """A certificate or key on disk cannot be used."""


@dataclass(frozen=True)
class CertFiles:
    """A PEM certificate and its PEM private key on disk."""

    cert_path: Path
    key_path: Path


@dataclass(frozen=True)
class PeerIdentity:
    """Who a verified TLS peer is: its CN and its role (OU)."""

    common_name: str
    role: str | None


def tls_dir(data_dir: str | os.PathLike[str]) -> Path:
    """The folder holding the development PKI."""
    return Path(data_dir) / "tls"


def private_dir(data_dir: str | os.PathLike[str]) -> Path:
    """Create the data dir 0700 if missing, as `tonewall run` does, and return it.

    Whoever creates it first (`vault serve`, `vault client-cert`, `run`) makes it private:
    a bare mkdir(parents=True) of a folder inside it would leave it 0755 under the usual umask.
    """
    path = Path(data_dir)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret atomically, never readable by group or others, even for an instant."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    mode = path.stat().st_mode & 0o077
    if mode:
        raise PkiError("private key file is readable by group or others")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError("private key is not ECDSA")
    return key


def _still_valid(cert: x509.Certificate) -> bool:
    remaining = cert.not_valid_after_utc - _now()
    return remaining.total_seconds() > RENEW_BEFORE_S and cert.not_valid_before_utc <= _now()


def _load_pair(files: CertFiles) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """An existing certificate and its key, or None when either is missing or unreadable."""
    if not (files.cert_path.exists() and files.key_path.exists()):
        return None
    try:
        cert = x509.load_pem_x509_certificate(files.cert_path.read_bytes())
        key = _load_key(files.key_path)
    except (ValueError, OSError):
        return None
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        return None
    return cert, key


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """RFC 5280 4.2.1.3: a CA signs certificates and CRLs; an ECDSA leaf signs and agrees keys."""
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=not ca, key_cert_sign=ca,
        crl_sign=ca, encipher_only=False, decipher_only=False,
    )


def ensure_ca(data_dir: str | os.PathLike[str]) -> CertFiles:
    """Create the development CA in DATA_DIR/tls, or reuse the one there while it is valid."""
    folder = tls_dir(private_dir(data_dir))
    folder.mkdir(exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    files = CertFiles(folder / "ca.pem", folder / "ca-key.pem")
    pair = _load_pair(files)
    if pair is not None and _still_valid(pair[0]):
        return files
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tonewall development"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Tonewall development CA"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(files.key_path, _key_pem(key))
    _write_public(files.cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return files


def _signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _san_entries(hosts: Iterable[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in (*DEFAULT_SERVER_HOSTS, *hosts):
        host = host.strip().strip("[]")
        if not host or host in seen or host in ("0.0.0.0", "::"):
            continue
        seen.add(host)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return entries


def _issue(
    data_dir: str | os.PathLike[str],
    name: str,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
) -> CertFiles:
    ca_files = ensure_ca(data_dir)
    ca_cert = x509.load_pem_x509_certificate(ca_files.cert_path.read_bytes())
    ca_key = _load_key(ca_files.key_path)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=LEAF_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    files = _leaf_files(data_dir, name)
    _write_private(files.key_path, _key_pem(key))
    _write_public(files.cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return files


def _leaf_files(data_dir: str | os.PathLike[str], name: str) -> CertFiles:
    if not name or "/" in name or name.startswith(".") or name in ("ca", "ca-key"):
        raise PkiError("certificate name is not allowed")
    folder = tls_dir(data_dir)
    return CertFiles(folder / f"{name}.pem", folder / f"{name}-key.pem")


def _reusable(data_dir: str | os.PathLike[str], files: CertFiles) -> x509.Certificate | None:
    pair = _load_pair(files)
    if pair is None or not _still_valid(pair[0]):
        return None
    ca_cert = x509.load_pem_x509_certificate(tls_dir(data_dir).joinpath("ca.pem").read_bytes())
    return pair[0] if _signed_by(pair[0], ca_cert) else None


def issue_server_cert(
    data_dir: str | os.PathLike[str], name: str = "server", hosts: Sequence[str] = ()
) -> CertFiles:
    """A server certificate naming localhost, 127.0.0.1 and `hosts`; reused when it already covers them."""
    ensure_ca(data_dir)
    files = _leaf_files(data_dir, name)
    sans = _san_entries(hosts)
    cert = _reusable(data_dir, files)
    if cert is not None:
        try:
            have = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            have = set()
        if set(sans) <= have:
            return files
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0].value if sans else name)])
    return _issue(data_dir, name, subject, ExtendedKeyUsageOID.SERVER_AUTH, sans)


def issue_client_cert(data_dir: str | os.PathLike[str], name: str, role: str) -> CertFiles:
    """A client certificate with CN=name and OU=role; reused when it already says exactly that."""
    ensure_ca(data_dir)
    files = _leaf_files(data_dir, name)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    cert = _reusable(data_dir, files)
    if cert is not None and cert.subject == subject:
        return files
    return _issue(data_dir, name, subject, ExtendedKeyUsageOID.CLIENT_AUTH, [])


def _base_context(purpose: ssl.Purpose) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _load_chain(context: ssl.SSLContext, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> None:
    """load_cert_chain, failing with the files named: ssl's own error says only "[SSL] PEM lib"."""
    try:
        context.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        raise OSError(errno.EINVAL, f"not a PEM certificate and its private key, or they do not match "
                                    f"({exc.reason or 'ssl'})", f"{os.fspath(cert_path)} + {os.fspath(key_path)}") from None


def _load_ca(context: ssl.SSLContext, ca_path: str | os.PathLike[str]) -> None:
    try:
        context.load_verify_locations(cafile=os.fspath(ca_path))
    except ssl.SSLError as exc:
        raise OSError(errno.EINVAL, f"not a PEM CA certificate ({exc.reason or 'ssl'})", os.fspath(ca_path)) from None


def server_ssl_context(
    cert: CertFiles,
    *,
    client_ca: str | os.PathLike[str] | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """A TLS 1.2+ server context; with `require_client_cert`, clients must present a cert from `client_ca`."""
    context = _base_context(ssl.Purpose.CLIENT_AUTH)
    _load_chain(context, cert.cert_path, cert.key_path)
    if client_ca is not None:
        _load_ca(context, client_ca)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise PkiError("client certificates need a client CA")
    return context


def client_ssl_context(
    ca: str | os.PathLike[str] | None, *, cert: CertFiles | None = None
) -> ssl.SSLContext:
    """A TLS 1.2+ client context verifying the server against `ca` only (pinned), or the system store when None."""
    context = _base_context(ssl.Purpose.SERVER_AUTH)
    if ca is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_ca(context, ca)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if cert is not None:
        _load_chain(context, cert.cert_path, cert.key_path)
    return context


def peer_identity(peercert: dict | None) -> PeerIdentity | None:
    """CN and OU of a verified peer certificate (the dict from `getpeercert()`), or None."""
    if not peercert:
        return None
    values: dict[str, str] = {}
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            values.setdefault(key, value)
    common_name = values.get("commonName")
    if common_name is None:
        return None
    return PeerIdentity(common_name=common_name, role=values.get("organizationalUnitName"))
