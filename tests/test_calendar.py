"""Market calendar: holidays and shopping events, and the features built from them."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from features.calendar import SUPPORTED_MARKETS, calendar_features, holiday_windows, market_events
from features.settings import Settings


def _days(df: pd.DataFrame, name: str) -> list[str]:
    return [str(d.date()) for d in df.loc[df["name"] == name, "date"]]


@pytest.mark.parametrize("market", SUPPORTED_MARKETS)
def test_global_shopping_events_in_every_market(market):
    ev = market_events(market, "2023-01-01", "2024-12-31")
    assert _days(ev, "black_friday") == ["2023-11-24", "2024-11-29"]
    assert _days(ev, "cyber_monday") == ["2023-11-27", "2024-12-02"]
    assert _days(ev, "singles_day") == ["2023-11-11", "2024-11-11"]
    assert _days(ev, "double_12") == ["2023-12-12", "2024-12-12"]
    assert _days(ev, "mid_year_618") == ["2023-06-18", "2024-06-18"]
    assert _days(ev, "christmas") == ["2023-12-25", "2024-12-25"]
    assert list(ev.columns) == ["date", "name", "kind", "size_class", "size"]
    assert ev["date"].dt.tz is None and (ev["date"] == ev["date"].dt.normalize()).all()
    sizes = ev.drop_duplicates("name").set_index("name")["size_class"]
    assert sizes["black_friday"] == "major" and sizes["singles_day"] == "major" and sizes["christmas"] == "major"
    assert sizes["cyber_monday"] == "medium" and sizes["double_12"] == "medium"
    assert set(ev["size"]) <= {1, 2, 3}
    assert (ev["size"] == ev["size_class"].map({"major": 3, "medium": 2, "minor": 1})).all()


def test_spring_festival_only_in_cn_and_major():
    cn = market_events("CN", "2024-01-01", "2024-12-31")
    sf = cn[cn["name"] == "spring_festival"]
    assert "2024-02-10" in _days(cn, "spring_festival")
    assert len(sf) >= 3 and (sf["size_class"] == "major").all() and (sf["kind"] == "holiday").all()
    assert "spring_festival" not in set(market_events("US", "2024-01-01", "2024-12-31")["name"])


def test_multi_day_national_holiday_is_medium_one_row_per_day():
    cn = market_events("CN", "2024-09-25", "2024-10-10")
    nd = cn[cn["name"] == "national_day"]
    assert len(nd) >= 3 and nd["date"].is_unique
    assert (nd["size_class"] == "medium").all()


def test_public_holidays_per_market():
    us = market_events("US", "2024-01-01", "2024-12-31")
    assert "2024-07-04" in _days(us, "independence_day")
    de = market_events("DE", "2024-01-01", "2024-12-31")
    assert "2024-10-03" in _days(de, "german_unity_day")
    assert (us.loc[us["name"] == "independence_day", "size_class"] == "minor").all()


def test_summer_sale_is_configurable():
    s = Settings(summer_sale="08-01", summer_sale_days=2)
    ev = market_events("GB", "2024-01-01", "2024-12-31", s)
    assert _days(ev, "summer_sale") == ["2024-08-01", "2024-08-02"]
    with pytest.raises(ValueError, match="MM-DD"):
        market_events("GB", "2024-01-01", "2024-12-31", Settings(summer_sale="July"))


def test_unknown_market_names_supported_ones():
    with pytest.raises(ValueError, match="CN, US, GB, DE, BR"):
        market_events("XX", "2024-01-01", "2024-12-31")
    with pytest.raises(ValueError, match="unknown market"):
        calendar_features(pd.date_range("2024-01-01", periods=3), "Narnia")


def test_features_on_known_dates():
    f = calendar_features(pd.date_range("2024-11-01", "2024-12-31"), "CN")
    nov20 = f.loc["2024-11-20"]
    assert nov20["days_until_major"] == 9 and nov20["days_since_major"] == 9  # Black Friday 29th, 11.11 before
    assert nov20["next_major_name"] == "black_friday"
    assert bool(nov20["in_event_window"]) and not bool(nov20["is_event"]) and nov20["event_size"] == 0
    nov11 = f.loc["2024-11-11"]
    assert nov11["is_event"] and nov11["is_shopping_event"] and nov11["event_size"] == 3
    assert nov11["days_until_event"] == 0 and nov11["days_since_event"] == 0
    assert f.loc["2024-11-10", "days_until_event"] == 1 and f.loc["2024-11-12", "days_since_event"] == 1
    assert f.loc["2024-12-02", "event_size"] == 2  # Cyber Monday
    assert f.loc["2024-12-20", "next_major_name"] == "christmas"
    assert list(f.index) == list(pd.date_range("2024-11-01", "2024-12-31"))


def test_window_and_caps():
    f = calendar_features(pd.date_range("2024-06-01", "2024-10-31"), "US")
    assert f.loc["2024-06-15", "in_event_window"] and not f.loc["2024-06-14", "in_event_window"]  # 618 - 3 days
    assert f.loc["2024-07-09", "in_event_window"] and not f.loc["2024-07-10", "in_event_window"]  # 618 + 21
    assert f.loc["2024-08-15", "days_since_major"] == 58
    assert f["days_until_major"].max() == 90 and f["days_since_major"].max() == 90
    assert f.loc["2024-07-04", "is_holiday"] and not f.loc["2024-07-04", "is_shopping_event"]


def test_features_accept_tz_aware_and_are_fast():
    days = pd.date_range("2017-01-01", periods=3000, tz="UTC")
    calendar_features(days[:10], "BR")  # warm the cache of holiday years
    t0 = time.perf_counter()
    f = calendar_features(days, "BR")
    assert time.perf_counter() - t0 < 0.5
    assert f.index.tz is None and len(f) == 3000
    assert f["is_event"].sum() > 0 and f["in_event_window"].mean() < 0.6


def test_holiday_windows():
    w = holiday_windows("CN", "2024-01-01", "2024-12-31")
    assert {"singles_day", "black_friday", "christmas", "mid_year_618", "spring_festival"} <= set(w["event"])
    bf = w[w["event"] == "black_friday"].iloc[0]
    assert bf["event_date"] == pd.Timestamp("2024-11-29")
    assert bf["window_start"] == pd.Timestamp("2024-11-26") and bf["window_end"] == pd.Timestamp("2024-12-20")
    sf = w[w["event"] == "spring_festival"]
    assert len(sf) == 1 and sf.iloc[0]["window_end"] > sf.iloc[0]["event_date"] + pd.Timedelta(days=21)
