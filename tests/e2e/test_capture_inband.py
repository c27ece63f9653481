"""Proof 1: a card keyed in-band by a real caller reaches the vault; the agent hears no digit.

PJSIP caller -> `tonewall run` (embedded vault, API, metrics) -> PJSIP agent that
records. Timeline on the caller's side:

    talk + "7"  |201| card (first tone right after the 201) + talk | "#" (<2 s) | quiet 2.5 s | "9"

Outside the capture the agent must hear the caller ("7", "9" and the talk decode and
carry energy); from the 201 until the keypad was quiet 2 s after the end, nothing.
"""

from __future__ import annotations

import re

import hmac
import time

import numpy as np
import pytest

from tests.e2e.agentapi import detokenize
from tests.e2e.cards import INBAND_CVV, INBAND_PAN
from tests.e2e.conftest import call_through
from tests.e2e.keypad import both_decoders, future_expiry, keyed, speech_like
from tests.peers.audio import read_wav, rms_dbfs, write_wav

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PAN, CVV = INBAND_PAN, INBAND_CVV


def _window_rms_max(samples: np.ndarray, start_s: float, end_s: float) -> float:
    a, b = max(0, int(start_s * 8000)), max(0, int(end_s * 8000))
    seg = samples[a:b]
    if seg.size < 800:
        return -np.inf
    return max(rms_dbfs(seg[i:i + 800]) for i in range(0, seg.size - 799, 400))


def test_inband_card_tokenized_and_agent_hears_no_digit(gateway, artifacts):
    log_dir = artifacts / "inband"
    rng = np.random.default_rng(4)
    expiry = future_expiry()
    card_keys = f"{PAN}#{expiry}#{CVV}#"
    talk_after_ms = 700.0
    log_dir.mkdir(parents=True, exist_ok=True)
    pre = write_wav(log_dir / "pre.wav",
                    np.concatenate([speech_like(1000, rng), keyed("7", rng, lead_ms=200, tail_ms=200)]))
    card_signal = keyed(card_keys, rng, talk_after_ms=talk_after_ms, tail_ms=100)
    card = write_wav(log_dir / "card.wav", card_signal)
    late_hash = write_wav(log_dir / "hash.wav", keyed("#", rng, tail_ms=100))
    after = write_wav(log_dir / "after.wav", keyed("9", rng, tail_ms=300))

    api = gateway.agent_api(log_dir)
    with call_through(gateway, log_dir, "bob") as call:
        t_rec = call.agent.wait_event("recording", 5)["t"]
        call.caller.send("play", path=str(pre))
        time.sleep(1.6)
        listed = api.call_for("bob")
        assert listed["agent"] == "alice" and listed["state"]
        status, body = api.start_capture(listed["call_id"])
        assert status == 201, body
        # DESIGN contract 4: masking is on before the 201, so a tone keyed right after it is masked.
        call.caller.send("play", path=str(card))
        t_card = time.monotonic()
        stream = api.follow(body["capture_id"])
        end = stream.wait_end(len(card_signal) / 8000 + 10)
        t_end = time.monotonic()
        time.sleep(max(0.0, t_card + len(card_signal) / 8000 + 0.05 - time.monotonic()))
        # DESIGN contract 4: a "#" pressed after the last field is still masked (quiet < 2 s).
        call.caller.send("play", path=str(late_hash))
        time.sleep(0.2 + 2.6)
        call.caller.send("play", path=str(after))
        time.sleep(0.9)

    assert end["state"] == "tokenized", end
    assert (end["brand"], end["last4"]) == ("visa", "1111")
    assert end["token"] and PAN not in end["token"]
    progress = [data for name, data in stream.events if name == "progress"]
    assert [d["field"] for d in progress if d.get("type") == "field_completed"] == ["pan", "expiry", "cvv"]
    assert max(d["count"] for d in progress if d.get("type") == "digit" and d["field"] == "pan") == 16

    stored = detokenize(gateway.vault_url, gateway.data_dir, end["token"])
    assert hmac.compare_digest(stored["pan"], PAN), "the vault holds a different card number"
    assert (stored["exp_month"], stored["exp_year"] % 100) == (int(expiry[:2]), int(expiry[2:]))
    assert "cvv" not in stored

    # Positive control: the caller's own audio decodes to every key, with both decoders.
    assert both_decoders(card) == (card_keys, card_keys)
    # The agent heard "7" before the capture and "9" once the keypad was quiet 2 s after it; nothing else.
    ours, multimon = both_decoders(call.recording)
    assert ours == "79", f"project detector found {len(ours)} digits in the agent's recording"
    # multimon-ng may split one unmasked tone in two when the recorder drops a frame under
    # load ("799"); a repeat of the same key is not a leaked digit, any other key would be.
    assert re.sub(r"(.)\1+", r"\1", multimon) == "79", (
        f"multimon-ng found {len(multimon)} digits in the agent's recording")
    heard = read_wav(call.recording)
    # Talk reached the agent before the capture and during it (masking replaces tones, not the caller).
    assert _window_rms_max(heard, 0.0, t_card - t_rec - 1.0) > -45.0
    talk_from = t_card - t_rec + len(card_signal) / 8000 - talk_after_ms / 1000 - 0.1
    assert _window_rms_max(heard, talk_from, talk_from + talk_after_ms / 1000) > -45.0
    assert t_end < t_card + len(card_signal) / 8000, "the capture ended after the talk: the late # proves nothing"
