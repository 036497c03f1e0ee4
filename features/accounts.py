"""Serial-return accounts: the review queue and the serving snapshot, and the one import path for every piece.

The pieces, each with one reason to change (``features.accounts`` re-exports all of their public names, so
``from features.accounts import SerialReturnerModel`` and pickles of registered models keep working):

- :mod:`features.account_features`: point-in-time account features (``account_features(orders, returns,
  account_links, as_of)``; per-account counts, the population stage, linked accounts), dates and the feature list.
- :mod:`features.account_detector`: :class:`PatternDetector` (cold start, no labels): one test per abuse pattern
  (serial returning, refund without return and 'not received' claims against the delivery record, wardrobing,
  rings of linked accounts), each the tail probability of the account's count under the platform's own
  beta-binomial null; the patterns' tails add up. And the one-line baselines it is compared with.
- :mod:`features.account_model`: :class:`SerialReturnerModel`: the detector, plus, once enough review decisions
  exist and held-out decisions say it ranks better, a small LightGBM boosted from a logistic prior on the
  detector's score; ``use`` switches the ranking to a baseline (or a blend) that won the user's own check.
- :mod:`features.account_reasons`: the sentences a reviewer reads.
- here: :func:`review_queue` (capacity, pattern reservations, audit sample) and :func:`score_snapshot`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from features.account_detector import (  # noqa: F401  (re-exported)
    BASELINES,
    CALIBRATION_QUANTILES,
    COUNT_FEATURES,
    PatternDetector,
    baseline_score,
    blend_parts,
    combined_score,
    counts_forest,
)
from features.account_features import (  # noqa: F401  (re-exported)
    ANOMALY_FEATURE,
    CLAIM_REASONS,
    DAYS_CAP,
    DELIVERY_EDGES,
    FEATURE_PATTERN,
    FEATURES,
    MAX_LINK_SHARE,
    MIN_EVENT_SIZE,
    PATTERN_TESTS,
    PATTERNS,
    PRIOR_LINES,
    US_PER_DAY,
    WARDROBE_AFTER_DAYS,
    WARDROBE_BEFORE_DAYS,
    WINDOWS,
    WORN_CATEGORIES,
    AccountFrame,
    AsOfError,
    Day,
    account_counts,
    account_features,
    as_day,
    check_as_of,
    dataset_features,
    delivery_histogram,
    finish_account_features,
    link_pairs,
)
from features.account_model import (  # noqa: F401  (re-exported)
    SerialReturnerModel,
)
from features.account_reasons import (  # noqa: F401  (re-exported)
    pattern_text,
    reason_text,
    typical_values,
)

# --------------------------------------------------------------------------------------------------------------------
# Scoring outputs: the review queue and the serving snapshot

SNAPSHOT_COLUMNS = ("account_id", "abuse_score", "abuse_percentile", "likely_pattern", "top_reason",
                    "returns_30d", "return_rate_90d", "refund_without_return_90d", "link_group_size")
QUEUE_COLUMNS = ("account_id", "score", "rank", "reasons", "likely_pattern")


# A pattern's reserved slot goes only to an account whose evidence of that pattern is at least this unusual on the
# platform (-log10 of the chance for an ordinary account: 3 = one in a thousand). Below it the slot goes back to the
# top scores: a reservation is there so that a kind of abuse is not crowded out, not to fill the queue with ordinary
# accounts when a pattern is absent. Seeds 600-607, 700-711, 800-811: whole-queue precision median
# (reservations and a 5% audit sample) 0.737/0.771/0.766 -> 0.766/0.778/0.783.
PATTERN_MIN_EVIDENCE = 3.0


def queue_settings(settings) -> dict:
    """:func:`review_queue`'s keyword arguments from the settings (``features.settings.Settings``): the share
    reserved per pattern, the evidence that fills a reserved slot and the audit sample, the same for every queue."""
    return {"pattern_share": settings.serial_pattern_share,
            "pattern_min_evidence": settings.serial_pattern_min_evidence,
            "explore_share": settings.serial_explore_share}


def review_queue(X: AccountFrame, model: SerialReturnerModel, capacity: int, exclude: Iterable[str] = (),
                 scores: np.ndarray | None = None, pattern_share: float = 0.1, explore_share: float = 0.0,
                 pool: int = 20, seed: int = 0, pattern_min_evidence: float = PATTERN_MIN_EVIDENCE) -> pd.DataFrame:
    """The review queue: ``capacity`` accounts not in ``exclude``, ranked by score, with reasons and likely pattern.

    Most slots go to the highest scores. ``pattern_share`` of the capacity is reserved per pattern (serial,
    wardrobing, refund_without_return, ring) for the best-scored accounts of that likely pattern within the top
    ``pool`` x capacity, so no kind of abuse goes unreviewed (and so unlabelled) because another one scores higher;
    only accounts whose evidence of that pattern reaches ``pattern_min_evidence`` (-log10 of the chance for an
    ordinary account of the platform) fill a reserved slot, the others' slots go to the top scores.
    ``explore_share`` of the capacity is drawn at random from that pool below the top ``capacity`` (an audit
    sample: decisions near the boundary teach the next model most, and give an unbiased check of precision).
    Column ``slot`` says which rule chose each account. Guests have no account_id and are never queued.
    """
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1 (got {capacity})")
    s = pd.Series(model.predict(X) if scores is None else np.asarray(scores), index=X.index, name="score")
    s = s[s.index.notna() & ~s.index.isin(list(exclude))]
    ranked = s.sort_values(ascending=False, kind="stable").head(max(pool, 1) * capacity)
    why = model.explain(X.loc[ranked.index])
    n_explore = int(round(explore_share * capacity))
    base = capacity - n_explore
    slot = pd.Series("", index=ranked.index, dtype=object)
    per_pattern = int(np.floor(pattern_share * capacity))
    coverage = []
    for p in PATTERNS:
        strong = (why["likely_pattern"] == p).to_numpy() & (why["pattern_evidence"] >= pattern_min_evidence).to_numpy()
        coverage += list(why.index[strong][:per_pattern])
    coverage = coverage[:base]
    covered = set(coverage)
    top = [a for a in ranked.index if a not in covered][:max(base - len(coverage), 0)]
    slot[top] = "top score"
    # A coverage account that would have made the top anyway is a top-score pick.
    in_top = set(ranked.index[:base])
    slot[coverage] = ["top score" if a in in_top else "pattern coverage" for a in coverage]
    grey = slot.index[(slot == "").to_numpy() & (np.arange(len(slot)) >= capacity)]
    if n_explore and len(grey):
        rng = np.random.default_rng(seed)
        slot[rng.choice(np.asarray(grey, dtype=object), min(n_explore, len(grey)), replace=False)] = "exploration"
    # Fill any slot still open (a small pool) with the next scores.
    left = capacity - int((slot != "").sum())
    if left > 0:
        slot[slot.index[(slot == "").to_numpy()][:left]] = "top score"
    chosen = ranked[(slot != "").to_numpy()].head(capacity)
    return pd.DataFrame({
        "account_id": chosen.index.astype("string"), "score": chosen.to_numpy().round(6),
        "rank": np.arange(1, len(chosen) + 1), "reasons": why.loc[chosen.index, "reasons"].to_numpy(),
        "likely_pattern": why.loc[chosen.index, "likely_pattern"].to_numpy(),
        "slot": slot[chosen.index].to_numpy(),
    })


def score_snapshot(X: AccountFrame, model: SerialReturnerModel, scores: np.ndarray | None = None,
                   explain_top: float = 0.10) -> pd.DataFrame:
    """Every account's score for serving: :data:`SNAPSHOT_COLUMNS`.

    Reasons are written for the top ``explain_top`` share of accounts (the ones anybody will look at); the rest get
    an empty top_reason and the pattern 'none'.
    """
    s = model.predict(X) if scores is None else np.asarray(scores)
    # Ranked on the scores as written (6 decimals): scores equal but for float noise (the same account scored per
    # partition or at once) are ties, so the percentile does not depend on the engine.
    pct = pd.Series(np.round(s, 6)).rank(pct=True, method="average").to_numpy()
    pattern = np.full(len(X), "none", dtype=object)
    top_reason = np.full(len(X), "", dtype=object)
    hot = np.where(pct >= 1 - explain_top)[0]
    if len(hot):
        why = model.explain(X.iloc[hot], top=1)
        pattern[hot] = why["likely_pattern"].to_numpy()
        top_reason[hot] = why["top_reason"].to_numpy()
    return pd.DataFrame({
        "account_id": X.index.astype("string"), "abuse_score": s.round(6), "abuse_percentile": pct.round(6),
        "likely_pattern": pd.array(pattern, dtype="string"), "top_reason": pd.array(top_reason, dtype="string"),
        "returns_30d": X["returns_30d"].to_numpy(), "return_rate_90d": X["return_rate_90d"].to_numpy(),
        "refund_without_return_90d": X["refund_without_return_90d"].to_numpy(),
        "link_group_size": X["link_group_size"].to_numpy(),
    })
