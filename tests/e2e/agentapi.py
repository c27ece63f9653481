"""The agent desktop and the payments system as the proofs use them: HTTPS with verification on.

`AgentApi` talks to the gateway's agent API verifying it against DATA_DIR/tls/ca.pem;
every response body and every server-sent-events stream it reads is also written to
the run's artifact folder, so that the card-data search reads exactly what an agent
desktop received. `detokenize` is the payments system: mTLS with a `payments`
client certificate to the vault (its answer holds the PAN: it is never written).
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway import pki
from tests.peers.child import ROOT


def mint_token(data_dir: Path, role: str, agent: str | None = None) -> str:
    """`tonewall token issue` as an operator would run it."""
    args = [sys.executable, "-m", "gateway.cli", "token", "issue", "--role", role, "--data-dir", str(data_dir)]
    if agent:
        args += ["--agent", agent]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True, timeout=20)
    return out.stdout.strip()


class AgentApi:
    """A bearer-token client for /v1 (one TLS connection per request; SSE in a thread)."""

    def __init__(self, base_url: str, ca_file: Path, token: str, log_dir: Path) -> None:
        url = urlsplit(base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 443
        self.context = ssl.create_default_context(cafile=str(ca_file))
        self.token = token
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = (log_dir / "api-responses.log").open("a")

    def _connection(self, timeout_s: float) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=timeout_s)

    def request(self, method: str, path: str, body: Any = None, timeout_s: float = 5.0) -> tuple[int, Any]:
        """(status, parsed JSON body); the raw body goes to the artifact log."""
        conn = self._connection(timeout_s)
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        self.log.write(f"{method} {path} {response.status} {raw.decode('utf-8', 'replace')}\n")
        self.log.flush()
        return response.status, json.loads(raw) if raw else None

    def call_for(self, caller_user: str, timeout_s: float = 5.0) -> dict[str, Any]:
        """The active call from `caller_user` (the user part of the caller's URI); polls until listed."""
        deadline = time.monotonic() + timeout_s
        while True:
            status, body = self.request("GET", "/v1/calls")
            if status != 200:
                raise AssertionError(f"GET /v1/calls answered {status}: {body}")
            calls = [c for c in body["calls"] if c["caller"].split("@")[0].removeprefix("sip:") == caller_user]
            if calls:
                return calls[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no call from {caller_user} in {body}")
            time.sleep(0.1)

    def start_capture(self, call_id: str, fields: list[str] | None = None) -> tuple[int, Any]:
        return self.request("POST", f"/v1/calls/{call_id}/captures",
                            {"fields": fields} if fields is not None else None)

    def follow(self, capture_id: str) -> EventStream:
        return EventStream(self, capture_id).start()


class EventStream:
    """A capture's server-sent events, read in a thread until the stream ends."""

    def __init__(self, api: AgentApi, capture_id: str) -> None:
        self.api = api
        self.capture_id = capture_id
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.raw = bytearray()
        self.error: BaseException | None = None
        self.status = 0
        self._done = threading.Event()
        self._connected = threading.Event()

    def start(self) -> EventStream:
        threading.Thread(target=self._run, daemon=True).start()
        if not self._connected.wait(5):
            raise AssertionError("SSE stream did not connect")
        return self

    def _run(self) -> None:
        conn = self.api._connection(timeout_s=60)
        try:
            conn.request("GET", f"/v1/captures/{self.capture_id}/events",
                         headers={"Authorization": f"Bearer {self.api.token}", "Accept": "text/event-stream"})
            response = conn.getresponse()
            self.status = response.status
            self._connected.set()
            block = b""
            while True:
                line = response.readline()
                if not line:
                    break
                self.raw += line
                if line in (b"\n", b"\r\n"):
                    self._event(block)
                    block = b""
                else:
                    block += line
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self.error = exc
        finally:
            conn.close()
            self._connected.set()
            (self.api.log_dir / f"sse-{self.capture_id}.txt").write_bytes(bytes(self.raw))
            self._done.set()

    def _event(self, block: bytes) -> None:
        name, data = "message", ""
        for line in block.decode().splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
        if data:
            self.events.append((name, json.loads(data)))

    def wait_end(self, timeout_s: float) -> dict[str, Any]:
        """The final capture view (the `end` event); raises if the stream did not end in time."""
        if not self._done.wait(timeout_s):
            raise AssertionError(f"SSE stream did not end; events so far: {self.events}")
        ends = [data for name, data in self.events if name == "end"]
        if not ends:
            raise AssertionError(f"SSE stream ended without an end event ({self.error!r}): {self.events}")
        return ends[-1]

    def wait_for(self, predicate: Any, timeout_s: float) -> dict[str, Any]:
        """The first event data matching `predicate` (polls the list the thread fills)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for _, data in list(self.events):
                if predicate(data):
                    return data
            time.sleep(0.02)
        raise AssertionError(f"no matching SSE event; events: {self.events}")


def detokenize(vault_url: str, data_dir: Path, token: str) -> dict[str, Any]:
    """The vault's answer for a token, asked with a `payments` client certificate (mTLS)."""
    ca = pki.ensure_ca(data_dir).cert_path
    cert = pki.issue_client_cert(data_dir, "payments", "payments")
    context = pki.client_ssl_context(ca, cert=cert)
    url = urlsplit(vault_url)
    conn = http.client.HTTPSConnection(url.hostname, url.port, context=context, timeout=5)
    try:
        conn.request("POST", "/v1/detokenize", body=json.dumps({"token": token}),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            raise AssertionError(f"vault detokenize answered {response.status}")
        return json.loads(response.read())
    finally:
        conn.close()
