"""Scaling benchmark: feature building on 1M, 5M and 20M order lines, pandas path against Dask on a LocalCluster.

For each size a synthetic world is generated (about 20 order lines per account over two years) and written as
date-partitioned Parquet under a temporary folder (deleted afterwards). Then, each in a fresh process, the data is
loaded and validated once (in the process), the engine started (for Dask: a LocalCluster whose workers have
imported the feature code; "start s"), and the four feature pipelines run as of the last day: daily volumes (return-volume
history), account features, merchant features and ticket features. Measured: seconds of loading, seconds of
feature building, and the peak resident memory of the whole process tree (the process plus its Dask workers,
sampled every 0.1 s) and of the command's process alone ("process": it holds the validated tables). A run whose
estimated peak (the line through the two largest runs so far, plus 15%) would not fit in the memory available is
skipped and said so.

Printed: one row per (size, engine) and the growth exponent of feature time (least-squares log-log slope over the
sizes measured; 1.0 = linear). Target: no worse than linear; 20M lines on Dask within 24 GiB.

Usage: ``python benchmarks/bench_scaling.py [--sizes 1e6,5e6,2e7] [--engines pandas,dask] [--workers 2]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GIB = 1024**3
LINES_PER_ACCOUNT = 20.8  # measured on the generator's default world (about 416k lines for 20,000 accounts)


def _tree_rss(proc) -> int:
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except Exception:  # noqa: BLE001 - the process tree changes while it is listed (workers start and stop)
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except Exception:  # noqa: BLE001 - a worker may exit between listing and reading
            pass
    return total


def _run_measured(cmd: list[str]) -> tuple[dict | None, float, float, str]:
    """Run ``cmd``; return (its JSON result or None, peak RSS of its process tree and of the process alone in bytes,
    its stderr tail)."""
    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss(ps))
            try:
                peak[1] = max(peak[1], ps.memory_info().rss)
            except Exception:  # noqa: BLE001 - the process has just exited
                pass
            time.sleep(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    done.set()
    t.join()
    result = None
    for line in out.splitlines()[::-1]:
        if line.startswith("{"):
            result = json.loads(line)
            break
    return result, float(peak[0]), float(peak[1]), err[-1500:] if proc.returncode else ""


def child(engine_name: str, data: str, workers: int) -> None:
    """Load and validate ``data``, build every feature pipeline as of its last day, print timings as JSON."""
    import pandas as pd

    from features.accounts import account_features
    from features.contract import load_dataset
    from features.engine import get_engine
    from features.merchants import dataset_merchant_features
    from features.return_volume import build_history
    from features.tickets import CalendarTable, build_training_features

    t0 = time.perf_counter()
    ds = load_dataset(data)
    load_s = time.perf_counter() - t0
    as_of = ds.time_span()[1]
    t = time.perf_counter()
    engine = get_engine(engine_name, n_workers=workers, threads_per_worker=1, processes=True)
    if engine.client is not None:  # workers import the feature modules once, before anything is timed
        engine.client.run(lambda: __import__("features.tickets") and __import__("features.return_volume"))
    start_s = time.perf_counter() - t
    steps: dict[str, float] = {}
    try:
        t1 = time.perf_counter()
        build_history(ds, "CN", engine=engine)
        steps["daily_volumes"] = time.perf_counter() - t1
        t = time.perf_counter()
        X = account_features(ds.orders, ds.returns, ds.account_links, as_of, "CN", engine=engine)
        steps["accounts"] = time.perf_counter() - t
        t = time.perf_counter()
        M = dataset_merchant_features(ds, as_of, engine=engine)
        steps["merchants"] = time.perf_counter() - t
        t = time.perf_counter()
        T = build_training_features(ds, CalendarTable("CN"), engine=engine)
        steps["tickets"] = time.perf_counter() - t
        features_s = time.perf_counter() - t1
    finally:
        engine.close()
    print(json.dumps({"lines": len(ds.orders), "accounts": len(X), "merchants": len(M), "tickets": len(T.X),
                      "load_s": load_s, "start_s": start_s, "features_s": features_s, "steps": steps,
                      "as_of": str(pd.Timestamp(as_of).date())}))


def _slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1e6,5e6,2e7", help="order lines per world, comma-separated (e.g. 1e6,5e6)")
    ap.add_argument("--engines", default="pandas,dask")
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    ap.add_argument("--tmp", default=None, help="where to write the worlds (default: the system temp folder)")
    ap.add_argument("--child", nargs=2, metavar=("ENGINE", "DATA"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.workers)
        return
    import psutil

    from features.partitioned import write_partitioned
    from features.synthetic import generate_world

    sizes = [int(float(s)) for s in args.sizes.split(",")]
    engines = [e.strip() for e in args.engines.split(",")]
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / GIB:.1f} GiB, "
          f"{psutil.virtual_memory().available / GIB:.1f} GiB available; load average {load[0]:.1f} {load[1]:.1f}")
    rows: list[dict] = []
    peaks: dict[str, list[tuple[int, float]]] = {e: [] for e in engines}
    root = Path(tempfile.mkdtemp(prefix="bench_scaling_", dir=args.tmp))
    try:
        for n in sizes:
            accounts = max(1000, round(n / LINES_PER_ACCOUNT))
            world = root / f"world_{n}"
            t0 = time.perf_counter()
            generate_world(world, seed=7, accounts=accounts, merchants=max(50, accounts // 50), days=730,
                           progress=False)
            write_partitioned(world, world)
            print(f"generated {n:,}-line world ({accounts:,} accounts) as partitioned Parquet in "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
            for engine in engines:
                avail = psutil.virtual_memory().available
                known = peaks[engine]
                if known:  # memory grows about linearly with lines: extrapolate the line through the two largest
                    # runs (a fixed part, imports and idle workers, plus a part per line), or proportionally from one
                    (m, p), *smaller = sorted(known, reverse=True)
                    if smaller:
                        m0, p0 = smaller[0]
                        need = (p + max(p - p0, 0) * (n - m) / (m - m0)) * 1.15
                    else:
                        need = p * n / m * 1.15
                    if need > avail:
                        rows.append({"size": n, "engine": engine, "skipped": f"needs ~{need / GIB:.1f} GiB, "
                                                                                 f"{avail / GIB:.1f} GiB available"})
                        print(f"  {engine}: skipped (needs ~{need / GIB:.1f} GiB)", flush=True)
                        continue
                cmd = [sys.executable, __file__, "--child", engine, str(world), "--workers", str(args.workers)]
                res, peak, own, err = _run_measured(cmd)
                if res is None:
                    rows.append({"size": n, "engine": engine, "skipped": f"failed: {err.strip().splitlines()[-1:]}"})
                    print(f"  {engine}: failed\n{err}", flush=True)
                    continue
                peaks[engine].append((n, peak))
                rows.append({"size": n, "engine": engine, **res, "peak_gib": peak / GIB, "own_gib": own / GIB})
                print(f"  {engine}: features {res['features_s']:.1f}s, peak {peak / GIB:.2f} GiB "
                      f"(command process {own / GIB:.2f}) "
                      f"{ {k: round(v, 1) for k, v in res['steps'].items()} }", flush=True)
            shutil.rmtree(world, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"{'order lines':>12} {'engine':>7} {'accounts':>9} {'tickets':>9} {'load s':>7} {'start s':>7} "
          f"{'features s':>10} {'peak GiB':>9} {'process':>8}  feature steps (s)")
    for r in rows:
        if "skipped" in r:
            print(f"{r['size']:>12,} {r['engine']:>7}  {r['skipped']}")
            continue
        steps = " ".join(f"{k}={v:.1f}" for k, v in r["steps"].items())
        print(f"{r['lines']:>12,} {r['engine']:>7} {r['accounts']:>9,} {r['tickets']:>9,} {r['load_s']:>7.1f} "
              f"{r['start_s']:>7.1f} {r['features_s']:>10.1f} {r['peak_gib']:>9.2f} {r['own_gib']:>8.2f}  {steps}")
    for engine in engines:
        done = [r for r in rows if r["engine"] == engine and "skipped" not in r]
        if len(done) >= 2:
            k = _slope([r["lines"] for r in done], [r["features_s"] for r in done])
            verdict = "no worse than linear" if k <= 1.05 else "WORSE than linear"
            print(f"{engine}: feature time grows as lines^{k:.2f} from {done[0]['lines']:,} to {done[-1]['lines']:,} "
                  f"lines ({verdict})")
    big = [r for r in rows if r["engine"] == "dask" and "skipped" not in r and r["size"] >= 20_000_000]
    for r in big:
        print(f"dask at {r['lines']:,} lines: peak {r['peak_gib']:.1f} GiB -> "
              f"{'within' if r['peak_gib'] < 24 else 'ABOVE'} the 24 GiB target")
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
