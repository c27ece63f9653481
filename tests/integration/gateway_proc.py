"""`tonewall run` as a subprocess with its own data dir and free ports, for integration tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tests.peers.child import ROOT, collect_lines, stop_group
from tests.peers.ports import free_block, free_port


class GatewayProcess:
    """Starts the gateway, waits for its listening line, stops it with SIGTERM (checked)."""

    def __init__(self, tmp_path: Path, *, next_hop_port: int, next_hop_transport: str = "udp",
                 rtp_ports: int = 200, extra: list[str] | None = None, config: str | None = None) -> None:
        self.sip_port = free_port()
        self.api_port = free_port()
        self.metrics_port = free_port()
        self.rtp_low = free_block(rtp_ports)
        self.rtp_high = self.rtp_low + rtp_ports - 1
        self.data_dir = tmp_path / "data"
        hop = f"sip:127.0.0.1:{next_hop_port}" + (f";transport={next_hop_transport}"
                                                   if next_hop_transport != "udp" else "")
        self.args = [sys.executable, "-m", "gateway.cli", "run", "--data-dir", str(self.data_dir),
                     "--sip-listen", f"127.0.0.1:{self.sip_port}", "--rtp-ports", f"{self.rtp_low}-{self.rtp_high}",
                     "--next-hop", hop, "--api-listen", f"127.0.0.1:{self.api_port}",
                     "--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
        if config is not None:
            path = tmp_path / "tonewall.toml"
            path.write_text(config)
            self.args += ["--config", str(path)]
        self.args += extra or []
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self.returncode: int | None = None

    def start(self, timeout_s: float = 15.0) -> GatewayProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        collect_lines(self.proc, lambda line: self.lines.append(line.rstrip("\n")))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any("tonewall listening" in line for line in self.lines):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gateway did not start: {self.lines[-10:]}")

    def stop(self, timeout_s: float = 8.0) -> int:
        """SIGTERM and wait; kills (and reports -9) only if it does not stop in time."""
        if self.proc is None:
            return 0
        stop_group(self.proc, timeout_s=timeout_s)
        time.sleep(0.05)
        self.returncode = self.proc.returncode
        return self.returncode

    def final_counters(self) -> dict[str, Any]:
        """The counters the gateway logs when it stops."""
        for line in reversed(self.lines):
            if "tonewall stopped" in line:
                return json.loads(line.split("tonewall stopped", 1)[1])
        raise AssertionError(f"no stop line in {self.lines[-10:]}")

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def options(port: int, transport: str = "udp", timeout_s: float = 3.0) -> str:
    """Send OPTIONS to the gateway; return its status line."""
    branch = "z9hG4bK" + uuid.uuid4().hex[:12]
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.settimeout(timeout_s)
        sock.bind(("127.0.0.1", 0))
        local = sock.getsockname()[1]
        message = (f"OPTIONS sip:gw@127.0.0.1:{port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/{transport.upper()} 127.0.0.1:{local};branch={branch};rport\r\n"
                   f"From: <sip:probe@127.0.0.1>;tag={branch[-6:]}\r\nTo: <sip:gw@127.0.0.1>\r\n"
                   f"Call-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
        if transport == "udp":
            sock.sendto(message, ("127.0.0.1", port))
            data = sock.recv(65535)
        else:
            sock.connect(("127.0.0.1", port))
            sock.sendall(message)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65535)
                if not chunk:
                    break
                data += chunk
    return data.split(b"\r\n", 1)[0].decode()
