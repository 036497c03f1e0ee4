"""Time ranking 100,000 merchants from raw contract tables (target: under 30 s on 2 cores).

A model is fitted on a small generated world (not timed); then a data set of ``--merchants`` merchants with
``--orders`` order lines each over 180 days (returns, tickets with complaints and escalations) is built in memory and
the timed path runs on it: :func:`prepare_events` (coding the tables), :func:`build_features` (point-in-time features
with empirical-Bayes shrinkage) and ``MerchantRiskModel.rank`` (scores, expected complaints, reasons, sorting).

Usage: ``python benchmarks/bench_merchant_risk.py [--merchants 100000] [--orders 30] [--kind glm]`` (default: the
kind training keeps unless another beats it, ``training.merchant_risk.DEFAULT_KIND``)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from features.contract import RETURN_REASONS, Dataset, empty_table, load_dataset
from features.merchants import KINDS, MerchantRiskModel, build_features, build_snapshots, prepare_events
from features.synthetic import generate_world
from training.merchant_risk import DEFAULT_KIND

DAY_US = 86_400 * 10**6
START = pd.Timestamp("2024-01-01", tz="UTC")


def _ids(prefix: str, codes: np.ndarray) -> pd.Series:
    return pd.Series(np.char.add(prefix, codes.astype(str)), dtype="string")


def _times(us: np.ndarray) -> pd.Series:
    return pd.Series(pd.to_datetime(START.value // 1000 + us, unit="us", utc=True)).dt.as_unit("us")


def big_dataset(n_merchants: int, orders_per_merchant: int, days: int = 180, seed: int = 0) -> Dataset:
    """Contract-shaped tables for ``n_merchants`` (heavy-tailed sizes, some late or complaint-prone merchants)."""
    rng = np.random.default_rng(seed)
    size = rng.lognormal(0, 1, n_merchants)
    n = n_merchants * orders_per_merchant
    m = rng.choice(n_merchants, n, p=size / size.sum())
    t = np.sort(rng.integers(0, days * DAY_US, n))
    late_mean = rng.gamma(2.0, 0.3, n_merchants)
    promise = t + rng.integers(2, 5, n) * DAY_US
    delivered = t + ((2.2 + rng.exponential(1.0, n) * late_mean[m]) * DAY_US).astype(np.int64)
    cats = np.array(["apparel", "shoes", "electronics", "home", "beauty", "toys", "books", "grocery"])
    orders = pd.DataFrame({
        "order_id": _ids("O", np.arange(n)), "line_no": 1, "account_id": _ids("A", rng.integers(0, n // 20, n)),
        "merchant_id": _ids("M", m), "ordered_at": _times(t), "category": pd.Series(cats[m % 8], dtype="string"),
        "quantity": 1, "amount": np.round(rng.lognormal(3, 0.7, n), 2), "region": pd.Series(["east"] * n, dtype="string"),
        "promised_delivery_at": _times(promise), "delivered_at": _times(delivered),
    })
    r_idx = np.sort(rng.choice(n, n // 7, replace=False))
    returns = pd.DataFrame({
        "return_id": _ids("R", np.arange(len(r_idx))), "order_id": orders["order_id"].iloc[r_idx].to_numpy(),
        "account_id": orders["account_id"].iloc[r_idx].to_numpy(), "merchant_id": _ids("M", m[r_idx]),
        "requested_at": _times(delivered[r_idx] + 5 * DAY_US),
        "reason": pd.Series(np.array(RETURN_REASONS)[rng.integers(0, 8, len(r_idx))], dtype="string"),
        "quantity": 1, "refund_amount": 10.0, "item_returned": pd.Series(True, index=range(len(r_idx)), dtype="boolean"),
    })
    t_idx = np.sort(rng.choice(n, n // 8, replace=False))
    created = delivered[t_idx] + 2 * DAY_US
    p_complaint = np.clip(0.05 * late_mean[m[t_idx]], 0, 0.5)
    tickets = pd.DataFrame({
        "ticket_id": _ids("T", np.arange(len(t_idx))), "created_at": _times(created),
        "account_id": orders["account_id"].iloc[t_idx].to_numpy(), "merchant_id": _ids("M", m[t_idx]),
        "order_id": orders["order_id"].iloc[t_idx].to_numpy(),
        "case_type": pd.Series(np.where(rng.random(len(t_idx)) < p_complaint, "complaint", "return"), dtype="string"),
        "channel": pd.Series("chat", index=range(len(t_idx)), dtype="string"), "amount": 10.0,
        "text": pd.Series(pd.NA, index=range(len(t_idx)), dtype="string"),
        "escalated": pd.Series(rng.random(len(t_idx)) < 0.1, dtype="boolean"),
        "resolved_at": _times(created + rng.integers(1, 72, len(t_idx)) * 3_600 * 10**6),
    })
    tables = {"orders": orders, "returns": returns, "tickets": tickets,
              "account_links": empty_table("account_links"), "review_decisions": empty_table("review_decisions")}
    return Dataset(tables, pd.DataFrame(), {}, Path("benchmark"))


def main() -> None:
    """Fit on a small world, build the big data set, time events -> features -> ranking, print against the target."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--merchants", type=int, default=100_000)
    ap.add_argument("--orders", type=int, default=30, help="order lines per merchant on average over 180 days")
    ap.add_argument("--kind", default=DEFAULT_KIND, choices=list(KINDS),
                    help="lambdarank is the slower path (it scores with two boosters)")
    ap.add_argument("--threads", type=int, default=2, help="LightGBM threads for scoring")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        generate_world(Path(tmp) / "w", seed=1, accounts=4000, merchants=200, days=400, progress=False)
        small = prepare_events(load_dataset(Path(tmp) / "w"))
    dates = pd.date_range(small.start + pd.Timedelta(days=90), small.end - pd.Timedelta(days=60), freq="14D")
    model = MerchantRiskModel(kind=args.kind).fit(build_snapshots(small, dates))
    model.num_threads = args.threads

    t0 = time.perf_counter()
    ds = big_dataset(args.merchants, args.orders)
    print(f"built {args.merchants:,} merchants: {len(ds.orders):,} order lines, {len(ds.returns):,} returns, "
          f"{len(ds.tickets):,} tickets in memory ({time.perf_counter() - t0:.1f} s, not timed)")

    timings = {}
    t = time.perf_counter()
    events = prepare_events(ds)
    timings["prepare_events"] = time.perf_counter() - t
    t = time.perf_counter()
    features = build_features(events, events.end)
    timings["build_features"] = time.perf_counter() - t
    t = time.perf_counter()
    ranking = model.rank(features)
    timings["rank (scores, expected complaints, reasons)"] = time.perf_counter() - t
    total = sum(timings.values())
    for k, v in timings.items():
        print(f"  {k:<45s} {v:6.2f} s")
    print(f"ranked {len(ranking):,} merchants ({args.kind}) in {total:.1f} s; "
          f"target: 100,000 in under 30 s -> {'OK' if total * 100_000 / max(len(ranking), 1) < 30 else 'TOO SLOW'}")
    print("top 3:\n" + ranking.head(3)[["rank", "merchant_id", "score", "reasons"]].to_string(index=False))


if __name__ == "__main__":
    main()
