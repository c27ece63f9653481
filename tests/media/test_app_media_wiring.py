"""What gateway/app.py does for the media path: BLAS pinned to one thread, the mask policy handed to the relay."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from gateway.app import Gateway
from gateway.b2bua import CallStarted
from gateway.config import CaptureConfig, Config, RouteConfig

BLAS_THREADS = r"""
import ctypes, os, sys
import gateway.app, numpy
names = ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads")
for line in open("/proc/self/maps"):
    path = line.split()[-1]
    if "openblas" in path.lower() and path.endswith((".so",)) or ".so." in path and "openblas" in path.lower():
        lib = ctypes.CDLL(path)
        for name in names:
            if hasattr(lib, name):
                print(os.environ["OPENBLAS_NUM_THREADS"], getattr(lib, name)())
                sys.exit(0)
print(os.environ["OPENBLAS_NUM_THREADS"], "unknown")
"""


def blas_threads(env_value: str | None) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    if env_value is not None:
        env["OPENBLAS_NUM_THREADS"] = env_value
    out = subprocess.run([sys.executable, "-c", BLAS_THREADS], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    return out[0], out[1]


def test_blas_is_pinned_to_one_thread_unless_the_operator_says_otherwise() -> None:
    env, threads = blas_threads(None)
    assert env == "1"
    if threads == "unknown":
        pytest.skip("numpy's BLAS does not expose its thread count")
    assert threads == "1"
    # setdefault: an explicit setting wins (and shows the probe can see another count).
    assert blas_threads("2") == ("2", "2")


class FakeCallMedia:
    def __init__(self, fail: bool = False) -> None:
        self.always: list[bool] = []
        self.fail = fail

    def set_mask_always(self, on: bool) -> None:
        if self.fail:
            from gateway.media.relay import CaptureUnavailable

            raise CaptureUnavailable("no masker is available")
        self.always.append(on)


class FakeController:
    def __init__(self, calls) -> None:
        self.calls = calls


class FakeB2bua:
    def __init__(self) -> None:
        self.hungup: list[tuple[str, str]] = []

    def hangup(self, call_id: str, reason: str, now: float) -> None:
        self.hungup.append((call_id, reason))


def gateway_with(config: Config, media: FakeCallMedia) -> Gateway:
    gw = Gateway(config)
    gw.media = FakeController({"c1": media})  # type: ignore[assignment]
    return gw


ROUTES = (RouteConfig("9", mask="always"), RouteConfig("90", mask="capture"))


@pytest.mark.parametrize("global_mask, agent, expected", [
    ("capture", "1001", []),
    ("always", "1001", [True]),
    ("capture", "9123", [True]),   # route override
    ("always", "9050", []),        # the longer prefix wins: capture only
])
async def test_mask_policy_reaches_the_relay_when_the_call_starts(global_mask, agent, expected) -> None:
    config = dataclasses.replace(Config(), capture=CaptureConfig(mask=global_mask), routes=ROUTES)
    media = FakeCallMedia()
    gw = gateway_with(config, media)
    gw._on_call_event(CallStarted("c1", "caller", agent, 0.0))
    assert media.always == expected


async def test_mask_always_that_cannot_be_guaranteed_hangs_up() -> None:
    config = dataclasses.replace(Config(), capture=CaptureConfig(mask="always"))
    gw = gateway_with(config, FakeCallMedia(fail=True))
    gw.b2bua = FakeB2bua()  # type: ignore[assignment]
    gw.sip = type("Sip", (), {"pump": lambda self: None})()  # type: ignore[assignment]
    gw._on_call_event(CallStarted("c1", "caller", "1001", 0.0))
    assert gw.b2bua.hungup == [("c1", "masking unavailable")]
