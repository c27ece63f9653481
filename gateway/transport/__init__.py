"""The asyncio edges: SIP over UDP/TCP/TLS, RTP datagram endpoints, port allocation."""
