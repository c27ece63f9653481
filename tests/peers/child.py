"""Child processes of the real-peer harness: each in its own session, output read by a thread, the
whole process group stopped on the way out (peers such as SIPp and baresip leave no strays)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: the working directory of `python -m tests...` and `python -m gateway...` children."""


def collect_lines(proc: subprocess.Popen[str], on_line: Callable[[str], None]) -> threading.Thread:
    """Hand each stdout line of a text-mode child to `on_line`, from a daemon thread, until EOF."""

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            on_line(line)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def stop_group(proc: subprocess.Popen | None, first_signal: int = signal.SIGTERM, timeout_s: float = 3.0) -> None:
    """Send `first_signal` to the child's process group, wait, then SIGKILL the group if it is still there."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, first_signal)
        proc.wait(timeout=timeout_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
