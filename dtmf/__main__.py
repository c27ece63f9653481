"""`python -m dtmf decode FILE.wav [--json]` and `python -m dtmf mask IN.wav OUT.wav [--mode ...]`.

The contract (DESIGN.md, README): input is mono 16-bit PCM WAV. `decode` takes any
rate (resampled to 8 kHz: windowed-sinc low-pass, then linear interpolation) and
prints the digits as one line, or with --json one object per digit per line.
`mask` needs 8 kHz (the masker's rate; resampling would change the speech it must
pass untouched), masks as during a capture and writes a WAV of the same length,
time-aligned with the input. Errors: one line on stderr, exit status 1 (2 for usage).
"""

from __future__ import annotations

import argparse
import json
import sys
import wave

import numpy as np

from dtmf.detector import DigitDetected, DigitEnded, DtmfDetector
from dtmf.masker import Masker, MaskMode

RATE_HZ = 8000


class InputError(ValueError):
    """The input file is not what the command line accepts."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def read_wav(path: str) -> tuple[np.ndarray, int]:
    """Samples (int16) and rate of a mono 16-bit PCM WAV."""
    try:
        with wave.open(path, "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            if w.getcomptype() != "NONE":
                raise InputError(f"{path}: not PCM")
            if channels != 1:
                raise InputError(f"{path}: has {channels} channels, need mono")
            if width != 2:
                raise InputError(f"{path}: has {8 * width}-bit samples, need 16-bit PCM")
            data = w.readframes(n)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except (wave.Error, EOFError) as e:
        raise InputError(f"{path}: not a WAV file ({e or 'truncated'})") from None
    if rate <= 0:
        raise InputError(f"{path}: invalid sample rate")
    return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.int16), rate


def write_wav(path: str, samples: np.ndarray, rate: int) -> None:
    """Write mono 16-bit PCM."""
    try:
        with open(path, "wb") as f, wave.open(f, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(samples.astype("<i2").tobytes())
    except OSError as e:
        raise InputError(f"{path}: cannot write ({e.strerror or e})") from None


def resample_to_8k(x: np.ndarray, rate: int) -> np.ndarray:
    """Resample to 8 kHz: low-pass at 3.8 kHz (Blackman-windowed sinc) when decimating, then interpolate."""
    if rate == RATE_HZ:
        return x.astype(np.float64)
    y = x.astype(np.float64)
    if rate > RATE_HZ:
        half = int(np.ceil(4 * rate / 1000))  # ~4 ms each side
        n = np.arange(-half, half + 1)
        cutoff = 3800.0 / rate
        taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.blackman(len(n))
        y = np.convolve(y, taps / taps.sum(), mode="same")
    n_out = int(len(x) * RATE_HZ // rate)
    pos = np.arange(n_out) * (rate / RATE_HZ)
    return np.interp(pos, np.arange(len(y)), y)


def decode(path: str, as_json: bool) -> str:
    """Digits found in a WAV file, as the CLI prints them."""
    x, rate = read_wav(path)
    samples = resample_to_8k(x, rate)
    det = DtmfDetector()
    events = det.process(samples) + det.flush()
    if not as_json:
        return "".join(e.digit for e in events if isinstance(e, DigitDetected)) + "\n"
    lines = [json.dumps({"digit": e.digit, "start_ms": e.start_sample * 1000.0 / RATE_HZ,
                         "end_ms": e.end_sample * 1000.0 / RATE_HZ})
             for e in events if isinstance(e, DigitEnded)]
    return "".join(line + "\n" for line in lines)


def mask(src: str, dst: str, mode: MaskMode) -> None:
    """Mask a WAV as during a capture; the output has the input's length and timing."""
    x, rate = read_wav(src)
    if rate != RATE_HZ:
        raise InputError(f"{src}: sample rate {rate} Hz, mask needs 8000 Hz (resample it first, e.g. with sox)")
    masker = Masker(mode, lookahead=True)
    delay = masker.lookahead_samples
    # Trailing zeros push the last input samples out of the look-ahead; drop the leading filler.
    out = np.concatenate([masker.process(x), masker.process(np.zeros(delay, dtype=np.int16))])
    out = out[delay:delay + len(x)]
    write_wav(dst, out, rate)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m dtmf", description="DTMF decode and mask for WAV files.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p_dec = sub.add_parser("decode", help="print the DTMF digits in a WAV file")
    p_dec.add_argument("file")
    p_dec.add_argument("--json", action="store_true", help="one JSON object per digit per line")
    p_mask = sub.add_parser("mask", help="mask DTMF as during a secure capture")
    p_mask.add_argument("input")
    p_mask.add_argument("output")
    p_mask.add_argument("--mode", choices=[m.value for m in MaskMode], default=MaskMode.COMFORT_NOISE.value)
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
