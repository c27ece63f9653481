"""SIP stream connections are bounded: connection caps, message deadline (slowloris), idle timeout, write backlog."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.transport.test_sip_transport import make, options, udp_client

pytestmark = pytest.mark.timeout(20)


async def answered(reader: asyncio.StreamReader, branch: bytes) -> None:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"SIP/2.0 200 OK") and branch in head


async def closed_by_gateway(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


async def connection_count(transport, expected: int) -> None:
    while transport.connection_count != expected:
        await asyncio.sleep(0)


async def test_connections_over_the_per_host_cap_are_refused_and_the_slot_comes_back():
    transport, _, _ = await make(max_connections_per_host=2)
    await transport.start(tcp=("127.0.0.1", 0))
    host, port = transport.addresses["tcp"]
    conns = [await asyncio.open_connection(host, port) for _ in range(3)]
    try:
        for n, (reader, writer) in enumerate(conns[:2]):
            writer.write(options(f"z9hG4bKok{n}"))
            await answered(reader, f"z9hG4bKok{n}".encode())
        assert await closed_by_gateway(conns[2][0])
        assert transport.drops["tcp_host_connection_limit"] == 1
        assert transport.connection_count == 2
        conns[0][1].close()
        await connection_count(transport, 1)
        reader, writer = await asyncio.open_connection(host, port)
        conns.append((reader, writer))
        writer.write(options("z9hG4bKagain"))
        await answered(reader, b"z9hG4bKagain")
    finally:
        for _, writer in conns:
            writer.close()
        await transport.close()


async def test_total_connection_cap():
    transport, _, _ = await make(max_connections=1)
    await transport.start(tcp=("127.0.0.1", 0))
    host, port = transport.addresses["tcp"]
    first = await asyncio.open_connection(host, port)
    second = await asyncio.open_connection(host, port)
    try:
        first[1].write(options())
        await answered(first[0], b"z9hG4bK1")
        assert await closed_by_gateway(second[0])
        assert transport.drops["tcp_connection_limit"] == 1
    finally:
        first[1].close()
        second[1].close()
        await transport.close()


async def test_a_message_dripped_slower_than_the_deadline_is_cut_off():
    transport, core, _ = await make(message_timeout_s=32.0, idle_timeout_s=None)
    await transport.start(tcp=("127.0.0.1", 0))
    host, port = transport.addresses["tcp"]
    reader, writer = await asyncio.open_connection(host, port)
    loop = asyncio.get_running_loop()
    try:
        writer.write(options()[:40])  # a header that never ends
        await writer.drain()
        await connection_count(transport, 1)
        transport.sweep(loop.time() + 31.0)
        assert transport.connection_count == 1 and not transport.drops
        transport.sweep(loop.time() + 33.0)
        assert await closed_by_gateway(reader)
        assert transport.drops["tcp_message_timeout"] == 1
        assert core.received == []
    finally:
        writer.close()
        await transport.close()


async def test_a_silent_peer_owes_its_first_message_but_a_talking_one_may_rest():
    transport, _, _ = await make(message_timeout_s=32.0, idle_timeout_s=600.0)
    await transport.start(tcp=("127.0.0.1", 0))
    host, port = transport.addresses["tcp"]
    loop = asyncio.get_running_loop()
    silent = await asyncio.open_connection(host, port)
    talking = await asyncio.open_connection(host, port)
    try:
        talking[1].write(options())
        await answered(talking[0], b"z9hG4bK1")
        await connection_count(transport, 2)
        transport.sweep(loop.time() + 33.0)
        assert await closed_by_gateway(silent[0])
        assert transport.drops["tcp_message_timeout"] == 1
        await connection_count(transport, 1)
        transport.sweep(loop.time() + 601.0)  # then idle for longer than the idle timeout
        assert await closed_by_gateway(talking[0])
        assert transport.drops["tcp_idle_timeout"] == 1
    finally:
        silent[1].close()
        talking[1].close()
        await transport.close()


async def test_a_peer_that_never_reads_cannot_grow_our_write_buffer():
    transport, _, _ = await make(max_write_buffer_bytes=64 * 1024)
    await transport.start(tcp=("127.0.0.1", 0))
    host, port = transport.addresses["tcp"]
    reader, writer = await asyncio.open_connection(host, port, limit=1024)
    try:
        writer.write(options())
        await connection_count(transport, 1)
        conn = next(iter(transport._connections.values()))
        # Replies pile up while the peer reads nothing (bounded: 64 MiB at most).
        for _ in range(64 * 1024):
            if conn.closed or conn.transport.is_closing():
                break
            conn.send(b"x" * 1024)
        assert transport.drops["tcp_write_backlog"] == 1
    finally:
        writer.close()
        await transport.close()


async def test_a_failing_event_handler_is_logged_without_its_message(caplog):
    def handler(event):
        raise ValueError("caller keyed 4111111111111111")

    transport, _, _ = await make()
    transport.on_event = handler
    await transport.start(udp=("127.0.0.1", 0))
    sock, client = await udp_client(transport.addresses["udp"])
    caplog.set_level(logging.DEBUG, logger="tonewall.sip")
    try:
        sock.sendto(options())
        await asyncio.wait_for(client.queue.get(), 5)
        assert transport.drops["event_handler_error:ValueError"] == 1
    finally:
        sock.close()
        await transport.close()
    assert any("ValueError" in r.getMessage() for r in caplog.records)
    assert all(r.exc_info is None and "4111" not in r.getMessage() for r in caplog.records)
