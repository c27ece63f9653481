"""The load generator's sendmmsg/recvmmsg edge (loadtests/mmsg.py) and its stamp encoding, on loopback."""

from __future__ import annotations

import os
import select
import socket
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "loadtests"))

import mmsg  # noqa: E402
import rtp_load  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sendmmsg/recvmmsg are Linux calls")


def udp(blocking: bool = True) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(blocking)
    return s


def receive_all(recv: mmsg.MmsgReceiver, want: int, timeout_s: float = 5.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, lengths and stamps of `want` datagrams (copied), waiting in select, bounded in time and count."""
    rows, lens, stamps = [], [], []
    deadline = time.monotonic() + timeout_s
    got = 0
    while got < want and time.monotonic() < deadline:
        select.select([recv.sock], [], [], max(0.0, deadline - time.monotonic()))
        data, n_bytes, rx_ns = recv.receive()
        rows.append(data.copy())
        lens.append(n_bytes.copy())
        stamps.append(rx_ns.copy())
        got += len(data)
    return np.concatenate(rows), np.concatenate(lens), np.concatenate(stamps)


@pytest.fixture
def sockets():
    tx, rx = udp(), udp(blocking=False)
    mmsg.set_buffer(rx, socket.SO_RCVBUF, 4 << 20)
    yield tx, rx
    tx.close()
    rx.close()


@pytest.mark.parametrize("count", [1, 7, 300])
def test_round_trip_carries_every_datagram_with_a_kernel_timestamp(sockets, count):
    tx, rx = sockets
    rows = np.random.default_rng(count).integers(0, 256, (count, 172), dtype=np.uint8)
    sender = mmsg.MmsgSender(tx, rows, [rx.getsockname()] * count)
    recv = mmsg.MmsgReceiver(rx, batch=64, max_bytes=256)
    before = time.time_ns()
    assert sender.send(0, count) == count
    after = time.time_ns()
    data, lens, rx_ns = receive_all(recv, count)
    assert len(data) == count
    assert (lens == 172).all()
    assert (data[:, :172] == rows).all()  # one socket on loopback keeps the order
    assert ((rx_ns >= before) & (rx_ns <= after + 10**9)).all()
    assert sender.errors == 0


def test_each_row_goes_to_its_own_destination(sockets):
    tx, rx = sockets
    other = udp(blocking=False)
    try:
        rows = np.arange(6, dtype=np.uint8).repeat(20).reshape(6, 20)
        sender = mmsg.MmsgSender(tx, rows, [rx.getsockname(), other.getsockname()] * 3)
        assert sender.send(1, 4) == 4  # rows 1..4
        a = receive_all(mmsg.MmsgReceiver(rx, batch=8), 2)[0]
        b = receive_all(mmsg.MmsgReceiver(other, batch=8), 2)[0]
        assert sorted(a[:, 0]) == [2, 4]
        assert sorted(b[:, 0]) == [1, 3]
    finally:
        other.close()


def test_rows_changed_in_place_are_sent_as_they_are_at_the_call(sockets):
    tx, rx = sockets
    rows = np.zeros((2, 12), dtype=np.uint8)
    sender = mmsg.MmsgSender(tx, rows, [rx.getsockname()] * 2)
    recv = mmsg.MmsgReceiver(rx, batch=8)
    for value in (5, 9):
        rows[:] = value
        sender.send(0, 2)
        data = receive_all(recv, 2)[0]
        assert (data[:, :12] == value).all()


def test_a_long_datagram_is_truncated_to_the_row_and_its_length_says_so(sockets):
    tx, rx = sockets
    tx.sendto(bytes(range(100)), rx.getsockname())
    data, lens, rx_ns = receive_all(mmsg.MmsgReceiver(rx, batch=4, max_bytes=32), 1)
    assert data.shape == (1, 32)
    assert bytes(data[0]) == bytes(range(32))
    assert lens[0] == 32
    assert rx_ns[0] > 0


def test_batches_larger_than_the_receiver_take_several_calls(sockets):
    tx, rx = sockets
    rows = np.zeros((50, 20), dtype=np.uint8)
    rows[:, 0] = np.arange(50)
    mmsg.MmsgSender(tx, rows, [rx.getsockname()] * 50).send(0, 50)
    recv = mmsg.MmsgReceiver(rx, batch=16)
    select.select([rx], [], [], 5.0)
    first = recv.receive()[0].copy()
    assert len(first) <= 16
    rest = receive_all(recv, 50 - len(first))[0]
    assert list(np.concatenate([first, rest])[:, 0]) == list(range(50))


def test_an_empty_socket_gives_no_rows(sockets):
    _, rx = sockets
    data, lens, rx_ns = mmsg.MmsgReceiver(rx).receive()
    assert len(data) == len(lens) == len(rx_ns) == 0


def test_sender_rejects_rows_it_cannot_point_the_kernel_at(sockets):
    tx, rx = sockets
    with pytest.raises(ValueError):
        mmsg.MmsgSender(tx, np.zeros((2, 8), dtype=np.int16), [rx.getsockname()] * 2)
    with pytest.raises(ValueError):
        mmsg.MmsgSender(tx, np.zeros((4, 8), dtype=np.uint8)[:, ::2], [rx.getsockname()] * 4)
    with pytest.raises(ValueError):
        mmsg.MmsgSender(tx, np.zeros((2, 8), dtype=np.uint8), [rx.getsockname()])
    sender = mmsg.MmsgSender(tx, np.zeros((2, 8), dtype=np.uint8), [rx.getsockname()] * 2)
    with pytest.raises(ValueError):
        sender.send(1, 2)


def test_stamp_nibbles_round_trip_and_survive_a_mu_law_round_trip():
    from dtmf.g711 import ulaw_decode, ulaw_encode

    values = np.array([0, 1, 15, 16, 1795994458996487123, 2**63 - 1], dtype=np.uint64)
    enc = rtp_load.encode_nibbles(values, 16)
    assert (enc >= 0xF0).all()
    assert (rtp_load.decode_nibbles(enc) == values).all()
    assert (ulaw_encode(ulaw_decode(enc.ravel())).reshape(enc.shape) == enc).all()
    t0 = int(values[4])
    table = b"".join(rtp_load._BYTE_NIBBLES[x] for x in t0.to_bytes(8, "big"))
    assert table == enc[4].tobytes()


def test_generator_sends_every_stream_its_packets_in_order_and_counts_them():
    gen = rtp_load.MmsgLoadGenerator(4, rcvbuf_bytes=1 << 20)
    try:
        r = gen.run(gen.agents, duration_s=0.2, warmup_s=0.05, drain_s=0.1)
    finally:
        gen.close()
    assert r["sent"] == 4 * 10  # 50 packets/s per stream for 0.2 s
    assert r["send_errors"] == 0
    assert r["measured_received"] == r["measured_sent"] > 0
    assert r["streams_with_loss"] == r["streams_with_extra"] == r["foreign"] == 0
    assert r["no_kernel_ts"] == 0
    assert 0 < r["lat_p50_us"] < 1e6


def test_generator_keeps_each_streams_ssrc_sequence_and_timestamp():
    n = 3
    gen = rtp_load.MmsgLoadGenerator(n, rcvbuf_bytes=1 << 20)
    relays = [udp(blocking=False) for _ in range(n)]  # stand-ins for the relays' ports: nothing comes back
    try:
        before = time.time_ns()
        r = gen.run([s.getsockname() for s in relays], duration_s=0.2, warmup_s=0.0, drain_s=0.0)
        for i, s in enumerate(relays):
            pkts = []
            while True:
                try:
                    pkts.append(s.recv(2048))
                except BlockingIOError:
                    break
            assert len(pkts) == 10
            for k, p in enumerate(pkts):
                assert len(p) == 12 + rtp_load.PAYLOAD_BYTES
                assert p[0] == 0x80 and p[1] == 0  # RTP version 2, PCMU
                assert int.from_bytes(p[2:4], "big") == k
                assert int.from_bytes(p[4:8], "big") == 160 * k
                assert int.from_bytes(p[8:12], "big") == i + 1
            body = np.frombuffer(b"".join(pkts), np.uint8).reshape(len(pkts), -1)
            stamps = rtp_load.decode_nibbles(body[:, rtp_load.STAMP_AT:rtp_load.STAMP_AT + rtp_load.STAMP_NIBBLES])
            idx = rtp_load.decode_nibbles(body[:, rtp_load.IDX_AT:rtp_load.IDX_AT + rtp_load.IDX_NIBBLES])
            assert (idx == i).all()
            assert (np.diff(stamps.astype(np.int64)) > 0).all() and int(stamps[0]) >= before
    finally:
        gen.close()
        for s in relays:
            s.close()
    assert r["sent"] == n * 10
    assert r["measured_received"] == 0 and r["loss_pct"] == 100.0


def test_call_log_places_each_message_at_its_share_of_its_call():
    log = rtp_load._CallLog(capacity=1)  # grows past its capacity
    log.add(stamp_ns=1_000, row=10, count=4, call_ns=2_000, done_ns=2_400)
    log.add(stamp_ns=5_000, row=0, count=2, call_ns=5_100, done_ns=5_300)
    stamp = np.array([1_000, 1_000, 5_000, 5_000, 1_000, 4_999, 9_999])
    idx = np.array([10, 13, 0, 1, 14, 0, 0])
    assert list(log.send_times(stamp, idx)) == [2_000, 2_300, 5_100, 5_200, -1, -1, -1]
    assert log.ns_per_message() == (400 + 200) / 6
    assert list(rtp_load._CallLog(4).send_times(np.array([1]), np.array([0]))) == [-1]


def test_call_log_reports_the_messages_sent_in_slow_calls():
    log = rtp_load._CallLog(capacity=8)
    for i in range(5):
        log.add(stamp_ns=i + 1, row=0, count=10, call_ns=100 * i, done_ns=100 * i + 50)  # 5 ns/message
    log.add(stamp_ns=9, row=0, count=10, call_ns=1_000, done_ns=1_500)  # 50 ns/message: preempted
    assert log.slow_share() == 10 / 60
