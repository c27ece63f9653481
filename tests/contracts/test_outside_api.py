"""Contracts 4 and 5 from outside: the agent API and /metrics of a running `tonewall run`.

Plain HTTP clients poking at what an integrator's code or a scanner sends: wrong
methods (405 must carry Allow), HEAD, trailing slashes, wrong content types, huge and
chunked bodies, unknown and missing fields, odd Authorization headers, the SSE event
names, and a scrape parsed with prometheus_client's own parser checked against every
family the README names. The API is verified against DATA_DIR/tls/ca.pem, as the
README tells clients to.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import re
import ssl
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .test_outside_sip import Rig, sdp

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
AGENT = "1001"


class Api:
    """The running gateway's API and metrics, with an agent's and an ops token, and one live call."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        gw = rig.gw
        self.ctx = ssl.create_default_context(cafile=str(gw.data_dir / "tls" / "ca.pem"))
        self.tokens = {}
        for name, args in (("agent", ["--role", "agent", "--agent", AGENT]), ("ops", ["--role", "ops"])):
            r = subprocess.run([sys.executable, "-m", "gateway.cli", "token", "issue", *args, "--data-dir",
                                str(gw.data_dir)], capture_output=True, text=True, timeout=30, cwd=ROOT)
            assert r.returncode == 0, r.stderr
            self.tokens[name] = r.stdout.strip()
        call_id, inv = rig.offer(sdp(40000))
        assert inv is not None
        self.final = rig.answer(call_id, inv, sdp(41000))
        assert self.final.status == 200
        self.sip_call_id = call_id

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                token: str | None = "agent", chunked: bool = False) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.rig.gw.api_port, context=self.ctx, timeout=10)
        try:
            h = dict(headers or {})
            if token:
                h.setdefault("Authorization", f"Bearer {self.tokens[token]}")
            conn.request(method, path, body=body, headers=h, encode_chunked=chunked)
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, **kw) -> tuple[int, dict]:
        status, headers, body = self.request(method, path, **kw)
        assert headers.get_content_type() == "application/json", (method, path, headers.get("Content-Type"))
        return status, json.loads(body)

    def metrics(self, method: str = "GET", path: str = "/metrics") -> tuple[int, http.client.HTTPMessage, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.rig.gw.metrics_port, timeout=10)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read().decode()
        finally:
            conn.close()

    def call_id(self) -> str:
        status, body = self.json("GET", "/v1/calls")
        assert status == 200 and len(body["calls"]) == 1, body
        return body["calls"][0]["call_id"]


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[Api]:
    rig = Rig(tmp_path_factory.mktemp("api"))
    try:
        yield Api(rig)
    finally:
        rig.close()


def _is_error(status: int, body: dict, expect: int) -> None:
    assert status == expect, (status, body)
    assert set(body) == {"error", "reason"} and all(isinstance(v, str) and v for v in body.values()), body


# ---- methods, HEAD, paths

ROUTES = {
    "/v1/calls": {"GET", "HEAD"},
    "/v1/calls/X/captures": {"POST"},
    "/v1/captures/X": {"GET", "HEAD", "DELETE"},
    "/v1/captures/X/events": {"GET", "HEAD"},
    "/healthz": {"GET", "HEAD"},
    "/readyz": {"GET", "HEAD"},
    "/openapi.json": {"GET", "HEAD"},
    "/": {"GET", "HEAD"},
}


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_wrong_methods_get_405_with_allow(api, path):
    """RFC 9110 15.5.6: a 405 MUST carry Allow listing the target resource's methods."""
    for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} - ROUTES[path]):
        status, headers, raw = api.request(method, path, body=b"{}" if method in ("POST", "PUT", "PATCH") else None,
                                           headers={"Content-Type": "application/json"})
        assert status == 405, (method, path, status)
        allowed = {m.strip() for m in (headers.get("Allow") or "").split(",") if m.strip()}
        assert allowed == ROUTES[path], (method, path, headers.get("Allow"))
        _is_error(status, json.loads(raw), 405)


@pytest.mark.parametrize("path, token", [("/healthz", None), ("/readyz", None), ("/openapi.json", None),
                                         ("/v1/calls", "agent")])
def test_head_is_get_without_the_body(api, path, token):
    g_status, g_headers, g_body = api.request("GET", path, token=token)
    h_status, h_headers, h_body = api.request("HEAD", path, token=token)
    assert g_status == h_status == 200 and g_body and h_body == b""
    assert h_headers.get("Content-Type") == g_headers.get("Content-Type")
    assert h_headers.get("Content-Length") == g_headers.get("Content-Length") == str(len(g_body))


@pytest.mark.parametrize("path", ["/v1/calls/", "/v1/captures/", "/healthz/", "/v1", "/v1/",
                                  "/v1/captures/x/events/more", "/v1/captures/" + "a" * 300, "/v1/calls/x/captures/",
                                  "/V1/calls", "/%2e%2e/%2e%2e/etc/passwd", "/static/../openapi.json"])
def test_paths_that_are_not_routes_get_a_json_404(api, path):
    status, headers, raw = api.request("GET", path)
    assert status == 404, (path, status, raw[:200])
    assert headers.get_content_type() == "application/json", (path, headers.get("Content-Type"))
    _is_error(status, json.loads(raw), 404)
    assert b"root:" not in raw


# ---- authorization header forms

def test_authorization_scheme_is_case_insensitive_and_other_schemes_are_401(api):
    token = api.tokens["agent"]
    for form in (f"bearer {token}", f"BEARER {token}", f"Bearer   {token}"):
        status, _ = api.json("GET", "/v1/calls", headers={"Authorization": form}, token=None)
        assert status == 200, form  # RFC 9110 11.1: the auth scheme is case-insensitive
    for form in ("Basic YWdlbnQ6cHc=", "Bearer", "Bearer ", f"Token {token}", f"Bearer {token}x", token):
        status, headers, raw = api.request("GET", "/v1/calls", headers={"Authorization": form}, token=None)
        _is_error(status, json.loads(raw), 401)
        assert (headers.get("WWW-Authenticate") or "").startswith("Bearer"), form  # RFC 6750 3
    status, _, raw = api.request("GET", f"/v1/calls?access_token={token}", token=None)
    assert status == 401  # a token in the URL lands in logs: never accepted


# ---- start-capture bodies, then the capture's life over the API and SSE

JSON = {"Content-Type": "application/json"}


def test_capture_request_bodies_then_a_capture_cancelled_over_sse(api):
    call_id = api.call_id()
    url = f"/v1/calls/{call_id}/captures"
    refused = [
        (b'{"fields":["pan"]}', {"Content-Type": "text/plain"}, 415),
        (b"fields=pan", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
        (b'{"fields":["pan"]}', {"Content-Type": "application/xml"}, 415),
        (b'{"fields":["pan"]}', {}, 415),
        (b"{not json", JSON, 400),
        (b'{"fields": ["pan"]', JSON, 400),
        (b"\xff\xfe\x00", JSON, 400),
        (b'["pan"]', JSON, 400),
        (b'"pan"', JSON, 400),
        (b'{"fields": "pan"}', JSON, 400),
        (b'{"fields": []}', JSON, 400),
        (b'{"fields": [1, 2]}', JSON, 400),
        (b'{"fields": ["pan", "pin"]}', JSON, 400),
        (b'{"fields": ["expiry", "cvv"]}', JSON, 400),
        (b'{"fields": ["pan", "pan"]}', JSON, 400),
        (b'{"fields": ["pan"], "amount": 100}', JSON, 400),
        (json.dumps({"fields": ["pan"], "pad": "x" * 20000}).encode(), JSON, 413),
    ]
    for body, headers, expect in refused:
        status, body_json = api.json("POST", url, body=body, headers=headers)
        _is_error(status, body_json, expect)
    status, _ = api.json("POST", url, body=iter([b'{"fields": ["pan"], "pad": "'] + [b"x" * 4096] * 256 + [b'"}']),
                         headers=JSON, chunked=True)
    assert status == 413  # a chunked body has no Content-Length to refuse early; 1 MB is still too large
    status, body_json = api.json("POST", f"/v1/calls/{uuid.uuid4().hex}/captures", body=b"{}", headers=JSON)
    _is_error(status, body_json, 404)

    # None of the refusals started anything: an empty JSON body takes the default fields.
    status, view = api.json("POST", url, body=b"", headers=JSON)
    assert status == 201, view
    capture_id = view["capture_id"]
    assert view["fields"] == ["pan", "expiry", "cvv"] and view["state"] == "collecting"
    status, body_json = api.json("POST", url, body=b'{"fields": ["pan", "expiry", "cvv"]}',
                                 headers={"Content-Type": "application/json; charset=utf-8"})
    _is_error(status, body_json, 409)
    status, body_json = api.json("GET", f"/v1/captures/{capture_id}", token="ops")
    assert status == 403, body_json  # ops is read-only over calls and health, not captures

    conn = http.client.HTTPSConnection("127.0.0.1", api.rig.gw.api_port, context=api.ctx, timeout=10)
    try:
        conn.request("GET", f"/v1/captures/{capture_id}/events",
                     headers={"Authorization": f"Bearer {api.tokens['agent']}", "Accept": "text/event-stream"})
        stream = conn.getresponse()
        assert stream.status == 200 and stream.headers.get_content_type() == "text/event-stream"
        status, view = api.json("DELETE", f"/v1/captures/{capture_id}")
        assert status == 200 and view["state"] == "cancelled", view
        text = stream.read().decode()  # the stream ends after the `end` event
    finally:
        conn.close()
    events = []
    for block in filter(None, text.split("\n\n")):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if fields:
            events.append((fields.get("event"), json.loads(fields["data"])))
    names = [name for name, _ in events]
    assert names[0] == "state" and names[-1] == "end" and set(names) <= {"state", "progress", "end"}, names
    assert events[-1][1]["state"] == "cancelled" and events[-1][1]["capture_id"] == capture_id
    status, view = api.json("GET", f"/v1/captures/{capture_id}")
    assert (status, view["state"]) == (200, "cancelled")
    status, view = api.json("DELETE", f"/v1/captures/{capture_id}")
    assert (status, view["state"]) == (200, "cancelled")  # cancelling twice changes nothing


# ---- metrics

README_FAMILIES = {
    # family (as the parser names it): (type, label names)
    "tonewall_packet_processing_seconds": ("histogram", set()),
    "tonewall_packets": ("counter", {"direction", "outcome"}),
    "tonewall_packets_dropped": ("counter", {"direction", "reason"}),
    "tonewall_packets_masked": ("counter", set()),
    "tonewall_masking_lookahead_seconds": ("histogram", set()),
    "tonewall_rtp_jitter_seconds": ("histogram", set()),
    "tonewall_rtp_packets_lost": ("counter", {"direction"}),
    "tonewall_feedback_packets": ("counter", set()),
    "tonewall_feedback_dropped": ("counter", set()),
    "tonewall_calls_transcoded": ("counter", set()),
    "tonewall_sip_codec_leniency": ("counter", {"leg"}),
    "tonewall_calls_active": ("gauge", set()),
    "tonewall_calls": ("counter", {"reason"}),
    "tonewall_sip_requests": ("counter", {"direction", "method"}),
    "tonewall_sip_responses": ("counter", {"direction", "status_class"}),
    "tonewall_sip_messages_rejected": ("counter", {"reason"}),
    "tonewall_sip_dropped": ("counter", {"reason"}),
    "tonewall_dtmf_digits": ("counter", {"method"}),
    "tonewall_dtmf_detection_latency_seconds": ("histogram", set()),
    "tonewall_captures": ("counter", {"outcome"}),
    "tonewall_captures_active": ("gauge", set()),
    "tonewall_tokenization_seconds": ("histogram", set()),
    "tonewall_tokenization_errors": ("counter", {"kind"}),
    "tonewall_event_loop_lag_seconds": ("histogram", set()),
    "tonewall_gc_pause_seconds": ("histogram", {"generation"}),
    "tonewall_auth_failures": ("counter", {"reason"}),
    "tonewall_api_forbidden": ("counter", set()),
    "tonewall_build_info": ("gauge", {"version"}),
}


def test_metrics_scrape_has_every_readme_family_with_its_type_and_labels(api):
    api.request("GET", "/v1/calls", token=None)  # one auth failure, so its family has a sample
    status, headers, text = api.metrics()
    assert status == 200 and headers.get("Content-Type", "").startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, (kind, labels) in README_FAMILIES.items():
        assert name in families, name
        family = families[name]
        assert family.type == kind, (name, family.type)
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)
            if kind == "counter":
                assert sample.name in (f"{name}_total", f"{name}_created"), sample.name
                assert sample.value >= 0
        if kind == "histogram":
            suffixes = {s.name[len(name):] for s in family.samples}
            assert {"_bucket", "_count", "_sum"} <= suffixes, (name, suffixes)
            assert any(s.labels.get("le") == "+Inf" for s in family.samples), name
            series: dict[tuple, list[float]] = {}
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    series.setdefault(tuple(sorted((k, v) for k, v in s.labels.items() if k != "le")), []).append(s.value)
            assert all(b == sorted(b) for b in series.values()), name  # cumulative, per labelled series
    for family in families.values():
        assert family.name.startswith("tonewall_"), family.name
        assert family.samples, family.name  # labelled counters start at 0 with their known labels
    bounds = sorted(float(s.labels["le"]) for s in families["tonewall_packet_processing_seconds"].samples
                    if s.name.endswith("_bucket") and s.labels["le"] != "+Inf")
    assert (bounds[0], bounds[-1]) == (1e-6, 0.05), bounds  # README: buckets 1 us to 50 ms
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert value[("tonewall_calls_active", ())] == 1  # the fixture's call is up
    assert sum(v for (n, labels), v in value.items() if n == "tonewall_sip_requests_total"
               and ("method", "INVITE") in labels) >= 2
    assert sum(v for (n, _), v in value.items() if n == "tonewall_auth_failures_total") >= 1


def test_metrics_endpoint_methods_and_paths(api):
    status, headers, body = api.metrics("HEAD")
    assert status == 200 and body == ""
    assert api.metrics("POST")[0] == 405
    assert api.metrics("GET", "/nothing")[0] == 404


# ---- the call listing

def test_call_listing_shape(api):
    status, body = api.json("GET", "/v1/calls")
    [call] = body["calls"]
    assert set(call) == {"call_id", "agent", "caller", "state", "started_at"}, call
    assert call["agent"] == AGENT and call["caller"] == "caller"  # user parts of the agent leg and the From URI
    started = datetime.datetime.fromisoformat(call["started_at"])
    assert started.tzinfo is not None
    assert abs((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()) < 600
    assert all(isinstance(v, str) and v for v in call.values())


def test_a_calls_started_at_does_not_move_between_requests(api):
    seen = {api.json("GET", "/v1/calls")[1]["calls"][0]["started_at"] for _ in range(5)}
    assert len(seen) == 1, seen


def test_openapi_documents_what_the_api_answers(api):
    """A client generated from /openapi.json must know every status the README lists for each route."""
    status, doc = api.json("GET", "/openapi.json", token=None)
    assert status == 200 and doc["openapi"].startswith("3.")
    ops = {(method.upper(), re.sub(r"\{[^}]+\}", "X", path)): op
           for path, item in doc["paths"].items() for method, op in item.items() if isinstance(op, dict)}
    readme_errors = {400, 401, 403, 404, 409, 413, 415, 422, 429}
    assert readme_errors <= {int(c) for c in ops[("POST", "/v1/calls/X/captures")]["responses"]}
    assert "201" in ops[("POST", "/v1/calls/X/captures")]["responses"]
    for (method, path), op in ops.items():
        if path.startswith("/v1/admin"):
            continue
        assert method in ROUTES[path], (method, path)  # documented operations exist with that method
        assert {"401", "403"} <= set(op["responses"]) or not path.startswith("/v1/"), (method, path)
    for path, methods in ROUTES.items():
        for method in methods - {"HEAD"}:
            assert (method, path) in ops, (method, path)  # and every route is documented


def test_concurrent_starts_on_one_call_give_one_capture(api):
    call_id = api.call_id()
    results: list = []

    def start() -> None:
        results.append(api.json("POST", f"/v1/calls/{call_id}/captures", body=b"{}", headers=JSON))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    statuses = sorted(status for status, _ in results)
    assert statuses == [201] + [409] * 7, statuses
    [view] = [body for status, body in results if status == 201]
    status, view = api.json("DELETE", f"/v1/captures/{view['capture_id']}")
    assert (status, view["state"]) == (200, "cancelled")


def test_a_capture_on_a_call_not_yet_answered_is_refused_as_such(api):
    rig = api.rig
    sip_call_id, inv = rig.offer(sdp(40020))
    assert inv is not None
    try:
        status, body = api.json("GET", "/v1/calls")
        [ringing] = [c for c in body["calls"] if c["state"] in ("trying", "ringing")]
        status, body = api.json("POST", f"/v1/calls/{ringing['call_id']}/captures", body=b"{}", headers=JSON)
        _is_error(status, body, 422)
        assert "answer" in body["reason"], body  # not "codec not inspectable": no codec is agreed yet
    finally:
        final = rig.answer(sip_call_id, inv, sdp(41000))
        rig.bye(sip_call_id, final, 2)


def _token(api: Api, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "token", "issue", *args, "--data-dir",
                        str(api.rig.gw.data_dir)], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_who_sees_and_who_may_capture_on_a_call(api):
    call_id = api.call_id()
    api.tokens.update(other=_token(api, "--role", "agent", "--agent", "2002"),
                      team=_token(api, "--role", "supervisor", "--agents", f"{AGENT},3003"),
                      other_team=_token(api, "--role", "supervisor", "--agents", "2002"))
    seen = {name: len(api.json("GET", "/v1/calls", token=name)[1]["calls"])
            for name in ("agent", "other", "team", "other_team", "ops")}
    assert seen == {"agent": 1, "other": 0, "team": 1, "other_team": 0, "ops": 1}, seen
    for name in ("other", "ops", "other_team"):
        status, body = api.json("POST", f"/v1/calls/{call_id}/captures", body=b"{}", headers=JSON, token=name)
        assert status in (403, 404), (name, status)  # never 201: only the call's agent starts a capture
        _is_error(status, body, status)
    status, view = api.json("POST", f"/v1/calls/{call_id}/captures", body=b"{}", headers=JSON)
    assert status == 201
    for name, expect in (("other", 403), ("other_team", 403), ("team", 200)):
        status, body = api.json("GET", f"/v1/captures/{view['capture_id']}", token=name)
        assert status == expect, (name, status, body)
    status, body = api.json("DELETE", f"/v1/captures/{view['capture_id']}", token="other")
    assert status == 403
    status, body = api.json("DELETE", f"/v1/captures/{view['capture_id']}")
    assert (status, body["state"]) == (200, "cancelled")


# ---- before the API exists: start-up errors name the path, and every data dir is private

def test_run_on_a_data_dir_that_is_a_file_names_the_path(tmp_path):
    (tmp_path / "data").write_text("not a directory")
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--data-dir", str(tmp_path / "data"),
                        "--sip-listen", "127.0.0.1:1", "--api-listen", "127.0.0.1:2", "--metrics-listen",
                        "127.0.0.1:3"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-800:]
    [line] = [x for x in r.stderr.splitlines() if "cannot start" in x]
    assert f"{tmp_path / 'data'}: data dir exists and is not a directory" in line, line


def test_vault_client_cert_creates_the_default_data_dir_0700(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "vault", "client-cert", "gw", "gateway"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr[-800:]
    assert stat.S_IMODE((tmp_path / "tonewall-data").stat().st_mode) == 0o700


@pytest.mark.timeout(60)
def test_vault_serve_creates_the_default_data_dir_0700(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "vault", "--listen", "127.0.0.1:0", "serve"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # bounded: the process is killed on the timeout below
            lines.append(line)
            if "vault listening on" in line or len(lines) > 50:
                break
        assert any("vault listening on" in x for x in lines), "".join(lines)[-800:]
        for folder in (tmp_path / "tonewall-data", tmp_path / "tonewall-data" / "vault"):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
