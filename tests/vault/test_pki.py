"""Development PKI: files, permissions, idempotence, and real TLS handshakes on loopback."""

from __future__ import annotations

import asyncio
import ssl
import stat

import pytest
from cryptography import x509

from gateway import pki


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_written_with_private_key_0600(tmp_path):
    files = pki.ensure_ca(tmp_path)
    assert files.cert_path == tmp_path / "tls" / "ca.pem"
    assert _mode(files.key_path) == 0o600
    cert = x509.load_pem_x509_certificate(files.cert_path.read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_ca_is_reused(tmp_path):
    first = pki.ensure_ca(tmp_path).cert_path.read_bytes()
    assert pki.ensure_ca(tmp_path).cert_path.read_bytes() == first


def test_ca_key_readable_by_others_is_replaced(tmp_path):
    files = pki.ensure_ca(tmp_path)
    first = files.cert_path.read_bytes()
    files.key_path.chmod(0o644)
    again = pki.ensure_ca(tmp_path)
    assert again.cert_path.read_bytes() != first
    assert _mode(again.key_path) == 0o600


def _sans(files):
    cert = x509.load_pem_x509_certificate(files.cert_path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in ext.get_values_for_type(x509.DNSName)} | {
        str(v) for v in ext.get_values_for_type(x509.IPAddress)
    }


def test_server_cert_sans_and_reuse(tmp_path):
    files = pki.issue_server_cert(tmp_path, "api", ["api.example", "10.0.0.5"])
    assert _sans(files) == {"localhost", "127.0.0.1", "api.example", "10.0.0.5"}
    assert _mode(files.key_path) == 0o600
    before = files.cert_path.read_bytes()
    assert pki.issue_server_cert(tmp_path, "api", ["api.example"]).cert_path.read_bytes() == before
    grown = pki.issue_server_cert(tmp_path, "api", ["other.example"])
    assert grown.cert_path.read_bytes() != before
    assert "other.example" in _sans(grown)


def test_client_cert_role_and_reissue_on_role_change(tmp_path):
    files = pki.issue_client_cert(tmp_path, "gw1", "gateway")
    cert = x509.load_pem_x509_certificate(files.cert_path.read_bytes())
    ou = cert.subject.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATIONAL_UNIT_NAME)
    assert ou[0].value == "gateway"
    before = files.cert_path.read_bytes()
    assert pki.issue_client_cert(tmp_path, "gw1", "gateway").cert_path.read_bytes() == before
    assert pki.issue_client_cert(tmp_path, "gw1", "payments").cert_path.read_bytes() != before


def test_leaf_reissued_when_ca_changes(tmp_path):
    files = pki.issue_server_cert(tmp_path)
    before = files.cert_path.read_bytes()
    (tmp_path / "tls" / "ca.pem").unlink()
    pki.ensure_ca(tmp_path)
    assert pki.issue_server_cert(tmp_path).cert_path.read_bytes() != before


def test_bad_names_refused(tmp_path):
    with pytest.raises(pki.PkiError):
        pki.issue_client_cert(tmp_path, "../x", "gateway")
    with pytest.raises(pki.PkiError):
        pki.issue_client_cert(tmp_path, "ca", "gateway")


def test_contexts_are_tls12_plus(tmp_path):
    server = pki.server_ssl_context(pki.issue_server_cert(tmp_path))
    client = pki.client_ssl_context(pki.ensure_ca(tmp_path).cert_path)
    for context in (server, client):
        assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname


async def _handshake(server_ctx, client_ctx):
    """Connect once over loopback; return the server's view of the peer identity."""
    seen: list = []

    async def handle(reader, writer):
        seen.append(pki.peer_identity(writer.get_extra_info("peercert")))
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client_ctx), 5
        )
        data = await asyncio.wait_for(reader.read(2), 5)
        writer.close()
        assert data == b"ok"
    finally:
        server.close()
        await server.wait_closed()
    return seen[0] if seen else None


async def test_mtls_handshake_reports_role(tmp_path):
    ca = pki.ensure_ca(tmp_path).cert_path
    server_ctx = pki.server_ssl_context(
        pki.issue_server_cert(tmp_path), client_ca=ca, require_client_cert=True
    )
    client_ctx = pki.client_ssl_context(ca, cert=pki.issue_client_cert(tmp_path, "gw", "gateway"))
    identity = await _handshake(server_ctx, client_ctx)
    assert identity == pki.PeerIdentity("gw", "gateway")


async def test_foreign_ca_is_refused(tmp_path):
    server_ctx = pki.server_ssl_context(pki.issue_server_cert(tmp_path / "a"))
    client_ctx = pki.client_ssl_context(pki.ensure_ca(tmp_path / "b").cert_path)
    with pytest.raises(ssl.SSLError):
        await _handshake(server_ctx, client_ctx)


def test_garbage_certificate_files_are_named_in_the_error(tmp_path):
    """ssl says only "[SSL] PEM lib": a start-up refusal must name the file at fault."""
    (tmp_path / "c.pem").write_text("garbage")
    (tmp_path / "k.pem").write_text("garbage")
    with pytest.raises(OSError) as caught:
        pki.server_ssl_context(pki.CertFiles(tmp_path / "c.pem", tmp_path / "k.pem"))
    assert str(tmp_path / "c.pem") in caught.value.filename and "not a PEM" in caught.value.strerror
    with pytest.raises(OSError) as caught:
        pki.client_ssl_context(tmp_path / "c.pem")
    assert caught.value.filename == str(tmp_path / "c.pem")
