"""Driver for tests/peers/pjsua_hold_peer.py: a PjsuaPeer that can hold, resume and use TLS."""

from __future__ import annotations

from typing import Any

from tests.peers.pjsua import PjsuaPeer


class PjsuaHoldPeer(PjsuaPeer):
    """Same events and lifetime as PjsuaPeer; extra options --hold-at-s, --resume-at-s, --tls-*."""

    def __init__(self, role: str, *, sip_port: int, rtp_port: int, **options: Any) -> None:
        super().__init__(role, sip_port=sip_port, rtp_port=rtp_port, **options)
        self.args[self.args.index("tests.peers.pjsua_peer")] = "tests.peers.pjsua_hold_peer"
