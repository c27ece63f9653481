"""The one interface every processor adapter implements, its result and its typed errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.capture.card import SensitiveCard


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
