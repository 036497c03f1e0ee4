"""Return-volume forecast: rolling-origin backtest against baselines, training and registration, and the CLI
commands ``aftersales forecast``, ``aftersales staff`` and ``aftersales backtest return-volume``.

Backtest: origins six weeks (42 days) before each major holiday/event the history allows, then regular origins
every four weeks back from the end; at each origin the forecaster is refitted on data up to the origin only and
forecasts up to ``horizon`` days. Baselines in the same run: seasonal naive (7), the planners' method (same weekday
52 weeks back, scaled by the last 28 days over the same 28 days a year before) and statsforecast AutoETS (optional
``peers`` extra; skipped when not installed). Metrics (WAPE, MASE-7, bias, peak-day error and offset, scaled
pinball, 80% coverage) overall and on holiday windows (3 days before to 21 days after each major event).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import click
import numpy as np
import pandas as pd

from features.calendar import holiday_windows
from features.return_volume import (
    LY,
    QUANTILES,
    TOTAL,
    History,
    HistoryError,
    ReturnVolumeForecaster,
    required_days,
)
from features.settings import Settings, get_settings

MODEL_NAME = "return_volume"
EVENT_LEAD_DAYS = 42  # planners decide six weeks ahead
ORIGIN_STEP_DAYS = 28
MIN_EVAL_DAYS = 14  # an origin needs at least this many observed days after it
MODEL = "model"
SEASONAL_NAIVE = "seasonal_naive_7"
PLANNERS = "planners_last_year"
AUTO_ETS = "autoets"
POINT_ONLY = {SEASONAL_NAIVE, PLANNERS}

Forecasts = pd.DataFrame  # origin, date, series, method, p10, p50, p90, y


# --------------------------------------------------------------------------------------------------------------------
# Origins and baselines


def backtest_origins(history: History, n_origins: int, horizon: int, model: ReturnVolumeForecaster,
                     settings: Settings) -> pd.DataFrame:
    """Backtest origins: six weeks before each major event the history allows (latest first), then every four weeks
    back from the last full horizon; columns origin, kind ('event'|'rolling'), event."""
    days = history.days
    first_ok = days[0] + pd.Timedelta(days=required_days(horizon, model.min_calibration_days) - 1)
    last_ok = days[-1] - pd.Timedelta(days=MIN_EVAL_DAYS)
    if first_ok > last_ok:
        need = required_days(horizon, model.min_calibration_days) + MIN_EVAL_DAYS
        raise HistoryError(f"{len(days)} days of data, but a {horizon}-day backtest needs at least {need} "
                           f"({need - MIN_EVAL_DAYS} before the first origin and {MIN_EVAL_DAYS} after it): "
                           "use more data or a shorter --horizon")
    hw = holiday_windows(history.market, days[0], days[-1], settings)
    rows = []
    for _, ev in hw.sort_values("event_date", ascending=False).iterrows():
        o = ev["event_date"] - pd.Timedelta(days=EVENT_LEAD_DAYS)
        if first_ok <= o <= last_ok and not any(r["origin"] == o for r in rows):
            rows.append({"origin": o, "kind": "event", "event": ev["event"]})
    rows = rows[:n_origins]
    o = min(days[-1] - pd.Timedelta(days=horizon), last_ok)
    while len(rows) < n_origins and o >= first_ok:
        if all(abs((o - r["origin"]).days) >= 7 for r in rows):
            rows.append({"origin": o, "kind": "rolling", "event": ""})
        o -= pd.Timedelta(days=ORIGIN_STEP_DAYS)
    return pd.DataFrame(rows, columns=["origin", "kind", "event"]).sort_values("origin", ignore_index=True)


def seasonal_naive(y: pd.DataFrame, origin_idx: int, horizon: int) -> pd.DataFrame:
    """Same weekday of the last week before the origin, for each of the next ``horizon`` days (days x series)."""
    h = np.arange(1, horizon + 1)
    src = origin_idx + h - 7 * np.ceil(h / 7).astype(int)
    return pd.DataFrame(y.to_numpy()[src], columns=y.columns)


def planners_method(y: pd.DataFrame, origin_idx: int, horizon: int) -> pd.DataFrame | None:
    """Same weekday 52 weeks back, scaled by the last 28 days over the same 28 days a year before (None when the
    history is shorter than a year and four weeks)."""
    t = origin_idx
    if t - LY - 27 < 0:
        return None
    v = y.to_numpy(dtype=float)
    now = v[t - 27:t + 1].sum(axis=0)
    before = v[t - LY - 27:t - LY + 1].sum(axis=0)
    ratio = np.where(before > 0, now / np.where(before > 0, before, 1.0), np.nan)
    h = np.arange(1, horizon + 1)
    return pd.DataFrame(v[t + h - LY] * ratio, columns=y.columns)


def autoets(y: pd.DataFrame, origin_idx: int, horizon: int) -> pd.DataFrame | None:
    """statsforecast AutoETS (season 7) per series with its 80% interval; None when statsforecast is not installed.

    Returns long rows: series, h, p10, p50, p90.
    """
    try:
        from statsforecast import StatsForecast
        from statsforecast.models import AutoETS
    except ImportError:
        return None
    hist = y.iloc[:origin_idx + 1]
    long = hist.rename_axis("ds").reset_index().melt(id_vars="ds", var_name="unique_id", value_name="y")
    sf = StatsForecast(models=[AutoETS(season_length=7)], freq="D", n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fc = sf.forecast(df=long, h=horizon, level=[80])
    fc = fc.reset_index() if "unique_id" not in fc.columns else fc
    fc["h"] = fc.groupby("unique_id").cumcount() + 1
    return pd.DataFrame({
        "series": fc["unique_id"].astype(str), "h": fc["h"],
        "p10": fc["AutoETS-lo-80"].clip(lower=0), "p50": fc["AutoETS"].clip(lower=0),
        "p90": fc["AutoETS-hi-80"].clip(lower=0),
    })


def _baseline_rows(method: str, frame: pd.DataFrame, dates: pd.DatetimeIndex) -> pd.DataFrame:
    long = frame.set_axis(dates[:len(frame)]).rename_axis("date").reset_index().melt(
        id_vars="date", var_name="series", value_name="p50")
    long["p10"] = long["p50"]
    long["p90"] = long["p50"]
    long["method"] = method
    return long


# --------------------------------------------------------------------------------------------------------------------
# Metrics


def _pinball(y: np.ndarray, q: np.ndarray, tau: float) -> np.ndarray:
    d = y - q
    return np.maximum(tau * d, (tau - 1) * d)


def metrics_for(df: pd.DataFrame, mase_scale: pd.Series) -> dict[str, float]:
    """Metrics of one method on rows (origin, date, y, p10, p50, p90) of one series."""
    if df.empty:
        return {}
    y, p = df["y"].to_numpy(float), df["p50"].to_numpy(float)
    e = p - y
    sum_y = max(float(y.sum()), 1e-9)
    scale = df["origin"].map(mase_scale).to_numpy(float)
    pin = np.mean([_pinball(y, df[c].to_numpy(float), tau).sum() for c, tau in zip(("p10", "p50", "p90"),
                                                                                     QUANTILES, strict=True)])
    peaks = []
    for _, g in df.groupby(["origin", "window"] if "window" in df.columns else ["origin"]):
        if len(g) < 3 or g["y"].max() <= 0:
            continue
        iy, ip = int(np.argmax(g["y"].to_numpy())), int(np.argmax(g["p50"].to_numpy()))
        peaks.append(((g["p50"].max() - g["y"].max()) / g["y"].max(),
                      (g["date"].iloc[ip] - g["date"].iloc[iy]).days))
    peaks_a = np.array(peaks) if peaks else np.full((1, 2), np.nan)
    point_only = (df["p10"] == df["p50"]).all() and (df["p90"] == df["p50"]).all()
    return {
        "wape": float(np.abs(e).sum() / sum_y),
        "mase": float(np.nanmean(np.abs(e) / scale)),
        "bias": float(e.sum() / sum_y),
        "peak_error": float(np.nanmean(np.abs(peaks_a[:, 0]))),
        "peak_offset_days": float(np.nanmean(np.abs(peaks_a[:, 1]))),
        "pinball": float(pin / sum_y),
        "coverage80": float("nan") if point_only else float(((y >= df["p10"]) & (y <= df["p90"])).mean()),
        "days": int(len(df)),
    }


def _windows_of(dates: pd.Series, hw: pd.DataFrame) -> pd.Series:
    """The holiday window (event name and year) each date falls in, or '' outside every window."""
    out = pd.Series("", index=dates.index, dtype=object)
    for _, w in hw.iterrows():
        inside = (dates >= w["window_start"]) & (dates <= w["window_end"]) & (out == "")
        out[inside] = f"{w['event']}@{w['event_date'].date()}"
    return out


def metrics_table(fc: Forecasts, history: History, hw: pd.DataFrame, series: str = TOTAL) -> pd.DataFrame:
    """Metrics per method on ``series``, over all backtest days and on holiday-window days, computed on the days
    where every method has a forecast (so the comparison is like for like)."""
    df = fc[fc["series"] == series].copy()
    methods = sorted(df["method"].unique(), key=lambda m: (m != MODEL, m))
    common = df.groupby(["origin", "date"])["method"].nunique() == len(methods)
    keys = common[common].index
    df = df.set_index(["origin", "date"]).loc[lambda d: d.index.isin(keys)].reset_index()
    df["window"] = _windows_of(df["date"], hw)
    y = history.y[series]
    mase_scale = {}
    for o in df["origin"].unique():
        past = y.loc[:o].to_numpy(float)
        mase_scale[o] = max(float(np.mean(np.abs(past[7:] - past[:-7]))), 1e-9)
    mase_scale = pd.Series(mase_scale)
    rows = []
    for m in methods:
        sub = df[df["method"] == m]
        for slice_name, part in (("all", sub.drop(columns="window")), ("holiday", sub[sub["window"] != ""])):
            rows.append({"method": m, "slice": slice_name, **metrics_for(part, mase_scale)})
    return pd.DataFrame(rows)


def series_table(fc: Forecasts, hw: pd.DataFrame) -> pd.DataFrame:
    """WAPE and coverage per series and method on holiday windows and overall (common days only)."""
    fc = fc.copy()
    fc["holiday"] = _windows_of(fc["date"], hw) != ""
    # Like for like within each series: the days where every method that forecast this series has a forecast.
    n_methods = fc.groupby("series")["method"].transform("nunique")
    common = fc.groupby(["origin", "date", "series"])["method"].transform("nunique") == n_methods
    fc = fc[common]
    rows = []
    for (s, m), g in fc.groupby(["series", "method"]):
        h = g[g["holiday"]]
        cov = ((g["y"] >= g["p10"]) & (g["y"] <= g["p90"])).mean() if m not in POINT_ONLY else np.nan
        rows.append({"series": s, "method": m, "wape": (g["y"] - g["p50"]).abs().sum() / max(g["y"].sum(), 1e-9),
                     "holiday_wape": (h["y"] - h["p50"]).abs().sum() / max(h["y"].sum(), 1e-9) if len(h) else np.nan,
                     "coverage80": cov})
    return pd.DataFrame(rows).pivot(index="series", columns="method")


# --------------------------------------------------------------------------------------------------------------------
# Backtest


@dataclass
class BacktestResult:
    """Everything one backtest produced."""

    origins: pd.DataFrame
    forecasts: Forecasts
    table: pd.DataFrame  # metrics on 'total' per method and slice
    by_series: pd.DataFrame
    holiday_windows: pd.DataFrame
    seconds: float
    notes: list[str]

    def headline(self) -> dict[str, float]:
        """The figures the issue targets: holiday WAPE of each method, its ratio to the model's, coverage."""
        t = self.table.set_index(["method", "slice"])
        out = {}
        for m in t.index.get_level_values(0).unique():
            for sl in ("all", "holiday"):
                for k in ("wape", "coverage80", "mase", "bias", "pinball", "peak_error", "peak_offset_days"):
                    if (m, sl) in t.index:
                        out[f"{m}.{sl}.{k}"] = float(t.loc[(m, sl), k])
        return out


def run_backtest(history: History, n_origins: int = 10, horizon: int = 60, settings: Settings | None = None,
                 model_params: dict | None = None, peers: bool = True, peer_series: str = TOTAL,
                 progress: bool = True) -> BacktestResult:
    """Rolling-origin backtest: refit the forecaster at every origin on data up to it, and run the baselines.

    ``peer_series``: 'total' (default: AutoETS costs ~0.25 s per series and origin) or 'all'.
    """
    settings = settings or get_settings()
    t0 = time.perf_counter()
    params = {"horizon": horizon, "market": history.market, "summer_sale": settings.summer_sale,
              "summer_sale_days": settings.summer_sale_days, **(model_params or {})}
    proto = ReturnVolumeForecaster(**params)
    origins = backtest_origins(history, n_origins, horizon, proto, settings)
    notes: list[str] = []
    days = history.days
    parts = []
    with click.progressbar(list(origins.itertuples()), label="backtest origins", show_pos=True,
                           file=None if progress else open("/dev/null", "w")) as bar:  # noqa: SIM115
        for row in bar:
            o = row.origin
            t = int(days.get_loc(o))
            h_eval = min(horizon, len(days) - 1 - t)
            dates = days[t + 1:t + 1 + h_eval]
            model = ReturnVolumeForecaster(**params).fit(history, o)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # events without a previous instance: expected early in the data
                fc = model.forecast(history, o, h_eval)
            fc["method"] = MODEL
            parts.append(fc.assign(origin=o))
            y = history.y
            parts.append(_baseline_rows(SEASONAL_NAIVE, seasonal_naive(y, t, h_eval), dates).assign(origin=o))
            pl = planners_method(y, t, h_eval)
            if pl is not None:
                parts.append(_baseline_rows(PLANNERS, pl, dates).assign(origin=o))
            if peers:
                ets = autoets(y if peer_series == "all" else y[[TOTAL]], t, h_eval)
                if ets is None:
                    notes.append("statsforecast not installed: AutoETS peer skipped (pip install '.[peers]')")
                    peers = False
                else:
                    ets["date"] = dates[ets["h"].to_numpy() - 1]
                    parts.append(ets.drop(columns="h").assign(method=AUTO_ETS, origin=o))
    fc = pd.concat(parts, ignore_index=True)
    actual = history.y.rename_axis("date").reset_index().melt(id_vars="date", var_name="series", value_name="y")
    fc = fc.merge(actual, on=["date", "series"], how="inner").dropna(subset=["p50"])
    hw = holiday_windows(history.market, days[0], days[-1] + pd.Timedelta(days=horizon), settings)
    if PLANNERS not in set(fc["method"]):
        notes.append(f"planners' method skipped: it needs {LY + 28} days of history before an origin")
    elif fc.groupby("origin")["method"].nunique().nunique() > 1:
        missing = sorted({str(o.date()) for o, g in fc.groupby("origin") if PLANNERS not in set(g["method"])})
        notes.append(f"planners' method needs {LY + 28} days before an origin: origins {', '.join(missing)} are "
                     "left out of the like-for-like table")
    table = metrics_table(fc, history, hw)
    return BacktestResult(origins, fc, table, series_table(fc, hw), hw, time.perf_counter() - t0, notes)


def format_table(table: pd.DataFrame) -> str:
    """The metrics table as fixed-width text."""
    t = table.copy()
    for c in ("wape", "bias", "peak_error", "pinball", "coverage80"):
        t[c] = t[c].map(lambda v: "" if pd.isna(v) else f"{100 * v:.1f}%")
    for c in ("mase", "peak_offset_days"):
        t[c] = t[c].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    return t.to_string(index=False)


def target_lines(result: BacktestResult) -> list[str]:
    """The issue's targets, evaluated and printed (not asserted)."""
    t = result.table.set_index(["method", "slice"])
    lines = []
    if (MODEL, "holiday") not in t.index:
        return ["no holiday-window days in the backtest: targets not evaluated"]
    mw = t.loc[(MODEL, "holiday"), "wape"]
    if (PLANNERS, "holiday") in t.index:
        pw = t.loc[(PLANNERS, "holiday"), "wape"]
        gain = 1 - mw / pw
        lines.append(f"holiday WAPE {100 * mw:.1f}% vs planners' {100 * pw:.1f}%: {100 * gain:.0f}% lower "
                     f"(target >= 25%): {'MET' if gain >= 0.25 else 'NOT MET'}")
    if (AUTO_ETS, "holiday") in t.index:
        ew = t.loc[(AUTO_ETS, "holiday"), "wape"]
        lines.append(f"holiday WAPE {100 * mw:.1f}% vs best peer (AutoETS) {100 * ew:.1f}%: "
                     f"{'MET' if mw < ew else 'NOT MET'}")
    cov = t.loc[(MODEL, "all"), "coverage80"]
    lines.append(f"80% interval coverage {100 * cov:.1f}% (target 72-88%): {'MET' if 0.72 <= cov <= 0.88 else 'NOT MET'}")
    return lines
