"""Ended calls and captures are freed by reference counting, not left for the cyclic collector.

A pass of Python's cyclic collector stops the event loop, audio included, and walks everything
waiting for it; a gateway whose ended calls wait there grows until a pass of tens of
milliseconds (loadtests/churn_soak.py measured 50-60 ms). An in-process gateway with every
extension, the demo's endpoints, one call whose caller keys a card to a token and one whose
capture an agent starts, follows (server-sent events) and cancels through the HTTPS API: with
the collector off, nothing of the gateway's is found unreachable.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import ssl
import time
import types

import aiohttp
import pytest

from gateway.api.auth import issue_token, load_or_create_dev_key

from gateway.demo.useragent import CallEnded, CallEstablished, UserAgent
from tests.integration.inprocess import key_test_card, start_gateway

OURS = ("gateway.", "dtmf.")


def _ours(obj: object) -> str | None:
    """The project's own type name of an unreachable object (a bound method counts for its owner)."""
    owner = obj.__self__ if isinstance(obj, types.MethodType) else obj
    module = getattr(type(owner), "__module__", "") or ""
    return f"{module}.{type(owner).__qualname__}" if module.startswith(OURS) else None


@pytest.mark.timeout(120)
async def test_ended_calls_and_captures_leave_no_cyclic_garbage(tmp_path):
    gateway, extensions, caller, agent = await start_gateway(tmp_path, seed=11, rtp_ports=(33400, 33499))
    capture, api = extensions["capture"], extensions["api"]
    sip_port = gateway.sip.addresses["udp"][1]
    token = issue_token(load_or_create_dev_key(gateway.config.data_dir), role="agent", subject="alice", agent="alice",
                        now=time.time(), ttl_s=600)
    tls = ssl.create_default_context(cafile=str(tmp_path / "data" / "tls" / "ca.pem"))
    base = f"https://127.0.0.1:{api.port}"
    session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"})
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        states = []
        for keyed in (True, False):
            caller.call(f"sip:alice@127.0.0.1:{sip_port}", f"sip:127.0.0.1:{sip_port}")
            for endpoint in (caller, agent):
                assert isinstance(await endpoint.wait_event(10.0), CallEstablished)
            call_id = gateway.b2bua.calls[0].call_id
            if keyed:
                states.append(await key_test_card(capture, caller, call_id))
            else:
                async with session.post(f"{base}/v1/calls/{call_id}/captures", json={}, ssl=tls) as response:
                    assert response.status == 201
                    capture_id = (await response.json())["capture_id"]

                async def follow() -> int:
                    async with session.get(f"{base}/v1/captures/{capture_id}/events", ssl=tls) as stream:
                        return sum([1 async for _ in stream.content])

                events = asyncio.ensure_future(follow())
                await asyncio.sleep(0.3)
                async with session.delete(f"{base}/v1/captures/{capture_id}", ssl=tls) as response:
                    assert response.status == 200
                assert await asyncio.wait_for(events, 5.0) > 0  # the stream ended with the capture
                states.append(capture.service.get(capture_id).state)
            caller.hang_up()
            for endpoint in (caller, agent):
                assert isinstance(await endpoint.wait_event(5.0), CallEnded)
            for endpoint, user in ((caller, "bob"), (agent, "alice")):  # the demo's agent takes one call
                endpoint.ua = UserAgent(user=user, host="127.0.0.1", sip_port=endpoint.sip_port,
                                        rtp_port=endpoint.rtp_port)
        await asyncio.sleep(1.0)
        assert states == ["tokenized", "cancelled"]
        assert not gateway.b2bua.calls
        gc.collect()
        found = collections.Counter(name for name in map(_ours, gc.garbage) if name is not None)
        assert found == collections.Counter(), found
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        await session.close()
        await gateway.stop()
        caller.close()
        agent.close()
