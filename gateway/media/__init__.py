"""Sans-IO media: RTP/RTCP packets, SRTP, the per-call relay."""
