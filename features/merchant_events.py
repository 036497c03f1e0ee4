"""Merchant events: the contract tables reduced once to integer-coded arrays, and the raw windowed counts on them.

:func:`prepare_events` codes a :class:`~features.contract.Dataset` as :class:`MerchantEvents` (merchant codes, UTC
seconds) once for many as-of dates; the counting helpers here window those arrays point in time and are what
:mod:`features.merchant_features` builds its rates from.

Point in time, precisely (cutoff = the day after the as-of date, 00:00 UTC):
- an order counts from ``ordered_at``; whether it was late (not delivered by its promise) is known at the promise, so
  the late-delivery rate only counts orders whose promise passed before the cutoff; "very late" counts orders whose
  promise + ``VERY_LATE_DAYS`` passed;
- a return counts from ``requested_at``; a ticket from ``created_at``;
- a merchant complaint is a ticket with a merchant_id and case_type ``complaint`` (known when created), or an escalated
  one (known only once resolved: escalation flags of tickets resolved after the cutoff are not used).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.contract import Dataset

Arr = np.ndarray

DAY = 86_400  # seconds
NEVER = np.int64(2**62)  # a time after every real one (missing delivery, unresolved ticket)
QUALITY_REASONS = ("defective", "not_as_described")
LOGISTICS_REASONS = ("not_received", "damaged_in_transit")
UNKNOWN_CATEGORY = "unknown"
VERY_LATE_DAYS = 2  # "very late": 2+ days past the promise, when customers start to complain
NEW_MERCHANT_DAYS = 90
HORIZON_DAYS = 60
BASELINE_DAYS = 60  # "last period" of the baselines: as long as the label window


class AsOfError(ValueError):
    """An as-of date outside the data (before its first day or after its last)."""



# --------------------------------------------------------------------------------------------------------------------
# Events: the contract tables as integer-coded arrays, prepared once for many as-of dates


@dataclass(frozen=True)
class MerchantEvents:
    """The facts merchant features are built from, as arrays of merchant codes and UTC seconds."""

    merchant_ids: Arr  # object array of str, sorted; a merchant's code is its position here
    categories: Arr  # category names; codes index this array (the last one is UNKNOWN_CATEGORY)
    first_seen: Arr  # per merchant: first order, return or ticket (seconds)
    # one row per (merchant, order)
    o_m: Arr
    o_t: Arr
    o_promise: Arr  # NEVER when there is no promise (such orders never enter late-delivery rates)
    o_on_time: Arr  # delivered by the promise
    o_on_time3: Arr  # delivered by the promise + VERY_LATE_DAYS
    # one row per order line (category mix)
    l_m: Arr
    l_t: Arr
    l_cat: Arr
    # returns
    r_m: Arr
    r_t: Arr
    r_quality: Arr
    r_logistics: Arr
    # tickets with a merchant
    t_m: Arr
    t_created: Arr
    t_resolved: Arr  # NEVER while open
    t_complaint_case: Arr
    t_escalated: Arr  # the flag as the data holds it (False when unknown)
    start: pd.Timestamp  # first day with data (UTC midnight)
    end: pd.Timestamp  # last day with data

    @property
    def n_merchants(self) -> int:
        return len(self.merchant_ids)

    def check_as_of(self, as_of) -> pd.Timestamp:
        """The as-of date as a UTC day; raises :class:`AsOfError` when it lies outside the data's days."""
        try:
            day = pd.Timestamp(as_of)
        except (ValueError, TypeError) as e:
            raise AsOfError(f"as-of date {as_of!r} is not a date: use YYYY-MM-DD") from e
        day = (day.tz_localize("UTC") if day.tzinfo is None else day.tz_convert("UTC")).normalize()
        if day < self.start or day > self.end:
            raise AsOfError(
                f"as-of date {day.date()} is outside the data ({self.start.date()} to {self.end.date()}): "
                f"pick a day in that range (the as-of date is the last day whose data may be used)"
            )
        return day


def _seconds(s: pd.Series) -> tuple[Arr, Arr]:
    """UTC timestamps as int64 seconds, and the mask of missing values (set to NEVER)."""
    missing = s.isna().to_numpy()
    values = s.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[s]").astype(np.int64)
    values[missing] = NEVER
    return values, missing


def prepare_events(ds: Dataset) -> MerchantEvents:
    """Reduce a dataset's orders, returns and tickets to the coded arrays :func:`build_features` reads."""
    orders, returns, tickets = ds.orders, ds.returns, ds.tickets
    tickets = tickets[tickets["merchant_id"].notna()]
    # One factorisation of every merchant_id (Arrow dictionary encoding: ~1 s for millions of rows, where a
    # lookup through Python objects takes ~10 s); sorted so a merchant's code is its position in merchant_ids.
    parts = [orders["merchant_id"], returns["merchant_id"], tickets["merchant_id"]]
    codes, uniques = pd.factorize(pd.concat(parts, ignore_index=True).astype("string"), sort=True)
    if len(uniques) == 0:
        raise ValueError(f"{ds.source}: no merchant_id in orders, returns or tickets; nothing to rank")
    bounds = np.cumsum([0, *map(len, parts)])
    l_m, r_m, t_m = (codes[a:b].astype(np.int64) for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    merchant_ids = np.asarray(uniques, dtype=object)
    n_m = len(merchant_ids)

    # Order lines -> category codes (null category -> unknown, kept last so it never wins a tie against a real one).
    l_t, _ = _seconds(orders["ordered_at"])
    cat_codes, cat_uniques = pd.factorize(orders["category"].astype("string").fillna(UNKNOWN_CATEGORY))
    names = sorted(set(cat_uniques) - {UNKNOWN_CATEGORY}) + [UNKNOWN_CATEGORY]
    l_cat = pd.Index(names).get_indexer(np.asarray(cat_uniques, dtype=object))[cat_codes] if len(cat_codes) else \
        np.zeros(0, dtype=np.int64)

    # One row per (merchant, order): an order is late when any of its lines missed the promise.
    promise, no_promise = _seconds(orders["promised_delivery_at"])
    delivered, _ = _seconds(orders["delivered_at"])  # NEVER when not (yet) delivered
    on_time = ~no_promise & (delivered <= promise)
    on_time3 = ~no_promise & (delivered <= promise + VERY_LATE_DAYS * DAY)
    okey = pd.factorize(orders["order_id"])[0].astype(np.int64) * n_m + l_m
    per_order = pd.DataFrame({"k": okey, "m": l_m, "t": l_t, "p": np.where(no_promise, -1, promise),
                              "ok": on_time, "ok3": on_time3})
    g = per_order.groupby("k", sort=False)
    agg = g.agg(m=("m", "first"), t=("t", "min"), p=("p", "max"), ok=("ok", "all"), ok3=("ok3", "all"))
    o_promise = np.where(agg["p"].to_numpy() < 0, NEVER, agg["p"].to_numpy())

    r_t, _ = _seconds(returns["requested_at"])
    reason = returns["reason"].astype("string")
    t_created, _ = _seconds(tickets["created_at"])
    t_resolved, _ = _seconds(tickets["resolved_at"])

    first_seen = np.full(n_m, NEVER, dtype=np.int64)
    for m, t in ((l_m, l_t), (r_m, r_t), (t_m, t_created)):
        np.minimum.at(first_seen, m, t)
    all_t = np.concatenate([l_t, r_t, t_created])
    start, end = (pd.Timestamp(int(x), unit="s", tz="UTC").normalize() for x in (all_t.min(), all_t.max()))
    return MerchantEvents(
        merchant_ids=merchant_ids, categories=np.array(names, dtype=object), first_seen=first_seen,
        o_m=agg["m"].to_numpy(np.int64), o_t=agg["t"].to_numpy(np.int64), o_promise=o_promise.astype(np.int64),
        o_on_time=agg["ok"].to_numpy(bool), o_on_time3=agg["ok3"].to_numpy(bool),
        l_m=l_m, l_t=l_t, l_cat=l_cat,
        r_m=r_m, r_t=r_t, r_quality=reason.isin(QUALITY_REASONS).fillna(False).to_numpy(bool),
        r_logistics=reason.isin(LOGISTICS_REASONS).fillna(False).to_numpy(bool),
        t_m=t_m, t_created=t_created, t_resolved=t_resolved,
        t_complaint_case=(tickets["case_type"] == "complaint").fillna(False).to_numpy(bool),
        t_escalated=tickets["escalated"].fillna(False).to_numpy(bool),
        start=start, end=end,
    )


# --------------------------------------------------------------------------------------------------------------------
# Windowed counts


def _count(m: Arr, mask: Arr, n_m: int, weights: Arr | None = None) -> Arr:
    return np.bincount(m[mask], weights=None if weights is None else weights[mask], minlength=n_m).astype(float)


def _in(t: Arr, lo: int, hi: int) -> Arr:
    return (t >= lo) & (t < hi)


def _late_counts(ev: MerchantEvents, lo: int, hi: int, grace_days: int = 0) -> tuple[Arr, Arr]:
    """(late, due) orders per merchant among orders whose promise + grace passed in [lo, hi).

    Lateness is known the moment the promise (+ grace) passes undelivered, so this never looks past ``hi``.
    """
    if grace_days not in (0, VERY_LATE_DAYS):
        raise ValueError(f"grace_days must be 0 or {VERY_LATE_DAYS}")
    due = _in(ev.o_promise + grace_days * DAY, lo, hi)
    on_time = ev.o_on_time3 if grace_days else ev.o_on_time
    return _count(ev.o_m, due & ~on_time, ev.n_merchants), _count(ev.o_m, due, ev.n_merchants)


def _complaint_counts(ev: MerchantEvents, lo: int, hi: int, known_by: int) -> Arr:
    """Complaints per merchant among tickets created in [lo, hi), as known at ``known_by`` (seconds).

    A complaint case is known when created; an escalation only once its ticket is resolved.
    """
    known = ev.t_complaint_case | (ev.t_escalated & (ev.t_resolved < known_by))
    return _count(ev.t_m, known & _in(ev.t_created, lo, hi) & (ev.t_created < known_by), ev.n_merchants)


def _cutoff(day: pd.Timestamp) -> int:
    """First second after the as-of day (UTC): nothing at or after it may be used."""
    return int((day + pd.Timedelta(days=1)).timestamp())


def late_delivery_counts(events: MerchantEvents, as_of, days: int = 90, grace_days: int = 0) -> pd.DataFrame:
    """Raw (unshrunk) late and due orders per merchant over the ``days`` up to ``as_of`` (what the rates shrink)."""
    cut = _cutoff(events.check_as_of(as_of))
    late, due = _late_counts(events, cut - days * DAY, cut, grace_days)
    return pd.DataFrame({"late": late, "due": due}, index=pd.Index(events.merchant_ids, name="merchant_id"))


def complaint_counts(events: MerchantEvents, as_of, days: int = 90) -> pd.Series:
    """Raw complaints per merchant known by the end of ``as_of`` among tickets created in the ``days`` before."""
    cut = _cutoff(events.check_as_of(as_of))
    return pd.Series(_complaint_counts(events, cut - days * DAY, cut, cut),
                     index=pd.Index(events.merchant_ids, name="merchant_id"), name="complaints")
