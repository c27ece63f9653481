"""Issue 4 item 1: the caller hears short feedback tones during a capture (field accepted, complete, error).

The agent sends nothing but silence, so whatever tone the caller's recording holds
came from the gateway. An "accepted" tone is 1800 Hz (dtmf.tones.FEEDBACK_TONES).
"""

from __future__ import annotations

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
