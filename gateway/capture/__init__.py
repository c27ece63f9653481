"""Secure capture: the card-entry machine, card rules, wipeable digit buffers and the capture service."""
