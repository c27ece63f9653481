"""The audit log refuses a card number written in groups, not only as one digit run."""

from __future__ import annotations

import pytest

from gateway.audit import AuditError, AuditLog, verify


@pytest.fixture
def log(tmp_path):
    return AuditLog.open(tmp_path, wallclock=lambda: 1_000.0, fsync=False)


@pytest.mark.parametrize("value", [
    "4111 1111 1111 1111", "4111-1111-1111-1111", "card 3782-822463-10005 refused",
    "5555 5555 5555 4444", "41 11 11 11 11 11 11 11",
])
def test_grouped_card_numbers_refused(log, value):
    with pytest.raises(AuditError) as caught:
        log.record("capture.failed", outcome=value)
    assert not any(ch.isdigit() for ch in str(caught.value))
    assert not log.path.exists() or log.path.read_bytes() == b""


@pytest.mark.parametrize("value", [
    "2026-11-29 21:02:09", "127.0.0.1", "192.168.100.200", "::1", "processor_rejected_card_declined",
    "10 s", "call 123-456",
])
def test_dates_addresses_and_short_numbers_still_pass(log, value):
    log.record("auth_failed", reason=value)
    assert verify(log.path, log._key).ok
