"""Side by side with spandsp's dtmf_rx (Debian libspandsp2) on a small Q.24 battery.

Tonewall must find every digit spandsp finds on the accept side, and no more
false digits than spandsp on the reject side.
"""

from __future__ import annotations

import numpy as np
import pytest

from dtmf.tones import DIGITS, DTMF_FREQS_HZ
from tests.conftest import IN_CI

from .synth import detect, digits_of, load_spandsp_module, placed_tone

ACCEPT = [
    {},
    {"low_offset_pct": 1.5, "plus_2_hz": "low"},
    {"high_offset_pct": -1.5, "plus_2_hz": "high"},
    {"twist_db": -8.0},
    {"twist_db": 4.0},
    {"level_dbm0": -25.0},
    {"noise_snr_db": 15.0},
]
REJECT = [
    {"low_offset_pct": 3.5},
    {"high_offset_pct": -3.5},
    {"twist_db": -10.0},
    {"twist_db": 6.0},
    {"duration_ms": 20.0},
]


@pytest.fixture(scope="module")
def spandsp():
    module = load_spandsp_module()
    if module.load_spandsp() is None:
        message = "libspandsp2 is not installed (run .ci/install-deps)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return module


def signal(digit: str, condition: dict, rng: np.random.Generator) -> np.ndarray:
    kw = dict(condition)
    group = kw.pop("plus_2_hz", None)
    if group is not None:
        key = f"{group}_offset_pct"
        nominal = DTMF_FREQS_HZ[digit][0 if group == "low" else 1]
        kw[key] += np.sign(kw[key]) * 200.0 / nominal
    samples, _, _ = placed_tone(digit, rng, **kw)
    return samples


def test_wrapper_reads_spandsp_digits(spandsp) -> None:
    rng = np.random.default_rng(40)
    samples = np.concatenate([signal(d, {}, rng) for d in DIGITS])
    assert "".join(d.digit for d in spandsp.spandsp_decode(samples)) == DIGITS


@pytest.mark.parametrize("condition", ACCEPT, ids=str)
def test_detects_at_least_what_spandsp_detects(spandsp, condition: dict) -> None:
    rng = np.random.default_rng(41)
    ours = theirs = 0
    for digit in DIGITS:
        samples = signal(digit, condition, rng)
        ours += digits_of(detect(samples)) == digit
        theirs += "".join(d.digit for d in spandsp.spandsp_decode(samples)) == digit
    assert ours == len(DIGITS)
    assert ours >= theirs


@pytest.mark.parametrize("condition", REJECT, ids=str)
def test_rejects_at_least_what_spandsp_rejects(spandsp, condition: dict) -> None:
    rng = np.random.default_rng(42)
    ours = theirs = 0
    for digit in DIGITS:
        samples = signal(digit, condition, rng)
        ours += bool(detect(samples))
        theirs += bool(spandsp.spandsp_decode(samples))
    assert ours == 0
    assert ours <= theirs
