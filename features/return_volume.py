"""Daily return-volume series, their origin-time features, and the fitted P10/P50/P90 forecaster.

Shapes (mlforecast style): the public long format is ``unique_id, ds, y`` (one row per series and day, zeros on days
without returns). Inside, a :class:`History` keeps the same data wide (days x series) plus the order drivers.

The forecaster is one global LightGBM model across all series, direct multi-horizon: a training row is (series,
origin o, horizon h) with features known at o only, and the target y[o+h] / scale(o), where scale is the series'
mean over the 28 days up to o, so big and small series share one scale-free model. Features:

- calendar and event proximity of the target day (``features.calendar``), and the last major event's name;
- lags and rolling means no newer than o, same-weekday profiles, last year's level at the target day;
- returns still to come from orders already placed: an order-to-return delay kernel per category, learned from
  returns linked to their orders (or by deconvolution of daily totals when returns carry no order), convolved with
  the orders up to o (``pipe_known``) and with projected orders after o (``pipe_future``: last year's orders on the
  aligned day, event-aligned for moving events such as Black Friday and the Spring Festival, scaled by this year's
  growth; or a planners' sales plan).

The objective is L1 (WAPE is an absolute-error metric and returns data has bulk spikes). Trees cannot
extrapolate, so beyond the largest known-order pipeline seen in training the output scales with the pipeline. A
sales plan's difference from the model's own projection adds returns through the delay kernels, one for one.

Intervals are split-conformal: a first model fitted on targets up to ``origin - calibration_days`` (the span reaches
back before the latest complete major-event window, so it holds a holiday) predicts the later rows; the spread of
its normalised residuals, per series and horizon band on ordinary days and widened on event-window days by the
ratio seen in the calibration windows, is centred on the final model's P50 to give P10/P90.
Layout: :mod:`features.volume_history` (the daily series, order drivers and sales plan),
:mod:`features.volume_features` (delay kernels, projected orders, feature rows, history checks), this module (the
fitted forecaster; it re-exports the other two's public names).
No MLflow and no HTTP here: training/return_volume.py orchestrates, serving loads the fitted object.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import lightgbm as lgb
import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from features.calendar import complete_windows
from features.settings import Settings
from features.volume_features import (
    CAT_FEATURES,
    FEATURES,
    NUM_FEATURES,
    _kind,
    _prepare,
    build_features,
    check_history,
    last_year_source,
    learn_kernels,
    projected_lines,
    required_days,
    series_drivers,
    unseen_events,
)
from features.volume_history import (
    ALIGN_AFTER,
    ALIGN_BEFORE,
    EPOCH,
    FORECAST_COLUMNS,
    H_BANDS,
    KERNEL_PRIOR_LINES,
    KERNEL_WINDOW,
    LY,
    MAX_GROUP_SERIES,
    MAX_LAG,
    MIN_SERIES_MEAN,
    MIN_SERIES_SHARE,
    MIN_TRAIN_DAYS,
    PLAN_COLUMNS,
    QUANTILES,
    REFUND,
    TOTAL,
    WARMUP_DAYS,
    Driver,
    History,
    HistoryError,
    Kernel,
    PlanError,
    Wide,
    _day,
    build_history,
    load_history,
    read_plan,
    validate_plan,
)

# The module's public names, its inputs and features included (moved to features.volume_history and
# features.volume_features; importing them from here keeps working).
__all__ = [
    "Wide",
    "Kernel",
    "Driver",
    "TOTAL",
    "REFUND",
    "FORECAST_COLUMNS",
    "PLAN_COLUMNS",
    "MAX_LAG",
    "WARMUP_DAYS",
    "MIN_TRAIN_DAYS",
    "KERNEL_WINDOW",
    "KERNEL_PRIOR_LINES",
    "H_BANDS",
    "MIN_SERIES_SHARE",
    "MIN_SERIES_MEAN",
    "MAX_GROUP_SERIES",
    "LY",
    "ALIGN_BEFORE",
    "ALIGN_AFTER",
    "QUANTILES",
    "HistoryError",
    "PlanError",
    "History",
    "EPOCH",
    "build_history",
    "load_history",
    "read_plan",
    "validate_plan",
    "learn_kernels",
    "series_drivers",
    "last_year_source",
    "projected_lines",
    "CAT_FEATURES",
    "NUM_FEATURES",
    "FEATURES",
    "build_features",
    "required_days",
    "check_history",
    "unseen_events",
    "ReturnVolumeForecaster",
]

# --------------------------------------------------------------------------------------------------------------------
# The forecaster


def _band(h: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.asarray(H_BANDS), h, side="left")


class ReturnVolumeForecaster:
    """Global LightGBM direct multi-horizon forecaster of daily return volume with conformal P10/P50/P90.

    scikit-learn contract: ``__init__`` stores parameters, ``fit(history, origin)`` learns from data up to the
    origin and returns self, ``predict(X)`` turns feature rows (from :func:`build_features`: the FEATURES columns
    plus ``scale`` and ``prior``) into P10/P50/P90, and ``forecast(history, origin, horizon, plan, series)`` does the
    whole thing for the days after an origin (what serving calls, with ``load_history(data_dir, market)``).
    """

    def __init__(self, horizon: int = 60, market: str = "CN", summer_sale: str = "07-15", summer_sale_days: int = 3,
                 n_estimators: int = 200, learning_rate: float = 0.05, num_leaves: int = 31,
                 min_child_samples: int = 50, origin_stride: int = 3, max_rows: int = 40_000,
                 calibration_days: int | None = None, event_inflation: float = 1.5, spread_power: float = 1.0,
                 objective: str = "l1", huber_delta: float = 0.9, pipeline_prior: bool = True,
                 seed: int = 0, num_threads: int = 1, keep_calibration: bool = False):
        self.horizon = horizon
        self.market = market
        self.summer_sale = summer_sale
        self.summer_sale_days = summer_sale_days
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.origin_stride = origin_stride
        self.max_rows = max_rows
        self.calibration_days = calibration_days
        self.event_inflation = event_inflation
        self.spread_power = spread_power
        self.objective = objective
        self.huber_delta = huber_delta
        self.pipeline_prior = pipeline_prior
        self.seed = seed
        self.num_threads = num_threads
        self.keep_calibration = keep_calibration

    # -- helpers -----------------------------------------------------------------------------------------------------
    @property
    def min_calibration_days(self) -> int:
        """The fewest days held out at the end of the history to calibrate the intervals."""
        return int(self.calibration_days or max(2 * self.horizon, 90))

    def _calibration_days(self, history: History) -> int:
        # The calibration rows must hold a holiday: holiday-window errors are larger, and a span without one gives
        # intervals too narrow for the holidays planners care about. So the span reaches back to ``horizon`` days
        # before the latest major event window that ended by the origin (every horizon then sees that window),
        # at least the minimum, and leaves model A enough days to train on.
        if self.calibration_days:
            return int(self.calibration_days)
        days = history.days
        n = len(days)
        span = self.min_calibration_days
        done = complete_windows(history.market, days[0], days[-1], self.settings())
        if not done.empty:
            start = done["window_start"].iloc[-1] - pd.Timedelta(days=self.horizon)
            span = max(span, int((days[-1] - start).days))
        room = n - (WARMUP_DAYS + MIN_TRAIN_DAYS + self.horizon)
        return int(max(self.min_calibration_days, min(span, room)))

    def settings(self) -> Settings:
        """Calendar settings this model was configured with (independent of the environment)."""
        return Settings(market=self.market, summer_sale=self.summer_sale, summer_sale_days=self.summer_sale_days)

    def _matrix(self, X: pd.DataFrame) -> pd.DataFrame:
        M = X[FEATURES].copy()
        for c in CAT_FEATURES:
            M[c] = pd.Categorical(M[c].astype(str), categories=self.categories_[c])
        for c in NUM_FEATURES:
            M[c] = pd.to_numeric(M[c], errors="coerce").astype(float)
        return M

    def _train(self, X: pd.DataFrame) -> lgb.Booster:
        params = {
            "objective": self.objective, "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples, "feature_fraction": 0.9, "bagging_fraction": 0.8,
            "bagging_freq": 1, "lambda_l2": 1.0, "num_threads": self.num_threads, "seed": self.seed,
            "deterministic": True, "force_row_wise": True, "verbose": -1, "cat_smooth": 10,
            "alpha": self.huber_delta,  # used by the huber objective only: residuals beyond it count linearly
        }
        target = (X["y"] / X["scale"]).to_numpy()
        data = lgb.Dataset(self._matrix(X), target, categorical_feature=CAT_FEATURES, free_raw_data=True)
        return lgb.train(params, data, num_boost_round=self.n_estimators)

    def _sample(self, X: pd.DataFrame) -> pd.DataFrame:
        if len(X) <= self.max_rows:
            return X
        rng = np.random.default_rng(self.seed)
        return X.iloc[np.sort(rng.choice(len(X), self.max_rows, replace=False))]

    # -- fit ---------------------------------------------------------------------------------------------------------
    def fit(self, history: History, origin: pd.Timestamp | str | None = None) -> ReturnVolumeForecaster:
        """Learn from the history up to ``origin`` (default: its last day); nothing later is read."""
        # Small matrix products: BLAS threads only contend with each other (and with other jobs) here.
        with threadpool_limits(self.num_threads):
            return self._fit(history, origin)

    def _fit(self, history: History, origin: pd.Timestamp | str | None) -> ReturnVolumeForecaster:
        settings = self.settings()
        origin = _day(origin) if origin is not None else history.days[-1]
        check_history(history, origin, self.horizon, self.min_calibration_days, settings)
        hist = history.upto(origin)
        t = len(hist.days) - 1
        H = self.horizon
        self.kernels_ = learn_kernels(hist, t + 1)
        frames = _prepare(hist, self.kernels_, H, settings)
        origins = np.arange(t - 1, WARMUP_DAYS - 1, -self.origin_stride)[::-1]
        X = build_features(hist, self.kernels_, origins, H, settings, frames=frames)
        X = X[(X["origin"] + X["h"]) <= t].reset_index(drop=True)
        self.series_ = hist.series
        self.feature_names_ = list(FEATURES)
        self.categories_ = {
            "series": list(self.series_), "kind": sorted({_kind(s) for s in self.series_}),
            "last_major": sorted(set(frames.cal["last_major"].astype(str)) | {"none"}),
        }
        # Split-conformal intervals: model A sees targets up to t - C; its errors on later rows give the quantiles.
        self.calibration_days_ = self._calibration_days(hist)
        cut = t - self.calibration_days_
        tgt = X["origin"] + X["h"]
        self.prior_range_ = (float(X["prior"].min()), float(X["prior"].max()))
        fit_rows, cal_rows = X[tgt <= cut], X[X["origin"] >= cut]
        booster_a = self._train(self._sample(fit_rows))
        self.booster_ = booster_a  # _raw_predict needs a booster; replaced below
        self.residual_quantiles_ = self._calibrate(cal_rows, booster_a)
        if self.keep_calibration:  # model A's out-of-sample forecasts: evidence for features.forecast_ensemble
            self.calibration_forecasts_ = pd.DataFrame({
                "series": cal_rows["series"].to_numpy(), "origin": cal_rows["origin"].to_numpy(),
                "h": cal_rows["h"].to_numpy(), "p50": self._raw(cal_rows, booster_a) * cal_rows["scale"].to_numpy()})
        self.booster_ = self._train(self._sample(X))
        self.trained_until_ = hist.days[-1]
        self.lines_per_order_ = hist.lines_per_order
        self.n_train_rows_ = int(min(len(X), self.max_rows))
        return self

    def _prior(self, X: pd.DataFrame) -> np.ndarray:
        """Factor on the trees' output for order pipelines outside the range seen in training.

        Trees cannot extrapolate: a sale bigger than any in the training history would get the response of the
        biggest one seen. Beyond that range the forecast scales with the pipeline (``prior`` / the largest seen);
        inside it the factor is 1 and the trees alone decide.
        """
        if not self.pipeline_prior or not hasattr(self, "prior_range_"):
            return np.ones(len(X))
        prior = X["prior"].to_numpy(dtype=float)
        lo, hi = self.prior_range_
        return np.where(prior > hi, prior / hi, np.where(prior < lo, prior / lo, 1.0))

    def _raw(self, X: pd.DataFrame, booster: lgb.Booster | None = None) -> np.ndarray:
        """Point forecast in scaled units (y / scale), never below zero."""
        b = booster or self.booster_
        return np.maximum(b.predict(self._matrix(X), num_threads=self.num_threads), 0.0) * self._prior(X)

    def _spread(self, p_scaled: np.ndarray) -> np.ndarray:
        # Residuals normalised by level**power: 0.5 is Poisson-like noise, 1 multiplicative (event-size) error.
        return np.maximum(p_scaled, 0.1) ** self.spread_power

    def _calibrate(self, cal: pd.DataFrame, booster: lgb.Booster) -> dict:
        """Residual quantiles per (series, horizon band, in a major-event window or not).

        Per series and band from its calibration rows outside event windows; in event windows the spread is widened
        by the ratio of spreads inside and outside windows, pooled over series after standardising each series.
        """
        if cal.empty:
            raise HistoryError("no rows to calibrate the intervals on: lengthen the history")
        p = self._raw(cal, booster)
        z = (cal["y"].to_numpy() / cal["scale"].to_numpy() - p) / self._spread(p)
        f = pd.DataFrame({"series": cal["series"].to_numpy(), "band": _band(cal["h"].to_numpy()),
                          "win": cal["in_event_window"].to_numpy() > 0, "z": z})
        qs = list(QUANTILES)
        # Widths from ordinary days (outside major-event windows); window days get them widened below.
        ordinary = f[~f["win"]] if (~f["win"]).sum() >= 200 else f
        pooled = ordinary.groupby("band")["z"].quantile(qs).unstack().reindex(sorted(f["band"].unique()))
        pooled = pooled.fillna(f.groupby("band")["z"].quantile(qs).unstack())
        per = {}
        for (s, b), g in f.groupby(["series", "band"]):
            g = g[~g["win"]] if (~g["win"]).sum() >= 30 else g
            q = g["z"].quantile(qs).to_numpy()
            w = min(len(g) / 60, 1.0)  # few rows: lean on the band's pooled quantiles
            per[(s, int(b))] = w * q + (1 - w) * pooled.loc[b].to_numpy()
        # Standardise each series' residuals by its own spread, then compare spreads in and out of event windows.
        spread = {k: max(v[2] - v[0], 1e-6) for k, v in per.items()}
        f["zs"] = [zz / spread[(s, int(b))] for zz, s, b in zip(f["z"], f["series"], f["band"], strict=True)]
        inside, outside = f[f["win"]], f[~f["win"]]
        if len(inside) >= 200 and len(outside) >= 200:
            qi, qo = inside["zs"].quantile(qs).to_numpy(), outside["zs"].quantile(qs).to_numpy()
            lo = (qi[1] - qi[0]) / max(qo[1] - qo[0], 1e-6)
            hi = (qi[2] - qi[1]) / max(qo[2] - qo[1], 1e-6)
        else:
            lo = hi = self.event_inflation
        lo, hi = float(np.clip(lo, 1.0, 3.0)), float(np.clip(hi, 1.0, 3.0))
        self.window_inflation_ = (lo, hi)
        table = {}
        for (s, b), q in per.items():
            table[(s, b, False)] = tuple(float(v) for v in q)
            table[(s, b, True)] = (float(q[1] - (q[1] - q[0]) * lo), float(q[1]), float(q[1] + (q[2] - q[1]) * hi))
        for b in pooled.index:
            q = pooled.loc[b].to_numpy()
            table[("*", int(b), False)] = tuple(float(v) for v in q)
            table[("*", int(b), True)] = (float(q[1] - (q[1] - q[0]) * lo), float(q[1]),
                                          float(q[1] + (q[2] - q[1]) * hi))
        return table

    # -- predict -----------------------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "booster_"):
            raise RuntimeError("ReturnVolumeForecaster is not fitted: call fit(history, origin) first")

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        """P10/P50/P90 in the series' own units for feature rows built by :func:`build_features`."""
        self._check_fitted()
        p = self._raw(X)
        spread = self._spread(p)
        bands = _band(X["h"].to_numpy())
        win = pd.to_numeric(X["in_event_window"]).to_numpy() > 0
        table = self.residual_quantiles_
        q = np.array([table.get((s, int(b), bool(w)), table.get(("*", int(b), bool(w)), (0.0, 0.0, 0.0)))
                      for s, b, w in zip(X["series"].astype(str), bands, win, strict=True)])
        # P50 is the model's point forecast, and P10/P90 sit at the calibration residuals' distances from their
        # median: model A's own bias on the calibration days (it is staler than the final model, and those days
        # may hold a one-off such as a Spring Festival shutdown) must not shift the final model's forecasts.
        q = q - q[:, [1]]
        scale = X["scale"].to_numpy(dtype=float)
        out = np.maximum((p[:, None] + q * spread[:, None]) * scale[:, None], 0.0)
        return pd.DataFrame(out, columns=["p10", "p50", "p90"], index=X.index)

    def forecast(self, history: History, origin: pd.Timestamp | str | None = None, horizon: int | None = None,
                 plan: pd.DataFrame | None = None, series: Iterable[str] | None = None) -> pd.DataFrame:
        """Forecast the ``horizon`` days after ``origin`` (default: the history's last day) from the history up to it.

        ``plan``: planned orders per day (see :func:`validate_plan`) replacing projected orders where it has days;
        the returns the difference brings are added through the delay kernels.
        ``series``: subset of series (default: all the model was trained on). Returns date, series, p10, p50, p90.
        Raises ValueError for an origin before the model's training end (it has seen later data) and
        HistoryError for an origin after the history's end.
        """
        self._check_fitted()
        with threadpool_limits(self.num_threads):
            return self._forecast(history, origin, horizon, plan, series)

    def _forecast(self, history: History, origin, horizon, plan, series) -> pd.DataFrame:
        settings = self.settings()
        horizon = int(horizon or self.horizon)
        if not 1 <= horizon <= self.horizon:
            raise ValueError(f"horizon {horizon} must be between 1 and {self.horizon} (the horizon this model was "
                             f"trained for); train with a longer horizon for more")
        origin = _day(origin) if origin is not None else history.days[-1]
        if origin < self.trained_until_:
            raise ValueError(f"origin {origin.date()} is before this model's training end "
                             f"{self.trained_until_.date()}: it has seen data after the origin; for a backtest at "
                             f"an earlier origin run `aftersales forecast --origin {origin.date()}` (retrains)")
        if origin > history.days[-1]:
            raise HistoryError(f"origin {origin.date()} is after the last day of data {history.days[-1].date()}")
        wanted = list(series) if series is not None else list(self.series_)
        unknown = [s for s in wanted if s not in self.series_]
        if unknown:
            raise ValueError(f"unknown series {', '.join(unknown)}; this model forecasts {', '.join(self.series_)}")
        missing = [s for s in self.series_ if s not in history.series]
        if missing:
            raise HistoryError(f"the data lacks series {', '.join(missing)} that the model was trained on")
        hist = history.upto(origin)
        hist.y = hist.y[self.series_]
        for msg in unseen_events(hist, origin, horizon, settings):
            warnings.warn(f"no previous instance of {msg}; its forecast leans on calendar features only",
                          stacklevel=2)
        t = len(hist.days) - 1
        names = [s for s in self.series_ if s in wanted or s == TOTAL]
        X = build_features(hist, self.kernels_, [t], self.horizon, settings, series=names)
        X = X[X["h"] <= horizon].reset_index(drop=True)
        q = self.predict(X)
        if plan is not None:
            # The model forecasts with its own projection of future orders. A plan changes the orders expected
            # after the origin; the returns that change brings follow the delay kernels one for one, as a share
            # of each series' recent level (pipe_future is relative to the recent pipeline level).
            Xp = build_features(hist, self.kernels_, [t], self.horizon, settings, plan=plan, series=names)
            Xp = Xp[Xp["h"] <= horizon].reset_index(drop=True)
            delta = ((Xp["pipe_future"] - X["pipe_future"]).fillna(0.0) * X["scale"]).to_numpy()
            q = q.add(delta, axis=0).clip(lower=0.0)
        out = pd.DataFrame({"date": X["date"].to_numpy(), "series": X["series"].to_numpy(),
                            "p10": q["p10"].to_numpy(), "p50": q["p50"].to_numpy(), "p90": q["p90"].to_numpy()})
        keep = set(wanted) | {TOTAL}
        out = out[out["series"].isin(keep)]
        order = {s: i for i, s in enumerate(self.series_)}
        out = out.sort_values(["series", "date"], key=lambda c: c.map(order) if c.name == "series" else c)
        return out.reset_index(drop=True)[FORECAST_COLUMNS]
