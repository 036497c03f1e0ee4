"""Benchmark: point-in-time account features and abuse scores for a million accounts (target: under 60 s here).

By default it builds a synthetic contract frame of ``--accounts`` accounts over a year in a few seconds with numpy and
Arrow (generating a full world of that size takes minutes); ``--data DIR`` reads an existing data folder's Parquet
files instead (e.g. one made with ``aftersales generate --accounts 1000000 --days 365``). Reading is not timed.

    .venv/bin/python benchmarks/bench_serial_returners.py [--accounts 1000000] [--data DIR]

Prints the seconds for features, fitting, scoring every account and the serving snapshot (reasons for the top 10%),
and the load average: the machine is shared, so the same run is slower when other jobs are busy.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.accounts import SerialReturnerModel, account_features, score_snapshot

CATEGORIES = np.array(["apparel", "shoes", "electronics", "home", "beauty", "toys", "books", "grocery"])
REASONS = np.array(["defective", "not_as_described", "wrong_item", "size_fit", "changed_mind", "damaged_in_transit",
                    "not_received", "other"])
DAY_US = 86_400_000_000


def _ids(prefix: str, idx: np.ndarray, width: int, null: np.ndarray | None = None) -> pd.arrays.ArrowStringArray:
    s = pc.binary_join_element_wise(prefix, pc.utf8_lpad(pc.cast(pa.array(idx), pa.string()), width, "0"), "")
    if null is not None:
        s = pc.if_else(pa.array(null), pa.scalar(None, pa.string()), s)
    return pd.arrays.ArrowStringArray(pa.chunked_array([s.cast(pa.large_string())])).astype("string")


def _times(us: np.ndarray, null: np.ndarray | None = None) -> pd.Series:
    t = pd.Series(pd.to_datetime(us, unit="us", utc=True)).dt.as_unit("us")
    return t.where(~null) if null is not None else t


def synthetic_frames(n_accounts: int, seed: int = 0, start: str = "2024-01-01", days: int = 365):
    """Orders, returns and account links shaped like the contract: ~10 lines per account, ~14% returned, 8% guests,
    3% abusive accounts returning most of what they buy, households and rings sharing identifiers."""
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp(start, tz="UTC").value // 1000
    lines_per = rng.poisson(10, n_accounts)
    acc = np.repeat(np.arange(n_accounts), lines_per)
    n = len(acc)
    guest = rng.random(n) < 0.08
    ordered = t0 + rng.integers(0, days * DAY_US, n)
    delivered = ordered + rng.integers(2 * DAY_US, 6 * DAY_US, n)
    cat = rng.choice(len(CATEGORIES), n, p=[0.24, 0.08, 0.14, 0.15, 0.12, 0.08, 0.07, 0.12])
    amount = np.round(np.exp(3.5 + 0.7 * rng.standard_normal(n)), 2)
    abuser = rng.random(n_accounts) < 0.03
    p_ret = np.where(abuser[acc] & ~guest, 0.6, 0.12)
    ret = np.flatnonzero(rng.random(n) < p_ret)
    requested = delivered[ret] + (np.exp(2.0 + 0.5 * rng.standard_normal(len(ret))) * DAY_US).astype(np.int64)
    keep = requested < t0 + days * DAY_US
    ret, requested = ret[keep], requested[keep]
    order_ids = _ids("O", np.arange(n), 9)
    orders = pd.DataFrame({
        "order_id": order_ids, "line_no": np.ones(n, np.int64), "account_id": _ids("A", acc, 7, guest),
        "merchant_id": _ids("M", rng.integers(0, 5000, n), 5), "ordered_at": _times(ordered),
        "category": pd.array(CATEGORIES[cat], dtype="string"), "quantity": np.ones(n, np.int64), "amount": amount,
        "delivered_at": _times(delivered)})
    k = len(ret)
    reason = rng.choice(len(REASONS), k, p=[0.09, 0.06, 0.02, 0.3, 0.4, 0.04, 0.07, 0.02])
    returns = pd.DataFrame({
        "return_id": _ids("R", np.arange(k), 9), "order_id": order_ids[ret], "account_id": orders["account_id"].array[ret],
        "merchant_id": orders["merchant_id"].array[ret], "requested_at": _times(requested),
        "reason": pd.array(REASONS[reason], dtype="string"), "quantity": np.ones(k, np.int64),
        "refund_amount": amount[ret], "item_returned": pd.array(~np.isin(reason, [5, 6]), dtype="boolean")})
    # Five identifiers per account; 12% of accounts share an address with a neighbour, 1% sit in rings of six.
    vals = rng.integers(0, 2**62, (n_accounts, 5))
    hh = rng.permutation(n_accounts)[: int(0.12 * n_accounts)]
    vals[hh[1::2], 0] = vals[hh[0::2][: len(hh[1::2])], 0]
    ring = rng.permutation(n_accounts)[: (int(0.01 * n_accounts) // 6) * 6].reshape(-1, 6)
    vals[ring, 1] = vals[ring[:, :1], 1]
    vals[ring, 2] = vals[ring[:, :1], 2]
    links = pd.DataFrame({
        "account_id": _ids("A", np.repeat(np.arange(n_accounts), 5), 7),
        "link_type": pd.array(np.tile(["address", "device", "payment", "phone", "email"], n_accounts), dtype="string"),
        "link_value": pd.arrays.ArrowStringArray(pa.chunked_array(
            [pc.cast(pa.array(vals.ravel()), pa.string()).cast(pa.large_string())])).astype("string")})
    as_of = pd.Timestamp(t0 * 1000 + (days - 1) * DAY_US * 1000, tz="UTC").normalize()
    return orders, returns, links, as_of, abuser


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, default=None, help="read this data folder's Parquet files instead")
    parser.add_argument("--market", default="CN")
    args = parser.parse_args()

    t = time.perf_counter()
    if args.data:
        orders = pd.read_parquet(args.data / "orders.parquet")
        returns = pd.read_parquet(args.data / "returns.parquet")
        links_path = args.data / "account_links.parquet"
        links = pd.read_parquet(links_path) if links_path.exists() else None
        as_of = pd.concat([orders["ordered_at"], returns["requested_at"]]).max().normalize()
        abuser = None
        source = str(args.data)
    else:
        orders, returns, links, as_of, abuser = synthetic_frames(args.accounts)
        source = f"synthetic frame, {args.accounts:,} accounts"
    print(f"data: {source}: {len(orders):,} order lines, {len(returns):,} returns, "
          f"{0 if links is None else len(links):,} link rows (built/read in {time.perf_counter() - t:.1f}s)")

    timings, cpu = {}, {}
    t, c = time.perf_counter(), time.process_time()
    X = account_features(orders, returns, links, as_of, market=args.market)
    timings["features"], cpu["features"] = time.perf_counter() - t, time.process_time() - c

    # Labels: 250 review decisions, as the risk team would have (a quarter confirmed), to fit the supervised model.
    rng = np.random.default_rng(1)
    idx = rng.choice(len(X), 250, replace=False)
    if abuser is not None:
        acc_no = X.index.str.slice(1).astype(int).to_numpy()
        y = abuser[acc_no[idx]].astype(float)
        top = np.argsort(-X["return_rate_365d"].to_numpy())[:60]  # reviews favour heavy returners
        idx, y = np.r_[idx, top], np.r_[y, abuser[acc_no[top]].astype(float)]
    else:
        y = (X["returns_365d"].to_numpy()[idx] > np.quantile(X["returns_365d"], 0.95)).astype(float)
    t, c = time.perf_counter(), time.process_time()
    model = SerialReturnerModel().fit(pd.concat([X, X.iloc[idx]]), np.r_[np.full(len(X), np.nan), y], links=links)
    timings["fit"], cpu["fit"] = time.perf_counter() - t, time.process_time() - c

    t, c = time.perf_counter(), time.process_time()
    scores = model.predict(X)
    timings["score"], cpu["score"] = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    snap = score_snapshot(X, model, scores=scores)
    timings["snapshot_with_reasons"] = time.perf_counter() - t
    cpu["snapshot_with_reasons"] = time.process_time() - c

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"accounts scored: {len(X):,} (model mode: {model.mode_}); reasons written for "
          f"{int(snap['top_reason'].str.len().gt(0).sum()):,}")
    print(f"  {'step':<24}{'wall':>7}  {'cpu':>7}")
    for k, v in timings.items():
        print(f"  {k:<24}{v:7.1f}s {cpu[k]:7.1f}s")
    total = timings["features"] + timings["score"]
    print(f"features + scores for {len(X):,} accounts: {total:.1f} s wall, "
          f"{cpu['features'] + cpu['score']:.1f} s CPU (target < 60 s) {'PASS' if total < 60 else 'FAIL'}; "
          f"with fit and snapshot: {sum(timings.values()):.1f} s wall")
    print(f"load average (1/5/15 min): {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
