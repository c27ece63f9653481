"""Search files for card data: each PAN, every 7+ digit run of it, and each CVV next to "cvv".

A 7-digit run is enough to matter (PCI DSS treats the first six and last four as
the most that may be shown; any longer run narrows the card). Each run is looked
for as ASCII, as UTF-16LE, and with up to four separator characters between the
digits ("4111 1111", "4-1-1-1", a JSON list of strings), in the bytes of every file:
text logs, SQLite pages and their WAL, keys, SSE bodies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

RUN_DIGITS = 7
SEPARATOR = rb"[\s,.\-\"':]{0,4}"
LOG_TIMESTAMP = re.compile(rb"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d{1,6})?|(?<![\d:])\d{2}:\d{2}:\d{2}[.,]\d{3}(?!\d)")
"""A log line's own clock ("2026-11-30 03:12:21,204", PJSIP's "03:12:21.204"): blanked before the
search. With separators allowed between digits, the clock alone spells a 7-digit run of some
test PAN for a minute now and then ("30 03:12:2" is one: a run at 03:12 on the 30th failed)."""
SKIPPED_SUFFIXES = (".wav",)
"""Audio: the decoders examine it (the caller's own WAV holds the card by design)."""


@dataclass(frozen=True)
class Hit:
    """Where card data was found; `what` names the pattern, never the digits."""

    path: Path
    offset: int
    what: str


def _spaced(digits: str) -> bytes:
    return SEPARATOR.join(re.escape(d.encode()) for d in digits)


def card_patterns(pans: list[str], cvvs: list[str]) -> list[tuple[str, re.Pattern[bytes]]]:
    """(label, compiled pattern) for every PAN's 7-digit windows and every CVV in context."""
    patterns = []
    for i, pan in enumerate(pans):
        windows = sorted({pan[j:j + RUN_DIGITS] for j in range(len(pan) - RUN_DIGITS + 1)})
        ascii_alt = b"|".join(_spaced(w) for w in windows)
        utf16_alt = b"|".join(re.escape(w.encode("utf-16-le")) for w in windows)
        patterns.append((f"pan{i} 7-digit run", re.compile(ascii_alt)))
        patterns.append((f"pan{i} 7-digit run (utf-16)", re.compile(utf16_alt)))
    for i, cvv in enumerate(cvvs):
        c = re.escape(cvv.encode())
        after_label = rb"(?:cvv|cvc|csc|security.?code)[^0-9]{0,20}" + c + rb"(?![0-9])"
        before_label = rb"(?<![0-9])" + c + rb"[^0-9]{0,5}(?:cvv|cvc)"
        patterns.append((f"cvv{i} in context", re.compile(rb"(?i)" + after_label + b"|" + before_label)))
    return patterns


def search(roots: list[Path], pans: list[str], cvvs: list[str]) -> tuple[list[Hit], int]:
    """(hits, number of files searched) under `roots` (files or folders)."""
    patterns = card_patterns(pans, cvvs)
    hits: list[Hit] = []
    searched = 0
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if path.suffix.lower() in SKIPPED_SUFFIXES:
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue  # removed while we walked (a WAL at checkpoint)
            searched += 1
            data = LOG_TIMESTAMP.sub(lambda m: b"T" * len(m.group()), data)  # same length: offsets hold
            for label, pattern in patterns:
                found = pattern.search(data)
                if found is not None:
                    hits.append(Hit(path, found.start(), label))
    return hits, searched
