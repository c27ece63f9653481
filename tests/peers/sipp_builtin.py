"""SIPp's own built-in scenarios (`-sn uac`, `-sn uas`, `-sn uac_pcap`), as outside testers run them.

`Sipp` (tests/peers/sipp.py) runs a scenario file; here the scenario is SIPp's own,
either untouched (`-sn`) or dumped with `-sd` and edited by a named, visible
substitution when a test needs one SDP line changed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import require_binary
from tests.peers.sipp import Sipp

PCAP_DIRS = (Path("/usr/share/sip-tester"), Path("/usr/share/sipp"), Path("/usr/share/doc/sip-tester/pcap"))


def shipped_pcap_dir() -> Path:
    """Where the distribution put SIPp's `g711a.pcap` and `dtmf_2833_*.pcap`."""
    for folder in PCAP_DIRS:
        if (folder / "g711a.pcap").exists():
            return folder
    raise FileNotFoundError("SIPp's shipped pcaps (g711a.pcap) not found")


def dump(name: str) -> str:
    """The XML of a built-in scenario (`sipp -sd NAME`)."""
    binary = require_binary("sipp")
    # `sipp -sd` prints the scenario and exits 99 (it never places a call).
    done = subprocess.run([binary, "-sd", name], capture_output=True, text=True, timeout=10)
    if "<scenario" not in done.stdout:
        raise RuntimeError(f"sipp -sd {name} printed no scenario: {done.stderr[-300:]}")
    return done.stdout


class BuiltinSipp(Sipp):
    """A `Sipp` running a built-in scenario by name: `-sn NAME` replaces `-sf FILE`.

    `workdir` should hold a `pcap` link to `shipped_pcap_dir()` for `uac_pcap`,
    whose scenario names `pcap/g711a.pcap` relative to the working directory.
    """

    def __init__(self, name: str, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__("", **kwargs)
        index = self.args.index("-sf")
        self.args[index: index + 2] = ["-sn", name]
        self.scenario.unlink(missing_ok=True)


def link_shipped_pcaps(workdir: Path) -> Path:
    """Make `workdir/pcap` point at the shipped pcaps, as `uac_pcap` expects."""
    link = workdir / "pcap"
    if not link.exists():
        link.symlink_to(shipped_pcap_dir(), target_is_directory=True)
    return link
