"""A running `tonewall run` with real PJSIP peers, shared by the secure-capture proofs.

Everything the proofs produce (the gateway's output, its data dir, API answers, SSE
streams, metric scrapes, the peers' logs) lands under one artifact folder for the
session; tests/e2e/test_z_card_data_nowhere.py searches all of it at the end.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_binary
from tests.e2e.agentapi import AgentApi, mint_token
from tests.integration.gateway_proc import GatewayProcess
from tests.peers.pjsua import PjsuaPeer, require_pjsua2
from tests.peers.ports import free_block, free_port

AGENT_USER = "alice"
ALWAYS_MASKED_USER = "secure-desk"
SESSION_CONFIG = f"""
[[routes]]
match_user_prefix = "{ALWAYS_MASKED_USER[:6]}"
mask = "always"
"""
PHONE = {"codecs": "PCMU", "dtmf_report": "all"}
"""The proofs' softphones offer PCMU only and report every DTMF callback (a digit's start is what leaks first)."""


class E2eGateway:
    """`tonewall run` in a subprocess, with its agent's SIP port, its API and its vault URL."""

    def __init__(self, folder: Path, config: str | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.config = config
        self.agent_port = free_port()
        self.proc = GatewayProcess(folder, next_hop_port=self.agent_port, config=config)
        self.data_dir = self.proc.data_dir
        self.stopped = False

    def start(self, attempts: int = 3) -> E2eGateway:
        for attempt in range(attempts):
            try:
                self.proc.start()
                break
            except RuntimeError:
                # Free ports are picked, then bound by the child: other work on the machine can win the race.
                if attempt == attempts - 1 or "could not bind" not in " ".join(self.proc.lines):
                    raise
                self.proc = GatewayProcess(self.folder, next_hop_port=self.agent_port, config=self.config)
        line = next(x for x in self.proc.lines if "tonewall listening" in x)
        found = re.search(r"vault=(https://\S+)", line)
        self.vault_url = found.group(1) if found else None
        self.api_url = f"https://127.0.0.1:{self.proc.api_port}"
        self.metrics_url = f"http://127.0.0.1:{self.proc.metrics_port}/metrics"
        return self

    @property
    def sip_port(self) -> int:
        return self.proc.sip_port

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    def agent_api(self, log_dir: Path, agent: str = AGENT_USER) -> AgentApi:
        return AgentApi(self.api_url, self.ca_file, mint_token(self.data_dir, "agent", agent), log_dir)

    def stop(self) -> int:
        """SIGTERM; keeps the whole output for the card-data search (idempotent)."""
        if not self.stopped:
            self.stopped = True
            self.proc.stop()
            (self.folder / "gateway.log").write_text("\n".join(self.proc.lines) + "\n")
        return self.proc.returncode or 0


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def gateway(artifacts: Path) -> Iterator[E2eGateway]:
    """One gateway on embedded defaults (vault processor) for the whole session."""
    require_pjsua2()
    require_binary("multimon-ng")
    gw = E2eGateway(artifacts / "gateway", config=SESSION_CONFIG).start()
    try:
        yield gw
    finally:
        gw.stop()


@dataclass
class Call:
    caller: PjsuaPeer
    agent: PjsuaPeer
    recording: Path
    log_dir: Path


@contextmanager
def call_through(gw: E2eGateway, log_dir: Path, caller_user: str, timeout_s: float = 45.0,
                 agent_user: str = AGENT_USER, caller_record: Path | None = None,
                 agent_options: dict | None = None) -> Iterator[Call]:
    """A PJSIP caller -> gateway -> PJSIP agent call with media up on both sides; hung up on exit."""
    log_dir.mkdir(parents=True, exist_ok=True)
    recording = log_dir / f"agent-{caller_user}.wav"
    agent = PjsuaPeer("agent", sip_port=gw.agent_port, rtp_port=free_block(20), log_dir=log_dir,
                      record=recording, timeout_s=timeout_s, **{**PHONE, **(agent_options or {})})
    caller = PjsuaPeer("caller", sip_port=free_port(), rtp_port=free_block(20), log_dir=log_dir,
                       user=caller_user, record=caller_record, target=f"sip:{agent_user}@127.0.0.1:{gw.sip_port}",
                       timeout_s=timeout_s, **PHONE)
    with agent:
        with caller:
            caller.wait_event("media", 10)
            agent.wait_event("recording", 10)
            try:
                yield Call(caller, agent, recording, log_dir)
            finally:
                if caller.proc is not None and caller.proc.poll() is None and not caller.of("disconnected"):
                    caller.send("hangup")
                    try:
                        caller.wait_event("disconnected", 5)
                    except TimeoutError:
                        pass
                agent.wait_exit(5)
                caller.wait_exit(5)


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
