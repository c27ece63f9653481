"""In-memory stand-ins for the call directory and the audit log (and the capture service
until gateway.capture.service lands): scripted, with no card digits anywhere."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.api.server import CaptureRefused


@dataclass(frozen=True)
class FakeCall:
    call_id: str
    agent: str
    caller: str
    state: str = "answered"
    started_at: float = 1_700_000_000.0
    codec: str = "PCMU"


class FakeCalls:
    """A call directory holding a fixed set of calls."""

    def __init__(self, calls: Sequence[FakeCall]) -> None:
        self.calls = {call.call_id: call for call in calls}

    def list_calls(self) -> list[FakeCall]:
        return list(self.calls.values())

    def get_call(self, call_id: str) -> FakeCall | None:
        return self.calls.get(call_id)


@dataclass(frozen=True)
class FakeView:
    capture_id: str
    call_id: str
    agent: str
    fields: tuple[str, ...] = ("pan", "expiry", "cvv")
    state: str = "collecting"
    brand: str | None = None
    last4: str | None = None
    token: str | None = None
    reason: str | None = None


@dataclass
class FakeCaptures:
    """Captures whose progress the test pushes with `emit` and ends with `finish`."""

    calls: FakeCalls
    refuse: dict[str, str] = field(default_factory=dict)
    views: dict[str, FakeView] = field(default_factory=dict)
    queues: dict[str, list[asyncio.Queue[dict[str, Any] | None]]] = field(default_factory=dict)
    started: list[tuple[str, tuple[str, ...], str]] = field(default_factory=list)
    cancelled: list[tuple[str, str]] = field(default_factory=list)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    async def start(self, call_id: str, fields: Sequence[str], actor: str) -> FakeView:
        if call_id in self.refuse:
            raise CaptureRefused(self.refuse[call_id])
        if self.capture_active(call_id):
            raise CaptureRefused("capture already active")
        call = self.calls.get_call(call_id)
        if call is None:
            raise CaptureRefused("unknown call")
        view = FakeView(f"cap-{next(self._ids)}", call_id, call.agent)
        self.views[view.capture_id] = view
        self.started.append((call_id, tuple(fields), actor))
        return view

    def get(self, capture_id: str) -> FakeView | None:
        return self.views.get(capture_id)

    async def cancel(self, capture_id: str, actor: str) -> None:
        self.cancelled.append((capture_id, actor))
        self.finish(capture_id, state="cancelled", reason="cancelled by agent")

    def capture_active(self, call_id: str) -> bool:
        return any(
            view.call_id == call_id and view.state in ("collecting", "tokenizing")
            for view in self.views.values()
        )

    def subscribe(self, capture_id: str) -> AsyncIterator[dict[str, Any]]:
        """Registers at once, so events emitted after the call are never missed."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.queues.setdefault(capture_id, []).append(queue)
        return self._drain(capture_id, queue)

    async def _drain(
        self, capture_id: str, queue: asyncio.Queue[dict[str, Any] | None]
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            while True:
                event = await queue.get()
                if event is None:
                    return
                yield event
        finally:
            self.queues[capture_id].remove(queue)

    def subscribers(self, capture_id: str) -> int:
        return len(self.queues.get(capture_id, []))

    def emit(self, capture_id: str, event: dict[str, Any]) -> None:
        for queue in self.queues.get(capture_id, []):
            queue.put_nowait(event)

    def finish(self, capture_id: str, **changes: Any) -> None:
        self.views[capture_id] = replace(self.views[capture_id], **changes)
        for queue in self.queues.get(capture_id, []):
            queue.put_nowait(None)


@dataclass
class FakeMasking:
    """The relay's capture switch, as the capture service drives it."""

    switched: list[tuple[str, bool]] = field(default_factory=list)
    feedback: list[tuple[str, str]] = field(default_factory=list)

    def set_capture(self, call_id: str, on: bool) -> None:
        self.switched.append((call_id, on))

    def play_feedback(self, call_id: str, kind: str) -> None:
        self.feedback.append((call_id, kind))


class FakeTokenizer:
    """Answers with a token derived from a counter, or raises what the test sets in `fail_with`."""

    def __init__(self) -> None:
        self.fail_with: Exception | None = None
        self.count = 0

    async def tokenize(self, card: Any, idempotency_key: str) -> Any:
        from gateway.tokenize.tokenizer import TokenResult

        if self.fail_with is not None:
            raise self.fail_with
        self.count += 1
        return TokenResult(token=f"tok_test_{card.last4}_{self.count}", brand=card.brand.value, last4=card.last4)

    async def close(self) -> None:
        return None


class RecordingAudit:
    """The real hash-chained AuditLog, remembering what went in for the test to inspect."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.records: list[tuple[str, dict[str, Any]]] = []

    def record(self, event: str, **fields: Any) -> Any:
        result = self.log.record(event, **fields)
        self.records.append((event, fields))
        return result

    def events(self, name: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self.records if event == name]


@dataclass
class FakeAudit:
    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def record(self, event: str, **fields: Any) -> None:
        self.records.append((event, fields))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self.records if event == name]
