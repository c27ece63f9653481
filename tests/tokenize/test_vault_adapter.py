"""The vault adapter against a real vault over mTLS on 127.0.0.1, with every fault the issue lists."""

from __future__ import annotations

import asyncio

import pytest

from gateway.capture.card import Brand, SensitiveCard
from gateway.tokenize import (
    RetryPolicy,
    TokenizationRejected,
    TokenizationTimeout,
    TokenizationUnavailable,
)
from tests.capture.cards import digits, flip_last
from tests.vault.harness import FAST, Faults, free_port, open_vault, vault_tokenizer

PAN = "5555555555554444"


def card(pan=PAN):
    return SensitiveCard(digits(pan), Brand.MASTERCARD, digits("1230"), digits("123"))


async def test_success_and_idempotent_retry(tmp_path):
    vault = await open_vault(tmp_path)
    tok = vault_tokenizer(tmp_path, vault.port)
    try:
        result = await tok.tokenize(card(), "cap-a")
        assert result.last4 == "4444" and result.brand == "mastercard" and result.token.endswith("_4444")
        assert (await tok.tokenize(card(), "cap-a")).token == result.token
    finally:
        await tok.close()
        await vault.close()


async def test_lost_response_retry_gives_same_single_token(tmp_path):
    faults = Faults(lose_responses=1)
    vault = await open_vault(tmp_path, faults)
    tok = vault_tokenizer(tmp_path, vault.port)
    try:
        result = await tok.tokenize(card(), "cap-lost")
        assert faults.seen == 2
        assert vault.store.kek_usage() == {vault.store.keyring.active_id: 1}
        replay = vault.store.tokenize(card(), "cap-lost")
        assert replay.token == result.token and not replay.created
    finally:
        await tok.close()
        await vault.close()


async def test_500s_then_success(tmp_path):
    faults = Faults(errors_500=2)
    vault = await open_vault(tmp_path, faults)
    tok = vault_tokenizer(tmp_path, vault.port)
    try:
        assert (await tok.tokenize(card(), "cap-500")).last4 == "4444"
        assert faults.seen == 3
    finally:
        await tok.close()
        await vault.close()


async def test_500s_exhaust_retries(tmp_path):
    faults = Faults(errors_500=10)
    vault = await open_vault(tmp_path, faults)
    tok = vault_tokenizer(tmp_path, vault.port)
    try:
        with pytest.raises(TokenizationUnavailable) as caught:
            await tok.tokenize(card(), "cap-500")
        assert caught.value.reason == "http_500" and faults.seen == FAST.attempts
    finally:
        await tok.close()
        await vault.close()


async def test_processor_down(tmp_path):
    tok = vault_tokenizer(tmp_path, free_port())
    try:
        with pytest.raises(TokenizationUnavailable) as caught:
            await tok.tokenize(card(), "cap-down")
        assert caught.value.reason == "unreachable"
    finally:
        await tok.close()


async def test_slow_processor_times_out(tmp_path):
    faults = Faults(hold=True)
    vault = await open_vault(tmp_path, faults)
    policy = RetryPolicy(attempts=2, attempt_timeout_s=0.3, total_timeout_s=1.0, backoff_s=0.05)
    tok = vault_tokenizer(tmp_path, vault.port, policy=policy)
    try:
        with pytest.raises(TokenizationTimeout):
            await tok.tokenize(card(), "cap-slow")
    finally:
        faults.release.set()
        await tok.close()
        await vault.close()


async def test_wrong_server_ca_fails_without_retry(tmp_path):
    vault = await open_vault(tmp_path / "vault")
    tok = vault_tokenizer(tmp_path / "other", vault.port)
    try:
        with pytest.raises(TokenizationUnavailable) as caught:
            await tok.tokenize(card(), "cap-tls")
        assert caught.value.reason == "tls" and not caught.value.retryable
    finally:
        await tok.close()
        await vault.close()


async def test_client_certificate_from_another_ca_refused(tmp_path):
    vault = await open_vault(tmp_path / "vault")
    # trusts the vault's CA but presents a certificate signed by a different CA
    tok = vault_tokenizer(tmp_path / "other", vault.port, ca_dir=tmp_path / "vault")
    try:
        with pytest.raises(TokenizationUnavailable):
            await tok.tokenize(card(), "cap-cert")
    finally:
        await tok.close()
        await vault.close()


async def test_client_certificate_with_wrong_role_refused(tmp_path):
    vault = await open_vault(tmp_path)
    tok = vault_tokenizer(tmp_path, vault.port, role="payments", name="settlement")
    try:
        with pytest.raises(TokenizationUnavailable) as caught:
            await tok.tokenize(card(), "cap-role")
        assert caught.value.reason == "forbidden"
    finally:
        await tok.close()
        await vault.close()


async def test_invalid_card_rejected(tmp_path):
    vault = await open_vault(tmp_path)
    tok = vault_tokenizer(tmp_path, vault.port)
    bad = SensitiveCard(digits(flip_last(PAN)), Brand.MASTERCARD, digits("1230"), digits("123"))
    try:
        with pytest.raises(TokenizationRejected) as caught:
            await tok.tokenize(bad, "cap-bad")
        assert caught.value.reason == "invalid_card"
    finally:
        await tok.close()
        await vault.close()


async def test_vault_restart_between_attempts(tmp_path):
    port = free_port()
    vault = await open_vault(tmp_path, port=port)
    first = vault_tokenizer(tmp_path, port)
    result = await first.tokenize(card(), "cap-r")
    await vault.close()
    policy = RetryPolicy(attempts=6, attempt_timeout_s=1.0, total_timeout_s=8.0, backoff_s=0.2)
    tok = vault_tokenizer(tmp_path, port, policy=policy)

    async def restart():
        await asyncio.sleep(0.3)
        return await open_vault(tmp_path, port=port)

    restarted = asyncio.create_task(restart())
    try:
        again = await tok.tokenize(card(), "cap-r")
        assert again.token == result.token  # the key survived the restart: still one token
    finally:
        await first.close()
        await tok.close()
        await (await restarted).close()


async def test_request_bodies_wiped_after_each_attempt(tmp_path):
    vault = await open_vault(tmp_path, Faults(errors_500=1))
    tok = vault_tokenizer(tmp_path, vault.port)
    bodies: list[bytearray] = []
    encode = tok.encode

    def spy(c, key):
        body = encode(c, key)
        assert b'"pan":"5555555555554444"' in body and b'"cvv":"123"' in body
        bodies.append(body)
        return body

    tok.encode = spy
    try:
        await tok.tokenize(card(), "cap-w")
        assert len(bodies) == 2 and all(not any(b) for b in bodies)
    finally:
        await tok.close()
        await vault.close()


def test_plain_http_and_unverified_tls_refused(tmp_path):
    import ssl

    from gateway.tokenize import VaultTokenizer

    ctx = ssl.create_default_context()
    with pytest.raises(ValueError):
        VaultTokenizer("http://127.0.0.1:1", ctx)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with pytest.raises(ValueError):
        VaultTokenizer("https://127.0.0.1:1", ctx)
