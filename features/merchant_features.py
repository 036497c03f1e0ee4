"""Merchant features as of a day (empirical-Bayes shrunk rates, the complaint link), the complaint label, snapshots.

:func:`build_features` computes each merchant's features *as of* a day from :class:`~features.merchant_events.
MerchantEvents`, using only what was known by the end of that day (the as-of date is the last day whose data may be
used); :func:`build_labels` counts the complaints per order in the ``horizon`` days after it; :func:`build_snapshots`
stacks both over many as-of dates for training.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.contract import Dataset
from features.merchant_events import (
    BASELINE_DAYS,
    DAY,
    HORIZON_DAYS,
    NEW_MERCHANT_DAYS,
    VERY_LATE_DAYS,
    AsOfError,
    MerchantEvents,
    _complaint_counts,
    _count,
    _cutoff,
    _in,
    _late_counts,
    prepare_events,
)

Arr = np.ndarray
FeatureFrame = pd.DataFrame  # one row per merchant, index merchant_id, FEATURES + info columns
SnapshotFrame = pd.DataFrame  # feature frames of many as-of dates stacked, with labels and an ``as_of`` column

# The model's inputs, in this order. Rates are empirical-Bayes shrunk toward the merchant's category.
FEATURES: tuple[str, ...] = (
    "orders_30d", "orders_90d", "orders_180d", "orders_365d", "order_growth", "days_since_last_order", "tenure_days",
    "late_rate_30d", "late_rate_90d", "very_late_rate_30d", "very_late_rate_90d", "very_late_rate_365d", "late_trend",
    "quality_return_rate_30d", "quality_return_rate_90d", "quality_return_rate_365d", "quality_trend",
    "logistics_return_rate_90d", "return_rate_90d",
    "complaint_count_90d", "complaint_rate_30d", "complaint_rate_90d", "complaint_rate_180d", "complaint_rate_365d",
    "complaint_trend",
    "escalation_rate_90d", "escalation_rate_365d", "tickets_per_order_90d", "tickets_per_order_365d",
    "resolution_hours_90d",
    "main_category_share", "n_categories",
    "cat_late_rate_90d", "cat_very_late_rate_90d", "cat_quality_return_rate_90d", "cat_complaint_rate_90d",
    "complaint_propensity", "ops_complaint_rate_30d", "ops_complaint_rate_90d", "ops_complaint_trend",
)
# Columns carried beside the features (not model inputs): the category, flags and the two baselines' scores.
INFO_COLUMNS = ("category", "flag", "baseline_rate", "baseline_count", "expected_orders")
LABEL_COLUMNS = ("label_orders", "label_complaints", "label_rate")


# --------------------------------------------------------------------------------------------------------------------
# Empirical Bayes


def shrink_rates(k: Arr, n: Arr, group: Arr, kind: str = "binomial", min_group: int = 5,
                 max_strength: float = 1e5) -> tuple[Arr, Arr]:
    """Shrink rates k/n toward their group's rate (empirical Bayes, method-of-moments prior per group).

    ``kind="binomial"`` fits a beta prior (a proportion: late orders / orders); ``"poisson"`` a gamma prior (a count
    per unit of exposure: complaints / orders). Both give ``(k + mu*m) / (n + m)`` where ``mu`` is the group's pooled
    rate and ``m`` the prior's strength in orders, large when merchants of the group differ little beyond chance.
    Groups with fewer than ``min_group`` merchants with exposure use the prior of all merchants.
    Returns (shrunk rate per row, prior mean per row).
    """
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    group = np.asarray(group)

    def prior(mask: Arr) -> tuple[float, float]:
        kk, nn = k[mask & (n > 0)], n[mask & (n > 0)]
        if nn.sum() <= 0:
            return 0.0, max_strength
        mu = kk.sum() / nn.sum()
        if len(nn) < 2 or mu <= 0:
            return mu, max_strength
        s2 = np.sum(nn * (kk / nn - mu) ** 2) / nn.sum()  # exposure-weighted spread of the raw rates
        noise = (mu * (1 - mu) if kind == "binomial" else mu) * len(nn) / nn.sum()  # what chance alone explains
        tau2 = s2 - noise
        if tau2 <= 1e-12:
            return mu, max_strength
        strength = (mu * (1 - mu) / tau2 - 1) if kind == "binomial" else mu / tau2
        return mu, float(np.clip(strength, 0.5, max_strength))

    global_prior = prior(np.ones(len(k), bool))
    mus, strengths = np.empty(len(k)), np.empty(len(k))
    for g in np.unique(group):
        mask = group == g
        pm = prior(mask) if np.sum(mask & (n > 0)) >= min_group else global_prior
        mus[mask], strengths[mask] = pm
    return (k + mus * strengths) / (n + strengths), mus


# --------------------------------------------------------------------------------------------------------------------
# Features as of a date


# The rates the merchant features shrink toward the merchant's category: name -> kind (see shrink_rates).
# merchant_counts stores each rate's raw count ``_k_<name>`` and exposure ``_n_<name>``; finish_merchant_features
# shrinks them, because the category priors are sums over every merchant of the category.
SHRUNK_RATES: dict[str, str] = {
    **{f"late_{w}": "binomial" for w in ("30", "prev60", "90", "365")},
    **{f"very_late_{w}": "binomial" for w in ("30", "prev60", "90", "365")},
    **{f"quality_{w}": "poisson" for w in ("30", "prev60", "90", "365")},
    "logistics_90": "poisson", "returns_90": "poisson",
    **{f"complaints_{w}": "poisson" for w in ("30", "90", "180", "365", "prev60", "base")},
    **{f"escalation_{w}": "binomial" for w in ("90", "365")},
    **{f"tickets_{w}": "poisson" for w in ("90", "365")},
}


def build_features(events: MerchantEvents, as_of, horizon_days: int = HORIZON_DAYS,
                   new_merchant_days: int = NEW_MERCHANT_DAYS) -> FeatureFrame:
    """Every merchant known by the end of ``as_of`` with its features, using only what was known by then.

    Merchants with no orders in the last 90 days stay in (flag ``no_orders_in_window``); merchants trading for less
    than ``new_merchant_days`` are flagged ``new_merchant``. Raises :class:`AsOfError` outside the data's days.
    Two stages: :func:`merchant_counts` (each merchant's own events; ``features.engine`` can run it per merchant
    partition) and :func:`finish_merchant_features` (category priors, once).
    """
    counts = merchant_counts(events, as_of, horizon_days, new_merchant_days)
    return finish_merchant_features(counts)


def merchant_counts(events: MerchantEvents, as_of, horizon_days: int = HORIZON_DAYS,
                    new_merchant_days: int = NEW_MERCHANT_DAYS) -> pd.DataFrame:
    """The per-merchant stage of :func:`build_features`: what each merchant's own events decide.

    Features that need no other merchant, the info columns, a ``_known`` flag, and the raw count and exposure of
    every rate in :data:`SHRUNK_RATES`. One row per merchant of ``events`` (index merchant_id, sorted).
    """
    day = events.check_as_of(as_of)
    cut = _cutoff(day)
    ev, n_m = events, events.n_merchants
    known = ev.first_seen < cut

    def window(days: int, end_days_ago: int = 0) -> tuple[int, int]:
        return cut - (days + end_days_ago) * DAY, cut - end_days_ago * DAY

    # Category mix from order lines placed so far.
    lmask = ev.l_t < cut
    n_cat = len(ev.categories)
    mix = np.bincount(ev.l_m[lmask] * n_cat + ev.l_cat[lmask], minlength=n_m * n_cat).reshape(n_m, n_cat)
    lines = mix.sum(axis=1)
    main_cat = np.where(lines > 0, np.argmax(mix, axis=1), n_cat - 1)
    category = ev.categories[main_cat]

    f: dict[str, Arr] = {}
    raw: dict[str, tuple[Arr, Arr]] = {}
    # Windows ending at the cutoff (days) plus the 60 days before the last 30 (the trend's reference).
    windows = {w: window(int(w)) for w in ("30", "90", "180", "365")} | {"prev60": window(60, 30)}
    orders = {w: _count(ev.o_m, _in(ev.o_t, lo, hi), n_m) for w, (lo, hi) in windows.items()}
    orders["base"] = _count(ev.o_m, _in(ev.o_t, *window(BASELINE_DAYS)), n_m)
    for w in ("30", "90", "180", "365"):
        f[f"orders_{w}d"] = orders[w]
    f["order_growth"] = np.log((orders["30"] + 1) / (orders["prev60"] / 2 + 1))
    last = np.full(n_m, -1, dtype=np.int64)
    omask = ev.o_t < cut
    np.maximum.at(last, ev.o_m[omask], ev.o_t[omask])
    f["days_since_last_order"] = np.where(last >= 0, (cut - last) / DAY, np.nan)
    f["tenure_days"] = np.where(known, (cut - ev.first_seen) / DAY, 0.0)

    # Late deliveries: only orders whose promise (or promise + VERY_LATE_DAYS) has passed, windowed by that moment.
    for w in ("30", "prev60", "90", "365"):
        raw[f"late_{w}"] = _late_counts(ev, *windows[w], grace_days=0)
        raw[f"very_late_{w}"] = _late_counts(ev, *windows[w], grace_days=VERY_LATE_DAYS)
    # Returns per order, by reason.
    for w in ("30", "prev60", "90", "365"):
        raw[f"quality_{w}"] = (_count(ev.r_m, _in(ev.r_t, *windows[w]) & ev.r_quality, n_m), orders[w])
    r90 = _in(ev.r_t, *windows["90"])
    raw["logistics_90"] = (_count(ev.r_m, r90 & ev.r_logistics, n_m), orders["90"])
    raw["returns_90"] = (_count(ev.r_m, r90, n_m), orders["90"])
    # Complaints known by the cutoff: complaint cases when created, escalations once resolved.
    for w in (*windows, "base"):
        k = _complaint_counts(ev, *(window(BASELINE_DAYS) if w == "base" else windows[w]), known_by=cut)
        raw[f"complaints_{w}"] = (k, orders[w])
    f["complaint_count_90d"] = raw["complaints_90"][0]
    # Tickets: escalation rate and resolution time of cases closed in the window; cases per order.
    for w in ("90", "365"):
        closed = _in(ev.t_resolved, *windows[w])
        raw[f"escalation_{w}"] = (_count(ev.t_m, closed & ev.t_escalated, n_m), _count(ev.t_m, closed, n_m))
        raw[f"tickets_{w}"] = (_count(ev.t_m, _in(ev.t_created, *windows[w]), n_m), orders[w])
    closed = _in(ev.t_resolved, *windows["90"])
    hours = np.log1p((ev.t_resolved[closed] - ev.t_created[closed]) / 3600.0)
    n_closed = _count(ev.t_m, closed, n_m)
    mean_log = np.bincount(ev.t_m[closed], weights=hours, minlength=n_m) / np.maximum(n_closed, 1)
    f["resolution_hours_90d"] = np.where(n_closed > 0, np.expm1(mean_log), np.nan)  # geometric mean

    f["main_category_share"] = np.where(lines > 0, mix.max(axis=1) / np.maximum(lines, 1), np.nan)
    f["n_categories"] = (mix > 0).sum(axis=1).astype(float)

    frame = pd.DataFrame(f, index=pd.Index(ev.merchant_ids, name="merchant_id"))
    for name, (k, n) in raw.items():
        frame[f"_k_{name}"], frame[f"_n_{name}"] = k, n
    frame["category"] = category
    flags = np.where(orders["90"] == 0, "no_orders_in_window", "")
    new = f["tenure_days"] < new_merchant_days
    flags = np.where(new, np.where(flags == "", "new_merchant", flags + ",new_merchant"), flags)
    frame["flag"] = flags
    # The baselines: last period's raw complaint rate and count (no shrinkage, no model).
    k_base = raw["complaints_base"][0]
    frame["baseline_rate"] = np.where(orders["base"] > 0, k_base / np.maximum(orders["base"], 1), 0.0)
    frame["baseline_count"] = k_base
    # Orders expected in the coming window at the recent run rate (for expected complaints).
    frame["expected_orders"] = orders["90"] * horizon_days / 90.0
    frame["_known"] = known
    frame.index = frame.index.astype("string")
    return frame


# The operational rates the complaint link reads (late deliveries, very late deliveries, quality returns).
_OPS_RATES = ("late", "very_late", "quality")


def complaint_link(counts: pd.DataFrame, shrunk: dict[str, tuple[Arr, Arr]]) -> dict[str, Arr]:
    """How this platform's complaints follow operations, learned across merchants at the as-of date.

    A Poisson regression (log link, exposure = orders) of each merchant's complaints of the last 365 days on its
    late, very-late and quality-return rates of the same 365 days, fitted on every merchant of the snapshot (their
    past only: no label is read). It gives each merchant's *expected* complaints from its operations; then

    * ``complaint_propensity``: its complaints over that expectation, shrunk toward 1 by two complaints' worth
      (how readily this merchant's customers complain, beyond what its operations explain);
    * ``ops_complaint_rate_30d`` / ``_90d``: the complaint rate the last 30 / 90 days' operations imply, times the
      propensity: complaints follow operational trouble with a lag, so trouble that started recently shows here
      before it shows in the complaint rates;
    * ``ops_complaint_trend``: the 30-day figure minus the 90-day one.

    The link is refitted at every as-of date, so its weights are the platform's own, not fixed numbers.
    """
    from sklearn.linear_model import PoissonRegressor

    def design(w: str) -> Arr:
        return np.column_stack([shrunk[f"{r}_{w}"][0] for r in _OPS_RATES])

    k = counts["_k_complaints_365"].to_numpy(float)
    n = counts["_n_complaints_365"].to_numpy(float)
    X365 = design("365")
    fit = (n > 0) & np.isfinite(X365).all(axis=1)
    nan = np.full(len(k), np.nan)
    if fit.sum() < 10 or k[fit].sum() < 5:
        return {"complaint_propensity": nan, "ops_complaint_rate_30d": nan, "ops_complaint_rate_90d": nan,
                "ops_complaint_trend": nan}
    mu, sd = X365[fit].mean(axis=0), X365[fit].std(axis=0) + 1e-9
    glm = PoissonRegressor(alpha=1e-4, max_iter=300).fit((X365[fit] - mu) / sd, k[fit] / n[fit], sample_weight=n[fit])

    def rate(X: Arr) -> Arr:
        return glm.predict((np.nan_to_num(X, nan=0.0) - mu) / sd)

    expected = rate(X365) * n
    propensity = (k + 2.0) / (expected + 2.0)
    r30, r90 = rate(design("30")) * propensity, rate(design("90")) * propensity
    return {"complaint_propensity": propensity, "ops_complaint_rate_30d": r30, "ops_complaint_rate_90d": r90,
            "ops_complaint_trend": r30 - r90}


def finish_merchant_features(counts: pd.DataFrame) -> FeatureFrame:
    """The category stage of :func:`build_features` on :func:`merchant_counts` of every merchant (sorted by ID).

    Each rate is shrunk toward its merchant's category (a prior fitted on every merchant of the category, so it
    cannot be computed one merchant partition at a time); merchants not yet known at the as-of date are dropped.
    """
    group = counts["category"].to_numpy(dtype=object)
    shrunk = {name: shrink_rates(counts[f"_k_{name}"].to_numpy(), counts[f"_n_{name}"].to_numpy(), group, kind=kind)
              for name, kind in SHRUNK_RATES.items()}
    f = {c: counts[c].to_numpy() for c in FEATURES if c in counts.columns}
    f["late_rate_30d"], f["late_rate_90d"] = shrunk["late_30"][0], shrunk["late_90"][0]
    for w in ("30", "90", "365"):
        f[f"very_late_rate_{w}d"] = shrunk[f"very_late_{w}"][0]
    f["late_trend"] = shrunk["very_late_30"][0] - shrunk["very_late_prev60"][0]
    for w in ("30", "90", "365"):
        f[f"quality_return_rate_{w}d"] = shrunk[f"quality_{w}"][0]
    f["quality_trend"] = shrunk["quality_30"][0] - shrunk["quality_prev60"][0]
    f["logistics_return_rate_90d"] = shrunk["logistics_90"][0]
    f["return_rate_90d"] = shrunk["returns_90"][0]
    for w in ("30", "90", "180", "365"):
        f[f"complaint_rate_{w}d"] = shrunk[f"complaints_{w}"][0]
    f["complaint_trend"] = shrunk["complaints_30"][0] - shrunk["complaints_prev60"][0]
    for w in ("90", "365"):
        f[f"escalation_rate_{w}d"] = shrunk[f"escalation_{w}"][0]
        f[f"tickets_per_order_{w}d"] = shrunk[f"tickets_{w}"][0]
    f["cat_late_rate_90d"] = shrunk["late_90"][1]
    f["cat_very_late_rate_90d"] = shrunk["very_late_90"][1]
    f["cat_quality_return_rate_90d"] = shrunk["quality_90"][1]
    f["cat_complaint_rate_90d"] = shrunk["complaints_90"][1]
    f |= complaint_link(counts, shrunk)
    frame = pd.DataFrame({k: f[k] for k in FEATURES}, index=counts.index)
    for c in INFO_COLUMNS:
        frame[c] = counts[c].to_numpy()
    return frame[counts["_known"].to_numpy(dtype=bool)]


def _merchant_counts_part(orders: pd.DataFrame, returns: pd.DataFrame, tickets: pd.DataFrame, as_of, start, end,
                          horizon_days: int, new_merchant_days: int) -> pd.DataFrame:
    """:func:`merchant_counts` of the merchants in one partition; the as-of check uses the whole data's days."""
    from dataclasses import replace
    from types import SimpleNamespace

    part = SimpleNamespace(orders=orders, returns=returns, tickets=tickets, source="partition")
    events = replace(prepare_events(part), start=start, end=end)
    return merchant_counts(events, as_of, horizon_days, new_merchant_days)


def dataset_merchant_features(ds: Dataset, as_of=None, engine=None, horizon_days: int = HORIZON_DAYS,
                              new_merchant_days: int = NEW_MERCHANT_DAYS) -> FeatureFrame:
    """:func:`build_features` of a dataset as of one day (default: its last day), per merchant partition on ``engine``.

    Equal to ``build_features(prepare_events(ds), as_of)``; on a Dask engine the coded events are prepared on the
    workers from each merchant partition's rows, and only one row per merchant comes back for the category stage.
    The as-of day used is in ``frame.attrs["as_of"]``. Raises :class:`AsOfError` outside the data's days.
    """
    if engine is None or engine.name == "pandas":
        events = prepare_events(ds)
        day = events.check_as_of(events.end if as_of is None else as_of)
        frame = build_features(events, day, horizon_days, new_merchant_days)
        frame.attrs["as_of"] = day
        return frame
    from types import SimpleNamespace

    tickets = ds.tickets[ds.tickets["merchant_id"].notna()]
    ts = [s.dropna() for s in (ds.orders["ordered_at"], ds.returns["requested_at"], tickets["created_at"])]
    ts = [s for s in ts if len(s)]
    if not ts:
        raise ValueError(f"{ds.source}: no merchant_id in orders, returns or tickets; nothing to rank")
    start = min(s.min() for s in ts).tz_convert("UTC").normalize()
    end = max(s.max() for s in ts).tz_convert("UTC").normalize()
    # The same check (and message) as MerchantEvents.check_as_of, on the whole data's days.
    day = MerchantEvents.check_as_of(SimpleNamespace(start=start, end=end), end if as_of is None else as_of)
    counts = engine.by_key(
        _merchant_counts_part,
        {"orders": (ds.orders, "merchant_id"), "returns": (ds.returns, "merchant_id"),
         "tickets": (tickets, "merchant_id")},
        as_of=day, start=start, end=end, horizon_days=horizon_days, new_merchant_days=new_merchant_days)
    frame = finish_merchant_features(counts.sort_index())
    frame.attrs["as_of"] = day
    return frame


def build_labels(events: MerchantEvents, as_of, horizon_days: int = HORIZON_DAYS) -> pd.DataFrame:
    """Complaints per order in the ``horizon_days`` after ``as_of`` (days as_of+1 .. as_of+horizon), per merchant.

    The label uses the data as finally known (escalations of the window's tickets count even if resolved later).
    Raises :class:`AsOfError` when the window is not fully inside the data (the label has not matured).
    """
    day = events.check_as_of(as_of)
    if day + pd.Timedelta(days=horizon_days) > events.end:
        raise AsOfError(f"the {horizon_days}-day label window after {day.date()} ends after the data's last day "
                        f"{events.end.date()}: the label has not matured; pick an earlier as-of date")
    lo = _cutoff(day)
    hi = lo + horizon_days * DAY
    ev, n_m = events, events.n_merchants
    orders = _count(ev.o_m, _in(ev.o_t, lo, hi), n_m)
    complaint = ev.t_complaint_case | ev.t_escalated
    complaints = _count(ev.t_m, _in(ev.t_created, lo, hi) & complaint, n_m)
    rate = np.where(orders > 0, complaints / np.maximum(orders, 1), np.nan)
    out = pd.DataFrame({"label_orders": orders, "label_complaints": complaints, "label_rate": rate},
                       index=pd.Index(ev.merchant_ids, name="merchant_id"))
    out.index = out.index.astype("string")
    return out


def build_snapshots(events: MerchantEvents, as_of_dates, horizon_days: int = HORIZON_DAYS,
                    with_labels: bool = True) -> SnapshotFrame:
    """Feature frames (and labels) of many as-of dates stacked, with an ``as_of`` column, merchant_id a column."""
    parts = []
    for d in as_of_dates:
        part = build_features(events, d, horizon_days=horizon_days)
        if with_labels:
            part = part.join(build_labels(events, d, horizon_days), how="left")
        part.insert(0, "as_of", pd.Timestamp(d).normalize() if pd.Timestamp(d).tzinfo else
                    pd.Timestamp(d, tz="UTC").normalize())
        parts.append(part.reset_index())
    if not parts:
        raise ValueError("no as-of dates to build snapshots for")
    return pd.concat(parts, ignore_index=True)


def relevance_grades(frame: SnapshotFrame, min_orders: int,
                     cuts: tuple[float, ...] = (0.5, 0.75, 0.9, 0.97)) -> pd.Series:
    """Graded relevance 0..len(cuts) of each merchant's label rate within its snapshot (quantile bins).

    Merchants with fewer than ``min_orders`` orders in the label window get NaN: their rate is mostly noise.
    """
    ok = frame["label_orders"] >= min_orders
    pct = frame["label_rate"].where(ok).groupby(frame["as_of"]).rank(pct=True, method="average")
    grade = pd.Series(np.digitize(pct.fillna(0).to_numpy(), cuts), index=frame.index, dtype=float)
    return grade.where(ok)
