"""The synthetic world's after-sales events: return requests and their timing, tickets with their text and
escalation causes, account links and review decisions (see :mod:`features.synthetic`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.scenarios import Scenario
from features.synthetic_world import (
    C_COMPLAINT,
    C_EXCHANGE,
    C_INQUIRY,
    C_LOGISTICS,
    C_OTHER,
    C_QUALITY,
    C_REFUND,
    C_RETURN,
    CAT_DELAY_MEDIAN,
    CHANNEL_SHARE,
    DAY,
    ESCALATION_CAUSES,
    GROCERY,
    P_NORMAL,
    P_RING,
    P_RWR,
    P_SERIAL,
    R_DAMAGED,
    R_DEF,
    R_FIT,
    R_MIND,
    R_NAD,
    R_NOTREC,
    R_OTHER,
    R_WRONG,
    REASONS,
    REVIEWERS,
    TICKET_HOURS,
    Arr,
    _cat_sample,
    _lognormal_days,
    _merchant_state,
    _World,
)


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
