"""Snapshots for serving: the training functions (:mod:`features.ticket_history`) evaluated at the snapshot time,
written by training and ``refresh-features``, and read back as plain dicts for scoring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.contract import Dataset
from features.pit import to_us
from features.ticket_features import ACCOUNT_FEATURES, MERCHANT_FEATURES, ORDER_SNAPSHOT_DAYS
from features.ticket_history import WINDOW_YEAR, account_history, merchant_signals, order_context, order_table

# --------------------------------------------------------------------------------------------------------------------
# Snapshots for serving: the same point-in-time functions, evaluated at the snapshot time

SNAPSHOT_FILES = {"accounts": "ticket_triage_accounts.parquet", "merchants": "ticket_triage_merchants.parquet",
                  "orders": "ticket_triage_orders.parquet", "recent": "ticket_triage_recent.parquet"}


def data_end(ds: Dataset) -> pd.Timestamp:
    """The last instant the data folder knows about (latest order, return, ticket or resolution), plus 1 µs."""
    parts = [ds.orders["ordered_at"], ds.returns["requested_at"], ds.tickets["created_at"], ds.tickets["resolved_at"]]
    last = max(s.max() for s in parts if s.notna().any())
    return last + pd.Timedelta(microseconds=1)


def feature_snapshots(ds: Dataset, as_of: pd.Timestamp) -> dict[str, pd.DataFrame]:
    """Account, merchant and order context as of ``as_of``, computed by the training functions (no train/serve skew).

    accounts: account_id + :data:`ACCOUNT_FEATURES` (accounts active in the last 365 days; others are new: zeros);
    merchants: merchant_id + :data:`MERCHANT_FEATURES`; orders: order_id + :data:`ORDER_CONTEXT` for orders placed
    in the last :data:`ORDER_SNAPSHOT_DAYS` days, with deliveries and returns after ``as_of`` hidden; recent:
    ticket_id, account_id, created_at of the tickets of the last ``live_counts.HORIZON_DAYS`` days (the seed of the
    service's live load and contact counts) and, flagged ``year_edge``, of the first ``HORIZON_DAYS`` days of the
    year window (the tickets leaving acct_tickets_365d while the snapshot is served: its live change).
    """
    from features.live_counts import HORIZON_DAYS, YEAR_DAYS, YEAR_EDGE_COLUMN

    as_of = pd.Timestamp(as_of)
    at = to_us(as_of)
    lo = as_of - pd.Timedelta(days=WINDOW_YEAR)
    ids = pd.concat([ds.orders.loc[ds.orders["ordered_at"] >= lo, "account_id"],
                     ds.returns.loc[ds.returns["requested_at"] >= lo, "account_id"],
                     ds.tickets.loc[(ds.tickets["created_at"] >= lo) | (ds.tickets["resolved_at"] >= lo), "account_id"]]).dropna().astype("string")
    acc_ids = pd.Series(pd.unique(ids), dtype="string", name="account_id")
    acc = account_history(ds, acc_ids, np.full(len(acc_ids), at)).assign(account_id=acc_ids)
    ot = order_table(ds.orders)
    mer_ids = pd.Series(pd.unique(ot["merchant_id"].astype("string")), dtype="string", name="merchant_id")
    mer = merchant_signals(ds, mer_ids, np.full(len(mer_ids), at), ot).assign(merchant_id=mer_ids)
    recent = ot[(ot["ordered_at"] >= as_of - pd.Timedelta(days=ORDER_SNAPSHOT_DAYS)) & (ot["ordered_at"] < as_of)]
    o_ids = pd.Series(recent.index.astype("string"), dtype="string", name="order_id")
    ctx = order_context(ds, o_ids, np.full(len(o_ids), at), ot)
    ctx.loc[ctx["delivered_at"] >= as_of, "delivered_at"] = pd.NaT  # not delivered yet as of the snapshot
    ctx.insert(0, "order_id", o_ids)
    tk = ds.tickets
    horizon, year = pd.Timedelta(days=HORIZON_DAYS), pd.Timedelta(days=YEAR_DAYS)
    last = (tk["created_at"] >= as_of - horizon) & (tk["created_at"] < as_of)
    # The tickets that leave the accounts' year window (acct_tickets_365d) while this snapshot is served.
    edge = (tk["created_at"] >= as_of - year) & (tk["created_at"] < as_of - year + horizon) & ~last
    recent = tk.loc[last | edge, ["ticket_id", "account_id", "created_at"]].assign(
        **{YEAR_EDGE_COLUMN: edge[last | edge].to_numpy()}).reset_index(drop=True)
    return {"accounts": acc[["account_id", *ACCOUNT_FEATURES]], "merchants": mer[["merchant_id", *MERCHANT_FEATURES]],
            "orders": ctx.reset_index(drop=True), "recent": recent}


@dataclass
class ServingSnapshots:
    """Account, merchant and order rows for scoring, keyed by ID (plain dicts, so a lookup costs no pandas)."""

    accounts: dict[str, dict[str, Any]]
    merchants: dict[str, dict[str, Any]]
    orders: dict[str, dict[str, Any]]
    sources: dict[str, list[str]]  # which files each came from

    def frames(self) -> dict[str, pd.DataFrame]:
        """The same rows as data frames indexed by ID (for :meth:`TicketTriageModel.score_batch`)."""
        return {k: pd.DataFrame.from_dict(getattr(self, k), orient="index") for k in ("accounts", "merchants",
                                                                                       "orders")}


def _read_keyed(paths: list, key: str) -> tuple[pd.DataFrame, list[str]]:
    """Outer-join the snapshot files that exist on ``key``; a later file's columns win where names clash."""
    out, used = None, []
    for p in paths:
        if not p.exists():
            continue
        f = pd.read_parquet(p)
        if key not in f.columns:
            raise ValueError(f"{p}: snapshot lacks its key column '{key}'; rewrite it with `aftersales train`")
        f = f.drop_duplicates(key, keep="last").set_index(f[key].astype("string")).drop(columns=[key])
        out = f if out is None else out.drop(columns=[c for c in f.columns if c in out.columns]).join(f, how="outer")
        used.append(str(p))
    return (out if out is not None else pd.DataFrame()), used


def load_serving_snapshots(snapshots_dir) -> ServingSnapshots:
    """Read the snapshots serving needs for triage from ``snapshots_dir`` (settings.snapshots_dir).

    Accounts: ``accounts.parquet`` (serial returners: abuse_score, abuse_percentile, ...) joined with
    ``ticket_triage_accounts.parquet`` (the model's history columns, computed by the training function, which win on
    shared names; an account only the first file lists has no history columns, and scoring gives it zero history). Merchants: ``merchants.parquet`` (merchant risk) joined with ``ticket_triage_merchants.parquet``.
    Orders: ``ticket_triage_orders.parquet``. Missing files give empty lookups (scoring then reports defaults).
    """
    from pathlib import Path

    d = Path(snapshots_dir)
    acc, acc_src = _read_keyed([d / "accounts.parquet", d / SNAPSHOT_FILES["accounts"]], "account_id")
    mer, mer_src = _read_keyed([d / "merchants.parquet", d / SNAPSHOT_FILES["merchants"]], "merchant_id")
    orders, o_src = _read_keyed([d / SNAPSHOT_FILES["orders"]], "order_id")

    def rows(f: pd.DataFrame) -> dict[str, dict[str, Any]]:
        f = f.astype(object).where(f.notna(), None)
        return {str(k): v for k, v in zip(f.index, f.to_dict("records"), strict=True)}

    return ServingSnapshots(rows(acc), rows(mer), rows(orders),
                            {"accounts": acc_src, "merchants": mer_src, "orders": o_src})
