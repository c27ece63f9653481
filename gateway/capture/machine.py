"""The card-entry state machine: keypad digits in, field events out.

What drives it: `handle_key(key, now)` for each de-duplicated caller key ('0'-'9', '#', '*'),
`handle_timer(now)` when `get_timer()` falls due, and `abort(reason)` for cancel or hang-up.
Each returns the events it produced. It reads no clock and does no I/O.

Safe state: FAILED. Every path that is not a clean completion ends there, and every ending
(completed or failed) leaves no digit in the machine: buffers are wiped, or on completion
handed over inside `EntryCompleted.card`, which the receiver must wipe.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Sequence

from gateway.capture.card import (
    MAX_PAN_LENGTH,
    POSTCODE_LENGTHS,
    Brand,
    SensitiveCard,
    brand_rule,
    cvv_problem,
    expiry_problem,
    pan_problem,
    postcode_problem,
)
from gateway.capture.sensitive import SensitiveDigits


class Field(Enum):
    """Fields in the order the caller keys them."""

    PAN = "pan"
    EXPIRY = "expiry"
    CVV = "cvv"
    POSTCODE = "postcode"


FIELD_ORDER = (Field.PAN, Field.EXPIRY, Field.CVV, Field.POSTCODE)
DEFAULT_FIELDS = (Field.PAN, Field.EXPIRY, Field.CVV)


class FieldListError(ValueError):
    """The requested capture fields are not a valid list."""


def parse_fields(names: Sequence[str]) -> tuple[Field, ...]:
    """Capture fields from their names; PAN required, no repeats, in keying order."""
    try:
        fields = tuple(Field(name) for name in names)
    except ValueError:
        raise FieldListError("unknown capture field") from None
    if Field.PAN not in fields:
        raise FieldListError("capture fields must include pan")
    if len(set(fields)) != len(fields):
        raise FieldListError("capture field repeated")
    if list(fields) != [f for f in FIELD_ORDER if f in fields]:
        raise FieldListError("capture fields out of order")
    return fields


class State(Enum):
    """Where the entry is."""

    ENTERING = "entering"
    """Collecting the current field (it may still be empty)."""
    JUST_COMPLETED = "just_completed"
    """The previous field completed on its own at full length; a '#' now is absorbed."""
    COMPLETED = "completed"
    FAILED = "failed"


class Input(Enum):
    """What can happen to the machine."""

    DIGIT = "digit"
    HASH = "hash"
    STAR = "star"
    FIELD_TIMEOUT = "field_timeout"
    TOTAL_TIMEOUT = "total_timeout"
    ABORT = "abort"


@dataclass(frozen=True)
class CardEntryConfig:
    """Timeouts and limits; the defaults suit a caller reading a card aloud to themselves."""

    fields: tuple[Field, ...] = DEFAULT_FIELDS
    inter_digit_timeout_s: float = 10.0
    """Longest pause between two keys of a field."""
    first_digit_timeout_s: float = 20.0
    """Longest wait for the first key of a field."""
    total_timeout_s: float = 180.0
    """Longest the whole entry may take."""
    max_attempts: int = 3
    """Tries per field (the first entry plus re-entries)."""


@dataclass(frozen=True)
class FieldStarted:
    """The machine now collects this field."""

    field: Field
    attempt: int
    """1 for the first try, 2 for the first re-entry, ..."""


@dataclass(frozen=True)
class DigitEntered:
    """A key was added to the field; carries the count, never the digit."""

    field: Field
    count: int
    brand: Brand | None = None
    """For the PAN, the brand once the leading digits decide it."""


@dataclass(frozen=True)
class FieldCleared:
    """The caller pressed '*': the field is empty again."""

    field: Field
    attempts_left: int


@dataclass(frozen=True)
class FieldCompleted:
    """The field passed its checks."""

    field: Field
    brand: Brand | None = None
    """PAN only."""
    last4: str | None = None
    """PAN only, after validation."""


@dataclass(frozen=True)
class FieldRejected:
    """The field failed a check; the caller re-enters it while attempts remain."""

    field: Field
    reason: str
    attempts_left: int


@dataclass(frozen=True)
class EntryCompleted:
    """Every field passed; the receiver owns `card` and must wipe it."""

    card: SensitiveCard


@dataclass(frozen=True)
class EntryFailed:
    """The entry ended without a card; nothing entered is kept."""

    reason: str


@dataclass(frozen=True)
class FeedbackRequested:
    """Play a short tone to the caller: accepted, error, reenter or complete."""

    kind: str


Event = (
    FieldStarted | DigitEntered | FieldCleared | FieldCompleted | FieldRejected
    | EntryCompleted | EntryFailed | FeedbackRequested
)


class CardEntryError(ValueError):
    """A key that is not on a phone keypad."""


class CardEntry:
    """One caller's card entry, from the first field to a card or a failure."""

    def __init__(self, config: CardEntryConfig, today: datetime.date, now: float) -> None:
        if not config.fields or Field.PAN not in config.fields:
            raise FieldListError("capture fields must include pan")
        self._config = config
        self._today = today
        self._state = State.ENTERING
        self._index = 0
        self._buffers: dict[Field, SensitiveDigits] = {f: SensitiveDigits() for f in config.fields}
        self._failures: dict[Field, int] = {f: 0 for f in config.fields}
        self._brand_rule = None
        self._total_deadline = now + config.total_timeout_s
        self._field_deadline = now + config.first_digit_timeout_s
        self._started = [FieldStarted(self.field, 1)] if self.field else []
        self._pending_digit = ""
        self._abort_reason = ""

    def initial_events(self) -> list[Event]:
        """The FieldStarted for the first field (taken once)."""
        events, self._started = self._started, []
        return events

    @property
    def state(self) -> State:
        return self._state

    @property
    def field(self) -> Field | None:
        """The field being collected, or None once the entry has ended."""
        if self._state in (State.COMPLETED, State.FAILED):
            return None
        return self._config.fields[self._index]

    @property
    def done(self) -> bool:
        return self._state in (State.COMPLETED, State.FAILED)

    def get_timer(self) -> float | None:
        """When `handle_timer` must next be called, or None once the entry has ended."""
        if self.done:
            return None
        return min(self._field_deadline, self._total_deadline)

    def handle_key(self, key: str, now: float) -> list[Event]:
        """Feed one caller key ('0'-'9', '#', '*'; 'A'-'D' are ignored)."""
        if key in "ABCD" and len(key) == 1:
            return []
        if key == "#":
            kind = Input.HASH
        elif key == "*":
            kind = Input.STAR
        elif len(key) == 1 and "0" <= key <= "9":
            kind = Input.DIGIT
            self._pending_digit = key
        else:
            raise CardEntryError("not a keypad key")
        try:
            return self._dispatch(kind, now)
        finally:
            self._pending_digit = ""

    def handle_timer(self, now: float) -> list[Event]:
        """Fire whichever deadline has passed."""
        if self.done:
            return []
        if now >= self._total_deadline:
            return self._dispatch(Input.TOTAL_TIMEOUT, now)
        if now >= self._field_deadline:
            return self._dispatch(Input.FIELD_TIMEOUT, now)
        return []

    def abort(self, reason: str) -> list[Event]:
        """End the entry now (cancelled, hang-up, shutdown); wipes everything."""
        if self.done:
            return []
        return self._fail(reason)

    def _dispatch(self, kind: Input, now: float) -> list[Event]:
        handler = _TRANSITIONS.get((self._state, kind))
        if handler is None:
            return []  # terminal states ignore every input
        return handler(self, now)

    # transitions

    def _on_digit(self, now: float) -> list[Event]:
        self._state = State.ENTERING
        current = self._config.fields[self._index]
        buf = self._buffers[current]
        buf.append(self._pending_digit)
        self._field_deadline = now + self._config.inter_digit_timeout_s
        brand = None
        if current is Field.PAN:
            self._brand_rule = brand_rule(buf)
            brand = self._brand_rule.brand if self._brand_rule else None
        events: list[Event] = [DigitEntered(current, len(buf), brand)]
        if len(buf) >= self._full_length(current):
            events += self._complete_field(now, by_length=True)
        return events

    def _on_end_of_field(self, now: float) -> list[Event]:
        current = self._config.fields[self._index]
        if len(self._buffers[current]) == 0:
            # A stray '#' on an empty field re-prompts without using up an attempt.
            self._field_deadline = now + self._config.first_digit_timeout_s
            return [
                FieldRejected(current, "empty", self._attempts_left(current)),
                FeedbackRequested("reenter"),
            ]
        return self._complete_field(now, by_length=False)

    def _on_absorbed_hash(self, now: float) -> list[Event]:
        self._state = State.ENTERING
        return []

    def _on_clear(self, now: float) -> list[Event]:
        self._state = State.ENTERING
        current = self._config.fields[self._index]
        buf = self._buffers[current]
        if len(buf) == 0:
            return []
        buf.wipe()
        self._failures[current] += 1
        left = self._attempts_left(current)
        if left == 0:
            return [FieldCleared(current, 0), *self._fail("too_many_attempts")]
        self._field_deadline = now + self._config.first_digit_timeout_s
        return [FieldCleared(current, left), FeedbackRequested("reenter"),
                FieldStarted(current, self._failures[current] + 1)]

    def _on_field_timeout(self, now: float) -> list[Event]:
        self._state = State.ENTERING
        return self._reject(self._config.fields[self._index], "timeout", now)

    def _on_total_timeout(self, now: float) -> list[Event]:
        return self._fail("timeout")

    # helpers of the transitions

    def _full_length(self, current: Field) -> int:
        """Length at which a field completes without '#'."""
        if current is Field.PAN:
            return max(self._brand_rule.pan_lengths) if self._brand_rule else MAX_PAN_LENGTH
        if current is Field.EXPIRY:
            return 4
        if current is Field.CVV:
            return self._brand_rule.cvv_length if self._brand_rule else 4
        return POSTCODE_LENGTHS.stop - 1

    def _attempts_left(self, current: Field) -> int:
        return max(0, self._config.max_attempts - self._failures[current])

    def _problem(self, current: Field) -> str | None:
        buf = self._buffers[current]
        if current is Field.PAN:
            return pan_problem(buf)
        if current is Field.EXPIRY:
            return expiry_problem(buf, self._today)
        if current is Field.CVV:
            return cvv_problem(buf, self._brand_rule)
        return postcode_problem(buf)

    def _complete_field(self, now: float, by_length: bool) -> list[Event]:
        current = self._config.fields[self._index]
        problem = self._problem(current)
        if problem is not None:
            return self._reject(current, problem, now)
        if current is Field.PAN:
            rule = brand_rule(self._buffers[current])
            if rule is None:  # pan_problem already refused an unknown brand
                return self._reject(current, "unknown_brand", now)
            self._brand_rule = rule
            done: Event = FieldCompleted(current, rule.brand, self._buffers[current].last4())
        else:
            done = FieldCompleted(current)
        if self._index + 1 == len(self._config.fields):
            return [done, *self._finish()]
        self._index += 1
        self._state = State.JUST_COMPLETED if by_length else State.ENTERING
        self._field_deadline = now + self._config.first_digit_timeout_s
        nxt = self._config.fields[self._index]
        return [done, FeedbackRequested("accepted"), FieldStarted(nxt, 1)]

    def _reject(self, current: Field, reason: str, now: float) -> list[Event]:
        self._buffers[current].wipe()
        if current is Field.PAN:
            self._brand_rule = None
        self._failures[current] += 1
        left = self._attempts_left(current)
        if left == 0:
            return [FieldRejected(current, reason, 0), *self._fail("too_many_attempts")]
        self._field_deadline = now + self._config.first_digit_timeout_s
        return [FieldRejected(current, reason, left), FeedbackRequested("reenter"),
                FieldStarted(current, self._failures[current] + 1)]

    def _finish(self) -> list[Event]:
        self._state = State.COMPLETED
        if self._brand_rule is None:
            return self._fail("unknown_brand")
        b = self._buffers
        card = SensitiveCard(
            pan_digits=b[Field.PAN],
            brand=self._brand_rule.brand,
            expiry_digits=b.get(Field.EXPIRY),
            cvv_digits=b.get(Field.CVV),
            postcode_digits=b.get(Field.POSTCODE),
        )
        self._buffers = {}
        return [FeedbackRequested("complete"), EntryCompleted(card)]

    def _fail(self, reason: str) -> list[Event]:
        self._state = State.FAILED
        for buf in self._buffers.values():
            buf.wipe()
        self._buffers = {}
        return [FeedbackRequested("error"), EntryFailed(reason)]

    def __repr__(self) -> str:
        return f"CardEntry(state={self._state.value}, field={self.field and self.field.value})"


_TRANSITIONS: dict[tuple[State, Input], Callable[[CardEntry, float], list[Event]]] = {
    (State.ENTERING, Input.DIGIT): CardEntry._on_digit,
    (State.ENTERING, Input.HASH): CardEntry._on_end_of_field,
    (State.ENTERING, Input.STAR): CardEntry._on_clear,
    (State.ENTERING, Input.FIELD_TIMEOUT): CardEntry._on_field_timeout,
    (State.ENTERING, Input.TOTAL_TIMEOUT): CardEntry._on_total_timeout,
    (State.JUST_COMPLETED, Input.DIGIT): CardEntry._on_digit,
    (State.JUST_COMPLETED, Input.HASH): CardEntry._on_absorbed_hash,
    (State.JUST_COMPLETED, Input.STAR): CardEntry._on_clear,
    (State.JUST_COMPLETED, Input.FIELD_TIMEOUT): CardEntry._on_field_timeout,
    (State.JUST_COMPLETED, Input.TOTAL_TIMEOUT): CardEntry._on_total_timeout,
}
"""The card-entry machine's transition table, (state, input) -> handler; COMPLETED and FAILED
take no input. Held by the module, not each entry: an entry holding its own bound methods
would be a reference cycle, freed only by the cyclic collector's pass (the audio loop waits)."""
