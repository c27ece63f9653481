"""Config: defaults, TOML, flag overrides, and errors that name file, line and key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.config import (
    ConfigError, HostPort, find_key_line, load_config, parse_host_port, parse_next_hop,
    parse_port_range,
)


def write(tmp_path: Path, text: str, name: str = "tonewall.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_loopback_and_secure():
    config = load_config(None)
    assert config.sip.listen == HostPort("127.0.0.1", 5060)
    assert config.sip.tls_listen is None
    assert config.api.listen == HostPort("127.0.0.1", 8443)
    assert config.metrics.listen == HostPort("127.0.0.1", 9464)
    assert config.media.rtp_ports == (20000, 29999)
    assert config.media.srtp == "optional"
    assert config.processor.kind == "vault"
    assert config.capture.fields == ("pan", "expiry", "cvv")
    assert config.data_dir == "./tonewall-data"
    assert config.sip.tls_verify_peer is True


def test_file_values_and_flags_override(tmp_path):
    path = write(tmp_path, """
data_dir = "/srv/tw"
[sip]
listen = "127.0.0.1:5070"
next_hop = "sip:pbx.example.com;transport=tcp"
[media]
rtp_ports = "30000-30099"
[[routes]]
match_user_prefix = "44"
next_hop = "sips:acd.example.com"
mask = "always"
""")
    config = load_config(path, {"sip.listen": "127.0.0.1:6000", "data_dir": "/tmp/x"})
    assert config.sip.listen == HostPort("127.0.0.1", 6000)
    assert config.data_dir == "/tmp/x"
    assert config.media.rtp_ports == (30000, 30099)
    assert config.sip.next_hop.transport == "tcp"
    assert config.sip.next_hop.port == 5060
    route = config.route_for("4420")
    assert route is not None and route.mask == "always" and route.next_hop.transport == "tls"
    assert route.next_hop.port == 5061
    assert config.route_for("33") is None


@pytest.mark.parametrize("text, line, key", [
    ('[sip]\n\nlisten = "nowhere"\n', 3, "sip.listen"),
    ('[media]\nsrtp = "optional"\nrtp_ports = "2000-1000"\n', 3, "media.rtp_ports"),
    ('[media]\nrtp_ports = "20001-20100"\n', 2, "media.rtp_ports"),
    ('data_dir = "x"\n[capture]\nmask_mode = "loud"\n', 3, "capture.mask_mode"),
    ('[sip]\nlisten = "127.0.0.1:5060"\nlsiten = "x"\n', 3, "sip.lsiten"),
    ('[processor]\napi_key = "sk_live_123"\n', 2, "processor.api_key"),
    ('[processor]\nkind = "stripe"\n', 2, "processor.kind"),
    ('[processor]\nkind = "https-json"\nurl = "http://pay.example"\n', 3, "processor.url"),
    ('[sip]\ntls_listen = "127.0.0.1:5061"\n', 2, "sip.tls_listen"),
    ('[[routes]]\nmatch_user_prefix = "1"\n[[routes]]\nmatch_user_prefix = "2"\nmask = "never"\n', 5, "routes[1].mask"),
    ('[[routes]]\nmask = "always"\n', 1, "routes[0]"),
    ('[sip]\nsession_timeout_s = -1\n', 2, "sip.session_timeout_s"),
    ('[sip]\nnext_hop = "http://x"\n', 2, "sip.next_hop"),
    ('[bogus]\nx = 1\n', 1, "bogus"),
])
def test_errors_name_file_line_and_key(tmp_path, text, line, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.line == line
    assert info.value.key == key
    assert str(info.value).startswith(f"{path}:{line}: {key}: ")
    assert "\n" not in str(info.value)


def test_secret_value_never_echoed(tmp_path):
    path = write(tmp_path, '[processor]\napi_key = "sk_live_SECRET"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "SECRET" not in str(info.value)


def test_syntax_error_has_line(tmp_path):
    path = write(tmp_path, '[sip]\nlisten = \n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == 2 and info.value.key == "syntax"


def test_world_readable_secret_file_refused(tmp_path):
    key = tmp_path / "api.key"
    key.write_text("k")
    os.chmod(key, 0o644)
    path = write(tmp_path, f'[processor]\nkind = "https-json"\nurl = "https://p"\napi_key_file = "{key}"\n')
    with pytest.raises(ConfigError, match="world-readable") as info:
        load_config(path)
    assert info.value.line == 4
    os.chmod(key, 0o600)
    assert load_config(path).processor.api_key_file == str(key)


def test_env_secret_must_exist(tmp_path):
    path = write(tmp_path, '[vault]\nkek_env = "TW_KEK"\n')
    with pytest.raises(ConfigError, match="vault.kek_env: the environment variable it names is not set"):
        load_config(path, env={})
    assert load_config(path, env={"TW_KEK": "x"}).vault.kek_env == "TW_KEK"


@pytest.mark.parametrize("section,key,pasted", [
    ("processor", "api_key_env", "sk_live_51HxQ2eLkdIwHu7ixtqZ8jR"),
    ("vault", "kek_env", "a3f09c" + "7e" * 29),
    ("vault", "kek_env", "AKIAIOSFODNN7EXAMPLE"),
])
def test_a_secret_pasted_into_an_env_key_is_refused_without_repeating_it(tmp_path, section, key, pasted):
    """`*_env` names a variable; the secret pasted there instead was printed back in the error."""
    extra = 'kind = "https-json"\nurl = "https://p"\n' if section == "processor" else ""
    path = write(tmp_path, f'[{section}]\n{extra}{key} = "{pasted}"\n')
    with pytest.raises(ConfigError, match="is not set") as info:
        load_config(path, env={})
    assert pasted not in str(info.value) and pasted[:12] not in str(info.value)
    assert info.value.line == (4 if section == "processor" else 2)


def test_bad_flag_names_the_flag():
    with pytest.raises(ConfigError) as info:
        load_config(None, {"media.rtp_ports": "1-2"})
    assert str(info.value).startswith("command line: --rtp-ports: ")


def test_missing_file():
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/tonewall.toml")


@pytest.mark.parametrize("uri, transport, host, port, user", [
    ("sip:10.0.0.1", "udp", "10.0.0.1", 5060, None),
    ("sip:agent@10.0.0.1:5080", "udp", "10.0.0.1", 5080, "agent"),
    ("sip:pbx.local;transport=TCP", "tcp", "pbx.local", 5060, None),
    ("sip:pbx.local;lr;transport=tls", "tls", "pbx.local", 5061, None),
    ("sips:pbx.local:5071", "tls", "pbx.local", 5071, None),
    ("sip:[::1]:5062", "udp", "::1", 5062, None),
])
def test_next_hop(uri, transport, host, port, user):
    hop = parse_next_hop(uri)
    assert (hop.transport, hop.host, hop.port, hop.user) == (transport, host, port, user)


@pytest.mark.parametrize("bad", ["pbx.local", "sip:", "sips:x;transport=udp", "sip:x;transport=sctp", "sip:x:70000"])
def test_next_hop_refused(bad):
    with pytest.raises(ValueError):
        parse_next_hop(bad)


def test_host_port_and_range():
    assert parse_host_port("[::1]:5060") == HostPort("::1", 5060)
    assert str(HostPort("::1", 5060)) == "[::1]:5060"
    for bad in ("127.0.0.1", "127.0.0.1:0", "a:b", 5060):
        with pytest.raises(ValueError):
            parse_host_port(bad)
    assert parse_port_range("20000-20003") == (20000, 20003)
    with pytest.raises(ValueError):
        parse_port_range("20000-20001")


def test_find_key_line_skips_other_sections():
    text = '[api]\nlisten = "a"\n[sip]\n# listen = "old"\nlisten = "b"\n'
    assert find_key_line(text, "sip", "listen") == 5
    assert find_key_line(text, "api", "listen") == 2
    assert find_key_line(text, "metrics", "listen") is None


def test_processor_url_rules(tmp_path):
    """https-json needs a URL; stripe has Stripe's default; any URL, also the vault's, is https only."""
    stripe_key = tmp_path / "sk"
    stripe_key.write_text("sk_test_x")
    os.chmod(stripe_key, 0o600)
    assert load_config(write(tmp_path, f'[processor]\nkind = "stripe"\napi_key_file = "{stripe_key}"\n')).processor.url is None
    assert load_config(write(tmp_path, '[processor]\nkind = "stripe"\n'),
                       env={"TONEWALL_STRIPE_KEY": "sk_test_x"}).processor.kind == "stripe"
    with pytest.raises(ConfigError, match="needs its secret key"):
        load_config(write(tmp_path, '[processor]\nkind = "stripe"\n'), env={})
    with pytest.raises(ConfigError, match="needs processor.url"):
        load_config(write(tmp_path, '[processor]\nkind = "https-json"\n'))
    with pytest.raises(ConfigError, match="secret in the URL's query") as info:
        load_config(write(tmp_path, '[processor]\nkind = "https-json"\nurl = "https://p/t?api_key=sk_live_x"\n'))
    assert info.value.line == 3 and "sk_live_x" not in str(info.value)
    assert load_config(write(tmp_path, '[processor]\nkind = "https-json"\nurl = "https://p/t?version=2"\n'))
    with pytest.raises(ConfigError, match="over TLS only") as info:
        load_config(write(tmp_path, '[processor]\nkind = "vault"\nurl = "http://127.0.0.1:8444"\n'))
    assert info.value.line == 3


@pytest.mark.parametrize("section,key,extra", [("vault", "kek_file", ""),
                                               ("processor", "api_key_file", 'kind = "stripe"\n')])
def test_kek_and_processor_key_files_must_be_owner_only(tmp_path, section, key, extra):
    """Their loaders refuse 0640 at start (a traceback after --check-config said OK)."""
    secret = tmp_path / "secret"
    secret.write_text("x")
    os.chmod(secret, 0o640)
    path = write(tmp_path, f'[{section}]\n{extra}{key} = "{secret}"\n')
    with pytest.raises(ConfigError, match="group or others") as info:
        load_config(path)
    assert info.value.line == (3 if extra else 2)
