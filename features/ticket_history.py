"""Point-in-time history of the ticket model: the account's history, the merchant's signals, the order's context
and the platform's load, each as of given times (strictly before them), for training rows and, with ``times = the
snapshot time``, for the serving snapshots (:mod:`features.ticket_snapshots`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.contract import Dataset
from features.live_counts import YEAR_DAYS
from features.pit import (
    DAY_US,
    _keys,
    latest_before,
    series_us,
    us_series,
    window_sum,
)

Arr = np.ndarray

# Windows of the history aggregates, in days (the year is the live counter's, which keeps acct_tickets_365d live).
WINDOW_SHORT, WINDOW_LONG, WINDOW_YEAR = 30, 90, YEAR_DAYS


def _escalations_known(tickets: pd.DataFrame) -> tuple[Arr, Arr]:
    """(escalated 0/1, the time each ticket's outcome became known): an outcome is known when the case closed; a
    case marked escalated without a close time is taken as known a week after opening (as for complaints)."""
    created, resolved = series_us(tickets["created_at"]), series_us(tickets["resolved_at"])
    escalated = tickets["escalated"].astype("boolean").fillna(False).to_numpy(dtype=np.float64)
    known = np.where(np.isnan(resolved), np.where(escalated > 0, created + 7 * DAY_US, np.nan), resolved)
    return escalated, known


def account_history(ds: Dataset, account_ids: pd.Series, times: Arr) -> pd.DataFrame:
    """The account columns of :data:`ACCOUNT_FEATURES` as of each time (strictly before it), point in time.

    * ``prior_tickets_30d``: the account's tickets created in the 30 days before;
    * ``returns_30d``: its return requests in the 30 days before;
    * ``return_rate_90d``: return requests / order lines in the 90 days before (lines 0 -> divided by 1);
    * ``refund_without_return_90d``: its return requests with item_returned false in the 90 days before;
    * ``acct_tickets_365d``, ``acct_returns_365d``, ``acct_return_rate_365d``, ``acct_refund_without_return_365d``:
      the same over a year (a customer's habits outlast a month, and a year-long count ages slowly in a snapshot);
    * ``acct_escalations_365d``: its cases that escalated, counted from when their outcome became known (closed).

    Guests (null account_id) get NaN. ``times`` are float microseconds (see :func:`series_us`).
    """
    o, r, t = ds.orders, ds.returns, ds.tickets
    q, ko, kr, kt = _keys(account_ids, o["account_id"], r["account_id"], t["account_id"])
    o_t, r_t, t_t = series_us(o["ordered_at"]), series_us(r["requested_at"]), series_us(t["created_at"])
    ones_r = np.ones(len(r))
    rwr = (r["item_returned"] == False).fillna(False).to_numpy(dtype=np.float64)  # noqa: E712 — nullable bool
    lines90, lines365 = window_sum(ko, o_t, np.ones(len(o)), q, times, WINDOW_LONG), \
        window_sum(ko, o_t, np.ones(len(o)), q, times, WINDOW_YEAR)
    ret90, rwr90 = window_sum(kr, r_t, np.column_stack([ones_r, rwr]), q, times, WINDOW_LONG).T
    ret365, rwr365 = window_sum(kr, r_t, np.column_stack([ones_r, rwr]), q, times, WINDOW_YEAR).T
    esc, known = _escalations_known(t)
    return pd.DataFrame({
        "prior_tickets_30d": window_sum(kt, t_t, np.ones(len(t)), q, times, WINDOW_SHORT),
        "returns_30d": window_sum(kr, r_t, ones_r, q, times, WINDOW_SHORT),
        "return_rate_90d": ret90 / np.maximum(lines90, 1.0),
        "refund_without_return_90d": rwr90,
        "acct_tickets_365d": window_sum(kt, t_t, np.ones(len(t)), q, times, WINDOW_YEAR),
        "acct_escalations_365d": window_sum(kt, known, esc, q, times, WINDOW_YEAR),
        "acct_returns_365d": ret365,
        "acct_return_rate_365d": ret365 / np.maximum(lines365, 1.0),
        "acct_refund_without_return_365d": rwr365,
    }, index=account_ids.index)


def platform_load(tickets: pd.DataFrame, times: Arr) -> pd.DataFrame:
    """The platform's load at each time, point in time (what :class:`features.live_counts.RecentTickets` counts
    live): ``tickets_last_24h``, its tickets created in the 24 hours before (strictly before the time), and
    ``typical_tickets_24h``, its tickets in the 28 days before / 28. Every ticket counts (guests, open cases)."""
    from features.live_counts import LOAD_WINDOW_DAYS, TYPICAL_DAYS

    t_t = series_us(tickets["created_at"])
    key, q = np.zeros(len(t_t), dtype=np.int64), np.zeros(len(times), dtype=np.int64)
    return pd.DataFrame({
        "tickets_last_24h": window_sum(key, t_t, np.ones(len(t_t)), q, times, LOAD_WINDOW_DAYS),
        "typical_tickets_24h": window_sum(key, t_t, np.ones(len(t_t)), q, times, TYPICAL_DAYS) / TYPICAL_DAYS,
    })


def order_table(orders: pd.DataFrame) -> pd.DataFrame:
    """One row per order: first ordered_at, latest promise, delivered_at (null unless every line was delivered).

    Orders in order of first appearance, indexed by ``order_id``. The IDs are factorised once (Arrow dictionary
    encoding) and the times reduced over the integer codes with unbuffered NumPy reductions (``np.fmin.at``), ten
    times faster than a group-by on the ID text.
    """
    codes, uniques = pd.factorize(orders["order_id"])
    codes = np.asarray(codes, dtype=np.int64)
    if (codes < 0).any():  # lines without an order ID belong to no order (as a group-by drops null keys)
        orders, codes = orders[codes >= 0], codes[codes >= 0]
    n = len(uniques)
    # factorize numbers IDs by first appearance: an order's first row is where its code first exceeds all before it
    new = np.ones(len(codes), dtype=bool)
    if len(codes):
        new[1:] = codes[1:] > np.maximum.accumulate(codes)[:-1]
    first_row = np.flatnonzero(new)

    def reduce(ufunc, values: Arr) -> Arr:  # NaN-skipping min/max per order; NaN when every line is missing
        out = np.full(n, np.nan)
        ufunc.at(out, codes, values)
        return out

    d = series_us(orders["delivered_at"])
    pending = np.bincount(codes[~np.isnan(d)], minlength=n) < np.bincount(codes, minlength=n)
    delivered = reduce(np.fmax, d)
    index = pd.Index(uniques, name="order_id") if n else pd.Index(orders["order_id"].iloc[:0], name="order_id")
    return pd.DataFrame({
        "merchant_id": pd.Series(orders["merchant_id"].iloc[first_row].array, index=index),
        "ordered_at": us_series(reduce(np.fmin, series_us(orders["ordered_at"])), index),
        "promised_delivery_at": us_series(reduce(np.fmax, series_us(orders["promised_delivery_at"])), index),
        "delivered_at": us_series(np.where(pending, np.nan, delivered), index),
    }, index=index)


def _complaints(tickets: pd.DataFrame) -> tuple[pd.Series, Arr]:
    """Merchant complaints (contract: a complaint case with a merchant, or an escalated case with a merchant)
    and the time each became known: a complaint case when opened, an escalation when the case closed."""
    t = tickets[tickets["merchant_id"].notna()]
    is_complaint = (t["case_type"] == "complaint").to_numpy()
    escalated = t["escalated"].fillna(False).to_numpy(dtype=bool)
    created, resolved = series_us(t["created_at"]), series_us(t["resolved_at"])
    # An escalation without a close time is taken as known a week after opening (contract allows it; rare).
    known = np.where(is_complaint, created, np.where(np.isnan(resolved), created + 7 * DAY_US, resolved))
    keep = is_complaint | escalated
    return t["merchant_id"][keep], known[keep]


def merchant_signals(ds: Dataset, merchant_ids: pd.Series, times: Arr, orders: pd.DataFrame | None = None
                     ) -> pd.DataFrame:
    """The merchant columns of :data:`MERCHANT_FEATURES` as of each time (strictly before it), point in time.

    * ``mer_late_delivery_rate``: of the merchant's orders whose promised delivery fell in the 90 days before, the share
      not delivered by the promise (a late order is known to be late from the promised time on);
    * ``mer_complaint_rate_90d``: merchant complaints that became known in the 90 days before / orders placed in them;
    * ``mer_complaint_rate_30d``: the same over 30 days (complaints lag a merchant's trouble: the recent rate leads);
    * ``mer_escalation_rate_90d`` / ``_365d``: of the merchant's cases closed in the 90 / 365 days before, the share
      that escalated (how readily its customers escalate: a merchant's customers and products change slowly);
    * ``mer_tickets_per_order_90d``: its cases opened in the 90 days before / orders placed in them.

    NaN when the merchant had no orders in the window (new or unknown merchants). ``orders`` is
    :func:`order_table` of ``ds.orders`` when the caller already has it.
    """
    ot = order_table(ds.orders) if orders is None else orders
    c_ids, c_time = _complaints(ds.tickets)
    tm = ds.tickets[ds.tickets["merchant_id"].notna()]
    q, ko, kc, kt = _keys(merchant_ids, ot["merchant_id"], c_ids, tm["merchant_id"])
    promised = series_us(ot["promised_delivery_at"])
    delivered = series_us(ot["delivered_at"])
    late = (np.isnan(delivered) | (delivered > promised)).astype(np.float64)
    due, n_late = window_sum(ko, promised, np.column_stack([np.ones(len(ot)), late]), q, times, WINDOW_LONG).T
    o_t = series_us(ot["ordered_at"])
    placed = window_sum(ko, o_t, np.ones(len(ot)), q, times, WINDOW_LONG)
    placed30 = window_sum(ko, o_t, np.ones(len(ot)), q, times, WINDOW_SHORT)
    n_compl = window_sum(kc, c_time, np.ones(len(c_time)), q, times, WINDOW_LONG)
    n_compl30 = window_sum(kc, c_time, np.ones(len(c_time)), q, times, WINDOW_SHORT)
    esc, known = _escalations_known(tm)
    closed, n_esc = window_sum(kt, known, np.column_stack([np.ones(len(tm)), esc]), q, times, WINDOW_LONG).T
    closed365, n_esc365 = window_sum(kt, known, np.column_stack([np.ones(len(tm)), esc]), q, times, WINDOW_YEAR).T
    n_tickets = window_sum(kt, series_us(tm["created_at"]), np.ones(len(tm)), q, times, WINDOW_LONG)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame({
            "mer_late_delivery_rate": np.where(due > 0, n_late / due, np.nan),
            "mer_complaint_rate_90d": np.where(placed > 0, n_compl / placed, np.nan),
            "mer_complaint_rate_30d": np.where(placed30 > 0, n_compl30 / placed30, np.nan),
            "mer_escalation_rate_90d": np.where(closed > 0, n_esc / closed, np.nan),
            "mer_escalation_rate_365d": np.where(closed365 > 0, n_esc365 / closed365, np.nan),
            "mer_tickets_per_order_90d": np.where(placed > 0, n_tickets / placed, np.nan),
        }, index=merchant_ids.index)


def order_context(ds: Dataset, order_ids: pd.Series, times: Arr, orders: pd.DataFrame | None = None
                  ) -> pd.DataFrame:
    """:data:`ORDER_CONTEXT` of each (order, time): the order's times, and its latest return requested by then.

    A delivery after ``time`` is left in (the feature code ignores deliveries after the ticket's creation); the
    return is the latest one requested at or before ``time`` (later returns are invisible).
    """
    ot = order_table(ds.orders) if orders is None else orders
    q, k_ot = _keys(order_ids, ot.index.to_series())  # one factorisation: cheaper than a hash index of the orders
    row_of = np.full(int(max(q.max(initial=-1), k_ot.max(initial=-1))) + 2, -1, dtype=np.int64)
    row_of[k_ot] = np.arange(len(k_ot))  # order IDs are unique in the order table; a null ID (-1) lands in the spare slot
    row_of[-1] = -1
    pos = row_of[q]
    out = pd.DataFrame(index=order_ids.index)
    for col in ("ordered_at", "promised_delivery_at", "delivered_at"):
        vals = series_us(ot[col])
        out[col] = us_series(np.where(pos >= 0, vals[np.maximum(pos, 0)] if len(vals) else np.nan, np.nan),
                             order_ids.index)
    r = ds.returns[ds.returns["order_id"].notna()]
    q, kr = _keys(order_ids, r["order_id"])
    r_t = series_us(r["requested_at"])
    src = latest_before(kr, r_t, q, times)
    hit, s = src >= 0, np.maximum(src, 0)
    reasons = r["reason"].astype("object").to_numpy()
    out["return_reason"] = pd.Series(np.where(hit, reasons[s] if len(r) else None, None), index=order_ids.index,
                                     dtype="object")
    out["return_requested_at"] = us_series(np.where(hit, r_t[s] if len(r) else np.nan, np.nan), order_ids.index)
    return out


def _order_context_part(queries: pd.DataFrame, order_rows: pd.DataFrame, returns: pd.DataFrame) -> pd.DataFrame:
    """:func:`order_context` of the queries (order_id, _t) of one order partition (``order_rows``: its order table)."""
    from types import SimpleNamespace

    return order_context(SimpleNamespace(returns=returns), queries["order_id"],
                         queries["_t"].to_numpy(dtype=np.float64), order_rows.set_index("order_id"))


def _account_history_part(queries: pd.DataFrame, orders: pd.DataFrame, returns: pd.DataFrame,
                          tickets: pd.DataFrame) -> pd.DataFrame:
    """:func:`account_history` of the queries (account_id, _t) of one account partition."""
    from types import SimpleNamespace

    part = SimpleNamespace(orders=orders, returns=returns, tickets=tickets)
    return account_history(part, queries["account_id"], queries["_t"].to_numpy(dtype=np.float64))


ORDER_TABLE_INPUT = ["order_id", "merchant_id", "ordered_at", "promised_delivery_at", "delivered_at"]


def _order_table_part(orders: pd.DataFrame) -> pd.DataFrame:
    return order_table(orders).rename_axis("order_id").reset_index()


def _merchant_signals_part(queries: pd.DataFrame, order_rows: pd.DataFrame, tickets: pd.DataFrame) -> pd.DataFrame:
    """:func:`merchant_signals` of the queries (merchant_id, _t) of one merchant partition."""
    from types import SimpleNamespace

    ot = order_rows.set_index("order_id")
    return merchant_signals(SimpleNamespace(tickets=tickets), queries["merchant_id"],
                            queries["_t"].to_numpy(dtype=np.float64), ot)


def point_in_time_context(ds: Dataset, t: pd.DataFrame, times: Arr, engine=None, say=lambda _m: None
                          ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(order context, account + merchant history) of the tickets ``t`` at ``times``, per entity partition.

    Each part is keyed by one entity (order, account, merchant): on a Dask engine the tickets and the events are
    shuffled on that key and :func:`order_context`, :func:`account_history` and :func:`merchant_signals` run per
    partition. The one cross-entity input, the order table (an order's merchant and times, keyed by order), is built
    per order partition first; the order context reads it by order and the merchant signals after a shuffle by
    merchant.
    """
    q = t[["order_id", "account_id", "merchant_id"]].assign(_t=times)
    if engine is None or engine.name == "pandas":
        ot = order_table(ds.orders)
        say(f"features: order context of {len(t):,} tickets")
        ctx = order_context(ds, t["order_id"], times, ot)
        say("features: account history (point in time)")
        acc = account_history(ds, t["account_id"], times)
        say("features: merchant signals (point in time)")
        mer = merchant_signals(ds, t["merchant_id"], times, ot)
        return ctx, pd.concat([acc, mer], axis=1)
    say(f"features: order context of {len(t):,} tickets ({engine.describe()})")
    # Each part gets only the columns it reads: less to send to the workers and to shuffle.
    ot = engine.by_key(_order_table_part, {"orders": (ds.orders[ORDER_TABLE_INPUT], "order_id")})
    if ot is None:
        ot = _order_table_part(ds.orders[ORDER_TABLE_INPUT].iloc[:0])
    ctx = engine.by_key(_order_context_part, {
        "queries": (q, "order_id"), "order_rows": (ot, "order_id"),
        "returns": (ds.returns[["order_id", "requested_at", "reason"]], "order_id")}, primary="queries")
    say("features: account history (point in time)")
    acc = engine.by_key(_account_history_part, {
        "queries": (q, "account_id"), "orders": (ds.orders[["account_id", "ordered_at"]], "account_id"),
        "returns": (ds.returns[["account_id", "requested_at", "item_returned"]], "account_id"),
        "tickets": (ds.tickets[["account_id", "created_at", "resolved_at", "escalated"]], "account_id")},
        primary="queries")
    say("features: merchant signals (point in time)")
    mer = engine.by_key(_merchant_signals_part, {
        "queries": (q, "merchant_id"), "order_rows": (ot, "merchant_id"),
        "tickets": (ds.tickets[["merchant_id", "case_type", "escalated", "created_at", "resolved_at"]], "merchant_id")},
        primary="queries")
    ctx, acc, mer = (frame.reindex(t.index) for frame in (ctx, acc, mer))
    return ctx, pd.concat([acc, mer], axis=1)
