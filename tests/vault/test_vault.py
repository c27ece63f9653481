"""The vault: envelope encryption at rest, CVV never stored, idempotency, roles over real mTLS, rotation."""

from __future__ import annotations

import datetime
import json
import stat

import aiohttp
import pytest

from gateway import pki
from gateway.capture.card import Brand, SensitiveCard
from gateway.vault.keyring import KEK_ENV, Keyring, KeyringError
from gateway.vault.server import VaultSettings, rotate_key
from gateway.vault.store import IdempotencyConflict, VaultStore, VaultStoreError
from tests.capture.cards import digits
from tests.vault.harness import gateway_context, open_vault

PAN = "4111111111111111"
AMEX = "378282246310005"


def card(pan=PAN, expiry="1230", cvv="123", brand=Brand.VISA):
    return SensitiveCard(digits(pan), brand, digits(expiry), digits(cvv))


def store_at(tmp_path) -> VaultStore:
    return VaultStore(tmp_path / "v.sqlite3", Keyring.load(tmp_path / "kek.keys"))


def db_bytes(tmp_path) -> bytes:
    return b"".join(p.read_bytes() for p in tmp_path.glob("v.sqlite3*"))


def test_token_keeps_last_four_and_roundtrips(tmp_path):
    store = store_at(tmp_path)
    stored = store.tokenize(card(), "cap-1")
    assert stored.token.startswith("tok_") and stored.token.endswith("_1111") and stored.created
    found = store.detokenize(stored.token)
    out = bytearray()
    found.pan_digits.write_ascii(out)
    assert out == PAN.encode() and (found.exp_month, found.exp_year) == (12, 2030)
    assert "1111111" not in repr(found)


def test_nothing_readable_on_disk(tmp_path):
    store = store_at(tmp_path)
    store.tokenize(card(AMEX, cvv="9876", brand=Brand.AMEX), "cap-1")
    store.close()
    raw = db_bytes(tmp_path)
    for needle in (AMEX.encode(), AMEX[:7].encode(), AMEX[-7:].encode(), b"9876", b"1230", b"2030"):
        assert needle not in raw


def test_idempotent_and_conflict(tmp_path):
    store = store_at(tmp_path)
    first = store.tokenize(card(), "k")
    again = store.tokenize(card(), "k")
    assert again.token == first.token and not again.created
    with pytest.raises(IdempotencyConflict):
        store.tokenize(card(AMEX, cvv="1234", brand=Brand.AMEX), "k")
    assert store.tokenize(card(), "k2").token != first.token


def test_tampered_record_refused(tmp_path):
    store = store_at(tmp_path)
    token = store.tokenize(card(), "k").token
    store._db.execute("UPDATE records SET ciphertext = zeroblob(40) WHERE token = ?", (token,))
    with pytest.raises(VaultStoreError):
        store.detokenize(token)


def test_kek_file_permissions(tmp_path):
    Keyring.load(tmp_path / "kek.keys")
    assert stat.S_IMODE((tmp_path / "kek.keys").stat().st_mode) == 0o600
    (tmp_path / "kek.keys").chmod(0o644)
    with pytest.raises(KeyringError):
        Keyring.load(tmp_path / "kek.keys")


def test_kek_from_environment(tmp_path):
    ring = Keyring.load(None, env={KEK_ENV: "a:" + "11" * 32 + ",b:" + "22" * 32})
    assert ring.active_id == "b" and ring.ids() == {"a", "b"}


def test_rotation_rewraps_while_old_store_keeps_serving(tmp_path):
    settings = VaultSettings(data_dir=tmp_path)
    settings.kek_path().parent.mkdir(parents=True)
    live = VaultStore(settings.database_path(), Keyring.load(settings.kek_path()))
    tokens = [live.tokenize(card(), f"k{i}").token for i in range(5)]
    old_id = live.keyring.active_id
    new_id, count = rotate_key(settings)
    assert count == 5 and new_id != old_id
    # the running store reads records wrapped under the new KEK and wraps new ones with it
    for token in tokens:
        assert len(live.detokenize(token).pan_digits) == 16
    live.tokenize(card(), "after")
    assert live.kek_usage() == {new_id: 6}


@pytest.mark.parametrize("wrong", ["same id, other key", "unknown id"])
def test_a_kek_that_cannot_open_the_records_is_refused_at_start(tmp_path, wrong):
    """A wrong KEK was accepted: stored tokens answered unknown_token and new ones, made under
    it, were lost for good once the right KEK came back. Now the store refuses to open."""
    store = store_at(tmp_path)
    store.tokenize(card(), "k")
    kek_id = store.keyring.active_id
    store.close()
    env = {KEK_ENV: (kek_id if wrong == "same id, other key" else "other") + ":" + "33" * 32}
    with pytest.raises(KeyringError, match="refusing to start") as caught:
        VaultStore(tmp_path / "v.sqlite3", Keyring.load(None, env=env))
    assert "33" * 8 not in str(caught.value)
    assert VaultStore(tmp_path / "v.sqlite3", Keyring.load(tmp_path / "kek.keys")).detokenize  # the right one opens


def test_rotate_key_refuses_a_kek_file_that_cannot_open_the_records(tmp_path):
    settings = VaultSettings(data_dir=tmp_path)
    settings.kek_path().parent.mkdir(parents=True)
    live = VaultStore(settings.database_path(), Keyring.load(settings.kek_path()))
    live.tokenize(card(), "k")
    live.close()
    before = settings.kek_path().read_text()
    kek_id = before.split()[0]
    settings.kek_path().write_text(f"{kek_id} {'44' * 32}\n")
    with pytest.raises(KeyringError):
        rotate_key(settings)
    assert len(settings.kek_path().read_text().splitlines()) == 1  # no key added under a wrong file


def test_card_from_request_drops_cvv():
    from gateway.vault.server import _BadRequest, card_from_request

    today = datetime.date(2025, 1, 1)
    made = card_from_request({"pan": PAN, "exp_month": 12, "exp_year": 2030, "cvv": "123"}, today)
    assert made.cvv_digits is None and made.brand is Brand.VISA
    for bad in ({"pan": PAN[:-1] + "2"}, {"pan": PAN, "cvv": "12"}, {"pan": PAN, "exp_month": 1, "exp_year": 2024},
                {"pan": "41x1"}, {"pan": 4111111111111111},
                {"pan": PAN, "exp_month": True, "exp_year": 2030},  # a bool was stored as January
                {"pan": PAN, "track2": PAN + "=3012"}):  # unknown fields are refused, not ignored
        with pytest.raises(_BadRequest):
            card_from_request(bad, today)


async def _post(port, ctx, path, body, key=None):
    headers = {"Idempotency-Key": key} if key else {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        async with session.post(f"https://127.0.0.1:{port}{path}", json=body, headers=headers) as r:
            return r.status, await r.json()


async def test_roles_over_mtls(tmp_path):
    vault = await open_vault(tmp_path)
    try:
        body = {"pan": PAN, "exp_month": 12, "exp_year": 2030, "cvv": "123"}
        status, made = await _post(vault.port, gateway_context(tmp_path), "/v1/tokens", body, "c1")
        assert status == 201 and made["last4"] == "1111" and made["brand"] == "visa"
        status, again = await _post(vault.port, gateway_context(tmp_path), "/v1/tokens", body, "c1")
        assert status == 200 and again["token"] == made["token"]
        # gateway may not detokenize; payments may not tokenize; payments may detokenize
        status, _ = await _post(vault.port, gateway_context(tmp_path), "/v1/detokenize", {"token": made["token"]})
        assert status == 403
        payments = gateway_context(tmp_path, role="payments", name="settlement")
        status, _ = await _post(vault.port, payments, "/v1/tokens", body, "c2")
        assert status == 403
        status, clear = await _post(vault.port, payments, "/v1/detokenize", {"token": made["token"]})
        assert status == 200 and clear["pan"] == PAN and clear["exp_year"] == 2030
        status, bad = await _post(vault.port, gateway_context(tmp_path), "/v1/tokens", {"pan": "4111"}, "c3")
        assert status == 400 and bad == {"error": "invalid_card"}
        # The router's own refusals come in the vault's error shape too (were aiohttp's plain text).
        status, missing = await _post(vault.port, gateway_context(tmp_path), "/v1/nothing", {})
        assert (status, missing) == (404, {"error": "not_found"})
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=gateway_context(tmp_path))) as session:
            async with session.get(f"https://127.0.0.1:{vault.port}/v1/tokens") as r:
                assert (r.status, await r.json()) == (405, {"error": "method_not_allowed"}) and "POST" in r.headers["Allow"]
    finally:
        await vault.close()


async def test_client_without_certificate_refused(tmp_path):
    vault = await open_vault(tmp_path)
    try:
        ctx = pki.client_ssl_context(pki.ensure_ca(tmp_path).cert_path)
        with pytest.raises(aiohttp.ClientError):
            await _post(vault.port, ctx, "/v1/tokens", {"pan": PAN}, "c")
    finally:
        await vault.close()


async def test_cvv_not_stored_via_http(tmp_path):
    vault = await open_vault(tmp_path)
    try:
        body = {"pan": AMEX, "exp_month": 12, "exp_year": 2030, "cvv": "9876"}
        status, _ = await _post(vault.port, gateway_context(tmp_path), "/v1/tokens", body, "c1")
        assert status == 201
    finally:
        await vault.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "vault").glob("vault.sqlite3*"))
    assert b"9876" not in raw and AMEX.encode() not in raw and json.dumps(body).encode() not in raw


def test_rotate_key_rotates_the_kek_file_named_on_the_command_line(tmp_path, capsys, monkeypatch):
    """`[vault] kek_file` elsewhere than DATA_DIR: rotate-key knew only the default path (a traceback)."""
    from gateway.vault.server import main

    monkeypatch.delenv(KEK_ENV, raising=False)
    kek = tmp_path / "keys" / "kek.keys"
    kek.parent.mkdir()
    settings = VaultSettings(data_dir=tmp_path / "data", kek_file=kek)
    settings.database_path().parent.mkdir(parents=True)
    live = VaultStore(settings.database_path(), Keyring.load(kek))
    live.tokenize(card(), "k")
    live.close()
    assert main(["rotate-key", "--data-dir", str(tmp_path / "data"), "--kek-file", str(kek)]) == 0
    assert "re-wrapped 1 data keys" in capsys.readouterr().out and len(kek.read_text().splitlines()) == 2
    monkeypatch.setenv(KEK_ENV, "a:" + "11" * 32)
    assert main(["rotate-key", "--data-dir", str(tmp_path / "data")]) == 2
    assert "cannot change" in capsys.readouterr().err
