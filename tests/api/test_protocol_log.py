"""Malformed HTTP is logged as one short line without the request's bytes (found by tests/robustness)."""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from gateway.protocol_log import ProtocolLog


def test_bad_request_logs_type_only_and_once(caplog):
    plog = ProtocolLog("API")
    caplog.set_level(logging.DEBUG)
    secret = "Authorization: Bearer eyJhbGciOiJFUzI1NiJ9.sekret-token"
    for _ in range(5):
        plog.exception("Error handling request from %s", "127.0.0.1", exc_info=BadHttpMessage(secret))
    plog.exception("Error handling request from %s", "127.0.0.1", exc_info=LineTooLong(secret.encode(), 8190))
    assert "sekret" not in caplog.text and "Traceback" not in caplog.text
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]
    assert plog.errors == {"BadHttpMessage": 5, "LineTooLong": 1}


def test_flood_is_rate_limited(caplog):
    plog = ProtocolLog("API")
    caplog.set_level(logging.DEBUG)
    for _ in range(2500):
        plog.exception("Error handling request from %s", "127.0.0.1", exc_info=BadHttpMessage("x"))
    assert len(caplog.records) == 3  # the 1st, 1000th and 2000th
