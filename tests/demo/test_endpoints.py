"""The demo's endpoints on loopback: back to back, then a plain call through `tonewall run`."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.demo.endpoint import Endpoint
from gateway.demo.process import GatewayPorts, GatewayProcess
from gateway.demo.useragent import CallEnded, CallEstablished
from gateway.demo.voice import CallerVoice

pytestmark = pytest.mark.timeout(60)


async def endpoints() -> tuple[Endpoint, Endpoint]:
    agent = await Endpoint.open("alice", CallerVoice(np.random.default_rng(1), noise_dbm0=-50.0))
    caller = await Endpoint.open("bob", CallerVoice(np.random.default_rng(2)))
    return caller, agent


def payloads_of(sent: Endpoint) -> list[bytes]:
    """What the caller put on the wire, frame by frame, as PCMU."""
    return list(sent.sent.payloads)


async def talk_and_hang_up(caller: Endpoint, agent: Endpoint, talk_s: float) -> None:
    caller.voice.talk(talk_s, level_dbm0=-20.0)
    while not caller.voice.idle:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    caller.hang_up()
    assert await caller.wait_event(5) == CallEnded(by_peer=False)
    assert await agent.wait_event(5) == CallEnded(by_peer=True)


async def test_back_to_back_call_carries_audio_both_ways():
    caller, agent = await endpoints()
    try:
        caller.call(f"sip:alice@127.0.0.1:{agent.sip_port}", agent.uri)
        assert isinstance(await caller.wait_event(5), CallEstablished)
        assert isinstance(await agent.wait_event(5), CallEstablished)
        await talk_and_hang_up(caller, agent, 0.6)
    finally:
        caller.close()
        agent.close()
    assert agent.received.payloads == payloads_of(caller)[: len(agent.received)]
    assert len(agent.received) >= len(caller.sent) - 2
    assert len(caller.received) >= 30
    assert agent.received.telephone_events == 0


@pytest.mark.integration
async def test_plain_call_through_the_gateway(tmp_path):
    caller, agent = await endpoints()
    gateway = GatewayProcess(tmp_path, f"sip:127.0.0.1:{agent.sip_port}", GatewayPorts.pick())
    await gateway.start()
    try:
        caller.call(f"sip:alice@127.0.0.1:{gateway.ports.sip}", gateway.sip_uri)
        up_caller = await caller.wait_event(5)
        up_agent = await agent.wait_event(5)
        assert isinstance(up_caller, CallEstablished) and isinstance(up_agent, CallEstablished)
        # Media is anchored on the gateway: both legs point into its RTP range, on different ports.
        low, high = gateway.ports.rtp_low, gateway.ports.rtp_high
        assert low <= up_caller.media.remote_rtp[1] <= high and low <= up_agent.media.remote_rtp[1] <= high
        assert up_caller.media.remote_rtp != up_agent.media.remote_rtp
        await talk_and_hang_up(caller, agent, 1.0)
    finally:
        caller.close()
        agent.close()
        assert await gateway.stop() == 0
    sent = payloads_of(caller)
    got = agent.received.payloads
    assert len(got) >= len(sent) - 3
    # DESIGN.md contract 2: outside a capture the caller's audio reaches the agent unchanged.
    first = sent.index(got[0])
    assert got == sent[first:first + len(got)]
    assert agent.received.level_dbm0() > -30.0
    assert agent.received.telephone_events == 0
    assert len(caller.received) >= 40
