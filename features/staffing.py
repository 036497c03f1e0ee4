"""From forecast contact volume to agents per day and channel: Erlang C for live channels, workload with backlog for
deferred ones, shrinkage on top. Pure computation (no I/O except reading the TOML config).

Live channels (chat, phone): a day's volume is spread over the open hours by an intraday profile; each hour's
arrivals give, through Erlang C, the agents that must be on the floor to answer ``service_level`` of contacts within
``target_answer_seconds`` without exceeding ``max_occupancy``. Chat agents work ``concurrency`` chats at once, so each
agent is that many Erlang C servers. Agents to roster that day = max(the peak hour's floor count, floor agent-hours /
shift length), grossed up by shrinkage.

Deferred channels (email, app, other): hours of work = volume x handle time. The share min(1, target_hours / 24) of
a day's work may wait until the next day; what is carried in (yesterday's deferrable work, plus anything over
capacity) must be done today. Agents are the fewest whose productive hours cover what is due; spare hours of the
rounded-up team work ahead on today's deferrable work; a ``max_agents`` cap pushes the excess into the next day.

P50 and P90 are planned independently: the P90 plan assumes every day comes in at P90 (a cautious plan).
"""

from __future__ import annotations

import math
import tomllib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DEFAULT_CONFIG_PATH = Path(__file__).with_name("staffing.toml")
LIVE, DEFERRED = "live", "deferred"
CHANNEL_PREFIX = "channel="
TOTAL = "total"
PLAN_COLUMNS = ["date", "channel", "volume_p50", "volume_p90", "agents_p50", "agents_p90"]
DETAIL_COLUMNS = ["kind", "workload_hours_p50", "workload_hours_p90", "backlog_hours_p50", "backlog_hours_p90"]
QUANTILES = ("p50", "p90")

# Keys a channel table may hold, by kind: a live-only key on a deferred channel would be silently ignored otherwise.
_COMMON_KEYS = {"kind", "aht_seconds", "max_occupancy", "min_agents"}
_KIND_KEYS = {
    LIVE: _COMMON_KEYS | {"service_level", "target_answer_seconds", "concurrency", "open_hours", "intraday_profile"},
    DEFERRED: _COMMON_KEYS | {"target_hours", "max_agents"},
}
_TOP_KEYS = {"shrinkage", "shift_hours", "contact_rate", "channel_mix", "channels"}
_EPS = 1e-9  # float slack before ceil(): 10.000000001 agents is 10 agents


class StaffingConfigError(ValueError):
    """A staffing config file or override is invalid (the message names the key)."""


@dataclass(frozen=True)
class ChannelConfig:
    """Staffing parameters of one channel (see features/staffing.toml for their meaning)."""

    name: str
    kind: str
    aht_seconds: float
    max_occupancy: float = 0.85
    min_agents: int = 0
    # live channels
    service_level: float = 0.80
    target_answer_seconds: float = 60.0
    concurrency: int = 1
    open_hours: int = 10
    intraday_profile: tuple[float, ...] = ()
    # deferred channels
    target_hours: float = 24.0
    max_agents: int | None = None

    def hourly_shares(self) -> np.ndarray:
        """Share of a day's arrivals in each open hour (flat when no profile is configured)."""
        if not self.intraday_profile:
            return np.full(self.open_hours, 1.0 / self.open_hours)
        prof = np.asarray(self.intraday_profile, dtype=float)
        return prof / prof.sum()


@dataclass(frozen=True)
class StaffingConfig:
    """Every staffing setting: shrinkage, shift length, how to split a total, and per-channel parameters."""

    shrinkage: float = 0.30
    shift_hours: float = 8.0
    contact_rate: float = 1.0
    channel_mix: dict[str, float] = field(default_factory=dict)
    channels: dict[str, ChannelConfig] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------------------
# Erlang C


def _check_number(name: str, value: Any, low: float, high: float, low_open: bool = False,
                  high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"'{name}' must be a number, got {value!r}")
    v = float(value)
    bad_low = v <= low if low_open else v < low
    bad_high = v >= high if high_open else v > high
    if not math.isfinite(v) or bad_low or bad_high:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"'{name}' must be in {lo}{low}, {high}{hi}, got {value!r}")
    return v


def erlang_c_wait_probability(agents: int, traffic_erlangs: float) -> float:
    """Probability that a contact has to wait (Erlang C) with ``agents`` servers and the offered traffic."""
    if traffic_erlangs <= 0:
        return 0.0
    if agents <= traffic_erlangs:
        return 1.0  # the queue grows without bound
    b = 1.0  # Erlang B by its stable recursion; avoids A^N / N! overflow for large centres
    for k in range(1, agents + 1):
        b = traffic_erlangs * b / (k + traffic_erlangs * b)
    return agents * b / (agents - traffic_erlangs * (1.0 - b))


def erlang_c_service_level(agents: int, calls_per_hour: float, aht_seconds: float,
                           target_answer_seconds: float) -> float:
    """Share of contacts answered within the target with ``agents`` servers (Erlang C, M/M/N)."""
    traffic = calls_per_hour * aht_seconds / 3600.0
    if traffic <= 0:
        return 1.0
    if agents <= traffic:
        return 0.0
    wait = erlang_c_wait_probability(agents, traffic)
    return 1.0 - wait * math.exp(-(agents - traffic) * target_answer_seconds / aht_seconds)


def erlang_c_agents(calls_per_hour: float, aht_seconds: float, target_answer_seconds: float,
                    service_level: float, max_occupancy: float) -> int:
    """Fewest agents (servers) meeting the service level with occupancy (traffic / agents) at most the cap."""
    calls = _check_number("calls_per_hour", calls_per_hour, 0, math.inf, high_open=True)
    aht = _check_number("aht_seconds", aht_seconds, 0, math.inf, low_open=True, high_open=True)
    target = _check_number("target_answer_seconds", target_answer_seconds, 0, math.inf, high_open=True)
    sl = _check_number("service_level", service_level, 0, 1, high_open=True)
    occ = _check_number("max_occupancy", max_occupancy, 0, 1, low_open=True)
    if calls == 0:
        return 0
    traffic = calls * aht / 3600.0
    # Start where both hard limits hold: a stable queue (N > A) and the occupancy cap (A / N <= occ).
    n = max(1, math.floor(traffic) + 1, math.ceil(traffic / occ - _EPS))
    b = 1.0
    for k in range(1, n + 1):
        b = traffic * b / (k + traffic * b)
    while True:
        wait = n * b / (n - traffic * (1.0 - b))
        if 1.0 - wait * math.exp(-(n - traffic) * target / aht) >= sl - _EPS:
            return n
        n += 1
        b = traffic * b / (n + traffic * b)  # Erlang B for one more server, incrementally


# --------------------------------------------------------------------------------------------------------------------
# Config


def _err(source: str, msg: str) -> StaffingConfigError:
    return StaffingConfigError(f"staffing config {source}: {msg}")


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise StaffingConfigError(f"staffing config {path}: file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise StaffingConfigError(f"staffing config {path}: not valid TOML ({e})") from None


def _unknown(source: str, where: str, keys, allowed) -> None:
    extra = sorted(set(keys) - set(allowed))
    if extra:
        raise _err(source, f"unknown key '{where}{extra[0]}' (known: {', '.join(sorted(allowed))})")


def _merge(base: dict, user: Mapping, source: str) -> dict:
    """User settings over the defaults; every key must exist in the defaults (channels: in their kind)."""
    _unknown(source, "", user, _TOP_KEYS)
    merged = {k: v for k, v in base.items() if k != "channels"}
    for key in ("shrinkage", "shift_hours", "contact_rate"):
        if key in user:
            merged[key] = user[key]
    if "channel_mix" in user:  # a mix is replaced whole: a partial mix could not sum to 1
        if not isinstance(user["channel_mix"], Mapping):
            raise _err(source, "'channel_mix' must be a table of channel = share")
        _unknown(source, "channel_mix.", user["channel_mix"], base["channels"])
        merged["channel_mix"] = dict(user["channel_mix"])
    channels = {name: dict(ch) for name, ch in base["channels"].items()}
    user_channels = user.get("channels", {})
    if not isinstance(user_channels, Mapping):
        raise _err(source, "'channels' must be a table of [channels.NAME] tables")
    _unknown(source, "channels.", user_channels, base["channels"])
    for name, over in user_channels.items():
        if not isinstance(over, Mapping):
            raise _err(source, f"'channels.{name}' must be a table")
        kind = over.get("kind", channels[name]["kind"])
        if kind not in _KIND_KEYS:
            raise _err(source, f"'channels.{name}.kind' must be \"live\" or \"deferred\", got {kind!r}")
        _unknown(source, f"channels.{name}.", over, _KIND_KEYS[kind])
        # Switching kind drops the defaults that belong to the other kind.
        channels[name] = {k: v for k, v in {**channels[name], **over}.items() if k in _KIND_KEYS[kind]}
    merged["channels"] = channels
    return merged


def _build(raw: dict, source: str) -> StaffingConfig:
    """Typed, validated config from a merged dict."""

    def num(key: str, value, low, high, low_open=False, high_open=False) -> float:
        try:
            return _check_number(key, value, low, high, low_open, high_open)
        except ValueError as e:
            raise _err(source, str(e)) from None

    def count(key: str, value, low: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise _err(source, f"'{key}' must be a whole number >= {low}, got {value!r}")
        return int(value)

    channels: dict[str, ChannelConfig] = {}
    for name, ch in raw["channels"].items():
        p = f"channels.{name}."
        kind = ch.get("kind")
        if kind not in _KIND_KEYS:
            raise _err(source, f"'{p}kind' must be \"live\" or \"deferred\", got {kind!r}")
        _unknown(source, p, ch, _KIND_KEYS[kind])
        if "aht_seconds" not in ch:
            raise _err(source, f"'{p}aht_seconds' is required")
        kw: dict[str, Any] = {
            "aht_seconds": num(p + "aht_seconds", ch["aht_seconds"], 0, math.inf, True, True),
            "max_occupancy": num(p + "max_occupancy", ch.get("max_occupancy", 0.85), 0, 1, low_open=True),
            "min_agents": count(p + "min_agents", ch.get("min_agents", 0), 0),
        }
        if kind == LIVE:
            open_hours = count(p + "open_hours", ch.get("open_hours", 10), 1)
            if open_hours > 24:
                raise _err(source, f"'{p}open_hours' must be at most 24, got {open_hours}")
            profile = ch.get("intraday_profile", [])
            if not isinstance(profile, list) or (profile and len(profile) != open_hours):
                raise _err(source, f"'{p}intraday_profile' must list one weight per open hour ({open_hours}), "
                                   f"got {profile!r}")
            weights = tuple(num(f"{p}intraday_profile[{i}]", w, 0, math.inf, high_open=True)
                            for i, w in enumerate(profile))
            if weights and sum(weights) <= 0:
                raise _err(source, f"'{p}intraday_profile' must have a positive weight")
            kw |= {
                "service_level": num(p + "service_level", ch.get("service_level", 0.8), 0, 1, True, True),
                "target_answer_seconds": num(p + "target_answer_seconds", ch.get("target_answer_seconds", 60),
                                             0, math.inf, high_open=True),
                "concurrency": count(p + "concurrency", ch.get("concurrency", 1), 1),
                "open_hours": open_hours,
                "intraday_profile": weights,
            }
        else:
            cap = ch.get("max_agents")
            kw |= {
                "target_hours": num(p + "target_hours", ch.get("target_hours", 24), 0, math.inf, high_open=True),
                "max_agents": None if cap is None else count(p + "max_agents", cap, 1),
            }
        channels[name] = ChannelConfig(name=name, kind=kind, **kw)

    mix = {str(k): num(f"channel_mix.{k}", v, 0, 1) for k, v in raw.get("channel_mix", {}).items()}
    for k in mix:
        if k not in channels:
            raise _err(source, f"'channel_mix.{k}' names no configured channel ({', '.join(channels)})")
    if mix and abs(sum(mix.values()) - 1.0) > 1e-6:
        raise _err(source, f"'channel_mix' shares must sum to 1, got {sum(mix.values()):.6g}")
    return StaffingConfig(
        shrinkage=num("shrinkage", raw.get("shrinkage", 0.3), 0, 1, high_open=True),
        shift_hours=num("shift_hours", raw.get("shift_hours", 8.0), 0, 24, low_open=True),
        contact_rate=num("contact_rate", raw.get("contact_rate", 1.0), 0, math.inf, high_open=True),
        channel_mix=mix,
        channels=channels,
    )


def load_staffing_config(path: str | Path | None = None, overrides: Mapping | None = None) -> StaffingConfig:
    """The shipped defaults (features/staffing.toml), merged with a user TOML file and then with ``overrides``.

    Unknown keys raise :class:`StaffingConfigError` naming the key, so a typo cannot silently keep a default.
    """
    raw = _read_toml(DEFAULT_CONFIG_PATH)
    if path is not None:
        raw = _merge(raw, _read_toml(Path(path)), str(path))
    if overrides:
        raw = _merge(raw, overrides, "overrides")
    return _build(raw, str(path) if path is not None else str(DEFAULT_CONFIG_PATH))


# --------------------------------------------------------------------------------------------------------------------
# Plan


def _forecast_volumes(forecast: pd.DataFrame, config: StaffingConfig) -> pd.DataFrame:
    """Validated daily volume per channel (date, channel, p50, p90) from the forecaster's long format."""
    if not isinstance(forecast, pd.DataFrame):
        raise TypeError(f"forecast must be a pandas DataFrame, got {type(forecast).__name__}")
    missing = [c for c in ("date", "series", "p50", "p90") if c not in forecast.columns]
    if missing:
        raise ValueError(f"forecast is missing column '{missing[0]}' (needs date, series, p10, p50, p90 as written "
                         "by `aftersales forecast`)")
    if forecast.empty:
        raise ValueError("forecast has no rows: nothing to staff")
    df = forecast[["date", "series", "p50", "p90"]].copy()
    try:
        dates = pd.to_datetime(df["date"], format="ISO8601")  # the forecast CSV writes YYYY-MM-DD
    except (ValueError, TypeError) as e:
        raise ValueError(f"forecast column 'date' has values that are not dates ({e})") from None
    if getattr(dates.dt, "tz", None) is not None:
        dates = dates.dt.tz_convert("UTC").dt.tz_localize(None)
    df["date"] = dates.dt.normalize()
    if df["date"].isna().any():
        raise ValueError(f"forecast column 'date' is empty on row {int(np.flatnonzero(df['date'].isna())[0])}")
    df["series"] = df["series"].astype(str)
    for col in ("p50", "p90"):
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | ~np.isfinite(values.fillna(0)) | (values < 0)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"forecast column '{col}' must be a non-negative number; row {i} has "
                             f"{forecast[col].iloc[i]!r} ({df['series'].iloc[i]}, {df['date'].iloc[i].date()})")
        df[col] = values.astype(float)
    crossed = df["p90"] < df["p50"] - 1e-9 * (1 + df["p50"].abs())
    if crossed.any():
        i = int(np.flatnonzero(crossed.to_numpy())[0])
        raise ValueError(f"forecast column 'p90' is below 'p50' on {int(crossed.sum())} rows (first: "
                         f"{df['series'].iloc[i]} on {df['date'].iloc[i].date()}); quantiles must not cross")
    dup = df.duplicated(["date", "series"])
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise ValueError(f"forecast has two rows for series {df['series'].iloc[i]!r} on "
                         f"{df['date'].iloc[i].date()}: one row per date and series")

    is_channel = df["series"].str.startswith(CHANNEL_PREFIX)
    if is_channel.any():
        out = df[is_channel].copy()
        out["channel"] = out["series"].str.slice(len(CHANNEL_PREFIX))
        unknown = sorted(set(out["channel"]) - set(config.channels))
        if unknown:
            raise ValueError(f"forecast column 'series' has channel {unknown[0]!r} with no [channels.{unknown[0]}] "
                             f"in the staffing config (configured: {', '.join(config.channels)})")
        absent = [c for c in config.channels if c not in set(out["channel"])]
        if absent:
            warnings.warn(f"forecast has no series for channel(s) {', '.join(absent)}: they are not staffed",
                          stacklevel=3)
    else:
        total = df[df["series"] == TOTAL]
        if total.empty:
            raise ValueError("forecast column 'series' has neither 'total' nor 'channel=...' series; "
                             "write the forecast with `aftersales forecast`")
        if not config.channel_mix:
            raise ValueError("forecast has only 'total' and the staffing config has no [channel_mix] to split it")
        parts = []
        for channel, share in config.channel_mix.items():
            part = total.copy()
            part["channel"] = channel
            part[["p50", "p90"]] = total[["p50", "p90"]] * config.contact_rate * share
            parts.append(part)
        out = pd.concat(parts, ignore_index=True)

    for channel, days in out.groupby("channel")["date"]:
        d = days.sort_values()
        gaps = d.diff().dropna() != pd.Timedelta(days=1)
        if gaps.any():
            after = d.iloc[int(np.flatnonzero(gaps.to_numpy())[0])]
            raise ValueError(f"forecast column 'date' must hold consecutive days for {channel}: "
                             f"gap after {after.date()} (backlog carries from one day to the next)")
    return out[["date", "channel", "p50", "p90"]]


def live_agents(volume: float, channel: ChannelConfig, config: StaffingConfig) -> int:
    """Agents to roster for one day of a live channel: Erlang C per open hour, peak hour or agent-hours, shrinkage."""
    if volume <= 0:
        return channel.min_agents
    floor = []
    for calls in volume * channel.hourly_shares():
        servers = erlang_c_agents(calls, channel.aht_seconds, channel.target_answer_seconds,
                                  channel.service_level, channel.max_occupancy) if calls > 0 else 0
        floor.append(math.ceil(servers / channel.concurrency))
    # Everyone can be on the floor at the peak hour, but nobody works more than one shift of agent-hours.
    needed = max(max(floor), math.ceil(sum(floor) / config.shift_hours - _EPS))
    return max(math.ceil(needed / (1.0 - config.shrinkage) - _EPS), channel.min_agents)


def deferred_agents(volumes: np.ndarray, channel: ChannelConfig,
                    config: StaffingConfig) -> tuple[np.ndarray, np.ndarray]:
    """Agents per day for a deferred channel and the backlog (hours of work) carried out of each day.

    The day before the first is assumed alike (steady state): its deferrable share is carried into day one.
    """
    hours = np.asarray(volumes, dtype=float) * channel.aht_seconds / 3600.0
    per_agent = config.shift_hours * channel.max_occupancy * (1.0 - config.shrinkage)  # productive hours
    may_wait = min(1.0, channel.target_hours / 24.0)
    carry = may_wait * hours[0] if len(hours) else 0.0
    agents = np.zeros(len(hours), dtype=np.int64)
    backlog = np.zeros(len(hours))
    for t, work in enumerate(hours):
        due = carry + (1.0 - may_wait) * work  # what has waited its allowed time (or is overdue) plus what can't
        n = math.ceil(due / per_agent - _EPS) if due > 0 else 0
        n = max(n, channel.min_agents)
        if channel.max_agents is not None:
            n = min(n, channel.max_agents)
        # The rounded-up team's spare hours work ahead on today's deferrable share.
        carry = max(0.0, carry + work - n * per_agent)
        agents[t], backlog[t] = n, carry
    return agents, backlog


def staffing_plan(forecast: pd.DataFrame, config: StaffingConfig | None = None,
                  detail: bool = False) -> pd.DataFrame:
    """Agents per day and channel at P50 and P90 volume.

    ``forecast``: long format with columns date, series, p10, p50, p90 (p10 unused); channel series are named
    ``channel=<name>``; without them the ``total`` series is split by ``config.channel_mix``. Returns date, channel,
    volume_p50, volume_p90, agents_p50, agents_p90 (plus kind, workload and backlog hours when ``detail``).
    """
    config = config or load_staffing_config()
    volumes = _forecast_volumes(forecast, config)
    order = {name: i for i, name in enumerate(config.channels)}
    frames = []
    for channel, g in sorted(volumes.groupby("channel"), key=lambda kv: order[kv[0]]):
        ch = config.channels[channel]
        g = g.sort_values("date")
        out = pd.DataFrame({"date": g["date"].to_numpy(), "channel": channel, "kind": ch.kind})
        for q in QUANTILES:
            vol = g[q].to_numpy()
            out[f"volume_{q}"] = vol
            out[f"workload_hours_{q}"] = vol * ch.aht_seconds / 3600.0
            if ch.kind == LIVE:
                out[f"agents_{q}"] = np.array([live_agents(v, ch, config) for v in vol], dtype=np.int64)
                out[f"backlog_hours_{q}"] = 0.0
            else:
                out[f"agents_{q}"], out[f"backlog_hours_{q}"] = deferred_agents(vol, ch, config)
        frames.append(out)
    plan = pd.concat(frames, ignore_index=True)
    plan["_order"] = plan["channel"].map(order)
    plan = plan.sort_values(["date", "_order"], ignore_index=True).drop(columns="_order")
    return plan[PLAN_COLUMNS + (DETAIL_COLUMNS if detail else [])]
