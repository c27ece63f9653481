"""Config errors never echo a secret; passwords and credentials have no place in URIs of the config text."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_config

SECRET = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"


def write(tmp_path, text: str):
    path = tmp_path / "tonewall.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("section, key", [
    ("processor", "api_key_file"), ("processor", "client_key_file"), ("vault", "kek_file"),
    ("sip", "tls_key_file"), ("api", "tls_key_file"),
])
def test_a_secret_pasted_where_its_file_belongs_is_not_echoed(tmp_path, section, key):
    path = write(tmp_path, f'[{section}]\n{key} = "{SECRET}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert SECRET not in str(info.value) and info.value.key == f"{section}.{key}" and info.value.line == 2


@pytest.mark.parametrize("uri", [f"sip:pbx:{SECRET}@10.0.0.1", f"sips:agent:{SECRET}@pbx.example;transport=tls"])
def test_next_hop_with_a_password_is_refused_without_echo(tmp_path, uri):
    path = write(tmp_path, f'[sip]\nnext_hop = "{uri}"\n')
    with pytest.raises(ConfigError, match="password") as info:
        load_config(path, env={})
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(None, {"sip.next_hop": uri}, env={})
    assert SECRET not in str(info.value)


def test_malformed_next_hop_with_userinfo_is_not_echoed(tmp_path):
    path = write(tmp_path, f'[sip]\nnext_hop = "sip:pbx:{SECRET}@@bad host"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert SECRET not in str(info.value)


def test_processor_url_with_credentials_is_refused(tmp_path):
    path = write(tmp_path, f'[processor]\nkind = "https-json"\nurl = "https://gw:{SECRET}@proc.example/tokens"\n')
    with pytest.raises(ConfigError, match="credentials") as info:
        load_config(path, env={})
    assert SECRET not in str(info.value)
    ok = write(tmp_path, '[processor]\nkind = "https-json"\nurl = "https://proc.example/v1/a@b"\n')
    assert load_config(ok, env={}).processor.url == "https://proc.example/v1/a@b"


def test_user_without_password_still_accepted(tmp_path):
    path = write(tmp_path, '[sip]\nnext_hop = "sip:agent@10.0.0.1:5080"\n')
    assert load_config(path, env={}).sip.next_hop.user == "agent"
