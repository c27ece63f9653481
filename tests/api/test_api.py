"""The endpoints of DESIGN.md contract 4 against a running HTTPS server."""

from __future__ import annotations

import asyncio
import json
import re
import warnings
import ssl
from typing import Any

import aiohttp
import jsonschema
import pytest
from openapi_spec_validator import validate

from gateway.api.openapi import openapi_document
from gateway.api.server import AUTHENTICATOR, create_app, require_modern_tls, start_api
from tests.api.conftest import Api, api_settings

SSE_DIGITS_ALLOWED = {"last4", "token", "capture_id", "call_id", "agent", "caller"}


async def _json(api: Api, method: str, path: str, token: str | None = None, **kwargs: Any) -> tuple[int, Any, Any]:
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers.update(api.auth(token))
    async with api.session.request(method, api.base + path, headers=headers, **kwargs) as response:
        return response.status, await response.json(), response.headers


def _schema(name: str) -> dict[str, Any]:
    document = openapi_document()
    schema = dict(document["components"]["schemas"][name])
    schema["components"] = document["components"]
    return _rewrite_refs(schema)


def _rewrite_refs(node: Any) -> Any:
    # OpenAPI refs point at #/components/...: keep them resolvable from the sub-schema
    if isinstance(node, dict):
        return {key: _rewrite_refs(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_rewrite_refs(item) for item in node]
    return node


def _conforms(body: Any, name: str) -> None:
    jsonschema.validate(body, _schema(name), cls=jsonschema.Draft202012Validator)


async def test_list_calls_shape(api: Api) -> None:
    status, body, headers = await _json(api, "GET", "/v1/calls", api.token())
    assert status == 200
    _conforms(body, "CallList")
    assert body["calls"][0] == {
        "call_id": "call-a1",
        "agent": "alice",
        "caller": "sip:+15550001@example.net",
        "state": "answered",
        "started_at": "2023-11-14T22:13:20+00:00",
    }
    assert headers["Cache-Control"] == "no-store"
    assert headers["Strict-Transport-Security"].startswith("max-age=")
    assert headers["X-Content-Type-Options"] == "nosniff"


async def test_start_capture_answers_201_with_masking_already_on(api: Api) -> None:
    status, body, headers = await _json(api, "POST", "/v1/calls/call-a1/captures", api.token())
    assert status == 201
    _conforms(body, "Capture")
    assert body["state"] == "collecting" and body["fields"] == ["pan", "expiry", "cvv"]
    assert headers["Location"] == f"/v1/captures/{body['capture_id']}"
    assert api.masking.switched == [("call-a1", True)]
    assert api.audit.events("capture.started")[0]["actor"] == "agent:alice"
    status, got, headers = await _json(api, "GET", f"/v1/captures/{body['capture_id']}", api.token())
    assert (status, got) == (200, body)
    assert headers["Cache-Control"] == "no-store"


async def test_start_capture_with_fields(api: Api) -> None:
    status, body, _ = await _json(
        api, "POST", "/v1/calls/call-a1/captures", api.token(), json={"fields": ["pan", "cvv", "postcode"]}
    )
    assert (status, body["fields"]) == (201, ["pan", "cvv", "postcode"])


@pytest.mark.parametrize(
    "body,reason",
    [
        (b"{not json", "body is not JSON"),
        (b"[" * 8000 + b"]" * 8000, "body is not JSON"),  # deeper than json's recursion: was a 500
        (b"[]", "body must be an object with only fields"),
        (b'{"fields": ["pan"], "extra": 1}', "body must be an object with only fields"),
        (b'{"fields": []}', "fields must be a non-empty list of names"),
        (b'{"fields": "pan"}', "fields must be a non-empty list of names"),
        (b'{"fields": [1]}', "fields must be a non-empty list of names"),
        (b'{"fields": ["pan", "pin"]}', "unknown field name"),
        (b'{"fields": ["pan", "pan"]}', "duplicate field name"),
        (b'{"fields": ["cvv"]}', "fields must include pan"),
        (b'{"fields": ["expiry", "pan"]}', "fields out of keying order"),
    ],
)
async def test_start_capture_rejects_bad_bodies(api: Api, body: bytes, reason: str) -> None:
    status, got, _ = await _json(
        api, "POST", "/v1/calls/call-a1/captures", api.token(),
        data=body, headers={"Content-Type": "application/json"},
    )
    assert (status, got) == (400, {"error": "bad_request", "reason": reason})
    assert api.masking.switched == []


async def test_start_capture_rejects_non_json_and_huge_bodies(api: Api) -> None:
    status, got, _ = await _json(
        api, "POST", "/v1/calls/call-a1/captures", api.token(), data=b"fields=pan",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 415 and got["error"] == "unsupported_media_type"
    status, got, _ = await _json(
        api, "POST", "/v1/calls/call-a1/captures", api.token(),
        data=b'{"fields": [' + b'"pan",' * 10_000 + b'"pan"]}', headers={"Content-Type": "application/json"},
    )
    assert status == 413 and got["error"] == "payload_too_large"
    assert api.masking.switched == []


async def test_capture_conflicts_refusals_and_unknowns(api: Api) -> None:
    token = api.token()
    assert (await _json(api, "POST", "/v1/calls/call-a1/captures", token))[0] == 201
    status, body, _ = await _json(api, "POST", "/v1/calls/call-a1/captures", token)
    assert (status, body) == (409, {"error": "conflict", "reason": "capture already active"})
    status, body, _ = await _json(api, "POST", "/v1/calls/call-g1/captures", token)
    assert (status, body) == (422, {"error": "refused", "reason": "codec_not_inspectable"})
    status, body, _ = await _json(api, "POST", "/v1/calls/no-such-call/captures", token)
    assert (status, body) == (404, {"error": "not_found", "reason": "unknown call"})
    status, body, _ = await _json(api, "GET", "/v1/captures/cap_nope", token)
    assert (status, body) == (404, {"error": "not_found", "reason": "unknown capture"})
    status, body, _ = await _json(api, "GET", "/v1/nowhere", token)
    assert status == 404 and body["error"] == "not_found"
    status, body, _ = await _json(api, "PUT", "/v1/calls", token)
    assert status == 405 and body["error"] == "method_not_allowed"
    assert api.masking.switched == [("call-a1", True)], "refused captures never touch masking"


async def test_a_new_capture_may_start_once_the_last_one_ended(api: Api) -> None:
    token = api.token()
    first = (await _json(api, "POST", "/v1/calls/call-a1/captures", token))[1]["capture_id"]
    assert (await _json(api, "DELETE", f"/v1/captures/{first}", token))[0] == 200
    status, body, _ = await _json(api, "POST", "/v1/calls/call-a1/captures", token)
    assert status == 201 and body["capture_id"] != first


async def test_refusal_reasons_with_digits_are_withheld(fake_api: Api) -> None:
    fake_api.captures.refuse["call-a1"] = "card 4111111111111111 refused"
    status, body, _ = await _json(fake_api, "POST", "/v1/calls/call-a1/captures", fake_api.token())
    assert (status, body["reason"]) == (422, "capture refused")


async def test_cancel(api: Api) -> None:
    token = api.token()
    capture_id = (await _json(api, "POST", "/v1/calls/call-a1/captures", token))[1]["capture_id"]
    status, body, _ = await _json(api, "DELETE", f"/v1/captures/{capture_id}", token)
    assert (status, body["state"], body["reason"]) == (200, "cancelled", "cancelled")
    assert [r["actor"] for r in api.audit.events("capture.cancelled")] == ["agent:alice"]
    status, body, _ = await _json(api, "DELETE", f"/v1/captures/{capture_id}", token)
    assert (status, body["state"]) == (200, "cancelled")
    assert len(api.audit.events("capture.cancelled")) == 1, "cancelling an ended capture changes nothing"


async def test_whole_capture_over_the_api(api: Api) -> None:
    token = api.token()
    capture_id = (await _json(api, "POST", "/v1/calls/call-a1/captures", token))[1]["capture_id"]
    api.key("call-a1", "4111111111111111#1230#123#")
    view = await api.settled(capture_id)
    status, body, _ = await _json(api, "GET", f"/v1/captures/{capture_id}", token)
    assert status == 200
    assert (body["state"], body["brand"], body["last4"]) == ("tokenized", "visa", "1111")
    assert body["token"] == view.token and body["token"].startswith("tok_test_")


def parse_sse(raw: str) -> list[tuple[str, Any]]:
    """(event, data) per event; comments come back as ("comment", text)."""
    events: list[tuple[str, Any]] = []
    assert raw.endswith("\n\n"), "stream must end on an event boundary"
    for block in raw.split("\n\n")[:-1]:
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith(":"):
                events.append(("comment", line[1:].strip()))
                continue
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
            else:
                assert field == "id", line
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


def _no_digits(payload: Any, key: str = "") -> None:
    if isinstance(payload, dict):
        for name, value in payload.items():
            _no_digits(value, name)
    elif isinstance(payload, list):
        for item in payload:
            _no_digits(item, key)
    elif isinstance(payload, str) and key not in SSE_DIGITS_ALLOWED:
        assert not re.search(r"[0-9]", payload), (key, payload)


async def _read_stream(api: Api, capture_id: str, token: str, during) -> str:
    """The whole event stream; `during(response)` runs once the first event has arrived."""
    async with api.session.get(
        api.base + f"/v1/captures/{capture_id}/events", headers=api.auth(token)
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-store"
        first = await response.content.readuntil(b"\n\n")
        middle = await during(response)
        rest = await response.content.read()
    return (first + middle + rest).decode()


async def test_events_stream_progress_heartbeats_and_end(api: Api) -> None:
    token = api.token()
    capture_id = (await _json(api, "POST", "/v1/calls/call-a1/captures", token))[1]["capture_id"]

    async def caller_keys(response: Any) -> bytes:
        api.key("call-a1", "4")
        # the heartbeat period is 50 ms here: wait for one comment line before going on
        seen = b""
        while b": keepalive" not in seen:
            seen += await response.content.readuntil(b"\n\n")
        api.key("call-a1", "111111111111111#1230#123#")
        return seen

    raw = await _read_stream(api, capture_id, token, caller_keys)
    events = parse_sse(raw)
    names = [name for name, _ in events]
    assert names[0] == "state" and names[-1] == "end" and "comment" in names
    progress = [data for name, data in events if name == "progress"]
    pan_counts = [e["count"] for e in progress if e.get("type") == "digit" and e["field"] == "pan"]
    assert pan_counts == list(range(1, 17))
    completed = [e for e in progress if e.get("type") == "field_completed"]
    assert [e["field"] for e in completed] == ["pan", "expiry", "cvv"]
    assert completed[0]["last4"] == "1111" and completed[0]["brand"] == "visa"
    assert events[-1][1]["state"] == "tokenized" and events[-1][1]["token"].startswith("tok_test_1111")
    for _, data in events:
        _no_digits(data)
    for secret in ("4111111111111111", "41111111", "1230", "123#"):
        assert secret not in raw
    from gateway.api.server import STATS

    assert api.app[STATS].events_withheld_total == 0
    assert api.app[STATS].sse_streams_active == 0


async def test_events_carry_rejections_and_hang_up(api: Api) -> None:
    token = api.token()
    capture_id = (await _json(api, "POST", "/v1/calls/call-a1/captures", token))[1]["capture_id"]

    async def caller_errs_then_hangs_up(response: Any) -> bytes:
        api.key("call-a1", "4111111111111112#")
        api.captures.on_call_ended("call-a1")
        return b""

    events = parse_sse(await _read_stream(api, capture_id, token, caller_errs_then_hangs_up))
    progress = [data for name, data in events if name == "progress"]
    rejected = [e for e in progress if e.get("type") == "field_rejected"]
    assert rejected and rejected[0]["reason"] == "luhn" and rejected[0]["valid"] is False
    assert (events[-1][0], events[-1][1]["state"], events[-1][1]["reason"]) == ("end", "failed", "call_ended")
    for _, data in events:
        _no_digits(data)


async def test_events_of_an_ended_capture_are_state_then_end(api: Api) -> None:
    token = api.token()
    capture_id = (await _json(api, "POST", "/v1/calls/call-a1/captures", token))[1]["capture_id"]
    await _json(api, "DELETE", f"/v1/captures/{capture_id}", token)
    async with api.session.get(api.base + f"/v1/captures/{capture_id}/events", headers=api.auth(token)) as response:
        events = parse_sse((await response.content.read()).decode())
    assert [name for name, _ in events] == ["state", "end"]
    assert events[-1][1]["state"] == "cancelled"


async def test_the_api_withholds_unsafe_events(fake_api: Api) -> None:
    api = fake_api
    token = api.token()
    capture_id = (await _json(api, "POST", "/v1/calls/call-a1/captures", token))[1]["capture_id"]

    async def leaky_service(response: Any) -> bytes:
        api.captures.emit(capture_id, {"type": "digit", "field": "pan", "count": 1})
        api.captures.emit(capture_id, {"type": "digit", "field": "pan", "digits": "4111111111111111"})
        api.captures.emit(capture_id, {"type": "debug", "field": "pan", "value": 4111111111111111})
        api.captures.emit(capture_id, {"type": "field_completed", "field": "expiry", "last4": "12/30"})
        api.captures.finish(capture_id, state="tokenized", brand="visa", last4="1111", token="tok_abc123")
        return b""

    raw = await _read_stream(api, capture_id, token, leaky_service)
    events = parse_sse(raw)
    assert [name for name, _ in events] == ["state", "progress", "end"]
    assert "4111111111111111" not in raw and "12/30" not in raw
    from gateway.api.server import STATS

    assert api.app[STATS].events_withheld_total == 3


async def test_client_leaving_the_stream_closes_the_subscription(fake_api: Api) -> None:
    api = fake_api
    token = api.token()
    capture_id = (await _json(api, "POST", "/v1/calls/call-a1/captures", token))[1]["capture_id"]
    response = await api.session.get(api.base + f"/v1/captures/{capture_id}/events", headers=api.auth(token))
    await response.content.readuntil(b"\n\n")
    assert api.captures.subscribers(capture_id) == 1
    response.close()
    from gateway.api.server import STATS

    # the server notices at its next heartbeat write; wait for that, bounded by the test timeout
    while api.app[STATS].sse_streams_active:
        await asyncio.sleep(0.01)
    assert api.captures.subscribers(capture_id) == 0


@pytest.mark.parametrize("settings", [api_settings(rate_capacity=3, rate_per_s=0.001)])
async def test_rate_limit_per_identity(api: Api) -> None:
    alice = api.token()
    for _ in range(3):
        assert (await _json(api, "GET", "/v1/calls", alice))[0] == 200
    status, body, headers = await _json(api, "GET", "/v1/calls", alice)
    assert (status, body["error"]) == (429, "rate_limited")
    assert int(headers["Retry-After"]) >= 1
    assert (await _json(api, "GET", "/v1/calls", api.token("agent", agent="bob")))[0] == 200
    assert api.audit.events("rate_limited")[0]["actor"] == "agent:alice"


@pytest.mark.parametrize("settings", [api_settings(failure_capacity=2, failure_rate_per_s=0.001)])
async def test_repeated_auth_failures_from_one_address_are_429(api: Api) -> None:
    """Bad tokens from one address are throttled; a valid token from that address (agents behind
    the same NAT as the attacker) still gets in."""
    for _ in range(2):
        assert (await _json(api, "GET", "/v1/calls", "forged.token.value"))[0] == 401
    for _ in range(3):
        status, body, headers = await _json(api, "GET", "/v1/calls", "forged.token.value")
        assert (status, body["error"]) == (429, "rate_limited") and int(headers["Retry-After"]) >= 1
    assert (await _json(api, "GET", "/v1/calls", api.token()))[0] == 200
    assert len(api.audit.events("auth_failed")) == 2  # the throttled ones are counted, not audited


@pytest.mark.parametrize("token", ["\u00e9.\u00e9.\u00e9", "a\udcff.b.c"])
async def test_a_token_that_is_not_ascii_is_401_and_audited(api: Api, token: str) -> None:
    """A compact JWS is ASCII (RFC 7515 7.1); a non-ASCII value was a 500, unaudited and unthrottled."""
    from gateway.api.auth import AuthFailed
    with pytest.raises(AuthFailed):
        api.app[AUTHENTICATOR].authenticate("Bearer " + token, 0.0)
    status, body, _ = await _json(api, "GET", "/v1/calls", "\u00e9.\u00e9.\u00e9")
    assert (status, body["error"]) == (401, "unauthorized")
    assert api.audit.events("auth_failed")[-1]["reason"] == "malformed token"


async def test_openapi_document_is_valid_and_covers_every_route(api: Api) -> None:
    async with api.session.get(api.base + "/openapi.json") as response:
        assert response.status == 200
        document = await response.json()
    validate(document)
    documented = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    served = set()
    for route in api.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("formatter") or info.get("path")
        if path is None or route.method == "HEAD" or path.startswith("/static"):
            continue
        path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)
        served.add((route.method, path))
    assert served == documented


async def test_health_ready_and_console_are_public(api: Api) -> None:
    for path, expected in [("/healthz", {"status": "ok"}), ("/readyz", {"status": "ready"})]:
        status, body, _ = await _json(api, "GET", path)
        assert (status, body) == (200, expected)
    async with api.session.get(api.base + "/") as response:
        assert response.status == 200
        assert 'label for="token-input"' in await response.text()
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    for asset in ("app.js", "app.css"):
        async with api.session.get(api.base + f"/static/{asset}") as response:
            assert response.status == 200
    async with api.session.get(api.base + "/static/../auth.py") as response:
        assert response.status == 404


async def test_readyz_follows_the_probe(tmp_path: Any) -> None:
    from gateway import pki
    from gateway.api.auth import Authenticator
    from tests.api.fakes import FakeAudit, FakeCalls, FakeCaptures

    calls = FakeCalls([])
    ready = {"value": False}
    app = create_app(
        FakeCaptures(calls), calls, Authenticator.for_data_dir(tmp_path), FakeAudit(),
        ready=lambda: ready["value"],
    )
    runner = await start_api(app, "127.0.0.1", 0, pki.server_ssl_context(pki.issue_server_cert(tmp_path, "api")))
    ctx = pki.client_ssl_context(tmp_path / "tls" / "ca.pem")
    try:
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
            async with session.get(f"https://127.0.0.1:{port}/readyz") as response:
                assert response.status == 503
            ready["value"] = True
            async with session.get(f"https://127.0.0.1:{port}/readyz") as response:
                assert response.status == 200
    finally:
        await runner.cleanup()


async def test_tls_only_and_at_least_1_2(api: Api) -> None:
    port = int(api.base.rsplit(":", 1)[1])
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(api.data_dir / "tls" / "ca.pem")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=old)) as session:
        with pytest.raises(aiohttp.ClientError):
            await session.get(f"https://127.0.0.1:{port}/healthz")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            await session.get(f"http://127.0.0.1:{port}/healthz")
    strict = ssl.create_default_context()  # the system store does not know the dev CA
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=strict)) as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(f"https://127.0.0.1:{port}/healthz")


async def test_start_api_refuses_plain_http_and_old_tls(api: Api) -> None:
    with pytest.raises(TypeError):
        await start_api(api.app, "127.0.0.1", 0, None)  # type: ignore[arg-type]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    assert require_modern_tls(context).minimum_version == ssl.TLSVersion.TLSv1_2


async def test_negotiates_tls_1_2_or_newer(api: Api) -> None:
    port = int(api.base.rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=str(api.data_dir / "tls" / "ca.pem"))
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    version = writer.get_extra_info("ssl_object").version()
    writer.close()
    await writer.wait_closed()
    assert version in ("TLSv1.2", "TLSv1.3")
