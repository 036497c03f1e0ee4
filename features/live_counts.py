"""Live ticket counts for serving: the platform's load (tickets in the last 24 hours, against its typical day) and
each account's contacts in the last 30 days, counted as tickets arrive.

Training computes the same numbers point in time from the tickets table (:func:`features.tickets.platform_load`,
:func:`features.tickets.account_history`): every ticket created strictly before the ticket scored, in
``[t - window, t)``. A snapshot is older than the tickets the service scores, so these two counts, the most
time-sensitive of the model's inputs, are kept here instead: :class:`RecentTickets` is seeded from the snapshot's
last :data:`HORIZON_DAYS` days of tickets (``ticket_triage_recent.parquet``) and then sees every ticket the service
scores. Counts are exact at microsecond resolution and identical to the training functions' when the service has
seen every ticket since the snapshot (tested); a ticket seen twice (a retry) counts once.

The account's tickets in the year before (``acct_tickets_365d``) are kept live the same way, as a change to the
snapshot's value: the account's tickets the counter saw since the snapshot, less those that left the year window
since (the snapshot's recent tickets include the tickets of the first :data:`HORIZON_DAYS` days of its year window,
:data:`YEAR_EDGE_COLUMN`). Snapshot value + change = the training function's count, exactly, while the snapshot is
at most :data:`HORIZON_DAYS` days older than the ticket (older, or a snapshot without those tickets: no change, the
snapshot's value as it is).

Memory: one float per ticket of the last :data:`HORIZON_DAYS` days (plus its ID and account), about 100 bytes a
ticket: 30 days of 100,000 tickets a day is ~300 MB, so a platform that size should send ``tickets_last_24h`` and
``prior_tickets_30d`` from its ticket system instead (the ticket's own fields win). The year edge adds one integer
per account ticket of 31 days a year before the snapshot. Thread-safe (one lock; each call
costs a few binary searches). No pandas on the hot path.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from features.pit import DAY_US, series_us, to_us

LOAD_WINDOW_DAYS = 1.0  # "tickets in the last 24 hours"
TYPICAL_DAYS = 28  # the platform's typical day: its mean daily tickets over the 28 days before
CONTACT_DAYS = 30  # an account's contacts in the 30 days before (prior_tickets_30d)
HORIZON_DAYS = max(TYPICAL_DAYS, CONTACT_DAYS) + 1  # what the snapshot and the counter keep
YEAR_DAYS = 365  # acct_tickets_365d: the account's tickets in the year before (features.ticket_history.WINDOW_YEAR)
# The ticket field carrying the live change of acct_tickets_365d since the snapshot (added to the snapshot's value).
YEAR_CHANGE = "acct_tickets_365d_since_snapshot"
# Column of the recent-tickets snapshot: True for the tickets of the first HORIZON_DAYS days of the snapshot's year
# window (those that leave acct_tickets_365d while the snapshot is served), False for the last HORIZON_DAYS days.
YEAR_EDGE_COLUMN = "year_edge"


class RecentTickets:
    """Ticket creation times of the last :data:`HORIZON_DAYS` days, platform-wide and per account.

    :meth:`observe` records a ticket (once per ticket ID); :meth:`counts` answers, for a time ``t`` (integer
    microseconds since the epoch, UTC), ``(tickets_last_24h, typical_tickets_24h, account_tickets_30d)``: tickets
    created in ``[t - 1 day, t)``, tickets in ``[t - 28 days, t)`` / 28, and the account's tickets in
    ``[t - 30 days, t)`` (None for a guest). Times older than the horizon behind "now" are dropped, where now is
    the median time of the last 101 tickets observed (the seed's latest time before that): one ticket with a wrong,
    far-future time cannot empty the window.
    """

    def __init__(self, horizon_days: float = HORIZON_DAYS):
        self.horizon_us = int(horizon_days * DAY_US)
        self._lock = threading.Lock()
        self._times: list[int] = []  # every ticket, sorted
        self._by_account: dict[str, list[int]] = {}  # each account's tickets, sorted
        self._seen: dict[str, tuple[int, str | None]] = {}  # ticket_id -> (time, account), for de-duplication
        self._latest = -(1 << 62)
        self._arrivals: deque[int] = deque(maxlen=101)  # the latest arrivals' times: "now" is their median
        self._observed = 0
        self.seeded_until: int | None = None  # the snapshot time the counter was seeded as of
        # Each account's tickets of the first HORIZON_DAYS of the snapshot's year window (None: not given, so no
        # live change of acct_tickets_365d), and the oldest time the counter still holds every ticket from.
        self._year_edge: dict[str, list[int]] | None = None
        self._floor = -(1 << 62)

    @classmethod
    def seeded(cls, ticket_ids: Iterable[Any], account_ids: Iterable[Any], times_us: Iterable[float],
               as_of_us: float | None = None, year_edge: Iterable[bool] | None = None) -> RecentTickets:
        """A counter holding the given tickets (a snapshot's recent tickets); ``as_of_us``: the snapshot time.

        ``year_edge`` (one flag per ticket, with ``as_of_us``): the tickets of the first :data:`HORIZON_DAYS` days of
        the snapshot's year window, kept apart (they only leave ``acct_tickets_365d``); with them the counter gives the
        live change of that count (:meth:`count_and_observe`)."""
        out = cls()
        out.seeded_until = None if as_of_us is None or math.isnan(as_of_us) else int(as_of_us)
        ids, accounts, times = list(ticket_ids), list(account_ids), list(times_us)
        edge = [False] * len(times) if year_edge is None else [bool(e) for e in year_edge]
        if year_edge is not None and out.seeded_until is not None:
            out._year_edge = {}
        for tid, acc, t, is_edge in zip(ids, accounts, times, edge, strict=True):
            if t is None or (isinstance(t, float) and math.isnan(t)):
                continue
            if is_edge:
                a = _account(acc)
                if out._year_edge is not None and a is not None:
                    insort(out._year_edge.setdefault(a, []), int(t))
                continue
            out._add(None if tid is None else str(tid), _account(acc), int(t))
        out._prune()
        return out

    def __len__(self) -> int:
        return len(self._times)

    def _add(self, ticket_id: str | None, account: str | None, t: int) -> bool:
        if ticket_id is not None:
            if ticket_id in self._seen:
                return False
            self._seen[ticket_id] = (t, account)
        insort(self._times, t)
        if account is not None:
            insort(self._by_account.setdefault(account, []), t)
        if t > self._latest:
            self._latest = t
        return True

    def _now(self) -> int:
        if not self._arrivals:
            return self._latest
        return sorted(self._arrivals)[len(self._arrivals) // 2]

    def _prune(self) -> None:
        """Drop what fell out of the horizon behind now (:meth:`_now`)."""
        floor = self._now() - self.horizon_us
        if not self._times or self._times[0] >= floor:
            return
        self._floor = max(self._floor, floor)
        del self._times[:bisect_left(self._times, floor)]
        for acc in [a for a, ts in self._by_account.items() if ts[0] < floor]:
            ts = self._by_account[acc]
            del ts[:bisect_left(ts, floor)]
            if not ts:
                del self._by_account[acc]
        self._seen = {k: v for k, v in self._seen.items() if v[0] >= floor}

    def _counts(self, account: str | None, t: int) -> tuple[float, float, float | None]:
        ts = self._times
        hi = bisect_left(ts, t)
        last = hi - bisect_left(ts, t - int(LOAD_WINDOW_DAYS * DAY_US))
        typical = (hi - bisect_left(ts, t - TYPICAL_DAYS * DAY_US)) / TYPICAL_DAYS
        if account is None:
            return float(last), typical, None
        acc = self._by_account.get(account, ())
        n = bisect_left(acc, t) - bisect_left(acc, t - CONTACT_DAYS * DAY_US) if acc else 0
        return float(last), typical, float(n)

    def _year_change(self, account: str | None, t: int) -> float | None:
        """acct_tickets_365d at ``t`` less the snapshot's value: the account's tickets in [snapshot, t) less its
        tickets in [snapshot - 1 year, t - 1 year); None when the counter cannot know it exactly (no snapshot time or
        year edge, ``t`` before the snapshot or more than the horizon after it, or tickets since pruned)."""
        s = self.seeded_until
        if account is None or self._year_edge is None or s is None or not 0 <= t - s <= self.horizon_us \
                or s < self._floor:
            return None
        acc = self._by_account.get(account, ())
        since = bisect_left(acc, t) - bisect_left(acc, s) if acc else 0
        edge = self._year_edge.get(account, ())
        year = YEAR_DAYS * DAY_US
        left = bisect_left(edge, t - year) - bisect_left(edge, s - year) if edge else 0
        return float(since - left)

    def counts(self, account_id: Any, t_us: float) -> tuple[float, float, float | None]:
        """(tickets_last_24h, typical_tickets_24h, account_tickets_30d) strictly before ``t_us``."""
        with self._lock:
            return self._counts(_account(account_id), int(t_us))

    def observe(self, ticket_id: Any, account_id: Any, t_us: float) -> None:
        """Record one ticket (a second call with the same ticket ID changes nothing)."""
        with self._lock:
            self._observe(ticket_id, account_id, t_us)

    def _observe(self, ticket_id: Any, account_id: Any, t_us: float) -> None:
        if t_us is None or math.isnan(t_us):
            return
        self._add(None if ticket_id in (None, "") else str(ticket_id), _account(account_id), int(t_us))
        self._arrivals.append(int(t_us))
        self._observed += 1
        if self._observed % 1024 == 0:
            self._prune()

    def count_and_observe(self, ticket_id: Any, account_id: Any, t_us: float
                          ) -> tuple[float, float, float | None, float | None]:
        """:meth:`counts` of the ticket (before it is counted) and the live change of its account's
        acct_tickets_365d since the snapshot (None: unknown), then :meth:`observe` it: one lock, the hot path."""
        with self._lock:
            acc, t = _account(account_id), int(t_us)
            out = (*self._counts(acc, t), self._year_change(acc, t))
            self._observe(ticket_id, account_id, t_us)
            return out

    def batch(self, ticket_ids: list[Any], account_ids: list[Any], times_us: list[float]
              ) -> list[tuple[float, float, float | None, float | None]]:
        """:meth:`count_and_observe` of many tickets in the order of their creation times (a batch may come in
        any order: each ticket counts only the tickets created before it); results in input order."""
        order = sorted(range(len(times_us)), key=lambda i: times_us[i])
        out: list[Any] = [None] * len(times_us)
        with self._lock:
            for i in order:
                acc, t = _account(account_ids[i]), int(times_us[i])
                out[i] = (*self._counts(acc, t), self._year_change(acc, t))
                self._observe(ticket_ids[i], account_ids[i], times_us[i])
        return out

    def merge_newer(self, other: RecentTickets, since_us: float) -> None:
        """Add ``other``'s tickets created at or after ``since_us`` (those the service saw after this counter's
        snapshot was taken: a refreshed counter keeps them)."""
        with other._lock:
            seen = [(k, t, a) for k, (t, a) in other._seen.items() if t >= since_us]
        with self._lock:
            for k, t, a in seen:
                self._add(k, a, t)
            self._prune()

    def state(self) -> dict[str, Any]:
        """How much the counter holds (for /v1/health and logs)."""
        with self._lock:
            return {"tickets": len(self._times), "accounts": len(self._by_account),
                    "seeded_until_us": self.seeded_until}


def _account(value: Any) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    value = str(value)
    return value or None


def counter_from_snapshot(recent: pd.DataFrame | None, as_of: Any = None) -> RecentTickets:
    """A counter seeded from a snapshot's recent tickets (ticket_id, account_id, created_at; see
    :func:`features.tickets.feature_snapshots`); an absent or empty frame gives an empty counter."""
    if recent is None or recent.empty:
        return RecentTickets()
    missing = [c for c in ("ticket_id", "account_id", "created_at") if c not in recent.columns]
    if missing:
        raise ValueError(f"recent-tickets snapshot lacks columns {missing}; rewrite it with `aftersales train "
                         "ticket-triage` or `aftersales refresh-features`")
    edge = None
    if YEAR_EDGE_COLUMN in recent.columns:
        flags = recent[YEAR_EDGE_COLUMN].astype("boolean").fillna(False).to_numpy(dtype=bool)
        if as_of is not None:  # the snapshot time and its year edge: the live change of acct_tickets_365d
            edge = flags.tolist()
        else:  # no snapshot time given: the edge tickets are not recent ones
            recent = recent[~flags]
    last = recent["created_at"].max() if as_of is None else as_of
    return RecentTickets.seeded(recent["ticket_id"].astype(object).tolist(),
                                recent["account_id"].astype(object).tolist(),
                                series_us(recent["created_at"]).tolist(), to_us(last), edge)


def fill_one(ticket: dict[str, Any], counter: RecentTickets | None) -> dict[str, Any]:
    """``ticket`` with the live counts the model reads (:data:`features.tickets.LIVE_FIELDS`) filled in from
    ``counter`` where the ticket does not carry them; the ticket is counted. Returns a new dict (or ``ticket`` itself
    when there is no counter)."""
    if counter is None:
        return ticket
    last, typical, contacts, change = counter.count_and_observe(ticket.get("ticket_id"), ticket.get("account_id"),
                                                                to_us(ticket.get("created_at")))
    out = dict(ticket)
    _fill(out, last, typical, contacts, change)
    return out


def _fill(out: dict[str, Any], last: float, typical: float, contacts: float | None, change: float | None) -> None:
    if out.get("tickets_last_24h") is None:
        out["tickets_last_24h"] = last
    if out.get("typical_tickets_24h") is None:
        out["typical_tickets_24h"] = typical
    if contacts is not None and out.get("prior_tickets_30d") is None:
        out["prior_tickets_30d"] = contacts
    if change is not None and out.get("acct_tickets_365d") is None and out.get(YEAR_CHANGE) is None:
        out[YEAR_CHANGE] = change  # the ticket's own acct_tickets_365d, if it carries one, wins


def fill_frame(tickets: pd.DataFrame, counter: RecentTickets | None) -> pd.DataFrame:
    """:func:`fill_one` for a batch (counted in creation-time order, so each ticket counts only earlier ones);
    returns a copy with the :data:`features.tickets.LIVE_FIELDS` columns, the ticket's own values kept."""
    if counter is None or tickets.empty:
        return tickets
    n = len(tickets)

    def col(name: str) -> list[Any]:
        return tickets[name].astype(object).tolist() if name in tickets.columns else [None] * n

    res = counter.batch(col("ticket_id"), col("account_id"), series_us(tickets["created_at"]).tolist())
    out = tickets.copy()
    fresh = {"tickets_last_24h": [r[0] for r in res], "typical_tickets_24h": [r[1] for r in res],
             "prior_tickets_30d": [np.nan if r[2] is None else r[2] for r in res],
             YEAR_CHANGE: [np.nan if r[3] is None else r[3] for r in res]}
    for name, values in fresh.items():
        v = np.asarray(values, dtype=np.float64)
        if name in out.columns:
            own = pd.to_numeric(out[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            v = np.where(np.isnan(own), v, own)
        out[name] = v
    if "acct_tickets_365d" in out.columns:  # the ticket's own count wins: no change added to it
        own = pd.to_numeric(out["acct_tickets_365d"], errors="coerce").notna().to_numpy()
        out[YEAR_CHANGE] = np.where(own, np.nan, out[YEAR_CHANGE].to_numpy(dtype=np.float64))
    return out
