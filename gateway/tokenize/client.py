"""The HTTPS edge shared by the adapters: one POST per attempt, bounded retries under one idempotency key.

Exactly one token per capture: every attempt of one `tokenize` call sends the same
idempotency key, so a processor that handled a request whose response was lost answers the
retry with the token it already made. Request bodies are built per attempt in a bytearray
from the card's buffers and wiped as soon as the attempt ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from dataclasses import dataclass
from typing import Any, Mapping

import aiohttp

from gateway.capture.card import SensitiveCard
from gateway.capture.sensitive import wipe_bytearray
from gateway.tokenize.tokenizer import (
    TokenizationError,
    checked_result,
    TokenizationRejected,
    TokenizationTimeout,
    TokenizationUnavailable,
    TokenResult,
)

log = logging.getLogger("tonewall.tokenize")

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_RESPONSE_BYTES = 65536


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one tokenization."""

    attempts: int = 3
    attempt_timeout_s: float = 5.0
    """Per request, connect included."""
    total_timeout_s: float = 12.0
    """All attempts and back-off together."""
    backoff_s: float = 0.2
    """Pause before the first retry; doubles after each."""


class HttpsTokenizer:
    """Base of the HTTP adapters: subclasses say how to encode a card and read the answer."""

    content_type = "application/json"

    def __init__(
        self,
        url: str,
        ssl_context: ssl.SSLContext,
        *,
        policy: RetryPolicy = RetryPolicy(),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not url.startswith("https://"):
            raise ValueError("tokenizer URL must be https")
        if ssl_context.verify_mode != ssl.CERT_REQUIRED or not ssl_context.check_hostname:
            raise ValueError("tokenizer TLS must verify the server")
        if ssl_context.minimum_version < ssl.TLSVersion.TLSv1_2:
            raise ValueError("tokenizer TLS must be 1.2 or newer")
        self.url = url
        self._ssl = ssl_context
        self._policy = policy
        self._headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None

    def encode(self, card: SensitiveCard, idempotency_key: str) -> bytearray:
        """The request body for `card` (the caller wipes it)."""
        raise NotImplementedError

    def parse(self, status: int, body: Any, card: SensitiveCard) -> TokenResult:
        """A TokenResult from a 2xx answer, or a typed error for a 4xx one."""
        raise NotImplementedError

    def _session_for_loop(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=64, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def tokenize(self, card: SensitiveCard, idempotency_key: str) -> TokenResult:
        """POST the card, retrying lost, failed and timed-out attempts under the same key."""
        loop = asyncio.get_running_loop()
        policy = self._policy
        deadline = loop.time() + policy.total_timeout_s
        backoff = policy.backoff_s
        last: TokenizationError = TokenizationUnavailable("unreachable")
        for attempt in range(policy.attempts):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                return await self._attempt(card, idempotency_key, min(policy.attempt_timeout_s, remaining))
            except (TokenizationUnavailable, TokenizationTimeout) as exc:
                last = exc
                if not exc.retryable:
                    # Ops must see why (a bad certificate looks like an outage to the agent).
                    log.warning("tokenization attempt %d failed: %s (not retried)", attempt + 1, exc.reason)
                    raise
                log.warning("tokenization attempt %d failed: %s", attempt + 1, exc.reason)
            pause = min(backoff, deadline - loop.time())
            if attempt + 1 < policy.attempts and pause > 0:
                await asyncio.sleep(pause)
            backoff *= 2
        raise last

    async def _attempt(self, card: SensitiveCard, idempotency_key: str, timeout_s: float) -> TokenResult:
        session = self._session_for_loop()
        body = self.encode(card, idempotency_key)
        headers = {**self._headers, "Idempotency-Key": idempotency_key, "Content-Type": self.content_type}
        try:
            async with asyncio.timeout(timeout_s):
                # Never follow a redirect: it would send the card again to wherever the answer
                # points (plain http, another host), past the pinned CA and TLS policy.
                async with session.post(self.url, data=body, headers=headers, allow_redirects=False) as response:
                    raw = await response.content.read(MAX_RESPONSE_BYTES)
                    status = response.status
        except TimeoutError:
            raise TokenizationTimeout("timeout") from None
        except aiohttp.ClientConnectorCertificateError:
            raise _fatal("tls") from None
        except aiohttp.ClientSSLError:
            raise TokenizationUnavailable("tls") from None
        except aiohttp.ClientError:
            raise TokenizationUnavailable("unreachable") from None
        except ssl.SSLError:
            raise TokenizationUnavailable("tls") from None
        except OSError:
            raise TokenizationUnavailable("unreachable") from None
        finally:
            wipe_bytearray(body)
        if status in RETRY_STATUSES:
            raise TokenizationUnavailable(f"http_{status}")
        if status in (401, 403):
            raise _fatal("forbidden")
        if 300 <= status < 400:
            raise _fatal("redirected")  # a misconfigured URL, or someone steering the card: not retried
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        if 200 <= status < 300:
            return checked_result(self.parse(status, parsed, card), card)
        if 400 <= status < 500:
            raise TokenizationRejected(self.rejection_reason(status, parsed))
        raise TokenizationUnavailable(f"http_{status}")

    def rejection_reason(self, status: int, body: Any) -> str:
        """A fixed word for a 4xx answer."""
        return "rejected"


def _fatal(reason: str) -> TokenizationUnavailable:
    """An outage that retrying cannot fix (bad certificate, bad credentials)."""
    error = TokenizationUnavailable(reason)
    error.retryable = False
    return error


def json_card_body(
    card: SensitiveCard,
    *,
    number: str,
    exp_month: str,
    exp_year: str,
    cvc: str,
    postcode: str | None,
    wrap: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> bytearray:
    """A JSON body with the card fields under the given names, written straight from the buffers."""
    out = bytearray(b"{")
    if wrap:
        out += json.dumps(wrap).encode() + b":{"
    out += json.dumps(number).encode() + b':"'
    card.pan_digits.write_ascii(out)
    out += b'"'
    expiry = card.expiry()
    if expiry is not None:
        out += f",{json.dumps(exp_month)}:{expiry[0]},{json.dumps(exp_year)}:{expiry[1]}".encode()
    if card.cvv_digits is not None and len(card.cvv_digits):
        out += b"," + json.dumps(cvc).encode() + b':"'
        card.cvv_digits.write_ascii(out)
        out += b'"'
    if postcode and card.postcode_digits is not None and len(card.postcode_digits):
        out += b"," + json.dumps(postcode).encode() + b':"'
        card.postcode_digits.write_ascii(out)
        out += b'"'
    if wrap:
        out += b"}"
    for name, value in (extra or {}).items():
        out += f",{json.dumps(name)}:{json.dumps(value)}".encode()
    out += b"}"
    return out
