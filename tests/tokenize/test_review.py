"""What a processor answers is vetted: a token that echoes the PAN never reaches the agent, audit or logs."""

from __future__ import annotations

import pytest
from aiohttp import web

from gateway import pki
from gateway.tokenize import HttpsJsonTokenizer, TokenizationRejected, TokenizationUnavailable, TokenResult
from gateway.tokenize.tokenizer import checked_result
from tests.tokenize.test_processor_adapters import FAST, card, serve

PAN = "4242424242424242"


@pytest.mark.parametrize("token", [PAN, f"tok_{PAN}", f"x{PAN}y", "", "tok with space", "t" * 256, "tok\n1"])
def test_tokens_that_hold_the_pan_or_are_not_short_text_are_refused(token):
    with pytest.raises(TokenizationUnavailable) as caught:
        checked_result(TokenResult(token, "visa", "4242"), card())
    assert caught.value.reason == "bad_response" and not caught.value.retryable
    assert PAN not in repr(caught.value) and PAN not in str(caught.value)


def test_format_preserving_token_without_the_pan_passes():
    result = checked_result(TokenResult("4242420000004242", "Visa", "4242"), card())
    assert result == TokenResult("4242420000004242", "visa", "4242")


@pytest.mark.parametrize("brand", ["4242424242424242", "visa<script>", "", "v" * 40])
def test_a_brand_that_is_not_a_plain_word_is_replaced_by_ours(brand):
    assert checked_result(TokenResult("tok_1", brand, "4242"), card()).brand == "visa"


def test_last_four_must_match():
    with pytest.raises(TokenizationRejected):
        checked_result(TokenResult("tok_1", "visa", "0000"), card())


async def test_processor_echoing_the_card_fails_closed_without_retry(tmp_path):
    calls = []

    async def processor(request: web.Request) -> web.Response:
        calls.append(1)
        return web.json_response({"token": PAN, "last4": "4242"})

    runner, port = await serve(tmp_path, processor, require_client_cert=False)
    tok = HttpsJsonTokenizer(f"https://127.0.0.1:{port}/tokens", ca_file=pki.ensure_ca(tmp_path).cert_path,
                             policy=FAST)
    try:
        with pytest.raises(TokenizationUnavailable) as caught:
            await tok.tokenize(card(), "cap-1")
        assert caught.value.reason == "bad_response" and len(calls) == 1
    finally:
        await tok.close()
        await runner.cleanup()
