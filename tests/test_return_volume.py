"""Return-volume forecast: series building, no leakage, the delay-kernel wave, plans, history checks, calibrated
and ordered intervals on a backtest against seasonal naive, the CLI commands and registry promotion.

One small synthetic world (1,500 accounts, 50 merchants, 500 days) is shared (conftest's `small_world`); models use a
28-day horizon and fewer trees so the whole file stays quick on two shared cores.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cardcheck import assert_card
from click.testing import CliRunner

from features.contract import load_dataset
from features.return_volume import (
    FORECAST_COLUMNS,
    TOTAL,
    History,
    HistoryError,
    PlanError,
    ReturnVolumeForecaster,
    build_features,
    build_history,
    learn_kernels,
    validate_plan,
)
from features.settings import Settings, get_settings
from training import return_volume as rv
from training.cli import main

H = 28
FAST = {"horizon": H, "n_estimators": 120, "max_rows": 20_000}


@pytest.fixture(scope="module")
def world(small_world) -> Path:
    return small_world


@pytest.fixture(scope="module")
def dataset(world):
    return load_dataset(world, tables=["orders", "returns", "tickets"])


@pytest.fixture(scope="module")
def history(dataset) -> History:
    return build_history(dataset, "CN")


@pytest.fixture(scope="module")
def models_env(tmp_path_factory):
    """One MLflow store for the module's CLI and registry tests (creating one costs seconds)."""
    models = tmp_path_factory.mktemp("rv_models") / "models"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AFTERSALES_MODELS_DIR", str(models))
        get_settings.cache_clear()
        yield models
    get_settings.cache_clear()


def _origin(history: History, days_before_end: int) -> pd.Timestamp:
    return history.days[-1] - pd.Timedelta(days=days_before_end)


def _filtered(ds, returns_mask=None, start=None):
    """A copy of the dataset with some returns dropped and/or everything before ``start`` dropped."""
    tables = dict(ds.tables)
    if returns_mask is not None:
        tables["returns"] = tables["returns"][returns_mask].reset_index(drop=True)
    if start is not None:
        s = pd.Timestamp(start, tz="UTC")
        tables["orders"] = tables["orders"][tables["orders"]["ordered_at"] >= s].reset_index(drop=True)
        tables["returns"] = tables["returns"][tables["returns"]["requested_at"] >= s].reset_index(drop=True)
        tables["tickets"] = tables["tickets"][tables["tickets"]["created_at"] >= s].reset_index(drop=True)
    return dataclasses.replace(ds, tables=tables)


# --------------------------------------------------------------------------------------------------------------------
# Series


def test_series_cover_total_refund_categories_regions_channels(history):
    names = history.series
    assert names[:2] == [TOTAL, "refund_amount"]
    assert "category=apparel" in names and any(s.startswith("region=") for s in names)
    assert {"channel=chat", "channel=phone", "channel=email", "channel=app"} <= set(names)
    # The total counts every return; category series only those whose order line is known.
    cats = [s for s in names if s.startswith("category=")]
    assert (history.y[cats].sum(axis=1) <= history.y[TOTAL] + 1e-9).all()
    assert history.y["category=apparel"].sum() > history.y[cats].drop(columns="category=apparel").max().max()


def test_daily_counts_equal_a_group_by_recount(dataset):
    """Drivers, series and region mixes (counted in one bincount pass) against a plain pandas group-by, with some
    order lines' category and region blanked (they count under "?")."""
    o = dataset.orders.copy()
    o.loc[o.index[::17], "category"] = pd.NA
    o.loc[o.index[::29], "region"] = pd.NA
    ds = dataclasses.replace(dataset, tables={**dataset.tables, "orders": o})
    h = build_history(ds, "CN")
    day = o["ordered_at"].dt.tz_convert("UTC").dt.tz_localize(None).dt.normalize()
    cat = o["category"].astype("object").fillna("?")
    lines = o.groupby([cat, day]).size().unstack(0).reindex(h.drivers.index).fillna(0.0)
    amount = o.groupby([cat, day])["amount"].sum().unstack(0).reindex(h.drivers.index).fillna(0.0)
    assert "?" in lines.columns
    for c in lines.columns:
        np.testing.assert_allclose(h.drivers[f"lines|category={c}"], lines[c])
        np.testing.assert_allclose(h.drivers[f"amount|category={c}"], amount[c], rtol=1e-12)
    region = o["region"].astype("object").fillna("?")
    kept = [s.split("=", 1)[1] for s in h.series if s.startswith("region=")]
    assert kept
    for r in kept:
        np.testing.assert_allclose(h.drivers[f"lines|region={r}"],
                                   o[region == r].groupby(day[region == r]).size().reindex(h.drivers.index).fillna(0))
        mix = cat[region == r].value_counts(normalize=True)
        assert h.region_mix[r] == pytest.approx({str(k): float(v) for k, v in mix.items()})
    channel = ds.tickets["channel"].astype("object")
    t_day = ds.tickets["created_at"].dt.tz_convert("UTC").dt.tz_localize(None).dt.normalize()
    for c in channel.dropna().unique():
        n = ds.tickets[channel == c].groupby(t_day[channel == c]).size().reindex(h.y.index).fillna(0)
        np.testing.assert_allclose(h.y[f"channel={c}"], n)


def test_days_without_returns_are_zeros_not_gaps(dataset):
    day = dataset.returns["requested_at"].dt.tz_convert("UTC").dt.tz_localize(None).dt.normalize()
    quiet = (day >= "2023-06-01") & (day <= "2023-06-10")
    h = build_history(_filtered(dataset, returns_mask=~quiet.to_numpy()), "CN")
    assert len(h.days) == (h.days[-1] - h.days[0]).days + 1  # one row per day, no gaps
    returns_series = [s for s in h.series if not s.startswith("channel=")]
    window = h.y.loc["2023-06-01":"2023-06-10", returns_series]
    assert len(window) == 10 and (window == 0).all().all()
    long = h.long()
    assert list(long.columns) == ["unique_id", "ds", "y"]
    assert len(long) == len(h.days) * len(h.series) and long["y"].notna().all()


# --------------------------------------------------------------------------------------------------------------------
# Fitting, leakage, the delay-kernel wave, plans


@pytest.fixture(scope="module")
def fitted(history):
    origin = _origin(history, 60)
    return ReturnVolumeForecaster(**FAST).fit(history, origin), origin


def test_forecast_shape_and_ordered_quantiles(fitted, history):
    model, origin = fitted
    fc = model.forecast(history, origin, H)
    assert list(fc.columns) == FORECAST_COLUMNS
    assert set(fc["series"]) == set(history.series) and (fc["series"] == TOTAL).sum() == H
    days = pd.date_range(origin + pd.Timedelta(days=1), periods=H, freq="D")
    assert (fc.loc[fc["series"] == TOTAL, "date"].to_numpy() == days.to_numpy()).all()
    assert (fc["p10"] <= fc["p50"]).all() and (fc["p50"] <= fc["p90"]).all() and (fc["p10"] >= 0).all()
    assert (fc["p90"] > fc["p10"]).mean() > 0.9  # real intervals, not points


def test_changing_data_after_the_origin_does_not_change_the_forecast(history, fitted):
    model, origin = fitted
    after = history.days > origin
    changed = History(history.y.copy(), history.drivers.copy(), history.linked.copy(), history.market,
                      history.region_mix, history.lines_per_order)
    changed.y.loc[after] = changed.y.loc[after] * 3 + 7
    changed.drivers.loc[after] = changed.drivers.loc[after] * 5
    late = changed.linked["request_day"] > int(np.flatnonzero(~after)[-1])
    changed.linked = pd.concat([changed.linked, changed.linked[late]], ignore_index=True)
    refit = ReturnVolumeForecaster(**FAST).fit(changed, origin)
    a, b = model.forecast(history, origin, H), refit.forecast(changed, origin, H)
    pd.testing.assert_frame_equal(a, b)
    # ...while a change on or before the origin does change it (the test can fail).
    changed.y.loc[origin] = changed.y.loc[origin] * 4 + 20
    c = refit.forecast(changed, origin, H)
    assert not np.allclose(a["p50"], c["p50"])


def test_delay_kernels_peak_one_to_three_weeks_after_ordering(history):
    k = learn_kernels(history, len(history.days))
    apparel = k["lines|category=apparel"]
    assert 5 <= int(np.argmax(apparel)) <= 21
    assert 0.1 < apparel.sum() < 0.6 and k["lines|category=grocery"].sum() < apparel.sum() / 2


def test_an_order_spike_before_the_origin_predicts_a_wave_of_returns(history, fitted):
    model, origin = fitted
    t = int(history.days.get_loc(origin))
    spiked = History(history.y, history.drivers.copy(), history.linked, history.market, history.region_mix,
                     history.lines_per_order)
    spike_days = history.days[t - 2:t + 1]
    spiked.drivers.loc[spike_days] = spiked.drivers.loc[spike_days] * 8  # a sale far bigger than any before
    # The delay convolution: returns still to come from the orders already placed arrive as a lagged wave.
    feats = {name: build_features(h.upto(origin), model.kernels_, [t], H, model.settings(), series=[TOTAL])
             for name, h in (("base", history), ("spike", spiked))}
    extra_pipe = feats["spike"]["pipe_known"].to_numpy() - feats["base"]["pipe_known"].to_numpy()
    assert 4 <= int(np.argmax(extra_pipe)) + 1 <= 21  # the peak lags the sale by the delay kernel
    assert extra_pipe[3:21].sum() > 3 * extra_pipe[:2].sum() > 0
    # The forecast follows: beyond the pipelines seen in training the trees' output is scaled by the pipeline.
    base = model.forecast(history, origin, H, series=[TOTAL]).set_index("date")["p50"]
    wave = model.forecast(spiked, origin, H, series=[TOTAL]).set_index("date")["p50"]
    extra = wave - base
    assert extra.iloc[3:24].sum() > 0.10 * base.iloc[3:24].sum()
    assert (extra.idxmax() - origin).days >= 4 and extra.iloc[:2].sum() < extra.iloc[3:24].sum() / 4


def test_a_sales_plan_with_a_big_sale_raises_the_forecast_after_it(history, fitted):
    model, origin = fitted
    normal = history.drivers["lines"].iloc[-90:].mean() / history.lines_per_order
    days = pd.date_range(origin + pd.Timedelta(days=1), periods=H, freq="D")
    plan = pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "orders": normal})
    plan.loc[2, "orders"] = normal * 10  # a sale on the third day after the origin
    none = model.forecast(history, origin, H, series=[TOTAL])
    usual = model.forecast(history, origin, H, plan=validate_plan(plan.assign(orders=normal)), series=[TOTAL])
    sale = model.forecast(history, origin, H, plan=validate_plan(plan), series=[TOTAL])
    # A plan of ordinary days changes little; the sale brings a wave of returns one to three weeks later.
    assert abs(usual["p50"].sum() / none["p50"].sum() - 1) < 0.15
    extra = sale["p50"] - usual["p50"]
    assert extra.iloc[:3].abs().sum() < 1.0
    assert extra.iloc[5:24].sum() > 0.2 * usual["p50"].iloc[5:24].sum()
    assert 5 <= int(np.argmax(extra.to_numpy())) + 1 <= 24
    assert (sale["p10"] <= sale["p50"]).all() and (sale["p50"] <= sale["p90"]).all()


def test_a_plan_with_wrong_columns_names_them():
    with pytest.raises(PlanError, match=r"missing column\(s\) date, orders.*unknown column\(s\) day, qty"):
        validate_plan(pd.DataFrame({"day": ["2024-01-01"], "qty": [3]}))
    with pytest.raises(PlanError, match=r"column orders, row 3: 'many' must be a number"):
        validate_plan(pd.DataFrame({"date": ["2024-01-01", "2024-01-02"], "orders": ["5", "many"]}))


def test_too_little_history_says_how_much_is_needed(history, dataset):
    early = history.days[0] + pd.Timedelta(days=150)
    with pytest.raises(HistoryError, match=r"151 days of history .* needs at least 264 \(28 .* 56 .* 60 .* 120"):
        ReturnVolumeForecaster(horizon=60).fit(history, early)
    # Long enough, but no major holiday window lies wholly inside it: nothing to learn holidays from.
    summer = build_history(_filtered(dataset, start="2023-07-12"), "CN")
    with pytest.raises(HistoryError, match="whole after-sales window"):
        ReturnVolumeForecaster(horizon=7, calibration_days=30).fit(summer, pd.Timestamp("2023-11-09"))


def test_forecast_refuses_an_origin_before_the_training_end(history, fitted):
    model, origin = fitted
    with pytest.raises(ValueError, match="before this model's training end"):
        model.forecast(history, origin - pd.Timedelta(days=5), H)
    with pytest.raises(ValueError, match="horizon 90 must be between 1 and 28"):
        model.forecast(history, origin, 90)


# --------------------------------------------------------------------------------------------------------------------
# Backtest


@pytest.fixture(scope="module")
def backtest(history):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rv.backtest(history, n_origins=4, horizon=H, settings=Settings(), model_params=FAST,
                               peers=False, progress=False)


def test_backtest_origins_include_six_weeks_before_major_events(backtest):
    ev = backtest.origins[backtest.origins["kind"] == "event"]
    assert len(ev) >= 2
    windows = backtest.holiday_windows.set_index("event_date")
    for o, name in zip(ev["origin"], ev["event"], strict=True):
        assert name in set(windows.loc[[o + pd.Timedelta(days=42)], "event"])


def test_backtest_intervals_are_ordered_and_roughly_calibrated(backtest):
    m = backtest.forecasts[backtest.forecasts["method"] == rv.MODEL]
    assert (m["p10"] <= m["p50"]).all() and (m["p50"] <= m["p90"]).all()
    coverage = ((m["y"] >= m["p10"]) & (m["y"] <= m["p90"])).mean()
    assert 0.65 <= coverage <= 0.95, coverage
    cols = {"wape", "mase", "bias", "peak_error", "peak_offset_days", "pinball", "coverage80"}
    assert cols <= set(backtest.table.columns)


def test_model_beats_seasonal_naive_on_holiday_windows(backtest):
    t = backtest.table.set_index(["method", "slice"])
    assert t.loc[(rv.MODEL, "holiday"), "wape"] < t.loc[(rv.SEASONAL_NAIVE, "holiday"), "wape"]
    assert t.loc[(rv.MODEL, "holiday"), "pinball"] < t.loc[(rv.SEASONAL_NAIVE, "holiday"), "pinball"]


def test_backtest_on_two_processes_gives_the_same_forecasts(history, backtest):
    """train spreads the origins over two processes: the figures must not depend on it."""
    origins = list(backtest.origins["origin"].iloc[-2:])
    kw = {"horizon": H, "settings": Settings(), "model_params": FAST, "peers": False, "progress": False,
          "origin_dates": origins}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one, two = rv.backtest(history, n_jobs=1, **kw), rv.backtest(history, n_jobs=2, **kw)
    key = ["origin", "method", "series", "date"]
    a, b = (r.forecasts.sort_values(key).reset_index(drop=True) for r in (one, two))
    pd.testing.assert_frame_equal(a, b)
    assert set(a["origin"]) == set(origins)


def test_planners_baseline_scales_last_year_by_recent_growth():
    days = pd.date_range("2022-01-01", periods=800, freq="D")
    y = pd.DataFrame({TOTAL: np.where(days.year == 2022, 10.0, 20.0)}, index=days)
    t = 500  # 2023-05-16: last year's same weekday is 10, the last 28 days are twice the same days a year before
    pl = rv.planners_method(y, t, 14)
    assert np.allclose(pl[TOTAL], 20.0)
    assert rv.planners_method(y, 300, 14) is None  # no year of history before the origin
    sn = rv.seasonal_naive(pd.DataFrame({TOTAL: np.arange(800.0)}, index=days), t, 10)
    assert list(sn[TOTAL]) == [494, 495, 496, 497, 498, 499, 500, 494, 495, 496]  # same weekday, last week


def test_missing_peer_library_is_skipped_with_a_note(history, monkeypatch):
    monkeypatch.setitem(sys.modules, "statsforecast", None)  # import statsforecast -> ImportError
    origin = _origin(history, 40)
    res = rv.backtest(history, horizon=14, settings=Settings(), model_params={**FAST, "horizon": 14},
                          origin_dates=[origin], progress=False)
    assert rv.AUTO_ETS not in set(res.forecasts["method"])
    assert any("statsforecast not installed" in n for n in res.notes)


# --------------------------------------------------------------------------------------------------------------------
# CLI and registry


def test_cli_forecast_staff_and_backtest_write_their_files(world, tmp_path, models_env):
    runner = CliRunner()
    fc_file, staff_file = tmp_path / "fc.csv", tmp_path / "staff.csv"
    res = runner.invoke(main, ["forecast", "--data", str(world), "--origin", "2024-03-01", "--horizon", "21",
                               "--out", str(fc_file)])
    assert res.exit_code == 0, res.output
    fc = pd.read_csv(fc_file)
    assert list(fc.columns) == FORECAST_COLUMNS and (fc["series"] == TOTAL).sum() == 21
    assert fc["date"].min() == "2024-03-02" and fc["date"].max() == "2024-03-22"
    assert (tmp_path / "rejects.csv").exists() and "rows rejected" in res.output
    # Which components carry the peak, with their weights, e.g. "lightgbm 50% (P50 41)".
    assert re.search(r"components carrying the peak \d{4}-\d\d-\d\d P50 \d+: \w+ \d+%", res.output), res.output

    res = runner.invoke(main, ["staff", "--forecast", str(fc_file), "--out", str(staff_file)])
    assert res.exit_code == 0, res.output
    staff = pd.read_csv(staff_file)
    assert list(staff.columns) == ["date", "channel", "volume_p50", "volume_p90", "agents_p50", "agents_p90"]
    assert staff["date"].nunique() == 21 and staff["agents_p90"].sum() >= staff["agents_p50"].sum()

    bad = tmp_path / "plan.csv"
    bad.write_text("day,qty\n2024-03-02,100\n")
    res = runner.invoke(main, ["forecast", "--data", str(world), "--origin", "2024-03-01", "--horizon", "7",
                               "--plan", str(bad), "--out", str(tmp_path / "x.csv")])
    assert res.exit_code != 0 and "unknown column(s) day, qty" in res.output

    # Shorter than the LightGBM component's 264 days: a forecast without it, saying so; under 4 weeks: an error.
    res = runner.invoke(main, ["forecast", "--data", str(world), "--origin", "2023-03-01", "--horizon", "60",
                               "--out", str(tmp_path / "y.csv")])
    assert res.exit_code == 0, res.output
    assert "note: history of 60 days" in res.output and "the 264 days the LightGBM component needs" in res.output
    short = pd.read_csv(tmp_path / "y.csv")
    assert (short["series"] == TOTAL).sum() == 60 and (short["p10"] <= short["p90"]).all()
    res = runner.invoke(main, ["forecast", "--data", str(world), "--origin", "2023-01-10", "--horizon", "60",
                               "--out", str(tmp_path / "z.csv")])
    assert res.exit_code != 0 and "10 days of history up to 2023-01-10: too short for any forecaster" in res.output

    out = tmp_path / "bt"
    res = runner.invoke(main, ["backtest", "return-volume", "--data", str(world), "--origins", "2", "--horizon",
                               "28", "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    assert "holiday" in res.output and "wape" in res.output and "target:" in res.output
    for name in ("backtest_total.csv", "backtest_by_series.csv", "backtest.png", "rejects.csv"):
        assert (out / name).exists(), name


def test_train_registers_and_the_gate_refuses_a_worse_model(world, history, models_env):
    from training import registry

    settings = Settings(models_dir=models_env, return_volume_horizon=H, return_volume_backtest_origins=2,
                        return_volume_peers=False)
    summary = rv.train(world, settings)
    assert summary["promoted"] is True and summary["trained_until"] == str(history.days[-1].date())
    loaded = registry.load_champion(rv.MODEL_NAME, settings=settings)
    assert "holiday_wape" in loaded.metrics
    card = assert_card(rv.MODEL_NAME, 1, settings, promoted=True, metrics={
        "holiday-window WAPE": ("holiday_wape", "model.holiday.wape", "seasonal_naive_7.holiday.wape"),
        "WAPE, normal days": ("model.normal.wape", "seasonal_naive_7.normal.wape"),
        "80% interval coverage": ("coverage80", "model.all.coverage80")},
        slices=("holiday windows", "normal days", "total"))
    assert "new merchants: not applicable" in card
    fc = loaded.model.forecast(history, horizon=7)  # what serving calls
    assert (fc["series"] == TOTAL).sum() == 7
    worse = registry.log_and_register(rv.MODEL_NAME, loaded.model, rv._input_example(loaded.model, history),
                                      primary_metric="holiday_wape", metric_value=loaded.metrics["holiday_wape"] + 0.1,
                                      higher_is_better=False, settings=settings)
    assert worse.promoted is False and worse.champion_version == loaded.version
