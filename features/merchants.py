"""Merchant complaint risk: point-in-time merchant features, the complaint label, and the fitted rankers.

This module is the public face of the pieces (every name that was importable from here still is; registered models
pickled before the split name ``features.merchants.MerchantRiskModel``, which resolves here). They live in:

* :mod:`features.merchant_events`: the contract tables coded once as arrays (:func:`prepare_events`) and the raw
  windowed counts, point in time;
* :mod:`features.merchant_features`: empirical-Bayes shrinkage, the features as of a day (:func:`build_features`),
  the complaint link, the label (:func:`build_labels`) and stacked training snapshots;
* :mod:`features.merchant_model`: :class:`MerchantRiskModel` (GLM, LightGBM Poisson, LambdaRank, blend) and its
  reasons.

Everything here is pure computation on the contract tables (no MLflow, no HTTP), so training and serving run the
same code.
"""

from features.merchant_events import (  # noqa: F401
    BASELINE_DAYS,
    DAY,
    HORIZON_DAYS,
    LOGISTICS_REASONS,
    NEVER,
    NEW_MERCHANT_DAYS,
    QUALITY_REASONS,
    UNKNOWN_CATEGORY,
    VERY_LATE_DAYS,
    AsOfError,
    MerchantEvents,
    complaint_counts,
    late_delivery_counts,
    prepare_events,
)
from features.merchant_features import (  # noqa: F401
    FEATURES,
    INFO_COLUMNS,
    LABEL_COLUMNS,
    SHRUNK_RATES,
    FeatureFrame,
    SnapshotFrame,
    build_features,
    build_labels,
    build_snapshots,
    complaint_link,
    dataset_merchant_features,
    finish_merchant_features,
    merchant_counts,
    relevance_grades,
    shrink_rates,
)
from features.merchant_model import (  # noqa: F401
    GLM_FEATURES,
    GLM_RATE_FLOOR,
    KINDS,
    RANKED_BY,
    REASON_GROUPS,
    MerchantRiskModel,
    path_attribution_table,
    sort_ranking,
)
