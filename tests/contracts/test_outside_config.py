"""Contract 2 from outside: `tonewall run` refuses each kind of bad config at start.

The README promises: "A wrong config is refused at start with the file, line and key
at fault ... and exit status 2." Here every TOML shape an operator can write is tried
(dotted keys, inline tables, sub-tables, arrays where tables belong, inf, IPv6 where
the SIP path cannot take it), plus bad flags, `tonewall token issue` on a bad data dir
and `tonewall check` on a data dir that is a file. Each run is a subprocess of the
`tonewall` command; they run side by side to keep the wall time down.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TONEWALL = [sys.executable, "-m", "gateway.cli"]
"""What the `tonewall` script runs (its pyenv shim costs a shell start per run)."""

pytestmark = pytest.mark.timeout(120)

BAD_CONFIGS: dict[str, tuple[str, int, str]] = {
    # name: (TOML text, line at fault, key named)
    "port-out-of-range": ('[sip]\nlisten = "127.0.0.1:99999"\n', 2, "sip.listen"),
    "listen-not-a-string": ('# comment\n\n[sip]\nlisten = 5060\n', 4, "sip.listen"),
    "odd-rtp-low": ('[media]\nrtp_ports = "20001-20010"\n', 2, "media.rtp_ports"),
    "rtp-range-reversed": ('[media]\nrtp_ports = "30000-20000"\n', 2, "media.rtp_ports"),
    "dotted-key": ('data_dir = "x"\nsip.listen = "bogus"\n', 2, "sip.listen"),
    "inline-table": ('\nsip = { listen = "bogus" }\n', 2, "sip.listen"),
    "quoted-key": ('[sip]\n"listen" = "nope"\n', 2, "sip.listen"),
    "unknown-sub-table": ('[sip]\nlisten = "127.0.0.1:5060"\n[sip.extra]\nfoo = 1\n', 3, "sip.extra"),
    "unknown-section": ('[nosuch]\nx = 1\n', 1, "nosuch"),
    "unknown-top-key": ('\nverbose = true\n', 2, "verbose"),
    "routes-not-tables": ('routes = [1, 2]\n', 1, "routes[0]"),
    "routes-single-table": ('[routes]\nmatch_user_prefix = "1"\n', 1, "routes"),
    "route-without-prefix": ('[[routes]]\nmatch_user_prefix = "1"\n[[routes]]\nnext_hop = "sip:a"\n', 3, "routes[1]"),
    "route-bad-mask": ('[[routes]]\nmatch_user_prefix = "1"\nmask = "never"\n', 3, "routes[0].mask"),
    "timeout-inf": ('[sip]\nsession_timeout_s = inf\n', 2, "sip.session_timeout_s"),
    "timeout-nan": ('[sip]\nmedia_timeout_s = nan\n', 2, "sip.media_timeout_s"),
    "bool-as-int": ('[capture]\nmax_attempts = true\n', 2, "capture.max_attempts"),
    "inline-secret": ('[processor]\nkind = "https-json"\napi_key = "sk_live_abc"\n', 3, "processor.api_key"),
    "plain-http-processor": ('[processor]\nkind = "https-json"\nurl = "http://psp.example/"\n', 3, "processor.url"),
    "kek-env-unset": ('[vault]\nkek_env = "TONEWALL_TEST_UNSET_KEK"\n', 2, "vault.kek_env"),
    "next-hop-not-sip": ('[sip]\nnext_hop = "http://pbx.example"\n', 2, "sip.next_hop"),
    "ipv6-sip-listen": ('[sip]\nlisten = "[::1]:5060"\n', 2, "sip.listen"),
    "ipv6-media": ('[media]\naddress = "::1"\n', 2, "media.address"),
    "api-on-the-sip-port": ('[api]\nlisten = "0.0.0.0:5060"\n', 2, "api.listen"),
    "syntax": ('[sip]\nlisten = "127.0.0.1:5060"\n[sip\n', 3, "syntax"),
    "table-twice": ('[sip]\nlisten = "127.0.0.1:5060"\n[sip]\n', 3, "syntax"),
}

BAD_FLAGS: dict[str, tuple[list[str], str]] = {
    "sip-listen": (["--sip-listen", "127.0.0.1"], "--sip-listen"),
    "api-port-0": (["--api-listen", "127.0.0.1:0"], "--api-listen"),
    "metrics-v6-garbage": (["--metrics-listen", "[zz]:9464"], "--metrics-listen"),
    "rtp-low-ports": (["--rtp-ports", "1000-2000"], "--rtp-ports"),
    "rtp-one-pair": (["--rtp-ports", "20000-20001"], "--rtp-ports"),
    "next-hop-space": (["--next-hop", "sip:a b"], "--next-hop"),
    "next-hop-password": (["--next-hop", "sip:u:secretpw@pbx.example"], "--next-hop"),
    "next-hop-v6": (["--next-hop", "sip:[2001:db8::1]:5060"], "--next-hop"),
    "api-on-the-metrics-port": (["--api-listen", "127.0.0.1:9464"], "--api-listen"),
    "next-hop-sips-udp": (["--next-hop", "sips:pbx.example;transport=udp"], "--next-hop"),
}


def _run_all(jobs: dict[str, tuple[list[str], Path]]) -> dict[str, subprocess.CompletedProcess]:
    # PYTHONPATH: the editable install may map the packages to another checkout's path
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(ROOT))
    env.pop("TONEWALL_TEST_UNSET_KEK", None)
    procs = {name: (subprocess.Popen(TONEWALL + args, cwd=cwd, env=env, text=True, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE), args)
             for name, (args, cwd) in jobs.items()}
    results = {}
    for name, (proc, args) in procs.items():
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # a config that should be refused started a gateway
            proc.kill()
            out, err = proc.communicate()
        results[name] = subprocess.CompletedProcess(args, proc.returncode, out, err)
    return results


def test_each_bad_config_is_refused_at_start_naming_file_line_and_key(tmp_path):
    jobs = {}
    for name, (text, _, _) in BAD_CONFIGS.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "tonewall.toml").write_text(text)
        jobs[name] = (["run", "--config", str(folder / "tonewall.toml"), "--data-dir", str(folder / "data")], folder)
    for name, r in _run_all(jobs).items():
        _, line, key = BAD_CONFIGS[name]
        path = tmp_path / name / "tonewall.toml"
        assert r.returncode == 2, (name, r.returncode, r.stderr[-500:])
        assert r.stdout == "" and "Traceback" not in r.stderr, (name, r.stderr)
        [message] = r.stderr.splitlines()
        assert message.startswith(f"tonewall: {path}:{line}: {key}: "), (name, message)
        assert "sk_live_abc" not in message  # the inline secret is never echoed
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["tonewall.toml"], name  # nothing written


def test_each_bad_flag_is_refused_naming_the_flag(tmp_path):
    jobs = {name: (["run", *args, "--data-dir", str(tmp_path / name)], tmp_path) for name, (args, _) in BAD_FLAGS.items()}
    for name, r in _run_all(jobs).items():
        flag = BAD_FLAGS[name][1]
        assert r.returncode == 2, (name, r.returncode, r.stderr[-500:])
        [message] = r.stderr.splitlines()
        assert message.startswith(f"tonewall: command line: {flag}: "), (name, message)
        assert "secretpw" not in message
        assert not (tmp_path / name).exists(), name


def test_check_config_accepts_a_full_production_shape_and_writes_nothing(tmp_path):
    from gateway import pki

    files = pki.issue_server_cert(tmp_path / "pki", "sip")
    key, cert = files.key_path, files.cert_path
    text = (f'data_dir = "{tmp_path / "data"}"\n'
            '[sip]\nlisten = "127.0.0.1:5060"\ntls_listen = "127.0.0.1:5061"\n'
            f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\nnext_hop = "sip:pbx.example.net;transport=tls"\n'
            '[media]\naddress = "127.0.0.1"\nrtp_ports = "20000-29999"\n'
            '[capture]\nmask = "capture"\nmask_mode = "flat"\n'
            '[[routes]]\nmatch_user_prefix = "9"\nmask = "always"\n')
    (tmp_path / "tonewall.toml").write_text(text)
    r = _run_all({"ok": (["run", "--config", str(tmp_path / "tonewall.toml"), "--check-config"], tmp_path)})["ok"]
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert str(tmp_path / "tonewall.toml") in r.stdout and "OK" in r.stdout
    assert not (tmp_path / "data").exists()
    # What `run` refuses at start, --check-config refuses too, naming the file: a key that is no key.
    key.write_text("not really a key")
    r = _run_all({"bad": (["run", "--config", str(tmp_path / "tonewall.toml"), "--check-config"], tmp_path)})["bad"]
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"tonewall: {cert} + {key}: not a PEM certificate"), r.stderr


def test_token_issue_on_a_bad_data_dir_is_one_line_and_a_new_one_is_private(tmp_path):
    (tmp_path / "a-file").write_text("x")
    jobs = {
        "file": (["token", "issue", "--role", "ops", "--data-dir", str(tmp_path / "a-file")], tmp_path),
        "missing-parent": (["token", "issue", "--role", "ops", "--data-dir", "/proc/no/such/dir"], tmp_path),
        "new": (["token", "issue", "--role", "agent", "--agent", "1001", "--data-dir", str(tmp_path / "new")],
                tmp_path),
        "no-agent": (["token", "issue", "--role", "agent", "--data-dir", str(tmp_path / "x")], tmp_path),
        "bad-ttl": (["token", "issue", "--role", "ops", "--ttl", "-5", "--data-dir", str(tmp_path / "y")], tmp_path),
    }
    results = _run_all(jobs)
    for name in ("file", "missing-parent"):
        r = results[name]
        assert r.returncode == 1 and r.stdout == "", (name, r.stderr)
        assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr, (name, r.stderr)
    for name in ("no-agent", "bad-ttl"):
        assert results[name].returncode == 2 and results[name].stdout == "", name
        assert not (tmp_path / ("x" if name == "no-agent" else "y")).exists(), name
    assert re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+\n", results["new"].stdout)
    # README: the data dir is 0700 whoever creates it first (`token issue` often runs before `run`)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700


def test_check_fails_a_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "data").write_text("not a directory")
    (tmp_path / "data").chmod(0o644)
    r = _run_all({"check": (["check", "--data-dir", str(tmp_path / "data")], tmp_path)})["check"]
    assert r.returncode == 1, r.stdout[-800:]
    line = next(ln for ln in r.stdout.splitlines() if "data_dir.permissions" in ln)
    assert line.startswith("FAIL"), line


def test_audit_verify_creates_nothing_and_fails_a_mistyped_data_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "keyless" / "audit").mkdir(parents=True)
    (tmp_path / "keyless" / "audit" / "audit.jsonl").write_text('{"seq": 1}\n')
    results = _run_all({name: (["audit", "verify", "--data-dir", str(tmp_path / name)], tmp_path)
                        for name in ("typo", "empty", "keyless")})
    assert results["typo"].returncode == 1 and "FAILED" in results["typo"].stdout, results["typo"]
    assert results["keyless"].returncode == 1 and "FAILED" in results["keyless"].stdout, results["keyless"]
    assert results["empty"].returncode == 0 and results["empty"].stdout.startswith("audit: ok")
    assert not (tmp_path / "typo").exists()  # a verifier that writes would mint a fresh key and call it ok
    assert list((tmp_path / "empty").iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "keyless" / "audit").iterdir()) == ["audit.jsonl"]
