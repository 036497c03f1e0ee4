"""Origin-time features of the return-volume forecaster: order-to-return delay kernels, last year's aligned days
and projected orders, the feature rows (one per series, origin and horizon), and the checks on a history's length.
Everything here reads data up to an origin only. Re-exported by :mod:`features.return_volume`."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.calendar import calendar_features, complete_windows, holiday_windows, market_events
from features.settings import Settings
from features.volume_history import (
    ALIGN_AFTER,
    ALIGN_BEFORE,
    KERNEL_PRIOR_LINES,
    KERNEL_WINDOW,
    LY,
    MAX_LAG,
    MIN_TRAIN_DAYS,
    REFUND,
    TOTAL,
    WARMUP_DAYS,
    Driver,
    History,
    HistoryError,
    Kernel,
    _day,
)

# --------------------------------------------------------------------------------------------------------------------
# Delay kernels


def learn_kernels(history: History, end: int) -> dict[str, Kernel]:
    """Order-to-return delay kernels learned from days < ``end`` (returns per order line at each lag).

    Keys: ``lines|category=c`` (returns of category c per line of c), ``amount|category=c`` (refund per unit of order
    value), ``lines`` (all categories pooled). Each lag k uses the cohorts of the last year that have been observed
    for k days, so recent orders whose returns are still to come do not bias the kernel down. When fewer than a
    third of returns link to an order (e.g. cancellations without the invoice), the pooled kernel is found by
    non-negative deconvolution of daily returns on daily order lines instead.
    """
    D = history.drivers.iloc[:end]
    n = len(D)
    lk = history.linked[history.linked["request_day"] < end]
    lag = (lk["request_day"] - lk["order_day"]).to_numpy()
    lk = lk[(lag >= 0) & (lag < MAX_LAG)]
    lag = (lk["request_day"] - lk["order_day"]).to_numpy()
    total_returns = float(history.y[TOTAL].iloc[:end].sum())
    kernels: dict[str, Kernel] = {}
    if len(lk) < max(50, total_returns / 3):
        g = _deconvolve(D["lines"].to_numpy(), history.y[TOTAL].to_numpy()[:end])
        ga = _deconvolve(D.filter(like="amount|").sum(axis=1).to_numpy(), history.y[REFUND].to_numpy()[:end])
        for col in D.columns:
            kernels[col] = ga if col.startswith("amount|") else g
        kernels["lines"] = g
        return kernels

    ks = np.arange(MAX_LAG)
    hi = np.maximum(n - 1 - ks, -1)  # cohort day range for lag k: [hi - W + 1, hi]
    lo = np.maximum(hi - KERNEL_WINDOW + 1, 0)

    def cohort_sum(daily: np.ndarray) -> np.ndarray:
        c = np.concatenate([[0.0], np.cumsum(daily)])
        return np.where(hi >= 0, c[np.maximum(hi + 1, 0)] - c[lo], 0.0)

    def returns_at_lag(sel: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
        mat = np.zeros((n, MAX_LAG))
        w = np.ones(int(sel.sum())) if weights is None else weights[sel]
        np.add.at(mat, (lk["order_day"].to_numpy()[sel], lag[sel]), w)
        cum = np.vstack([np.zeros(MAX_LAG), np.cumsum(mat, axis=0)])
        return np.where(hi >= 0, cum[np.maximum(hi + 1, 0), ks] - cum[lo, ks], 0.0)

    all_sel = np.ones(len(lk), dtype=bool)
    refund = lk["refund_amount"].to_numpy()
    amount_all = D.filter(like="amount|").sum(axis=1).to_numpy()
    g_all = returns_at_lag(all_sel, None) / np.maximum(cohort_sum(D["lines"].to_numpy()), 1.0)
    ga_all = returns_at_lag(all_sel, refund) / np.maximum(cohort_sum(amount_all), 1e-9)
    kernels["lines"] = g_all
    cat = lk["category"].to_numpy()
    for col in D.columns:
        if not col.startswith(("lines|category=", "amount|category=")):
            continue
        c = col.split("=", 1)[1]
        sel = cat == c
        den = cohort_sum(D[col].to_numpy())
        if col.startswith("lines|"):
            kernels[col] = (returns_at_lag(sel, None) + KERNEL_PRIOR_LINES * g_all) / (den + KERNEL_PRIOR_LINES)
        else:
            per_line = max(float(den.max()) / max(float(cohort_sum(D[f"lines|category={c}"].to_numpy()).max()),
                                                     1.0), 1e-9)  # this category's order value per line
            prior = KERNEL_PRIOR_LINES * per_line
            kernels[col] = (returns_at_lag(sel, refund) + prior * ga_all) / (den + prior)
    return kernels


def _deconvolve(orders: np.ndarray, returns: np.ndarray) -> Kernel:
    """Non-negative least squares of daily returns on lagged daily orders, with a kernel flat within lag blocks."""
    from scipy.optimize import nnls

    blocks = [(0, 1), (1, 2), (2, 3), (3, 5), (5, 8), (8, 15), (15, 22), (22, 36), (36, MAX_LAG)]
    n = len(orders)
    if n < MAX_LAG + 28 or orders.sum() <= 0:
        return np.zeros(MAX_LAG)
    cols = []
    for a, b in blocks:
        x = np.zeros(n)
        for k in range(a, b):
            x[k:] += orders[: n - k] / (b - a)
        cols.append(x[MAX_LAG:])
    coef, _ = nnls(np.column_stack(cols), returns[MAX_LAG:])
    g = np.zeros(MAX_LAG)
    for (a, b), c in zip(blocks, coef, strict=True):
        g[a:b] = c / (b - a)
    return g


def series_drivers(history: History) -> dict[str, Driver]:
    """For each series, the (driver column, kernel key) pairs whose convolutions give its expected returns."""
    cat_lines = [c for c in history.drivers.columns if c.startswith("lines|category=")]
    cat_amount = [c for c in history.drivers.columns if c.startswith("amount|category=")]
    total: Driver = [(c, c) for c in cat_lines] or [("lines", "lines")]
    out: dict[str, Driver] = {}
    for s in history.series:
        if s == REFUND:
            out[s] = [(c, c) for c in cat_amount]
        elif s.startswith("category="):
            col = f"lines|{s}"
            out[s] = [(col, col)] if col in history.drivers.columns else total
        elif s.startswith("region="):
            col = f"lines|{s}"
            out[s] = [(col, f"mix|{s}")] if col in history.drivers.columns else total
        else:  # total and ticket channels: tickets follow returns
            out[s] = total
    return out


def _mixed_kernels(history: History, kernels: dict[str, Kernel]) -> dict[str, Kernel]:
    """Kernels of region drivers: the category kernels weighted by the region's category mix."""
    out = dict(kernels)
    for r, mix in history.region_mix.items():
        g = np.zeros(MAX_LAG)
        for c, share in mix.items():
            g += share * kernels.get(f"lines|category={c}", kernels["lines"])
        out[f"mix|region={r}"] = g
    return out


# --------------------------------------------------------------------------------------------------------------------
# Calendar alignment and projected orders


def _event_instances(market: str, start: pd.Timestamp, end: pd.Timestamp, settings: Settings) -> pd.DataFrame:
    """Medium and major events as instances (consecutive days of one name): name, first, last, size."""
    ev = market_events(market, start, end, settings)
    ev = ev[ev["size"] >= 2].drop_duplicates(["date", "name"]).sort_values(["name", "date"])
    if ev.empty:
        return pd.DataFrame(columns=["name", "first", "last", "size"])
    block = (ev.groupby("name")["date"].diff().dt.days.fillna(99) > 1).cumsum()
    inst = ev.groupby(block).agg(name=("name", "first"), first=("date", "min"), last=("date", "max"),
                                 size=("size", "max"))
    return inst.sort_values("first").reset_index(drop=True)


def last_year_source(days: pd.DatetimeIndex, market: str, settings: Settings) -> np.ndarray:
    """For each day, the index (into ``days``) of the comparable day a year before, or -1.

    Days near a medium or major event take the same offset from that event's previous instance (Black Friday and
    the Spring Festival move); other days take the same weekday 52 weeks back, shifted a week if that day was
    inside an event last year.
    """
    n = len(days)
    inst = _event_instances(market, days[0] - pd.Timedelta(days=400), days[-1], settings)
    src = np.arange(n) - LY
    win_lo = (inst["first"] - pd.Timedelta(days=ALIGN_BEFORE) - days[0]).dt.days.to_numpy()
    win_hi = (inst["last"] + pd.Timedelta(days=ALIGN_AFTER) - days[0]).dt.days.to_numpy()
    in_window = np.zeros(n, dtype=bool)
    best_size = np.zeros(n)
    for i, row in inst.iterrows():
        lo, hi = max(int(win_lo[i]), 0), min(int(win_hi[i]), n - 1)
        if lo > hi:
            continue
        prev = inst[(inst["name"] == row["name"]) & (inst["first"] <= row["first"] - pd.Timedelta(days=330))
                    & (inst["first"] >= row["first"] - pd.Timedelta(days=400))]
        in_window[lo:hi + 1] = True
        if prev.empty:
            continue
        shift = int((row["first"] - prev["first"].iloc[-1]).days)
        span = np.arange(lo, hi + 1)
        better = row["size"] > best_size[span]
        src[span[better]] = span[better] - shift
        best_size[span[better]] = row["size"]
    # Date-aligned days must not copy an event of last year that has moved away from them this year.
    moved = (best_size == 0) & (src >= 0)
    contaminated = moved & in_window[np.clip(src, 0, n - 1)]
    for shift in (7, -7, 14, -14):
        alt = src - shift
        ok = contaminated & (alt >= 0) & (alt < n) & ~in_window[np.clip(alt, 0, n - 1)]
        src = np.where(ok, alt, src)
        contaminated &= ~ok
    src[src < 0] = -1
    return src


def _rolling_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean of the last ``window`` days ending at each day (shorter at the start)."""
    c = np.concatenate([[0.0], np.cumsum(x)])
    idx = np.arange(len(x))
    lo = np.maximum(idx + 1 - window, 0)
    return (c[idx + 1] - c[lo]) / (idx + 1 - lo)


def _level(x: np.ndarray) -> np.ndarray:
    """Robust recent level at each day: the median of the last four weekly means, so one sale week does not
    pass for a new normal."""
    c = np.concatenate([[0.0], np.cumsum(x)])
    idx = np.arange(len(x))
    weeks = np.stack([(c[np.clip(idx + 1 - 7 * k, 0, None)] - c[np.clip(idx + 1 - 7 * (k + 1), 0, None)]) / 7.0
                      for k in range(4)])
    return np.median(weeks, axis=0)


def projected_lines(lines: np.ndarray, src: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    """Projected total order lines for days o+1..o+horizon of each origin o (origins x horizon).

    Last year's aligned day scaled by growth (this year's last 28 days over the same 28 days a year before);
    without a usable last year, the mean of the last eight same weekdays.
    """
    lvl = _rolling_mean(lines, 28)
    n = len(lines)
    out = np.zeros((len(origins), horizon))
    dow_mean = _dow_profile(lines, origins, weeks=8)  # origins x 7 (weekday of o+1+k)
    for i, o in enumerate(origins):
        target = o + 1 + np.arange(horizon)
        s = np.where(target < len(src), src[np.minimum(target, len(src) - 1)], -1)
        base = o - LY
        flat = dow_mean[i, np.arange(horizon) % 7]
        if base - 27 >= 0 and lvl[base] > 0:
            usable = (s >= 0) & (s <= o) & (s < n)
            out[i] = np.where(usable, lines[np.clip(s, 0, n - 1)] * (lvl[o] / lvl[base]), flat)
        else:
            out[i] = flat
    return out


def _dow_profile(x: np.ndarray, origins: np.ndarray, weeks: int, median: bool = False) -> np.ndarray:
    """Mean (or median) of x on the weekday of o+1+k over the last ``weeks`` such days up to o (origins x 7)."""
    out = np.zeros((len(origins), 7))
    for k in range(7):
        last = origins - ((6 - k) % 7)  # the most recent day <= o with the weekday of o+1+k
        d = last[:, None] - 7 * np.arange(weeks)[None, :]
        vals = np.where(d >= 0, x[np.clip(d, 0, None)], np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows before the data starts
            out[:, k] = np.nanmedian(vals, axis=1) if median else np.nanmean(vals, axis=1)
    return np.nan_to_num(out)


# --------------------------------------------------------------------------------------------------------------------
# Features


CAT_FEATURES = ["series", "kind", "last_major"]
NUM_FEATURES = [
    "h", "log_scale", "dow", "origin_dow", "is_event", "event_size", "days_until_event", "days_since_event",
    "days_until_major", "days_since_major", "in_event_window", "m7", "m91", "last1", "trend28", "dow4", "dow8",
    "ly_day", "ly_week", "pipe_known", "pipe_future", "pipe_total", "pipe_level", "proj_lines",
    "proj_lines_14",
]
FEATURES = CAT_FEATURES + NUM_FEATURES


def _kind(series: str) -> str:
    return series.split("=", 1)[0] if "=" in series else series


def _calendar_table(days: pd.DatetimeIndex, market: str, settings: Settings) -> pd.DataFrame:
    """Calendar features of every day, plus the most recent major event (window from 3 days before) and its name."""
    cal = calendar_features(days, market, settings)
    hw = holiday_windows(market, days[0] - pd.Timedelta(days=120), days[-1], settings)
    name = np.full(len(days), "none", dtype=object)
    if not hw.empty:
        starts = hw["window_start"].to_numpy(dtype="datetime64[ns]")
        pos = np.searchsorted(starts, days.to_numpy(dtype="datetime64[ns]"), side="right") - 1
        ok = pos >= 0
        since = np.full(len(days), 999)
        ev_dates = hw["event_date"].to_numpy(dtype="datetime64[ns]")
        since[ok] = ((days.to_numpy(dtype="datetime64[ns]")[ok] - ev_dates[pos[ok]]) / np.timedelta64(1, "D"))
        recent = ok & (since <= 45)
        name[recent] = hw["event"].to_numpy()[pos[recent]]
    cal["last_major"] = name
    return cal


@dataclass
class _Frames:
    """Arrays shared by feature building for one history (computed once)."""

    y: np.ndarray  # days x series
    cal: pd.DataFrame  # calendar of days + horizon beyond
    src: np.ndarray  # last-year source index per day (history + horizon)
    pipe_full: np.ndarray  # days x series: expected returns from all orders placed up to each day


def _prepare(history: History, kernels: dict[str, Kernel], horizon: int, settings: Settings) -> _Frames:
    days = history.days
    ext = pd.date_range(days[0], days[-1] + pd.Timedelta(days=horizon), freq="D")
    cal = _calendar_table(ext, history.market, settings)
    src = last_year_source(ext, history.market, settings)
    drivers = series_drivers(history)
    n = len(days)
    pipe_full = np.zeros((n, len(history.series)))
    kern = _mixed_kernels(history, kernels)
    for j, s in enumerate(history.series):
        for col, key in drivers[s]:
            pipe_full[:, j] += np.convolve(history.drivers[col].to_numpy(), kern[key])[:n]
    return _Frames(history.y.to_numpy(dtype=float), cal, src, pipe_full)


def _plan_lines(plan: pd.DataFrame | None, history: History, origin: int, horizon: int,
                lines_per_order: float) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """Planned total lines for days o+1..o+H (NaN where the plan is silent) and per-category planned lines."""
    if plan is None or plan.empty:
        return None, {}
    days = history.days[0] + pd.to_timedelta(origin + 1 + np.arange(horizon), unit="D")
    factor = lines_per_order if (plan["unit"] == "orders").all() else 1.0
    if plan["category"].isna().all():
        per_day = plan.groupby("date")["qty"].sum()
        return per_day.reindex(days).to_numpy(dtype=float) * factor, {}
    by_cat = {}
    for c, g in plan.groupby("category"):
        by_cat[f"lines|category={c}"] = g.set_index("date")["qty"].reindex(days).to_numpy(dtype=float) * factor
    total = np.nansum(np.vstack(list(by_cat.values())), axis=0)
    covered = np.any(np.vstack([~np.isnan(v) for v in by_cat.values()]), axis=0)
    return np.where(covered, total, np.nan), by_cat


def _driver_pipeline(history: History, pair: tuple[str, str], g: Kernel, origins: np.ndarray, proj: np.ndarray,
                     lines_m28: np.ndarray, plan_cat: dict[str, np.ndarray], hank_idx: np.ndarray,
                     toep_idx: np.ndarray, lag_mat: np.ndarray,
                     lag_ok: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected returns at o+1..o+H (origins x H) from one driver: from its orders up to o (known), from its
    share of the projected (or planned) orders after o (future), and from its orders up to o had they been at
    their usual level (usual)."""
    col = pair[0]
    D = history.drivers[col].to_numpy()
    Dm = np.where(lag_ok, D[np.clip(lag_mat, 0, None)], 0.0)
    gh = np.where(hank_idx < MAX_LAG, g[np.minimum(hank_idx, MAX_LAG - 1)], 0.0)
    share = _rolling_mean(D, 28)[origins] / np.maximum(lines_m28[origins], 1e-9)
    P = proj * share[:, None]
    if col in plan_cat:
        P[0] = np.where(np.isnan(plan_cat[col]), P[0], plan_cat[col])
    elif plan_cat and col.startswith("amount|category="):
        # A plan per category in order lines: this category's order value per line turns it into amounts.
        c = col.split("=", 1)[1]
        pc = plan_cat.get(f"lines|category={c}")
        if pc is not None:
            per_line = _rolling_mean(D, 28)[origins[0]] / max(
                _rolling_mean(history.drivers[f"lines|category={c}"].to_numpy(), 28)[origins[0]], 1e-9)
            P[0] = np.where(np.isnan(pc), P[0], pc * per_line)
    gt = np.where((toep_idx >= 0) & (toep_idx < MAX_LAG), g[np.clip(toep_idx, 0, MAX_LAG - 1)], 0.0)
    # What the known orders would bring at their usual (robust) level: the baseline of the known excess.
    usual = _level(D)[origins][:, None] * gh.sum(axis=1)[None, :]
    return Dm @ gh.T, P @ gt.T, usual


def build_features(history: History, kernels: dict[str, Kernel], origins: Sequence[int], horizon: int,
                   settings: Settings, frames: _Frames | None = None, plan: pd.DataFrame | None = None,
                   series: Iterable[str] | None = None) -> pd.DataFrame:
    """Feature rows for every (series, origin, h in 1..horizon): only data up to each origin is used.

    ``origins`` are day indices into ``history.days``. Rows carry ``series``, ``origin``, ``h``, ``date``,
    ``scale`` and ``y`` (NaN beyond the history) beside the model features.
    """
    fr = frames or _prepare(history, kernels, horizon, settings)
    origins = np.asarray(origins, dtype=np.int64)
    n_days, names = len(history.days), list(history.series)
    wanted = [s for s in (series or names)]
    col_of = {s: j for j, s in enumerate(names)}
    H = np.arange(1, horizon + 1)
    n_o = len(origins)
    lines_total = history.drivers["lines"].to_numpy()
    proj = projected_lines(lines_total, fr.src, origins, horizon)  # origins x H
    lines_m28 = _rolling_mean(lines_total, 28)
    plan_cat: dict[str, np.ndarray] = {}
    if plan is not None:
        if n_o != 1:
            raise ValueError("a sales plan applies to one forecast origin")
        plan_total, plan_cat = _plan_lines(plan, history, int(origins[0]), horizon, history.lines_per_order)
        if plan_total is not None:
            proj[0] = np.where(np.isnan(plan_total), proj[0], plan_total)
    drivers = series_drivers(history)
    kern = _mixed_kernels(history, kernels)
    # Hankel (known orders) and Toeplitz (future orders) forms of each kernel for horizons 1..H.
    m_idx = np.arange(MAX_LAG)
    hank_idx = H[:, None] + m_idx[None, :]  # lag of an order placed m days before o, seen at o+h
    toep_idx = H[:, None] - H[None, :]  # lag of an order placed at o+j, seen at o+h
    lag_mat = origins[:, None] - m_idx[None, :]  # origins x MAX_LAG: day index of orders m days before o
    lag_ok = lag_mat >= 0
    cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # total and channels share their drivers

    frames_out = []
    for s in wanted:
        j = col_of[s]
        y = fr.y[:, j]
        m28 = _rolling_mean(y, 28)
        m91 = _rolling_mean(y, 91)
        m7 = _rolling_mean(y, 7)
        mall = np.cumsum(y) / (np.arange(n_days) + 1)
        scale = np.maximum.reduce([m28[origins], 0.5 * m91[origins], 0.1 * mall[origins],
                                   np.full(n_o, 1e-6)])
        scale = np.where(scale <= 1e-6, 1.0, scale)
        # Pipeline from orders already placed, and from projected orders after o.
        known = np.zeros((n_o, horizon))
        future = np.zeros((n_o, horizon))
        usual = np.zeros((n_o, horizon))
        for pair in drivers[s]:
            if pair not in cache:
                cache[pair] = _driver_pipeline(history, pair, kern[pair[1]], origins, proj, lines_m28, plan_cat,
                                               hank_idx, toep_idx, lag_mat, lag_ok)
            known += cache[pair][0]
            future += cache[pair][1]
            usual += cache[pair][2]
        level = _rolling_mean(fr.pipe_full[:, j], 28)[origins]
        level = np.where(level > 1e-9, level, np.nan)
        # Last year: the target day 52 weeks back and its week, relative to the 28 days before o a year back.
        tgt = origins[:, None] + H[None, :]
        base = origins - LY
        base_ok = (base - 27 >= 0)
        base_lvl = np.where(base_ok, m28[np.clip(base, 0, None)], np.nan)
        base_lvl = np.where(base_lvl > 0, base_lvl, np.nan)
        ly = tgt - LY
        ly_ok = (ly >= 3) & (ly + 3 <= origins[:, None])
        ly_day = np.where(ly_ok, y[np.clip(ly, 0, n_days - 1)], np.nan) / base_lvl[:, None]
        c = np.concatenate([[0.0], np.cumsum(y)])
        wk = (c[np.clip(ly + 4, 0, n_days)] - c[np.clip(ly - 3, 0, n_days)]) / 7.0
        ly_week = np.where(ly_ok, wk, np.nan) / base_lvl[:, None]
        dow4 = _dow_profile(y, origins, 4) / scale[:, None]
        dow8 = _dow_profile(y, origins, 8) / scale[:, None]
        k = (H - 1) % 7
        lm28 = np.where(lines_m28[origins] > 0, lines_m28[origins], np.nan)
        proj_rel = proj / lm28[:, None]
        csum = np.cumsum(np.concatenate([np.zeros((n_o, 1)), proj_rel], axis=1), axis=1)
        proj14 = (csum[:, 1:] - csum[:, np.maximum(np.arange(horizon) - 13, 0)]) / np.minimum(H, 14)

        rows = pd.DataFrame({
            "series": s,
            "kind": _kind(s),
            "origin": np.repeat(origins, horizon),
            "h": np.tile(H, n_o),
            "scale": np.repeat(scale, horizon),
            "log_scale": np.repeat(np.log(scale), horizon),
            "m7": np.repeat(m7[origins] / scale, horizon),
            "m91": np.repeat(m91[origins] / scale, horizon),
            "last1": np.repeat(y[origins] / scale, horizon),
            "trend28": np.repeat(m28[origins] / np.maximum(m28[np.maximum(origins - 28, 0)], 1e-3 * scale),
                                 horizon).clip(0, 10),
            "dow4": dow4[:, k].ravel(),
            "dow8": dow8[:, k].ravel(),
            "ly_day": ly_day.ravel(),
            "ly_week": ly_week.ravel(),
            "ly_growth": np.repeat(m28[origins] / base_lvl, horizon),
            "pipe_known": (known / level[:, None]).ravel(),
            "pipe_future": (future / level[:, None]).ravel(),
            "pipe_total": ((known + future) / level[:, None]).ravel(),
            # 1 + the returns still to come from orders already placed beyond what those days' orders usually
            # bring, relative to the recent level: scales forecasts beyond the range seen in training.
            "prior": np.nan_to_num(1.0 + (known - usual) / level[:, None], nan=1.0).clip(0.5, 5.0).ravel(),
            "pipe_level": np.repeat(level / scale, horizon),
            "proj_lines": proj_rel.ravel(),
            "proj_lines_14": proj14.ravel(),
            "y": np.where(tgt < n_days, y[np.clip(tgt, 0, n_days - 1)], np.nan).ravel(),
        })
        rows["origin_dow"] = np.repeat(history.days[np.clip(origins, 0, n_days - 1)].day_of_week.to_numpy(), horizon)
        frames_out.append(rows)
    out = pd.concat(frames_out, ignore_index=True)
    tgt = out["origin"].to_numpy() + out["h"].to_numpy()
    cal = fr.cal.iloc[tgt]
    out["date"] = cal.index.to_numpy()
    for col in ("dow", "is_event", "event_size", "days_until_event", "days_since_event", "days_until_major",
                "days_since_major", "in_event_window", "last_major"):
        vals = cal[col].to_numpy()
        out[col] = vals.astype(float) if col != "last_major" else vals
    return out


# --------------------------------------------------------------------------------------------------------------------
# Checks on the history


def required_days(horizon: int, calibration_days: int) -> int:
    """Days of history up to the origin that a fit needs: warm-up, training origins, horizon, calibration."""
    return WARMUP_DAYS + MIN_TRAIN_DAYS + horizon + calibration_days


def check_history(history: History, origin: pd.Timestamp, horizon: int, calibration_days: int,
                  settings: Settings) -> None:
    """Raise :class:`HistoryError` saying how much history is needed when there is too little before ``origin``."""
    days = history.days
    origin = _day(origin)
    if origin < days[0] or origin > days[-1]:
        raise HistoryError(f"origin {origin.date()} is outside the data ({days[0].date()} to {days[-1].date()}): "
                           "choose an origin inside it (the last day whose data may be used)")
    have = int((origin - days[0]).days) + 1
    need = required_days(horizon, calibration_days)
    if have < need:
        max_h = have - WARMUP_DAYS - MIN_TRAIN_DAYS - calibration_days
        hint = f" or shorten the horizon to {max_h} days" if max_h >= 1 else ""
        raise HistoryError(
            f"{have} days of history up to {origin.date()}, but a {horizon}-day forecast needs at least {need} "
            f"({WARMUP_DAYS} to warm up lag features, {MIN_TRAIN_DAYS} of training origins, {horizon} for the "
            f"horizon, {calibration_days} to calibrate the intervals): data from "
            f"{(origin - pd.Timedelta(days=need - 1)).date()} on{hint}")
    seen = complete_windows(history.market, days[0], origin, settings)
    if seen.empty:
        first = holiday_windows(history.market, days[0], days[0] + pd.Timedelta(days=400), settings)
        ex = (f"; e.g. {first['event'].iloc[0]} on {first['event_date'].iloc[0].date()} needs data from "
              f"{first['window_start'].iloc[0].date()} to {first['window_end'].iloc[0].date()}") if len(first) else ""
        raise HistoryError(f"no major holiday or shopping event with its whole after-sales window (3 days before to "
                           f"21 days after) lies between {days[0].date()} and {origin.date()}: the model cannot "
                           f"learn holiday effects; give a history that covers at least one{ex}")


def unseen_events(history: History, origin: pd.Timestamp, horizon: int, settings: Settings) -> list[str]:
    """Major events in the forecast horizon whose previous instance is not in the history (no last-year guide)."""
    origin = _day(origin)
    ahead = holiday_windows(history.market, origin + pd.Timedelta(days=1), origin + pd.Timedelta(days=horizon),
                            settings)
    past = holiday_windows(history.market, history.days[0], origin, settings)
    past = past[past["window_start"] >= history.days[0]]
    out = []
    for _, ev in ahead.iterrows():
        if not (past["event"] == ev["event"]).any():
            out.append(f"{ev['event']} ({ev['event_date'].date()}): history would have to start by "
                       f"{(ev['window_start'] - pd.Timedelta(days=LY)).date()} to hold last year's instance")
    return out
