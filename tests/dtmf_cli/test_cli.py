"""`python -m dtmf` driven as a subprocess, as other tools will."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from dtmf.tones import DTMF_FREQS_HZ, dtmf_sequence, to_int16, white_noise

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dtmf", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def write(path: Path, samples: np.ndarray, rate: int = 8000, channels: int = 1, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def read(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()


@pytest.fixture
def keyed(tmp_path) -> tuple[Path, np.ndarray, list]:
    rng = np.random.default_rng(1)
    sig, placed = dtmf_sequence("4111#", tone_ms=70, gap_ms=60, level_dbm0=-12, lead_ms=123, tail_ms=137)
    sig = to_int16(sig + white_noise(len(sig), -50, rng))
    return write(tmp_path / "keyed.wav", sig), sig, placed


def test_decode_prints_the_digits_on_one_line(keyed):
    path, _, _ = keyed
    r = run("decode", str(path))
    assert (r.returncode, r.stdout, r.stderr) == (0, "4111#\n", "")


def test_decode_json_one_object_per_digit(keyed):
    path, _, placed = keyed
    r = run("decode", str(path), "--json")
    assert r.returncode == 0
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["digit"] for o in objs] == [p.digit for p in placed]
    for o, p in zip(objs, placed):
        assert set(o) == {"digit", "start_ms", "end_ms"}
        assert abs(o["start_ms"] - p.start_sample / 8) <= 10
        assert abs(o["end_ms"] - p.end_sample / 8) <= 10


def test_decode_without_digits_prints_an_empty_line(tmp_path):
    path = write(tmp_path / "quiet.wav", np.zeros(8000, dtype=np.int16))
    r = run("decode", str(path))
    assert (r.returncode, r.stdout) == (0, "\n")


@pytest.mark.parametrize("rate", [16000, 44100, 11025])
def test_decode_resamples_other_rates(tmp_path, rate):
    sig, _ = dtmf_sequence("852", tone_ms=80, gap_ms=80, level_dbm0=-10, sample_rate_hz=rate)
    path = write(tmp_path / f"r{rate}.wav", to_int16(sig), rate=rate)
    r = run("decode", str(path))
    assert (r.returncode, r.stdout) == (0, "852\n")


@pytest.mark.parametrize("mode", ["flat", "silence", "comfort-noise"])
def test_mask_keeps_length_and_alignment_and_leaves_no_digit(keyed, tmp_path, mode):
    path, sig, placed = keyed
    out_path = tmp_path / f"masked-{mode}.wav"
    r = run("mask", str(path), str(out_path), "--mode", mode)
    assert (r.returncode, r.stderr) == (0, "")
    out, rate = read(out_path)
    assert rate == 8000 and len(out) == len(sig)
    # Time-aligned: outside tone + guard, sample-for-sample equal to the input.
    guard = np.zeros(len(sig), dtype=bool)
    for p in placed:
        guard[p.start_sample - 80:p.end_sample + 120] = True
    assert np.array_equal(out[~guard], sig[~guard])
    for p in placed:  # 40 dB down at the key's frequencies (Hann window: 1060 Hz fill stays out)
        span = slice(p.start_sample, p.end_sample)
        t = np.arange(p.end_sample - p.start_sample) / 8000
        win = np.hanning(len(t))
        for f in DTMF_FREQS_HZ[p.digit]:
            ref = np.exp(-2j * np.pi * f * t) * win
            assert abs(np.sum(out[span] * ref)) < 0.01 * abs(np.sum(sig[span] * ref))
    r = run("decode", str(out_path))
    assert (r.returncode, r.stdout) == (0, "\n")


def test_mask_of_a_file_shorter_than_a_packet(tmp_path):
    path = write(tmp_path / "short.wav", np.arange(100, dtype=np.int16))
    r = run("mask", str(path), str(tmp_path / "o.wav"))
    assert r.returncode == 0
    out, _ = read(tmp_path / "o.wav")
    assert np.array_equal(out, np.arange(100))


def _one_line_error(r: subprocess.CompletedProcess, fragment: str) -> None:
    assert r.returncode != 0
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert fragment in r.stderr


def test_bad_inputs_get_one_line_errors(tmp_path):
    not_wav = tmp_path / "x.wav"
    not_wav.write_bytes(b"hello, this is not RIFF")
    _one_line_error(run("decode", str(not_wav)), "not a WAV file")
    _one_line_error(run("decode", str(tmp_path / "missing.wav")), "no such file")
    stereo = write(tmp_path / "s.wav", np.zeros(200, dtype=np.int16), channels=2)
    _one_line_error(run("decode", str(stereo)), "need mono")
    eight = write(tmp_path / "e.wav", np.zeros(100, dtype=np.uint8), width=1)
    _one_line_error(run("mask", str(eight), str(tmp_path / "o.wav")), "need 16-bit")
    wide = write(tmp_path / "w.wav", np.zeros(1600, dtype=np.int16), rate=16000)
    _one_line_error(run("mask", str(wide), str(tmp_path / "o.wav")), "needs 8000 Hz")
    _one_line_error(run("decode", str(tmp_path)), str(tmp_path))
    truncated = tmp_path / "t.wav"
    truncated.write_bytes((tmp_path / "s.wav").read_bytes()[:30])
    _one_line_error(run("decode", str(truncated)), "not a WAV file")
    ok = write(tmp_path / "ok.wav", np.zeros(200, dtype=np.int16))
    _one_line_error(run("mask", str(ok), str(tmp_path / "no-such-dir" / "o.wav")), "cannot write")
    _one_line_error(run("mask", str(ok), str(tmp_path / "o.wav"), "--mode", "loud"), "invalid choice")
    _one_line_error(run(), "required")


def test_chunked_processing_equals_one_pass(tmp_path, monkeypatch):
    """Streaming in chunks (memory bound for long files) changes no sample and no event."""
    import dtmf.__main__ as cli
    from dtmf.detector import DtmfDetector
    from dtmf.masker import Masker, MaskMode

    rng = np.random.default_rng(7)
    sig, _ = dtmf_sequence("0123456789*#ABCD" * 2, tone_ms=45, gap_ms=45, level_dbm0=-12)
    sig = to_int16(sig + white_noise(len(sig), -40, rng))
    src = write(tmp_path / "k.wav", sig)
    monkeypatch.setattr(cli, "CHUNK_S", 0.37)  # chunks that split tones and packets
    cli.mask(str(src), str(tmp_path / "o.wav"), MaskMode.FLAT)
    m = Masker(MaskMode.FLAT, lookahead=True)
    whole = np.concatenate([m.process(sig), m.process(np.zeros(160, dtype=np.int16))])[160:160 + len(sig)]
    assert np.array_equal(read(tmp_path / "o.wav")[0], whole)
    for rate in (11025, 44100):
        s, _ = dtmf_sequence("159D", tone_ms=45, gap_ms=45, sample_rate_hz=rate)
        x = to_int16(s)
        chunked = np.concatenate(list(cli.resample_to_8k(x, rate)))
        monkeypatch.setattr(cli, "CHUNK_S", 1000.0)
        one = np.concatenate(list(cli.resample_to_8k(x, rate)))
        monkeypatch.setattr(cli, "CHUNK_S", 0.37)
        assert len(chunked) == len(x) * 8000 // rate and np.array_equal(chunked, one)
        det = DtmfDetector()
        assert [e.digit for e in det.process(one) + det.flush()] == [d for d in "159D" for _ in (0, 1)]
