"""The wiring's own rules, checked without peers: vault keys from the configured environment variable."""

from __future__ import annotations

import dataclasses
import os
import types

from gateway.config import Config, VaultConfig
from gateway.extensions import VaultExtension
from gateway.vault.keyring import KEK_ENV


async def test_vault_takes_its_keys_from_vault_kek_env(tmp_path, monkeypatch):
    monkeypatch.setenv(KEK_ENV, "")  # restored (unset) after the test
    monkeypatch.setenv("SITE_VAULT_KEKS", "k1:" + "ab" * 32)
    config = dataclasses.replace(Config(data_dir=str(tmp_path)), vault=VaultConfig(kek_env="SITE_VAULT_KEKS"))
    vault = VaultExtension()
    where = await vault.start(types.SimpleNamespace(config=config))
    try:
        assert where.startswith("vault=https://127.0.0.1:")
        assert vault.vault.store is not None
        assert os.environ[KEK_ENV] == os.environ["SITE_VAULT_KEKS"]
        assert not (tmp_path / "vault" / "kek.keys").exists(), "the vault made its own key file instead"
    finally:
        await vault.stop()
