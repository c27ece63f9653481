"""`tonewall check`: each check made to PASS and to FAIL on data dirs built with the real modules."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import resource
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import check, pki
from gateway.api.auth import load_or_create_dev_key
from gateway.audit import AuditLog
from gateway.capture.card import Brand, SensitiveCard
from gateway.config import load_config
from gateway.vault.keyring import Keyring
from gateway.vault.store import VaultStore
from tests.capture.cards import digits, luhn_digit, make_pan

PAN = "4111111111111111"
AMEX = "378282246310005"
SEVEN_DIGITS = re.compile(r"\d{7,}")


@pytest.fixture
def data_dir(tmp_path):
    """A data dir as a running gateway leaves it: dev PKI, audit chain, vault with one token, dev JWT key."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    pki.ensure_ca(data)
    pki.issue_server_cert(data, "vault")
    pki.issue_client_cert(data, "gateway", "gateway")
    log = AuditLog.open(data, fsync=False)
    for i in range(4):
        log.record("capture.tokenized", actor="agent-7", call_id=f"call-{i}", capture_id=f"cap{i}",
                   outcome="ok", token=f"tok_abc_{i:04d}", brand="visa", last4="1111")
    store = VaultStore(data / "vault" / "vault.sqlite3", Keyring.load(data / "vault" / "kek.keys"))
    store.tokenize(SensitiveCard(digits(PAN), Brand.VISA, digits("1230"), digits("123")), "cap-1")
    store.close()
    load_or_create_dev_key(data)
    return data


def run(data_dir, config_path=None, **kw):
    kw.setdefault("harden", None)
    return check.run_checks(check.CheckSettings(config_path=str(config_path) if config_path else None,
                                                data_dir=str(data_dir), **kw))


def by_name(report) -> dict[str, check.CheckResult]:
    return {r.name: r for r in report.results}


def status(report, name) -> check.Status:
    return by_name(report)[name].status


def no_digit_runs(report) -> None:
    for text in (check.render_text(report), check.render_json(report)):
        assert not SEVEN_DIGITS.search(text)
        assert PAN not in text and AMEX not in text


def write_config(tmp_path, text: str, mode: int = 0o600):
    path = tmp_path / "tonewall.toml"
    path.write_text(text)
    os.chmod(path, mode)
    return path


# ---- the whole report


def test_clean_deployment_has_no_failure(data_dir):
    report = run(data_dir)
    names = by_name(report)
    for name in ("config.load", "config.inline_secrets", "config.secret_files", "tls.api", "tls.vault",
                 "tls.processor", "tls.processor_mtls", "tls.sip", "tls.dev_ca", "api.dev_key",
                 "data_dir.permissions", "data_dir.key_files", "data_dir.card_numbers", "audit.chain",
                 "audit.key_file", "vault.kek_age", "capture.mask_policy", "media.accelerator", "media.codecs"):
        assert name in names, name
    failed = [(r.name, r.detail) for r in report.results if r.status is check.Status.FAIL]
    assert failed == [] and report.ok
    assert status(report, "data_dir.card_numbers") is check.Status.PASS
    assert status(report, "audit.chain") is check.Status.PASS
    assert status(report, "tls.processor_mtls") is check.Status.PASS
    assert status(report, "api.dev_key") is check.Status.WARN
    no_digit_runs(report)


def test_main_json_and_exit_codes(data_dir, capsys):
    assert check.main(["--data-dir", str(data_dir), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["ok"] is True and body["counts"]["fail"] == 0
    assert {c["status"] for c in body["checks"]} <= {"PASS", "WARN", "FAIL"}
    assert "process.core_limit" in {c["name"] for c in body["checks"]}
    os.chmod(data_dir / "tls" / "ca-key.pem", 0o644)
    assert check.main(["--data-dir", str(data_dir)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^FAIL\s+data_dir\.key_files .*tls/ca-key\.pem", out, re.M)
    assert out.rstrip().endswith("FAILED")


def test_check_writes_nothing(data_dir, tmp_path):
    empty = tmp_path / "fresh"

    def snapshot(root):
        return sorted((str(p), p.stat().st_mode, p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*"))

    before = snapshot(data_dir)
    run(data_dir)
    assert snapshot(data_dir) == before
    run(empty)
    assert not empty.exists()


def test_a_crashing_check_fails_without_echoing_its_message(data_dir, monkeypatch):
    def boom(*args, **kwargs):
        raise ValueError(f"card {PAN}")

    monkeypatch.setattr(check, "check_audit", boom)
    report = run(data_dir)
    assert by_name(report)["audit.chain"].detail == "check crashed (ValueError)"
    assert not report.ok
    no_digit_runs(report)


# ---- card numbers at rest


def test_planted_pan_fails_and_is_never_printed(data_dir):
    (data_dir / "notes.txt").write_text(f"debug: card={PAN} exp=1230\n")
    report = run(data_dir)
    result = by_name(report)["data_dir.card_numbers"]
    assert result.status is check.Status.FAIL and "notes.txt" in result.detail
    no_digit_runs(report)


def test_pan_in_a_sqlite_file_is_found(data_dir):
    db = sqlite3.connect(data_dir / "vault" / "cache.sqlite3")
    db.execute("CREATE TABLE t (x TEXT)")
    db.execute("INSERT INTO t VALUES (?)", (f"amex {AMEX[:4]} {AMEX[4:10]} {AMEX[10:]}",))
    db.commit()
    db.close()
    report = run(data_dir)
    result = by_name(report)["data_dir.card_numbers"]
    assert result.status is check.Status.FAIL and "vault/cache.sqlite3" in result.detail
    no_digit_runs(report)


def test_vault_database_holds_ciphertext_only(data_dir):
    db_files = list((data_dir / "vault").glob("vault.sqlite3*"))
    assert db_files and all(PAN.encode() not in p.read_bytes() for p in db_files)
    assert check.scan_tree(data_dir).hits == {}


def test_luhn_invalid_run_passes(data_dir):
    (data_dir / "notes.txt").write_text("order 4111111111111112 shipped\n")
    assert status(run(data_dir), "data_dir.card_numbers") is check.Status.PASS


def test_file_named_with_digits_is_redacted(data_dir):
    (data_dir / f"{PAN}.txt").write_text(PAN)
    report = run(data_dir)
    assert status(report, "data_dir.card_numbers") is check.Status.FAIL
    assert "[digits].txt" in by_name(report)["data_dir.card_numbers"].detail
    no_digit_runs(report)


@pytest.mark.parametrize("text, count", [
    (f"pan={PAN};", 1),
    (f"{PAN[:4]} {PAN[4:8]} {PAN[8:12]} {PAN[12:]}", 1),
    (f"{PAN[:4]}-{PAN[4:8]}-{PAN[8:12]}-{PAN[12:]}", 1),
    (f"x{AMEX}y and {PAN}", 2),
    (f"1{PAN}", 0),                      # 17 digits, fails Luhn: the run is the unit, not a window of it
    ("0" * 16, 0),                       # one repeated digit: padding, not a PAN
    ("4111111111111112", 0),
    (make_pan("5", 12)[:12], 0),         # too short
    ("ab" + "0123456789012345" * 2 + "cdef", 0),  # inside a 32+ hex string: a hash, not a PAN
    (f"{PAN[:4]} {PAN[4:8]}-{PAN[8:12]} {PAN[12:]}", 0),  # mixed separators
    (f"12 {PAN[:4]} {PAN[4:8]} {PAN[8:12]} {PAN[12:]}", 1),
    (f"1{PAN[:4]} {PAN[4:8]} {PAN[8:12]} {PAN[12:]}", 0),  # first group of 5 digits
    (" ".join([PAN[:4], PAN[4:8], PAN[8:12], PAN[12:]] * 2), 2),  # two grouped PANs back to back
    ("2024-01-01 12:00:00 from 127.0.0.1:5060 +44 20 7946 0958", 0),
])
def test_scan_bytes(text, count):
    assert check.scan_bytes(text.encode()) == count


@settings(max_examples=150, deadline=None)
@given(body=st.text(alphabet="0123456789", min_size=12, max_size=18),
       left=st.binary(max_size=40), right=st.binary(max_size=40))
def test_any_luhn_valid_run_between_separators_is_found(body, left, right):
    pan = body + luhn_digit(body)
    if len(set(pan)) == 1:
        return
    data = left + b"\n" + pan.encode() + b"\n" + right
    assert check.scan_bytes(data) >= 1
    assert check.scan_bytes(data.replace(pan.encode(), b"x" * len(pan))) == check.scan_bytes(left + b"\n\n" + right)


@settings(max_examples=60, deadline=None)
@given(offset=st.integers(0, 700), grouped=st.booleans(), noise=st.binary(min_size=800, max_size=800))
def test_chunked_file_scan_equals_whole_buffer_scan(tmp_path_factory, offset, grouped, noise):
    pan = f"{PAN[:4]} {PAN[4:8]} {PAN[8:12]} {PAN[12:]}" if grouped else PAN
    data = noise[:offset] + b"\n" + pan.encode() + b"\n" + noise[offset:]
    path = tmp_path_factory.mktemp("scan") / "blob"
    path.write_bytes(data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(check, "CHUNK_BYTES", 97)
        mp.setattr(check, "RIGHT_CONTEXT_BYTES", 40)
        chunked = check.scan_file(path)
    assert chunked == check.scan_bytes(data) >= 1


def test_audit_chain_hex_does_not_false_alarm(tmp_path):
    log = AuditLog.open(tmp_path, fsync=False)
    for i in range(1000):
        log.record("call.started", call_id=f"c{i}")
    assert check.scan_file(log.path) == 0


# ---- permissions


def test_world_readable_key_in_data_dir_fails(data_dir):
    assert status(run(data_dir), "data_dir.key_files") is check.Status.PASS
    os.chmod(data_dir / "vault" / "kek.keys", 0o644)
    result = by_name(run(data_dir))["data_dir.key_files"]
    assert result.status is check.Status.FAIL and "vault/kek.keys" in result.detail


def test_open_folder_inside_private_data_dir_warns(data_dir):
    os.chmod(data_dir / "audit", 0o755)
    result = by_name(run(data_dir))["data_dir.permissions"]
    assert result.status is check.Status.WARN and "audit/" in result.detail
    os.chmod(data_dir / "audit", 0o777)
    assert status(run(data_dir), "data_dir.permissions") is check.Status.FAIL


@pytest.mark.parametrize("mode, expected", [(0o700, "PASS"), (0o750, "WARN"), (0o755, "FAIL"), (0o777, "FAIL")])
def test_data_dir_mode(data_dir, mode, expected):
    for folder in data_dir.iterdir():
        os.chmod(folder, 0o700)  # VaultStore makes vault/ with the umask's mode: judged on its own below
    os.chmod(data_dir, mode)
    assert status(run(data_dir), "data_dir.permissions").value == expected


def test_secret_file_named_by_config(tmp_path, data_dir):
    key = tmp_path / "client-key.pem"
    cert = tmp_path / "client.pem"
    files = pki.issue_client_cert(tmp_path / "pki", "gw", "gateway")
    key.write_bytes(files.key_path.read_bytes())
    cert.write_bytes(files.cert_path.read_bytes())
    os.chmod(key, 0o600)
    config = write_config(tmp_path, f"""
[processor]
kind = "https-json"
url = "https://processor.example/v1/tokens"
client_cert_file = "{cert}"
client_key_file = "{key}"
""")
    report = run(data_dir, config)
    assert status(report, "config.secret_files") is check.Status.PASS
    assert status(report, "tls.processor_mtls") is check.Status.PASS
    os.chmod(key, 0o640)
    assert status(run(data_dir, config), "config.secret_files") is check.Status.WARN
    os.chmod(key, 0o644)
    report = run(data_dir, config)
    assert status(report, "config.load") is check.Status.FAIL  # the loader refuses it too
    result = by_name(report)["config.secret_files"]
    assert result.status is check.Status.FAIL and "processor.client_key_file" in result.detail


def test_config_file_writable_by_others_fails(tmp_path, data_dir):
    config = write_config(tmp_path, "[capture]\nmask = \"always\"\n", mode=0o666)
    assert status(run(data_dir, config), "config.secret_files") is check.Status.FAIL


# ---- inline secrets


@pytest.mark.parametrize("text", [
    '[processor]\napi_key = "sk_live_abcdefghijklmnop"\n',
    '[api]\naudience = "-----BEGIN PRIVATE KEY-----MIGH-----END PRIVATE KEY-----"\n',
    '[api]\naudience = "' + "ab12" * 16 + '"\n',
    f'# test card {PAN}\n[capture]\nmask = "always"\n',
    '[processor]\nkind = "stripe"\nurl = "https://user:hunter2@api.example"\n',
    f'[capture\nnote = "{PAN}"\n',  # does not parse: the text is still scanned
])
def test_inline_secret_fails(tmp_path, data_dir, text):
    report = run(data_dir, write_config(tmp_path, text))
    result = by_name(report)["config.inline_secrets"]
    assert result.status is check.Status.FAIL
    assert "hunter2" not in result.detail and "sk_live" not in result.detail
    no_digit_runs(report)


def test_secret_from_file_and_env_passes(tmp_path, data_dir):
    key = tmp_path / "api.key"
    key.write_text("sk_live_abcdefghijklmnop")
    os.chmod(key, 0o600)
    config = write_config(tmp_path, f'[processor]\nkind = "stripe"\nurl = "https://api.example"\n'
                                    f'api_key_file = "{key}"\n')
    report = run(data_dir, config)
    assert status(report, "config.inline_secrets") is check.Status.PASS
    assert status(report, "config.secret_files") is check.Status.PASS
    assert report.ok


# ---- TLS


def test_https_json_without_client_certificate_fails(tmp_path, data_dir):
    config = write_config(tmp_path, '[processor]\nkind = "https-json"\nurl = "https://p.example/v1"\n')
    report = run(data_dir, config)
    assert status(report, "tls.processor") is check.Status.PASS
    assert status(report, "tls.processor_mtls") is check.Status.FAIL


def test_plain_http_processor_is_refused(tmp_path, data_dir):
    config = write_config(tmp_path, '[processor]\nkind = "https-json"\nurl = "http://p.example/v1"\n')
    report = run(data_dir, config)
    assert status(report, "config.load") is check.Status.FAIL and not report.ok
    cfg = load_config()
    cfg = dataclasses.replace(cfg, processor=dataclasses.replace(cfg.processor, kind="stripe", url="http://p.example"))
    assert check.check_processor_tls(cfg).status is check.Status.FAIL


def test_processor_without_verification_fails(monkeypatch):
    import ssl

    def unverified(ca, *, cert=None):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context

    monkeypatch.setattr(check.pki, "client_ssl_context", unverified)
    assert check.check_processor_tls(load_config()).status is check.Status.FAIL


def test_vault_mtls_material_missing_warns(data_dir):
    (data_dir / "tls" / "gateway.pem").unlink()
    assert status(run(data_dir), "tls.processor_mtls") is check.Status.WARN


def test_sip_exposed_without_tls_warns_and_with_tls_passes(tmp_path, data_dir):
    config = write_config(tmp_path, '[sip]\nlisten = "0.0.0.0:5060"\n')
    assert status(run(data_dir, config), "tls.sip") is check.Status.WARN
    files = pki.issue_server_cert(tmp_path / "pki", "sip")
    config = write_config(tmp_path, f'[sip]\nlisten = "0.0.0.0:5060"\ntls_listen = "0.0.0.0:5061"\n'
                                    f'tls_cert_file = "{files.cert_path}"\ntls_key_file = "{files.key_path}"\n')
    result = by_name(run(data_dir, config))["tls.sip"]
    assert result.status is check.Status.PASS and "TLS 1.2+" in result.detail


def test_api_with_mismatched_certificate_fails(tmp_path, data_dir):
    one = pki.issue_server_cert(tmp_path / "a", "api")
    two = pki.issue_server_cert(tmp_path / "b", "api")
    config = write_config(tmp_path, f'[api]\ntls_cert_file = "{one.cert_path}"\ntls_key_file = "{two.key_path}"\n')
    assert status(run(data_dir, config), "tls.api") is check.Status.FAIL
    config = write_config(tmp_path, f'[api]\ntls_cert_file = "{one.cert_path}"\ntls_key_file = "{one.key_path}"\n')
    report = run(data_dir, config)
    assert status(report, "tls.api") is check.Status.PASS
    assert status(report, "tls.dev_ca") is check.Status.PASS


def test_dev_ca_warns_when_api_is_exposed(tmp_path, data_dir):
    assert status(run(data_dir), "tls.dev_ca") is check.Status.PASS
    config = write_config(tmp_path, '[api]\nlisten = "0.0.0.0:8443"\n')
    assert status(run(data_dir, config), "tls.dev_ca") is check.Status.WARN


def test_jwks_replaces_dev_key(tmp_path, data_dir):
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    config = write_config(tmp_path, f'[api]\njwks_file = "{jwks}"\n')
    assert status(run(data_dir, config), "api.dev_key") is check.Status.PASS


# ---- audit


def test_tampered_audit_record_fails(data_dir):
    path = data_dir / "audit" / "audit.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"agent-7"', b'"agent-8"')
    path.write_bytes(b"".join(lines))
    result = by_name(run(data_dir))["audit.chain"]
    assert result.status is check.Status.FAIL and "HMAC" in result.detail and "agent" not in result.detail


def test_truncated_audit_log_fails(data_dir):
    path = data_dir / "audit" / "audit.jsonl"
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:-1]))
    assert status(run(data_dir), "audit.chain") is check.Status.FAIL


def test_readable_audit_key_fails_but_chain_is_still_judged(data_dir):
    os.chmod(data_dir / "audit" / "audit.key", 0o644)
    report = run(data_dir)
    assert status(report, "audit.key_file") is check.Status.FAIL
    assert status(report, "audit.chain") is check.Status.PASS


def test_audit_log_without_key_fails(data_dir):
    (data_dir / "audit" / "audit.key").unlink()
    assert status(run(data_dir), "audit.chain") is check.Status.FAIL


# ---- process, keys, policy


def test_core_dumps_disabled_by_the_gateway_start_up():
    results = {r.name: r for r in check.check_core_dumps(check.DEFAULT_HARDEN)}
    assert results["process.core_limit"].status is check.Status.PASS
    assert results["process.dumpable"].status in (check.Status.PASS, check.Status.WARN)


def test_core_limit_fails_when_start_up_does_nothing():
    if resource.getrlimit(resource.RLIMIT_CORE)[1] == 0:
        pytest.skip("hard RLIMIT_CORE is 0 here: a process cannot dump whatever the gateway does")
    results = {r.name: r for r in check.check_core_dumps("os:getpid")}
    assert results["process.core_limit"].status is check.Status.FAIL


def test_probe_of_unknown_function_fails():
    results = check.check_core_dumps("gateway.app:no_such_function")
    assert all(r.status is check.Status.FAIL for r in results)


def test_kek_age(data_dir):
    kek = data_dir / "vault" / "kek.keys"
    mtime = kek.stat().st_mtime
    assert status(run(data_dir, now=mtime + 10 * 86400), "vault.kek_age") is check.Status.PASS
    result = by_name(run(data_dir, now=mtime + 400 * 86400))["vault.kek_age"]
    assert result.status is check.Status.WARN and "400 days" in result.detail
    assert status(run(data_dir, now=mtime + 400 * 86400, kek_max_age_days=500), "vault.kek_age") is check.Status.PASS
    assert status(run(data_dir, env={"TONEWALL_VAULT_KEKS": "k:" + "00" * 32}), "vault.kek_age") is check.Status.WARN


def test_mask_policy():
    cfg = load_config()
    assert check.check_mask_policy(cfg).status is check.Status.PASS
    off = dataclasses.replace(cfg, capture=dataclasses.replace(cfg.capture, mask="never"))
    assert check.check_mask_policy(off).status is check.Status.FAIL


def test_relay_path(monkeypatch):
    from gateway.transport import rtp as edge

    cfg = load_config()
    media = cfg.media
    if edge.FastRelay is not None:
        assert check.check_relay_path(cfg).status is check.Status.PASS
    off = dataclasses.replace(cfg, media=dataclasses.replace(media, accelerator="off"))
    assert check.check_relay_path(off).status is check.Status.PASS
    monkeypatch.setattr(edge, "FastRelay", None)  # installed without a compiler
    auto = check.check_relay_path(cfg)
    assert auto.status is check.Status.WARN and "not built" in auto.detail
    on = check.check_relay_path(dataclasses.replace(cfg, media=dataclasses.replace(media, accelerator="on")))
    assert on.status is check.Status.FAIL and "refuse to start" in on.detail


def test_codecs(monkeypatch):
    assert check.check_codecs().status is check.Status.PASS
    monkeypatch.setattr("gateway.sip.sdp.SUPPORTED_CODECS", ("PCMU", "G729"))
    result = check.check_codecs()
    assert result.status is check.Status.FAIL and "G729" in result.detail


def test_config_error_echoing_a_value_is_redacted(tmp_path, data_dir):
    report = run(data_dir, write_config(tmp_path, f'[sip]\nlisten = "{PAN}"\n'))
    result = by_name(report)["config.load"]
    assert result.status is check.Status.FAIL and "sip.listen" in result.detail
    no_digit_runs(report)
