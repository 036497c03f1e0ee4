"""Cross-world model benchmark: every model on worlds it was not shaped on, against every baseline, on later time.

``aftersales benchmark-models --worlds K --seed-base S --out DIR`` generates K worlds (``--scenario random``, seeds
S..S+K-1) and, in each, trains on earlier time and scores later time through the project's own functions and
commands (so whatever improves a model shows here):

- **holiday return volume**: the ``forecast`` command from an origin before the last Christmas (Nov 30, 60 days),
  holiday-window WAPE of ``total`` against the planners' same-period-last-year x growth, statsforecast AutoETS and
  MSTL, and the seasonal naive; plus the 80% interval's coverage inside the holiday windows.
- **serial returners, cold start** (the world's prior review decisions removed): the model fitted as of T1 ranks the
  accounts as of T2 (``training.serial_returners.default_split``); precision of the review queue of K = the number
  of abusive accounts (truth), against the return-rate rule (returns+1)/(orders+10), the most-returns rule and an
  IsolationForest on counts; recall per pattern; then 200 decisions by simulated reviewers (the top of the cold
  queue as of T1, decided from the truth) go through the review decision store and the model is refitted; its
  queue on the accounts not reviewed (``model_200``) is compared with the cold start's queue on the same accounts
  and the same K (``cold_start_200``): the reviews took the easiest abusers out of both.
- **merchant risk**: ``train merchant-risk`` on the data as known 60 days before the end, the champion ranks the
  merchants (``rank-merchants``), NDCG@50 of the next 60 days' complaint rates against the last-60-day complaint
  rate and count.
- **ticket triage**: ``train ticket-triage`` on the same earlier data, then the serving ``Runtime`` (in process)
  scores the later tickets carrying only their own fields, as a ticket system sends them; ROC-AUC against the
  case-type escalation rate.

Each model's section is isolated: an error is recorded in its table and the benchmark goes on. Outputs: one CSV
per model (rows: worlds; columns: the model and each baseline on the model's metric, then details; last rows: min,
median, max and how many worlds the model wins) and ``index.html`` with a table and a plot per model.
Discipline: tune on seeds below 1000; report figures from seeds at or above 1000, run once.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import pandas as pd

from features.settings import Settings

HORIZON = 60
LABEL_DAYS = 60  # merchant label window and the later period tickets are scored on
REVIEWED = 200  # simulated decisions fed back in the serial-returner section
REAL_HOLIDAY_ORIGIN, REAL_HOLIDAY_END = "2010-10-31", "2010-12-09"
REAL_SERIAL_AS_OF, REAL_SERIAL_TOP, REAL_SERIAL_DAYS = "2010-06-30", 50, 183

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Section:
    """One model's table: its metric, whether higher is better, and the baseline columns in order."""

    key: str
    title: str
    metric: str
    higher_is_better: bool
    baselines: tuple[str, ...]


SECTIONS: dict[str, Section] = {s.key: s for s in (
    Section("holiday_volume", "Holiday return volume (forecast)", "holiday-window WAPE of total (lower is better)",
            False, ("planners_last_year", "autoets", "mstl", "seasonal_naive_7")),
    Section("serial_returners", "Serial returners, cold start (flag-accounts queue)",
            "precision in a queue of K = abusive accounts (higher is better)", True,
            ("rule_return_rate", "most_returns", "isolation_forest")),
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


# --------------------------------------------------------------------------------------------------------------------
# Worlds and the data a user has at a time


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


# --------------------------------------------------------------------------------------------------------------------
# Holiday return volume


def holiday_origin(history_days: pd.DatetimeIndex, horizon: int = HORIZON) -> pd.Timestamp:
    """Nov 30 of the last year whose Christmas + January fit in the data (horizon days after the origin)."""
    last = history_days[-1]
    for year in range(last.year, history_days[0].year - 1, -1):
        o = pd.Timestamp(year=year, month=11, day=30)
        if o + pd.Timedelta(days=horizon) <= last and o > history_days[0] + pd.Timedelta(days=90):
            return o
    raise ValueError(f"the data ({history_days[0].date()}..{last.date()}) holds no Nov 30 origin with {horizon} "
                     "later days")


def window_days(market: str, dates: pd.DatetimeIndex, settings: Settings | None = None) -> np.ndarray:
    """Which of ``dates`` lie in a major event's after-sales window (features.calendar.holiday_windows)."""
    from features.calendar import holiday_windows

    hw = holiday_windows(market, dates[0] - pd.Timedelta(days=60), dates[-1], settings)
    inside = np.zeros(len(dates), dtype=bool)
    for _, w in hw.iterrows():
        inside |= (dates >= w["window_start"]) & (dates <= w["window_end"])
    return inside


def wape(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.abs(np.asarray(p, float) - y).sum() / max(float(np.sum(y)), 1e-9))


def mstl(y: pd.Series, origin_idx: int, horizon: int) -> pd.DataFrame:
    """statsforecast MSTL (weekly and, with two years of history, yearly seasonality) with its 80% interval."""
    from statsforecast import StatsForecast
    from statsforecast.models import MSTL

    hist = y.iloc[:origin_idx + 1]
    seasons = [7, 365] if len(hist) >= 2 * 365 + 7 else [7]
    df = pd.DataFrame({"unique_id": "total", "ds": hist.index, "y": hist.to_numpy(float)})
    sf = StatsForecast(models=[MSTL(season_length=seasons)], freq="D", n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fc = sf.forecast(df=df, h=horizon, level=[80])
    return pd.DataFrame({"p10": fc["MSTL-lo-80"].clip(lower=0).to_numpy(), "p50": fc["MSTL"].clip(lower=0).to_numpy(),
                         "p90": fc["MSTL-hi-80"].clip(lower=0).to_numpy()})


def run_forecast_command(data_dir: Path, origin: pd.Timestamp, horizon: int, market: str, out_file: Path,
                         models_dir: Path) -> pd.DataFrame:
    """``aftersales forecast`` exactly as a user runs it (in process), read back from its CSV."""
    from click.testing import CliRunner

    from features.settings import get_settings
    from training.cli import main

    env = {"AFTERSALES_MODELS_DIR": str(models_dir), "AFTERSALES_DATA_DIR": str(data_dir),
           "AFTERSALES_MARKET": market}
    get_settings.cache_clear()
    try:
        res = CliRunner().invoke(main, ["forecast", "--data", str(data_dir), "--origin", str(origin.date()),
                                        "--horizon", str(horizon), "--market", market, "--out", str(out_file)],
                                 env=env, catch_exceptions=True)
    finally:
        get_settings.cache_clear()
    if res.exit_code != 0:
        detail = "".join(traceback.format_exception(res.exception)) if res.exception else ""
        raise RuntimeError(f"aftersales forecast failed (exit {res.exit_code}): {res.output[-1500:]}{detail[-1500:]}")
    fc = pd.read_csv(out_file, parse_dates=["date"])
    return fc[fc["series"] == "total"].sort_values("date").reset_index(drop=True)


def holiday_section(data_dir: Path, market: str, work: Path, models_dir: Path, origin: pd.Timestamp | None = None,
                    horizon: int = HORIZON) -> dict:
    """Holiday-window WAPE of the model and every baseline, and 80% coverage, for one origin."""
    from features.contract import load_dataset
    from features.return_volume import build_history
    from training.return_volume import autoets, planners_method, seasonal_naive

    settings = world_settings(models_dir, market)
    history = build_history(load_dataset(data_dir), market)
    y = history.y[["total"]]
    days = history.days
    o = origin if origin is not None else holiday_origin(days, horizon)
    t = int(days.get_loc(o))
    h = min(horizon, len(days) - 1 - t)
    dates = days[t + 1:t + 1 + h]
    actual = y["total"].to_numpy(float)[t + 1:t + 1 + h]
    inside = window_days(market, dates, settings)
    if not inside.any():
        inside = np.ones(h, dtype=bool)
    work.mkdir(parents=True, exist_ok=True)
    fc = run_forecast_command(data_dir, o, h, market, work / "forecast.csv", models_dir)
    fc = fc.set_index("date").reindex(dates)
    preds: dict[str, pd.DataFrame | None] = {"model": fc[["p10", "p50", "p90"]].reset_index(drop=True)}
    sn = seasonal_naive(y, t, h)
    preds["seasonal_naive_7"] = pd.DataFrame({"p50": sn["total"].to_numpy()})
    pl = planners_method(y, t, h)
    preds["planners_last_year"] = None if pl is None else pd.DataFrame({"p50": pl["total"].to_numpy()})
    ets = autoets(y, t, h)
    preds["autoets"] = None if ets is None else ets.sort_values("h")[["p10", "p50", "p90"]].reset_index(drop=True)
    try:
        preds["mstl"] = mstl(y["total"], t, h)
    except Exception:  # noqa: BLE001 — a peer that cannot fit this history is a missing baseline, not a failure
        preds["mstl"] = None
    row: dict = {"origin": str(o.date()), "horizon": h, "window_days": int(inside.sum()),
                 "actual_in_windows": float(actual[inside].sum())}
    for name, p in preds.items():
        if p is None or p["p50"].isna().any():
            row[name] = float("nan")
            continue
        row[name] = wape(actual[inside], p["p50"].to_numpy(float)[inside])
        row[f"{name}_wape_all_days"] = wape(actual, p["p50"].to_numpy(float))
        if "p10" in p.columns:
            cov = (actual >= p["p10"].to_numpy(float)) & (actual <= p["p90"].to_numpy(float))
            row[f"coverage80_{name}"] = float(cov[inside].mean())
    if pl is None:
        row["note"] = "planners' method needs a year and four weeks before the origin"
    return row


# --------------------------------------------------------------------------------------------------------------------
# Serial returners


def account_counts_as_of(orders: pd.DataFrame, returns: pd.DataFrame, as_of: pd.Timestamp,
                         accounts: pd.Index) -> pd.DataFrame:
    """Order lines and return requests per account up to the end of ``as_of`` (the one-line rules' inputs)."""
    end = utc_day_end(as_of)
    o = orders.loc[orders["ordered_at"] < end, "account_id"].dropna().astype(str).value_counts()
    r = returns.loc[returns["requested_at"] < end, "account_id"].dropna().astype(str).value_counts()
    idx = pd.Index(accounts.astype(str))
    return pd.DataFrame({"orders": o.reindex(idx).fillna(0).to_numpy(), "returns": r.reindex(idx).fillna(0).to_numpy()},
                        index=idx)


def top_k(score: np.ndarray, ids: pd.Index, k: int) -> np.ndarray:
    """Positions of the top ``k`` scores (ties: smaller account_id first)."""
    order = np.lexsort((ids.astype(str).to_numpy(), -np.asarray(score, float)))
    return order[:k]


def serial_section(data_dir: Path, market: str, models_dir: Path, reviewed: int = REVIEWED) -> dict:
    """Cold-start queue precision at K = abusive accounts vs the one-line rules; recall per pattern; 200 decisions."""
    from features.accounts import PATTERNS, review_queue
    from features.contract import load_dataset
    from features.reviews import import_decisions
    from training.serial_returners import (
        _forest_score,
        _truth,
        counts_forest,
        default_split,
        excluded_accounts,
        features_as_of,
        fit_model,
        load_labels,
    )

    settings = world_settings(models_dir, market)
    models_dir.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(data_dir)
    ds.tables["review_decisions"] = ds.tables["review_decisions"].iloc[0:0]  # a platform with no decisions yet
    truth = _truth(data_dir)
    if truth is None:
        raise ValueError(f"{data_dir}: no truth/accounts.parquet")
    t1, t2 = default_split(ds, settings)
    X1 = features_as_of(ds, t1, settings, market)
    X2 = features_as_of(ds, t2, settings, market)
    labels = load_labels(ds, settings, t1)
    model = fit_model(X1, labels, settings, t1, source=str(data_dir))
    tr = truth.reindex(X2.index.astype(str))
    y = (tr["is_abuser"].fillna(False).astype(bool) & (tr["abuse_start"] <= t2)).to_numpy()
    pattern = tr["pattern"].fillna("normal").astype(str).to_numpy()
    k = int(y.sum())
    if k == 0:
        raise ValueError("no abusive accounts as of the evaluation day")
    ids = pd.Index(X2.index.astype(str))
    counts = account_counts_as_of(ds.orders, ds.returns, t2, ids)
    s_model = model.predict(X2)
    queue = review_queue(X2, model, k, exclude=excluded_accounts(labels, t2, settings.serial_review_cooldown_days),
                         scores=s_model, pattern_share=settings.serial_pattern_share,
                         explore_share=settings.serial_explore_share)
    picks = {"model": ids.get_indexer(queue["account_id"].astype(str))}
    row_extra = {"model_top_k": float(y[top_k(s_model, ids, k)].mean())}  # the ranking without the queue's
    # pattern slots and audit sample; and the queue's top-score part (the measure: reserved pattern slots and
    # the audit sample are there to learn and to check, not to be precise)
    top_part = queue["slot"].eq("top score").to_numpy()
    row_extra["model_top_score_part"] = float(y[picks["model"][top_part]].mean()) if top_part.any() else float("nan")
    scores = {"rule_return_rate": (counts["returns"].to_numpy() + 1) / (counts["orders"].to_numpy() + 10),
              "most_returns": counts["returns"].to_numpy(),
              "isolation_forest": _forest_score(counts_forest(X1), X2)}
    for name, s in scores.items():
        picks[name] = top_k(s, ids, k)
    row: dict = {"t1": str(t1.date()), "t2": str(t2.date()), "k": k, "accounts": len(ids), "mode": model.mode_,
                 **row_extra}
    for name, pos in picks.items():
        row[name] = float(y[pos].mean())
        for p in PATTERNS:
            n_p = int((y & (pattern == p)).sum())
            row[f"recall_{p}_{name}"] = float((y[pos] & (pattern[pos] == p)).sum() / n_p) if n_p else float("nan")
    # With decisions: simulated reviewers work through the top of the cold queue as of T1 (their decisions are the
    # truth as of T1), recorded in the review decision store; the model is refitted the way `train` fits it.
    q1 = review_queue(X1, model, reviewed, pattern_share=settings.serial_pattern_share,
                      explore_share=settings.serial_explore_share)
    t1r = truth.reindex(q1["account_id"].astype(str))
    confirmed = (t1r["is_abuser"].fillna(False).astype(bool) & (t1r["abuse_start"] <= t1)).to_numpy()
    decided_at = utc_day_end(t1) - pd.Timedelta(hours=12)
    decisions = pd.DataFrame({"account_id": q1["account_id"].astype(str).to_numpy(),
                              "decision": np.where(confirmed, "confirmed_abuse", "cleared"),
                              "decided_at": decided_at, "reviewer": "benchmark.reviewer", "note": None})
    import_decisions(decisions, known_accounts=set(X1.index.astype(str)), source="benchmark", settings=settings)
    labels2 = load_labels(ds, settings, t1)
    model2 = fit_model(X1, labels2, settings, t1, source=str(data_dir))
    seen = set(decisions["account_id"])
    rest = ~ids.isin(list(seen))
    k2 = int(y[rest].sum())
    row[f"model_{reviewed}"] = row[f"cold_start_{reviewed}"] = float("nan")
    if k2:
        X2r = X2.loc[rest]
        q2 = review_queue(X2r, model2, k2, exclude=excluded_accounts(labels2, t2, settings.serial_review_cooldown_days),
                          scores=model2.predict(X2r), pattern_share=settings.serial_pattern_share,
                          explore_share=settings.serial_explore_share)
        pos2 = ids.get_indexer(q2["account_id"].astype(str))
        row[f"model_{reviewed}"] = float(y[pos2].mean())
        # The cold start's queue on the same accounts (the reviewed ones left out) with the same K: the reviews took
        # the easiest abusers out of both, so the supervised queue is judged against this, not against the cold
        # start's figure on every account.
        qc = review_queue(X2r, model, k2, exclude=excluded_accounts(labels2, t2, settings.serial_review_cooldown_days),
                          scores=s_model[rest], pattern_share=settings.serial_pattern_share,
                          explore_share=settings.serial_explore_share)
        row[f"cold_start_{reviewed}"] = float(y[ids.get_indexer(qc["account_id"].astype(str))].mean())
        rr = top_k(scores["rule_return_rate"][rest], ids[rest], k2)
        row[f"rule_return_rate_{reviewed}"] = float(y[rest][rr].mean())
    row.update({"k_after_review": k2, "decisions_confirmed": int(confirmed.sum()), "mode_after_review": model2.mode_})
    return row


# --------------------------------------------------------------------------------------------------------------------
# Merchant risk and ticket triage (both trained on the data as known LABEL_DAYS before the end)


def _quiet(_: str) -> None:
    return None


def _train_quietly(trainer, *args, **kwargs):
    """Run a `train` entry point with its console output swallowed (click echoes, MLflow's registration notes)."""
    import contextlib

    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        return trainer(*args, **kwargs)


def merchant_section(full_dir: Path, asof_dir: Path, as_of: pd.Timestamp, market: str, models_dir: Path) -> dict:
    """`train merchant-risk` on the earlier data, rank with the champion, NDCG@50 on the next 60 days."""
    from features.contract import load_dataset
    from features.merchants import build_features, build_labels, prepare_events
    from training import registry
    from training.merchant_risk import MODEL_NAME, rank_as_of, ranking_metrics
    from training.merchant_risk import train as train_merchants

    settings = world_settings(models_dir, market)
    _train_quietly(train_merchants, asof_dir, settings)
    model = registry.load_champion(MODEL_NAME, settings=settings).model
    events_t = prepare_events(load_dataset(asof_dir))
    day = events_t.check_as_of(as_of)
    ranking = rank_as_of(model, events_t, day, settings)
    feats = build_features(events_t, day, horizon_days=LABEL_DAYS)
    labels = build_labels(prepare_events(load_dataset(full_dir)), day, LABEL_DAYS)
    frame = feats.join(labels, how="inner").reset_index()
    frame["model"] = frame["merchant_id"].map(ranking.set_index("merchant_id")["score"]).astype(float)
    frame["complaint_rate_60d"] = frame["baseline_rate"]
    frame["complaint_count_60d"] = frame["baseline_count"]
    row: dict = {"as_of": str(day.date()), "merchants": len(frame),
                 "merchants_scored": int((frame["label_orders"] >= settings.merchant_min_label_orders).sum())}
    for name in ("model", *SECTIONS["merchant_risk"].baselines):
        m = ranking_metrics(frame, name, settings.merchant_min_label_orders)
        row[name] = m.get("ndcg_at_50", float("nan"))
        row[f"ndcg_at_20_{name}"] = m.get("ndcg_at_20", float("nan"))
    return row


def _serial_snapshot(data_dir: Path, as_of, settings: Settings) -> None:
    """The account snapshot `train serial-returners` leaves for serving (abuse scores the triage policy reads),
    fitted the way it fits its final model, as of the day the data ends."""
    from training.data import load_for_command
    from training.serial_returners import (
        excluded_accounts,
        features_as_of,
        fit_model,
        load_labels,
        write_snapshots,
    )

    ds = load_for_command(data_dir, settings.models_dir / "serial_returners", _quiet)
    X = features_as_of(ds, as_of, settings)
    labels = load_labels(ds, settings, as_of)
    model = fit_model(X, labels, settings, as_of, source=str(Path(data_dir).resolve()))
    write_snapshots(X, model, settings, exclude=excluded_accounts(labels, as_of, settings.serial_review_cooldown_days))


SERVED_FIELDS = ("ticket_id", "created_at", "account_id", "merchant_id", "order_id", "case_type", "channel", "amount",
                 "text")
REFRESH_AFTER_DAYS = 30  # `refresh-features` this many days after training; the week after it is scored again
REFRESH_WEEK_DAYS = 7


def _serve(rt, tickets: pd.DataFrame, batch: int) -> np.ndarray:
    """Send ``tickets`` (time-ordered) to the Runtime in batches, as the ticket system would; their probabilities."""
    from serving.schemas import TicketIn

    probs: list[float] = []
    fields = tickets[list(SERVED_FIELDS)]
    records = fields.astype(object).where(fields.notna(), None).to_dict("records")
    for i in range(0, len(records), batch):
        res = rt.score_batch([TicketIn(**r) for r in records[i:i + batch]])
        probs += [item.escalation_probability for item in res.results]
    return np.asarray(probs, dtype=np.float64)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def triage_section(full_dir: Path, asof_dir: Path, as_of: pd.Timestamp, market: str, models_dir: Path,
                   batch: int = 2000) -> dict:
    """`train ticket-triage` on the earlier data; the serving Runtime scores every later ticket in the order they were
    created (as the ticket system sends them: only their own fields); ROC-AUC vs case type on the labelled ones.

    Then `refresh-features` on the data as of :data:`REFRESH_AFTER_DAYS` days later (same pinned model), the Runtime
    swaps to the new generation, and the week after the refresh is scored again: ``refresh_week_served`` against
    ``refresh_week_offline``, the same model on the point-in-time training features of the same tickets
    (``refresh_week_stale``: those tickets as first served, from the snapshots of the training day).
    """
    from features.contract import load_dataset
    from features.tickets import CalendarTable, build_training_features
    from serving.app import Runtime
    from training.refresh import refresh_features
    from training.ticket_triage import MODEL_NAME as TRIAGE
    from training.ticket_triage import CaseTypeBaseline
    from training.ticket_triage import train as train_triage

    settings = world_settings(models_dir, market)
    _serial_snapshot(asof_dir, as_of, settings)
    _train_quietly(train_triage, asof_dir, settings)
    end = utc_day_end(as_of)
    full = pd.read_parquet(full_dir / "tickets.parquet")
    later = full[full["created_at"] >= end].sort_values(["created_at", "ticket_id"], kind="stable")
    later = later.reset_index(drop=True)
    labelled = later["escalated"].notna().to_numpy()
    known = pd.read_parquet(asof_dir / "tickets.parquet")
    known = known[known["escalated"].notna()]
    if not labelled.any() or later.loc[labelled, "escalated"].nunique() < 2:
        raise ValueError("no later tickets with both outcomes to score")
    y = later["escalated"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    rt = Runtime.load(settings)
    try:
        probs = _serve(rt, later, batch)  # every ticket: the service counts load and contacts as they arrive
    finally:
        rt.close()
    refresh_day = pd.Timestamp(as_of) + pd.Timedelta(days=REFRESH_AFTER_DAYS)
    r_end = utc_day_end(refresh_day)
    week = ((later["created_at"] >= r_end) & (later["created_at"] < r_end + pd.Timedelta(days=REFRESH_WEEK_DAYS))
            ).to_numpy()
    row_refresh: dict = {}
    if week.any():
        # A second service, run as a deployment would: it serves the training generation until the refresh (seeing
        # every ticket up to then), swaps to the refreshed generation while running, then scores the week after.
        rt = Runtime.load(settings)
        try:
            _serve(rt, later[(later["created_at"] < r_end).to_numpy()], batch)
            rdir = data_as_of(full_dir, Path(asof_dir).parent / "data_refresh", refresh_day)
            _train_quietly(refresh_features, rdir, settings, echo=_quiet)
            if not rt.refresh():
                raise RuntimeError(f"the Runtime did not swap to the refreshed generation: {rt.generation_problem}")
            p_week = _serve(rt, later[week], batch)
            model = rt.model(TRIAGE)
        finally:
            rt.close()
        cal = CalendarTable(market, settings.summer_sale, settings.summer_sale_days)
        feats = build_training_features(load_dataset(full_dir), cal)
        pos = pd.Series(np.arange(len(feats.meta)), index=feats.meta["ticket_id"].to_numpy())
        p_off = model.predict(feats.X.iloc[pos.loc[later.loc[week, "ticket_id"]].to_numpy()])
        lw = labelled[week]
        yw = y[week][lw]
        row_refresh = {"refresh_as_of": str(refresh_day.date()), "refresh_week_tickets": int(lw.sum()),
                       "refresh_week_served": _auc(yw, p_week[lw]),
                       "refresh_week_offline": _auc(yw, p_off[lw]),
                       "refresh_week_stale": _auc(yw, probs[week][lw])}
        row_refresh["refresh_week_gap"] = row_refresh["refresh_week_offline"] - row_refresh["refresh_week_served"]
    base = CaseTypeBaseline().fit(known["case_type"], known["escalated"].astype(float).to_numpy())
    return {"as_of": str(pd.Timestamp(as_of).date()), "tickets": int(labelled.sum()),
            "tickets_sent": len(later), "escalation_rate": float(y[labelled].mean()),
            "model": _auc(y[labelled], probs[labelled]),
            "case_type_rate": _auc(y[labelled], base.predict(later.loc[labelled, "case_type"])), **row_refresh}


# --------------------------------------------------------------------------------------------------------------------
# One world, all worlds, the real data


def _isolated(fn, *args, **kwargs) -> dict:
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 — one model's failure must not stop the others
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}


def run_world(seed: int, root: Path, accounts: int, merchants: int, sections: tuple[str, ...], echo: Echo,
              tick: Callable[[], None] = lambda: None) -> WorldResult:
    """Generate the world of ``seed`` (random scenario) and run every section on it."""
    from features.scenarios import make_scenario
    from features.synthetic import generate_world

    t0 = time.perf_counter()
    wdir = root / f"seed_{seed}"
    data = wdir / "data"
    if wdir.exists():
        shutil.rmtree(wdir)
    sc = make_scenario("random", seed)
    generate_world(data, seed=seed, accounts=accounts, merchants=merchants, progress=False, scenario=sc)
    res = WorldResult(seed, f"seed {seed} ({sc.market}, {sc.days} days)")
    res.seconds["generate"] = time.perf_counter() - t0
    end = last_day(data)
    cut = end - pd.Timedelta(days=LABEL_DAYS)
    asof = None
    for key in sections:
        t = time.perf_counter()
        if key == "holiday_volume":
            # The forecast command only logs runs: one MLflow store for every world's forecasts (a new store costs
            # its schema migrations each time).
            res.rows[key] = _isolated(holiday_section, data, sc.market, wdir / "forecast", root / "_forecast_models")
        elif key == "serial_returners":
            res.rows[key] = _isolated(serial_section, data, sc.market, wdir / "models_serial")
        else:
            if asof is None:
                asof = data_as_of(data, wdir / "data_as_of", cut)
            if key == "merchant_risk":
                res.rows[key] = _isolated(merchant_section, data, asof, cut, sc.market, wdir / "models_as_of")
            else:
                res.rows[key] = _isolated(triage_section, data, asof, cut, sc.market, wdir / "models_as_of")
        res.seconds[key] = time.perf_counter() - t
        tick()
    res.seconds["total"] = time.perf_counter() - t0
    echo(f"  {res.label}: " + ", ".join(f"{k} {v:.1f}s" for k, v in res.seconds.items()))
    return res


def real_checks(file: Path, root: Path, echo: Echo) -> pd.DataFrame:
    """The Online Retail checks: holiday volume from 2010-10-31 to 2010-12-09 (GB) and serial returners as of
    2010-06-30 (top 50 still heavy returners in the next 6 months)."""
    from features.contract import load_dataset
    from features.online_retail import import_online_retail
    from training.serial_returners import evaluate_forward

    data = root / "online_retail"
    if data.exists():
        shutil.rmtree(data)
    import_online_retail([file], data, progress=False)
    rows = []
    t = time.perf_counter()
    origin = pd.Timestamp(REAL_HOLIDAY_ORIGIN)
    h = int((pd.Timestamp(REAL_HOLIDAY_END) - origin).days)
    hv = _isolated(holiday_section, data, "GB", root / "online_retail_forecast", root / "online_retail_models",
                   origin=origin, horizon=h)
    for name in ("model", *SECTIONS["holiday_volume"].baselines):
        rows.append({"check": f"holiday volume {REAL_HOLIDAY_ORIGIN}..{REAL_HOLIDAY_END} (GB)",
                     "metric": "holiday-window WAPE (lower is better)", "method": name, "value": hv.get(name),
                     "coverage80": hv.get(f"coverage80_{name}"), "wape_all_days": hv.get(f"{name}_wape_all_days"),
                     "note": hv.get("error") or hv.get("note", "")})
    echo(f"  real: holiday volume {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    try:
        settings = world_settings(root / "online_retail_models_serial", "GB")
        ds = load_dataset(data)
        fw = evaluate_forward(ds, REAL_SERIAL_AS_OF, settings, top=REAL_SERIAL_TOP, horizon_days=REAL_SERIAL_DAYS,
                              market="GB")
        table = fw["table"]
        # The planners' rule of the issue: the 50 accounts with most returns so far (all history up to the day).
        day = pd.Timestamp(REAL_SERIAL_AS_OF)
        counts = account_counts_as_of(ds.orders, ds.returns, day, _accounts_of(ds, day))
        end, start = utc_day_end(fw["window_end"]), utc_day_end(day)
        r = ds.returns
        future = r.loc[(r["requested_at"] >= start) & (r["requested_at"] < end), "account_id"].dropna().astype(str)
        fut = future.value_counts().reindex(counts.index).fillna(0).to_numpy()
        heavy = fut >= fw["heavy_threshold"]
        top = top_k(counts["returns"].to_numpy(), counts.index, REAL_SERIAL_TOP)
        note = (f"heavy = at least {fw['heavy_threshold']:.0f} returns in {REAL_SERIAL_AS_OF}..{fw['window_end']} "
                f"({fw['heavy_accounts']} accounts); model mode {fw['mode']}")
        note += f"; the queue ranks by {fw['queue_method']} ({fw['queue_evidence']})"
        for name, label in (("model", "model"), ("queue", "queue"), ("rule", "rule_90d"),
                            ("if_counts", "isolation_forest"), ("most_returns", "most_returns_365d")):
            rows.append({"check": f"serial returners as of {REAL_SERIAL_AS_OF}, top {REAL_SERIAL_TOP}",
                         "metric": "share still heavy returners next 6 months", "method": label,
                         "value": float(table.loc[name, "precision"]), "note": note})
        rows.append({"check": f"serial returners as of {REAL_SERIAL_AS_OF}, top {REAL_SERIAL_TOP}",
                     "metric": "share still heavy returners next 6 months", "method": "most_returns_so_far",
                     "value": float(heavy[top].mean()), "note": note})
    except Exception as e:  # noqa: BLE001
        rows.append({"check": f"serial returners as of {REAL_SERIAL_AS_OF}", "metric": "", "method": "model",
                     "value": float("nan"), "note": f"{type(e).__name__}: {str(e)[:300]}"})
    echo(f"  real: serial returners {time.perf_counter() - t:.1f}s")
    return pd.DataFrame(rows)


def _accounts_of(ds, day: pd.Timestamp) -> pd.Index:
    end = utc_day_end(day)
    a = pd.concat([ds.orders.loc[ds.orders["ordered_at"] < end, "account_id"],
                   ds.returns.loc[ds.returns["requested_at"] < end, "account_id"]]).dropna().astype(str)
    return pd.Index(sorted(a.unique()))


# --------------------------------------------------------------------------------------------------------------------
# Tables, plots, HTML


def section_table(section: Section, results: list[WorldResult]) -> pd.DataFrame:
    """Rows: worlds, then min, median, max and wins; columns: model, baselines, then the section's details."""
    rows = []
    for r in results:
        row = r.rows.get(section.key, {})
        rows.append({"world": r.label, "seed": r.seed, **row})
    df = pd.DataFrame(rows)
    cols = ["model", *section.baselines]
    for c in [*cols, "error"]:
        if c not in df.columns:
            df[c] = np.nan if c != "error" else ""
    df["error"] = df["error"].fillna("")
    vals = df[cols].astype(float)
    better = (lambda a, b: a > b) if section.higher_is_better else (lambda a, b: a < b)
    win = vals["model"].notna() & np.logical_and.reduce(
        [vals[b].isna() | better(vals["model"], vals[b]) for b in section.baselines])
    df["model_wins"] = win
    rest = [c for c in df.columns if c not in ("world", "seed", *cols, "model_wins", "error")]
    df = df[["world", "seed", *cols, "model_wins", *rest, "error"]]
    summary = [{"world": "min", **vals.min().to_dict()}, {"world": "median", **vals.median().to_dict()},
               {"world": "max", **vals.max().to_dict()},
               {"world": "wins", "model": float(win.sum()),
                **{b: float((vals[b].notna() & ~vals["model"].isna() & ~better(vals["model"], vals[b])
                             & ~(vals["model"] == vals[b])).sum()) for b in section.baselines}}]
    return pd.concat([df, pd.DataFrame(summary)], ignore_index=True)


def _plot(section: Section, table: pd.DataFrame) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worlds = table[table["seed"].notna()]
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(worlds) + 3), 3.2))
    x = np.arange(len(worlds))
    for name in ["model", *section.baselines]:
        v = pd.to_numeric(worlds[name], errors="coerce").to_numpy()
        ax.plot(x, v, "o-" if name == "model" else "x", label=name, lw=2 if name == "model" else 0,
                ms=7 if name == "model" else 6, zorder=3 if name == "model" else 2)
    ax.set_xticks(x, [str(int(s)) for s in worlds["seed"]])
    ax.set_xlabel("world (seed)")
    ax.set_ylabel(section.metric.split(" (")[0], fontsize=8)
    ax.set_title(section.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def write_html(out: Path, tables: dict[str, pd.DataFrame], real: pd.DataFrame | None, meta: dict) -> Path:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Cross-world benchmark</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}</style></head><body>",
             "<h1>Cross-world model benchmark</h1>",
             f"<p>{meta['worlds']} worlds (random scenarios, seeds {meta['seeds']}), {meta['accounts']} accounts and "
             f"{meta['merchants']} merchants each; took {meta['seconds']:.0f}s. Each model trains on earlier time "
             "and is scored on later time; the baselines on the same accounts, merchants, tickets or days. Row "
             "<i>wins</i>: under <i>model</i> the worlds where the model beats every baseline; under a baseline the "
             "worlds where that baseline beats the model.</p>"]
    for key, table in tables.items():
        s = SECTIONS[key]
        shown = table[["world", "model", *s.baselines, "model_wins", "error"]]
        parts += [f"<h2>{s.title}</h2><p>Metric: {s.metric}.</p>",
                  f"<img src='data:image/png;base64,{_plot(s, table)}'/>",
                  shown.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"),
                  f"<p>Details in <code>{key}.csv</code>.</p>"]
    if real is not None:
        parts += ["<h2>Real data: UCI Online Retail II (2009-2010)</h2>",
                  real.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")]
    parts.append("</body></html>")
    path = out / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def run_benchmark(worlds: int, seed_base: int, out: Path, accounts: int = 3000, merchants: int = 120,
                  real: Path | None = None, sections: tuple[str, ...] = tuple(SECTIONS), echo: Echo = click.echo,
                  progress: bool = True, keep_worlds: bool = True) -> dict:
    """Run every section on ``worlds`` random worlds (and the real checks); write the CSVs and index.html."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = out / "worlds"
    seeds = list(range(seed_base, seed_base + worlds))
    results: list[WorldResult] = []
    import logging

    for name in ("mlflow", "aftersales.serving", "serving", "alembic"):  # registrations, missing-champion notes
        logging.getLogger(name).setLevel(logging.ERROR)
    with click.progressbar(length=len(seeds) * len(sections), label="benchmark", show_pos=True,
                           hidden=not progress, file=None) as bar:
        for seed in seeds:
            results.append(run_world(seed, root, accounts, merchants, sections, echo, tick=lambda: bar.update(1)))
            if not keep_worlds:
                shutil.rmtree(root / f"seed_{seed}", ignore_errors=True)
    tables = {}
    for key in sections:
        tables[key] = section_table(SECTIONS[key], results)
        tables[key].to_csv(out / f"{key}.csv", index=False)
    real_table = None
    if real is not None:
        echo("real data checks (Online Retail)")
        real_table = real_checks(Path(real), out / "real", echo)
        real_table.to_csv(out / "real.csv", index=False)
    timings = pd.DataFrame([{"seed": r.seed, **r.seconds} for r in results])
    timings.to_csv(out / "timings.csv", index=False)
    seconds = time.perf_counter() - t0
    meta = {"worlds": worlds, "seeds": f"{seeds[0]}..{seeds[-1]}" if seeds else "-", "accounts": accounts,
            "merchants": merchants, "seconds": seconds}
    html = write_html(out, tables, real_table, meta)
    (out / "benchmark.json").write_text(json.dumps({**meta, "sections": list(sections),
                                                    "real": str(real) if real else None}, indent=1))
    return {"tables": tables, "real": real_table, "html": html, "seconds": seconds, "timings": timings}


@click.command("benchmark-models")
@click.option("--worlds", "n_worlds", default=12, show_default=True, type=click.IntRange(1, 500),
              help="Number of random worlds.")
@click.option("--seed-base", default=0, show_default=True, type=int,
              help="Worlds use seeds S..S+K-1. Tune on seeds below 1000; report from seeds at or above 1000, once.")
@click.option("--real", "real", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="UCI Online Retail II 2009-2010 file: also run the real-data checks on it.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the CSVs, index.html and the worlds.")
@click.option("--accounts", default=3000, show_default=True, help="Accounts per world.")
@click.option("--merchants", default=120, show_default=True, help="Merchants per world.")
@click.option("--models", "only", default=",".join(SECTIONS), show_default=True,
              help="Comma-separated sections to run: " + ", ".join(SECTIONS) + ".")
@click.option("--keep-worlds/--drop-worlds", default=True, show_default=True,
              help="Keep each world's data and models under OUT/worlds.")
def benchmark_models_cmd(n_worlds: int, seed_base: int, real: Path | None, out: Path, accounts: int, merchants: int,
                         only: str, keep_worlds: bool) -> None:
    """Every model against every baseline on K fresh worlds (and, with --real, on Online Retail).

    Writes OUT/<model>.csv (rows: worlds; columns: model and baselines on the model's metric, details; last rows:
    min, median, max, wins) and OUT/index.html with a plot per model. Prints each world's timings.
    """
    sections = tuple(s.strip() for s in only.split(",") if s.strip())
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise click.BadParameter(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}",
                                 param_hint="--models")
    if seed_base >= 1000:
        click.echo("note: seeds >= 1000 are the report seeds: run them once, after the models are fixed")
    res = run_benchmark(n_worlds, seed_base, out, accounts, merchants, real, sections)
    for key, table in res["tables"].items():
        s = SECTIONS[key]
        summary = table[table["seed"].isna()].set_index("world")[["model", *s.baselines]]
        click.secho(f"\n{s.title}: {s.metric}", bold=True)
        click.echo(summary.to_string(float_format=lambda v: f"{v:.3f}"))
        errors = table.loc[table["seed"].notna() & (table["error"].fillna("").astype(str) != ""),
                           ["world", "error"]]
        for _, e in errors.iterrows():
            click.echo(f"  error in {e['world']}: {e['error']}")
        if key == "ticket_triage" and "refresh_week_gap" in table.columns:
            w = table[table["seed"].notna()]
            gap = pd.to_numeric(w["refresh_week_gap"], errors="coerce").dropna()
            lift = pd.to_numeric(w["model"], errors="coerce") - pd.to_numeric(w["case_type_rate"], errors="coerce")
            click.echo(f"  lift over case-type rate >= 0.10 on {int((lift >= 0.10).sum())}/{len(w)} worlds "
                       f"(median {lift.median():+.3f}); week after refresh-features: served within 0.01 of the "
                       f"offline point-in-time ROC-AUC on {int((gap.abs() <= 0.01).sum())}/{len(gap)} worlds "
                       f"(median gap {gap.median():+.4f})")
    if res["real"] is not None:
        click.secho("\nOnline Retail", bold=True)
        click.echo(res["real"].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    click.echo(f"\nwrote {out}/index.html and one CSV per model; total {res['seconds']:.0f}s")
