"""The SIPp driver against itself (uac -> uas, no gateway): each scenario pair completes, RTP arrives."""

from __future__ import annotations

import pytest

from tests.peers.ports import free_block, free_port
from tests.peers.rtp_sink import RtpSink
from tests.peers.sipp import Sipp, noise_ulaw, render

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.mark.parametrize("uac, uas, transport", [
    ("uac_bye", "uas", "u1"),
    ("uac_bye", "uas", "t1"),
    ("uac_wait_bye", "uas_bye", "u1"),
    ("uac_cancel", "uas_cancel", "u1"),
    ("uac_reinvite", "uas", "u1"),
])
def test_scenario_pairs_complete(tmp_path, uac, uas, transport):
    uas_port, uac_port = free_port(), free_port()
    with Sipp(render(uas, hold_ms=200), local_port=uas_port, transport=transport, workdir=tmp_path,
              media_port=free_block(100)) as server:
        with Sipp(render(uac, hold_ms=200), local_port=uac_port, transport=transport, workdir=tmp_path,
                  remote=f"127.0.0.1:{uas_port}", media_port=free_block(100), timeout_s=15) as client:
            result = client.wait()
        server_result = server.wait(10)
    assert result.ok, (result.stderr, result.errors)
    assert server_result.ok, (server_result.stderr, server_result.errors)


def test_rtp_stream_reaches_the_answered_port_bit_exact(tmp_path):
    sent = noise_ulaw(tmp_path / "caller.ulaw", 1.0, seed=1, rms=3000)
    uas_port, uac_port = free_port(), free_port()
    with RtpSink() as sink:
        with Sipp(render("uas", sdp_port=str(sink.port)), local_port=uas_port, workdir=tmp_path) as server:
            with Sipp(render("uac_bye", rtp_file=str(tmp_path / "caller.ulaw"), rtp_ms=1300, hold_ms=100),
                      local_port=uac_port, remote=f"127.0.0.1:{uas_port}", workdir=tmp_path,
                      media_port=free_block(100), timeout_s=15) as client:
                result = client.wait()
            server.wait(10)
    assert result.ok, result.errors
    received = sink.audio(0)
    assert len(received) >= len(sent) - 160
    assert received == sent[: len(received)]
