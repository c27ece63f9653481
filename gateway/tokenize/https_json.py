"""Adapter for a configurable processor endpoint: JSON over HTTPS, mutual TLS, CA pinned to one file."""

from __future__ import annotations

import os
from typing import Any

from gateway import pki
from gateway.capture.card import SensitiveCard
from gateway.tokenize.client import HttpsTokenizer, RetryPolicy, json_card_body
from gateway.tokenize.tokenizer import TokenizationUnavailable, TokenResult


class HttpsJsonTokenizer(HttpsTokenizer):
    """POST {"card": {"number", "exp_month", "exp_year", "cvc", "postal_code"}, "idempotency_key"} to `url`.

    The answer must be JSON holding the token under `token_field` (and optionally
    "brand" and "last4"). Only `ca_file` is trusted for the server (pinned CA).
    """

    def __init__(
        self,
        url: str,
        *,
        ca_file: str | os.PathLike[str],
        client_cert: pki.CertFiles | None = None,
        token_field: str = "token",
        policy: RetryPolicy = RetryPolicy(),
    ) -> None:
        super().__init__(url, pki.client_ssl_context(ca_file, cert=client_cert), policy=policy)
        self._token_field = token_field

    def encode(self, card: SensitiveCard, idempotency_key: str) -> bytearray:
        return json_card_body(card, number="number", exp_month="exp_month", exp_year="exp_year",
                              cvc="cvc", postcode="postal_code", wrap="card",
                              extra={"idempotency_key": idempotency_key})

    def parse(self, status: int, body: Any, card: SensitiveCard) -> TokenResult:
        token = body.get(self._token_field) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise TokenizationUnavailable("bad_response")
        return TokenResult(token, str(body.get("brand") or card.brand.value), str(body.get("last4") or card.last4))
