"""The return-volume forecaster's inputs: the daily series (wide, gap-free) and the order drivers built from the
contract tables (:class:`History`, :func:`build_history`), the sales plan a planner may supply, and the errors that say
what is missing. Re-exported by :mod:`features.return_volume`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

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
