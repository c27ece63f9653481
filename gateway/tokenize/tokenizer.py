"""The one interface every processor adapter implements, its result and its typed errors."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from gateway.capture.card import SensitiveCard
from gateway.capture.sensitive import wipe_bytearray


@dataclass(frozen=True)
class TokenResult:
    """What the agent may see about a tokenized card."""

    token: str
    brand: str
    last4: str


class TokenizationError(Exception):
    """Tokenization did not produce a token; `reason` is a fixed word, never card data."""

    retryable = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenizationUnavailable(TokenizationError):
    """The processor could not be reached or answered with a server error."""

    retryable = True


class TokenizationRejected(TokenizationError):
    """The processor refused the card or the request (4xx)."""


class TokenizationTimeout(TokenizationError):
    """No answer within the time allowed (after the bounded retries)."""

    retryable = True


class Tokenizer(Protocol):
    """Turns a captured card into a token; the caller keeps ownership of `card` and wipes it."""

    async def tokenize(self, card: SensitiveCard, idempotency_key: str) -> TokenResult: ...

    async def close(self) -> None: ...


_TOKEN_TEXT = re.compile(r"[\x21-\x7e]{1,255}")
_BRAND_WORD = re.compile(r"[A-Za-z][A-Za-z _-]{0,31}")


def checked_result(result: TokenResult, card: SensitiveCard) -> TokenResult:
    """Vet what a processor answered before it reaches the agent, the audit log and the logs.

    The token must be short printable text that does not hold the PAN (a processor that
    echoes the card back would otherwise hand the agent the number); the last four must
    be the card's; a brand that is not a plain word is replaced by the one we detected.
    """
    if not _TOKEN_TEXT.fullmatch(result.token) or _holds_pan(result.token, card):
        error = TokenizationUnavailable("bad_response")
        error.retryable = False  # a processor that echoes cards will not stop on a retry
        raise error
    if result.last4 != card.last4:
        raise TokenizationRejected("mismatch")
    brand = result.brand.lower() if _BRAND_WORD.fullmatch(result.brand) else card.brand.value
    return TokenResult(result.token, brand, result.last4)


def _holds_pan(text: str, card: SensitiveCard) -> bool:
    pan = bytearray()
    card.pan_digits.write_ascii(pan)
    try:
        return bool(pan) and pan in text.encode("ascii", "replace")
    finally:
        wipe_bytearray(pan)
