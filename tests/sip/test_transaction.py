"""RFC 3261 section 17 transactions: two layers exchanging messages with a fake clock."""

from __future__ import annotations

from gateway.sip.message import SipRequest, SipResponse, build_response, parse_message
from gateway.sip.transaction import (
    AckTimedOut,
    Peer,
    RequestReceived,
    ResponseReceived,
    TimerConfig,
    TransactionLayer,
    TransactionTimedOut,
    TransportFailed,
    TxState,
)

UAC = Peer("udp", "192.0.2.1", 5060)
UAS = Peer("udp", "192.0.2.2", 5060)


def request(method: str = "INVITE", branch: str = "z9hG4bKabc", transport: str = "UDP") -> SipRequest:
    text = (
        f"{method} sip:bob@192.0.2.2 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 192.0.2.1:5060;branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@192.0.2.1>;tag=a1\r\n"
        "To: <sip:bob@192.0.2.2>\r\n"
        "Call-ID: tx-test\r\n"
        f"CSeq: 1 {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, SipRequest)
    return msg


def events(layer: TransactionLayer) -> list:
    out = []
    while (e := layer.next_event()) is not None:
        out.append(e)
    return out


def deliver(src: TransactionLayer, dst: TransactionLayer, src_peer: Peer, now: float) -> list[bytes]:
    """Move everything `src` wants to send into `dst`; return the raw datagrams moved."""
    sent = src.messages_to_send()
    for data, _ in sent:
        dst.receive(parse_message(data), src_peer, now)
    return [d for d, _ in sent]


def run_until(layer: TransactionLayer, end: float) -> list[float]:
    """Fire timers up to `end`; return the times at which something was sent."""
    times = []
    while (t := layer.get_timer()) is not None and t <= end:
        layer.handle_timer(t)
        if layer.messages_to_send():
            times.append(t)
    return times


def test_invite_rejected_ladder():
    client, server = TransactionLayer(), TransactionLayer()
    key = client.send_request(request(), UAS, 0.0)
    deliver(client, server, UAC, 0.0)
    (ev,) = events(server)
    assert isinstance(ev, RequestReceived) and ev.request.method == "INVITE"
    # 100 Trying goes out at once and stops timer A.
    (trying,) = deliver(server, client, UAS, 0.01)
    assert trying.startswith(b"SIP/2.0 100 Trying")
    assert client.state(key) is TxState.PROCEEDING
    assert run_until(client, 20.0) == []
    server.send_response(ev.key, build_response(ev.request, 486, to_tag="b1"), 1.0)
    deliver(server, client, UAS, 1.0)
    (_, busy) = events(client)
    assert isinstance(busy, ResponseReceived) and busy.response.status == 486
    (ack,) = deliver(client, server, UAC, 1.0)
    assert ack.startswith(b"ACK sip:bob@192.0.2.2 SIP/2.0")
    assert b"branch=z9hG4bKabc" in ack and b";tag=b1" in ack
    assert events(server) == []  # the ACK for a non-2xx is absorbed
    assert server.state(ev.key) is TxState.CONFIRMED
    # A retransmitted 486 is re-ACKed without a new event.
    client.receive(busy.response, UAS, 2.0)
    assert len(client.messages_to_send()) == 1 and events(client) == []
    run_until(client, 40.0)
    run_until(server, 40.0)
    assert len(client) == 0 and len(server) == 0


def test_timer_a_doubles_and_b_times_out():
    client = TransactionLayer()
    key = client.send_request(request(), UAS, 0.0)
    client.messages_to_send()
    assert run_until(client, 100.0) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    (ev,) = events(client)
    assert ev == TransactionTimedOut(key, "INVITE", server=False)
    assert client.get_timer() is None


def test_timer_e_caps_at_t2_and_f_times_out():
    client = TransactionLayer(TimerConfig(t1_s=0.5, t2_s=4.0))
    client.send_request(request("OPTIONS"), UAS, 0.0)
    client.messages_to_send()
    times = run_until(client, 100.0)
    assert times[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]
    assert times[-1] == 31.5
    assert isinstance(events(client)[0], TransactionTimedOut)


def test_configurable_t1():
    client = TransactionLayer(TimerConfig(t1_s=0.1))
    client.send_request(request(), UAS, 0.0)
    client.messages_to_send()
    assert client.get_timer() == 0.1
    assert run_until(client, 100.0)[-1] > 6.0
    assert isinstance(events(client)[0], TransactionTimedOut)


def test_reliable_transport_skips_retransmissions():
    tcp = Peer("tcp", "192.0.2.2", 5060, connection_id=7)
    client = TransactionLayer()
    client.send_request(request(transport="TCP"), tcp, 0.0)
    assert len(client.messages_to_send()) == 1
    assert client.get_timer() == 32.0  # only timer B
    server = TransactionLayer()
    server.receive(request(transport="TCP"), Peer("tcp", "192.0.2.1", 40000, 9), 0.0)
    (ev,) = events(server)
    server.messages_to_send()
    server.send_response(ev.key, build_response(ev.request, 404, to_tag="x"), 0.0)
    (_, dest), = server.messages_to_send()
    assert dest.connection_id == 9
    assert server.get_timer() == 32.0  # no G, only H


def test_non_invite_ladder_and_retransmission_absorbed():
    client, server = TransactionLayer(), TransactionLayer()
    key = client.send_request(request("OPTIONS"), UAS, 0.0)
    deliver(client, server, UAC, 0.0)
    (ev,) = events(server)
    assert server.messages_to_send() == []  # no 100 for non-INVITE
    # Retransmission before any response: absorbed silently (17.2.2 Trying).
    client.handle_timer(0.5)
    deliver(client, server, UAC, 0.5)
    assert events(server) == [] and server.messages_to_send() == []
    server.send_response(ev.key, build_response(ev.request, 200, to_tag="t"), 0.6)
    deliver(server, client, UAS, 0.6)
    (resp,) = events(client)
    assert isinstance(resp, ResponseReceived) and resp.response.status == 200
    assert client.state(key) is TxState.COMPLETED
    # A late retransmission of the request gets the same 200 again.
    server.receive(request("OPTIONS"), UAC, 1.0)
    (again, dest), = server.messages_to_send()
    assert again.startswith(b"SIP/2.0 200 OK") and dest == UAC
    run_until(server, 40.0)
    run_until(client, 40.0)
    assert len(server) == 0 and len(client) == 0


def test_invite_2xx_retransmitted_until_confirmed():
    server = TransactionLayer()
    server.receive(request(), UAC, 0.0)
    (ev,) = events(server)
    server.messages_to_send()
    server.send_response(ev.key, build_response(ev.request, 200, to_tag="t"), 0.0)
    server.messages_to_send()
    assert run_until(server, 2.0) == [0.5, 1.5]
    server.confirm(ev.key)
    assert run_until(server, 40.0) == []
    assert events(server) == [] and len(server) == 0


def test_invite_2xx_never_acked_reports():
    server = TransactionLayer()
    server.receive(request(), UAC, 0.0)
    (ev,) = events(server)
    server.send_response(ev.key, build_response(ev.request, 200, to_tag="t"), 0.0)
    server.messages_to_send()
    times = run_until(server, 40.0)
    assert times[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]
    assert events(server) == [AckTimedOut(ev.key)]


def test_error_response_never_acked_timer_h():
    server = TransactionLayer()
    server.receive(request(), UAC, 0.0)
    (ev,) = events(server)
    server.send_response(ev.key, build_response(ev.request, 503, to_tag="t"), 0.0)
    server.messages_to_send()
    assert run_until(server, 40.0)[:4] == [0.5, 1.5, 3.5, 7.5]
    assert events(server) == [TransactionTimedOut(ev.key, "INVITE", server=True)]


def test_invite_retransmission_gets_last_provisional():
    server = TransactionLayer()
    server.receive(request(), UAC, 0.0)
    (ev,) = events(server)
    server.messages_to_send()
    server.send_response(ev.key, build_response(ev.request, 180, to_tag="t"), 0.1)
    server.messages_to_send()
    server.receive(request(), UAC, 0.5)
    (data, dest), = server.messages_to_send()
    assert data.startswith(b"SIP/2.0 180") and dest == UAC
    assert events(server) == []


def test_2xx_retransmission_and_cancel_lookup():
    client = TransactionLayer()
    key = client.send_request(request(), UAS, 0.0)
    client.messages_to_send()
    ok = build_response(request(), 200, to_tag="t")
    client.receive(ok, UAS, 0.1)
    client.receive(ok, UAS, 0.6)
    first, second = events(client)
    assert not first.retransmission and second.retransmission and second.key == key
    server = TransactionLayer()
    server.receive(request(), UAC, 0.0)
    (ev,) = events(server)
    cancel = request("CANCEL")
    assert server.server_invite_for_cancel(cancel) == ev.key
    server.receive(cancel, UAC, 0.2)
    (cev,) = events(server)
    assert cev.key != ev.key and cev.request.method == "CANCEL"


def test_via_stamped_and_response_routed_by_rport():
    server = TransactionLayer()
    nat = Peer("udp", "203.0.113.9", 40123)
    server.receive(request(), nat, 0.0)
    (ev,) = events(server)
    via = ev.request.top_via
    assert via.params["received"] == "203.0.113.9" and via.params["rport"] == "40123"
    (_, dest), = server.messages_to_send()
    assert dest == nat


def test_stray_response_ignored():
    client = TransactionLayer()
    client.receive(build_response(request(), 200, to_tag="t"), UAS, 0.0)
    assert events(client) == [] and client.messages_to_send() == []


def test_server_response_parse_round_trip():
    server = TransactionLayer()
    server.receive(request(), UAC, 0.0)
    (data, _), = server.messages_to_send()
    resp = parse_message(data)
    assert isinstance(resp, SipResponse) and resp.status == 100 and resp.to_tag is None


def test_transport_failure_ends_client_transactions_on_that_flow_only():
    """RFC 3261 17.1.4: a send failure ends the client transaction at once and tells the TU."""
    client = TransactionLayer()
    other = Peer("udp", "192.0.2.3", 5060)
    k1 = client.send_request(request(branch="z9hG4bK1"), UAS, 0.0)
    k2 = client.send_request(request("OPTIONS", branch="z9hG4bK2"), UAS, 0.0)
    k3 = client.send_request(request(branch="z9hG4bK3"), other, 0.0)
    client.messages_to_send()
    client.transport_failed(UAS, 0.2)
    failed = events(client)
    assert sorted((e.key, e.method, e.server) for e in failed) == sorted(
        [(k1, "INVITE", False), (k2, "OPTIONS", False)]
    )
    assert all(isinstance(e, TransportFailed) for e in failed)
    assert client.state(k1) is TxState.TERMINATED and client.state(k3) is TxState.CALLING
    # No retransmission and no second report for the failed ones; the other flow carries on.
    run_until(client, 40.0)
    late = events(client)
    assert [type(e) for e in late] == [TransactionTimedOut] and late[0].key == k3


def test_transport_failure_of_one_connection_spares_the_others():
    client = TransactionLayer()
    conn7 = Peer("tcp", "192.0.2.2", 5060, 7)
    conn8 = Peer("tcp", "192.0.2.2", 5060, 8)
    k7 = client.send_request(request(branch="z9hG4bK7", transport="TCP"), conn7, 0.0)
    k8 = client.send_request(request(branch="z9hG4bK8", transport="TCP"), conn8, 0.0)
    client.transport_failed(conn7, 1.0)
    assert [e.key for e in events(client)] == [k7]
    assert client.state(k8) is TxState.CALLING


def test_transport_failure_ends_server_transaction_sending_a_response():
    """RFC 3261 17.2.4: the server transaction cannot deliver its response: the TU hears it."""
    client, server = TransactionLayer(), TransactionLayer()
    client.send_request(request(), UAS, 0.0)
    deliver(client, server, UAC, 0.0)
    (ev,) = events(server)
    server.messages_to_send()
    server.send_response(ev.key, build_response(ev.request, 200, to_tag="b1"), 1.0)
    server.messages_to_send()
    server.transport_failed(UAC, 1.1)
    (failed,) = events(server)
    assert failed == TransportFailed(ev.key, "INVITE", True)
    assert run_until(server, 40.0) == []  # nothing retransmitted, no AckTimedOut
    assert events(server) == []


def test_transport_failure_after_final_response_is_not_reported():
    client, server = TransactionLayer(), TransactionLayer()
    key = client.send_request(request("OPTIONS"), UAS, 0.0)
    deliver(client, server, UAC, 0.0)
    (ev,) = events(server)
    server.send_response(ev.key, build_response(ev.request, 200, to_tag="b1"), 0.1)
    deliver(server, client, UAS, 0.1)
    events(client)
    client.transport_failed(UAS, 0.2)
    assert events(client) == [] and client.state(key) is TxState.COMPLETED
