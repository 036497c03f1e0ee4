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
No MLflow and no HTTP here: training/return_volume.py orchestrates, serving loads the fitted object.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from features.calendar import calendar_features, holiday_windows, market_events
from features.settings import Settings

Wide = pd.DataFrame  # index: consecutive days (tz-naive), columns: series or driver names
Kernel = np.ndarray  # expected returns (or refund per unit ordered) per order line at lag 0..MAX_LAG-1 days
Driver = list[tuple[str, str]]  # (driver column, kernel key) pairs whose convolutions add up to a series' pipeline

TOTAL = "total"
REFUND = "refund_amount"
FORECAST_COLUMNS = ["date", "series", "p10", "p50", "p90"]
PLAN_COLUMNS = ("date", "orders", "order_lines", "category")
MAX_LAG = 60  # longest order-to-return delay modelled; later returns are rare (gift waves end within ~45 days)
WARMUP_DAYS = 28  # rolling features need four weeks before the first training origin
MIN_TRAIN_DAYS = 56  # span of training origins below which the model has too few examples
KERNEL_WINDOW = 365  # order cohorts used to learn the delay kernel
KERNEL_PRIOR_LINES = 2000.0  # pseudo order lines pulling a small category's kernel toward the overall one
H_BANDS = (7, 14, 28)  # horizon bands with their own conformal quantiles: 1-7, 8-14, 15-28, 29+
MIN_SERIES_SHARE = 0.02  # a category/region gets its own series at >= 2% of returns ...
MIN_SERIES_MEAN = 0.5  # ... and >= 0.5 returns per day on average
MAX_GROUP_SERIES = 12  # at most this many categories (and regions) as series: the largest ones
LY = 364  # "last year" = 52 weeks back: same weekday
ALIGN_BEFORE, ALIGN_AFTER = 7, 7  # days around an event whose orders are taken from its previous instance
QUANTILES = (0.1, 0.5, 0.9)


class HistoryError(ValueError):
    """The data is too short (or too sparse) for what was asked; the message says how much is needed."""


class PlanError(ValueError):
    """A sales plan file that cannot be used; the message names the file, the column and what to do."""


# --------------------------------------------------------------------------------------------------------------------
# History: the daily series and the order drivers


@dataclass
class History:
    """Daily inputs of the forecaster, wide and gap-free (days without returns are zeros).

    ``y``: days x series (total, refund_amount, category=..., region=..., channel=...).
    ``drivers``: days x driver columns (``lines|category=c``, ``lines|region=r``, ``amount|category=c``, ``lines``).
    ``linked``: one row per return whose order is known: order_day and request_day (int day offsets), category,
    refund_amount; used to learn the delay kernels.
    """

    y: Wide
    drivers: Wide
    linked: pd.DataFrame
    market: str
    region_mix: dict[str, dict[str, float]] = field(default_factory=dict)  # region -> category -> share of lines
    lines_per_order: float = 1.0  # converts a plan given in orders into order lines

    @property
    def days(self) -> pd.DatetimeIndex:
        """The consecutive days covered."""
        return pd.DatetimeIndex(self.y.index)

    @property
    def series(self) -> list[str]:
        """Names of the target series."""
        return list(self.y.columns)

    def upto(self, origin: pd.Timestamp) -> History:
        """The history as it was known at the end of ``origin``: nothing later survives (no leakage)."""
        origin = _day(origin)
        end = int(np.searchsorted(self.days, origin, side="right"))
        last = self.linked["request_day"] < end
        return History(self.y.iloc[:end].copy(), self.drivers.iloc[:end].copy(),
                       self.linked.loc[last].reset_index(drop=True), self.market, self.region_mix,
                       self.lines_per_order)

    def long(self) -> pd.DataFrame:
        """The series in long format: unique_id, ds, y (zeros on days without returns)."""
        out = self.y.rename_axis("ds").reset_index().melt(id_vars="ds", var_name="unique_id", value_name="y")
        return out[["unique_id", "ds", "y"]].sort_values(["unique_id", "ds"], ignore_index=True)


def _day(x) -> pd.Timestamp:
    ts = pd.Timestamp(x)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.normalize()


EPOCH = pd.Timestamp("1970-01-01")


def _epoch_days(ts: pd.Series) -> np.ndarray:
    """UTC day number (days since 1970-01-01) of each timestamp, as int64 (missing: the int64 minimum)."""
    values = ts.to_numpy(dtype="datetime64[us]") if len(ts) else np.zeros(0, dtype="datetime64[us]")
    return values.astype("datetime64[D]").astype(np.int64)


def _label_codes(labels: pd.Series, missing: str | None = None) -> tuple[np.ndarray, list[str]]:
    """(code of each row's label, the labels as text): missing labels get the code of ``missing`` when given, else -1."""
    codes, uniques = pd.factorize(labels)
    names = [str(u) for u in uniques]
    codes = np.asarray(codes, dtype=np.int64)
    if missing is not None and (codes < 0).any():
        slot = names.index(missing) if missing in names else len(names)
        if slot == len(names):
            names.append(missing)
        codes = np.where(codes < 0, slot, codes)
    return codes, names


def _daily_by_label(codes: np.ndarray, names: list[str], day_idx: np.ndarray, n: int,
                    weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Daily counts (or sums of ``weights``) per label from :func:`_label_codes`, in one ``bincount`` rather than
    one comparison over all rows per label; rows with code -1 (missing label) are left out."""
    ok = (codes >= 0) & (day_idx >= 0) & (day_idx < n)
    w = None if weights is None else weights[ok]
    table = np.bincount(codes[ok] * n + day_idx[ok], weights=w, minlength=len(names) * n).astype(float)
    table = table.reshape(len(names), n)
    return {name: table[i] for i, name in enumerate(names)}


def _keep_groups(labels: pd.Series, n_days: int) -> list[str]:
    """Categories/regions big enough to be their own series (largest first)."""
    counts = labels.dropna().value_counts()
    total = max(len(labels), 1)
    keep = counts[(counts / total >= MIN_SERIES_SHARE) & (counts / max(n_days, 1) >= MIN_SERIES_MEAN)]
    return [str(k) for k in keep.index[:MAX_GROUP_SERIES]]


def _daily_counts(day_idx: np.ndarray, n: int, weights: np.ndarray | None = None) -> np.ndarray:
    ok = (day_idx >= 0) & (day_idx < n)
    w = None if weights is None else weights[ok]
    return np.bincount(day_idx[ok], weights=w, minlength=n).astype(float)


def _match_lines(returns: pd.DataFrame, orders: pd.DataFrame) -> pd.DataFrame:
    """Each return's order line (ordered_at, category, region; missing when the order is unknown): the line whose
    unit price x returned quantity is closest to the refund, since returns name an order, not a line."""
    out = pd.DataFrame({"ordered_at": pd.Series(pd.NaT, index=returns.index, dtype="datetime64[us, UTC]"),
                        "category": pd.Series(None, index=returns.index, dtype=object),
                        "region": pd.Series(None, index=returns.index, dtype=object)})
    given = returns["order_id"].notna()
    if not given.any() or orders.empty:
        return out
    r = returns.loc[given, ["order_id", "quantity", "refund_amount"]].copy()
    r["rid"] = np.arange(len(r))
    lines = orders[["order_id", "ordered_at", "category", "region", "quantity", "amount"]].rename(
        columns={"quantity": "line_qty"})
    m = r.merge(lines, on="order_id", how="inner")
    unit = m["amount"] / m["line_qty"].clip(lower=1)
    m["gap"] = (unit * np.minimum(m["quantity"], m["line_qty"]) - m["refund_amount"]).abs()
    best = m.sort_values(["rid", "gap"], kind="stable").drop_duplicates("rid")
    at = returns.index[given.to_numpy()][best["rid"].to_numpy()]
    out.loc[at, "ordered_at"] = best["ordered_at"].to_numpy()
    out.loc[at, "category"] = best["category"].astype(object).to_numpy()
    out.loc[at, "region"] = best["region"].astype(object).to_numpy()
    return out


def build_history(ds, market: str, end: pd.Timestamp | None = None, engine=None) -> History:
    """Build the daily series and order drivers from a validated :class:`features.contract.Dataset`.

    Series: ``total`` (return requests per day), ``refund_amount``, ``category=<c>`` and ``region=<r>`` for the
    larger categories/regions (a return's category and region come from its order line; a ``region`` column on the
    returns themselves wins), and ``channel=<ch>`` (tickets created per day) when tickets exist.

    ``engine`` (``features.engine``) runs the join of returns to their order lines per order partition; the day
    counts are sums over the whole data (which series are kept depends on every row), made once from the columns.
    """
    orders, returns, tickets = ds.orders, ds.returns, ds.tickets
    if returns.empty:
        raise HistoryError(f"{getattr(ds, 'source', 'data')}: the returns table has no rows; a return-volume "
                           "forecast needs return requests (returns.requested_at) over at least a few months")
    o_dn, r_dn = _epoch_days(orders["ordered_at"]), _epoch_days(returns["requested_at"])
    first = int(min(o_dn.min(), r_dn.min()) if len(o_dn) else r_dn.min())
    last = (int((_day(end) - EPOCH).days) if end is not None
            else int(max(o_dn.max() if len(o_dn) else r_dn.max(), r_dn.max())))
    day0 = EPOCH + pd.Timedelta(days=first)
    days = pd.date_range(day0, EPOCH + pd.Timedelta(days=last), freq="D")
    n = len(days)
    r_idx = r_dn - first
    o_idx = o_dn - first

    if engine is None or engine.name == "pandas":
        matched = _match_lines(returns, orders)
    else:
        cols = ["order_id", "ordered_at", "category", "region", "quantity", "amount"]
        matched = engine.by_key(_match_lines, {"returns": (returns[["order_id", "quantity", "refund_amount"]],
                                                           "order_id"),
                                               "orders": (orders[cols], "order_id")}, primary="returns")
        matched = matched.reindex(returns.index)
    r_cat = matched["category"].astype("object")
    r_region = matched["region"].astype("object")
    if "region" in returns.columns:  # e.g. the Online Retail import keeps the customer's country on the return
        own = returns["region"].astype("object")
        r_region = own.where(own.notna(), r_region)

    y: dict[str, np.ndarray] = {
        TOTAL: _daily_counts(r_idx, n),
        REFUND: _daily_counts(r_idx, n, returns["refund_amount"].to_numpy(dtype=float)),
    }
    by_cat = _daily_by_label(*_label_codes(r_cat), r_idx, n)
    for c in _keep_groups(r_cat, n):
        y[f"category={c}"] = by_cat[c]
    by_region = _daily_by_label(*_label_codes(r_region), r_idx, n)
    for r in _keep_groups(r_region, n):
        y[f"region={r}"] = by_region[r]
    if tickets is not None and not tickets.empty:
        t_idx = _epoch_days(tickets["created_at"]) - first
        by_channel = _daily_by_label(*_label_codes(tickets["channel"]), t_idx, n)
        for c in sorted(by_channel):
            y[f"channel={c}"] = by_channel[c]

    # Order drivers: lines per category (all categories, so the total pipeline is exact), per region kept as a
    # series, amounts per category, and all lines. Missing category/region: "?".
    amount = orders["amount"].to_numpy(dtype=float) if len(orders) else np.zeros(0)
    cat, cat_names = _label_codes(orders["category"], missing="?")
    lines_by_cat = _daily_by_label(cat, cat_names, o_idx, n)
    amount_by_cat = _daily_by_label(cat, cat_names, o_idx, n, amount)
    drivers: dict[str, np.ndarray] = {"lines": _daily_counts(o_idx, n)}
    for c in sorted(lines_by_cat):
        drivers[f"lines|category={c}"] = lines_by_cat[c]
        drivers[f"amount|category={c}"] = amount_by_cat[c]
    region_mix: dict[str, dict[str, float]] = {}
    kept_regions = [s.split("=", 1)[1] for s in y if s.startswith("region=")]
    if kept_regions:
        reg, reg_names = _label_codes(orders["region"], missing="?")
        lines_by_region = _daily_by_label(reg, reg_names, o_idx, n)
        mix = np.bincount(reg * len(cat_names) + cat, minlength=len(reg_names) * len(cat_names))
        mix = mix.reshape(len(reg_names), len(cat_names))
        for r in kept_regions:
            drivers[f"lines|region={r}"] = lines_by_region.get(r, np.zeros(n))
            row = mix[reg_names.index(r)] if r in reg_names else np.zeros(len(cat_names), dtype=np.int64)
            total = row.sum()
            region_mix[r] = {cat_names[j]: float(row[j] / total) for j in np.flatnonzero(row)}

    known = matched["ordered_at"].notna()
    linked = pd.DataFrame({
        "order_day": _epoch_days(matched.loc[known, "ordered_at"]) - first,
        "request_day": r_idx[known.to_numpy()],
        "category": r_cat[known].fillna("?").astype(str).to_numpy(),
        "refund_amount": returns.loc[known, "refund_amount"].to_numpy(dtype=float),
    })
    linked = linked[linked["order_day"] >= 0].reset_index(drop=True)
    lines_per_order = len(orders) / max(int(orders["order_id"].nunique()), 1) if len(orders) else 1.0
    return History(pd.DataFrame(y, index=days), pd.DataFrame(drivers, index=days), linked, str(market).upper(),
                   region_mix, float(lines_per_order))


def load_history(data_dir: Path | str, market: str, end: pd.Timestamp | None = None, engine=None):
    """Load and validate a data folder, then build its :class:`History`. Returns (history, dataset)."""
    from features.contract import load_dataset

    ds = load_dataset(data_dir, tables=["orders", "returns", "tickets"])
    return build_history(ds, market, end=end, engine=engine), ds


# --------------------------------------------------------------------------------------------------------------------
# Sales plan


def read_plan(path: Path | str) -> pd.DataFrame:
    """Read a sales plan CSV: ``date`` and ``orders`` (planned orders) or ``order_lines`` per day; optional
    ``category`` (one row per day and category). Unknown columns are an error (a typo must not pass silently)."""
    path = Path(path)
    try:
        raw = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise PlanError(f"{path}: cannot read the sales plan ({e}); write a CSV with columns date,orders") from e
    return validate_plan(raw, source=str(path))


def validate_plan(raw: pd.DataFrame, source: str = "plan") -> pd.DataFrame:
    """Check a plan's columns and values; return date (day), category (or None), lines (order lines or orders)."""
    cols = [str(c).strip() for c in raw.columns]
    raw = raw.set_axis(cols, axis=1)
    unknown = [c for c in cols if c not in PLAN_COLUMNS]
    missing = [c for c in ("date",) if c not in cols]
    if not ({"orders", "order_lines"} & set(cols)):
        missing.append("orders (or order_lines)")
    if unknown or missing:
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown column(s) {', '.join(unknown)}")
        raise PlanError(f"{source}: {'; '.join(parts)}. A plan has columns date, orders (or order_lines) and "
                        "optionally category, one row per day (and category)")
    if {"orders", "order_lines"} <= set(cols):
        raise PlanError(f"{source}: give either column orders or order_lines, not both")
    qty_col = "orders" if "orders" in cols else "order_lines"
    dates = pd.to_datetime(raw["date"], errors="coerce", format="mixed")
    if dates.isna().any():
        i = int(np.flatnonzero(dates.isna().to_numpy())[0])
        raise PlanError(f"{source}: column date, row {i + 2}: {raw['date'].iloc[i]!r} is not a date (use YYYY-MM-DD)")
    qty = pd.to_numeric(raw[qty_col], errors="coerce")
    bad = qty.isna() | (qty < 0)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise PlanError(f"{source}: column {qty_col}, row {i + 2}: {raw[qty_col].iloc[i]!r} must be a number >= 0")
    out = pd.DataFrame({"date": dates.map(_day), "category": raw["category"].astype(str) if "category" in cols
                        else None, "qty": qty.astype(float), "unit": qty_col})
    key = ["date", "category"] if "category" in cols else ["date"]
    dup = out.duplicated(key)
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise PlanError(f"{source}: row {i + 2} repeats {', '.join(key)} of an earlier row; one row per "
                        f"{' and '.join(key)}")
    return out


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
    hw = holiday_windows(history.market, days[0], origin, settings)
    seen = hw[(hw["window_start"] >= days[0]) & (hw["window_end"] <= origin)]
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
        hw = holiday_windows(history.market, days[0], days[-1], self.settings())
        done = hw[(hw["window_end"] <= days[-1]) & (hw["window_start"] >= days[0])]
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
