"""Audit log: chain and HMAC, tamper detection of every kind, the digit-run guard, key handling."""

from __future__ import annotations

import json
import stat

import pytest

from gateway.audit import AuditError, AuditLog, load_or_create_key, verify, verify_data_dir


@pytest.fixture
def log(tmp_path):
    clock = iter(range(1_000, 2_000))
    audit = AuditLog.open(tmp_path, wallclock=lambda: float(next(clock)), fsync=False)
    for i in range(5):
        audit.record("capture.started", actor="agent-7", call_id=f"call-{i}", capture_id=f"cap{i}",
                     outcome="ok", token=f"tok_abc_{i:04d}", brand="visa", last4="1111")
    return audit


def lines(audit):
    return audit.path.read_bytes().splitlines(keepends=True)


def write(audit, parts):
    audit.path.write_bytes(b"".join(parts))


def test_clean_log_verifies(log, tmp_path):
    result = verify_data_dir(tmp_path)
    assert result.ok and result.records == 5 and result.problems == []


def test_record_fields(log):
    record = json.loads(lines(log)[0])
    assert record["seq"] == 1 and record["event"] == "capture.started" and record["last4"] == "1111"
    assert set(record) >= {"seq", "time", "event", "actor", "call_id", "capture_id", "outcome",
                           "token", "brand", "last4", "prev", "hmac"}


def test_files_are_private(log, tmp_path):
    for name in ("audit.jsonl", "audit.key", "audit.jsonl.head"):
        assert stat.S_IMODE((tmp_path / "audit" / name).stat().st_mode) == 0o600


def test_edited_record_found(log):
    parts = lines(log)
    parts[2] = parts[2].replace(b'"outcome":"ok"', b'"outcome":"no"')
    write(log, parts)
    result = verify(log.path, log._key)
    assert not result.ok and any("line 3: HMAC" in p for p in result.problems)


def test_removed_record_found(log):
    parts = lines(log)
    del parts[1]
    write(log, parts)
    result = verify(log.path, log._key)
    assert not result.ok and any("line 2" in p for p in result.problems)


def test_reordered_records_found(log):
    parts = lines(log)
    parts[1], parts[2] = parts[2], parts[1]
    write(log, parts)
    assert not verify(log.path, log._key).ok


def test_inserted_record_found(log, tmp_path):
    other = AuditLog(tmp_path / "other.jsonl", log._key, fsync=False)
    other.record("admin.key_rotated", actor="mallory")
    parts = lines(log)
    parts.insert(3, lines(other)[0])
    write(log, parts)
    assert not verify(log.path, log._key).ok


def test_truncated_tail_found(log):
    write(log, lines(log)[:-2])
    result = verify(log.path, log._key)
    assert not result.ok and any("head file" in p for p in result.problems)


def test_wrong_key_fails(log):
    assert not verify(log.path, b"x" * 32).ok


def test_reopen_continues_chain(log, tmp_path):
    again = AuditLog.open(tmp_path, fsync=False)
    again.record("capture.cancelled", actor="agent-7", capture_id="cap9")
    result = verify_data_dir(tmp_path)
    assert result.ok and result.records == 6


def test_reopen_refuses_forged_tail(log, tmp_path):
    parts = lines(log)
    parts[-1] = parts[-1].replace(b"agent-7", b"agent-8")
    write(log, parts)
    with pytest.raises(AuditError):
        AuditLog.open(tmp_path)


@pytest.mark.parametrize(
    "fields",
    [{"actor": "4111111111111111"}, {"outcome": "card 4111111 bad"}, {"reason": "x5555555y"},
     {"detail": {"n": "12345678"}}, {"items": ["1234567"]}, {"count": 12345678}, {"last4": "41111"}],
)
def test_digit_runs_refused(log, fields):
    with pytest.raises(AuditError) as caught:
        log.record("capture.failed", **fields)
    assert not any(ch.isdigit() for ch in str(caught.value))
    assert len(lines(log)) == 5


def test_digit_runs_allowed_in_identifiers(log):
    log.record("capture.started", call_id="12345678@host", token="tok_x_1111", capture_id="c")
    assert verify(log.path, log._key).ok


def test_reserved_names_refused(log):
    with pytest.raises(AuditError):
        log.record("x", seq=1)


def test_world_readable_key_refused(tmp_path):
    key = tmp_path / "k"
    load_or_create_key(key)
    key.chmod(0o644)
    with pytest.raises(AuditError):
        load_or_create_key(key)


def test_a_removed_log_and_head_are_found_while_the_key_stays(log, tmp_path):
    """Deleting audit.jsonl and audit.jsonl.head read "ok (0 records)": a log has a head from the
    moment it is created, so an empty chain without one is removal."""
    log.path.unlink()
    log.head_path.unlink()
    result = verify_data_dir(tmp_path)
    assert not result.ok and any("head file: missing" in p for p in result.problems)
    # The next start does not erase that: its chain begins with a record saying the log was gone.
    AuditLog.open(tmp_path, fsync=False)
    result = verify_data_dir(tmp_path)
    assert result.ok and result.records == 1
    assert json.loads(log.path.read_bytes().splitlines()[0])["event"] == "audit.log_missing"


def test_a_new_log_verifies_before_its_first_record(tmp_path):
    fresh = AuditLog.open(tmp_path, fsync=False)
    assert fresh.head_path.exists() and not fresh.path.exists()
    result = verify_data_dir(tmp_path)
    assert result.ok and result.records == 0
