"""Serial-return accounts: the reasons a reviewer reads (one sentence per feature, one paragraph per pattern)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.account_features import WINDOWS, AccountFrame


def _n(v: float) -> str:
    if not np.isfinite(v):
        return "n/a"
    return f"{v:.0f}" if abs(v - round(v)) < 1e-9 or abs(v) >= 10 else f"{v:.1f}"


def _times(v: float, typical: float) -> str:
    return f", {v / typical:.0f}x the typical account" if typical > 0 and v / typical >= 1.5 else ""


def _rate_text(w: int):
    def text(v: float, t: float, r: dict) -> str:
        lines = max(r[f"lines_{w}d"], r[f"returns_{w}d"])
        return (f"returned {_n(r[f'returns_{w}d'])} of {_n(lines)} order lines in {w} days "
                f"(rate {v:.0%} after smoothing, typical {t:.0%})")
    return text


_TEXT = {
    "returns_30d": lambda v, t, r: f"{_n(v)} returns in 30 days{_times(v, t)} ({_n(t)})",
    "returns_90d": lambda v, t, r: f"{_n(v)} returns in 90 days{_times(v, t)} ({_n(t)})",
    "returns_365d": lambda v, t, r: f"{_n(v)} returns in 365 days{_times(v, t)} ({_n(t)})",
    **{f"return_rate_{w}d": _rate_text(w) for w in WINDOWS},
    "refund_365d": lambda v, t, r: f"{v:,.0f} refunded in 365 days{_times(v, t)} ({t:,.0f})",
    "refund_share_365d": lambda v, t, r: f"refunds of {r['refund_365d']:,.0f} against {r['spend_365d']:,.0f} spent in "
                                         f"365 days ({v:.0%} after smoothing, typical {t:.0%})",
    "changed_mind_365d": lambda v, t, r: f"{_n(v)} 'changed mind' returns in 365 days{_times(v, t)} ({_n(t)})",
    "share_changed_mind": lambda v, t, r: f"{v:.0%} of its returns are 'changed mind' (typical {t:.0%})",
    "share_size_fit": lambda v, t, r: f"{v:.0%} of its returns are 'size/fit' (typical {t:.0%})",
    "share_not_received": lambda v, t, r: f"{v:.0%} of its returns claim the parcel never arrived (typical {t:.0%})",
    "share_damaged_in_transit": lambda v, t, r: f"{v:.0%} of its returns claim damage in transit (typical {t:.0%})",
    "refund_without_return_90d": lambda v, t, r: f"{_n(v)} refunds without the item coming back in 90 days"
                                              f"{_times(v, t)} ({_n(t)})",
    "refund_without_return_365d": lambda v, t, r: f"{_n(v)} refunds without the item coming back in 365 days"
                                               f"{_times(v, t)} ({_n(t)})",
    "refund_without_return_share": lambda v, t, r: f"{v:.0%} of its refunds came without the item back "
                                                f"(typical {t:.0%})",
    "claims_365d": lambda v, t, r: f"{_n(v)} 'not received' or 'damaged in transit' claims in 365 days"
                                f"{_times(v, t)} ({_n(t)})",
    "wardrobe_returns_730d": lambda v, t, r: f"{_n(v)} apparel/shoes items returned within a week after a sales event "
                                          f"or holiday, fully refunded, in 730 days (typical {_n(t)})",
    "wardrobe_share": lambda v, t, r: f"{v:.0%} of its returns are worn-category items sent back right after an event "
                                   f"(typical {t:.0%})",
    "days_order_to_return": lambda v, t, r: f"sends items back {_n(v)} days after ordering (typical {_n(t)})",
    "days_delivery_to_return": lambda v, t, r: f"sends items back {_n(v)} days after delivery (typical {_n(t)})",
    "days_since_last_return": lambda v, t, r: f"last return {_n(v)} days ago",
    "lines_30d": lambda v, t, r: f"{_n(v)} order lines in 30 days (typical {_n(t)})",
    "lines_90d": lambda v, t, r: f"{_n(v)} order lines in 90 days (typical {_n(t)})",
    "lines_365d": lambda v, t, r: f"{_n(v)} order lines in 365 days (typical {_n(t)})",
    "spend_365d": lambda v, t, r: f"spent {v:,.0f} in 365 days (typical {t:,.0f})",
    "tenure_days": lambda v, t, r: f"account active for {_n(v)} days (typical {_n(t)})",
    "reason_entropy": lambda v, t, r: f"return reasons spread {v:.1f} bits (typical {t:.1f})",
    "return_trend": lambda v, t, r: f"returning {v:.1f}x as often per month as in its own previous 9 months",
    "return_rate_change": lambda v, t, r: f"return rate up {v * 100:.0f} points against its own previous 9 months",
    "link_group_size": lambda v, t, r: f"linked to {_n(v - 1)} other accounts by a shared address, device or payment",
    "link_strong_group_size": lambda v, t, r: f"shares two or more identifiers (address, device, payment) with "
                                           f"{_n(v - 1)} other accounts",
    "link_max_shared_types": lambda v, t, r: f"shares {_n(v)} identifiers with one other account",
    "link_group_returns_90d": lambda v, t, r: f"its linked accounts made {_n(v)} returns in 90 days{_times(v, t)} "
                                           f"({_n(t)})",
    "link_group_return_rate_90d": lambda v, t, r: f"its group of linked accounts returned {v:.0%} of order lines in "
                                               f"90 days (typical {t:.0%})",
    "link_group_refund_without_return_365d": lambda v, t, r: f"its linked accounts got {_n(v)} refunds without "
                                                          f"returning the item in 365 days",
}


def reason_text(feature: str, row: dict, typical: float) -> str:
    """One sentence a reviewer reads for a feature of an account (``row``: its feature values), against the typical
    account's value."""
    fn = _TEXT.get(feature)
    value = float(row[feature])
    if fn is None:
        return f"{feature.replace('_', ' ')} = {_n(value)} (typical {_n(typical)})"
    return fn(value, float(typical), row)


def _rarity(tail: float) -> str:
    if tail < 1.0:
        return "not unusual on this platform"
    return f"1 in {10 ** min(tail, 15):,.0f} ordinary accounts of this platform shows this much"


def pattern_text(pattern: str, r: dict, tail: float, rates: dict, typical: pd.Series) -> str:
    """The evidence of one pattern for an account (``r``: its features), with the platform's rates (``rates``: the
    detector's null rate per (count, exposure) test) and how rare this is (``tail``: -log10 probability)."""
    rate: dict[str, float] = {}
    for (count, exposure), v in rates.items():  # the rate per order line (a test's first exposure), not a count
        if exposure and count not in rate:
            rate[count] = v
    if pattern == "serial":
        lines = max(r["lines_365d"], r["returns_365d"])
        t30 = float(typical.get("returns_30d", 0.0))
        text = (f"serial returning: {_n(r['returns_365d'])} returns of {_n(lines)} order lines in 365 days "
                f"({r['returns_365d'] / max(lines, 1):.0%}; platform {rate['returns_365d']:.0%}), "
                f"{_n(r['returns_90d'])} in 90 days, {_n(r['returns_30d'])} returns in 30 days"
                f"{_times(r['returns_30d'], t30)}; {_n(r['changed_mind_365d'])} of the returns for a change of mind "
                f"(platform {rate['changed_mind_365d']:.0%} of order lines)")
    elif pattern == "refund_without_return":
        # How late its parcels came: the platform's claim rates for parcels as late as the account's give the refunds
        # it would expect (``no_item_exposure_365d`` lines at the average rate), and the claims lateness does not
        # explain (``claims_unexplained_365d``); both equal the plain counts where the data has no promised dates.
        expected = float(r.get("no_item_exposure_365d", r["lines_delivered_365d"])) * rate["no_item_on_delivered_365d"]
        claims = float(r["claims_on_delivered_365d"])
        unexplained = float(r.get("claims_unexplained_365d", claims))
        late = f" ({unexplained:.1f} not explained by late delivery)" if claims and unexplained < claims - 0.05 else ""
        text = (f"refund without return: {_n(r['no_item_on_delivered_365d'])} refunds without the item coming back "
                f"on parcels the delivery record shows delivered, of {_n(r['lines_delivered_365d'])} delivered order "
                f"lines in 365 days (platform {rate['no_item_on_delivered_365d']:.1%}: {expected:.1f} expected for "
                f"parcels as late as its own; {_n(r['refund_without_return_365d'])} refunds without the item in all), "
                f"{_n(claims)} 'not received' claims on delivered parcels{late}")
    elif pattern == "wardrobing":
        text = (f"wardrobing: {r['wardrobe_returns_730d']:.1f} weighted returns of items bought in the week before a "
                f"sales event or holiday and sent back soon after delivery, right after the event "
                f"({_n(r['event_lines_730d'])} pre-event order lines in 730 days; platform "
                f"{rate['wardrobe_returns_730d']:.1%})")
    else:
        text = (f"ring: one of {_n(r['link_group_size'])} accounts linked by a shared address, device or payment "
                f"({_n(r['link_strong_group_size'])} sharing two or more); the other accounts "
                f"returned {_n(r['ring_returns_365d'])} of {_n(r['ring_lines_365d'])} order lines in 365 days "
                f"(platform {rate['ring_returns_365d']:.0%}), {_n(r['ring_no_item_365d'])} refunds without the item "
                f"and {_n(r['ring_claims_365d'])} 'not received' claims on delivered parcels")
    return f"{text} ({_rarity(tail)})"


def typical_values(X: AccountFrame) -> pd.Series:
    """The typical account per feature: the median, or the mean where the median is zero (sparse counts)."""
    med = X.median(numeric_only=True)
    mean = X.mean(numeric_only=True)
    return med.where(med > 0, mean).fillna(0.0)
