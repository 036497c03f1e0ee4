"""The return-volume rolling-origin backtest: its origins (six weeks before each major event, then every four weeks
back), the baselines (seasonal naive, the simple planners' method, statsforecast AutoETS), the metrics per method
and slice, and :func:`backtest` itself (the forecaster refitted at every origin, with its components reported as
methods of their own). Re-exported by :mod:`training.return_volume` (training, the gate, the card and the CLI)."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import click
import numpy as np
import pandas as pd

from features import forecast_ensemble as ens
from features.calendar import holiday_windows
from features.forecast_ensemble import HolidayForecaster
from features.return_volume import (
    LY,
    QUANTILES,
    TOTAL,
    History,
    HistoryError,
    ReturnVolumeForecaster,
    check_history,
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
LIGHTGBM = "lightgbm"
PLANNERS_ALIGNED = "planners_aligned"
MSTL_PEER = "mstl"
# The forecaster's components reported as methods of their own (name in features.forecast_ensemble -> method).
COMPONENT_METHODS = {ens.LGBM: LIGHTGBM, ens.PLANNERS: PLANNERS_ALIGNED, ens.MSTL: MSTL_PEER}
# Method -> the candidate the forecaster can be pinned to when that method wins the held-out backtest.
PINNABLE = {LIGHTGBM: ens.LGBM, PLANNERS_ALIGNED: ens.PLANNERS, MSTL_PEER: ens.MSTL, AUTO_ETS: ens.AUTOETS,
            SEASONAL_NAIVE: ens.NAIVE}
POINT_ONLY = {SEASONAL_NAIVE, PLANNERS, LIGHTGBM, PLANNERS_ALIGNED, MSTL_PEER}

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
    """Metrics per method on ``series``, over all backtest days, on holiday-window days and on the other ("normal")
    days, computed on the days where every method has a forecast (so the comparison is like for like)."""
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
        for slice_name, part in (("all", sub.drop(columns="window")), ("holiday", sub[sub["window"] != ""]),
                                 ("normal", sub[sub["window"] == ""].drop(columns="window"))):
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
            for sl in ("all", "holiday", "normal"):
                for k in ("wape", "coverage80", "mase", "bias", "pinball", "peak_error", "peak_offset_days"):
                    if (m, sl) in t.index:
                        out[f"{m}.{sl}.{k}"] = float(t.loc[(m, sl), k])
        return out


def _origin_parts(history: History, o: pd.Timestamp, horizon: int, params: dict, peers: bool,
                  peer_series: str) -> tuple[list[pd.DataFrame], bool]:
    """One backtest origin: the forecaster refitted on data up to ``o``, its forecast and components, and the
    baselines' forecasts (long rows with ``origin``); and whether AutoETS ran (False: statsforecast missing)."""
    days = history.days
    t = int(days.get_loc(o))
    h_eval = min(horizon, len(days) - 1 - t)
    dates = days[t + 1:t + 1 + h_eval]
    model = HolidayForecaster.from_params(**params).fit(history, o)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # events without a previous instance: expected early in the data
        fc, comps = model.forecast_with_components(history, o, h_eval)
    fc["method"] = MODEL
    parts = [fc.assign(origin=o)]
    # The forecaster's own components, as it saw them at this origin (AutoETS and seasonal naive are the
    # baselines below already): point forecasts on every series they cover.
    comps = comps[comps["method"].isin(list(COMPONENT_METHODS))]
    parts.append(comps.assign(method=comps["method"].map(COMPONENT_METHODS), p10=comps["p50"],
                              p90=comps["p50"], origin=o).drop(columns="weight"))
    y = history.y
    parts.append(_baseline_rows(SEASONAL_NAIVE, seasonal_naive(y, t, h_eval), dates).assign(origin=o))
    pl = planners_method(y, t, h_eval)
    if pl is not None:
        parts.append(_baseline_rows(PLANNERS, pl, dates).assign(origin=o))
    if not peers:
        return parts, True
    ets = autoets(y if peer_series == "all" else y[[TOTAL]], t, h_eval)
    if ets is None:
        return parts, False
    ets["date"] = dates[ets["h"].to_numpy() - 1]
    parts.append(ets.drop(columns="h").assign(method=AUTO_ETS, origin=o))
    return parts, True


def backtest(history: History, n_origins: int = 10, horizon: int = 60, settings: Settings | None = None,
                 model_params: dict | None = None, peers: bool = True, peer_series: str = TOTAL,
                 origin_dates: list[pd.Timestamp] | None = None, progress: bool = True,
                 n_jobs: int = 1) -> BacktestResult:
    """Rolling-origin backtest: refit the forecaster at every origin on data up to it, and run the baselines.

    ``peer_series``: 'total' (default: AutoETS costs ~0.25 s per series and origin) or 'all'.
    ``origin_dates``: explicit origins instead of the automatic ones (each checked for enough history).
    ``n_jobs``: processes the origins are spread over (same results; ``train`` uses two where the machine has them).
    """
    settings = settings or get_settings()
    t0 = time.perf_counter()
    params = {"horizon": horizon, "market": history.market, "summer_sale": settings.summer_sale,
              "summer_sale_days": settings.summer_sale_days, **(model_params or {})}
    proto = HolidayForecaster.from_params(**params)
    if origin_dates:
        for o in origin_dates:
            check_history(history, o, horizon, proto.min_calibration_days, settings)
            if o + pd.Timedelta(days=1) > history.days[-1]:
                raise HistoryError(f"origin {o.date()} leaves no day of data after it to evaluate")
        origins = pd.DataFrame({"origin": sorted(origin_dates), "kind": "given", "event": ""})
    else:
        origins = backtest_origins(history, n_origins, horizon, proto, settings)
    notes: list[str] = []
    days = history.days
    parts = []
    rows = list(origins["origin"])
    if n_jobs > 1 and len(rows) > 1:
        # Origins are independent: each process fits its own forecasters (LightGBM on one thread each).
        from joblib import Parallel, delayed

        if progress:
            click.echo(f"  backtest origins: {len(rows)} on {n_jobs} processes")
        done = Parallel(n_jobs=n_jobs)(delayed(_origin_parts)(history, o, horizon, params, peers, peer_series)
                                       for o in rows)
    else:
        with click.progressbar(rows, label="backtest origins", show_pos=True, hidden=not progress) as bar:
            done, run_peers = [], peers
            for o in bar:  # statsforecast missing at one origin: not tried again at the next
                done.append(_origin_parts(history, o, horizon, params, run_peers, peer_series))
                run_peers = run_peers and done[-1][1]
    for got, ets_ok in done:
        parts.extend(got)
        if peers and not ets_ok:
            notes.append("statsforecast not installed: AutoETS peer skipped (pip install '.[peers]')")
            peers = False
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


def flat_by_series(by_series: pd.DataFrame) -> pd.DataFrame:
    """The per-series table with one header row (``wape.model``, ``coverage80.autoets``...)."""
    flat = by_series.copy()
    flat.columns = [f"{metric}.{method}" for metric, method in flat.columns]
    return flat.reset_index()


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


# --------------------------------------------------------------------------------------------------------------------
# Plot and print


def backtest_figure(result: BacktestResult, history: History, series: str = TOTAL, max_panels: int = 10):
    """History, the model's P10-P90 fan and P50, the baselines, the origin and the major events, per origin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    origins = list(result.origins["origin"])[-max_panels:]
    n = max(len(origins), 1)
    cols = 2 if n > 1 else 1
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, 2.8 * rows), squeeze=False)
    y = history.y[series]
    events = result.holiday_windows
    styles = {PLANNERS: ("tab:orange", "--"), AUTO_ETS: ("tab:green", ":"), SEASONAL_NAIVE: ("tab:gray", ":")}
    for ax, o in zip(axes.ravel(), origins, strict=False):
        fc = result.forecasts[(result.forecasts["origin"] == o) & (result.forecasts["series"] == series)]
        end = fc["date"].max()
        past = y.loc[o - pd.Timedelta(days=56):end]
        ax.plot(past.index, past.to_numpy(), color="black", lw=1.0, label="actual")
        m = fc[fc["method"] == MODEL].sort_values("date")
        ax.fill_between(m["date"], m["p10"], m["p90"], color="tab:blue", alpha=0.25, label="model P10-P90")
        ax.plot(m["date"], m["p50"], color="tab:blue", lw=1.4, label="model P50")
        for method, (color, ls) in styles.items():
            b = fc[fc["method"] == method].sort_values("date")
            if len(b):
                ax.plot(b["date"], b["p50"], color=color, ls=ls, lw=1.0, label=method)
        ax.axvline(o, color="gray", lw=0.8)
        for _, ev in events[(events["event_date"] >= past.index[0]) & (events["event_date"] <= end)].iterrows():
            ax.axvline(ev["event_date"], color="tab:red", ls="--", lw=0.8)
            ax.axvspan(ev["window_start"], ev["window_end"], color="tab:red", alpha=0.05)
            ax.text(ev["event_date"], ax.get_ylim()[1] * 0.95, ev["event"], fontsize=7, color="tab:red")
        kind = result.origins.loc[result.origins["origin"] == o, "event"].iloc[0]
        ax.set_title(f"{series}: origin {o.date()}" + (f" (6 weeks before {kind})" if kind else ""), fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(origins):]:
        ax.axis("off")
    axes.ravel()[len(origins) - 1].legend(fontsize=6, loc="upper left")  # the latest panel has every method
    fig.tight_layout()
    return fig


def report(result: BacktestResult, echo=click.echo) -> None:
    """Print the metrics table, the targets and the notes."""
    origins = ", ".join(f"{r.origin.date()}{' (' + r.event + ')' if r.event else ''}"
                        for r in result.origins.itertuples())
    echo(f"  origins: {origins}")
    echo("  metrics on series 'total' (days where every method has a forecast):")
    for line in format_table(result.table).splitlines():
        echo("    " + line)
    cov = result.by_series.get(("coverage80", MODEL))
    hol = result.by_series.get(("holiday_wape", MODEL))
    if cov is not None and hol is not None:
        echo(f"  all {len(cov)} series: mean model holiday WAPE {100 * hol.mean():.1f}%, mean 80% coverage "
             f"{100 * cov.mean():.1f}% (min {100 * cov.min():.1f}%, max {100 * cov.max():.1f}%)")
    for line in target_lines(result):
        echo("  target: " + line)
    for note in result.notes:
        echo("  note: " + note)
    echo(f"  backtest took {result.seconds:.1f}s")
