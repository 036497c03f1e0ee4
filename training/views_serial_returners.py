"""The serial-returner view (training/views.py): evaluation on later time (or the forward check), the pattern recall
and the review queue as of the last day; figures, tables and the report's blocks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.contract import Dataset
from features.settings import Settings
from training.views_common import QUEUE_HEAD, Echo, Plot, Table, Text, _has_champion, _lap, _quiet


@dataclass
class SerialReturnersView:
    """Held-out evaluation (or the forward check without truth) and the review queue as of the last day."""

    evaluation: Any | None  # training.serial_returners.Evaluation (ground truth)
    forward: dict | None  # training.serial_returners.evaluate_forward result (no ground truth)
    capacity: int
    queue: pd.DataFrame
    queue_model: str  # which model built the queue
    as_of: pd.Timestamp
    accounts: pd.DataFrame  # every account's abuse_score as of the last day (for the triage policy mix)
    notes: list[str] = field(default_factory=list)


def serial_returners_view(ds: Dataset, data_dir: Path | str, settings: Settings, use: str = "auto",
                          evaluate: bool = True, echo: Echo = _quiet) -> SerialReturnersView:
    """Evaluate on later time (``evaluate_on_truth`` with the training split, or ``evaluate_forward``), then the
    review queue as of the last day: the champion when it was trained on this data up to that day (``use='auto'``),
    else a model fitted as of that day on the review decisions known then."""
    from features.accounts import queue_settings, review_queue, score_snapshot
    from training import serial_returners as sr

    data_dir = Path(data_dir)
    capacity = settings.review_capacity
    ev = fw = None
    notes: list[str] = []
    if evaluate:
        t0 = time.perf_counter()
        truth = sr._truth(data_dir)
        if truth is not None:
            t1, t2 = sr.default_split(ds, settings)
            ev = sr.evaluate_on_truth(ds, truth, t1, t2, settings, capacity, feedback=False)
            echo(f"evaluated: fitted as of {t1.date()}, scored as of {t2.date()} ({_lap(t0)})")
        else:
            first, last = ds.time_span()
            t1 = max(last - pd.Timedelta(days=sr.FORWARD_HORIZON_DAYS), first + (last - first) / 2).normalize()
            fw = sr.evaluate_forward(ds, t1, settings, top=capacity)
            notes.append(f"no ground truth in {data_dir}: forward check (top {capacity} flagged as of {fw['t1']}, "
                         f"heavy returners = {fw['heavy_threshold']:.0f}+ returns up to {fw['window_end']})")
            echo(f"forward check from {fw['t1']} ({_lap(t0)})")
    t0 = time.perf_counter()
    day = ds.time_span()[1].normalize()
    X = sr.features_as_of(ds, day, settings)
    lines: list[str] = []
    champion = use == "auto" and _has_champion(sr.MODEL_NAME, settings)
    model = sr._choose_model(ds, X, day, data_dir, settings, "auto" if champion else "fit", lines.append)
    labels = sr.load_labels(ds, settings, day)
    exclude = sr.excluded_accounts(labels, day, settings.serial_review_cooldown_days)
    scores = model.predict(X)
    queue = review_queue(X, model, capacity, exclude=exclude, scores=scores,
                         **queue_settings(settings))
    accounts = score_snapshot(X, model, scores=scores)
    echo(f"review queue of {len(queue)} as of {day.date()} ({_lap(t0)})")
    return SerialReturnersView(ev, fw, capacity, queue, "; ".join(lines), day, accounts, notes)


def serial_metrics_table(view: SerialReturnersView) -> pd.DataFrame:
    """Per method: PR-AUC, precision at capacity, recall at 1% FPR and recall per pattern at capacity (held out);
    without truth, the forward check's table."""
    from features.accounts import PATTERNS

    if view.evaluation is None:
        return view.forward["table"].reset_index().round(3) if view.forward else pd.DataFrame()
    cols = ["pr_auc", "precision_at_capacity", "recall_at_1pct_fpr", *[f"recall_{p}_at_capacity" for p in PATTERNS]]
    return view.evaluation.metrics[cols].round(3).reset_index()


def serial_targets(view: SerialReturnersView) -> list[str]:
    """The detector's targets with PASS/FAIL (ground truth only)."""
    from training.serial_returners import target_lines

    return (target_lines(view.evaluation) if view.evaluation is not None else []) + view.notes


def serial_figures(view: SerialReturnersView):
    """(precision-recall curve, precision against the number of accounts reviewed) for every method, held out."""
    from training.serial_returners import evaluation_figures

    if view.evaluation is None:
        return None, None
    return evaluation_figures(view.evaluation.curves, view.capacity)


def pattern_figure(view: SerialReturnersView):
    """Left: recall per abuse pattern at capacity, per method (held out). Right: the current queue by likely pattern."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from features.accounts import PATTERNS

    fig, (ax, qx) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    if view.evaluation is not None:
        m = view.evaluation.metrics
        width = 0.8 / len(m)
        for i, (method, row) in enumerate(m.iterrows()):
            vals = [row[f"recall_{p}_at_capacity"] for p in PATTERNS]
            ax.bar(np.arange(len(PATTERNS)) + i * width, vals, width, label=method)
        ax.set_xticks(np.arange(len(PATTERNS)) + 0.4 - width / 2, PATTERNS, fontsize=8)
        ax.set(ylabel=f"recall in the top {view.capacity}", ylim=(0, 1),
               title="Abusers found per pattern (later time)")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no ground truth: recall per pattern not measurable", ha="center", va="center")
        ax.axis("off")
    counts = view.queue["likely_pattern"].value_counts()
    qx.barh(counts.index.astype(str), counts.to_numpy(), color="tab:purple")
    qx.invert_yaxis()
    qx.set(xlabel="accounts in the queue", title=f"Queue as of {view.as_of.date()} by likely pattern")
    fig.tight_layout()
    return fig


def queue_table(view: SerialReturnersView, head: int = QUEUE_HEAD) -> pd.DataFrame:
    """The head of the review queue: rank, account, score, likely pattern, why it was picked, the reasons."""
    cols = ["rank", "account_id", "score", "likely_pattern", "slot", "reasons"]
    return view.queue[cols].head(head).assign(score=lambda d: d["score"].round(3))


def serial_returners_blocks(view: SerialReturnersView) -> list:
    """Serial returners: metrics, curves, patterns, the queue."""
    pr, cap = serial_figures(view)
    where = ("Measured on later time: the model was fitted at one date and scored six months later against the "
             "ground truth, next to a return-count rule and an IsolationForest on raw counts."
             if view.evaluation is not None else
             "No ground truth here: the check is forward-looking (how many flagged accounts are heavy returners "
             "in the next quarter).")
    blocks = [Table("Detector against the baselines", serial_metrics_table(view),
                    where + " PR-AUC summarises precision over all queue sizes (higher is better); precision at "
                    f"capacity is the share of real abusers among the top {view.capacity}, the team's review "
                    "capacity; recall per pattern is the share of each kind of abuser found there."),
              Text("Targets", serial_targets(view))]
    if pr is not None:
        blocks += [
            Plot("Precision against review capacity", cap,
                 "How many of the accounts reviewed are real abusers, as the queue grows. The dashed line is the "
                 f"team's capacity ({view.capacity}); a curve higher at that line wastes fewer reviews."),
            Plot("Precision and recall", pr,
                 "Each curve trades finding more abusers (recall, right) against fewer wasted reviews (precision, "
                 "up); curves further up and right are better."),
        ]
    blocks += [
        Plot("Abuse patterns", pattern_figure(view),
             "Left: for each kind of abuse, the share of its abusers each method puts in the top of the queue "
             "(later time). Right: the current queue by the pattern each account most resembles; some slots are "
             "reserved per pattern so no kind of abuse goes unreviewed."),
        Table("Review queue (head)", queue_table(view),
              f"The first {min(QUEUE_HEAD, len(view.queue))} of {len(view.queue)} accounts to review as of "
              f"{view.as_of.date()} ({view.queue_model}). Reasons compare the account with typical accounts; "
              "slot says why it is in the queue (top score, pattern coverage, or an exploration sample that "
              "checks the boundary)."),
    ]
    return blocks
