"""Sans-IO SIP (RFC 3261): messages, stream framing, transactions, dialogs, SDP."""
