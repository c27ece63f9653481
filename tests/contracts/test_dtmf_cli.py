"""Contract 1: `python -m dtmf decode|mask`, driven as a subprocess on real files, as a tester's battery would."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from dtmf.detector import DigitDetected, DtmfDetector
from dtmf.tones import DIGITS, DTMF_FREQS_HZ, dtmf_sequence, dtmf_tone, to_int16, white_noise
from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parents[2]
GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")


def dtmf(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dtmf", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout_s)


def riff(fmt: bytes, data: bytes, before_data: bytes = b"", data_len: int | None = None) -> bytes:
    """A WAV file built by hand: the header variants other tools write."""
    n = len(data) if data_len is None else data_len
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + before_data
            + b"data" + struct.pack("<I", n) + data + b"\0" * (len(data) & 1))
    return b"RIFF" + struct.pack("<I", len(body)) + body


def fmt_chunk(tag: int = 1, channels: int = 1, rate: int = 8000, bits: int = 16, sub_tag: int | None = None) -> bytes:
    align = channels * bits // 8
    f = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    if sub_tag is not None:  # WAVE_FORMAT_EXTENSIBLE: cbSize, valid bits, channel mask, subformat GUID
        f += struct.pack("<HHI", 22, bits, 4) + struct.pack("<H", sub_tag) + GUID_TAIL
    return f


def write_wav(path: Path, samples: np.ndarray, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())
    return path


def read_wav(path: Path) -> tuple[np.ndarray, int, int, int]:
    with wave.open(str(path), "rb") as w:
        return (np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate(),
                w.getnchannels(), w.getsampwidth())


def library_digits(samples: np.ndarray) -> str:
    det = DtmfDetector()
    return "".join(e.digit for e in det.process(samples) + det.flush() if isinstance(e, DigitDetected))


@pytest.fixture(scope="module")
def keyed() -> tuple[np.ndarray, list]:
    rng = np.random.default_rng(19)
    sig, placed = dtmf_sequence("159D#0*", tone_ms=60, gap_ms=60, level_dbm0=-12, lead_ms=200, tail_ms=200)
    return to_int16(sig + white_noise(len(sig), -45, rng)), placed


# ---- decode: output format ----

def test_decode_one_line_exactly(tmp_path, keyed):
    sig, placed = keyed
    r = dtmf("decode", str(write_wav(tmp_path / "k.wav", sig)))
    assert (r.returncode, r.stdout, r.stderr) == (0, "".join(p.digit for p in placed) + "\n", "")


def test_decode_no_digits_is_exactly_one_newline(tmp_path):
    rng = np.random.default_rng(1)
    r = dtmf("decode", str(write_wav(tmp_path / "n.wav", to_int16(white_noise(16000, -20, rng)))))
    assert (r.returncode, r.stdout) == (0, "\n")


def test_decode_json_objects_with_float_times(tmp_path, keyed):
    sig, placed = keyed
    r = dtmf("decode", "--json", str(write_wav(tmp_path / "k.wav", sig)))
    assert r.returncode == 0 and r.stdout.endswith("\n")
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["digit"] for o in objs] == [p.digit for p in placed]
    for o, p in zip(objs, placed):
        assert list(o) == ["digit", "start_ms", "end_ms"]
        assert isinstance(o["start_ms"], float) and isinstance(o["end_ms"], float)
        assert abs(o["start_ms"] - p.start_sample / 8) <= 5 and abs(o["end_ms"] - p.end_sample / 8) <= 5


def test_decode_json_with_no_digits_prints_nothing(tmp_path):
    r = dtmf("decode", "--json", str(write_wav(tmp_path / "z.wav", np.zeros(800, dtype=np.int16))))
    assert (r.returncode, r.stdout) == (0, "")


# ---- decode: the receiver battery through the CLI equals the library ----

def battery(rate: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """All 16 keys at 40 ms / 40 ms pause, twist, levels, frequency offsets and noise; the digits to expect."""
    parts, expect = [], ""
    gap = np.zeros(rate * 150 // 1000)

    def add(digit: str, ok: bool, **kw) -> None:
        nonlocal expect
        parts.extend([dtmf_tone(digit, sample_rate_hz=rate, **kw), gap])
        expect += digit if ok else ""

    keys = np.concatenate([np.concatenate([dtmf_tone(d, 40, -10, sample_rate_hz=rate), np.zeros(rate // 25)])
                           for d in DIGITS])
    parts.extend([gap, keys, gap])
    expect += DIGITS
    for digit in DIGITS:
        add(digit, True, duration_ms=60, twist_db=-8.0)
        add(digit, True, duration_ms=60, twist_db=4.0)
        add(digit, False, duration_ms=60, twist_db=-10.0)
        add(digit, False, duration_ms=60, twist_db=6.0)
        add(digit, True, duration_ms=60, level_dbm0=0.0)
        add(digit, True, duration_ms=60, level_dbm0=-25.0)
        add(digit, False, duration_ms=60, level_dbm0=-37.0)
        add(digit, False, duration_ms=20)
    for digit in "159D":
        for group, f in zip(("low", "high"), DTMF_FREQS_HZ[digit]):
            for sign in (1, -1):
                add(digit, True, duration_ms=60, **{f"{group}_offset_pct": sign * (1.5 + 200.0 / f)})
                add(digit, False, duration_ms=100, **{f"{group}_offset_pct": sign * 3.5})
    signal = np.concatenate(parts)
    noisy = np.concatenate([dtmf_tone(d, 50, -20, sample_rate_hz=rate) for d in DIGITS])
    noisy = np.concatenate([gap, noisy, gap])
    level = np.std(white_noise(8000, -35, rng))  # 15 dB under the tone, same dBm0 at any rate
    signal = np.concatenate([signal, noisy + rng.standard_normal(len(noisy)) * level])
    return to_int16(signal), expect + "".join(DIGITS)


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 44100, 48000])
def test_battery_through_the_cli(tmp_path, rate):
    rng = np.random.default_rng(rate)
    sig, expect = battery(rate, rng)
    if rate == 8000:
        assert library_digits(sig) == expect  # the battery itself is right for the library
    r = dtmf("decode", str(write_wav(tmp_path / "b.wav", sig, rate)))
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == expect + "\n"


@pytest.mark.parametrize("rate", [11025, 44100])
def test_resampled_times_are_ms_of_the_original(tmp_path, rate):
    sig, placed = dtmf_sequence("37", tone_ms=70, gap_ms=333, level_dbm0=-10, lead_ms=1234, tail_ms=77,
                                sample_rate_hz=rate)
    r = dtmf("decode", "--json", str(write_wav(tmp_path / "t.wav", to_int16(sig), rate)))
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["digit"] for o in objs] == ["3", "7"]
    for o, p in zip(objs, placed):
        assert abs(o["start_ms"] - p.start_sample * 1000 / rate) <= 5
        assert abs(o["end_ms"] - p.end_sample * 1000 / rate) <= 5


def test_digits_at_the_very_start_and_end(tmp_path):
    tone = to_int16(dtmf_tone("9", 60, -10))
    sig = np.concatenate([tone, np.zeros(800, dtype=np.int16), to_int16(dtmf_tone("A", 60, -10))])
    r = dtmf("decode", "--json", str(write_wav(tmp_path / "e.wav", sig)))
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["digit"] for o in objs] == ["9", "A"]
    assert objs[0]["start_ms"] <= 5 and objs[1]["end_ms"] >= len(sig) / 8 - 5


# ---- decode: WAV files as other tools write them ----

def test_wav_variants_testers_produce(tmp_path, keyed):
    sig, placed = keyed
    pcm = sig.tobytes()
    expect = "".join(p.digit for p in placed) + "\n"
    info = b"INFOISFT" + struct.pack("<I", 6) + b"sox 1\0"
    variants = {
        "extensible": riff(fmt_chunk(0xFFFE, sub_tag=1), pcm),
        "list-before-data": riff(fmt_chunk(), pcm, before_data=b"LIST" + struct.pack("<I", len(info)) + info),
        "odd-length-data": riff(fmt_chunk(), pcm + b"\x07"),
        "streamed-length": riff(fmt_chunk(), pcm, data_len=0xFFFFFFFF),
        "fmt-18-bytes": riff(fmt_chunk() + b"\0\0", pcm),
    }
    for name, blob in variants.items():
        path = tmp_path / f"{name}.wav"
        path.write_bytes(blob)
        r = dtmf("decode", str(path))
        assert (name, r.returncode, r.stdout) == (name, 0, expect)
    sox = require_binary("sox")  # sox's own headers (it writes WAVE_FORMAT_EXTENSIBLE for >16-bit and >2 channels)
    src = write_wav(tmp_path / "plain.wav", sig)
    subprocess.run([sox, str(src), "-t", "wavpcm", str(tmp_path / "sox.wav")], check=True, timeout=30)
    assert dtmf("decode", str(tmp_path / "sox.wav")).stdout == expect


def test_empty_data_chunk(tmp_path):
    (tmp_path / "e.wav").write_bytes(riff(fmt_chunk(), b""))
    r = dtmf("decode", str(tmp_path / "e.wav"))
    assert (r.returncode, r.stdout, r.stderr) == (0, "\n", "")


def one_line_error(r: subprocess.CompletedProcess, fragment: str) -> None:
    assert r.returncode == 1, r
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert fragment in r.stderr, r.stderr


def test_unsupported_formats_refused_with_one_line(tmp_path):
    tone = to_int16(dtmf_tone("5", 100, -10))
    refused = {
        "stereo": (riff(fmt_chunk(channels=2), np.repeat(tone, 2).tobytes()), "need mono"),
        "8-bit": (riff(fmt_chunk(bits=8), (tone // 256 + 128).astype(np.uint8).tobytes()), "need 16-bit"),
        "24-bit": (riff(fmt_chunk(bits=24), b"\0" * 3 * len(tone)), "need 16-bit"),
        "float": (riff(fmt_chunk(3, bits=32), (tone / 32768).astype("<f4").tobytes()), "float"),
        "float-extensible": (riff(fmt_chunk(0xFFFE, bits=32, sub_tag=3), (tone / 32768).astype("<f4").tobytes()),
                             "float"),
        "alaw": (riff(fmt_chunk(6, bits=8), b"\xd5" * len(tone)), "need 16-bit"),
        "not-riff": (b"ID3\x03" + b"\0" * 100, "not a WAV file"),
        "truncated": (riff(fmt_chunk(), tone.tobytes())[:30], "not a WAV file"),
        "below-8k": (riff(fmt_chunk(rate=4000), tone.tobytes()), "8000 Hz"),
    }
    for name, (blob, fragment) in refused.items():
        path = tmp_path / f"{name}.wav"
        path.write_bytes(blob)
        one_line_error(dtmf("decode", str(path)), fragment)
    one_line_error(dtmf("decode", str(tmp_path / "missing.wav")), "no such file")


def test_usage_errors_exit_2():
    r = dtmf("decode")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1


def test_a_long_file_decodes_in_bounded_time_and_memory(tmp_path):
    """20 minutes at 44.1 kHz (106 MB): the CLI streams it (max RSS bounded well below the file's float size)."""
    rate, minutes = 44100, 20
    path = tmp_path / "long.wav"
    n = rate * 60 * minutes
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        rng = np.random.default_rng(5)
        noise = (rng.standard_normal(rate * 60) * 200).astype("<i2").tobytes()
        for _ in range(minutes):
            w.writeframes(noise)
        w.writeframes(to_int16(dtmf_tone("7", 80, -10, sample_rate_hz=rate)).tobytes())
    code = ("import resource, sys, runpy; sys.argv = ['dtmf', 'decode', sys.argv[1]];"
            "\ntry: runpy.run_module('dtmf', run_name='__main__')"
            "\nexcept SystemExit: pass"
            "\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.stdout == "7\n"
    max_rss_kb = int(r.stderr.strip().splitlines()[-1])
    assert max_rss_kb * 1024 < 8 * n // 2, max_rss_kb  # a float64 copy of the whole file would be 8 bytes a sample


# ---- mask ----

def multimon_digits(path: Path) -> str:
    sox, multimon = require_binary("sox"), require_binary("multimon-ng")
    raw = subprocess.run([sox, "-D", str(path), "-t", "raw", "-r", "22050", "-e", "signed-integer", "-b", "16",
                          "-c", "1", "-"], capture_output=True, check=True, timeout=30).stdout
    out = subprocess.run([multimon, "-q", "-c", "-a", "DTMF", "-t", "raw", "-"], input=raw, capture_output=True,
                         timeout=30).stdout.decode()
    return "".join(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("DTMF:"))


@pytest.mark.parametrize("mode", [None, "flat", "silence", "comfort-noise"])
def test_mask_same_length_format_alignment_and_nothing_decodable(tmp_path, keyed, mode):
    sig, placed = keyed
    src = write_wav(tmp_path / "in.wav", sig)
    out = tmp_path / "out.wav"
    r = dtmf("mask", str(src), str(out), *(["--mode", mode] if mode else []))
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    masked, rate, channels, width = read_wav(out)
    assert (len(masked), rate, channels, width) == (len(sig), 8000, 1, 2)
    outside = np.ones(len(sig), dtype=bool)
    for p in placed:  # the masker may act from one 20 ms packet before a tone to its hang-over after
        outside[max(0, p.start_sample - 160):p.end_sample + 160] = False
    assert np.array_equal(masked[outside], sig[outside])
    assert multimon_digits(src) == "".join(p.digit for p in placed)  # positive control
    assert dtmf("decode", str(out)).stdout == "\n"
    assert multimon_digits(out) == ""


def test_mask_default_mode_is_the_gateways(tmp_path, keyed):
    from gateway.config import Config

    sig, _ = keyed
    src = write_wav(tmp_path / "in.wav", sig)
    dtmf("mask", str(src), str(tmp_path / "default.wav"))
    dtmf("mask", str(src), str(tmp_path / "named.wav"), "--mode", Config().capture.mask_mode)
    assert (tmp_path / "default.wav").read_bytes() == (tmp_path / "named.wav").read_bytes()


def test_mask_refuses_other_rates_and_the_input_as_output(tmp_path):
    one_line_error(dtmf("mask", str(write_wav(tmp_path / "w.wav", np.zeros(1600), 16000)), str(tmp_path / "o.wav")),
                   "8000 Hz")
    src = write_wav(tmp_path / "s.wav", np.arange(1000))
    one_line_error(dtmf("mask", str(src), str(src)), "input")
    assert read_wav(src)[0].tolist() == list(range(1000))
