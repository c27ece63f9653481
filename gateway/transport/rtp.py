"""The asyncio edge of the media relay: RTP/RTCP sockets from a port range.

Each leg gets an even RTP port and the odd RTCP port above it (RFC 3550 11), bound
on the media address. Sockets are non-blocking and watched with `loop.add_reader`
(each RTP reader is handed its leg and the bound `recvfrom`/`sendto` it uses, so a
datagram costs no attribute walk); each wakeup reads one datagram (the poller is
level-triggered), passes it through
`Relay.receive_rtp`/`receive_rtcp`, and sends the answer at once from the other
leg's socket (a caller feedback tone, when one plays, is spliced into the agent's
packets by the core on the way). When the core raises `wake` (masked-leg rows, a full detector batch,
a timer that moved, events), `Relay.process_pending` runs once at the end of that
iteration from `loop.call_soon`. One loop timer, armed from `Relay.get_timer()` only
while something is due (a detector batch's deadline, a masker window's end, the once-a-second metrics
sample, an RFC 4733 event's lost end, a held capture packet's release deadline), drives
`Relay.handle_timer`, whose released packets it sends. The loop's timer steps in milliseconds
(it fired 0.3 ms late at the median, 1 ms at p99, at 500 captured streams), so the end of each
`process_pending` iteration also asks `Relay.deadline_due` and runs the same work when a held
packet's deadline has passed: under load the loop wakes every few tens of microseconds.

With the C accelerator (`gateway.media._fastrelay`, built at install when a compiler is
there; IPv4 media), the RTP sockets are not watched one by one: one epoll descriptor over all
of them is, and each wakeup runs `FastRelay.drain` once. It reads one datagram from each
ready socket and forwards, in C, those `Relay.receive_rtp` would forward with nothing but
the PT byte remapped (judged on the legs' live attributes: it keeps no state of its own);
every other datagram comes back with its address and goes through `Relay.receive_rtp` as
before, in arrival order. Either way the core sees the same packets in the same order.

`now` for the core is `perf_counter()`: on Linux it is CLOCK_MONOTONIC, the clock
behind `loop.time()`, but with microsecond resolution where uvloop's `loop.time()`
has milliseconds (RFC 3550 jitter and look-ahead times need better than 1 ms).
Run it on uvloop (PEERS.md: the default loop loses packets from ~500 streams).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from time import perf_counter
from typing import Any

from gateway.media.leg import LegMedia
from gateway.media.relay import Leg, Relay, RelayCall

try:
    from gateway.media._fastrelay import FastRelay
except ImportError:  # no compiler at install, or not Linux: the pure-Python path
    FastRelay = None  # type: ignore[assignment,misc]

MAX_DATAGRAM_BYTES = 2048
READS_PER_WAKEUP = 64
"""Bound on RTCP datagrams drained from one socket per wakeup."""
PROCESSING_SAMPLE_EVERY = 16
"""One RTP datagram in this many is timed (receipt to send) and counts for this many in
tonewall_packet_processing_seconds: the histogram's shape and count, at a sixteenth of the cost."""


class AcceleratorUnavailable(RuntimeError):
    """The C relay accelerator was required but is not built here (or the media address is IPv6)."""


class PortRange:
    """Even/odd port pairs from [low, high], handed out round-robin."""

    def __init__(self, host: str, low: int, high: int) -> None:
        if low < 1024 or high > 65535 or high - low < 1:
            raise ValueError("RTP port range is invalid")
        self.host = host
        self.low = low + (low & 1)
        self.high = high
        self._next = self.low
        self._used: set[int] = set()

    def bind_pair(self) -> tuple[socket.socket, socket.socket]:
        """Bind an even RTP port and the RTCP port above it; OSError when none is free."""
        n_pairs = (self.high - self.low + 1) // 2
        for _ in range(n_pairs):
            port = self._next
            self._next = port + 2 if port + 3 <= self.high else self.low
            if port in self._used:
                continue
            socks = []
            try:
                for p in (port, port + 1):
                    s = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_DGRAM)
                    socks.append(s)
                    s.setblocking(False)
                    s.bind((self.host, p))
            except OSError:
                for s in socks:
                    s.close()
                continue
            self._used.add(port)
            return socks[0], socks[1]
        raise OSError("no free RTP port pair in range")

    def release(self, port: int) -> None:
        self._used.discard(port)


class _Endpoint:
    """A leg's two sockets; `Leg.endpoint` points here so the edge can send from the leg."""

    __slots__ = ("rtp", "rtcp", "port")

    def __init__(self, rtp: socket.socket, rtcp: socket.socket) -> None:
        self.rtp = rtp
        self.rtcp = rtcp
        self.port = rtp.getsockname()[1]


class RtpCallMedia:
    """One call's anchored media (the B2BUA's `CallMedia`)."""

    def __init__(self, controller: RtpMediaController, call: RelayCall) -> None:
        self._controller = controller
        self._call = call
        self.call_id = call.call_id
        self.caller_port: int = call.caller.endpoint.port
        self.agent_port: int = call.agent.endpoint.port

    def configure(self, caller: LegMedia, agent: LegMedia) -> None:
        """Apply the negotiated media of both legs (every offer/answer)."""
        self._controller.relay.configure(self.call_id, caller, agent)

    def set_capture(self, on: bool) -> None:
        """Mask the caller's DTMF towards the agent (raises CaptureUnavailable if it cannot)."""
        self._controller.set_capture(self.call_id, on)

    def set_mask_always(self, on: bool) -> None:
        """Policy mask = "always" for this call (raises CaptureUnavailable if it cannot be masked)."""
        self._controller.set_mask_always(self.call_id, on)

    def play_feedback(self, kind: str) -> None:
        """Play a caller feedback tone ('accepted', 'error', 'reenter', 'complete') over the agent's audio."""
        self._controller.play_feedback(self.call_id, kind)

    @property
    def last_packet_s(self) -> float | None:
        """Loop time of the last valid packet from either peer, for media timeouts."""
        return self._call.last_packet_s

    def close(self) -> None:
        self._controller.close_call(self.call_id)


class RtpMediaController:
    """Opens calls' media sockets and runs the relay on the event loop (the B2BUA's `MediaController`)."""

    def __init__(self, media_address: str, port_low: int, port_high: int, relay: Relay | None = None,
                 on_event: Callable[[Any], None] | None = None,
                 loop: asyncio.AbstractEventLoop | None = None, fast_path: bool | None = None) -> None:
        """`fast_path`: None uses the C accelerator when it is built (IPv4 media), False never,
        True requires it (AcceleratorUnavailable when it cannot be used)."""
        self.media_address = media_address
        self.relay = relay if relay is not None else Relay()
        self.ports = PortRange(media_address, port_low, port_high)
        self.on_event = on_event
        self._loop = loop or asyncio.get_running_loop()
        self._calls: dict[str, RtpCallMedia] = {}
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._untimed = 0
        """RTP datagrams left before the next one timed for the processing histogram."""
        usable = FastRelay is not None and ":" not in media_address
        if fast_path and not usable:
            raise AcceleratorUnavailable(
                "the C relay accelerator is not built (reinstall with a C compiler) or the media address is IPv6")
        self._fast: Any = None
        if usable and fast_path is not False:
            self._fast = FastRelay(Leg, *self.relay.jitter_sampling)
            self.relay.accelerate(self._fast.release_unchanged)
            self._loop.add_reader(self._fast.fileno(), self._drain)

    @property
    def fast_path(self) -> bool:
        """Whether RTP goes through the C accelerator."""
        return self._fast is not None

    def open_call(self, call_id: str) -> RtpCallMedia:
        """Bind both legs' port pairs and start relaying (to nothing until `configure`)."""
        if call_id in self._calls:
            raise ValueError("call already has media")
        bound: list[socket.socket] = []
        try:
            for _ in range(2):
                bound.extend(self.ports.bind_pair())
        except OSError:
            for i in range(0, len(bound), 2):
                self.ports.release(bound[i].getsockname()[1])
            for s in bound:
                s.close()
            raise
        call = self.relay.add_call(call_id)
        for leg, (rtp, rtcp) in ((call.caller, bound[0:2]), (call.agent, bound[2:4])):
            leg.endpoint = _Endpoint(rtp, rtcp)
        for leg in (call.caller, call.agent):
            rtp = leg.endpoint.rtp
            if self._fast is not None:
                self._fast.add(rtp.fileno(), leg, leg.peer.endpoint.rtp.fileno())
            else:
                self._loop.add_reader(rtp.fileno(), self._read_rtp, leg, rtp.recvfrom, leg.peer.endpoint.rtp.sendto)
            self._loop.add_reader(leg.endpoint.rtcp.fileno(), self._read_rtcp, leg)
        media = RtpCallMedia(self, call)
        self._calls[call_id] = media
        return media

    def close_call(self, call_id: str) -> None:
        """Stop relaying a call and free its ports (idempotent)."""
        media = self._calls.pop(call_id, None)
        call = self.relay.calls.get(call_id)
        if media is None or call is None:
            return
        self.relay.remove_call(call_id)
        for leg in (call.caller, call.agent):
            ep: _Endpoint = leg.endpoint
            if self._fast is not None:
                self._fast.remove(ep.rtp.fileno())
            else:
                self._loop.remove_reader(ep.rtp.fileno())
            self._loop.remove_reader(ep.rtcp.fileno())
            for s in (ep.rtp, ep.rtcp):
                s.close()
            self.ports.release(ep.port)

    def close(self) -> None:
        for call_id in list(self._calls):
            self.close_call(call_id)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        if self._fast is not None:
            self._loop.remove_reader(self._fast.fileno())
            self._fast.close()
            self._fast = None

    def set_capture(self, call_id: str, on: bool) -> None:
        """Switch a call's caller leg into or out of capture; sends the released packet."""
        self._send_all(self.relay.set_capture(call_id, on, perf_counter()))
        self._after_core()

    def seconds_since_masked(self, call_id: str) -> float | None:
        """How long ago the masker last changed the call's caller audio (None: never, or no media)."""
        return self.relay.seconds_since_masked(call_id, perf_counter())

    def set_mask_always(self, call_id: str, on: bool) -> None:
        """Apply policy mask = "always" to a call's caller leg."""
        self._send_all(self.relay.set_mask_always(call_id, on, perf_counter()))
        self._after_core()

    def play_feedback(self, call_id: str, kind: str) -> None:
        """Queue a feedback tone for a call's caller; it replaces the agent's next packets' audio,
        or leaves in the relay's own packets (from its timer) while the agent sends none.

        Raises FeedbackUnavailable for an unknown call or kind. Nothing is sent here.
        """
        relay = self.relay
        relay.play_feedback(call_id, kind, perf_counter())
        if relay.timer_changed:
            relay.timer_changed = False
            self._arm_timer()

    def next_event(self) -> Any | None:
        return self.relay.next_event()

    @property
    def calls(self) -> dict[str, RtpCallMedia]:
        return self._calls

    # ---- the hot path ----------------------------------------------------------

    def _read_rtp(self, leg: Leg, recv: Any, send: Any) -> None:
        # One datagram per wakeup: the poller is level-triggered, so a socket with more
        # queued is called again next iteration, and the usual single packet per socket
        # costs one recvfrom instead of a second one that fails with EAGAIN.
        relay = self.relay
        t0 = perf_counter()
        try:
            data, addr = recv(MAX_DATAGRAM_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # e.g. ICMP port unreachable reported on this socket
            relay.stats.drops[leg.direction]["socket"] += 1
            return
        out = relay.receive_rtp(leg, data, addr, t0)
        if out is not None:
            try:
                send(out[0], out[1])
            except OSError:
                relay.stats.drops[leg.direction]["send"] += 1
        if self._untimed:
            self._untimed -= 1
        else:
            self._untimed = PROCESSING_SAMPLE_EVERY - 1
            relay.stats.processing_hist.observe(perf_counter() - t0, PROCESSING_SAMPLE_EVERY)
        if relay.wake and not self._flush_scheduled:
            self._flush_soon()

    def _drain(self) -> None:
        """The epoll descriptor is readable: one datagram from each ready RTP socket (C accelerator)."""
        relay = self.relay
        t0 = perf_counter()
        det_slots, det_packets, mask_rows = relay.fifos()
        det_before, mask_before = len(det_slots), len(mask_rows)
        slow, c = self._fast.drain(t0, det_slots, det_packets, mask_rows)
        stats = relay.stats
        handled = c[0] + c[4] + c[10]
        if handled:
            stats.relayed[0] += c[0]
            stats.relayed_bytes[0] += c[1]
            stats.relayed[1] += c[4]
            stats.relayed_bytes[1] += c[5]
            relay.rows_appended(t0, det_before, bool(c[9]), mask_before, c[10])
        if c[2] or c[3] or c[6] or c[7]:
            for d, i in ((0, 2), (1, 6)):
                if c[i]:
                    stats.drops[d]["socket"] += c[i]
                if c[i + 1]:
                    stats.drops[d]["send"] += c[i + 1]
        if slow is not None:
            for leg, data, addr in slow:
                out = relay.receive_rtp(leg, data, addr, t0)
                if out is not None:
                    try:
                        leg.peer.endpoint.rtp.sendto(out[0], out[1])
                    except OSError:
                        stats.drops[leg.direction]["send"] += 1
            handled += len(slow)
        if handled:
            stats.record_processing(perf_counter() - t0, handled)
        if relay.wake and not self._flush_scheduled:
            self._flush_soon()

    def _read_rtcp(self, leg: Leg) -> None:
        relay = self.relay
        recv = leg.endpoint.rtcp.recvfrom
        send = leg.peer.endpoint.rtcp.sendto
        now = perf_counter()
        for _ in range(READS_PER_WAKEUP):
            try:
                data, addr = recv(MAX_DATAGRAM_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            out = relay.receive_rtcp(leg, data, addr, now)
            if out is not None:
                try:
                    send(out[0], out[1])
                except OSError:
                    relay.stats.drops[leg.direction]["send"] += 1
        if relay.wake and not self._flush_scheduled:
            self._flush_soon()

    def _flush_soon(self) -> None:
        """The core has work for the end of this iteration (`relay.wake`): one `_flush` call."""
        self._flush_scheduled = True
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        relay = self.relay
        relay.wake = False
        t0 = perf_counter()
        try:
            sends = relay.process_pending(t0, detect=False)
        except Exception:  # noqa: BLE001 - one batch's failure must not stop the loop
            relay.stats.drops[0]["hook_error"] += 1
            sends = []
        self._send_all(sends)  # the masked packets leave before the detector's call, not after
        try:
            relay.process_detector(t0, self._fast is not None and self._fast.pending())
        except Exception:  # noqa: BLE001
            relay.stats.drops[0]["hook_error"] += 1
        t1 = perf_counter()
        relay.stats.hook_s += t1 - t0
        if relay.holding and relay.deadline_due(t1):
            # Held packets at their deadline: release them now, not at the loop timer's next
            # millisecond step (the timer stays armed; it finds nothing due and re-arms).
            self._timer_work(t1)
        self._after_core()
        if relay.wake and not self._flush_scheduled:
            # More of the detector's FIFO is due (it runs a batch per iteration): the next
            # iteration polls the sockets first, then takes the next batch.
            self._flush_soon()

    def _after_core(self) -> None:
        """After the core ran outside a packet: re-arm its timer if it moved, hand out events."""
        relay = self.relay
        if relay.timer_changed:
            relay.timer_changed = False
            self._arm_timer()
        self._deliver_events()

    def _arm_timer(self) -> None:
        # An armed timer earlier than needed is kept: it fires, finds nothing due, re-arms.
        when = self.relay.get_timer()
        if when is None or (self._timer_at is not None and self._timer_at <= when):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        when = self._timer_at or 0.0
        self._timer = self._timer_at = None
        self._timer_work(when)
        self.relay.timer_changed = False
        self._arm_timer()
        self._deliver_events()

    def _timer_work(self, when: float) -> None:
        """What is due at `when` (the loop timer fired, or a hold deadline passed): held packets,
        a masker window, the detector's window, stream samples, RFC 4733 ends."""
        relay = self.relay
        if self._fast is not None and relay.holding:
            # A held packet's successor may be waiting in its socket already (timers run before
            # the loop polls; a busy iteration reads each socket once). Read what is ready first,
            # so that it releases the held packet with its look-ahead, not the deadline without.
            self._drain()
        t0 = perf_counter()
        try:
            # The loop clock has 1 ms steps: its timer may fire just before `when` on perf_counter.
            now = max(t0, when)
            # Held capture packets at their release deadline, then masked rows whose batching
            # window closed with no packet arriving since.
            sends = relay.handle_timer(now, detect=False)
            if relay.mask_rows_pending:
                sends += relay.process_pending(now, detect=False)
        except Exception:  # noqa: BLE001 - one batch's failure must not stop the loop
            relay.stats.drops[0]["hook_error"] += 1
            sends = []
        self._send_all(sends)  # released packets leave before the detector's call
        try:
            relay.process_detector(now)
        except Exception:  # noqa: BLE001
            relay.stats.drops[0]["hook_error"] += 1
        relay.stats.hook_s += perf_counter() - t0

    def _deliver_events(self) -> None:
        relay = self.relay
        if self.on_event is not None:
            ev = relay.next_event()
            while ev is not None:
                try:
                    self.on_event(ev)
                except Exception:  # noqa: BLE001 - a handler's bug must not stop the media loop
                    relay.stats.drops[0]["event_handler_error"] += 1
                ev = relay.next_event()

    def _send_all(self, sends: list[tuple[Leg, bytes, tuple[str, int]]]) -> None:
        if self._fast is not None and sends:
            left, errors = self._fast.send_all(sends)
            if errors[0] or errors[1]:
                for d in (0, 1):
                    if errors[d]:
                        self.relay.stats.drops[d]["send"] += errors[d]
            if left is None:
                return
            sends = left
        for leg, data, dest in sends:
            try:
                leg.endpoint.rtp.sendto(data, dest)
            except OSError:
                self.relay.stats.drops[1 - leg.direction]["send"] += 1  # the packet's direction (a removed leg has no peer)
