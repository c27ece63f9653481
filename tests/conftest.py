"""Shared fixtures: real peers are required in CI and skipped elsewhere when absent."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = bool(os.environ.get("CI"))


def require_binary(name: str) -> str:
    """Path of a peer program; missing fails the test in CI and skips it elsewhere."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (run .ci/install-deps)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path
