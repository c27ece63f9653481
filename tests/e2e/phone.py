"""Driver for tests/e2e/softphone.py: a PJSIP softphone subprocess the test commands over stdin."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

from tests.peers.pjsua import ROOT, PjsuaPeer


class Softphone(PjsuaPeer):
    """A running softphone; `events` collects its JSON lines, `send` gives it a command."""

    def __init__(self, role: str, *, sip_port: int, rtp_port: int, log_dir: Path, **options: Any) -> None:
        super().__init__(role, sip_port=sip_port, rtp_port=rtp_port, **options)
        self.args[2] = "tests.e2e.softphone"
        self.role = role
        self.log_path = log_dir / f"{role}-{sip_port}.log"
        self.raw_lines: list[str] = []

    def start(self) -> Softphone:
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_event("ready", 10)
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw_lines.append(line)
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.events.append(event)
            self._queue.put(event)

    def send(self, cmd: str, **fields: Any) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        super().stop()
        # Everything the peer printed is kept: the card-data search reads it afterwards.
        self.log_path.write_text("".join(self.raw_lines))

    def stderr_tail(self) -> str:
        return "".join(self.raw_lines[-15:])

    def digits(self, *, since: float = 0.0, until: float = float("inf"), ends_only: bool = True) -> str:
        """Digits this phone received (onDtmfEvent) between two monotonic times."""
        return "".join(e["digit"] for e in self.of("dtmf")
                       if since <= e["t"] <= until and (e["end"] or not ends_only))

