"""A scripted card processor for the fault proofs: the https-json wire format over mutual TLS on 127.0.0.1.

It speaks what gateway/tokenize/https_json.py sends: POST /v1/tokens with
{"card": {"number", "exp_month", "exp_year", "cvc"}, "idempotency_key"} and an
`Idempotency-Key` header; it answers 201 {"token", "last4"} (200 with the same token on a
replay of a key). A test scripts what it does next (`Script`): which certificate each new
connection is served with (its own CA's, another CA's, or no TLS at all on the TLS port),
and for each POST whether to answer late, answer 500, or store the card and drop the
connection before answering (a lost response).

It keeps no card number: each card is stored as an HMAC fingerprint under a key that lives
only in memory, with its last four, so a test can count the cards stored and check which
card arrived. Its log and store (folder/processor.log, folder/cards.jsonl) sit under the
artifacts folder that tests/e2e/test_z_card_data_nowhere.py searches.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import socket
import ssl
import string
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway import pki

TLS_MODES = ("ok", "wrong_ca", "plain")


@dataclass(frozen=True)
class Script:
    """What the processor does from now on (counts restart when a script is set)."""

    tls: str = "ok"
    """ok: its own CA's certificate; wrong_ca: a certificate from another CA; plain: HTTP without TLS."""
    delay_s: float = 0.0
    """Every POST waits this long before it is handled."""
    errors_500: int = 0
    """The first n POSTs answer 500."""
    drop_after_store: int = 0
    """The next n POSTs (after the 500s) store the card, then drop the connection unanswered."""


@dataclass
class Attempt:
    """One POST as the processor saw it (no card data)."""

    key: str
    client: str
    """CN:role of the client certificate."""
    outcome: str = "pending"
    """500, dropped, 201, 200 (replay), 400, 409, or pending while it is being handled."""


@dataclass(frozen=True)
class StoredCard:
    """A card the processor keeps: never the number, only a keyed fingerprint of it."""

    key: str
    token: str
    last4: str
    fingerprint: str
    expiry: str | None
    """MMYY, when the card came with one."""
    fields: tuple[str, ...]
    """The card fields the request held (names only)."""


@dataclass
class _State:
    script: Script = field(default_factory=Script)
    attempts: list[Attempt] = field(default_factory=list)
    connections: int = 0
    handshake_failures: int = 0


class ScriptedProcessor:
    """The processor on a thread of its own (its own event loop); start, script, read, stop."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        pki_dir, rogue_dir = folder / "pki", folder / "rogue-pki"
        self.ca_file = pki.ensure_ca(pki_dir).cert_path
        self.client_cert = pki.issue_client_cert(pki_dir, "tonewall-gateway", "gateway")
        """What the gateway presents (mTLS): issued by this processor's CA."""
        self._contexts: dict[str, ssl.SSLContext | None] = {
            "ok": pki.server_ssl_context(pki.issue_server_cert(pki_dir, "processor", ["127.0.0.1"]),
                                         client_ca=self.ca_file, require_client_cert=True),
            "wrong_ca": pki.server_ssl_context(pki.issue_server_cert(rogue_dir, "processor", ["127.0.0.1"]),
                                               client_ca=self.ca_file, require_client_cert=True),
            "plain": None,
        }
        self._fingerprint_key = secrets.token_bytes(32)
        self._state = _State()
        self.cards: dict[str, StoredCard] = {}
        self._log = (folder / "processor.log").open("a")
        self._store = (folder / "cards.jsonl").open("a")
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}/v1/tokens"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="scripted-processor", daemon=True)
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None

    # the test's side

    def start(self) -> ScriptedProcessor:
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("scripted processor did not start")
        return self

    def stop(self) -> None:
        if self._thread.is_alive() and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(10)
        self._log.close()
        self._store.close()

    def script(self, script: Script) -> None:
        """Behave this way from now on; attempts, connections and handshake failures count from zero."""
        if script.tls not in TLS_MODES:
            raise ValueError("unknown TLS mode")
        with self._lock:
            self._state = _State(script=script)
        self._write_log(f"script {asdict(script)}")

    @property
    def attempts(self) -> list[Attempt]:
        with self._lock:
            return list(self._state.attempts)

    @property
    def connections(self) -> int:
        return self._state.connections

    @property
    def handshake_failures(self) -> int:
        return self._state.handshake_failures

    def fingerprint(self, pan: str) -> str:
        """The fingerprint this processor stores for `pan` (to check which card arrived)."""
        return hmac.new(self._fingerprint_key, pan.encode(), hashlib.sha256).hexdigest()

    def gateway_config(self, *, timeout_s: float, retries: int) -> str:
        """The gateway's [processor] section for this endpoint: https-json, pinned CA, client certificate."""
        return (f'[processor]\nkind = "https-json"\nurl = "{self.url}"\nca_file = "{self.ca_file}"\n'
                f'client_cert_file = "{self.client_cert.cert_path}"\n'
                f'client_key_file = "{self.client_cert.key_path}"\n'
                f"timeout_s = {timeout_s}\nretries = {retries}\n")

    # the processor's side (its own thread and loop)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        server = web.Server(self._handle, access_log=None)
        accepting = asyncio.create_task(self._accept(server))
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            accepting.cancel()
            self._listener.close()
            await server.shutdown(1.0)
            # Handlers still waiting (a slow script whose client gave up) end here too.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

    async def _accept(self, server: web.Server) -> None:
        loop = asyncio.get_running_loop()
        connections: set[asyncio.Task[None]] = set()
        while True:
            conn, _ = await loop.sock_accept(self._listener)
            task = asyncio.create_task(self._connection(server, conn))
            connections.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(connections.discard)

    async def _connection(self, server: web.Server, conn: socket.socket) -> None:
        """Serve one accepted connection with the certificate (or lack of TLS) the script says."""
        with self._lock:
            state = self._state
            state.connections += 1
            mode = state.script.tls
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                server, conn, ssl=self._contexts[mode], ssl_handshake_timeout=5.0 if mode != "plain" else None)
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
            state.handshake_failures += 1
            self._write_log(f"connection {mode}: handshake failed: {type(exc).__name__}")
            conn.close()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method != "POST" or request.path != "/v1/tokens":
            return web.json_response({"error": "not_found"}, status=404)
        with self._lock:
            state = self._state
            attempt = Attempt(key=request.headers.get("Idempotency-Key", ""), client=_client(request))
            state.attempts.append(attempt)
            index = len(state.attempts)
        script = state.script
        raw = await request.read()
        if script.delay_s:
            await asyncio.sleep(script.delay_s)
        if index <= script.errors_500:
            return self._answer(attempt, web.json_response({"error": "internal"}, status=500), "500")
        card = _card(raw, attempt.key)
        raw = b""
        if card is None:
            return self._answer(attempt, web.json_response({"error": "invalid_request"}, status=400), "400")
        stored, created = self._keep(attempt.key, card)
        card = None
        if stored is None:
            return self._answer(attempt, web.json_response({"error": "idempotency_conflict"}, status=409), "409")
        if index <= script.errors_500 + script.drop_after_store:
            # The card is stored; the answer is lost with the connection.
            attempt.outcome = "dropped"
            self._write_log(f"POST key={attempt.key} client={attempt.client} -> dropped after store")
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        answer = web.json_response({"token": stored.token, "last4": stored.last4}, status=201 if created else 200)
        return self._answer(attempt, answer, "201" if created else "200")

    def _answer(self, attempt: Attempt, response: web.Response, outcome: str) -> web.Response:
        attempt.outcome = outcome
        self._write_log(f"POST key={attempt.key} client={attempt.client} -> {outcome}")
        response.force_close()  # a new connection (and TLS handshake) for every attempt
        return response

    def _keep(self, key: str, card: dict[str, Any]) -> tuple[StoredCard | None, bool]:
        """(the card stored under `key`, whether it is new); None when the key holds another card."""
        number = card["number"]
        fingerprint = self.fingerprint(number)
        with self._lock:
            existing = self.cards.get(key)
            if existing is not None:
                return (existing if existing.fingerprint == fingerprint else None), False
            letters = "".join(secrets.choice(string.ascii_lowercase) for _ in range(20))
            expiry = f"{card['exp_month']:02d}{card['exp_year'] % 100:02d}" if "exp_month" in card else None
            stored = StoredCard(key=key, token=f"tok_{letters}_{number[-4:]}", last4=number[-4:],
                                fingerprint=fingerprint, expiry=expiry, fields=tuple(sorted(card)))
            self.cards[key] = stored
            self._store.write(json.dumps(asdict(stored)) + "\n")
            self._store.flush()
            return stored, True

    def _write_log(self, line: str) -> None:
        with self._lock:
            self._log.write(f"{time.time():.3f} {line}\n")
            self._log.flush()


def _card(raw: bytes, key: str) -> dict[str, Any] | None:
    """The request's card when it is well formed for the https-json wire format (and names `key`), else None."""
    try:
        body = json.loads(raw)
        card = body["card"]
        number = card["number"]
    except (ValueError, KeyError, TypeError):
        return None
    if not (isinstance(number, str) and number.isdigit() and 12 <= len(number) <= 19):
        return None
    if not key or body.get("idempotency_key") != key or set(card) - {"number", "exp_month", "exp_year", "cvc"}:
        return None
    if ("exp_month" in card) != ("exp_year" in card):
        return None
    if "exp_month" in card and not (card["exp_month"] in range(1, 13) and card["exp_year"] in range(2000, 2100)):
        return None
    cvc = card.get("cvc", "000")
    if not (isinstance(cvc, str) and cvc.isdigit() and len(cvc) in (3, 4)):
        return None
    return card


def _client(request: web.BaseRequest) -> str:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    identity = pki.peer_identity(ssl_object.getpeercert() if ssl_object else None)
    return f"{identity.common_name}:{identity.role}" if identity else "none"
