"""One `tonewall run` on embedded defaults (flat mask, vault processor) for the gateway attacks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_binary
from tests.e2e.conftest import E2eGateway
from tests.peers.pjsua import require_pjsua2


@pytest.fixture(scope="session")
def attack_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2eGateway]:
    require_pjsua2()
    require_binary("multimon-ng")
    gw = E2eGateway(tmp_path_factory.mktemp("leak-attack") / "gateway").start()
    try:
        yield gw
    finally:
        gw.stop()
