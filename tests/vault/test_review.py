"""Security review of the vault store: idempotency binds the whole card, files stay owner-only."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat

import aiohttp
import pytest
from aiohttp import web

from gateway.capture.card import Brand, SensitiveCard
from gateway.vault.keyring import Keyring
from gateway.vault.server import VaultSettings, start_vault
from gateway.vault.store import IdempotencyConflict, VaultStore
from tests.capture.cards import digits, luhn_digit
from tests.vault.harness import gateway_context

PAN = "4111111111111111"


def card(pan: str = PAN, expiry: str = "1230") -> SensitiveCard:
    return SensitiveCard(digits(pan), Brand.VISA, digits(expiry), digits("123"))


def same_last4_other_pan() -> str:
    """A different Visa PAN ending in the same four digits (Luhn-valid)."""
    for middle in range(100):
        body = f"4000{middle:02d}00001111"[:15]
        pan = body + luhn_digit(body)
        if pan != PAN and pan.endswith("1111"):
            return pan
    raise AssertionError("no such PAN")


def store_at(tmp_path) -> VaultStore:
    return VaultStore(tmp_path / "v.sqlite3", Keyring.load(tmp_path / "kek.keys"))


def test_same_key_same_brand_and_last4_but_other_pan_is_a_conflict(tmp_path):
    store = store_at(tmp_path)
    first = store.tokenize(card(), "cap-1")
    other = same_last4_other_pan()
    with pytest.raises(IdempotencyConflict):
        store.tokenize(card(other), "cap-1")
    # The replay of the first card still answers with its token.
    assert store.tokenize(card(), "cap-1").token == first.token


def test_same_key_other_expiry_is_a_conflict(tmp_path):
    store = store_at(tmp_path)
    store.tokenize(card(expiry="1230"), "cap-1")
    with pytest.raises(IdempotencyConflict):
        store.tokenize(card(expiry="1131"), "cap-1")


def test_conflict_message_holds_no_digits(tmp_path):
    store = store_at(tmp_path)
    store.tokenize(card(), "cap-1")
    with pytest.raises(IdempotencyConflict) as info:
        store.tokenize(card(same_last4_other_pan()), "cap-1")
    assert not any(ch.isdigit() for ch in str(info.value))


def test_database_wal_and_shm_are_owner_only_even_when_left_readable(tmp_path):
    db = tmp_path / "v.sqlite3"
    db.touch()
    os.chmod(db, 0o644)
    old_umask = os.umask(0)
    try:
        store = store_at(tmp_path)
        store.tokenize(card(), "cap-1")
        files = [db, tmp_path / "v.sqlite3-wal", tmp_path / "v.sqlite3-shm"]
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files if p.exists()}
        store.close()
    finally:
        os.umask(old_umask)
    assert "v.sqlite3-wal" in modes and "v.sqlite3-shm" in modes
    assert modes == {name: 0o600 for name in modes}


# ---- over mutual TLS


async def _post(port, ctx, path, body, key=None):
    headers = {"Idempotency-Key": key} if key else {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        async with session.post(f"https://127.0.0.1:{port}{path}", data=body, headers=headers) as r:
            return r.status, await r.json()


async def test_a_body_split_across_records_is_read_whole(tmp_path):
    arrived = asyncio.Event()

    @web.middleware
    async def mark(request, handler):
        arrived.set()
        return await handler(request)

    vault = await open_vault_with(tmp_path, [mark])
    body = json.dumps({"pan": PAN, "exp_month": 12, "exp_year": 2030}).encode()

    async def split():
        yield body[:20]
        await asyncio.wait_for(arrived.wait(), 5)  # the handler is already reading
        yield body[20:]

    try:
        status, made = await _post(vault.port, gateway_context(tmp_path), "/v1/tokens", split(), "k1")
        assert status == 201 and made["last4"] == "1111"
    finally:
        await vault.close()


async def test_detokenize_is_logged_with_who_asked_and_never_the_pan(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tonewall.vault")
    vault = await open_vault_with(tmp_path, [])
    body = json.dumps({"pan": PAN, "exp_month": 12, "exp_year": 2030})
    try:
        status, made = await _post(vault.port, gateway_context(tmp_path), "/v1/tokens", body, "k1")
        assert status == 201
        payments = gateway_context(tmp_path, role="payments", name="settlement")
        status, clear = await _post(vault.port, payments, "/v1/detokenize", json.dumps({"token": made["token"]}))
        assert status == 200 and clear["pan"] == PAN
        status, _ = await _post(vault.port, gateway_context(tmp_path), "/v1/detokenize",
                                json.dumps({"token": made["token"]}))
        assert status == 403
        status, _ = await _post(vault.port, payments, "/v1/detokenize", json.dumps({"token": PAN}))
        assert status == 404
    finally:
        await vault.close()
    lines = [record.getMessage() for record in caplog.records]
    assert f"detokenize by payments:settlement token={made['token']}: ok" in lines
    assert "detokenize refused for gateway:gateway: forbidden" in lines
    assert any("unknown_token (malformed, not logged)" in line for line in lines)
    assert not any(PAN in line or PAN[:7] in line for line in lines)


async def test_an_unexpected_error_is_a_500_logged_by_type_only(tmp_path, caplog, monkeypatch):
    vault = await open_vault_with(tmp_path, [])

    def broken(card, key):
        out = bytearray()
        card.pan_digits.write_ascii(out)
        raise RuntimeError(f"disk trouble near {out.decode()}")

    monkeypatch.setattr(vault.store, "tokenize", broken)
    caplog.set_level(logging.DEBUG)
    body = json.dumps({"pan": PAN, "exp_month": 12, "exp_year": 2030})
    try:
        status, answer = await _post(vault.port, gateway_context(tmp_path), "/v1/tokens", body, "k1")
        assert status == 500 and answer == {"error": "internal"}
    finally:
        await vault.close()
    text = "\n".join(record.getMessage() + str(record.exc_info) for record in caplog.records)
    assert "RuntimeError" in text and PAN not in text


async def open_vault_with(tmp_path, middlewares):
    return await start_vault(VaultSettings(data_dir=tmp_path, port=0), middlewares=middlewares)


def test_ca_and_leaf_key_usage(tmp_path):
    from cryptography import x509

    from gateway import pki

    def usage(path):
        return x509.load_pem_x509_certificate(path.read_bytes()).extensions.get_extension_for_class(x509.KeyUsage)

    ca = usage(pki.ensure_ca(tmp_path).cert_path)
    leaf = usage(pki.issue_client_cert(tmp_path, "gw", "gateway").cert_path)
    assert ca.critical and leaf.critical
    assert (ca.value.key_cert_sign, ca.value.crl_sign, ca.value.key_agreement) == (True, True, False)
    assert (leaf.value.key_cert_sign, leaf.value.crl_sign, leaf.value.key_agreement) == (False, False, True)
    assert ca.value.digital_signature and leaf.value.digital_signature


async def test_a_malformed_request_holding_a_pan_is_not_logged(tmp_path, caplog):
    """aiohttp logged a bad request line (with a PAN in it) at ERROR with its traceback."""
    caplog.set_level(logging.DEBUG)
    vault = await open_vault_with(tmp_path, [])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", vault.port, ssl=gateway_context(tmp_path),
                                                       server_hostname="127.0.0.1")
        writer.write(f"POST /v1/tokens?pan={PAN} HTTP/1.1\r\nHost: x\r\nBad Header {PAN}\r\n\r\n".encode())
        await writer.drain()
        await asyncio.wait_for(reader.read(4096), 5)
        writer.close()
    finally:
        await vault.close()
    assert any("vault refused a malformed HTTP request" in r.getMessage() for r in caplog.records)
    assert PAN not in caplog.text and PAN[:7] not in caplog.text and "Traceback" not in caplog.text
