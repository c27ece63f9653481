"""Every protected endpoint without a token, with bad tokens, with the wrong role, and
an agent reaching for another agent's call: 401/403, audited, service untouched."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from gateway.api.auth import issue_token
from gateway.api.server import STATS
from tests.api.conftest import ALICE_CALLS, ALL_CALLS, Api

PROTECTED = [
    ("GET", "/v1/calls"),
    ("POST", "/v1/calls/call-a1/captures"),
    ("GET", "/v1/captures/{alice}"),
    ("DELETE", "/v1/captures/{alice}"),
    ("GET", "/v1/captures/{alice}/events"),
    ("POST", "/v1/admin/keys/reload"),
]


async def _seed(api: Api) -> dict[str, str]:
    """One capture on an alice call and one on a bob call, made through the service."""
    alice = await api.captures.start("call-a2", ["pan"], "agent:alice")
    bob = await api.captures.start("call-b1", ["pan"], "agent:bob")
    return {"alice": alice.capture_id, "bob": bob.capture_id}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(api: Api, **overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": "tonewall",
        "aud": "tonewall-api",
        "sub": "alice",
        "role": "agent",
        "agent": "alice",
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not None}


def _bad_tokens(api: Api) -> dict[str, str | None]:
    other_key = ed25519.Ed25519PrivateKey.generate()
    public_pem = api.signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    unsigned = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + "." + _b64(
        json.dumps(_claims(api)).encode()
    ) + "."
    good = api.token()
    head, body, sig = good.split(".")
    tampered_body = _b64(json.dumps(_claims(api, agent="bob", sub="bob")).encode())
    return {
        "none": None,
        "garbage": "not-a-jwt",
        "basic scheme": "Basic YWxpY2U6cGFzcw==",
        "expired": api.token(now=time.time() - 7200, ttl_s=3600),
        "forged": issue_token(other_key, role="agent", subject="alice", agent="alice", now=time.time()),
        "forged es256": issue_token(
            ec.generate_private_key(ec.SECP256R1()), role="agent", subject="alice", agent="alice", now=time.time()
        ),
        "tampered claims": f"{head}.{tampered_body}.{sig}",
        "wrong audience": jwt.encode(_claims(api, aud="someone-else"), api.signing_key, algorithm="EdDSA"),
        "wrong issuer": jwt.encode(_claims(api, iss="evil"), api.signing_key, algorithm="EdDSA"),
        "no exp": jwt.encode(_claims(api, exp=None), api.signing_key, algorithm="EdDSA"),
        "unknown role": jwt.encode(_claims(api, role="root"), api.signing_key, algorithm="EdDSA"),
        "alg none": unsigned,
        "hs256 with public key": _hs256(_claims(api), public_pem),
    }


def _hs256(claims: dict[str, object], secret: bytes) -> str:
    """An HMAC token keyed with the public key bytes (the classic algorithm confusion)."""
    import hashlib
    import hmac

    signing_input = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + _b64(
        json.dumps(claims).encode()
    )
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(mac)


def _untouched(api: Api, seeded: int) -> None:
    """No capture started or cancelled through the API (seeded ones were started directly)."""
    assert len(api.audit.events("capture.started")) == seeded
    assert api.audit.events("capture.cancelled") == []


@pytest.mark.parametrize("method,path", PROTECTED)
async def test_bad_credentials_are_401_and_audited(api: Api, method: str, path: str) -> None:
    ids = await _seed(api)
    url = api.base + path.format(**ids)
    for name, token in _bad_tokens(api).items():
        headers = {}
        if token is not None:
            headers["Authorization"] = token if token.startswith("Basic") else f"Bearer {token}"
        before = len(api.audit.events("auth_failed"))
        async with api.session.request(method, url, headers=headers) as response:
            body = await response.json()
            assert response.status == 401, name
            assert body["error"] == "unauthorized", name
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), name
            assert response.headers["Cache-Control"] == "no-store"
        failures = api.audit.events("auth_failed")
        assert len(failures) == before + 1, name
        assert failures[-1]["reason"] == body["reason"]
        assert token is None or token not in json.dumps(failures[-1])
    _untouched(api, seeded=2)


async def test_reasons_name_the_failure(api: Api) -> None:
    tokens = _bad_tokens(api)
    expected = {
        "none": "missing bearer token",
        "basic scheme": "missing bearer token",
        "expired": "token expired",
        "forged": "bad signature",
        "tampered claims": "bad signature",
        "wrong audience": "wrong audience",
        "wrong issuer": "wrong issuer",
        "no exp": "missing claim",
        "unknown role": "unknown role",
    }
    for name, reason in expected.items():
        token = tokens[name]
        headers = {}
        if token is not None:
            headers["Authorization"] = token if token.startswith("Basic") else f"Bearer {token}"
        async with api.session.get(api.base + "/v1/calls", headers=headers) as response:
            assert (response.status, (await response.json())["reason"]) == (401, reason), name
    stats = api.app[STATS]
    assert stats.auth_failures["token expired"] == 1


async def _status(api: Api, method: str, url: str, token: str, **kwargs: object) -> tuple[int, dict]:
    async with api.session.request(method, url, headers=api.auth(token), **kwargs) as response:
        return response.status, await response.json()


async def test_agent_reaching_for_another_agents_call(api: Api) -> None:
    ids = await _seed(api)
    alice = api.token("agent", agent="alice")
    checks = [
        ("POST", "/v1/calls/call-b1/captures"),
        ("GET", f"/v1/captures/{ids['bob']}"),
        ("DELETE", f"/v1/captures/{ids['bob']}"),
        ("GET", f"/v1/captures/{ids['bob']}/events"),
    ]
    for method, path in checks:
        status, body = await _status(api, method, api.base + path, alice)
        assert status == 403, path
        assert body["error"] == "forbidden"
    denied = api.audit.events("access_denied")
    assert len(denied) == len(checks)
    assert {record["actor"] for record in denied} == {"agent:alice"}
    _untouched(api, seeded=2)
    assert api.captures.get(ids["bob"]).state == "collecting"
    status, body = await _status(api, "GET", api.base + "/v1/calls", alice)
    assert {call["call_id"] for call in body["calls"]} == ALICE_CALLS


async def test_an_agent_token_for_bob_sees_only_bob(api: Api) -> None:
    status, body = await _status(api, "GET", api.base + "/v1/calls", api.token("agent", agent="bob"))
    assert status == 200
    assert [call["call_id"] for call in body["calls"]] == ["call-b1"]


@pytest.mark.parametrize(
    "role,claims,calls_seen",
    [
        ("ops", {}, ALL_CALLS),
        ("admin", {"amr": ["pwd", "mfa"]}, ALL_CALLS),
        ("supervisor", {"agents": ["alice", "carol"]}, ALICE_CALLS | {"call-c1"}),
        ("supervisor", {"team": "*"}, ALL_CALLS),
        ("supervisor", {}, set()),
    ],
)
async def test_roles_see_their_calls_and_never_start_captures(
    api: Api, role: str, claims: dict, calls_seen: set[str]
) -> None:
    token = api.token(role, agent=None, **claims)
    status, body = await _status(api, "GET", api.base + "/v1/calls", token)
    assert status == 200
    assert {call["call_id"] for call in body["calls"]} == calls_seen
    status, body = await _status(api, "POST", api.base + "/v1/calls/call-a1/captures", token)
    assert (status, body["error"]) == (403, "forbidden")
    _untouched(api, seeded=0)


@pytest.mark.parametrize("role", ["ops", "admin"])
async def test_ops_and_admin_have_no_capture_access(api: Api, role: str) -> None:
    ids = await _seed(api)
    token = api.token(role, agent=None, amr=["mfa"])
    for method, path in [
        ("GET", f"/v1/captures/{ids['alice']}"),
        ("DELETE", f"/v1/captures/{ids['alice']}"),
        ("GET", f"/v1/captures/{ids['alice']}/events"),
    ]:
        status, _ = await _status(api, method, api.base + path, token)
        assert status == 403, (role, method, path)
    _untouched(api, seeded=2)


async def test_supervisor_reads_and_cancels_only_their_team(api: Api) -> None:
    ids = await _seed(api)
    token = api.token("supervisor", agent=None, subject="sue", agents=["alice"])
    status, body = await _status(api, "GET", api.base + f"/v1/captures/{ids['alice']}", token)
    assert status == 200 and body["agent"] == "alice"
    status, _ = await _status(api, "GET", api.base + f"/v1/captures/{ids['bob']}", token)
    assert status == 403
    status, body = await _status(api, "DELETE", api.base + f"/v1/captures/{ids['alice']}", token)
    assert (status, body["state"]) == (200, "cancelled")
    assert [r["actor"] for r in api.audit.events("capture.cancelled")] == ["supervisor:sue"]


@pytest.mark.parametrize(
    "role,amr,status",
    [
        ("admin", [], 403),
        ("admin", ["pwd"], 403),
        ("admin", ["pwd", "mfa"], 200),
        ("admin", ["otp"], 200),
        ("admin", ["hwk"], 200),
        ("ops", ["mfa"], 403),
        ("supervisor", ["mfa"], 403),
        ("agent", ["mfa"], 403),
    ],
)
async def test_admin_actions_need_admin_and_a_second_factor(
    api: Api, role: str, amr: list[str], status: int
) -> None:
    token = api.token(role, agent="alice" if role == "agent" else None, amr=amr)
    got, body = await _status(api, "POST", api.base + "/v1/admin/keys/reload", token)
    assert got == status
    if status == 403:
        assert api.audit.events("access_denied")[-1]["actor"].startswith(role)
        if role == "admin":
            assert body["reason"] == "mfa required"
    else:
        assert api.audit.events("admin_action")[-1]["outcome"] == "ok"
