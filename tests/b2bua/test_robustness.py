"""The core never raises on input, never reads a clock, never imports I/O."""

from __future__ import annotations

import ast
import pathlib

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.b2bua import MessageRejected
from tests.b2bua.ladder import CALLER, Net, request, sdp

ROOT = pathlib.Path(__file__).resolve().parents[2]
FORBIDDEN = {"asyncio", "socket", "ssl", "time", "select", "selectors", "prometheus_client", "aiohttp", "logging"}


def test_sans_io_imports():
    files = [ROOT / "gateway" / "b2bua.py", *sorted((ROOT / "gateway" / "sip").glob("*.py"))]
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_datagrams_never_raise(data):
    net = Net()
    raw_send(net, data)
    assert not [e for e in net.events if isinstance(e, MessageRejected) and e.reason.startswith("internal")]


INVITE = request("INVITE", body=sdp(40000))


def raw_send(net: Net, data: bytes) -> None:
    """Feed the core without parsing what it sends back (a salvaged 400 echoes the broken headers)."""
    net.gw.receive(data, CALLER, net.now)
    while (e := net.gw.next_event()) is not None:
        net.events.append(e)
    net.gw.messages_to_send()


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=len(INVITE)), st.binary(min_size=1, max_size=6))
def test_mutated_invites_never_crash(pos, junk):
    net = Net()
    raw_send(net, INVITE[:pos] + junk + INVITE[pos:])
    assert not [e for e in net.events if isinstance(e, MessageRejected) and e.reason.startswith("internal")]
    # a valid call still goes through afterwards
    out = net.send(request("INVITE", call_id="other", branch="z9hG4bKother", body=sdp(40000)))
    assert any(p == CALLER and getattr(m, "status", 0) == 100 for m, p in out)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_garbage_sdp_in_late_offer_2xx_and_ack_never_crash(offer_junk, answer_junk):
    """The new offer/answer paths (offer in 2xx, answer in ACK) survive any body."""
    from tests.b2bua.ladder import PBX, only

    net = Net()
    out = net.send(request("INVITE", body=b""))
    (inv,) = only(out, PBX)
    body = b"v=0\r\n" + offer_junk
    out = [(m, p) for m, p in net.send(net.answer(inv, 200, body=body), PBX)]
    oks = [m for m in only(out, CALLER) if getattr(m, "status", 0) == 200]
    if oks:
        ack = request("ACK", branch="z9hG4bKa", to_tag=oks[0].to_tag, body=b"v=0\r\n" + answer_junk)
        raw_send(net, ack)
    raw_send(net, b"")
    assert not [e for e in net.events if isinstance(e, MessageRejected) and e.reason.startswith("internal")]
