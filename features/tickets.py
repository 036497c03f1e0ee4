"""Ticket escalation: features, snapshots and the fitted :class:`TicketTriageModel`; this module is the public face
of the pieces, which live in:

* :mod:`features.pit`: point-in-time helpers (times in microseconds, windowed sums strictly before a time);
* :mod:`features.ticket_text`: the text features and the learned :class:`TextScorer`;
* :mod:`features.ticket_history`: account history, merchant signals, order context, platform load, point in time;
* :mod:`features.ticket_features`: the feature vector (:data:`FEATURES`), its assembly, training rows, as-served rows;
* :mod:`features.ticket_snapshots`: the serving snapshots (written and read);
* :mod:`features.ticket_model`: :class:`TicketTriageModel` and its reason-rule table;
* :mod:`features.live_counts`: the load and contact counts the service keeps live.

Every name that was importable from here still is (pickled models name ``features.tickets.TicketTriageModel``).


A ticket is scored from what is known when it is created: its own fields (case type, channel, amount, hour, day of
week, holiday period, first-message text), its order's context (order age, delivery lateness known at creation, the
reason of a return requested before the ticket), the account's history and the merchant's signals.

Two ways to get the same feature vector (:data:`FEATURES`), one definition:

* **Training** (:func:`build_training_features`): every history column is computed *point in time*, strictly before
  the ticket's ``created_at``, by :func:`account_history`, :func:`merchant_signals` and :func:`order_context`.
* **Serving** (:meth:`TicketTriageModel.score_one`, :meth:`TicketTriageModel.score_batch`, :func:`triage_one`,
  :func:`triage_batch`): history columns are read *by name* from snapshot rows. :func:`feature_snapshots` runs the
  same three functions with ``time = snapshot time`` (files :data:`SNAPSHOT_FILES`, written by training), so a fresh
  snapshot gives exactly the training features (tested). :func:`load_serving_snapshots` joins them with the other
  models' snapshots (``accounts.parquet``: abuse_score, ...; ``merchants.parquet``: merchant_risk_percentile, ...);
  on shared column names (returns_30d, ...) ours win, because those models define them differently (capped rates,
  empirical-Bayes shrinkage) and the booster learned ours. Our merchant columns carry a ``mer_`` prefix so they
  never replace the merchant model's own ``late_delivery_rate`` / ``complaint_rate_90d`` in the joined merchant
  snapshot (which the merchant ranking shows).

A snapshot is older than the ticket: contacts, returns and deliveries since then are missing (a 7-day-old snapshot:
mean |p| difference 0.017 on the default world). Fields the ticket carries win over the snapshot: the ticket system
should send ``prior_tickets_30d`` (its own count of the customer's contacts) and the order context
(:data:`ORDER_CONTEXT`); with them the difference falls to 0.003 (``aftersales evaluate ticket-triage``).

The serial-return score is deliberately not a model input: per-day historical scores do not exist, so a train-time
stand-in would skew, and a perfect abuser flag adds only +0.002 ROC-AUC on the default world over the history
columns. It drives the triage policy instead (risk review). Times are integer microseconds since the epoch (UTC) on
both paths, so both compute the same floats.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from features.pit import (  # noqa: F401 — re-exported
    DAY_US,
    HOUR_US,
    latest_before,
    series_us,
    to_us,
    us_series,
    window_sum,
)
from features.ticket_features import (  # noqa: F401 — re-exported
    _IDX,
    ACCOUNT_FEATURES,
    CALENDAR_FEATURES,
    CASE_CODE,
    CATEGORICAL,
    CHANNEL_CODE,
    FEATURES,
    LIVE_FIELDS,
    LOAD_FEATURES,
    MERCHANT_FEATURES,
    NEW_ACCOUNT,
    ORDER_CONTEXT,
    ORDER_SNAPSHOT_DAYS,
    REASON_CODE,
    SNAPSHOT_COLUMNS,
    TICKET_FEATURES,
    CalendarTable,
    Row,
    TicketFeatures,
    _num,
    as_served,
    assemble_batch,
    assemble_one,
    build_training_features,
)
from features.ticket_history import (  # noqa: F401 — re-exported
    WINDOW_LONG,
    WINDOW_SHORT,
    WINDOW_YEAR,
    account_history,
    merchant_signals,
    order_context,
    order_table,
    platform_load,
    point_in_time_context,
)
from features.ticket_model import REASON_CODES, REASON_RULES, ReasonRule, TicketTriageModel  # noqa: F401
from features.ticket_snapshots import (  # noqa: F401 — re-exported
    SNAPSHOT_FILES,
    ServingSnapshots,
    data_end,
    feature_snapshots,
    load_serving_snapshots,
)
from features.ticket_text import (  # noqa: F401 — re-exported
    TEXT_HASH_BITS,
    TextScorer,
    out_of_fold_text_scores,
    text_features,
    text_grams,
    text_matrix,
)

Arr = np.ndarray

# --------------------------------------------------------------------------------------------------------------------
# Triage = score + policy (what the ticket endpoints answer)


def _unit_or_none(value: Any) -> float | None:
    """A snapshot score as a float clipped to [0, 1], or None when absent (a bad cell must not fail a request)."""
    x = _num(value)
    return None if math.isnan(x) else min(max(x, 0.0), 1.0)


def triage_one(model: TicketTriageModel, ticket: Row, account: Row | None, merchant: Row | None,
               order: Row | None, settings: Any) -> dict[str, Any]:
    """Escalation probability, priority, action and reasons of one ticket (the single-ticket endpoint's answer).

    abuse_risk = the account snapshot's ``abuse_score``; merchant_risk = the merchant snapshot's
    ``merchant_risk_percentile`` (None when unknown). ``reasons`` lists why the escalation risk is what it is, then
    why the policy chose the priority and action; both lists are also returned apart.
    """
    from features.triage_policy import decide

    out = model.score_one(ticket, account, merchant, order)
    abuse = _unit_or_none((account or {}).get("abuse_score"))
    mrisk = _unit_or_none((merchant or {}).get("merchant_risk_percentile"))
    amount = _num(ticket.get("amount"))
    priority, action, why = decide(out["escalation_probability"], abuse, mrisk,
                                   None if math.isnan(amount) else amount, ticket.get("case_type"), settings)
    out.update(priority=priority, action=action, abuse_risk=abuse, merchant_risk=mrisk,
               escalation_reasons=out["reasons"], policy_reasons=why, reasons=[*out["reasons"], *why])
    return out


def triage_batch(model: TicketTriageModel, tickets: pd.DataFrame, accounts: pd.DataFrame | None,
                 merchants: pd.DataFrame | None, orders: pd.DataFrame | None, settings: Any,
                 reasons: bool = True) -> pd.DataFrame:
    """:func:`triage_one` for many tickets (vectorised); one row per ticket in input order."""
    from features.triage_policy import decide_batch

    scored = model.score_batch(tickets, accounts, merchants, orders, reasons=reasons)
    t = tickets.reset_index(drop=True)

    def snap_col(frame: pd.DataFrame | None, key: str, col: str) -> Arr:
        if frame is None or frame.empty or col not in frame.columns or key not in t:
            return np.full(len(t), np.nan)
        f = frame.set_index(frame[key].astype("string")) if key in frame.columns else frame
        f = f[~f.index.duplicated(keep="last")]
        vals = pd.to_numeric(f[col], errors="coerce").reindex(t[key].astype("string")).to_numpy(
            dtype=np.float64, na_value=np.nan)
        return np.clip(vals, 0.0, 1.0)

    abuse = snap_col(accounts, "account_id", "abuse_score")
    mrisk = snap_col(merchants, "merchant_id", "merchant_risk_percentile")
    amount = t["amount"] if "amount" in t else None
    pol = decide_batch(scored["escalation_probability"].to_numpy(), abuse, mrisk, amount, t["case_type"], settings,
                       reasons=reasons)
    scored["priority"], scored["action"] = pol["priority"].to_numpy(), pol["action"].to_numpy()
    scored["abuse_risk"] = np.where(np.isnan(abuse), None, abuse)
    scored["merchant_risk"] = np.where(np.isnan(mrisk), None, mrisk)
    scored["escalation_reasons"] = scored["reasons"]
    scored["policy_reasons"] = pol["reasons"] if reasons else [[] for _ in range(len(t))]
    scored["reasons"] = [[*a, *b] for a, b in zip(scored["escalation_reasons"], scored["policy_reasons"],
                                                  strict=True)]
    return scored
