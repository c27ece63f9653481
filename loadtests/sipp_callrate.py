"""Call rate through one gateway process: SIPp uac -> tonewall run -> SIPp uas, sustained.

    python3 -m loadtests.sipp_callrate --rate 300 --duration-s 60 [--transport u1|t1] [--hold-ms 0]

Prints calls attempted/successful/failed, the achieved rate, the failure ratio, and the
gateway's CPU seconds (from /proc/PID/stat) per 1,000 calls. Target: >= 300 calls/s for
60 s with < 0.1 % failed calls (issue 3). Bounded: SIPp stops after rate*duration calls
or duration + 30 s, whichever comes first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.gateway_proc import GatewayProcess  # noqa: E402
from tests.peers.ports import free_block, free_port  # noqa: E402
from tests.peers.sipp import Sipp  # noqa: E402

SCENARIOS = Path(__file__).with_name("sipp")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300.0, help="calls per second")
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--hold-ms", type=int, default=0, help="time between ACK and BYE")
    parser.add_argument("--transport", choices=("u1", "t1"), default="u1")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    calls = int(args.rate * args.duration_s)
    with tempfile.TemporaryDirectory(prefix="tw-callrate-") as tmp_name:
        tmp = Path(tmp_name)
        uas_port = free_port()
        hop = "tcp" if args.transport == "t1" else "udp"
        gateway = GatewayProcess(tmp, next_hop_port=uas_port, next_hop_transport=hop, rtp_ports=8000)
        gateway.start()
        uac_xml = (SCENARIOS / "uac_callrate.xml").read_text().replace("@@HOLD_MS@@", str(args.hold_ms))
        uas_xml = (SCENARIOS / "uas_callrate.xml").read_text()
        try:
            assert gateway.proc is not None
            cpu_before = cpu_seconds(gateway.proc.pid)
            with Sipp(uas_xml, local_port=uas_port, transport=args.transport, workdir=tmp,
                      media_port=free_block(2), calls=calls, timeout_s=args.duration_s + 30) as uas:
                started = time.monotonic()
                with Sipp(uac_xml, local_port=free_port(), transport=args.transport, workdir=tmp,
                          remote=f"127.0.0.1:{gateway.sip_port}", media_port=free_block(2), calls=calls,
                          rate=args.rate, limit=max(100, int(args.rate * 4)),
                          timeout_s=args.duration_s + 30, extra=["-max_retrans", "5"]) as uac:
                    result = uac.wait()
                elapsed = time.monotonic() - started
                uas.stop()
            cpu = cpu_seconds(gateway.proc.pid) - cpu_before
        finally:
            gateway.stop()
    counters = gateway.final_counters() if gateway.lines else {}
    done = result.successful + result.failed
    figures = {
        "target_rate": args.rate, "duration_s": args.duration_s, "transport": args.transport,
        "calls_attempted": calls, "successful": result.successful, "failed": result.failed,
        "unfinished": calls - done, "elapsed_s": round(elapsed, 2),
        "achieved_rate": round(result.successful / elapsed, 1) if elapsed else 0.0,
        "failed_ratio_pct": round(100.0 * (calls - result.successful) / calls, 4) if calls else 0.0,
        "gateway_cpu_s": round(cpu, 2),
        "gateway_cpu_s_per_1000_calls": round(1000 * cpu / max(1, result.successful), 3),
        "gateway_sip_drops": counters.get("sip_drops", {}),
        "gateway_calls_active_at_stop": counters.get("calls_active"),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    ok = figures["failed_ratio_pct"] < 0.1 and figures["achieved_rate"] >= 0.95 * args.rate
    print("PASS" if ok else "FAIL", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
