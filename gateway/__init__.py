"""Tonewall gateway: SIP B2BUA, RTP relay, secure capture, agent API."""

__version__ = "0.1.0"
