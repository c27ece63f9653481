"""The agent API over HTTPS (DESIGN.md contract 4): calls, captures, progress events, console.

An aiohttp edge around the capture service and the call directory. Every /v1 request
is authenticated, rate limited per identity and authorised by role before it reaches
the capture service; every refusal is audited. Nothing here ever sees a card digit:
capture views and progress events pass `check_event_safe` on the way out.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import re
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from gateway.api.auth import (
    AuthFailed,
    Authenticator,
    Forbidden,
    Identity,
    check_admin,
    check_capture_access,
    check_start_capture,
    may_see_call,
)
from gateway.api.openapi import CAPTURE_FIELDS, openapi_document
from gateway.api.ratelimit import RateLimiter
from gateway.protocol_log import ProtocolLog

try:
    from gateway.capture.service import CaptureRefused
except ImportError:  # the capture service lands separately

    class CaptureRefused(Exception):  # type: ignore[no-redef]
        """The capture service would not start a capture."""

        def __init__(self, reason: str) -> None:
            super().__init__(reason)
            self.reason = reason


log = logging.getLogger("tonewall.api")

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_FIELDS = ("pan", "expiry", "cvv")
TERMINAL_STATES = frozenset({"tokenized", "failed", "cancelled"})
MAX_BODY_BYTES = 16 * 1024
LAST4 = re.compile(r"^[0-9]{4}$")
DIGIT = re.compile(r"[0-9]")
# Keys whose strings may carry digits: identifiers and the permitted last four.
DIGITS_ALLOWED_KEYS = frozenset({"last4", "token", "capture_id", "call_id", "agent", "caller"})
CONFLICT_REASONS = frozenset({"capture_active", "capture already active"})
NOT_FOUND_REASONS = frozenset({"unknown_call", "unknown call"})
BAD_REQUEST_REASONS = frozenset({"invalid_fields"})
UNANSWERED_STATES = frozenset({"trying", "ringing"})
"""gateway.b2bua.CallState values before the agent answered."""

CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


class CallInfo(Protocol):
    """One call as the B2BUA's directory describes it."""

    call_id: str
    agent: str
    caller: str
    state: str
    started_at: Any


class CallDirectory(Protocol):
    """The B2BUA's calls, as the API needs them."""

    def list_calls(self) -> Sequence[CallInfo]: ...

    def get_call(self, call_id: str) -> CallInfo | None: ...


class CaptureServiceLike(Protocol):
    """gateway.capture.service.CaptureService, as the API uses it."""

    async def start(self, call_id: str, fields: Sequence[str], actor: str) -> Any: ...

    def get(self, capture_id: str) -> Any: ...

    async def cancel(self, capture_id: str, actor: str) -> Any: ...

    def subscribe(self, capture_id: str) -> AsyncIterator[dict[str, Any]]: ...

    def capture_active(self, call_id: str) -> bool: ...


class UnsafeEvent(ValueError):
    """An outgoing event carried something that could be card data."""


class ApiError(Exception):
    """A request that ends in a JSON error answer."""

    def __init__(self, status: int, error: str, reason: str, headers: Mapping[str, str] | None = None):
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason
        self.headers = dict(headers or {})


@dataclass
class ApiSettings:
    """Tunables; the defaults suit one contact-centre site."""

    heartbeat_s: float = 15.0
    rate_capacity: float = 60.0
    """Burst of requests per identity."""
    rate_per_s: float = 10.0
    failure_capacity: float = 20.0
    """Burst of failed authentications per client address before 429."""
    failure_rate_per_s: float = 0.5
    static_dir: Path = STATIC_DIR
    wall_clock: Callable[[], float] = time.time
    """Clock for token expiry (JWT times are Unix seconds)."""


@dataclass
class ApiStats:
    """Plain counters the metrics exporter reads at scrape time."""

    requests_total: int = 0
    auth_failures: Counter[str] = field(default_factory=Counter)
    """By fixed reason ("token expired", "bad signature", ...)."""
    forbidden_total: int = 0
    rate_limited_total: int = 0
    events_withheld_total: int = 0
    sse_streams_active: int = 0
    malformed: Counter[str] = field(default_factory=Counter)
    """Malformed HTTP requests refused before any handler ran, by error type (ProtocolLog)."""


CAPTURES = web.AppKey("captures", object)
CALLS = web.AppKey("calls", object)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
AUDIT = web.AppKey("audit", object)
SETTINGS = web.AppKey("settings", ApiSettings)
STATS = web.AppKey("stats", ApiStats)
LIMITER = web.AppKey("limiter", RateLimiter)
FAILURE_LIMITER = web.AppKey("failure_limiter", RateLimiter)
READY = web.AppKey("ready", object)

# -- outgoing data checks -----------------------------------------------------------


def check_event_safe(event: Mapping[str, Any], _key: str = "") -> Mapping[str, Any]:
    """Raise UnsafeEvent if an outgoing mapping could hold card digits.

    Strings may carry digits only under identifier keys; `last4` must be four digits;
    numbers must be small (counts, lengths) unless the key names a time.
    """
    for key, value in event.items():
        _check_value(str(key), value)
    return event


def _check_value(key: str, value: Any) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, Mapping):
        check_event_safe(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_value(key, item)
    elif isinstance(value, str):
        if key == "last4":
            if not LAST4.match(value):
                raise UnsafeEvent("last4 is not four digits")
        elif key not in DIGITS_ALLOWED_KEYS and DIGIT.search(value):
            raise UnsafeEvent("digit in event text")
    elif isinstance(value, (int, float)):
        if abs(value) >= 1000 and not (key.endswith("_at") or key.endswith("_s")):
            raise UnsafeEvent("large number in event")
    else:
        raise UnsafeEvent("unexpected value type in event")


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.isoformat()
    if isinstance(value, (int, float)):
        return datetime.datetime.fromtimestamp(value, datetime.timezone.utc).isoformat()
    return str(value)


def call_json(call: CallInfo) -> dict[str, Any]:
    return {
        "call_id": str(call.call_id),
        "agent": str(call.agent),
        "caller": str(call.caller),
        "state": str(getattr(call.state, "value", call.state)),
        "started_at": _iso(call.started_at),
    }


def capture_json(view: Any, capture_id: str | None = None) -> dict[str, Any]:
    """The public shape of a capture; raises UnsafeEvent rather than emit a digit."""
    state = getattr(view, "state", None)
    body = {
        "capture_id": str(getattr(view, "capture_id", None) or capture_id),
        "call_id": str(getattr(view, "call_id", "")),
        "agent": getattr(view, "agent", None),
        "fields": list(getattr(view, "fields", ()) or ()),
        "state": str(getattr(state, "value", state)),
        "brand": _text(getattr(view, "brand", None)),
        "last4": getattr(view, "last4", None),
        "token": getattr(view, "token", None),
        "reason": _text(getattr(view, "reason", None)),
    }
    check_event_safe(body)
    return body


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))


# -- errors, headers, auth ----------------------------------------------------------


def _error_body(status: int, error: str, reason: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": error, "reason": reason}, status=status, headers=headers)


HTTP_ERROR_NAMES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "refused",
    429: "rate_limited",
}


def _route_name(request: web.Request) -> str:
    """The route template, never the raw path (a client could put anything in a path)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _record(app: web.Application, event: str, **fields: Any) -> None:
    audit = app[AUDIT]
    if audit is None:
        return
    record = getattr(audit, "record", audit)
    record(event, **fields)


@web.middleware
async def _errors_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    started = time.perf_counter()
    request.app[STATS].requests_total += 1
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except ApiError as exc:
        status = exc.status
        return _error_body(exc.status, exc.error, exc.reason, exc.headers)
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400:
            raise
        reason = {404: "not found", 405: "method not allowed", 413: "body too large"}.get(
            exc.status, "request failed"
        )
        # RFC 9110 15.5.6: a 405 MUST list the target's methods in Allow
        kept = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return _error_body(exc.status, HTTP_ERROR_NAMES.get(exc.status, "error"), reason, kept)
    except asyncio.CancelledError:
        raise
    except Exception:
        # the message could in principle carry anything: log the type only
        log.error("api handler failed route=%s", _route_name(request), exc_info=False)
        return _error_body(500, "internal", "internal error")
    finally:
        log.info(
            "%s %s %d %.1fms",
            request.method,
            _route_name(request),
            status,
            (time.perf_counter() - started) * 1000,
        )


def _secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Content-Security-Policy", CONSOLE_CSP)
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    if request.path.startswith("/v1/"):
        headers["Cache-Control"] = "no-store"
    else:
        headers.setdefault("Cache-Control", "no-cache")


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Security headers on every answer, streamed ones and aiohttp's own 404/405 included (not its
    answer to a request it cannot parse: that one runs no application signal)."""
    _secure_headers(request, response)


def _peer(request: web.Request) -> str:
    return request.remote or "unknown"


def authenticate(request: web.Request) -> Identity:
    """The caller's identity; 401 (audited) or 429 otherwise, then per-identity 429."""
    app = request.app
    now = asyncio.get_running_loop().time()
    peer = _peer(request)
    try:
        identity = app[AUTHENTICATOR].authenticate(
            request.headers.get("Authorization"), app[SETTINGS].wall_clock()
        )
    except AuthFailed as exc:
        reason = str(exc)
        app[STATS].auth_failures[reason] += 1
        # Failures are limited per address, after the token: a valid token from the same
        # address (agents behind one NAT with an attacker) is never locked out by them.
        retry_s = app[FAILURE_LIMITER].check(peer, now)
        if retry_s > 0:
            app[STATS].rate_limited_total += 1  # counted, not audited: the audit log is no flood sink
            raise _rate_limited(retry_s) from None
        _record(app, "auth_failed", reason=reason, method=request.method, route=_route_name(request), remote=peer)
        raise ApiError(
            401,
            "unauthorized",
            reason,
            {"WWW-Authenticate": 'Bearer realm="tonewall", error="invalid_token"'},
        ) from None
    retry_s = app[LIMITER].check(identity.rate_key, now)
    if retry_s > 0:
        app[STATS].rate_limited_total += 1
        _record(app, "rate_limited", actor=identity.actor, route=_route_name(request))
        raise _rate_limited(retry_s)
    return identity


def _rate_limited(retry_s: float) -> ApiError:
    # RFC 6585 4: 429 may say how long to wait in Retry-After
    return ApiError(429, "rate_limited", "too many requests", {"Retry-After": str(max(1, round(retry_s + 0.5)))})


def _forbid(request: web.Request, identity: Identity, exc: Forbidden) -> ApiError:
    request.app[STATS].forbidden_total += 1
    _record(
        request.app,
        "access_denied",
        actor=identity.actor,
        reason=str(exc),
        method=request.method,
        route=_route_name(request),
    )
    return ApiError(403, "forbidden", str(exc))


# -- handlers -----------------------------------------------------------------------


async def list_calls(request: web.Request) -> web.Response:
    identity = authenticate(request)
    calls = request.app[CALLS].list_calls()
    visible = [call_json(call) for call in calls if may_see_call(identity, call.agent)]
    return web.json_response({"calls": visible})


async def _fields_from_body(request: web.Request) -> list[str]:
    if not request.can_read_body:
        return list(DEFAULT_FIELDS)
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "body must be application/json")
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: [[[...]]] deeper than the stack
        raise ApiError(400, "bad_request", "body is not JSON") from None
    if body is None:
        return list(DEFAULT_FIELDS)
    if not isinstance(body, dict) or set(body) - {"fields"}:
        raise ApiError(400, "bad_request", "body must be an object with only fields")
    fields = body.get("fields", list(DEFAULT_FIELDS))
    if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
        raise ApiError(400, "bad_request", "fields must be a non-empty list of names")
    if any(name not in CAPTURE_FIELDS for name in fields):
        raise ApiError(400, "bad_request", "unknown field name")
    if len(set(fields)) != len(fields):
        raise ApiError(400, "bad_request", "duplicate field name")
    if "pan" not in fields:
        raise ApiError(400, "bad_request", "fields must include pan")
    if fields != [name for name in CAPTURE_FIELDS if name in fields]:
        raise ApiError(400, "bad_request", "fields out of keying order")
    return fields


async def start_capture(request: web.Request) -> web.Response:
    identity = authenticate(request)
    fields = await _fields_from_body(request)
    call_id = request.match_info["call_id"]
    call = request.app[CALLS].get_call(call_id)
    if call is None:
        raise ApiError(404, "not_found", "unknown call")
    try:
        check_start_capture(identity, call.agent)
    except Forbidden as exc:
        raise _forbid(request, identity, exc) from None
    if str(getattr(call.state, "value", call.state)) in UNANSWERED_STATES:
        # no codec is agreed before the answer: say so, not "codec not inspectable"
        raise ApiError(422, "refused", "call not answered yet")
    captures = request.app[CAPTURES]
    try:
        view = await captures.start(call_id, fields, identity.actor)
    except CaptureRefused as exc:
        reason = str(getattr(exc, "reason", exc))
        if reason in CONFLICT_REASONS:
            raise ApiError(409, "conflict", "capture already active") from None
        if reason in NOT_FOUND_REASONS:
            raise ApiError(404, "not_found", "unknown call") from None
        if reason in BAD_REQUEST_REASONS:
            raise ApiError(400, "bad_request", reason) from None
        raise ApiError(422, "refused", _safe_reason(reason)) from None
    body = capture_json(view)
    return web.json_response(
        body, status=201, headers={"Location": f"/v1/captures/{body['capture_id']}"}
    )


def _safe_reason(reason: str) -> str:
    return "capture refused" if DIGIT.search(reason) else reason


def _capture_for(request: web.Request, identity: Identity) -> Any:
    capture_id = request.match_info["capture_id"]
    try:
        view = request.app[CAPTURES].get(capture_id)
    except (KeyError, LookupError):
        view = None
    if view is None:
        raise ApiError(404, "not_found", "unknown capture")
    try:
        check_capture_access(identity, getattr(view, "agent", None))
    except Forbidden as exc:
        raise _forbid(request, identity, exc) from None
    return view


async def get_capture(request: web.Request) -> web.Response:
    identity = authenticate(request)
    view = _capture_for(request, identity)
    return web.json_response(capture_json(view, request.match_info["capture_id"]))


async def cancel_capture(request: web.Request) -> web.Response:
    identity = authenticate(request)
    capture_id = request.match_info["capture_id"]
    view = _capture_for(request, identity)
    if _state(view) not in TERMINAL_STATES:
        await request.app[CAPTURES].cancel(capture_id, identity.actor)
        view = request.app[CAPTURES].get(capture_id) or view
    return web.json_response(capture_json(view, capture_id))


def _state(view: Any) -> str:
    state = getattr(view, "state", None)
    return str(getattr(state, "value", state))


def _sse(event: str, data: Mapping[str, Any], event_id: int | None = None) -> bytes:
    # WHATWG HTML 9.2 server-sent events: "event:", "id:", "data:" lines, blank line ends one
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


HEARTBEAT = b": keepalive\n\n"


async def capture_events(request: web.Request) -> web.StreamResponse:
    """Progress as server-sent events until the capture ends.

    The console reads this with fetch() streaming, so the token travels in the
    Authorization header; a token in the URL (what EventSource would need) lands in
    access logs, proxies and browser history.
    """
    identity = authenticate(request)
    capture_id = request.match_info["capture_id"]
    view = _capture_for(request, identity)
    app = request.app
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    app[STATS].sse_streams_active += 1
    stream = app[CAPTURES].subscribe(capture_id)
    pending: asyncio.Task[Any] | None = None
    try:
        await response.write(_sse("state", capture_json(view, capture_id)))
        sequence = 0
        if _state(view) not in TERMINAL_STATES:
            iterator = stream.__aiter__()
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(iterator.__anext__())
                # (Not kept in a local: the set of done tasks would hold the finished task below.)
                if not (await asyncio.wait({pending}, timeout=app[SETTINGS].heartbeat_s))[0]:
                    await response.write(HEARTBEAT)
                    continue
                task, pending = pending, None
                try:
                    event = task.result()
                except StopAsyncIteration:
                    break
                finally:
                    # The finished task's StopAsyncIteration holds a traceback of this frame: kept
                    # in a local, the stream's frame, request and generator would be a reference
                    # cycle left for the cyclic collector (whose passes stop the audio loop).
                    task = None
                try:
                    check_event_safe(event)
                except UnsafeEvent as exc:
                    app[STATS].events_withheld_total += 1
                    log.warning("progress event withheld: %s", exc)
                    continue
                sequence += 1
                await response.write(_sse("progress", event, sequence))
        final = app[CAPTURES].get(capture_id) or view
        await response.write(_sse("end", capture_json(final, capture_id)))
        await response.write_eof()
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away
    finally:
        if pending is not None:
            # let the cancelled __anext__ unwind before closing the generator it runs in
            pending.cancel()
            await asyncio.wait({pending})
        closer = getattr(stream, "aclose", None)
        if closer is not None:
            try:
                await closer()
            except Exception:
                log.warning("closing a progress subscription failed")
        app[STATS].sse_streams_active -= 1
    return response


async def reload_keys(request: web.Request) -> web.Response:
    identity = authenticate(request)
    try:
        check_admin(identity)
    except Forbidden as exc:
        raise _forbid(request, identity, exc) from None
    try:
        request.app[AUTHENTICATOR].reload()
    except (OSError, ValueError):
        _record(request.app, "admin_action", actor=identity.actor, action="keys.reload", outcome="failed")
        raise ApiError(500, "internal", "key reload failed") from None
    _record(request.app, "admin_action", actor=identity.actor, action="keys.reload", outcome="ok")
    return web.json_response({"status": "reloaded"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready = request.app[READY]
    ok = True
    if ready is not None:
        result = ready()
        ok = bool(await result) if asyncio.iscoroutine(result) else bool(result)
    if ok:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "not ready"}, status=503)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def console(request: web.Request) -> web.FileResponse:
    return web.FileResponse(request.app[SETTINGS].static_dir / "index.html")


# -- factory and runner ---------------------------------------------------------------


def create_app(
    captures: CaptureServiceLike,
    calls: CallDirectory,
    authenticator: Authenticator,
    audit: Any,
    *,
    settings: ApiSettings | None = None,
    ready: Callable[[], bool | Awaitable[bool]] | None = None,
) -> web.Application:
    """The API application; `audit` is an AuditLog or its `record(event, **fields)`."""
    settings = settings or ApiSettings()
    app = web.Application(
        middlewares=[_errors_middleware], client_max_size=MAX_BODY_BYTES
    )
    app[CAPTURES] = captures
    app[CALLS] = calls
    app[AUTHENTICATOR] = authenticator
    app[AUDIT] = audit
    app[SETTINGS] = settings
    app[STATS] = ApiStats()
    app[LIMITER] = RateLimiter(settings.rate_capacity, settings.rate_per_s)
    app[FAILURE_LIMITER] = RateLimiter(settings.failure_capacity, settings.failure_rate_per_s)
    app[READY] = ready
    app.on_response_prepare.append(_on_prepare)
    ident = "{capture_id:[^/]{1,256}}"
    app.router.add_get("/v1/calls", list_calls)
    app.router.add_post("/v1/calls/{call_id:[^/]{1,256}}/captures", start_capture)
    app.router.add_get(f"/v1/captures/{ident}", get_capture)
    app.router.add_delete(f"/v1/captures/{ident}", cancel_capture)
    app.router.add_get(f"/v1/captures/{ident}/events", capture_events)
    app.router.add_post("/v1/admin/keys/reload", reload_keys)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/", console)
    app.router.add_static("/static/", settings.static_dir, show_index=False, follow_symlinks=False)
    return app


def require_modern_tls(ssl_context: ssl.SSLContext) -> ssl.SSLContext:
    """Raise the floor of a server context to TLS 1.2 (RFC 8996 deprecates 1.0 and 1.1)."""
    if not isinstance(ssl_context, ssl.SSLContext):
        raise TypeError("the API is served over HTTPS only: an ssl.SSLContext is required")
    if ssl_context.minimum_version < ssl.TLSVersion.TLSv1_2:
        ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
    return ssl_context


async def start_api(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext
) -> web.AppRunner:
    """Serve `app` over HTTPS on host:port (0 picks a port: see `bound_port`)."""
    require_modern_tls(ssl_context)
    protocol_log = ProtocolLog("API")
    app[STATS].malformed = protocol_log.errors
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0, logger=protocol_log)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    log.debug("agent API listening on https://%s:%d", host, bound_port(runner))
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port the API listens on."""
    return int(runner.addresses[0][1])
