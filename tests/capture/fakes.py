"""Stand-ins for the colleagues' pieces the capture service talks to: calls, masking, a clock, a tokenizer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from gateway.capture.service import TERMINAL_STATES, CaptureService
from gateway.tokenize import TokenResult


class Calls:
    def __init__(self) -> None:
        self.calls: dict[str, SimpleNamespace] = {}

    def add(self, call_id: str, agent: str = "alice", codec: str = "PCMU") -> None:
        self.calls[call_id] = SimpleNamespace(call_id=call_id, agent=agent, codec=codec)

    def get_call(self, call_id: str):
        return self.calls.get(call_id)


@dataclass
class Masking:
    on: dict[str, bool] = field(default_factory=dict)
    switches: list[tuple[str, bool]] = field(default_factory=list)
    feedback: list[tuple[str, str]] = field(default_factory=list)
    masked_at: dict[str, float] = field(default_factory=dict)
    """When the (fake) masker last changed a call's audio, on `clock`."""
    clock: Any = None

    def set_capture(self, call_id: str, on: bool) -> None:
        self.on[call_id] = on
        self.switches.append((call_id, on))

    def play_feedback(self, call_id: str, kind: str) -> None:
        self.feedback.append((call_id, kind))

    def seconds_since_masked(self, call_id: str) -> float | None:
        at = self.masked_at.get(call_id)
        return None if at is None or self.clock is None else self.clock() - at


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeTokenizer:
    """Records what it was asked (never the digits) and answers as told."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.keys: list[str] = []
        self.cards: list = []
        self.gate: asyncio.Event | None = None

    async def tokenize(self, card, idempotency_key):
        self.keys.append(idempotency_key)
        self.cards.append(card)
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return TokenResult(f"tok_fake_{card.last4}", card.brand.value, card.last4)

    async def close(self):
        pass


async def until_ended(service: CaptureService, capture_id: str, timeout_s: float = 20.0) -> list[dict]:
    """Every event of the capture, waiting (bounded) until it ends."""
    events: list[dict] = []

    async def collect():
        async for event in service.subscribe(capture_id):
            events.append(event)

    await asyncio.wait_for(collect(), timeout_s)
    assert service.get(capture_id).state in TERMINAL_STATES
    return events


def key_all(service: CaptureService, call_id: str, keys: str, clock: Clock, method: str = "inband",
            step_s: float = 0.3) -> None:
    """Each key pressed for 80 ms (its key-up reported as the gateway does), `step_s` apart."""
    for key in keys:
        clock.now += step_s - 0.08
        service.on_digit(call_id, key, method, clock.now)
        clock.now += 0.08
        if method != "info":
            service.on_key_released(call_id, method, clock.now)
