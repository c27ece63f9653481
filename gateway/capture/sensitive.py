"""A wipeable buffer for card digits: the only place a PAN, expiry or CVV lives in memory."""

from __future__ import annotations

import hmac
from typing import NoReturn

MAX_DIGITS = 32
_ASCII_ZERO = 0x30


class SensitiveDigitsError(ValueError):
    """A digit buffer was misused (not a digit, full); the message never holds a digit."""


class SensitiveDigits:
    """Fixed-capacity digit buffer whose repr/str/format print no digit and that `wipe()` zeroes.

    Capacity is allocated once so the bytes never move (a growing bytearray would leave
    unwiped copies behind). It cannot be pickled or copied, and compares in constant time.
    """

    __slots__ = ("_buf", "_len", "__weakref__")

    def __init__(self, capacity: int = MAX_DIGITS) -> None:
        if not 0 < capacity <= 64:
            raise SensitiveDigitsError("digit buffer capacity out of range")
        self._buf = bytearray(capacity)
        self._len = 0

    def append(self, digit: str) -> None:
        """Add one keypad digit '0'-'9'."""
        if len(digit) != 1 or not "0" <= digit <= "9":
            raise SensitiveDigitsError("not a decimal digit")
        if self._len >= len(self._buf):
            raise SensitiveDigitsError("digit buffer is full")
        self._buf[self._len] = ord(digit) - _ASCII_ZERO
        self._len += 1

    def wipe(self) -> None:
        """Zero every byte and empty the buffer."""
        memoryview(self._buf)[:] = bytes(len(self._buf))
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def value_at(self, index: int) -> int:
        """The digit at `index` as an int 0-9 (for checksums, without building a string)."""
        if not 0 <= index < self._len:
            raise IndexError("digit index out of range")
        return self._buf[index]

    def prefix_value(self, count: int) -> int:
        """The first `count` digits (at most 6, the BIN) as an integer, for range checks."""
        if not 0 < count <= min(6, self._len):
            raise SensitiveDigitsError("prefix length out of range")
        value = 0
        for i in range(count):
            value = value * 10 + self._buf[i]
        return value

    def last4(self) -> str:
        """The last four digits: the only part of a PAN that may be shown."""
        if self._len < 4:
            raise SensitiveDigitsError("fewer than four digits")
        return "".join(chr(_ASCII_ZERO + self._buf[i]) for i in range(self._len - 4, self._len))

    def write_ascii(self, out: bytearray) -> None:
        """Append the digits as ASCII to `out` (a request body the caller wipes after use)."""
        for i in range(self._len):
            out.append(_ASCII_ZERO + self._buf[i])

    def __repr__(self) -> str:
        return f"SensitiveDigits(<{self._len} digits>)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SensitiveDigits):
            return NotImplemented
        return hmac.compare_digest(
            memoryview(self._buf)[: self._len], memoryview(other._buf)[: other._len]
        )

    __hash__ = None  # type: ignore[assignment]

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("SensitiveDigits cannot be pickled")

    def __copy__(self) -> NoReturn:
        raise TypeError("SensitiveDigits cannot be copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError("SensitiveDigits cannot be copied")

    def __del__(self) -> None:
        if getattr(self, "_buf", None) is not None:
            self.wipe()


def wipe_bytearray(data: bytearray) -> None:
    """Zero a request or response buffer that carried card digits."""
    memoryview(data)[:] = bytes(len(data))
