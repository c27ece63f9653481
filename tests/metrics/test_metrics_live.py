"""/metrics during a live call: packets counted, a masked digit counted, histograms populated.

An in-process gateway with every extension (vault, capture, API, metrics) on ephemeral
loopback ports, the demo's caller and agent endpoints, a capture started through the
capture service, and the caller keying a card in-band.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from gateway.demo.useragent import CallEstablished
from tests.integration.inprocess import key_test_card, start_gateway

SAMPLE = re.compile(r"^(tonewall_[a-z_]+)(\{[^}]*\})? ([0-9.e+-]+|NaN|\+Inf)$", re.M)


def _samples(text: str) -> dict[str, float]:
    return {m.group(1) + (m.group(2) or ""): float(m.group(3)) for m in SAMPLE.finditer(text)}


def _total(samples: dict[str, float], name: str, **labels: str) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in samples.items()
               if (k == name or k.startswith(name + "{")) and all(w in k for w in want))


async def _scrape_text(session: aiohttp.ClientSession, port: int) -> str:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return await response.text()


async def _scrape(session: aiohttp.ClientSession, port: int) -> dict[str, float]:
    return _samples(await _scrape_text(session, port))


def _families_without_samples(text: str) -> set[str]:
    """Families declared by # TYPE that have no sample line: invisible to rate() until their first event."""
    declared = set(re.findall(r"^# TYPE (tonewall_[a-z_]+) ", text, re.M))
    sampled = {name for name in declared
               if re.search(rf"^{name}(_total|_bucket|_count|_sum)?(\{{[^}}]*\}})? ", text, re.M)}
    return declared - sampled


@pytest.mark.timeout(90)
async def test_metrics_move_during_a_live_call_with_a_capture(tmp_path):
    gateway, extensions, caller, agent = await start_gateway(tmp_path, seed=7, rtp_ports=(33000, 33099))
    capture, metrics = extensions["capture"], extensions["metrics"]
    metrics_port = metrics.runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            fresh = await _scrape_text(session, metrics_port)
        assert "tonewall_calls_total" in fresh and "tonewall_auth_failures_total" in fresh
        assert _families_without_samples(fresh) == set()  # every family has samples before its first event
        sip_port = gateway.sip.addresses["udp"][1]
        caller.call(f"sip:alice@127.0.0.1:{sip_port}", f"sip:127.0.0.1:{sip_port}")
        for endpoint in (caller, agent):
            assert isinstance(await endpoint.wait_event(10.0), CallEstablished)
        async with aiohttp.ClientSession() as session:
            before = await _scrape(session, metrics_port)
            assert _total(before, "tonewall_calls_active") == 1
            caller.voice.talk(1.0)
            while not caller.voice.idle:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.1)
            talking = await _scrape(session, metrics_port)
            relayed = _total(talking, "tonewall_packets_total", direction="caller_to_agent", outcome="relayed")
            assert relayed >= 40, relayed
            assert _total(talking, "tonewall_packets_total", direction="agent_to_caller", outcome="relayed") >= 40
            assert _total(talking, "tonewall_packet_processing_seconds_count") >= relayed
            assert _total(talking, "tonewall_sip_requests_total", direction="in", method="INVITE") == 1
            assert _total(talking, "tonewall_sip_responses_total", direction="out", status_class="2xx") >= 1
            assert _total(talking, "tonewall_event_loop_lag_seconds_count") >= 1

            call = gateway.b2bua.calls[0]
            assert await key_test_card(capture, caller, call.call_id) == "tokenized"
            after = await _scrape(session, metrics_port)
    finally:
        caller.hang_up()
        await asyncio.sleep(0.2)
        await gateway.stop()
        caller.close()
        agent.close()

    keyed = 16 + 1 + 4 + 1 + 3 + 1
    assert _total(after, "tonewall_dtmf_digits_total", method="inband") >= keyed
    assert _total(after, "tonewall_packets_masked_total") > 0
    assert _total(after, "tonewall_captures_total", outcome="tokenized") == 1
    assert _total(after, "tonewall_tokenization_seconds_count") == 1
    assert _total(after, "tonewall_dtmf_detection_latency_seconds_count") >= keyed
    # The card never shows up in the exposition.
    text = "\n".join(f"{k} {v}" for k, v in after.items())
    assert "4111111" not in text and "1111111" not in text
