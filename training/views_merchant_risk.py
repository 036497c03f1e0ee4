"""The merchant-risk view (training/views.py): the snapshot evaluation against the baselines, lift by decile and the
ranking as of the last day; figures, tables and the report's blocks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

from features.contract import Dataset
from features.settings import Settings
from training.views_common import RANKING_HEAD, Echo, Plot, Table, Text, _has_champion, _lap, _quiet


@dataclass
class MerchantRiskView:
    """Snapshot backtest, lift by decile and the ranking as of the last day."""

    evaluation: Any  # training.merchant_risk.Evaluation
    lift: pd.DataFrame
    ranking: pd.DataFrame
    ranking_model: str
    as_of: pd.Timestamp


def merchant_risk_view(ds: Dataset, settings: Settings, use: str = "auto", echo: Echo = _quiet) -> MerchantRiskView:
    """Backtest both models and the baselines on later snapshots (``evaluate``); rank every merchant as of the last
    day with the champion (``use='auto'`` and one is registered) or with the better model refitted on every
    matured snapshot, as training does."""
    from features.merchants import MerchantRiskModel, build_snapshots, prepare_events
    from training import merchant_risk as mr

    t0 = time.perf_counter()
    events = prepare_events(ds)
    bt = mr.evaluate(events, settings, echo=lambda s: echo(s.strip()))
    lift = mr.lift_table(bt.scored, list(mr.METHODS), settings.merchant_min_label_orders)
    echo(f"backtest done ({_lap(t0)})")
    t0 = time.perf_counter()
    model, which = None, ""
    if use == "auto" and _has_champion(mr.MODEL_NAME, settings):
        from training import registry

        loaded = registry.load_champion(mr.MODEL_NAME, settings=settings)
        model, which = loaded.model, f"registered champion {mr.MODEL_NAME} v{loaded.version}"
    if model is None:
        dates = mr.snapshot_dates(events, settings)
        model = MerchantRiskModel(kind=bt.chosen, use=bt.use, **mr.model_params(settings)).fit(
            build_snapshots(events, dates, settings.merchant_horizon_days))
        which = (f"{bt.chosen} fitted on all {len(dates)} matured snapshots, ranking by {bt.served} "
                 "(no champion used)")
    ranking = mr.rank_as_of(model, events, events.end, settings)
    echo(f"ranked {len(ranking)} merchants as of {events.end.date()} ({_lap(t0)})")
    return MerchantRiskView(bt, lift, ranking, which, events.end)


def merchant_metrics_table(view: MerchantRiskView) -> pd.DataFrame:
    """NDCG@20/@50, precision at the top decile and Spearman per method, averaged over the test snapshots."""
    return view.evaluation.summary.round(3).reset_index(names="method")


def merchant_targets(view: MerchantRiskView) -> list[str]:
    """The ranking's targets against the better baseline."""
    from training.merchant_risk import target_lines

    return target_lines(view.evaluation)


def lift_figure(view: MerchantRiskView):
    """Complaint rate of each score decile over the average, per method (training/merchant_risk.py)."""
    from training.merchant_risk import lift_figure as mr_lift_figure

    return mr_lift_figure(view.lift)


def ranking_table(view: MerchantRiskView, head: int = RANKING_HEAD) -> pd.DataFrame:
    """The riskiest merchants: rank, merchant, score, expected complaints, flag and reasons."""
    cols = [c for c in ("rank", "merchant_id", "score", "expected_complaints", "late_delivery_rate",
                        "complaint_rate_90d", "flag", "reasons") if c in view.ranking.columns]
    out = view.ranking[cols].head(head).copy()
    for c in ("score", "expected_complaints", "late_delivery_rate", "complaint_rate_90d"):
        if c in out:
            out[c] = out[c].astype(float).round(3)
    return out


def merchant_percentiles(view: MerchantRiskView) -> pd.DataFrame:
    """merchant_id and merchant_risk_percentile (1.0 = riskiest), as the serving snapshot holds them."""
    n = len(view.ranking)
    return pd.DataFrame({"merchant_id": view.ranking["merchant_id"].astype("string"),
                         "merchant_risk_percentile": 1.0 - (view.ranking["rank"].to_numpy() - 1) / max(n, 1)})


def merchant_risk_blocks(view: MerchantRiskView) -> list:
    """Merchant risk: metrics, lift, ranking."""
    return [
        Table("Ranking quality against the baselines", merchant_metrics_table(view),
              "Measured on later snapshots than the models trained on. NDCG@50: how well the top 50 is ordered by "
              "the complaints merchants really drew in the next 60 days (1 = perfect); precision at decile: share "
              "of the top 10% that really are in the worst 10%. Baselines rank by last period's complaint rate or "
              "count."),
        Text("Targets", merchant_targets(view)),
        Plot("Lift by score decile", lift_figure(view),
             "Merchants split into ten equal groups by score (10 = riskiest); the height is that group's actual "
             "complaint rate over the average. A steeper rise to the right means the ranking separates risky "
             "merchants better; 1 is no better than chance."),
        Table("Merchant ranking (head)", ranking_table(view),
              f"The riskiest merchants as of {view.as_of.date()} ({view.ranking_model}), with the signals behind "
              "each score. Flags mark merchants without recent orders or too new to judge."),
    ]
