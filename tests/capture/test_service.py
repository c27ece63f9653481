"""CaptureService with fake peers: refusals, masking hold, de-duplication, cancel, hang-up, timeouts."""

from __future__ import annotations

import datetime
import json

import pytest

from gateway.audit import AuditLog, verify
from gateway.capture.machine import CardEntryConfig
from gateway.capture.service import CaptureNotFound, CaptureRefused, CaptureService
from gateway.tokenize import TokenizationUnavailable
from tests.capture.fakes import Calls, Clock, FakeTokenizer, Masking, key_all, until_ended

CARD_KEYS = "4111111111111111#1230#123#"
WALL = datetime.datetime(2025, 6, 15, 12, 0).timestamp()


@pytest.fixture
def world(tmp_path):
    calls, masking, clock = Calls(), Masking(), Clock()
    calls.add("call-1", agent="alice")
    audit = AuditLog.open(tmp_path, fsync=False)
    tokenizer = FakeTokenizer()
    service = CaptureService(tokenizer, audit, calls, masking, clock=clock, wallclock=lambda: WALL,
                             entry_config=CardEntryConfig(total_timeout_s=60.0))
    return service, calls, masking, clock, audit, tokenizer


async def test_happy_path(world):
    service, calls, masking, clock, audit, tokenizer = world
    view = await service.start("call-1", ["pan", "expiry", "cvv"], actor="alice")
    assert masking.on["call-1"] is True and view.state == "collecting" and view.agent == "alice"
    key_all(service, "call-1", CARD_KEYS, clock)
    events = await until_ended(service, view.capture_id)
    final = service.get(view.capture_id)
    assert final.state == "tokenized" and final.token == "tok_fake_1111" and final.last4 == "1111"
    assert tokenizer.keys == [view.capture_id] and tokenizer.cards[0].wiped
    assert events[-1]["state"] == "tokenized" and events[-1]["token"] == "tok_fake_1111"
    assert [e["count"] for e in events if e["type"] == "digit" and e["field"] == "pan"] == list(range(1, 17))
    assert ("call-1", "complete") in masking.feedback
    records = [json.loads(line) for line in audit.path.read_text().splitlines()]
    assert [r["event"] for r in records] == ["capture.started", "capture.completed"]
    assert records[1]["token"] == "tok_fake_1111" and verify(audit.path, audit._key).ok


async def test_mask_held_until_keypad_quiet(world):
    service, calls, masking, clock, *_ = world
    view = await service.start("call-1", [], actor="alice")
    key_all(service, "call-1", CARD_KEYS, clock)
    await until_ended(service, view.capture_id)
    assert service.capture_active("call-1")
    clock.now += 1.5
    service.on_digit("call-1", "#", "rfc4733", clock.now)  # a stray '#' after the end: still masked
    service.on_key_released("call-1", "rfc4733", clock.now + 0.1)
    service.tick(clock.now + 2.0)
    assert masking.on["call-1"] and service.capture_active("call-1")
    clock.now += 2.1
    assert service.get_timer() == pytest.approx(clock.now)
    service.tick(clock.now)
    assert masking.on["call-1"] is False and not service.capture_active("call-1")


@pytest.mark.parametrize("method", ["inband", "rfc4733"])
async def test_mask_held_while_the_last_key_is_held(world, method):
    """A key held past the capture's end (the CVV completing at full length) stays masked until 2 s after key-up."""
    service, calls, masking, clock, *_ = world
    view = await service.start("call-1", [], actor="alice")
    key_all(service, "call-1", CARD_KEYS[:-2], clock, method=method)  # ... "12", the CVV's last key not yet
    clock.now += 0.3
    service.on_digit("call-1", "3", method, clock.now)  # completes the CVV at full length, and stays down
    await until_ended(service, view.capture_id)
    assert service.get(view.capture_id).state == "tokenized"
    held_from = clock.now
    for _ in range(10):  # 10 s of one key held: never released under it
        clock.now += 1.0
        service.tick(clock.now)
        assert service.get_timer() is None or service.get_timer() > clock.now
    assert masking.on["call-1"] and service.capture_active("call-1")
    service.on_key_released("call-1", "info" if method == "inband" else "inband", clock.now)  # not the held one
    service.tick(clock.now + 2.5)
    assert service.capture_active("call-1")
    service.on_key_released("call-1", method, clock.now)
    assert clock.now - held_from >= 10.0
    service.tick(clock.now + 1.9)
    assert service.capture_active("call-1")
    assert service.get_timer() == pytest.approx(clock.now + 2.0)
    service.tick(clock.now + 2.0)
    assert masking.on["call-1"] is False and not service.capture_active("call-1")


async def test_call_end_releases_a_held_key(world):
    service, calls, masking, clock, *_ = world
    view = await service.start("call-1", [], actor="alice")
    service.on_digit("call-1", "5", "rfc4733", clock.now)
    await service.cancel(view.capture_id, actor="alice")
    service.tick(clock.now + 30)
    assert service.capture_active("call-1")
    service.on_call_ended("call-1")
    assert not service.capture_active("call-1")


@pytest.mark.parametrize(
    "setup, fields, reason",
    [(lambda c: None, [], "unknown_call"), (lambda c: c.add("call-x", codec="G729"), [], "codec_not_inspectable"),
     (lambda c: c.add("call-x"), ["cvv"], "invalid_fields")],
)
async def test_refusals(world, setup, fields, reason):
    service, calls, masking, clock, audit, _ = world
    setup(calls)
    with pytest.raises(CaptureRefused) as refused:
        await service.start("call-x", fields, actor="alice")
    assert refused.value.reason == reason and "call-x" not in masking.on
    last = json.loads(audit.path.read_text().splitlines()[-1])
    assert last["event"] == "capture.refused" and last["outcome"] == reason


async def test_two_captures_on_one_call(world):
    service, calls, masking, clock, *_ = world
    first = await service.start("call-1", [], actor="alice")
    with pytest.raises(CaptureRefused) as refused:
        await service.start("call-1", [], actor="alice")
    assert refused.value.reason == "capture_active"
    await service.cancel(first.capture_id, actor="alice")
    second = await service.start("call-1", [], actor="alice")
    assert second.capture_id != first.capture_id
    # the first capture's quiet period ends, but the second one keeps masking on
    service.tick(clock.now + 10)
    assert masking.on["call-1"] is True
    key_all(service, "call-1", CARD_KEYS, clock)
    await until_ended(service, second.capture_id)
    assert service.get(second.capture_id).state == "tokenized"


async def test_cancel_mid_entry_wipes_and_holds_mask(world):
    service, calls, masking, clock, audit, tokenizer = world
    view = await service.start("call-1", [], actor="alice")
    entry = service._captures[view.capture_id].entry
    buffers = list(entry._buffers.values())
    key_all(service, "call-1", "41111111", clock)
    cancelled = await service.cancel(view.capture_id, actor="alice")
    assert cancelled.state == "cancelled" and all(not any(b._buf) for b in buffers)
    assert masking.on["call-1"] and tokenizer.keys == []
    events = await until_ended(service, view.capture_id)
    assert events[-1]["state"] == "cancelled"
    assert (await service.cancel(view.capture_id, actor="alice")).state == "cancelled"


async def test_cancel_while_tokenizing(world):
    import asyncio

    service, calls, masking, clock, audit, tokenizer = world
    tokenizer.gate = asyncio.Event()
    view = await service.start("call-1", [], actor="alice")
    key_all(service, "call-1", CARD_KEYS, clock)
    await asyncio.sleep(0)
    assert service.get(view.capture_id).state == "tokenizing"
    await service.cancel(view.capture_id, actor="alice")
    await asyncio.sleep(0)
    assert service.get(view.capture_id).state == "cancelled" and tokenizer.cards[0].wiped


async def test_caller_hangs_up_mid_entry(world):
    service, calls, masking, clock, *_ = world
    view = await service.start("call-1", [], actor="alice")
    key_all(service, "call-1", "4111", clock)
    service.on_call_ended("call-1")
    final = service.get(view.capture_id)
    assert final.state == "failed" and final.reason == "call_ended"
    assert not service.capture_active("call-1") and masking.on["call-1"] is False


async def test_processor_outage_fails_closed(world):
    service, calls, masking, clock, audit, tokenizer = world
    tokenizer.error = TokenizationUnavailable("unreachable")
    view = await service.start("call-1", [], actor="alice")
    key_all(service, "call-1", CARD_KEYS, clock)
    events = await until_ended(service, view.capture_id)
    assert events[-1] == {"capture_id": view.capture_id, "type": "state", "state": "failed",
                          "reason": "processor_unavailable"}
    assert masking.on["call-1"] and tokenizer.cards[0].wiped


async def test_inband_and_rfc4733_duplicate_counts_once(world):
    service, calls, masking, clock, *_ = world
    view = await service.start("call-1", [], actor="alice")
    for key in "4111111111111111":
        clock.now += 0.3
        service.on_digit("call-1", key, "rfc4733", clock.now)
        service.on_digit("call-1", key, "inband", clock.now + 0.04)
    assert service.get(view.capture_id).last4 is None  # PAN still open, no double digits
    counts = [e["count"] for e in service._captures[view.capture_id].history if e["type"] == "digit"]
    assert counts == list(range(1, 17))


async def test_same_method_repeats_count(world):
    service, calls, masking, clock, *_ = world
    view = await service.start("call-1", [], actor="alice")
    service.on_digit("call-1", "4", "inband", clock.now)
    service.on_digit("call-1", "4", "inband", clock.now + 0.05)
    counts = [e["count"] for e in service._captures[view.capture_id].history if e["type"] == "digit"]
    assert counts == [1, 2]


async def test_entry_timeout_through_tick(world):
    service, calls, masking, clock, *_ = world
    view = await service.start("call-1", [], actor="alice")
    key_all(service, "call-1", "4111", clock)
    while service.get(view.capture_id).state == "collecting":
        service.tick(service.get_timer())
    final = service.get(view.capture_id)
    assert final.state == "failed" and final.reason in ("timeout", "too_many_attempts")
    assert masking.on["call-1"]


async def test_unknown_capture(world):
    service, *_ = world
    with pytest.raises(CaptureNotFound):
        service.get("cap_nope")
    with pytest.raises(CaptureNotFound):
        service.subscribe("cap_nope")


async def test_view_kept_an_hour_then_pruned(world):
    service, calls, masking, clock, *_ = world
    view = await service.start("call-1", [], actor="alice")
    await service.cancel(view.capture_id, actor="alice")
    service.on_call_ended("call-1")
    service.tick(clock.now + 3599)
    assert service.get(view.capture_id).state == "cancelled"
    service.tick(clock.now + 3601)
    with pytest.raises(CaptureNotFound):
        service.get(view.capture_id)


async def test_mask_held_while_the_masker_still_hears_a_tone(world):
    """The detector saw the key come up (talk-over, attenuation) but the masker still masks: quiet restarts there."""
    service, calls, masking, clock, *_ = world
    masking.clock = clock
    view = await service.start("call-1", [], actor="alice")
    key_all(service, "call-1", CARD_KEYS, clock)
    await until_ended(service, view.capture_id)
    keys_up = clock.now
    for _ in range(6):  # the masker keeps changing audio for 3 s after the last key-up
        clock.now += 0.5
        masking.masked_at["call-1"] = clock.now
        service.tick(clock.now)
        assert service.capture_active("call-1")
    assert clock.now - keys_up == pytest.approx(3.0)
    clock.now += 1.9
    service.tick(clock.now)
    assert service.capture_active("call-1")
    clock.now += 0.1
    service.tick(clock.now)
    assert not service.capture_active("call-1") and masking.on["call-1"] is False


async def test_digits_of_an_ended_call_leave_no_state(world):
    service, calls, masking, clock, *_ = world
    service.on_call_ended("call-1")
    del calls.calls["call-1"]
    service.on_digit("call-1", "5", "rfc4733", clock.now)  # delivered in the BYE's loop iteration
    assert "call-1" not in service._keys_down and "call-1" not in service._last_digit
