"""Driver for tests/peers/pjsua_peer.py: one PJSIP softphone per subprocess, JSON events on stdout,
JSON commands on stdin."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.peers.child import ROOT, collect_lines, stop_group


def require_pjsua2() -> None:
    try:
        import pjsua2  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("pjsua2-python is not installed (run .ci/install-deps)")
        pytest.skip("pjsua2-python is not installed")


class PjsuaPeer:
    """A running pjsua_peer.py; `events` collects its JSON lines, `send` gives it a command; always stopped on exit.

    Options become the script's flags (`hold_at_s=1.0` -> `--hold-at-s 1.0`; None and False are left out).
    With `log_dir`, everything the peer printed is written to `log_dir/ROLE-SIPPORT.log` when it stops.
    """

    def __init__(self, role: str, *, sip_port: int, rtp_port: int, log_dir: Path | None = None,
                 **options: Any) -> None:
        require_pjsua2()
        self.role = role
        self.args = [sys.executable, "-m", "tests.peers.pjsua_peer", role,
                     "--sip-port", str(sip_port), "--rtp-port", str(rtp_port)]
        for name, value in options.items():
            if value is None or value is False:
                continue
            self.args += [f"--{name.replace('_', '-')}", str(value)]
        self.log_path = log_dir / f"{role}-{sip_port}.log" if log_dir is not None else None
        self.events: list[dict[str, Any]] = []
        self.raw_lines: list[str] = []
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader: threading.Thread | None = None
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> PjsuaPeer:
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self._reader = collect_lines(self.proc, self._line)
        try:
            self.wait_event("ready", 10)
        except BaseException:
            self.stop()
            raise
        return self

    def _line(self, line: str) -> None:
        self.raw_lines.append(line)
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            return
        self.events.append(event)
        self._queue.put(event)

    def send(self, cmd: str, **fields: Any) -> None:
        """One command to the running peer (see pjsua_peer.py: play, dtmf, hangup)."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        self.proc.stdin.flush()

    def wait_event(self, name: str, timeout_s: float, **match: Any) -> dict[str, Any]:
        """The first event `name` (with matching fields) seen so far or arriving within the timeout."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            for event in self.events[seen:]:
                seen += 1
                if event["event"] == name and all(event.get(k) == v for k, v in match.items()):
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"pjsua {name} not seen; events: {self.events[-12:]}; "
                                   f"output: {self.output_tail()}")
            try:
                self._queue.get(timeout=min(remaining, 0.1))
            except queue.Empty:
                pass

    def of(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == name]

    def digits(self, *, since: float = 0.0, until: float = float("inf"), ends_only: bool = True) -> str:
        """Digits this phone received (onDtmfEvent) between two monotonic times."""
        return "".join(e["digit"] for e in self.of("dtmf")
                       if since <= e["t"] <= until and (e["end"] or not ends_only))

    def wait_exit(self, timeout_s: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            return -1

    def output_tail(self) -> str:
        return "".join(self.raw_lines[-15:])

    def stop(self) -> None:
        stop_group(self.proc)
        if self._reader is not None:
            self._reader.join(timeout=2)
        if self.proc is not None and self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        if self.log_path is not None:
            # Everything the peer printed is kept: the card-data search reads it afterwards.
            self.log_path.write_text("".join(self.raw_lines))

    def __enter__(self) -> PjsuaPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
