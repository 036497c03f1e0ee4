"""Time `aftersales train return-volume` (a 10-origin backtest against the baselines, the refit on all data and the
MLflow registration) on the default synthetic world (target: under 2 minutes on this 2-core machine).

Usage: ``python benchmarks/bench_return_volume.py [--data DIR] [--origins 10] [--horizon 60] [--jobs N]``. Without
``--data`` the default world (``aftersales generate`` defaults) is generated into a temporary folder first (not timed).
Prints wall seconds, CPU seconds of this process and of the backtest's worker processes (``--jobs``: processes for
the backtest's origins, default two where the machine has them), and the load average, since the machine is shared:
under load, CPU seconds / cores is the figure an idle machine's wall time approaches.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from features.settings import Settings
from features.synthetic import generate_world


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _children_cpu() -> float | None:
    """CPU seconds of this process's live child processes (joblib's workers stay alive a while); None without
    psutil."""
    try:
        import psutil
    except ImportError:
        return None
    total = 0.0
    for c in psutil.Process().children(recursive=True):
        try:
            t = c.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def main() -> None:
    """Run the return-volume training on a temporary MLflow store and print the timings and the headline figures."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=None, help="data folder (default: generate the default world)")
    ap.add_argument("--origins", type=int, default=10)
    ap.add_argument("--horizon", type=int, default=60)
    ap.add_argument("--jobs", type=int, default=None, help="processes for the backtest's origins (default: train's)")
    args = ap.parse_args()
    from training.return_volume import train

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "world"
            generate_world(data, progress=False)
        settings = Settings(models_dir=Path(tmp) / "models", return_volume_backtest_origins=args.origins,
                            return_volume_horizon=args.horizon)
        print(f"load average before: {_load()} ({os.cpu_count()} cores)")
        w0, c0 = time.perf_counter(), time.process_time()
        summary = train(data, settings, n_jobs=args.jobs)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        workers = _children_cpu()
    print(f"load average after: {_load()}")
    for k, v in summary.items():
        print(f"  {k}: {v}")
    print(f"train + {args.origins}-origin backtest: {wall:.1f} s wall, {cpu:.1f} s CPU (this process)"
          + (f" + {workers:.1f} s CPU (backtest worker processes)" if workers is not None else ""))
    print(f"  target: under 120 s -> {'OK' if wall < 120 else 'TOO SLOW (see the load average: shared machine)'}")


if __name__ == "__main__":
    main()
