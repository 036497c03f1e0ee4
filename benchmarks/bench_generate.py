"""Time the synthetic world generator on about one million order lines (target: under 60 s on 2 cores).

Usage: ``python benchmarks/bench_generate.py [--accounts 50000] [--merchants 1000] [--days 730]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from features.synthetic import generate_world


def main() -> None:
    """Generate a world in a temporary folder and print its size, the seconds taken and order lines per second."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--accounts", type=int, default=50_000, help="~20 order lines per account over two years")
    ap.add_argument("--merchants", type=int, default=1_000)
    ap.add_argument("--days", type=int, default=730)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = generate_world(Path(tmp) / "world", seed=args.seed, accounts=args.accounts, merchants=args.merchants,
                           days=args.days, progress=False)
        secs = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in (Path(tmp) / "world").rglob("*") if p.is_file()) / 1e6
    lines = s["orders_rows"]
    print(f"generate_world: {lines:,} order lines, {s['returns_rows']:,} returns, {s['tickets_rows']:,} tickets, "
          f"{s['account_links_rows']:,} links ({args.accounts:,} accounts, {args.merchants:,} merchants, "
          f"{args.days} days)")
    print(f"  {secs:.1f} s total, {lines / secs:,.0f} order lines/s, {size_mb:.1f} MB of Parquet")
    print(f"  target: 1M order lines in under 60 s -> {'OK' if secs < 60 * max(lines, 1) / 1e6 else 'TOO SLOW'}")


if __name__ == "__main__":
    main()
