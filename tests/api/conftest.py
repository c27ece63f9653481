"""A real HTTPS agent API on 127.0.0.1 with the development PKI and signing key."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import pki
from gateway.api.auth import Authenticator, load_or_create_dev_key, issue_token
from gateway.api.server import ApiSettings, bound_port, create_app, start_api
from gateway.audit import AuditLog
from gateway.capture.service import CaptureService
from tests.api.fakes import (
    FakeCall,
    FakeCalls,
    FakeCaptures,
    FakeMasking,
    FakeTokenizer,
    RecordingAudit,
)

CALLS = [
    FakeCall("call-a1", agent="alice", caller="sip:+15550001@example.net"),
    FakeCall("call-a2", agent="alice", caller="sip:+15550002@example.net"),
    FakeCall("call-b1", agent="bob", caller="sip:+15550003@example.net"),
    FakeCall("call-c1", agent="carol", caller="sip:+15550004@example.net"),
    FakeCall("call-g1", agent="alice", caller="sip:+15550005@example.net", codec="G729"),
]
ALICE_CALLS = {"call-a1", "call-a2", "call-g1"}
ALL_CALLS = {call.call_id for call in CALLS}


@dataclass
class Api:
    """A running API and what it talks to."""

    base: str
    session: aiohttp.ClientSession
    data_dir: Path
    captures: Any
    """The real CaptureService, or FakeCaptures for tests of the API's own guards."""
    calls: FakeCalls
    audit: RecordingAudit
    app: Any
    signing_key: Any
    masking: FakeMasking
    tokenizer: FakeTokenizer

    def key(self, call_id: str, keys: str) -> None:
        """The caller presses keys (as the in-band detector would report them)."""
        loop = asyncio.get_running_loop()
        for key in keys:
            self.captures.on_digit(call_id, key, "inband", loop.time())

    async def settled(self, capture_id: str) -> Any:
        """The capture once tokenization has finished (bounded by the test timeout)."""
        while (view := self.captures.get(capture_id)).state == "tokenizing":
            await asyncio.sleep(0.005)
        return view

    def token(self, role: str = "agent", *, agent: str | None = "alice", **claims: Any) -> str:
        now = claims.pop("now", time.time())
        subject = claims.pop("subject", agent or role)
        return issue_token(
            self.signing_key,
            role=role,
            subject=subject,
            now=now,
            agent=agent if role == "agent" else None,
            **claims,
        )

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


def api_settings(**overrides: Any) -> ApiSettings:
    values: dict[str, Any] = {"heartbeat_s": 0.05, "failure_capacity": 1000.0}
    values.update(overrides)
    return ApiSettings(**values)


@pytest.fixture
def settings() -> ApiSettings:
    return api_settings()


@asynccontextmanager
async def running_api(tmp_path: Path, settings: ApiSettings, *, fake_captures: bool = False) -> AsyncIterator[Api]:
    """The API with the real capture service (fake relay and tokenizer) on 127.0.0.1 over TLS."""
    data_dir = tmp_path / "data"
    cert = pki.issue_server_cert(data_dir, "api")
    server_ctx = pki.server_ssl_context(cert)
    client_ctx = pki.client_ssl_context(pki.tls_dir(data_dir) / "ca.pem")
    calls = FakeCalls(CALLS)
    audit = RecordingAudit(AuditLog.open(data_dir, fsync=False))
    masking = FakeMasking()
    tokenizer = FakeTokenizer()
    if fake_captures:
        captures: Any = FakeCaptures(calls)
    else:
        captures = CaptureService(tokenizer, audit, calls, masking)
    authenticator = Authenticator.for_data_dir(data_dir)
    app = create_app(captures, calls, authenticator, audit, settings=settings)
    runner = await start_api(app, "127.0.0.1", 0, server_ctx)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=client_ctx),
        timeout=aiohttp.ClientTimeout(total=10),
    )
    try:
        yield Api(
            base=f"https://127.0.0.1:{bound_port(runner)}",
            session=session,
            data_dir=data_dir,
            captures=captures,
            calls=calls,
            audit=audit,
            app=app,
            signing_key=load_or_create_dev_key(data_dir),
            masking=masking,
            tokenizer=tokenizer,
        )
    finally:
        await session.close()
        await runner.cleanup()
        if not fake_captures:
            await captures.close()


@pytest.fixture
async def api(tmp_path: Path, settings: ApiSettings) -> AsyncIterator[Api]:
    async with running_api(tmp_path, settings) as running:
        yield running


@pytest.fixture
async def fake_api(tmp_path: Path, settings: ApiSettings) -> AsyncIterator[Api]:
    """A scripted capture service, for the API's own guards on what it sends out."""
    async with running_api(tmp_path, settings, fake_captures=True) as running:
        yield running
