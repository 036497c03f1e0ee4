"""The plots and tables people read: one implementation each, shared by ``aftersales report`` and the notebooks.

Each model has a *view*: what its section shows, computed from a data folder on the held-out design its training
module uses (so every figure here is measured on later time than the model learnt from), plus the current
operational output (forecast and staffing plan, review queue, merchant ranking, triage policy mix):

- :func:`return_volume_view`: rolling-origin backtest against the baselines (``backtest``, the settings
  ``train`` uses), then a forecast from the data's last day long enough to reach the next major event, and the
  staffing plan for that event's window (features/staffing.py).
- :func:`serial_returners_view`: fit as of T1, score as of T2 against the truth (``evaluate_on_truth``), or the
  forward check on data without truth; the review queue as of the last day with reasons.
- :func:`merchant_risk_view`: the snapshot backtest against the baselines, the lift by decile, the ranking as of the
  last day with reasons.
- :func:`ticket_triage_view`: the time-split evaluation (calibration, slices), the policy mix on the later tickets,
  score_one / score_batch latency.

The operational outputs use the registered champion when ``use="auto"`` finds one that fits (see each view), else a
model fitted on the data up to its last day, the way the CLI commands do. Figure and table builders take a view and
return a matplotlib figure or a DataFrame; :func:`sections` lists them in report order with captions.
Nothing here logs to MLflow or writes to the registry.
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.contract import Dataset, load_dataset
from features.settings import Settings

Echo = Callable[[str], None]
NOTEBOOK_DATA_ENV = "AFTERSALES_NOTEBOOK_DATA"
SMALL_WORLD = dict(seed=7, accounts=1500, merchants=50, start="2023-05-01", days=540, market="CN")
QUEUE_HEAD = 20
RANKING_HEAD = 20


def _quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------------------------------------------------
# Data


def small_world(path: Path | str, echo: Echo = _quiet) -> Path:
    """A small synthetic world (1,500 accounts, 50 merchants, 540 days ending three weeks before 11.11) at ``path``,
    generated once: what the notebooks run on when no data folder is given."""
    from features.synthetic import generate_world

    path = Path(path)
    if not (path / "orders.parquet").exists():
        echo(f"generating a small synthetic world in {path}")
        generate_world(path, progress=False, **SMALL_WORLD)
    return path


def notebook_data(default: Path | str | None = None) -> Path:
    """The data folder a notebook reads: ``$AFTERSALES_NOTEBOOK_DATA``, else ``default``, else a small generated
    world in ``data/notebook-small`` (created on first use)."""
    from features.settings import PROJECT_ROOT

    chosen = os.environ.get(NOTEBOOK_DATA_ENV) or default
    if chosen:
        path = Path(chosen)
        if not path.is_dir():
            raise FileNotFoundError(f"data folder {path} not found: set {NOTEBOOK_DATA_ENV} to a folder made by "
                                    "`aftersales generate --out DIR` or `aftersales import-online-retail`")
        return path
    return small_world(PROJECT_ROOT / "data" / "notebook-small")


def load(data_dir: Path | str, rejects_dir: Path | str | None = None, echo: Echo = _quiet) -> Dataset:
    """Load and validate every table of ``data_dir``; rejected rows go to ``rejects_dir/rejects.csv`` (default: a
    folder under the system temp dir) and their count is reported."""
    ds = load_dataset(data_dir)
    rejects_dir = Path(rejects_dir or Path(tempfile.gettempdir()) / "aftersales-views" / Path(data_dir).name)
    path = ds.write_rejects(rejects_dir)
    echo(f"{ds.n_rejected:,} rows rejected by the input contract (details in {path})")
    return ds


def _lap(t0: float) -> str:
    return f"{time.perf_counter() - t0:.1f}s"


# --------------------------------------------------------------------------------------------------------------------
# Return volume


@dataclass
class ReturnVolumeView:
    """Backtest, forecast from the last day, and the staffing plan for the next major event."""

    history: Any  # features.return_volume.History
    backtest: Any  # training.return_volume.BacktestResult
    events: pd.DataFrame  # major events with their windows, history start to forecast end
    forecast: pd.DataFrame  # date, series, p10, p50, p90
    origin: pd.Timestamp
    horizon: int
    next_event: dict | None  # event, event_date, window_start, window_end of the next major event, if any
    plan: pd.DataFrame  # staffing plan over the forecast (date, channel, volume_p50/p90, agents_p50/p90)
    plan_window: pd.DataFrame  # the plan restricted to the next event's window (or the whole forecast)
    notes: list[str] = field(default_factory=list)


def _event_horizon(history, end: pd.Timestamp, horizon: int, settings: Settings) -> tuple[int, dict | None, str]:
    """The forecast horizon that reaches the end of the next major event's window, if the history allows it."""
    from features.calendar import holiday_windows
    from features.forecast_ensemble import HolidayForecaster
    from features.return_volume import HistoryError, check_history
    from training.return_volume import model_params

    ahead = holiday_windows(history.market, end + pd.Timedelta(days=1), end + pd.Timedelta(days=400), settings)
    if ahead.empty:
        return horizon, None, f"no major event of market {history.market} in the year after the data"
    ev = ahead.iloc[0].to_dict()
    need = int((ev["window_end"] - end).days)
    if need <= horizon:
        return horizon, ev, ""
    proto = HolidayForecaster.from_params(**model_params(settings, history.market, need))
    try:
        check_history(history, end, need, proto.min_calibration_days, settings)
    except HistoryError as e:
        return horizon, ev, (f"the next major event ({ev['event']} on {ev['event_date'].date()}) ends its window "
                             f"{need} days after the data; the history does not support that horizon ({e}); the "
                             f"plan covers the {horizon} days after the data instead")
    return need, ev, ""


def return_volume_view(ds: Dataset, settings: Settings, market: str | None = None, progress: bool = False,
                       echo: Echo = _quiet) -> ReturnVolumeView:
    """Backtest as ``aftersales train return-volume`` does (settings' horizon, origins, peers), then forecast from
    the last day (horizon extended to the next major event's window when the history allows) and staff it."""
    from features.calendar import holiday_windows
    from features.forecast_ensemble import HolidayForecaster
    from features.market import market_warning, resolve_market
    from features.return_volume import build_history
    from features.staffing import load_staffing_config, staffing_plan
    from training.return_volume import backtest, model_params

    market, _ = resolve_market(market, settings, getattr(ds, "source", None))
    history = build_history(ds, market)
    horizon = settings.return_volume_horizon
    t0 = time.perf_counter()
    echo(f"backtest: {settings.return_volume_backtest_origins} origins, {horizon}-day horizon")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bt = backtest(history, n_origins=settings.return_volume_backtest_origins, horizon=horizon,
                          settings=settings, model_params=model_params(settings, market, horizon),
                          peers=settings.return_volume_peers, progress=progress)
    echo(f"backtest done ({_lap(t0)})")
    end = history.days[-1]
    h, ev, note = _event_horizon(history, end, horizon, settings)
    notes = list(bt.notes) + ([note] if note else [])
    calendar_note = market_warning(history.y["total"], market, settings)
    if calendar_note:
        notes.append(calendar_note)
    if h > horizon:
        notes.append(f"the forecast reaches {h} days ahead to cover {ev['event']}'s window; the backtest above measured "
                     f"horizons up to {horizon} days (AFTERSALES_RETURN_VOLUME_HORIZON)")
    t0 = time.perf_counter()
    model = HolidayForecaster.from_params(**model_params(settings, market, h)).fit(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fc = model.forecast(history, end, h)
        plan = staffing_plan(fc, load_staffing_config())
    echo(f"forecast of {h} days from {end.date()} and staffing plan ({_lap(t0)})")
    if ev is not None and ev["window_start"] <= fc["date"].max():
        lo, hi = max(ev["window_start"], end + pd.Timedelta(days=1)), ev["window_end"]
        window = plan[(plan["date"] >= lo) & (plan["date"] <= hi)].reset_index(drop=True)
    else:
        window = plan
    events = holiday_windows(market, history.days[0], fc["date"].max(), settings)
    return ReturnVolumeView(history, bt, events, fc, end, h, ev, plan, window, notes)


def _shade_events(ax, events: pd.DataFrame, lo, hi) -> None:
    for k, (_, e) in enumerate(events[(events["window_end"] >= lo) & (events["event_date"] <= hi)].iterrows()):
        ax.axvspan(max(e["window_start"], lo), min(e["window_end"], hi), color="tab:red", alpha=0.07)
        ax.axvline(e["event_date"], color="tab:red", ls="--", lw=0.8)
        ax.text(e["event_date"], 0.98 - 0.06 * (k % 2), " " + e["event"], transform=ax.get_xaxis_transform(),
                fontsize=7, color="tab:red", va="top")


def history_figure(view: ReturnVolumeView, series: str = "total"):
    """Daily returns over the whole history with a 7-day mean; major events and their after-sales windows shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = view.history.y[series]
    fig, ax = plt.subplots(figsize=(11, 3.6))
    ax.plot(y.index, y.to_numpy(), color="0.6", lw=0.7, label="daily")
    ax.plot(y.index, y.rolling(7, min_periods=1).mean().to_numpy(), color="black", lw=1.2, label="7-day mean")
    _shade_events(ax, view.events, y.index[0], y.index[-1])
    ax.set(ylabel=f"{series} returns per day", title=f"Return history ({series}) with major events")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def backtest_figure(view: ReturnVolumeView, max_panels: int = 6):
    """The forecast fan at each backtest origin against the actuals and the baselines (training/return_volume.py)."""
    from training.return_volume import backtest_figure as rv_backtest_figure

    return rv_backtest_figure(view.backtest, view.history, max_panels=max_panels)


def backtest_table(view: ReturnVolumeView) -> pd.DataFrame:
    """Backtest metrics on the total series per method, overall and on holiday windows (percentages as text)."""
    t = view.backtest.table.copy()
    for c in ("wape", "bias", "peak_error", "pinball", "coverage80"):
        t[c] = t[c].map(lambda v: "" if pd.isna(v) else f"{100 * v:.1f}%")
    for c in ("mase", "peak_offset_days"):
        t[c] = t[c].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    t["days"] = t["days"].map(lambda v: "" if pd.isna(v) else f"{int(v)}")
    return t.rename(columns={"coverage80": "80% coverage", "peak_offset_days": "peak offset (days)"})


def backtest_targets(view: ReturnVolumeView) -> list[str]:
    """The forecast's targets, evaluated on the backtest, and the backtest's notes."""
    from training.return_volume import target_lines

    return target_lines(view.backtest) + view.notes


def forecast_figure(view: ReturnVolumeView, series: str = "total", days_before: int = 120):
    """The last months of history and the forecast from the last day: P50 with the P10-P90 fan, events shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = view.history.y[series]
    past = y.loc[view.origin - pd.Timedelta(days=days_before):]
    fc = view.forecast[view.forecast["series"] == series].sort_values("date")
    fig, ax = plt.subplots(figsize=(11, 3.6))
    ax.plot(past.index, past.to_numpy(), color="black", lw=1.0, label="actual")
    ax.fill_between(fc["date"], fc["p10"], fc["p90"], color="tab:blue", alpha=0.25, label="P10-P90")
    ax.plot(fc["date"], fc["p50"], color="tab:blue", lw=1.4, label="P50")
    ax.axvline(view.origin, color="grey", lw=0.8)
    _shade_events(ax, view.events, past.index[0], fc["date"].max())
    ax.set(ylabel=f"{series} returns per day",
           title=f"Forecast from {view.origin.date()} ({view.horizon} days, {series})")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def staffing_table(view: ReturnVolumeView) -> pd.DataFrame:
    """Agents per day for the next event's window: one column per channel at P50, and the totals at P50 and P90."""
    w = view.plan_window
    if w.empty:
        return pd.DataFrame()
    p50 = w.pivot(index="date", columns="channel", values="agents_p50")
    p50 = p50[[c for c in w["channel"].unique()]]
    out = p50.add_prefix("agents P50 ")
    out["agents P50 total"] = p50.sum(axis=1)
    out["agents P90 total"] = w.groupby("date")["agents_p90"].sum()
    out["contacts P50"] = w.groupby("date")["volume_p50"].sum().round(0)
    out["contacts P90"] = w.groupby("date")["volume_p90"].sum().round(0)
    out.index = pd.DatetimeIndex(out.index).strftime("%Y-%m-%d (%a)")
    return out.reset_index(names="date")


def staffing_figure(view: ReturnVolumeView):
    """Agents to roster per day for the next event's window: stacked P50 by channel, the P90 total as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = view.plan_window
    p50 = w.pivot(index="date", columns="channel", values="agents_p50")
    p50 = p50[[c for c in w["channel"].unique()]]
    p90 = w.groupby("date")["agents_p90"].sum()
    fig, ax = plt.subplots(figsize=(11, 3.8))
    bottom = np.zeros(len(p50))
    for c in p50.columns:
        ax.bar(p50.index, p50[c].to_numpy(), bottom=bottom, width=0.85, label=f"{c} (P50)")
        bottom += p50[c].to_numpy()
    ax.plot(p90.index, p90.to_numpy(), color="black", marker=".", lw=1.0, label="all channels at P90")
    ev = view.next_event
    if ev is not None and p50.index[0] <= ev["event_date"] <= p50.index[-1]:
        ax.axvline(ev["event_date"], color="tab:red", ls="--", lw=0.8)
    what = (f"{ev['event']} window ({ev['window_start'].date()} to {ev['window_end'].date()})"
            if ev is not None and w is not view.plan else f"the {view.horizon} days after {view.origin.date()}")
    ax.set(ylabel="agents to roster", title=f"Staffing plan for {what}")
    ax.legend(loc="upper left", fontsize=7, ncol=3)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------------------------
# Serial returners


@dataclass
class SerialReturnersView:
    """Held-out evaluation (or the forward check without truth) and the review queue as of the last day."""

    evaluation: Any | None  # training.serial_returners.Evaluation (ground truth)
    forward: dict | None  # training.serial_returners.evaluate_forward result (no ground truth)
    capacity: int
    queue: pd.DataFrame
    queue_model: str  # which model built the queue
    as_of: pd.Timestamp
    accounts: pd.DataFrame  # every account's abuse_score as of the last day (for the triage policy mix)
    notes: list[str] = field(default_factory=list)


def serial_returners_view(ds: Dataset, data_dir: Path | str, settings: Settings, use: str = "auto",
                          evaluate: bool = True, echo: Echo = _quiet) -> SerialReturnersView:
    """Evaluate on later time (``evaluate_on_truth`` with the training split, or ``evaluate_forward``), then the
    review queue as of the last day: the champion when it was trained on this data up to that day (``use='auto'``),
    else a model fitted as of that day on the review decisions known then."""
    from features.accounts import review_queue, score_snapshot
    from training import serial_returners as sr

    data_dir = Path(data_dir)
    capacity = settings.review_capacity
    ev = fw = None
    notes: list[str] = []
    if evaluate:
        t0 = time.perf_counter()
        truth = sr._truth(data_dir)
        if truth is not None:
            t1, t2 = sr.default_split(ds, settings)
            ev = sr.evaluate_on_truth(ds, truth, t1, t2, settings, capacity, feedback=False)
            echo(f"evaluated: fitted as of {t1.date()}, scored as of {t2.date()} ({_lap(t0)})")
        else:
            first, last = ds.time_span()
            t1 = max(last - pd.Timedelta(days=sr.FORWARD_HORIZON_DAYS), first + (last - first) / 2).normalize()
            fw = sr.evaluate_forward(ds, t1, settings, top=capacity)
            notes.append(f"no ground truth in {data_dir}: forward check (top {capacity} flagged as of {fw['t1']}, "
                         f"heavy returners = {fw['heavy_threshold']:.0f}+ returns up to {fw['window_end']})")
            echo(f"forward check from {fw['t1']} ({_lap(t0)})")
    t0 = time.perf_counter()
    day = ds.time_span()[1].normalize()
    X = sr.features_as_of(ds, day, settings)
    lines: list[str] = []
    champion = use == "auto" and _has_champion(sr.MODEL_NAME, settings)
    model = sr._choose_model(ds, X, day, data_dir, settings, "auto" if champion else "fit", lines.append)
    labels = sr.load_labels(ds, settings, day)
    exclude = sr.excluded_accounts(labels, day, settings.serial_review_cooldown_days)
    scores = model.predict(X)
    queue = review_queue(X, model, capacity, exclude=exclude, scores=scores,
                         pattern_share=settings.serial_pattern_share, explore_share=settings.serial_explore_share)
    accounts = score_snapshot(X, model, scores=scores)
    echo(f"review queue of {len(queue)} as of {day.date()} ({_lap(t0)})")
    return SerialReturnersView(ev, fw, capacity, queue, "; ".join(lines), day, accounts, notes)


def serial_metrics_table(view: SerialReturnersView) -> pd.DataFrame:
    """Per method: PR-AUC, precision at capacity, recall at 1% FPR and recall per pattern at capacity (held out);
    without truth, the forward check's table."""
    from features.accounts import PATTERNS

    if view.evaluation is None:
        return view.forward["table"].reset_index().round(3) if view.forward else pd.DataFrame()
    cols = ["pr_auc", "precision_at_capacity", "recall_at_1pct_fpr", *[f"recall_{p}_at_capacity" for p in PATTERNS]]
    return view.evaluation.metrics[cols].round(3).reset_index()


def serial_targets(view: SerialReturnersView) -> list[str]:
    """The detector's targets with PASS/FAIL (ground truth only)."""
    from training.serial_returners import target_lines

    return (target_lines(view.evaluation) if view.evaluation is not None else []) + view.notes


def serial_figures(view: SerialReturnersView):
    """(precision-recall curve, precision against the number of accounts reviewed) for every method, held out."""
    from training.serial_returners import evaluation_figures

    if view.evaluation is None:
        return None, None
    return evaluation_figures(view.evaluation.curves, view.capacity)


def pattern_figure(view: SerialReturnersView):
    """Left: recall per abuse pattern at capacity, per method (held out). Right: the current queue by likely pattern."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from features.accounts import PATTERNS

    fig, (ax, qx) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    if view.evaluation is not None:
        m = view.evaluation.metrics
        width = 0.8 / len(m)
        for i, (method, row) in enumerate(m.iterrows()):
            vals = [row[f"recall_{p}_at_capacity"] for p in PATTERNS]
            ax.bar(np.arange(len(PATTERNS)) + i * width, vals, width, label=method)
        ax.set_xticks(np.arange(len(PATTERNS)) + 0.4 - width / 2, PATTERNS, fontsize=8)
        ax.set(ylabel=f"recall in the top {view.capacity}", ylim=(0, 1),
               title="Abusers found per pattern (later time)")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no ground truth: recall per pattern not measurable", ha="center", va="center")
        ax.axis("off")
    counts = view.queue["likely_pattern"].value_counts()
    qx.barh(counts.index.astype(str), counts.to_numpy(), color="tab:purple")
    qx.invert_yaxis()
    qx.set(xlabel="accounts in the queue", title=f"Queue as of {view.as_of.date()} by likely pattern")
    fig.tight_layout()
    return fig


def queue_table(view: SerialReturnersView, head: int = QUEUE_HEAD) -> pd.DataFrame:
    """The head of the review queue: rank, account, score, likely pattern, why it was picked, the reasons."""
    cols = ["rank", "account_id", "score", "likely_pattern", "slot", "reasons"]
    return view.queue[cols].head(head).assign(score=lambda d: d["score"].round(3))


# --------------------------------------------------------------------------------------------------------------------
# Merchant risk


@dataclass
class MerchantRiskView:
    """Snapshot backtest, lift by decile and the ranking as of the last day."""

    evaluation: Any  # training.merchant_risk.Evaluation
    lift: pd.DataFrame
    ranking: pd.DataFrame
    ranking_model: str
    as_of: pd.Timestamp


def merchant_risk_view(ds: Dataset, settings: Settings, use: str = "auto", echo: Echo = _quiet) -> MerchantRiskView:
    """Backtest both models and the baselines on later snapshots (``evaluate``); rank every merchant as of the last
    day with the champion (``use='auto'`` and one is registered) or with the better model refitted on every
    matured snapshot, as training does."""
    from features.merchants import MerchantRiskModel, build_snapshots, prepare_events
    from training import merchant_risk as mr

    t0 = time.perf_counter()
    events = prepare_events(ds)
    bt = mr.evaluate(events, settings, echo=lambda s: echo(s.strip()))
    lift = mr.lift_table(bt.scored, list(mr.METHODS), settings.merchant_min_label_orders)
    echo(f"backtest done ({_lap(t0)})")
    t0 = time.perf_counter()
    model, which = None, ""
    if use == "auto" and _has_champion(mr.MODEL_NAME, settings):
        from training import registry

        loaded = registry.load_champion(mr.MODEL_NAME, settings=settings)
        model, which = loaded.model, f"registered champion {mr.MODEL_NAME} v{loaded.version}"
    if model is None:
        dates = mr.snapshot_dates(events, settings)
        model = MerchantRiskModel(kind=bt.chosen, use=bt.use, **mr.model_params(settings)).fit(
            build_snapshots(events, dates, settings.merchant_horizon_days))
        which = (f"{bt.chosen} fitted on all {len(dates)} matured snapshots, ranking by {bt.served} "
                 "(no champion used)")
    ranking = mr.rank_as_of(model, events, events.end, settings)
    echo(f"ranked {len(ranking)} merchants as of {events.end.date()} ({_lap(t0)})")
    return MerchantRiskView(bt, lift, ranking, which, events.end)


def merchant_metrics_table(view: MerchantRiskView) -> pd.DataFrame:
    """NDCG@20/@50, precision at the top decile and Spearman per method, averaged over the test snapshots."""
    return view.evaluation.summary.round(3).reset_index(names="method")


def merchant_targets(view: MerchantRiskView) -> list[str]:
    """The ranking's targets against the better baseline."""
    from training.merchant_risk import target_lines

    return target_lines(view.evaluation)


def lift_figure(view: MerchantRiskView):
    """Complaint rate of each score decile over the average, per method (training/merchant_risk.py)."""
    from training.merchant_risk import lift_figure as mr_lift_figure

    return mr_lift_figure(view.lift)


def ranking_table(view: MerchantRiskView, head: int = RANKING_HEAD) -> pd.DataFrame:
    """The riskiest merchants: rank, merchant, score, expected complaints, flag and reasons."""
    cols = [c for c in ("rank", "merchant_id", "score", "expected_complaints", "late_delivery_rate",
                        "complaint_rate_90d", "flag", "reasons") if c in view.ranking.columns]
    out = view.ranking[cols].head(head).copy()
    for c in ("score", "expected_complaints", "late_delivery_rate", "complaint_rate_90d"):
        if c in out:
            out[c] = out[c].astype(float).round(3)
    return out


def merchant_percentiles(view: MerchantRiskView) -> pd.DataFrame:
    """merchant_id and merchant_risk_percentile (1.0 = riskiest), as the serving snapshot holds them."""
    n = len(view.ranking)
    return pd.DataFrame({"merchant_id": view.ranking["merchant_id"].astype("string"),
                         "merchant_risk_percentile": 1.0 - (view.ranking["rank"].to_numpy() - 1) / max(n, 1)})


# --------------------------------------------------------------------------------------------------------------------
# Ticket triage


@dataclass
class TicketTriageView:
    """Time-split evaluation, the policy mix on the later tickets and the scoring latency."""

    evaluation: Any  # training.ticket_triage.Evaluation
    decisions: pd.DataFrame  # later tickets: case_type, escalation_probability, priority, action, escalated
    latency: dict[str, float]
    latency_n: int
    notes: list[str] = field(default_factory=list)


def ticket_triage_view(ds: Dataset, settings: Settings, accounts: pd.DataFrame | None = None,
                       merchants: pd.DataFrame | None = None, latency_n: int = 2000,
                       echo: Echo = _quiet) -> TicketTriageView:
    """Fit on earlier tickets, score the later ones (``evaluate``), apply the triage policy to them, time scoring.

    ``accounts`` (account_id, abuse_score) and ``merchants`` (merchant_id, merchant_risk_percentile): the current
    risk scores the policy reads, as serving holds them; without them every account and merchant counts as
    unknown (no risk review, no merchant bump) and a note says so.
    """
    from features.tickets import CalendarTable, build_training_features
    from features.triage_policy import decide_batch
    from training import ticket_triage as tt

    if not ds.has("tickets"):
        raise ValueError("no tickets table (tickets.parquet / tickets.csv): the escalation model learns from past "
                         "tickets; add the platform's ticket export")
    t0 = time.perf_counter()
    feats = build_training_features(ds, CalendarTable(settings.market, settings.summer_sale,
                                                      settings.summer_sale_days))
    ev = tt.evaluate(feats, settings, ds=ds, echo=_quiet)
    echo(f"evaluated on {len(ev.split.test):,} later tickets ({_lap(t0)})")
    meta = feats.meta.iloc[ev.split.test].reset_index(drop=True)
    p = ev.model.predict(feats.X.iloc[ev.split.test])
    notes = []

    def lookup(frame, key, col):
        if frame is None or frame.empty:
            notes.append(f"no {col} available: the policy treats every {key.split('_')[0]} as unknown")
            return None
        s = frame.assign(_k=frame[key].astype("string")).drop_duplicates("_k", keep="last").set_index("_k")[col]
        return pd.to_numeric(meta[key].astype("string").map(s), errors="coerce").to_numpy(float, na_value=np.nan)

    abuse = lookup(accounts, "account_id", "abuse_score")
    merch = lookup(merchants, "merchant_id", "merchant_risk_percentile")
    pol = decide_batch(p, abuse, None if merch is None else np.clip(merch, 0, 1), meta.get("amount"),
                       meta["case_type"], settings, reasons=False)
    decisions = pd.DataFrame({"ticket_id": meta["ticket_id"], "case_type": meta["case_type"],
                              "escalation_probability": p, "priority": pol["priority"], "action": pol["action"],
                              "escalated": meta["escalated"].astype(bool)})
    lat: dict[str, float] = {}
    if latency_n:
        t0 = time.perf_counter()
        lat = _latency(ev.model, ds, latency_n)
        echo(f"timed score_one and score_batch ({_lap(t0)})")
    return TicketTriageView(ev, decisions, lat, latency_n, notes)


def _latency(model, ds: Dataset, n: int) -> dict[str, float]:
    """score_one per call and score_batch for ``n`` tickets (``measure_latency`` on snapshots in a temp folder)."""
    from features.tickets import SNAPSHOT_FILES, data_end, feature_snapshots
    from training.ticket_triage import measure_latency

    with tempfile.TemporaryDirectory(prefix="aftersales-latency-") as tmp:
        for name, frame in feature_snapshots(ds, data_end(ds)).items():
            frame.to_parquet(Path(tmp) / SNAPSHOT_FILES[name], index=False)
        return measure_latency(model, ds, Path(tmp), n_calls=n, n_batch=n)


def triage_metrics_table(view: TicketTriageView) -> pd.DataFrame:
    """ROC-AUC, PR-AUC, Brier, log loss and ECE of the model, the uncalibrated booster and the case-type baseline."""
    m = view.evaluation.metrics
    rows = []
    for name, prefix in (("model (calibrated)", ""), ("booster before calibration", "uncalibrated_"),
                         ("case-type baseline", "baseline_")):
        rows.append({"method": name, **{k: round(m[f"{prefix}{k}"], 4)
                                        for k in ("roc_auc", "pr_auc", "brier", "log_loss", "ece")}})
    return pd.DataFrame(rows)


def triage_targets(view: TicketTriageView) -> list[str]:
    """The model's figures with the target verdict, and the policy notes."""
    from training.ticket_triage import target_lines

    return target_lines(view.evaluation.metrics) + view.notes


def calibration_figure(view: TicketTriageView):
    """Reliability diagram of the model and the case-type baseline over the histogram of predicted probabilities."""
    return view.evaluation.figure


def reliability_table(view: TicketTriageView) -> pd.DataFrame:
    """10 equal-count bins of predicted probability on the later tickets: predicted against observed."""
    return view.evaluation.reliability.round(4)


def slices_table(view: TicketTriageView) -> pd.DataFrame:
    """ROC-AUC of the model and the baseline on each case type, peak windows, guests, phone, tickets without order."""
    return view.evaluation.slices.round(4)


def policy_mix_table(view: TicketTriageView) -> pd.DataFrame:
    """Later tickets by priority and action, with their observed escalation rate."""
    from features.triage_policy import ACTIONS, PRIORITIES

    d = view.decisions
    mix = pd.crosstab(d["priority"], d["action"]).reindex(index=list(PRIORITIES), columns=list(ACTIONS),
                                                           fill_value=0)
    mix.columns.name = None
    mix["tickets"] = mix.sum(axis=1)
    mix["share"] = (mix["tickets"] / max(len(d), 1)).round(3)
    mix["observed escalation rate"] = d.groupby("priority")["escalated"].mean().reindex(mix.index).round(3)
    return mix.reset_index()


def policy_mix_figure(view: TicketTriageView):
    """Later tickets per priority, stacked by the action the policy suggests; observed escalation rate on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from features.triage_policy import ACTIONS, PRIORITIES

    d = view.decisions
    mix = pd.crosstab(d["priority"], d["action"]).reindex(index=list(PRIORITIES), columns=list(ACTIONS),
                                                           fill_value=0)
    rate = d.groupby("priority")["escalated"].mean().reindex(mix.index)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    bottom = np.zeros(len(mix))
    for a in mix.columns:
        ax.bar(mix.index, mix[a].to_numpy(), bottom=bottom, label=a)
        bottom += mix[a].to_numpy()
    for x, (total, r) in enumerate(zip(bottom, rate.to_numpy(), strict=True)):
        if total > 0 and not np.isnan(r):
            ax.text(x, total, f"{r:.0%} escalated", ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="later tickets", title=f"Triage policy on {len(d):,} later tickets")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def latency_table(view: TicketTriageView) -> pd.DataFrame:
    """In-process scoring time of the evaluated model (not the HTTP service; see README for that benchmark)."""
    lat = view.latency
    if not lat:
        return pd.DataFrame()
    n = view.latency_n
    return pd.DataFrame([
        {"what": f"score_one, one ticket (mean of {n:,} calls)", "time": f"{lat['score_one_us']:.0f} µs"},
        {"what": f"score_batch, {n:,} tickets with reasons", "time": f"{lat['score_batch_10k_s'] * 1e3:.0f} ms"},
        {"what": f"score_batch, {n:,} tickets without reasons",
         "time": f"{lat['score_batch_10k_no_reasons_s'] * 1e3:.0f} ms"},
    ])


# --------------------------------------------------------------------------------------------------------------------
# Blocks: what the report shows, in order, with the captions people read


@dataclass
class Plot:
    """A figure with its title and a plain-language caption saying how to read it."""

    title: str
    figure: Any
    caption: str


@dataclass
class Table:
    """A table with its title and caption."""

    title: str
    frame: pd.DataFrame
    caption: str


@dataclass
class Text:
    """Lines of text (targets, notes)."""

    title: str
    lines: list[str]


@dataclass
class Section:
    """One model's part of the report."""

    key: str
    title: str
    intro: str
    blocks: list = field(default_factory=list)
    error: str | None = None


def return_volume_blocks(view: ReturnVolumeView) -> list:
    """Return volume: history, backtest, forecast, staffing plan."""
    ev = view.next_event
    event_txt = (f"the next major event, {ev['event']} on {ev['event_date'].date()} (window {ev['window_start'].date()}"
                 f" to {ev['window_end'].date()})" if ev is not None and view.plan_window is not view.plan
                 else f"the {view.horizon} days after the data")
    blocks = [
        Plot("Return history", history_figure(view),
             "Grey: returns requested per day; black: their 7-day average. Red dashed lines mark major shopping "
             "events and holidays; the shaded band after each is its after-sales window (3 days before to 21 days "
             "after), when returns of the event's orders arrive."),
        Table("Backtest against the baselines", backtest_table(view),
              "Each row is a forecasting method replayed at past origins on data up to the origin only. WAPE: "
              "absolute error as a share of actual returns (lower is better); 'holiday' rows keep only days inside "
              "event windows. 80% coverage: share of days inside the P10-P90 band (about 80% is right). The "
              "planners' method is last year's same weekday scaled by recent growth."),
        Text("Targets", backtest_targets(view)),
        Plot("Backtest forecasts", backtest_figure(view),
             "One panel per backtest origin (grey vertical line). Black: what actually happened; blue band: the "
             "model's P10-P90 range, blue line its P50; dashed and dotted lines: the baselines. A good forecast keeps "
             "the black line inside the band and catches the peaks after events (red)."),
        Plot("Forecast", forecast_figure(view),
             f"The last four months of returns (black) and the forecast for the {view.horizon} days after the data "
             "ends: the blue line is the middle estimate (P50); on 8 days in 10 the actual should fall inside the "
             "band (P10-P90)."),
    ]
    if not view.plan_window.empty:
        blocks += [
            Plot("Staffing plan", staffing_figure(view),
                 f"Agents to roster per day for {event_txt}: bars stack the channels at the middle forecast (P50); "
                 "the black line is the total if every day comes in at P90 (a cautious plan). Chat and phone are "
                 "sized with Erlang C to answer on time; email and app work may wait a day (backlog)."),
            Table("Staffing plan by day", staffing_table(view),
                  "Agents per channel at P50, the totals at P50 and P90, and the contacts expected. Assumptions "
                  "(handle times, service levels, shrinkage) are in features/staffing.toml."),
        ]
    return blocks


def serial_returners_blocks(view: SerialReturnersView) -> list:
    """Serial returners: metrics, curves, patterns, the queue."""
    pr, cap = serial_figures(view)
    where = ("Measured on later time: the model was fitted at one date and scored six months later against the "
             "ground truth, next to a return-count rule and an IsolationForest on raw counts."
             if view.evaluation is not None else
             "No ground truth here: the check is forward-looking (how many flagged accounts are heavy returners "
             "in the next quarter).")
    blocks = [Table("Detector against the baselines", serial_metrics_table(view),
                    where + " PR-AUC summarises precision over all queue sizes (higher is better); precision at "
                    f"capacity is the share of real abusers among the top {view.capacity}, the team's review "
                    "capacity; recall per pattern is the share of each kind of abuser found there."),
              Text("Targets", serial_targets(view))]
    if pr is not None:
        blocks += [
            Plot("Precision against review capacity", cap,
                 "How many of the accounts reviewed are real abusers, as the queue grows. The dashed line is the "
                 f"team's capacity ({view.capacity}); a curve higher at that line wastes fewer reviews."),
            Plot("Precision and recall", pr,
                 "Each curve trades finding more abusers (recall, right) against fewer wasted reviews (precision, "
                 "up); curves further up and right are better."),
        ]
    blocks += [
        Plot("Abuse patterns", pattern_figure(view),
             "Left: for each kind of abuse, the share of its abusers each method puts in the top of the queue "
             "(later time). Right: the current queue by the pattern each account most resembles; some slots are "
             "reserved per pattern so no kind of abuse goes unreviewed."),
        Table("Review queue (head)", queue_table(view),
              f"The first {min(QUEUE_HEAD, len(view.queue))} of {len(view.queue)} accounts to review as of "
              f"{view.as_of.date()} ({view.queue_model}). Reasons compare the account with typical accounts; "
              "slot says why it is in the queue (top score, pattern coverage, or an exploration sample that "
              "checks the boundary)."),
    ]
    return blocks


def merchant_risk_blocks(view: MerchantRiskView) -> list:
    """Merchant risk: metrics, lift, ranking."""
    return [
        Table("Ranking quality against the baselines", merchant_metrics_table(view),
              "Measured on later snapshots than the models trained on. NDCG@50: how well the top 50 is ordered by "
              "the complaints merchants really drew in the next 60 days (1 = perfect); precision at decile: share "
              "of the top 10% that really are in the worst 10%. Baselines rank by last period's complaint rate or "
              "count."),
        Text("Targets", merchant_targets(view)),
        Plot("Lift by score decile", lift_figure(view),
             "Merchants split into ten equal groups by score (10 = riskiest); the height is that group's actual "
             "complaint rate over the average. A steeper rise to the right means the ranking separates risky "
             "merchants better; 1 is no better than chance."),
        Table("Merchant ranking (head)", ranking_table(view),
              f"The riskiest merchants as of {view.as_of.date()} ({view.ranking_model}), with the signals behind "
              "each score. Flags mark merchants without recent orders or too new to judge."),
    ]


def ticket_triage_blocks(view: TicketTriageView) -> list:
    """Ticket triage: metrics, calibration, slices, policy mix, latency."""
    blocks = [
        Table("Escalation model against the baseline", triage_metrics_table(view),
              "Fitted on earlier tickets, measured on later ones. ROC-AUC: how well escalating tickets are ranked "
              "above the rest (0.5 = chance); Brier and ECE: how close predicted probabilities are to what "
              "happened (lower is better). The baseline gives every ticket its case type's escalation rate."),
        Text("Figures and targets", triage_targets(view)),
        Plot("Calibration", calibration_figure(view),
             "Top: tickets grouped by predicted escalation probability; a point on the dotted diagonal means "
             "'of the tickets given 30%, 30% escalated'. Bottom: how many later tickets got each probability."),
        Table("Reliability", reliability_table(view),
              "The calibration plot's points: ten equal-sized groups of later tickets, predicted against observed."),
        Table("Slices", slices_table(view),
              "The same measures on groups that matter: each case type, event peaks, guests, phone contacts and "
              "tickets without an order."),
        Plot("Policy mix", policy_mix_figure(view),
             "What the triage policy would do with the later tickets: bars count tickets per priority, split by "
             "the suggested action; the label is the share of them that really escalated (P1 should be highest). "
             "Thresholds are business settings (AFTERSALES_P1_ESCALATION ...)."),
        Table("Policy mix by priority and action", policy_mix_table(view),
              "Ticket counts per priority and action, each priority's share of tickets and its observed "
              "escalation rate."),
    ]
    lat = latency_table(view)
    if not lat.empty:
        blocks.append(Table("Scoring latency", lat,
                            "Time to score tickets inside this process (one core, no HTTP). The service's own "
                            "latency is measured by benchmarks/bench_serving.py (see README)."))
    return blocks


_NO_MODELS = pd.DataFrame(columns=["name", "version", "aliases", "created", "primary_metric", "value", "run_id"])


def registered_models(settings: Settings) -> pd.DataFrame:
    """The registry's model versions (``registry.list_models``); empty when there is no registry or it cannot be
    reached (the report then computes everything from the data and says so)."""
    from training import registry

    db = registry._local_path(settings.tracking_uri)
    if settings.tracking_uri.startswith("sqlite:") and db is not None and not db.exists():
        return _NO_MODELS.copy()  # no local registry: answer without importing mlflow (seconds)
    try:
        return registry.list_models(settings)
    except Exception as e:  # noqa: BLE001 — an unreachable tracking server must not stop a report built from data
        warnings.warn(f"model registry at {settings.tracking_uri} not readable ({e}): champions not used",
                      stacklevel=2)
        return _NO_MODELS.copy()


def _has_champion(name: str, settings: Settings) -> bool:
    from training import registry

    models = registered_models(settings)
    if models.empty:
        return False
    rows = models[models["name"] == name]
    return bool(rows["aliases"].str.split(",").map(lambda a: registry.CHAMPION in a).any())


# --------------------------------------------------------------------------------------------------------------------
# Display helpers (notebooks) and PNG encoding (report)


def png(fig, dpi: int = 96, close: bool = True) -> bytes:
    """The figure as PNG bytes (closed afterwards, so building many figures holds no memory)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    if close:
        plt.close(fig)
    return buf.getvalue()


def png_base64(fig, dpi: int = 96) -> str:
    """The figure as a base64 PNG for an inline ``data:`` URI."""
    return base64.b64encode(png(fig, dpi)).decode("ascii")


def show(item):
    """Display a figure (as the PNG the report embeds), a block, or a list of blocks in a notebook."""
    from IPython.display import HTML, Image, Markdown, display

    if item is None:
        return None
    if isinstance(item, list):
        for b in item:
            show(b)
        return None
    if isinstance(item, Plot):
        display(Markdown(f"**{item.title}** — {item.caption}"))
        return show(item.figure)
    if isinstance(item, Table):
        display(Markdown(f"**{item.title}** — {item.caption}"))
        display(item.frame)
        return None
    if isinstance(item, Text):
        display(Markdown(f"**{item.title}**\n\n" + "\n".join(f"- {line}" for line in item.lines)))
        return None
    if isinstance(item, pd.DataFrame):
        display(item)
        return None
    if hasattr(item, "savefig"):
        display(Image(data=png(item)))
        return None
    display(HTML(str(item)))
    return None
