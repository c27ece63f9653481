"""Card data review of the capture service: unexpected tokenizer errors and processor answers leak no digit."""

from __future__ import annotations

import datetime
import logging

import pytest

from gateway.audit import AuditLog
from gateway.capture.machine import CardEntryConfig
from gateway.capture.service import CaptureService
from gateway.tokenize import TokenResult
from tests.capture.fakes import Calls, Clock, FakeTokenizer, Masking, key_all, until_ended

PAN = "4111111111111111"
CARD_KEYS = f"{PAN}#1230#123#"
WALL = datetime.datetime(2025, 6, 15, 12, 0).timestamp()


class LeakyTokenizer(FakeTokenizer):
    """Fails the way careless adapter code would: the body in the message, chained under another error."""

    async def tokenize(self, card, idempotency_key):
        self.cards.append(card)
        body = bytearray()
        card.pan_digits.write_ascii(body)
        try:
            raise ValueError(f"processor refused body {body.decode()}")
        except ValueError as inner:
            raise RuntimeError(f"adapter bug near {body.decode()[:8]}") from inner


class EchoingTokenizer(FakeTokenizer):
    """A processor that hands back the card number as its token."""

    async def tokenize(self, card, idempotency_key):
        self.cards.append(card)
        body = bytearray()
        card.pan_digits.write_ascii(body)
        return TokenResult(f"tok_{body.decode()}", card.brand.value, card.last4)


def world(tmp_path, tokenizer):
    calls, masking, clock = Calls(), Masking(), Clock()
    calls.add("call-1", agent="alice")
    audit = AuditLog.open(tmp_path, fsync=False)
    service = CaptureService(tokenizer, audit, calls, masking, clock=clock, wallclock=lambda: WALL,
                             entry_config=CardEntryConfig(total_timeout_s=60.0))
    return service, clock, audit


def rendered(caplog) -> str:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    return "\n".join(handler.format(record) for record in caplog.records)


@pytest.mark.parametrize("tokenizer, reason", [
    (LeakyTokenizer(), "internal_error"), (EchoingTokenizer(), "processor_unavailable"),
])
async def test_no_digit_run_reaches_logs_audit_or_events(tmp_path, caplog, tokenizer, reason):
    service, clock, audit = world(tmp_path, tokenizer)
    caplog.set_level(logging.DEBUG)
    view = await service.start("call-1", [], actor="alice")
    key_all(service, "call-1", CARD_KEYS, clock)
    events = await until_ended(service, view.capture_id)
    final = service.get(view.capture_id)
    assert final.state == "failed" and final.reason == reason and final.token is None
    text = rendered(caplog)
    assert "RuntimeError" in text or reason != "internal_error"
    for where in (text, audit.path.read_text(), repr(events), repr(final)):
        assert PAN not in where and PAN[:8] not in where
    assert all(record.exc_info is None for record in caplog.records)
    assert tokenizer.cards[0].wiped
