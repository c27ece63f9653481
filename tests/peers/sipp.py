"""SIPp as a real, independent SIP peer: render a scenario, run it on loopback, read its verdict.

PEERS.md traps handled here: `rtp_stream` wants headerless G.711 (we write raw
mu-law); SIPp needs `-nostdin` without a terminal; statistics come from `-trace_stat`.
"""

from __future__ import annotations

import csv
import re
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dtmf.g711 import ulaw_encode
from tests.conftest import require_binary
from tests.peers.child import stop_group

SCENARIOS = Path(__file__).with_name("scenarios")


def sdp(port: str = "[media_port]", direction: str = "sendrecv", codecs: str = "0 8 101") -> str:
    """An SDP body for SIPp templates; [media_ip] and [len] are filled in by SIPp."""
    lines = ["v=0", "o=sipp 53655765 2353687637 IN IP[local_ip_type] [media_ip]", "s=-",
             "c=IN IP[media_ip_type] [media_ip]", "t=0 0", f"m=audio {port} RTP/AVP {codecs}"]
    names = {"0": "PCMU/8000", "8": "PCMA/8000", "101": "telephone-event/8000"}
    for pt in codecs.split():
        lines.append(f"a=rtpmap:{pt} {names[pt]}")
    if "101" in codecs.split():
        lines.append("a=fmtp:101 0-15")
    lines += ["a=ptime:20", f"a={direction}"]
    return "\n".join(lines)


def rtp_stream(path: Path | str, pause_ms: int | None = None) -> str:
    """Scenario lines playing headerless G.711 `path` once as PCMU; a pause after it keeps the call up."""
    # SIPp rtp_stream: file,loops,payload type.
    line = f'  <nop><action><exec rtp_stream="{path},1,0"/></action></nop>'
    return line if pause_ms is None else f'{line}\n  <pause milliseconds="{pause_ms}"/>'


def scenario(name: str, **values: object) -> str:
    """scenarios/NAME.xml with every @@KEY@@ marker filled (SDP defaults to PCMU/PCMA/events, RTP to none)."""
    text = (SCENARIOS / f"{name}.xml").read_text()
    values.setdefault("SDP", sdp())
    values.setdefault("RTP", "")
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", str(value))
    left = re.findall(r"@@[A-Z_]+@@", text)
    if left:
        raise KeyError(f"{name}.xml: unfilled markers {left}")
    return text


def render(name: str, *, user: str = "agent", sdp_port: str = "[media_port]", rtp_file: str | None = None,
           rtp_ms: int = 0, hold_ms: int = 500) -> str:
    """One of the plain call scenarios (uac_*, uas*) with its user, SDP, RTP and hold time filled."""
    return scenario(name, USER=user, SDP_HOLD=sdp(sdp_port, "sendonly"),
                    SDP_RECVONLY=sdp(sdp_port, "recvonly", "0 101"), SDP=sdp(sdp_port),
                    RTP="" if rtp_file is None else rtp_stream(rtp_file, rtp_ms), HOLD_MS=hold_ms)


def write_ulaw(path: Path, samples: np.ndarray) -> bytes:
    """Headerless mu-law for `rtp_stream` (PEERS.md: a WAV header would be sent as audio)."""
    data = ulaw_encode(samples.astype(np.int16)).astype(np.uint8).tobytes()
    path.write_bytes(data)
    return data


def noise_ulaw(path: Path, seconds: float, *, seed: int, rms: float = 2500.0) -> bytes:
    """Gaussian noise as headerless mu-law: every 20 ms payload is unique, so its place in the stream is known."""
    samples = np.random.default_rng(seed).standard_normal(int(8000 * seconds)) * rms
    return write_ulaw(path, samples.astype(np.int16))


@dataclass
class SippResult:
    returncode: int
    successful: int
    failed: int
    stderr: str
    errors: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.failed == 0 and self.successful > 0


class Sipp:
    """One SIPp process; use as a context manager so it is always stopped."""

    def __init__(self, scenario_xml: str, *, local_port: int, remote: str | None = None,
                 transport: str = "u1", media_port: int | None = None, calls: int = 1,
                 rate: float | None = None, limit: int | None = None, timeout_s: float = 30.0,
                 workdir: Path | None = None, extra: list[str] | None = None) -> None:
        self.binary = require_binary("sipp")
        self.remote, self.transport, self.local_port = remote, transport, local_port
        self._tmp = tempfile.TemporaryDirectory(prefix="tw-sipp-") if workdir is None else None
        self.workdir = Path(self._tmp.name) if self._tmp else workdir
        self.scenario = self.workdir / f"scenario-{local_port}.xml"
        self.scenario.write_text(scenario_xml)
        self.stat_file = self.workdir / f"stat-{local_port}.csv"
        self.error_file = self.workdir / f"errors-{local_port}.log"
        self.timeout_s = timeout_s
        args = [self.binary, "-sf", str(self.scenario), "-i", "127.0.0.1", "-p", str(local_port),
                "-t", transport, "-m", str(calls), "-nostdin", "-timeout", f"{int(timeout_s)}s",
                "-timeout_error", "-trace_stat", "-stf", str(self.stat_file), "-fd", "1",
                "-trace_err", "-error_file", str(self.error_file), "-max_recv_loops", "10000"]
        if media_port is not None:
            args += ["-mi", "127.0.0.1", "-mp", str(media_port)]
        if rate is not None:
            args += ["-r", str(rate)]
        if limit is not None:
            args += ["-l", str(limit)]
        if remote is not None:
            args.append(remote)
        self.args = args + (extra or [])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sipp:
        self.proc = subprocess.Popen(self.args, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        if self.remote is None:
            self._wait_bound()
        return self

    def _wait_bound(self) -> None:
        """A server is ready once its port can no longer be bound (SIPp prints nothing useful)."""
        kind = socket.SOCK_STREAM if self.transport.startswith("t") else socket.SOCK_DGRAM
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.proc is not None and self.proc.poll() is None:
            with socket.socket(socket.AF_INET, kind) as sock:
                try:
                    sock.bind(("127.0.0.1", self.local_port))
                except OSError:
                    return
            time.sleep(0.02)

    def wait(self, timeout_s: float | None = None) -> SippResult:
        """Wait for SIPp to finish its calls; kill it past the timeout."""
        assert self.proc is not None
        try:
            _, err = self.proc.communicate(timeout=timeout_s or self.timeout_s + 5)
        except subprocess.TimeoutExpired:
            self.stop()
            _, err = self.proc.communicate()
        successful, failed = self.counts()
        errors = self.error_file.read_text(errors="replace") if self.error_file.exists() else ""
        return SippResult(self.proc.returncode, successful, failed, err.decode(errors="replace")[-2000:],
                          errors[-4000:])

    def counts(self) -> tuple[int, int]:
        """(successful, failed) cumulative calls from the last statistics line."""
        if not self.stat_file.exists():
            return 0, 0
        with self.stat_file.open(newline="") as f:
            rows = list(csv.reader(f, delimiter=";"))
        if len(rows) < 2:
            return 0, 0
        header, last = rows[0], rows[-1]
        return int(last[header.index("SuccessfulCall(C)")]), int(last[header.index("FailedCall(C)")])

    def stop(self) -> None:
        stop_group(self.proc)

    def __enter__(self) -> Sipp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
