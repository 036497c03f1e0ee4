"""Market calendars: public holidays (from the ``holidays`` package) and platform shopping events, as features.

Every market on the platform gets the global shopping events (11.11, 12.12, 618, Black Friday, Cyber Monday,
Christmas and a configurable summer sale); public holidays come per market, and the CN market also gets the Spring
Festival as a major event. Each event has a size class: ``major`` (3), ``medium`` (2) or ``minor`` (1).

Dates are tz-naive days (the UTC day), as in every daily series of this project.
"""

from __future__ import annotations

import re
from functools import lru_cache

import holidays
import numpy as np
import pandas as pd

from features.settings import Settings, get_settings

SUPPORTED_MARKETS: tuple[str, ...] = ("CN", "US", "GB", "DE", "BR")
SIZE_CLASSES: dict[str, int] = {"major": 3, "medium": 2, "minor": 1}
EVENT_COLUMNS = ["date", "name", "kind", "size_class", "size"]
# The after-sales "holiday window" the forecasters are judged on: a few days before to three weeks after.
WINDOW_BEFORE_DAYS = 3
WINDOW_AFTER_DAYS = 21
# days_until_* / days_since_* are capped: beyond a quarter the distance carries no signal.
DAY_CAP = 90
# Calendar look-around when computing distances, so the first and last days of a range see their neighbours.
_PAD_DAYS = 400

DateLike = str | pd.Timestamp | np.datetime64
Dates = pd.DatetimeIndex | pd.Series | np.ndarray | list


def _check_market(market: str) -> str:
    m = str(market).upper()
    if m not in SUPPORTED_MARKETS:
        raise ValueError(
            f"unknown market {market!r}: supported markets are {', '.join(SUPPORTED_MARKETS)} "
            "(set --market or AFTERSALES_MARKET to one of them)"
        )
    return m


def _snake(name: str) -> str:
    name = re.sub(r"\(.*?\)", "", name).replace("'", "")  # drop "(observed)"; "New Year's" -> "new_years"
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _public_holidays(market: str, years: range) -> pd.DataFrame:
    """Public holidays, one row per day; bridging days-off take their holiday's name; blocks of 3+ days are medium."""
    cal = holidays.country_holidays(market, years=list(years), language="en_US")
    rows = sorted(cal.items())
    if not rows:
        return pd.DataFrame(columns=EVENT_COLUMNS)
    dates = pd.to_datetime([d for d, _ in rows])
    raw = [n for _, n in rows]
    names = []
    for n in raw:
        low = n.lower()
        if "spring festival" in low or "chinese new year" in low:
            names.append("spring_festival")
        elif low.startswith("day off"):
            names.append("")  # a substituted working day: belongs to the holiday it bridges
        else:
            names.append(_snake(n))
    df = pd.DataFrame({"date": dates, "name": names})
    # Days at most 3 apart form one block (China's Golden Week spans a weekend); days-off take the block's name.
    block = (df["date"].diff().dt.days.fillna(99) > 3).cumsum()
    real = df["name"].where(df["name"] != "")
    nearest = real.groupby(block).ffill().fillna(real.groupby(block).bfill())  # the holiday just before it
    df["name"] = df["name"].where(df["name"] != "", nearest.fillna("day_off"))
    block_len = df.groupby(block)["date"].transform("size")
    df["size_class"] = np.where(df["name"] == "spring_festival", "major",
                                np.where(block_len >= 3, "medium", "minor"))
    df["kind"] = "holiday"
    return df


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> pd.Timestamp:
    first = pd.Timestamp(year=year, month=month, day=1)
    return first + pd.Timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))


def _shopping_events(years: range, summer_sale: str, summer_sale_days: int) -> pd.DataFrame:
    """The platform's global shopping events for the given years."""
    try:
        s_month, s_day = (int(x) for x in summer_sale.split("-"))
        pd.Timestamp(year=2024, month=s_month, day=s_day)
    except (ValueError, TypeError) as e:
        raise ValueError(f"summer_sale must be 'MM-DD' (e.g. '07-15'), got {summer_sale!r} "
                         "(set AFTERSALES_SUMMER_SALE)") from e
    rows = []
    for y in years:
        black_friday = _nth_weekday(y, 11, 3, 4) + pd.Timedelta(days=1)  # the day after US Thanksgiving
        rows += [
            (pd.Timestamp(year=y, month=11, day=11), "singles_day", "major"),
            (black_friday, "black_friday", "major"),
            (pd.Timestamp(year=y, month=12, day=25), "christmas", "major"),
            (pd.Timestamp(year=y, month=6, day=18), "mid_year_618", "major"),
            (black_friday + pd.Timedelta(days=3), "cyber_monday", "medium"),
            (pd.Timestamp(year=y, month=12, day=12), "double_12", "medium"),
        ]
        start = pd.Timestamp(year=y, month=s_month, day=s_day)
        rows += [(start + pd.Timedelta(days=i), "summer_sale", "minor") for i in range(max(summer_sale_days, 0))]
    df = pd.DataFrame(rows, columns=["date", "name", "size_class"])
    df["kind"] = "shopping"
    return df


@lru_cache(maxsize=64)
def _events_for_years(market: str, y0: int, y1: int, summer_sale: str, summer_sale_days: int) -> pd.DataFrame:
    years = range(y0, y1 + 1)
    pub = _public_holidays(market, years)
    shop = _shopping_events(years, summer_sale, summer_sale_days)
    df = pd.concat([pub, shop], ignore_index=True)
    df["date"] = pd.to_datetime(df["date"]).dt.normalize().astype("datetime64[ns]")
    df["size"] = df["size_class"].map(SIZE_CLASSES).astype("int64")
    df = df.sort_values(["date", "size", "name"], ascending=[True, False, True], kind="stable")
    return df[EVENT_COLUMNS].reset_index(drop=True)


def _naive_day(x: DateLike) -> pd.Timestamp:
    ts = pd.Timestamp(x)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.normalize()


def market_events(market: str, start: DateLike, end: DateLike, settings: Settings | None = None) -> pd.DataFrame:
    """Holidays and shopping events of ``market`` between ``start`` and ``end`` (inclusive), one row per day.

    Columns: date (tz-naive day), name (snake_case), kind ('holiday'|'shopping'), size_class, size (3/2/1).
    A day may carry several events (e.g. Christmas is both a public holiday and the retail season's peak).
    """
    m = _check_market(market)
    s = settings or get_settings()
    start, end = _naive_day(start), _naive_day(end)
    ev = _events_for_years(m, start.year, end.year, s.summer_sale, int(s.summer_sale_days))
    out = ev[(ev["date"] >= start) & (ev["date"] <= end)]
    return out.reset_index(drop=True).copy()


def _as_days(dates: Dates) -> pd.DatetimeIndex:
    idx = pd.DatetimeIndex(pd.to_datetime(pd.Series(dates) if isinstance(dates, list) else dates))
    if idx.tz is not None:
        idx = idx.tz_convert("UTC").tz_localize(None)
    return idx.normalize()


def _distances(day: np.ndarray, event_days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Days until the next / since the last event day (0 on the day), capped; and the index of the next one."""
    if len(event_days) == 0:
        cap = np.full(len(day), DAY_CAP, dtype=np.int64)
        return cap, cap.copy(), np.full(len(day), -1)
    nxt = np.searchsorted(event_days, day, side="left")
    prv = np.searchsorted(event_days, day, side="right") - 1
    has_next, has_prev = nxt < len(event_days), prv >= 0
    until = np.where(has_next, event_days[np.minimum(nxt, len(event_days) - 1)] - day, DAY_CAP)
    since = np.where(has_prev, day - event_days[np.maximum(prv, 0)], DAY_CAP)
    return np.minimum(until, DAY_CAP), np.minimum(since, DAY_CAP), np.where(has_next, nxt, -1)


def calendar_features(dates: Dates, market: str, settings: Settings | None = None) -> pd.DataFrame:
    """Calendar features for each given day (vectorised), indexed by the days.

    Columns: dow, month, day_of_year, is_event, is_holiday, is_shopping_event, event_size (0 if none),
    days_until_event, days_since_event, days_until_major, days_since_major (all capped at 90), next_major_name,
    in_event_window (3 days before to 21 days after a major event).
    """
    idx = _as_days(dates)
    if len(idx) == 0:
        raise ValueError("calendar_features needs at least one date")
    lo, hi = idx.min() - pd.Timedelta(days=_PAD_DAYS), idx.max() + pd.Timedelta(days=_PAD_DAYS)
    ev = market_events(market, lo, hi, settings)
    day = (idx.values.astype("datetime64[D]") - lo.to_datetime64().astype("datetime64[D]")).astype(np.int64)
    ev_day = (ev["date"].values.astype("datetime64[D]") - lo.to_datetime64().astype("datetime64[D]")).astype(np.int64)
    n_span = int((hi - lo).days) + 1
    size_by_day = np.zeros(n_span, dtype=np.int64)
    np.maximum.at(size_by_day, ev_day, ev["size"].to_numpy())
    holiday_by_day = np.zeros(n_span, dtype=bool)
    holiday_by_day[ev_day[(ev["kind"] == "holiday").to_numpy()]] = True
    shop_by_day = np.zeros(n_span, dtype=bool)
    shop_by_day[ev_day[(ev["kind"] == "shopping").to_numpy()]] = True

    all_days = np.unique(ev_day)
    until_e, since_e, _ = _distances(day, all_days)
    major = ev[ev["size"] == SIZE_CLASSES["major"]].drop_duplicates("date")
    major_days = (major["date"].values.astype("datetime64[D]")
                  - lo.to_datetime64().astype("datetime64[D]")).astype(np.int64)
    until_m, since_m, nxt_m = _distances(day, major_days)
    major_names = np.append(major["name"].to_numpy(dtype=object), "none")
    out = pd.DataFrame(
        {
            "dow": idx.day_of_week.astype(np.int64),
            "month": idx.month.astype(np.int64),
            "day_of_year": idx.day_of_year.astype(np.int64),
            "is_event": size_by_day[day] > 0,
            "is_holiday": holiday_by_day[day],
            "is_shopping_event": shop_by_day[day],
            "event_size": size_by_day[day],
            "days_until_event": until_e,
            "days_since_event": since_e,
            "days_until_major": until_m,
            "days_since_major": since_m,
            "next_major_name": pd.Categorical(major_names[nxt_m]),
            "in_event_window": (until_m <= WINDOW_BEFORE_DAYS) | (since_m <= WINDOW_AFTER_DAYS),
        },
        index=pd.DatetimeIndex(idx, name="date"),
    )
    return out


def holiday_windows(market: str, start: DateLike, end: DateLike, settings: Settings | None = None) -> pd.DataFrame:
    """Each major event starting in [start, end] with its after-sales window (3 days before to 21 days after).

    Multi-day majors (the Spring Festival) are one event from their first to their last day.
    Columns: event, event_date, window_start, window_end.
    """
    ev = market_events(market, start, end, settings)
    major = ev[ev["size"] == SIZE_CLASSES["major"]].drop_duplicates(["date", "name"]).sort_values("date")
    if major.empty:
        return pd.DataFrame(columns=["event", "event_date", "window_start", "window_end"])
    gap = major.groupby("name")["date"].diff().dt.days.fillna(99)
    major = major.assign(block=(gap > 1).astype(int).groupby(major["name"]).cumsum())
    blocks = major.groupby(["name", "block"], sort=False)["date"].agg(["min", "max"]).reset_index()
    out = pd.DataFrame({
        "event": blocks["name"].astype(str),
        "event_date": blocks["min"],
        "window_start": blocks["min"] - pd.Timedelta(days=WINDOW_BEFORE_DAYS),
        "window_end": blocks["max"] + pd.Timedelta(days=WINDOW_AFTER_DAYS),
    })
    return out.sort_values(["event_date", "event"]).reset_index(drop=True)


def complete_windows(market: str, first: DateLike, last: DateLike, settings: Settings | None = None
                     ) -> pd.DataFrame:
    """The rows of :func:`holiday_windows` whose whole after-sales window lies from ``first`` to ``last`` (both
    included): the event instances a history over that span holds completely."""
    hw = holiday_windows(market, first, last, settings)
    return hw[(hw["window_start"] >= pd.Timestamp(first)) & (hw["window_end"] <= pd.Timestamp(last))]


def in_windows(days, windows: pd.DataFrame) -> np.ndarray:
    """Whether each of ``days`` (naive dates; NaT is outside) falls inside one of ``windows`` (rows of
    :func:`holiday_windows`: ``window_start`` to ``window_end``, both days included)."""
    d = pd.DatetimeIndex(days)
    inside = np.zeros(len(d), dtype=bool)
    for w in windows.itertuples():
        inside |= np.asarray((d >= w.window_start) & (d <= w.window_end))
    return inside
