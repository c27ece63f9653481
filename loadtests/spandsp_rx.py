"""spandsp's DTMF receiver (Debian libspandsp2) through ctypes: the reference we measure against.

Only the public C API of spandsp/dtmf.h is used: dtmf_rx_init, dtmf_rx,
dtmf_rx_set_realtime_callback, dtmf_rx_free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

import numpy as np

_DIGITS_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int)
_TONE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int)
_lib: ctypes.CDLL | None = None


def load_spandsp() -> ctypes.CDLL | None:
    """The spandsp library with prototypes set, or None when it is not installed."""
    global _lib
    if _lib is not None:
        return _lib
    for name in ("libspandsp.so.2", ctypes.util.find_library("spandsp")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.dtmf_rx_init.restype = ctypes.c_void_p
        lib.dtmf_rx_init.argtypes = [ctypes.c_void_p, _DIGITS_CB, ctypes.c_void_p]
        lib.dtmf_rx.restype = ctypes.c_int
        lib.dtmf_rx.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int16), ctypes.c_int]
        lib.dtmf_rx_set_realtime_callback.restype = None
        lib.dtmf_rx_set_realtime_callback.argtypes = [ctypes.c_void_p, _TONE_CB, ctypes.c_void_p]
        lib.dtmf_rx_free.restype = ctypes.c_int
        lib.dtmf_rx_free.argtypes = [ctypes.c_void_p]
        _lib = lib
        return lib
    return None


@dataclass(frozen=True)
class SpandspDigit:
    """A digit reported by spandsp's realtime callback."""

    digit: str
    decided_sample: int
    """Samples fed before the dtmf_rx call that reported the digit's onset, plus that call's length."""
    end_sample: int | None
    """Same for the report that the tone stopped (None if it never did)."""


class SpandspDtmfRx:
    """One spandsp dtmf_rx context; feed int16 samples, read the digits it reported."""

    def __init__(self) -> None:
        lib = load_spandsp()
        if lib is None:
            raise RuntimeError("libspandsp.so.2 is not installed")
        self._lib = lib
        self.digits: list[SpandspDigit] = []
        self._fed = 0
        self._chunk = 0
        self._open: tuple[str, int] | None = None
        self._digits_cb = _DIGITS_CB(lambda _u, _d, _n: None)
        self._tone_cb = _TONE_CB(self._on_tone)
        self._state = lib.dtmf_rx_init(None, self._digits_cb, None)
        lib.dtmf_rx_set_realtime_callback(self._state, self._tone_cb, None)

    def _on_tone(self, _user: int, code: int, _level: int, _delay: int) -> None:
        at = self._fed + self._chunk
        if self._open is not None:
            self.digits.append(SpandspDigit(self._open[0], self._open[1], at))
            self._open = None
        if code:
            self._open = (chr(code), at)

    def process(self, samples: np.ndarray) -> None:
        """Run dtmf_rx over the samples (int16)."""
        buf = np.ascontiguousarray(samples, dtype=np.int16)
        self._chunk = len(buf)
        self._lib.dtmf_rx(self._state, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_int16)), len(buf))
        self._fed += len(buf)
        self._chunk = 0

    def flush(self) -> list[SpandspDigit]:
        """All digits reported so far, an open one included."""
        if self._open is not None:
            self.digits.append(SpandspDigit(self._open[0], self._open[1], None))
            self._open = None
        return self.digits

    def close(self) -> None:
        """Free the C context."""
        if self._state:
            self._lib.dtmf_rx_free(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()


def spandsp_decode(samples: np.ndarray, chunk: int = 160) -> list[SpandspDigit]:
    """Digits spandsp finds in a whole signal fed in chunks of `chunk` samples."""
    rx = SpandspDtmfRx()
    x = np.asarray(samples, dtype=np.int16)
    for i in range(0, len(x), chunk):
        rx.process(x[i:i + chunk])
    out = rx.flush()
    rx.close()
    return out
