"""The plots and tables people read: one implementation each, shared by ``aftersales report`` and the notebooks.

Each model has a *view*: what its section shows, computed from a data folder on the held-out design its training
module uses (so every figure here is measured on later time than the model learnt from), plus the current
operational output (forecast and staffing plan, review queue, merchant ranking, triage policy mix):

- :func:`return_volume_view`: rolling-origin backtest against the baselines (``backtest``, the settings
  ``train`` uses), then a forecast from the data's last day long enough to reach the next major event, and the
  staffing plan for that event's window (features/staffing.py).
- :func:`serial_returners_view`: fit as of T1, score as of T2 against the truth (``evaluate_on_truth``), or the
  forward check on data without truth; the review queue as of the last day with reasons.
- :func:`merchant_risk_view`: the snapshot backtest against the baselines, the lift by decile, the ranking as of the
  last day with reasons.
- :func:`ticket_triage_view`: the time-split evaluation (calibration, slices), the policy mix on the later tickets,
  score_one / score_batch latency.

The operational outputs use the registered champion when ``use="auto"`` finds one that fits (see each view), else a
model fitted on the data up to its last day, the way the CLI commands do. Figure and table builders take a view and
return a matplotlib figure or a DataFrame; each ``*_blocks`` function lists them in report order with captions.
Nothing here logs to MLflow or writes to the registry.

One module per model: :mod:`training.views_return_volume`, :mod:`training.views_serial_returners`,
:mod:`training.views_merchant_risk`, :mod:`training.views_ticket_triage`; what they share is in
:mod:`training.views_common`. Every name stays importable as ``training.views.<name>``.
"""

from __future__ import annotations

from training.views_common import (  # noqa: F401 — re-exported: report.py and the notebooks read views.*
    NOTEBOOK_DATA_ENV,
    QUEUE_HEAD,
    RANKING_HEAD,
    SMALL_WORLD,
    Echo,
    Plot,
    Section,
    Table,
    Text,
    _has_champion,
    _lap,
    _quiet,
    load,
    notebook_data,
    png,
    png_base64,
    registered_models,
    show,
    small_world,
)
from training.views_merchant_risk import (  # noqa: F401
    MerchantRiskView,
    lift_figure,
    merchant_metrics_table,
    merchant_percentiles,
    merchant_risk_blocks,
    merchant_risk_view,
    merchant_targets,
    ranking_table,
)
from training.views_return_volume import (  # noqa: F401
    ReturnVolumeView,
    backtest_figure,
    backtest_table,
    backtest_targets,
    forecast_figure,
    history_figure,
    return_volume_blocks,
    return_volume_view,
    staffing_figure,
    staffing_table,
)
from training.views_serial_returners import (  # noqa: F401
    SerialReturnersView,
    pattern_figure,
    queue_table,
    serial_figures,
    serial_metrics_table,
    serial_returners_blocks,
    serial_returners_view,
    serial_targets,
)
from training.views_ticket_triage import (  # noqa: F401
    TicketTriageView,
    calibration_figure,
    latency_table,
    policy_mix_figure,
    policy_mix_table,
    reliability_table,
    slices_table,
    ticket_triage_blocks,
    ticket_triage_view,
    triage_metrics_table,
    triage_targets,
)

# --------------------------------------------------------------------------------------------------------------------
# Display helpers (notebooks) and PNG encoding (report)
