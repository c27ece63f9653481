"""`tonewall run` as a child process for the demo: loopback only, free ports, a throwaway data dir.

The demo drives the real product path (the same command an operator runs), so
what it shows is what ships. Ports are picked free on 127.0.0.1; the RTP range
sits below the kernel's ephemeral range so the endpoints' own sockets never
collide with it. The child's log goes to a file under the temp dir.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
RTP_RANGE_FLOOR = 20000
RTP_RANGE_CEILING = 32000
"""Below Linux's default ephemeral range (32768-60999)."""
RTP_PORTS = 40
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 6.0


class GatewayStartError(RuntimeError):
    """`tonewall run` exited or stayed silent instead of logging its listening line."""


def _bindable(port: int, kinds: tuple[int, ...]) -> bool:
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A port the kernel says is free on 127.0.0.1 for TCP and UDP (the usual race applies)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if _bindable(port, (socket.SOCK_DGRAM,)):
            return port
    raise GatewayStartError("no free port on 127.0.0.1")


def free_rtp_block(count: int = RTP_PORTS) -> int:
    """First of `count` consecutive UDP ports free on 127.0.0.1, even, below the ephemeral range."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(RTP_RANGE_FLOOR, RTP_RANGE_CEILING - count) & ~1
        if all(_bindable(p, (socket.SOCK_DGRAM,)) for p in range(base, base + count)):
            return base
    raise GatewayStartError("no free RTP port block on 127.0.0.1")


@dataclass(frozen=True)
class GatewayPorts:
    sip: int
    api: int
    metrics: int
    vault: int
    rtp_low: int
    rtp_high: int

    @classmethod
    def pick(cls) -> GatewayPorts:
        low = free_rtp_block()
        return cls(free_port(), free_port(), free_port(), free_port(), low, low + RTP_PORTS - 1)


class GatewayProcess:
    """Start `tonewall run`, wait for its listening line, stop it with SIGTERM (kill only as a last resort)."""

    def __init__(self, work_dir: Path, next_hop: str, ports: GatewayPorts) -> None:
        self.work_dir = work_dir
        self.data_dir = work_dir / "data"
        self.log_path = work_dir / "gateway.log"
        self.ports = ports
        config = work_dir / "tonewall.toml"
        # The vault's port has no flag (DESIGN.md contract 2), so it goes in a config file.
        config.write_text(f'[vault]\nlisten = "{HOST}:{ports.vault}"\n')
        self.args = [sys.executable, "-m", "gateway.cli", "run", "--config", str(config),
                     "--data-dir", str(self.data_dir),
                     "--sip-listen", f"{HOST}:{ports.sip}", "--next-hop", next_hop,
                     "--api-listen", f"{HOST}:{ports.api}", "--metrics-listen", f"{HOST}:{ports.metrics}",
                     "--rtp-ports", f"{ports.rtp_low}-{ports.rtp_high}"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.listen_line = ""
        self.returncode: int | None = None

    @property
    def sip_uri(self) -> str:
        return f"sip:{HOST}:{self.ports.sip}"

    @property
    def ca_path(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    @property
    def api_url(self) -> str:
        return f"https://{HOST}:{self.ports.api}"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.ports.metrics}/metrics"

    def has(self, part: str) -> bool:
        """Whether the listening line names an add-on ("api", "metrics", "vault", ...)."""
        return re.search(rf"(^|\s){re.escape(part)}[=:]", self.listen_line.split("listening", 1)[-1]) is not None

    async def start(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Spawn and wait for "tonewall listening"; return that line."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("TONEWALL_LOG_LEVEL", "INFO")
        log = self.log_path.open("wb")
        try:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)
        finally:
            log.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            for line in self.log_lines():
                if "tonewall listening" in line:
                    self.listen_line = line
                    return line
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        await self.stop()
        tail = [line for line in self.log_lines() if line.strip()][-1:]
        raise GatewayStartError(f"tonewall run did not start (exit {self.returncode}): {' '.join(tail)[-300:]}")

    def log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait; SIGKILL the child's process group only if it does not stop in time."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while proc.poll() is None and loop.time() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.returncode = proc.returncode
        return proc.returncode
