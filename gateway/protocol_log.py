"""aiohttp servers' protocol logger: what the API, the vault and the metrics port log of malformed HTTP."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

log = logging.getLogger("tonewall.http")


class ProtocolLog:
    """aiohttp's server logger: one line per malformed-HTTP error type, never the request bytes.

    aiohttp logs each bad request at ERROR with a traceback quoting the offending line,
    which can be an Authorization header (a credential in the log) or a card number sent
    to the vault in a bad request line, and lets any client flood the log. Here the error
    type is counted and logged once, then every 1000th.
    """

    def __init__(self, server: str) -> None:
        self.server = server
        self.errors: Counter[str] = Counter()
        """Malformed requests by exception type (what aiohttp refused before a handler ran)."""

    def exception(self, msg: str, *args: Any, exc_info: Any = None, **kw: Any) -> None:
        name = type(exc_info).__name__ if isinstance(exc_info, BaseException) else "error"
        self.errors[name] += 1
        n = self.errors[name]
        if n == 1 or n % 1000 == 0:
            log.warning("%s refused a malformed HTTP request: %s (%d so far)", self.server, name, n)

    error = warning = exception

    def debug(self, *args: Any, **kw: Any) -> None:
        return None

    info = debug
