"""Shared fixtures: real peers are required in CI and skipped elsewhere when absent."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = bool(os.environ.get("CI"))


def require(present: bool, message: str) -> None:
    """Something the tests need (a peer, a built extension): missing fails the test in CI and skips it elsewhere."""
    if not present:
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def require_binary(name: str) -> str:
    """Path of a peer program; missing fails the test in CI and skips it elsewhere."""
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed (run .ci/install-deps)")
    return path  # type: ignore[return-value]
