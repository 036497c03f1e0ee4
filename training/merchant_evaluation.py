"""Merchant complaint risk, evaluated: backtest over as-of snapshots, the ranking metrics, the choice of model.

The backtest builds merchant snapshots every ``merchant_snapshot_every_days`` days (features as of the day, label =
complaints per order in the next ``merchant_horizon_days`` days). The latest matured snapshots are the test set; the
models train only on snapshots whose label window closed before the first test as-of date (what a model trained on
that day could have known). The log-linear model (GLM), the tree models (Poisson, LambdaRank, their blend) and both
baselines (last period's complaint rate and count) are scored on the same test snapshots, and on validation snapshots
(the training period's latest, scored by models fitted on its earlier ones). The GLM ranks; the better baseline ranks
instead when it beats the GLM over the validation and test snapshots together. What ranks is refitted on every
matured snapshot, registered, and promoted by the gate on NDCG@50.

Metrics per test snapshot, averaged, among merchants with at least ``merchant_min_label_orders`` orders in the label
window (a rate over fewer orders is noise): NDCG@20 and @50 with graded relevance (quantile bins of the label rate:
top 3% = 4, 90-97% = 3, 75-90% = 2, 50-75% = 1), precision at the top decile (share of the top 10% by score whose
label rate is in the top 10%), and Spearman correlation of score and label rate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import click
import numpy as np
import pandas as pd

from features.merchants import (
    BASELINE_DAYS,
    MerchantEvents,
    MerchantRiskModel,
    build_snapshots,
    relevance_grades,
    sort_ranking,
)
from features.settings import Settings

PRIMARY_METRIC = "ndcg_at_50"
METHODS = ("glm", "blend", "lambdarank", "poisson", "baseline_rate", "baseline_count")
BASELINES = {"baseline_rate": "baseline_rate", "baseline_count": "baseline_count"}
BASELINE_TEXT = {"baseline_rate": f"last-{BASELINE_DAYS}-day complaint rate",
                 "baseline_count": f"last-{BASELINE_DAYS}-day complaint count"}
TARGET_NDCG_GAIN = 0.10


# --------------------------------------------------------------------------------------------------------------------
# Snapshots and metrics


def snapshot_dates(events: MerchantEvents, settings: Settings, matured_by: pd.Timestamp | None = None) -> list:
    """As-of dates every ``merchant_snapshot_every_days`` whose label window closes by ``matured_by`` (data end).

    Counted back from the last matured date so the newest possible snapshot is always included.
    """
    horizon = pd.Timedelta(days=settings.merchant_horizon_days)
    last = (matured_by or events.end) - horizon
    first = events.start + pd.Timedelta(days=settings.merchant_warmup_days)
    if last < first:
        raise ValueError(
            f"data from {events.start.date()} to {events.end.date()} is too short: merchant risk needs "
            f"{settings.merchant_warmup_days} days of history plus a {settings.merchant_horizon_days}-day label window"
        )
    step = pd.Timedelta(days=settings.merchant_snapshot_every_days)
    dates = []
    d = last
    while d >= first:
        dates.append(d)
        d -= step
    return sorted(dates)


def split_dates(dates: list, settings: Settings) -> tuple[list, list]:
    """(train, test): the latest share of snapshots is test; train labels must close before the first test date."""
    n_test = max(1, math.ceil(len(dates) * settings.merchant_test_fraction))
    test = dates[-n_test:]
    horizon = pd.Timedelta(days=settings.merchant_horizon_days)
    train = [d for d in dates if d + horizon <= test[0]]
    if len(train) < 2:
        raise ValueError(f"only {len(train)} training snapshots mature before the first test date {test[0].date()}: "
                         "use data covering a longer period")
    return train, test


def ndcg_at_k(gains_by_score: np.ndarray, k: int) -> float:
    """NDCG@k of relevance grades listed in the order the scores rank them (exponential gain 2^g - 1)."""
    g = np.asarray(gains_by_score, float)
    discount = 1.0 / np.log2(np.arange(2, min(k, len(g)) + 2))
    dcg = np.sum((2 ** g[:k] - 1) * discount)
    ideal = np.sum((2 ** np.sort(g)[::-1][:k] - 1) * discount)
    return float(dcg / ideal) if ideal > 0 else float("nan")


def ranking_metrics(frame: pd.DataFrame, score: str, min_orders: int) -> dict[str, float]:
    """NDCG@20/@50, precision at the top decile and Spearman of ``score`` for one snapshot's merchants."""
    from scipy.stats import spearmanr

    ok = frame[frame["label_orders"] >= min_orders]
    if len(ok) < 10:
        return {}
    ranked = sort_ranking(ok, score)
    grades = relevance_grades(ranked.assign(as_of=0), min_orders).to_numpy()
    k = max(1, math.ceil(0.1 * len(ranked)))
    kth = np.sort(ranked["label_rate"].to_numpy())[::-1][k - 1]
    rho = spearmanr(ranked[score], ranked["label_rate"]).statistic
    return {"ndcg_at_20": ndcg_at_k(grades, 20), "ndcg_at_50": ndcg_at_k(grades, 50),
            "precision_at_decile": float(np.mean(ranked["label_rate"].to_numpy()[:k] >= kth)),
            "spearman": float(rho) if np.isfinite(rho) else float("nan")}


def evaluate_scores(scored: pd.DataFrame, methods: list[str], min_orders: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, per snapshot): each method's metrics per test snapshot and their mean over snapshots."""
    rows = []
    for as_of, snap in scored.groupby("as_of", sort=True):
        for m in methods:
            met = ranking_metrics(snap, m, min_orders)
            if met:
                rows.append({"as_of": as_of, "method": m, **met})
    per = pd.DataFrame(rows)
    if per.empty:
        raise ValueError(f"no test snapshot has 10 merchants with {min_orders}+ orders in its label window")
    summary = per.groupby("method", sort=False).mean(numeric_only=True).reindex(methods)
    return summary, per


# --------------------------------------------------------------------------------------------------------------------
# Backtest


@dataclass
class Evaluation:
    """What the backtest measured: metrics per method, per snapshot, the scored test rows and the chosen model."""

    summary: pd.DataFrame
    per_snapshot: pd.DataFrame
    scored: pd.DataFrame
    chosen: str
    train_dates: list
    test_dates: list
    use: str = "model"  # what ranks: "model" (``chosen``) or the baseline that beat it on the test snapshots
    validation: dict[str, float] | None = None  # NDCG@50 of each of MODELS on the validation snapshots
    held_out: dict[str, float] | None = None  # NDCG@50 of the model and the baselines over validation + test snapshots
    n_validation: int = 0  # validation snapshots in held_out

    @property
    def served(self) -> str:
        """The method whose scores the registered version ranks by: ``chosen`` or a baseline."""
        return self.chosen if self.use == "model" else self.use

    def ranking_text(self) -> str:
        """What ranks and why, in words, with the held-out NDCG@50 of both."""
        s = self.summary[PRIMARY_METRIC]
        held = self.held_out or {m: float(s[m]) for m in (self.chosen, *BASELINES)}
        where = (f"the held-out snapshots ({self.n_validation} validation and {len(self.test_dates)} test)"
                 if self.n_validation else "the held-out snapshots")
        if self.use == "model":
            base = max(BASELINES, key=lambda b: held.get(b, float("-inf")))
            return (f"The ranking uses: the model ({self.chosen}), because on {where} it scored "
                    f"NDCG@50 {held[self.chosen]:.4f} vs the better baseline's ({BASELINE_TEXT[base]}) {held[base]:.4f}.")
        return (f"The ranking uses: {BASELINE_TEXT[self.use]} (`{self.use}`), because on {where} it "
                f"scored NDCG@50 {held[self.use]:.4f} vs the model's ({self.chosen}) {held[self.chosen]:.4f}; the model "
                "still gives expected complaints and the reasons.")

    def choice_text(self) -> str:
        """Which model ranks and what the others scored on the training period's latest snapshots, in words."""
        rule = (f"{DEFAULT_KIND} ranks whatever they say: one validation period of this size is too noisy to pick a "
                "model kind on")
        if not self.validation:
            return (f"The model kind {self.chosen} is the default; the training period was too short to hold out "
                    f"validation snapshots ({rule}).")
        figures = ", ".join(f"{k} {v:.4f}" for k, v in self.validation.items())
        return (f"The model kind is {self.chosen}; fitted on the training period's earlier snapshots and scored on its "
                f"latest ones the models had NDCG@50: {figures} ({rule}).")

    @property
    def best_baseline(self) -> str:
        return str(self.summary.loc[list(BASELINES), "ndcg_at_50"].idxmax())

    def gain(self, metric: str = "ndcg_at_50") -> float:
        """The chosen model's margin over the better baseline on ``metric``."""
        base = self.summary.loc[list(BASELINES), metric].max()
        return float(self.summary.loc[self.chosen, metric] - base)


def check_rankable(events: MerchantEvents, min_merchants: int = 10) -> None:
    """Raise ValueError, saying what is missing, when the data cannot train a merchant ranking."""
    if events.n_merchants < min_merchants:
        raise ValueError(f"the data has {events.n_merchants} merchant(s): ranking merchants against each other needs "
                         f"at least {min_merchants} (a marketplace export, not a single shop's orders)")
    if not (events.t_complaint_case | events.t_escalated).any():
        raise ValueError("the data has no merchant complaints (tickets with a merchant_id and case_type complaint, "
                         "or escalated): add the tickets table to learn complaint risk")


def model_params(settings: Settings) -> dict:
    """Hyperparameters of both models (one place, logged to MLflow)."""
    return {"n_estimators": 600, "learning_rate": 0.02, "num_leaves": 7, "min_child_samples": 80,
            "feature_fraction": 0.8, "min_label_orders": settings.merchant_min_label_orders, "num_threads": 1}


MODELS = ("glm", "blend", "poisson", "lambdarank")
# The model that ranks: the log-linear Poisson model. On 8 worlds of 120 merchants (seeds 100-107, as-of 60 and 120
# days before the end) its NDCG@50 gain over the last-60-day rate had median +0.108 (11 of 16 at +0.08 or more)
# against +0.077 (7 of 16) for the tree blend. The tree models are still fitted and reported beside it, but no longer
# chosen on the training period's latest snapshots: on 36 tuning worlds (seeds 600-611, 700-711, 800-811) that
# choice (another model beating the GLM there by 0.02) picked a tree model on 6 worlds, whose NDCG@50 on the next 60
# days was below the GLM's on 4 of them (-0.007, -0.047, -0.143, -0.251) and above on 2 (+0.037, +0.044): one
# validation period of a hundred merchants is noise.
DEFAULT_KIND = "glm"


def validation_scores(train: pd.DataFrame, train_dates: list, settings: Settings) -> pd.DataFrame:
    """NDCG@50 etc. of every method (:data:`METHODS`) per validation snapshot: fitted on the training period's earlier
    snapshots, scored on its latest ones (whose labels close before the test period). Empty when the training
    period is too short to hold any out."""
    try:
        inner_train, inner_val = split_dates(train_dates, settings)
    except ValueError:
        return pd.DataFrame()
    fit = train[train["as_of"].isin(inner_train)]
    val = train[train["as_of"].isin(inner_val)].copy()
    try:
        model = MerchantRiskModel(kind="blend", **model_params(settings)).fit(fit)
    except ValueError:
        return pd.DataFrame()
    score_methods(model, val)
    for name, col in BASELINES.items():
        val[name] = val[col]
    try:
        _, per = evaluate_scores(val, list(METHODS), settings.merchant_min_label_orders)
    except ValueError:
        return pd.DataFrame()
    return per


def _mean_ndcg(per: pd.DataFrame, methods) -> dict[str, float]:
    if per.empty:
        return {}
    mean = per.groupby("method")[PRIMARY_METRIC].mean()
    return {m: float(mean[m]) for m in methods if m in mean.index}


def served_method(per_test: pd.DataFrame, per_validation: pd.DataFrame, chosen: str) -> tuple[str, dict[str, float]]:
    """("model" or the baseline that ranks instead, NDCG@50 of ``chosen`` and the baselines averaged over every
    held-out snapshot): the validation snapshots of the training period and the test snapshots.

    A baseline ranks when it beats the model on those snapshots together. The test snapshots alone (a few
    overlapping 60-day windows) are too few: on 36 tuning worlds (seeds 600-611, 700-711, 800-811) the two rules
    differ on two. The test-only rule served the last-60-day count on seed 709 (ahead by 0.025 on the test
    snapshots, 0.062 behind on the validation ones) where the GLM ranked the next 60 days 0.216 better; the pooled
    rule serves the last-60-day rate on seed 607, where the GLM ranked the next 60 days 0.030 better."""
    held = pd.concat([per_validation, per_test], ignore_index=True)
    mean = _mean_ndcg(held, (chosen, *BASELINES))
    base = max(BASELINES, key=lambda b: mean.get(b, float("-inf")))
    return (base if mean.get(base, float("-inf")) > mean[chosen] else "model"), mean


def score_methods(model: MerchantRiskModel, frame: pd.DataFrame) -> None:
    """Add each of :data:`MODELS`' scores as a column of ``frame``, from one fitted blend (same boosters, same rows):
    the GLM, the blend and each of its two parts alone."""
    parts = model.blend_parts(frame)
    frame["blend"], frame["poisson"], frame["lambdarank"] = parts.sum(axis=1), parts[:, 0], parts[:, 1]
    frame["glm"] = model.glm_rate(frame)


def evaluate(events: MerchantEvents, settings: Settings, echo=click.echo) -> Evaluation:
    """Train both models on early snapshots, score them and the baselines on later ones, pick by NDCG@50."""
    check_rankable(events)
    dates = snapshot_dates(events, settings)
    train_dates, test_dates = split_dates(dates, settings)
    echo(f"  snapshots: {len(train_dates)} train ({train_dates[0].date()}..{train_dates[-1].date()}), "
         f"{len(test_dates)} test ({test_dates[0].date()}..{test_dates[-1].date()}), "
         f"label window {settings.merchant_horizon_days} days")
    t0 = time.perf_counter()
    train = build_snapshots(events, train_dates, settings.merchant_horizon_days)
    test = build_snapshots(events, test_dates, settings.merchant_horizon_days)
    echo(f"  features: {len(train):,} train and {len(test):,} test merchant-snapshots ({time.perf_counter() - t0:.1f}s)")
    per_val = validation_scores(train, train_dates, settings)
    chosen, validation = DEFAULT_KIND, _mean_ndcg(per_val, MODELS)
    echo("  validation on the latest training snapshots (NDCG@50): "
         + ", ".join(f"{k} {v:.4f}" for k, v in _mean_ndcg(per_val, METHODS).items()) + f"; ranking model {chosen}")
    scored = test.copy()
    t0 = time.perf_counter()
    model = MerchantRiskModel(kind="blend", **model_params(settings)).fit(train)
    score_methods(model, scored)
    echo(f"  fitted GLM, Poisson + LambdaRank on {len(train):,} rows ({time.perf_counter() - t0:.1f}s)")
    for name, col in BASELINES.items():
        scored[name] = scored[col]
    summary, per = evaluate_scores(scored, list(METHODS), settings.merchant_min_label_orders)
    # A baseline is a candidate too: when the better one beats the model on the held-out snapshots (validation and
    # test together, NDCG@50), it ranks; never serve a model this evaluation says is worse.
    use, held_out = served_method(per, per_val, chosen)
    bt = Evaluation(summary, per, scored, chosen, train_dates, test_dates, use, validation, held_out,
                    int(per_val["as_of"].nunique()) if not per_val.empty else 0)
    echo("  " + bt.ranking_text())
    return bt


def lift_table(scored: pd.DataFrame, methods: list[str], min_orders: int) -> pd.DataFrame:
    """Complaint-rate lift per score decile (10 = riskiest) for each method, pooled over test snapshots."""
    ok = scored[scored["label_orders"] >= min_orders]
    overall = ok["label_complaints"].sum() / ok["label_orders"].sum()
    rows = []
    for m in methods:
        # Deciles within each snapshot, ties by merchant_id like the ranking itself.
        pos = ok.sort_values(["as_of", m, "merchant_id"], ascending=[True, True, False]).groupby("as_of").cumcount()
        n = ok.groupby("as_of")["merchant_id"].transform("size").loc[pos.index]
        decile = (np.floor(pos / n * 10) + 1).clip(1, 10).astype(int)
        agg = ok.loc[pos.index].groupby(decile.to_numpy())[["label_complaints", "label_orders"]].sum()
        for d, r in agg.iterrows():
            rows.append({"method": m, "decile": int(d), "lift": r["label_complaints"] / r["label_orders"] / overall})
    return pd.DataFrame(rows)
