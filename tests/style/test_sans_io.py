"""The protocol cores stay sans-IO: no sockets, no event loop, no clock, no HTTP, no metrics client.

STYLE.md: cores take bytes, events and `now` and return events and bytes; only the
edges (gateway/transport, the API server, the tokenization client, the metrics
exporter) own I/O. This walks every core module's imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "asyncio", "socket", "ssl", "time", "selectors", "threading", "uvloop",
    "aiohttp", "prometheus_client", "http", "urllib", "requests", "sqlite3",
    "gateway.transport", "gateway.api", "gateway.app", "gateway.metrics",
}
CORE_GLOBS = [
    "dtmf/*.py",
    "gateway/sip/*.py",
    "gateway/media/*.py",
    "gateway/b2bua.py",
    "gateway/capture/machine.py",
    "gateway/capture/card.py",
    "gateway/capture/sensitive.py",
    "gateway/demo/useragent.py",
    "gateway/demo/voice.py",
]
EDGE_EXCEPTIONS = {"dtmf/__main__.py"}  # the command line reads files


def _core_modules() -> list[Path]:
    found = []
    for pattern in CORE_GLOBS:
        found.extend(p for p in ROOT.glob(pattern) if str(p.relative_to(ROOT)) not in EDGE_EXCEPTIONS)
    return sorted(set(found))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


@pytest.mark.parametrize("path", _core_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_does_no_io(path: Path):
    bad = sorted(n for n in _imports(path) if _forbidden(n))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}: keep the core sans-IO"


def test_there_are_core_modules():
    assert len(_core_modules()) >= 3
