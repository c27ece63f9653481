"""CaptureService with a real embedded vault over HTTPS/mTLS on 127.0.0.1: outcomes, faults, and no card data anywhere."""

from __future__ import annotations

import asyncio
import datetime
import logging
import re

import pytest

from gateway.audit import AuditLog
from gateway.capture.service import CaptureService
from gateway.tokenize import RetryPolicy
from tests.capture.cards import TEST_PANS, runs_of
from tests.capture.fakes import Calls, Clock, Masking, key_all, until_ended
from tests.vault.harness import Faults, free_port, open_vault, vault_tokenizer

WALL = datetime.datetime(2025, 6, 15, 12, 0).timestamp()
QUICK = RetryPolicy(attempts=3, attempt_timeout_s=1.0, total_timeout_s=3.0, backoff_s=0.05)


def keys_for(pan: str) -> str:
    cvv = "1234" if pan.startswith(("34", "37")) else "123"
    return f"{pan}#1230#{cvv}#"


async def run_capture(tmp_path, tokenizer, pan=TEST_PANS[0]):
    calls, masking, clock = Calls(), Masking(), Clock()
    calls.add("call-1", agent="alice")
    audit = AuditLog.open(tmp_path, fsync=False)
    service = CaptureService(tokenizer, audit, calls, masking, clock=clock, wallclock=lambda: WALL)
    view = await service.start("call-1", [], actor="alice")
    key_all(service, "call-1", keys_for(pan), clock)
    events = await until_ended(service, view.capture_id)
    return service, service.get(view.capture_id), events, masking


async def test_tokenized_through_vault(tmp_path):
    vault = await open_vault(tmp_path)
    tok = vault_tokenizer(tmp_path, vault.port, QUICK)
    try:
        service, final, events, masking = await run_capture(tmp_path, tok)
        assert final.state == "tokenized" and final.token.endswith("_1111") and final.brand == "visa"
        assert vault.store.detokenize(final.token).last4 == "1111"
        assert masking.on["call-1"]
    finally:
        await tok.close()
        await vault.close()


@pytest.mark.parametrize(
    "fault, reason",
    [("down", "processor_unavailable"), ("slow", "processor_timeout"), ("wrong_ca", "processor_unavailable"),
     ("wrong_client_cert", "processor_unavailable"), ("errors_500", "processor_unavailable")],
)
async def test_faults_fail_closed(tmp_path, fault, reason):
    faults = Faults(hold=fault == "slow", errors_500=100 if fault == "errors_500" else 0)
    vault = None if fault == "down" else await open_vault(tmp_path / "vault", faults)
    port = vault.port if vault else free_port()
    data = tmp_path / ("other" if fault in ("wrong_ca", "wrong_client_cert") else "vault")
    kw = {"ca_dir": tmp_path / "vault"} if fault == "wrong_client_cert" else {}
    policy = RetryPolicy(attempts=2, attempt_timeout_s=0.3, total_timeout_s=1.0, backoff_s=0.05)
    tok = vault_tokenizer(data, port, policy, **kw)
    try:
        service, final, events, masking = await run_capture(tmp_path, tok)
        assert final.state == "failed" and final.reason == reason
        assert events[-1]["state"] == "failed" and events[-1]["reason"] == reason  # the agent is told
        assert masking.on["call-1"] and service.capture_active("call-1")
    finally:
        faults.release.set()
        await tok.close()
        if vault:
            await vault.close()


async def test_lost_response_gives_one_token(tmp_path):
    faults = Faults(lose_responses=1)
    vault = await open_vault(tmp_path, faults)
    tok = vault_tokenizer(tmp_path, vault.port, QUICK)
    try:
        _, final, _, _ = await run_capture(tmp_path, tok)
        assert final.state == "tokenized" and faults.seen == 2
        assert sum(vault.store.kek_usage().values()) == 1
    finally:
        await tok.close()
        await vault.close()


async def test_500s_then_success(tmp_path):
    vault = await open_vault(tmp_path, Faults(errors_500=2))
    tok = vault_tokenizer(tmp_path, vault.port, QUICK)
    try:
        _, final, _, _ = await run_capture(tmp_path, tok)
        assert final.state == "tokenized"
    finally:
        await tok.close()
        await vault.close()


async def test_vault_restart_mid_capture(tmp_path):
    port = free_port()
    vault = await open_vault(tmp_path, port=port)
    tok = vault_tokenizer(tmp_path, port, RetryPolicy(attempts=5, attempt_timeout_s=1.0, total_timeout_s=8.0,
                                                     backoff_s=0.2))
    calls, masking, clock = Calls(), Masking(), Clock()
    calls.add("call-1")
    service = CaptureService(tok, AuditLog.open(tmp_path, fsync=False), calls, masking, clock=clock,
                             wallclock=lambda: WALL)
    try:
        view = await service.start("call-1", [], actor="alice")
        key_all(service, "call-1", "4111111111111111#", clock)
        await vault.close()  # the vault goes away while the caller is keying
        key_all(service, "call-1", "1230#12", clock)
        vault = await open_vault(tmp_path, port=port)
        key_all(service, "call-1", "3#", clock)
        await until_ended(service, view.capture_id)
        assert service.get(view.capture_id).state == "tokenized"
    finally:
        await tok.close()
        await vault.close()


async def test_no_card_data_anywhere(tmp_path, caplog):
    """Every output of many captures: logs, audit, SQLite bytes, exception texts, events: no PAN, no 7-digit run of one."""
    caplog.set_level(logging.DEBUG)
    vault = await open_vault(tmp_path / "vault", Faults(lose_responses=1, errors_500=1))
    tok = vault_tokenizer(tmp_path / "vault", vault.port, QUICK)
    outputs: list[str] = []
    try:
        for i, pan in enumerate(TEST_PANS):
            service, final, events, _ = await run_capture(tmp_path / f"run{i}", tok, pan)
            assert final.state == "tokenized", final
            outputs += [repr(e) for e in events] + [repr(final), repr(service._captures)]
        down = vault_tokenizer(tmp_path / "vault", free_port(), QUICK)
        _, final, events, _ = await run_capture(tmp_path / "down", down, TEST_PANS[0])
        await down.close()
        outputs += [repr(e) for e in events] + [repr(final)]
        for bad in ("4111111111111112#", "5555555555554444#0101#"):
            calls, masking, clock = Calls(), Masking(), Clock()
            calls.add("c")
            service = CaptureService(tok, AuditLog.open(tmp_path / "bad", fsync=False), calls, masking, clock=clock,
                                     wallclock=lambda: WALL)
            view = await service.start("c", [], actor="a")
            key_all(service, "c", bad, clock)
            outputs += [repr(e) for e in service._captures[view.capture_id].history]
            await service.cancel(view.capture_id, "a")
        try:
            from gateway.capture.sensitive import SensitiveDigits

            buf = SensitiveDigits(2)
            for ch in TEST_PANS[0]:
                buf.append(ch)
        except ValueError as exc:
            outputs.append(str(exc) + repr(exc))
    finally:
        await tok.close()
        await vault.close()
    outputs.append("\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records))
    outputs.append(caplog.text)
    blobs = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    blob_text = [b.decode("latin-1") for b in blobs]
    haystack = "\n".join(outputs + blob_text)
    needles = set()
    for pan in TEST_PANS:
        needles |= runs_of(pan)
    hits = [n for n in needles if n in haystack]
    assert hits == []
    # and nothing resembling any PAN-length digit run in the text outputs
    assert not re.search(r"(?<!\d)\d{12,19}(?!\d)", "\n".join(outputs))
