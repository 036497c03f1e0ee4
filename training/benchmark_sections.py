"""The cross-world benchmark's per-model sections (training/benchmark.py): each trains on earlier time of one world
through the project's own functions and commands and scores later time against every baseline."""

from __future__ import annotations

import os
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from features.settings import Settings
from training.benchmark_worlds import (
    HORIZON,
    LABEL_DAYS,
    REVIEWED,
    SECTIONS,
    data_as_of,
    utc_day_end,
    world_settings,
)


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
    from features.accounts import PATTERNS, queue_settings, review_queue
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
    fitted_t1 = fit_model(X1, labels, settings, t1, source=str(data_dir))
    # flag-accounts as of T2 with the model fitted at T1, through the same for_day (a cold start's null is refitted on
    # that day's accounts).
    model = fitted_t1.for_day(X2)
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
                         scores=s_model, **queue_settings(settings))
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
    q1 = review_queue(X1, fitted_t1, reviewed, **queue_settings(settings))
    t1r = truth.reindex(q1["account_id"].astype(str))
    confirmed = (t1r["is_abuser"].fillna(False).astype(bool) & (t1r["abuse_start"] <= t1)).to_numpy()
    decided_at = utc_day_end(t1) - pd.Timedelta(hours=12)
    decisions = pd.DataFrame({"account_id": q1["account_id"].astype(str).to_numpy(),
                              "decision": np.where(confirmed, "confirmed_abuse", "cleared"),
                              "decided_at": decided_at, "reviewer": "benchmark.reviewer", "note": None})
    import_decisions(decisions, known_accounts=set(X1.index.astype(str)), source="benchmark", settings=settings)
    labels2 = load_labels(ds, settings, t1)
    model2 = fit_model(X1, labels2, settings, t1, source=str(data_dir), links=ds.account_links).for_day(X2)
    seen = set(decisions["account_id"])
    rest = ~ids.isin(list(seen))
    k2 = int(y[rest].sum())
    row[f"model_{reviewed}"] = row[f"cold_start_{reviewed}"] = float("nan")
    if k2:
        X2r = X2.loc[rest]
        q2 = review_queue(X2r, model2, k2, exclude=excluded_accounts(labels2, t2, settings.serial_review_cooldown_days),
                          scores=model2.predict(X2r), **queue_settings(settings))
        pos2 = ids.get_indexer(q2["account_id"].astype(str))
        row[f"model_{reviewed}"] = float(y[pos2].mean())
        row.update(_top_score_part(q2, y[pos2], f"model_{reviewed}"))
        # The cold start's queue on the same accounts (the reviewed ones left out) with the same K: the reviews took
        # the easiest abusers out of both, so the supervised queue is judged against this, not against the cold
        # start's figure on every account.
        qc = review_queue(X2r, model, k2, exclude=excluded_accounts(labels2, t2, settings.serial_review_cooldown_days),
                          scores=s_model[rest], **queue_settings(settings))
        yc = y[ids.get_indexer(qc["account_id"].astype(str))]
        row[f"cold_start_{reviewed}"] = float(yc.mean())
        row.update(_top_score_part(qc, yc, f"cold_start_{reviewed}"))
        rr = top_k(scores["rule_return_rate"][rest], ids[rest], k2)
        row[f"rule_return_rate_{reviewed}"] = float(y[rest][rr].mean())
    row.update({"k_after_review": k2, "decisions_confirmed": int(confirmed.sum()), "mode_after_review": model2.mode_})
    return row


def _top_score_part(queue: pd.DataFrame, hit: np.ndarray, name: str) -> dict:
    """``{name}_top_score_part``: precision on the queue's top-score part (the issue's measure: reserved pattern
    slots and the audit sample are there to learn and to check), and ``{name}_top_score_n``: how many accounts
    that part holds (the pooled row's weight)."""
    part = queue["slot"].eq("top score").to_numpy()
    return {f"{name}_top_score_part": float(hit[part].mean()) if part.any() else float("nan"),
            f"{name}_top_score_n": int(part.sum())}


def _quiet(_: str) -> None:
    return None


def _train_quietly(trainer, *args, **kwargs):
    """Run a `train` entry point with its console output swallowed (click echoes, MLflow's registration notes)."""
    import contextlib

    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        return trainer(*args, **kwargs)


def merchant_section(full_dir: Path, asof_dir: Path, as_of: pd.Timestamp, market: str, models_dir: Path) -> dict:
    """`train merchant-risk` on the earlier data, rank with the champion, NDCG@50 on the next 60 days."""
    from training.merchant_risk import ranking_metrics
    from training.merchant_risk import train as train_merchants

    settings = world_settings(models_dir, market)
    _train_quietly(train_merchants, asof_dir, settings)
    frame, day = merchant_frame(full_dir, asof_dir, as_of, settings)
    frame["complaint_rate_60d"] = frame["baseline_rate"]
    frame["complaint_count_60d"] = frame["baseline_count"]
    row: dict = {"as_of": str(day.date()), "merchants": len(frame),
                 "merchants_scored": int((frame["label_orders"] >= settings.merchant_min_label_orders).sum())}
    for name in ("model", *SECTIONS["merchant_risk"].baselines):
        m = ranking_metrics(frame, name, settings.merchant_min_label_orders)
        row[name] = m.get("ndcg_at_50", float("nan"))
        row[f"ndcg_at_20_{name}"] = m.get("ndcg_at_20", float("nan"))
    row["latent_risk_reference"] = latent_risk_reference(frame, full_dir, settings.merchant_min_label_orders)
    return row


def merchant_frame(full_dir: Path, asof_dir: Path, as_of: pd.Timestamp, settings: Settings
                   ) -> tuple[pd.DataFrame, pd.Timestamp]:
    """(frame, day): the merchants as of ``as_of`` on the data known then (``asof_dir``), their features, the next
    :data:`LABEL_DAYS` days' labels from the whole data (``full_dir``) and the champion's score (``model``), as the
    merchant section ranks them (also read by ``benchmarks/diag_merchant_top50.py``)."""
    from features.contract import load_dataset
    from features.merchants import build_features, build_labels, prepare_events
    from training import registry
    from training.merchant_risk import MODEL_NAME, rank_as_of

    model = registry.load_champion(MODEL_NAME, settings=settings).model
    events_t = prepare_events(load_dataset(asof_dir))
    day = events_t.check_as_of(as_of)
    ranking = rank_as_of(model, events_t, day, settings)
    feats = build_features(events_t, day, horizon_days=LABEL_DAYS)
    labels = build_labels(prepare_events(load_dataset(full_dir)), day, LABEL_DAYS)
    frame = feats.join(labels, how="inner").reset_index()
    frame["model"] = frame["merchant_id"].map(ranking.set_index("merchant_id")["score"]).astype(float)
    return frame, day


def latent_risk_reference(frame: pd.DataFrame, full_dir: Path, min_orders: int) -> float:
    """NDCG@50 of the generator's latent complaint risk (``truth/merchants.parquet``: expected complaints per line
    over the world's last 180 days, which hold the label window) on the same merchants: a ceiling reference for how
    much of the next 60 days' complaint rates any ranker can get right through the label's Poisson noise. Read from
    the world's truth for evaluation only, never a candidate; NaN when the world has no truth."""
    from training.merchant_risk import ranking_metrics

    truth = Path(full_dir) / "truth" / "merchants.parquet"
    if not truth.exists():
        return float("nan")
    risk = pd.read_parquet(truth, columns=["merchant_id", "complaint_risk"]).set_index("merchant_id")["complaint_risk"]
    part = frame.assign(_latent=frame["merchant_id"].astype(str).map(risk).astype(float))
    return ranking_metrics(part, "_latent", min_orders).get("ndcg_at_50", float("nan"))


def escalation_reference(full_dir: Path, tickets: pd.DataFrame, y: np.ndarray) -> float:
    """ROC-AUC of the generator's own escalation probability (``truth/tickets.parquet``: ``p_escalate``, which holds
    the customer's latent anger and the merchant's latent state) on the same labelled ``tickets`` (outcomes ``y``): a
    ceiling reference for how far any scorer can rank them above the case-type rate. Read from the world's truth for
    evaluation only, never a candidate; NaN when the world has no truth."""
    truth = Path(full_dir) / "truth" / "tickets.parquet"
    if not truth.exists():
        return float("nan")
    p = pd.read_parquet(truth, columns=["ticket_id", "p_escalate"]).set_index("ticket_id")["p_escalate"]
    ref = tickets["ticket_id"].map(p).to_numpy(dtype=np.float64)
    ok = ~np.isnan(ref)
    return _auc(np.asarray(y, dtype=bool)[ok], ref[ok]) if ok.all() else float("nan")


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
    model = fit_model(X, labels, settings, as_of, source=str(Path(data_dir).resolve()), links=ds.account_links)
    write_snapshots(X, model, settings, exclude=excluded_accounts(labels, as_of, settings.serial_review_cooldown_days))


SERVED_FIELDS = ("ticket_id", "created_at", "account_id", "merchant_id", "order_id", "case_type", "channel", "amount",
                 "text")


REFRESH_AFTER_DAYS = 30  # `refresh-features` this many days after training; the week after it is scored again


REFRESH_WEEK_DAYS = 7


REFRESH_CADENCES = ("both", "once", "daily")  # `--refresh-cadence`: which refresh weeks the triage section scores


GAP_BOOTSTRAP = 200  # paired resamples of the refresh week's labelled tickets for the gaps' standard deviations


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


def _capturing_features(model) -> list:
    """Make ``model.features_batch`` also append each feature matrix it assembles to the returned list."""
    seen: list = []
    method = model.features_batch

    def features_batch(*args, **kwargs):
        X, flags = method(*args, **kwargs)
        seen.append(X.copy())
        return X, flags

    model.features_batch = features_batch
    return seen


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def _refreshed_week(rt, later: pd.DataFrame, week: np.ndarray, r_end: pd.Timestamp, steps: list[int],
                    refresh_to, batch: int, seen: list | None = None, end: pd.Timestamp | None = None) -> np.ndarray:
    """Score the refresh week's tickets on the running ``rt``: at each of ``steps`` (days after the refresh day)
    ``refresh_to(step)`` writes the generation as of that day's start, the Runtime swaps to it and scores the tickets
    until the next step (the last until the week's end, or ``end``). ``[0]``: one refresh for the week; ``0..6``: a
    daily cron. ``seen``: a list to extend with the feature matrices the served model assembled."""
    from training.ticket_triage import MODEL_NAME as TRIAGE

    tickets = later[week]
    created = tickets["created_at"]
    probs = np.full(len(tickets), np.nan)
    end = r_end + pd.Timedelta(days=REFRESH_WEEK_DAYS) if end is None else end
    bounds = [r_end + pd.Timedelta(days=k) for k in steps] + [end]
    for k, lo, hi in zip(steps, bounds[:-1], bounds[1:], strict=True):
        refresh_to(k)
        if not rt.refresh():
            raise RuntimeError(f"the Runtime did not swap to the refreshed generation: {rt.generation_problem}")
        day = ((created >= lo) & (created < hi)).to_numpy()
        if day.any():
            model = rt.model(TRIAGE)
            got = _capturing_features(model) if seen is not None else None
            probs[day] = _serve(rt, tickets[day], batch)
            if got is not None:
                seen += got
                del model.features_batch  # the instance attribute: the class's method again
    return probs


def _gap_sd(y: np.ndarray, p_offline: np.ndarray, served: dict[str, np.ndarray], n: int = GAP_BOOTSTRAP,
            seed: int = 200) -> dict[str, float]:
    """Paired-bootstrap standard deviation of ``AUC(offline) - AUC(served)`` for each served variant: the same
    resamples of the tickets (fixed seed) for every variant; resamples with one outcome only are skipped."""
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=bool)
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n, len(y)))
    yb = y[idx]
    pos = yb.sum(axis=1)
    idx, yb, pos = idx[(pos > 0) & (pos < len(y))], yb[(pos > 0) & (pos < len(y))], pos[(pos > 0) & (pos < len(y))]
    if len(idx) < 2:
        return {name: float("nan") for name in served}

    def auc(p: np.ndarray) -> np.ndarray:  # Mann-Whitney per resample, ties counted half (as roc_auc_score)
        r = rankdata(np.asarray(p, dtype=np.float64)[idx], axis=1)
        return ((r * yb).sum(axis=1) - pos * (pos + 1) / 2) / (pos * (len(y) - pos))

    off = auc(p_offline)
    return {name: float(np.std(off - auc(p), ddof=1)) for name, p in served.items()}


def _served_with_refreshes(settings, full_dir: Path, work: Path, later: pd.DataFrame, as_of: pd.Timestamp,
                          every_days: int, batch: int) -> tuple[np.ndarray, int]:
    """Every later ticket through a fresh Runtime that runs `refresh-features` every ``every_days`` days of the later
    period (on the data as of that day's start, the day before's end) and swaps to it while running, as a cron of
    that period would: the first ``every_days`` days use the training generation (written again from the training
    data first, so no later generation is current; not counted as a refresh). Tickets are sent in creation
    order, every one of them (the live counts see them all). Their probabilities and the number of refreshes."""
    from serving.app import Runtime
    from training.refresh import refresh_features

    created = later["created_at"]
    start = utc_day_end(as_of)
    # The training generation again first: the refresh week's runs left a later generation current, which would hand
    # the first days' tickets a snapshot from their future.
    _train_quietly(refresh_features, data_as_of(full_dir, work, pd.Timestamp(as_of)), settings, echo=_quiet)
    steps = []  # the cron's runs: every `every_days` days while later tickets remain
    while (created >= start + pd.Timedelta(days=(len(steps) + 1) * every_days)).any():
        steps.append((len(steps) + 1) * every_days)

    def refresh_to(k: int) -> None:
        _train_quietly(refresh_features, data_as_of(full_dir, work, pd.Timestamp(as_of) + pd.Timedelta(days=k)),
                       settings, echo=_quiet)

    probs = np.full(len(later), np.nan)
    first = ((created >= start) & (created < start + pd.Timedelta(days=every_days))).to_numpy()
    rest = (created >= start + pd.Timedelta(days=every_days)).to_numpy()
    rt = Runtime.load(settings)
    try:
        if first.any():
            probs[first] = _serve(rt, later[first], batch)
        if steps:
            probs[rest] = _refreshed_week(rt, later, rest, start, steps, refresh_to, batch,
                                          end=created.max() + pd.Timedelta(days=1))
    finally:
        rt.close()
    return probs, len(steps)


def triage_section(full_dir: Path, asof_dir: Path, as_of: pd.Timestamp, market: str, models_dir: Path,
                   batch: int = 2000, week_features: dict | None = None, cadence: str = "both",
                   serve_refresh_days: int = 0) -> dict:
    """`train ticket-triage` on the earlier data; the serving Runtime scores every later ticket in the order they were
    created (as the ticket system sends them: only their own fields); ROC-AUC vs case type on the labelled ones.

    Then `refresh-features` on the data as of :data:`REFRESH_AFTER_DAYS` days later (same pinned model), the Runtime
    swaps to the new generation, and the week after the refresh is scored again: ``refresh_week_served`` against
    ``refresh_week_offline``, the same model on the point-in-time training features of the same tickets
    (``refresh_week_stale``: those tickets as first served, from the snapshots of the training day).

    ``cadence``: ``once`` is that protocol; ``daily`` runs `refresh-features` again at the start of each later day of
    the week (as a daily cron would; its own Runtime swaps each morning) and scores each day's tickets with that
    morning's generation: ``refresh_daily_served``, ``refresh_daily_gap`` against the same offline figure;
    ``both`` (default) runs the two side by side. ``refresh_week_gap_sd`` / ``refresh_daily_gap_sd``: paired-bootstrap
    standard deviations of the gaps (:data:`GAP_BOOTSTRAP` resamples of the week's labelled tickets, fixed seed);
    ``refresh_week_seconds`` / ``refresh_daily_seconds``: what each variant's refreshes and scoring took.

    ``serve_refresh_days`` (N > 0): also ``model_refreshed``, the ROC-AUC of the same later tickets served by a
    Runtime that runs `refresh-features` every N days of the later period and swaps to it while running (what the
    README's cron gives; ``model`` is the service left on the training generation for the whole period), with
    ``serve_refreshes`` and ``serve_refresh_seconds``.

    ``week_features``: a dict to fill with the refresh week's feature matrices, served (``served``: what the
    refreshed Runtime assembled) and offline (``offline``), and ``tickets``, ``y``, ``labelled``, ``p_served``,
    ``p_offline`` (for ``benchmarks/diag_triage_refresh.py``; the figures are the same either way; of the
    ``once`` variant when it runs).
    """
    if cadence not in REFRESH_CADENCES:
        raise ValueError(f"cadence: {cadence!r} is not one of {', '.join(REFRESH_CADENCES)}")
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
        # Services run as a deployment would: each serves the training generation until the refresh (seeing every
        # ticket up to then), swaps to refreshed generations while running, then scores the week after: `once`
        # refreshes on the refresh day only, `daily` also at the start of each later day of the week (a daily cron).
        cadences = ("once", "daily") if cadence == "both" else (cadence,)
        rts = {c: Runtime.load(settings) for c in cadences}
        written: dict[int, Path] = {}

        def refresh_to(k: int) -> None:  # `refresh-features` on the data as of the refresh day + k (each day once)
            if k not in written:
                name = "data_refresh" if k == 0 else "data_refresh_daily"
                written[k] = data_as_of(full_dir, Path(asof_dir).parent / name,
                                        refresh_day + pd.Timedelta(days=k))
                _train_quietly(refresh_features, written[k], settings, echo=_quiet)

        p_served: dict[str, np.ndarray] = {}
        seconds: dict[str, float] = {}
        seen: list = []
        try:
            for rt in rts.values():
                _serve(rt, later[(later["created_at"] < r_end).to_numpy()], batch)
            for c, rt in rts.items():
                t0 = time.perf_counter()
                p_served[c] = _refreshed_week(rt, later, week, r_end, [0] if c == "once" else
                                              list(range(REFRESH_WEEK_DAYS)), refresh_to, batch,
                                              seen if c == cadences[0] else None)
                seconds[c] = time.perf_counter() - t0
            model = rt.model(TRIAGE)
        finally:
            for rt in rts.values():
                rt.close()
        cal = CalendarTable(market, settings.summer_sale, settings.summer_sale_days)
        feats = build_training_features(load_dataset(full_dir), cal)
        pos = pd.Series(np.arange(len(feats.meta)), index=feats.meta["ticket_id"].to_numpy())
        p_off = model.predict(feats.X.iloc[pos.loc[later.loc[week, "ticket_id"]].to_numpy()])
        lw = labelled[week]
        yw = y[week][lw]
        offline = _auc(yw, p_off[lw])
        row_refresh = {"refresh_as_of": str(refresh_day.date()), "refresh_week_tickets": int(lw.sum())}
        if "once" in p_served:
            row_refresh["refresh_week_served"] = _auc(yw, p_served["once"][lw])
        row_refresh.update(refresh_week_offline=offline, refresh_week_stale=_auc(yw, probs[week][lw]))
        names = {"once": "refresh_week", "daily": "refresh_daily"}
        if "daily" in p_served:
            row_refresh["refresh_daily_served"] = _auc(yw, p_served["daily"][lw])
        for c in p_served:
            row_refresh[f"{names[c]}_gap"] = offline - row_refresh[f"{names[c]}_served"]
        for c, sd in _gap_sd(yw, p_off[lw], {c: p_c[lw] for c, p_c in p_served.items()}).items():
            row_refresh[f"{names[c]}_gap_sd"] = sd
        for c, sec in seconds.items():
            row_refresh[f"{names[c]}_seconds"] = sec  # refreshes + swaps + scoring the week
        if week_features is not None:
            from features.tickets import FEATURES

            off = feats.X.iloc[pos.loc[later.loc[week, "ticket_id"]].to_numpy()]
            Xo = off[list(FEATURES)].to_numpy(dtype=np.float64, copy=True)
            Xo[:, FEATURES.index("text_score")] = model.text_scorer_.score(off["text"])  # as predict() does
            week_features.update(served=np.vstack(seen), offline=Xo, tickets=later[week].reset_index(drop=True),
                                 y=y[week], labelled=lw, p_served=p_served[cadences[0]], p_offline=p_off,
                                 model=model)
    if serve_refresh_days > 0:
        t0 = time.perf_counter()
        p_ref, n_ref = _served_with_refreshes(settings, full_dir, Path(asof_dir).parent / "data_serve_refresh", later,
                                              as_of, serve_refresh_days, batch)
        row_refresh.update(model_refreshed=_auc(y[labelled], p_ref[labelled]), serve_refresh_days=serve_refresh_days,
                           serve_refreshes=n_ref, serve_refresh_seconds=time.perf_counter() - t0)
    base = CaseTypeBaseline().fit(known["case_type"], known["escalated"].astype(float).to_numpy())
    p_case = base.predict(later.loc[labelled, "case_type"])
    return {"as_of": str(pd.Timestamp(as_of).date()), "tickets": int(labelled.sum()),
            "tickets_sent": len(later), "escalation_rate": float(y[labelled].mean()),
            "model": _auc(y[labelled], probs[labelled]),
            "case_type_rate": _auc(y[labelled], p_case),
            # paired-bootstrap SD of model - case-type rate: how much the lift moves with the tickets a world drew
            "lift_sd": _gap_sd(y[labelled], probs[labelled], {"case": p_case}, seed=201)["case"],
            "escalation_reference": escalation_reference(full_dir, later[labelled], y[labelled]), **row_refresh}
