"""Triage policy: thresholds in settings drive priority and action; batch and single decisions agree."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from features.settings import Settings
from features.triage_policy import ACTIONS, PRIORITIES, decide, decide_batch

S = Settings()  # defaults: p1 0.60, p2 0.35, p3 0.15, risk review 0.70, auto-approve 50, risky merchant 0.80


def test_priority_follows_probability_thresholds():
    assert decide(0.70, 0.1, 0.5, 20.0, "complaint", S)[0] == "P1"
    assert decide(0.40, 0.1, 0.5, 20.0, "complaint", S)[0] == "P2"
    assert decide(0.20, 0.1, 0.5, 20.0, "complaint", S)[0] == "P3"
    assert decide(0.05, 0.1, 0.5, 20.0, "complaint", S)[0] == "P4"


def test_changing_a_threshold_setting_changes_priority():
    assert decide(0.40, 0.1, 0.5, 20.0, "complaint", S)[0] == "P2"
    assert decide(0.40, 0.1, 0.5, 20.0, "complaint", Settings(p2_escalation=0.45))[0] == "P3"
    assert decide(0.40, 0.1, 0.5, 20.0, "complaint", Settings(p1_escalation=0.38))[0] == "P1"
    assert decide(0.10, 0.1, 0.5, 20.0, "complaint", Settings(p3_escalation=0.08))[0] == "P3"


def test_risky_merchant_raises_priority_one_level_per_setting():
    assert decide(0.20, 0.1, 0.85, 20.0, "complaint", S)[0] == "P2"  # P3 raised
    assert decide(0.20, 0.1, 0.85, 20.0, "complaint", Settings(high_merchant_risk=0.90))[0] == "P3"
    prio, _, reasons = decide(0.70, 0.1, 0.95, 20.0, "complaint", S)
    assert prio == "P1" and any("risky merchant" in r for r in reasons)  # never above P1


def test_abusive_refund_goes_to_risk_review_even_at_p1():
    assert decide(0.05, 0.80, 0.5, 20.0, "refund", S)[1] == "risk_review"
    prio, action, reasons = decide(0.90, 0.80, 0.5, 20.0, "return", S)
    assert (prio, action) == ("P1", "risk_review")
    assert any("abuse risk 0.80 >= 0.70" in r for r in reasons)
    assert decide(0.05, 0.80, 0.5, 20.0, "refund", Settings(risk_review_abuse=0.9))[1] == "auto_approve_refund"
    # A complaint is not a refund: abuse risk does not hold it back.
    assert decide(0.05, 0.80, 0.5, 20.0, "complaint", S)[1] == "standard_queue"


def test_auto_approve_small_low_risk_refunds_only():
    prio, action, reasons = decide(0.05, 0.1, 0.5, 20.0, "refund", S)
    assert (prio, action) == ("P4", "auto_approve_refund") and "auto-approve limit 50.00" in reasons[-1]
    assert decide(0.05, 0.1, 0.5, 80.0, "refund", S)[1] == "standard_queue"
    assert decide(0.05, 0.1, 0.5, 80.0, "refund", Settings(auto_approve_max_amount=100.0))[1] == "auto_approve_refund"
    assert decide(0.20, 0.1, 0.5, 20.0, "refund", S)[1] == "standard_queue"  # P3: a person looks
    assert decide(0.05, 0.1, 0.5, None, "refund", S)[1] == "standard_queue"  # amount unknown
    assert decide(0.05, 0.1, 0.85, 20.0, "refund", S)[0:2] == ("P3", "standard_queue")  # risky merchant raises it


def test_p1_goes_to_a_senior_agent():
    assert decide(0.65, 0.1, 0.5, 500.0, "complaint", S)[1] == "senior_agent"


def test_unknown_scores_are_no_evidence_and_say_so():
    prio, action, reasons = decide(0.05, None, None, 10.0, "return", S)
    assert (prio, action) == ("P4", "auto_approve_refund")
    text = " ".join(reasons)
    assert "no abuse score" in text and "no merchant risk score" in text
    assert decide(0.05, float("nan"), float("nan"), 10.0, "return", S)[:2] == ("P4", "auto_approve_refund")


@pytest.mark.parametrize("bad", [dict(p=1.2), dict(p=-0.1), dict(a=1.5), dict(m=80.0)])
def test_out_of_range_inputs_are_refused_with_the_field_named(bad):
    p, a, m = bad.get("p", 0.2), bad.get("a", 0.1), bad.get("m", 0.5)
    name = {"p": "escalation_probability", "a": "abuse_risk", "m": "merchant_risk_percentile"}[next(iter(bad))]
    with pytest.raises(ValueError, match=name):
        decide(p, a, m, 10.0, "refund", S)
    with pytest.raises(ValueError, match=name):
        decide_batch([p], [a], [m], [10.0], ["refund"], S)


def test_batch_agrees_with_single_decisions():
    probs = [0.0, 0.1, 0.15, 0.3, 0.35, 0.5, 0.6, 0.99]
    abuse = [None, 0.0, 0.69, 0.7, 0.95]
    merch = [None, 0.2, 0.8, 1.0]
    amounts = [None, 10.0, 50.0, 50.01, 300.0]
    cases = ["refund", "return", "complaint", "inquiry"]
    grid = list(itertools.product(probs, abuse, merch, amounts, cases))
    cols = list(zip(*grid, strict=True))
    settings = Settings(p1_escalation=0.55, auto_approve_max_amount=50.0)
    out = decide_batch(np.array(cols[0]), cols[1], cols[2], cols[3], list(cols[4]), settings)
    seen = set()
    for (p, a, m, amt, c), row in zip(grid, out.itertuples(index=False), strict=True):
        expect = decide(p, a, m, amt, c, settings)
        assert (row.priority, row.action, row.reasons) == expect
        seen.add((row.priority, row.action))
    assert {p for p, _ in seen} == set(PRIORITIES) and {a for _, a in seen} == set(ACTIONS)
    fast = decide_batch(np.array(cols[0]), cols[1], cols[2], cols[3], list(cols[4]), settings, reasons=False)
    assert fast["priority"].tolist() == out["priority"].tolist() and fast["action"].tolist() == out["action"].tolist()
