"""The holiday forecaster's building blocks: its candidates other than LightGBM (the planners' method aligned by
weekday and moving events, seasonal naive, statsforecast AutoETS and MSTL), the horizon bands and day kinds its
weights and intervals are kept by, the simplex LAD weights and the finite-sample conformal bounds. Re-exported by
:mod:`features.forecast_ensemble`, which combines them."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable

import numpy as np
import pandas as pd

from features.calendar import complete_windows, holiday_windows, in_windows
from features.return_volume import (
    LY,
    History,
)
from features.settings import Settings
from features.volume_features import _event_instances

LGBM, PLANNERS, AUTOETS, MSTL, NAIVE = "lightgbm", "planners", "autoets", "mstl", "seasonal_naive"
CANDIDATES = (LGBM, PLANNERS, AUTOETS, MSTL, NAIVE)
STAT_PEERS = (AUTOETS, MSTL)
BAND_EDGES = (7, 28)  # horizon bands of the weights and intervals: 1-7, 8-28, 29+
BAND_NAMES = ("h1-7", "h8-28", "h29_and_up")
ALPHA = 0.2  # 80% intervals
# Kinds of forecast day with weights and intervals of their own: ordinary, in the after-sales window of a major event
# the history holds a previous instance of, in the window of an event it never held.
ORDINARY, SEEN, UNSEEN = 0, 1, 2
DAY_KINDS = (ORDINARY, SEEN, UNSEEN)
DAY_KIND_NAMES = ("ordinary", "event window", "unseen event window")
PLANNERS_AFTER_DAYS = 28  # days after a moving event that follow its previous instance (returns trail orders)
GROWTH_CLIP = (0.25, 4.0)  # the planners' growth factor is clipped: a near-empty month last year is no signal
# Days of the planners' growth span (ordinary days only; see planners_growth). 28 days (the planners' usual month)
# held about five ordinary day pairs before a Nov 30 origin (Singles Day's and Black Friday's windows fill the rest)
# and read growth below the season's own on most tuning worlds.
GROWTH_DAYS = 91
MOVED_PRE_DAYS = 28  # days before a moving event's span whose level (last year's) scales the days following it
RAMP_QUANTILE = 0.9  # the start-of-history ramp-up: this quantile of the order-to-return delay (see ramp_days)
# Without the LightGBM component (a history shorter than its minimum): the statistical candidates need two weeks
# before the first inner origin, and the evidence two more weeks of inner origins after it.
SHORT_WARMUP_DAYS = 14
SHORT_MIN_DAYS = 28
# Days of history up to an origin from which the MSTL candidate carries a yearly season besides the weekly one (two
# full years and a week: what statsforecast's MSTL needs to read a yearly cycle twice; the benchmark's MSTL uses the
# same). With it MSTL sees last years' same dates: it knows the calendar of the fixed-date events.
YEARLY_MIN_DAYS = 2 * 365 + 7


def band_of(h: np.ndarray) -> np.ndarray:
    """Horizon band index (0, 1, 2) of each horizon (days after the origin)."""
    return np.searchsorted(np.asarray(BAND_EDGES), np.asarray(h), side="left")


# --------------------------------------------------------------------------------------------------------------------
# Candidates other than LightGBM


def planners_source(days: pd.DatetimeIndex, market: str, settings: Settings) -> np.ndarray:
    """For each day, the index of last year's comparable day for *returns* (or -1): the same weekday 52 weeks back,
    except in the after-sales span of a moving event (a week before to four weeks after it: returns trail the
    orders by weeks), which takes the offset from the event's previous instance rounded to whole weeks (Black Friday
    53 weeks on, the Spring Festival 50 to 55): the weekday profile, the larger effect on most days, stays aligned
    and the event lands within three days of its own offset. Fixed-date holidays round to 52 weeks."""
    n = len(days)
    src = np.arange(n) - LY
    inst = _event_instances(market, days[0] - pd.Timedelta(days=400), days[-1], settings)
    # Each day follows the largest event whose span holds it, the nearest one among equals (Christmas, not the
    # Black Friday four weeks before it, decides Christmas week).
    rank = np.full(n, np.inf)
    for row in inst.itertuples():
        prev = inst[(inst["name"] == row.name) & (inst["first"] <= row.first - pd.Timedelta(days=330))
                    & (inst["first"] >= row.first - pd.Timedelta(days=400))]
        if prev.empty:
            continue
        # Whole weeks: the weekday profile stays aligned, the event within three days of its own offset.
        shift = 7 * int(round((row.first - prev["first"].iloc[-1]).days / 7))
        start = int((row.first - days[0]).days)
        span = np.arange(max(start - 7, 0), min(int((row.last - days[0]).days) + PLANNERS_AFTER_DAYS, n - 1) + 1)
        r = -1000.0 * row.size + np.abs(span - start)
        take = span[r < rank[span]]
        src[take] = take - shift
        rank[take] = r[r < rank[span]]
    src[src < 0] = -1
    return src


@functools.lru_cache(maxsize=16)
def _window_mask(market: str, first: pd.Timestamp, last: pd.Timestamp, summer_sale: str,
                 summer_sale_days: int) -> np.ndarray:
    """Per day from ``first`` to ``last``: inside a major event's after-sales window (one calendar look-up per history
    instead of one per origin: a day's membership does not depend on where the history ends)."""
    hw = holiday_windows(market, first - pd.Timedelta(days=40), last,
                         Settings(market=market, summer_sale=summer_sale, summer_sale_days=summer_sale_days))
    inside = in_windows(pd.date_range(first, last, freq="D"), hw)
    inside.flags.writeable = False
    return inside


def ramp_days(history: History, t: int, q: float = RAMP_QUANTILE, min_links: int = 50) -> int:
    """Days at the start of the history whose returns still lack part of those of orders placed before it began:
    the ``q`` quantile of the order-to-request delay of the returns linked to their order up to origin index ``t``.
    Returns trail orders by weeks, and data that starts on a day holds no returns of earlier orders, so its first
    weeks read low (on the tuning worlds the first two to four weeks are a fraction of the level that follows); a
    year-over-year ratio that reads them as last year's level calls that growth. 0 with fewer than ``min_links``
    linked returns (nothing to measure the delay on)."""
    lk = history.linked
    if lk is None or len(lk) == 0:
        return 0
    req = lk["request_day"].to_numpy()
    lag = (req - lk["order_day"].to_numpy())[(req <= t)]
    lag = lag[lag >= 0]
    if len(lag) < min_links:
        return 0
    return int(np.ceil(np.quantile(lag, q)))


def _growth_pairs(history: History, t: int, settings: Settings, growth_days: int = GROWTH_DAYS,
                  ramp: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The day indices :func:`planners_growth` reads at origin index ``t`` and which of them pair with a day 52
    weeks before outside every major event's window in both years and after the history's ramp-up."""
    ramp = ramp_days(history, t) if ramp is None else ramp
    span = int(min(max(growth_days, 28), t - LY + 1))
    idx = np.arange(t - span + 1, t + 1)
    ok = idx - LY >= ramp
    if span > 28:
        days = history.days
        inside = _window_mask(history.market, days[0], days[-1], settings.summer_sale, int(settings.summer_sale_days))
        ok &= ~inside[idx] & ~inside[idx - LY]
    return idx, ok


def planners_growth_read(history: History, t: int, settings: Settings, growth_days: int = GROWTH_DAYS) -> bool:
    """Whether :func:`planners_growth` at origin index ``t`` reads its ratio on the 28 or more day pairs it asks
    for (after the ramp-up, outside the event windows); False where it falls back to the last 28 days, whose year-
    before days then lie in or near the ramp-up and read low: at the first inner origins a year and four weeks into
    a short history the growth read 2.3-4.1 where the origin's own read 1.0-1.9 (tuning seeds 434, 603, 705)."""
    if t - LY - 27 < 0:
        return False
    return bool(_growth_pairs(history, t, settings, growth_days)[1].sum() >= 28)


def planners_growth(history: History, t: int, settings: Settings, growth_days: int = GROWTH_DAYS,
                    ramp: int | None = None) -> np.ndarray:
    """Year-over-year growth per series at origin index ``t``: the last ``growth_days`` days (as far as the history
    reaches a year back, at least 28) over the same days 52 weeks before, on the days outside every major event's
    after-sales window in both years (an event that fell inside one year's span and outside the other's, e.g. Black
    Friday moving by five days, or an event whose size changed, is not growth), and whose day a year before lies
    after the history's ramp-up (:func:`ramp_days`: its first weeks lack the returns of orders placed before it).
    Fewer than 28 such day pairs: the last 28 days (those of them whose day a year before lies after the ramp-up,
    all 28 when that leaves under 14) over the same days a year before. No volume a year before: 1. ``ramp``: the
    ramp-up's days when the caller has them (:func:`planners_forecast`), else measured here."""
    v = history.y.to_numpy(dtype=float)
    idx, ok = _growth_pairs(history, t, settings, growth_days, ramp)
    if ok.sum() < 28:
        ramp = ramp_days(history, t) if ramp is None else ramp
        idx = np.arange(t - 27, t + 1)
        ok = idx - LY >= ramp
        if ok.sum() < 14:
            ok = np.ones(28, dtype=bool)
    now = v[idx[ok]].sum(axis=0)
    before = v[idx[ok] - LY].sum(axis=0)
    return np.where(before > 0, now / np.where(before > 0, before, 1.0), 1.0)


def planners_forecast(history: History, t: int, horizon: int, settings: Settings,
                      src: np.ndarray | None = None, growth_days: int = GROWTH_DAYS) -> np.ndarray | None:
    """The planners' method at origin index ``t`` (horizon x series; NaN where last year's day is unknown or lies
    in the history's ramp-up, :func:`ramp_days`), or None when the history before the origin is shorter than a year and four weeks."""
    if t - LY - 27 < 0:
        return None
    if src is None:
        days = pd.date_range(history.days[0], history.days[t] + pd.Timedelta(days=horizon), freq="D")
        src = planners_source(days, history.market, settings)
    v = history.y.to_numpy(dtype=float)
    ramp = ramp_days(history, t)
    growth = np.clip(planners_growth(history, t, settings, growth_days, ramp), *GROWTH_CLIP)
    tgt = t + 1 + np.arange(horizon)
    s = src[tgt]
    ok = (s >= ramp) & (s >= 0) & (s <= t)  # a source day in the ramp-up reads low: none
    level = moved_event_level(history, t, tgt, src, settings, ramp)
    out = np.where(ok[:, None], v[np.clip(s, 0, t)] * growth[None, :] * level, np.nan)
    return out


def moved_event_level(history: History, t: int, tgt: np.ndarray, src: np.ndarray, settings: Settings,
                      ramp: int = 0, pre_days: int = MOVED_PRE_DAYS, min_days: int = 7) -> np.ndarray:
    """Per target day (indices ``tgt``) and series, the level factor of a day that follows a moving event's previous
    instance (``src``, :func:`planners_source` over every day, gives it a source other than 52 weeks back): last
    year's level just before this instance's span, read 52 weeks back, over last year's level just before the
    previous instance's span (the ``pre_days`` before each, days outside every major event's after-sales window and
    after the ramp-up, at least ``min_days`` of them; else 1). The event's own shape comes from its previous
    instance, the level around it from the date: a Spring Festival twelve days earlier than last year's lands in the
    January returns of Christmas presents, which last year had ebbed before it, and its previous instance's days
    read that ebb. Days within a week of 52 weeks back (or whose event kept its offset): 1. Clipped like the
    growth."""
    S = history.y.shape[1]
    out = np.ones((len(tgt), S))
    idx = np.arange(len(src))
    # A move by one week (Black Friday) changes last year's surrounding level by a week of trend and noise only
    # (the tuning worlds' planners' candidate lost on it); by weeks, the season around it can differ.
    moved = (src >= 0) & (np.abs(idx - src - LY) > 7)
    if not moved[tgt].any():
        return out
    v = history.y.to_numpy(dtype=float)
    days = history.days
    inside = _window_mask(history.market, days[0], days[-1], settings.summer_sale, int(settings.summer_sale_days))
    shift = idx - src
    factor: dict[int, np.ndarray] = {}  # span start -> factor per series
    for i, d in enumerate(tgt):
        if not moved[d]:
            continue
        a = int(d)
        while a - 1 >= 0 and moved[a - 1] and shift[a - 1] == shift[d]:
            a -= 1  # back to the first day of this instance's span
        if a not in factor:
            now = np.arange(a - pre_days, a) - LY  # this instance's pre-window, 52 weeks back
            prev = np.arange(a - pre_days, a) - int(shift[d])  # the previous instance's pre-window
            keep = (np.minimum(now, prev) >= max(ramp, 0)) & (np.maximum(now, prev) <= t)
            now, prev = now[keep], prev[keep]
            now, prev = now[~inside[now]], prev[~inside[prev]]
            f = np.ones(S)
            if min(len(now), len(prev)) >= min_days:
                num, den = v[now].mean(axis=0), v[prev].mean(axis=0)
                f = np.clip(np.where((num > 0) & (den > 0), num / np.where(den > 0, den, 1.0), 1.0), *GROWTH_CLIP)
            factor[a] = f
        out[i] = factor[a]
    return out


def naive_forecast(history: History, t: int, horizon: int) -> np.ndarray:
    """Seasonal naive: the same weekday of the last week before the origin (horizon x series)."""
    h = np.arange(1, horizon + 1)
    src = t + h - 7 * np.ceil(h / 7).astype(int)
    return history.y.to_numpy(dtype=float)[src]


def stat_forecasts(history: History, t: int, horizon: int, series: list[str], models: Iterable[str] = STAT_PEERS,
                   ets_spec: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """AutoETS and MSTL (statsforecast) for ``series`` at origin ``t``: name -> horizon x len(series) P50.

    ``ets_spec``: series -> ETS components (e.g. 'MNA') to reuse instead of AutoETS's own selection (the inner
    origins reuse the choice made at the first one: one fit instead of nine); filled in when empty.
    statsforecast is a main dependency (and in the Bento's lock): a missing install is an error, not an empty result,
    since a fitted forecaster's weights on AutoETS/MSTL would otherwise be silently dropped at forecast time.
    """
    try:
        from statsforecast.models import MSTL as SF_MSTL
        from statsforecast.models import AutoETS
    except ImportError as e:
        raise RuntimeError("the holiday forecaster's AutoETS/MSTL components need statsforecast, which is not "
                           "installed: run `make install` (or install requirements-serve.lock in the Bento)") from e
    models = set(models)
    out = {m: np.zeros((horizon, len(series))) for m in (AUTOETS, MSTL) if m in models}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for j, s in enumerate(series):
            y = history.y[s].to_numpy(dtype=float)[:t + 1]
            if AUTOETS in models:
                spec = (ets_spec or {}).get(s)
                if spec is None:
                    m = AutoETS(season_length=7).fit(y)
                    spec = "".join(m.model_["components"][:3])
                    if ets_spec is not None:
                        ets_spec[s] = spec
                    out[AUTOETS][:, j] = m.predict(horizon)["mean"]
                else:
                    out[AUTOETS][:, j] = AutoETS(season_length=7, model=spec).forecast(y, h=horizon)["mean"]
            if MSTL in models:
                seasons = [7, 365] if t + 1 >= YEARLY_MIN_DAYS else [7]
                out[MSTL][:, j] = SF_MSTL(season_length=seasons).forecast(y, h=horizon)["mean"]
    return {k: np.clip(np.nan_to_num(v, nan=0.0), 0.0, None) for k, v in out.items()}


def event_level_spread(history: History, t: int, settings: Settings, pre_days: int = 56,
                       min_pre_days: int = 14, ramp: int | None = None) -> np.ndarray:
    """How far an event window's level can move from what its past instances say, per series (log scale): each
    major-event window complete by origin index ``t`` gets its uplift, log(mean of the window / mean of the ordinary
    days in the ``pre_days`` before it, at least ``min_pre_days`` of them); the spread is the root mean square of
    the change in uplift from one instance of an event to its next (the year-over-year surprise in the event's
    size), or, without any event seen twice, :func:`ordinary_level_spread` alone (the uplifts of different events
    say how events differ in size, not how one event's size moves); else 0 (nothing to measure it on). Windows and
    ordinary days in the history's ramp-up (``ramp``, default :func:`ramp_days`: its first weeks lack the returns of
    orders placed before it began) are left out: a window whose weeks before it read low there shows an uplift that
    is the ramp-up, not the event. The spread's square, read from k changes (or k + 1 windows), is shrunk toward
    the square of :func:`ordinary_level_spread` (the same measure on ordinary stretches of the windows' length),
    weighed as one more change: (sum of the k squares + ordinary square) / (k + 1). On long histories one or two
    changes per event are all there is, and one change alone said 0.03 on one tuning history and 0.2-0.5 on others."""
    ramp = ramp_days(history, t) if ramp is None else ramp
    days = history.days[:t + 1]
    y = history.y.to_numpy(dtype=float)[:t + 1]
    hw = complete_windows(history.market, days[0], days[-1], settings)
    inside = in_windows(days, hw)
    names, ups, lengths = [], [], []
    for w in hw.itertuples():
        i0, i1 = days.get_loc(w.window_start), days.get_loc(w.window_end)
        lengths.append(i1 - i0 + 1)
        pre = np.arange(max(i0 - pre_days, 0), i0)
        pre = pre[~inside[pre] & (pre >= ramp)]
        if len(pre) < min_pre_days or i0 < ramp:
            continue
        base = y[pre].mean(axis=0)
        names.append(w.event)
        ups.append(np.log(np.maximum(y[i0:i1 + 1].mean(axis=0), 1e-9) / np.maximum(base, 1e-9)))
    S = y.shape[1]
    if not ups:
        return np.zeros(S)
    u = np.array(ups)  # windows x series
    names_a = np.array(names)
    diffs = [np.diff(u[names_a == n], axis=0) for n in dict.fromkeys(names)]
    diffs = [d for d in diffs if len(d)]
    # A spread read from one or two changes is itself a guess (its square is a chi-square on k degrees of
    # freedom): shrink its square toward the same measure on ordinary stretches of the history (how much a
    # stretch's level moves from one year to the next without an event), weighed as one more change.
    ref = ordinary_level_spread(history, t, settings, int(np.median(lengths)), pre_days, min_pre_days, ramp)
    if not diffs:
        # No event seen twice: no year-over-year change of an event to read. The spread of the uplifts of
        # different events (Christmas against the mid-year sale) is how events differ in size, which a forecaster
        # that saw each of them already knows; on short tuning histories it widened the windows of events seen
        # once to 92-98% coverage. The ordinary stretches' year-over-year change stands in, else nothing.
        return np.zeros(S) if ref is None else ref
    d2 = np.concatenate(diffs) ** 2
    k = len(d2)
    if ref is None:
        return np.sqrt(d2.mean(axis=0))
    return np.sqrt((d2.sum(axis=0) + ref ** 2) / (k + 1))


def ordinary_level_spread(history: History, t: int, settings: Settings, length: int, pre_days: int = 56,
                          min_pre_days: int = 14, ramp: int = 0, step: int = 7) -> np.ndarray | None:
    """The ordinary days' counterpart of :func:`event_level_spread`: stretches of ``length`` days outside every
    event window (one every ``step`` days, after the ramp-up), each with its 'uplift' over the ordinary days in the
    ``pre_days`` before it, and the root mean square of its change from the stretch 52 weeks before (how much a
    stretch's level moves from one year to the next with no event in it), per series; None with no such pair."""
    days = history.days
    y = history.y.to_numpy(dtype=float)[:t + 1]
    inside = _window_mask(history.market, days[0], days[-1], settings.summer_sale,
                          int(settings.summer_sale_days))[:t + 1]
    ok_day = ~inside & (np.arange(t + 1) >= ramp)
    cs = np.vstack([np.zeros((1, y.shape[1])), np.cumsum(y * ok_day[:, None], axis=0)])
    cn = np.r_[0, np.cumsum(ok_day)]
    ups = {}
    for i0 in range(ramp + min_pre_days, t + 2 - length, step):
        i1 = i0 + length
        if cn[i1] - cn[i0] < length:  # the stretch touches a window or the ramp-up
            continue
        p0 = max(i0 - pre_days, 0)
        n_pre = cn[i0] - cn[p0]
        if n_pre < min_pre_days:
            continue
        base = (cs[i0] - cs[p0]) / n_pre
        ups[i0] = np.log(np.maximum((cs[i1] - cs[i0]) / length, 1e-9) / np.maximum(base, 1e-9))
    d = [ups[i] - ups[i - LY] for i in ups if i - LY in ups]  # the stretch 52 weeks before
    if not d:
        return None
    return np.sqrt(np.mean(np.square(d), axis=0))


# --------------------------------------------------------------------------------------------------------------------
# Weights


def _simplex_grid(k: int, step: float) -> np.ndarray:
    """Every weight vector of k non-negative multiples of ``step`` summing to one (rows)."""
    m = int(round(1 / step))
    pts = [c for c in np.ndindex(*(m + 1,) * (k - 1)) if sum(c) <= m]
    g = np.array([[*c, m - sum(c)] for c in pts], dtype=float) / m
    return g


def fit_simplex_lad(P: np.ndarray, y: np.ndarray, step: float = 0.1) -> np.ndarray:
    """Weights w >= 0, sum 1, minimising sum |y - P w| over a ``step`` grid of the simplex (P: rows x candidates;
    at most five candidates, so the grid has at most 1001 points and one matrix product scores them all)."""
    n, k = P.shape
    if k == 1:
        return np.ones(1)
    W = _simplex_grid(k, step)
    err = np.abs(y[:, None] - P @ W.T).sum(axis=0)
    return W[int(np.argmin(err))]


def conformal_bounds(r: np.ndarray, alpha: float = ALPHA) -> tuple[float, float]:
    """Finite-sample split-conformal lower and upper residual quantiles for a 1 - alpha central interval:
    the ceil((n + 1)(1 - alpha / 2))-th smallest residual (and its mirror); beyond the sample: its extreme."""
    r = np.sort(np.asarray(r, dtype=float))
    n = len(r)
    if n == 0:
        return 0.0, 0.0
    k_hi = min(math.ceil((n + 1) * (1 - alpha / 2)), n)
    k_lo = max(math.floor((n + 1) * (alpha / 2)), 1)
    return float(r[k_lo - 1]), float(r[k_hi - 1])
