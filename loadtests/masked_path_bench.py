"""The relay's masked caller path: CPU per packet without sockets, and byte-identity against a revision.

    OPENBLAS_NUM_THREADS=1 python3 loadtests/masked_path_bench.py cost --streams 100,500,1000 \
        --iteration-ms 0.2,1 [--against REV] [--rounds 5]
    OPENBLAS_NUM_THREADS=1 python3 loadtests/masked_path_bench.py ab --against REV [--seeds 12]

`cost` drives `Relay` with a capture on every call, as `relay_bench.py core --capture` does
(50 packets/s per stream, phases spread over 20 ms, quiet mu-law noise, every packet arriving
within one iteration handled before the edge's `process_pending`, the timer when due), and
prints CPU-s per million packets (`time.process_time`), the share inside `MaskerBank.process`,
and the rows per masker call. With `--against REV` the relay core and the masker are also
loaded as they were at REV (`git show`, nothing checked out) and both run in interleaved
rounds; each figure is the minimum over the rounds (the machine is shared).

`ab` runs randomised calls through both trees and compares everything the core hands the
edge: every packet's bytes, destination, the leg it leaves from and the clock reading of the
call that returned it (the time it leaves), the events, the timer requests and the counters.
Calls carry quiet noise, speech-like talk, DTMF tones with onsets anywhere (some weak), lost
and late packets (held packets leave at their deadline), bursts (one leg twice in an
iteration), capture toggles, mask = "always", A-law and mixed-law legs, padding, CSRCs,
odd payload sizes, RFC 4733 events while masking (renumbering), an SRTP agent leg, masker
windows, calls removed mid-capture. Exit status 1 when any scenario differs.

Bounded: `cost` runs `--seconds` of simulated traffic per point and round; `ab` a few
thousand packets per scenario.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import dtmf.masker as masker_now  # noqa: E402
import gateway.media.relay as relay_now  # noqa: E402
from dtmf.g711 import alaw_encode, ulaw_encode  # noqa: E402
from dtmf.tones import DIGITS, dtmf_tone, to_int16, white_noise  # noqa: E402
from gateway.media.leg import LegMedia, SrtpParams  # noqa: E402

SUITE = "AES_CM_128_HMAC_SHA1_80"
KEYS = [base64.b64encode(bytes([i]) * 30).decode() for i in range(1, 5)]
"""Fixed SRTP keys: both trees protect the same packets into the same bytes."""


def load_revision(rev: str, path: str, name: str) -> ModuleType:
    """A module file as it was at a git revision, as a module of its own (its imports: this tree)."""
    text = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"],
                          capture_output=True, check=True, text=True, timeout=30).stdout
    file = Path(tempfile.mkdtemp()) / f"{name}.py"
    file.write_text(text)
    spec = importlib.util.spec_from_file_location(f"{name}_{rev}", file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class _Timed:
    """MaskerBank wrapper: CPU inside `process`, calls and rows."""

    def __init__(self, bank: Any) -> None:
        self.bank, self.cpu_s, self.calls, self.rows = bank, 0.0, 0, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bank, name)

    def process(self, slots, frames):
        t = time.process_time()
        out = self.bank.process(slots, frames)
        self.cpu_s += time.process_time() - t
        self.calls += 1
        self.rows += len(slots)
        return out


# ---- cost ---------------------------------------------------------------------------


def committed_detector(rev: str = "HEAD") -> Any:
    """`DetectorBank` as committed at `rev`: the same detector for both trees, whatever the
    working tree's detector is in the middle of (another engineer's files)."""
    return load_revision(rev, "dtmf/detector.py", "detector").DetectorBank


def core_cost(relay_mod: ModuleType, masker_mod: ModuleType, n: int, seconds: float, iteration_ms: float,
              timed: bool, detector_bank: Any) -> dict:
    """CPU per packet of the relay core with a capture on every call (see the module docstring)."""
    masker = masker_mod.MaskerBank(masker_mod.MaskMode.FLAT, capacity=n + 8)
    if timed:
        masker = _Timed(masker)
    relay = relay_mod.Relay(detector=detector_bank(capacity=n + 8), masker=masker)
    legs = []
    for i in range(n):
        call = relay.add_call(f"c{i}")
        caller, agent = ("10.1.0.1", 10000 + 2 * i), ("10.2.0.1", 10000 + 2 * i)
        relay.configure(f"c{i}", LegMedia(caller, None, "PCMU", 0, 101), LegMedia(agent, None, "PCMU", 0, 101))
        relay.set_capture(f"c{i}", True)
        legs.append((call.caller, caller))
    rng = np.random.default_rng(7)
    body = bytes(rng.integers(0xF0, 0x100, 160, dtype=np.uint8))  # quiet noise: relay_bench's payload
    total = int(seconds * 50 * n)
    packets = []  # every round's own sequence number and timestamp: no stream looks restarted
    for seq in range(-(-total // n)):
        hdr = bytes([0x80, 0]) + (seq & 0xFFFF).to_bytes(2, "big") + (160 * seq).to_bytes(4, "big")
        packets.append([hdr + (i + 1).to_bytes(4, "big") + body for i in range(n)])
    period_s, it_s = 0.020, iteration_ms / 1e3
    sent = timer_fires = 0
    timer = None
    now = 1000.0
    next_iter = now + it_s
    receive = relay.receive_rtp
    t_cpu = time.process_time()
    for k in range(total):
        i = k % n
        seq_round = k // n
        now = 1000.0 + seq_round * period_s + (i * period_s) / n
        if now >= next_iter:
            relay.wake = False
            sent += len(relay.process_pending(now))
            if relay.timer_changed:
                relay.timer_changed = False
                when = relay.get_timer()
                if when is not None and (timer is None or when < timer):
                    timer = when
            if timer is not None and now >= timer:
                timer_fires += 1
                sent += len(relay.handle_timer(now))
                if relay.mask_rows_pending:
                    sent += len(relay.process_pending(now))
                relay.timer_changed = False
                timer = relay.get_timer()
            next_iter = now + it_s
        leg, src = legs[i]
        receive(leg, packets[seq_round][i], src, now)
    cpu = time.process_time() - t_cpu
    out = {"streams": n, "iteration_ms": iteration_ms, "packets": total, "sent": sent,
           "cpu_s_per_mpkt": cpu / (total / 1e6), "timer_fires": timer_fires}
    if timed:
        out["masker_cpu_s_per_mpkt"] = masker.cpu_s / (total / 1e6)
        out["masker_rows_per_call"] = masker.rows / max(1, masker.calls)
    return out


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cmd_cost(args: argparse.Namespace) -> None:
    trees = [("now", relay_now, masker_now)]
    bank = committed_detector(args.against or "HEAD")
    if args.against:
        trees.append((args.against, load_revision(args.against, "gateway/media/relay.py", "relay"),
                      load_revision(args.against, "dtmf/masker.py", "masker")))
    print(f"load average before: {_loadavg()}")
    print(f"{'tree':>10} {'streams':>7} {'iter_ms':>7} {'rows/call':>9} {'CPU-s/M':>8} {'masker':>7} "
          f"{'rest':>7} {'timer/s':>7}")
    for n in (int(x) for x in args.streams.split(",")):
        for it in (float(x) for x in args.iteration_ms.split(",")):
            best: dict[str, dict] = {}
            for r in range(args.rounds):
                order = trees if r % 2 == 0 else trees[::-1]
                for name, rm, mm in order:
                    total = core_cost(rm, mm, n, args.seconds, it, False, bank)
                    split = core_cost(rm, mm, n, args.seconds, it, True, bank) if r == 0 else None
                    b = best.setdefault(name, {"cpu": float("inf")})
                    b["cpu"] = min(b["cpu"], total["cpu_s_per_mpkt"])
                    if split is not None:
                        b["split"] = split
                        b["timer_s"] = total["timer_fires"] / args.seconds
            for name, _, _ in trees:
                b = best[name]
                s = b["split"]
                print(f"{name:>10} {n:7d} {it:7.2f} {s['masker_rows_per_call']:9.1f} {b['cpu']:8.2f} "
                      f"{s['masker_cpu_s_per_mpkt']:7.2f} {s['cpu_s_per_mpkt'] - s['masker_cpu_s_per_mpkt']:7.2f} "
                      f"{b['timer_s']:7.0f}", flush=True)
    print(f"load average after: {_loadavg()}")


# ---- A/B of the output stream ----------------------------------------------------------


def _payload_audio(rng: np.random.Generator, n_packets: int, kind: str) -> np.ndarray:
    """Linear audio for one caller: quiet noise or talk, with DTMF tones at random places."""
    n = n_packets * 160
    audio = white_noise(n, float(rng.uniform(-60, -40)), rng)
    if kind == "talk":
        t = np.arange(n) / 8000.0
        for f in rng.uniform(300, 1700, 4):
            audio += float(rng.uniform(300, 2500)) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) * (
                0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
    pos = int(rng.integers(0, 400))
    while pos < n - 1600:
        ms = int(rng.integers(20, 120))
        level = float(rng.choice([-5.0, -15.0, -25.0, -50.0, -68.0]))
        tone = dtmf_tone(str(rng.choice(list(DIGITS))), ms, level)
        audio[pos:pos + len(tone)] += tone
        pos += len(tone) + int(rng.integers(100, 3000))
    return to_int16(audio)


def _packet(rng: np.random.Generator, seq: int, ts: int, ssrc: int, pt: int, payload: bytes, odd: bool) -> bytes:
    b0 = 0x80
    extra = b""
    if odd and rng.random() < 0.3:  # CSRCs
        b0 |= 2
        extra = bytes(8)
    pad = b""
    if odd and rng.random() < 0.3:
        b0 |= 0x20
        pad = bytes(3) + b"\x04"
    return (bytes([b0, pt]) + (seq & 0xFFFF).to_bytes(2, "big") + (ts & 0xFFFFFFFF).to_bytes(4, "big")
            + ssrc.to_bytes(4, "big") + extra + payload + pad)


def scenario(seed: int) -> dict:
    """Arrivals and control steps of one randomised run (the same for both trees)."""
    rng = np.random.default_rng(seed)
    n_calls = int(rng.integers(3, 12))
    n_packets = int(rng.integers(60, 160))
    calls = []
    steps: list[tuple[float, int, str, Any]] = []  # (time, order, kind, what)
    for c in range(n_calls):
        codec = "PCMA" if rng.random() < 0.25 else "PCMU"
        agent_codec = codec if rng.random() < 0.75 else ("PCMU" if codec == "PCMA" else "PCMA")
        calls.append({"codec": codec, "agent_codec": agent_codec, "srtp": bool(rng.random() < 0.2),
                      "always": bool(rng.random() < 0.2), "agent_pt": int(rng.choice([0, 8, 96]))
                      if rng.random() < 0.2 else None})
        audio = _payload_audio(rng, n_packets, "talk" if rng.random() < 0.4 else "quiet")
        codes = (alaw_encode(audio) if codec == "PCMA" else ulaw_encode(audio)).tobytes()
        pt = 8 if codec == "PCMA" else 0
        odd = rng.random() < 0.25
        phase = float(rng.uniform(0, 0.02))
        loss, late = float(rng.choice([0.0, 0.03, 0.1])), float(rng.choice([0.0, 0.05, 0.2]))
        seq0, ssrc = int(rng.integers(0, 65536)), 0x1000 + c
        te_at = set(rng.integers(0, n_packets, 3).tolist()) if rng.random() < 0.4 else set()
        for i in range(n_packets):
            if rng.random() < loss:
                continue
            t = 1.0 + phase + 0.020 * i
            if rng.random() < late:
                t += float(rng.uniform(0.0, 0.045))
            payload = codes[160 * i:160 * (i + 1)]
            if odd and rng.random() < 0.1:
                payload = payload[:80]
            steps.append((t, len(steps), "rtp", (c, _packet(rng, seq0 + i, 160 * i, ssrc, pt, payload, odd))))
            if i in te_at:
                ev = bytes([int(rng.integers(0, 16)), 0x0A, 0, 160])
                steps.append((t + 0.001, len(steps), "rtp", (c, _packet(rng, seq0 + i, 160 * i, ssrc, 101, ev,
                                                                          False))))
        for _ in range(int(rng.integers(0, 3))):
            steps.append((1.0 + float(rng.uniform(0, n_packets * 0.02)), len(steps), "capture",
                          (c, bool(rng.random() < 0.5))))
        if rng.random() < 0.1:
            steps.append((1.0 + float(rng.uniform(0.5, n_packets * 0.02)), len(steps), "remove", c))
    steps.sort()
    return {"calls": calls, "steps": steps, "iteration_s": float(rng.choice([0.0002, 0.001, 0.003])),
            "mask_window_s": float(rng.choice([0.0, 0.0, 0.0005, 0.002])), "share_now": bool(rng.random() < 0.5),
            "mode": str(rng.choice(["flat", "silence", "comfort-noise"]))}


def run_scenario(relay_mod: ModuleType, masker_mod: ModuleType, sc: dict, detector_bank: Any) -> list:
    """Everything the core hands the edge, in order, with the clock reading it was handed at."""
    masker = masker_mod.MaskerBank(masker_mod.MaskMode(sc["mode"]), capacity=4)
    relay = relay_mod.Relay(detector=detector_bank(capacity=4), masker=masker, mask_window_s=sc["mask_window_s"])
    log: list = []
    legs = {}
    removed = set()
    for c, spec in enumerate(sc["calls"]):
        call = relay.add_call(f"c{c}")
        caller, agent = ("10.1.0.1", 10000 + 2 * c), ("10.2.0.1", 10000 + 2 * c)
        srtp = SrtpParams(SUITE, KEYS[0], KEYS[1]) if spec["srtp"] else None
        apt = spec["agent_pt"] if spec["agent_pt"] is not None else (8 if spec["agent_codec"] == "PCMA" else 0)
        relay.configure(f"c{c}", LegMedia(caller, None, spec["codec"], 8 if spec["codec"] == "PCMA" else 0, 101),
                        LegMedia(agent, None, spec["agent_codec"], apt, 101, srtp=srtp))
        if spec["always"]:
            log.append(("always", c, _sends(relay.set_mask_always(f"c{c}", True, now=0.5))))
        log.append(("capture", c, _sends(relay.set_capture(f"c{c}", True, now=0.5))))
        legs[c] = (call.caller, caller)
    timer = None

    def fire_until(t: float) -> None:
        nonlocal timer
        while timer is not None and timer <= t:
            now = timer
            out = relay.handle_timer(now)
            if relay.mask_rows_pending:
                out = out + relay.process_pending(now)
            log.append(("timer", now, _sends(out)))
            relay.timer_changed = False
            timer = relay.get_timer()

    def rearm() -> None:
        nonlocal timer
        if relay.timer_changed:
            relay.timer_changed = False
            when = relay.get_timer()
            if when is not None and (timer is None or when < timer):
                timer = when

    steps = sc["steps"]
    i = 0
    while i < len(steps):
        t0 = steps[i][0]
        fire_until(t0)
        end = t0 + sc["iteration_s"]
        now = t0
        while i < len(steps) and steps[i][0] <= end:
            t, _, kind, what = steps[i]
            now = t0 if sc["share_now"] else t
            i += 1
            if kind == "rtp":
                c, data = what
                if c in removed:
                    continue
                leg, src = legs[c]
                out = relay.receive_rtp(leg, data, src, now)
                if out is not None:
                    log.append(("rx", now, out[0], out[1]))
            elif kind == "capture" and what[0] not in removed:
                log.append(("capture", now, _sends(relay.set_capture(f"c{what[0]}", what[1], now=now))))
            elif kind == "remove" and what not in removed:
                relay.remove_call(f"c{what}")
                removed.add(what)
        relay.wake = False
        log.append(("pending", now, _sends(relay.process_pending(now))))
        rearm()
        events = []
        while relay.has_events:
            ev = relay.next_event()
            events.append(("event", type(ev).__name__, repr(ev), getattr(ev, "digit", None)))
        # Sorted within one drain: the relay ends lost telephone-events of several calls in the
        # order of a set of legs (memory addresses), which differs between any two runs.
        log.extend(sorted(events))
    fire_until(steps[-1][0] + 0.1 if steps else 0.0)
    log.append(("flush", _sends(relay.flush(now=1e4))))
    st = relay.stats
    log.append(("stats", st.relayed, st.relayed_bytes, st.captured, st.drops_total(), st.masker_batches,
                np.asarray(st.lookahead_seconds.counts).tolist(), round(st.lookahead_seconds.sum_s, 9)))
    return log


def _sends(sends) -> list:
    return [(leg.call_id, leg.name, data, dest) for leg, data, dest in sends]


def cmd_ab(args: argparse.Namespace) -> int:
    relay_old = load_revision(args.against, "gateway/media/relay.py", "relay")
    masker_old = load_revision(args.against, "dtmf/masker.py", "masker")
    bank = committed_detector(args.against)
    same = packets = 0
    for seed in range(args.seeds):
        sc = scenario(seed)
        a = run_scenario(relay_now, masker_now, sc, bank)
        b = run_scenario(relay_old, masker_old, sc, bank)
        n = sum(len(x[2]) for x in a if x[0] in ("pending", "timer", "capture")) + sum(x[0] == "rx" for x in a)
        packets += n
        if a == b:
            same += 1
        else:
            first = next(j for j, (x, y) in enumerate(zip(a, b)) if x != y) if any(
                x != y for x, y in zip(a, b)) else min(len(a), len(b))
            print(f"seed {seed}: DIFFERS at log entry {first} of {len(a)} / {len(b)}: "
                  f"{str(a[first])[:300] if first < len(a) else '-'} vs {str(b[first])[:300] if first < len(b) else '-'}")
        if args.verbose:
            print(json.dumps({"seed": seed, "calls": len(sc["calls"]), "steps": len(sc["steps"]),
                              "packets_out": n, "identical": a == b}))
    print(f"identical output, now vs {args.against}: {same} of {args.seeds} scenarios ({packets} packets out)")
    return 0 if same == args.seeds else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cost")
    c.add_argument("--streams", default="100,500,1000")
    c.add_argument("--iteration-ms", default="0.2,1")
    c.add_argument("--seconds", type=float, default=2.0, help="simulated seconds per point and round")
    c.add_argument("--rounds", type=int, default=3)
    c.add_argument("--against", metavar="REV")
    b = sub.add_parser("ab")
    b.add_argument("--against", metavar="REV", required=True)
    b.add_argument("--seeds", type=int, default=24)
    b.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    if args.cmd == "cost":
        cmd_cost(args)
    else:
        sys.exit(cmd_ab(args))


if __name__ == "__main__":
    main()
