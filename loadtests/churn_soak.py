"""Call churn through one gateway: memory and collector pauses while calls start and end.

    python3 loadtests/churn_soak.py --rate 25 --hold-s 20 --duration-s 120 [--every-s 20]

SIPp uac -> `tonewall run` -> SIPp uas (signalling; `rate x hold` calls up at once, `rate`
new ones a second). Every `--every-s` it prints the gateway's RSS (/proc), its active calls
and `tonewall_gc_pause_seconds` per generation (passes, total ms) from /metrics. A gateway
whose ended calls wait as cyclic garbage grows here and stops its audio loop for a full
collector pass now and then; one that frees them by reference counting stays flat.
Bounded: SIPp places rate x duration calls and stops at duration + hold + 30 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tests.integration.gateway_proc import GatewayProcess  # noqa: E402
from tests.peers.ports import free_block, free_port  # noqa: E402
from tests.peers.sipp import Sipp  # noqa: E402

SCENARIOS = Path(__file__).with_name("sipp")


def rss_kb(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0])


def sample(gateway: GatewayProcess) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=5).read().decode()
    out: dict = {"gc": {}}
    for family in text_string_to_metric_families(text):
        if family.name == "tonewall_calls_active":
            out["calls_active"] = int(family.samples[0].value)
        if family.name == "tonewall_gc_pause_seconds":
            for s in family.samples:
                gen = s.labels.get("generation")
                if s.name.endswith("_count"):
                    out["gc"].setdefault(gen, {})["passes"] = int(s.value)
                elif s.name.endswith("_sum"):
                    out["gc"].setdefault(gen, {})["total_ms"] = round(s.value * 1e3, 1)
    assert gateway.proc is not None
    out["rss_kb"] = rss_kb(gateway.proc.pid)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=25.0, help="new calls per second")
    parser.add_argument("--hold-s", type=float, default=20.0, help="each call's length")
    parser.add_argument("--duration-s", type=float, default=120.0, help="how long new calls keep coming")
    parser.add_argument("--every-s", type=float, default=20.0)
    args = parser.parse_args(argv)
    calls = int(args.rate * args.duration_s)
    timeout_s = args.duration_s + args.hold_s + 30
    with tempfile.TemporaryDirectory(prefix="tw-churn-") as tmp_name:
        tmp = Path(tmp_name)
        uas_port = free_port()
        gateway = GatewayProcess(tmp, next_hop_port=uas_port, rtp_ports=4 * int(args.rate * args.hold_s) + 400)
        gateway.start()
        uac_xml = (SCENARIOS / "uac_callrate.xml").read_text().replace("@@HOLD_MS@@", str(int(args.hold_s * 1000)))
        uas_xml = (SCENARIOS / "uas_callrate.xml").read_text()
        try:
            with Sipp(uas_xml, local_port=uas_port, transport="u1", workdir=tmp, media_port=free_block(2),
                      calls=calls, timeout_s=timeout_s) as uas:
                started = time.monotonic()
                with Sipp(uac_xml, local_port=free_port(), transport="u1", workdir=tmp,
                          remote=f"127.0.0.1:{gateway.sip_port}", media_port=free_block(2), calls=calls,
                          rate=args.rate, limit=int(args.rate * args.hold_s) + 100, timeout_s=timeout_s,
                          extra=["-max_retrans", "5"]) as uac:
                    end = started + args.duration_s
                    while time.monotonic() < end:
                        time.sleep(min(args.every_s, max(0.0, end - time.monotonic())))
                        row = {"t_s": round(time.monotonic() - started), **sample(gateway)}
                        print(json.dumps(row), flush=True)
                    result = uac.wait()
                uas.stop()
        finally:
            gateway.stop()
    print(json.dumps({"calls": calls, "successful": result.successful, "failed": result.failed}))
    return 0 if result.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
