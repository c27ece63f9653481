"""`tonewall` command line: run | demo | vault | token | audit | check."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from gateway.config import FLAG_KEYS, Config, ConfigError, load_config

SUBCOMMANDS = ("run", "demo", "vault", "token", "audit", "check")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tonewall", description="Secure payment-capture voice gateway.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the gateway (foreground; SIGTERM stops it)")
    run.add_argument("--config", metavar="FILE", help="TOML config; embedded defaults without it")
    helps = {
        "--sip-listen": ("HOST:PORT", "SIP on UDP and TCP (default 127.0.0.1:5060)"),
        "--next-hop": ("SIP-URI", "where calls go; ;transport=tcp|tls or sips: picks the transport"),
        "--api-listen": ("HOST:PORT", "agent API over HTTPS (default 127.0.0.1:8443)"),
        "--metrics-listen": ("HOST:PORT", "Prometheus metrics over HTTP (default 127.0.0.1:9464)"),
        "--rtp-ports": ("LOW-HIGH", "RTP/RTCP port range (default 20000-29999)"),
        "--data-dir": ("DIR", "keys, vault, audit (default ./tonewall-data)"),
    }
    for flag in FLAG_KEYS:
        metavar, text = helps[flag]
        run.add_argument(flag, metavar=metavar, help=text)
    run.add_argument("--check-config", action="store_true", help="validate the config and exit")
    sub.add_parser("demo", help="end-to-end secure capture on loopback: demo [--keep] [--seed N]",
                   add_help=False)
    sub.add_parser("vault", help="embedded tokenization vault: serve | rotate-key | client-cert", add_help=False)
    sub.add_parser("token", help="token issue --role ROLE [--agent ID] [--ttl S] [--data-dir DIR]", add_help=False)
    audit = sub.add_parser("audit", help="audit verify [--data-dir DIR] [--list]")
    audit.add_argument("action", choices=("verify",))
    audit.add_argument("--data-dir", default="./tonewall-data")
    audit.add_argument("--list", action="store_true", help="also print one line per record")
    sub.add_parser("check", help="compliance report: check [--config FILE] [--data-dir DIR] [--json]",
                   add_help=False)
    return parser


def _run(args: argparse.Namespace) -> int:
    overrides = {FLAG_KEYS[flag]: getattr(args, flag[2:].replace("-", "_"))
                 for flag in FLAG_KEYS if getattr(args, flag[2:].replace("-", "_")) is not None}
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"tonewall: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        problem = _files_problem(config)
        if problem is not None:
            print(f"tonewall: {problem}", file=sys.stderr)
            return 2
        print(f"tonewall: config OK ({config.source})")
        return 0
    from gateway.app import run
    from gateway.extensions import default_extensions

    return run(config, default_extensions(config))


def _files_problem(config: Config) -> str | None:
    """What `run` would refuse at start in the files the config names (certificates, keys, CAs,
    the KEK file), so that --check-config says so too; None when they load."""
    from gateway import pki
    from gateway.vault.keyring import Keyring, KeyringError

    pairs = [(config.sip.tls_cert_file, config.sip.tls_key_file), (config.api.tls_cert_file, config.api.tls_key_file),
             (config.processor.client_cert_file, config.processor.client_key_file)]
    try:
        for cert, key in pairs:
            if cert and key:
                pki.server_ssl_context(pki.CertFiles(Path(cert), Path(key)))
        for ca in (config.sip.tls_ca_file, config.processor.ca_file):
            if ca:
                pki.client_ssl_context(ca)
        if config.vault.kek_file:
            Keyring.load(config.vault.kek_file, env={}, create=False)
    except OSError as exc:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
    except KeyringError as exc:
        return f"{config.vault.kek_file}: {exc}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # vault and token own their argument parsers; hand them the rest of the line.
    if argv[:1] == ["vault"]:
        from gateway.vault.server import main as vault_main

        return vault_main(argv[1:])
    if argv[:2] == ["token", "issue"]:
        from gateway.api.auth import issue_token_main

        return issue_token_main(argv[2:])
    if argv[:1] == ["demo"]:
        from gateway.demo import main as demo_main

        return demo_main(argv[1:])
    if argv[:1] == ["check"]:
        from gateway.check import main as check_main

        return check_main(argv[1:])
    if argv[:1] == ["token"]:
        print("usage: tonewall token issue --role ROLE [--agent ID] [--ttl SECONDS] [--data-dir DIR]",
              file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "audit":
        from pathlib import Path

        from gateway.audit import verify_data_dir

        # Verifying must not create anything: the verifier's key loader makes a key when there is none,
        # which would turn a mistyped --data-dir into a fresh, "ok" audit folder.
        folder = Path(args.data_dir) / "audit"
        if not Path(args.data_dir).is_dir():
            print(f"audit: FAILED (no data dir at {args.data_dir})")
            return 1
        if not (folder / "audit.key").is_file():
            if (folder / "audit.jsonl").exists():
                print(f"audit: FAILED (the log's key {folder / 'audit.key'} is missing)")
                return 1
            print("audit: ok (0 records, no audit log yet)")
            return 0
        result = verify_data_dir(args.data_dir)
        for problem in result.problems:
            print(problem)
        _print_audit_records(args.data_dir, args.list)
        print(f"audit: {'ok' if result.ok else 'FAILED'} ({result.records} records)")
        return 0 if result.ok else 1
    print(f"tonewall: '{args.command}' is not built yet", file=sys.stderr)
    return 2


AUDIT_LIST_FIELDS = ("actor", "call_id", "capture_id", "outcome", "reason", "brand", "last4", "token")


def _print_audit_records(data_dir: str, each: bool) -> None:
    """What the log holds: counts by event, and with --list one line per record (audited fields only)."""
    import json
    from collections import Counter
    from pathlib import Path

    path = Path(data_dir) / "audit" / "audit.jsonl"
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # already reported by the verifier
        if not isinstance(record, dict):
            continue
        counts[str(record.get("event"))] += 1
        if each:
            fields = " ".join(f"{k}={record[k]}" for k in AUDIT_LIST_FIELDS if record.get(k) is not None)
            print(f"{record.get('seq')} {record.get('time')} {record.get('event')} {fields}".rstrip())
    if counts:
        print("events: " + ", ".join(f"{name}={n}" for name, n in sorted(counts.items())))


if __name__ == "__main__":
    sys.exit(main())
