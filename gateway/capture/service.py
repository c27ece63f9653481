"""CaptureService: starts, feeds, times out, tokenizes and ends secure captures; what the API and the app call.

What drives it: `start`/`cancel` from the agent API, `on_digit` from the DTMF paths (in-band
detector, RFC 4733, SIP INFO), `on_call_ended` from the B2BUA, and its own timer (`tick`).
The card-entry machine inside stays sans-IO; this edge owns the asyncio task that
tokenizes and the loop timer.

Safe state: masking on. It is switched on before `start` returns and released only when
the capture has ended (any way) and the caller's keypad has been quiet for `mask_quiet_s`.
Anything unexpected (tokenizer error, processor outage, hang-up) ends the capture as
failed with a reason; the card buffers are wiped whatever happens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Protocol, Sequence

from gateway.capture.card import SensitiveCard
from gateway.capture.machine import (
    DEFAULT_FIELDS,
    CardEntry,
    CardEntryConfig,
    DigitEntered,
    EntryCompleted,
    EntryFailed,
    Event,
    FeedbackRequested,
    FieldCleared,
    FieldCompleted,
    FieldListError,
    FieldRejected,
    FieldStarted,
    parse_fields,
)
from gateway.stats import SLOW_BOUNDS_S, Histogram, LabelledCounter
from gateway.tokenize.tokenizer import (
    TokenizationError,
    TokenizationRejected,
    TokenizationTimeout,
    Tokenizer,
    checked_result,
)

log = logging.getLogger("tonewall.capture")

INSPECTABLE_CODECS = frozenset({"PCMU", "PCMA"})
DIGIT_METHODS = frozenset({"inband", "rfc4733", "info"})
ID_ALPHABET = "abcdefghjkmnpqrstuvwxyz"
_EVENT_DIGIT_RUN = re.compile(r"\d{5,}")
_EVENT_IDS = frozenset({"capture_id", "call_id", "token"})


class CaptureRefused(Exception):
    """A capture could not be started; `reason` is a fixed word."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CaptureNotFound(KeyError):
    """No capture with that id (or it is past retention)."""


class CaptureLeakError(RuntimeError):
    """An event about to leave the capture service held a digit run: refused, never sent."""


class CallDirectory(Protocol):
    """Where the service looks calls up: an object with .agent, .codec and .call_id, or None."""

    def get_call(self, call_id: str) -> Any: ...


class MaskingControl(Protocol):
    """The relay's capture switch and the caller's feedback tones."""

    def set_capture(self, call_id: str, on: bool) -> None: ...

    def play_feedback(self, call_id: str, kind: str) -> None: ...

    def seconds_since_masked(self, call_id: str) -> float | None:
        """How long ago the masker last changed this call's caller audio (None: never)."""
        ...


class AuditSink(Protocol):
    def record(self, event: str, **fields: Any) -> Any: ...


@dataclass(frozen=True)
class CaptureView:
    """What the agent may know about a capture."""

    capture_id: str
    call_id: str
    agent: str | None
    fields: tuple[str, ...]
    state: str
    """collecting | tokenizing | tokenized | failed | cancelled"""
    started_at: float
    brand: str | None = None
    last4: str | None = None
    token: str | None = None
    reason: str | None = None
    ended_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"fields": list(self.fields)}


TERMINAL_STATES = frozenset({"tokenized", "failed", "cancelled"})


class CaptureStats:
    """Plain counters the metrics exporter reads at scrape time."""

    def __init__(self) -> None:
        self.outcomes = LabelledCounter()
        """Ended captures by outcome: tokenized, failed, cancelled, refused."""
        self.tokenization = Histogram(SLOW_BOUNDS_S)
        """Seconds from handing the card to the tokenizer to its answer (success or error)."""
        self.tokenization_errors = LabelledCounter()
        """By kind: timeout, rejected, unavailable, internal."""
        self.digits = LabelledCounter()
        """Digits taken into a capture, by method (inband, rfc4733, info), after de-duplication."""


class _Capture:
    """Mutable bookkeeping for one capture (never holds digits itself; the entry and card do)."""

    def __init__(self, view: CaptureView, entry: CardEntry) -> None:
        self.view = view
        self.entry: CardEntry | None = entry
        self.card: SensitiveCard | None = None
        self.task: asyncio.Task[None] | None = None
        self.history: list[dict[str, Any]] = []
        self.queues: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.ended_mono: float | None = None
        self.call_ended_mono: float | None = None
        """When the capture's call ended (retention counts from the later of the two ends)."""
        self.last_key_mono: float | None = None
        self.mask_held = True


def _new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(ID_ALPHABET) for _ in range(20))


class CaptureService:
    """Secure captures for every call on this node."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        audit: AuditSink,
        calls: CallDirectory,
        masking: MaskingControl,
        *,
        mask_quiet_s: float = 2.0,
        clock: Callable[[], float] | None = None,
        wallclock: Callable[[], float] = time.time,
        entry_config: CardEntryConfig = CardEntryConfig(),
        dedup_window_s: float = 0.15,
        retain_s: float = 3600.0,
        inspectable_codecs: frozenset[str] = INSPECTABLE_CODECS,
    ) -> None:
        self._tokenizer = tokenizer
        self._audit = audit
        self._calls = calls
        self._masking = masking
        self._mask_quiet_s = mask_quiet_s
        self._clock = clock
        self._wallclock = wallclock
        self._entry_config = entry_config
        self._dedup_window_s = dedup_window_s
        self._retain_s = retain_s
        self._codecs = inspectable_codecs
        self._captures: dict[str, _Capture] = {}
        self._collecting: dict[str, str] = {}
        """call_id -> capture_id of the capture that takes the caller's keys."""
        self._mask_holders: dict[str, set[str]] = {}
        self._last_digit: dict[str, tuple[str, str, float]] = {}
        self._keys_down: dict[str, set[str]] = {}
        """Per call, the methods (inband, rfc4733) whose key is still held: masking never ends under a held key."""
        self._timer: asyncio.TimerHandle | None = None
        self.stats = CaptureStats()

    # clocks

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return time.monotonic()

    # public API

    async def start(self, call_id: str, fields: Sequence[str], actor: str) -> CaptureView:
        """Start a capture on a call; masking is on before this returns. Raises CaptureRefused."""
        try:
            return self._start(call_id, fields or [f.value for f in DEFAULT_FIELDS], actor)
        except CaptureRefused as refused:
            self.stats.outcomes["refused"] += 1
            self._audit_safely("capture.refused", actor=actor, call_id=call_id, outcome=refused.reason)
            raise

    def _start(self, call_id: str, field_names: Sequence[str], actor: str) -> CaptureView:
        try:
            fields = parse_fields(field_names)
        except FieldListError:
            raise CaptureRefused("invalid_fields") from None
        call = self._calls.get_call(call_id)
        if call is None:
            raise CaptureRefused("unknown_call")
        if call_id in self._collecting:
            raise CaptureRefused("capture_active")
        if getattr(call, "codec", None) not in self._codecs:
            raise CaptureRefused("codec_not_inspectable")
        now = self._now()
        try:
            self._masking.set_capture(call_id, True)
        except Exception:
            log.exception("masking could not be switched on")
            raise CaptureRefused("masking_unavailable") from None
        capture_id = _new_id("cap_")
        self._mask_holders.setdefault(call_id, set()).add(capture_id)
        today = datetime.date.fromtimestamp(self._wallclock())
        config = dataclasses.replace(self._entry_config, fields=fields)
        view = CaptureView(
            capture_id=capture_id, call_id=call_id, agent=getattr(call, "agent", None),
            fields=tuple(f.value for f in fields), state="collecting", started_at=self._wallclock(),
        )
        entry = CardEntry(config, today, now)
        capture = _Capture(view, entry)
        self._captures[capture_id] = capture
        self._collecting[call_id] = capture_id
        try:
            self._audit.record("capture.started", actor=actor, call_id=call_id, capture_id=capture_id,
                               outcome="ok")
        except Exception:
            log.exception("audit refused capture.started")
            self._finish(capture, "failed", reason="audit_unavailable", now=now, audit=False)
            raise CaptureRefused("audit_unavailable") from None
        self._publish(capture, {"type": "state", "state": "collecting"})
        self._handle(capture, entry.initial_events(), now)
        self._arm()
        return capture.view

    def get(self, capture_id: str) -> CaptureView:
        """The capture's current view; raises CaptureNotFound."""
        capture = self._captures.get(capture_id)
        if capture is None:
            raise CaptureNotFound(capture_id)
        return capture.view

    async def cancel(self, capture_id: str, actor: str) -> CaptureView:
        """Cancel a capture that has not ended; an ended one is returned unchanged."""
        capture = self._captures.get(capture_id)
        if capture is None:
            raise CaptureNotFound(capture_id)
        if capture.view.state in TERMINAL_STATES:
            return capture.view
        if capture.task is not None and not capture.task.done():
            capture.task.cancel()
        if capture.entry is not None:
            capture.entry.abort("cancelled")  # wipes; its events are superseded by the cancel
        self._finish(capture, "cancelled", reason="cancelled", now=self._now(), actor=actor)
        return capture.view

    def subscribe(self, capture_id: str) -> AsyncIterator[dict[str, Any]]:
        """Progress events (past ones first) until the capture ends; never a digit but the last four."""
        capture = self._captures.get(capture_id)
        if capture is None:
            raise CaptureNotFound(capture_id)
        return self._events(capture)

    async def _events(self, capture: _Capture) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        backlog = list(capture.history)
        ended = capture.view.state in TERMINAL_STATES
        if not ended:
            capture.queues.add(queue)
        try:
            for event in backlog:
                yield event
            if ended:
                return
            while True:
                event = await queue.get()
                if event is None:
                    return
                yield event
        finally:
            capture.queues.discard(queue)

    def on_digit(self, call_id: str, digit: str, method: str, now: float) -> None:
        """A caller key from any path; a key seen in-band and as RFC 4733 close together counts once."""
        if method not in DIGIT_METHODS:
            raise ValueError("unknown DTMF method")
        if (call_id not in self._mask_holders and call_id not in self._collecting
                and self._calls.get_call(call_id) is None):
            return  # reported after the call ended (same loop iteration as its BYE): keep no state for it
        if method != "info":  # INFO carries no key-up: its key is instantaneous
            self._keys_down.setdefault(call_id, set()).add(method)
        if call_id in self._mask_holders:
            for capture_id in self._mask_holders[call_id]:
                self._captures[capture_id].last_key_mono = now
            self._arm()  # the keypad-quiet release moves with every key
        previous = self._last_digit.get(call_id)
        self._last_digit[call_id] = (digit, method, now)
        if previous is not None:
            prev_digit, prev_method, prev_now = previous
            if prev_digit == digit and prev_method != method and now - prev_now < self._dedup_window_s:
                self._last_digit[call_id] = previous
                return
        self.stats.digits[method] += 1
        capture_id = self._collecting.get(call_id)
        if capture_id is None:
            return
        capture = self._captures[capture_id]
        if capture.entry is None:
            return
        try:
            events = capture.entry.handle_key(digit, now)
        except ValueError:
            return  # not a keypad key: dropped
        self._handle(capture, events, now)
        self._arm()

    def on_key_released(self, call_id: str, method: str, now: float) -> None:
        """A held key came up (tone ended, RFC 4733 end): the keypad-quiet time counts from here.

        A key held past the end of a capture would otherwise reach the agent once the
        quiet time, counted from the key's start, ran out under it.
        """
        down = self._keys_down.get(call_id)
        if down is None or method not in down:
            return
        down.discard(method)
        if not down:
            del self._keys_down[call_id]
        for capture_id in self._mask_holders.get(call_id, ()):
            capture = self._captures[capture_id]
            capture.last_key_mono = max(now, capture.last_key_mono or now)
        self._arm()

    def on_call_ended(self, call_id: str) -> None:
        """The call is gone: an entry in progress fails; masking for the call is released."""
        now = self._now()
        capture_id = self._collecting.get(call_id)
        if capture_id is not None:
            capture = self._captures[capture_id]
            if capture.entry is not None and capture.view.state == "collecting":
                self._handle(capture, capture.entry.abort("call_ended"), now)
        for held in list(self._mask_holders.get(call_id, ())):
            self._release_mask(self._captures[held])
        for capture in self._captures.values():
            if capture.view.call_id == call_id and capture.call_ended_mono is None:
                capture.call_ended_mono = now
        self._last_digit.pop(call_id, None)
        self._keys_down.pop(call_id, None)
        self._arm()

    @property
    def collecting_count(self) -> int:
        """Captures taking keys right now."""
        return len(self._collecting)

    def capture_active(self, call_id: str) -> bool:
        """True while the caller's DTMF on this call must not reach the agent."""
        return bool(self._mask_holders.get(call_id))

    def tick(self, now: float | None = None) -> None:
        """Run due machine timeouts, mask releases and retention pruning."""
        now = self._now() if now is None else now
        for capture in list(self._captures.values()):
            entry = capture.entry
            if entry is not None and capture.view.state == "collecting":
                deadline = entry.get_timer()
                if deadline is not None and now >= deadline:
                    self._handle(capture, entry.handle_timer(now), now)
            if capture.mask_held and self._mask_release_at(capture) is not None:
                if now >= self._mask_release_at(capture):  # type: ignore[operator]
                    # The masker still hearing a tone the detector no longer accepts (a held key
                    # under talk-over, or attenuated) counts as a key: the quiet time restarts there.
                    ago = self._masking.seconds_since_masked(capture.view.call_id)
                    if ago is not None and ago < self._mask_quiet_s:
                        capture.last_key_mono = max(capture.last_key_mono or 0.0, now - ago)
                    else:
                        self._release_mask(capture)
            if capture.ended_mono is not None and not capture.mask_held and self._expired(capture, now):
                del self._captures[capture.view.capture_id]
        self._arm()

    def _expired(self, capture: _Capture, now: float) -> bool:
        """DESIGN contract 4: readable for at least `retain_s` after the call ends (and the capture)."""
        if capture.call_ended_mono is None:
            if self._calls.get_call(capture.view.call_id) is not None:
                return False  # the call is still up
            capture.call_ended_mono = now  # its end was never reported: count from now
        return now - max(capture.ended_mono or now, capture.call_ended_mono) > self._retain_s

    def get_timer(self) -> float | None:
        """When `tick` must next run (loop clock), or None."""
        deadlines: list[float] = []
        for capture in self._captures.values():
            if capture.entry is not None and capture.view.state == "collecting":
                timer = capture.entry.get_timer()
                if timer is not None:
                    deadlines.append(timer)
            release = self._mask_release_at(capture) if capture.mask_held else None
            if release is not None:
                deadlines.append(release)
        return min(deadlines) if deadlines else None

    async def close(self) -> None:
        """Stop timers and tokenization tasks (shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
        for capture in self._captures.values():
            if capture.task is not None and not capture.task.done():
                capture.task.cancel()
                try:
                    await capture.task
                except (asyncio.CancelledError, Exception):
                    pass

    # internals

    def _mask_release_at(self, capture: _Capture) -> float | None:
        if capture.ended_mono is None or capture.view.call_id in self._keys_down:
            return None  # capture on, or a key still held: mask on
        quiet_from = max(capture.ended_mono, capture.last_key_mono or capture.ended_mono)
        return quiet_from + self._mask_quiet_s

    def _release_mask(self, capture: _Capture) -> None:
        capture.mask_held = False
        call_id = capture.view.call_id
        holders = self._mask_holders.get(call_id)
        if holders is None:
            return
        holders.discard(capture.view.capture_id)
        if not holders:
            del self._mask_holders[call_id]
            try:
                self._masking.set_capture(call_id, False)
            except Exception:
                log.exception("masking could not be switched off")

    def _arm(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.get_timer()
        if deadline is not None:
            self._timer = loop.call_later(max(0.0, deadline - self._now()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.tick()
        except Exception:
            log.exception("capture timer failed")

    def _handle(self, capture: _Capture, events: list[Event], now: float) -> None:
        call_id = capture.view.call_id
        for event in events:
            if isinstance(event, DigitEntered):
                self._publish(capture, {"type": "digit", "field": event.field.value, "count": event.count,
                                        "brand": event.brand.value if event.brand else None})
            elif isinstance(event, FieldStarted):
                self._publish(capture, {"type": "field_started", "field": event.field.value,
                                        "attempt": event.attempt})
            elif isinstance(event, FieldCleared):
                self._publish(capture, {"type": "field_cleared", "field": event.field.value,
                                        "attempts_left": event.attempts_left})
            elif isinstance(event, FieldCompleted):
                data: dict[str, Any] = {"type": "field_completed", "field": event.field.value, "valid": True}
                if event.brand is not None:
                    data |= {"brand": event.brand.value, "last4": event.last4}
                    capture.view = dataclasses.replace(capture.view, brand=event.brand.value, last4=event.last4)
                self._publish(capture, data)
            elif isinstance(event, FieldRejected):
                self._publish(capture, {"type": "field_rejected", "field": event.field.value, "valid": False,
                                        "reason": event.reason, "attempts_left": event.attempts_left})
            elif isinstance(event, FeedbackRequested):
                try:
                    self._masking.play_feedback(call_id, event.kind)
                except Exception:
                    log.exception("feedback tone failed")
            elif isinstance(event, EntryCompleted):
                self._collecting.pop(call_id, None)
                capture.entry = None
                capture.card = event.card
                capture.view = dataclasses.replace(capture.view, state="tokenizing")
                self._publish(capture, {"type": "state", "state": "tokenizing"})
                capture.task = asyncio.get_running_loop().create_task(self._tokenize(capture))
            elif isinstance(event, EntryFailed):
                self._finish(capture, "failed", reason=event.reason, now=now)

    async def _tokenize(self, capture: _Capture) -> None:
        card = capture.card
        if card is None:
            return
        started = self._now()
        try:
            # Any adapter's answer is vetted (no PAN in the token) before the agent or the audit sees it.
            result = checked_result(await self._tokenizer.tokenize(card, capture.view.capture_id), card)
        except asyncio.CancelledError:
            raise
        except TokenizationTimeout:
            self._tokenized_in(started, "timeout")
            self._finish(capture, "failed", reason="processor_timeout", now=self._now())
        except TokenizationRejected as exc:
            self._tokenized_in(started, "rejected")
            self._finish(capture, "failed", reason=f"processor_rejected_{_word(exc.reason)}", now=self._now())
        except TokenizationError:
            self._tokenized_in(started, "unavailable")
            self._finish(capture, "failed", reason="processor_unavailable", now=self._now())
        except Exception as exc:
            self._tokenized_in(started, "internal")
            # The type only: a message or traceback from code that held the card could carry its digits.
            log.error("tokenizer failed unexpectedly: %s", type(exc).__name__)
            self._finish(capture, "failed", reason="internal_error", now=self._now())
        else:
            self._tokenized_in(started, None)
            if capture.view.state == "tokenizing":
                capture.view = dataclasses.replace(capture.view, token=result.token, brand=result.brand,
                                                   last4=result.last4)
                self._finish(capture, "tokenized", reason=None, now=self._now())
        finally:
            card.wipe()
            capture.card = None
            self._arm()

    def _tokenized_in(self, started: float, error_kind: str | None) -> None:
        self.stats.tokenization.observe(max(0.0, self._now() - started))
        if error_kind is not None:
            self.stats.tokenization_errors[error_kind] += 1

    def _finish(self, capture: _Capture, state: str, *, reason: str | None, now: float,
                actor: str | None = None, audit: bool = True) -> None:
        if capture.view.state in TERMINAL_STATES:
            return
        call_id = capture.view.call_id
        if self._collecting.get(call_id) == capture.view.capture_id:
            del self._collecting[call_id]
        if capture.entry is not None:
            capture.entry.abort(reason or state)
            capture.entry = None
        if capture.card is not None and (capture.task is None or capture.task.done()):
            capture.card.wipe()
        capture.ended_mono = now
        self.stats.outcomes[state] += 1
        capture.view = dataclasses.replace(capture.view, state=state, reason=reason, ended_at=self._wallclock())
        event = {"cancelled": "capture.cancelled", "tokenized": "capture.completed"}.get(state, "capture.failed")
        if audit:
            v = capture.view
            self._audit_safely(event, actor=actor or v.agent, call_id=call_id, capture_id=v.capture_id,
                               outcome=reason or state, token=v.token, brand=v.brand, last4=v.last4)
        data = {"type": "state", "state": state, "reason": reason}
        if state == "tokenized":
            data |= {"token": capture.view.token, "brand": capture.view.brand, "last4": capture.view.last4}
        self._publish(capture, data)
        for queue in capture.queues:
            queue.put_nowait(None)
        capture.queues.clear()
        log.info("capture %s %s reason=%s", capture.view.capture_id, state, reason)

    def _publish(self, capture: _Capture, data: dict[str, Any]) -> None:
        data = {"capture_id": capture.view.capture_id, **data}
        for key, value in data.items():
            if key == "last4":
                if value is not None and not (isinstance(value, str) and len(value) == 4):
                    raise CaptureLeakError("capture event refused")
            elif key not in _EVENT_IDS and isinstance(value, str) and _EVENT_DIGIT_RUN.search(value):
                raise CaptureLeakError("capture event refused")
        capture.history.append(data)
        for queue in capture.queues:
            queue.put_nowait(data)

    def _audit_safely(self, event: str, **fields: Any) -> None:
        try:
            self._audit.record(event, **fields)
        except Exception:
            log.exception("audit record refused: %s", event)


def _word(reason: str) -> str:
    return reason if re.fullmatch(r"[a-z_]{1,40}", reason) else "other"
