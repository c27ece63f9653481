"""Tokenization: one `Tokenizer` interface, typed errors, and the vault, https-json and stripe adapters."""

from gateway.tokenize.client import HttpsTokenizer, RetryPolicy
from gateway.tokenize.https_json import HttpsJsonTokenizer
from gateway.tokenize.stripe import StripeTokenizer, load_secret
from gateway.tokenize.tokenizer import (
    TokenizationError,
    TokenizationRejected,
    TokenizationTimeout,
    TokenizationUnavailable,
    Tokenizer,
    TokenResult,
)
from gateway.tokenize.vault import VaultTokenizer

__all__ = [
    "HttpsJsonTokenizer", "HttpsTokenizer", "RetryPolicy", "StripeTokenizer", "TokenResult",
    "TokenizationError", "TokenizationRejected", "TokenizationTimeout", "TokenizationUnavailable",
    "Tokenizer", "VaultTokenizer", "load_secret",
]
