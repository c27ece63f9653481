"""multimon-ng as an independent DTMF decoder (PEERS.md: sox to raw 16-bit mono 22050 Hz first)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import require_binary


def decode_dtmf(wav: Path, timeout_s: float = 20.0) -> str:
    """Digits multimon-ng hears in a WAV file, in order."""
    sox = require_binary("sox")
    multimon = require_binary("multimon-ng")
    raw = subprocess.run([sox, "-D", str(wav), "-t", "raw", "-r", "22050", "-e", "signed-integer",
                          "-b", "16", "-c", "1", "-"], capture_output=True, check=True, timeout=timeout_s).stdout
    out = subprocess.run([multimon, "-q", "-c", "-a", "DTMF", "-t", "raw", "-"], input=raw,
                         capture_output=True, check=True, timeout=timeout_s).stdout.decode()
    return "".join(line.split("DTMF:", 1)[1].strip() for line in out.splitlines() if "DTMF:" in line)
