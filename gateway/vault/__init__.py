"""Embedded tokenization vault: HTTPS with mutual TLS, AES-256-GCM envelope encryption, key rotation."""

from gateway.vault.server import RunningVault, VaultSettings, main, run_vault, start_vault

__all__ = ["RunningVault", "VaultSettings", "main", "run_vault", "start_vault"]
