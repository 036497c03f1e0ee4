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
:mod:`training.views_merchant_risk`, and the ticket triage view here; what they share is in
:mod:`training.views_common`. Every name stays importable as ``training.views.<name>``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.contract import Dataset
from features.settings import Settings
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

# --------------------------------------------------------------------------------------------------------------------
# Ticket triage


@dataclass
class TicketTriageView:
    """Time-split evaluation, the policy mix on the later tickets and the scoring latency."""

    evaluation: Any  # training.ticket_triage.Evaluation
    decisions: pd.DataFrame  # later tickets: case_type, escalation_probability, priority, action, escalated
    latency: dict[str, float]
    latency_n: int
    notes: list[str] = field(default_factory=list)


def ticket_triage_view(ds: Dataset, settings: Settings, accounts: pd.DataFrame | None = None,
                       merchants: pd.DataFrame | None = None, latency_n: int = 2000,
                       echo: Echo = _quiet) -> TicketTriageView:
    """Fit on earlier tickets, score the later ones (``evaluate``), apply the triage policy to them, time scoring.

    ``accounts`` (account_id, abuse_score) and ``merchants`` (merchant_id, merchant_risk_percentile): the current
    risk scores the policy reads, as serving holds them; without them every account and merchant counts as
    unknown (no risk review, no merchant bump) and a note says so.
    """
    from features.tickets import CalendarTable, build_training_features
    from features.triage import policy_batch
    from training import ticket_triage as tt

    if not ds.has("tickets"):
        raise ValueError("no tickets table (tickets.parquet / tickets.csv): the escalation model learns from past "
                         "tickets; add the platform's ticket export")
    t0 = time.perf_counter()
    feats = build_training_features(ds, CalendarTable(settings.market, settings.summer_sale,
                                                      settings.summer_sale_days))
    ev = tt.evaluate(feats, settings, ds=ds, echo=_quiet)
    echo(f"evaluated on {len(ev.split.test):,} later tickets ({_lap(t0)})")
    meta = feats.meta.iloc[ev.split.test].reset_index(drop=True)
    p = ev.model.predict(feats.X.iloc[ev.split.test])
    notes = []

    for frame, key, col in ((accounts, "account_id", "abuse_score"), (merchants, "merchant_id",
                                                                       "merchant_risk_percentile")):
        if frame is None or frame.empty:
            notes.append(f"no {col} available: the policy treats every {key.split('_')[0]} as unknown")
    pol = policy_batch(p, meta, accounts, merchants, settings, reasons=False)  # as served (features/triage.py)
    decisions = pd.DataFrame({"ticket_id": meta["ticket_id"], "case_type": meta["case_type"],
                              "escalation_probability": p, "priority": pol["priority"], "action": pol["action"],
                              "escalated": meta["escalated"].astype(bool)})
    lat: dict[str, float] = {}
    if latency_n:
        t0 = time.perf_counter()
        lat = _latency(ev.model, ds, latency_n)
        echo(f"timed score_one and score_batch ({_lap(t0)})")
    return TicketTriageView(ev, decisions, lat, latency_n, notes)


def _latency(model, ds: Dataset, n: int) -> dict[str, float]:
    """score_one per call and score_batch for ``n`` tickets (``measure_latency`` on snapshots in a temp folder)."""
    from features.tickets import SNAPSHOT_FILES, data_end, feature_snapshots
    from training.ticket_triage import measure_latency

    with tempfile.TemporaryDirectory(prefix="aftersales-latency-") as tmp:
        for name, frame in feature_snapshots(ds, data_end(ds)).items():
            frame.to_parquet(Path(tmp) / SNAPSHOT_FILES[name], index=False)
        return measure_latency(model, ds, Path(tmp), n_calls=n, n_batch=n)


def triage_metrics_table(view: TicketTriageView) -> pd.DataFrame:
    """ROC-AUC, PR-AUC, Brier, log loss and ECE of the model, the uncalibrated booster and the case-type baseline."""
    m = view.evaluation.metrics
    rows = []
    for name, prefix in (("model (calibrated)", ""), ("booster before calibration", "uncalibrated_"),
                         ("case-type baseline", "baseline_")):
        rows.append({"method": name, **{k: round(m[f"{prefix}{k}"], 4)
                                        for k in ("roc_auc", "pr_auc", "brier", "log_loss", "ece")}})
    return pd.DataFrame(rows)


def triage_targets(view: TicketTriageView) -> list[str]:
    """The model's figures with the target verdict, and the policy notes."""
    from training.ticket_triage import target_lines

    return target_lines(view.evaluation.metrics) + view.notes


def calibration_figure(view: TicketTriageView):
    """Reliability diagram of the model and the case-type baseline over the histogram of predicted probabilities."""
    return view.evaluation.figure


def reliability_table(view: TicketTriageView) -> pd.DataFrame:
    """10 equal-count bins of predicted probability on the later tickets: predicted against observed."""
    return view.evaluation.reliability.round(4)


def slices_table(view: TicketTriageView) -> pd.DataFrame:
    """ROC-AUC of the model and the baseline on each case type, peak windows, guests, phone, tickets without order."""
    return view.evaluation.slices.round(4)


def policy_mix_table(view: TicketTriageView) -> pd.DataFrame:
    """Later tickets by priority and action, with their observed escalation rate."""
    from features.triage_policy import ACTIONS, PRIORITIES

    d = view.decisions
    mix = pd.crosstab(d["priority"], d["action"]).reindex(index=list(PRIORITIES), columns=list(ACTIONS),
                                                           fill_value=0)
    mix.columns.name = None
    mix["tickets"] = mix.sum(axis=1)
    mix["share"] = (mix["tickets"] / max(len(d), 1)).round(3)
    mix["observed escalation rate"] = d.groupby("priority")["escalated"].mean().reindex(mix.index).round(3)
    return mix.reset_index()


def policy_mix_figure(view: TicketTriageView):
    """Later tickets per priority, stacked by the action the policy suggests; observed escalation rate on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from features.triage_policy import ACTIONS, PRIORITIES

    d = view.decisions
    mix = pd.crosstab(d["priority"], d["action"]).reindex(index=list(PRIORITIES), columns=list(ACTIONS),
                                                           fill_value=0)
    rate = d.groupby("priority")["escalated"].mean().reindex(mix.index)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    bottom = np.zeros(len(mix))
    for a in mix.columns:
        ax.bar(mix.index, mix[a].to_numpy(), bottom=bottom, label=a)
        bottom += mix[a].to_numpy()
    for x, (total, r) in enumerate(zip(bottom, rate.to_numpy(), strict=True)):
        if total > 0 and not np.isnan(r):
            ax.text(x, total, f"{r:.0%} escalated", ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="later tickets", title=f"Triage policy on {len(d):,} later tickets")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def latency_table(view: TicketTriageView) -> pd.DataFrame:
    """In-process scoring time of the evaluated model (not the HTTP service; see README for that benchmark)."""
    lat = view.latency
    if not lat:
        return pd.DataFrame()
    n = view.latency_n
    return pd.DataFrame([
        {"what": f"score_one, one ticket (mean of {n:,} calls)", "time": f"{lat['score_one_us']:.0f} µs"},
        {"what": f"score_batch, {n:,} tickets with reasons", "time": f"{lat['score_batch_10k_s'] * 1e3:.0f} ms"},
        {"what": f"score_batch, {n:,} tickets without reasons",
         "time": f"{lat['score_batch_10k_no_reasons_s'] * 1e3:.0f} ms"},
    ])


# --------------------------------------------------------------------------------------------------------------------
# Blocks: what the report shows, in order, with the captions people read


def ticket_triage_blocks(view: TicketTriageView) -> list:
    """Ticket triage: metrics, calibration, slices, policy mix, latency."""
    blocks = [
        Table("Escalation model against the baseline", triage_metrics_table(view),
              "Fitted on earlier tickets, measured on later ones. ROC-AUC: how well escalating tickets are ranked "
              "above the rest (0.5 = chance); Brier and ECE: how close predicted probabilities are to what "
              "happened (lower is better). The baseline gives every ticket its case type's escalation rate."),
        Text("Figures and targets", triage_targets(view)),
        Plot("Calibration", calibration_figure(view),
             "Top: tickets grouped by predicted escalation probability; a point on the dotted diagonal means "
             "'of the tickets given 30%, 30% escalated'. Bottom: how many later tickets got each probability."),
        Table("Reliability", reliability_table(view),
              "The calibration plot's points: ten equal-sized groups of later tickets, predicted against observed."),
        Table("Slices", slices_table(view),
              "The same measures on groups that matter: each case type, event peaks, guests, phone contacts and "
              "tickets without an order."),
        Plot("Policy mix", policy_mix_figure(view),
             "What the triage policy would do with the later tickets: bars count tickets per priority, split by "
             "the suggested action; the label is the share of them that really escalated (P1 should be highest). "
             "Thresholds are business settings (AFTERSALES_P1_ESCALATION ...)."),
        Table("Policy mix by priority and action", policy_mix_table(view),
              "Ticket counts per priority and action, each priority's share of tickets and its observed "
              "escalation rate."),
    ]
    lat = latency_table(view)
    if not lat.empty:
        blocks.append(Table("Scoring latency", lat,
                            "Time to score tickets inside this process (one core, no HTTP). The service's own "
                            "latency is measured by benchmarks/bench_serving.py (see README)."))
    return blocks


# --------------------------------------------------------------------------------------------------------------------
# Display helpers (notebooks) and PNG encoding (report)
