"""Ticket triage = escalation score + policy + the notes a person reads, written once.

Every caller goes through here: the service's single and batch endpoints (``serving/runtime.py``), batch scoring
(:func:`triage_batch`) and the report's policy mix (:func:`policy_batch` on the evaluation's probabilities). The
score is :class:`features.tickets.TicketTriageModel`'s, the priority and action :mod:`features.triage_policy`'s.

Choices that the three former copies made differently, decided here:

- Risk scores read from the snapshots (the account's ``abuse_score``, the merchant's
  ``merchant_risk_percentile``) are clipped to [0, 1], and a missing, NaN or unparseable cell is "unknown" (None).
  The served copy passed them on unclipped, so one bad snapshot cell answered 500 for every ticket of that account
  (the policy refuses values outside [0, 1]); the report clipped only the merchant percentile.
- ``reasons`` lists the policy's reasons first (why this priority and action), then the model's (why the escalation
  risk is what it is): the order the API has always answered. Both lists are also returned apart
  (``policy_reasons``, ``escalation_reasons``).
- ``defaults_used`` is the API's list of notes (:data:`DEFAULT_NOTES` from the model's flags, then the risk scores
  that were not found), the same for one ticket and for a batch.

No HTTP and no MLflow here: the service wraps these plain dicts in its response models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from features.triage_policy import decide, decide_batch

Row = Mapping[str, Any]
ABUSE, MERCHANT_RISK = "abuse_score", "merchant_risk_percentile"  # the snapshot columns the policy reads
# The triage model's default flags (same names from score_one and score_batch) and what each means for a person.
DEFAULT_NOTES = (
    ("unknown_account", "account history: none on record, scored as a new account"),
    ("unknown_merchant", "merchant signals: unknown merchant (no recent orders)"),
    ("order_context_missing", "order context: order not in the snapshot (age, lateness, return reason unknown)"),
)
NO_ABUSE_NOTE = "abuse risk: account not in the serial-returner snapshot"
NO_MERCHANT_RISK_NOTE = "merchant risk: merchant not in the merchant-risk snapshot"
FLAGS = ("guest", "unknown_account", "unknown_merchant", "order_context_missing")


def number_or_none(value: Any) -> float | None:
    """A JSON value or snapshot cell as a float, or None when absent, NaN or not a number."""
    if value is None or value is pd.NA:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def unit_or_none(value: Any) -> float | None:
    """A snapshot score as a float clipped to [0, 1], or None when absent (a bad cell must not fail a request)."""
    x = number_or_none(value)
    return None if x is None else min(max(x, 0.0), 1.0)


def notes(flags: Row, abuse: float | None, merchant_risk: float | None, account_id: Any, merchant_id: Any
          ) -> list[str]:
    """The defaults a ticket's answer used, in words: the model's flags, then the risk scores not found."""
    out = [text for flag, text in DEFAULT_NOTES if flags[flag]]
    if abuse is None and account_id:
        out.append(NO_ABUSE_NOTE)
    if merchant_risk is None and merchant_id:
        out.append(NO_MERCHANT_RISK_NOTE)
    return out


def _answer(ticket: Row, p: float, model_reasons: list[str], scored: Row, abuse: float | None,
            mrisk: float | None, priority: str, action: str, policy_reasons: list[str]) -> dict[str, Any]:
    return {
        "ticket_id": ticket.get("ticket_id"), "escalation_probability": p, "priority": priority, "action": action,
        "abuse_risk": abuse, "merchant_risk": mrisk, "reasons": [*policy_reasons, *model_reasons],
        "escalation_reasons": model_reasons, "policy_reasons": policy_reasons,
        "defaults_used": notes(scored, abuse, mrisk, ticket.get("account_id"), ticket.get("merchant_id")),
        "reason_codes": scored.get("reason_codes", []), **{f: bool(scored[f]) for f in FLAGS},
    }


def triage_one(model: Any, ticket: Row, account: Row | None, merchant: Row | None, order: Row | None,
               settings: Any) -> dict[str, Any]:
    """Escalation probability, priority, action, reasons and notes of one ticket (the single-ticket endpoint's
    answer; plain Python, no pandas: the serving hot path).

    ``model``: a fitted :class:`features.tickets.TicketTriageModel`; ``account`` / ``merchant`` / ``order``: snapshot
    rows, None when the ID is not in the snapshot. abuse_risk = the account's ``abuse_score``, merchant_risk = the
    merchant's ``merchant_risk_percentile`` (clipped to [0, 1]; None when unknown).
    """
    scored = model.score_one(ticket, account, merchant, order)
    p = scored["escalation_probability"]
    abuse = unit_or_none(account.get(ABUSE)) if account else None
    mrisk = unit_or_none(merchant.get(MERCHANT_RISK)) if merchant else None
    amount = number_or_none(ticket.get("amount"))
    priority, action, why = decide(p, abuse, mrisk, amount, ticket.get("case_type"), settings)
    return _answer(ticket, p, scored["reasons"], scored, abuse, mrisk, priority, action, why)


def risk_scores(tickets: pd.DataFrame, accounts: pd.DataFrame | None, merchants: pd.DataFrame | None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Each ticket's abuse score and merchant risk percentile from snapshot frames (indexed by ID, or with the ID
    column), clipped to [0, 1]; NaN where unknown."""
    t = tickets.reset_index(drop=True)

    def column(frame: pd.DataFrame | None, key: str, col: str) -> np.ndarray:
        if frame is None or frame.empty or col not in frame.columns or key not in t:
            return np.full(len(t), np.nan)
        f = frame.set_index(frame[key].astype("string")) if key in frame.columns else frame
        f = f[~f.index.duplicated(keep="last")]
        vals = pd.to_numeric(f[col], errors="coerce").reindex(t[key].astype("string")).to_numpy(
            dtype=np.float64, na_value=np.nan)
        return np.clip(vals, 0.0, 1.0)

    return column(accounts, "account_id", ABUSE), column(merchants, "merchant_id", MERCHANT_RISK)


def policy_batch(p: Sequence[float] | np.ndarray, tickets: pd.DataFrame, accounts: pd.DataFrame | None,
                 merchants: pd.DataFrame | None, settings: Any, reasons: bool = True) -> pd.DataFrame:
    """The policy on many tickets' escalation probabilities ``p``, reading the risk scores as :func:`triage_one`
    does: one row per ticket with priority, action, abuse_risk, merchant_risk (None when unknown) and, with
    ``reasons``, policy_reasons. What the report applies to the evaluation's probabilities."""
    t = tickets.reset_index(drop=True)
    abuse, mrisk = risk_scores(t, accounts, merchants)
    pol = decide_batch(np.asarray(p, dtype=np.float64), abuse, mrisk, t["amount"] if "amount" in t else None,
                       t["case_type"], settings, reasons=reasons)
    out = pd.DataFrame({"priority": pol["priority"].to_numpy(), "action": pol["action"].to_numpy(),
                        "abuse_risk": np.where(np.isnan(abuse), None, abuse),
                        "merchant_risk": np.where(np.isnan(mrisk), None, mrisk)})
    out["policy_reasons"] = pol["reasons"] if reasons else [[] for _ in range(len(t))]
    return out


def triage_batch(model: Any, tickets: pd.DataFrame, accounts: pd.DataFrame | None, merchants: pd.DataFrame | None,
                 orders: pd.DataFrame | None, settings: Any, reasons: bool = True) -> pd.DataFrame:
    """:func:`triage_one` for many tickets (one model call, vectorised policy); one row per ticket in input order,
    with the same columns as :func:`triage_one`'s keys and the same values (probabilities to 1e-9)."""
    scored = model.score_batch(tickets, accounts, merchants, orders, reasons=reasons)
    t = tickets.reset_index(drop=True)
    pol = policy_batch(scored["escalation_probability"].to_numpy(), t, accounts, merchants, settings, reasons)
    for col in ("priority", "action", "abuse_risk", "merchant_risk", "policy_reasons"):
        scored[col] = pol[col].to_numpy()
    scored["escalation_reasons"] = scored["reasons"]
    scored["reasons"] = [[*a, *b] for a, b in zip(scored["policy_reasons"], scored["escalation_reasons"],
                                                  strict=True)]
    accs = t["account_id"].tolist() if "account_id" in t else [None] * len(t)
    mers = t["merchant_id"].tolist() if "merchant_id" in t else [None] * len(t)
    scored["defaults_used"] = [notes(fl, a, m, _id(acc), _id(mer)) for fl, a, m, acc, mer in zip(
        scored[list(FLAGS)].to_dict("records"), scored["abuse_risk"], scored["merchant_risk"], accs, mers,
        strict=True)]
    return scored


def _id(value: Any) -> Any:
    """An ID cell as the single path sees it: NA/NaN -> None."""
    return None if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) else value
