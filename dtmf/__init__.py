"""Pure-DSP DTMF engine: G.711, tone generation, detection, masking, RFC 4733.

Nothing in this package does I/O or reads a clock; the gateway feeds it samples
and sample counts.
"""
