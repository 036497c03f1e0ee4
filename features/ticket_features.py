"""Ticket escalation features: the feature vector (:data:`FEATURES`), assembled the same way for one ticket (plain
Python, the serving hot path) and for many (numpy), the training rows (:func:`build_training_features`, point in
time) and the rows as the service sees them from an older snapshot (:func:`as_served`).

See :mod:`features.tickets` for the whole design (training vs serving, snapshots, skew).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.contract import CASE_TYPES, CHANNELS, RETURN_REASONS, Dataset
from features.live_counts import HORIZON_DAYS, YEAR_CHANGE
from features.pit import DAY_US, HOUR_US, series_us, to_us
from features.ticket_history import platform_load, point_in_time_context
from features.ticket_text import text_features, text_matrix

Arr = np.ndarray
Row = Mapping[str, Any]  # one ticket / account / merchant / order as a plain mapping (a JSON object, a snapshot row)
CASE_CODE = {c: i for i, c in enumerate(CASE_TYPES)}
CHANNEL_CODE = {c: i for i, c in enumerate(CHANNELS)}
REASON_CODE = {r: i for i, r in enumerate(RETURN_REASONS)}

CALENDAR_FEATURES = ("is_holiday", "is_shopping_event", "event_size", "days_until_major", "days_since_major",
                     "in_event_window")
# Columns taken from the account and merchant snapshots at serving time (computed point in time for training).
ACCOUNT_FEATURES = ("prior_tickets_30d", "returns_30d", "return_rate_90d", "refund_without_return_90d",
                    "acct_tickets_365d", "acct_escalations_365d", "acct_returns_365d", "acct_return_rate_365d",
                    "acct_refund_without_return_365d")
MERCHANT_FEATURES = ("mer_late_delivery_rate", "mer_complaint_rate_90d", "mer_complaint_rate_30d",
                     "mer_escalation_rate_90d",
                     "mer_escalation_rate_365d", "mer_tickets_per_order_90d")
TICKET_FEATURES = (
    "case_type", "channel", "amount", "has_order", "hour", "dow", *CALENDAR_FEATURES,
    "order_age_days", "lateness_days", "delivered_by_creation", "return_reason", "days_since_return",
    "text_len", "n_exclaim", "text_score",
)
# Load on the platform when the ticket is opened: its tickets in the 24 hours before, and that count against its
# typical day (mean daily tickets over the 28 days before), so a peak reads the same on a small and a large platform.
# Counted live by the service (:class:`features.live_counts.RecentTickets`); a ticket system may send its own
# ``tickets_last_24h`` (the ticket's field wins).
LOAD_FEATURES = ("tickets_last_24h", "load_ratio_24h")
FEATURES: tuple[str, ...] = (*TICKET_FEATURES, *ACCOUNT_FEATURES, *MERCHANT_FEATURES, *LOAD_FEATURES)
# Ticket fields the live counter (or the ticket system) fills in: the load and the account's contacts in 30 days.
LIVE_FIELDS = ("tickets_last_24h", "typical_tickets_24h", "prior_tickets_30d")
CATEGORICAL = ("case_type", "channel", "return_reason")
# Order context a ticket may carry (or that comes from the order snapshot): timestamps and a return reason name.
ORDER_CONTEXT = ("ordered_at", "promised_delivery_at", "delivered_at", "return_reason", "return_requested_at")
# Where each non-ticket column comes from at serving time: the training function's snapshot first (same code,
# no skew), else the other model's snapshot column of the same name (same meaning, its own definition).
SNAPSHOT_COLUMNS: dict[str, str] = {
    **{c: f"ticket_triage_accounts.parquet:{c} (else accounts.parquet:{c})" for c in ACCOUNT_FEATURES},
    **{c: f"ticket_triage_merchants.parquet:{c}" for c in MERCHANT_FEATURES},
    **{c: f"ticket_triage_orders.parquet:{c} (the ticket's own field wins)" for c in ORDER_CONTEXT},
}
_IDX = {f: i for i, f in enumerate(FEATURES)}
_NAN = float("nan")


# --------------------------------------------------------------------------------------------------------------------
# Calendar: a day -> features table, built once, so serving never calls pandas per request


@dataclass
class CalendarTable:
    """Calendar features (:data:`CALENDAR_FEATURES`) per day for a market, precomputed for a range of years.

    Days outside the range are computed on first use and cached (a one-off cost of milliseconds).
    """

    market: str
    summer_sale: str = "07-15"
    summer_sale_days: int = 3
    first_year: int = 2010
    last_year: int = 2040

    def __post_init__(self) -> None:
        self._first_day = int(pd.Timestamp(f"{self.first_year}-01-01").value // (DAY_US * 1000))
        self._values = self._compute(pd.Timestamp(f"{self.first_year}-01-01"),
                                     pd.Timestamp(f"{self.last_year}-12-31"))
        self._extra: dict[int, tuple[float, ...]] = {}

    def _compute(self, start: pd.Timestamp, end: pd.Timestamp) -> Arr:
        from features.calendar import calendar_features
        from features.settings import Settings

        settings = Settings(market=self.market, summer_sale=self.summer_sale, summer_sale_days=self.summer_sale_days)
        cal = calendar_features(pd.date_range(start, end, freq="D"), self.market, settings)
        return cal[list(CALENDAR_FEATURES)].to_numpy(dtype=np.float64)

    def _outside(self, day: int) -> tuple[float, ...]:
        if day not in self._extra:
            ts = pd.Timestamp(day * DAY_US * 1000)
            self._extra[day] = tuple(float(v) for v in self._compute(ts, ts)[0])
        return self._extra[day]

    def day(self, day: int) -> tuple[float, ...] | list[float]:
        """Calendar features of one day (days since the epoch)."""
        i = day - self._first_day
        if 0 <= i < len(self._values):
            return self._values[i].tolist()
        return self._outside(day)

    def days(self, days: Arr) -> Arr:
        """Calendar features of many days (int array of days since the epoch), shape (n, 6)."""
        i = days.astype(np.int64) - self._first_day
        inside = (i >= 0) & (i < len(self._values))
        out = np.empty((len(days), len(CALENDAR_FEATURES)), dtype=np.float64)
        out[inside] = self._values[i[inside]]
        for k in np.flatnonzero(~inside):
            out[k] = self._outside(int(days[k]))
        return out


# --------------------------------------------------------------------------------------------------------------------
# Assembling the feature vector: one row (plain Python) and many rows (numpy), same arithmetic


def _present(value: Any) -> bool:
    """A snapshot cell that holds a number (not None, NA or NaN)."""
    return not math.isnan(_num(value))


def _code(table: Mapping[str, int], value: Any) -> float:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _NAN
    return float(table.get(str(value), table.get("other", -1)))


def _num(value: Any) -> float:
    """A number from a JSON value or snapshot cell; None/NA/NaN/unparseable -> NaN."""
    if value is None or value is pd.NA:
        return _NAN
    try:
        return float(value)
    except (TypeError, ValueError):
        return _NAN


def _order_part(created: float, ordered: float, promised: float, delivered: float, rr_code: float,
                rr_time: float) -> list[float]:
    """Order age, delivery lateness as known at creation, return reason and its age (one ticket)."""
    if math.isnan(ordered):
        age = lateness = by_creation = _NAN
    else:
        age = (created - ordered) / DAY_US
        known = not math.isnan(delivered) and delivered <= created  # a delivery after creation is not known yet
        by_creation = 1.0 if known else 0.0
        lateness = _NAN if math.isnan(promised) else ((delivered if known else created) - promised) / DAY_US
    if math.isnan(rr_time) or rr_time > created:  # only returns requested before the ticket
        rr_code = since = _NAN
    else:
        since = (created - rr_time) / DAY_US
    return [age, lateness, by_creation, rr_code, since]


def _order_part_batch(created: Arr, ordered: Arr, promised: Arr, delivered: Arr, rr_code: Arr, rr_time: Arr) -> Arr:
    """Vectorised :func:`_order_part`."""
    has = ~np.isnan(ordered)
    known = ~np.isnan(delivered) & (delivered <= created)
    age = np.where(has, (created - ordered) / DAY_US, np.nan)
    by_creation = np.where(has, known.astype(np.float64), np.nan)
    end = np.where(known, delivered, created)
    lateness = np.where(has & ~np.isnan(promised), (end - promised) / DAY_US, np.nan)
    ok = ~np.isnan(rr_time) & (rr_time <= created)
    since = np.where(ok, (created - rr_time) / DAY_US, np.nan)
    return np.column_stack([age, lateness, by_creation, np.where(ok, rr_code, np.nan), since])


def assemble_one(ticket: Row, order: Row | None, account: Row | None, merchant: Row | None,
                 calendar: CalendarTable) -> list[float]:
    """The feature vector (:data:`FEATURES` order) of one ticket, in plain Python.

    ``order`` holds :data:`ORDER_CONTEXT` values (a ticket's own fields of those names take precedence);
    ``account`` / ``merchant`` hold the history columns by name; a missing mapping or column gives NaN.
    """
    created = to_us(ticket.get("created_at"))
    if math.isnan(created):
        raise ValueError("ticket.created_at is required (ISO 8601 timestamp)")
    c = int(created)
    ctx = {k: ticket[k] if ticket.get(k) is not None else (order or {}).get(k) for k in ORDER_CONTEXT}
    has_order = 0.0 if ticket.get("order_id") in (None, "") else 1.0
    day = c // DAY_US
    vec = [_code(CASE_CODE, ticket.get("case_type")), _code(CHANNEL_CODE, ticket.get("channel")),
           _num(ticket.get("amount")), has_order, float((c // HOUR_US) % 24), float((day + 3) % 7)]
    vec += calendar.day(day)
    vec += _order_part(created, to_us(ctx["ordered_at"]), to_us(ctx["promised_delivery_at"]),
                       to_us(ctx["delivered_at"]), _code(REASON_CODE, ctx["return_reason"]),
                       to_us(ctx["return_requested_at"]))
    vec += text_features(ticket.get("text"))
    acc = account or {}
    # A ticket may carry fresher counts than the snapshot (the ticket system knows its own contacts).
    vec += [_num(ticket[f] if ticket.get(f) is not None else acc.get(f)) for f in ACCOUNT_FEATURES]
    change = _num(ticket.get(YEAR_CHANGE))
    if not math.isnan(change) and ticket.get("acct_tickets_365d") is None:  # counted live since the snapshot
        vec[_IDX["acct_tickets_365d"]] += change
    mer = merchant or {}
    vec += [_num(mer.get(f)) for f in MERCHANT_FEATURES]
    vec += _load_part(_num(ticket.get("tickets_last_24h")), _num(ticket.get("typical_tickets_24h")))
    return vec


def _load_part(last_24h: float, typical: float) -> list[float]:
    """tickets_last_24h and its ratio to the platform's typical day (NaN when the typical day is not known)."""
    return [last_24h, last_24h / max(typical, 1.0) if not math.isnan(typical) else _NAN]


def _codes(s: pd.Series, table: Mapping[str, int]) -> Arr:
    """The code of each text value (unknown text: the code of ``other``, else -1; not text: NaN), per distinct value."""
    codes, uniques = pd.factorize(s)
    other = table.get("other", -1)
    lut = np.array([table.get(str(v), other) if isinstance(v, str) else np.nan for v in uniques] + [np.nan],
                   dtype=np.float64)
    return lut[np.asarray(codes)]  # code -1 (missing) picks the NaN at the end


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame.columns else pd.Series(np.nan, index=frame.index, dtype="float64")


def _numbers(frame: pd.DataFrame, name: str) -> Arr:
    return pd.to_numeric(_column(frame, name), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def assemble_batch(tickets: pd.DataFrame, context: pd.DataFrame, history: pd.DataFrame,
                   calendar: CalendarTable) -> Arr:
    """The feature matrix (n, len(FEATURES)) of many tickets; rows aligned across the three frames.

    ``context`` has :data:`ORDER_CONTEXT` columns (times as timestamps, reason as text); ``history`` has the
    :data:`ACCOUNT_FEATURES` and :data:`MERCHANT_FEATURES` columns (NaN where unknown).
    """
    n = len(tickets)
    created = series_us(tickets["created_at"])
    if np.isnan(created).any():
        raise ValueError("tickets.created_at is required (ISO 8601 timestamp) for every ticket")
    c = created.astype(np.int64)
    day = c // DAY_US
    if "order_id" in tickets:
        oid = tickets["order_id"].astype("object")
        has_order = (oid.notna() & (oid != "")).to_numpy(dtype=bool)
    else:
        has_order = np.zeros(n, bool)
    times = {k: series_us(_column(context, k)) if k in context else np.full(n, np.nan)
             for k in ("ordered_at", "promised_delivery_at", "delivered_at", "return_requested_at")}
    rr = _codes(_column(context, "return_reason"), REASON_CODE)
    parts = [
        np.column_stack([_codes(tickets["case_type"], CASE_CODE), _codes(tickets["channel"], CHANNEL_CODE),
                         _numbers(tickets, "amount"), has_order.astype(np.float64),
                         ((c // HOUR_US) % 24).astype(np.float64), ((day + 3) % 7).astype(np.float64)]),
        calendar.days(day),
        _order_part_batch(created, times["ordered_at"], times["promised_delivery_at"], times["delivered_at"], rr,
                          times["return_requested_at"]),
        text_matrix(_column(tickets, "text")),
        np.column_stack([_numbers(history, f) for f in (*ACCOUNT_FEATURES, *MERCHANT_FEATURES)]),
    ]
    if YEAR_CHANGE in tickets.columns:  # acct_tickets_365d counted live since the snapshot (score_one: the same)
        change = _numbers(tickets, YEAR_CHANGE)
        own = _numbers(tickets, "acct_tickets_365d")
        add = ~np.isnan(change) & np.isnan(own)
        j = ACCOUNT_FEATURES.index("acct_tickets_365d")
        parts[-1][add, j] += change[add]
    last, typical = _numbers(tickets, "tickets_last_24h"), _numbers(tickets, "typical_tickets_24h")
    with np.errstate(invalid="ignore"):
        parts.append(np.column_stack([last, np.where(np.isnan(typical), np.nan, last / np.maximum(typical, 1.0))]))
    return np.hstack(parts)


@dataclass
class TicketFeatures:
    """Training features of labelled and unlabelled tickets, in time order (``X`` and ``meta`` share the index)."""

    X: pd.DataFrame  # FEATURES columns, and the first message (``text``) the model's text scorer learns from
    meta: pd.DataFrame  # ticket_id, created_at, resolved_at, case_type, channel, IDs, amount, escalated


def build_training_features(ds: Dataset, calendar: CalendarTable, progress: Any = None, engine=None
                            ) -> TicketFeatures:
    """Point-in-time features of every ticket in ``ds`` (nothing known after a ticket's creation is used).

    ``progress`` is an optional callable taking a message (e.g. ``click.echo``); ``engine`` a
    ``features.engine`` engine that runs the per-entity parts (default: this process).
    """
    say = progress or (lambda _msg: None)
    t = ds.tickets.sort_values(["created_at", "ticket_id"], kind="stable").reset_index(drop=True)
    if t.empty:
        raise ValueError(f"{ds.source}: no tickets (tickets.parquet/.csv absent or every row rejected); "
                         "the escalation model needs the tickets table")
    times = series_us(t["created_at"])
    ctx, history = point_in_time_context(ds, t, times, engine, say)
    say("features: ticket, calendar, text and load")
    t = t.assign(**platform_load(ds.tickets, times).set_axis(t.index))
    X = assemble_batch(t, ctx, history, calendar)
    meta = t[["ticket_id", "created_at", "resolved_at", "case_type", "channel", "account_id", "merchant_id",
              "order_id", "amount", "escalated"]].copy()
    frame = pd.DataFrame(X, columns=list(FEATURES))
    frame["text"] = t["text"].astype("object").to_numpy() if "text" in t else None  # for the model's text scorer
    return TicketFeatures(frame, meta)


def as_served(ds: Dataset, feats: TicketFeatures, rows: Arr, snapshot_lag_days: Arr, calendar: CalendarTable,
              engine=None) -> pd.DataFrame:
    """The features of tickets ``rows`` as the service computes them from snapshots taken ``snapshot_lag_days``
    before each ticket's creation (the rows of ``feats.X``, same columns).

    What a snapshot of that age cannot hold is missing, exactly as in :func:`feature_snapshots`: account and merchant
    history stop at the snapshot time; orders placed after it have no context (age, lateness, return unknown);
    deliveries after it are unknown (the parcel counts as still on its way); returns requested after it are unseen.
    The ticket's own fields (case type, channel, amount, text, time) are the ticket's, and so are the counts the
    service keeps live (:data:`LIVE_FIELDS`: the load, the account's contacts in 30 days; and the account's tickets
    in 365 days while the snapshot is at most ``live_counts.HORIZON_DAYS`` old; see :mod:`features.live_counts`). Training on a share of rows seen this way teaches the model what the service sees
    between two snapshot refreshes.
    """
    rows = np.asarray(rows, dtype=np.int64)
    t = feats.meta.iloc[rows].reset_index(drop=True)
    if "text" in feats.X.columns:
        t = t.assign(text=feats.X["text"].iloc[rows].to_numpy())
    created = series_us(t["created_at"])
    snap = created - np.round(np.asarray(snapshot_lag_days, dtype=np.float64) * DAY_US)
    ctx, history = point_in_time_context(ds, t, snap, engine)
    ordered, delivered = series_us(ctx["ordered_at"]), series_us(ctx["delivered_at"])
    # Placed at or after the snapshot, older than the order snapshot's window, or not found: not in the snapshot.
    unknown_order = ~((ordered < snap) & (ordered >= snap - ORDER_SNAPSHOT_DAYS * DAY_US))
    for c in ("ordered_at", "promised_delivery_at", "delivered_at", "return_requested_at"):
        ctx.loc[unknown_order, c] = pd.NaT
    ctx.loc[unknown_order, "return_reason"] = None
    ctx.loc[~unknown_order & (delivered >= snap), "delivered_at"] = pd.NaT
    history["prior_tickets_30d"] = feats.X["prior_tickets_30d"].iloc[rows].to_numpy()  # counted live
    # acct_tickets_365d: the snapshot's value and its live change, exact while the snapshot is at most the live
    # counter's horizon old (features.live_counts); older, the snapshot's value.
    live_year = (created - snap <= int(HORIZON_DAYS * DAY_US)) & t["account_id"].notna().to_numpy()
    history["acct_tickets_365d"] = np.where(live_year, feats.X["acct_tickets_365d"].iloc[rows].to_numpy(),
                                            history["acct_tickets_365d"].to_numpy())
    t = t.assign(**platform_load(ds.tickets, created))  # the live load counter's value at creation
    X = assemble_batch(t, ctx, history, calendar)
    out = pd.DataFrame(X, columns=list(FEATURES))
    for c in feats.X.columns:
        if c not in out.columns:
            out[c] = feats.X[c].iloc[rows].to_numpy()
    return out[list(feats.X.columns)].set_axis(feats.X.index[rows])
ORDER_SNAPSHOT_DAYS = 180  # tickets about older orders are rare; older orders score with unknown order context


# The history of an account the snapshots do not know: no tickets, no returns in the windows (a new account).
NEW_ACCOUNT: dict[str, float] = {c: 0.0 for c in ACCOUNT_FEATURES}
