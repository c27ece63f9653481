"""The decode CLI's resampler keeps the DTMF band flat, so a tone at a twist limit stays inside it at any rate."""

from __future__ import annotations

import numpy as np
import pytest

from dtmf.__main__ import resample_to_8k


def _gain_db(freq_hz: float, rate: int) -> float:
    t = np.arange(rate) / rate
    x = (8000 * np.sin(2 * np.pi * freq_hz * t + 0.3)).astype(np.int16)
    y = np.concatenate(list(resample_to_8k(x, rate)))[800:-800]
    return 20 * np.log10(np.sqrt(2) * y.std() / 8000)


@pytest.mark.parametrize("rate", [11025, 16000, 22050, 44100, 48000])
def test_dtmf_band_flat_within_a_tenth_of_a_db(rate):
    gains = [_gain_db(f, rate) for f in (697, 941, 1209, 1336, 1477, 1633)]
    assert max(abs(g) for g in gains) < 0.1, gains  # linear interpolation drooped 0.63 dB at 1633 Hz from 11025


@pytest.mark.parametrize("rate", [11025, 44100])
def test_above_the_cutoff_is_attenuated(rate):
    assert _gain_db(3950, rate) < -10  # anti-alias low-pass at 3.8 kHz
