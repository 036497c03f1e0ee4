"""The cross-world benchmark's frame (training/benchmark.py): the sections and their metrics, one world's result, and
the data a user has at a time (a world's tables cut at an as-of day)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from features.settings import Settings

HORIZON = 60


LABEL_DAYS = 60  # merchant label window and the later period tickets are scored on


REVIEWED = 200  # simulated decisions fed back in the serial-returner section


Echo = Callable[[str], None]


@dataclass(frozen=True)
class Section:
    """One model's table: its metric, whether higher is better, and the baseline columns in order.

    ``pooled``: (column, weight column) pairs for the table's ``pooled`` row, the columns' mean over the worlds
    weighted by the weight column (a precision in a queue of K weighted by K: all worlds' hits over all worlds' K).
    Where K is a handful of accounts one account moves a world's precision by 0.1 or more; the pooled figure is the
    less noisy one, beside the per-world columns.
    """

    key: str
    title: str
    metric: str
    higher_is_better: bool
    baselines: tuple[str, ...]
    pooled: tuple[tuple[str, str], ...] = ()


SECTIONS: dict[str, Section] = {s.key: s for s in (
    Section("holiday_volume", "Holiday return volume (forecast)", "holiday-window WAPE of total (lower is better)",
            False, ("planners_last_year", "autoets", "mstl", "seasonal_naive_7")),
    Section("serial_returners", "Serial returners, cold start (flag-accounts queue)",
            "precision in a queue of K = abusive accounts (higher is better)", True,
            ("rule_return_rate", "most_returns", "isolation_forest"),
            pooled=(*((c, "k") for c in ("model", "rule_return_rate", "most_returns", "isolation_forest")),
                    *((f"{c}_{REVIEWED}", "k_after_review") for c in ("model", "cold_start", "rule_return_rate")),
                    *((f"{c}_{REVIEWED}_top_score_part", f"{c}_{REVIEWED}_top_score_n") for c in ("model", "cold_start")))),
    Section("merchant_risk", "Merchant risk (rank-merchants)", "NDCG@50 of the next 60 days' complaint rates", True,
            ("complaint_rate_60d", "complaint_count_60d")),
    Section("ticket_triage", "Ticket triage (service scorer)", "ROC-AUC of escalation on later tickets", True,
            ("case_type_rate",)),
)}


@dataclass
class WorldResult:
    seed: int
    label: str
    rows: dict[str, dict] = field(default_factory=dict)  # section -> row
    seconds: dict[str, float] = field(default_factory=dict)


def world_settings(models_dir: Path, market: str) -> Settings:
    """Settings of one world's user: their own models folder (MLflow store, snapshots, review store), their market."""
    return Settings(models_dir=Path(models_dir), market=market, data_dir=Path(models_dir).parent / "data")


def utc_day_end(day) -> pd.Timestamp:
    """The first instant after the UTC day ``day`` (naive days are UTC)."""
    ts = pd.Timestamp(day)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.normalize() + pd.Timedelta(days=1)


def data_as_of(src: Path, dst: Path, as_of: pd.Timestamp) -> Path:
    """Write the contract tables as the platform knew them at the end of day ``as_of``: later orders, returns,
    tickets and decisions left out; deliveries, resolutions and escalations known only later made null."""
    from features.scenarios import DATASET_FILE

    end = utc_day_end(as_of)
    dst.mkdir(parents=True, exist_ok=True)
    o = pd.read_parquet(src / "orders.parquet")
    o = o[o["ordered_at"] < end].copy()
    o.loc[o["delivered_at"] >= end, "delivered_at"] = pd.NaT
    o.to_parquet(dst / "orders.parquet", index=False)
    r = pd.read_parquet(src / "returns.parquet")
    r[r["requested_at"] < end].to_parquet(dst / "returns.parquet", index=False)
    t = pd.read_parquet(src / "tickets.parquet")
    t = t[t["created_at"] < end].copy()
    later = t["resolved_at"].isna() | (t["resolved_at"] >= end)
    t["escalated"] = t["escalated"].astype("boolean").mask(later)
    t.loc[later, "resolved_at"] = pd.NaT
    t.to_parquet(dst / "tickets.parquet", index=False)
    shutil.copy(src / "account_links.parquet", dst / "account_links.parquet")
    if (src / "review_decisions.parquet").exists():
        d = pd.read_parquet(src / "review_decisions.parquet")
        d[d["decided_at"] < end].to_parquet(dst / "review_decisions.parquet", index=False)
    if (src / DATASET_FILE).exists():
        meta = json.loads((src / DATASET_FILE).read_text(encoding="utf-8"))
        meta["end"] = str(min(pd.Timestamp(as_of).date(), pd.Timestamp(meta.get("end", as_of)).date()))
        meta["as_of_copy_of"] = str(src)
        (dst / DATASET_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return dst


def last_day(data_dir: Path) -> pd.Timestamp:
    """The world's last day (tz-naive), from dataset.json or the orders."""
    from features.scenarios import read_dataset_meta

    meta = read_dataset_meta(data_dir)
    if meta.get("end"):
        return pd.Timestamp(meta["end"])
    o = pd.read_parquet(data_dir / "orders.parquet", columns=["ordered_at"])
    return o["ordered_at"].max().tz_convert("UTC").tz_localize(None).normalize()
