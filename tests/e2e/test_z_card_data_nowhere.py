"""Proofs 5 and 6, run last (file order): no card data in anything the proofs produced; the audit log verifies.

Searched: both gateways' output (stdout/stderr, tracebacks included), their data dirs
(audit JSONL, vault SQLite and its WAL while the vault is open and again after it
closed, keys, certificates), a /metrics scrape, every SSE stream body and API answer
the agent desktop received, the PJSIP peers' output, and `tonewall audit verify --list`.
A control plants card data in a scratch folder and checks the same search finds it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cards import CVVS, INBAND_CVV, INBAND_PAN, PANS, RFC4733_PAN
from tests.e2e.leaksearch import search
from tests.peers.child import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

END_EVENT = {"tokenized": "capture.completed", "failed": "capture.failed", "cancelled": "capture.cancelled"}


def _final_views(folder: Path, exclude: str | None = None) -> list[dict[str, Any]]:
    """The `end` event of every SSE stream saved under `folder` (not under its subfolder `exclude`)."""
    views = []
    for path in sorted(folder.rglob("sse-*.txt")):
        if exclude is not None and path.relative_to(folder).parts[0] == exclude:
            continue
        ends = [line for line in path.read_text().splitlines() if line.startswith("data:")]
        if ends:
            views.append(json.loads(ends[-1][5:]))
    return views


@pytest.fixture(scope="module")
def finished(gateway, artifacts: Path) -> dict[str, Any]:
    """Scrape metrics and search the live data dir (WAL open), then stop the gateway (keeping its log)."""
    if not list(artifacts.rglob("sse-*.txt")):
        pytest.skip("nothing to search: run tests/e2e as a whole (the capture proofs produce the outputs)")
    with urllib.request.urlopen(gateway.metrics_url, timeout=5) as response:
        scrape = response.read()
    (artifacts / "metrics.txt").write_bytes(scrape)
    live_hits, live_files = search([gateway.data_dir], PANS, CVVS)
    returncode = gateway.stop()
    return {"scrape": scrape.decode(), "live_hits": live_hits, "live_files": live_files, "returncode": returncode}


def test_search_finds_planted_card_data(tmp_path):
    """The control: each way a PAN or CVV could be written is found; clean text is not flagged."""
    plants = {
        "plain.log": f"card {INBAND_PAN} ok",
        "run7.log": f"prefix {RFC4733_PAN[3:10]} suffix",
        "spaced.txt": " ".join(INBAND_PAN[i:i + 4] for i in range(0, 16, 4)),
        "listed.json": json.dumps(list(RFC4733_PAN[:8])),
        "cvv.json": json.dumps({"cvv": INBAND_CVV}),
    }
    for name, text in plants.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "wide.bin").write_bytes(b"\x00\x01" + INBAND_PAN.encode("utf-16-le"))
    (tmp_path / "clean.log").write_text(f"brand visa last4 {INBAND_PAN[-4:]} 123 ms port 21688 cvv=***")
    # Log clocks that spell a 7-digit run of a test PAN through the separators are not card data...
    pan = PANS[7]
    clock = f"2026-11-{pan[0:2]} {pan[2:4]}:{pan[4:6]}:{pan[6:8]},204 INFO x\n{pan[0:2]}:{pan[2:4]}:{pan[4:6]}.{pan[6:9]} y"
    (tmp_path / "clock.log").write_text(clock)
    # ... but a PAN next to a clock still is.
    (tmp_path / "after_clock.log").write_text(f"2026-11-30 03:12:21,204 INFO card {INBAND_PAN}")
    plants["after_clock.log"] = ""
    hits, searched = search([tmp_path], PANS, CVVS)
    assert searched == len(plants) + 3
    assert {h.path.name for h in hits} == set(plants) | {"wide.bin"}


def test_card_data_nowhere(finished, artifacts):
    assert finished["returncode"] == 0
    assert finished["live_files"] >= 5
    assert finished["live_hits"] == [], [(str(h.path), h.what) for h in finished["live_hits"]]
    hits, searched = search([artifacts], PANS, CVVS)
    assert searched >= 20
    assert hits == [], [(str(h.path), h.offset, h.what) for h in hits]
    # What was searched is what the proofs made: the captures happened, their outputs are here.
    assert (artifacts / "gateway" / "gateway.log").exists() and (artifacts / "processor-down" / "gateway.log").exists()
    assert list((artifacts / "gateway" / "data" / "vault").glob("*.sqlite3*"))
    tokenized = [v for v in _final_views(artifacts) if v["state"] == "tokenized"]
    assert len(tokenized) >= 3
    scrape = finished["scrape"]
    assert 'tonewall_captures_total{outcome="tokenized"}' in scrape
    for log in artifacts.rglob("gateway.log"):
        assert "Traceback" not in log.read_text(), f"{log} holds an exception"


@pytest.mark.parametrize("which", ["gateway", "processor-down"])
def test_audit_verify_lists_the_captures(finished, artifacts, which):
    data_dir = artifacts / which / "data"
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "verify", "--data-dir", str(data_dir),
                          "--list"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    (artifacts / f"audit-verify-{which}.txt").write_text(out.stdout + out.stderr)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1].startswith("audit: ok")
    lines = out.stdout.splitlines()
    # The session gateway served every proof but the processor-down one, which had its own.
    views = _final_views(artifacts / which) if which == "processor-down" else _final_views(artifacts, "processor-down")
    assert views
    for view in views:
        capture = f"capture_id={view['capture_id']}"
        events = [line.split()[2] for line in lines if capture in line]
        assert events[0] == "capture.started", (view["capture_id"], events)
        assert END_EVENT[view["state"]] in events
        ended = next(line for line in lines if capture in line and END_EVENT[view["state"]] in line)
        if view["state"] == "tokenized":
            assert f"token={view['token']}" in ended and f"last4={view['last4']}" in ended
        else:
            assert f"outcome={view['reason']}" in ended
