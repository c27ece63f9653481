"""Driver for tests/peers/pjsua_peer.py: one PJSIP softphone per subprocess, JSON events on stdout."""

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

from tests.peers.child import stop_group
ROOT = Path(__file__).resolve().parents[2]


def require_pjsua2() -> None:
    try:
        import pjsua2  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("pjsua2-python is not installed (run .ci/install-deps)")
        pytest.skip("pjsua2-python is not installed")


class PjsuaPeer:
    """A running pjsua_peer.py; `events` collects its JSON lines; always stopped on exit."""

    def __init__(self, role: str, *, sip_port: int, rtp_port: int, **options: Any) -> None:
        require_pjsua2()
        self.args = [sys.executable, "-m", "tests.peers.pjsua_peer", role,
                     "--sip-port", str(sip_port), "--rtp-port", str(rtp_port)]
        for name, value in options.items():
            if value is None or value is False:
                continue
            self.args += [f"--{name.replace('_', '-')}", str(value)]
        self.events: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self.proc: subprocess.Popen[str] | None = None
        self.stderr = ""

    def start(self) -> PjsuaPeer:
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_event("ready", 10)
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.events.append(event)
            self._queue.put(event)

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
                raise TimeoutError(f"pjsua {name} not seen; events: {self.events[-12:]}; stderr: {self.stderr_tail()}")
            try:
                self._queue.get(timeout=min(remaining, 0.1))
            except queue.Empty:
                pass

    def of(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == name]

    def wait_exit(self, timeout_s: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            return -1

    def stderr_tail(self) -> str:
        if self.proc is None or self.proc.poll() is None or self.proc.stderr is None:
            return ""
        try:
            return self.proc.stderr.read()[-1500:]
        except ValueError:
            return ""

    def stop(self) -> None:
        stop_group(self.proc)

    def __enter__(self) -> PjsuaPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
