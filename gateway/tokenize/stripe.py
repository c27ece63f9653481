"""Adapter following Stripe's published PaymentMethods API: form-encoded POST /v1/payment_methods.

Request: type=card, card[number], card[exp_month], card[exp_year], card[cvc], with
`Authorization: Bearer <secret key>` and an `Idempotency-Key` header. Answer: a
payment_method object whose `id` is the token and `card.brand`/`card.last4` describe it.
Errors: {"error": {"type", "code"}} with 402 card_error, 400 invalid_request_error,
401 authentication, 429 rate limit, 5xx api_error.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any, Mapping

from gateway import pki
from gateway.capture.card import SensitiveCard
from gateway.tokenize.client import HttpsTokenizer, RetryPolicy
from gateway.tokenize.tokenizer import TokenizationUnavailable, TokenResult

STRIPE_API = "https://api.stripe.com"
SECRET_ENV = "STRIPE_SECRET_KEY"


class SecretError(ValueError):
    """The API secret cannot be loaded."""


def load_secret(path: str | os.PathLike[str] | None = None, *, env_name: str = SECRET_ENV,
                env: Mapping[str, str] | None = None) -> str:
    """The secret key from a file that others cannot read, else from the environment."""
    env = os.environ if env is None else env
    if path is not None:
        p = Path(path)
        if p.stat().st_mode & 0o077:
            raise SecretError("secret key file is readable by group or others")
        secret = p.read_text().strip()
    else:
        secret = env.get(env_name, "").strip()
    if not secret:
        raise SecretError("no secret key configured")
    return secret


class StripeTokenizer(HttpsTokenizer):
    """Creates a card PaymentMethod; its id (pm_...) is the token."""

    content_type = "application/x-www-form-urlencoded"

    def __init__(
        self,
        secret_key: str,
        *,
        base_url: str = STRIPE_API,
        ssl_context: ssl.SSLContext | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        policy: RetryPolicy = RetryPolicy(),
    ) -> None:
        context = ssl_context or pki.client_ssl_context(ca_file)
        super().__init__(base_url.rstrip("/") + "/v1/payment_methods", context, policy=policy,
                         headers={"Authorization": f"Bearer {secret_key}"})

    def encode(self, card: SensitiveCard, idempotency_key: str) -> bytearray:
        # application/x-www-form-urlencoded: brackets percent-encoded, digits need none.
        out = bytearray(b"type=card&card%5Bnumber%5D=")
        card.pan_digits.write_ascii(out)
        expiry = card.expiry()
        if expiry is not None:
            out += f"&card%5Bexp_month%5D={expiry[0]}&card%5Bexp_year%5D={expiry[1]}".encode()
        if card.cvv_digits is not None and len(card.cvv_digits):
            out += b"&card%5Bcvc%5D="
            card.cvv_digits.write_ascii(out)
        if card.postcode_digits is not None and len(card.postcode_digits):
            out += b"&billing_details%5Baddress%5D%5Bpostal_code%5D="
            card.postcode_digits.write_ascii(out)
        return out

    def parse(self, status: int, body: Any, card: SensitiveCard) -> TokenResult:
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise TokenizationUnavailable("bad_response")
        details = body.get("card") if isinstance(body.get("card"), dict) else {}
        return TokenResult(body["id"], str(details.get("brand") or card.brand.value),
                           str(details.get("last4") or card.last4))

    def rejection_reason(self, status: int, body: Any) -> str:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code = error.get("code") or error.get("type")
            if isinstance(code, str) and code.replace("_", "").isalpha() and len(code) < 40:
                return code
        return "rejected"

    def __repr__(self) -> str:
        return f"StripeTokenizer(url={self.url!r}, key=<redacted>)"
