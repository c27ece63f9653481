"""A real vault on 127.0.0.1 with mTLS, fault-injecting middleware, and gateway-side client contexts."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from gateway import pki
from gateway.tokenize import RetryPolicy, VaultTokenizer
from gateway.vault import RunningVault, VaultSettings, start_vault

FAST = RetryPolicy(attempts=3, attempt_timeout_s=2.0, total_timeout_s=6.0, backoff_s=0.05)


@dataclass
class Faults:
    """What the vault does wrong, request by request."""

    errors_500: int = 0
    """Answer this many tokenize requests with 500 before behaving."""
    lose_responses: int = 0
    """Do the work, then drop the connection instead of answering, this many times."""
    hold: bool = False
    """Hold every request until `release` is set (a slow processor)."""
    release: asyncio.Event = field(default_factory=asyncio.Event)
    seen: int = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        self.seen += 1
        if self.hold:
            try:
                await asyncio.wait_for(self.release.wait(), 10)
            except TimeoutError:
                pass
        if self.errors_500 > 0:
            self.errors_500 -= 1
            return web.json_response({"error": "internal"}, status=500)
        response = await handler(request)
        if self.lose_responses > 0:
            self.lose_responses -= 1
            request.transport.abort()
            raise ConnectionResetError("response dropped by the test")
        return response


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def open_vault(data_dir: Path, faults: Faults | None = None, port: int = 0) -> RunningVault:
    settings = VaultSettings(data_dir=data_dir, port=port)
    middlewares = [faults.middleware] if faults else []
    return await start_vault(settings, middlewares=middlewares)


def gateway_context(data_dir: Path, role: str = "gateway", name: str = "gateway", ca_dir: Path | None = None):
    ca = pki.ensure_ca(ca_dir or data_dir).cert_path
    return pki.client_ssl_context(ca, cert=pki.issue_client_cert(data_dir, name, role))


def vault_tokenizer(data_dir: Path, port: int, policy: RetryPolicy = FAST, **kw) -> VaultTokenizer:
    return VaultTokenizer(f"https://127.0.0.1:{port}", gateway_context(data_dir, **kw), policy=policy)
