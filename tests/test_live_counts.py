"""The service's live ticket counts (load on the platform, an account's contacts) equal the training functions'."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pandas as pd

from features.live_counts import DAY_US, RecentTickets, counter_from_snapshot, fill_frame, fill_one
from features.tickets import account_history, platform_load, series_us


def _stream(n: int = 3000, days: int = 90, seed: int = 3) -> pd.DataFrame:
    """Tickets at random instants (bursty days, some at the very same microsecond), some guests."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-01-01", tz="UTC")
    day = rng.choice(days, n, p=np.r_[np.full(days - 5, 1.0), np.full(5, 6.0)] / (days - 5 + 30))
    created = start + pd.to_timedelta(day, "D") + pd.to_timedelta(rng.integers(0, 86_400, n), "s")
    created = np.where(rng.random(n) < 0.02, start + pd.Timedelta(days=40), created)  # ties
    acc = np.where(rng.random(n) < 0.1, None, rng.integers(0, 150, n).astype(str))
    t = pd.DataFrame({"ticket_id": [f"T{i}" for i in range(n)], "account_id": pd.Series(acc, dtype="object"),
                      "created_at": pd.to_datetime(created, utc=True)})
    return t.sort_values("created_at", kind="stable").reset_index(drop=True)


def _expected(t: pd.DataFrame) -> pd.DataFrame:
    times = series_us(t["created_at"])
    ds = SimpleNamespace(orders=pd.DataFrame({"account_id": pd.Series([], dtype="object"),
                                              "ordered_at": pd.Series([], dtype="datetime64[us, UTC]")}),
                         returns=pd.DataFrame({"account_id": pd.Series([], dtype="object"),
                                               "requested_at": pd.Series([], dtype="datetime64[us, UTC]"),
                                               "item_returned": pd.Series([], dtype="boolean")}),
                         tickets=t.assign(resolved_at=pd.NaT, escalated=False))
    acc = account_history(ds, t["account_id"], times)
    return platform_load(t, times).assign(prior_tickets_30d=acc["prior_tickets_30d"].to_numpy())


def test_counter_seeded_from_a_snapshot_then_live_equals_the_point_in_time_counts():
    t = _stream()
    expected = _expected(t)
    as_of = pd.Timestamp("2024-02-20", tz="UTC")
    before = t["created_at"] < as_of
    # The snapshot holds the last 31 days before as_of; the service then sees every later ticket, in batches whose
    # rows are not in time order.
    recent = t[before & (t["created_at"] >= as_of - pd.Timedelta(days=31))]
    counter = counter_from_snapshot(recent, as_of)
    later = t[~before]
    cuts = np.linspace(0, len(later), 8).astype(int)
    chunks = [later.iloc[a:b].sample(frac=1.0, random_state=1) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    parts = [fill_frame(chunk, counter) for chunk in chunks]
    got = pd.concat(parts).loc[later.index]
    for c in ("tickets_last_24h", "typical_tickets_24h", "prior_tickets_30d"):
        assert np.array_equal(got[c].to_numpy(float), expected.loc[later.index, c].to_numpy(float), equal_nan=True), c
    assert got.loc[got["account_id"].isna(), "prior_tickets_30d"].isna().all()  # guests have no contacts
    assert got["tickets_last_24h"].max() > 2 * got["tickets_last_24h"].median()  # the bursts show


def test_one_ticket_at_a_time_and_the_ticket_systems_own_counts_win():
    t = _stream(n=400, days=40)
    expected = _expected(t)
    counter = RecentTickets()
    rows = t.astype(object).where(t.notna(), None).to_dict("records")
    got = [fill_one({**r, "created_at": r["created_at"].isoformat()}, counter) for r in rows]
    assert [g["tickets_last_24h"] for g in got] == expected["tickets_last_24h"].tolist()
    assert [g.get("prior_tickets_30d") for g in got] == [None if np.isnan(v) else v
                                                         for v in expected["prior_tickets_30d"]]
    # A retry of a ticket already seen is not counted twice; a ticket system's own count wins.
    again = fill_one({**rows[-1], "created_at": rows[-1]["created_at"].isoformat(), "tickets_last_24h": 7}, counter)
    assert again["tickets_last_24h"] == 7
    nxt = rows[-1]["created_at"] + pd.Timedelta(seconds=1)
    in_day = int(((t["created_at"] >= nxt - pd.Timedelta(days=1)) & (t["created_at"] < nxt)).sum())
    assert counter.counts(None, series_us(pd.Series([nxt]))[0])[0] == in_day


def test_old_tickets_leave_the_window_and_the_counter_is_thread_safe():
    counter = RecentTickets()
    base = 1_700_000_000_000_000
    for i in range(100):
        counter.observe(f"old{i}", "A", base + i)
    n_threads, per = 4, 2000

    def worker(k: int) -> None:
        for i in range(per):
            counter.count_and_observe(f"w{k}-{i}", f"acc{i % 10}", base + 40 * DAY_US + k * per + i)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    last, typical, contacts = counter.counts("acc3", base + 41 * DAY_US)
    assert last == n_threads * per and typical == n_threads * per / 28
    assert contacts == n_threads * per / 10
    assert counter.counts("A", base + 41 * DAY_US)[2] == 0.0  # 40 days ago: outside the 30-day window
    assert len(counter) <= n_threads * per + 100


def test_one_ticket_with_a_far_future_time_does_not_empty_the_window():
    t = _stream(n=4500, days=60)
    as_of = pd.Timestamp("2024-02-10", tz="UTC")
    counter = counter_from_snapshot(t[t["created_at"] < as_of], as_of)
    held = len(counter)
    counter.observe("typo", "A1", series_us(pd.Series([pd.Timestamp("2031-01-01", tz="UTC")]))[0])
    later = t[t["created_at"] >= as_of]
    assert len(later) > 1024  # the window is pruned (every 1,024 tickets observed) while they are counted
    got = fill_frame(later, counter)
    expected = _expected(t).loc[later.index]
    assert len(counter) > held  # nothing of the seed's last 31 days was dropped
    assert np.array_equal(got["tickets_last_24h"].to_numpy(float), expected["tickets_last_24h"].to_numpy(float))


def test_year_count_is_the_snapshots_value_plus_its_live_change_while_the_snapshot_is_fresh():
    """acct_tickets_365d served = the snapshot's value + the counter's change (tickets since the snapshot, less those
    that left the year window since) = the training function's count, for tickets up to the horizon after the
    snapshot; later, or from a snapshot without its year edge, no change is offered (the snapshot's value stands)."""
    from features.live_counts import HORIZON_DAYS, YEAR_CHANGE, YEAR_EDGE_COLUMN

    t = _stream(n=9000, days=430, seed=5)
    times = series_us(t["created_at"])
    as_of = pd.Timestamp("2025-01-20 13:00", tz="UTC")
    year, horizon = pd.Timedelta(days=365), pd.Timedelta(days=HORIZON_DAYS)
    last = (t["created_at"] >= as_of - horizon) & (t["created_at"] < as_of)
    edge = (t["created_at"] >= as_of - year) & (t["created_at"] < as_of - year + horizon)
    recent = t[last | edge].assign(**{YEAR_EDGE_COLUMN: edge[last | edge].to_numpy()})
    ds = SimpleNamespace(
        orders=pd.DataFrame({"account_id": pd.Series([], dtype="object"),
                             "ordered_at": pd.Series([], dtype="datetime64[us, UTC]")}),
        returns=pd.DataFrame({"account_id": pd.Series([], dtype="object"),
                              "requested_at": pd.Series([], dtype="datetime64[us, UTC]"),
                              "item_returned": pd.Series([], dtype="boolean")}),
        tickets=t.assign(resolved_at=pd.NaT, escalated=False))
    pit = account_history(ds, t["account_id"], times)["acct_tickets_365d"].to_numpy()
    snap = account_history(ds, t["account_id"], np.full(len(t), series_us(pd.Series([as_of]))[0]))
    later = t[t["created_at"] >= as_of]
    assert len(later) > 500
    got = fill_frame(later, counter_from_snapshot(recent, as_of))
    served = snap.loc[later.index, "acct_tickets_365d"].to_numpy() + got[YEAR_CHANGE].fillna(0).to_numpy()
    fresh = (later["created_at"] <= as_of + horizon).to_numpy() & later["account_id"].notna().to_numpy()
    assert np.array_equal(served[fresh], pit[later.index][fresh])
    assert got[YEAR_CHANGE].to_numpy()[fresh].min() < 0 < got[YEAR_CHANGE].to_numpy()[fresh].max()  # both ways
    assert got.loc[~fresh, YEAR_CHANGE].isna().all()  # too old a snapshot, or a guest: no change
    old_format = fill_frame(later, counter_from_snapshot(recent[~recent[YEAR_EDGE_COLUMN]].drop(
        columns=YEAR_EDGE_COLUMN), as_of))
    assert old_format[YEAR_CHANGE].isna().all()
