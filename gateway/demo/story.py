"""`tonewall demo`: a caller pays by card mid-call; the agent gets a token and never hears a digit.

The story runs `tonewall run` as a child process on loopback with a throwaway
data dir, then drives it the way a contact centre would: a caller endpoint dials
an agent endpoint through it, they talk, the agent starts a secure capture
through the HTTPS API (CA-verified), follows its progress over server-sent
events, and the caller keys a Visa test card in-band. Then it checks, from the
outside, what the design promises (DESIGN.md contract 3) and exits 0 only if
every check held. It never prints a card digit beyond the last four.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import numpy as np

from gateway.demo.endpoint import Endpoint
from gateway.demo.process import GatewayPorts, GatewayProcess, GatewayStartError
from gateway.demo.recording import Recording, multimon_available, multimon_tone_count
from gateway.demo.useragent import CallEnded, CallEstablished
from gateway.demo.voice import FRAME_SAMPLES, CallerVoice, KeyingTiming, SensitiveKeys

AGENT = "alice"
CALLER = "bob"
TEST_CARD_BRAND = "Visa"
TEST_CARD_LAST4 = "1111"
TEST_CVV = "123"
STORY_TIMEOUT_S = 150.0
CALL_SETUP_TIMEOUT_S = 8.0
CAPTURE_END_MARGIN_S = 20.0
MASK_QUIET_S = 2.0
"""DESIGN.md contract 4: masking stays on until the keypad has been quiet for 2 s."""
MIN_TALK_LEVEL_DBM0 = -30.0
"""The caller talks at -20 dBm0; the agent must hear at least this much of it."""
UNCHANGED_MIN_SHARE = 0.95
CHECK_ORDER = ("gateway started", "call set up", "api", "progress stream", "capture ended", "token arrived",
               "agent recording holds no DTMF", "multimon-ng agrees", "no RFC 4733 event reached the agent",
               "agent heard the caller outside the tones", "metrics", "call ended", "gateway stopped cleanly",
               "finished in time")


def _test_card_keys(today: datetime.date) -> SensitiveKeys:
    """4111 1111 1111 1111 (the Visa test number), an expiry two years out, CVV 123, each ended with #."""
    expiry = f"{today.month:02d}{(today.year + 2) % 100:02d}"
    return SensitiveKeys("4" + "1" * 15 + "#" + expiry + "#" + TEST_CVV + "#")


_CARD_RUN = re.compile(r"(?<!\d)\d{13,19}(?!\d)")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def redact(text: str) -> str:
    """Last line of defence for what the demo prints: any card-number-shaped run becomes [redacted]."""
    return _CARD_RUN.sub(lambda m: "[redacted]" if _luhn_ok(m.group()) else m.group(), text)


@dataclass(frozen=True)
class Check:
    """One promise checked from the outside."""

    name: str
    ok: bool | None
    """None: skipped (a second opinion that is not installed)."""
    detail: str


class StepFailed(Exception):
    """A step the rest of the story depends on did not happen; `check` names it."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(check)
        self.check = check
        self.detail = detail


class Display:
    """Readable progress: colour and a live line on a terminal, plain lines otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.dot = "\u2022" if self.tty and "utf" in str(getattr(out, "encoding", "") or "").lower() else "."
        self.step_no = 0

    def _c(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.tty else text

    def write(self, text: str) -> None:
        self.out.write(redact(text))
        self.out.flush()

    def line(self, text: str = "") -> None:
        self.write(text + "\n")

    def title(self, text: str) -> None:
        self.line(self._c("1", text))

    def step(self, text: str, total: int) -> None:
        self.step_no += 1
        self.line(self._c("1;36", f"[{self.step_no}/{total}]") + f" {text}")

    def detail(self, text: str) -> None:
        self.line("      " + text)

    def dim(self, text: str) -> str:
        return self._c("2", text)

    def check(self, check: Check) -> None:
        label = {True: self._c("1;32", "PASS"), False: self._c("1;31", "FAIL"), None: self._c("33", "SKIP")}[check.ok]
        self.line(f"  {label}  {check.name}: {check.detail}")


def _brand(value: Any) -> str:
    """Brand as a person writes it ("visa" -> "Visa")."""
    text = str(value or "?")
    return {"amex": "American Express", "mastercard": "Mastercard"}.get(text.lower(), text.capitalize())


FIELD_LABELS = {"pan": "card number  ", "expiry": "expiry       ", "cvv": "security code"}


class ProgressPrinter:
    """Turns capture events into masked progress: one dot per key, brand, validity, last four."""

    def __init__(self, display: Display) -> None:
        self.d = display
        self.open_field: str | None = None
        self.final: dict[str, Any] | None = None
        self.events = 0

    def close_line(self) -> None:
        """End a half-written progress line (the stream broke off)."""
        self._close("")

    def _close(self, text: str) -> None:
        if self.open_field is not None:
            self.d.write(text + "\n")
            self.open_field = None
        elif text.strip():
            self.d.detail(text.strip())

    def handle(self, kind: str, data: dict[str, Any]) -> None:
        self.events += 1
        if kind == "end":
            self._close("")
            self.final = data
            return
        typ = data.get("type")
        field = str(data.get("field", ""))
        if typ == "field_started":
            self._close("")
            self.open_field = field
            self.d.write("      " + FIELD_LABELS.get(field, field) + "  ")
        elif typ == "digit":
            if self.open_field is None:
                self.open_field = field
                self.d.write("      " + FIELD_LABELS.get(field, field) + "  ")
            self.d.write(self.d.dot)
        elif typ == "field_completed":
            if data.get("brand"):
                self._close(f"  {_brand(data['brand'])}, valid, ends {data.get('last4')}")
            else:
                self._close("  valid")
        elif typ == "field_rejected":
            self._close(f"  rejected ({data.get('reason')}), {data.get('attempts_left')} attempts left")
        elif typ == "field_cleared":
            self._close("  cleared by the caller")
        elif typ == "state":
            self._close("")
            state = data.get("state")
            if state == "collecting":
                return
            if state == "tokenizing":
                self.d.detail("all fields valid; tokenizing through the embedded vault ...")
            elif state == "tokenized":
                self.d.detail(f"tokenized: {_brand(data.get('brand'))} ending {data.get('last4')}, token {data.get('token')}")
            else:
                self.d.detail(f"capture {state}: {data.get('reason')}")


# ---------------------------------------------------------------- the API, as an agent desktop uses it


class AgentDesktop:
    """The agent's HTTPS client: CA-verified TLS, a bearer token, JSON and server-sent events."""

    def __init__(self, base_url: str, ca_path: Path, token: str) -> None:
        context = ssl.create_default_context(cafile=str(ca_path))  # verification stays on
        self.base_url = base_url
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context),
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30),
        )

    async def close(self) -> None:
        await self._session.close()

    async def json(self, method: str, path: str, body: Any = None, expect: int = 200) -> dict[str, Any]:
        async with self._session.request(method, self.base_url + path, json=body) as resp:
            data = await resp.json(content_type=None)
            if resp.status != expect:
                reason = data.get("reason") if isinstance(data, dict) else None
                raise StepFailed("api", f"{method} {path} answered {resp.status} ({reason})")
            return data

    async def follow(self, capture_id: str, printer: ProgressPrinter) -> None:
        """GET /v1/captures/{id}/events until the stream ends (WHATWG server-sent events framing)."""
        async with self._session.get(f"{self.base_url}/v1/captures/{capture_id}/events",
                                     headers={"Accept": "text/event-stream"}) as resp:
            if resp.status != 200:
                raise StepFailed("progress stream", f"events answered {resp.status}")
            kind, data_lines = "message", []
            async for raw in resp.content:
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if data_lines:
                        printer.handle(kind, json.loads("\n".join(data_lines)))
                        if kind == "end":
                            return
                    kind, data_lines = "message", []
                elif line.startswith(":"):
                    continue
                elif line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data_lines.append(line[5:].lstrip())


# ---------------------------------------------------------------- metrics


@dataclass(frozen=True)
class MetricsSummary:
    packets_relayed: int
    packets_masked: int
    digits_inband: int
    processing_p99_s: float | None
    captures_tokenized: int


async def scrape_metrics(url: str) -> MetricsSummary:
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(url) as resp:
            text = await resp.text()
    relayed = masked = digits = tokenized = 0
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "tonewall_packets_total" and labels.get("outcome") == "relayed":
                relayed += int(value)
            elif name == "tonewall_packets_masked_total":
                masked += int(value)
            elif name == "tonewall_dtmf_digits_total" and labels.get("method") == "inband":
                digits += int(value)
            elif name == "tonewall_captures_total" and labels.get("outcome") == "tokenized":
                tokenized += int(value)
            elif name == "tonewall_packet_processing_seconds_bucket":
                buckets.append((float(labels["le"]), value))
    return MetricsSummary(relayed, masked, digits, _quantile(buckets, 0.99), tokenized)


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Upper bound of the histogram bucket holding quantile q."""
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    target = q * buckets[-1][1]
    return next(le for le, count in buckets if count >= target)


def _fmt_s(value_s: float | None) -> str:
    if value_s is None:
        return "n/a"
    if value_s == float("inf"):
        return "> 20 ms"
    return f"<= {value_s * 1e6:.0f} us" if value_s < 1e-3 else f"<= {value_s * 1e3:.1f} ms"


# ---------------------------------------------------------------- the story


class Story:
    """One run of the demo; `await run()` returns the exit status."""

    STEPS = 6

    def __init__(self, out: TextIO, *, keep: bool = False, seed: int | None = None) -> None:
        self.d = Display(out)
        self.keep = keep
        self.rng = np.random.default_rng(seed)
        self.checks: list[Check] = []
        self.work_dir = Path(tempfile.mkdtemp(prefix="tonewall-demo-"))
        self.gateway: GatewayProcess | None = None
        self.caller: Endpoint | None = None
        self.agent: Endpoint | None = None
        self.desktop: AgentDesktop | None = None
        self.token = ""
        self.capture_id = ""
        self.console_url = ""
        self.printer = ProgressPrinter(self.d)
        self.windows: dict[str, tuple[float, float]] = {}
        self.key_count = 0
        self.tone_packets: list[int] = []
        """Indexes of the caller's sent packets that carry any keyed-tone sample."""
        self.metrics: MetricsSummary | None = None

    async def run(self) -> int:
        d = self.d
        t0 = time.monotonic()
        d.title("Tonewall demo: a caller pays by card while talking to an agent; the agent never hears the digits.")
        try:
            await asyncio.wait_for(self._play(), STORY_TIMEOUT_S)
        except StepFailed as exc:
            self.checks.append(Check(exc.check, False, exc.detail))
        except asyncio.TimeoutError:
            self.checks.append(Check("finished in time", False, f"the story took over {STORY_TIMEOUT_S:.0f} s"))
        except (aiohttp.ClientError, ssl.SSLError, OSError) as exc:
            self.checks.append(Check("api", False, f"the agent API could not be reached: {type(exc).__name__}"))
        finally:
            await self._tear_down()
        self._check_recordings()
        d.step("Checks", self.STEPS)
        order = {name: i for i, name in enumerate(CHECK_ORDER)}
        for check in sorted(self.checks, key=lambda c: order.get(c.name, -1)):
            d.check(check)
        if self.console_url:
            d.line(f"Console: {self.console_url} (the agent's web console; it served this call while the demo ran)")
        failed = [c.name for c in self.checks if c.ok is False]
        if self.keep or failed:
            d.line(f"Kept: {self.work_dir} (gateway.log, data/, agent-recording.wav); "
                   f"`tonewall run --data-dir {self.work_dir / 'data'}` and `tonewall token issue --role agent "
                   f"--agent {AGENT} --data-dir {self.work_dir / 'data'}` reuse it")
        else:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        elapsed = time.monotonic() - t0
        if failed or not self.checks:
            d.line(f"FAILED: {', '.join(failed) or 'no checks ran'} ({elapsed:.1f} s)")
            return 1
        held = sum(1 for c in self.checks if c.ok)
        d.line(f"All {held} checks held ({elapsed:.1f} s).")
        return 0

    async def _play(self) -> None:
        d = self.d
        loop = asyncio.get_running_loop()

        d.step("Starting the gateway (tonewall run) on loopback with a temporary data dir", self.STEPS)
        self.agent = await Endpoint.open(AGENT, CallerVoice(self.rng, noise_dbm0=-50.0))
        self.caller = await Endpoint.open(CALLER, CallerVoice(self.rng, noise_dbm0=-55.0))
        self.gateway = gw = GatewayProcess(self.work_dir, self.agent.uri, GatewayPorts.pick())
        started = loop.time()
        try:
            await gw.start()
        except GatewayStartError as exc:
            raise StepFailed("gateway started", str(exc)) from None
        d.detail(f"listening after {loop.time() - started:.1f} s: SIP udp {gw.sip_uri}, RTP {gw.ports.rtp_low}-"
                 f"{gw.ports.rtp_high}, next hop = the agent endpoint {self.agent.uri}")
        for part, what in (("api", "agent API"), ("metrics", "metrics"), ("vault", "embedded vault")):
            if not gw.has(part):
                raise StepFailed("gateway started", f"the listening line names no {what}: {gw.listen_line}")
        d.detail(f"agent API {gw.api_url} (TLS from the demo CA {gw.ca_path.name}), metrics {gw.metrics_url}")

        d.step(f"The caller ({CALLER}) dials the agent ({AGENT}) through the gateway", self.STEPS)
        self.caller.call(f"sip:{AGENT}@127.0.0.1:{gw.ports.sip}", gw.sip_uri)
        for who, ep in (("caller", self.caller), ("agent", self.agent)):
            try:
                event = await ep.wait_event(CALL_SETUP_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise StepFailed("call set up", f"the {who} saw no answer in {CALL_SETUP_TIMEOUT_S:.0f} s") from None
            if not isinstance(event, CallEstablished):
                raise StepFailed("call set up", f"the {who} got {event}")
        media = self.caller.ua.media if self.caller.ua else None
        d.detail(f"answered; {media.codec if media else '?'} at 20 ms, media anchored on the gateway "
                 f"(caller -> {media.remote_rtp[1] if media and media.remote_rtp else '?'})")
        talk_start = loop.time()
        self.caller.voice.talk(2.5)
        d.detail("they talk: \"Hello, I'd like to pay my bill\" (2.5 s of the caller's voice)")

        self.token = self._mint_token(gw)
        self.desktop = AgentDesktop(gw.api_url, gw.ca_path, self.token)
        calls = await self._wait_for_call()
        call_id = calls[0]["call_id"]
        while not self.caller.voice.idle:
            await asyncio.sleep(0.05)
        self.windows["before the capture"] = (talk_start + 0.1, loop.time())

        d.step("The agent starts a secure capture through the API", self.STEPS)
        d.detail(f"agent token minted from the data dir's development key; GET /v1/calls lists {len(calls)} "
                 f"call(s), {call_id} with agent {calls[0].get('agent')}")
        capture_start = loop.time()
        created = await self.desktop.json("POST", f"/v1/calls/{call_id}/captures",
                                          {"fields": ["pan", "expiry", "cvv"]}, expect=201)
        self.capture_id = str(created.get("capture_id", ""))
        if not self.capture_id:
            raise StepFailed("api", "the capture answer carries no capture_id")
        self.console_url = gw.api_url + "/"
        d.detail(f"console for the agent: {self.console_url}")
        d.detail(f"POST /v1/calls/{call_id}/captures -> 201, capture {self.capture_id}; following its events")
        follow = asyncio.ensure_future(self.desktop.follow(self.capture_id, self.printer))

        d.step(f"The caller keys a {TEST_CARD_BRAND} test card ending {TEST_CARD_LAST4}, an expiry in the future "
               f"and a security code, each ended with #", self.STEPS)
        await asyncio.sleep(0.6)  # the caller listens to the prompt
        keys = _test_card_keys(datetime.date.today())
        self.key_count = len(keys)
        before = self.caller.voice.samples_sent
        queued_at = loop.time()
        spans = self.caller.voice.key(keys, KeyingTiming())
        keys.wipe()
        self.tone_packets = sorted({i for span in spans
                                    for i in range(span.start_sample // FRAME_SAMPLES,
                                                   (span.end_sample - 1) // FRAME_SAMPLES + 1)})
        first_tone_s = queued_at + (spans[0].start_sample - before) / 8000.0
        last_tone_s = queued_at + (spans[-1].end_sample - before) / 8000.0
        self.windows["keying"] = (first_tone_s - 0.2, last_tone_s + 0.3)
        budget = (last_tone_s - loop.time()) + CAPTURE_END_MARGIN_S
        try:
            await asyncio.wait_for(asyncio.shield(follow), budget)
        except asyncio.TimeoutError:
            follow.cancel()
            self.printer.close_line()
            raise StepFailed("capture ended", f"no end event within {budget:.0f} s of keying") from None
        self.windows["capture"] = (capture_start, last_tone_s + MASK_QUIET_S)

        d.step("The caller says thanks and hangs up", self.STEPS)
        await asyncio.sleep(max(0.0, last_tone_s + MASK_QUIET_S + 0.5 - loop.time()))
        thanks_start = loop.time()
        self.caller.voice.talk(1.5)
        while not self.caller.voice.idle:
            await asyncio.sleep(0.05)
        self.windows["after the capture"] = (thanks_start + 0.1, loop.time())
        view = await self.desktop.json("GET", f"/v1/captures/{self.capture_id}")
        self._check_token(view)
        self.metrics = await self._scrape(gw)
        self.caller.hang_up()
        try:
            ended = await self.caller.wait_event(5.0)
        except asyncio.TimeoutError:
            ended = None
        if not isinstance(ended, CallEnded):
            self.checks.append(Check("call ended", False, f"BYE got {ended}"))

    def _mint_token(self, gw: GatewayProcess) -> str:
        """What `tonewall token issue --role agent --agent alice --data-dir ...` prints."""
        from gateway.api.auth import issue_token, load_or_create_dev_key

        key = load_or_create_dev_key(gw.data_dir)
        return issue_token(key, role="agent", subject=AGENT, agent=AGENT, now=time.time(), ttl_s=900)

    async def _wait_for_call(self) -> list[dict[str, Any]]:
        assert self.desktop is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while True:
            calls = (await self.desktop.json("GET", "/v1/calls")).get("calls", [])
            mine = [c for c in calls if c.get("agent") == AGENT]
            if mine:
                return mine
            if loop.time() > deadline:
                raise StepFailed("api", f"GET /v1/calls lists no call for agent {AGENT}")
            await asyncio.sleep(0.2)

    def _check_token(self, view: dict[str, Any]) -> None:
        brand = str(view.get("brand") or "")
        ok = (view.get("state") == "tokenized" and brand.lower() == TEST_CARD_BRAND.lower()
              and view.get("last4") == TEST_CARD_LAST4 and bool(view.get("token")))
        detail = (f"GET /v1/captures/{self.capture_id}: state {view.get('state')}, brand {view.get('brand')}, "
                  f"last four {view.get('last4')}, token {view.get('token')}")
        if view.get("reason"):
            detail += f", reason {view.get('reason')}"
        self.checks.append(Check("token arrived", ok, detail))

    async def _scrape(self, gw: GatewayProcess) -> MetricsSummary | None:
        try:
            summary = await scrape_metrics(gw.metrics_url)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            self.checks.append(Check("metrics", False, f"scrape of {gw.metrics_url} failed: {type(exc).__name__}"))
            return None
        ok = summary.packets_relayed > 0 and summary.processing_p99_s is not None
        self.checks.append(Check("metrics", ok, (
            f"{summary.packets_relayed} packets relayed, {summary.digits_inband} keys detected in-band, "
            f"{summary.packets_masked} caller packets masked, per-packet processing p99 "
            f"{_fmt_s(summary.processing_p99_s)}, {summary.captures_tokenized} capture(s) tokenized")))
        return summary

    async def _tear_down(self) -> None:
        for ep in (self.caller, self.agent):
            if ep is not None:
                ep.stop_audio()
        if self.desktop is not None:
            await self.desktop.close()
        if self.gateway is not None:
            code = await self.gateway.stop()
            if self.gateway.listen_line:
                self.checks.append(Check("gateway stopped cleanly", code == 0, f"tonewall run exited {code} on SIGTERM"))
        for ep in (self.caller, self.agent):
            if ep is not None:
                ep.close()

    # ---------------------------------------------------------------- checks on what the agent heard

    def _check_recordings(self) -> None:
        agent, caller = self.agent, self.caller
        if agent is None or caller is None or "capture" not in self.windows:
            return
        heard, sent = agent.received, caller.sent
        heard.write_wav(self.work_dir / "agent-recording.wav")
        found = heard.tones()
        start, end = self.windows["keying"]
        control = len(sent.tones(start, end))
        in_capture = [t for t in found if self.windows["capture"][0] <= t.at_s <= self.windows["capture"][1]]
        # "No decoder finds a digit" is not proof (DESIGN.md): also count tone-bearing packets that reached the
        # agent bit for bit, which catches an onset the masker let through whatever a decoder makes of it.
        received = set(heard.payloads)
        tone_payloads = [sent.payloads[i] for i in self.tone_packets if i < len(sent.payloads)]
        leaked = sum(1 for p in tone_payloads if p in received)
        self.checks.append(Check(
            "agent recording holds no DTMF",
            not found and control == self.key_count and leaked == 0 and len(tone_payloads) > 0,
            f"dtmf.detector finds {len(found)} key(s) in the agent's recording ({len(in_capture)} in the capture "
            f"window); {leaked} of {len(tone_payloads)} tone-bearing packets reached the agent unchanged; "
            f"control: {control} of {self.key_count} keys in the caller's own audio"))
        if multimon_available():
            try:
                agent_count = multimon_tone_count(heard.samples())
                caller_count = multimon_tone_count(sent.samples(start, end))
            except (subprocess.SubprocessError, OSError) as exc:
                self.checks.append(Check("multimon-ng agrees", False, f"multimon-ng failed: {type(exc).__name__}"))
                agent_count = caller_count = None
            if agent_count is not None and caller_count is not None:
                self.checks.append(Check(
                    "multimon-ng agrees", agent_count == 0 and caller_count >= self.key_count // 2,
                    f"{agent_count} key(s) in the agent's recording; control: {caller_count} in the caller's audio"))
        else:
            self.checks.append(Check("multimon-ng agrees", None, "multimon-ng or sox not installed"))
        self.checks.append(Check(
            "no RFC 4733 event reached the agent", heard.telephone_events == 0,
            f"{heard.telephone_events} telephone-event packet(s) among {len(heard) + heard.telephone_events} received"))
        self.checks.append(self._heard_check(heard, sent))

    def _heard_check(self, heard: Recording, sent: Recording) -> Check:
        """Outside the capture the agent hears the caller, bit for bit (DESIGN.md contract 2)."""
        sent_payloads = set(sent.payloads)
        parts, ok = [], True
        for name in ("before the capture", "after the capture"):
            if name not in self.windows:
                continue
            start, end = self.windows[name]
            level = heard.level_dbm0(start, end)
            chosen = [p for p, t in zip(heard.payloads, heard.arrivals_s) if start <= t < end]
            same = sum(1 for p in chosen if p in sent_payloads) / len(chosen) if chosen else 0.0
            ok = ok and level >= MIN_TALK_LEVEL_DBM0 and same >= UNCHANGED_MIN_SHARE
            parts.append(f"{name}: {level:.1f} dBm0, {same:.0%} of packets unchanged")
        if len(parts) < 2:
            ok = False
        return Check("agent heard the caller outside the tones", ok, "; ".join(parts) or "no talk windows")


def run_story(out: TextIO = sys.stdout, *, keep: bool = False, seed: int | None = None) -> int:
    """Run the demo on a fresh uvloop (as the gateway does) and return the exit status."""
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(Story(out, keep=keep, seed=seed).run())
