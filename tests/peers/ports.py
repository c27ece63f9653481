"""Free loopback ports for real peers: single ports and blocks for RTP ranges."""

from __future__ import annotations

import random
import socket


def _bindable(port: int, kinds: tuple[int, ...]) -> bool:
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port(kinds: tuple[int, ...] = (socket.SOCK_DGRAM, socket.SOCK_STREAM)) -> int:
    """A port free for UDP and TCP on 127.0.0.1 right now (the usual race applies)."""
    for _ in range(200):
        port = random.randrange(20000, 60000)
        if _bindable(port, kinds):
            return port
    raise RuntimeError("no free port")


def free_block(count: int, *, even: bool = True) -> int:
    """First port of `count` consecutive ports free for UDP (and TCP on the first)."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - count) & ~1 if even else random.randrange(20000, 60000 - count)
        if all(_bindable(p, (socket.SOCK_DGRAM,)) for p in range(base, base + count)):
            return base
    raise RuntimeError("no free port block")
