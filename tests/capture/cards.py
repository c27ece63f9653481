"""Test card numbers built with a correct Luhn digit; kept in one place so leak tests can search for them."""

from __future__ import annotations

from gateway.capture.sensitive import SensitiveDigits


def luhn_digit(body: str) -> str:
    """Check digit that makes body+digit pass Luhn."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def make_pan(prefix: str, length: int) -> str:
    body = prefix + "0" * (length - len(prefix) - 1)
    body = body[: length - 1]
    return body + luhn_digit(body)


def digits(text: str) -> SensitiveDigits:
    buf = SensitiveDigits()
    for ch in text:
        buf.append(ch)
    return buf


def flip_last(pan: str) -> str:
    return pan[:-1] + str((int(pan[-1]) + 1) % 10)


TEST_PANS = [
    "4111111111111111",
    "5555555555554444",
    "2223003122003222",
    "378282246310005",
    "6011111111111117",
    "3566002020360505",
    "36227206271667",
]


def runs_of(text: str, min_len: int = 7) -> set[str]:
    """Every substring of `text` of at least `min_len` characters."""
    return {text[i:j] for i in range(len(text)) for j in range(i + min_len, len(text) + 1)}
