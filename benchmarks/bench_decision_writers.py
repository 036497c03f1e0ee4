"""Review decisions written by 8 processes at once into one SQLite store: decisions/s and latency per decision.

Compares ``PRAGMA synchronous=FULL`` (the store's setting: the WAL is fsync'd at every commit, an acknowledged
decision survives a power cut) with ``NORMAL`` (survives a killed process, not a power cut).

Usage: ``python benchmarks/bench_decision_writers.py [--writers 8] [--per-writer 100]``
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

KNOWN = {f"A{i:03d}" for i in range(100)}


def _writer(url: str, synchronous: str, worker: int, n: int, start, out) -> None:
    from features import reviews

    reviews.SQLITE_SYNCHRONOUS = synchronous
    reviews.get_engine(url)
    start.wait(120)
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        reviews.record_decision(f"A{(worker * 13 + i) % 100:03d}", "cleared", f"r{worker}", "benchmark",
                                decision_id=f"w{worker}-{i}", known_accounts=KNOWN, url=url)
        lat.append(time.perf_counter() - t0)
    out.put(lat)


def run(synchronous: str, writers: int, per_writer: int) -> None:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["features.reviews"])
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'reviews.db'}"
        start, out = ctx.Barrier(writers + 1), ctx.Queue()
        procs = [ctx.Process(target=_writer, args=(url, synchronous, w, per_writer, start, out))
                 for w in range(writers)]
        for p in procs:
            p.start()
        start.wait(120)
        t0 = time.perf_counter()
        lat = sorted(x for _ in procs for x in out.get(timeout=600))
        secs = time.perf_counter() - t0
        for p in procs:
            p.join()
        from features.reviews import list_decisions

        stored = len(list_decisions(url=url))
    n = writers * per_writer
    print(f"  synchronous={synchronous:<6} {n} decisions by {writers} processes in {secs:.1f} s: {n / secs:,.0f}/s, "
          f"latency p50 {lat[n // 2] * 1e3:.0f} ms, p99 {lat[int(n * 0.99)] * 1e3:.0f} ms, max {lat[-1] * 1e3:.0f} ms"
          f" ({stored} stored)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--per-writer", type=int, default=100)
    args = ap.parse_args()
    print(f"review decision store (SQLite, WAL, BEGIN IMMEDIATE): {args.writers} concurrent writers")
    for synchronous in ("FULL", "NORMAL"):
        run(synchronous, args.writers, args.per_writer)


if __name__ == "__main__":
    main()
