"""A synthetic after-sales world: orders, returns, tickets, account links and review decisions, with ground truth.

The world is generated in vectorised steps (no Python loop over orders) from one ``numpy.random.Generator``, so the
same seed gives the same bytes. The mechanics the models learn (seasonality, return lags, abuse patterns, merchant
deterioration, escalation causes) are documented in ``truth/README.md`` written beside the ground truth.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from features.calendar import SIZE_CLASSES, market_events
from features.scenarios import PATTERN_NAMES, Scenario, default_scenario, readme_table, write_scenario_files
from features.settings import Settings

DAY = 86_400  # seconds
Arr = np.ndarray

CATEGORIES = ("apparel", "shoes", "electronics", "home", "beauty", "toys", "books", "grocery")
CAT_SHARE = np.array([0.24, 0.08, 0.14, 0.15, 0.12, 0.08, 0.07, 0.12])
CAT_PRICE_MEDIAN = np.array([35.0, 60.0, 120.0, 40.0, 22.0, 28.0, 14.0, 12.0])
CAT_PRICE_SIGMA = np.array([0.6, 0.5, 0.9, 0.7, 0.5, 0.6, 0.4, 0.5])
# Base return hazards per cause and category, the weekly profile, event sizes, abuse shares, escalation weights and
# the other mechanics' values are a scenario's (features.scenarios.Scenario; its defaults are the default world's).
# Median days from delivery to a change-of-mind/fit return request (lognormal): apparel one to three weeks.
CAT_DELAY_MEDIAN = np.array([11.0, 10.0, 6.0, 7.0, 5.0, 8.0, 7.0, 2.0])
APPAREL, SHOES, GROCERY = 0, 1, 7

REGIONS = np.array(["east", "south", "north", "west", "central"])
REGION_SHARE = np.array([0.32, 0.26, 0.18, 0.10, 0.14])
REGION_EXTRA_DAYS = np.array([0.0, 0.2, 0.5, 1.2, 0.4])  # remote regions take longer

REASONS = ("defective", "not_as_described", "wrong_item", "size_fit", "changed_mind", "damaged_in_transit",
           "not_received", "other")
R_DEF, R_NAD, R_WRONG, R_FIT, R_MIND, R_DAMAGED, R_NOTREC, R_OTHER = range(8)
PATTERNS = ("normal", "serial", "wardrobing", "refund_without_return", "ring")
P_NORMAL, P_SERIAL, P_WARDROBE, P_RWR, P_RING = range(5)
CASE_TYPES = np.array(["return", "refund", "exchange", "complaint", "logistics", "quality", "inquiry", "other"])
C_RETURN, C_REFUND, C_EXCHANGE, C_COMPLAINT, C_LOGISTICS, C_QUALITY, C_INQUIRY, C_OTHER = range(8)
CHANNELS = np.array(["chat", "phone", "email", "app", "other"])
CHANNEL_SHARE = np.array([0.42, 0.14, 0.14, 0.25, 0.05])
REVIEWERS = np.array(["li.wei", "j.smith", "a.garcia", "m.chen", "s.okafor", "k.tanaka"])
# Order and ticket hour-of-day profiles (UTC day): quiet nights, a late-morning and an evening peak.
ORDER_HOURS = np.array([2, 1, .6, .4, .3, .4, .8, 1.5, 2.5, 3.5, 4.2, 4.4, 4, 3.6, 3.6, 3.7, 3.8, 4, 4.4, 5, 5.6,
                        5.8, 5, 3.5])
TICKET_HOURS = np.array([.5, .3, .2, .2, .2, .3, .8, 2, 4, 5.5, 6, 5.8, 5, 5, 5.2, 5, 4.6, 4.2, 4, 4.2, 4.3, 3.8,
                         2.6, 1.2])

ORDERS_PER_ACCOUNT_YEAR = 6.8  # gives ~20 order lines per account over two years
GUEST_ORDER_SHARE = 0.08
ESCALATION_CAUSES = ("case_type", "merchant_risk", "high_amount", "late_delivery", "repeat_contact", "abuser_dispute",
                     "peak_load", "angry_customer", "channel")


@dataclass(frozen=True)
class _World:
    """Shapes shared by the generation steps: the day grid and its demand and congestion curves."""

    start: pd.Timestamp
    days: int
    start_s: int  # epoch seconds of the first day
    end_s: int  # epoch seconds of the end of the last day: the world's "now"
    demand: Arr  # relative order demand per day
    congestion: Arr  # extra delivery days per day (event peaks)
    gift_day: Arr  # bool per day: December gift season before Christmas
    shutdown: list[tuple[int, int]]  # Spring Festival logistics shutdowns (first day, last day)


def _cat_sample(rng: np.random.Generator, weights: Arr) -> Arr:
    """One categorical draw per row of a (n, k) weight matrix (weights need not sum to one)."""
    cum = np.cumsum(weights, axis=1)
    u = rng.random(len(weights)) * cum[:, -1]
    return np.minimum((u[:, None] >= cum).sum(axis=1), weights.shape[1] - 1)


def _lognormal_days(rng: np.random.Generator, median: Arr | float, sigma: float, n: int) -> Arr:
    return np.exp(np.log(median) + sigma * rng.standard_normal(n))


def _ids(prefix: str, n: int, width: int | None = None) -> pa.Array:
    """IDs like ``O0000123`` (zero-padded so they sort), built in Arrow without a Python loop."""
    width = width or max(len(str(max(n - 1, 0))), 4)
    s = pc.utf8_lpad(pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string()), width, padding="0")
    return pc.binary_join_element_wise(prefix, s, "")


def _take(ids: pa.Array, idx: Arr, null: Arr | None = None) -> pa.Array:
    """``ids[idx]`` with nulls where ``null`` is true (or idx < 0)."""
    mask = (idx < 0) if null is None else (null | (idx < 0))
    return ids.take(pa.array(np.where(mask, 0, idx), mask=mask))


def _ts(seconds: Arr, null: Arr | None = None) -> pa.Array:
    us = seconds.astype(np.int64) * 1_000_000
    return pa.array(us, mask=null, type=pa.timestamp("us", tz="UTC"))


def _day_grid(rng: np.random.Generator, start: pd.Timestamp, days: int, market: str, settings: Settings,
              sc: Scenario) -> _World:
    """Daily order demand: weekly cycle, shopping-event spikes with ramps, Christmas run-up, Spring Festival dip.

    Each event instance has its own intensity (+-20%), and every day a small shock (promotions, weather), so last
    year's figures scaled are a fair but imperfect guide.
    """
    dates = pd.date_range(start, periods=days, freq="D")
    end = dates[-1]
    ev = market_events(market, start - pd.Timedelta(days=30), end + pd.Timedelta(days=30), settings)
    offset = ((ev["date"] - start).dt.days).to_numpy()
    demand = np.asarray(sc.weekly, dtype=float)[dates.day_of_week.to_numpy()].astype(float)
    spike = np.ones(days)
    # (peak multiplier, multiplier on the days before, how many days before, days after at half the excess)
    shapes = {"singles_day": (5.0, 1.6, 3, 1), "black_friday": (4.0, 1.4, 3, 2), "mid_year_618": (3.2, 1.4, 2, 1),
              "cyber_monday": (2.5, 1.0, 0, 0), "double_12": (2.0, 1.2, 1, 0), "summer_sale": (1.5, 1.0, 0, 0)}
    for name, (peak, pre, n_pre, n_post) in shapes.items():
        peak = sc.event_peaks.get(name, peak)
        if peak <= 1.0:  # this platform does not run the event
            continue
        for d in offset[(ev["name"] == name).to_numpy()]:
            peak_i = 1 + (peak - 1) * rng.uniform(*sc.event_jitter)
            for k in range(1, n_pre + 1):
                if 0 <= d - k < days:
                    spike[d - k] = max(spike[d - k], pre)
            for k in range(1, n_post + 1):
                if 0 <= d + k < days:
                    spike[d + k] = max(spike[d + k], 1 + (peak_i - 1) / 2)
            if 0 <= d < days:
                spike[d] = max(spike[d], peak_i)
    hol = ev[(ev["kind"] == "holiday") & (ev["name"] != "spring_festival")]
    for d, size in zip(((hol["date"] - start).dt.days).to_numpy(), hol["size"].to_numpy(), strict=True):
        if 0 <= d < days:
            spike[d] = max(spike[d], 1.15 if size >= SIZE_CLASSES["medium"] else 1.05)
    demand *= spike * np.exp(rng.normal(0, sc.daily_noise, days))
    # Christmas gift buying ramps up over the three weeks before; the days themselves are quiet.
    month, dom = dates.month.to_numpy(), dates.day.to_numpy()
    xmas_ramp = (month == 12) & (dom >= 1) & (dom <= 22)
    ramp = np.full(days, sc.xmas_ramp)
    if sc.holiday_instability is not None:  # each year's run-up has its own strength
        years = dates.year.to_numpy()
        factor = 1 + sc.holiday_instability * rng.uniform(-1, 1, years.max() - years.min() + 1)
        ramp = ramp * factor[years - years.min()]
    demand[xmas_ramp] *= 1 + ramp[xmas_ramp] * dom[xmas_ramp] / 22
    demand[(month == 12) & (dom == 25)] *= 0.6
    demand[(month == 12) & (dom == 26)] *= 0.8
    gift_day = (month == 12) & (dom <= 24)
    # Spring Festival: people travel home and logistics shut down; orders dip, deliveries wait until it ends.
    shutdown: list[tuple[int, int]] = []
    sf = offset[(ev["name"] == "spring_festival").to_numpy()]
    if len(sf):
        blocks = np.split(sf, np.where(np.diff(sf) > 1)[0] + 1)
        for b in blocks:
            lo, hi = int(b.min()), int(b.max())
            shutdown.append((lo - 2, hi))
            for d in range(lo - 5, hi + 1):
                if 0 <= d < days:
                    demand[d] *= 0.45 if d >= lo else 0.75
    if sc.growth_before is not None:
        demand *= _growth_curve(days, sc)
    # Congestion: the parcel backlog after peaks adds delivery days (a 3-day trailing excess over normal volume).
    base = np.median(demand)
    trailing = np.convolve(demand, np.ones(3) / 3, mode="full")[:days]
    congestion = np.clip(trailing / base - 1.3, 0, None) * 0.6
    start_s = int(pd.Timestamp(start).tz_localize("UTC").timestamp())
    return _World(pd.Timestamp(start), days, start_s, start_s + days * DAY, demand, congestion, gift_day, shutdown)


def _growth_curve(days: int, sc: Scenario) -> Arr:
    """Demand multiplier giving order volume the scenario's yearly growth (with a break), net of the growth that
    accounts joining over time already give (55% exist at the start, the rest join evenly)."""
    d = np.arange(days)
    brk = int(days * sc.growth_break)
    r1, r2 = np.log1p(sc.growth_before) / 365, np.log1p(sc.growth_after) / 365
    log_trend = np.where(d < brk, r1 * d, r1 * brk + r2 * (d - brk))
    active = 0.55 + 0.45 * np.clip(d / max(days - 30, 1), 0, 1)
    return np.exp(log_trend) / active


def _sample_days(rng: np.random.Generator, cum: Arr, lo: Arr, hi: Arr) -> Arr:
    """One day per row, drawn in [lo, hi) with probability proportional to the weights whose cumsum is ``cum``."""
    cum0 = np.concatenate([[0.0], cum])
    u = cum0[lo] + rng.random(len(lo)) * (cum0[hi] - cum0[lo])
    d = np.searchsorted(cum, u, side="right")
    return np.clip(d, lo, hi - 1)


class _MerchantSampler:
    """Pick a merchant for an order day among those already trading, proportional to merchant size."""

    def __init__(self, join_day: Arr, weight: Arr, subset: Arr | None = None):
        ids = np.arange(len(join_day)) if subset is None else subset
        order = ids[np.argsort(join_day[ids], kind="stable")]
        self.ids, self.join = order, join_day[order]
        self.cum = np.cumsum(weight[order])

    def sample(self, rng: np.random.Generator, day: Arr) -> Arr:
        k = np.searchsorted(self.join, day, side="right")  # merchants that have joined by this day
        k = np.maximum(k, 1)
        u = rng.random(len(day)) * self.cum[k - 1]
        return self.ids[np.minimum(np.searchsorted(self.cum, u, side="right"), len(self.ids) - 1)]


def _merchants(rng: np.random.Generator, n: int, w: _World, sc: Scenario) -> dict[str, Arr]:
    """Merchant size (heavy tailed), category focus, tenure, latent late-delivery and quality-defect rates."""
    # Heavy tailed but not absurdly so: a few big merchants, a long tail of small ones.
    size = np.exp(rng.normal(0.0, 1.0, n))
    category = rng.choice(len(CATEGORIES), n, p=CAT_SHARE)
    new = rng.random(n) < 0.25  # a quarter join during the simulated period
    join_day = np.where(new, rng.integers(14, max(15, int(w.days * 0.9)), n), 0)
    tenure_days = np.where(new, -join_day, rng.integers(30, 5 * 365, n))  # days trading before the start
    late_norm = rng.gamma(2.0, 0.12, n)
    defect_norm = np.exp(rng.normal(0, 0.25, n))
    attitude = np.exp(rng.normal(0, 0.3, n))  # how readily this merchant's customers complain
    risky = rng.random(n) < np.where(new, sc.risky_new, sc.risky_incumbent)
    kind = rng.choice(3, n, p=[0.4, 0.3, 0.3])  # 0 late deliveries, 1 quality, 2 both
    late_bad = late_norm + np.where(risky & (kind != 1), rng.uniform(1.5, 4.0, n), 0.0)
    defect_bad = defect_norm * np.where(risky & (kind != 0), rng.uniform(2.5, 5.0, n), 1.0)
    deteriorates = risky & (rng.random(n) < sc.deteriorate_share)
    onset = rng.integers(int(w.days * 0.3), max(int(w.days * 0.3) + 1, int(w.days * 0.85)), n)
    # At least two months after joining and a month before the end, so both states are observable.
    onset = np.minimum(np.maximum(onset, join_day + 60), w.days - 30)
    # Day from which the merchant is in its bad state (never for normal merchants, always for risky ones).
    bad_from = np.where(risky, np.where(deteriorates, onset, -10**6), 10**9)
    # Recovering merchants: bad from the start, fine from a day 30-85% into the period (none in the default world).
    bad_until = np.full(n, 10**9)
    if sc.recover_share > 0:
        p_rec = sc.recover_share / max(1.0 - sc.deteriorate_share, 1e-9)
        recovers = risky & ~deteriorates & (rng.random(n) < p_rec)
        rec_day = rng.integers(int(w.days * 0.3), max(int(w.days * 0.3) + 1, int(w.days * 0.85)), n)
        bad_until = np.where(recovers, np.maximum(rec_day, join_day + 60), bad_until)
    # Temporary troubles at otherwise normal merchants (a carrier change, a bad batch): 30-90 days of late
    # deliveries or defects; complaints follow with the same lag as for deteriorating merchants.
    has_ep = ~risky & (rng.random(n) < 0.2)
    ep_start = np.where(has_ep, rng.integers(60, max(61, w.days - 30), n), 10**9)
    ep_start = np.maximum(ep_start, join_day + 30)
    ep_end = ep_start + rng.integers(30, 91, n)
    ep_kind = rng.choice(2, n)  # 0 late deliveries, 1 defects
    ep_late = late_norm + np.where(ep_kind == 0, rng.uniform(1.5, 3.5, n), 0.0)
    ep_defect = defect_norm * np.where(ep_kind == 1, rng.uniform(2.5, 4.5, n), 1.0)
    return {"size": size, "category": category, "join_day": join_day, "tenure_days": tenure_days,
            "late_norm": late_norm, "defect_norm": defect_norm, "late_bad": late_bad, "defect_bad": defect_bad,
            "attitude": attitude, "risky": risky, "kind": kind, "deteriorates": deteriorates, "bad_from": bad_from,
            "bad_until": bad_until, "complaint_lag": float(sc.complaint_lag),
            "ep_start": ep_start, "ep_end": ep_end, "ep_kind": ep_kind, "ep_late": ep_late, "ep_defect": ep_defect}


def _merchant_state(mer: dict[str, Arr], m: Arr, day: Arr) -> tuple[Arr, Arr, Arr, Arr]:
    """Each (merchant, day): mean extra delivery days, defect multiplier, whether it is in a bad state, and the
    customers' complaint readiness (low when trouble has just started: complaints lag the operational signals)."""
    bad = (day >= mer["bad_from"][m]) & (day < mer["bad_until"][m])
    episode = (day >= mer["ep_start"][m]) & (day < mer["ep_end"][m])
    late = np.where(bad, mer["late_bad"][m], np.where(episode, mer["ep_late"][m], mer["late_norm"][m]))
    defect = np.where(bad, mer["defect_bad"][m], np.where(episode, mer["ep_defect"][m], mer["defect_norm"][m]))
    since = np.where(episode, day - mer["ep_start"][m], day - mer["bad_from"][m])
    ramp = np.where((mer["deteriorates"][m] & bad) | episode,
                    0.1 + 0.9 * np.clip(since / mer["complaint_lag"], 0, 1), 1.0)
    return late, defect, bad | episode, ramp


def _accounts(rng: np.random.Generator, n: int, w: _World, sc: Scenario) -> dict[str, Arr]:
    """Accounts: join day (growth), activity, return propensity, region, abuse pattern and when it starts."""
    existing = rng.random(n) < 0.55
    join_day = np.where(existing, 0, rng.integers(0, max(1, w.days - 30), n))
    activity = rng.gamma(0.9, 1 / 0.9, n)
    propensity = np.exp(rng.normal(-0.1, 0.45, n))
    # Bracketers: honest customers who order several sizes and send the rest back. Many returns, no abuse.
    bracketer = rng.random(n) < 0.05
    region = rng.choice(len(REGIONS), n, p=REGION_SHARE)
    pattern = np.zeros(n, dtype=np.int64)
    perm = rng.permutation(n)
    pos = 0
    ring_id = np.full(n, -1, dtype=np.int64)
    for p in (P_SERIAL, P_WARDROBE, P_RWR, P_RING):
        k = int(round(sc.abuse_share[PATTERN_NAMES[p - 1]] * n))
        if p == P_RING:
            k = max(k, 8) if n >= 500 else k
        members = perm[pos:pos + k]
        pattern[members] = p
        pos += k
        if p == P_RING and k:
            sizes = rng.integers(sc.ring_size[0], sc.ring_size[1] + 1, k)  # rings of 4-8 accounts by default
            ring_of = np.repeat(np.arange(k), sizes)[:k]
            ring_id[members] = ring_of
    abuser = pattern != P_NORMAL
    # Some abusers only start later (a behaviour change), so later-time evaluation sees new cases.
    late_start = rng.random(n) < sc.late_start
    start = np.where(late_start, rng.integers(0, max(1, int(w.days * 0.85)), n), 0)
    if (ring_id >= 0).any():  # a ring starts together
        first = pd.Series(start[ring_id >= 0]).groupby(ring_id[ring_id >= 0]).transform("min").to_numpy()
        start[ring_id >= 0] = first
    abuse_start = np.where(abuser, start, 10**9)
    join_day = np.where(abuser, np.minimum(join_day, np.maximum(start - 30, 0)), join_day)
    activity = np.where(pattern == P_SERIAL, np.maximum(activity, 0.6) * 1.5, activity)
    if sc.heavy_buyer_share > 0:  # abusers who also buy a lot (their returns are a smaller share of their orders)
        heavy = abuser & (rng.random(n) < sc.heavy_buyer_share)
        activity = np.where(heavy, np.maximum(activity, 0.8) * sc.heavy_buyer_mult, activity)
    bracketer &= pattern == P_NORMAL
    return {"join_day": join_day, "activity": activity, "propensity": propensity, "region": region,
            "bracketer": bracketer,
            "pattern": pattern, "ring_id": ring_id, "abuse_start": abuse_start}


def _orders(rng: np.random.Generator, w: _World, acc: dict[str, Arr], mer: dict[str, Arr], n_accounts: int,
            market_majors: Arr, sc: Scenario) -> dict[str, Arr]:
    """Order headers: account (or guest), day, merchant; plus wardrobing orders placed just before events."""
    cum = np.cumsum(w.demand)
    n_acc_orders_target = n_accounts * ORDERS_PER_ACCOUNT_YEAR * w.days / 365
    join, start = acc["join_day"], np.minimum(acc["abuse_start"], w.days)
    start = np.maximum(start, join)
    cum0 = np.concatenate([[0.0], cum])
    # Serial returners buy a lot once they start; their orders before that look normal.
    after_mult = np.where(acc["pattern"] == P_SERIAL, sc.serial_after_mult,
                          np.where(acc["pattern"] == P_RING, 1.2, 1.0))
    w_before = cum0[start] - cum0[join]
    w_after = (cum0[w.days] - cum0[start]) * after_mult
    scale = n_acc_orders_target / float(np.sum(acc["activity"] * (w_before + w_after)) or 1.0)
    n_before = rng.poisson(acc["activity"] * w_before * scale)
    n_after = rng.poisson(acc["activity"] * w_after * scale)
    a_before = np.repeat(np.arange(n_accounts), n_before)
    a_after = np.repeat(np.arange(n_accounts), n_after)
    d_before = _sample_days(rng, cum, join[a_before], np.maximum(start[a_before], join[a_before] + 1))
    d_after = _sample_days(rng, cum, start[a_after], np.full(len(a_after), w.days))
    account = np.concatenate([a_before, a_after])
    day = np.concatenate([d_before, d_after])
    # Guests follow the same demand curve, scaled by how many accounts exist on the day (platform growth).
    active = np.cumsum(np.bincount(join, minlength=w.days)[:w.days])
    g_cum = np.cumsum(w.demand * active)
    n_guest = rng.poisson(len(account) * GUEST_ORDER_SHARE / (1 - GUEST_ORDER_SHARE))
    g_day = _sample_days(rng, g_cum, np.zeros(n_guest, dtype=np.int64), np.full(n_guest, w.days))
    account = np.concatenate([account, np.full(n_guest, -1)])
    day = np.concatenate([day, g_day])
    wardrobe_event = np.full(len(day), -1, dtype=np.int64)
    # Wardrobing: apparel/shoes bought 1-6 days before an event or holiday, returned right after it.
    wardrobers = np.where(acc["pattern"] == P_WARDROBE)[0]
    if len(wardrobers) and len(market_majors):
        wa, we = np.meshgrid(wardrobers, market_majors, indexing="ij")
        wa, we = wa.ravel(), we.ravel()
        keep = (we >= acc["abuse_start"][wa]) & (we >= 7) & (rng.random(len(wa)) < 0.5)
        wa, we = wa[keep], we[keep]
        k = 1 + rng.poisson(0.4, len(wa))
        wa, we = np.repeat(wa, k), np.repeat(we, k)
        wd = we - rng.integers(1, 7, len(we))
        account = np.concatenate([account, wa])
        day = np.concatenate([day, wd])
        wardrobe_event = np.concatenate([wardrobe_event, we])
    n = len(day)
    secs = (rng.choice(24, n, p=ORDER_HOURS / ORDER_HOURS.sum()) * 3600 + rng.integers(0, 3600, n))
    ordered_s = w.start_s + day.astype(np.int64) * DAY + secs
    is_wardrobe = wardrobe_event >= 0
    sampler = _MerchantSampler(mer["join_day"], mer["size"])
    merchant = sampler.sample(rng, day)
    fashion = np.where(np.isin(mer["category"], [APPAREL, SHOES]))[0]
    if is_wardrobe.any() and len(fashion):
        merchant[is_wardrobe] = _MerchantSampler(mer["join_day"], mer["size"], fashion).sample(
            rng, day[is_wardrobe])
    o = np.argsort(ordered_s, kind="stable")  # order IDs follow time, as on a real platform
    return {"account": account[o], "day": day[o], "ordered_s": ordered_s[o], "merchant": merchant[o],
            "wardrobe_event": wardrobe_event[o]}


def _lines(rng: np.random.Generator, w: _World, orders: dict[str, Arr], acc: dict[str, Arr],
           mer: dict[str, Arr], sc: Scenario) -> dict[str, Arr]:
    """Order lines with category, price, quantity and the delivery outcome."""
    n_orders = len(orders["day"])
    n_lines = np.minimum(1 + rng.poisson(0.35, n_orders), 6)
    oi = np.repeat(np.arange(n_orders), n_lines)
    first = np.concatenate([[0], np.cumsum(n_lines)[:-1]])
    line_no = np.arange(len(oi)) - np.repeat(first, n_lines) + 1
    n = len(oi)
    m = orders["merchant"][oi]
    a = orders["account"][oi]
    day = orders["day"][oi]
    wardrobe = orders["wardrobe_event"][oi] >= 0
    cat = np.where(rng.random(n) < 0.85, mer["category"][m], rng.choice(len(CATEGORIES), n, p=CAT_SHARE))
    cat = np.where(wardrobe & ~np.isin(cat, [APPAREL, SHOES]), APPAREL, cat)
    price = np.exp(np.log(CAT_PRICE_MEDIAN[cat]) + CAT_PRICE_SIGMA[cat] * rng.standard_normal(n))
    price = np.where(wardrobe, price * 1.6, price)  # wardrobers pick the outfit, not the basics
    qty = 1 + np.where(cat == GROCERY, rng.poisson(1.2, n), rng.poisson(0.15, n))
    amount = np.round(price * qty, 2)
    region_acc = np.where(a >= 0, acc["region"][np.maximum(a, 0)], rng.choice(len(REGIONS), n, p=REGION_SHARE))
    # Region is per order: use the first line's draw for guest orders too.
    region = region_acc[np.repeat(first, n_lines)]
    # Delivery: promised 2-5 days out; actual = base + region + merchant lateness + event congestion + shutdown.
    ordered_s = orders["ordered_s"][oi]
    promise_days = (rng.integers(2, 5, n_orders) + (REGION_EXTRA_DAYS >= 1.0)[region[first]])[oi]
    promised_s = (ordered_s // DAY + promise_days) * DAY + 20 * 3600
    late_mean, defect, bad, ramp = _merchant_state(mer, m, day)
    # One delivery per order: draw per order, share across its lines.
    o_m = orders["merchant"]
    o_late_mean = _merchant_state(mer, o_m, orders["day"])[0]
    o_region = region[first]
    o_days = (_lognormal_days(rng, 2.2, 0.3, n_orders) + REGION_EXTRA_DAYS[o_region]
              + rng.exponential(1.0, n_orders) * o_late_mean
              + rng.exponential(1.0, n_orders) * w.congestion[orders["day"]])
    o_deliv = orders["ordered_s"] + (o_days * DAY).astype(np.int64)
    for lo, hi in w.shutdown:  # parcels that would arrive during the shutdown wait until it ends
        lo_s, hi_s = w.start_s + lo * DAY, w.start_s + (hi + 1) * DAY
        stuck = (o_deliv >= lo_s) & (o_deliv < hi_s)
        o_deliv = np.where(stuck, hi_s + (rng.random(n_orders) * 2.5 * DAY).astype(np.int64), o_deliv)
    o_lost = rng.random(n_orders) < 0.004 + 0.02 * np.minimum(o_late_mean, 3.0)
    deliv_s = o_deliv[oi]
    lost = o_lost[oi]
    not_yet = deliv_s > w.end_s
    delivered = ~lost & ~not_yet
    gift_p = np.full(n, sc.gift_share)
    if sc.holiday_instability is not None:  # each year's gift season has its own size
        year = pd.to_datetime(ordered_s, unit="s").year.to_numpy()
        factor = 1 + sc.holiday_instability * rng.uniform(-1, 1, year.max() - year.min() + 1)
        gift_p = np.clip(gift_p * factor[year - year.min()], 0, 1)
    return {"order": oi, "line_no": line_no, "merchant": m, "account": a, "day": day, "category": cat,
            "unit_price": price, "quantity": qty, "amount": amount, "region": region, "ordered_s": ordered_s,
            "promised_s": promised_s, "delivered_s": deliv_s, "delivered": delivered, "lost": lost & ~not_yet,
            "bad": bad, "late_mean": late_mean, "defect": defect, "ramp": ramp,
            "wardrobe_event": orders["wardrobe_event"][oi],
            "gift": w.gift_day[day] & (rng.random(n) < gift_p), "first_line": line_no == 1}


def _change_delay(rng: np.random.Generator, sc: Scenario, c: Arr, k: int) -> Arr:
    """Days from delivery to a change-of-mind/fit return request, by category: the scenario's mean and shape."""
    if sc.delay_mean is None:
        return _lognormal_days(rng, CAT_DELAY_MEDIAN[c], 0.5, k)
    mean = np.asarray(sc.delay_mean)[c]
    spread = np.asarray(sc.delay_spread)[c]
    shape = np.asarray(sc.delay_shape)[c]
    sigma = np.clip(spread, 0.05, 2.0)
    logn = np.exp(np.log(mean) - sigma**2 / 2 + sigma * rng.standard_normal(k))  # mean-preserving lognormal
    g_shape = np.clip(spread, 0.1, None)
    gam = rng.gamma(g_shape, mean / g_shape)
    # Mixture: a fast share (unboxing regret, mean 30% of the category mean) and a slow tail keeping the mean.
    fast_share = np.clip(spread, 0.05, 0.95)
    fast_mean = np.maximum(0.3 * mean, 0.7)
    slow_mean = np.maximum((mean - fast_share * fast_mean) / (1 - fast_share), fast_mean)
    fast = rng.random(k) < fast_share
    mix = np.exp(np.log(np.where(fast, fast_mean, slow_mean)) - 0.08 + 0.4 * rng.standard_normal(k))
    out = np.select([shape == "lognormal", shape == "gamma"], [logn, gam], mix)
    return np.clip(out, 0.05, 120.0)


def _returns(rng: np.random.Generator, w: _World, ln: dict[str, Arr], acc: dict[str, Arr],
             mer: dict[str, Arr], sc: Scenario) -> dict[str, Arr]:
    """Return requests: per-line hazards by cause (category x merchant x account x season x abuse), then timing."""
    n = len(ln["day"])
    cat, m, a, day = ln["category"], ln["merchant"], ln["account"], ln["day"]
    known = a >= 0
    ai = np.maximum(a, 0)
    prop = np.where(known, acc["propensity"][ai], 1.0)
    pattern = np.where(known, acc["pattern"][ai], P_NORMAL)
    abusing = known & (day >= acc["abuse_start"][ai])
    pat = np.where(abusing, pattern, P_NORMAL)
    gift = np.where(ln["gift"], sc.gift_mult, 1.0)  # unwanted presents
    defect = ln["defect"]
    late_days = np.where(ln["delivered"], (ln["delivered_s"] - ln["promised_s"]) / DAY, 0.0)
    h = np.zeros((n, len(REASONS)))
    cat_fit, cat_mind = np.asarray(sc.cat_fit), np.asarray(sc.cat_mind)
    q = np.asarray(sc.cat_quality)[cat] * defect
    h[:, R_DEF] = q * 0.6
    h[:, R_NAD] = q * 0.4
    small_claims = np.where(cat == GROCERY, 0.5, 1.0)  # cheap perishables: fewer claims worth the effort
    h[:, R_WRONG] = 0.004 * mer["attitude"][m] ** 0.5 * small_claims
    bracket = np.where(known & acc["bracketer"][ai], 4.0, 1.0)
    h[:, R_FIT] = cat_fit[cat] * prop * gift * bracket
    h[:, R_MIND] = cat_mind[cat] * prop * gift
    h[:, R_DAMAGED] = 0.005 * (1 + 0.4 * ln["late_mean"]) * small_claims
    h[:, R_NOTREC] = np.where(ln["lost"], 0.85, np.where(late_days > 5, 0.05, 0.0))
    h[:, R_OTHER] = 0.003 * small_claims
    serial = pat == P_SERIAL
    # Serial returners send back most non-perishables (groceries rarely come back, even from them).
    h[serial, R_MIND] = np.maximum(h[serial, R_MIND] * 6, np.where(cat[serial] == GROCERY, 0.03, sc.serial_mind))
    h[serial, R_FIT] *= 4
    rwr = pat == P_RWR
    h[rwr, R_NOTREC] += sc.rwr_claim * ln["delivered"][rwr]
    h[rwr, R_DAMAGED] += 0.10
    ring = pat == P_RING
    h[ring, R_MIND] *= sc.ring_mult
    h[ring, R_FIT] *= sc.ring_mult
    h[ring, R_NOTREC] += 0.04 * ln["delivered"][ring]
    h[ring, R_DAMAGED] += 0.02
    wardrobe = ln["wardrobe_event"] >= 0
    h[wardrobe, R_MIND] = 0.5
    h[wardrobe, R_FIT] = 0.35
    total = h.sum(axis=1)
    cap = np.minimum(total, 0.93)
    ret = rng.random(n) < cap
    idx = np.where(ret)[0]
    reason = _cat_sample(rng, h[idx])
    # Timing: from delivery (or from the promise for parcels that never came), by cause and category.
    k = len(idx)
    c = cat[idx]
    deliv = ln["delivered_s"][idx]
    anchor = np.where(ln["delivered"][idx], deliv, ln["promised_s"][idx])
    delay = np.select(
        [np.isin(reason, [R_FIT, R_MIND]), np.isin(reason, [R_DEF, R_NAD]), reason == R_WRONG,
         reason == R_DAMAGED, reason == R_NOTREC],
        [_change_delay(rng, sc, c, k), _lognormal_days(rng, 5.0, 0.6, k),
         _lognormal_days(rng, 3.0, 0.5, k), _lognormal_days(rng, 1.5, 0.5, k),
         rng.uniform(2, 15, k)],
        _lognormal_days(rng, 7.0, 0.7, k))
    req = anchor + (delay * DAY).astype(np.int64)
    # Gifts are unwrapped at Christmas: unwanted ones come back in a January wave.
    gift_ret = ln["gift"][idx] & np.isin(reason, [R_FIT, R_MIND]) & ln["delivered"][idx]
    if k:
        year = pd.to_datetime(ln["ordered_s"][idx], unit="s").year.to_numpy()
        y0 = int(year.min())
        boxing_day = np.array([pd.Timestamp(year=y, month=12, day=26, tz="UTC").timestamp()
                               for y in range(y0, int(year.max()) + 1)], dtype=np.int64)  # one per year
        after = (np.maximum(deliv, boxing_day[year - y0])
                 + (_lognormal_days(rng, sc.wave_median, 0.5, k) * DAY).astype(np.int64))
        req = np.where(gift_ret, after, req)
    # Wardrobers return a few days after the event, whatever the delivery took.
    we = ln["wardrobe_event"][idx]
    wr = (we >= 0) & np.isin(reason, [R_FIT, R_MIND]) & ln["delivered"][idx]
    ev_back = w.start_s + we * DAY + rng.integers(1, 6, k) * DAY + rng.integers(8 * 3600, 23 * 3600, k)
    req = np.where(wr, np.maximum(ev_back, deliv + 3600), req)
    req = req + rng.integers(0, 3600, k)
    # Weekly cycle of requests: many weekend returns wait for Monday (drop-off points, people's routines).
    dow = ((req // DAY) + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    wait = np.where(dow >= 5, rng.random(k) < sc.weekend_wait, False)
    req = np.where(wait, req + (7 - dow) * DAY, req)
    keep = req <= w.end_s - 60
    idx, reason, req = idx[keep], reason[keep], req[keep]
    k = len(idx)
    qty = ln["quantity"][idx]
    rqty = np.where(qty > 1, 1 + rng.binomial(np.maximum(qty - 1, 0), 0.6), 1)
    pat_r = pat[idx]
    full = ~np.isin(reason, [R_FIT, R_MIND]) | (pat_r != P_NORMAL) | (rng.random(k) < 0.7)
    share = np.where(full, 1.0, rng.uniform(0.85, 0.99, k))  # restocking deduction on some change-of-mind refunds
    refund = np.round(ln["unit_price"][idx] * rqty * share, 2)
    # Refund without return: parcels "not received", many "damaged" ones, and abusers' claims.
    abuse_claim = np.isin(pat_r, [P_RWR, P_RING]) & np.isin(reason, [R_NOTREC, R_DAMAGED])
    returned = ~((reason == R_NOTREC) | ((reason == R_DAMAGED) & (rng.random(k) < 0.6)) | abuse_claim
                 | ((refund < 10) & (rng.random(k) < 0.1)))
    returned_null = rng.random(k) < 0.02
    order_null = rng.random(k) < 0.03  # the original order is not always known
    o = np.argsort(req, kind="stable")
    return {"line": idx[o], "reason": reason[o], "requested_s": req[o], "quantity": rqty[o], "refund": refund[o],
            "item_returned": returned[o], "returned_null": returned_null[o], "order_null": order_null[o]}


def _tickets(rng: np.random.Generator, w: _World, ln: dict[str, Arr], rt: dict[str, Arr], acc: dict[str, Arr],
             mer: dict[str, Arr], sc: Scenario) -> dict[str, Arr]:
    """Customer-service cases from returns, late/lost parcels, quality problems and inquiries; escalation."""
    parts: list[dict[str, Arr]] = []

    def add(line: Arr, case: Arr, created: Arr, amount: Arr, has_order: Arr | None = None) -> None:
        parts.append({"line": line, "case": case, "created": created.astype(np.int64), "amount": amount,
                      "has_order": np.ones(len(line), bool) if has_order is None else has_order})

    # (a) From returns: not every return needs an agent; problems do more often than changes of mind.
    r_line, reason = rt["line"], rt["reason"]
    p_ticket = np.array([0.45, 0.45, 0.4, 0.2, 0.15, 0.6, 0.6, 0.3])[reason]
    sel = rng.random(len(r_line)) < p_ticket
    rs = reason[sel]
    case_w = np.zeros((len(rs), 8))
    case_w[:, C_RETURN] = np.select([np.isin(rs, [R_DEF, R_NAD]), rs == R_FIT, rs == R_MIND], [0.4, 0.5, 0.7], 0.3)
    case_w[:, C_REFUND] = np.select([rs == R_NOTREC, rs == R_DAMAGED, rs == R_MIND], [0.5, 0.6, 0.3], 0.25)
    case_w[:, C_EXCHANGE] = np.select([rs == R_FIT, rs == R_WRONG, np.isin(rs, [R_DEF, R_NAD])], [0.5, 0.5, 0.1], 0)
    case_w[:, C_QUALITY] = np.where(np.isin(rs, [R_DEF, R_NAD]), 0.2, 0.0)
    case_w[:, C_LOGISTICS] = np.where(rs == R_NOTREC, 0.5, 0.0)
    add(r_line[sel], _cat_sample(rng, case_w), rt["requested_s"][sel] + rng.integers(0, int(1.5 * DAY), len(rs)),
        rt["refund"][sel])
    # (b) Logistics: late parcels (more, the later) and lost ones, one case per order.
    fl = np.where(ln["first_line"])[0]
    late_days = (ln["delivered_s"][fl] - ln["promised_s"][fl]) / DAY
    p_late = np.where(ln["lost"][fl], 0.7, np.clip(0.07 * (late_days - 0.8), 0, 0.6))
    sel = rng.random(len(fl)) < p_late
    li = fl[sel]
    span = np.where(ln["lost"][li], 10.0, np.maximum(late_days[sel], 0.6))
    created = ln["promised_s"][li] + (rng.uniform(0.3, 1.0, len(li)) * span * DAY).astype(np.int64)
    add(li, np.full(len(li), C_LOGISTICS), created, ln["amount"][li])
    # (c) Complaints about the merchant: late/lost parcels and quality returns, plus a small base rate. For a
    # merchant that deteriorates, customers' patience runs out gradually: complaints lag the operational signals.
    n = len(ln["day"])
    q_ret = np.zeros(n, bool)
    q_ret[r_line[np.isin(reason, [R_DEF, R_NAD, R_WRONG])]] = True
    m = ln["merchant"]
    line_late = np.where(ln["delivered"], (ln["delivered_s"] - ln["promised_s"]) / DAY, 0.0)
    ramp = ln["ramp"]
    p_c = mer["attitude"][m] * ramp * (0.0015 + 0.03 * (line_late > 2) + 0.03 * (line_late > 5) + 0.12 * q_ret
                                       + 0.12 * ln["lost"])
    p_c_line = p_c
    sel = rng.random(n) < p_c
    li = np.where(sel)[0]
    anchor = np.where(ln["delivered"][li], ln["delivered_s"][li], ln["promised_s"][li])
    created = anchor + (_lognormal_days(rng, sc.complaint_delay, 0.5, len(li)) * DAY).astype(np.int64)
    case = np.where(q_ret[li] & (rng.random(len(li)) < 0.3), C_QUALITY, C_COMPLAINT)
    add(li, case, created, ln["amount"][li])
    # (d) Inquiries (some before buying, without an order) and other cases.
    sel = rng.random(len(fl)) < 0.028
    li = fl[sel]
    add(li, np.where(rng.random(len(li)) < 0.9, C_INQUIRY, C_OTHER),
        ln["ordered_s"][li] + (rng.uniform(0, 10, len(li)) * DAY).astype(np.int64), ln["amount"][li],
        has_order=rng.random(len(li)) >= 0.3)
    t = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    # (e) Follow-ups: unresolved cases come back (the "third time I contact you" customers).
    for p_follow in (0.14, 0.3):
        base = np.where((rng.random(len(t["line"])) < p_follow) & (t["case"] != C_INQUIRY))[0]
        if not len(base):
            continue
        fu = {k: v[base] for k, v in t.items()}
        fu["created"] = fu["created"] + (rng.uniform(1, 8, len(base)) * DAY).astype(np.int64)
        t = {k: np.concatenate([t[k], fu[k]]) for k in t}
    keep = t["created"] <= w.end_s - 60
    t = {k: v[keep] for k, v in t.items()}
    o = np.lexsort((t["line"], t["created"]))
    t = {k: v[o] for k, v in t.items()}
    n_t = len(t["line"])
    li = t["line"]
    # Hour-of-day profile: move the created time into the day's customer-service hours.
    cday = t["created"] // DAY
    hour = rng.choice(24, n_t, p=TICKET_HOURS / TICKET_HOURS.sum())
    t["created"] = np.maximum(cday * DAY + hour * 3600 + rng.integers(0, 3600, n_t), ln["ordered_s"][li] + 60)
    t["created"] = np.minimum(t["created"], w.end_s - 60)
    o = np.argsort(t["created"], kind="stable")
    t = {k: v[o] for k, v in t.items()}
    li = t["line"]
    a = ln["account"][li]
    m = ln["merchant"][li]
    tday = np.clip((t["created"] - w.start_s) // DAY, 0, w.days - 1)
    # Escalation drivers a model can learn from the ticket and its context.
    known = a >= 0
    ai = np.maximum(a, 0)
    abuser = known & (tday >= acc["abuse_start"][ai])
    akey = np.where(known, a, -1 - np.arange(n_t))  # guests never share history
    srt = np.lexsort((t["created"], akey))
    key_sorted = akey[srt].astype(np.int64) * (10**10) + t["created"][srt]
    prior = (np.searchsorted(key_sorted, key_sorted, side="left")
             - np.searchsorted(key_sorted, key_sorted - 30 * DAY, side="left"))
    repeat = np.empty(n_t, dtype=np.int64)
    repeat[srt] = prior
    daily = np.bincount(tday, minlength=w.days).astype(float)
    load = daily[tday] / max(np.median(daily[daily > 0]) if (daily > 0).any() else 1.0, 1.0)
    lateness = np.where(ln["delivered"][li], (ln["delivered_s"][li] - ln["promised_s"][li]) / DAY,
                        np.where(ln["lost"][li], 10.0, 0.0))
    lateness = np.clip(lateness, 0, 15)
    # The platform's view of a merchant gone bad builds up with its reputation (same lag as complaints).
    _, _, bad_state, ramp_now = _merchant_state(mer, m, tday)
    bad_now = bad_state * ramp_now
    anger = rng.standard_normal(n_t) + 0.35 * np.minimum(repeat, 3) + 0.1 * lateness
    chan_w = np.tile(CHANNEL_SHARE, (n_t, 1))
    chan_w[:, 1] *= np.exp(0.5 * np.clip(anger, 0, None))  # angry customers call
    channel = _cat_sample(rng, chan_w)
    amount = t["amount"]
    ew = sc.esc_weights
    contrib = np.column_stack([
        np.asarray(sc.case_logit)[t["case"]],
        ew["merchant"] * bad_now + ew["attitude"] * np.log(mer["attitude"][m]),
        ew["amount"] * np.log1p(amount / 50.0),
        ew["lateness"] * lateness,
        ew["repeat"] * np.minimum(repeat, 4),
        ew["abuser"] * abuser,
        ew["peak_load"] * np.clip(load - 1.0, 0, 2),
        ew["wording"] * anger,
        np.asarray(sc.channel_logit)[channel],
    ])
    z = contrib.sum(axis=1)
    lo, hi = -15.0, 15.0
    for _ in range(50):  # calibrate the intercept so the base rate is the scenario's escalation rate
        mid = (lo + hi) / 2
        if np.mean(1 / (1 + np.exp(-(z + mid)))) > sc.escalation_rate:
            hi = mid
        else:
            lo = mid
    p_esc = 1 / (1 + np.exp(-(z + (lo + hi) / 2)))
    escalated = rng.random(n_t) < p_esc
    cause = np.array(ESCALATION_CAUSES)[np.argmax(contrib - np.median(contrib, axis=0), axis=1)]
    cause = np.where(escalated, cause, "none")
    # Resolution: hours to close, longer in peaks and for escalated cases; cases still open at the end are unknown.
    hours = _lognormal_days(rng, 18.0, 0.8, n_t) * (1 + 0.5 * np.clip(load - 1, 0, 2)) * np.where(escalated, 3.0, 1.0)
    resolved = t["created"] + (hours * 3600).astype(np.int64)
    open_ = resolved > w.end_s
    text = _ticket_text(rng, t["case"], rt, li, anger, repeat, lateness, ln, sc)
    return {"line": li, "case": t["case"], "created": t["created"], "amount": amount, "has_order": t["has_order"],
            "channel": channel, "escalated": escalated, "open": open_, "resolved": resolved, "text": text,
            "cause": cause, "p_escalate": p_esc, "account": a, "merchant": m, "p_complaint_line": p_c_line,
            "day": tday}


_TEMPLATES = {
    C_RETURN: ["I want to return this item", "How do I send this back?", "Return request for my order"],
    C_REFUND: ["When will I get my refund?", "I want my money back", "Refund not received yet"],
    C_EXCHANGE: ["Can I exchange this for another size?", "Wrong size, need an exchange", "Please exchange the item"],
    C_COMPLAINT: ["I am very unhappy with this seller", "The seller ignores my messages", "Complaint about the shop"],
    C_LOGISTICS: ["My parcel is still not arrived", "Where is my order? Tracking has not moved",
                  "Delivery is late, still not arrived"],
    C_QUALITY: ["The item arrived broken", "This looks fake, not the original brand", "Poor quality, it broke"],
    C_INQUIRY: ["Is this item in stock?", "Question about the product size", "Can you tell me the delivery time?"],
    C_OTHER: ["I need help with my account", "Please call me back", "Question about an invoice"],
}

def _ticket_text(rng: np.random.Generator, case: Arr, rt: dict[str, Arr], li: Arr, anger: Arr, repeat: Arr,
                 lateness: Arr, ln: dict[str, Arr], sc: Scenario) -> Arr:
    """The first message: a case template, cause keywords, and angry phrases that track the customer's anger."""
    n = len(case)
    pick = rng.integers(0, 3, n)
    table = np.array([_TEMPLATES[c][j] for c in range(8) for j in range(3)])
    text = table[case * 3 + pick].astype(object)
    ret_reason = np.full(len(ln["day"]), -1)
    ret_reason[rt["line"]] = rt["reason"]
    rr = ret_reason[li]
    text = np.where(rr == R_DEF, text + " It is broken.", text)
    text = np.where((rr == R_NAD) & (rng.random(n) < 0.5), text + " Looks fake, not as described.", text)
    text = np.where(rr == R_NOTREC, text + " The parcel never arrived.", text)
    text = np.where((lateness > 3) & (case != C_LOGISTICS), text + " Delivery was very late.", text)
    if sc.repeat_phrases is None:
        text = np.where((repeat >= 2) & (rng.random(n) < 0.8), text + " This is the third time I contact you.", text)
        text = np.where((repeat == 1) & (rng.random(n) < 0.5), text + " Second time asking.", text)
    else:
        phrases = np.array([" " + p for p in sc.repeat_phrases], dtype=object)
        said = (repeat >= 1) & (rng.random(n) < 0.65)
        text = np.where(said, text + phrases[rng.integers(0, len(phrases), n)], text)
    angry = rng.random(n) < 1 / (1 + np.exp(-(sc.anger_text_slope * anger - 1.8)))
    angry_phrases = np.array(sc.angry_phrases)
    text = np.where(angry, text + angry_phrases[rng.integers(0, len(angry_phrases), n)], text)
    return text.astype(str)


def _links(rng: np.random.Generator, acc: dict[str, Arr], sc: Scenario) -> tuple[Arr, Arr, Arr]:
    """Account identifiers: own values, households sharing an address, rings sharing device/payment/address."""
    n = len(acc["join_day"])
    types = np.array(["address", "device", "payment", "phone", "email"])
    vals = rng.integers(1, 2**62, size=(n, 5), dtype=np.int64)
    # Households of 2-3 share an address (and sometimes a card): sharing alone is not proof of abuse.
    normal = np.where(acc["pattern"] == P_NORMAL)[0]
    hh = rng.permutation(normal)[: int(0.12 * n)]
    hsize = rng.integers(2, 4, len(hh))
    head = np.repeat(hh[np.cumsum(hsize) - hsize < len(hh)], hsize[np.cumsum(hsize) - hsize < len(hh)])[:len(hh)]
    vals[hh, 0] = vals[head, 0]
    share_pay = rng.random(len(hh)) < 0.2
    vals[hh[share_pay], 2] = vals[head[share_pay], 2]
    share_dev = rng.random(len(hh)) < 0.3  # the family tablet
    vals[hh[share_dev], 1] = vals[head[share_dev], 1]
    # Rings: most members use the same device; many the same card or address.
    ring = np.where(acc["ring_id"] >= 0)[0]
    if len(ring):
        rid = acc["ring_id"][ring]
        ring_vals = rng.integers(1, 2**62, size=(rid.max() + 1, 3), dtype=np.int64)
        share = rng.random((len(ring), 3)) < np.array(sc.ring_share_p)  # address, device, payment
        if sc.is_default:
            share[share.sum(axis=1) < 2, 1:3] = True  # every member shares at least two identifiers
        else:  # the ring shares only the scenario's subset of identifiers; every member at least one of them
            allowed = np.array([k in sc.ring_shared for k in ("address", "device", "payment")])
            share &= allowed
            none = share.sum(axis=1) == 0
            pick = rng.choice(np.where(allowed)[0], int(none.sum()))
            share[np.where(none)[0], pick] = True
        for j, col in enumerate((0, 1, 2)):
            vals[ring[share[:, j]], col] = ring_vals[rid[share[:, j]], j]
    acc_idx = np.repeat(np.arange(n), 5)
    link_type = np.tile(types, n)
    link_val = vals.ravel()
    # A fifth of accounts also log in from a second device.
    extra = np.where(rng.random(n) < 0.2)[0]
    acc_idx = np.concatenate([acc_idx, extra])
    link_type = np.concatenate([link_type, np.full(len(extra), "device")])
    extra_val = rng.integers(1, 2**62, len(extra), dtype=np.int64)
    # Some second devices are shared public ones (an office PC, a shop's tablet): many unrelated accounts on one
    # device, so a shared device alone is not proof of a ring either.
    public = rng.random(len(extra)) < 0.07
    pool = rng.integers(1, 2**62, max(3, n // 2000), dtype=np.int64)
    extra_val[public] = pool[rng.integers(0, len(pool), int(public.sum()))]
    link_val = np.concatenate([link_val, extra_val])
    o = np.lexsort((link_type, acc_idx))
    prefix = np.char.add(np.array([t[:3] for t in types])[np.argmax(link_type[o][:, None] == types, axis=1)], "_")
    hexed = np.char.add(prefix, np.char.mod("%016x", link_val[o].astype(np.uint64)))
    return acc_idx[o], link_type[o], hexed


def _reviews(rng: np.random.Generator, w: _World, acc: dict[str, Arr], ln: dict[str, Arr],
             rt: dict[str, Arr]) -> dict[str, Arr]:
    """Prior risk-team decisions: a biased sample (heavy returners plus some random accounts), 5% reviewer error."""
    n = len(acc["join_day"])
    cutoff = int(w.days * 0.6)
    k = int(np.clip(round(0.0125 * n), min(30, n), 300))
    r_acc = ln["account"][rt["line"]]
    r_day = (rt["requested_s"] - w.start_s) // DAY
    counts = np.bincount(r_acc[(r_acc >= 0) & (r_day < cutoff)], minlength=n)
    n_top = int(0.7 * k)
    top_pool = np.argsort(-counts, kind="stable")[: max(3 * n_top, 1)]
    top = rng.choice(top_pool, min(n_top, len(top_pool)), replace=False)
    rest = np.setdiff1d(np.where(counts > 0)[0], top)
    rand = rng.choice(rest, min(k - len(top), len(rest)), replace=False) if len(rest) else np.array([], int)
    who = np.sort(np.concatenate([top, rand]).astype(np.int64))
    day = rng.integers(int(w.days * 0.15), max(int(w.days * 0.15) + 1, cutoff), len(who))
    abusing = (acc["pattern"][who] != P_NORMAL) & (acc["abuse_start"][who] <= day)
    wrong = rng.random(len(who)) < 0.05
    confirmed = abusing ^ wrong
    decided = w.start_s + day * DAY + rng.integers(9 * 3600, 18 * 3600, len(who))
    notes = np.where(confirmed, "return pattern consistent with policy abuse", "returns explained by normal use")
    note_null = rng.random(len(who)) < 0.3
    o = np.argsort(decided, kind="stable")
    return {"account": who[o], "confirmed": confirmed[o], "decided": decided[o],
            "reviewer": REVIEWERS[rng.integers(0, len(REVIEWERS), len(who))][o], "note": notes[o],
            "note_null": note_null[o]}


def _write(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression="zstd")


def generate_world(out_dir: Path | str, seed: int = 42, accounts: int = 20_000, merchants: int = 400,
                   start: str = "2023-01-01", days: int = 730, market: str = "CN", progress: bool = True,
                   settings: Settings | None = None, scenario: Scenario | None = None) -> dict:
    """Generate a synthetic after-sales world into ``out_dir``; return a summary (row counts, paths, seconds).

    Writes the contract tables as Parquet (orders, returns, tickets, account_links, review_decisions) and the
    ground truth under ``out_dir/truth/``. Same arguments, same bytes. Order volume scales with ``accounts``
    (about 20 order lines per account over two years). A ``scenario`` (``features.scenarios``) sets every mechanic
    and its own market, start and days (which then replace the arguments); without one the default world is made.
    """
    if scenario is None:
        scenario = default_scenario(market, start, int(days))
    sc = scenario
    market, start, days = sc.market, sc.start, int(sc.days)
    if accounts < 50 or merchants < 5 or days < 60:
        raise ValueError(f"world too small (accounts={accounts}, merchants={merchants}, days={days}): "
                         "use at least 50 accounts, 5 merchants and 60 days")
    first = pd.Timestamp(start)
    last_day = first + pd.Timedelta(days=int(days))
    if last_day > pd.Timestamp.now().normalize() + pd.Timedelta(days=1):
        raise ValueError(f"the world would end on {last_day.date()}, in the future: the input contract rejects "
                         "future timestamps, so choose an earlier --start or fewer --days")
    t0 = time.perf_counter()
    settings = settings or Settings()
    out = Path(out_dir)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    steps = tqdm(total=8, desc="generate", disable=not progress, unit="step")

    def step(label: str) -> None:
        steps.set_postfix_str(label)
        steps.update(1)

    w = _day_grid(rng, pd.Timestamp(start), int(days), market, settings, sc)
    ev = market_events(market, w.start, w.start + pd.Timedelta(days=days - 1), settings)
    big = ev[ev["size"] >= SIZE_CLASSES["medium"]]
    event_days = np.unique(((big["date"] - w.start).dt.days).to_numpy())
    # One wardrobing occasion per event block (first day of consecutive days).
    event_days = event_days[np.concatenate([[True], np.diff(event_days) > 1])] if len(event_days) else event_days
    mer = _merchants(rng, merchants, w, sc)
    acc = _accounts(rng, accounts, w, sc)
    step("accounts & merchants")
    orders = _orders(rng, w, acc, mer, accounts, event_days, sc)
    ln = _lines(rng, w, orders, acc, mer, sc)
    step("orders")
    rt = _returns(rng, w, ln, acc, mer, sc)
    step("returns")
    tk = _tickets(rng, w, ln, rt, acc, mer, sc)
    step("tickets")
    link_acc, link_type, link_val = _links(rng, acc, sc)
    rv = _reviews(rng, w, acc, ln, rt)
    step("links & reviews")

    acc_ids, mer_ids = _ids("A", accounts), _ids("M", merchants)
    order_ids = _ids("O", len(orders["day"]), width=max(len(str(len(orders["day"]))), 7))
    cat_names = pa.array(np.array(CATEGORIES))
    orders_tbl = pa.table({
        "order_id": order_ids.take(pa.array(ln["order"])),
        "line_no": pa.array(ln["line_no"].astype(np.int64)),
        "account_id": _take(acc_ids, ln["account"]),
        "merchant_id": mer_ids.take(pa.array(ln["merchant"])),
        "ordered_at": _ts(ln["ordered_s"]),
        "category": cat_names.take(pa.array(ln["category"])),
        "quantity": pa.array(ln["quantity"].astype(np.int64)),
        "amount": pa.array(ln["amount"].astype(np.float64)),
        "region": pa.array(REGIONS).take(pa.array(ln["region"])),
        "promised_delivery_at": _ts(ln["promised_s"]),
        "delivered_at": _ts(ln["delivered_s"], null=~ln["delivered"]),
    })
    _write(orders_tbl, out / "orders.parquet")
    step("write orders")
    rl = rt["line"]
    returns_tbl = pa.table({
        "return_id": _ids("R", len(rl), width=max(len(str(len(rl))), 7)),
        "order_id": _take(order_ids, ln["order"][rl], null=rt["order_null"]),
        "account_id": _take(acc_ids, ln["account"][rl]),
        "merchant_id": mer_ids.take(pa.array(ln["merchant"][rl])),
        "requested_at": _ts(rt["requested_s"]),
        "reason": pa.array(np.array(REASONS)).take(pa.array(rt["reason"])),
        "quantity": pa.array(rt["quantity"].astype(np.int64)),
        "refund_amount": pa.array(rt["refund"].astype(np.float64)),
        "item_returned": pa.array(rt["item_returned"], mask=rt["returned_null"], type=pa.bool_()),
    })
    _write(returns_tbl, out / "returns.parquet")
    tl = tk["line"]
    n_t = len(tl)
    ticket_ids = _ids("T", n_t, width=max(len(str(n_t)), 7))
    open_ = tk["open"]
    tickets_tbl = pa.table({
        "ticket_id": ticket_ids,
        "created_at": _ts(tk["created"]),
        "account_id": _take(acc_ids, tk["account"]),
        "merchant_id": mer_ids.take(pa.array(tk["merchant"])),
        "order_id": _take(order_ids, ln["order"][tl], null=~tk["has_order"]),
        "case_type": pa.array(CASE_TYPES).take(pa.array(tk["case"])),
        "channel": pa.array(CHANNELS).take(pa.array(tk["channel"])),
        "amount": pa.array(np.round(tk["amount"], 2).astype(np.float64), mask=~tk["has_order"]),  # no order, no amount
        "text": pa.array(tk["text"], type=pa.string()),
        "escalated": pa.array(tk["escalated"], mask=open_, type=pa.bool_()),
        "resolved_at": _ts(tk["resolved"], null=open_),
    })
    _write(tickets_tbl, out / "tickets.parquet")
    links_tbl = pa.table({
        "account_id": acc_ids.take(pa.array(link_acc)),
        "link_type": pa.array(link_type, type=pa.string()),
        "link_value": pa.array(link_val, type=pa.string()),
    })
    _write(links_tbl, out / "account_links.parquet")
    reviews_tbl = pa.table({
        "account_id": acc_ids.take(pa.array(rv["account"])),
        "decision": pa.array(np.where(rv["confirmed"], "confirmed_abuse", "cleared"), type=pa.string()),
        "decided_at": _ts(rv["decided"]),
        "reviewer": pa.array(rv["reviewer"], type=pa.string()),
        "note": pa.array(rv["note"], mask=rv["note_null"], type=pa.string()),
    })
    _write(reviews_tbl, out / "review_decisions.parquet")
    step("write returns, tickets, links")
    _write_truth(out / "truth", w, acc, mer, ln, tk, acc_ids, mer_ids, ticket_ids, seed, market, sc)
    write_scenario_files(out, sc, seed, w.start + pd.Timedelta(days=w.days - 1))
    step("truth")
    steps.close()
    summary = {
        "out_dir": str(out), "seed": seed, "scenario": sc.name, "market": market, "start": str(w.start.date()),
        "days": int(days),
        "orders_rows": orders_tbl.num_rows, "returns_rows": returns_tbl.num_rows, "tickets_rows": tickets_tbl.num_rows,
        "account_links_rows": links_tbl.num_rows, "review_decisions_rows": reviews_tbl.num_rows,
        "accounts": int(accounts), "merchants": int(merchants),
        "abusive_accounts": int((acc["pattern"] != P_NORMAL).sum()), "risky_merchants": int(mer["risky"].sum()),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return summary


def _complaint_risk(w: _World, mer: dict[str, Arr], ln: dict[str, Arr], tk: dict[str, Arr], sc: Scenario) -> Arr:
    """Latent complaint risk: expected complaints per order line over the last 180 days, from the generator's own
    probabilities (complaint cases per line plus escalations of the merchant's other cases), not from the draws.

    Merchants with few recent lines are pulled toward the rate their final-state lateness and defects imply.
    """
    n_m = len(mer["size"])
    recent_l = ln["day"] >= w.days - 180
    lines = np.bincount(ln["merchant"][recent_l], minlength=n_m).astype(float)
    expected = np.bincount(ln["merchant"][recent_l], weights=tk["p_complaint_line"][recent_l], minlength=n_m)
    recent_t = (tk["day"] >= w.days - 180) & (tk["case"] != C_COMPLAINT)
    expected += np.bincount(tk["merchant"][recent_t], weights=tk["p_escalate"][recent_t], minlength=n_m)
    # Prior from the final-state rates (lateness is exponential with the merchant's mean over a base that meets
    # the promise), scaled to the observed overall level.
    bad_end = mer["risky"] & (mer["bad_until"] > w.days)  # recovered merchants end in their normal state
    late_end = np.where(bad_end, mer["late_bad"], mer["late_norm"])
    defect_end = np.where(bad_end, mer["defect_bad"], mer["defect_norm"])
    p_late2, p_late5 = np.exp(-2.0 / np.maximum(late_end, 1e-6)), np.exp(-5.0 / np.maximum(late_end, 1e-6))
    p_lost = 0.004 + 0.02 * np.minimum(late_end, 3.0)
    prior = mer["attitude"] * (0.0015 + 0.03 * p_late2 + 0.03 * p_late5
                               + 0.12 * np.asarray(sc.cat_quality)[mer["category"]] * defect_end + 0.12 * p_lost)
    prior *= expected.sum() / max(float((prior * lines).sum()), 1e-9)
    k = 30.0  # pseudo-lines of prior
    return (expected + k * prior) / (lines + k)


def _write_truth(tdir: Path, w: _World, acc: dict[str, Arr], mer: dict[str, Arr], ln: dict[str, Arr],
                 tk: dict[str, Arr], acc_ids: pa.Array, mer_ids: pa.Array, ticket_ids: pa.Array, seed: int,
                 market: str, sc: Scenario) -> None:
    """Ground truth for evaluation: abusers and their pattern, merchants' latent risk, escalation causes."""
    day0 = w.start_s
    abuser = acc["pattern"] != P_NORMAL
    ring = acc["ring_id"] >= 0
    pa_day = lambda d, null: _ts(day0 + np.where(null, 0, d) * DAY, null=null)  # noqa: E731
    accounts = pa.table({
        "account_id": acc_ids,
        "is_abuser": pa.array(abuser),
        "pattern": pa.array(np.array(PATTERNS)).take(pa.array(acc["pattern"])),
        "ring_id": _take(_ids("RING", int(acc["ring_id"].max()) + 1 if ring.any() else 1), acc["ring_id"]),
        "abuse_start": pa_day(acc["abuse_start"], ~abuser),
        "joined_at": pa_day(acc["join_day"], np.zeros(len(abuser), bool)),
        "return_propensity": pa.array(acc["propensity"]),
        "bracketer": pa.array(acc["bracketer"]),
    })
    _write(accounts, tdir / "accounts.parquet")
    complaint_risk = _complaint_risk(w, mer, ln, tk, sc)
    onset_null = ~mer["deteriorates"]
    merchants = pa.table({
        "merchant_id": mer_ids,
        "complaint_risk": pa.array(np.round(complaint_risk, 6)),
        "risky": pa.array(mer["risky"]),
        "deteriorates_at": pa_day(mer["bad_from"], onset_null),
        "category": pa.array(np.array(CATEGORIES)).take(pa.array(mer["category"])),
        "tenure_start": _ts(day0 + (np.where(mer["join_day"] > 0, mer["join_day"], -mer["tenure_days"])) * DAY),
        "size": pa.array(np.round(mer["size"], 4)),
        "risk_type": pa.array(np.where(mer["risky"], np.array(["late_delivery", "quality", "both"])[mer["kind"]],
                                       "none"), type=pa.string()),
        "late_days_normal": pa.array(np.round(mer["late_norm"], 4)),
        "late_days_bad": pa.array(np.round(mer["late_bad"], 4)),
        "defect_rate_normal": pa.array(np.round(mer["defect_norm"], 4)),
        "defect_rate_bad": pa.array(np.round(mer["defect_bad"], 4)),
        "episode_start": pa_day(mer["ep_start"], mer["ep_start"] >= w.days),
        "episode_end": pa_day(mer["ep_end"], mer["ep_start"] >= w.days),
        "episode_type": pa.array(np.array(["late_delivery", "quality"])[mer["ep_kind"]],
                                 mask=mer["ep_start"] >= w.days, type=pa.string()),
    })
    if not sc.is_default:  # recovering merchants exist only in scenario worlds (the default keeps its bytes)
        rec_null = mer["bad_until"] >= w.days
        merchants = merchants.append_column("recovers_at", pa_day(mer["bad_until"], rec_null))
    _write(merchants, tdir / "merchants.parquet")
    tickets = pa.table({
        "ticket_id": ticket_ids,
        "escalation_cause": pa.array(tk["cause"], type=pa.string()),
        "escalated_latent": pa.array(tk["escalated"]),
        "p_escalate": pa.array(np.round(tk["p_escalate"], 6)),
    })
    _write(tickets, tdir / "tickets.parquet")
    scen = _SCENARIO_README.format(name=sc.name, table=readme_table(sc),
                                   note="" if sc.is_default else _SCENARIO_NOTE)
    (tdir / "README.md").write_text(_TRUTH_README.format(seed=seed, market=market, start=w.start.date(),
                                                         days=w.days) + scen, encoding="utf-8")


_TRUTH_README = """# Ground truth of this synthetic world

Generated by `features.synthetic.generate_world` (seed {seed}, market {market}, {days} days from {start}).
Models must never train on these files; they are for evaluation and sanity checks only.

## Files
- `accounts.parquet`: account_id, is_abuser, pattern (normal, serial, wardrobing, refund_without_return, ring),
  ring_id (rings only), abuse_start (day the behaviour starts; null for normal accounts), joined_at,
  return_propensity (latent multiplier on change-of-mind and fit returns), bracketer (honest customers who order
  several sizes and return the rest: many fit returns, not abuse).
- `merchants.parquet`: merchant_id, complaint_risk (latent: expected complaints per order line over the last 180
  days, from the generator's probabilities rather than its draws; complaint = complaint case or escalated case
  with the merchant; shrunk toward the final-state rate for merchants with few recent lines), risky,
  deteriorates_at (onset of the bad state for merchants that deteriorate; null otherwise), category (focus),
  tenure_start, size, risk_type, late/defect rates before/after, episode_start/episode_end/episode_type (a temporary
  trouble at a normal merchant: late_delivery or quality; null if none).
- `tickets.parquet`: ticket_id, escalation_cause (the largest driver of an escalated case; `none` when it did not
  escalate), escalated_latent (the outcome, also for cases still open at the end where `escalated` is null),
  p_escalate (the probability the generator used).

## Mechanics
- **Orders**: weekly cycle; a small daily shock (lognormal, sigma 0.07); each event instance's intensity varies
  +-20%; growth from accounts joining over time; spikes on shopping events (11.11 x5, Black Friday x4, 618 x3.2,
  Cyber Monday x2.5, 12.12 x2, summer sale x1.5) with pre-sale ramps; Christmas gift buying ramps over Dec 1-22;
  Spring Festival (CN) dips orders and shuts logistics down (parcels wait until it ends). ~8% guest orders (null
  account_id). Merchants are heavy-tailed in size, focused on one category, and a quarter join during the period.
  Lines: 1 + Poisson(0.35) per order.
- **Delivery**: promised 2-5 days after ordering (more in the remote region); actual = lognormal base + region +
  merchant lateness (exponential with the merchant's current mean) + event congestion; ~0.4% lost (more for late
  merchants) -> null delivered_at; parcels not yet delivered at the end are null too.
- **Returns**: per-line hazards by cause: quality (defective / not_as_described) = category rate x merchant defect
  rate; size_fit (apparel, shoes) and changed_mind = category rate x account propensity x 2 for December gifts
  (60% of December lines before Christmas); damaged_in_transit grows with merchant lateness; not_received for lost
  or very late parcels. Delays: change of mind / fit lognormal around the category median (apparel 11 days),
  quality ~5 days, damage ~1.5 days; gifts come back after Dec 26 (January wave). A fifth of weekend requests wait
  until Monday (weekly cycle). ~3% of returns have a null order_id. Refunds are full for problems and abusers,
  sometimes reduced by a restocking share for changes of mind. item_returned is false for not_received, most
  damaged_in_transit and abusers' claims; ~2% null.
- **Bracketers**: 5% of normal accounts order several sizes and return the rest (4x fit returns): heavy returners
  who are not abusers (flagged `bracketer` in accounts.parquet).
- **Abuse** (~3.5% of accounts; many start only later in the period): serial returners (2.5x orders after onset,
  change-of-mind returns >= 45% of lines); wardrobing (apparel/shoes bought 1-6 days before events and holidays,
  returned 1-5 days after the event, full refund); refund without return (extra not_received / damaged claims on
  delivered parcels, item_returned false); rings of 4-8 accounts sharing device (90%), payment (65%), address
  (55%) values, each member only mildly elevated (2x change-of-mind/fit, a few refund-without-return claims).
- **Links**: every account has address, device, payment, phone, email; 20% a second device (7% of those a shared
  public device used by many unrelated accounts); 12% of normal accounts live in households of 2-3 sharing an
  address (20% of those also a card, 30% a device). Sharing alone is not proof of a ring.
- **Merchants**: ~8% of incumbents and ~18% of newcomers are risky (late deliveries, quality, or both); a third of
  them deteriorate at a random day (30-85% into the period): before it they look normal. A fifth of the normal
  merchants have one temporary episode (30-90 days of late deliveries or defects: a carrier change, a bad batch).
  After onset lateness and quality returns rise at once, while complaints per problem (and the merchant term of
  escalation) ramp up over ~6 weeks (complaints lag); the same holds during episodes.
- **Tickets**: from returns (by reason), from late (probability grows with lateness) and lost parcels (logistics),
  complaints/quality cases from problems (scaled by merchant attitude), inquiries (~2.8% of orders, 30% without an
  order) and follow-ups (unresolved cases come back). Channels chat/app/email/phone/other; angry customers call.
  Escalation ~12%: logistic in case type, merchant in bad state, amount, lateness, repeat contacts in 30 days,
  abuser, daily ticket load, customer anger (reflected in the text's angry phrases) and channel. Resolution time
  lognormal (~18 h median), longer in peaks and x3 for escalated; cases open at the end have null escalated and
  resolved_at.
- **Review decisions**: ~1.25% of accounts (30-300), decided in the first 60% of the period; 70% drawn from the
  heaviest returners, 30% random; truth = abuser whose behaviour had started by the decision day; 5% reviewer
  error.
"""

_SCENARIO_NOTE = """
In this scenario world the values below replace the default figures quoted under Mechanics; merchants.parquet also
has `recovers_at` (the day a recovering risky merchant returns to its normal state; null otherwise).
"""

_SCENARIO_README = """
## Scenario `{name}`
Every mechanic's value (all of them in `scenario.json` beside this file; `../dataset.json` names the market). A
random scenario draws each one independently from the documented range; `default` is the default world.
{note}
{table}
"""
