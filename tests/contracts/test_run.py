"""Contracts 2, 4 and 5 on a real `tonewall run`: flags, files, signals, RTP ports, a real call with a
capture through the agent API, the metrics, and SIP to the next hop per URI transport."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from gateway.demo.endpoint import Endpoint
from gateway.demo.useragent import CallEnded, CallEstablished
from gateway.demo.voice import CallerVoice, SensitiveKeys
from tests.integration.gateway_proc import options
from tests.peers.ports import free_port

from .gateway_run import Tonewall, tonewall_cmd

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

AGENT = "1001"
CARD_KEYS = "4111111111111111#1230#123#"


def test_run_has_every_contract_flag():
    r = subprocess.run(tonewall_cmd() + ["run", "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    for flag in ("--config", "--sip-listen", "--next-hop", "--api-listen", "--metrics-listen", "--rtp-ports",
                 "--data-dir"):
        assert re.search(rf"{flag}\b", r.stdout), flag


def _ssl_context(data_dir: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(data_dir / "tls" / "ca.pem"))


def _udp_ports_of(pid: int) -> set[int]:
    out = subprocess.run(["ss", "-uanpH"], capture_output=True, text=True, timeout=10).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if f"pid={pid}," in line}


async def _wait(endpoint: Endpoint, kind: type, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while True:
        event = await endpoint.wait_event(max(0.1, deadline - time.monotonic()))
        if isinstance(event, kind):
            return event


async def _sse_events(session: aiohttp.ClientSession, url: str, headers: dict, out: list, ctype: list) -> None:
    async with session.get(url, headers=headers) as resp:
        ctype.append(resp.headers.get("Content-Type", ""))
        event = None
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                out.append((event, json.loads(line[5:])))
                if event == "end":
                    return


async def test_a_real_call_through_tonewall_run(tmp_path):
    """Default data dir in an empty cwd; a call caller -> gateway -> agent; capture via the API; SIGTERM."""
    loop = asyncio.get_running_loop()
    rng = np.random.default_rng(2)
    agent = await Endpoint.open(AGENT, CallerVoice(rng))
    caller = await Endpoint.open("caller", CallerVoice(rng))
    sources: dict[str, set] = {"caller": set(), "agent": set()}
    for name, ep in (("caller", caller), ("agent", agent)):
        proto = ep._rtp.get_protocol()
        inner = proto.datagram_received

        def spy(data, addr, inner=inner, name=name):
            sources[name].add(addr)
            inner(data, addr)
        proto.datagram_received = spy
    gw = Tonewall(tmp_path, next_hop=f"sip:127.0.0.1:{agent.sip_port}")
    await asyncio.to_thread(gw.start)
    try:
        # ---- contract 2: one listening line naming what the flags asked for
        [line] = gw.listening_lines()
        for fragment in (f"127.0.0.1:{gw.sip_port}", f"{gw.rtp_low}-{gw.rtp_high}", f"127.0.0.1:{gw.api_port}",
                         f"127.0.0.1:{gw.metrics_port}", f"sip:127.0.0.1:{agent.sip_port}"):
            assert fragment in line, (fragment, line)
        data_dir = gw.effective_data_dir  # default ./tonewall-data, relative to the cwd
        assert (data_dir / "tls" / "ca.pem").is_file()

        # ---- contract 2: the development CA verifies the API certificate for each name
        ctx = _ssl_context(data_dir)
        for name in ("localhost", "127.0.0.1"):
            with socket.create_connection(("127.0.0.1", gw.api_port), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname=name) as tls:
                    der = tls.getpeercert(binary_form=True)
        san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert "localhost" in san.value.get_values_for_type(x509.DNSName)
        assert "127.0.0.1" in {str(a) for a in san.value.get_values_for_type(x509.IPAddress)}

        # ---- contract 2: token issue (default data dir of the cwd), alone on one line
        tokens = {}
        for role, extra in (("agent", ["--agent", AGENT]), ("ops", []), ("agent-other", ["--agent", "2002"])):
            r = gw.token("--role", role.split("-")[0], *extra, "--ttl", "600")
            assert r.returncode == 0, r.stderr
            assert r.stdout.endswith("\n") and r.stdout.count("\n") == 1 and r.stdout.strip() == r.stdout[:-1]
            assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\n", r.stdout)
            tokens[role] = r.stdout.strip()
        auth = {"Authorization": f"Bearer {tokens['agent']}"}
        api = f"https://127.0.0.1:{gw.api_port}"

        # ---- a real call
        caller.call(f"sip:{AGENT}@127.0.0.1:{gw.sip_port}", f"sip:127.0.0.1:{gw.sip_port}")
        c_up = await _wait(caller, CallEstablished)
        a_up = await _wait(agent, CallEstablished)
        caller.voice.talk(1.5)
        await asyncio.sleep(1.0)

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:
            # ---- contract 4: GET /v1/calls
            async with http.get(f"{api}/v1/calls", headers=auth) as resp:
                assert resp.status == 200 and resp.content_type == "application/json"
                calls = (await resp.json())["calls"]
            assert len(calls) == 1
            call = calls[0]
            assert {"call_id", "agent", "caller", "state", "started_at"} <= set(call), call
            assert call["agent"] == AGENT
            async with http.get(f"{api}/v1/calls",
                                headers={"Authorization": f"Bearer {tokens['agent-other']}"}) as resp:
                assert (await resp.json())["calls"] == []  # only the calls this caller of the API may see
            async with http.get(f"{api}/v1/calls") as resp:
                assert resp.status == 401

            # ---- contract 4: POST capture -> 201, top-level capture_id; SSE; GET; keyed card -> token
            async with http.post(f"{api}/v1/calls/{call['call_id']}/captures", headers=auth,
                                 json={"fields": ["pan", "expiry", "cvv"]}) as resp:
                assert resp.status == 201
                capture_id = (await resp.json())["capture_id"]
            assert isinstance(capture_id, str) and capture_id
            events: list = []
            ctype: list = []
            sse = loop.create_task(_sse_events(http, f"{api}/v1/captures/{capture_id}/events", auth, events, ctype))
            async with http.get(f"{api}/v1/captures/{capture_id}", headers=auth) as resp:
                view = await resp.json()
            assert view["state"] == "collecting"
            keys = SensitiveKeys(CARD_KEYS)
            caller.voice.key(keys)
            keys.wipe()
            await asyncio.wait_for(sse, 40)
            async with http.get(f"{api}/v1/captures/{capture_id}", headers=auth) as resp:
                view = await resp.json()
            assert view["state"] == "tokenized", view
            assert view["brand"].lower() == "visa" and view["last4"] == "1111" and view["token"]
            assert ctype[0].startswith("text/event-stream")
            kinds = [e for e, _ in events]
            assert kinds[0] == "state" and kinds[-1] == "end" and "progress" in kinds, kinds
            sse_text = json.dumps(events)  # never a PAN digit run; the last four only
            assert "41111" not in sse_text and "11111" not in sse_text
            assert isinstance(call["started_at"], (str, int, float))

            # ---- contract 4: DELETE cancels
            async with http.post(f"{api}/v1/calls/{call['call_id']}/captures", headers=auth) as resp:
                assert resp.status == 201
                second = (await resp.json())["capture_id"]
            async with http.delete(f"{api}/v1/captures/{second}", headers=auth) as resp:
                assert resp.status in (200, 202, 204)
            async with http.get(f"{api}/v1/captures/{second}", headers=auth) as resp:
                assert (await resp.json())["state"] == "cancelled"

            # ---- contract 4: health, readiness, OpenAPI lists every contract path
            for path in ("/healthz", "/readyz"):
                async with http.get(f"{api}{path}") as resp:
                    assert resp.status == 200, path
            async with http.get(f"{api}/openapi.json") as resp:
                spec = await resp.json()
            assert spec["openapi"].startswith("3.")
            paths = {re.sub(r"\{[^}]+\}", "{}", p) for p in spec["paths"]}
            for path in ("/v1/calls", "/v1/calls/{}/captures", "/v1/captures/{}", "/v1/captures/{}/events",
                         "/healthz", "/readyz"):
                assert path in paths, path

            # ---- contract 5: metrics while the call is up
            async with http.get(f"http://127.0.0.1:{gw.metrics_port}/metrics") as resp:
                assert resp.status == 200
                scrape = await resp.text()

        # ---- contract 2: every RTP port in --rtp-ports (SDP, packet sources, bound sockets)
        in_range = range(gw.rtp_low, gw.rtp_high + 1)
        assert c_up.media.remote_rtp[1] in in_range and a_up.media.remote_rtp[1] in in_range
        assert sources["caller"] and sources["agent"]
        for addr in sources["caller"] | sources["agent"]:
            assert addr[1] in in_range, addr
        bound = _udp_ports_of(gw.proc.pid) - {gw.sip_port}
        assert bound and all(p in in_range for p in bound), sorted(bound)

        # ---- contract 2: outside a capture the caller's audio reaches the agent unchanged
        before_capture = set(agent.received.payloads[:40])
        assert len(before_capture) >= 30 and before_capture <= set(caller.sent.payloads)

        _check_metrics(scrape)

        # ---- contract 2: SIGTERM stops within a few seconds, exit 0, the call is hung up
        code, took_s = await asyncio.to_thread(gw.terminate)
        assert code == 0, gw.lines[-10:]
        await _wait(caller, CallEnded, 3)
        await _wait(agent, CallEnded, 3)
        # ---- contract 2: writes only under its data dir
        assert gw.stray_files() == []
    finally:
        gw.kill()
        caller.close()
        agent.close()


METRICS = {
    "tonewall_packet_processing_seconds": ("histogram", set()),
    "tonewall_packets": ("counter", {"direction", "outcome"}),
    "tonewall_calls_active": ("gauge", set()),
    "tonewall_dtmf_digits": ("counter", {"method"}),
    "tonewall_captures": ("counter", {"outcome"}),
    "tonewall_tokenization_seconds": ("histogram", set()),
    "tonewall_tokenization_errors": ("counter", {"kind"}),
    "tonewall_sip_requests": ("counter", {"direction", "method"}),
    "tonewall_sip_responses": ("counter", {"direction", "status_class"}),
    "tonewall_event_loop_lag_seconds": ("histogram", set()),
}


def _check_metrics(scrape: str) -> None:
    """Contract 5: names, types, labels, `_total` counters, base units, and the call moved them."""
    families = {f.name: f for f in text_string_to_metric_families(scrape)}
    for name, (kind, labels) in METRICS.items():
        assert name in families, name
        family = families[name]
        assert family.type == kind, (name, family.type)
        if kind == "counter":
            assert all(s.name == f"{name}_total" for s in family.samples if not s.name.endswith("_created"))
        for s in family.samples:
            assert labels <= set(s.labels) | ({"le"} if kind == "histogram" else set()), (name, s.labels)
    for family in families.values():
        assert family.name.startswith("tonewall_"), family.name  # "all prefixed tonewall_"
        assert not re.search(r"_(ms|milliseconds|us|microseconds|bytes_kb|minutes)(_|$)", family.name), family.name

    def value(name: str, **labels: str) -> float:
        return sum(s.value for f in families.values() for s in f.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    assert value("tonewall_calls_active") == 1
    assert value("tonewall_packet_processing_seconds_count") > 0
    directions = {s.labels["direction"] for s in families["tonewall_packets"].samples if s.value > 0}
    assert {"caller_to_agent", "agent_to_caller"} <= directions
    assert value("tonewall_dtmf_digits_total", method="inband") >= len(CARD_KEYS) - 3
    assert value("tonewall_captures_total", outcome="tokenized") == 1
    assert value("tonewall_captures_total", outcome="cancelled") == 1
    assert value("tonewall_tokenization_seconds_count") >= 1
    assert value("tonewall_sip_requests_total", method="INVITE") >= 2  # in from the caller, out to the agent
    assert value("tonewall_sip_responses_total") >= 2
    assert value("tonewall_event_loop_lag_seconds_count") > 0


@pytest.mark.parametrize("uri_suffix, transport", [(";transport=tcp", "tcp"), ("", "udp")])
def test_next_hop_transport_and_request_uri_user(tmp_path, uri_suffix, transport):
    """SIP to the next hop goes over UDP unless the URI says TCP; the Request-URI user is kept."""
    hop_port = free_port()
    kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as hop:
        hop.bind(("127.0.0.1", hop_port))
        if transport == "tcp":
            hop.listen(1)
        hop.settimeout(10)
        gw = Tonewall(tmp_path, next_hop=f"sip:127.0.0.1:{hop_port}{uri_suffix}", data_dir=tmp_path / "data")
        gw.start()
        try:
            _send_invite(gw.sip_port, "4242")
            if transport == "tcp":
                conn, _ = hop.accept()
                conn.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65535)
                conn.close()
            else:
                data = hop.recv(65535)
            request_line = data.split(b"\r\n", 1)[0].decode()
            assert re.match(r"INVITE sips?:4242@", request_line), request_line
            via = re.search(rb"(?im)^(via|v):\s*SIP/2\.0/(\w+)", data)
            assert via and via.group(2).decode().lower() == transport
        finally:
            code, _ = gw.terminate()
            gw.kill()
        assert code == 0
        assert gw.stray_files() == []  # --data-dir elsewhere: the cwd stays empty
        assert (tmp_path / "data" / "tls" / "ca.pem").is_file()


def test_sips_next_hop_is_tls(tmp_path):
    """`sips:` (and ;transport=tls) next hops get a TLS ClientHello, never plain SIP."""
    hop_port = free_port()
    with socket.socket() as hop:
        hop.bind(("127.0.0.1", hop_port))
        hop.listen(1)
        hop.settimeout(10)
        gw = Tonewall(tmp_path, next_hop=f"sips:127.0.0.1:{hop_port}", data_dir=tmp_path / "data")
        gw.start()
        try:
            _send_invite(gw.sip_port, "4242")
            conn, _ = hop.accept()
            conn.settimeout(10)
            first = conn.recv(5)
            conn.close()
            assert first[:1] == b"\x16" and first[1:2] == b"\x03", first  # TLS handshake record
        finally:
            gw.terminate()
            gw.kill()


def _send_invite(gw_port: int, user: str) -> None:
    """A caller's INVITE with a PCMU offer, over UDP, from a throw-away socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        sdp = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
               f"m=audio {port + 2} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
               "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n")
        msg = (f"INVITE sip:{user}@127.0.0.1:{gw_port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKcontract{port};rport\r\n"
               "Max-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag=c1\r\n"
               f"To: <sip:{user}@127.0.0.1>\r\nCall-ID: contract-{port}@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
               f"Contact: <sip:caller@127.0.0.1:{port}>\r\nContent-Type: application/sdp\r\n"
               f"Content-Length: {len(sdp)}\r\n\r\n{sdp}")
        s.sendto(msg.encode(), ("127.0.0.1", gw_port))


def test_embedded_defaults_are_the_contracts():
    from gateway.config import load_config

    config = load_config(None, {})
    assert (config.sip.listen.host, config.sip.listen.port) == ("127.0.0.1", 5060)
    assert (config.api.listen.host, config.api.listen.port) == ("127.0.0.1", 8443)
    assert (config.metrics.listen.host, config.metrics.listen.port) == ("127.0.0.1", 9464)
    assert tuple(config.media.rtp_ports) == (20000, 29999)
    assert config.data_dir in ("./tonewall-data", "tonewall-data")
    assert config.processor.kind == "vault"


def test_flags_override_every_toml_key_and_sip_answers_on_udp_and_tcp(tmp_path):
    """A config naming other ports and dirs for all six keys: the flags win, the config's dir is never made."""
    hop_port = free_port()
    gw = Tonewall(tmp_path, next_hop=f"sip:127.0.0.1:{hop_port}", data_dir=tmp_path / "flag-data")
    unused = [free_port() for _ in range(4)]
    config = tmp_path / "tonewall.toml"
    config.write_text(f'data_dir = "{tmp_path / "config-data"}"\n'
                      f'[sip]\nlisten = "127.0.0.1:{unused[0]}"\nnext_hop = "sip:127.0.0.1:{unused[1]}"\n'
                      f'[api]\nlisten = "127.0.0.1:{unused[2]}"\n[metrics]\nlisten = "127.0.0.1:{unused[3]}"\n'
                      f'[media]\nrtp_ports = "{gw.rtp_low - 100}-{gw.rtp_low - 2}"\n')
    gw.args += ["--config", str(config)]
    gw.start()
    try:
        [line] = gw.listening_lines()
        for fragment in (f"127.0.0.1:{gw.sip_port}", f"{gw.rtp_low}-{gw.rtp_high}", f"127.0.0.1:{gw.api_port}",
                         f"127.0.0.1:{gw.metrics_port}", f"sip:127.0.0.1:{hop_port}"):
            assert fragment in line, (fragment, line)
        for port in unused:
            assert str(port) not in line
        assert options(gw.sip_port, "udp").startswith("SIP/2.0 200")
        assert options(gw.sip_port, "tcp").startswith("SIP/2.0 200")
    finally:
        code, _ = gw.terminate()
        gw.kill()
    assert code == 0
    assert (tmp_path / "flag-data" / "tls" / "ca.pem").is_file() and not (tmp_path / "config-data").exists()
