"""The demo's SIP endpoints on 127.0.0.1: plain asyncio UDP around `UserAgent`, RTP paced at 20 ms.

An `Endpoint` is a softphone: one UDP socket for SIP, one for RTP. It sends one
PCMU packet every 20 ms on absolute deadlines of the loop clock (a late tick is
caught up, never drifts) from a `CallerVoice`, and keeps every RTP packet it
receives in a `Recording`. The caller dials; the agent answers any INVITE at once.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import numpy as np

from dtmf.g711 import ENCODE_TABLES
from gateway.demo.recording import FRAME_S, Recording
from gateway.demo.useragent import CallEnded, CallEstablished, CallFailed, UaEvent, UserAgent, peer_of
from gateway.demo.voice import CallerVoice
from gateway.media.rtp import RtpError, RtpPacket, is_rtcp
from gateway.sip.transaction import Peer

HOST = "127.0.0.1"


class _SipProtocol(asyncio.DatagramProtocol):
    """Feeds datagrams to the user agent, sends what it returns, re-arms its one timer."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: Any) -> None:
        ep = self.endpoint
        if ep.ua is not None:
            ep.ua.receive(data, Peer("udp", addr[0], addr[1]), ep.loop.time())
            ep.pump()


class _RtpProtocol(asyncio.DatagramProtocol):
    """Records every RTP packet with its arrival time; RTCP and junk are counted and ignored."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: Any) -> None:
        ep = self.endpoint
        if is_rtcp(data):
            return
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            ep.rtp_dropped += 1
            return
        ep.received.add(packet, ep.loop.time())


class Endpoint:
    """A loopback softphone: `await Endpoint.open(user)`, then `call()` or wait for one, then `close()`."""

    def __init__(self, user: str, voice: CallerVoice, loop: asyncio.AbstractEventLoop) -> None:
        self.user = user
        self.voice = voice
        self.loop = loop
        self.ua: UserAgent | None = None
        self.received = Recording()
        """Every RTP packet that reached this endpoint (the agent's call recorder)."""
        self.sent = Recording()
        """What this endpoint sent, as sent, for control checks."""
        self.rtp_dropped = 0
        self.packets_sent = 0
        self._sip: asyncio.DatagramTransport | None = None
        self._rtp: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._pacer: asyncio.TimerHandle | None = None
        self._events: asyncio.Queue[UaEvent] = asyncio.Queue()
        self._seq = secrets.randbelow(2**16)
        self._ts = secrets.randbelow(2**32)
        self._ssrc = secrets.randbelow(2**32)
        self._dest: tuple[str, int] | None = None

    @classmethod
    async def open(cls, user: str, voice: CallerVoice, host: str = HOST) -> Endpoint:
        loop = asyncio.get_running_loop()
        ep = cls(user, voice, loop)
        ep._sip, _ = await loop.create_datagram_endpoint(lambda: _SipProtocol(ep), local_addr=(host, 0))
        ep._rtp, _ = await loop.create_datagram_endpoint(lambda: _RtpProtocol(ep), local_addr=(host, 0))
        ep.ua = UserAgent(user=user, host=host, sip_port=ep.sip_port, rtp_port=ep.rtp_port)
        return ep

    @property
    def sip_port(self) -> int:
        assert self._sip is not None
        return self._sip.get_extra_info("sockname")[1]

    @property
    def rtp_port(self) -> int:
        assert self._rtp is not None
        return self._rtp.get_extra_info("sockname")[1]

    @property
    def uri(self) -> str:
        return f"sip:{self.user}@{HOST}:{self.sip_port}"

    # ------------------------------------------------------------ SIP

    def pump(self) -> None:
        """Send what the user agent queued, hand its events on, re-arm its timer."""
        ua = self.ua
        if ua is None or self._sip is None:
            return
        for data, peer in ua.messages_to_send():
            self._sip.sendto(data, (peer.host, peer.port))
        while (event := ua.next_event()) is not None:
            if isinstance(event, CallEstablished):
                self._on_established(event)
            elif isinstance(event, (CallEnded, CallFailed)):
                self.stop_audio()
            self._events.put_nowait(event)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = ua.get_timer()
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.ua is not None:
            self.ua.handle_timer(self.loop.time())
            self.pump()

    def call(self, target: str, via: str) -> None:
        """INVITE `target` (its user part is what the gateway keeps) through the proxy/gateway `via`."""
        assert self.ua is not None
        self.ua.invite(target, peer_of(via), self.loop.time())
        self.pump()

    def hang_up(self) -> None:
        if self.ua is not None:
            self.ua.bye(self.loop.time())
            self.pump()

    async def wait_event(self, timeout_s: float) -> UaEvent:
        """The next call event; TimeoutError if none comes in time."""
        return await asyncio.wait_for(self._events.get(), timeout_s)

    # ------------------------------------------------------------ RTP

    def _on_established(self, event: CallEstablished) -> None:
        media = event.media
        for recording in (self.received, self.sent):
            recording.codec = media.codec
            recording.audio_pt = media.audio_pt
            recording.telephone_event_pt = media.telephone_event_pt
        self._dest = media.remote_rtp
        self.start_audio()

    def start_audio(self) -> None:
        """Start sending 20 ms packets on absolute deadlines."""
        if self._pacer is None and self._dest is not None:
            start = self.loop.time()
            self._pacer = self.loop.call_at(start, self._tick, start, 0)

    def stop_audio(self) -> None:
        if self._pacer is not None:
            self._pacer.cancel()
            self._pacer = None

    def _tick(self, start: float, n: int) -> None:
        ua, transport, dest = self.ua, self._rtp, self._dest
        if ua is None or transport is None or dest is None or ua.media is None:
            self._pacer = None
            return
        frame = self.voice.next_frame()
        now = self.loop.time()
        codes = ENCODE_TABLES[ua.media.codec][np.asarray(frame, dtype=np.int16).view(np.uint16)]
        packet = RtpPacket(payload_type=ua.media.audio_pt, sequence_number=self._seq, timestamp=self._ts,
                           ssrc=self._ssrc, payload=codes.tobytes(), marker=n == 0)
        transport.sendto(bytes(packet), dest)
        self.sent.add(packet, now)
        self.packets_sent += 1
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + len(frame)) & 0xFFFFFFFF  # RFC 3550 5.1: timestamp in samples
        self._pacer = self.loop.call_at(start + (n + 1) * FRAME_S, self._tick, start, n + 1)

    # ------------------------------------------------------------ end

    def close(self) -> None:
        self.stop_audio()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for transport in (self._sip, self._rtp):
            if transport is not None:
                transport.close()
        self._sip = self._rtp = None
