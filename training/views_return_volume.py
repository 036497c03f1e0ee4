"""The return-volume view (training/views.py): rolling-origin backtest against the baselines, a forecast reaching the
next major event and its staffing plan; figures, tables and the report's blocks."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.contract import Dataset
from features.settings import Settings
from training.views_common import Echo, Plot, Table, Text, _lap, _quiet


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
