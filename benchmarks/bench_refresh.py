"""How long ``aftersales refresh-features`` takes on a world of a given size (default: the default world's size).

Builds a world in a temporary folder (``--data DIR`` to use one), registers a cold-start serial-returner model and a
small merchant-risk model (the refresh only scores with them: their quality does not matter here), then times
``training.refresh.refresh_features`` twice (the second run also swaps one generation for another) and prints the
time of each part.

Usage: ``python benchmarks/bench_refresh.py [--accounts 20000 --merchants 400 --days 730] [--data DIR]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--accounts", type=int, default=20_000)
    ap.add_argument("--merchants", type=int, default=400)
    ap.add_argument("--days", type=int, default=730)
    ap.add_argument("--data", type=Path, default=None, help="An existing data folder (else one is generated).")
    args = ap.parse_args()

    import pandas as pd

    from features.accounts import SerialReturnerModel, dataset_features
    from features.contract import load_dataset
    from features.merchants import MerchantRiskModel, build_snapshots, prepare_events
    from features.settings import Settings
    from features.synthetic import generate_world
    from training import registry
    from training.refresh import refresh_features

    with tempfile.TemporaryDirectory(prefix="bench_refresh_") as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            data = tmp / "world"
            t0 = time.perf_counter()
            generate_world(data, seed=42, accounts=args.accounts, merchants=args.merchants, start="2023-01-01",
                           days=args.days, progress=False)
            print(f"world: {args.accounts:,} accounts, {args.merchants} merchants, {args.days} days "
                  f"({time.perf_counter() - t0:.0f}s to generate)")
        settings = Settings(models_dir=tmp / "models", data_dir=data)
        ds = load_dataset(data)
        last = ds.time_span()[1]
        X = dataset_features(ds, last, settings.market, settings)
        registry.log_and_register("serial_returners", SerialReturnerModel().fit(X), X.head(5), "pr_auc", 0.5, True,
                                  settings=settings)
        events = prepare_events(ds)
        end = pd.Timestamp(last).normalize() - pd.Timedelta(days=61)
        dates = pd.date_range(end=end.tz_localize("UTC") if end.tzinfo is None else end, periods=6, freq="28D")
        frames = build_snapshots(events, dates)
        merchant = MerchantRiskModel(kind="poisson", n_estimators=50).fit(frames)
        registry.log_and_register("merchant_risk", merchant, frames.head(3), "ndcg_at_50", 0.5, True,
                                  settings=settings)
        for run in ("first", "second"):
            lines: list[str] = []
            t0 = time.perf_counter()
            summary = refresh_features(data, settings, echo=lines.append)
            total = time.perf_counter() - t0
            print(f"refresh ({run}): {total:.1f}s, generation {summary['generation']}")
            for line in lines:
                if "(" in line and "s)" in line:
                    print("  " + line.strip())


if __name__ == "__main__":
    main()
