"""The embedded vault's HTTPS service (mutual TLS): tokenize for role "gateway", detokenize for role "payments".

API (JSON; the client certificate's OU is the role):
    POST /v1/tokens       Idempotency-Key header; {"pan", "exp_month", "exp_year", "cvv"?, "postcode"?}
                          -> 201 {"token", "brand", "last4"} (200 on a replay of the same key)
    POST /v1/detokenize   {"token"} -> 200 {"pan", "exp_month", "exp_year", "brand", "last4"}
    GET  /healthz         -> 200 {"status": "ok"}
Errors are {"error": WORD} with 400 invalid_request/invalid_card, 403 forbidden, 404 unknown_token,
409 idempotency_conflict. The CVV is checked for length and dropped, never stored.

Public API:
    VaultSettings(data_dir, host="127.0.0.1", port=8444, kek_file=None, db_path=None)
    async start_vault(settings, *, middlewares=()) -> RunningVault   (.port, .store, async .close())
    async run_vault(settings) -> None                                serves until cancelled
    main(argv) -> int                                                `tonewall vault [serve|rotate-key|client-cert]`
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import datetime
import json
import logging
import os
import re
import resource
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from aiohttp import web

from gateway import pki
from gateway.capture.card import SensitiveCard, brand_rule, cvv_problem, expiry_problem, pan_problem
from gateway.capture.sensitive import SensitiveDigits, SensitiveDigitsError, wipe_bytearray
from gateway.protocol_log import ProtocolLog
from gateway.vault.keyring import KEK_ENV, Keyring, KeyringError, add_kek
from gateway.vault.store import IdempotencyConflict, VaultStore, VaultStoreError

log = logging.getLogger("tonewall.vault")

TOKENIZE_ROLE = "gateway"
DETOKENIZE_ROLE = "payments"
MAX_BODY_BYTES = 4096
# What store.new_token makes: letters, then the last four; anything else is never logged.
_TOKEN_SHAPE = re.compile(r"tok_[a-z]{1,64}_[0-9]{4}")
_PR_SET_DUMPABLE = 4


@dataclass(frozen=True)
class VaultSettings:
    """Where the vault listens and keeps its data."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8444
    kek_file: Path | None = None
    """Defaults to DATA_DIR/vault/kek.keys; TONEWALL_VAULT_KEKS in the environment wins."""
    db_path: Path | None = None
    """Defaults to DATA_DIR/vault/vault.sqlite3."""

    def kek_path(self) -> Path:
        return self.kek_file or Path(self.data_dir) / "vault" / "kek.keys"

    def database_path(self) -> Path:
        return self.db_path or Path(self.data_dir) / "vault" / "vault.sqlite3"


TOKENIZE_FIELDS = frozenset({"pan", "exp_month", "exp_year", "cvv"})
"""What a tokenize request may hold (gateway/tokenize/vault.py sends these)."""


class _BadRequest(ValueError):
    """A request the vault will not act on; the text is a fixed word."""


def _error(status: int, word: str, **extra: Any) -> web.Response:
    return web.json_response({"error": word, **extra}, status=status)


def _peer(request: web.Request) -> pki.PeerIdentity | None:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    return pki.peer_identity(ssl_object.getpeercert() if ssl_object else None)


def _role(request: web.Request) -> str | None:
    identity = _peer(request)
    return identity.role if identity else None


def _who(request: web.Request) -> str:
    identity = _peer(request)
    return f"{identity.role}:{identity.common_name}" if identity else "unknown"


@web.middleware
async def _internal_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """An unexpected error answers 500 and is logged by type only: the request held card data."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # The router's own 404/405/413 in the vault's error shape (405 keeps its Allow).
        word = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "invalid_request")
        response = _error(exc.status, word)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception as exc:
        log.error("vault request failed: %s", type(exc).__name__)
        return _error(500, "internal")


def _digits_from(value: Any, capacity: int = 32) -> SensitiveDigits:
    if not isinstance(value, str):
        raise _BadRequest("invalid_request")
    buf = SensitiveDigits(capacity)
    try:
        for ch in value:
            buf.append(ch)
    except SensitiveDigitsError:
        buf.wipe()
        raise _BadRequest("invalid_request") from None
    return buf


def card_from_request(body: dict[str, Any], today: datetime.date) -> SensitiveCard:
    """Validate a tokenize request into a card (without its CVV); raises _BadRequest with a word."""
    if not body.keys() <= TOKENIZE_FIELDS:
        raise _BadRequest("invalid_request")  # strict: an unknown field (a track2?) is not ignored
    pan = _digits_from(body.get("pan"))
    cvv = None
    expiry = None
    try:
        if pan_problem(pan) is not None:
            raise _BadRequest("invalid_card")
        rule = brand_rule(pan)
        month, year = body.get("exp_month"), body.get("exp_year")
        if month is not None or year is not None:
            if not (type(month) is int and type(year) is int and 2000 <= year <= 2099):  # noqa: E721 - bool is an int
                raise _BadRequest("invalid_request")
            expiry = _digits_from(f"{month:02d}{year % 100:02d}", 4)
            if expiry_problem(expiry, today) is not None:
                raise _BadRequest("invalid_card")
        if body.get("cvv") is not None:
            cvv = _digits_from(body.get("cvv"), 8)
            if cvv_problem(cvv, rule) is not None:
                raise _BadRequest("invalid_card")
        if rule is None:
            raise _BadRequest("invalid_card")
        return SensitiveCard(pan, rule.brand, expiry_digits=expiry)
    except BaseException:
        pan.wipe()
        if expiry is not None:
            expiry.wipe()
        raise
    finally:
        if cvv is not None:
            cvv.wipe()  # CVV: checked, never stored, not even encrypted


async def _read_json(request: web.Request) -> dict[str, Any]:
    # StreamReader.read(n) answers with whatever has arrived: read to the end of the body
    # (or just past the limit), or a body split across TLS records is cut short.
    raw = bytearray()
    while len(raw) <= MAX_BODY_BYTES:
        chunk = await request.content.read(MAX_BODY_BYTES + 1 - len(raw))
        if not chunk:
            break
        raw += chunk
    try:
        if len(raw) > MAX_BODY_BYTES:
            raise _BadRequest("invalid_request")
        body = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json's stack
        raise _BadRequest("invalid_request") from None
    finally:
        wipe_bytearray(raw)
    if not isinstance(body, dict):
        raise _BadRequest("invalid_request")
    return body


def create_vault_app(store: VaultStore, *, middlewares: Sequence[Any] = ()) -> web.Application:
    """The vault's aiohttp application over an open store."""

    async def tokenize(request: web.Request) -> web.Response:
        if _role(request) != TOKENIZE_ROLE:
            log.warning("tokenize refused for %s: forbidden", _who(request))
            return _error(403, "forbidden")
        key = request.headers.get("Idempotency-Key", "")
        try:
            body = await _read_json(request)
            card = card_from_request(body, datetime.date.today())
        except _BadRequest as exc:
            return _error(400, str(exc))
        finally:
            body = None
        try:
            stored = store.tokenize(card, key)
        except IdempotencyConflict:
            return _error(409, "idempotency_conflict")
        except VaultStoreError:
            return _error(400, "invalid_request")
        finally:
            card.wipe()
        log.info("tokenized brand=%s last4=%s replay=%s", stored.brand, stored.last4, not stored.created)
        return web.json_response(
            {"token": stored.token, "brand": stored.brand, "last4": stored.last4},
            status=201 if stored.created else 200,
        )

    async def detokenize(request: web.Request) -> web.Response:
        # PCI DSS 10.2.1.1: every read of a PAN is logged with who asked (the token keeps only the last four).
        who = _who(request)
        if _role(request) != DETOKENIZE_ROLE:
            log.warning("detokenize refused for %s: forbidden", who)
            return _error(403, "forbidden")
        try:
            body = await _read_json(request)
        except _BadRequest as exc:
            return _error(400, str(exc))
        token = body.get("token")
        if not isinstance(token, str) or body.keys() != {"token"}:
            return _error(400, "invalid_request")
        if not _TOKEN_SHAPE.fullmatch(token):
            log.warning("detokenize by %s: unknown_token (malformed, not logged)", who)
            return _error(404, "unknown_token")
        try:
            found = store.detokenize(token)
        except VaultStoreError:
            log.warning("detokenize by %s token=%s: unknown_token", who, token)
            return _error(404, "unknown_token")
        log.info("detokenize by %s token=%s: ok", who, token)
        out = bytearray(b'{"pan":"')
        found.pan_digits.write_ascii(out)
        found.pan_digits.wipe()
        out += (
            f'","exp_month":{json.dumps(found.exp_month)},"exp_year":{json.dumps(found.exp_year)},'
            f'"brand":{json.dumps(found.brand)},"last4":{json.dumps(found.last4)}}}'
        ).encode()
        response = web.Response(body=bytes(out), content_type="application/json")
        wipe_bytearray(out)
        return response

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(middlewares=[_internal_errors, *middlewares], client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/v1/tokens", tokenize)
    app.router.add_post("/v1/detokenize", detokenize)
    app.router.add_get("/healthz", healthz)
    return app


class RunningVault:
    """A started vault: its port, its store, and how to stop it."""

    def __init__(self, runner: web.AppRunner, store: VaultStore, port: int) -> None:
        self._runner = runner
        self.store = store
        self.port = port

    async def close(self) -> None:
        await self._runner.cleanup()
        self.store.close()


def vault_ssl_context(settings: VaultSettings):
    """Server TLS for the vault: the dev CA's certificate, client certificates required."""
    ca = pki.ensure_ca(settings.data_dir)
    cert = pki.issue_server_cert(settings.data_dir, "vault", [settings.host])
    return pki.server_ssl_context(cert, client_ca=ca.cert_path, require_client_cert=True)


async def start_vault(settings: VaultSettings, *, middlewares: Sequence[Any] = ()) -> RunningVault:
    """Open the store and listen with mTLS; port 0 picks a free port."""
    pki.private_dir(settings.data_dir)  # owner-only before anything is written under it
    keyring = Keyring.load(settings.kek_path())
    store = VaultStore(settings.database_path(), keyring)
    app = create_vault_app(store, middlewares=middlewares)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0,
                           logger=ProtocolLog("vault"))  # a bad request line may hold a PAN: never logged
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=vault_ssl_context(settings),
                       reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        store.close()
        raise
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return RunningVault(runner, store, port)


async def run_vault(settings: VaultSettings) -> None:
    """Serve until cancelled or SIGTERM/SIGINT."""
    vault = await start_vault(settings)
    log.info("vault listening on https://%s:%d", settings.host, vault.port)
    print(f"tonewall vault listening on https://{settings.host}:{vault.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await stop.wait()
    finally:
        await vault.close()


def rotate_key(settings: VaultSettings) -> tuple[str, int]:
    """Add a KEK, make it active and re-wrap every data key under it while the vault keeps serving."""
    kek_path = settings.kek_path()
    # The KEKs on file must open the records before one more is added (VaultStore checks).
    store = VaultStore(settings.database_path(), Keyring.load(kek_path, env={}, create=False))
    try:
        new_id = add_kek(kek_path)
        store.keyring = Keyring.load(kek_path, env={}, create=False)
        return new_id, store.rewrap()
    finally:
        store.close()


def _harden_process() -> None:
    """Stand-alone, the vault is a process of its own: the gateway's card-data rules apply to it too.

    No core dumps or same-user ptrace of decrypted PANs (as gateway.app.disable_core_dumps, without
    importing the SIP and media stack), and its log lines written (PCI DSS 10.2.1.1: who read which token).
    """
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the rlimit is what we have
        pass
    level = getattr(logging, os.environ.get("TONEWALL_LOG_LEVEL", "INFO").upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    return host.strip("[]"), int(port)


def main(argv: Sequence[str] | None = None) -> int:
    """`tonewall vault [serve] [--listen HOST:PORT] [--data-dir DIR]`, `rotate-key`, `client-cert NAME ROLE`."""
    parser = argparse.ArgumentParser(prog="tonewall vault", description="embedded tokenization vault")
    parser.add_argument("action", nargs="?", default="serve", choices=("serve", "rotate-key", "client-cert"))
    parser.add_argument("name", nargs="?", help="client-cert: certificate name")
    parser.add_argument("role", nargs="?", help="client-cert: gateway or payments")
    parser.add_argument("--listen", type=_host_port, default=("127.0.0.1", 8444))
    parser.add_argument("--data-dir", type=Path, default=Path("./tonewall-data"))
    parser.add_argument("--kek-file", type=Path, default=None,
                        help="the KEK file ([vault] kek_file; default DATA_DIR/vault/kek.keys)")
    args = parser.parse_args(argv)
    settings = VaultSettings(args.data_dir, host=args.listen[0], port=args.listen[1], kek_file=args.kek_file)
    if args.action == "rotate-key":
        if os.environ.get(KEK_ENV):
            print(f"tonewall vault rotate-key: the KEKs come from {KEK_ENV}, which this tool cannot change; "
                  f"rotating online needs a KEK file (--kek-file)", file=sys.stderr)
            return 2
        try:
            new_id, count = rotate_key(settings)
        except (KeyringError, OSError) as exc:
            hint = "" if args.kek_file else f" ({settings.kek_path()}; a KEK file configured elsewhere: --kek-file)"
            print(f"tonewall vault rotate-key: {exc}{hint}", file=sys.stderr)
            return 1
        print(f"active KEK {new_id}; re-wrapped {count} data keys")
        return 0
    if args.action == "client-cert":
        if not args.name or args.role not in (TOKENIZE_ROLE, DETOKENIZE_ROLE):
            parser.error("client-cert needs NAME and ROLE (gateway or payments)")
        files = pki.issue_client_cert(args.data_dir, args.name, args.role)
        print(files.cert_path)
        return 0
    _harden_process()
    try:
        asyncio.run(run_vault(settings))
    except KeyboardInterrupt:
        pass
    except (KeyringError, OSError) as exc:  # a KEK that cannot open the records, a port in use
        logging.getLogger("gateway.vault").error("tonewall vault cannot start: %s", exc)
        return 1
    return 0
