"""A gateway with every extension in this process, between the demo's caller and agent endpoints."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path
from typing import Any

import numpy as np

from gateway.app import Gateway
from gateway.config import (
    ApiConfig, Config, HostPort, MediaConfig, MetricsConfig, SipConfig, VaultConfig, parse_next_hop,
)
from gateway.demo.endpoint import Endpoint
from gateway.demo.voice import CallerVoice, KeyingTiming, SensitiveKeys
from gateway.extensions import default_extensions

LOOPBACK0 = HostPort("127.0.0.1", 0)


async def start_gateway(tmp_path: Path, seed: int, rtp_ports: tuple[int, int]
                        ) -> tuple[Gateway, dict[str, Any], Endpoint, Endpoint]:
    """Agent "alice" is the next hop, caller "bob" dials in; (gateway started, extensions by name, caller, agent).
    Every service listens on an ephemeral loopback port."""
    rng = np.random.default_rng(seed)
    agent = await Endpoint.open("alice", CallerVoice(rng, noise_dbm0=-50.0))
    caller = await Endpoint.open("bob", CallerVoice(rng, noise_dbm0=-50.0))
    config = Config(
        data_dir=str(tmp_path / "data"),
        sip=SipConfig(listen=LOOPBACK0, next_hop=parse_next_hop(f"sip:alice@127.0.0.1:{agent.sip_port}")),
        media=MediaConfig(rtp_ports=rtp_ports),
        api=ApiConfig(listen=LOOPBACK0), metrics=MetricsConfig(listen=LOOPBACK0),
        vault=VaultConfig(listen=LOOPBACK0),
    )
    extensions = default_extensions(config)
    gateway = Gateway(config, extensions)
    await gateway.start()
    return gateway, {x.name: x for x in extensions}, caller, agent


async def key_test_card(capture: Any, caller: Endpoint, call_id: str) -> str:
    """Start a capture on the call, key a valid test Visa in-band from the caller, and return the
    capture's state once it ends (or after 5 s)."""
    view = await capture.service.start(call_id, [], actor="alice")
    expiry = (datetime.date.today() + datetime.timedelta(days=730)).strftime("%m%y")
    keys = SensitiveKeys("4" + "1" * 15 + "#" + expiry + "#123#")
    caller.voice.key(keys, KeyingTiming())
    keys.wipe()
    while not caller.voice.idle:
        await asyncio.sleep(0.05)
    for _ in range(100):
        if capture.service.get(view.capture_id).state in ("tokenized", "failed"):
            break
        await asyncio.sleep(0.05)
    return capture.service.get(view.capture_id).state
