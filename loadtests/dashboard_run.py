"""The Grafana dashboard rendered from a real run: `tonewall run`, a real Prometheus, real calls.

    pip install matplotlib            # for this script only; not a project dependency
    python3 loadtests/dashboard_run.py --traffic-s 75 --out docs/dashboard.png

On loopback only: starts `tonewall run` (subprocess, free ports, a temp data dir)
and Debian's `prometheus` scraping it every second with the alert rules loaded;
places several concurrent calls between the demo's endpoints (each caller routed
to its own agent by Request-URI user), talks, runs secure captures through the
HTTPS API (cards keyed in-band: tokenized ones and one that fails after three
invalid numbers), churns a call, sends malformed RTP and unauthenticated API
requests. Then it asks Prometheus (HTTP API, query_range) for every target of
every dashboard panel, with the Grafana variables substituted as Grafana would,
and draws the panels into one PNG laid out by the dashboard's gridPos, with its
titles, legends and units. Every wait is bounded; every child is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402

from gateway.demo.endpoint import Endpoint  # noqa: E402
from gateway.demo.process import GatewayPorts, GatewayProcess, free_port, free_rtp_block  # noqa: E402
from gateway.demo.useragent import CallEstablished  # noqa: E402
from gateway.demo.voice import CallerVoice, KeyingTiming, SensitiveKeys  # noqa: E402
from gateway.sip.transaction import Peer  # noqa: E402

HOST = "127.0.0.1"
DASHBOARD = ROOT / "deploy" / "grafana" / "tonewall-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "tonewall-alerts.yml"
SCRAPE_INTERVAL_S = 1
RATE_INTERVAL = "5s"
"""What Grafana's $__rate_interval comes to here: max(4 x scrape interval, step + scrape), rounded up."""
RUN_DEADLINE_S = 300.0
PAIRS = 5
"""Caller/agent pairs; pairs 1-4 call at the start, pair 5 replaces pair 3 mid-run."""
RTP_BLOCK = 80


def _expiry() -> str:
    today = datetime.date.today()
    return f"{today.month:02d}{(today.year + 2) % 100:02d}"


def valid_card() -> SensitiveKeys:
    """The Visa test number, an expiry two years out, a CVV."""
    return SensitiveKeys("4" + "1" * 15 + "#" + _expiry() + "#123#")


def invalid_card() -> SensitiveKeys:
    """A number that fails Luhn, keyed three times: the capture fails (capture.max_attempts = 3)."""
    return SensitiveKeys(("4" + "1" * 14 + "2#") * 3)


def promql(expr: str) -> str:
    """The expr as Grafana sends it for "All" instances."""
    return expr.replace("$__rate_interval", RATE_INTERVAL).replace("${instance}", ".*").replace("$instance", ".*")


# ---------------------------------------------------------------- the processes


class Prometheus:
    """Debian's prometheus on a free loopback port, scraping the gateway every second, alert rules loaded."""

    def __init__(self, work_dir: Path, metrics_port: int) -> None:
        self.port = free_port()
        self.work_dir = work_dir
        config = work_dir / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL_S}s\n"
            f"  evaluation_interval: {SCRAPE_INTERVAL_S}s\n"
            f"rule_files:\n  - {json.dumps(str(ALERTS))}\n"
            "scrape_configs:\n"
            "  - job_name: tonewall\n"
            "    static_configs:\n"
            f"      - targets: [\"{HOST}:{metrics_port}\"]\n")
        self.args = [shutil.which("prometheus") or "prometheus", f"--config.file={config}",
                     f"--storage.tsdb.path={work_dir / 'tsdb'}", f"--web.listen-address={HOST}:{self.port}",
                     "--log.level=warn"]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self, session: aiohttp.ClientSession, timeout_s: float = 30.0) -> None:
        log = (self.work_dir / "prometheus.log").open("wb")
        try:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}; see {self.work_dir}/prometheus.log")
            try:
                async with session.get(self.url + "/-/ready") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError("prometheus did not become ready")

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    async def api(self, session: aiohttp.ClientSession, path: str, **params: Any) -> Any:
        async with session.get(self.url + path, params={k: str(v) for k, v in params.items()}) as resp:
            body = await resp.json()
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path}: {body.get('error')}")
        return body["data"]


class AgentSwitchboard(asyncio.DatagramProtocol):
    """The gateway's one next hop, in front of one softphone per agent (each takes one call at a time).

    An INVITE goes to the endpoint named by its Request-URI user (the gateway keeps
    it); later requests of that Call-ID follow it. Each endpoint answers from its own
    socket and names it in its Contact, so in-dialog requests go there directly.
    """

    CALL_ID = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*(\S+)", re.I | re.M)
    INVITE_USER = re.compile(rb"^INVITE sips?:([^@;> ]+)@")

    def __init__(self, agents: dict[str, Endpoint]) -> None:
        self.agents = agents
        self.by_call: dict[bytes, Endpoint] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.unrouted = 0

    @classmethod
    async def open(cls, agents: dict[str, Endpoint]) -> AgentSwitchboard:
        loop = asyncio.get_running_loop()
        board = cls(agents)
        board.transport, _ = await loop.create_datagram_endpoint(lambda: board, local_addr=(HOST, 0))
        return board

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        match = self.CALL_ID.search(data)
        if match is None:
            self.unrouted += 1
            return
        ep = self.by_call.get(match.group(1))
        if ep is None:
            user = self.INVITE_USER.match(data)
            ep = self.agents.get(user.group(1).decode()) if user else None
            if ep is None:
                self.unrouted += 1
                return
            self.by_call[match.group(1)] = ep
        if ep.ua is not None:
            ep.ua.receive(data, Peer("udp", addr[0], addr[1]), ep.loop.time())
            ep.pump()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass
class Pair:
    """One caller and the agent its calls are routed to."""

    n: int
    caller: Endpoint
    agent: Endpoint
    token: str = ""
    call_id: str = ""
    up: bool = False
    busy: bool = False
    """True while the caller is keying (no talk queued over it)."""
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def agent_user(self) -> str:
        return self.agent.user


class Run:
    """One run: processes, traffic, queries."""

    def __init__(self, work_dir: Path, traffic_s: float, seed: int) -> None:
        self.work_dir = work_dir
        self.traffic_s = traffic_s
        self.rng = np.random.default_rng(seed)
        self.gateway: GatewayProcess | None = None
        self.prometheus: Prometheus | None = None
        self.pairs: list[Pair] = []
        self.switchboard: AgentSwitchboard | None = None
        self.log: list[str] = []
        self.captures: list[tuple[int, str, str]] = []
        """(pair, capture_id, final state)."""
        self.junk_sent = 0
        self.auth_refused = 0
        self.start_s = 0.0
        self.end_s = 0.0

    def note(self, text: str) -> None:
        stamp = time.time() - self.start_s if self.start_s else 0.0
        line = f"[{stamp:6.1f}s] {text}"
        self.log.append(line)
        print(line, flush=True)

    # ------------------------------------------------------------ setup

    async def start(self, session: aiohttp.ClientSession) -> None:
        for n in range(1, PAIRS + 1):
            agent = await Endpoint.open(f"agent{n}", CallerVoice(self.rng, noise_dbm0=-50.0))
            caller = await Endpoint.open(f"caller{n}", CallerVoice(self.rng, noise_dbm0=-55.0))
            self.pairs.append(Pair(n, caller, agent))
        self.switchboard = await AgentSwitchboard.open({p.agent_user: p.agent for p in self.pairs})
        low = free_rtp_block(RTP_BLOCK)
        ports = GatewayPorts(free_port(), free_port(), free_port(), free_port(), low, low + RTP_BLOCK - 1)
        self.gateway = gw = GatewayProcess(self.work_dir, f"sip:agents@{HOST}:{self.switchboard.port}", ports)
        await gw.start()
        self.note(f"gateway: {gw.listen_line.strip()}")
        self.prometheus = Prometheus(self.work_dir, ports.metrics)
        await self.prometheus.start(session)
        self.note(f"prometheus ready at {self.prometheus.url}, scraping {gw.metrics_url} every {SCRAPE_INTERVAL_S} s")
        from gateway.api.auth import issue_token, load_or_create_dev_key

        key = load_or_create_dev_key(gw.data_dir)
        for p in self.pairs:
            p.token = issue_token(key, role="agent", subject=p.agent_user, agent=p.agent_user, now=time.time(),
                                  ttl_s=900)

    def desktop(self, token: str | None) -> aiohttp.ClientSession:
        assert self.gateway is not None
        context = ssl.create_default_context(cafile=str(self.gateway.ca_path))
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context), headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=15))

    # ------------------------------------------------------------ traffic

    async def place(self, p: Pair) -> None:
        assert self.gateway is not None
        p.caller.call(f"sip:{p.agent_user}@{HOST}:{self.gateway.ports.sip}", self.gateway.sip_uri)
        for ep in (p.caller, p.agent):
            event = await ep.wait_event(8.0)
            if not isinstance(event, CallEstablished):
                raise RuntimeError(f"call {p.n}: {event}")
        p.up = True
        async with self.desktop(p.token) as api:
            for _ in range(25):
                async with api.get(self.gateway.api_url + "/v1/calls") as resp:
                    calls = (await resp.json()).get("calls", [])
                mine = [c for c in calls if c.get("agent") == p.agent_user]
                if mine:
                    p.call_id = mine[0]["call_id"]
                    break
                await asyncio.sleep(0.2)
        if not p.call_id:
            raise RuntimeError(f"call {p.n} not listed by GET /v1/calls")
        p.tasks.append(asyncio.ensure_future(self.chatter(p, p.caller)))
        p.tasks.append(asyncio.ensure_future(self.chatter(p, p.agent)))
        self.note(f"call {p.n} up: caller{p.n} -> agent{p.n} ({p.call_id})")

    async def chatter(self, p: Pair, ep: Endpoint) -> None:
        """Both sides talk in turns of 1-3 s with pauses; the caller stays quiet while keying."""
        while p.up:
            if not (ep is p.caller and p.busy) and ep.voice.idle:
                ep.voice.talk(float(self.rng.uniform(1.0, 3.0)), level_dbm0=float(self.rng.uniform(-24, -16)))
            await asyncio.sleep(float(self.rng.uniform(1.5, 4.0)))

    async def hang_up(self, p: Pair) -> None:
        if not p.up:
            return
        p.up = False
        for t in p.tasks:
            t.cancel()
        p.caller.hang_up()
        try:
            await p.caller.wait_event(5.0)
        except asyncio.TimeoutError:
            self.note(f"call {p.n}: no answer to BYE")
        self.note(f"call {p.n} hung up")

    async def capture(self, p: Pair, keys: SensitiveKeys, label: str) -> None:
        """Start a capture through the API, key the card in-band, wait for the end state."""
        assert self.gateway is not None
        p.busy = True
        try:
            while not p.caller.voice.idle:
                await asyncio.sleep(0.05)
            async with self.desktop(p.token) as api:
                async with api.post(f"{self.gateway.api_url}/v1/calls/{p.call_id}/captures",
                                    json={"fields": ["pan", "expiry", "cvv"]}) as resp:
                    created = await resp.json()
                    if resp.status != 201:
                        raise RuntimeError(f"capture on call {p.n}: {resp.status} {created.get('reason')}")
                capture_id = created["capture_id"]
                self.note(f"call {p.n}: capture {capture_id} started ({label})")
                await asyncio.sleep(0.5)
                p.caller.voice.key(keys, KeyingTiming())
                keys.wipe()
                state = "collecting"
                deadline = time.monotonic() + 60.0
                while time.monotonic() < deadline:
                    async with api.get(f"{self.gateway.api_url}/v1/captures/{capture_id}") as resp:
                        view = await resp.json()
                    state = view.get("state", "?")
                    if state in ("tokenized", "failed", "cancelled"):
                        break
                    await asyncio.sleep(0.5)
                self.captures.append((p.n, capture_id, state))
                self.note(f"call {p.n}: capture {capture_id} {state} (brand {view.get('brand')}, "
                          f"last4 {view.get('last4')}, reason {view.get('reason')})")
        finally:
            while not p.caller.voice.idle:
                await asyncio.sleep(0.05)
            p.busy = False

    async def junk(self, until_s: float) -> None:
        """Malformed RTP at the gateway's media ports: bad version, unknown payload type, truncated.

        None of it can latch a leg: each is dropped before the source is learnt.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            while time.monotonic() < until_s:
                for p in self.pairs:
                    media = p.caller.ua.media if p.up and p.caller.ua is not None else None
                    if media is None or media.remote_rtp is None:
                        continue
                    dest = media.remote_rtp
                    for data in (b"\x40" + bytes(171),                       # RTP version 1
                                 b"\x80\x63" + bytes(170),                   # PT 99: not negotiated
                                 b"\x80\x00\x00"):                           # shorter than a header
                        try:
                            sock.sendto(data, dest)
                            self.junk_sent += 1
                        except OSError:
                            pass
                await asyncio.sleep(float(self.rng.uniform(0.3, 1.2)))
        finally:
            sock.close()

    async def bad_tokens(self) -> None:
        """An expired-looking token and none at all: the API refuses both (auth failures panel)."""
        assert self.gateway is not None
        for token in ("not.a.jwt", None, "eyJhbGciOiJFZERTQSJ9.e30.AAAA"):
            async with self.desktop(token) as api:
                async with api.get(self.gateway.api_url + "/v1/calls") as resp:
                    if resp.status in (401, 403):
                        self.auth_refused += 1

    async def traffic(self) -> None:
        t0 = time.monotonic()
        self.start_s = time.time()

        async def at(offset_s: float) -> None:
            await asyncio.sleep(max(0.0, t0 + offset_s - time.monotonic()))

        first = self.pairs[:4]
        await asyncio.gather(*(self.place(p) for p in first))
        junk = asyncio.ensure_future(self.junk(t0 + self.traffic_s * 0.8))
        scale = self.traffic_s / 75.0
        plan = [
            (6 * scale, lambda: self.capture(self.pairs[0], valid_card(), "valid Visa test card")),
            (12 * scale, self.bad_tokens),
            (18 * scale, lambda: self.capture(self.pairs[1], invalid_card(), "invalid number keyed 3 times")),
            (30 * scale, lambda: self.hang_up(self.pairs[2])),
            (32 * scale, lambda: self.place(self.pairs[4])),
            (36 * scale, lambda: self.capture(self.pairs[3], valid_card(), "valid Visa test card")),
            (44 * scale, lambda: self.capture(self.pairs[4], valid_card(), "valid Visa test card")),
            (50 * scale, self.bad_tokens),
            (54 * scale, lambda: self.capture(self.pairs[0], valid_card(), "a second card on the same call")),
            # A second failure: the first increment of a label set born at 1 is invisible to increase().
            (58 * scale, lambda: self.capture(self.pairs[3], invalid_card(), "invalid number keyed 3 times")),
        ]
        running: list[asyncio.Task[Any]] = []
        for offset, step in plan:
            await at(offset)
            running.append(asyncio.ensure_future(step()))
        await asyncio.gather(*running)
        await at(self.traffic_s)
        junk.cancel()
        await asyncio.gather(*(self.hang_up(p) for p in self.pairs))
        await asyncio.sleep(3 * SCRAPE_INTERVAL_S)
        self.end_s = time.time()
        self.note(f"traffic done: {len(self.captures)} captures, {self.junk_sent} malformed RTP packets, "
                  f"{self.auth_refused} API requests refused")

    # ------------------------------------------------------------ queries

    async def query_panels(self, session: aiohttp.ClientSession, dashboard: dict[str, Any]) -> dict[str, Any]:
        assert self.prometheus is not None
        start, end = self.start_s - 5, self.end_s
        step_s = max(1, math.ceil((end - start) / 240))
        out: dict[str, Any] = {}
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                key = f"{panel['id']}/{target['refId']}"
                data = await self.prometheus.api(session, "/api/v1/query_range", query=promql(target["expr"]),
                                                 start=start, end=end, step=step_s)
                out[key] = data["result"]
        rules = await self.prometheus.api(session, "/api/v1/rules")
        out["_rules"] = [{"name": r["name"], "health": r.get("health"), "state": r.get("state"),
                          "lastError": r.get("lastError", "")}
                         for g in rules["groups"] for r in g["rules"]]
        targets = await self.prometheus.api(session, "/api/v1/targets")
        out["_targets"] = [{"health": t["health"], "lastError": t["lastError"]} for t in targets["activeTargets"]]
        out["_range"] = [start, end, step_s]
        return out

    async def stop(self) -> None:
        for p in self.pairs:
            p.up = False
            for t in p.tasks:
                t.cancel()
            for ep in (p.caller, p.agent):
                ep.stop_audio()
        if self.gateway is not None:
            code = await self.gateway.stop()
            self.note(f"tonewall run exited {code}")
        if self.prometheus is not None:
            self.prometheus.stop()
        for p in self.pairs:
            p.caller.close()
            p.agent.close()
        if self.switchboard is not None:
            self.switchboard.close()


# ---------------------------------------------------------------- drawing


GRAFANA_BG = "#111217"
PANEL_BG = "#181b1f"
TEXT = "#ccccdc"
GRID = "#2c3235"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#fade2a"]


def legend_name(fmt: str, labels: dict[str, str]) -> str:
    out = fmt
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v).replace("{{ " + k + " }}", v)
    return out if "{{" not in out else fmt


def unit_format(unit: str):
    """A tick formatter for Grafana's unit ids (s, pps, reqps, short)."""
    def fmt(value: float, _pos: Any = None) -> str:
        if value is None or not math.isfinite(value):
            return ""
        if unit == "s":
            a = abs(value)
            if a == 0:
                return "0"
            if a < 1e-3:
                return f"{value * 1e6:.0f} µs"
            if a < 1:
                return f"{value * 1e3:.3g} ms"
            return f"{value:.3g} s"
        suffix = {"pps": " p/s", "reqps": " req/s"}.get(unit, "")
        if abs(value) >= 1000:
            return f"{value / 1000:.3g}k{suffix}"
        return f"{value:.3g}{suffix}"
    return fmt


def _series(panel: dict[str, Any], results: dict[str, Any]) -> list[tuple[str, list[Any], list[float]]]:
    """(legend, times, values) of every series of every target, in target order."""
    out = []
    for target in panel["targets"]:
        for s in results.get(f"{panel['id']}/{target['refId']}", []):
            ts = [datetime.datetime.fromtimestamp(float(t), datetime.timezone.utc) for t, _ in s["values"]]
            vs = [float(v) for _, v in s["values"]]
            out.append((legend_name(target.get("legendFormat", ""), s["metric"]) or json.dumps(s["metric"]), ts, vs))
    return out


def render(dashboard: dict[str, Any], results: dict[str, Any], out_path: Path, subtitle: str) -> None:
    """Draw the panels where the dashboard's gridPos puts them (24 columns, rows of equal height)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    width_in, row_in, header_in, gap_in = 18.0, 0.34, 0.75, 0.08
    height_in = header_in + rows * row_in + 0.1
    fig = plt.figure(figsize=(width_in, height_in), facecolor=GRAFANA_BG)
    fig.text(0.1 / width_in, 1 - 0.12 / height_in, f"{dashboard['title']}: dashboard rendered from a real run",
             ha="left", va="top", color=TEXT, fontsize=15, fontweight="bold")
    fig.text(0.1 / width_in, 1 - 0.47 / height_in, subtitle, ha="left", va="top", color="#9fa7b3", fontsize=9)
    start, end, _ = results["_range"]
    t_lo = datetime.datetime.fromtimestamp(start, datetime.timezone.utc)
    t_hi = datetime.datetime.fromtimestamp(end, datetime.timezone.utc)
    col_in = (width_in - 0.1) / 24

    def rect(g: dict[str, int], left: float, right: float, top: float, bottom: float) -> list[float]:
        """Figure-fraction [x, y, w, h] of a panel's cell, inset by inches on each side."""
        x0 = 0.05 + g["x"] * col_in + gap_in + left
        x1 = 0.05 + (g["x"] + g["w"]) * col_in - gap_in - right
        y_top = height_in - header_in - g["y"] * row_in - gap_in - top
        y_bot = height_in - header_in - (g["y"] + g["h"]) * row_in + gap_in + bottom
        return [x0 / width_in, y_bot / height_in, (x1 - x0) / width_in, (y_top - y_bot) / height_in]

    for panel in panels:
        g = panel["gridPos"]
        frame = rect(g, 0, 0, 0, 0)
        fig.patches.append(FancyBboxPatch((frame[0], frame[1]), frame[2], frame[3], boxstyle="round,pad=0,rounding_size=0.002",
                                          transform=fig.transFigure, facecolor=PANEL_BG, edgecolor=GRID, lw=0.8,
                                          zorder=-5))
        fig.text(frame[0] + 0.1 / width_in, frame[1] + frame[3] - 0.06 / height_in, panel["title"], ha="left",
                 va="top", color=TEXT, fontsize=10.5, fontweight="bold")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        fmt = unit_format(unit)
        finite = [(n, ts, vs) for n, ts, vs in _series(panel, results) if any(math.isfinite(v) for v in vs)]
        if panel["type"] == "stat":
            ax = fig.add_axes(rect(g, 0.1, 0.1, 0.3, 0.05))
            ax.axis("off")
            if finite:
                name, ts, vs = finite[0]
                last = next(v for v in reversed(vs) if math.isfinite(v))
                peak = max(v for v in vs if math.isfinite(v))
                ax.fill_between(ts, vs, color=PALETTE[0], alpha=0.22, step="post")
                ax.plot(ts, vs, color=PALETTE[0], lw=1, drawstyle="steps-post")
                ax.set_ylim(0, max(peak, 1) * 3.0)
                ax.set_xlim(t_lo, t_hi)
                ax.text(0.5, 0.62, fmt(last), transform=ax.transAxes, ha="center", va="center",
                        color=PALETTE[0], fontsize=30, fontweight="bold")
                ax.text(0.98, 0.95, f"last value; peak {fmt(peak)} during the run", transform=ax.transAxes,
                        ha="right", va="top", color="#9fa7b3", fontsize=8.5)
            else:
                ax.text(0.5, 0.5, "No data", transform=ax.transAxes, ha="center", va="center", color="#8e8e8e")
            continue
        ax = fig.add_axes(rect(g, 0.62, 0.12, 0.32, 0.25))
        ax.set_facecolor(PANEL_BG)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.tick_params(colors="#9fa7b3", labelsize=8, length=0)
        ax.grid(True, color=GRID, lw=0.6)
        ax.set_xlim(t_lo, t_hi)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=datetime.timezone.utc))
        ax.xaxis.set_major_locator(MaxNLocator(7))
        ax.yaxis.set_major_formatter(FuncFormatter(fmt))
        ax.yaxis.set_major_locator(MaxNLocator(4))
        if not finite:
            ax.set_yticks([])
            names = sorted({w for t in panel["targets"] for w in re.findall(r"tonewall_[a-z0-9_]+", t["expr"])})
            ax.text(0.5, 0.58, "No data", transform=ax.transAxes, ha="center", va="center", color="#8e8e8e",
                    fontsize=13)
            ax.text(0.5, 0.4, "the gateway does not export " + ", ".join(names) + " yet", transform=ax.transAxes,
                    ha="center", va="center", color="#8e8e8e", fontsize=8.5)
            continue
        for i, (name, ts, vs) in enumerate(finite):
            ax.plot(ts, vs, color=PALETTE[i % len(PALETTE)], lw=1.5, label=name)
        peak = max(v for _, _, vs in finite for v in vs if math.isfinite(v))
        ax.set_ylim(0, peak * 1.4 if peak > 0 else 1.0)  # head room for the legend
        ax.legend(loc="upper left", fontsize=8, facecolor=PANEL_BG, edgecolor=GRID, labelcolor=TEXT,
                  ncol=min(6, len(finite)), framealpha=0.85, borderaxespad=0.2, handlelength=1.2)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=80, facecolor=GRAFANA_BG)
    plt.close(fig)


# ---------------------------------------------------------------- main


async def main_async(args: argparse.Namespace) -> int:
    dashboard = json.loads(DASHBOARD.read_text())
    work_dir = Path(tempfile.mkdtemp(prefix="tonewall-dashboard-"))
    run = Run(work_dir, args.traffic_s, args.seed)
    status = 1
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        try:
            await asyncio.wait_for(run.start(session), 60)
            await asyncio.wait_for(run.traffic(), args.traffic_s + 90)
            results = await asyncio.wait_for(run.query_panels(session, dashboard), 60)
            status = 0
        finally:
            await run.stop()
    empty = [k for k, v in results.items() if not k.startswith("_") and not v]
    print(f"targets with no series: {empty or 'none'}")
    for r in results["_rules"]:
        print(f"alert rule {r['name']}: health {r['health']}, state {r['state']} {r['lastError']}")
    print(f"scrape targets: {results['_targets']}")
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    states = ", ".join(s for _, _, s in run.captures)
    subtitle = (f"{datetime.datetime.fromtimestamp(run.start_s, datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
                f"{args.traffic_s:.0f} s, 5 calls (4 concurrent), captures: {states}; "
                f"Prometheus {SCRAPE_INTERVAL_S} s scrape, $__rate_interval={RATE_INTERVAL}; load {' '.join(load)}")
    results["_subtitle"] = subtitle
    (work_dir / "panels.json").write_text(json.dumps(results))
    render(dashboard, results, Path(args.out), subtitle)
    print(f"wrote {args.out}; raw query results in {work_dir / 'panels.json'}")
    if not args.keep:
        shutil.rmtree(work_dir, ignore_errors=True)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traffic-s", type=float, default=75.0, help="seconds of traffic (bounded 20-150)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "dashboard.png"))
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, TSDB, panels.json)")
    parser.add_argument("--render-only", metavar="PANELS_JSON", help="redraw from a kept run's panels.json")
    args = parser.parse_args()
    if args.render_only:
        results = json.loads(Path(args.render_only).read_text())
        render(json.loads(DASHBOARD.read_text()), results, Path(args.out), results.get("_subtitle", ""))
        return 0
    args.traffic_s = min(150.0, max(20.0, args.traffic_s))
    if shutil.which("prometheus") is None:
        print("prometheus is not installed (Debian package prometheus)", file=sys.stderr)
        return 2
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(asyncio.wait_for(main_async(args), RUN_DEADLINE_S))


if __name__ == "__main__":
    sys.exit(main())
