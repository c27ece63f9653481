"""Security review of API auth: lifetime bound, future iat, agent-less calls and captures belong to nobody."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.api.auth import (
    MAX_TTL_S,
    AuthFailed,
    Authenticator,
    Forbidden,
    Identity,
    KeySet,
    Role,
    check_capture_access,
    check_start_capture,
    issue_token,
    may_see_call,
)

NOW = 1_800_000_000.0
KEY = ed25519.Ed25519PrivateKey.generate()


def auth() -> Authenticator:
    return Authenticator(KeySet.from_public_key(KEY), leeway_s=30)


def test_a_token_living_longer_than_the_policy_is_refused() -> None:
    token = issue_token(KEY, role="admin", subject="root", amr=["mfa"], now=NOW, ttl_s=365 * 86400)
    with pytest.raises(AuthFailed, match="^token lifetime not allowed$"):
        auth().verify(token, NOW + 10)
    ok = issue_token(KEY, role="admin", subject="root", amr=["mfa"], now=NOW, ttl_s=MAX_TTL_S)
    assert auth().verify(ok, NOW + 10).role is Role.ADMIN


def test_iat_in_the_future_is_refused_even_with_an_early_nbf() -> None:
    import jwt

    claims = {"iss": "tonewall", "aud": "tonewall-api", "sub": "o", "role": "ops",
              "iat": int(NOW + 3600), "nbf": int(NOW - 10), "exp": int(NOW + 7200)}
    token = jwt.encode(claims, KEY, algorithm="EdDSA")
    with pytest.raises(AuthFailed, match="^token lifetime not allowed$"):
        auth().verify(token, NOW)


@pytest.mark.parametrize("agent_name", ["None", ""])
def test_an_agent_named_none_or_empty_owns_no_agentless_call(agent_name: str) -> None:
    agent = Identity(subject="x", role=Role.AGENT, agent=agent_name)
    supervisor = Identity(subject="s", role=Role.SUPERVISOR, agents=frozenset({"None", ""}))
    for who in (agent, supervisor):
        assert not may_see_call(who, None)
        with pytest.raises(Forbidden):
            check_capture_access(who, None)
    with pytest.raises(Forbidden):
        check_start_capture(agent, None)
    everyone = Identity(subject="t", role=Role.SUPERVISOR, all_agents=True)
    with pytest.raises(Forbidden):
        check_capture_access(everyone, None)
    assert may_see_call(Identity(subject="o", role=Role.OPS), None)


def test_real_agents_still_match() -> None:
    alice = Identity(subject="alice", role=Role.AGENT, agent="alice")
    assert may_see_call(alice, "alice") and not may_see_call(alice, "bob")
    check_start_capture(alice, "alice")
    check_capture_access(alice, "alice")


async def test_over_https_an_agent_named_none_gets_nothing_of_an_agentless_call(api) -> None:
    from tests.api.fakes import FakeCall

    api.calls.calls["call-x"] = FakeCall("call-x", agent=None, caller="sip:+15550009@example.net")  # type: ignore[arg-type]
    token = api.token("agent", agent="None")
    async with api.session.get(api.base + "/v1/calls", headers=api.auth(token)) as response:
        assert response.status == 200
        assert (await response.json())["calls"] == []
    async with api.session.post(api.base + "/v1/calls/call-x/captures", headers=api.auth(token)) as response:
        assert response.status == 403
    assert not any(call_id == "call-x" for call_id, _ in api.masking.switched)
