"""Tokenization latency through the embedded vault on loopback (HTTPS, mTLS, SQLite): p50/p99.

    python3 loadtests/tokenize_bench.py [--count 300] [--concurrency 1]

Starts a vault in a temporary data dir, tokenizes `count` distinct cards (each with its own
idempotency key, so each is a real insert), and prints the figures. Bounded by count and a
60 s wall-clock limit.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import pki  # noqa: E402
from gateway.capture.card import Brand, SensitiveCard  # noqa: E402
from gateway.capture.sensitive import SensitiveDigits  # noqa: E402
from gateway.tokenize import RetryPolicy, VaultTokenizer  # noqa: E402
from gateway.vault import VaultSettings, start_vault  # noqa: E402

LIMIT_S = 60.0


def _digits(text: str) -> SensitiveDigits:
    buf = SensitiveDigits()
    for ch in text:
        buf.append(ch)
    return buf


def _card() -> SensitiveCard:
    return SensitiveCard(_digits("4111111111111111"), Brand.VISA, _digits("1230"), _digits("123"))


async def bench(count: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        vault = await start_vault(VaultSettings(data_dir=data, port=0))
        ctx = pki.client_ssl_context(pki.ensure_ca(data).cert_path,
                                     cert=pki.issue_client_cert(data, "gateway", "gateway"))
        tok = VaultTokenizer(f"https://127.0.0.1:{vault.port}", ctx, policy=RetryPolicy(attempts=1))
        latencies: list[float] = []
        deadline = time.monotonic() + LIMIT_S
        await tok.tokenize(_card(), "warm-up")  # TLS handshake and connection pool
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                if time.monotonic() > deadline:
                    return
                card = _card()
                t0 = time.perf_counter()
                await tok.tokenize(card, f"bench-{i}")
                latencies.append(time.perf_counter() - t0)
                card.wipe()

        t_start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        elapsed = time.perf_counter() - t_start
        await tok.close()
        await vault.close()
    latencies.sort()
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    print(f"tokenizations: {len(latencies)}  concurrency: {concurrency}  elapsed: {elapsed:.2f} s  "
          f"rate: {len(latencies) / elapsed:.0f}/s")
    print(f"latency ms: p50 {q[49] * 1e3:.2f}  p90 {q[89] * 1e3:.2f}  p99 {q[98] * 1e3:.2f}  "
          f"max {latencies[-1] * 1e3:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(bench(min(args.count, 20000), max(1, args.concurrency)))


if __name__ == "__main__":
    main()
