"""baresip 1.0.0 as a real, independent SIP peer: config dir in tmp, minimal modules, bounded life.

PEERS.md traps handled here: `sip_listen HOST:X` also binds TCP X and TLS X+1 (pick X
with X+1 free); `net_interface 127.0.0.1` (not `lo`) keeps the SDP on loopback; the
`aufile` microphone hangs up at the end of its WAV (that is how a call is ended here);
`sndfile` records what is received (decoded) into `sndfile_path`; RFC 4733 digits are
sent with the `sndcode` command over `ctrl_tcp` (netstring-framed JSON) and last at
least about 180 ms each. baresip always runs with `-t SECONDS` and is killed on exit.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from tests.conftest import require_binary
from tests.peers.child import stop_group
from tests.peers.ports import free_port

MODULE_DIRS = (Path("/usr/lib/baresip/modules"), Path("/usr/lib/x86_64-linux-gnu/baresip/modules"),
               Path("/usr/local/lib/baresip/modules"))


def module_dir() -> Path:
    for folder in MODULE_DIRS:
        if (folder / "g711.so").exists():
            return folder
    raise FileNotFoundError("baresip modules (g711.so) not found")


def sip_port_pair() -> int:
    """A port X with X (UDP+TCP) and X+1 (TCP, baresip's TLS) free."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free SIP port pair")


class Baresip:
    """One baresip process with its own config dir; a context manager, always stopped."""

    def __init__(self, workdir: Path, *, user: str, rtp_ports: tuple[int, int], source_wav: Path | None = None,
                 answer: bool = False, lifetime_s: int = 30, name: str | None = None) -> None:
        self.binary = require_binary("baresip")
        self.name = name or user
        self.confdir = workdir / f"baresip-{self.name}"
        self.confdir.mkdir(parents=True, exist_ok=True)
        self.record_dir = self.confdir / "recordings"
        self.record_dir.mkdir(exist_ok=True)
        self.sip_port = sip_port_pair()
        self.ctrl_port = free_port()
        self.lifetime_s = lifetime_s
        modules = ["g711.so", "ctrl_tcp.so", "sndfile.so"] + (["aufile.so"] if source_wav else [])
        config = [
            "poll_method epoll",
            f"sip_listen 127.0.0.1:{self.sip_port}",
            "net_interface 127.0.0.1",
            f"rtp_ports {rtp_ports[0]}-{rtp_ports[1]}",
            "rtp_timeout 0",
            f"module_path {module_dir()}",
            *[f"module {m}" for m in modules],
            "module_app account.so",
            "module_app menu.so",
            f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
            f"snd_path {self.record_dir}",
            "audio_player aufile,/dev/null" if source_wav else "",
            f"audio_source aufile,{source_wav}" if source_wav else "",
            "audio_alert aufile,/dev/null" if source_wav else "",
            "ausrc_srate 8000",
            "auplay_srate 8000",
            "ausrc_channels 1",
            "auplay_channels 1",
        ]
        (self.confdir / "config").write_text("\n".join(line for line in config if line) + "\n")
        params = ";regint=0;audio_codecs=PCMU,PCMA" + (";answermode=auto" if answer else "")
        (self.confdir / "accounts").write_text(f"<sip:{user}@127.0.0.1:{self.sip_port}>{params}\n")
        (self.confdir / "contacts").write_text("")
        self.log_path = self.confdir / "baresip.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._ctrl: socket.socket | None = None
        self._token = 0

    def start(self, timeout_s: float = 8.0) -> Baresip:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([self.binary, "-f", str(self.confdir), "-t", str(self.lifetime_s)],
                                     cwd=self.confdir, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                self._ctrl = socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=2)
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"baresip did not start: {self.log()[-800:]}")

    def command(self, command: str, params: str = "") -> dict:
        """Send one ctrl_tcp command (netstring JSON) and return its response object."""
        if self._ctrl is None:
            raise RuntimeError("baresip is not running")
        self._token += 1
        body = json.dumps({"command": command, "params": params, "token": str(self._token)}).encode()
        self._ctrl.sendall(b"%d:%s," % (len(body), body))
        deadline = time.monotonic() + 5
        buffer = b""
        while time.monotonic() < deadline:
            # Events and responses arrive as netstrings; return the response to this token.
            while b":" in buffer:
                length, _, rest = buffer.partition(b":")
                if len(rest) < int(length) + 1:
                    break
                message, buffer = json.loads(rest[: int(length)]), rest[int(length) + 1:]
                if message.get("response") and message.get("token") == str(self._token):
                    return message
            chunk = self._ctrl.recv(65536)
            if not chunk:
                break
            buffer += chunk
        raise TimeoutError(f"baresip gave no response to {command}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def recordings(self) -> list[Path]:
        """WAVs written by `sndfile` (decoded received audio is the `-dec.wav` one)."""
        return sorted(self.record_dir.glob("*.wav"))

    def wait(self, timeout_s: float) -> int | None:
        """Wait for baresip to exit by itself (its -t lifetime); None if it is still running."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self._ctrl is not None:
            self._ctrl.close()
            self._ctrl = None
        stop_group(self.proc)
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def __enter__(self) -> Baresip:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
