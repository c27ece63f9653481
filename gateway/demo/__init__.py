"""`tonewall demo`: the end-to-end story on loopback (DESIGN.md contract 3)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; 0 only if every check held, 1 if one failed (named in the output), 2 on bad usage."""
    parser = argparse.ArgumentParser(
        prog="tonewall demo",
        description="One call through a real gateway on loopback: a capture started through the API, a test "
                    "card keyed in-band, the agent's audio checked for DTMF, the token printed.")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (gateway log, data dir, agent recording)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the callers' voices and key timing")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    from gateway.demo.story import run_story

    return run_story(sys.stdout, keep=args.keep, seed=args.seed)
