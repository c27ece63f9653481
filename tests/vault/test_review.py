"""Security review of the vault store: idempotency binds the whole card, files stay owner-only."""

from __future__ import annotations

import os
import stat

import pytest

from gateway.capture.card import Brand, SensitiveCard
from gateway.vault.keyring import Keyring
from gateway.vault.store import IdempotencyConflict, VaultStore
from tests.capture.cards import digits, luhn_digit

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
