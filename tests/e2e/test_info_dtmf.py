"""Proof 3: SIP INFO DTMF during a capture is answered 200 and not forwarded; outside one it is relayed.

PJSIP's caller sends `application/dtmf-relay` INFO requests (Call.sendDtmf with the
SIP INFO method), one per key. Before the capture the agent receives the INFO; during
it (and the 2 s quiet after) the gateway answers each with 200 itself, the agent
receives none, and the keys still fill the capture.
"""

from __future__ import annotations

import hmac
import time

import pytest

from tests.e2e.agentapi import detokenize
from tests.e2e.cards import INFO_CID, INFO_PAN
from tests.e2e.conftest import call_through, wait_until
from tests.e2e.keypad import future_expiry

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PAN, CID = INFO_PAN, INFO_CID


def test_info_dtmf_answered_not_forwarded_during_capture(gateway, artifacts):
    log_dir = artifacts / "info"
    keys = f"{PAN}#{future_expiry()}#{CID}#"
    api = gateway.agent_api(log_dir)
    with call_through(gateway, log_dir, "dave") as call:
        call.caller.send("dtmf", digits="7", method="info", duration_ms=100)
        wait_until(lambda: call.agent.of("info_request"), 5, "the agent to receive the INFO before the capture")
        wait_until(lambda: call.caller.of("info_response"), 5, "the answer to the first INFO")
        listed = api.call_for("dave")
        t_start = time.monotonic()
        status, body = api.start_capture(listed["call_id"])
        assert status == 201, body
        stream = api.follow(body["capture_id"])
        call.caller.send("dtmf", digits=keys, method="info", duration_ms=100)
        end = stream.wait_end(15)
        wait_until(lambda: len(call.caller.of("info_response")) == 1 + len(keys), 5, "answers to every INFO")
        time.sleep(2.5)
        t_quiet = time.monotonic()
        call.caller.send("dtmf", digits="9", method="info", duration_ms=100)
        wait_until(lambda: len(call.agent.of("info_request")) == 2, 5, "the INFO after the capture to be relayed")

    assert end["state"] == "tokenized", end
    assert (end["brand"], end["last4"]) == ("amex", "0005")
    stored = detokenize(gateway.vault_url, gateway.data_dir, end["token"])
    assert hmac.compare_digest(stored["pan"], PAN), "the vault holds a different card number"
    codes = [e["code"] for e in call.caller.of("info_response")]
    assert codes == [200] * (2 + len(keys)), codes
    during = [e for e in call.agent.of("info_request") if t_start <= e["t"] <= t_quiet]
    assert during == [], f"{len(during)} INFO requests reached the agent during the capture"
    assert [(e["digit"], e["method"]) for e in call.agent.of("dtmf")] == [("7", "info"), ("9", "info")]
