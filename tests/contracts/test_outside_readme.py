"""The README's two commands, as a newcomer runs them.

`tonewall run` with no flag at all, in an empty directory, on the embedded defaults:
the default ports are taken on a shared machine, so it runs in its own network
namespace (`unshare -n`, loopback only), where a probe in the same namespace checks
each default the README names, then stops it with SIGTERM. The test command is the
one `.ci/run` runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]

PROBE = r'''
import json, os, signal, socket, ssl, stat, subprocess, sys, time, urllib.request
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
cwd = os.getcwd()
proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run"], stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
out = {"lines": []}
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    line = proc.stdout.readline()
    if not line:
        break
    out["lines"].append(line.rstrip())
    if "tonewall listening" in line:
        break
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0)); s.settimeout(5)
    port = s.getsockname()[1]
    s.sendto((f"OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKreadme1\r\n"
              "Max-Forwards: 70\r\nFrom: <sip:p@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: readme@p\r\n"
              "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode(), ("127.0.0.1", 5060))
    out["sip_udp"] = s.recv(65535).decode().split("\r\n")[0]
    t = socket.create_connection(("127.0.0.1", 5060), timeout=5)
    out["sip_tcp_open"] = True
    t.close()
    ctx = ssl.create_default_context(cafile=os.path.join(cwd, "tonewall-data", "tls", "ca.pem"))
    out["api"] = urllib.request.urlopen("https://127.0.0.1:8443/healthz", context=ctx, timeout=5).status
    out["api_localhost"] = urllib.request.urlopen("https://localhost:8443/readyz", context=ctx, timeout=5).status
    body = urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=5).read().decode()
    out["metrics"] = "tonewall_calls_active" in body
    out["data_dir_mode"] = oct(stat.S_IMODE(os.stat(os.path.join(cwd, "tonewall-data")).st_mode))
    core = [ln for ln in open(f"/proc/{proc.pid}/limits") if ln.startswith("Max core file size")]
    out["core_limit"] = core[0].split()[4:6] if core else None
    modes = {}
    for folder, dirs, files in os.walk(os.path.join(cwd, "tonewall-data")):
        for name in dirs + files:
            path = os.path.join(folder, name)
            with open(path, "rb") if name in files else open(os.devnull, "rb") as f:
                private = b"PRIVATE KEY" in f.read(4096) or "key" in name
            modes[os.path.relpath(path, cwd)] = [stat.S_IMODE(os.lstat(path).st_mode), name in dirs, private]
    out["modes"] = modes
finally:
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        out["exit"] = proc.wait(timeout=8)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out["exit"] = "killed"
    out["stop_s"] = time.monotonic() - t0
    out["files"] = sorted(os.listdir(cwd))
print("PROBE " + json.dumps(out))
'''


def test_tonewall_run_with_no_flags_in_an_empty_directory(tmp_path):
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs a network namespace (unshare -n) to own the default ports")
    cwd = tmp_path / "empty"
    cwd.mkdir()
    env = dict(os.environ, HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([unshare, "-n", sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=80)
    [line] = [ln for ln in r.stdout.splitlines() if ln.startswith("PROBE ")] or [f"PROBE {{}} {r.stderr[-800:]}"]
    out = json.loads(line[6:])
    listening = [ln for ln in out["lines"] if "tonewall listening" in ln]
    assert listening, out["lines"][-5:]
    for fragment in ("udp+tcp:127.0.0.1:5060", "127.0.0.1:20000-29999", "https://127.0.0.1:8443",
                     "http://127.0.0.1:9464/metrics"):
        assert fragment in listening[0], (fragment, listening[0])
    assert out["sip_udp"].startswith("SIP/2.0 200"), out
    assert out["sip_tcp_open"] and out["api"] == 200 and out["api_localhost"] == 200 and out["metrics"], out
    assert out["data_dir_mode"] == "0o700", out
    assert out["core_limit"] == ["0", "0"], out["core_limit"]  # card data rules: no core dumps
    assert out["modes"], out
    for path, (mode, is_dir, private) in out["modes"].items():
        assert not mode & 0o002, (path, oct(mode))  # nothing writable by others
        if is_dir or private:
            assert not mode & 0o077, (path, oct(mode))  # folders and key material owner-only
    assert out["exit"] == 0 and out["stop_s"] < 5, out
    assert out["files"] == ["tonewall-data"], out  # writes only under its data dir


def test_the_readme_commands_are_the_ones_ci_and_the_package_provide():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", readme, re.S).group(1).splitlines()
    assert block[0].split("#")[0].strip() == "pip install . && tonewall run"
    test_command = block[1].split("#")[0].strip()
    assert test_command == ".ci/install-deps && python3 -m pytest"
    assert os.access(ROOT / ".ci" / "install-deps", os.X_OK) and os.access(ROOT / ".ci" / "run", os.X_OK)
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".ci/install-deps" in ci and re.search(r"(?m)^python3 -m pytest\s*$", ci)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["tonewall"] == "gateway.cli:main"
    assert project["requires-python"].startswith(">=3.11")
