"""`python -m dtmf decode FILE.wav [--json]` and `python -m dtmf mask IN.wav OUT.wav [--mode ...]`.

The contract (DESIGN.md, README): input is mono 16-bit PCM WAV (plain or
WAVE_FORMAT_EXTENSIBLE headers, any chunks around the data). `decode` takes any
rate from 8 kHz up (resampled to 8 kHz: windowed-sinc low-pass, then linear
interpolation; times stay in ms of the original) and prints the digits as one
line, or with --json one object per digit per line. `mask` needs 8 kHz (the
masker's rate; resampling would change the speech it must pass untouched), masks
as during a capture (look-ahead on, the gateway's default mode `flat`) and writes
a WAV of the same length, time-aligned with the input. Both stream the file in
chunks, so memory stays flat for hours of audio. Errors: one line on stderr, exit
status 1 (2 for usage).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain

import numpy as np

from dtmf.detector import DetectorEvent, DigitDetected, DigitEnded, DtmfDetector
from dtmf.masker import Masker, MaskMode

RATE_HZ = 8000
DEFAULT_MASK_MODE = MaskMode.FLAT
"""The gateway's `[capture] mask_mode` default: `mask` masks as a capture does."""
CHUNK_S = 8.0
"""Seconds of audio per processing step: bounds memory whatever the file length."""
MAX_RATE_HZ = 384_000
"""Highest rate `decode` resamples: the anti-alias filter grows with the rate (a header claiming
4 GHz would otherwise cost gigabytes of filter taps for a file of a few samples)."""

_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_FORMAT_NAMES = {0x0003: "32-bit float", 0x0006: "A-law", 0x0007: "mu-law", 0x0002: "ADPCM", 0x0011: "IMA ADPCM"}
# Microsoft's KSDATAFORMAT_SUBTYPE GUIDs: the format tag in the first two bytes, then this fixed tail.
_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")


class InputError(ValueError):
    """The input file is not what the command line accepts."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


@dataclass(frozen=True)
class WavData:
    """Where the 16-bit mono samples of a WAV file are."""

    path: str
    rate_hz: int
    offset: int
    """Byte offset of the first sample."""
    n_samples: int

    def samples(self) -> WavSamples:
        """All samples as int16, read slice by slice when sliced."""
        return WavSamples(self.path, self.offset, self.n_samples)


class WavSamples:
    """A WAV file's samples, read from the file one slice at a time.

    Not a memory map: every page a map touches stays in the process's resident set, so decoding a
    long file grew it by the file's size; a slice read here is the only copy, freed with it.
    """

    def __init__(self, path: str, offset: int, n_samples: int) -> None:
        self._path, self._offset, self._n = path, offset, n_samples

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, step = key.indices(self._n)
        if step != 1:
            raise ValueError("WAV samples are read in contiguous slices")
        if stop <= start:
            return np.zeros(0, dtype=np.int16)
        with open(self._path, "rb") as f:
            f.seek(self._offset + 2 * start)
            return np.fromfile(f, dtype="<i2", count=stop - start).astype(np.int16, copy=False)


def _describe_format(tag: int, bits: int) -> str:
    return _FORMAT_NAMES.get(tag, f"format 0x{tag:04x} ({bits}-bit)")


def read_wav(path: str) -> WavData:
    """Find the samples of a mono 16-bit PCM WAV; refuse anything else with a one-line reason."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                raise InputError(f"{path}: not a WAV file (no RIFF/WAVE header)")
            fmt: bytes | None = None
            data_at = data_len = None
            pos = 12
            while pos + 8 <= size and (fmt is None or data_at is None):
                f.seek(pos)
                chunk_id, chunk_len = struct.unpack("<4sI", f.read(8))
                if chunk_id == b"fmt ":
                    fmt = f.read(min(chunk_len, 64))
                elif chunk_id == b"data":
                    # Streamed writers leave 0 or 0xFFFFFFFF here: take what the file holds.
                    data_at = pos + 8
                    data_len = min(chunk_len, size - data_at)
                pos += 8 + chunk_len + (chunk_len & 1)  # RIFF chunks are word-aligned
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    if fmt is None or len(fmt) < 16:
        raise InputError(f"{path}: not a WAV file (no fmt chunk)")
    if data_at is None:
        raise InputError(f"{path}: not a WAV file (no data chunk)")
    tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == _WAVE_FORMAT_EXTENSIBLE:
        if len(fmt) < 40 or fmt[26:40] != _GUID_TAIL:
            raise InputError(f"{path}: unsupported WAVE_FORMAT_EXTENSIBLE subformat, need 16-bit PCM")
        tag = struct.unpack("<H", fmt[24:26])[0]
    if tag != _WAVE_FORMAT_PCM:
        raise InputError(f"{path}: has {_describe_format(tag, bits)} samples, need 16-bit PCM")
    if channels != 1:
        raise InputError(f"{path}: has {channels} channels, need mono")
    if bits != 16:
        raise InputError(f"{path}: has {bits}-bit samples, need 16-bit PCM")
    if block_align != 2:
        raise InputError(f"{path}: block align {block_align} does not match mono 16-bit PCM (2)")
    if rate <= 0:
        raise InputError(f"{path}: invalid sample rate")
    if rate > MAX_RATE_HZ:
        raise InputError(f"{path}: sample rate {rate} Hz is above {MAX_RATE_HZ} Hz")
    return WavData(path, rate, data_at, data_len // 2)


class WavWriter:
    """Mono 16-bit PCM written chunk by chunk."""

    def __init__(self, path: str, rate_hz: int) -> None:
        try:
            self._file = open(path, "wb")
        except OSError as e:
            raise InputError(f"{path}: cannot write ({e.strerror or e})") from None
        self._path = path
        self._wav = wave.open(self._file, "wb")
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(rate_hz)

    def write(self, samples: np.ndarray) -> None:
        try:
            self._wav.writeframesraw(np.asarray(samples, dtype="<i2").tobytes())
        except OSError as e:
            raise InputError(f"{self._path}: cannot write ({e.strerror or e})") from None

    def close(self) -> None:
        try:
            self._wav.close()  # patches the header's lengths
            self._file.close()
        except OSError as e:
            raise InputError(f"{self._path}: cannot write ({e.strerror or e})") from None


INTERP_LOBES = 4
"""Lanczos lobes of the fractional-position interpolator (8 taps): flat to 0.01 dB over the DTMF band."""


def _lowpass_taps(rate: int) -> np.ndarray:
    """Anti-alias low-pass at 3.8 kHz (Blackman-windowed sinc, ~4 ms each side), unit DC gain."""
    half = int(np.ceil(4 * rate / 1000))
    n = np.arange(-half, half + 1)
    cutoff = 3800.0 / rate
    taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.blackman(len(n))
    return taps / taps.sum()


def resample_to_8k(x: np.ndarray | WavSamples, rate: int) -> Iterator[np.ndarray]:
    """8 kHz float samples of `x` at `rate` (>= 8000), in chunks: low-pass, then Lanczos interpolation.

    Output sample k is the filtered input at position k * rate / 8000, so a time
    in the output is the same time in the input. Linear interpolation there drooped
    0.6 dB at 1,633 Hz from 11,025 Hz: enough to push a tone at the -8 dB twist
    limit out of bounds; an 8-tap Lanczos kernel keeps the DTMF band flat.
    """
    n_in = len(x)
    if rate == RATE_HZ:
        step = int(CHUNK_S * RATE_HZ)
        for k0 in range(0, n_in, step):
            yield np.asarray(x[k0:k0 + step], dtype=np.float64)
        return
    if rate < RATE_HZ:
        raise InputError(f"sample rate {rate} Hz is below 8000 Hz; record at 8000 Hz or more")
    taps = _lowpass_taps(rate)
    offsets = np.arange(1 - INTERP_LOBES, INTERP_LOBES + 1)  # filtered index minus floor(position)
    ratio = rate / RATE_HZ
    n_out = n_in * RATE_HZ // rate
    step = int(CHUNK_S * RATE_HZ)
    for k0 in range(0, n_out, step):
        pos = np.arange(k0, min(k0 + step, n_out)) * ratio
        base = np.floor(pos).astype(np.int64)
        f_lo, f_hi = int(base[0]) - INTERP_LOBES + 1, int(base[-1]) + INTERP_LOBES + 1  # filtered samples needed
        lo, hi = f_lo - len(taps) // 2, f_hi + len(taps) // 2  # input needed, zero outside the file
        seg = np.zeros(hi - lo)
        seg[max(0, -lo):len(seg) - max(0, hi - n_in)] = x[max(lo, 0):min(hi, n_in)]
        y = np.convolve(seg, taps, mode="valid")  # filtered samples f_lo .. f_hi - 1
        t = offsets[None, :] - (pos - base)[:, None]
        weights = np.sinc(t) * np.sinc(t / INTERP_LOBES)
        weights /= weights.sum(axis=1, keepdims=True)
        yield np.einsum("ij,ij->i", weights, y[(base - f_lo)[:, None] + offsets[None, :]])


def decode_events(path: str) -> list[DetectorEvent]:
    """Detector events of a WAV file, sample positions at 8 kHz."""
    wav = read_wav(path)
    try:
        chunks = resample_to_8k(wav.samples(), wav.rate_hz)
        det = DtmfDetector()
        events: list[DetectorEvent] = []
        for chunk in chunks:
            events += det.process(chunk)
        return events + det.flush()
    except InputError as e:
        raise InputError(f"{path}: {e}") from None


def decode(path: str, as_json: bool) -> str:
    """Digits found in a WAV file, as the CLI prints them."""
    events = decode_events(path)
    if not as_json:
        return "".join(e.digit for e in events if isinstance(e, DigitDetected)) + "\n"
    lines = [json.dumps({"digit": e.digit, "start_ms": e.start_sample * 1000.0 / RATE_HZ,
                         "end_ms": e.end_sample * 1000.0 / RATE_HZ})
             for e in events if isinstance(e, DigitEnded)]
    return "".join(line + "\n" for line in lines)


def mask(src: str, dst: str, mode: MaskMode) -> None:
    """Mask a WAV as during a capture; the output has the input's length and timing."""
    wav = read_wav(src)
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise InputError(f"{dst}: is the input file; write the masked audio elsewhere")
    if wav.rate_hz != RATE_HZ:
        raise InputError(f"{src}: sample rate {wav.rate_hz} Hz, mask needs 8000 Hz (resample it first, e.g. with sox)")
    x = wav.samples()
    masker = Masker(mode, lookahead=True)
    skip = masker.lookahead_samples  # the masker's output starts with this much filler
    out = WavWriter(dst, RATE_HZ)
    step = int(CHUNK_S * RATE_HZ)
    # Trailing zeros push the last input samples out of the look-ahead.
    chunks = chain((x[k:k + step] for k in range(0, len(x), step)), [np.zeros(skip, dtype=np.int16)])
    left = len(x)
    for chunk in chunks:
        y = masker.process(np.asarray(chunk, dtype=np.int16))
        drop = min(skip, len(y))
        y, skip = y[drop:], skip - drop
        y = y[:left]
        left -= len(y)
        out.write(y)
    out.close()


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m dtmf", description="DTMF decode and mask for WAV files.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p_dec = sub.add_parser("decode", help="print the DTMF digits in a WAV file")
    p_dec.add_argument("file")
    p_dec.add_argument("--json", action="store_true", help="one JSON object per digit per line")
    p_mask = sub.add_parser("mask", help="mask DTMF as during a secure capture")
    p_mask.add_argument("input")
    p_mask.add_argument("output")
    p_mask.add_argument("--mode", choices=[m.value for m in MaskMode], default=DEFAULT_MASK_MODE.value,
                        help=f"what replaces the tones (default {DEFAULT_MASK_MODE.value}, as the gateway)")
    args = parser.parse_args(argv)
    try:
        if args.command == "decode":
            sys.stdout.write(decode(args.file, args.json))
        else:
            mask(args.input, args.output, MaskMode(args.mode))
    except InputError as e:
        print(f"python -m dtmf: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
