"""The holiday forecaster: the global LightGBM model, the planners' method and statistical peers, combined by
evidence on the user's own history, with conformal P10/P90 calibrated on the combination's own errors.

Candidates (each a P50 per series and day):

- ``lightgbm``: :class:`features.return_volume.ReturnVolumeForecaster` (order pipeline, calendar, last year);
- ``planners``: what demand planners do: last year's same days, aligned by weekday and by each moving event
  (Black Friday, the Spring Festival; :func:`planners_source`), scaled by recent growth
  (:func:`planners_growth`: the ordinary days of the last 91 over the same days a year before); needs a year and
  four weeks of history;
- ``autoets`` and ``mstl``: statsforecast AutoETS (weekly season) and MSTL (weekly, and yearly with two years of
  history) on the ``peer_series`` (default ``total``: ~0.2 s per series and origin);
- ``seasonal_naive``: the same weekday of the last week.

Evidence: inner rolling origins inside the span the LightGBM model already holds out to calibrate itself (it
reaches back before the latest complete major-event window, so it holds holiday days): the LightGBM model fitted on
data before that span forecasts from each inner origin (out of sample), and the other candidates forecast the same
days from the same origins. The errors are split into cells by horizon band (1-7, 8-28, 29+ days) and by whether
the day lies in a major event's after-sales window. Per series and cell, the weights minimise the absolute error
(WAPE) of the combination on the simplex (a linear programme), then shrink toward the best single candidate of
the cell in proportion to how thin the evidence is (few origins, one event instance); a window cell without
evidence takes the band's ordinary-day weights. In an event window only the candidates that see the event coming
count: LightGBM and the planners' method, and MSTL once the history holds two years and a week (its yearly season
reads last years' same dates), weighed on the window rows from origins where it already had that season, its fit
shrunk toward equal thirds. Where the planners' method lacks a band's window evidence (histories under about two
years: the earlier inner origins have no year and four weeks behind them) it is weighed on the window days it has,
pooled over events and bands, that fit shrunk toward LightGBM alone by the number of its origins
(:meth:`HolidayForecaster._pooled_window_weights`). ``use`` pins the forecaster to one candidate (what training does
when a candidate beats the combination on the held-out backtest).

A history shorter than the LightGBM component's minimum (``required_days``; e.g. 13 months of data and an origin
in November): the forecaster fits without it, on the candidates that can run, with the same evidence, weights and
intervals on its own inner origins (every ``inner_step`` days over the span LightGBM would hold out), and says so
(``short_history_note_``, in every ``why`` of :meth:`HolidayForecaster.weights_table`); under four weeks of history,
a HistoryError.

Intervals: split-conformal on the combination's residuals on the same inner origins, relative to the combination's
forecast (floored at a fifth of the series' recent level), per series, horizon band and window/ordinary, with the
finite-sample quantile rank ceil((n + 1) q); window cells are never narrower than the ordinary cell of their
band, and are widened where the evidence holds only one instance of an event.

No MLflow and no HTTP here: training/return_volume.py orchestrates, serving loads the fitted object.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
import pandas as pd

from features.calendar import complete_windows, holiday_windows
from features.forecast_candidates import (
    ALPHA,
    AUTOETS,
    BAND_EDGES,
    BAND_NAMES,
    CANDIDATES,
    DAY_KIND_NAMES,
    DAY_KINDS,
    GROWTH_CLIP,
    GROWTH_DAYS,
    LGBM,
    MSTL,
    NAIVE,
    ORDINARY,
    PLANNERS,
    PLANNERS_AFTER_DAYS,
    SEEN,
    SHORT_MIN_DAYS,
    SHORT_WARMUP_DAYS,
    STAT_PEERS,
    UNSEEN,
    YEARLY_MIN_DAYS,
    band_of,
    conformal_bounds,
    event_level_spread,
    fit_simplex_lad,
    naive_forecast,
    planners_forecast,
    planners_growth,
    planners_growth_read,
    planners_source,
    ramp_days,
    stat_forecasts,
)
from features.return_volume import (
    FORECAST_COLUMNS,
    TOTAL,
    History,
    HistoryError,
    ReturnVolumeForecaster,
    required_days,
    unseen_events,
)
from features.settings import Settings
from features.volume_history import _day

# The public names, the candidates and weight helpers included (in features.forecast_candidates).
__all__ = [
    "LGBM",
    "PLANNERS",
    "AUTOETS",
    "MSTL",
    "NAIVE",
    "CANDIDATES",
    "STAT_PEERS",
    "BAND_EDGES",
    "BAND_NAMES",
    "ALPHA",
    "ORDINARY",
    "SEEN",
    "UNSEEN",
    "DAY_KINDS",
    "DAY_KIND_NAMES",
    "PLANNERS_AFTER_DAYS",
    "GROWTH_CLIP",
    "GROWTH_DAYS",
    "SHORT_WARMUP_DAYS",
    "SHORT_MIN_DAYS",
    "YEARLY_MIN_DAYS",
    "band_of",
    "planners_source",
    "planners_forecast",
    "planners_growth",
    "planners_growth_read",
    "ramp_days",
    "naive_forecast",
    "stat_forecasts",
    "fit_simplex_lad",
    "conformal_bounds",
    "event_level_spread",
    "HolidayForecaster",
]

# --------------------------------------------------------------------------------------------------------------------
# The forecaster


def _column_wape(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """WAPE of each column of ``P`` (one candidate's forecasts per column) against ``y``."""
    return np.abs(y[:, None] - P).sum(axis=0) / max(y.sum(), 1e-9)


class HolidayForecaster:
    """Evidence-weighted combination of LightGBM, the planners' method, AutoETS/MSTL and seasonal naive.

    scikit-learn contract like :class:`ReturnVolumeForecaster`: ``fit(history, origin)`` learns from data up to the
    origin; ``forecast(history, origin, horizon, plan, series)`` gives date, series, p10, p50, p90;
    ``predict(X)`` is the LightGBM component's P10/P50/P90 on feature rows (what the registry's signature logs).

    ``use``: pin to one candidate (weights one-hot) instead of the fitted combination.
    ``shrink_origins``: origins of evidence at which a cell's fitted weights count half (shrinkage toward the
    cell's prior: the series' best single candidate on ordinary days, the calendar-aware candidates in event
    windows). 32: the inner origins are few (about 20 per series, two per event instance in a window cell) and
    their errors overlap, so fitted weights are mostly noise; on the tuning worlds (seeds 100-107) 8 gave a median
    holiday WAPE of 0.244, 32 gave 0.235. ``single_instance_widen``: interval widening in event windows whose
    evidence holds one event instance, and in windows of an event the history never held (1.5: one instance says
    little about the spread. It was 2 while event-window weights mixed in AutoETS/MSTL; with them out of the window
    cells the window residuals are LightGBM's own and wider, and on the tuning worlds 600-607, 700-702, 707, 709
    and six short ones (seeds 96-689) 2 held a median 88% in the holiday windows, 1.5 held 87%, the lowest world 64%
    either way). ``symmetric_instances``: window evidence with fewer event instances than this cannot tell the sign
    of the next instance's error, so the window P90 lies at least as far above the forecast as its P10 lies below
    (seed 600 held 60% without it, 80% with it). ``level_z``: in those same thin-evidence event windows the P90's
    log distance above the forecast is combined in quadrature with ``level_z`` times the series' own event-level
    spread (:func:`event_level_spread`: how much an event's uplift moved from one instance to the next in this
    history, read after the history's ramp-up and, from so few changes, shrunk toward how much ordinary stretches
    move from one year to the next): the evidence's windows are other, smaller events, and the one ahead may come
    in above last year's size by as much as this history's events did (0 turns it off). On the 32 tuning worlds
    (seeds 600-607, 700-711, 800-811) the holiday-window coverage median was 0.84 without it, 0.86 with 1.0 and
    0.88 (the top of the range asked) with 1.2816, the normal 90% point; the lowest world 0.64 either way. The
    spread read the ramp-up's low first weeks as the ordinary level before the first instances' windows until
    then (uplifts of ~e^1 there): on four of 10 long GB tuning histories it said 0.44-0.78 where it now says
    0.05-0.17. ``noise_z``: a cell whose shrunk weights
    are worse on its evidence than its best single candidate by more than this many standard errors (origins as
    the draws) takes that candidate alone: never worse than its best component by more than noise. ``inner_step``: days between inner origins.
    ``aware_shrink_origins``: origins at which the calendar-aware candidates' fit on an event-window cell's evidence
    counts half against equal weights (0: the fit itself is the window cell's prior; see :meth:`_event_aware`).
    ``yearly_shrink_origins``: the same where MSTL with its yearly season is the third calendar-aware candidate
    (histories of ``YEARLY_MIN_DAYS`` and more; its window evidence is the rows from origins where it had that
    season, 5-7 origins and one event instance on the tuning worlds). On the 12 tuning worlds of 737+ days among
    600-611, 700-711 and 800-811, at or below the best baseline / median holiday WAPE / per-world gap median: MSTL
    out of the windows (before) 7 of 12 / 0.245; equal thirds (inf) 9 / 0.229; 32: 8 / 0.230; 8: 9 / 0.226; 3:
    9 / 0.226. Over all 36 worlds: 26 -> 28 wins, median 0.2527 -> 0.2440, per-world gap median 13.4% -> 12.9%
    (inf: 11.2%, 3: 13.2%); 8 loses 600 (0.307 -> 0.336, where MSTL won the evidence's Singles Day and missed
    Christmas) and keeps 609 and 711 lost (0.238 vs 0.233; 0.234 vs 0.222).
    """

    def __init__(self, horizon: int = 60, market: str = "CN", summer_sale: str = "07-15", summer_sale_days: int = 3,
                 peers: bool = True, peer_series: tuple[str, ...] = (TOTAL,), use: str | None = None,
                 inner_step: int = 8, shrink_origins: float = 32.0, single_instance_widen: float = 1.5,
                 min_cell_rows: int = 30, noise_z: float = 2.0, symmetric_instances: int = 3,
                 level_z: float = 1.0, num_threads: int = 1, aware_shrink_origins: float = 0.0,
                 yearly_shrink_origins: float = 8.0, lgbm_params: dict | None = None):
        self.horizon = horizon
        self.market = market
        self.summer_sale = summer_sale
        self.summer_sale_days = summer_sale_days
        self.peers = peers
        self.peer_series = tuple(peer_series)
        self.use = use
        self.inner_step = inner_step
        self.shrink_origins = shrink_origins
        self.single_instance_widen = single_instance_widen
        self.min_cell_rows = min_cell_rows
        self.noise_z = noise_z
        self.symmetric_instances = symmetric_instances
        self.level_z = level_z
        self.num_threads = num_threads
        self.aware_shrink_origins = aware_shrink_origins
        self.yearly_shrink_origins = yearly_shrink_origins
        self.lgbm_params = dict(lgbm_params or {})

    @classmethod
    def from_params(cls, **params) -> HolidayForecaster:
        """A forecaster from one flat parameter dict: its own parameters, the rest go to the LightGBM component
        (e.g. n_estimators, max_rows)."""
        import inspect

        own = set(inspect.signature(cls.__init__).parameters) - {"self", "lgbm_params"}
        lgbm = {**params.pop("lgbm_params", {}), **{k: v for k, v in params.items() if k not in own}}
        return cls(**{k: v for k, v in params.items() if k in own}, lgbm_params=lgbm)

    # -- helpers -----------------------------------------------------------------------------------------------------
    def settings(self) -> Settings:
        """Calendar settings this model was configured with (independent of the environment)."""
        return Settings(market=self.market, summer_sale=self.summer_sale, summer_sale_days=self.summer_sale_days)

    @property
    def min_calibration_days(self) -> int:
        """Days the LightGBM component holds out at the end of the history (its inner evidence span)."""
        return self._lgbm_proto().min_calibration_days

    def _lgbm_proto(self) -> ReturnVolumeForecaster:
        return ReturnVolumeForecaster(horizon=self.horizon, market=self.market, summer_sale=self.summer_sale,
                                      summer_sale_days=self.summer_sale_days, num_threads=self.num_threads,
                                      keep_calibration=True, **self.lgbm_params)

    def _src(self, history: History, end: pd.Timestamp) -> np.ndarray:
        days = pd.date_range(history.days[0], end, freq="D")
        return planners_source(days, history.market, self.settings())

    def _peer_names(self, series: list[str]) -> list[str]:
        return [s for s in self.peer_series if s in series] if self.peers else []

    def _candidates(self, hist: History, t: int, horizon: int, src: np.ndarray, series: list[str],
                    lgbm: np.ndarray | None, ets_spec: dict[str, str] | None = None) -> dict[str, np.ndarray]:
        """Every candidate's P50 (horizon x series, NaN where it has none) at origin index ``t``."""
        S = len(series)
        idx = [hist.series.index(s) for s in series]
        out: dict[str, np.ndarray] = {}
        if lgbm is not None:
            out[LGBM] = lgbm
        pl = planners_forecast(hist, t, horizon, self.settings(), src)
        if pl is not None:
            out[PLANNERS] = pl[:, idx]
        out[NAIVE] = naive_forecast(hist, t, horizon)[:, idx]
        peer = self._peer_names(series)
        if peer:
            for name, arr in stat_forecasts(hist, t, horizon, peer, ets_spec=ets_spec).items():
                full = np.full((horizon, S), np.nan)
                for j, s in enumerate(peer):
                    full[:, series.index(s)] = arr[:, j]
                out[name] = full
        return out

    def _day_kinds(self, hist: History, dates: pd.DatetimeIndex) -> np.ndarray:
        """ORDINARY, SEEN (in the window of an event whose previous instance's window the history holds) or UNSEEN
        (an event the history never held: no candidate has seen it) for each forecast date."""
        inst = self._windows(dates).to_numpy()
        past = holiday_windows(self.market, hist.days[0], hist.days[-1], self.settings())
        seen = set(past.loc[past["window_start"] >= hist.days[0], "event"])
        return np.array([ORDINARY if not i else (SEEN if i.split("@")[0] in seen else UNSEEN) for i in inst])

    def _windows(self, dates: pd.DatetimeIndex) -> pd.Series:
        """Event instance ('name@date') of each date's major-event window, or ''."""
        hw = holiday_windows(self.market, dates.min() - pd.Timedelta(days=40), dates.max(), self.settings())
        out = pd.Series("", index=dates, dtype=object)
        d = pd.Series(dates, index=dates)
        for w in hw.itertuples():
            inside = ((d >= w.window_start) & (d <= w.window_end) & (out == "")).to_numpy()
            out.iloc[inside] = f"{w.event}@{w.event_date.date()}"
        return out

    # -- fit ---------------------------------------------------------------------------------------------------------
    def fit(self, history: History, origin: pd.Timestamp | str | None = None) -> HolidayForecaster:
        """Fit the LightGBM component, gather the inner-origin evidence, fit the weights and the intervals."""
        origin = _day(origin) if origin is not None else history.days[-1]
        if self.use is not None and self.use not in CANDIDATES:
            raise ValueError(f"use={self.use!r}: must be one of {', '.join(CANDIDATES)}")
        self.short_history_note_ = None
        need = required_days(self.horizon, self.min_calibration_days)
        have = int((origin - history.days[0]).days) + 1
        if history.days[0] <= origin <= history.days[-1] and have < need and self.use != LGBM:
            return self._fit_short(history, origin, have, need)
        self.lgbm_ = self._lgbm_proto().fit(history, origin)
        hist = history.upto(origin)
        self.series_ = list(self.lgbm_.series_)
        self.trained_until_ = self.lgbm_.trained_until_
        self.kernels_ = self.lgbm_.kernels_
        self.feature_names_ = self.lgbm_.feature_names_
        self.yearly_mstl_ = bool(self._peer_names(self.series_)) and len(hist.days) >= YEARLY_MIN_DAYS
        self.evidence_ = self._evidence(hist)
        self.level_spread_ = self._level_spread(hist)
        self.event_instances_ = self._event_instances(hist)
        del self.lgbm_.calibration_forecasts_  # evidence kept in self.evidence_; keeps the pickle small
        self.weights_, self.why_ = self._fit_weights(self.evidence_)
        self.intervals_ = self._fit_intervals(self.evidence_, self.weights_)
        return self

    def _fit_short(self, history: History, origin: pd.Timestamp, have: int, need: int) -> HolidayForecaster:
        """Fit without the LightGBM component (the history is shorter than its minimum): the other candidates,
        weighed and calibrated on inner origins every ``inner_step`` days over the span LightGBM would hold out
        (``min_calibration_days``) before the origin, as far as the history reaches."""
        if have < SHORT_MIN_DAYS:
            raise HistoryError(
                f"{have} days of history up to {origin.date()}: too short for any forecaster (the statistical ones "
                f"need {SHORT_WARMUP_DAYS} days to fit and {SHORT_MIN_DAYS - SHORT_WARMUP_DAYS} more to weigh and "
                f"calibrate them on; the LightGBM component needs {need} for a {self.horizon}-day forecast): "
                f"data from {(origin - pd.Timedelta(days=SHORT_MIN_DAYS - 1)).date()} on")
        hist = history.upto(origin)
        t = len(hist.days) - 1
        self.lgbm_ = None
        self.series_ = list(hist.series)
        self.trained_until_ = hist.days[-1]
        self.kernels_ = None
        self.feature_names_ = []
        lo = max(SHORT_WARMUP_DAYS, t - self.min_calibration_days)
        origins = np.arange(t - 1, lo - 1, -max(self.inner_step, 1))[::-1]
        self.yearly_mstl_ = False  # (the fallback's window prior is the planners' method alone)
        self.evidence_ = self._evidence(hist, origins)
        self.level_spread_ = self._level_spread(hist)
        self.event_instances_ = self._event_instances(hist)
        used = [c for c in CANDIDATES if c in self.evidence_.columns and self.evidence_[c].notna().any()]
        self.short_history_note_ = (
            f"history of {have} days up to {origin.date()} is shorter than the {need} days the LightGBM component "
            f"needs for a {self.horizon}-day forecast: forecasting with {', '.join(used)} (weighed and calibrated on "
            f"{len(origins)} inner origins)")
        self.weights_, self.why_ = self._fit_weights(self.evidence_)
        self.why_ = {k: f"{self.short_history_note_}; {v}" for k, v in self.why_.items()}
        self.intervals_ = self._fit_intervals(self.evidence_, self.weights_)
        return self

    def _level_spread(self, hist: History) -> dict[str, float]:
        """Each series' event-level spread (log scale) up to the history's last day (see ``level_z``)."""
        u = event_level_spread(hist, len(hist.days) - 1, self.settings())
        return {s: float(u[hist.series.index(s)]) for s in self.series_}

    def _event_instances(self, hist: History) -> dict[str, int]:
        """How many complete after-sales windows of each major event the history holds after its ramp-up
        (:func:`ramp_days`); an event whose only windows lie in the ramp-up counts 0 (its days lack the returns of
        orders placed before the data began: the forecaster has not seen its size). ``ramp_only_events_``: those."""
        past = complete_windows(self.market, hist.days[0], hist.days[-1], self.settings())
        start = hist.days[0] + pd.Timedelta(days=ramp_days(hist, len(hist.days) - 1))
        after = past["event"][past["window_start"] >= start].value_counts()
        self.ramp_only_events_ = sorted(str(e) for e in set(past["event"]) - set(after.index))
        return {str(k): int(v) for k, v in after.items()}

    def _one_instance_widen(self, series: np.ndarray, band: np.ndarray, kind: np.ndarray,
                            dates: pd.DatetimeIndex) -> np.ndarray:
        """Per forecast row, the factor the interval is widened by in the window of an event whose size the history
        never showed the forecaster (no complete window of it after the ramp-up: only its open instance at the
        origin, or windows in the first weeks whose returns are missing), where nothing else already stands in for
        it: the window cell's own evidence held more than one instance (of other events: it was not widened) and the
        history gives no measure of how much an event's level moves (``level_spread_`` 0); else 1. An event seen
        once after the ramp-up is not widened: on the short tuning histories whose Christmas lay after the ramp-up
        (649, 681, 709, 721, 737) its window came within -0.20..+0.21 (log) of the forecast and x1.5 held 98-100%;
        where it lay in the ramp-up or before the data (674, 700, 702, 732; 614, 690, 725, 739) +0.4..+0.8."""
        counts = getattr(self, "event_instances_", None)
        if counts is None:  # fitted before this rule
            return np.ones(len(series))
        # Fitted before counts were read after the ramp-up: one instance or none, as then.
        most = 0 if hasattr(self, "ramp_only_events_") else 1
        event = self._windows(pd.DatetimeIndex(dates).unique()).str.split("@").str[0]
        one = {d: (e != "" and counts.get(e, 0) <= most) for d, e in event.items()}
        widened = getattr(self, "interval_widened_", {})
        spread = getattr(self, "level_spread_", {})
        return np.array([self.single_instance_widen
                         if k == SEEN and one[pd.Timestamp(d)] and not widened.get((s, int(b)), False)
                         and spread.get(s, 0.0) <= 0 else 1.0
                         for s, b, k, d in zip(series, band, kind, dates, strict=True)])

    @property
    def _fallback(self) -> str:
        """The candidate a cell without evidence takes: LightGBM, or seasonal naive when fitted without it."""
        return NAIVE if getattr(self, "lgbm_", True) is None else LGBM

    def _evidence(self, hist: History, origins: np.ndarray | None = None) -> pd.DataFrame:
        """Rows (series, origin, h, date, y, level, band, window, <candidate>...) at the inner origins (the
        LightGBM component's calibration origins, or ``origins`` when fitted without it)."""
        t = len(hist.days) - 1
        if origins is None:
            cal = self.lgbm_.calibration_forecasts_
            all_o = np.sort(cal["origin"].unique())
            # Every inner_step-th day from the latest origin back (stride of the LightGBM rows is 3 days).
            keep = all_o[(all_o.max() - all_o) % max(self.inner_step, 1) < 3]
            keep = keep[np.r_[True, np.diff(keep) >= min(self.inner_step, 3)]] if len(keep) else keep
            cal = cal[cal["origin"].isin(keep)]
            lg = cal.pivot_table(index=["origin", "h"], columns="series", values="p50")
        else:
            keep, lg = np.asarray(origins, dtype=int), None
        series = self.series_
        src = self._src(hist, hist.days[-1])
        y = hist.y[series].to_numpy(dtype=float)
        lvl = pd.DataFrame(y).rolling(28, min_periods=1).mean().to_numpy()
        frames = []
        self.ets_spec_: dict[str, str] = {}
        for o in keep:
            o = int(o)
            H = min(self.horizon, t - o)
            if H < 1:
                continue
            lgbm = (lg.loc[o].reindex(index=np.arange(1, H + 1), columns=series).to_numpy(dtype=float)
                    if lg is not None else None)
            cands = self._candidates(hist, o, H, src[:o + H + 1], series, lgbm, self.ets_spec_)
            h = np.arange(1, H + 1)
            base = pd.DataFrame({"series": np.repeat(series, H), "origin": o, "h": np.tile(h, len(series)),
                                 "y": y[o + 1:o + H + 1].T.ravel(), "level": np.repeat(lvl[o], H)})
            for name, arr in cands.items():
                base[name] = arr.T.ravel()
            frames.append(base)
        if not frames:
            raise HistoryError("no inner origins to weigh the forecasters on: lengthen the history")
        ev = pd.concat(frames, ignore_index=True)
        for c in CANDIDATES:
            if c not in ev.columns:
                ev[c] = np.nan
        ev["date"] = hist.days[(ev["origin"] + ev["h"]).to_numpy()]
        win = self._windows(pd.DatetimeIndex(ev["date"].unique()))
        ev["window"] = ev["date"].map(win).fillna("")
        ev["band"] = band_of(ev["h"].to_numpy())
        return self._drop_unread_growth(hist, ev)

    def _drop_unread_growth(self, hist: History, ev: pd.DataFrame) -> pd.DataFrame:
        """The planners' method's evidence without the inner origins at which its growth could not be read on the
        day pairs it asks for (:func:`planners_growth_read`: the first weeks after a year and four weeks of a
        history, whose year-before days lie in the ramp-up): there it forecast with a growth of 2-4 where the
        origin's own was 1-2 (WAPE 1.0-1.3 against LightGBM's 0.2-0.3), which says nothing of the forecast ahead,
        whose origin has its growth. Histories whose inner origins all have it (about two years and more) keep every
        row. ``unread_growth_origins_``: how many origins were dropped."""
        has = ev.loc[ev[PLANNERS].notna(), "origin"].unique()
        unread = [int(o) for o in has if not planners_growth_read(hist, int(o), self.settings())]
        self.unread_growth_origins_ = len(unread)
        if unread:
            ev = ev.copy()
            ev.loc[ev["origin"].isin(unread), PLANNERS] = np.nan
        return ev

    def _cell_weights(self, g: pd.DataFrame, parent: dict[str, float] | None, n_instances: int,
                      parent_name: str = "the series' weights over all days",
                      eligible: Iterable[str] | None = None,
                      only: Iterable[str] | None = None) -> tuple[dict[str, float], str]:
        """Weights of one cell: the WAPE-optimal combination on its rows, shrunk toward ``parent`` (or, at the top,
        toward the best single candidate) by n / (n + shrink_origins), n = the cell's origins (two per event
        instance in a window cell: the origins before one event share its surprises)."""
        avail = [c for c in CANDIDATES if g[c].notna().mean() >= 0.9 and (only is None or c in only)]
        g = g.dropna(subset=avail) if avail else g
        if not avail or len(g) < self.min_cell_rows:
            return (dict(parent) if parent else {self._fallback: 1.0}), (f"{len(g)} days: too few, takes its "
                                                                          f"parent's weights")
        P, y = g[avail].to_numpy(dtype=float), g["y"].to_numpy(dtype=float)
        err = _column_wape(P, y)
        best = int(np.argmin(err))
        w_opt = fit_simplex_lad(P, y)
        n_o = g["origin"].nunique()
        n_eff = min(n_o, 2 * n_instances) if n_instances else n_o
        lam = n_eff / (n_eff + self.shrink_origins)
        if parent and sum(parent.values()) > 0:
            # The parent keeps its weight on candidates this cell has no evidence for (e.g. the planners' method
            # before a year of history): no evidence is not evidence against.
            prior = {c: v / sum(parent.values()) for c, v in parent.items()}
            toward = parent_name
        else:
            prior, toward = {avail[best]: 1.0}, "the best single candidate"
        w = {c: (1 - lam) * v for c, v in prior.items()}
        for c, v in zip(avail, w_opt, strict=True):
            w[c] = w.get(c, 0.0) + lam * v
        pw = np.array([w.get(c, 0.0) for c in avail])
        comb = np.abs(y - P @ (pw / pw.sum())).sum() / max(y.sum(), 1e-9) if pw.sum() > 0 else float("nan")
        why = (f"{len(g)} days from {n_o} origins"
               + (f", {n_instances} event instance(s)" if n_instances else "")
               + "; WAPE " + ", ".join(f"{c} {100 * e:.1f}%" for c, e in zip(avail, err, strict=True))
               + f"; combination {100 * comb:.1f}% (shrunk {1 - lam:.0%} toward {toward}: "
               + ", ".join(f"{c} {v:.2f}" for c, v in prior.items() if v > 0) + ")")
        # The guard compares with the best candidate allowed here (in an event window: one that knows the calendar).
        ok = [i for i, c in enumerate(avail) if eligible is None or c in eligible]
        if ok and pw.sum() > 0:
            b = min(ok, key=lambda i: err[i])
            margin = self._noise_margin(g, y, P @ (pw / pw.sum()), P[:, b])
            if comb - err[b] > margin:
                # The shrunk weights lose to one candidate by more than the noise of the evidence: that candidate.
                return {avail[b]: 1.0}, (why + f"; worse than {avail[b]} by {100 * (comb - err[b]):.1f} points, "
                                               f"beyond the noise margin {100 * margin:.1f}: {avail[b]} alone")
        return {c: float(v) for c, v in w.items() if v > 1e-4}, why

    def _noise_margin(self, g: pd.DataFrame, y: np.ndarray, p_comb: np.ndarray, p_best: np.ndarray) -> float:
        """How much worse (WAPE points) the combination may be than the best single candidate on a cell's
        evidence before that is more than noise: ``noise_z`` standard errors of the WAPE difference, with the
        origins as the independent draws (the days after one origin share its surprises)."""
        d = pd.Series(np.abs(y - p_comb) - np.abs(y - p_best)).groupby(g["origin"].to_numpy()).sum().to_numpy()
        if len(d) < 2:
            return 0.0
        return float(self.noise_z * np.sqrt(len(d)) * d.std(ddof=1) / max(y.sum(), 1e-9))

    def _calendar_aware(self) -> tuple[str, ...]:
        """The candidates that see an event coming: LightGBM and the planners' method, and MSTL where the history
        up to the origin is long enough for its yearly season (``yearly_mstl_``: it then reads last years' same
        dates, as the planners' method does, smoothed over two years)."""
        return (LGBM, PLANNERS) + ((MSTL,) if getattr(self, "yearly_mstl_", False) else ())

    def _aware_rows(self, gw: pd.DataFrame) -> tuple[pd.DataFrame, tuple[str, ...]]:
        """The event-window rows the calendar-aware candidates are weighed on, and those candidates. MSTL counts
        only on evidence of the MSTL the forecast uses: the rows from inner origins whose history already held its
        yearly season (``YEARLY_MIN_DAYS``; from earlier origins it was the weekly MSTL, which cannot see an event
        coming); with too few such rows (``min_cell_rows``) it gets no weight in the window, as a calendar-aware
        candidate without window evidence does."""
        names = self._calendar_aware()
        if MSTL not in names or not len(gw):
            return gw, tuple(c for c in names if c != MSTL)
        yearly = gw[gw["origin"].to_numpy() + 1 >= YEARLY_MIN_DAYS]
        if len(yearly) < self.min_cell_rows or yearly[MSTL].notna().mean() < 0.9:
            return gw, tuple(c for c in names if c != MSTL)
        return yearly, names

    def _event_aware(self, gw: pd.DataFrame) -> dict[str, float] | None:
        """The prior of an event-window cell: only candidates that know the calendar (:meth:`_calendar_aware`:
        LightGBM and the planners' method, and MSTL once it carries its yearly season; AutoETS, the weekly MSTL and
        seasonal naive cannot see an event coming, and their window evidence comes from other, mostly smaller
        events than the one ahead). A calendar-aware candidate without forecasts on the
        window evidence (the planners' method before a year and four weeks of history at the inner origins) gets
        no weight here: nothing in the cell shows it would not be worse than LightGBM by more than noise (its
        window weight then comes from the window days it does have: :meth:`_pooled_window_weights`). Both with evidence: their
        fit on the window rows, shrunk toward equal weights by ``aware_shrink_origins`` (until the fifth round 32,
        as the cells' ``shrink_origins``: the evidence holds one or two instances of each event:
        too few to tell the two apart; shrinking toward the better of the two on the window rows instead won 7 of 7
        tuning worlds 600-607 but lost 708 and 711 to the planners' method and MSTL, and with MSTL's yearly season
        among them tuning world 606 lost 0.197 -> 0.226 and 703 gained nothing)."""
        # Now: their fit on the window rows unshrunk (``aware_shrink_origins`` 0). Shrunk toward equal weights by 32
        # origins it kept the planners' method near half in every window, while on 39 tuning worlds (600-607,
        # 700-711, 14 CN and 10 GB of 609-759) LightGBM beat it in the target's windows on 27 of 34 (h1-28: 0.216
        # against the combination's 0.239 on the 14 CN): the evidence's windows (other events) tell which of the
        # two is better more often than not, though not by how much. Unshrunk, on those 39: at or below the best
        # baseline 27 -> 28, median holiday WAPE 0.251 -> 0.242 (CN 0.251 -> 0.243), mean 0.2532 -> 0.2525, but the
        # per-world median 10.2% -> 9.2% below the best baseline: 0.01-0.03 worse where the planners' method carried
        # the windows (600, 601, 606, 711, 652, 670).
        gw, names = self._aware_rows(gw)
        aware = [c for c in names if gw[c].notna().mean() >= 0.9] if len(gw) else []
        if self._fallback != LGBM:  # fitted without LightGBM: the planners' method where it runs, else nothing
            return {PLANNERS: 1.0} if PLANNERS in aware else None
        if len(aware) < 2 or len(gw) < self.min_cell_rows:
            return {LGBM: 1.0}
        g = gw.dropna(subset=aware)
        w = fit_simplex_lad(g[aware].to_numpy(dtype=float), g["y"].to_numpy(dtype=float))
        if MSTL in aware:
            # Three calendar-aware candidates on the window rows where MSTL had its yearly season (origins of the
            # last weeks only; their windows are one or two other, smaller events), each reading the event's past
            # instances its own way (order projections, last year's days, two years' yearly cycle): their fit
            # counts half at ``yearly_shrink_origins`` origins against equal thirds (inf: equal thirds).
            k = float(getattr(self, "yearly_shrink_origins", 8.0))
        else:
            k = float(getattr(self, "aware_shrink_origins", 32.0))  # fitted before it existed: the old shrinkage
        n = g["origin"].nunique()
        lam = n / (n + k) if k > 0 else 1.0
        return {c: float(lam * v + (1 - lam) / len(aware)) for c, v in zip(aware, w, strict=True)}

    def _pooled_window_weights(self, gw: pd.DataFrame, pooled: pd.DataFrame
                               ) -> tuple[dict[str, float], str] | None:
        """The event-window weights of a band whose window evidence the planners' method lacks (forecasts on under
        90% of the rows: it needs a year and four weeks of history before an inner origin, and the earlier inner
        origins of a history under about two years do not have them), from the window days it does have:
        ``pooled``, the series' window rows over every band and event, where LightGBM and it both forecast (the
        later inner origins; the events whose earlier instance the history holds). Their fit on those rows (LAD on
        the simplex) shrunk toward LightGBM alone, the prior without evidence, by n / (n + ``shrink_origins``), n
        those rows' origins (the cells' own shrinkage for thin evidence). None where it does not apply: the band's
        window rows have the planners' forecasts (the cell's own evidence decides), there are none, the
        forecaster was fitted without LightGBM, or the pooled rows are fewer than ``min_cell_rows``.

        Before, such a band's windows were LightGBM's alone. On the tuning worlds of 514-708 days without the
        planners' window evidence (20: seeds 402-430, 603-810, 900-909) the pooled fit gave it 0-0.7 before
        shrinking (11-18 origins); holiday WAPE of LightGBM alone 0.2452 mean, of this 0.2413 (603 0.178 -> 0.174,
        604 0.332 -> 0.311, 430 0.282 -> 0.270, 900 0.164 -> 0.161; 705 0.343 -> 0.344, 402 0.329 -> 0.329); the
        pooled fit unshrunk gave 0.2477 (705 0.411, 603 0.214: the evidence's windows are other, smaller events).
        Proxy evidence from ordinary days (the same comparison on the ordinary rows) gave 0.2434-0.2440: the
        planners' method copies last year's daily noise, and on ordinary days that loses to LightGBM everywhere.
        With the rows whose growth read the ramp-up dropped (:meth:`_drop_unread_growth`), `benchmark-models` on
        seeds 600-611, 700-711, 800-811, 900-911 against main: holiday WAPE changed on 9 of 48 worlds (8 of 25 under
        737 days, and 804, 748 days of data but 611 before its origin), mean of the 25 0.2902 -> 0.2881 (604 0.332
        -> 0.312, 900 0.173 -> 0.161, 809 0.246 -> 0.239; 705 0.3432 -> 0.3438 the only loss), wins 38 of 48
        either way, the other long histories identical, coverage median 0.889 and lowest 0.467 (901, unchanged)."""
        if self._fallback != LGBM or not len(gw) or gw[PLANNERS].notna().mean() >= 0.9:
            return None
        g = pooled.dropna(subset=[LGBM, PLANNERS])
        if len(g) < self.min_cell_rows:
            return None
        P, y = g[[LGBM, PLANNERS]].to_numpy(dtype=float), g["y"].to_numpy(dtype=float)
        w = fit_simplex_lad(P, y)
        n = g["origin"].nunique()
        lam = n / (n + self.shrink_origins)
        wp = float(lam * w[1])
        err = _column_wape(P, y)
        why = (f"the planners' method has forecasts on {gw[PLANNERS].notna().mean():.0%} of this band's {len(gw)} "
               f"window days; on the {len(g)} window days of {n} origins where it has them (all bands, "
               f"{g['window'].nunique()} event instance(s)): WAPE {LGBM} {100 * err[0]:.1f}%, {PLANNERS} "
               f"{100 * err[1]:.1f}%, fit {PLANNERS} {w[1]:.2f}, shrunk {1 - lam:.0%} toward {LGBM} alone")
        if wp <= 1e-4:
            return {LGBM: 1.0}, why
        return {LGBM: 1.0 - wp, PLANNERS: wp}, why

    def _fit_weights(self, ev: pd.DataFrame) -> tuple[dict, dict]:
        weights: dict[tuple[str, int, bool], dict[str, float]] = {}
        why: dict[tuple[str, int, bool], str] = {}
        self.fallback_notes_: list[str] = []
        win_rows = ev[ev["window"] != ""]
        no_window_evidence = (self.use is None and self._fallback == LGBM
                              and (win_rows.empty or win_rows[PLANNERS].notna().mean() < 0.9))
        pooled_used: dict[int, float] = {}  # band -> the planners' method's window weight of TOTAL from pooled rows
        for s, gs in ev.groupby("series", sort=False):
            if self.use is not None:
                for b in range(len(BAND_NAMES)):
                    for w in DAY_KINDS:
                        weights[(s, b, w)] = {self.use: 1.0}
                        why[(s, b, w)] = f"pinned to {self.use}"
                continue
            overall, _ = self._cell_weights(gs, None, 0)
            for b in range(len(BAND_NAMES)):
                gb = gs[gs["band"] == b]
                ordinary, why_o = self._cell_weights(gb[gb["window"] == ""], overall, 0)
                gw = gb[gb["window"] != ""]
                n_inst = max(gw["window"].nunique(), 1)
                aware = self._event_aware(gw)
                gwa = self._aware_rows(gw)[0]  # with MSTL among them: the rows where it had its yearly season
                pooled = self._pooled_window_weights(gw, gs[gs["window"] != ""])
                if pooled is not None:
                    in_win, why_w = pooled
                    if s == TOTAL:
                        pooled_used[b] = in_win.get(PLANNERS, 0.0)
                else:
                    in_win, why_w = (self._cell_weights(gwa, aware, max(gwa["window"].nunique(), 1),
                                                        "the calendar-aware candidates", aware, only=aware)
                                     if aware is not None else
                                     self._cell_weights(gw, ordinary, n_inst, "the band's ordinary-day weights"))
                unseen, why_u = self._cell_weights(gw, ordinary, n_inst, "the band's ordinary-day weights")
                weights[(s, b, ORDINARY)], why[(s, b, ORDINARY)] = ordinary, why_o
                weights[(s, b, SEEN)], why[(s, b, SEEN)] = in_win, why_w
                weights[(s, b, UNSEEN)], why[(s, b, UNSEEN)] = unseen, why_u
        if no_window_evidence:
            has = (f"the planners' method has forecasts on only {win_rows[PLANNERS].notna().mean():.0%} of the "
                   "evidence's window days (it needs a year and four weeks of history before an inner origin, and "
                   "its growth read after the history's ramp-up)")
            if any(v > 0 for v in pooled_used.values()):
                self.fallback_notes_.append(
                    f"event windows: {has}; weighed on the window days it has, pooled over events and horizons and "
                    "shrunk toward LightGBM, it carries "
                    + ", ".join(f"{pooled_used[b]:.0%} in {BAND_NAMES[b]}" for b in sorted(pooled_used))
                    + f" of {TOTAL}'s windows; LightGBM the rest")
            elif pooled_used:
                self.fallback_notes_.append(
                    f"event windows: {has}, and on those it earned no weight against LightGBM, which carries the "
                    "calendar")
            elif win_rows.empty or win_rows[PLANNERS].isna().all():
                self.fallback_notes_.append(
                    "event windows: the planners' method has no forecasts on the evidence's window days (it needs a "
                    "year and four weeks of history before an inner origin), so it gets no weight there; LightGBM "
                    "carries the calendar")
            else:
                self.fallback_notes_.append(
                    f"event windows: {has}, too few to weigh it on, so it gets no weight there; LightGBM carries the "
                    "calendar")
        for (s, b, w), text in why.items():
            if s == TOTAL and "beyond the noise margin" in text:
                self.fallback_notes_.append(f"{TOTAL}, {BAND_NAMES[b]}, {DAY_KIND_NAMES[w]}: "
                                            + text[text.index("worse than"):])
        return weights, why

    def _combine_rows(self, frame: pd.DataFrame, weights: dict) -> np.ndarray:
        """The combination's P50 on rows with columns series, band, window (or in_window), <candidate>..."""
        out = np.full(len(frame), np.nan)
        win = ((frame["window"] != "").to_numpy().astype(int) if "window" in frame.columns
               else frame["in_window"].to_numpy().astype(int))
        keys = list(zip(frame["series"], frame["band"].astype(int), win, strict=True))
        key_arr = pd.Series(keys)
        for key, idx in key_arr.groupby(key_arr).groups.items():
            w = weights.get(key) or {self._fallback: 1.0}
            idx = np.asarray(idx)
            sub = frame.iloc[idx]
            num = np.zeros(len(idx))
            den = np.zeros(len(idx))
            for c, wc in w.items():
                v = sub[c].to_numpy(dtype=float) if c in sub.columns else np.full(len(idx), np.nan)
                ok = ~np.isnan(v)
                num += np.where(ok, wc * v, 0.0)
                den += np.where(ok, wc, 0.0)
            # A candidate without a forecast on a row (e.g. no last year's day): the others' weights renormalise;
            # nothing at all: LightGBM alone (seasonal naive when fitted without it).
            fb = self._fallback
            lg = sub[fb].to_numpy(dtype=float) if fb in sub.columns else np.full(len(idx), np.nan)
            out[idx] = np.where(den > 0, num / np.where(den > 0, den, 1.0), lg)
        return out

    def _rel_residual(self, y: np.ndarray, p: np.ndarray, level: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = np.maximum(p, 0.2 * level) + 1e-9
        return (y - p) / d, d

    def _fit_intervals(self, ev: pd.DataFrame, weights: dict) -> dict:
        p = self._combine_rows(ev, weights)
        ok = ~np.isnan(p)
        r, _ = self._rel_residual(ev["y"].to_numpy(float), np.nan_to_num(p), ev["level"].to_numpy(float))
        f = pd.DataFrame({"series": ev["series"], "band": ev["band"], "win": ev["window"] != "",
                          "inst": ev["window"], "r": r})[ok]
        table: dict[tuple[str, int, bool], tuple[float, float]] = {}
        self.interval_notes_ = {}
        self.interval_widened_: dict[tuple[str, int], bool] = {}
        for s, gs in f.groupby("series", sort=False):
            all_lo, all_hi = conformal_bounds(gs.loc[~gs["win"], "r"] if (~gs["win"]).sum() >= 20 else gs["r"])
            for b in range(len(BAND_NAMES)):
                gb = gs[gs["band"] == b]
                go = gb[~gb["win"]]
                lo_o, hi_o = conformal_bounds(go["r"]) if len(go) >= 20 else (all_lo, all_hi)
                lo_o, hi_o = min(lo_o, 0.0), max(hi_o, 0.0)
                gw = gb[gb["win"]]
                n_inst = gw["inst"].nunique()
                if len(gw) >= 20:
                    lo_w, hi_w = conformal_bounds(gw["r"])
                else:  # no window evidence in this band: the series' window residuals over all bands, if any
                    gw_all = gs[gs["win"]]
                    lo_w, hi_w = conformal_bounds(gw_all["r"]) if len(gw_all) >= 20 else (lo_o, hi_o)
                    n_inst = gw_all["inst"].nunique()
                widen = self.single_instance_widen if n_inst <= 1 else 1.0
                self.interval_widened_[(s, b)] = widen != 1.0
                sym = n_inst < self.symmetric_instances
                lo_w, hi_w = min(lo_w, 0.0) * widen, max(hi_w, 0.0) * widen
                table[(s, b, ORDINARY)] = (lo_o, hi_o)
                table[(s, b, SEEN)] = (min(lo_w, lo_o), max(hi_w, hi_o))  # never narrower than ordinary days
                if sym:  # one or two instances do not tell the sign of the next one's error: actuals as far above
                    # the forecast as they fell below it (the P10 keeps its own; this bound covers the widened
                    # window P10 and the ordinary days' alike)
                    lo_s, hi_s = table[(s, b, SEEN)]
                    hi_sym = max(hi_s, -lo_s)
                    # ... and the next instance's size may move from its last one's as this history's events did.
                    u = self.level_z * getattr(self, "level_spread_", {}).get(s, 0.0)
                    hi_lvl = max(float(np.expm1(np.hypot(np.log1p(hi_sym), u))), hi_sym)  # (rounding at u 0)
                    table[(s, b, SEEN)] = (lo_s, hi_lvl)
                    if s == TOTAL:
                        self.fallback_notes_.append(
                            f"{TOTAL}, {BAND_NAMES[b]}: the event-window P90 is at least as far above the forecast as "
                            f"its P10 is below ({hi_sym:.0%}): the evidence holds {n_inst} event "
                            "instance(s), too few to tell the sign of the next one's error"
                            + (f"; widened to {hi_lvl:.0%} for the event level's own spread in this history "
                               f"({u / max(self.level_z, 1e-9):.2f} on log scale, x{self.level_z:g})" if u > 0 else ""))
                # An event the history never held: its window is widened as for a single instance.
                k = self.single_instance_widen if widen == 1.0 else 1.0
                table[(s, b, UNSEEN)] = (table[(s, b, SEEN)][0] * k, table[(s, b, SEEN)][1] * k)
                self.interval_notes_[(s, b)] = (f"{len(go)} ordinary and {len(gw)} window days, {n_inst} event "
                                                f"instance(s)" + (f" (widened x{widen:.2f})" if widen != 1 else "")
                                                + (" (window P90 raised to the P10's distance: too few instances to "
                                                   "tell the sign of the next one's error)" if sym else ""))
        ones = list(getattr(self, "ramp_only_events_", []))
        ahead = [e for e in self._unseen_ahead() if e not in ones]
        if (ones or ahead) and getattr(self, "level_spread_", {}).get(TOTAL, 1.0) <= 0:
            parts = ([f"the history holds {', '.join(ones)} only in its first weeks, whose days lack the returns of "
                      "orders placed before the data began"] if ones else [])
            parts += ([f"the forecast's {self.horizon} days reach the window of {', '.join(ahead)}, of which the "
                       "history holds no complete window"] if ahead else [])
            self.fallback_notes_.append(
                f"{TOTAL}: " + "; ".join(parts) + ", and no measure of how much an event's level moves from one "
                f"instance to the next: their windows' intervals are widened x{self.single_instance_widen:g} (where "
                f"the window evidence, of other events, was not)")
        return table

    def _unseen_ahead(self) -> list[str]:
        """The major events whose windows the forecast's ``horizon`` days after the last training day reach and of
        which the history holds no complete window after its ramp-up (``event_instances_`` 0: what
        :meth:`_one_instance_widen` widens, open at the origin or not yet begun), for the fit's note."""
        counts, until = getattr(self, "event_instances_", None), getattr(self, "trained_until_", None)
        if counts is None or until is None:
            return []
        dates = pd.date_range(pd.Timestamp(until) + pd.Timedelta(days=1), periods=self.horizon, freq="D")
        events = self._windows(dates).str.split("@").str[0]
        return sorted({str(e) for e in events if e and counts.get(str(e), 0) == 0})

    # -- predict -----------------------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise RuntimeError("HolidayForecaster is not fitted: call fit(history, origin) first")

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        """The LightGBM component's P10/P50/P90 for feature rows (see ReturnVolumeForecaster.predict)."""
        self._check_fitted()
        if self.lgbm_ is None:
            raise RuntimeError(f"no LightGBM component to predict feature rows with: {self.short_history_note_}")
        return self.lgbm_.predict(X)

    def forecast(self, history: History, origin: pd.Timestamp | str | None = None, horizon: int | None = None,
                 plan: pd.DataFrame | None = None, series: Iterable[str] | None = None) -> pd.DataFrame:
        """P10/P50/P90 per series for the ``horizon`` days after ``origin`` (see ReturnVolumeForecaster.forecast)."""
        return self.forecast_with_components(history, origin, horizon, plan, series)[0]

    def forecast_with_components(self, history: History, origin=None, horizon: int | None = None,
                                 plan: pd.DataFrame | None = None, series: Iterable[str] | None = None
                                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(the forecast, each candidate's P50 in long format: date, series, method, p50, weight)."""
        self._check_fitted()
        horizon = int(horizon or self.horizon)
        origin = _day(origin) if origin is not None else history.days[-1]
        if self.lgbm_ is None:
            names = self._check_short_forecast(history, origin, horizon, series)
            lgbm = None
            if plan is not None:
                warnings.warn("the order plan is not applied: it acts through the LightGBM component, which "
                              f"this forecaster was fitted without ({self.short_history_note_})", stacklevel=2)
            delta = np.zeros(len(names) * horizon)
        else:
            lg = self.lgbm_.forecast(history, origin, horizon, plan=None)  # validates origin, horizon, series
            if plan is not None:
                lg_plan = self.lgbm_.forecast(history, origin, horizon, plan=plan)
                delta = (lg_plan["p50"] - lg["p50"]).to_numpy()
            else:
                delta = np.zeros(len(lg))
            names = list(dict.fromkeys(lg["series"]))
            lgbm = lg.pivot(index="date", columns="series", values="p50")[names].to_numpy(dtype=float)
        hist = history.upto(origin)
        t = len(hist.days) - 1
        src = self._src(hist, hist.days[-1] + pd.Timedelta(days=horizon))
        cands = self._candidates(hist, t, horizon, src, names, lgbm)
        H = horizon
        dates = hist.days[-1] + pd.to_timedelta(np.arange(1, H + 1), unit="D")
        win = self._day_kinds(hist, pd.DatetimeIndex(dates))
        frame = pd.DataFrame({"series": np.repeat(names, H), "date": np.tile(dates, len(names)),
                              "band": np.tile(band_of(np.arange(1, H + 1)), len(names)),
                              "in_window": np.tile(win, len(names))})
        for name, arr in cands.items():
            frame[name] = arr.T.ravel()
        p50 = self._combine_rows(frame, self.weights_)
        level = pd.DataFrame(hist.y[names].to_numpy(float)).rolling(28, min_periods=1).mean().to_numpy()[t]
        _, d = self._rel_residual(np.zeros(len(frame)), p50, np.repeat(level, H))
        q = np.array([self.intervals_.get((s, int(b), int(w)), (0.0, 0.0))
                      for s, b, w in zip(frame["series"], frame["band"], frame["in_window"], strict=True)])
        # The window of an event with one past instance, where nothing else widened the interval for it.
        q = q * self._one_instance_widen(frame["series"].to_numpy(), frame["band"].to_numpy(),
                                         frame["in_window"].to_numpy(), pd.DatetimeIndex(frame["date"]))[:, None]
        # lg is sorted by series (model order) then date, as frame is.
        p50 = np.maximum(p50 + delta, 0.0)
        out = pd.DataFrame({"date": frame["date"].to_numpy(), "series": frame["series"].to_numpy(),
                            "p10": np.maximum(p50 + q[:, 0] * d, 0.0), "p50": p50,
                            "p90": np.maximum(p50 + q[:, 1] * d, 0.0)})
        out["p10"] = np.minimum(out["p10"], out["p50"])
        if series is not None:
            keep = set(series) | {TOTAL}
            out = out[out["series"].isin(keep)].reset_index(drop=True)
        comps = []
        for name in cands:
            w = [self.weights_.get((s, int(b), int(iw)), {}).get(name, 0.0)
                 for s, b, iw in zip(frame["series"], frame["band"], frame["in_window"], strict=True)]
            comps.append(pd.DataFrame({"date": frame["date"], "series": frame["series"], "method": name,
                                       "p50": frame[name], "weight": w}))
        comp = pd.concat(comps, ignore_index=True).dropna(subset=["p50"])
        return out[FORECAST_COLUMNS], comp

    def _check_short_forecast(self, history: History, origin: pd.Timestamp, horizon: int,
                              series: Iterable[str] | None) -> list[str]:
        """The checks the LightGBM component's forecast makes, for a forecaster fitted without it; the series."""
        if not 1 <= horizon <= self.horizon:
            raise ValueError(f"horizon {horizon} must be between 1 and {self.horizon} (the horizon this model was "
                             f"trained for); train with a longer horizon for more")
        if origin < self.trained_until_:
            raise ValueError(f"origin {origin.date()} is before this model's training end "
                             f"{self.trained_until_.date()}: it has seen data after the origin")
        if origin > history.days[-1]:
            raise HistoryError(f"origin {origin.date()} is after the last day of data {history.days[-1].date()}")
        wanted = list(series) if series is not None else list(self.series_)
        unknown = [s for s in wanted if s not in self.series_]
        if unknown:
            raise ValueError(f"unknown series {', '.join(unknown)}; this model forecasts {', '.join(self.series_)}")
        missing = [s for s in self.series_ if s not in history.series]
        if missing:
            raise HistoryError(f"the data lacks series {', '.join(missing)} that the model was trained on")
        for msg in unseen_events(history.upto(origin), origin, horizon, self.settings()):
            warnings.warn(f"no previous instance of {msg}; no candidate of this forecaster sees it coming",
                          stacklevel=3)
        return list(self.series_)

    # -- explain -----------------------------------------------------------------------------------------------------
    def fallback_notes(self) -> list[str]:
        """Where thin evidence made the forecaster fall back from its fitted combination, and why: a history too
        short for LightGBM, a calendar-aware candidate without window evidence, a cell whose weights lost to one
        candidate beyond the noise margin, event-window intervals made symmetric (one line each)."""
        self._check_fitted()
        notes = [self.short_history_note_] if getattr(self, "short_history_note_", None) else []
        return notes + list(getattr(self, "fallback_notes_", []))

    def weights_table(self) -> pd.DataFrame:
        """The weights per series, horizon band and window/ordinary, with why (rows: one per cell)."""
        self._check_fitted()
        rows = []
        for (s, b, w), ws in self.weights_.items():
            lo, hi = self.intervals_.get((s, b, w), (np.nan, np.nan))
            rows.append({"series": s, "band": BAND_NAMES[b], "window": DAY_KIND_NAMES[int(w)],
                         **{c: ws.get(c, 0.0) for c in CANDIDATES}, "p10_rel": lo, "p90_rel": hi,
                         "why": self.why_[(s, b, w)]})
        return pd.DataFrame(rows)

    def peak_components(self, components: pd.DataFrame, forecast: pd.DataFrame, series: str = TOTAL) -> str:
        """One line: the peak day of ``series`` and which components carry it (weight x their P50)."""
        f = forecast[forecast["series"] == series]
        if f.empty:
            return ""
        peak = f.loc[f["p50"].idxmax()]
        c = components[(components["series"] == series) & (components["date"] == peak["date"])
                       & (components["weight"] > 0)].sort_values("weight", ascending=False)
        parts = ", ".join(f"{r.method} {r.weight:.0%} (P50 {r.p50:.0f})" for r in c.itertuples())
        return f"peak {pd.Timestamp(peak['date']).date()} P50 {peak['p50']:.0f}: {parts or 'lightgbm'}"
