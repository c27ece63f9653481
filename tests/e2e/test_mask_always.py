"""Policy `mask = "always"` for a route: no caller DTMF of any kind reaches the agent, capture or not.

The session gateway's config has a route for agents whose user part starts with
"secure" with `mask = "always"`. With no capture started, the caller keys in-band,
as RFC 4733 and as SIP INFO; the agent hears the caller's talk but none of the keys,
receives no telephone-event and no INFO, and each INFO is answered 200.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.e2e.conftest import ALWAYS_MASKED_USER, call_through, wait_until
from tests.e2e.keypad import both_decoders, keyed, speech_like
from tests.peers.audio import read_wav, rms_dbfs, write_wav

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_always_masked_route_withholds_every_dtmf_form(gateway, artifacts):
    log_dir = artifacts / "mask-always"
    log_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(21)
    talk_and_keys = np.concatenate([speech_like(800, rng), keyed("7319", rng, lead_ms=200, tail_ms=200)])
    wav = write_wav(log_dir / "keys.wav", talk_and_keys)
    with call_through(gateway, log_dir, "ivan", agent_user=ALWAYS_MASKED_USER) as call:
        call.caller.send("play", path=str(wav))
        time.sleep(len(talk_and_keys) / 8000 + 0.2)
        call.caller.send("dtmf", digits="58", method="rfc4733", duration_ms=100)
        time.sleep(0.6)
        call.caller.send("dtmf", digits="26", method="info", duration_ms=100)
        wait_until(lambda: len(call.caller.of("info_response")) == 2, 5, "answers to both INFO requests")
        time.sleep(0.3)
    assert both_decoders(wav) == ("7319", "7319")
    assert both_decoders(call.recording) == ("", "")
    assert call.agent.of("dtmf") == [] and call.agent.of("info_request") == []
    assert [e["code"] for e in call.caller.of("info_response")] == [200, 200]
    heard = read_wav(call.recording)
    assert max(rms_dbfs(heard[i:i + 800]) for i in range(0, 8000, 400)) > -45.0, "the agent heard no talk"
