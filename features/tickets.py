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

import numpy as np

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
# Triage = score + policy (what the ticket endpoints answer) lives in features/triage.py; importable from here too.

from features.triage import triage_batch, triage_one  # noqa: E402,F401
