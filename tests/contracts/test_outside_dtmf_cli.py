"""Contract 1 from outside: `python -m dtmf` on WAV files no test writer plans for.

Hand-built headers with hostile size fields, empty and truncated files, a rate of
4 GHz, a block align that contradicts the sample width, and legal files written
sideways (fmt after data, 16 kHz with digits): every one ends in either digits or
one line on stderr with exit status 1, quickly and in bounded memory.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from dtmf.tones import dtmf_sequence, to_int16

ROOT = Path(__file__).resolve().parents[2]
MAX_RSS_KB = 400_000
"""Far above what decoding a small file needs (~50 MB), far below what a 4 GHz filter costs (1.6 GB)."""

RSS_WRAPPER = ("import resource, runpy, sys; sys.argv = ['dtmf'] + sys.argv[1:]"
               "\ntry: runpy.run_module('dtmf', run_name='__main__')"
               "\nexcept SystemExit as e: code = e.code"
               "\nelse: code = 0"
               "\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
               "\nsys.exit(code)")


def fmt(tag: int = 1, channels: int = 1, rate: int = 8000, bits: int = 16, align: int | None = None) -> bytes:
    align = channels * bits // 8 if align is None else align
    return struct.pack("<HHIIHH", tag, channels, rate, (rate * align) & 0xFFFFFFFF, align, bits)


def chunk(cid: bytes, body: bytes, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return cid + struct.pack("<I", n) + body + b"\0" * (len(body) & 1)


def riff(*chunks: bytes, riff_len: int | None = None) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body) if riff_len is None else riff_len) + body


def run_all(jobs: dict[str, list[str]]) -> dict[str, tuple[int, str, str, int]]:
    """Run every command at once (the machine has 2 cores; each is mostly interpreter start-up)."""
    procs = {name: subprocess.Popen([sys.executable, "-c", RSS_WRAPPER, *args], cwd=ROOT, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, args in jobs.items()}
    out = {}
    for name, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError(f"{name}: still running after 60 s")
        lines = stderr.splitlines()
        rss_kb = int(lines[-1]) if lines and lines[-1].isdigit() else -1
        out[name] = (proc.returncode, stdout, "\n".join(lines[:-1]), rss_kb)
    return out


@pytest.fixture(scope="module")
def keyed() -> tuple[bytes, str]:
    sig, placed = dtmf_sequence("73#", tone_ms=60, gap_ms=60, level_dbm0=-12, lead_ms=100, tail_ms=100)
    return to_int16(sig).astype("<i2").tobytes(), "".join(p.digit for p in placed)


def test_hostile_and_broken_headers_get_one_line_and_status_1(tmp_path, keyed):
    pcm, _ = keyed
    refused = {
        "zero-bytes": (b"", "not a WAV"),
        "riff-magic-only": (b"RIFF", "not a WAV"),
        "riff-wave-no-chunks": (b"RIFF\x04\0\0\0WAVE", "no fmt chunk"),
        "fmt-length-4gb": (b"RIFF\xff\xff\xff\xffWAVE" + b"fmt " + b"\xf0\xff\xff\xff" + fmt() + chunk(b"data", pcm),
                           "not a WAV"),
        "fmt-8-bytes": (riff(chunk(b"fmt ", fmt()[:8]), chunk(b"data", pcm)), "not a WAV"),
        "cut-inside-fmt": (riff(chunk(b"fmt ", fmt()), chunk(b"data", pcm))[:26], "not a WAV"),
        "cut-before-data-header": (riff(chunk(b"fmt ", fmt()), chunk(b"data", pcm))[:38], "no data chunk"),
        "big-endian-rifx": (b"RIFX" + riff(chunk(b"fmt ", fmt()), chunk(b"data", pcm))[4:], "not a WAV"),
        "rate-4ghz": (riff(chunk(b"fmt ", fmt(rate=0xFFFFFFFF)), chunk(b"data", pcm)), "Hz"),
        "rate-0": (riff(chunk(b"fmt ", fmt(rate=0)), chunk(b"data", pcm)), "rate"),
        "channels-0": (riff(chunk(b"fmt ", fmt(channels=0, align=2)), chunk(b"data", pcm)), "mono"),
        "stereo-claiming-4-byte-frames": (riff(chunk(b"fmt ", fmt(channels=2)), chunk(b"data", pcm + pcm)), "mono"),
        "align-contradicts-width": (riff(chunk(b"fmt ", fmt(align=4)), chunk(b"data", pcm)), "align"),
    }
    jobs = {}
    for name, (blob, _) in refused.items():
        path = tmp_path / f"{name}.wav"
        path.write_bytes(blob)
        jobs[name] = ["decode", str(path)]
        if name in ("zero-bytes", "rate-4ghz", "align-contradicts-width", "fmt-length-4gb"):
            jobs[name + "/mask"] = ["mask", str(path), str(tmp_path / f"{name}.out.wav")]
    results = run_all(jobs)
    for name, (code, stdout, stderr, rss_kb) in results.items():
        fragment = refused[name.split("/")[0]][1]
        assert code == 1, (name, code, stdout, stderr)
        assert stdout == "", name
        assert len(stderr.splitlines()) == 1 and "Traceback" not in stderr, (name, stderr)
        assert fragment in stderr, (name, stderr)
        assert 0 < rss_kb < MAX_RSS_KB, (name, rss_kb)  # a 4 GHz header must not build a 4 GHz filter
    for name in refused:
        assert not (tmp_path / f"{name}.out.wav").exists(), name  # refused before any output is written


def test_legal_but_unusual_files_decode(tmp_path, keyed):
    pcm, digits = keyed
    sig = np.frombuffer(pcm, dtype="<i2")
    up = np.repeat(sig, 2)  # 16 kHz by sample doubling: the tones keep their frequencies
    accepted = {
        "fmt-after-data": (riff(chunk(b"data", pcm), chunk(b"fmt ", fmt())), digits + "\n"),
        "junk-and-fact-chunks": (riff(chunk(b"JUNK", b"\0" * 28), chunk(b"fmt ", fmt()),
                                      chunk(b"fact", struct.pack("<I", len(sig))), chunk(b"data", pcm)),
                                 digits + "\n"),
        "riff-length-4gb": (riff(chunk(b"fmt ", fmt()), chunk(b"data", pcm), riff_len=0xFFFFFFFF), digits + "\n"),
        "data-length-2gb": (riff(chunk(b"fmt ", fmt()), chunk(b"data", pcm, length=0x7FFFFFFF)), digits + "\n"),
        "data-one-byte": (riff(chunk(b"fmt ", fmt()), chunk(b"data", b"\x01")), "\n"),
        "16khz": (riff(chunk(b"fmt ", fmt(rate=16000)), chunk(b"data", up.astype("<i2").tobytes())), digits + "\n"),
    }
    jobs = {}
    for name, (blob, _) in accepted.items():
        path = tmp_path / f"{name}.wav"
        path.write_bytes(blob)
        jobs[name] = ["decode", str(path)]
    jobs["16khz/json"] = ["decode", "--json", str(tmp_path / "16khz.wav")]
    results = run_all(jobs)
    for name, (code, stdout, stderr, _) in results.items():
        if name.endswith("/json"):
            continue
        assert (name, code, stdout, stderr) == (name, 0, accepted[name][1], "")
    code, stdout, _, _ = results["16khz/json"]
    objs = [json.loads(line) for line in stdout.splitlines()]
    assert code == 0 and "".join(o["digit"] for o in objs) == digits
    assert 90 <= objs[0]["start_ms"] <= 110  # ms of the 16 kHz original: the first tone starts at 100 ms


def test_mask_of_an_empty_and_a_one_sample_file_keeps_the_length(tmp_path):
    jobs = {}
    for n in (0, 1, 161):
        src = tmp_path / f"n{n}.wav"
        src.write_bytes(riff(chunk(b"fmt ", fmt()), chunk(b"data", (np.arange(n) * 37).astype("<i2").tobytes())))
        jobs[str(n)] = ["mask", str(src), str(tmp_path / f"out{n}.wav")]
    for name, (code, stdout, stderr, _) in run_all(jobs).items():
        assert (code, stdout, stderr) == (0, "", ""), name
        with wave.open(str(tmp_path / f"out{name}.wav"), "rb") as w:
            assert (w.getnframes(), w.getframerate(), w.getnchannels(), w.getsampwidth()) == (int(name), 8000, 1, 2)
            out = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        assert np.array_equal(out, (np.arange(int(name)) * 37).astype("<i2")), name  # no tone: untouched
