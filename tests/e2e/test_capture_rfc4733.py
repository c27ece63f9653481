"""Proof 2: a card keyed as RFC 4733 events (PJSIP Call.sendDtmf) is tokenized; no event reaches the agent.

Caller timeline: "7" | 201 | card as events | "#" (<2 s after the end) | quiet 2.5 s | "9".
The agent's onDtmfEvent log must hold "7" and "9" and nothing between the 201 and
the end of the quiet period; its recording must hold no in-band digit either.
"""

from __future__ import annotations

import hmac
import time

import pytest

from tests.e2e.agentapi import detokenize
from tests.e2e.cards import RFC4733_CVV, RFC4733_PAN
from tests.e2e.conftest import call_through, wait_until
from tests.e2e.keypad import both_decoders, future_expiry

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PAN, CVV = RFC4733_PAN, RFC4733_CVV


def test_rfc4733_card_tokenized_and_no_event_reaches_agent(gateway, artifacts):
    log_dir = artifacts / "rfc4733"
    expiry = future_expiry()
    api = gateway.agent_api(log_dir)
    with call_through(gateway, log_dir, "carol") as call:
        call.caller.send("dtmf", digits="7", method="rfc4733", duration_ms=100)
        wait_until(lambda: call.agent.digits() == "7", 5, "the agent to receive 7 before the capture")
        listed = api.call_for("carol")
        t_start = time.monotonic()
        status, body = api.start_capture(listed["call_id"])
        assert status == 201, body
        call.caller.send("dtmf", digits=f"{PAN}#{expiry}#{CVV}#", method="rfc4733", duration_ms=100)
        stream = api.follow(body["capture_id"])
        end = stream.wait_end(20)
        # DESIGN contract 4: a "#" right after the last field is still withheld.
        call.caller.send("dtmf", digits="#", method="rfc4733", duration_ms=100)
        time.sleep(0.3 + 2.5)
        t_quiet = time.monotonic()
        call.caller.send("dtmf", digits="9", method="rfc4733", duration_ms=100)
        wait_until(lambda: call.agent.digits().endswith("9"), 5, "the agent to receive 9 after the capture")

    assert end["state"] == "tokenized", end
    assert (end["brand"], end["last4"]) == ("mastercard", "4444")
    stored = detokenize(gateway.vault_url, gateway.data_dir, end["token"])
    assert hmac.compare_digest(stored["pan"], PAN), "the vault holds a different card number"
    during = [e for e in call.agent.of("dtmf") if t_start <= e["t"] <= t_quiet]
    assert during == [], f"{len(during)} RFC 4733 events reached the agent during the capture"
    assert call.agent.digits() == "79"
    assert both_decoders(call.recording) == ("", "")
