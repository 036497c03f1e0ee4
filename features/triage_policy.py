"""Ticket triage policy: priority P1-P4 and a suggested action from the model's scores and business thresholds.

Inputs are the escalation probability (ticket model), the account's abuse risk (serial-returner score, 0-1) and the
merchant's risk percentile (merchant model, 0-1); thresholds come from :class:`features.settings.Settings`
(``p1_escalation``, ``p2_escalation``, ``p3_escalation``, ``risk_review_abuse``, ``auto_approve_max_amount``,
``high_merchant_risk``), never from code. The rules, in order:

1. Priority from the escalation probability: >= p1 -> P1, >= p2 -> P2, >= p3 -> P3, else P4.
2. A merchant at or above the ``high_merchant_risk`` percentile raises the priority one level (not above P1): its
   customers have real problems and their cases escalate against the platform.
3. Action: a refund-type case (return, refund) from an account with abuse risk >= ``risk_review_abuse`` goes to
   ``risk_review`` (whatever its priority: paying an abuser is the larger loss); otherwise P1 goes to
   ``senior_agent``; a P4 refund-type case of at most ``auto_approve_max_amount`` is ``auto_approve_refund``;
   everything else is ``standard_queue``.

Every decision carries the reasons a person reads. :func:`decide` is pure Python (microseconds, the serving hot
path); :func:`decide_batch` is its vectorised twin and gives the same answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from features.settings import Settings

PRIORITIES = ("P1", "P2", "P3", "P4")
ACTIONS = ("auto_approve_refund", "standard_queue", "senior_agent", "risk_review")
# Cases that ask for money back: the only ones a refund can be auto-approved for or held for risk review.
REFUND_CASES = frozenset({"return", "refund"})

Decision = tuple[str, str, list[str]]


def _missing(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _check_unit(name: str, x: float | None) -> None:
    if not _missing(x) and not 0.0 <= x <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {x!r}")


def _level(p: float, s: Settings) -> int:
    return 1 if p >= s.p1_escalation else 2 if p >= s.p2_escalation else 3 if p >= s.p3_escalation else 4


def decide(escalation_probability: float, abuse_risk: float | None, merchant_risk_percentile: float | None,
           amount: float | None, case_type: str | None, settings: Settings) -> Decision:
    """Priority (P1-P4), action (one of :data:`ACTIONS`) and reasons for one ticket.

    ``abuse_risk`` / ``merchant_risk_percentile`` are None (or NaN) for guests, unknown accounts and merchants:
    they then count as no evidence of abuse / not a risky merchant, and the reasons say so.
    """
    s = settings
    p = float(escalation_probability)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"escalation_probability must be in [0, 1], got {escalation_probability!r}")
    _check_unit("abuse_risk", abuse_risk)
    _check_unit("merchant_risk_percentile", merchant_risk_percentile)
    reasons: list[str] = []
    level = _level(p, s)
    if level < 4:
        limit = (s.p1_escalation, s.p2_escalation, s.p3_escalation)[level - 1]
        reasons.append(f"escalation probability {p:.0%} >= the P{level} threshold {limit:.0%}")
    else:
        reasons.append(f"escalation probability {p:.0%} is below the P3 threshold {s.p3_escalation:.0%}")
    if _missing(merchant_risk_percentile):
        reasons.append("no merchant risk score (unknown merchant or no merchant snapshot): not treated as risky")
    elif merchant_risk_percentile >= s.high_merchant_risk:
        if level > 1:
            reasons.append(f"risky merchant (risk percentile {merchant_risk_percentile:.2f} >= "
                           f"{s.high_merchant_risk:.2f}): priority raised from P{level} to P{level - 1}")
            level -= 1
        else:
            reasons.append(f"risky merchant (risk percentile {merchant_risk_percentile:.2f} >= "
                           f"{s.high_merchant_risk:.2f})")
    abuse = 0.0 if _missing(abuse_risk) else float(abuse_risk)
    if _missing(abuse_risk):
        reasons.append("no abuse score (guest, unknown account or no account snapshot): no evidence of abuse")
    refund_case = case_type in REFUND_CASES
    if refund_case and abuse >= s.risk_review_abuse:
        action = "risk_review"
        reasons.append(f"abuse risk {abuse:.2f} >= {s.risk_review_abuse:.2f} on a {case_type} case: "
                       "the refund waits for risk review")
    elif level == 1:
        action = "senior_agent"
        reasons.append("P1: a senior agent takes the case before it escalates")
    elif refund_case and level == 4 and not _missing(amount) and amount <= s.auto_approve_max_amount:
        action = "auto_approve_refund"
        reasons.append(f"{case_type} of {amount:.2f} <= the auto-approve limit {s.auto_approve_max_amount:.2f}, "
                       f"low escalation risk and abuse risk {abuse:.2f} < {s.risk_review_abuse:.2f}: "
                       "refund approved automatically")
    else:
        action = "standard_queue"
        if refund_case and level == 4:
            why = ("amount unknown" if _missing(amount)
                   else f"amount {amount:.2f} > the auto-approve limit {s.auto_approve_max_amount:.2f}")
            reasons.append(f"standard queue: {why}")
    return PRIORITIES[level - 1], action, reasons


def _arr(x: Sequence | np.ndarray | pd.Series | None, n: int) -> np.ndarray:
    if x is None:
        return np.full(n, np.nan)
    return pd.to_numeric(pd.Series(x, dtype="object") if not isinstance(x, pd.Series) else x,
                         errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def decide_batch(escalation_probability, abuse_risk, merchant_risk_percentile, amount, case_type,
                 settings: Settings, reasons: bool = True) -> pd.DataFrame:
    """Vectorised :func:`decide` for many tickets: a frame with priority, action and reasons (a list per row).

    Priority and action are pure numpy; the reason sentences (``reasons=True``) come from :func:`decide` per row
    (about 5 µs each), so both paths always say the same thing.
    """
    s = settings
    p = np.asarray(escalation_probability, dtype=np.float64)
    n = len(p)
    abuse, merch, amt = _arr(abuse_risk, n), _arr(merchant_risk_percentile, n), _arr(amount, n)
    for name, x in (("escalation_probability", p), ("abuse_risk", abuse), ("merchant_risk_percentile", merch)):
        bad = ~np.isnan(x) & ((x < 0) | (x > 1)) if name != "escalation_probability" else ~((x >= 0) & (x <= 1))
        if bad.any():
            raise ValueError(f"{name} must be in [0, 1]; row {int(np.flatnonzero(bad)[0])} has {x[bad][0]!r}")
    case = pd.Series(case_type, dtype="object").to_numpy() if not isinstance(case_type, pd.Series) else \
        case_type.astype("object").to_numpy()
    level = np.select([p >= s.p1_escalation, p >= s.p2_escalation, p >= s.p3_escalation], [1, 2, 3], 4)
    risky = ~np.isnan(merch) & (merch >= s.high_merchant_risk)
    level = np.where(risky & (level > 1), level - 1, level)
    refund_case = np.isin(case, list(REFUND_CASES))
    review = refund_case & (np.nan_to_num(abuse, nan=0.0) >= s.risk_review_abuse)
    auto = refund_case & (level == 4) & ~np.isnan(amt) & (amt <= s.auto_approve_max_amount)
    action = np.select([review, level == 1, auto], ["risk_review", "senior_agent", "auto_approve_refund"],
                       "standard_queue")
    if not reasons:
        return pd.DataFrame({"priority": np.array(PRIORITIES, dtype=object)[level - 1], "action": action})
    texts = [decide(float(p[i]), None if np.isnan(abuse[i]) else float(abuse[i]),
                      None if np.isnan(merch[i]) else float(merch[i]),
                      None if np.isnan(amt[i]) else float(amt[i]), case[i], s)[2] for i in range(n)]
    return pd.DataFrame({"priority": np.array(PRIORITIES, dtype=object)[level - 1], "action": action,
                         "reasons": texts})
