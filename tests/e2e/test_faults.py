"""Proof 4: faults through the running gateway end in a defined state, the agent told, no digit heard.

- caller hangs up mid-entry: failed / call_ended over SSE;
- agent cancels (DELETE) mid-entry while the caller keeps keying: cancelled, and the
  keys after the cancel are still masked (the keypad was not quiet for 2 s);
- a capture on an unknown call: 404; a second capture on one call: 409;
- processor down (`[processor] kind = "https-json"` at a port where nothing listens):
  failed / processor_unavailable over SSE, and the agent's recording holds no digit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gateway import pki
from tests.e2e.cards import FAULT_PAN, PROCESSOR_DOWN_CVV, PROCESSOR_DOWN_PAN
from tests.e2e.conftest import E2eGateway, call_through
from tests.e2e.keypad import both_decoders, future_expiry, keyed, speech_like
from tests.peers.audio import write_wav
from tests.peers.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PAN = FAULT_PAN


def _states(stream) -> list[tuple[str | None, str | None]]:
    return [(d.get("state"), d.get("reason")) for name, d in stream.events
            if name == "progress" and d.get("type") == "state"]


def test_caller_hangs_up_mid_entry(gateway, artifacts):
    log_dir = artifacts / "hangup"
    log_dir.mkdir(parents=True, exist_ok=True)
    partial = keyed(PAN[:9], np.random.default_rng(11), tail_ms=100)
    wav = write_wav(log_dir / "partial.wav", partial)
    api = gateway.agent_api(log_dir)
    with call_through(gateway, log_dir, "erin") as call:
        status, body = api.start_capture(api.call_for("erin")["call_id"])
        assert status == 201, body
        stream = api.follow(body["capture_id"])
        call.caller.send("play", path=str(wav))
        time.sleep(len(partial) / 8000 + 0.1)
        call.caller.send("hangup")
        end = stream.wait_end(10)
    assert (end["state"], end["reason"]) == ("failed", "call_ended")
    assert end["token"] is None and end["last4"] is None
    assert ("failed", "call_ended") in _states(stream)
    status, view = api.request("GET", f"/v1/captures/{body['capture_id']}")
    assert status == 200 and view["state"] == "failed"
    assert both_decoders(call.recording) == ("", "")


def _cancel_mid_entry(gateway, log_dir: Path, caller_user: str, key_after_quiet: bool):
    """Start, refuse a second capture, cancel while the caller keys on; optionally key "9" after 2.6 s quiet."""
    log_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(12)
    partial = keyed(PAN[:14], rng, tail_ms=100)
    wav = write_wav(log_dir / "partial.wav", partial)
    after = write_wav(log_dir / "after.wav", keyed("9", rng, tail_ms=300))
    api = gateway.agent_api(log_dir)
    with call_through(gateway, log_dir, caller_user) as call:
        call_id = api.call_for(caller_user)["call_id"]
        status, body = api.start_capture(call_id)
        assert status == 201, body
        capture_id = body["capture_id"]
        stream = api.follow(capture_id)
        status, second = api.start_capture(call_id)
        assert (status, second["error"]) == (409, "conflict")
        call.caller.send("play", path=str(wav))
        time.sleep(len(partial) / 8000 / 2)
        status, cancelled = api.request("DELETE", f"/v1/captures/{capture_id}")
        assert status == 200 and cancelled["state"] == "cancelled"
        end = stream.wait_end(5)
        # The caller keeps keying after the cancel: still masked until 2 s of quiet.
        time.sleep(len(partial) / 8000 / 2 + 0.2)
        if key_after_quiet:
            time.sleep(2.6)
            call.caller.send("play", path=str(after))
            time.sleep(0.8)
    assert (end["state"], end["reason"]) == ("cancelled", "cancelled")
    assert ("cancelled", "cancelled") in _states(stream)
    return call


def test_unknown_call_second_capture_and_cancel_mid_entry(gateway, artifacts):
    api = gateway.agent_api(artifacts / "cancel")
    status, body = api.start_capture("no-such-call")
    assert (status, body["error"]) == (404, "not_found")
    call = _cancel_mid_entry(gateway, artifacts / "cancel", "frank", key_after_quiet=False)
    assert both_decoders(call.recording) == ("", "")


def test_mask_released_two_seconds_after_cancel(gateway, artifacts):
    call = _cancel_mid_entry(gateway, artifacts / "cancel-release", "heidi", key_after_quiet=True)
    assert both_decoders(call.recording) == ("9", "9")


@pytest.fixture(scope="module")
def processor_down(artifacts: Path) -> Iterator[E2eGateway]:
    """A gateway whose processor is an https-json endpoint where nothing listens."""
    folder = artifacts / "processor-down"
    ca = pki.ensure_ca(folder / "processor-ca").cert_path
    config = (f'[processor]\nkind = "https-json"\nurl = "https://127.0.0.1:{free_port()}/v1/tokens"\n'
              f'ca_file = "{ca}"\ntimeout_s = 2.0\nretries = 1\n')
    gw = E2eGateway(folder, config=config).start()
    try:
        yield gw
    finally:
        gw.stop()


def test_processor_down_fails_closed(processor_down, artifacts):
    log_dir = artifacts / "processor-down" / "call"
    log_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(13)
    keys = f"{PROCESSOR_DOWN_PAN}#{future_expiry()}#{PROCESSOR_DOWN_CVV}#"
    card = write_wav(log_dir / "card.wav", np.concatenate([keyed(keys, rng, tail_ms=100), speech_like(500, rng)]))
    late_hash = write_wav(log_dir / "hash.wav", keyed("#", rng, tail_ms=200))
    api = processor_down.agent_api(log_dir)
    with call_through(processor_down, log_dir, "grace") as call:
        status, body = api.start_capture(api.call_for("grace")["call_id"])
        assert status == 201, body
        call.caller.send("play", path=str(card))
        stream = api.follow(body["capture_id"])
        end = stream.wait_end(20)
        # Masking stays on after the failure until the keypad is quiet: a late "#" is not heard.
        call.caller.send("play", path=str(late_hash))
        time.sleep(0.6)
    assert (end["state"], end["reason"]) == ("failed", "processor_unavailable")
    assert end["token"] is None
    assert [s for s, _ in _states(stream)] == ["collecting", "tokenizing", "failed"]
    assert both_decoders(card)[0] == keys
    assert both_decoders(call.recording) == ("", "")
