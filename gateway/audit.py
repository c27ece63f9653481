"""Append-only, hash-chained, HMAC-signed audit log (JSON lines) and its verifier.

Public API:

    AuditLog(path, key, *, wallclock=time.time, fsync=True)
    AuditLog.open(data_dir) -> AuditLog          DATA_DIR/audit/audit.jsonl with the key in DATA_DIR/audit/audit.key (0600)
    AuditLog.record(event, *, actor=None, call_id=None, capture_id=None, outcome=None,
                    token=None, brand=None, last4=None, **extra) -> dict
    verify(path, key) -> VerifyResult            finds edited, removed, inserted, reordered or truncated records
    verify_data_dir(data_dir) -> VerifyResult    what `tonewall audit verify` runs
    load_or_create_key(path) -> bytes

Each line holds `seq`, `time`, `event`, the fields, `prev` (SHA-256 of the previous line's
bytes) and `hmac` (HMAC-SHA256 of the canonical JSON of everything else). A side file
`audit.jsonl.head` holds the last seq and hash under the same key, so cutting records off
the end is found too; it is written when the log is created with its key, so removing the log
and its head while the key stays is found as well, and the next start begins the new chain with
an `audit.log_missing` record (removing the key too cannot be told from a data dir that never had
a log: ship the records off the box for that).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

GENESIS = "0" * 64
KEY_BYTES = 32
DIGIT_RUN = re.compile(r"\d{7,}")
# A PAN written in groups ("4111 1111 1111 1111", "3782-822463-10005") has no 7-digit run:
# 12 or more digits joined by single spaces or dashes are refused too (dates and times never are).
GROUPED_DIGITS = re.compile(r"\d(?:[ -]?\d){11,}")
# Fields whose values are generated identifiers or hashes and may hold long digit runs.
DIGIT_RUN_ALLOWED = frozenset({"seq", "time", "prev", "hmac", "token", "call_id", "capture_id"})


class AuditError(ValueError):
    """A record was refused or the log cannot be used; the message never echoes a value."""


@dataclass
class VerifyResult:
    """Outcome of checking a log: ok, how many records, and each problem found."""

    ok: bool
    records: int
    problems: list[str] = field(default_factory=list)


def load_or_create_key(path: str | os.PathLike[str]) -> bytes:
    """The HMAC key from `path`, created 0600 when missing; refused when others can read it."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_bytes(KEY_BYTES).hex().encode())
    if path.stat().st_mode & 0o077:
        raise AuditError("audit key file is readable by group or others")
    key = bytes.fromhex(path.read_text().strip())
    if len(key) < 16:
        raise AuditError("audit key is too short")
    return key


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _mac(key: bytes, record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hmac"}
    return hmac.new(key, _canonical(body), hashlib.sha256).hexdigest()


def _holds_digit_run(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, (int, float)):
        return bool(DIGIT_RUN.search(str(value)))
    if isinstance(value, str):
        return bool(DIGIT_RUN.search(value) or GROUPED_DIGITS.search(value))
    if isinstance(value, dict):
        return any(_holds_digit_run(k) or _holds_digit_run(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_holds_digit_run(v) for v in value)
    return True  # anything else is refused: only JSON values belong in the log


class AuditLog:
    """Writes audit records; one instance per file, safe to call from several threads."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        key: bytes,
        *,
        wallclock: Callable[[], float] = time.time,
        fsync: bool = True,
        new_key: bool = True,
    ) -> None:
        self.path = Path(path)
        self._key = key
        self._wallclock = wallclock
        self._fsync = fsync
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._seq, self._prev = self._tail()
        if self._seq == 0 and not self.head_path.exists():
            if new_key:
                # A new log has a head from the start, so that removing the log and its head
                # (while the key stays) is found: an empty chain with no head is never "ok".
                self._write_head()
            else:
                # The key was there and the log and its head are gone: the new chain starts with
                # a record that says so, rather than passing for a fresh install on the next start.
                self.record("audit.log_missing", outcome="previous log and head not found")

    @classmethod
    def open(cls, data_dir: str | os.PathLike[str], **kwargs: Any) -> "AuditLog":
        """The log under DATA_DIR/audit/, creating its key on first use."""
        folder = Path(data_dir) / "audit"
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        new_key = not (folder / "audit.key").exists()
        return cls(folder / "audit.jsonl", load_or_create_key(folder / "audit.key"), new_key=new_key, **kwargs)

    @property
    def head_path(self) -> Path:
        return self.path.with_name(self.path.name + ".head")

    def _tail(self) -> tuple[int, str]:
        """Sequence number and hash of the last record on disk (continues an existing chain)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return 0, GENESIS
        last = b""
        with open(self.path, "rb") as src:
            for line in src:
                if line.strip():
                    last = line.rstrip(b"\n")
        try:
            record = json.loads(last)
            seq = int(record["seq"])
        except (ValueError, KeyError, TypeError):
            raise AuditError("audit log tail is not a record") from None
        if not hmac.compare_digest(_mac(self._key, record), str(record.get("hmac", ""))):
            raise AuditError("audit log tail fails its HMAC")
        return seq, hashlib.sha256(last).hexdigest()

    def record(
        self,
        event: str,
        *,
        actor: str | None = None,
        call_id: str | None = None,
        capture_id: str | None = None,
        outcome: str | None = None,
        token: str | None = None,
        brand: str | None = None,
        last4: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Append one record; refuses (AuditError) any non-identifier value with a run of 7+ digits."""
        fields: dict[str, Any] = {
            "actor": actor, "call_id": call_id, "capture_id": capture_id, "outcome": outcome,
            "token": token, "brand": brand, "last4": last4,
        }
        for name, value in extra.items():
            if name in ("seq", "time", "event", "prev", "hmac"):
                raise AuditError("audit field name is reserved")
            fields[name] = value
        if not isinstance(event, str) or _holds_digit_run(event):
            raise AuditError("audit event name refused")
        for name, value in fields.items():
            if name not in DIGIT_RUN_ALLOWED and _holds_digit_run(value):
                raise AuditError(f"audit field {name} holds a digit run")
        if last4 is not None and not re.fullmatch(r"\d{4}", last4):
            raise AuditError("audit field last-four is malformed")
        with self._lock:
            record: dict[str, Any] = {
                "seq": self._seq + 1,
                "time": round(self._wallclock(), 6),
                "event": event,
                **fields,
                "prev": self._prev,
            }
            record["hmac"] = _mac(self._key, record)
            line = _canonical(record)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line + b"\n")
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            self._seq += 1
            self._prev = hashlib.sha256(line).hexdigest()
            self._write_head()
        return record

    def _write_head(self) -> None:
        head = {"seq": self._seq, "hash": self._prev}
        head["hmac"] = _mac(self._key, head)
        tmp = self.head_path.with_name(self.head_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(_canonical(head))
        os.replace(tmp, self.head_path)


def verify(path: str | os.PathLike[str], key: bytes) -> VerifyResult:
    """Check every record's HMAC, sequence and link to the one before, and the head file."""
    path = Path(path)
    problems: list[str] = []
    expected_prev = GENESIS
    expected_seq = 1
    count = 0
    lines = path.read_bytes().split(b"\n") if path.exists() else []
    if lines and lines[-1] == b"":
        lines.pop()
    for lineno, line in enumerate(lines, start=1):
        count += 1
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            problems.append(f"line {lineno}: not a JSON record")
            expected_prev = hashlib.sha256(line).hexdigest()
            expected_seq += 1
            continue
        if not hmac.compare_digest(_mac(key, record), str(record.get("hmac", ""))):
            problems.append(f"line {lineno}: HMAC mismatch (edited or forged)")
        seq = record.get("seq")
        if seq != expected_seq:
            problems.append(f"line {lineno}: seq {seq} where {expected_seq} was expected (removed, inserted or reordered)")
        if record.get("prev") != expected_prev:
            problems.append(f"line {lineno}: previous-record hash does not match (removed, inserted or reordered)")
        expected_prev = hashlib.sha256(line).hexdigest()
        expected_seq = (seq if isinstance(seq, int) else expected_seq) + 1
    head_path = path.with_name(path.name + ".head")
    if head_path.exists():
        try:
            head = json.loads(head_path.read_bytes())
            head_ok = hmac.compare_digest(_mac(key, head), str(head.get("hmac", "")))
        except (ValueError, AttributeError):
            head_ok = False
            head = {}
        if not head_ok:
            problems.append("head file: HMAC mismatch")
        elif head.get("seq") != expected_seq - 1 or head.get("hash") != expected_prev:
            problems.append("head file: log does not end where it should (records cut off or appended)")
    else:
        problems.append("head file: missing (log removed, or never opened by this version)")
    return VerifyResult(ok=not problems, records=count, problems=problems)


def verify_data_dir(data_dir: str | os.PathLike[str]) -> VerifyResult:
    """Verify DATA_DIR/audit/audit.jsonl with its key."""
    folder = Path(data_dir) / "audit"
    return verify(folder / "audit.jsonl", load_or_create_key(folder / "audit.key"))
