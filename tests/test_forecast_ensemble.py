"""The holiday forecaster (features/forecast_ensemble.py) and the market a data folder follows (features/market.py):
weights on the simplex, the finite-sample conformal rank, the planners' method moving with Black Friday, the fitted
combination's weights and intervals, pinning to one candidate, the product gate, and the market resolution order
and calendar-fit warning.

One small synthetic world (1,500 accounts, 50 merchants, 500 days; conftest's `small_world`) is shared.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import forecast_ensemble as ens
from features.forecast_candidates import moved_event_level, ordinary_level_spread, planners_source
from features.forecast_ensemble import HolidayForecaster, conformal_bounds, fit_simplex_lad, planners_forecast
from features.market import market_warning, resolve_market
from features.return_volume import TOTAL, History, HistoryError, build_history
from features.settings import Settings
from training import return_volume as rv

H = 28
FAST = {"horizon": H, "n_estimators": 80, "max_rows": 15_000}


@pytest.fixture(scope="module")
def world(small_world) -> Path:
    return small_world


@pytest.fixture(scope="module")
def history(world) -> History:
    from features.contract import load_dataset

    return build_history(load_dataset(world, tables=["orders", "returns", "tickets"]), "CN")


@pytest.fixture(scope="module")
def fitted(history):
    origin = history.days[-1] - pd.Timedelta(days=40)
    return HolidayForecaster.from_params(**FAST, market="CN").fit(history, origin), origin


# --------------------------------------------------------------------------------------------------------------------
# Building blocks


def test_simplex_weights_recover_a_known_mix_and_sum_to_one():
    rng = np.random.default_rng(0)
    P = rng.gamma(5.0, 10.0, size=(300, 3))
    y = 0.3 * P[:, 0] + 0.7 * P[:, 2]
    w = fit_simplex_lad(P, y)
    assert np.isclose(w.sum(), 1.0) and (w >= 0).all()
    assert np.allclose(w, [0.3, 0.0, 0.7])


def test_conformal_bound_uses_the_finite_sample_rank():
    r = np.arange(1.0, 10.0)  # n = 9: ranks ceil(10 * 0.9) = 9 and floor(10 * 0.1) = 1
    assert conformal_bounds(r, 0.2) == (1.0, 9.0)
    r = np.arange(1.0, 20.0)  # n = 19: ranks 18 and 2, not the plain 90% quantile 17.2
    assert conformal_bounds(r, 0.2) == (2.0, 18.0)


def test_planners_method_follows_black_friday_to_its_new_date():
    days = pd.date_range("2022-06-01", "2023-11-10", freq="D")
    y = np.full(len(days), 10.0)
    y[days.get_loc(pd.Timestamp("2022-11-25"))] = 100.0  # Black Friday 2022
    hist = History(pd.DataFrame({TOTAL: y}, index=days), pd.DataFrame({"lines": np.ones(len(days))}, index=days),
                   pd.DataFrame(columns=["order_day", "request_day", "category", "refund_amount"]), "US")
    t = len(days) - 1
    fc = planners_forecast(hist, t, 30, Settings(market="US"))
    dates = days[-1] + pd.to_timedelta(np.arange(1, 31), unit="D")
    peak = dates[int(np.nanargmax(fc[:, 0]))]
    assert peak == pd.Timestamp("2023-11-24")  # Black Friday 2023: 52 weeks + 0 days would say 2023-11-24 too...
    assert np.isclose(np.nanmax(fc[:, 0]), 100.0)  # ... and growth is 1 (flat level)
    # A year with Black Friday a week off the 52-week grid: 2023-11-24 -> 2024-11-29 (53 weeks later).
    days2 = pd.date_range("2023-06-01", "2024-11-10", freq="D")
    y2 = np.full(len(days2), 10.0)
    y2[days2.get_loc(pd.Timestamp("2023-11-24"))] = 100.0
    hist2 = History(pd.DataFrame({TOTAL: y2}, index=days2), pd.DataFrame({"lines": np.ones(len(days2))}, index=days2),
                    hist.linked, "US")
    fc2 = planners_forecast(hist2, len(days2) - 1, 30, Settings(market="US"))
    dates2 = days2[-1] + pd.to_timedelta(np.arange(1, 31), unit="D")
    assert dates2[int(np.nanargmax(fc2[:, 0]))] == pd.Timestamp("2024-11-29")


def test_planners_method_takes_a_moved_events_level_from_the_date_and_its_shape_from_last_instance():
    """CN: the Spring Festival came on Feb 10 2024 and comes on Jan 28 2025, 50 weeks on. Last January's returns of
    Christmas presents held 20 a day until Jan 25 (10 otherwise), the festival's days dipped to 6. Days from a week
    before this year's festival follow last year's instance (its shape: the dip), but their level is last year's at
    the date, not at last year's (later) festival: x (level before this span, 52 weeks back) / (level before last
    year's span), on days outside the major events' windows (Christmas's window ends Jan 15)."""
    days = pd.date_range("2023-06-01", "2024-12-31", freq="D")
    y = np.full(len(days), 10.0)
    y[(days >= "2024-01-01") & (days <= "2024-01-25")] = 20.0
    y[(days >= "2024-02-10") & (days <= "2024-02-16")] = 6.0
    fc = pd.Series(planners_forecast(_series(days, y, "CN"), len(days) - 1, 30, Settings(market="CN"))[:, 0],
                   index=pd.date_range("2025-01-01", periods=30))
    assert np.allclose(fc[:"2025-01-20"], 20.0)  # 52 weeks back: the presents' returns, unscaled
    # Before this year's span: Jan 16-22 2024 (all 20); before last year's: Jan 16 - Feb 5 2024 (10 days of 20, 11
    # of 10). Without the level the moved days would read 10 and 6: last year's ebb before its later festival.
    level = 20.0 / ((10 * 20.0 + 11 * 10.0) / 21)
    assert np.allclose(fc["2025-01-21":"2025-01-24"], 10.0 * level)
    assert np.allclose(fc["2025-01-25":"2025-01-29"], 6.0 * level)  # the dip's shape kept
    # A market whose events keep within a week of 52 weeks back (Black Friday) is not rescaled.
    level_us = moved_event_level(_series(days, y, "US"), len(days) - 1, np.arange(len(days) - 30, len(days)),
                                 planners_source(days, "US", Settings(market="US")), Settings(market="US"))
    assert np.allclose(level_us, 1.0)


def _series(days: pd.DatetimeIndex, y: np.ndarray, market: str) -> History:
    return History(pd.DataFrame({TOTAL: y}, index=days), pd.DataFrame({"lines": np.ones(len(days))}, index=days),
                   pd.DataFrame(columns=["order_day", "request_day", "category", "refund_amount"]), market)


def _with_delays(days: pd.DatetimeIndex, y: np.ndarray, max_delay: int, n: int, market: str = "US") -> History:
    """The series ``y`` with ``n`` order-to-return links whose delays are uniform on 0..``max_delay`` - 1 days (what
    ens.ramp_days measures the history's ramp-up on)."""
    rng = np.random.default_rng(0)
    order_day = rng.integers(0, len(days) - max_delay, n)
    linked = pd.DataFrame({"order_day": order_day, "request_day": order_day + rng.integers(0, max_delay, n),
                           "category": "a", "refund_amount": 1.0})
    return History(pd.DataFrame({TOTAL: y}, index=days), pd.DataFrame({"lines": np.ones(len(days))}, index=days),
                   linked, market)


def test_planners_growth_reads_ordinary_days_not_an_event_that_changed():
    """Growth x1.2 on ordinary days; last year's Singles Day window (in the 28 days before the origin) was three
    times its usual size, this year's was not. The 28-day month reads the event's change as a fall in volume;
    ens.planners_growth reads the ordinary days of the last 91 and finds the 1.2."""
    days = pd.date_range("2022-06-01", "2023-11-30", freq="D")
    y = np.where(days >= pd.Timestamp("2022-12-01"), 12.0, 10.0)
    last_sd = (days >= pd.Timestamp("2022-11-08")) & (days <= pd.Timestamp("2022-11-30"))
    y[last_sd] = 30.0
    this_sd = (days >= pd.Timestamp("2023-11-08")) & (days <= pd.Timestamp("2023-11-30"))
    y[this_sd] = 12.0
    hist = _series(days, y, "US")
    t, st = len(days) - 1, Settings(market="US")
    assert np.isclose(ens.planners_growth(hist, t, st)[0], 1.2)
    assert ens.planners_growth(hist, t, st, growth_days=28)[0] < 0.8  # what the planners' month reads
    fc = planners_forecast(hist, t, 10, st)
    assert np.isclose(np.nanmedian(fc[:, 0]), 12.0 * 1.2)  # last December's 12 a day, grown x1.2


def test_planners_growth_skips_the_historys_ramp_up():
    """Flat returns of 10 a day, except the history's first three weeks, which lack the returns of orders placed
    before the data began (they climb from 0 to 10). Returns come 0-29 days after their order, so
    ens.ramp_days reads a ramp-up of about four weeks; the growth leaves those days out and reads the flat 1.0 where
    the same ratio over them reads growth that is not there."""
    days = pd.date_range("2022-10-01", "2023-11-30", freq="D")
    y = np.full(len(days), 10.0)
    y[:21] = np.linspace(0.0, 10.0, 21)
    hist = _with_delays(days, y, 30, 2000)
    t, st = len(days) - 1, Settings(market="US")
    assert 25 <= ens.ramp_days(hist, t) <= 29
    assert np.isclose(ens.planners_growth(hist, t, st)[0], 1.0)
    no_links = _series(days, y, "US")  # nothing to measure the delay on: no ramp-up is assumed
    assert ens.ramp_days(no_links, t) == 0
    assert ens.planners_growth(no_links, t, st)[0] > 1.05
    # Last year's day inside the ramp-up is no source for the forecast either.
    fc = planners_forecast(hist, t, 30, st)
    assert np.nanmax(np.abs(fc[:, 0] - 10.0)) < 1e-9


def test_event_level_spread_is_the_year_over_year_change_of_an_events_uplift():
    """The mid-year sale's window was twice the ordinary level a year ago and three times this year: one change of
    |log 3 - log 2|. One change is a guess at the spread: its square is shrunk toward the same measure on ordinary
    stretches of the history, weighed as one more change. Flat ordinary days (they never move): half the square;
    ordinary stretches that move year over year: the spread rises toward theirs. With no event seen twice and
    under three windows: 0."""
    days = pd.date_range("2022-03-01", "2023-08-01", freq="D")
    y = np.full(len(days), 10.0)
    for start, end, v in (("2022-06-15", "2022-07-09", 20.0), ("2023-06-15", "2023-07-09", 30.0)):
        y[(days >= pd.Timestamp(start)) & (days <= pd.Timestamp(end))] = v
    hist = _series(days, y, "US")
    st, t = Settings(market="US"), len(days) - 1
    d = np.log(3.0) - np.log(2.0)
    assert np.isclose(ordinary_level_spread(hist, t, st, 25)[0], 0.0)
    u = ens.event_level_spread(hist, t, st)
    assert np.isclose(u[0], d / np.sqrt(2.0))
    # Ordinary weeks that move: four weeks 30% up in the second year's spring, before the weeks the sale's uplift
    # is read over (its change stays log 3/2): the spread rises toward the ordinary stretches' own.
    y2 = y.copy()
    y2[(days >= pd.Timestamp("2023-03-15")) & (days <= pd.Timestamp("2023-04-12"))] = 13.0
    hist2 = _series(days, y2, "US")
    ref = ordinary_level_spread(hist2, t, st, 25)[0]
    assert ref > 0.05
    assert np.isclose(ens.event_level_spread(hist2, t, st)[0], np.sqrt((d ** 2 + ref ** 2) / 2))
    # Up to a year in: one window only, nothing to measure the spread on.
    one = ens.event_level_spread(hist, days.get_loc(pd.Timestamp("2022-08-01")), Settings(market="US"))
    assert one[0] == 0.0


def test_event_level_spread_is_not_the_spread_of_different_events():
    """Under a year of history: every event's window seen once, each with its own uplift (x1.5 to x4). How the
    events differ in size is no measure of how one event's size moves from one year to the next (the forecaster saw
    each once): without an event seen twice and without ordinary stretches a year apart, the spread is 0."""
    from features.calendar import complete_windows

    days = pd.date_range("2022-03-01", "2023-02-15", freq="D")
    y = np.full(len(days), 10.0)
    st = Settings(market="US")
    hw = complete_windows("US", days[0], days[-1], st)
    assert hw["event"].nunique() == len(hw) >= 3
    for w, v in zip(hw.itertuples(), np.linspace(15.0, 40.0, len(hw)), strict=True):
        y[(days >= w.window_start) & (days <= w.window_end)] = v
    hist = _series(days, y, "US")
    assert ens.event_level_spread(hist, len(days) - 1, st)[0] == 0.0


def test_event_level_spread_leaves_the_historys_ramp_up_out():
    """The mid-year sale's window was twice the ordinary level in both years (no change: spread 0), but the history
    began seven weeks before the first one and its first five weeks lack the returns of orders placed before it
    (they climb from 0 to 10). Read as that window's ordinary weeks, the ramp-up makes its uplift look larger than
    the next year's: a spread that is not there. Left out (ens.ramp_days), the spread is 0."""
    days = pd.date_range("2022-04-01", "2023-08-01", freq="D")
    y = np.full(len(days), 10.0)
    y[:35] = np.linspace(0.0, 10.0, 35)
    for start, end in (("2022-06-15", "2022-07-09"), ("2023-06-15", "2023-07-09")):
        y[(days >= pd.Timestamp(start)) & (days <= pd.Timestamp(end))] = 20.0
    hist = _with_delays(days, y, 45, 3000)
    t, st = len(days) - 1, Settings(market="US")
    assert 35 <= ens.ramp_days(hist, t) <= 44
    assert ens.event_level_spread(hist, t, st, ramp=0)[0] > 0.03  # the ramp-up read as last year's level
    assert np.isclose(ens.event_level_spread(hist, t, st)[0], 0.0)


# --------------------------------------------------------------------------------------------------------------------
# The fitted forecaster


def test_forecast_shape_ordered_quantiles_and_components(fitted, history):
    model, origin = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fc, comps = model.forecast_with_components(history, origin, H)
    assert list(fc.columns) == ["date", "series", "p10", "p50", "p90"]
    assert set(fc["series"]) == set(history.series) and (fc["series"] == TOTAL).sum() == H
    assert (fc["p10"] <= fc["p50"]).all() and (fc["p50"] <= fc["p90"]).all() and (fc["p10"] >= 0).all()
    assert {ens.LGBM, ens.NAIVE, ens.AUTOETS, ens.MSTL} <= set(comps.loc[comps["series"] == TOTAL, "method"])
    # The P50 of 'total' is the weighted mean of its components' P50 on every day.
    tot = comps[comps["series"] == TOTAL]
    mix = (tot["p50"] * tot["weight"]).groupby(tot["date"]).sum() / tot["weight"].groupby(tot["date"]).sum()
    p50 = fc[fc["series"] == TOTAL].set_index("date")["p50"]
    assert np.allclose(mix.reindex(p50.index).to_numpy(), p50.to_numpy(), rtol=1e-6)
    assert "peak" in model.peak_components(comps, fc)


def _last_days(history: History, n: int) -> History:
    """The history's last ``n`` days only (a platform with a short history)."""
    return History(history.y.iloc[-n:].copy(), history.drivers.iloc[-n:].copy(), history.linked.iloc[:0].copy(),
                   history.market, history.region_mix, history.lines_per_order)


def test_a_history_too_short_for_lightgbm_forecasts_without_it_and_says_so(history):
    short = _last_days(history, 150)  # LightGBM needs 28 + 56 + 28 + 90 = 202 days for a 28-day horizon
    model = HolidayForecaster.from_params(**FAST, market="CN").fit(short)
    assert model.lgbm_ is None and "150 days" in model.short_history_note_ and "202" in model.short_history_note_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fc, comps = model.forecast_with_components(short, short.days[-1], H)
    assert set(fc["series"]) == set(short.series) and (fc["series"] == TOTAL).sum() == H
    assert np.isfinite(fc[["p10", "p50", "p90"]].to_numpy()).all()
    assert (fc["p10"] <= fc["p50"]).all() and (fc["p50"] <= fc["p90"]).all() and (fc["p10"] >= 0).all()
    assert (fc["p90"] > fc["p10"]).any()  # calibrated intervals, not points
    assert ens.LGBM not in set(comps["method"])
    assert {ens.NAIVE, ens.AUTOETS, ens.MSTL} <= set(comps.loc[comps["series"] == TOTAL, "method"])
    wt = model.weights_table()
    assert (wt[ens.LGBM] == 0).all() and np.allclose(wt[list(ens.CANDIDATES)].sum(axis=1), 1.0)
    assert wt["why"].str.contains("shorter than the 202 days the LightGBM component needs", regex=False).all()
    assert "forecasting with" in wt["why"].iloc[0]
    # The evidence is out of sample: every inner origin forecasts days after it, inside the short history.
    ev = model.evidence_
    assert (ev["h"] >= 1).all() and ev["origin"].nunique() >= 5 and ev[ens.LGBM].isna().all()
    # Too short even for the statistical candidates: a clear error saying how much is needed.
    with pytest.raises(HistoryError, match="too short for any forecaster"):
        HolidayForecaster.from_params(**FAST, market="CN").fit(_last_days(history, 20))


def test_thin_evidence_a_candidate_without_window_evidence_gets_no_weight_and_the_fallback_is_said(history):
    """A history of 395 days: the planners' method runs at the origin (a year and four weeks before it) but not at
    the inner origins, so the evidence cannot show it is not worse than LightGBM in event windows: it gets no
    weight there (it had half before), the combination is LightGBM's forecast on those days, the window P90 is at
    least as far above the forecast as its P10 is below (too few event instances to know the sign of the next one's
    error), and the forecaster says so."""
    short = _last_days(history, 395)
    model = HolidayForecaster.from_params(**FAST, market="CN").fit(short)
    ev = model.evidence_
    assert ev.loc[ev["window"] != "", ens.PLANNERS].notna().mean() < 0.9
    assert planners_forecast(short, len(short.days) - 1, H, model.settings()) is not None
    wt = model.weights_table()
    win = wt[wt["window"] == "event window"]
    assert len(win) and (win[ens.PLANNERS] == 0).all() and (win[ens.LGBM] == 1).all()
    notes = model.fallback_notes()
    assert any("planners' method has no forecasts" in n for n in notes)
    # The window P90 at least mirrors the P10 where the evidence holds under three event instances.
    for (s, b, w), (lo, hi) in model.intervals_.items():
        if w == ens.SEEN and ev[(ev["series"] == s) & (ev["window"] != "")]["window"].nunique() < 3:
            assert hi >= -lo - 1e-12, (s, b, lo, hi)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fc, comps = model.forecast_with_components(short, short.days[-1], H)
    tot = comps[(comps["series"] == TOTAL)]
    seen_days = tot.loc[(tot["method"] == ens.LGBM) & (tot["weight"] == 1), "date"]
    assert (tot.loc[(tot["method"] == ens.PLANNERS) & tot["date"].isin(seen_days), "weight"] == 0).all()


def test_thin_window_evidence_widens_the_p90_by_the_histories_own_event_level_spread(fitted):
    """Where the window evidence holds under three event instances, the window P90 also carries the series' own
    event-level spread (level_z x spread, in quadrature on log scale); ordinary days and the P10 are unchanged, and
    the forecaster says so."""
    model, _ = fitted
    spread = dict(model.level_spread_)
    ev = model.evidence_
    try:
        model.level_z = 0.0
        off = model._fit_intervals(ev, model.weights_)
        model.level_z = 1.2816
        model.level_spread_ = {s: 0.5 for s in spread}
        on = model._fit_intervals(ev, model.weights_)
        notes = list(model.fallback_notes_)
    finally:
        model.level_spread_ = spread
        model.intervals_ = model._fit_intervals(ev, model.weights_)
    thin = 0
    for (s, b, w), (lo, hi) in on.items():
        lo0, hi0 = off[(s, b, w)]
        n_inst = ev[(ev["series"] == s) & (ev["window"] != "")]["window"].nunique()
        if w == ens.SEEN and n_inst < model.symmetric_instances:
            thin += 1
            assert np.isclose(np.log1p(hi), np.hypot(np.log1p(hi0), 1.2816 * 0.5)) and lo == lo0
        elif w == ens.ORDINARY:
            assert (lo, hi) == (lo0, hi0)
    assert thin and any("event level's own spread" in n for n in notes)


def test_an_event_unseen_after_the_ramp_up_without_a_level_measure_widens_that_events_window(fitted):
    """The window of an event whose size the history never showed (no complete window of it after the ramp-up) is
    widened x single_instance_widen when nothing else stands in for that: its cell's evidence (other events) held
    more than one instance, and the history gives no measure of how much an event's level moves (level spread 0).
    One complete window after the ramp-up (the forecaster saw its size), a measured level spread, a cell already
    widened for one instance, or an ordinary day: no widening. The note names the events held only in the
    ramp-up."""
    import copy

    from features.calendar import holiday_windows

    model, _ = fitted
    m = copy.deepcopy(model)
    hw = holiday_windows("CN", pd.Timestamp("2024-10-01"), pd.Timestamp("2024-12-31"), m.settings())
    sd = hw[hw["event"] == "singles_day"].iloc[0]
    win = pd.date_range(sd["window_start"], sd["window_end"], freq="D")
    ordinary = pd.date_range(sd["window_start"] - pd.Timedelta(days=20), periods=3, freq="D")
    dates = win.append(ordinary)
    kind = np.r_[np.full(len(win), ens.SEEN), np.full(len(ordinary), ens.ORDINARY)]
    series, band = np.full(len(dates), TOTAL), np.full(len(dates), 1)
    m.interval_widened_ = {k: False for k in m.interval_widened_}
    m.level_spread_ = {s: 0.0 for s in m.series_}
    m.event_instances_, m.ramp_only_events_ = {}, ["singles_day"]
    f = m._one_instance_widen(series, band, kind, dates)
    assert (f[:len(win)] == m.single_instance_widen).all() and (f[len(win):] == 1.0).all()
    m.event_instances_ = {"singles_day": 1}
    assert (m._one_instance_widen(series, band, kind, dates) == 1.0).all()
    m.event_instances_ = {}
    m.interval_widened_[(TOTAL, 1)] = True
    assert (m._one_instance_widen(series, band, kind, dates) == 1.0).all()
    m.interval_widened_[(TOTAL, 1)] = False
    m.level_spread_ = {s: 0.2 for s in m.series_}
    assert (m._one_instance_widen(series, band, kind, dates) == 1.0).all()
    m.level_spread_ = {s: 0.0 for s in m.series_}
    m.fallback_notes_ = []
    m._fit_intervals(m.evidence_, m.weights_)
    assert any("holds singles_day only in its first weeks" in n for n in m.fallback_notes_)
    # An event ahead of the origin that the history holds no complete window of is named too, ramp-only or not;
    # one the history saw after its ramp-up is not.
    m.trained_until_ = sd["window_start"] - pd.Timedelta(days=1)  # the forecast's days open with Singles Day's window
    ahead = m._unseen_ahead()
    assert "singles_day" in ahead, ahead
    m.ramp_only_events_ = []
    m.fallback_notes_ = []
    m._fit_intervals(m.evidence_, m.weights_)
    note = [n for n in m.fallback_notes_ if "no complete window" in n]
    assert len(note) == 1 and all(e in note[0] for e in ahead) and "first weeks" not in note[0], m.fallback_notes_
    m.event_instances_ = {e: 1 for e in ahead}
    m.fallback_notes_ = []
    m._fit_intervals(m.evidence_, m.weights_)
    assert m._unseen_ahead() == [] and not any("no complete window" in n for n in m.fallback_notes_)


def test_event_instances_count_the_windows_after_the_ramp_up():
    """A complete window that starts in the history's ramp-up (its days lack the returns of orders placed before
    the data began) is not a past instance the forecaster saw: the event counts 0 and is listed as held only in the
    ramp-up; without linked returns (no ramp-up measured) it counts 1."""
    from features.calendar import complete_windows

    days = pd.date_range("2022-06-01", "2023-05-01", freq="D")
    y = np.full(len(days), 10.0)
    y[:35] = np.linspace(0.0, 10.0, 35)
    hist = _with_delays(days, y, 45, 3000)
    ramp = ens.ramp_days(hist, len(days) - 1)
    m = HolidayForecaster(market="US")
    past = complete_windows("US", days[0], days[-1], m.settings())
    early = past[past["window_start"] < days[0] + pd.Timedelta(days=ramp)]
    later = past[past["window_start"] >= days[0] + pd.Timedelta(days=ramp)]
    assert len(early) and len(later) and not set(early["event"]) & set(later["event"])
    counts = m._event_instances(hist)
    assert m.ramp_only_events_ == sorted(set(early["event"]))
    assert all(e not in counts for e in early["event"]) and all(counts[e] == 1 for e in later["event"])
    m._event_instances(_series(days, y, "US"))  # no linked returns: no ramp-up measured
    assert m.ramp_only_events_ == []


def test_weights_are_on_the_simplex_and_window_intervals_never_narrower(fitted):
    model, _ = fitted
    wt = model.weights_table()
    assert np.allclose(wt[list(ens.CANDIDATES)].sum(axis=1), 1.0)
    assert (wt[list(ens.CANDIDATES)] >= 0).all().all() and wt["why"].str.len().gt(0).all()
    for (s, b, w), (lo, hi) in model.intervals_.items():
        assert lo <= 0 <= hi
        if w:
            lo_o, hi_o = model.intervals_[(s, b, False)]
            assert lo <= lo_o and hi >= hi_o


def test_combination_is_never_worse_than_its_best_component_beyond_noise(fitted):
    """On each weight cell's own backtest evidence (series total), the combination is at most the noise margin
    worse than its best single candidate (in an event window: the best calendar-aware one)."""
    model, _ = fitted
    ev = model.evidence_[model.evidence_["series"] == TOTAL].reset_index(drop=True)
    p = model._combine_rows(ev, model.weights_)
    checked = 0
    for (b, in_win), g in ev.groupby([ev["band"], ev["window"] != ""]):
        w = model.weights_[(TOTAL, int(b), int(in_win))]
        avail = [c for c in ens.CANDIDATES if g[c].notna().mean() >= 0.9]
        g = g.dropna(subset=avail + [c for c in w if c in g.columns])
        if len(g) < model.min_cell_rows or not avail:
            continue
        y, comb = g["y"].to_numpy(float), p[g.index]
        pool = [c for c in avail if not in_win or c in (ens.LGBM, ens.PLANNERS)] or avail
        errs = {c: np.abs(y - g[c].to_numpy(float)).sum() / y.sum() for c in pool}
        best = min(errs, key=errs.get)
        margin = model._noise_margin(g, y, comb, g[best].to_numpy(float))
        assert np.abs(y - comb).sum() / y.sum() - errs[best] <= margin + 1e-6, (b, in_win, w)
        checked += 1
    assert checked >= 3


def test_the_noise_guard_picks_the_best_candidate_when_the_weights_lose(fitted):
    """Weights forced onto a poor candidate (no shrinkage to evidence, seasonal naive as the prior) give way to the
    best candidate when they lose beyond the noise margin."""
    model, _ = fitted
    ev = model.evidence_[(model.evidence_["series"] == TOTAL) & (model.evidence_["window"] == "")]
    strict = HolidayForecaster(horizon=H, shrink_origins=1e9, noise_z=0.0)
    strict.lgbm_ = model.lgbm_
    w, why = strict._cell_weights(ev, {ens.NAIVE: 1.0}, 0)
    avail = [c for c in ens.CANDIDATES if ev[c].notna().mean() >= 0.9]
    g = ev.dropna(subset=avail)
    errs = {c: np.abs(g["y"] - g[c]).sum() / g["y"].sum() for c in avail}
    assert errs[ens.NAIVE] > min(errs.values())  # naive is not the best here, so the guard must act
    assert w == {min(errs, key=errs.get): 1.0} and "noise margin" in why


def _partial_planners_evidence(planners_good: bool, first_with_planners: int = 10) -> pd.DataFrame:
    """Synthetic inner-origin evidence of a history under two years: 20 origins, 40 days each, every fourth day in
    an event window (mid-year 618 for the early origins, Singles Day for the later); the planners' method has
    forecasts only from origin ``first_with_planners`` on (a year and four weeks behind them)."""
    rng = np.random.default_rng(11)
    n_o, h = 20, 40
    origin = np.repeat(np.arange(n_o) * 8, h)
    hh = np.tile(np.arange(1, h + 1), n_o)
    y = rng.gamma(20.0, 5.0, n_o * h)
    late = origin >= first_with_planners * 8
    win = np.where(hh % 4 == 0, np.where(late, "singles_day@2024-11-11", "mid_year_618@2024-06-18"), "")
    miss = np.where(rng.random(len(y)) < 0.5, 0.7, 1.3)
    good = y * rng.uniform(0.97, 1.03, len(y))
    ev = pd.DataFrame({"series": TOTAL, "origin": origin, "h": hh, "y": y, "level": 100.0,
                       "window": win, "band": ens.band_of(hh),
                       ens.LGBM: np.where(planners_good, y * miss, good),
                       ens.PLANNERS: np.where(late, np.where(planners_good, good, y * miss), np.nan),
                       ens.NAIVE: y * rng.uniform(0.5, 1.5, len(y)),
                       ens.AUTOETS: y * rng.uniform(0.5, 1.5, len(y)), ens.MSTL: np.nan})
    ev["date"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(ev["origin"] + ev["h"], unit="D")
    return ev


def test_without_its_own_window_evidence_the_planners_method_is_weighed_on_the_window_days_it_has():
    """A history under two years: the planners' method has forecasts on half the evidence's window days (the
    later inner origins only), so no band's window cell holds its own evidence. Where it tracks those window days
    and LightGBM misses by +-30%, each band's window weight is their fit on the pooled window days it has, shrunk
    toward LightGBM alone by n / (n + shrink_origins) (10 origins); where it misses and LightGBM tracks, LightGBM
    alone; the note says which. With its forecasts on every window day the cells' own evidence decides (no pooling)."""
    from features.forecast_candidates import fit_simplex_lad as lad

    ev = _partial_planners_evidence(planners_good=True)
    model = HolidayForecaster(horizon=40)
    weights, why = model._fit_weights(ev)
    rows = ev[(ev["window"] != "")].dropna(subset=[ens.PLANNERS])
    fit = lad(rows[[ens.LGBM, ens.PLANNERS]].to_numpy(float), rows["y"].to_numpy(float))[1]
    assert fit > 0.9
    expect = 10 / (10 + model.shrink_origins) * fit
    for b in range(len(ens.BAND_NAMES)):
        w = weights[(TOTAL, b, ens.SEEN)]
        assert w[ens.PLANNERS] == pytest.approx(expect) and w[ens.LGBM] == pytest.approx(1 - expect)
        assert "where it has them" in why[(TOTAL, b, ens.SEEN)]
    assert any("weighed on the window days it has" in n for n in model.fallback_notes_)

    bad = _partial_planners_evidence(planners_good=False)
    weights, _ = model._fit_weights(bad)
    for b in range(len(ens.BAND_NAMES)):
        assert weights[(TOTAL, b, ens.SEEN)] == {ens.LGBM: 1.0}
    assert any("earned no weight" in n for n in model.fallback_notes_)

    full = _partial_planners_evidence(planners_good=True, first_with_planners=0)
    _, why = model._fit_weights(full)
    assert not any("where it has them" in why[(TOTAL, b, ens.SEEN)] for b in range(len(ens.BAND_NAMES)))
    assert not any("planners' method has" in n for n in model.fallback_notes_)


def test_evidence_drops_the_planners_rows_whose_growth_could_only_read_the_ramp_up(history):
    """At the first origins a year and four weeks into the data the planners' growth has no 28 day pairs after the
    ramp-up (it falls back to days whose year-before days read low); at the history's end it has them. The
    evidence keeps the planners' forecasts of origins with their growth read and drops the others' (NaN), and
    leaves every other candidate alone."""
    from features.forecast_candidates import LY, planners_growth_read, ramp_days

    settings = Settings(market="CN")
    t_end = len(history.days) - 1
    assert ramp_days(history, t_end) > 0
    first = LY + 27
    assert not planners_growth_read(history, first, settings)
    assert not planners_growth_read(history, first - 1, settings)  # (no planners' forecast at all there)
    assert planners_growth_read(history, t_end - 1, settings)
    ev = pd.DataFrame({"series": TOTAL, "origin": np.repeat([first, t_end - 1], 3), "h": 1, "y": 10.0,
                       ens.PLANNERS: 9.0, ens.LGBM: 11.0, "window": ""})
    out = HolidayForecaster(horizon=H, market="CN")._drop_unread_growth(history, ev)
    assert out.loc[out["origin"] == first, ens.PLANNERS].isna().all()
    assert (out.loc[out["origin"] == t_end - 1, ens.PLANNERS] == 9.0).all()
    assert (out[ens.LGBM] == 11.0).all() and (ev[ens.PLANNERS] == 9.0).all()  # the caller's frame untouched


def test_event_window_prior_follows_the_calendar_aware_fit_on_the_window_evidence():
    """Window evidence (12 origins, two event instances) where LightGBM tracks the actuals and the planners' method
    misses by +-40%: the window cell's prior is their fit on those rows, LightGBM alone, not the half each that
    shrinking the fit toward equal weights by 32 origins (the old prior) keeps."""
    rng = np.random.default_rng(3)
    n_o, h = 12, 10
    y = rng.gamma(20.0, 5.0, n_o * h)
    gw = pd.DataFrame({"series": TOTAL, "origin": np.repeat(np.arange(n_o) * 8, h), "y": y,
                       ens.LGBM: y * rng.uniform(0.95, 1.05, len(y)),
                       ens.PLANNERS: y * np.where(rng.random(len(y)) < 0.5, 0.6, 1.4),
                       "window": np.repeat(["singles_day@2024", "mid_year_618@2024"], n_o * h // 2)})
    for c in (ens.AUTOETS, ens.MSTL, ens.NAIVE):
        gw[c] = np.nan
    prior = HolidayForecaster(horizon=H)._event_aware(gw)
    assert prior[ens.LGBM] == pytest.approx(1.0) and prior[ens.PLANNERS] == pytest.approx(0.0)
    old = HolidayForecaster(horizon=H, aware_shrink_origins=32.0)._event_aware(gw)
    assert old[ens.LGBM] == pytest.approx(0.5 + 0.5 * n_o / (n_o + 32.0))


def test_mstl_with_a_yearly_season_is_calendar_aware_in_event_windows(fitted):
    """Window evidence where MSTL tracks the actuals and LightGBM and the planners' method miss by +-30%: with two
    years of history (MSTL carries a yearly season, it reads last years' same dates) MSTL joins LightGBM and the
    planners' method in the window cell (their fit shrunk toward equal thirds as the prior; the cell's weights go
    to MSTL);
    with less (weekly season only: it cannot see an event coming), or where the evidence's MSTL forecasts came from
    origins before the history held two years, MSTL gets no weight there. The test world's 500 days are too few for
    the yearly season."""
    rng = np.random.default_rng(5)
    n_o, h = 12, 10
    y = rng.gamma(20.0, 5.0, n_o * h)
    gw = pd.DataFrame({"series": TOTAL, "origin": np.repeat(ens.YEARLY_MIN_DAYS + np.arange(n_o) * 8, h), "y": y,
                       ens.LGBM: y * np.where(rng.random(len(y)) < 0.5, 0.7, 1.3),
                       ens.PLANNERS: y * np.where(rng.random(len(y)) < 0.5, 0.7, 1.3),
                       ens.MSTL: y * rng.uniform(0.97, 1.03, len(y)),
                       "window": np.repeat(["christmas@2023", "mid_year@2024"], n_o * h // 2)})
    for c in (ens.AUTOETS, ens.NAIVE):
        gw[c] = np.nan
    yearly = HolidayForecaster(horizon=H)
    yearly.yearly_mstl_ = True
    prior = yearly._event_aware(gw)  # their fit (MSTL alone here) shrunk toward equal thirds by 8 origins
    lam = n_o / (n_o + 8.0)
    assert prior[ens.MSTL] == pytest.approx(lam + (1 - lam) / 3, abs=0.02) and sum(prior.values()) == pytest.approx(1)
    thirds = HolidayForecaster(horizon=H, yearly_shrink_origins=float("inf"))
    thirds.yearly_mstl_ = True
    assert thirds._event_aware(gw) == pytest.approx({ens.LGBM: 1 / 3, ens.PLANNERS: 1 / 3, ens.MSTL: 1 / 3})
    w, why = yearly._cell_weights(yearly._aware_rows(gw)[0], prior, 2, "the calendar-aware candidates",
                                  prior, only=prior)
    assert w[ens.MSTL] > max(w.get(ens.LGBM, 0.0), w.get(ens.PLANNERS, 0.0)) and sum(w.values()) == pytest.approx(1.0)
    weekly = HolidayForecaster(horizon=H)
    weekly.yearly_mstl_ = False
    assert ens.MSTL not in weekly._event_aware(gw)
    # Evidence from origins before the history held two years: that was the weekly MSTL, not the one forecasting.
    early = gw.assign(origin=gw["origin"] - ens.YEARLY_MIN_DAYS)
    assert ens.MSTL not in yearly._event_aware(early)
    model, origin = fitted
    assert model.yearly_mstl_ is False and ens.MSTL not in model._calendar_aware()
    assert len(model.evidence_["origin"].unique()) and ens.YEARLY_MIN_DAYS > 500


def test_evidence_is_out_of_sample(fitted):
    model, origin = fitted
    ev = model.evidence_
    # Every evidence day lies before the origin, and every inner origin after the end of the data the LightGBM
    # evidence model was fitted on (origin - calibration span), so its forecasts there are out of sample.
    assert (ev["date"] <= origin).all()
    days_before = (origin - (ev["date"] - pd.to_timedelta(ev["h"], unit="D"))).dt.days
    assert days_before.min() >= 1 and days_before.max() <= model.lgbm_.calibration_days_


def test_use_pins_the_forecaster_to_one_candidate(history, fitted):
    _, origin = fitted
    pinned = HolidayForecaster.from_params(**FAST, market="CN", use=ens.NAIVE).fit(history, origin)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fc, comps = pinned.forecast_with_components(history, origin, H)
    naive = comps[(comps["series"] == TOTAL) & (comps["method"] == ens.NAIVE)].set_index("date")["p50"]
    assert np.allclose(fc[fc["series"] == TOTAL].set_index("date")["p50"], naive)
    with pytest.raises(ValueError, match="use='nope'"):
        HolidayForecaster(use="nope").fit(history, origin)


def test_the_product_is_the_candidate_that_beats_the_combination():
    def result(model_wape, planners_wape):
        table = pd.DataFrame([
            {"method": rv.MODEL, "slice": "holiday", "wape": model_wape},
            {"method": rv.PLANNERS_ALIGNED, "slice": "holiday", "wape": planners_wape},
            {"method": rv.AUTO_ETS, "slice": "holiday", "wape": 0.5}])
        return rv.BacktestResult(pd.DataFrame(), pd.DataFrame(), table, pd.DataFrame(), pd.DataFrame(), 0.0, [])

    won = rv.choose_product(result(0.20, 0.25))
    assert won.use is None and won.method == rv.MODEL
    lost = rv.choose_product(result(0.21, 0.209))
    assert lost.use == ens.PLANNERS and lost.method == rv.PLANNERS_ALIGNED and "planners_aligned" in lost.reason


# --------------------------------------------------------------------------------------------------------------------
# Market


def test_market_resolution_order(tmp_path, monkeypatch):
    monkeypatch.delenv("AFTERSALES_MARKET", raising=False)
    assert resolve_market(None, Settings(), tmp_path) == ("CN", "default")
    (tmp_path / "dataset.json").write_text(json.dumps({"market": "gb"}))
    assert resolve_market(None, Settings(), tmp_path)[0] == "GB"
    monkeypatch.setenv("AFTERSALES_MARKET", "US")
    assert resolve_market(None, Settings(), tmp_path)[0] == "US"
    assert resolve_market("de", Settings(), tmp_path) == ("DE", "--market")
    monkeypatch.delenv("AFTERSALES_MARKET")
    (tmp_path / "dataset.json").write_text(json.dumps({"market": "XX"}))
    with pytest.raises(ValueError, match=r"dataset\.json: field market 'XX'"):
        resolve_market(None, Settings(), tmp_path)


def test_calendar_fit_warns_naming_the_market_whose_holidays_move_the_data():
    days = pd.date_range("2022-01-01", "2024-06-30", freq="D")
    rng = np.random.default_rng(1)
    y = pd.Series(rng.poisson(50, len(days)).astype(float), index=days)
    from features.calendar import market_events

    ev = market_events("CN", days[0], days[-1])
    cn_only = ev[ev["name"].isin(["spring_festival", "national_day", "labor_day", "dragon_boat_festival"])]
    for d in cn_only["date"]:
        span = pd.date_range(d, d + pd.Timedelta(days=6))
        y.loc[y.index.isin(span)] *= 3.0  # CN-only holidays bring return waves
    msg = market_warning(y, "US")
    assert msg is not None and "fit the CN calendar better than US" in msg and "--market CN" in msg
    assert market_warning(y, "CN") is None


def test_backtest_reports_components_and_the_combination(history):
    origin = history.days[-1] - pd.Timedelta(days=40)
    res = rv.backtest(history, horizon=14, settings=Settings(), model_params={**FAST, "horizon": 14},
                          origin_dates=[origin], progress=False)
    methods = set(res.forecasts["method"])
    assert {rv.MODEL, rv.LIGHTGBM, rv.MSTL_PEER, rv.AUTO_ETS, rv.SEASONAL_NAIVE} <= methods
    comp = res.forecasts[res.forecasts["method"] == rv.LIGHTGBM]
    assert (comp["p10"] == comp["p50"]).all()  # components are point forecasts in the table
