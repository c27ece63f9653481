"""`tonewall` driven as an outside tool would: the installed script, an empty cwd, private HOME and TMPDIR."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.peers.child import collect_lines, stop_group
from tests.peers.ports import free_block, free_port

START_TIMEOUT_S = 20.0
"""Contract 2: 'logs one line when it is listening (within seconds)'."""
STOP_TIMEOUT_S = 5.0
"""Contract 2: 'stops cleanly on SIGTERM within a few seconds'."""


def tonewall_cmd() -> list[str]:
    """The installed `tonewall` script (the contract's name for it), else the module it runs."""
    script = shutil.which("tonewall")
    return [script] if script else [sys.executable, "-m", "gateway.cli"]


class Tonewall:
    """One `tonewall run` in `root/cwd`, with HOME and TMPDIR under `root` so stray writes show."""

    def __init__(self, root: Path, *, next_hop: str, data_dir: Path | None = None, rtp_ports: int = 40) -> None:
        self.root = root
        self.cwd, self.home, self.tmp = root / "cwd", root / "home", root / "tmp"
        for d in (self.cwd, self.home, self.tmp):
            d.mkdir(parents=True)
        self.sip_port, self.api_port, self.metrics_port = free_port(), free_port(), free_port()
        self.rtp_low = free_block(rtp_ports)
        self.rtp_high = self.rtp_low + rtp_ports - 1
        self.data_dir = data_dir
        self.args = ["run", "--sip-listen", f"127.0.0.1:{self.sip_port}", "--next-hop", next_hop,
                     "--api-listen", f"127.0.0.1:{self.api_port}",
                     "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
                     "--rtp-ports", f"{self.rtp_low}-{self.rtp_high}"]
        if data_dir is not None:
            self.args += ["--data-dir", str(data_dir)]
        self.env = dict(os.environ, HOME=str(self.home), TMPDIR=str(self.tmp), PYTHONUNBUFFERED="1",
                        PYTHONDONTWRITEBYTECODE="1")
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    @property
    def effective_data_dir(self) -> Path:
        return self.data_dir if self.data_dir is not None else self.cwd / "tonewall-data"

    def start(self) -> Tonewall:
        self.proc = subprocess.Popen(tonewall_cmd() + self.args, cwd=self.cwd, env=self.env, text=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        collect_lines(self.proc, lambda line: self.lines.append(line.rstrip("\n")))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.listening_lines():
                return self
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"no listening line within {START_TIMEOUT_S} s: {self.lines[-10:]}")

    def listening_lines(self) -> list[str]:
        return [line for line in self.lines if "tonewall listening" in line]

    def terminate(self) -> tuple[int | None, float]:
        """SIGTERM; the exit status and how long it took (None if it had to be killed)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            return None, time.monotonic() - t0
        return code, time.monotonic() - t0

    def kill(self) -> None:
        stop_group(self.proc, signal.SIGKILL)

    def token(self, *args: str, data_dir: bool = True) -> subprocess.CompletedProcess:
        extra = ["--data-dir", str(self.data_dir)] if data_dir and self.data_dir is not None else []
        return subprocess.run(tonewall_cmd() + ["token", "issue", *args, *extra], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=30)

    def stray_files(self) -> list[str]:
        """Anything written outside the data dir in cwd, HOME or TMPDIR."""
        found = []
        for d in (self.cwd, self.home, self.tmp):
            for p in d.rglob("*"):
                if p == self.effective_data_dir or self.effective_data_dir in p.parents:
                    continue
                found.append(str(p.relative_to(self.root)))
        return found
