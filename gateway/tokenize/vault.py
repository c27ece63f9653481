"""Adapter for the embedded vault (`gateway.vault`): JSON over HTTPS with the gateway's client certificate."""

from __future__ import annotations

import ssl
from typing import Any

from gateway.capture.card import SensitiveCard
from gateway.tokenize.client import HttpsTokenizer, RetryPolicy, json_card_body
from gateway.tokenize.tokenizer import TokenizationUnavailable, TokenResult


class VaultTokenizer(HttpsTokenizer):
    """POST /v1/tokens on the vault; the client certificate must carry role "gateway"."""

    def __init__(self, base_url: str, ssl_context: ssl.SSLContext, *, policy: RetryPolicy = RetryPolicy()) -> None:
        super().__init__(base_url.rstrip("/") + "/v1/tokens", ssl_context, policy=policy)

    def encode(self, card: SensitiveCard, idempotency_key: str) -> bytearray:
        return json_card_body(card, number="pan", exp_month="exp_month", exp_year="exp_year",
                              cvc="cvv", postcode=None)

    def parse(self, status: int, body: Any, card: SensitiveCard) -> TokenResult:
        if not isinstance(body, dict) or not isinstance(body.get("token"), str):
            raise TokenizationUnavailable("bad_response")
        return TokenResult(body["token"], str(body.get("brand", card.brand.value)), str(body.get("last4", "")))

    def rejection_reason(self, status: int, body: Any) -> str:
        word = body.get("error") if isinstance(body, dict) else None
        return word if word in ("invalid_card", "invalid_request", "idempotency_conflict") else "rejected"


