"""The add-ons `tonewall run` starts after SIP: vault, secure capture, agent API, metrics.

Each is an `app.Extension`. The order in `default_extensions` is the start order:
the vault first (the tokenizer needs it), then the capture service (it hooks the
relay's digit events, the B2BUA's INFO policy and call ends), then the API (it
serves the capture service) and metrics (they read everyone's counters).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import pki
from gateway.audit import AuditLog, load_or_create_key
from gateway.b2bua import CallEnded, InfoDtmfReceived
from gateway.capture.machine import CardEntryConfig, parse_fields
from gateway.capture.service import CaptureService
from gateway.config import STRIPE_KEY_ENV, Config
from gateway.media.relay import (
    DIRECTION_NAMES, InBandDigitDetected, InBandDigitEnded, TelephoneEventDetected, TelephoneEventEnded,
)
from gateway.metrics import GcPauseMonitor, LoopLagMonitor, MetricSpec, build_registry, start_metrics_server
from gateway.stats import SLOW_BOUNDS_S, Histogram
from gateway.tokenize.tokenizer import Tokenizer

log = logging.getLogger("tonewall")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class VaultExtension:
    """The embedded tokenization vault (processor kind "vault"), over mTLS on loopback."""

    name = "vault"

    def __init__(self) -> None:
        self.vault: Any = None
        self.url = ""

    async def start(self, gateway: Any) -> str | None:
        from gateway.vault.server import VaultSettings, start_vault

        config: Config = gateway.config
        listen = config.vault.listen
        if config.vault.kek_env:
            # The keyring reads its keys from TONEWALL_VAULT_KEKS; vault.kek_env names another variable.
            from gateway.vault.keyring import KEK_ENV

            os.environ[KEK_ENV] = os.environ[config.vault.kek_env]
        settings = VaultSettings(
            data_dir=Path(config.data_dir), host=listen.host, port=listen.port,
            kek_file=Path(config.vault.kek_file) if config.vault.kek_file else None,
        )
        self.vault = await start_vault(settings)
        self.url = f"https://{_url_host(listen.host)}:{self.vault.port}"
        return f"vault={self.url}"

    async def stop(self) -> None:
        if self.vault is not None:
            await self.vault.close()


def build_tokenizer(config: Config, vault_url: str | None) -> Tokenizer:
    """The processor adapter named by `[processor] kind`."""
    from gateway.tokenize.client import RetryPolicy

    processor = config.processor
    retry = RetryPolicy(attempts=processor.retries + 1, attempt_timeout_s=processor.timeout_s,
                        total_timeout_s=processor.timeout_s * (processor.retries + 1))
    if processor.kind == "vault":
        from gateway.tokenize.vault import VaultTokenizer

        client = pki.issue_client_cert(config.data_dir, "gateway", "gateway")
        ca = pki.ensure_ca(config.data_dir).cert_path
        url = processor.url or vault_url
        if not url:
            raise ValueError("processor kind vault needs the embedded vault or processor.url")
        return VaultTokenizer(url, pki.client_ssl_context(ca, cert=client), policy=retry)
    if processor.kind == "https-json":
        from gateway.tokenize.https_json import HttpsJsonTokenizer

        cert = None
        if processor.client_cert_file and processor.client_key_file:
            cert = pki.CertFiles(Path(processor.client_cert_file), Path(processor.client_key_file))
        return HttpsJsonTokenizer(processor.url, ca_file=processor.ca_file, client_cert=cert, policy=retry)
    if processor.kind == "stripe":
        from gateway.tokenize.stripe import StripeTokenizer, load_secret

        kwargs: dict[str, Any] = {"policy": retry}
        if processor.url:
            kwargs["base_url"] = processor.url
        if processor.ca_file:
            kwargs["ca_file"] = processor.ca_file
        secret = load_secret(processor.api_key_file, env_name=processor.api_key_env or STRIPE_KEY_ENV)
        return StripeTokenizer(secret, **kwargs)
    raise ValueError(f"unknown processor kind {processor.kind!r}")


@dataclass(frozen=True)
class CallInfo:
    """What the API and the capture service know of a call."""

    call_id: str
    agent: str
    caller: str
    state: str
    started_at: float
    codec: str | None


class CallDirectory:
    """The B2BUA's calls as the API and capture service see them (with the negotiated codec)."""

    def __init__(self, gateway: Any) -> None:
        self._gateway = gateway
        self._wall_minus_loop_s: float | None = None
        """Unix time minus loop time, taken once: a call's `started_at` must not move between requests."""

    def _wall_time(self, loop_time: float) -> float:
        """Calls carry loop time; the API reports Unix time."""
        if self._wall_minus_loop_s is None:
            self._wall_minus_loop_s = time.time() - asyncio.get_running_loop().time()
        return loop_time + self._wall_minus_loop_s

    def _info(self, call: Any) -> CallInfo:
        relay_call = self._gateway.media.relay.calls.get(call.call_id) if self._gateway.media else None
        media = relay_call.caller.media if relay_call is not None else None
        started = self._wall_time(call.started_at)
        return CallInfo(call.call_id, call.agent, call.caller, call.state.value, started,
                        media.codec if media is not None else None)

    def list_calls(self) -> list[CallInfo]:
        b2bua = self._gateway.b2bua
        return [self._info(c) for c in b2bua.calls] if b2bua is not None else []

    def get_call(self, call_id: str) -> CallInfo | None:
        b2bua = self._gateway.b2bua
        call = b2bua.call(call_id) if b2bua is not None else None
        return self._info(call) if call is not None else None


SAFE_INFO_TYPES = frozenset({"application/media_control+xml"})
"""Caller INFO bodies relayed while masking (RFC 5168 picture fast update: no keypad in it). Every
other caller INFO with a body is then answered 200 and withheld: keypad digits come in many vendor
forms (dtmf-relay, x-dtmf-relay, dtmf, x-dtmf, Nortel's digits, inside multipart bodies), and one
the gateway does not know must not reach the agent (fail closed)."""


class MaskingBridge:
    """The capture service's switch on the relay (and the caller's feedback tones).

    Policy `mask = "always"` is applied by the app and the relay (the caller leg is masked
    from its first packet); here it only decides that INFO DTMF on such a call is withheld.
    """

    def __init__(self, gateway: Any) -> None:
        self._gateway = gateway

    def set_capture(self, call_id: str, on: bool) -> None:
        media = self._gateway.media
        if not on and call_id not in media.calls:
            # The B2BUA closes a call's media before it reports CallEnded: nothing is left to unmask.
            return
        media.set_capture(call_id, on)

    def _always(self, call_id: str) -> bool:
        call = self._gateway.b2bua.call(call_id) if self._gateway.b2bua is not None else None
        return call is not None and self._gateway.mask_policy(call.agent) == "always"

    def withholds_info(self, call_id: str, content_type: str | None, body: bytes, capturing: bool) -> bool:
        """RFC 6086: caller INFO during a capture (or on an always-masked call) is answered 200, not
        relayed, unless it has no body or one of `SAFE_INFO_TYPES`."""
        return bool(body) and content_type not in SAFE_INFO_TYPES and (capturing or self._always(call_id))

    def seconds_since_masked(self, call_id: str) -> float | None:
        """How long ago the relay's masker last changed the caller's audio (None: never, or no media)."""
        media = self._gateway.media
        since = getattr(media, "seconds_since_masked", None)
        if since is None or call_id not in getattr(media, "calls", {}):
            return None
        return since(call_id)

    def play_feedback(self, call_id: str, kind: str) -> None:
        """The caller hears the tone over the agent's audio; nothing once the call's media is gone."""
        media = self._gateway.media
        play = getattr(media, "play_feedback", None)
        if play is not None and call_id in getattr(media, "calls", {call_id: None}):
            play(call_id, kind)


class CaptureExtension:
    """The secure-capture service, fed by every DTMF path of every call."""

    name = "capture"

    def __init__(self, vault: VaultExtension | None) -> None:
        self._vault = vault
        self.service: CaptureService | None = None
        self.audit: AuditLog | None = None
        self.tokenizer: Tokenizer | None = None
        self.calls: CallDirectory | None = None

    async def start(self, gateway: Any) -> str | None:
        config: Config = gateway.config
        loop = asyncio.get_running_loop()
        if config.audit.path:
            path = config.audit_path()
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.audit = AuditLog(path, load_or_create_key(path.parent / "audit.key"))
        else:
            self.audit = AuditLog.open(config.data_dir)
        self.tokenizer = build_tokenizer(config, self._vault.url if self._vault else None)
        self.calls = CallDirectory(gateway)
        capture = config.capture
        entry = CardEntryConfig(fields=parse_fields(capture.fields), inter_digit_timeout_s=capture.inter_digit_timeout_s,
                                total_timeout_s=capture.total_timeout_s,
                                max_attempts=capture.max_attempts)
        masking = MaskingBridge(gateway)
        self.service = service = CaptureService(
            self.tokenizer, self.audit, self.calls, masking,
            clock=loop.time, entry_config=entry,
        )
        gateway.b2bua.info_policy = lambda call_id, body, ctype: not masking.withholds_info(
            call_id, ctype, body, service.capture_active(call_id))

        def on_media(event: Any) -> None:
            now = loop.time()
            if isinstance(event, InBandDigitDetected):
                service.on_digit(event.call_id, event.digit, "inband", now)
            elif isinstance(event, TelephoneEventDetected) and event.digit is not None:
                service.on_digit(event.call_id, event.digit, "rfc4733", now)
            elif isinstance(event, InBandDigitEnded):
                service.on_key_released(event.call_id, "inband", now)
            elif isinstance(event, TelephoneEventEnded):
                service.on_key_released(event.call_id, "rfc4733", now)

        def on_call(event: Any) -> None:
            if isinstance(event, InfoDtmfReceived):
                service.on_digit(event.call_id, event.digit, "info", loop.time())
            elif isinstance(event, CallEnded):
                service.on_call_ended(event.call_id)

        gateway.media_event_handlers.append(on_media)
        gateway.call_event_handlers.append(on_call)
        return None

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.close()
        if self.tokenizer is not None:
            await self.tokenizer.close()


class ApiExtension:
    """The agent API over HTTPS, with the development CA's certificate unless one is configured."""

    name = "api"

    def __init__(self, capture: CaptureExtension) -> None:
        self._capture = capture
        self.runner: Any = None
        self.app: Any = None
        self.port = 0

    async def start(self, gateway: Any) -> str | None:
        from gateway.api.auth import Authenticator
        from gateway.api.server import bound_port, create_app, start_api

        config: Config = gateway.config
        api = config.api
        if api.jwks_file:
            auth = Authenticator.for_jwks_file(api.jwks_file, audience=api.audience)
        elif api.jwt_public_key_file:
            auth = Authenticator.for_public_key_file(api.jwt_public_key_file, audience=api.audience)
        else:
            auth = Authenticator.for_data_dir(config.data_dir, audience=api.audience)
        if api.tls_cert_file and api.tls_key_file:
            cert = pki.CertFiles(Path(api.tls_cert_file), Path(api.tls_key_file))
        else:
            cert = pki.issue_server_cert(config.data_dir, "api", hosts=[api.listen.host])
        self.app = create_app(self._capture.service, self._capture.calls, auth, self._capture.audit,
                              ready=lambda: gateway.b2bua is not None)
        self.runner = await start_api(self.app, api.listen.host, api.listen.port,
                                      pki.server_ssl_context(cert))
        self.port = bound_port(self.runner)
        return f"api=https://{_url_host(api.listen.host)}:{self.port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class MetricsExtension:
    """Prometheus /metrics on its own port, read from plain counters at scrape time."""

    name = "metrics"

    def __init__(self, capture: CaptureExtension | None, api: ApiExtension | None) -> None:
        self._capture = capture
        self._api = api
        self.lag = LoopLagMonitor()
        self.gc = GcPauseMonitor()
        self.runner: Any = None
        self.registry: Any = None

    async def start(self, gateway: Any) -> str | None:
        config: Config = gateway.config
        self.lag.start(asyncio.get_running_loop())
        self.gc.start()
        self.registry = build_registry(metric_specs(gateway, self._capture, self._api, self.lag, self.gc))
        listen = config.metrics.listen
        self.runner = await start_metrics_server(self.registry, listen.host, listen.port)
        port = self.runner.addresses[0][1] if self.runner.addresses else listen.port
        return f"metrics=http://{_url_host(listen.host)}:{port}/metrics"

    async def stop(self) -> None:
        self.lag.stop()
        self.gc.stop()
        if self.runner is not None:
            await self.runner.cleanup()


DTMF_METHODS = ("inband", "rfc4733", "info")
SIP_METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "UPDATE")
SIP_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "6xx")
CAPTURE_OUTCOMES = ("tokenized", "failed", "cancelled", "refused")
TOKENIZATION_ERROR_KINDS = ("timeout", "rejected", "unavailable", "internal")
CALL_END_REASONS = ("caller hangup", "agent hangup", "cancelled", "ring timeout", "agent timeout", "no ACK",
                    "no common codec", "incompatible address", "session expired", "media timeout",
                    "session timeout")
"""Fixed reasons of `CallEnded` (b2bua.py, app.py's watchdog); `rejected NNN` appears on its first call."""
RTP_DROP_REASONS = ("short", "version", "payload_type", "unexpected_source", "no_destination",
                    "telephone_event", "send", "srtp_auth", "late")
SIP_REJECT_REASONS = ("SDP offer has no acceptable codec", "SDP answer has no acceptable codec",
                      "SDP address family is incompatible", "SIP Max-Forwards is zero",
                      "SIP in-dialog request from a foreign host", "no media ports free")
SIP_DROP_REASONS = ("udp_malformed", "udp_oversized", "udp_socket_error", "tcp_malformed", "tcp_idle_timeout",
                    "tcp_connection_limit")
AUTH_FAILURE_REASONS = ("missing bearer token", "malformed token", "bad signature", "token expired",
                        "token not yet valid", "token lifetime not allowed", "algorithm not allowed",
                        "unknown signing key", "unknown role", "missing claim", "wrong audience", "wrong issuer")
"""AuthFailed's fixed messages (api/auth.py)."""
HTTP_MALFORMED_KINDS = ("BadHttpMessage", "BadHttpMethod", "BadStatusLine", "LineTooLong", "InvalidHeader",
                        "InvalidURLError")
"""aiohttp's parser errors by type name (api/server.py ProtocolLog)."""


def metric_specs(gateway: Any, capture: CaptureExtension | None, api: ApiExtension | None,
                 lag: LoopLagMonitor, gc_pauses: GcPauseMonitor | None = None) -> list[MetricSpec]:
    """Every exported family and where its numbers come from (DESIGN.md contract 5)."""
    relay = gateway.media.relay
    rs = relay.stats

    def capture_stats() -> Any:
        return capture.service.stats if capture is not None and capture.service is not None else None

    def sip_messages(kind: str) -> dict[tuple[str, ...], int]:
        known = SIP_METHODS if kind == "request" else SIP_STATUS_CLASSES
        rows = {(d, label): 0 for d in ("in", "out") for label in known}
        counts = gateway.sip.messages if gateway.sip is not None else {}
        rows.update({(d, label): n for (d, k, label), n in counts.items() if k == kind})
        return rows

    detection_latency = Histogram(SLOW_BOUNDS_S)

    def on_media(event: Any) -> None:
        if isinstance(event, InBandDigitDetected):
            detection_latency.observe((event.decided_sample - event.start_sample) / 8000.0)

    gateway.media_event_handlers.append(on_media)

    def by_label(counter: Any, known: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
        """Counts by label; `known` values are exported at 0 from the start, so that
        Prometheus sees the first increment (a series born at 1 is invisible to rate())."""
        rows = {(k,): 0 for k in known}
        if counter is not None:
            rows.update({(str(k),): v for k, v in counter.items()})
        return rows

    def drops_by_direction() -> dict[tuple[str, ...], int]:
        rows: dict[tuple[str, ...], int] = {(d, r): 0 for d in DIRECTION_NAMES for r in RTP_DROP_REASONS}
        rows.update(rs.drops_total())
        return rows

    def captures_active() -> int:
        svc = capture.service if capture is not None else None
        return svc.collecting_count if svc is not None else 0

    specs = [
        MetricSpec("packet_processing_seconds", "histogram",
                   "Time the audio loop spends on each RTP packet, receipt to send",
                   read=lambda: rs.processing),
        MetricSpec("packets_total", "counter", "RTP packets by direction and outcome",
                   ("direction", "outcome"), read=rs.packets_total),
        MetricSpec("packets_dropped_total", "counter", "RTP packets dropped, by direction and reason",
                   ("direction", "reason"), read=drops_by_direction),
        MetricSpec("rtp_packets_lost_total", "counter",
                   "RTP packets lost on the way to the gateway (RFC 3550 A.3 expected - received), by direction",
                   ("direction",), read=rs.packets_lost_total),
        MetricSpec("rtp_jitter_seconds", "histogram",
                   "RFC 3550 interarrival jitter per received stream, sampled once a second and at stream end",
                   read=lambda: rs.jitter),
        MetricSpec("masking_lookahead_seconds", "histogram",
                   "How long each caller packet was held for the masker's look-ahead during a capture",
                   read=lambda: rs.lookahead_seconds),
        MetricSpec("masking_deadline_releases_total", "counter",
                   "Caller packets held for the look-ahead that left at their deadline, their successor late "
                   "or lost (masked with the look-ahead known; a loud last block silenced)",
                   read=lambda: rs.released_at_deadline),
        MetricSpec("packets_masked_total", "counter",
                   "Caller packets that left masked or were withheld during a capture",
                   read=lambda: rs.captured),
        MetricSpec("feedback_packets_total", "counter",
                   "Packets to the caller that carried a feedback tone (accepted, error, ...): the agent's, or the "
                   "gateway's own while the agent sends no audio",
                   read=lambda: rs.feedback_packets),
        MetricSpec("feedback_dropped_total", "counter",
                   "Feedback tones dropped (queue full, codec change)",
                   read=lambda: rs.feedback_dropped),
        MetricSpec("calls_active", "gauge", "Calls in progress",
                   read=lambda: len(gateway.b2bua.calls) if gateway.b2bua else 0),
        MetricSpec("calls_total", "counter", "Calls ended, by reason", ("reason",),
                   read=lambda: by_label(gateway.stats.calls_ended, CALL_END_REASONS)),
        MetricSpec("calls_transcoded_total", "counter",
                   "Calls whose legs use different G.711 laws (audio converted, not bit-exact)",
                   read=lambda: gateway.stats.calls_transcoded),
        MetricSpec("sip_codec_leniency_total", "counter",
                   "SDP answers in a G.711 law that was not offered (accepted), by leg", ("leg",),
                   read=lambda: by_label(gateway.stats.unoffered_codecs, ("caller", "agent"))),
        MetricSpec("sip_messages_rejected_total", "counter", "SIP messages refused by the B2BUA, by reason",
                   ("reason",), read=lambda: by_label(gateway.stats.sip_rejected, SIP_REJECT_REASONS)),
        MetricSpec("sip_dropped_total", "counter", "SIP datagrams or streams dropped by the transport, by reason",
                   ("reason",), read=lambda: by_label(gateway.sip.drops if gateway.sip else None,
                                                SIP_DROP_REASONS)),
        MetricSpec("sip_requests_total", "counter", "SIP requests received (in) and sent (out), by method",
                   ("direction", "method"), read=lambda: sip_messages("request")),
        MetricSpec("sip_responses_total", "counter", "SIP responses received (in) and sent (out), by class",
                   ("direction", "status_class"), read=lambda: sip_messages("response")),
        MetricSpec("dtmf_detection_latency_seconds", "histogram",
                   "In-band DTMF: tone onset to the detector's decision",
                   read=lambda: detection_latency),
        MetricSpec("event_loop_lag_seconds", "histogram", "How late the event loop runs a due callback",
                   read=lambda: lag.histogram),
        MetricSpec("gc_pause_seconds", "histogram",
                   "Python's cyclic garbage collector passes, by generation (the event loop waits for each)",
                   ("generation",), read=lambda: {(g,): h for g, h in gc_pauses.histograms.items()} if gc_pauses else {}),
        MetricSpec("dtmf_digits_total", "counter", "DTMF digits seen from callers, by method", ("method",),
                   read=lambda: by_label(capture_stats().digits if capture_stats() else None, DTMF_METHODS)),
        MetricSpec("captures_total", "counter", "Secure captures ended, by outcome", ("outcome",),
                   read=lambda: by_label(capture_stats().outcomes if capture_stats() else None, CAPTURE_OUTCOMES)),
        MetricSpec("captures_active", "gauge", "Secure captures collecting digits",
                   read=captures_active),
        MetricSpec("tokenization_errors_total", "counter", "Tokenization failures by kind", ("kind",),
                   read=lambda: by_label(capture_stats().tokenization_errors if capture_stats() else None,
                                                 TOKENIZATION_ERROR_KINDS)),
    ]
    if capture is not None:
        specs.append(MetricSpec("tokenization_seconds", "histogram",
                                "Time from handing a card to the processor to its answer",
                                read=lambda: capture.service.stats.tokenization))
    if api is not None:
        from gateway.api.server import STATS

        specs.append(MetricSpec("auth_failures_total", "counter", "API requests refused authentication, by reason",
                                ("reason",), read=lambda: by_label(api.app[STATS].auth_failures,
                                                                     AUTH_FAILURE_REASONS)))
        specs.append(MetricSpec("api_malformed_requests_total", "counter",
                                "Malformed HTTP requests refused before any handler ran, by error type",
                                ("kind",), read=lambda: by_label(api.app[STATS].malformed, HTTP_MALFORMED_KINDS)))
        specs.append(MetricSpec("api_forbidden_total", "counter", "API requests refused for role or ownership",
                                read=lambda: api.app[STATS].forbidden_total))
    return specs


def default_extensions(config: Config) -> list[Any]:
    """What `tonewall run` starts besides SIP and media."""
    vault = VaultExtension() if config.processor.kind == "vault" and not config.processor.url else None
    capture = CaptureExtension(vault)
    api = ApiExtension(capture)
    metrics = MetricsExtension(capture, api)
    return [x for x in (vault, capture, api, metrics) if x is not None]
