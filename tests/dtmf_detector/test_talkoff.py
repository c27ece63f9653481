"""Talk-off: real recorded speech and music must give (almost) no digits.

Audio: Debian asterisk-core-sounds-en-wav (Allison's prompts, ~25 min of speech)
and asterisk-moh-opsound-wav (music on hold, ~18 min), 8 kHz 16-bit mono WAVs.
"""

from __future__ import annotations

import numpy as np
import pytest

from dtmf.detector import DetectorBank, DigitDetected
from dtmf.tones import DIGITS, dtmf_tone
from tests.conftest import IN_CI

from .synth import MUSIC_GLOB, SPEECH_GLOB, audio_files, g711_round_trip, read_wav_int16

MAX_FALSE_DIGITS = 1
"""Across all files of a corpus (spandsp also finds none in either)."""


def corpus(pattern: str, package: str) -> list[np.ndarray]:
    files = audio_files(pattern)
    if not files:
        message = f"{package} is not installed (run .ci/install-deps)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return [read_wav_int16(f) for f in files]


@pytest.mark.parametrize(("pattern", "package", "min_minutes"), [
    (SPEECH_GLOB, "asterisk-core-sounds-en-wav", 20.0),
    (MUSIC_GLOB, "asterisk-moh-opsound-wav", 15.0),
])
def test_no_false_digits_on_real_audio(pattern: str, package: str, min_minutes: float) -> None:
    audio = corpus(pattern, package)
    assert sum(len(a) for a in audio) / 8000 / 60 >= min_minutes
    bank = DetectorBank(capacity=len(audio))
    false_digits = 0
    for samples in audio:
        slot = bank.add_stream()
        events = bank.process(np.array([slot]), samples[None, :]) + bank.flush(slot)
        false_digits += sum(isinstance(e, DigitDetected) for e in events)
        bank.remove_stream(slot)
    assert false_digits <= MAX_FALSE_DIGITS


def test_digits_keyed_over_speech_are_found() -> None:
    """The checks that reject speech must not reject digits mixed with it."""
    speech = np.concatenate(corpus(SPEECH_GLOB, "asterisk-core-sounds-en-wav"))
    rng = np.random.default_rng(30)
    start = int(rng.integers(0, len(speech) - 80000))
    signal = speech[start:start + 80000].astype(np.float64) * 0.3
    keyed = ""
    pos = 2000
    for digit in rng.permutation(list(DIGITS)):
        tone = dtmf_tone(digit, 70.0, -8.0, phase_rad=tuple(rng.uniform(0, 2 * np.pi, 2)))
        signal[pos:pos + len(tone)] += tone
        keyed += digit
        pos += len(tone) + 4000
    bank = DetectorBank()
    slot = bank.add_stream()
    events = bank.process(np.array([slot]), g711_round_trip(signal)[None, :]) + bank.flush(slot)
    assert "".join(e.digit for e in events if isinstance(e, DigitDetected)) == keyed
