"""The SIP edge on loopback with a trivial core: UDP, TCP, TLS, errors counted, loop survives."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl

import pytest

from gateway import pki
from gateway.sip.framing import StreamFramer
from gateway.transport.sip import Peer, SipTransport, error_response

pytestmark = pytest.mark.timeout(20)


def options(branch: str = "z9hG4bK1", body: bytes = b"", method: str = "OPTIONS") -> bytes:
    return (f"{method} sip:gw@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5999;branch={branch}\r\n"
            "From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:gw@127.0.0.1>\r\n"
            f"Call-ID: {branch}@test\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class EchoCore:
    """Answers OPTIONS 200, refuses GARBAGE as a parse error, raises on BOOM, FORWARDs to a peer."""

    def __init__(self) -> None:
        self.out: list[tuple[bytes, Peer]] = []
        self.events: list[object] = []
        self.received: list[tuple[bytes, Peer]] = []
        self.timer: float | None = None

    def receive(self, data, source: Peer, now: float) -> None:
        data = data if isinstance(data, bytes) else bytes(data)  # framed stream messages arrive parsed
        self.received.append((data, source))
        if data.startswith(b"BOOM"):
            raise RuntimeError("core bug")
        if data.startswith(b"GARBAGE") or not re.match(rb"[A-Z]+ \S+ SIP/2\.0\r\n|SIP/2\.0 ", data):
            err = ValueError("SIP start line is malformed")
            err.status = 400  # type: ignore[attr-defined]
            raise err
        if data.startswith(b"FORWARD"):
            kind, host, port = data.split(b"\r\n")[0].split()[1].decode().split(",")
            self.out.append((options("z9hG4bKfwd"), Peer(kind, host, int(port))))
        elif data.startswith(b"TIMER"):
            self.timer = now
        elif data.startswith(b"OPTIONS"):
            answer = error_response(data, 400).replace(b"400 Bad Request", b"200 OK")
            self.out.append((answer, source))
        self.events.append(("received", source.transport))

    def messages_to_send(self) -> list[tuple[bytes, Peer]]:
        out, self.out = self.out, []
        return out

    def next_event(self):
        return self.events.pop(0) if self.events else None

    def handle_timer(self, now: float) -> None:
        self.timer = None
        self.events.append(("timer", now))

    def get_timer(self) -> float | None:
        return self.timer


def forward_request(kind: str, host: str, port: int) -> bytes:
    return options().replace(b"OPTIONS sip:gw@127.0.0.1", f"FORWARD {kind},{host},{port}".encode(), 1)


async def make(**kwargs) -> tuple[SipTransport, EchoCore, list]:
    core = EchoCore()
    seen: list = []
    transport = SipTransport(core, framer_factory=StreamFramer, on_event=seen.append, **kwargs)
    return transport, core, seen


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data, addr):
        self.queue.put_nowait(data)


async def udp_client(addr):
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(UdpClient, remote_addr=addr)
    return transport, client


async def test_udp_answers_and_counts_bad_input():
    transport, core, seen = await make(max_message_bytes=4000)
    await transport.start(udp=("127.0.0.1", 0))
    sock, client = await udp_client(transport.addresses["udp"])
    try:
        sock.sendto(options())
        assert (await asyncio.wait_for(client.queue.get(), 5)).startswith(b"SIP/2.0 200 OK")
        sock.sendto(options().replace(b"OPTIONS sip:", b"GARBAGE sip:"))
        answer = await asyncio.wait_for(client.queue.get(), 5)
        assert answer.startswith(b"SIP/2.0 400 Bad Request\r\n")
        assert b"branch=z9hG4bK1" in answer and b"CSeq: 1 OPTIONS" in answer
        sock.sendto(b"\x00\xff garbage with no via")
        sock.sendto(b"BOOM sip:x SIP/2.0\r\n\r\n")
        sock.sendto(options(body=b"x" * 5000))
        answer = await asyncio.wait_for(client.queue.get(), 5)
        assert answer.startswith(b"SIP/2.0 513 Message Too Large")
        sock.sendto(options("z9hG4bK2"))
        answer = await asyncio.wait_for(client.queue.get(), 5)
        assert answer.startswith(b"SIP/2.0 200 OK") and b"z9hG4bK2" in answer
        assert transport.drops["udp_malformed"] == 1
        assert transport.drops["udp_answered_400"] == 1
        assert transport.drops["core_error:RuntimeError"] == 1
        assert transport.drops["udp_oversized"] == 1
        assert ("received", "udp") in seen
    finally:
        sock.close()
        await transport.close()


async def test_tcp_framing_split_and_coalesced_and_error_closes():
    transport, core, seen = await make()
    await transport.start(tcp=("127.0.0.1", 0))
    host, port = transport.addresses["tcp"]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        two = options("z9hG4bKa") + options("z9hG4bKb")
        writer.write(two[:7])
        await writer.drain()
        writer.write(two[7:])
        await writer.drain()
        for branch in (b"z9hG4bKa", b"z9hG4bKb"):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"SIP/2.0 200 OK") and branch in head
        assert core.received[0][1].transport == "tcp" and core.received[0][1].connection_id is not None
        writer.write(b"\r\n\r\n")  # RFC 5626 keep-alive ping gets a pong
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
        writer.write(b"NOT SIP AT ALL\r\nX: y\r\n\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the gateway
        assert sum(v for k, v in transport.drops.items() if k.startswith("tcp_framing")) == 1
    finally:
        writer.close()
        await transport.close()


async def test_outbound_tcp_reuses_one_connection():
    gateway, core, _ = await make()
    await gateway.start(udp=("127.0.0.1", 0))
    upstream, upstream_core, _ = await make()
    await upstream.start(tcp=("127.0.0.1", 0))
    sock, client = await udp_client(gateway.addresses["udp"])
    try:
        host, port = upstream.addresses["tcp"]
        for _ in range(3):
            sock.sendto(forward_request("tcp", host, port))
        for _ in range(100):
            if len(upstream_core.received) >= 3:
                break
            await asyncio.sleep(0.02)
        assert len(upstream_core.received) == 3
        assert len({src.connection_id for _, src in upstream_core.received}) == 1
        assert gateway.connection_count == 1
    finally:
        sock.close()
        await gateway.close()
        await upstream.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1:DeprecationWarning")
async def test_tls_both_ways_and_unverified_peer_refused(tmp_path):
    server_files = pki.issue_server_cert(tmp_path, "sip", ["127.0.0.1"])
    ca = pki.tls_dir(tmp_path) / "ca.pem"
    upstream, upstream_core, _ = await make(server_ssl=pki.server_ssl_context(server_files))
    await upstream.start(tls=("127.0.0.1", 0))
    gateway, _, _ = await make(client_ssl=pki.client_ssl_context(ca))
    await gateway.start(udp=("127.0.0.1", 0))
    untrusting, _, _ = await make(client_ssl=pki.client_ssl_context(None))
    await untrusting.start(udp=("127.0.0.1", 0))
    sock, _ = await udp_client(gateway.addresses["udp"])
    sock2, _ = await udp_client(untrusting.addresses["udp"])
    try:
        host, port = upstream.addresses["tls"]
        sock.sendto(forward_request("tls", host, port))
        sock2.sendto(forward_request("tls", host, port))
        for _ in range(200):
            if upstream_core.received and untrusting.drops:
                break
            await asyncio.sleep(0.02)
        assert [src.transport for _, src in upstream_core.received] == ["tls"]
        assert any(k.startswith("connect_failed:") for k in untrusting.drops)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context), 5)
    finally:
        sock.close()
        sock2.close()
        for t in (gateway, upstream, untrusting):
            await t.close()


async def test_timer_rearmed_from_core():
    transport, core, seen = await make()
    await transport.start(udp=("127.0.0.1", 0))
    sock, _ = await udp_client(transport.addresses["udp"])
    try:
        sock.sendto(options().replace(b"OPTIONS sip:", b"TIMER sip:"))
        for _ in range(100):
            if any(e[0] == "timer" for e in seen):
                break
            await asyncio.sleep(0.01)
        assert any(e[0] == "timer" for e in seen)
    finally:
        sock.close()
        await transport.close()


@pytest.mark.parametrize("data", [
    b"",
    b"OPTIONS sip:x SIP/2.0\r\n\r\n",
    b"ACK sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: a\r\nTo: b\r\nCall-ID: c\r\nCSeq: 1 ACK\r\n\r\n",
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: a\r\nTo: b\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n",
    b"\xff\xfe",
])
def test_error_response_unanswerable(data):
    assert error_response(data, 400) is None


def test_error_response_copies_dialog_headers():
    answer = error_response(options().replace(b"Call-ID", b"i"), 420)
    assert answer.startswith(b"SIP/2.0 420 Bad Extension\r\n")
    assert b"i: z9hG4bK1@test" in answer and answer.endswith(b"Content-Length: 0\r\n\r\n")


async def test_udp_next_hop_by_name_resolved_cached_stale_and_bounded():
    """RFC 3263 4.2 A-record lookup off the loop: cached, an expired address used while refreshed, queue bounded."""
    transport, core, _ = await make()
    await transport.start(udp=("127.0.0.1", 0))
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    loop = asyncio.get_running_loop()

    async def received() -> bytes:
        return await asyncio.wait_for(loop.sock_recv(peer, 65535), 5)
    port = peer.getsockname()[1]
    lookups: list[str] = []
    stuck = asyncio.Event()
    state = {"up": True}

    async def getaddrinfo(host, port_, **_kw):
        lookups.append(host)
        if host == "stuck.test":
            await stuck.wait()
        if host == "pbx.test" and state["up"]:
            return [(socket.AF_INET, socket.SOCK_DGRAM, 0, "", ("127.0.0.1", port_))]
        raise socket.gaierror("name does not resolve")

    transport._loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]
    sock, _client = await udp_client(transport.addresses["udp"])
    try:
        sock.sendto(forward_request("udp", "pbx.test", port))
        assert (await received()).startswith(b"OPTIONS")
        sock.sendto(forward_request("udp", "pbx.test", port))
        assert (await received()).startswith(b"OPTIONS")
        assert lookups == ["pbx.test"]  # cached
        address, _expiry = transport._resolved["pbx.test"]
        transport._resolved["pbx.test"] = (address, 0.0)  # expired, and DNS now down
        state["up"] = False
        sock.sendto(forward_request("udp", "pbx.test", port))
        assert (await received()).startswith(b"OPTIONS")  # sent to the last address meanwhile
        for _ in range(50):
            if transport.drops["resolve_failed:gaierror"]:
                break
            await asyncio.sleep(0.01)
        assert transport.drops["resolve_failed:gaierror"] == 1 and transport._resolved["pbx.test"][0] == address
        sock.sendto(forward_request("udp", "down.test", port))
        for _ in range(50):
            if transport.drops["resolve_failed:gaierror"] == 2:
                break
            await asyncio.sleep(0.01)
        assert transport.drops["resolve_failed:gaierror"] == 2 and "down.test" not in transport._resolved
        for _ in range(40):
            sock.sendto(forward_request("udp", "stuck.test", port))
        for _ in range(100):
            if transport.drops["resolve_queue_full"] == 40 - 32:
                break
            await asyncio.sleep(0.01)
        assert transport.drops["resolve_queue_full"] == 40 - 32 and lookups.count("stuck.test") == 1
    finally:
        sock.close()
        peer.close()
        await transport.close()
    assert not transport._resolve_tasks  # the stuck lookup was cancelled on close
