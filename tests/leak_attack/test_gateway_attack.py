"""Attacks on the real thing: `tonewall run` (flat mask) between a PJSIP caller and a PJSIP agent that records.

One in-band call, keyed by the caller right after the 201 (times from the start of its WAV):

    0.3 s  WEAK   "2580" at -50 dBm0 per tone, 100 ms each (the receiver must not take them)
    2.0 s  GATED  "1397", each 160 ms of 10 ms tone / 5 ms gap at -10 dBm0 (a phone breaking tones up)
    4.6 s  CARD   the card keyed normally; the CVV's last digit held for 3.5 s

The agent's recording is cut into those windows and attacked (tests/leak_attack/attack.py).
A second call keys the card as RFC 4733 events with the CVV's last key held 3.5 s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from dtmf.tones import dtmf_tone
from tests.e2e.conftest import E2eGateway, call_through
from tests.e2e.keypad import future_expiry, keyed
from tests.peers.audio import read_wav, write_wav

from .attack import amplify, detector_digits, multimon_digits

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PAN, CVV = "4000056655665556", "478"
"""A public Visa test number (Luhn-valid) kept apart from tests/e2e/cards.py."""
RFC4733_PAN, RFC4733_CVV = "2223003122003222", "562"
"""A public Mastercard 2-series test number."""
WEAK_KEYS, WEAK_DBM0 = "2580", -50.0
GATED_KEYS = "1397"
HELD_S = 3.5
RATE = 8000
WEAK_AT_S, GATED_AT_S, CARD_AT_S = 0.3, 2.0, 4.6


def _gated(key: str, total_ms: float = 160.0, on_ms: float = 10.0, off_ms: float = 5.0) -> np.ndarray:
    tone = dtmf_tone(key, total_ms, -10.0)
    t_ms = np.arange(len(tone)) / 8.0
    return tone * ((t_ms % (on_ms + off_ms)) < on_ms)


def _place(out: np.ndarray, at_s: float, parts: list[np.ndarray], gap_ms: float) -> float:
    pos = int(at_s * RATE)
    for part in parts:
        out[pos:pos + len(part)] += part
        pos += len(part) + int(gap_ms * 8)
    return pos / RATE


@dataclass
class InbandAttack:
    heard: np.ndarray
    """The agent's recording, from the moment the caller's WAV started playing (approximately)."""
    end: dict
    held_at_s: float
    """Where the held last key starts in the caller's WAV."""


@pytest.fixture(scope="module")
def inband(attack_gateway: E2eGateway, tmp_path_factory: pytest.TempPathFactory) -> InbandAttack:
    log_dir = tmp_path_factory.mktemp("inband-attack")
    rng = np.random.default_rng(11)
    card = keyed(f"{PAN}#{future_expiry()}#{CVV[:-1]}", rng, tail_ms=0)
    held = dtmf_tone(CVV[-1], HELD_S * 1000, -9.0, -1.0)
    total_s = CARD_AT_S + (len(card) + len(held)) / RATE + 1.5
    signal = np.zeros(int(total_s * RATE))
    _place(signal, WEAK_AT_S, [dtmf_tone(k, 100, WEAK_DBM0) for k in WEAK_KEYS], 150)
    _place(signal, GATED_AT_S, [_gated(k) for k in GATED_KEYS], 300)
    _place(signal, CARD_AT_S, [card, held], 0)
    wav = write_wav(log_dir / "attack.wav", signal)
    api = attack_gateway.agent_api(log_dir)
    with call_through(attack_gateway, log_dir, "mallory") as call:
        t_rec = call.agent.wait_event("recording", 5)["t"]
        time.sleep(0.5)
        status, body = api.start_capture(api.call_for("mallory")["call_id"])
        assert status == 201, body
        call.caller.send("play", path=str(wav))
        t_play = time.monotonic()
        stream = api.follow(body["capture_id"])
        end = stream.wait_end(total_s + 10)
        time.sleep(max(0.0, t_play + total_s + 0.3 - time.monotonic()))
    heard = read_wav(call.recording)
    skip = max(0, int((t_play - t_rec) * RATE))
    return InbandAttack(heard[skip:], end, CARD_AT_S + len(card) / RATE)


def _window(audio: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    return audio[max(0, int(start_s * RATE)):max(0, int(end_s * RATE))]


def test_the_card_went_through(inband):
    """Precondition: the gateway took the card keyed around the attacks (they are not noise to it)."""
    assert inband.end["state"] == "tokenized", inband.end
    assert inband.end["last4"] == PAN[-4:]


def test_a_normally_keyed_card_leaves_nothing_even_amplified_30_db(inband):
    part = _window(inband.heard, CARD_AT_S - 0.2, inband.held_at_s + 1.5)
    loud = amplify(part, 30.0)
    found = detector_digits(loud) + multimon_digits(loud)
    if found:  # pytest.fail, not assert: the rewritten assert would print the digits (card data)
        pytest.fail(f"{len(found)} digits decoded")


def test_weak_keys_under_the_receivers_floor_are_not_decodable_amplified(inband):
    part = amplify(_window(inband.heard, WEAK_AT_S - 0.2, GATED_AT_S - 0.4), 40.0)
    found = detector_digits(part) + multimon_digits(part)
    if found:
        pytest.fail(f"{len(found)} digits decoded")


def test_gated_keys_are_not_decodable(inband):
    part = _window(inband.heard, GATED_AT_S - 0.2, CARD_AT_S - 0.3)
    found = multimon_digits(part) + multimon_digits(amplify(part, 20.0))
    if found:
        pytest.fail(f"{len(found)} digits decoded")


def test_a_held_last_key_is_not_heard_after_the_capture(inband):
    tail = _window(inband.heard, inband.held_at_s + 1.5, inband.held_at_s + HELD_S + 0.5)
    found = detector_digits(tail) + multimon_digits(tail)
    if found:  # pytest.fail, not assert: the rewritten assert would print the digits (card data)
        pytest.fail(f"{len(found)} digits decoded")


def test_a_held_last_rfc4733_key_never_reaches_the_agent(attack_gateway, tmp_path):
    api = attack_gateway.agent_api(tmp_path)
    with call_through(attack_gateway, tmp_path, "trudy") as call:
        status, body = api.start_capture(api.call_for("trudy")["call_id"])
        assert status == 201, body
        t_start = time.monotonic()
        stream = api.follow(body["capture_id"])
        call.caller.send("dtmf", digits=f"{RFC4733_PAN}#{future_expiry()}#{RFC4733_CVV[:-1]}",
                         method="rfc4733", duration_ms=100)
        stream.wait_for(lambda d: d.get("type") == "digit" and d.get("field") == "cvv"
                        and d.get("count") == len(RFC4733_CVV) - 1, 15)
        call.caller.send("dtmf", digits=RFC4733_CVV[-1], method="rfc4733", duration_ms=int(HELD_S * 1000))
        end = stream.wait_end(10)
        time.sleep(HELD_S + 0.5)
    assert end["state"] == "tokenized", end
    during = sum(1 for e in call.agent.of("dtmf") if e["t"] >= t_start)
    if during:  # never the events themselves: they name a CVV digit
        pytest.fail(f"{during} RFC 4733 event callbacks reached the agent")
