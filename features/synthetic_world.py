"""The synthetic world's commerce: constants, the day grid with its demand curves, merchants, accounts, orders and
order lines (see :mod:`features.synthetic` for the whole world and its guarantees)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.calendar import SIZE_CLASSES, market_events
from features.scenarios import PATTERN_NAMES, Scenario
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


def _write(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression="zstd")
