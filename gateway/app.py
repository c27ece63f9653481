"""Wiring for `tonewall run`: config -> media engine, B2BUA, SIP transports, then the add-ons.

One process, one uvloop event loop. The order matters: the media controller
exists before the B2BUA (which opens media per call), SIP listens last so no
INVITE arrives before everything it needs. Add-ons (agent API, metrics, vault,
capture service) plug in as `Extension`s: each gets the running `Gateway` and is
started after SIP and stopped before it. Stopping BYEs every active call first.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import logging
import os
import resource
import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

# DESIGN.md: BLAS pinned to one thread, set before numpy loads it. The DTMF banks' matrix
# products are small; BLAS threads would only contend with the event loop for the cores.
for _blas_var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_blas_var, "1")

from dtmf.detector import DetectorBank
from dtmf.masker import MaskerBank, MaskMode, accelerated as masker_accelerated
from gateway.b2bua import (
    B2bua, B2buaConfig, CallAnswered, CallEnded, CallStarted, LawsDiffered, MessageRejected, UnofferedCodecAccepted,
)
from gateway.config import Config, NextHop, parse_next_hop
from gateway.media.relay import Relay
from gateway.sip.framing import StreamFramer
from gateway.sip.message import Limits
from gateway.sip.transaction import Peer
from gateway.transport.rtp import AcceleratorUnavailable, RtpMediaController
from gateway.transport.sip import SipTransport
from gateway.vault.keyring import KeyringError

log = logging.getLogger("tonewall")

DEFAULT_NEXT_HOP = "sip:127.0.0.1:5080"
"""Used when no next hop is configured, so that `tonewall run` starts on embedded defaults."""
WATCHDOG_INTERVAL_S = 1.0
SHUTDOWN_GRACE_S = 2.0


class Extension(Protocol):
    """An add-on started after SIP is up (API, metrics, vault, capture); `name` appears in the listen line."""

    name: str

    async def start(self, gateway: Gateway) -> str | None:
        """Start; return a short "name=address" for the listening log line, or None."""

    async def stop(self) -> None: ...


PR_SET_DUMPABLE = 4


def disable_core_dumps() -> None:
    """DESIGN.md card data rules: a core dump (or a ptrace by a same-user process) would expose card digits.

    RLIMIT_CORE 0 stops ordinary dumps; PR_SET_DUMPABLE 0 also stops dumps piped to a
    core_pattern handler and same-user ptrace attaches.
    """
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the rlimit is what we have
        pass


def prepare_data_dir(path: str) -> Path:
    """The only place the gateway writes; private to the service user."""
    data_dir = Path(path)
    if data_dir.exists() and not data_dir.is_dir():
        # mkdir would say only "File exists": say which path and what is wrong with it.
        raise NotADirectoryError(errno.ENOTDIR, "data dir exists and is not a directory", str(data_dir))
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return data_dir


def startup_error(exc: OSError) -> str:
    """One log line for a start-up failure, naming the path at fault when the OS gives one."""
    what = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"tonewall cannot start: {exc.filename}: {what}"
    return f"tonewall cannot start: {what}"


@dataclass
class GatewayStats:
    """Plain counters the metrics exporter reads at scrape time."""

    calls_started: int = 0
    calls_answered: int = 0
    calls_ended: Counter[str] = field(default_factory=Counter)
    sip_rejected: Counter[str] = field(default_factory=Counter)
    media_events: int = 0
    calls_transcoded: int = 0
    """Calls whose legs ended up on different G.711 laws (converted, so not bit-exact)."""
    unoffered_codecs: Counter[str] = field(default_factory=Counter)
    """Answers in a G.711 law we did not offer, by leg (accepted leniently)."""
    watchdog_hangups: Counter[str] = field(default_factory=Counter)


class Gateway:
    """The running gateway: `await start()`, then `await stop()` (or `run()` until a signal)."""

    def __init__(self, config: Config, extensions: list[Extension] | None = None) -> None:
        self.config = config
        self.extensions: list[Extension] = list(extensions or [])
        self.stats = GatewayStats()
        self.data_dir: Path | None = None
        self.media: RtpMediaController | None = None
        self.b2bua: B2bua | None = None
        self.sip: SipTransport | None = None
        self.media_event_handlers: list[Any] = []
        """Callables taking each relay event (digits, latching): the capture service plugs in here."""
        self.call_event_handlers: list[Any] = []
        """Callables taking each B2BUA event (CallStarted, CallEnded, ...)."""
        self._answered_at: dict[str, float] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self._stopping = False
        self.listen_line = ""

    # ---- lifecycle

    async def start(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        self.data_dir = prepare_data_dir(config.data_dir)
        low, high = config.media.rtp_ports
        # The DTMF hook: every caller packet goes through the detector bank; the masker
        # bank takes over a caller leg while a capture is on.
        relay = Relay(detector=DetectorBank(), masker=MaskerBank(MaskMode(config.capture.mask_mode)),
                      strict=config.media.strict_source)
        fast = {"auto": None, "on": True, "off": False}[config.media.accelerator]
        self.media = RtpMediaController(config.media.address, low, high, relay=relay,
                                        on_event=self._on_media_event, loop=loop, fast_path=fast)
        log.info("media relay: C accelerator %s; masker quiet step in C %s", "on" if self.media.fast_path else "off",
                 "on" if masker_accelerated() else "off (not built)")
        hop = config.sip.next_hop
        if hop is None:
            hop = parse_next_hop(DEFAULT_NEXT_HOP)
            log.warning("no next hop configured: calls go to %s (set --next-hop or sip.next_hop)", hop.uri)
        self.next_hop: NextHop = hop

        limits = Limits(max_message_bytes=config.sip.max_message_bytes)
        client_ssl, server_ssl = self._tls_contexts()
        # The B2BUA needs our bound ports for Via/Contact: bind first, then attach the core.
        self.sip = SipTransport(_NoCore(), framer_factory=lambda: StreamFramer(limits),
                                max_message_bytes=config.sip.max_message_bytes,
                                on_event=self._on_call_event, client_ssl=client_ssl,
                                server_ssl=server_ssl, peer_type=Peer)
        listen = config.sip.listen
        tls = config.sip.tls_listen
        await self.sip.start(udp=(listen.host, listen.port), tcp=(listen.host, listen.port),
                             tls=(tls.host, tls.port) if tls else None)
        ports = tuple((kind, addr[1]) for kind, addr in self.sip.addresses.items())
        local_host = config.sip.public_address or listen.host
        self.b2bua = B2bua(B2buaConfig(next_hop=hop.uri, local_host=local_host, local_ports=ports,
                                       limits=limits, dialog_source_check=config.sip.dialog_source_check,
                                       srtp_allowed=config.media.srtp != "off"),
                           self.media)
        self.sip.core = self.b2bua
        self._watchdog = loop.create_task(self._watch_calls())

        parts = [f"sip=udp+tcp:{_addr(self.sip.addresses['udp'])}"]
        if "tls" in self.sip.addresses:
            parts.append(f"sips=tls:{_addr(self.sip.addresses['tls'])}")
        parts.append(f"rtp={config.media.address}:{low}-{high}")
        parts.append(f"next_hop={hop.uri}")
        for extension in self.extensions:
            where = await extension.start(self)
            if where:
                parts.append(where)
        self.listen_line = "tonewall listening " + " ".join(parts)
        log.info("%s", self.listen_line)

    async def stop(self, reason: str = "shutdown") -> None:
        """BYE every active call, give the BYEs a moment, then close everything."""
        if self._stopping:
            return
        self._stopping = True
        loop = asyncio.get_running_loop()
        if self.b2bua is not None and self.sip is not None:
            calls = self.b2bua.calls
            for call in calls:
                try:
                    self.b2bua.hangup(call.call_id, reason, loop.time())
                except Exception as exc:  # one call must not keep the others up
                    log.warning("hangup failed: %s", type(exc).__name__)
            self.sip.pump()
            if calls:
                await asyncio.sleep(min(0.5, SHUTDOWN_GRACE_S))
        for extension in reversed(self.extensions):
            try:
                await asyncio.wait_for(extension.stop(), SHUTDOWN_GRACE_S)
            except Exception as exc:
                log.warning("%s did not stop cleanly: %s", extension.name, type(exc).__name__)
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.sip is not None:
            await self.sip.close()
        if self.media is not None:
            self.media.close()
        log.info("tonewall stopped %s", json.dumps(self.counters(), sort_keys=True))

    async def run(self) -> None:
        """Start, then serve until SIGTERM or SIGINT."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            # What start-up built (modules, tables, the numpy banks) lives as long as the process:
            # kept out of the cyclic collector, a full collection no longer walks it while the
            # audio loop waits (~10 ms each time on this code base).
            gc.freeze()
            await stop.wait()
        finally:
            await self.stop()

    # ---- events

    def _on_call_event(self, event: Any) -> None:
        now = asyncio.get_running_loop().time()
        if isinstance(event, CallStarted):
            self.stats.calls_started += 1
            self._apply_mask_policy(event.call_id, event.agent, now)
        elif isinstance(event, CallAnswered):
            self.stats.calls_answered += 1
            self._answered_at[event.call_id] = now
        elif isinstance(event, CallEnded):
            self.stats.calls_ended[event.reason] += 1
            self._answered_at.pop(event.call_id, None)
        elif isinstance(event, MessageRejected):
            self.stats.sip_rejected[event.reason] += 1
        elif isinstance(event, LawsDiffered):
            self.stats.calls_transcoded += 1
            log.warning("call %s: caller on %s, agent on %s: audio converted between laws (not bit-exact)",
                        event.call_id, event.caller_codec, event.agent_codec)
        elif isinstance(event, UnofferedCodecAccepted):
            self.stats.unoffered_codecs[event.leg] += 1
        for handler in self.call_event_handlers:
            handler(event)

    def mask_policy(self, agent_user: str | None) -> str:
        """`[capture] mask`, unless the route chosen by the Request-URI user overrides it."""
        route = self.config.route_for(agent_user)
        return route.mask if route is not None and route.mask else self.config.capture.mask

    def _apply_mask_policy(self, call_id: str, agent_user: str | None, now: float) -> None:
        """mask = "always": the relay masks the caller from the first packet (before any answer)."""
        if self.mask_policy(agent_user) != "always" or self.media is None:
            return
        media = self.media.calls.get(call_id)
        if media is None:
            return
        try:
            media.set_mask_always(True)
        except ValueError:  # CaptureUnavailable: fail closed
            log.warning("call %s hung up: mask always, but its audio cannot be masked", call_id)
            if self.b2bua is not None and self.sip is not None:
                self.b2bua.hangup(call_id, "masking unavailable", now)
                asyncio.get_running_loop().call_soon(self.sip.pump)

    def _on_media_event(self, event: Any) -> None:
        self.stats.media_events += 1
        for handler in self.media_event_handlers:
            handler(event)

    async def _watch_calls(self) -> None:
        """Media and session timeouts end both legs (issue 3, item 3)."""
        loop = asyncio.get_running_loop()
        media_timeout_s = self.config.sip.media_timeout_s
        session_timeout_s = self.config.sip.session_timeout_s
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            if self.b2bua is None or self.media is None or self.sip is None:
                continue
            now = loop.time()
            for call_id, answered_at in list(self._answered_at.items()):
                media = self.media.calls.get(call_id)
                last = media.last_packet_s if media is not None else None
                reason = None
                if now - answered_at > session_timeout_s:
                    reason = "session timeout"
                elif now - max(answered_at, last or answered_at) > media_timeout_s:
                    reason = "media timeout"
                if reason is not None:
                    self.stats.watchdog_hangups[reason] += 1
                    self._answered_at.pop(call_id, None)
                    try:
                        self.b2bua.hangup(call_id, reason, now)
                    except Exception as exc:
                        log.warning("hangup failed: %s", type(exc).__name__)
            self.sip.pump()

    def _tls_contexts(self) -> tuple[Any, Any]:
        """Client context always (outbound TLS verifies the peer unless configured off); server if TLS listens."""
        import ssl

        from gateway import pki

        sip = self.config.sip
        if sip.tls_verify_peer:
            client = pki.client_ssl_context(sip.tls_ca_file)
        else:
            client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            client.minimum_version = ssl.TLSVersion.TLSv1_2
            client.check_hostname = False
            client.verify_mode = ssl.CERT_NONE
        server = None
        if sip.tls_listen is not None and sip.tls_cert_file and sip.tls_key_file:
            server = pki.server_ssl_context(pki.CertFiles(Path(sip.tls_cert_file), Path(sip.tls_key_file)))
        return client, server

    def counters(self) -> dict[str, Any]:
        """Snapshot for metrics and tests: SIP drops by reason, calls, media stats."""
        sip = self.sip
        stats = self.media.relay.stats if self.media is not None else None
        return {
            "sip_received": sip.received if sip else 0,
            "sip_sent": sip.sent if sip else 0,
            "sip_drops": dict(sip.drops) if sip else {},
            "sip_rejected": dict(self.stats.sip_rejected),
            "calls_active": len(self.b2bua.calls) if self.b2bua else 0,
            "calls_started": self.stats.calls_started,
            "calls_ended": dict(self.stats.calls_ended),
            "rtp_packets": {"/".join(k): v for k, v in stats.packets_total().items()} if stats else {},
            "rtp_drops": {"/".join(k): v for k, v in stats.drops_total().items()} if stats else {},
        }


class _NoCore:
    """Placeholder core for the moment between binding the sockets and creating the B2BUA."""

    def receive(self, data: bytes, source: Any, now: float) -> None:
        raise RuntimeError("gateway is starting")

    def messages_to_send(self) -> list[tuple[bytes, Any]]:
        return []

    def next_event(self) -> None:
        return None

    def handle_timer(self, now: float) -> None:
        return None

    def get_timer(self) -> None:
        return None


def _addr(addr: tuple[str, int]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def configure_logging(level: int = logging.INFO) -> None:
    """One line per record on stderr; nothing is written to disk by logging."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run(config: Config, extensions: list[Extension] | None = None) -> int:
    """`tonewall run` after config is loaded: uvloop, no core dumps, serve until a signal."""
    disable_core_dumps()
    configure_logging(getattr(logging, os.environ.get("TONEWALL_LOG_LEVEL", "INFO").upper(), logging.INFO))
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        loop_factory = None
    gateway = Gateway(config, extensions)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(gateway.run())
    except OSError as exc:
        log.error("%s", startup_error(exc))
        return 1
    except AcceleratorUnavailable as exc:
        log.error("media.accelerator = \"on\": %s", exc)
        return 1
    except KeyringError as exc:  # the vault's KEK cannot open its records: no token made under it
        log.error("tonewall cannot start: vault: %s", exc)
        return 1
    return 0
