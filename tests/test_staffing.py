"""Staffing: Erlang C against a direct formula and the textbook example, the deferred backlog model, shrinkage,
the config loader and forecast validation."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from features.staffing import (
    PLAN_COLUMNS,
    StaffingConfigError,
    erlang_c_agents,
    erlang_c_service_level,
    erlang_c_wait_probability,
    live_agents,
    load_staffing_config,
    staffing_plan,
)


def direct_erlang_c(agents: int, traffic: float) -> float:
    """Erlang C written out as in the textbook, in exact arithmetic (independent of the module's recursion)."""
    a, n = Fraction(traffic), agents
    top = a**n / math.factorial(n) * Fraction(n) / (n - a)
    bottom = sum(a**k / math.factorial(k) for k in range(n)) + top
    return float(top / bottom)


def direct_service_level(agents: int, calls_per_hour: float, aht: float, target: float) -> float:
    traffic = calls_per_hour * aht / 3600
    return 1 - direct_erlang_c(agents, traffic) * math.exp(-(agents - traffic) * target / aht)


def forecast(values_p50, start="2024-11-01", series="total", ratio=1.3) -> pd.DataFrame:
    p50 = np.asarray(values_p50, dtype=float)
    return pd.DataFrame({
        "date": pd.date_range(start, periods=len(p50)).strftime("%Y-%m-%d"),
        "series": series, "p10": p50 * 0.8, "p50": p50, "p90": p50 * ratio,
    })


def only(channel: str, **over) -> dict:
    """Overrides that route the whole total to one channel (with its parameters changed)."""
    mix = {c: 0.0 for c in ("chat", "phone", "email", "app", "other")} | {channel: 1.0}
    return {"channel_mix": mix, "channels": {channel: over}} if over else {"channel_mix": mix}


def agents(plan: pd.DataFrame, channel: str, q: str = "p50") -> np.ndarray:
    return plan.loc[plan["channel"] == channel, f"agents_{q}"].to_numpy()


# --------------------------------------------------------------------------------------------------------------------
# Erlang C


@pytest.mark.parametrize("n, a", [(1, 0.5), (3, 2.0), (14, 10.0), (13, 10.0), (30, 25.5), (60, 52.3), (120, 100.0)])
def test_wait_probability_matches_direct_formula(n, a):
    assert erlang_c_wait_probability(n, a) == pytest.approx(direct_erlang_c(n, a), rel=1e-9)


def test_textbook_example():
    # 100 calls per 30 minutes, 3-minute handle time (10 Erlangs), 80% answered within 20 seconds.
    assert erlang_c_wait_probability(14, 10.0) == pytest.approx(0.1741, abs=1e-4)
    assert erlang_c_service_level(14, 200, 180, 20) == pytest.approx(0.8884, abs=1e-4)
    assert erlang_c_service_level(13, 200, 180, 20) == pytest.approx(0.7956, abs=1e-4)
    assert erlang_c_agents(200, 180, 20, 0.80, 1.0) == 14


@pytest.mark.parametrize("calls, aht, target, sl", [
    (200, 180, 20, 0.80), (37.5, 420, 60, 0.80), (5, 300, 30, 0.90), (900, 240, 15, 0.95), (60, 600, 0, 0.5),
])
def test_service_level_met_and_not_by_one_fewer(calls, aht, target, sl):
    n = erlang_c_agents(calls, aht, target, sl, max_occupancy=1.0)
    traffic = calls * aht / 3600
    assert direct_service_level(n, calls, aht, target) >= sl
    assert n - 1 <= traffic or direct_service_level(n - 1, calls, aht, target) < sl


def test_occupancy_cap_respected():
    # A 30-minute chat target is easy to meet: the occupancy cap is what binds.
    calls, aht = 300, 600  # 50 Erlangs
    uncapped = erlang_c_agents(calls, aht, 1800, 0.8, 1.0)
    capped = erlang_c_agents(calls, aht, 1800, 0.8, 0.85)
    assert 50 / capped <= 0.85 < 50 / (capped - 1)
    assert capped == math.ceil(50 / 0.85) and uncapped < capped


def test_agents_monotonic_in_volume():
    counts = [erlang_c_agents(c, 300, 30, 0.8, 0.85) for c in np.linspace(0, 2000, 81)]
    assert counts[0] == 0 and all(b >= a for a, b in zip(counts, counts[1:], strict=False))
    assert counts[-1] > counts[1]


@pytest.mark.parametrize("kwargs, name", [
    ({"service_level": 1.0}, "service_level"), ({"aht_seconds": 0}, "aht_seconds"),
    ({"calls_per_hour": -1}, "calls_per_hour"), ({"max_occupancy": 1.2}, "max_occupancy"),
    ({"calls_per_hour": float("nan")}, "calls_per_hour"),
])
def test_erlang_input_errors_name_the_argument(kwargs, name):
    args = {"calls_per_hour": 100, "aht_seconds": 300, "target_answer_seconds": 20, "service_level": 0.8,
            "max_occupancy": 0.85} | kwargs
    with pytest.raises(ValueError, match=name):
        erlang_c_agents(**args)


def test_large_centre_is_fast_and_finite():
    n = erlang_c_agents(50_000, 300, 20, 0.8, 0.9)  # ~4,200 Erlangs: no factorial overflow
    assert 4167 / 0.9 <= n < 4167 / 0.85


# --------------------------------------------------------------------------------------------------------------------
# The plan


def test_plan_shape_and_total_split_by_mix():
    config = load_staffing_config()
    plan = staffing_plan(forecast([1000] * 7), config)
    assert list(plan.columns) == PLAN_COLUMNS
    assert len(plan) == 7 * len(config.channel_mix)
    assert list(plan["channel"].iloc[:5]) == list(config.channels)
    assert plan["agents_p50"].dtype == np.int64
    day = plan[plan["date"] == pd.Timestamp("2024-11-03")].set_index("channel")
    for channel, share in config.channel_mix.items():
        assert day.loc[channel, "volume_p50"] == pytest.approx(1000 * share)
        assert day.loc[channel, "volume_p90"] == pytest.approx(1300 * share)
    assert (plan["agents_p90"] >= plan["agents_p50"]).all()
    assert (plan["agents_p50"] > 0).all()


def test_channel_series_used_when_present():
    f = pd.concat([forecast([999] * 5), forecast([120] * 5, series="channel=chat"),
                   forecast([80] * 5, series="channel=email")])
    with pytest.warns(UserWarning, match="phone"):
        plan = staffing_plan(f)
    assert set(plan["channel"]) == {"chat", "email"}
    assert (plan.loc[plan["channel"] == "chat", "volume_p50"] == 120).all()


def test_contact_rate_scales_the_total():
    config = load_staffing_config(overrides={"contact_rate": 0.5})
    plan = staffing_plan(forecast([1000] * 3), config)
    assert plan["volume_p50"].sum() == pytest.approx(3 * 500)


@pytest.mark.parametrize("channel", ["chat", "phone", "email", "app"])
def test_plan_monotonic_in_volume(channel):
    config = load_staffing_config(overrides=only(channel))
    levels = [0, 10, 50, 200, 800, 3000]
    # One day per level (a flat series each, so deferred carry-over is in steady state).
    counts = [agents(staffing_plan(forecast([v] * 3), config), channel)[-1] for v in levels]
    assert counts[0] == 0
    assert all(b >= a for a, b in zip(counts, counts[1:], strict=False)) and counts[-1] > counts[1]


def test_live_plan_meets_service_level_each_hour():
    config = load_staffing_config(overrides={"shrinkage": 0.0, "shift_hours": 24.0})
    chat = config.channels["chat"]
    volume = 3000.0
    n = live_agents(volume, chat, config)
    peak_calls = volume * chat.hourly_shares().max()
    # With no shrinkage and a 24-hour shift, the peak hour binds: n agents carry n * concurrency chats.
    servers = n * chat.concurrency
    traffic = peak_calls * chat.aht_seconds / 3600
    assert direct_service_level(servers, peak_calls, chat.aht_seconds, chat.target_answer_seconds) >= 0.8
    assert traffic / servers <= chat.max_occupancy
    assert n - 1 < 0 or traffic / ((n - 1) * chat.concurrency) > chat.max_occupancy or direct_service_level(
        (n - 1) * chat.concurrency, peak_calls, chat.aht_seconds, chat.target_answer_seconds) < 0.8


def test_zero_volume_gives_zero_agents_or_the_configured_minimum():
    plan = staffing_plan(forecast([0] * 4))
    assert (plan[["agents_p50", "agents_p90"]] == 0).all().all()
    config = load_staffing_config(overrides={"channels": {"chat": {"min_agents": 2}, "email": {"min_agents": 1}}})
    plan = staffing_plan(forecast([0] * 4), config)
    assert (agents(plan, "chat") == 2).all() and (agents(plan, "email") == 1).all()
    assert (agents(plan, "phone") == 0).all()


def test_shrinkage_grosses_up():
    for channel in ("chat", "email"):
        # email with no waiting allowed: each day's agents cover exactly that day's work
        route = only(channel, target_hours=0) if channel == "email" else only(channel)
        base = load_staffing_config(overrides={"shrinkage": 0.0, **route})
        half = load_staffing_config(overrides={"shrinkage": 0.5, **route})
        n0 = agents(staffing_plan(forecast([2000] * 3), base), channel)
        n5 = agents(staffing_plan(forecast([2000] * 3), half), channel)
        assert (n0 > 0).all()
        if channel == "chat":
            np.testing.assert_array_equal(n5, 2 * n0)  # ceil(needed / 0.5) of the same on-floor need
        else:
            hours = 2000 * 480 / 3600
            np.testing.assert_array_equal(n5, math.ceil(hours / (8 * 0.85 * 0.5)))
            np.testing.assert_array_equal(n0, math.ceil(hours / (8 * 0.85)))


def test_spike_raises_next_day_deferred_agents_when_capacity_short():
    flat = [300.0] * 10
    spike = flat.copy()
    spike[4] = 600.0  # 80 hours of work; 12 agents do 57 of them
    # No waiting allowed, headcount capped: the spike day's overflow is done in the following days.
    capped = load_staffing_config(overrides=only("email", target_hours=0, max_agents=12))
    plan = staffing_plan(forecast(spike), capped, detail=True)
    email = plan[plan["channel"] == "email"].reset_index(drop=True)
    baseline = agents(staffing_plan(forecast(flat), capped), "email")
    assert baseline[5] < 12
    assert email.loc[4, "agents_p50"] == 12  # capped
    assert email.loc[4, "backlog_hours_p50"] > 0
    assert email.loc[5, "agents_p50"] > baseline[5]  # the carried backlog raises the next day
    assert email.loc[8, "agents_p50"] == baseline[8] and email.loc[8, "backlog_hours_p50"] == 0  # cleared
    # Without the cap, the spike is staffed on the day and the next day is back to normal.
    uncapped = agents(staffing_plan(forecast(spike), load_staffing_config(overrides=only("email", target_hours=0))),
                      "email")
    assert uncapped[4] > 12 and uncapped[5] == baseline[5]


def test_work_that_may_wait_is_carried_to_the_next_day():
    flat = [300.0] * 8
    spike = flat.copy()
    spike[3] = 1500.0
    config = load_staffing_config(overrides=only("email", target_hours=12))  # half a day's work may wait
    plan = staffing_plan(forecast(spike), config, detail=True)
    base = agents(staffing_plan(forecast(flat), config), "email")
    got = agents(plan, "email")
    assert got[3] > base[3] and got[4] > base[4]  # the spike is shared by its day and the next
    assert got[6] == base[6]
    backlog = plan.loc[plan["channel"] == "email", "backlog_hours_p50"].to_numpy()
    assert backlog[3] > backlog[2]


def test_p90_plan_is_at_least_p50():
    plan = staffing_plan(forecast(np.linspace(100, 3000, 30), ratio=1.4))
    assert (plan["agents_p90"] >= plan["agents_p50"]).all()
    assert (plan["agents_p90"] > plan["agents_p50"]).any()


# --------------------------------------------------------------------------------------------------------------------
# Config


def test_defaults_match_the_brief():
    config = load_staffing_config()
    chat, phone = config.channels["chat"], config.channels["phone"]
    assert (chat.service_level, chat.target_answer_seconds, chat.concurrency) == (0.8, 1800, 2)
    assert (phone.service_level, phone.target_answer_seconds) == (0.8, 60)
    assert config.shrinkage == 0.30 and chat.max_occupancy == 0.85
    assert {c.kind for c in config.channels.values()} == {"live", "deferred"}
    assert sum(config.channel_mix.values()) == pytest.approx(1.0)


def test_user_file_merges_over_defaults(tmp_path):
    path = tmp_path / "staff.toml"
    path.write_text("shrinkage = 0.25\n[channels.chat]\naht_seconds = 420\n[channels.phone]\nkind = \"deferred\"\n"
                    "target_hours = 4\n")
    config = load_staffing_config(path)
    assert config.shrinkage == 0.25
    assert config.channels["chat"].aht_seconds == 420 and config.channels["chat"].concurrency == 2  # kept
    assert config.channels["phone"].kind == "deferred" and config.channels["phone"].target_hours == 4
    assert config.channels["phone"].aht_seconds == 420  # phone's own default kept across the kind switch
    assert config.channels["email"] == load_staffing_config().channels["email"]


@pytest.mark.parametrize("text, needle", [
    ("shrinkag = 0.2", "'shrinkag'"),
    ("[channels.chat]\naht = 300", "'channels.chat.aht'"),
    ("[channels.email]\nconcurrency = 2", "'channels.email.concurrency'"),
    ("[channels.fax]\nkind = \"live\"", "'channels.fax'"),
    ("[channel_mix]\nchat = 0.5\nemail = 0.4", "'channel_mix'"),
    ("[channel_mix]\nfax = 1.0", "'channel_mix.fax'"),
    ("shrinkage = 1.5", "'shrinkage'"),
    ("[channels.chat]\nservice_level = 1", "'channels.chat.service_level'"),
    ("[channels.chat]\nintraday_profile = [1, 2]", "'channels.chat.intraday_profile'"),
    ("[channels.chat]\nconcurrency = 0", "'channels.chat.concurrency'"),
    ("[channels.chat]\nkind = \"batch\"", "'channels.chat.kind'"),
    ("[channels.email]\nmax_agents = 0", "'channels.email.max_agents'"),
    ("shift_hours = \"eight\"", "'shift_hours'"),
    ("shrinkage = ", "not valid TOML"),
])
def test_config_errors_name_the_key(tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(StaffingConfigError) as err:
        load_staffing_config(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(StaffingConfigError, match="not found"):
        load_staffing_config(tmp_path / "nope.toml")


# --------------------------------------------------------------------------------------------------------------------
# Forecast validation


@pytest.mark.parametrize("mutate, needle", [
    (lambda f: f.drop(columns="p90"), "'p90'"),
    (lambda f: f.assign(p50=lambda d: d["p50"].where(d.index != 2, -1.0)), "'p50'"),
    (lambda f: f.assign(p50=lambda d: d["p50"].where(d.index != 2, np.nan)), "'p50'"),
    (lambda f: f.assign(p90=f["p50"] * 0.5), "'p90' is below 'p50'"),
    (lambda f: f.drop(index=3), "gap after 2024-11-03"),
    (lambda f: f.assign(series="channel=fax"), "'fax'"),
    (lambda f: f.assign(series="category=apparel"), "'series'"),
    (lambda f: f.assign(date="not a date"), "'date'"),
    (lambda f: pd.concat([f, f.iloc[[0]]]), "two rows"),
    (lambda f: f.iloc[0:0], "no rows"),
])
def test_forecast_errors_name_the_column(mutate, needle):
    with pytest.raises(ValueError) as err:
        staffing_plan(mutate(forecast([500] * 6)))
    assert needle in str(err.value)
