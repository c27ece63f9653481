"""Key-encryption keys (KEKs) for the vault's envelope encryption, from a 0600 file or the environment.

File format (DATA_DIR/vault/kek.keys): one `KEK_ID HEX32BYTES` per line, the last line is the
active key. Environment: TONEWALL_VAULT_KEKS="id:hex,id:hex" (last is active; read-only,
so `rotate-key` needs the file).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEK_ENV = "TONEWALL_VAULT_KEKS"
KEY_BYTES = 32
NONCE_BYTES = 12


class KeyringError(ValueError):
    """Keys cannot be loaded or used; never carries key material."""


class Keyring:
    """The known KEKs by id and which one wraps new data keys."""

    def __init__(self, keys: dict[str, bytes], active_id: str, path: Path | None = None) -> None:
        if active_id not in keys:
            raise KeyringError("active KEK is missing")
        for kek in keys.values():
            if len(kek) != KEY_BYTES:
                raise KeyringError("KEK must be 32 bytes")
        self._keys = dict(keys)
        self.active_id = active_id
        self.path = path

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None, *, env: dict[str, str] | None = None, create: bool = True) -> "Keyring":
        """From the environment when set, else from `path` (created with one key when missing)."""
        env = os.environ if env is None else env
        if env.get(KEK_ENV):
            return cls._from_pairs([item.split(":", 1) for item in env[KEK_ENV].split(",")], None)
        if path is None:
            raise KeyringError("no KEK file or environment variable")
        path = Path(path)
        if not path.exists():
            if not create:
                raise KeyringError("KEK file is missing")
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _append_key(path, _new_id(set()), secrets.token_bytes(KEY_BYTES))
        if path.stat().st_mode & 0o077:
            raise KeyringError("KEK file is readable by group or others")
        pairs = [line.split() for line in path.read_text().splitlines() if line.strip()]
        return cls._from_pairs(pairs, path)

    @classmethod
    def _from_pairs(cls, pairs: list[list[str]], path: Path | None) -> "Keyring":
        keys: dict[str, bytes] = {}
        active = ""
        for pair in pairs:
            if len(pair) != 2:
                raise KeyringError("KEK entry is malformed")
            try:
                keys[pair[0]] = bytes.fromhex(pair[1])
            except ValueError:
                raise KeyringError("KEK entry is malformed") from None
            active = pair[0]
        if not keys:
            raise KeyringError("no KEK configured")
        return cls(keys, active, path)

    def ids(self) -> set[str]:
        return set(self._keys)

    def wrap(self, data_key: bytes, aad: bytes) -> tuple[str, bytes]:
        """Wrap a data key under the active KEK: (kek_id, nonce || ciphertext)."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        aad = aad + b"|" + self.active_id.encode()
        return self.active_id, nonce + AESGCM(self._keys[self.active_id]).encrypt(nonce, data_key, aad)

    def unwrap(self, kek_id: str, wrapped: bytes, aad: bytes) -> bytes:
        """The data key wrapped under `kek_id`."""
        kek = self._keys.get(kek_id)
        if kek is None:
            raise KeyringError("record's KEK is unknown")
        aad = aad + b"|" + kek_id.encode()
        return AESGCM(kek).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aad)


def _new_id(existing: set[str]) -> str:
    while True:
        kek_id = "kek-" + secrets.token_hex(4)
        if kek_id not in existing:
            return kek_id


def _append_key(path: Path, kek_id: str, kek: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{kek_id} {kek.hex()}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def add_kek(path: str | os.PathLike[str]) -> str:
    """Append a fresh KEK to the file and make it the active one; returns its id."""
    ring = Keyring.load(path, env={}, create=False)
    kek_id = _new_id(ring.ids())
    _append_key(Path(path), kek_id, secrets.token_bytes(KEY_BYTES))
    return kek_id
