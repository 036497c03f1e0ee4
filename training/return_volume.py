"""Return-volume forecast: rolling-origin backtest against baselines, training and registration, and the CLI
commands ``aftersales forecast``, ``aftersales staff`` and ``aftersales backtest return-volume``.

The forecaster is :class:`features.forecast_ensemble.HolidayForecaster`: LightGBM, the planners' method (aligned
by events), AutoETS, MSTL and seasonal naive weighted by evidence on inner origins of the user's history.
Backtest: origins six weeks (42 days) before each major holiday/event the history allows, then regular origins
every four weeks back from the end; at each origin the forecaster is refitted on data up to the origin only and
forecasts up to ``horizon`` days. Beside the combination (``model``), the table reports its components as the
forecaster saw them (``lightgbm``, ``planners_aligned``, ``mstl``) and the baselines: seasonal naive (7), the simple
planners' method (same weekday 52 weeks back, scaled by the last 28 days over the same 28 days a year before) and
statsforecast AutoETS. Metrics (WAPE, MASE-7, bias, peak-day error and offset, scaled pinball, 80% coverage) overall
and on holiday windows (3 days before to 21 days after each major event). ``train`` registers the combination
unless one of its candidates beat it on holiday WAPE in that backtest: then that candidate alone, and the card says
so.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pandas as pd

from features import forecast_ensemble as ens
from features import generations
from features.forecast_ensemble import HolidayForecaster
from features.return_volume import (
    TOTAL,
    History,
    HistoryError,
    PlanError,
    ReturnVolumeForecaster,
    build_features,
    build_history,
    read_plan,
)
from features.settings import Settings, get_settings
from training.volume_backtest import (
    AUTO_ETS,
    COMPONENT_METHODS,
    EVENT_LEAD_DAYS,
    LIGHTGBM,
    MIN_EVAL_DAYS,
    MODEL,
    MODEL_NAME,
    MSTL_PEER,
    ORIGIN_STEP_DAYS,
    PINNABLE,
    PLANNERS,
    PLANNERS_ALIGNED,
    POINT_ONLY,
    SEASONAL_NAIVE,
    BacktestResult,
    Forecasts,
    _windows_of,
    autoets,
    backtest,
    backtest_figure,
    backtest_origins,
    flat_by_series,
    format_table,
    metrics_for,
    metrics_table,
    planners_method,
    report,
    seasonal_naive,
    series_table,
    target_lines,
)

# The backtest's public names (in training.volume_backtest), importable from here as before.
__all__ = [
    "MODEL_NAME",
    "EVENT_LEAD_DAYS",
    "ORIGIN_STEP_DAYS",
    "MIN_EVAL_DAYS",
    "MODEL",
    "SEASONAL_NAIVE",
    "PLANNERS",
    "AUTO_ETS",
    "LIGHTGBM",
    "PLANNERS_ALIGNED",
    "MSTL_PEER",
    "COMPONENT_METHODS",
    "PINNABLE",
    "POINT_ONLY",
    "Forecasts",
    "backtest_origins",
    "seasonal_naive",
    "planners_method",
    "autoets",
    "metrics_for",
    "metrics_table",
    "series_table",
    "BacktestResult",
    "backtest",
    "flat_by_series",
    "format_table",
    "target_lines",
    "backtest_figure",
    "report",
]

# --------------------------------------------------------------------------------------------------------------------
# Logging

def _log_backtest(result: BacktestResult, history: History, params: dict) -> None:
    """Log the backtest's parameters, headline metrics, tables and figure to the active MLflow run."""
    from training import registry

    registry.log_params(params)
    registry.log_metrics(result.headline())
    registry.log_metrics(_primary(result))
    registry.log_table(result.table, "tables/backtest_total.csv")
    registry.log_table(flat_by_series(result.by_series), "tables/backtest_by_series.csv")
    registry.log_table(result.origins, "tables/backtest_origins.csv")
    registry.log_text(format_table(result.table) + "\n\n" + "\n".join(target_lines(result) + result.notes),
                      "backtest.txt")
    registry.log_figure(backtest_figure(result, history), "plots/backtest.png")


@dataclass
class ProductChoice:
    """What ``train`` registers: the combination (``use`` None) or the one candidate that beat it."""

    method: str  # backtest method whose figures the product carries (MODEL or a PINNABLE one)
    use: str | None  # HolidayForecaster(use=...)
    reason: str


def choose_product(result: BacktestResult) -> ProductChoice:
    """The combination, unless one of its candidates has a lower holiday-window WAPE on 'total' in the held-out
    backtest (all days when the backtest has no holiday days): then that candidate alone. Never a worse model."""
    t = result.table.set_index(["method", "slice"])
    sl = "holiday" if (MODEL, "holiday") in t.index else "all"
    scores = {m: float(t.loc[(m, sl), "wape"]) for m in [MODEL, *PINNABLE] if (m, sl) in t.index}
    best = min(scores, key=lambda m: (scores[m], m != MODEL))
    others = ", ".join(f"{m} {100 * v:.1f}%" for m, v in sorted(scores.items(), key=lambda kv: kv[1]))
    if best == MODEL:
        return ProductChoice(MODEL, None, f"the combination has the lowest {sl} WAPE on 'total' in the held-out "
                                          f"backtest ({others})")
    return ProductChoice(best, PINNABLE[best], f"{best} alone beat the combination on {sl} WAPE of 'total' in the "
                                               f"held-out backtest ({others}): the product uses {best}")


def _log_weights(model: HolidayForecaster, choice: ProductChoice) -> None:
    """The product choice, the weights per series, band and window, and why, to the active MLflow run."""
    from training import registry

    table = model.weights_table()
    registry.log_params({"product": choice.method, "product_use": choice.use or "combination"})
    registry.log_text(choice.reason, "product.txt")
    registry.log_table(table, "tables/forecaster_weights.csv")
    registry.log_text("\n".join(model.fallback_notes()) or "none: the fitted combination throughout",
                      "fallbacks.txt")
    tot = table[table["series"] == TOTAL]
    kind = {"ordinary": "ordinary", "event window": "window", "unseen event window": "unseen_window"}
    registry.log_metrics({f"weight.{r.band}.{kind.get(r.window, r.window)}.{c}": float(getattr(r, c))
                          for r in tot.itertuples() for c in ens.CANDIDATES})


def _primary(result: BacktestResult, method: str = MODEL) -> dict[str, float]:
    """The registry's metrics: holiday WAPE on 'total' of the product (``method``: the combination or the
    candidate that beat it; the gate's), overall WAPE and the combination's coverage."""
    t = result.table.set_index(["method", "slice"])
    out = {"holiday_wape": float(t.loc[(method, "holiday"), "wape"]) if (method, "holiday") in t.index else np.nan,
           "wape": float(t.loc[(method, "all"), "wape"]), "coverage80": float(t.loc[(MODEL, "all"), "coverage80"]),
           "backtest_seconds": result.seconds}
    cov = result.by_series.get(("coverage80", MODEL))
    if cov is not None:
        out["coverage80_mean_over_series"] = float(cov.mean())
    return out


def gate_evidence(result: BacktestResult, history: History, data_dir: Path, method: str = MODEL):
    """The promotion gate's evidence (:mod:`training.evidence`): the backtest's holiday-window days of 'total'.

    The champion (one fitted forecaster) forecasts the history from each backtest origin it can forecast from (not
    before its own training end, whatever data it trained on: it must not be judged on dates it has seen) with the
    horizons evaluated; holiday WAPE of both on the same (origin, day) rows. Where no origin qualifies the champion is
    not scored and the fallback rule decides (the challenger must beat every baseline).
    """
    from training.evidence import Evidence, Unscorable

    t = result.table.set_index(["method", "slice"])
    # ``method``: the product registered (the combination, or the candidate that beat it): the gate judges it, and
    # every other method of the backtest is a baseline.
    base = {m: float(t.loc[(m, "holiday"), "wape"]) for m in t.index.get_level_values(0).unique()
            if m != method and (m, "holiday") in t.index}
    mine = result.forecasts[(result.forecasts["method"] == method) & (result.forecasts["series"] == TOTAL)]

    def holiday_rows(fc: pd.DataFrame) -> pd.DataFrame:
        return fc[_windows_of(fc["date"], result.holiday_windows) != ""]

    def rows(fc: pd.DataFrame) -> str:
        return (f"{len(fc):,} holiday-window days of series 'total' from {fc['origin'].nunique()} backtest origins "
                f"({pd.Timestamp(fc['origin'].min()):%Y-%m-%d} to {pd.Timestamp(fc['origin'].max()):%Y-%m-%d})")

    def compare(champion, seen_until):
        # Only origins at or after the champion's training end: a forecaster that has seen the held-out dates (on
        # this data or another platform's with the same calendar) would be judged on seasons it already knows.
        parts, why = [], ""
        for o, g in mine.groupby("origin"):
            h = int(len(g))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fc = champion.forecast(history, o, h)
            except Exception as e:  # noqa: BLE001 — an origin before its training end, a horizon or series it lacks
                why = str(e)
                continue
            fc = fc[fc["series"] == TOTAL][["date", "p50"]].rename(columns={"p50": "champion"})
            parts.append(g.merge(fc, on="date", how="inner"))
        if not parts:
            raise Unscorable(f"it cannot forecast from any backtest origin ({why})")
        both = holiday_rows(pd.concat(parts, ignore_index=True))
        if len(both) < 7:
            raise Unscorable(f"only {len(both)} holiday-window days are forecastable from origins after its "
                             "training end")

        def wape(col: str) -> float:
            return float((both["y"] - both[col]).abs().sum() / max(both["y"].sum(), 1e-9))

        return wape("p50"), wape("champion"), rows(both)

    held = holiday_rows(mine)
    return Evidence("holiday_wape", False, float(_primary(result, method)["holiday_wape"]), base,
                    rows(held) if len(held) else "no holiday-window days", compare, str(Path(data_dir).resolve()),
                    history.days[-1], pd.Timestamp(result.origins["origin"].min()))


# --------------------------------------------------------------------------------------------------------------------
# Entry points


def model_params(settings: Settings, market: str, horizon: int) -> dict:
    """Forecaster parameters for a market and horizon under these settings."""
    return {"horizon": horizon, "market": market, "summer_sale": settings.summer_sale,
            "summer_sale_days": settings.summer_sale_days, "num_threads": settings.return_volume_num_threads}


def resolve_market(data_dir: Path, option: str | None, settings: Settings, echo=click.echo) -> str:
    """The market whose calendar applies: --market, AFTERSALES_MARKET when set, the data folder's dataset.json,
    then CN; says which."""
    from features.market import resolve_market as resolve

    try:
        market, source = resolve(option, settings, data_dir)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    echo(f"  market {market} (from {source})")
    return market


def warn_market(history: History, settings: Settings, echo=click.echo) -> str | None:
    """Print (and return) a warning when the history's peaks fit another market's calendar better."""
    from features.market import market_warning

    msg = market_warning(history.y[TOTAL], history.market, settings)
    if msg:
        echo(f"  warning: {msg}")
    return msg


def _load(data_dir: Path, out_dir: Path, market: str, echo=click.echo):
    """Load and validate the data folder, write its rejects to ``out_dir``, and build the daily history."""
    from training.data import load_for_command

    ds = load_for_command(data_dir, out_dir, echo, tables=["orders", "returns", "tickets"])
    try:
        history = build_history(ds, market)
    except HistoryError as e:
        raise click.ClickException(str(e)) from e
    echo(f"  {len(history.days)} days ({history.days[0].date()} to {history.days[-1].date()}), "
         f"{len(history.series)} series: {', '.join(history.series)}")
    return ds, history


def train(data_dir: Path, settings: Settings, n_jobs: int | None = None) -> dict:
    """Backtest on rolling origins against the baselines, refit on all the data, register the model in MLflow
    (the champion alias moves only when holiday WAPE beats the champion's). ``n_jobs``: processes for the
    backtest's origins (default: two where the machine has them; the figures do not depend on it)."""
    from training import registry
    from training.data import data_validated

    t0 = time.perf_counter()
    out_dir = settings.models_dir / MODEL_NAME
    market = resolve_market(Path(data_dir), None, settings)
    ds, history = _load(Path(data_dir), out_dir, market)
    market_note = warn_market(history, settings)
    horizon = settings.return_volume_horizon
    params = model_params(settings, history.market, horizon)
    with registry.start_run(MODEL_NAME, run_name="train", settings=settings):
        try:
            result = backtest(history, n_origins=settings.return_volume_backtest_origins, horizon=horizon,
                              settings=settings, model_params=params, peers=settings.return_volume_peers,
                              n_jobs=n_jobs or min(2, os.cpu_count() or 1))
        except HistoryError as e:
            raise click.ClickException(str(e)) from e
        report(result)
        _log_backtest(result, history, {**params, "n_origins": len(result.origins), "data_dir": str(data_dir)})
        choice = choose_product(result)
        click.echo(f"  product: {choice.method} ({choice.reason})")
        click.echo("  refitting on all the data")
        final = HolidayForecaster.from_params(**params, use=choice.use).fit(history)
        example = _input_example(final, history)
        primary = _primary(result, choice.method)
        validated = data_validated(ds)
        _log_weights(final, choice)
        gate = registry.log_and_register(
            MODEL_NAME, final, input_example=example, primary_metric="holiday_wape",
            metric_value=primary["holiday_wape"], higher_is_better=False, settings=settings,
            extra_metrics={k: v for k, v in primary.items() if k != "holiday_wape"},
            data_validated=validated,
            card=model_card(result, ds, history, Path(data_dir), validated, horizon, final, choice, market_note),
            evidence=gate_evidence(result, history, data_dir, choice.method))
    # No snapshot files: the generation pins the promoted version so every worker serves it.
    served = generations.record_version(settings.snapshots_dir, MODEL_NAME, gate.version, gate.promoted, None,
                                        history.days[-1], str(Path(data_dir).resolve()))
    t = result.table.set_index(["method", "slice"])
    summary = {
        "version": gate.version, "promoted": gate.promoted, "gate": gate.reason, "product": choice.method,
        "served generation": served or "unchanged (not promoted)",
        "trained_until": str(final.trained_until_.date()), "series": len(final.series_),
        **{f"holiday WAPE {m}": f"{100 * t.loc[(m, 'holiday'), 'wape']:.1f}%"
           for m in t.index.get_level_values(0).unique() if (m, "holiday") in t.index},
        "coverage80 (total)": f"{100 * primary['coverage80']:.1f}%",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return summary


def model_card(result: BacktestResult, ds, history: History, data_dir: Path, validated: bool, horizon: int,
               final: HolidayForecaster | None = None, choice: ProductChoice | None = None,
               market_note: str | None = None) -> dict:
    """The model card's content (see :mod:`training.model_card`): figures from the backtest as logged to MLflow;
    with ``final`` and ``choice``: what the product is (combination or a single winner), its weights and why."""
    from training.model_card import HOLIDAY_WINDOW_TEXT, data_summary, new_card

    t = result.table.set_index(["method", "slice"])
    methods = list(dict.fromkeys(result.table["method"]))
    origins = result.origins
    n_event = int((origins["kind"] == "event").sum())
    card = new_card(
        "Return volume forecast",
        f"Daily return requests P10/P50/P90 for up to {horizon} days after the data's last day, for the total and "
        f"for each of {len(history.series)} series ({', '.join(history.series[:8])}"
        f"{', ...' if len(history.series) > 8 else ''}); `aftersales staff` turns it into agents per channel.",
        "Customer-service and warehouse planners staffing for holiday and shopping-event return waves.",
        data_summary(ds, data_dir, validated, ["orders", "returns", "tickets"],
                     note=f"market {history.market}; {len(history.days):,} days of daily series"),
        f"Rolling-origin backtest over {len(origins)} origins ({n_event} placed {EVENT_LEAD_DAYS} days before a "
        f"major event, the rest every {ORIGIN_STEP_DAYS} days back from the end): "
        + ", ".join(f"{r.origin.date()}{' (' + r.event + ')' if r.event else ''}" for r in origins.itertuples())
        + f". At each origin the model is refitted on data up to the origin only and forecasts up to {horizon} "
          "days ahead; the baselines forecast the same days: seasonal naive (same weekday last week), the "
          "planners' method (same weekday 52 weeks back, scaled by recent growth) and AutoETS where installed. "
          "Metrics on series 'total', on the days every method has a forecast. The registered version is refitted "
          "on all the data.",
    )
    rows = [("holiday-window WAPE", "holiday", "wape", "holiday_wape"), ("WAPE, all days", "all", "wape", "wape"),
            ("WAPE, normal days", "normal", "wape", f"{MODEL}.normal.wape"),
            ("MASE-7, all days", "all", "mase", f"{MODEL}.all.mase"),
            ("bias, all days", "all", "bias", f"{MODEL}.all.bias"),
            ("peak-day error, holiday windows", "holiday", "peak_error", f"{MODEL}.holiday.peak_error"),
            ("80% interval coverage", "all", "coverage80", "coverage80")]
    card["metrics"] = pd.DataFrame([{"metric": f"{label} (`{key}`)",
                                     **{m: (t.loc[(m, sl), k] if (m, sl) in t.index else None) for m in methods}}
                                    for label, sl, k, key in rows])
    card["metrics_note"] = ("Baselines' figures are logged as `<method>.<slice>.<metric>` (e.g. "
                            f"`{SEASONAL_NAIVE}.holiday.wape`). " + " ".join(target_lines(result)))
    slices = pd.DataFrame([{"slice": {"holiday": "holiday windows", "normal": "normal days", "all": "all days"}[sl],
                            "days": t.loc[(MODEL, sl), "days"] if (MODEL, sl) in t.index else 0,
                            **{f"wape {m}": t.loc[(m, sl), "wape"] if (m, sl) in t.index else None for m in methods},
                            f"coverage80 {MODEL}": t.loc[(MODEL, sl), "coverage80"] if (MODEL, sl) in t.index
                            else None} for sl in ("holiday", "normal", "all")])
    by = flat_by_series(result.by_series)
    keep = [c for c in ("series", f"holiday_wape.{MODEL}", f"wape.{MODEL}", f"coverage80.{MODEL}") if c in by.columns]
    card["slices"] = [(f"Series 'total', backtest days split by {HOLIDAY_WINDOW_TEXT}.", slices),
                      ("Every series (model only): WAPE on holiday windows and on all days, 80% coverage.",
                       by[keep])]
    if final is not None:
        wt = final.weights_table()
        wt = wt[wt["series"] == TOTAL].drop(columns="series")
        card["slices"].append((
            "The registered forecaster's weights on 'total' per horizon band and event window / ordinary day, "
            "fitted on inner rolling origins of the training data, with why (days, origins, event instances, each "
            "candidate's WAPE there, shrinkage toward the parent cell, and where the weights lost to one candidate "
            "beyond the noise margin, that candidate alone), and its 80% interval as relative residual bounds "
            "(split-conformal on the combination's own inner-origin errors).", wt))
    if choice is not None:
        card["metrics_note"] = f"Product: {choice.reason}. " + card["metrics_note"]
    if final is not None and final.fallback_notes():
        card["metrics_note"] += (" Thin evidence, where the forecaster fell back from its fitted combination: "
                                 + "; ".join(final.fallback_notes()) + ".")
    guest = float(ds.returns["account_id"].isna().mean()) if len(ds.returns) else 0.0
    card["not_applicable"] = {
        "new merchants": "volumes are forecast per total, category, region and channel, not per merchant; a new "
                         "merchant enters through the orders it adds, which the forecast follows.",
        "guest accounts": f"guest returns ({guest:.1%} of the returns seen) count in every series like any other."}
    limits = []
    if (Path(data_dir) / "truth").is_dir():
        limits.append("Trained and backtested on a synthetic world: the figures show the method tracks return waves "
                      "shaped like these, not how it will do on the platform's real returns.")
    days = pd.DatetimeIndex(result.forecasts.loc[result.forecasts["method"] == MODEL, "date"].unique())
    events = sorted({w.event for w in result.holiday_windows.itertuples()
                     if ((days >= w.window_start) & (days <= w.window_end)).any()})
    limits.append(f"The backtest covers {len(origins)} origins and the holiday windows of {len(events)} event(s)"
                  f"{' (' + ', '.join(events) + ')' if events else ''}; other events are not measured, and an "
                  "event the history holds once or never is forecast from its calendar class only.")
    cov = t.loc[(MODEL, "all"), "coverage80"] if (MODEL, "all") in t.index else np.nan
    if pd.notna(cov) and not 0.72 <= cov <= 0.88:
        limits.append(f"The 80% interval held the actual on {cov:.1%} of backtest days (target 72-88%): the "
                      f"intervals are too {'narrow' if cov < 0.72 else 'wide'}.")
    if (MODEL, "holiday") in t.index and (MODEL, "all") in t.index:
        ch, ca = t.loc[(MODEL, "holiday"), "coverage80"], t.loc[(MODEL, "all"), "coverage80"]
        if pd.notna(ch) and pd.notna(ca) and ch < ca - 0.05:
            limits.append(f"The 80% interval covers less on holiday windows ({ch:.1%}) than overall ({ca:.1%}): "
                          "plan holiday staffing on P90, not P50.")
    limits += result.notes
    if market_note:
        limits.append(f"Calendar: {market_note}.")
    limits.append("Sales plans change the forecast only where given (`aftersales forecast --plan`); without one, "
                  "future orders are projected from the recent run rate and last year's event uplift.")
    card["limits"] = limits
    return card


def _input_example(model: ReturnVolumeForecaster, history: History) -> pd.DataFrame:
    """Five feature rows at the model's training end: what ``predict`` takes (the registry logs its signature)."""
    t = len(history.days) - 1
    X = build_features(history, model.kernels_, [t], model.horizon, model.settings(), series=[TOTAL])
    return X[[*model.feature_names_, "scale", "prior"]].head(5).reset_index(drop=True)


def _day_option(value: str | None) -> pd.Timestamp | None:
    if value is None:
        return None
    try:
        return pd.Timestamp(value).normalize()
    except ValueError as e:
        raise click.BadParameter(f"{value!r} is not a date (use YYYY-MM-DD)") from e


_DATA_HELP = "Data folder holding the contract tables (default: AFTERSALES_DATA_DIR or data/default)."
_MARKET_HELP = ("Market whose holidays and events apply (CN, US, GB, DE, BR; default: AFTERSALES_MARKET when set, "
                "else the data folder's dataset.json, else CN).")


@click.command("forecast")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None, help=_DATA_HELP)
@click.option("--origin", default=None, help="Last day whose data may be used (YYYY-MM-DD; default: the data's "
              "last day). The model is trained on data up to it only.")
@click.option("--horizon", default=60, show_default=True, type=click.IntRange(1, 366),
              help="Days to forecast after the origin.")
@click.option("--plan", "plan_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Sales plan CSV: date, orders (or order_lines), optional category and amount, per day after "
                   "the origin. Replaces the projection of future orders where it has days.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="CSV to write: date, series, p10, p50, p90 (series 'total' always present).")
@click.option("--market", default=None, help=_MARKET_HELP)
def forecast_cmd(data_dir: Path | None, origin: str | None, horizon: int, plan_file: Path | None, out_file: Path,
                 market: str | None) -> None:
    """Forecast daily return volume P10/P50/P90 for the HORIZON days after ORIGIN.

    Trains the forecaster on the data up to the origin (nothing later is read), then forecasts every series:
    total returns, refund amount, categories, regions and ticket channels where the data has them. Feed the CSV to
    `aftersales staff --forecast FILE`.
    """
    from training import registry

    settings = get_settings()
    data_dir = Path(data_dir or settings.data_dir)
    market = resolve_market(data_dir, market, settings)
    plan = None
    if plan_file is not None:
        try:
            plan = read_plan(plan_file)
        except PlanError as e:
            raise click.ClickException(str(e)) from e
    out_file.parent.mkdir(parents=True, exist_ok=True)
    _, history = _load(data_dir, out_file.parent, market)
    warn_market(history.upto(_day_option(origin) or history.days[-1]), settings)
    o = _day_option(origin) or history.days[-1]
    t0 = time.perf_counter()
    try:
        model = HolidayForecaster.from_params(**model_params(settings, market, horizon)).fit(history, o)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fc, comps = model.forecast_with_components(history, o, horizon, plan=plan)
    except HistoryError as e:
        raise click.ClickException(str(e)) from e
    for note in model.fallback_notes():  # where thin evidence made it fall back, and why
        click.echo(f"  note: {note}")
    for w in caught:
        if issubclass(w.category, UserWarning) and ("no previous instance" in str(w.message)
                                                    or "order plan is not applied" in str(w.message)):
            click.echo(f"  warning: {w.message}")
    out = fc.assign(date=fc["date"].dt.strftime("%Y-%m-%d"))
    out.to_csv(out_file, index=False, float_format="%.3f")
    total = fc[fc["series"] == TOTAL]
    peak = total.loc[total["p50"].idxmax()]
    click.echo(f"  trained on {history.days[0].date()}..{o.date()} in {time.perf_counter() - t0:.1f}s; "
               f"wrote {len(out)} rows ({fc['series'].nunique()} series x {horizon} days) to {out_file}")
    click.echo(f"  total returns {fc.loc[fc['series'] == TOTAL, 'p50'].sum():.0f} (P50) over "
               f"{total['date'].min().date()}..{total['date'].max().date()}; peak day {peak['date'].date()}: "
               f"P50 {peak['p50']:.0f}, P90 {peak['p90']:.0f}")
    click.echo(f"  components carrying the {model.peak_components(comps, fc)}")
    try:
        with registry.start_run(MODEL_NAME, run_name="forecast", settings=settings):
            registry.log_params({**model_params(settings, market, horizon), "origin": str(o.date()),
                                 "data_dir": str(data_dir), "plan": str(plan_file) if plan_file else None})
            registry.log_artifact(out_file, "forecast")
            registry.log_table(model.weights_table(), "tables/forecaster_weights.csv")
            registry.log_text("\n".join(model.fallback_notes()) or "none: the fitted combination throughout",
                              "fallbacks.txt")
    except Exception as e:  # noqa: BLE001 — the forecast is written; tracking is a record, not the product
        click.echo(f"  note: not logged to MLflow ({e})")


@click.command("staff")
@click.option("--forecast", "forecast_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="Forecast CSV written by `aftersales forecast` (date, series, p10, p50, p90).")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="CSV to write: date, channel, volume_p50, volume_p90, agents_p50, agents_p90.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Staffing TOML merged over the defaults (features/staffing.toml).")
def staff_cmd(forecast_file: Path, out_file: Path, config_file: Path | None) -> None:
    """Turn a forecast into agents per day and channel: Erlang C for chat and phone, workload with backlog for
    email, app and other, shrinkage on top; P50 and P90 volume planned separately."""
    from features.staffing import StaffingConfigError, load_staffing_config, staffing_plan

    try:
        config = load_staffing_config(config_file)
        fc = pd.read_csv(forecast_file)
        plan = staffing_plan(fc, config)
    except (StaffingConfigError, ValueError, OSError) as e:
        raise click.ClickException(f"{forecast_file}: {e}") from e
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out = plan.assign(date=pd.to_datetime(plan["date"]).dt.strftime("%Y-%m-%d"))
    out.to_csv(out_file, index=False, float_format="%.2f")
    click.echo(f"  wrote {len(out)} rows ({plan['channel'].nunique()} channels x {plan['date'].nunique()} days) "
               f"to {out_file}")
    peak = plan.groupby("date")[["agents_p50", "agents_p90"]].sum()
    day = peak["agents_p90"].idxmax()
    click.echo(f"  busiest day {pd.Timestamp(day).date()}: {int(peak.loc[day, 'agents_p50'])} agents at P50, "
               f"{int(peak.loc[day, 'agents_p90'])} at P90 (all channels)")


@click.command("return-volume")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None, help=_DATA_HELP)
@click.option("--origins", "n_origins", default=10, show_default=True, type=click.IntRange(1, 100),
              help="Number of origins: six weeks before each major event first, then every four weeks back.")
@click.option("--horizon", default=60, show_default=True, type=click.IntRange(7, 366),
              help="Days forecast from each origin.")
@click.option("--market", default=None, help=_MARKET_HELP)
@click.option("--peer-series", type=click.Choice(["total", "all"]), default="total", show_default=True,
              help="Series the AutoETS peer forecasts (~0.25 s per series and origin).")
@click.option("--origin", "origin_dates", multiple=True,
              help="Backtest these origins (YYYY-MM-DD, repeatable) instead of the automatic ones.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write the tables and the PNG (default: models/return_volume/backtest).")
def evaluate_cmd(data_dir: Path | None, n_origins: int, horizon: int, market: str | None, peer_series: str,
                 origin_dates: tuple[str, ...], out_dir: Path | None) -> None:
    """Rolling-origin backtest of the return-volume forecast against seasonal naive, the planners' method and
    AutoETS; the model is refitted at every origin on data up to it. Prints the metrics table (overall and on
    holiday windows) and logs it with a PNG of history, forecast fan and events to MLflow."""
    from training import registry

    settings = get_settings()
    data_dir = Path(data_dir or settings.data_dir)
    market = resolve_market(data_dir, market, settings)
    out_dir = out_dir or settings.models_dir / MODEL_NAME / "backtest"
    _, history = _load(data_dir, out_dir, market)
    warn_market(history, settings)
    params = model_params(settings, market, horizon)
    try:
        result = backtest(history, n_origins=n_origins, horizon=horizon, settings=settings,
                              model_params=params, peer_series=peer_series,
                              origin_dates=[_day_option(d) for d in origin_dates] or None)
    except HistoryError as e:
        raise click.ClickException(str(e)) from e
    report(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(out_dir / "backtest_total.csv", index=False)
    flat_by_series(result.by_series).to_csv(out_dir / "backtest_by_series.csv", index=False)
    result.forecasts.to_csv(out_dir / "backtest_forecasts.csv", index=False)
    fig = backtest_figure(result, history)
    fig.savefig(out_dir / "backtest.png", dpi=110)
    with registry.start_run(MODEL_NAME, run_name="backtest", settings=settings):
        _log_backtest(result, history, {**params, "n_origins": len(result.origins), "data_dir": str(data_dir)})
    click.echo(f"  tables and plot in {out_dir}; logged to MLflow ({settings.tracking_uri}, experiment "
               f"{MODEL_NAME})")
