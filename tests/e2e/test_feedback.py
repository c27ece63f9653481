"""Issue 4 item 1: the caller hears short feedback tones during a capture (field accepted, complete, error).

The agent sends nothing but silence, so whatever tone the caller's recording holds
came from the gateway. An "accepted" tone is 1800 Hz (dtmf.tones.FEEDBACK_TONES).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.e2e.conftest import call_through
from tests.e2e.keypad import future_expiry
from tests.peers.audio import read_wav, rms_dbfs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PAN = "4111111111111111"


def _tone_windows(samples: np.ndarray, freq_hz: float) -> int:
    """100 ms windows that carry a tone at `freq_hz` holding most of their power, above -50 dBFS."""
    count = 0
    n = 800
    bins = np.fft.rfftfreq(n, 1 / 8000)
    near = np.abs(bins - freq_hz) <= 30
    for i in range(0, samples.size - n + 1, n):
        w = samples[i:i + n].astype(np.float64)
        if rms_dbfs(w) < -50:
            continue
        spectrum = np.abs(np.fft.rfft(w * np.hanning(n))) ** 2
        if spectrum[near].sum() > 0.5 * spectrum.sum():
            count += 1
    return count


def test_caller_hears_feedback_tones_during_capture(gateway, artifacts):
    log_dir = artifacts / "feedback"
    api = gateway.agent_api(log_dir)
    with call_through(gateway, log_dir, "judy", caller_record=log_dir / "caller-judy.wav") as call:
        status, body = api.start_capture(api.call_for("judy")["call_id"])
        assert status == 201, body
        stream = api.follow(body["capture_id"])
        call.caller.send("dtmf", digits=f"{PAN}#{future_expiry()}#123#", method="rfc4733", duration_ms=100)
        end = stream.wait_end(20)
        assert end["state"] == "tokenized"
    assert _tone_windows(read_wav(log_dir / "caller-judy.wav"), 1800.0) >= 1


def _agent_to_caller_relayed(metrics_url: str) -> int:
    import urllib.request

    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith('tonewall_packets_total{') and 'direction="agent_to_caller"' in line \
                and 'outcome="relayed"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    raise AssertionError("tonewall_packets_total{direction=agent_to_caller,outcome=relayed} not exported")


def test_caller_hears_feedback_tones_while_the_agent_sends_no_audio(gateway, artifacts):
    """PJSIP's silence detector on at the agent (its microphone is silent): after its first
    packets the agent sends no RTP, and the tones reach the caller in the gateway's own packets."""
    log_dir = artifacts / "feedback-vad"
    api = gateway.agent_api(log_dir)
    with call_through(gateway, log_dir, "kate", caller_record=log_dir / "caller-kate.wav",
                      agent_options={"vad": "on"}) as call:
        status, body = api.start_capture(api.call_for("kate")["call_id"])
        assert status == 201, body
        stream = api.follow(body["capture_id"])
        time.sleep(1.0)  # PJSIP holds its detector off for the call's first 600 ms
        relayed_before = _agent_to_caller_relayed(gateway.metrics_url)
        call.caller.send("dtmf", digits=f"{PAN}#{future_expiry()}#123#", method="rfc4733", duration_ms=100)
        end = stream.wait_end(20)
        assert end["state"] == "tokenized"
        relayed = _agent_to_caller_relayed(gateway.metrics_url) - relayed_before
    # A talking agent would have sent ~50 packets a second over the several seconds of keying.
    assert relayed < 40, f"the agent kept sending ({relayed} packets): this call does not test a silent agent"
    assert _tone_windows(read_wav(log_dir / "caller-kate.wav"), 1800.0) >= 1
