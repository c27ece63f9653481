"""`tonewall` command line: run | demo | vault | token | audit | check."""

from __future__ import annotations

import argparse
import sys

SUBCOMMANDS = ("run", "demo", "vault", "token", "audit", "check")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tonewall", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        sub.add_parser(name, help=f"{name} (not built yet)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(f"tonewall: '{args.command}' is not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
