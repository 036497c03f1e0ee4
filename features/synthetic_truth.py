"""The synthetic world's ground truth (``truth/``): abusers and their patterns, merchants' latent complaint risk,
escalation causes, and the README that documents the mechanics (see :mod:`features.synthetic`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from features.scenarios import Scenario, readme_table
from features.synthetic_world import (
    C_COMPLAINT,
    CATEGORIES,
    DAY,
    P_NORMAL,
    PATTERNS,
    Arr,
    _ids,
    _take,
    _ts,
    _World,
    _write,
)


def _expected_complaints(mer: dict[str, Arr], ln: dict[str, Arr], tk: dict[str, Arr], lo: int,
                         hi: int | None = None) -> tuple[Arr, Arr]:
    """(expected complaints, order lines) per merchant over the lines and tickets with day index in [lo, hi) (``hi``
    None: to the world's end), from the generator's own probabilities (complaint cases per line plus escalations of
    the merchant's other cases), not from the draws. Also read by benchmarks/diag_merchant_reference.py."""
    n_m = len(mer["size"])
    in_l = ln["day"] >= lo if hi is None else (ln["day"] >= lo) & (ln["day"] < hi)
    lines = np.bincount(ln["merchant"][in_l], minlength=n_m).astype(float)
    expected = np.bincount(ln["merchant"][in_l], weights=tk["p_complaint_line"][in_l], minlength=n_m)
    in_t = (tk["day"] >= lo if hi is None else (tk["day"] >= lo) & (tk["day"] < hi)) & (tk["case"] != C_COMPLAINT)
    expected += np.bincount(tk["merchant"][in_t], weights=tk["p_escalate"][in_t], minlength=n_m)
    return expected, lines


def _implied_complaint_rate(mer: dict[str, Arr], late: Arr, defect: Arr, sc: Scenario) -> Arr:
    """Complaint cases per line that mean lateness ``late`` and defect rate ``defect`` imply for each merchant's
    customers (lateness is exponential with the merchant's mean over a base that meets the promise). Also read by
    benchmarks/diag_merchant_reference.py."""
    p_late2, p_late5 = np.exp(-2.0 / np.maximum(late, 1e-6)), np.exp(-5.0 / np.maximum(late, 1e-6))
    p_lost = 0.004 + 0.02 * np.minimum(late, 3.0)
    return mer["attitude"] * (0.0015 + 0.03 * p_late2 + 0.03 * p_late5
                              + 0.12 * np.asarray(sc.cat_quality)[mer["category"]] * defect + 0.12 * p_lost)


def _complaint_risk(w: _World, mer: dict[str, Arr], ln: dict[str, Arr], tk: dict[str, Arr], sc: Scenario) -> Arr:
    """Latent complaint risk: expected complaints per order line over the last 180 days, from the generator's own
    probabilities (complaint cases per line plus escalations of the merchant's other cases), not from the draws.

    Merchants with few recent lines are pulled toward the rate their final-state lateness and defects imply.
    """
    expected, lines = _expected_complaints(mer, ln, tk, w.days - 180)
    # Prior from the final-state rates, scaled to the observed overall level.
    bad_end = mer["risky"] & (mer["bad_until"] > w.days)  # recovered merchants end in their normal state
    late_end = np.where(bad_end, mer["late_bad"], mer["late_norm"])
    defect_end = np.where(bad_end, mer["defect_bad"], mer["defect_norm"])
    prior = _implied_complaint_rate(mer, late_end, defect_end, sc)
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
