"""Security review of API auth: agent-less calls and captures belong to nobody."""

from __future__ import annotations

import pytest

from gateway.api.auth import (
    Forbidden,
    Identity,
    Role,
    check_capture_access,
    check_start_capture,
    may_see_call,
)

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
