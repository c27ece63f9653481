"""Hostile input against a running gateway while a real call carries audio: SIP/UDP, SIP/TCP, RTP/RTCP, HTTPS.

One `tonewall run` serves the whole module; the phases run in order, each bounded in
count and time and seeded (TONEWALL_FUZZ_SEED replays a run). After each phase the
gateway must: be alive, answer OPTIONS over UDP and TCP, still carry the live call's
audio to the agent bit for bit (or have ended that call on both sides, never half),
log no traceback or internal error, have counted what it refused, keep its RSS bounded,
and set up a new call.
"""

from __future__ import annotations

import os
import random
import socket
import ssl
import time

import pytest

from tests.robustness.live import LiveCall, LiveGateway, sip_socket
from tests.robustness.mutate import Dialog, Mutator, SipTemplates, render, rtp_garbage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SEED = int(os.environ.get("TONEWALL_FUZZ_SEED", "20261129"))
UDP_MESSAGES = 2500
UDP_BUDGET_S = 25.0
RSS_GROWTH_KIB = 64 * 1024


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    gw = LiveGateway(tmp_path_factory.mktemp("fuzz"), seed=SEED)
    try:
        gw.ensure_live()
        gw.rss_start_kib = gw.rss_kib()
        yield gw
    finally:
        gw.close()
    assert gw.gateway.returncode == 0, gw.gateway.lines[-5:]


def dialog_of(call: LiveCall) -> Dialog:
    d = call.caller.ua.dialog
    assert d is not None
    return Dialog(d.call_id, d.local_tag, d.remote_tag, d.remote_target, d.local_seq)


def sip_counted(m: dict[str, float]) -> float:
    """Everything the SIP edge counted as received or refused."""
    return (LiveGateway.total(m, "tonewall_sip_requests_total", direction="in")
            + LiveGateway.total(m, "tonewall_sip_responses_total", direction="in")
            + LiveGateway.total(m, "tonewall_sip_dropped_total"))


def assert_healthy(live: LiveGateway, phase: str) -> dict[str, float]:
    """The checks after every phase; returns the metrics read."""
    assert live.alive(), f"{phase}: gateway died (seed {SEED}): {live.gateway.lines[-10:]}"
    assert live.answers_options() == ("SIP/2.0 200 OK", "SIP/2.0 200 OK"), phase
    previous = live.live
    if previous is not None and not previous.up:
        # the phase ended the live call: it must have ended on both sides (a BYE each way), never half
        _ends(live, previous, phase)
    call = live.ensure_live()
    live.audio_bit_exact(call)
    live.wait_until(lambda: live.total(live.metrics(), "tonewall_calls_active") == 1, 40.0,
                    f"{phase}: calls other than the live one stayed up")
    assert live.log_problems() == [], f"{phase} (seed {SEED})"
    rss = live.rss_kib()
    assert rss - live.rss_start_kib < RSS_GROWTH_KIB, f"{phase}: RSS grew {rss - live.rss_start_kib} KiB"
    live.new_call_works()
    assert call.up, f"{phase}: the live call dropped during the new-call check"
    return live.metrics()


def sip_stream(rng: random.Random, live: LiveGateway, templates: SipTemplates, mutator: Mutator,
               local: SipTemplates | None = None):
    """Yields (socket index, kind, bytes): index 1 is the caller's own host, 0 a foreign one (127.0.0.2).

    Only the foreign host gets in-dialog BYE/CANCEL and method mutations: from the caller's
    own host a well-formed one legitimately ends the call.
    """
    while True:
        call = live.live
        roll = rng.random()
        source = 0
        if roll < 0.4:
            start, items, body = templates.out_of_dialog(rng.choice(["INVITE", "OPTIONS", "INFO", "BYE", "CANCEL",
                                                                     "ACK", "REGISTER", "MESSAGE"]))
        elif roll < 0.85:
            if local is not None and rng.random() < 0.5:
                source = 1
                start, items, body = local.in_dialog(rng.choice(["INVITE", "INFO", "OPTIONS", "UPDATE", "NOTIFY"]),
                                                     dialog_of(call))
            else:
                start, items, body = templates.in_dialog(
                    rng.choice(["INVITE", "INFO", "OPTIONS", "ACK", "UPDATE", "CANCEL", "BYE", "NOTIFY"]),
                    dialog_of(call))
        elif roll < 0.95:
            start, items, body = templates.response(dialog_of(call))
        else:
            yield 0, "random", rng.randbytes(rng.randrange(1, 1500))
            continue
        if rng.random() < 0.1:
            yield source, "clean", render(start, items, body)
            continue
        kind, data = mutator.mutate(start, items, body)
        if source == 1 and (kind == "method" or not data.startswith(start.split(" ")[0].encode())):
            continue
        yield source, kind, data


def replace_ended_call(live: LiveGateway, where: str) -> bool:
    """If the phase ended the live call, check it ended on both sides and place a new one."""
    call = live.live
    if call is not None and call.up:
        return False
    if call is not None:
        _ends(live, call, where)
    live.ensure_live()
    return True


def test_sip_udp(live: LiveGateway):
    rng = random.Random(SEED)
    before = live.metrics()
    foreign, local = sip_socket(host="127.0.0.2"), sip_socket()
    for sock in (foreign, local):
        sock.settimeout(0.0)
    templates = SipTemplates(rng, live.gateway.sip_port, foreign.getsockname()[1])
    mine = SipTemplates(rng, live.gateway.sip_port, local.getsockname()[1])
    stream = sip_stream(rng, live, templates, Mutator(rng), mine)
    sent = answered = replaced = 0
    kinds: dict[str, int] = {}
    deadline = time.monotonic() + UDP_BUDGET_S
    gw = ("127.0.0.1", live.gateway.sip_port)
    for i in range(UDP_MESSAGES):
        if time.monotonic() > deadline:
            break
        if i % 100 == 0:
            replaced += replace_ended_call(live, f"udp message {i}")
        source, kind, data = next(stream)
        try:
            (foreign, local)[source].sendto(data, gw)
        except OSError:
            continue  # larger than a UDP datagram can be
        sent += 1
        kinds[kind] = kinds.get(kind, 0) + 1
        if i % 50 == 49:
            answered += _drain(foreign) + _drain(local)
            assert live.answers_options()[0] == "SIP/2.0 200 OK", f"no OPTIONS answer after {i} (seed {SEED})"
    time.sleep(0.2)
    answered += _drain(foreign) + _drain(local)
    foreign.close()
    local.close()
    after = assert_healthy(live, "sip/udp")
    print(f"\nsip/udp: {sent} messages, {answered} answers, live call replaced {replaced}x, kinds {kinds}")
    # every datagram was either handled or counted as dropped (OPTIONS probes add to both sides)
    assert sip_counted(after) - sip_counted(before) >= sent
    refused = {k: v - before.get(k, 0.0) for k, v in after.items()
               if k.startswith(("tonewall_sip_messages_rejected_total", "tonewall_sip_dropped_total"))
               and v > before.get(k, 0.0)}
    print("refused:", refused)
    assert sum(refused.values()) > sent // 10
    assert not [k for k in refused if "internal" in k or "core_error" in k], refused
    assert answered > sent // 4


def _ends(live: LiveGateway, call: LiveCall, where: str) -> bool:
    live.wait_until(lambda: call.ended_both_sides, 5.0,
                    f"half-ended call at {where} (seed {SEED}): caller {call.caller.ua.phase}, agent {call.agent.ua.phase}, "
                    f"gateway calls {live.total(live.metrics(), 'tonewall_calls_active')}")
    return True


def _drain(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            sock.recv(65536)
        except (BlockingIOError, ConnectionRefusedError):
            return n
        n += 1


TCP_CONNECTIONS = 120
TCP_BUDGET_S = 20.0


def _read_some(sock: socket.socket, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, OSError):
        pass
    return data


def test_sip_tcp(live: LiveGateway):
    rng = random.Random(SEED + 1)
    before = live.metrics()
    port = live.gateway.sip_port
    templates = SipTemplates(rng, port, 5060, transport="TCP")
    stream = sip_stream(rng, live, templates, Mutator(rng))
    deadline = time.monotonic() + TCP_BUDGET_S
    slow: list[socket.socket] = []
    sent = pipelined_answers = 0
    for n in range(TCP_CONNECTIONS):
        if time.monotonic() > deadline:
            break
        if n % 20 == 0:
            replace_ended_call(live, f"tcp connection {n}")
        sock = sip_socket(socket.SOCK_STREAM, "127.0.0.2")
        sock.connect(("127.0.0.1", port))
        wire = b""
        for _ in range(rng.randrange(1, 12)):
            _, _, data = next(stream)
            wire += data + rng.choice([b"", b"", b"\r\n\r\n", b"\r\n", rng.randbytes(rng.randrange(1, 40))])
            sent += 1
        style = rng.choice(["split", "split", "close_mid", "slowloris", "pipelined_valid"])
        if style == "pipelined_valid":
            probe = render(*templates.out_of_dialog("OPTIONS")[0:3])
            wire = probe * 5
        if style in ("close_mid", "slowloris"):
            wire = wire[:rng.randrange(1, max(2, len(wire)))]
        try:
            i = 0
            while i < len(wire):
                step = rng.choice([1, 7, 100, 1400, 65536])
                sock.sendall(wire[i:i + step])
                i += step
        except OSError:
            pass  # the gateway closed a connection whose framing broke: expected
        if style == "slowloris" and len(slow) < 30:
            slow.append(sock)
            continue
        if style == "pipelined_valid":
            answers = b""
            end = time.monotonic() + 3
            while answers.count(b"SIP/2.0 200") < 5 and time.monotonic() < end:
                answers += _read_some(sock, 0.2)
            pipelined_answers += answers.count(b"SIP/2.0 200")
            assert answers.count(b"SIP/2.0 200") == 5, f"pipelined OPTIONS got {answers[:200]!r} (seed {SEED})"
        sock.close()
    # many connections at once, each asking OPTIONS (below the per-host cap)
    many = [sip_socket(socket.SOCK_STREAM, "127.0.0.3") for _ in range(100)]
    for sock in many:
        sock.connect(("127.0.0.1", port))
        sock.sendall(render(*templates.out_of_dialog("OPTIONS")[0:3]))
    answered = sum(b"SIP/2.0 200" in _read_some(s, 0.05) or b"SIP/2.0 200" in _read_some(s, 2.0) for s in many)
    for sock in many + slow:
        sock.close()
    assert answered == len(many)
    after = assert_healthy(live, "sip/tcp")
    print(f"\nsip/tcp: {sent} messages on {TCP_CONNECTIONS} connections, {len(slow)} slowloris, "
          f"{pipelined_answers} pipelined answers, {answered} concurrent answers")
    refused = sum(after.get(k, 0.0) - before.get(k, 0.0) for k in after
                  if k.startswith(("tonewall_sip_messages_rejected_total", "tonewall_sip_dropped_total")))
    assert refused > 0
    assert not [k for k in after if ("internal" in k or "core_error" in k) and after[k]], after


RTP_PACKETS = 3000
RTP_BUDGET_S = 12.0


def test_rtp_rtcp(live: LiveGateway):
    rng = random.Random(SEED + 2)
    before = live.metrics()
    call = live.ensure_live()
    targets = []
    for host, rtp_port in (call.caller_leg_rtp, call.agent_leg_rtp):
        targets += [(host, rtp_port), (host, rtp_port + 1)]  # RFC 3550 11: RTCP on the next port
    sock = sip_socket()
    sock.settimeout(0.0)
    sent_before = len(call.caller.sent.payloads)
    kinds: dict[str, int] = {}
    deadline = time.monotonic() + RTP_BUDGET_S
    ssrc = rng.getrandbits(32)
    for i in range(RTP_PACKETS):
        if time.monotonic() > deadline:
            break
        kind, data = rtp_garbage(rng, ssrc, i & 0xFFFF, i * 160)
        try:
            sock.sendto(data, rng.choice(targets))
        except OSError:
            continue
        kinds[kind] = kinds.get(kind, 0) + 1
        if i % 200 == 199:
            _drain(sock)
            time.sleep(0.01)
    sock.close()
    # packets the caller never sent that reached the agent during the phase: injected by the fuzzer
    received = call.agent.received.payloads[:]
    sent = set(call.caller.sent.payloads)
    injected = sum(1 for p in received[sent_before // 2:] if p not in sent)
    after = assert_healthy(live, "rtp")
    dropped = live.total(after, "tonewall_packets_dropped_total") - live.total(before, "tonewall_packets_dropped_total")
    reasons = {k: v - before.get(k, 0.0) for k, v in after.items()
               if k.startswith("tonewall_packets_dropped_total") and v > before.get(k, 0.0)}
    print(f"\nrtp: {sum(kinds.values())} packets {kinds}; dropped {dropped:.0f} {reasons}; "
          f"{injected} foreign packets relayed to the agent")
    assert dropped > sum(kinds.values()) // 4


def test_foreign_rtp_source_is_not_relayed(live: LiveGateway):
    call = live.ensure_live()
    sock = sip_socket(host="127.0.0.2")
    sock.settimeout(0.0)
    marker = b"\x5a" * 160
    for i in range(50):
        sock.sendto(bytes([0x80, 0]) + (i).to_bytes(2, "big") + bytes(8) + marker, call.caller_leg_rtp)
        time.sleep(0.002)
    time.sleep(0.1)
    bled = _drain(sock)
    sock.close()
    injected = call.agent.received.payloads.count(marker)
    live.audio_bit_exact(call)
    assert (injected, bled) == (0, 0)


def _https(live: LiveGateway, raw: bytes, timeout_s: float = 3.0) -> bytes:
    """Send raw bytes over TLS to the API (verified against the development CA); return what came back."""
    ctx = ssl.create_default_context(cafile=str(live.gateway.data_dir / "tls" / "ca.pem"))
    with socket.create_connection(("127.0.0.1", live.gateway.api_port), timeout=timeout_s) as tcp:
        with ctx.wrap_socket(tcp, server_hostname="127.0.0.1") as tls:
            try:
                tls.sendall(raw)
            except OSError:
                pass
            data = b""
            try:
                while chunk := tls.recv(65536):
                    data += chunk
                    if len(data) > 1 << 20:
                        break
            except (TimeoutError, OSError):
                pass
            return data


def test_https_api(live: LiveGateway):
    rng = random.Random(SEED + 3)
    before = live.metrics()
    call_id = "x"
    paths = ["/v1/calls", f"/v1/calls/{call_id}/captures", "/v1/captures/abc", "/v1/captures/abc/events",
             "/static/../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd", "/static/..%2f..%2fpyproject.toml",
             "/static//etc/passwd", "/static/%00", "/" + "a" * 9000, "/v1/calls?" + "x=1&" * 2000, "/openapi.json",
             "/healthz", "/v1/admin/keys/reload", "*", "http://evil/", "/v1/calls/" + "%ff" * 50 + "/captures"]
    methods = ["GET", "POST", "DELETE", "PUT", "PATCH", "TRACE", "CONNECT", "OPTIONS", "HEAD", "FOO", "G\x00T"]
    tokens = ["", "Bearer", "Bearer x", "Bearer a.b.c", "Bearer " + "A" * 20000, "Basic Zm9vOmJhcg==",
              "Bearer eyJhbGciOiJub25lIn0.eyJyb2xlIjoiYWRtaW4ifQ.", "Bearer \xff\xfe"]
    bodies = [b"", b"{", b'{"fields": "pan"}', b'{"fields": [1, 2]}', b"[]" * 5000, b"\xff\xfe\x00",
              b'{"fields": ["pan"]' + b"]" * 3, b'{"a":' * 5000, b"x" * 300000]
    statuses: dict[str, int] = {}
    deadline = time.monotonic() + 20.0
    for i in range(160):
        if time.monotonic() > deadline:
            break
        method, path, token, body = rng.choice(methods), rng.choice(paths), rng.choice(tokens), rng.choice(bodies)
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        if token:
            head += f"Authorization: {token}\r\n"
        style = rng.choice(["ok", "ok", "huge_header", "many_headers", "bad_length", "chunked_garbage", "garbage",
                            "truncated"])
        if style == "huge_header":
            head += "X-Big: " + "b" * rng.choice([9000, 70000]) + "\r\n"
        elif style == "many_headers":
            head += "".join(f"X-{n}: v\r\n" for n in range(rng.choice([200, 2000])))
        length = str(len(body)) if style != "bad_length" else rng.choice(["-1", "abc", "99999999999", "1"])
        if style == "chunked_garbage":
            raw = (head + "Transfer-Encoding: chunked\r\n\r\n").encode("latin-1") + b"zz\r\nxx\r\n0\r\n"
        elif style == "garbage":
            raw = rng.randbytes(rng.randrange(1, 3000))
        else:
            raw = (head + f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode("latin-1") + body
            if style == "truncated":
                raw = raw[:rng.randrange(1, len(raw))]
        answer = _https(live, raw, timeout_s=1.0 if style in ("truncated", "bad_length") else 3.0)
        status = answer[9:12].decode("latin-1") if answer.startswith(b"HTTP/1.") else "closed"
        statuses[status] = statuses.get(status, 0) + 1
        assert status != "500", f"{method} {path[:60]} {style}: {answer[:300]!r} (seed {SEED})"
        if status == "200" and path.startswith("/static"):
            raise AssertionError(f"path traversal served {path!r}: {answer[:200]!r}")
    ok = _https(live, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200"), ok[:200]
    after = assert_healthy(live, "api")
    print(f"\napi: statuses {statuses}")
    assert statuses.get("400", 0) > 0 and "500" not in statuses, statuses
