"""ITU-T G.711 mu-law and A-law companding by table lookup.

The tables are built once from the G.711 segment rules; encoding indexes a
65,536-entry table with the 16-bit sample, decoding a 256-entry one, so a whole
packet (or a whole batch of packets) converts in one numpy fancy-index.
"""

from __future__ import annotations

import numpy as np

_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159  # 14-bit magnitude limit
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _build_ulaw_decode() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = ((u & 0x0F) << 3) + _ULAW_BIAS
    t = t << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _build_alaw_decode() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


def _build_ulaw_encode() -> np.ndarray:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 2  # 14-bit
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, mag)  # first segment whose end >= mag
    code = np.where(
        seg >= 8, 0x7F, (seg << 4) | ((mag >> (np.minimum(seg, 7) + 1)) & 0x0F)
    )
    table = (code ^ mask).astype(np.uint8)
    # Index by the uint16 view of the int16 sample.
    return np.roll(table, -32768)


def _build_alaw_encode() -> np.ndarray:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 3  # 13-bit
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(_ALAW_SEG_END, mag)
    shift = np.where(seg < 2, 1, np.minimum(seg, 7))
    code = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((mag >> shift) & 0x0F))
    table = (code ^ mask).astype(np.uint8)
    return np.roll(table, -32768)


ULAW_DECODE: np.ndarray = _build_ulaw_decode()
"""int16[256]: mu-law code to linear sample."""
ALAW_DECODE: np.ndarray = _build_alaw_decode()
"""int16[256]: A-law code to linear sample."""
ULAW_ENCODE: np.ndarray = _build_ulaw_encode()
"""uint8[65536]: linear sample (as uint16) to mu-law code."""
ALAW_ENCODE: np.ndarray = _build_alaw_encode()
"""uint8[65536]: linear sample (as uint16) to A-law code."""

for _t in (ULAW_DECODE, ALAW_DECODE, ULAW_ENCODE, ALAW_ENCODE):
    _t.setflags(write=False)

ULAW_SILENCE = 0xFF
ALAW_SILENCE = 0xD5


def _as_codes(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.astype(np.uint8, copy=False)
    return np.frombuffer(data, dtype=np.uint8)


def ulaw_decode(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Decode mu-law codes to int16 samples."""
    return ULAW_DECODE[_as_codes(data)]


def alaw_decode(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Decode A-law codes to int16 samples."""
    return ALAW_DECODE[_as_codes(data)]


def ulaw_encode(samples: np.ndarray) -> np.ndarray:
    """Encode int16 samples to mu-law codes (uint8)."""
    return ULAW_ENCODE[np.asarray(samples, dtype=np.int16).view(np.uint16)]


def alaw_encode(samples: np.ndarray) -> np.ndarray:
    """Encode int16 samples to A-law codes (uint8)."""
    return ALAW_ENCODE[np.asarray(samples, dtype=np.int16).view(np.uint16)]


DECODE_TABLES = {"PCMU": ULAW_DECODE, "PCMA": ALAW_DECODE}
ENCODE_TABLES = {"PCMU": ULAW_ENCODE, "PCMA": ALAW_ENCODE}
SILENCE_CODES = {"PCMU": ULAW_SILENCE, "PCMA": ALAW_SILENCE}

# G.711 A-law <-> mu-law conversion as a 256-byte table per direction, for bytes.translate:
# decode with one law, re-encode with the other (a requantisation: mu->A lands on the nearest
# A-law level), so converting a packet is one C loop and never touches numpy.
ULAW_TO_ALAW: bytes = ALAW_ENCODE[ULAW_DECODE.view(np.uint16)].tobytes()
"""mu-law code -> A-law code (bytes.translate table)."""
ALAW_TO_ULAW: bytes = ULAW_ENCODE[ALAW_DECODE.view(np.uint16)].tobytes()
"""A-law code -> mu-law code (bytes.translate table)."""
TRANSCODE_TABLES = {("PCMU", "PCMA"): ULAW_TO_ALAW, ("PCMA", "PCMU"): ALAW_TO_ULAW}
"""(from codec, to codec) -> translate table; absent when the laws are equal (pass through)."""
