"""The agent console in a real headless Chromium against a running HTTPS API.

Chromium trusts the API's certificate through a pin on its public key
(--ignore-certificate-errors-spki-list), not by turning verification off.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.tokenize.tokenizer import TokenizationUnavailable
from tests.api.conftest import Api, api_settings, running_api
from tests.browser.cdp import Page, chromium_path, launch
from tests.conftest import require_binary

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]


def _spki_pin(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


async def _wait_python(predicate, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.02)


async def _sign_in(page: Page, api: Api, token: str) -> None:
    await page.send("Page.navigate", url=api.base + "/")
    await page.wait_for("document.readyState === 'complete' && !!document.getElementById('token-input')")
    # type the token as a user would: focus the labelled field, insert text, press the button
    await page.evaluate("document.getElementById('token-input').focus()")
    await page.send("Input.insertText", text=token)
    await page.evaluate("document.getElementById('sign-in').click()")
    await page.wait_for("document.querySelectorAll('#calls-body tr').length === 3")


async def _start_capture(page: Page, api: Api, row: int) -> str:
    before = len(api.audit.events("capture.started"))
    await page.evaluate(f"document.querySelectorAll('#calls-body button')[{row}].click()")
    await _wait_python(lambda: len(api.audit.events("capture.started")) > before)
    await page.wait_for("document.getElementById('capture-status').textContent.includes('Masking is on')")
    return api.audit.events("capture.started")[-1]["capture_id"]


async def _close_panel(page: Page) -> None:
    await page.evaluate("document.getElementById('close-capture').click()")
    await page.wait_for("document.getElementById('capture-panel').hidden")


async def test_console_login_capture_progress_token(tmp_path: Path) -> None:
    executable = chromium_path() or require_binary("chromium")
    async with running_api(tmp_path, api_settings(heartbeat_s=1.0)) as api:
        pin = _spki_pin(api.data_dir / "tls" / "api.pem")
        async with launch(executable, tmp_path / "profile", [f"--ignore-certificate-errors-spki-list={pin}"]) as browser:
            page = await browser.new_page()
            await _sign_in(page, api, api.token("agent", agent="alice"))
            callers = await page.evaluate(
                "[...document.querySelectorAll('#calls-body tr td:first-child')].map(td => td.textContent)"
            )
            assert callers == [
                "sip:+15550001@example.net", "sip:+15550002@example.net", "sip:+15550005@example.net"
            ]
            assert await page.evaluate("sessionStorage.getItem('tonewall.token') !== null")

            # 1. a capture that completes with a token: the caller keys the card
            capture_id = await _start_capture(page, api, 0)
            api.key("call-a1", "4111111111111111#1230#12")
            await page.wait_for("document.querySelector('#field-cvv .dots').textContent === '••'")
            progress = await page.evaluate(
                "({pan: document.querySelector('#field-pan .dots').textContent,"
                " panState: document.querySelector('#field-pan .state').textContent,"
                " brand: document.getElementById('brand').textContent,"
                " validity: document.getElementById('validity').textContent,"
                " last4: document.getElementById('last4').textContent})"
            )
            assert progress == {"pan": "•" * 16, "panState": "✓ done", "brand": "Visa", "validity": "Valid", "last4": "1111"}
            await page.screenshot(tmp_path / "console-progress.png")
            api.key("call-a1", "3#")
            view = await api.settled(capture_id)
            assert view.state == "tokenized"
            await page.wait_for(f"document.getElementById('result-token').value === {json.dumps(view.token)}")
            assert "tokenized" in await page.evaluate("document.getElementById('capture-status').textContent")
            await page.send("Browser.grantPermissions", permissions=["clipboardReadWrite", "clipboardSanitizedWrite"])
            await page.evaluate("document.getElementById('copy-token').click()")
            await page.wait_for("document.getElementById('copy-status').textContent === 'Token copied.'")
            shot = tmp_path / "console.png"
            await page.screenshot(shot)
            assert shot.stat().st_size > 10_000
            if os.environ.get("TONEWALL_DOCS_SCREENSHOT"):
                await page.screenshot(REPO / "docs" / "console.png")
            text = await page.evaluate("document.body.innerText")
            assert "4111111111111111" not in text and "411111" not in text and "1230" not in text

            # 2. the agent cancels
            await _close_panel(page)
            capture_id = await _start_capture(page, api, 1)
            await page.evaluate("document.getElementById('cancel-capture').click()")
            await page.wait_for("document.getElementById('capture-error').textContent.includes('cancelled')")
            assert [r["capture_id"] for r in api.audit.events("capture.cancelled")] == [capture_id]

            # 3. the processor is down: a clear error, no token
            await _close_panel(page)
            api.tokenizer.fail_with = TokenizationUnavailable("connect_failed")
            capture_id = await _start_capture(page, api, 0)
            api.key("call-a1", "5555555555554444#1230#123#")
            await page.wait_for("document.getElementById('capture-error').textContent.includes('payment processor')")
            assert await page.evaluate("document.getElementById('result').hidden")

            # 4. the caller hangs up mid-entry
            await _close_panel(page)
            capture_id = await _start_capture(page, api, 1)
            api.key("call-a2", "4111")
            await page.wait_for("document.querySelector('#field-pan .dots').textContent === '••••'")
            api.captures.on_call_ended("call-a2")
            await page.wait_for("document.getElementById('capture-error').textContent.includes('hung up')")

            # 5. refused: the call's codec cannot be inspected
            await _close_panel(page)
            await page.evaluate("document.querySelectorAll('#calls-body button')[2].click()")
            await page.wait_for("document.getElementById('capture-error').textContent.includes('cannot be protected')")

            # accessibility basics: every control is labelled, progress is announced
            unlabelled = await page.evaluate(
                "[...document.querySelectorAll('input, textarea, button')].filter(el =>"
                " !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim()).length"
            )
            assert unlabelled == 0
            assert await page.evaluate("document.getElementById('fields').getAttribute('aria-live')") == "polite"
            assert [line for line in browser.console if line.startswith("exception")] == []

            # signing out forgets the token
            await page.evaluate("document.getElementById('sign-out').click()")
            assert await page.evaluate("sessionStorage.getItem('tonewall.token')") is None


async def test_console_rejects_a_bad_token(tmp_path: Path) -> None:
    executable = chromium_path() or require_binary("chromium")
    async with running_api(tmp_path, api_settings()) as api:
        pin = _spki_pin(api.data_dir / "tls" / "api.pem")
        async with launch(executable, tmp_path / "profile", [f"--ignore-certificate-errors-spki-list={pin}"]) as browser:
            page = await browser.new_page()
            await page.send("Page.navigate", url=api.base + "/")
            await page.wait_for("document.readyState === 'complete' && !!document.getElementById('token-input')")
            expired = api.token("agent", agent="alice", now=1_600_000_000)
            await page.evaluate(f"document.getElementById('token-input').value = {json.dumps(expired)}")
            await page.evaluate("document.getElementById('sign-in').click()")
            await page.wait_for("document.getElementById('login-error').textContent.includes('Sign in again')")
            assert await page.evaluate("sessionStorage.getItem('tonewall.token')") is None
            assert api.audit.events("auth_failed")[-1]["reason"] == "token expired"
