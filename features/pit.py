"""Point-in-time helpers shared by the feature modules: times as integer microseconds since the epoch (UTC), and
windowed sums / latest events per key strictly before each query time, exact at microsecond resolution.

Used by the ticket features (:mod:`features.ticket_history`, :mod:`features.ticket_features`), the live counts
(:mod:`features.live_counts`) and the snapshots; any feature module that needs "what was known before time t" should
take it from here rather than write its own window.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

Arr = np.ndarray
_NAN = float("nan")

DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)  # built once: a pd.Timedelta per call cost ~15 us on the scoring path


# --------------------------------------------------------------------------------------------------------------------
# Time helpers (integer microseconds since the epoch, UTC)


def to_us(value: Any) -> float:
    """One timestamp (ISO string, datetime, pd.Timestamp, epoch seconds) as float microseconds; NaN when missing.

    Naive times are UTC, as in the input contract. Microseconds below 2**53 are exact in a float64.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _NAN
    if isinstance(value, str):
        if not value:
            return _NAN
        value = datetime.fromisoformat(value)
    elif isinstance(value, int | float):
        return float(int(round(value * 1_000_000)))
    if value is pd.NaT:
        return _NAN
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if not isinstance(value, datetime):
        raise TypeError(f"expected a timestamp, got {type(value).__name__} {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return float((value - _EPOCH) // _ONE_US)


def series_us(s: pd.Series) -> Arr:
    """A timestamp column as float microseconds since the epoch (NaN where missing); naive values are UTC."""
    if s.isna().all():
        return np.full(len(s), np.nan)
    if not isinstance(s.dtype, pd.DatetimeTZDtype):
        if pd.api.types.is_datetime64_dtype(s.dtype):
            s = s.dt.tz_localize("UTC")
        else:  # ISO strings, datetimes, Timestamps (the JSON / object columns a caller sends)
            s = pd.to_datetime(s, utc=True, format="ISO8601")
    raw = s.dt.tz_convert("UTC").to_numpy(dtype="datetime64[us]")
    ints = raw.view(np.int64)
    return np.where(np.isnat(raw), np.nan, ints.astype(np.float64))


# --------------------------------------------------------------------------------------------------------------------
# Point-in-time history (training, and snapshots with times = snapshot time)


def _keys(*series: pd.Series) -> list[Arr]:
    """Integer codes of IDs shared across several columns (-1 for missing)."""
    allv = pd.concat([s.astype("string").reset_index(drop=True) for s in series], ignore_index=True)
    codes, _ = pd.factorize(allv, use_na_sentinel=True)
    out, start = [], 0
    for s in series:
        out.append(codes[start:start + len(s)].astype(np.int64))
        start += len(s)
    return out


def _dense_ranks(*arrays: Arr) -> list[Arr]:
    """The dense rank (0, 1, ...) of every value among all ``arrays`` together (equal values share a rank), by one
    sort. Ranking by binary search into the sorted unique values costs the same on paper, but its look-ups jump
    across memory once the values outgrow the CPU caches (see :func:`window_sum`)."""
    values = np.concatenate(arrays)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    new = np.empty(len(ordered), dtype=bool)
    new[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])  # NaN never equals NaN: each missing time ranks last
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[order] = np.cumsum(new) - 1
    return np.split(ranks, np.cumsum([len(a) for a in arrays])[:-1])


def _sorted_positions(comp: Arr, queries: Arr, side: str) -> Arr:
    """``np.searchsorted(comp, queries, side)`` with the queries visited in sorted order, so the binary searches walk
    ``comp`` forward instead of jumping across it."""
    order = np.argsort(queries, kind="stable")
    out = np.empty(len(queries), dtype=np.int64)
    out[order] = np.searchsorted(comp, queries[order], side=side)
    return out


def window_sum(ev_key: Arr, ev_time: Arr, ev_weight: Arr, q_key: Arr, q_time: Arr, window_days: float) -> Arr:
    """For each query (key, time): the sum of event weights with the same key and time in [time - window, time).

    ``ev_weight`` may be a matrix (one column per sum wanted over the same events): the result then has a column
    per weight column, for the cost of one sort.

    Strictly before the query time, so an event at the query's own instant (the ticket itself) never counts.
    Exact at microsecond resolution: times are replaced by their rank among all the times involved. Linear in
    practice: ranks come from one sort and the queries are searched in sorted order (measured on 5M events and
    625k queries: 2.3 s, against 9.3 s with binary-search ranking and queries in their own order; 0.35 s against
    0.58 s on 1M events).
    """
    ok = (ev_key >= 0) & ~np.isnan(ev_time)
    ev_key, ev_time, ev_weight = ev_key[ok], ev_time[ok], ev_weight[ok]
    ev_r, q_r, lo_r = _dense_ranks(ev_time, q_time, q_time - window_days * DAY_US)
    m = np.int64(len(ev_r) + len(q_r) + len(lo_r) + 1)
    comp = ev_key * m + ev_r
    order = np.argsort(comp, kind="stable")
    comp = comp[order]
    w = ev_weight[order]
    cum = np.concatenate([np.zeros((1, *w.shape[1:])), np.cumsum(w, axis=0, dtype=np.float64)])
    qk = np.maximum(q_key, 0)
    hi = _sorted_positions(comp, qk * m + q_r, "left")
    lo = _sorted_positions(comp, qk * m + lo_r, "left")
    known = (q_key >= 0).reshape(-1, *([1] * (w.ndim - 1)))
    return np.where(known, cum[hi] - cum[lo], np.nan)


def us_series(values: Arr, index: pd.Index | None = None) -> pd.Series:
    """Float microseconds since the epoch (NaN = missing) back to a ``datetime64[us, UTC]`` column, exactly."""
    ints = np.where(np.isnan(values), np.iinfo(np.int64).min, values).astype(np.int64)  # int64 min is NaT
    return pd.Series(ints.view("datetime64[us]"), index=index).dt.tz_localize("UTC")


def latest_before(ev_key: Arr, ev_time: Arr, q_key: Arr, q_time: Arr) -> Arr:
    """For each query (key, time): the index of the latest event with that key at or before the time, else -1."""
    if len(ev_key) == 0:
        return np.full(len(q_key), -1, dtype=np.int64)
    ev_r, q_r = _dense_ranks(ev_time, q_time)
    m = np.int64(len(ev_r) + len(q_r) + 1)
    comp = ev_key * m + ev_r
    order = np.argsort(comp, kind="stable")
    comp = comp[order]
    qk = np.maximum(q_key, 0)
    j = _sorted_positions(comp, qk * m + q_r, "right") - 1
    jj = np.maximum(j, 0)
    hit = (q_key >= 0) & (j >= 0) & (comp[jj] // m == qk)
    return np.where(hit, order[jj], -1)
