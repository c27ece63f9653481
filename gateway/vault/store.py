"""Vault records in SQLite: PAN and expiry under AES-256-GCM with a per-record data key, wrapped by a KEK.

What is on disk per token: the token (random, keeps the last four), brand, last four, the id
of the KEK that wraps the data key, the wrapped data key and the ciphertext. Never a CVV, a
PAN in clear, or a hash of the PAN.
"""

from __future__ import annotations

import hmac
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.capture.card import SensitiveCard
from gateway.capture.sensitive import SensitiveDigits, wipe_bytearray
from gateway.vault.keyring import NONCE_BYTES, Keyring, KeyringError

TOKEN_ALPHABET = "abcdefghjkmnpqrstuvwxyz"  # letters only: a token never holds a digit run
TOKEN_RANDOM_CHARS = 22  # about 99 bits

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    token TEXT PRIMARY KEY,
    brand TEXT NOT NULL,
    last4 TEXT NOT NULL,
    kek_id TEXT NOT NULL,
    wrapped_key BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS records_kek_id ON records(kek_id);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    token TEXT NOT NULL REFERENCES records(token),
    created REAL NOT NULL
);
"""


class VaultStoreError(ValueError):
    """A vault operation was refused; fixed message, never card data."""


class IdempotencyConflict(VaultStoreError):
    """The idempotency key was used before for a different card."""


@dataclass(frozen=True)
class StoredToken:
    """What the vault returns for a card: the token, brand and last four."""

    token: str
    brand: str
    last4: str
    created: bool
    """False when an earlier request with the same idempotency key made it."""


@dataclass
class Detokenized:
    """A PAN read back for a payments client; `pan_digits` must be wiped after use."""

    pan_digits: SensitiveDigits
    exp_month: int | None
    exp_year: int | None
    brand: str
    last4: str

    def __repr__(self) -> str:
        return f"Detokenized(brand={self.brand}, last4={self.last4})"


def _record_plaintext(card: SensitiveCard) -> bytearray:
    """PAN|MMYYYY (expiry empty when not captured) in a buffer the caller wipes."""
    plaintext = bytearray()
    card.pan_digits.write_ascii(plaintext)
    plaintext += b"|"
    expiry = card.expiry()
    if expiry is not None:
        plaintext += f"{expiry[0]:02d}{expiry[1]:04d}".encode()
    return plaintext


def _database_files(db_path: Path) -> tuple[Path, ...]:
    """The database and the WAL-mode side files that hold its pages."""
    return (db_path, db_path.with_name(db_path.name + "-wal"), db_path.with_name(db_path.name + "-shm"))


def new_token(last4: str) -> str:
    """tok_<22 random letters>_<last four>."""
    body = "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(TOKEN_RANDOM_CHARS))
    return f"tok_{body}_{last4}"


class VaultStore:
    """Token records in one SQLite file (WAL, so `rotate-key` can run beside the server)."""

    def __init__(self, db_path: str | Path, keyring: Keyring) -> None:
        self.db_path = Path(db_path)
        self.keyring = keyring
        self.db_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.db_path.exists():
            self.db_path.touch(mode=0o600)
        # SQLite creates -wal and -shm with the database file's mode: keep all three owner-only,
        # also for a file an older version or an operator left group/world-readable.
        for path in _database_files(self.db_path):
            if path.exists() and path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)
        self._db = sqlite3.connect(self.db_path, isolation_level=None, timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(SCHEMA)
        self._kek_mtime_ns = self._kek_file_mtime()
        self.check_keyring()

    def check_keyring(self) -> None:
        """Refuse a keyring that cannot open the stored records: one record per KEK id in use is
        unwrapped. A wrong or missing KEK is found at start, not as `unknown_token` answers later,
        and no token is made under it (it would be lost for good when the right KEK returns)."""
        kek_ids = [row[0] for row in self._db.execute("SELECT DISTINCT kek_id FROM records")]  # the index
        for kek_id in kek_ids:
            token, wrapped = self._db.execute(
                "SELECT token, wrapped_key FROM records WHERE kek_id = ? LIMIT 1", (kek_id,)).fetchone()
            if kek_id not in self.keyring.ids():
                raise KeyringError(f"the records' KEK {kek_id} is not configured (a wrong KEK file or "
                                   f"environment?); refusing to start")
            try:
                wipe_bytearray(bytearray(self.keyring.unwrap(kek_id, wrapped, token.encode())))
            except InvalidTag:
                raise KeyringError(f"the configured KEK {kek_id} does not open the records wrapped under "
                                   f"it (a wrong key under that id?); refusing to start") from None

    def _kek_file_mtime(self) -> int | None:
        path = self.keyring.path
        try:
            return path.stat().st_mtime_ns if path is not None else None
        except OSError:
            return None

    def refresh_keyring(self) -> None:
        """Pick up a KEK added by `rotate-key` in another process, so new records use it."""
        mtime = self._kek_file_mtime()
        if mtime is not None and mtime != self._kek_mtime_ns:
            self.keyring = Keyring.load(self.keyring.path, env={}, create=False)
            self._kek_mtime_ns = mtime

    def close(self) -> None:
        self._db.close()

    def tokenize(self, card: SensitiveCard, idempotency_key: str) -> StoredToken:
        """Store the card (PAN and expiry; never the CVV) and return its token; same key, same token."""
        if not idempotency_key or len(idempotency_key) > 200:
            raise VaultStoreError("idempotency key is missing or too long")
        row = self._db.execute(
            "SELECT r.token, r.brand, r.last4, r.kek_id, r.wrapped_key, r.ciphertext "
            "FROM idempotency i JOIN records r ON r.token = i.token WHERE i.key = ?",
            (idempotency_key,),
        ).fetchone()
        if row is not None:
            if row[2] != card.last4 or row[1] != card.brand.value or not self._same_card(row, card):
                raise IdempotencyConflict("idempotency key reused for another card")
            return StoredToken(row[0], row[1], row[2], created=False)
        self.refresh_keyring()
        token = new_token(card.last4)
        plaintext = _record_plaintext(card)
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = secrets.token_bytes(NONCE_BYTES)
        try:
            ciphertext = nonce + AESGCM(data_key).encrypt(nonce, plaintext, token.encode())
        finally:
            wipe_bytearray(plaintext)
        kek_id, wrapped = self.keyring.wrap(data_key, token.encode())
        now = time.time()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?)",
                (token, card.brand.value, card.last4, kek_id, wrapped, ciphertext, now),
            )
            self._db.execute("INSERT INTO idempotency VALUES (?, ?, ?)", (idempotency_key, token, now))
            self._db.execute("COMMIT")
        except sqlite3.IntegrityError:
            self._db.execute("ROLLBACK")
            return self.tokenize(card, idempotency_key)  # lost a race with the same key
        return StoredToken(token, card.brand.value, card.last4, created=True)

    def detokenize(self, token: str) -> Detokenized:
        """The PAN behind a token, for a payments client."""
        row = self._db.execute(
            "SELECT brand, last4, kek_id, wrapped_key, ciphertext FROM records WHERE token = ?", (token,)
        ).fetchone()
        if row is None:
            raise VaultStoreError("unknown token")
        brand, last4, kek_id, wrapped, ciphertext = row
        plaintext = self._decrypt(token, kek_id, wrapped, ciphertext)
        pan = SensitiveDigits()
        try:
            sep = plaintext.index(b"|")
            for i in range(sep):
                pan.append(chr(plaintext[i]))
            rest = plaintext[sep + 1:]
            month = int(rest[:2]) if len(rest) == 6 else None
            year = int(rest[2:]) if len(rest) == 6 else None
            wipe_bytearray(rest)
        finally:
            wipe_bytearray(plaintext)
        return Detokenized(pan, month, year, brand, last4)

    def _decrypt(self, token: str, kek_id: str, wrapped: bytes, ciphertext: bytes) -> bytearray:
        """A record's plaintext (PAN|MMYYYY) in a buffer the caller wipes."""
        if kek_id not in self.keyring.ids():
            self.refresh_keyring()
        try:
            data_key = self.keyring.unwrap(kek_id, wrapped, token.encode())
            return bytearray(
                AESGCM(data_key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], token.encode())
            )
        except (InvalidTag, KeyringError):
            raise VaultStoreError("record cannot be decrypted") from None

    def _same_card(self, row: tuple, card: SensitiveCard) -> bool:
        """Whether a stored record holds exactly this PAN and expiry (constant-time compare).

        Brand and last four alone would let a replayed key hand back another card's token.
        """
        token, _, _, kek_id, wrapped, ciphertext = row
        stored = self._decrypt(token, kek_id, wrapped, ciphertext)
        offered = _record_plaintext(card)
        try:
            return hmac.compare_digest(stored, offered)
        finally:
            wipe_bytearray(stored)
            wipe_bytearray(offered)

    def rewrap(self, batch: int = 100) -> int:
        """Re-wrap every data key not under the active KEK, one short transaction per batch; returns the count."""
        active = self.keyring.active_id
        done = 0
        while True:
            rows = self._db.execute(
                "SELECT token, kek_id, wrapped_key FROM records WHERE kek_id != ? LIMIT ?", (active, batch)
            ).fetchall()
            if not rows:
                return done
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for token, kek_id, wrapped in rows:
                    data_key = self.keyring.unwrap(kek_id, wrapped, token.encode())
                    new_id, new_wrapped = self.keyring.wrap(data_key, token.encode())
                    self._db.execute(
                        "UPDATE records SET kek_id = ?, wrapped_key = ? WHERE token = ? AND kek_id = ?",
                        (new_id, new_wrapped, token, kek_id),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            done += len(rows)

    def kek_usage(self) -> dict[str, int]:
        """How many records each KEK wraps (to know when an old KEK may be retired)."""
        return dict(self._db.execute("SELECT kek_id, COUNT(*) FROM records GROUP BY kek_id").fetchall())
