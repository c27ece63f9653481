"""https-json (mTLS, pinned CA) and stripe adapters against local HTTPS test doubles on 127.0.0.1."""

from __future__ import annotations

import json
import urllib.parse

import pytest
from aiohttp import web

from gateway import pki
from gateway.capture.card import Brand, SensitiveCard
from gateway.tokenize import (
    HttpsJsonTokenizer,
    RetryPolicy,
    StripeTokenizer,
    TokenizationRejected,
    TokenizationUnavailable,
    load_secret,
)
from tests.capture.cards import digits

FAST = RetryPolicy(attempts=3, attempt_timeout_s=2.0, total_timeout_s=5.0, backoff_s=0.02)
SECRET = "sk_test_double"


def card():
    return SensitiveCard(digits("4242424242424242"), Brand.VISA, digits("1230"), digits("123"))


async def serve(tmp_path, handler, *, require_client_cert):
    app = web.Application()
    async def route(request: web.Request) -> web.Response:
        return await handler(request)

    app.router.add_post("/{tail:.*}", route)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ctx = pki.server_ssl_context(pki.issue_server_cert(tmp_path, "processor"),
                                 client_ca=pki.ensure_ca(tmp_path).cert_path, require_client_cert=require_client_cert)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


class StripeDouble:
    """Follows the published shape: form body, Bearer key, Idempotency-Key replays, payment_method object."""

    def __init__(self, failures: int = 0) -> None:
        self.by_key: dict[str, dict] = {}
        self.requests = 0
        self.failures = failures

    async def __call__(self, request: web.Request) -> web.Response:
        self.requests += 1
        if request.path != "/v1/payment_methods":
            return web.json_response({"error": {"type": "invalid_request_error"}}, status=404)
        if request.headers.get("Authorization") != f"Bearer {SECRET}":
            return web.json_response({"error": {"type": "authentication_error"}}, status=401)
        if self.failures:
            self.failures -= 1
            return web.json_response({"error": {"type": "api_error"}}, status=500)
        form = dict(urllib.parse.parse_qsl(await request.text()))
        key = request.headers["Idempotency-Key"]
        if key in self.by_key:
            return web.json_response(self.by_key[key])
        number = form.get("card[number]", "")
        if form.get("type") != "card" or not number.startswith("4"):
            return web.json_response({"error": {"type": "card_error", "code": "incorrect_number"}}, status=402)
        assert form["card[exp_month]"] == "12" and form["card[exp_year]"] == "2030" and form["card[cvc]"] == "123"
        body = {"id": f"pm_double{len(self.by_key)}", "object": "payment_method", "type": "card",
                "card": {"brand": "visa", "last4": number[-4:], "exp_month": 12, "exp_year": 2030}}
        self.by_key[key] = body
        return web.json_response(body)


async def test_stripe_adapter(tmp_path):
    double = StripeDouble(failures=1)
    runner, port = await serve(tmp_path, double, require_client_cert=False)
    tok = StripeTokenizer(SECRET, base_url=f"https://127.0.0.1:{port}", ca_file=pki.ensure_ca(tmp_path).cert_path,
                          policy=FAST)
    try:
        result = await tok.tokenize(card(), "cap-1")
        assert result.token == "pm_double0" and result.last4 == "4242" and double.requests == 2
        assert (await tok.tokenize(card(), "cap-1")).token == "pm_double0"
        bad = SensitiveCard(digits("5555555555554444"), Brand.MASTERCARD, digits("1230"), digits("123"))
        with pytest.raises(TokenizationRejected) as caught:
            await tok.tokenize(bad, "cap-2")
        assert caught.value.reason == "incorrect_number"
        wrong = StripeTokenizer("sk_wrong", base_url=f"https://127.0.0.1:{port}",
                                ca_file=pki.ensure_ca(tmp_path).cert_path, policy=FAST)
        with pytest.raises(TokenizationUnavailable) as caught:
            await wrong.tokenize(card(), "cap-3")
        await wrong.close()
        assert caught.value.reason == "forbidden" and "sk_" not in repr(wrong)
    finally:
        await tok.close()
        await runner.cleanup()


async def test_https_json_adapter_with_mtls(tmp_path):
    seen: list[dict] = []

    async def processor(request: web.Request) -> web.Response:
        ssl_object = request.transport.get_extra_info("ssl_object")
        assert pki.peer_identity(ssl_object.getpeercert()).role == "gateway"
        body = json.loads(await request.read())
        seen.append({"keys": sorted(body["card"]), "idem": body["idempotency_key"]})
        return web.json_response({"id": "proc_tok_4242", "last4": "4242"})

    runner, port = await serve(tmp_path, processor, require_client_cert=True)
    ca = pki.ensure_ca(tmp_path).cert_path
    tok = HttpsJsonTokenizer(f"https://127.0.0.1:{port}/tokens", ca_file=ca, token_field="id", policy=FAST,
                             client_cert=pki.issue_client_cert(tmp_path, "gw", "gateway"))
    no_cert = HttpsJsonTokenizer(f"https://127.0.0.1:{port}/tokens", ca_file=ca, policy=FAST)
    try:
        result = await tok.tokenize(card(), "cap-9")
        assert result.token == "proc_tok_4242"
        assert seen == [{"keys": ["cvc", "exp_month", "exp_year", "number"], "idem": "cap-9"}]
        with pytest.raises(TokenizationUnavailable):
            await no_cert.tokenize(card(), "cap-10")
    finally:
        await tok.close()
        await no_cert.close()
        await runner.cleanup()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_never_followed_with_the_card(tmp_path, status):
    """A processor answering 3xx to plain http (or anywhere) got the card re-sent there: the pinned
    CA and TLS policy were bypassed. A redirect is an outage, not retried."""
    leaked: list[bytes] = []

    async def plain(request: web.Request) -> web.Response:
        leaked.append(await request.read())
        return web.json_response({"id": "tok_from_http", "last4": "4242"})

    plain_app = web.Application()
    plain_app.router.add_post("/{tail:.*}", plain)
    plain_runner = web.AppRunner(plain_app, access_log=None)
    await plain_runner.setup()
    plain_site = web.TCPSite(plain_runner, "127.0.0.1", 0)
    await plain_site.start()
    plain_port = plain_site._server.sockets[0].getsockname()[1]
    hits: list[int] = []

    async def processor(request: web.Request) -> web.Response:
        hits.append(1)
        return web.Response(status=status, headers={"Location": f"http://127.0.0.1:{plain_port}/tokens"})

    runner, port = await serve(tmp_path, processor, require_client_cert=False)
    tok = HttpsJsonTokenizer(f"https://127.0.0.1:{port}/tokens", ca_file=pki.ensure_ca(tmp_path).cert_path, policy=FAST)
    try:
        with pytest.raises(TokenizationUnavailable) as caught:
            await tok.tokenize(card(), "cap-3xx")
        assert caught.value.reason == "redirected" and not caught.value.retryable
        assert leaked == [] and hits == [1]
    finally:
        await tok.close()
        await runner.cleanup()
        await plain_runner.cleanup()


def test_secret_loading(tmp_path):
    path = tmp_path / "key"
    path.write_text("sk_file\n")
    path.chmod(0o600)
    assert load_secret(path) == "sk_file"
    assert load_secret(env={"STRIPE_SECRET_KEY": "sk_env"}) == "sk_env"
    path.chmod(0o644)
    with pytest.raises(ValueError):
        load_secret(path)
