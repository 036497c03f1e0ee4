"""Serial-return accounts: train, evaluate on later time against baselines, simulate review feedback, queue, CLI.

Evaluation protocol (worlds with ground truth): the model is fitted as of T1 with the review decisions taken up to
T1, then scores every account as of T2 (later); the positives are the accounts whose abuse had started by T2, and
accounts the model learnt from are left out of every metric. Baselines in the same run, on the same accounts: a rule
(return count and rate above thresholds) and an IsolationForest on raw counts. On data without ground truth (the
Online Retail import) the check is forward-looking: flag the top K as of T1 and count how many are heavy returners in
the quarter after.

Every MLflow call goes through :mod:`training.registry`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import pandas as pd

from features import generations
from features.accounts import (
    BASELINES,
    FEATURES,
    PATTERNS,
    AccountFrame,
    AsOfError,
    SerialReturnerModel,
    account_features,
    as_day,
    baseline_score,
    blend_parts,
    check_as_of,
    counts_forest,
    review_queue,
    score_snapshot,
)
from features.contract import ContractError, Dataset, load_dataset
from features.reviews import DecisionError, decision_labels, import_decisions, list_decisions, record_decision
from features.settings import Settings, get_settings
from training.data import data_validated, engine_for_command, engine_options, load_for_command

MODEL_NAME = "serial_returners"
METHODS = ("model", "cold_start", *BASELINES)
CANDIDATES = ("model", *BASELINES)  # what the queue may rank by: the model or a baseline that beats it
PR_AUC_MARGIN_TARGET = 0.15  # the model's PR-AUC must beat IsolationForest-on-counts by this much
FEEDBACK_CHECKPOINTS = (50, 200)
FORWARD_HORIZON_DAYS = 91  # "the next quarter" of the forward check on data without ground truth
CHECK_WINDOW_DAYS, CHECK_CUTOFFS = 61, 3  # the checks the queue's method is chosen on (data without ground truth)
Echo = Callable[[str], None]


# --------------------------------------------------------------------------------------------------------------------
# Data, labels, fitting


def features_as_of(ds: Dataset, as_of, settings: Settings, market: str | None = None, engine=None) -> AccountFrame:
    """Point-in-time account features of a dataset as of a day (checked to lie within the data).

    ``engine``: a ``features.engine`` engine (Dask runs the per-account stage per account partition).
    """
    day = check_as_of(as_of, ds.time_span())
    return account_features(ds.orders, ds.returns, ds.account_links, day, market or settings.market, settings,
                            engine=engine)


def load_labels(ds: Dataset, settings: Settings, as_of=None) -> pd.DataFrame:
    """Review decisions from the data folder's review_decisions table and the decision store, up to ``as_of``."""
    frames = [ds.review_decisions]
    stored = list_decisions(settings)
    if len(stored):
        frames.append(stored)
    return decision_labels(pd.concat(frames, ignore_index=True), as_of)


def fit_model(X: AccountFrame, labels: pd.DataFrame, settings: Settings, as_of=None,
              source: str = "", client=None) -> SerialReturnerModel:
    """Fit the serial-return model on the population ``X``; supervised when ``labels`` are enough, else cold start.

    The decided accounts' features are those of ``X`` (as of the training day): a confirmed abuser's later
    behaviour is still the abuser's, and nothing after the training day is read.
    """
    lab = labels[labels["account_id"].isin(X.index)]
    Xl = X.loc[lab["account_id"].to_numpy()]
    model = SerialReturnerModel(min_labels=settings.serial_min_labels, num_threads=settings.serial_num_threads,
                                gate=settings.serial_supervised_gate)
    model.fit(pd.concat([X, Xl]), np.r_[np.full(len(X), np.nan), lab["label"].to_numpy(dtype=float)], client=client)
    model.as_of_ = str(as_day(as_of).date()) if as_of is not None else X.attrs.get("as_of")
    model.data_source_ = source
    return model


def excluded_accounts(labels_all: pd.DataFrame, as_of, cooldown_days: int) -> set[str]:
    """Accounts kept out of the queue as of a day: confirmed abusers, and accounts cleared within the cooldown."""
    day = as_day(as_of)
    lab = labels_all[pd.to_datetime(labels_all["decided_at"], utc=True) < day + pd.Timedelta(days=1)]
    recent = pd.to_datetime(lab["decided_at"], utc=True) >= day - pd.Timedelta(days=cooldown_days)
    keep_out = (lab["label"] == 1) | recent
    return set(lab.loc[keep_out, "account_id"].astype(str))


def _rule(settings: Settings) -> tuple[float, float]:
    return (settings.serial_rule_min_returns_90d, settings.serial_rule_min_return_rate)


def rule_score(X: AccountFrame, settings: Settings) -> np.ndarray:
    """Rule baseline: >= 1 when both the 90-day return count and rate reach their thresholds (ranked by the lesser)."""
    return baseline_score("rule", X, rule=_rule(settings))


def _forest_score(forest, X: AccountFrame) -> np.ndarray:
    return baseline_score("if_counts", X, forest=forest)


def baseline_scores(X: AccountFrame, forest, settings: Settings) -> dict[str, np.ndarray]:
    """Every baseline of :data:`BASELINES` on the accounts ``X`` (``forest`` fitted on the training day)."""
    return {b: baseline_score(b, X, forest=forest, rule=_rule(settings)) for b in BASELINES}


def choose_method(table: pd.DataFrame, metric: str) -> tuple[str, str]:
    """(method, evidence): the candidate of :data:`CANDIDATES` with the best ``metric`` in ``table`` (rows =
    methods); the model keeps ties. The evidence sentence gives every candidate's figure."""
    vals = {m: float(table.loc[m, metric]) for m in CANDIDATES if m in table.index and pd.notna(table.loc[m, metric])}
    best = max(vals, key=lambda m: (vals[m], m == "model"))
    figures = ", ".join(f"{m} {v:.3f}" for m, v in sorted(vals.items(), key=lambda kv: -kv[1]))
    return best, f"{metric} on the held-out check: {figures}"


# --------------------------------------------------------------------------------------------------------------------
# Metrics


def ranking_metrics(y: np.ndarray, score: np.ndarray, pattern: np.ndarray, capacity: int) -> dict[str, float]:
    """PR-AUC, precision at capacity, recall at 1% false positive rate, recall per pattern at capacity and top 1%."""
    from sklearn.metrics import average_precision_score, roc_curve

    order = np.argsort(-score, kind="stable")
    top, top1 = order[:capacity], order[:max(capacity, int(np.ceil(0.01 * len(y))))]
    fpr, tpr, _ = roc_curve(y, score)
    out = {"pr_auc": float(average_precision_score(y, score)), "precision_at_capacity": float(y[top].mean()),
           "recall_at_1pct_fpr": float(tpr[fpr <= 0.01].max(initial=0.0)),
           "recall_at_capacity": float(y[top].sum() / max(y.sum(), 1))}
    for p in PATTERNS:
        pos = y & (pattern == p)
        out[f"recall_{p}_at_capacity"] = float(pos[top].sum() / max(pos.sum(), 1))
        out[f"recall_{p}_at_top1pct"] = float(pos[top1].sum() / max(pos.sum(), 1))
    return out


@dataclass
class Evaluation:
    """What an evaluation produced: per-method metrics, curves, the model's queue, the feedback simulation."""

    metrics: pd.DataFrame  # one row per method
    queue: pd.DataFrame  # the model's review queue as of T2 with the truth beside it
    queue_metrics: dict[str, float]
    curves: dict[str, tuple[np.ndarray, np.ndarray]]  # method -> scores, labels (for plots)
    feedback: pd.DataFrame | None
    params: dict = field(default_factory=dict)
    model: SerialReturnerModel | None = None
    slices: pd.DataFrame | None = None  # metrics per slice of the evaluated accounts (model card)
    X_eval: AccountFrame | None = None  # the evaluated accounts' features as of T2 (the gate scores the champion)


def _truth(data_dir: Path) -> pd.DataFrame | None:
    path = Path(data_dir) / "truth" / "accounts.parquet"
    if not path.exists():
        return None
    t = pd.read_parquet(path)
    t["account_id"] = t["account_id"].astype("string")
    return t.set_index("account_id")


def default_split(ds: Dataset, settings: Settings, as_of=None, horizon_days: int | None = None
                  ) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(T1, T2): T1 the training as-of (default: horizon before the data ends), T2 = T1 + horizon (capped at the end)."""
    first, last = ds.time_span()
    horizon = pd.Timedelta(days=horizon_days or settings.serial_eval_horizon_days)
    if as_of is None:
        t1 = max(last - horizon, first + (last - first) / 2).normalize()
    else:
        t1 = check_as_of(as_of, (first, last))
    if t1 >= last:
        raise AsOfError(f"as-of date {t1.date()} leaves no later time to evaluate on (the data ends on "
                        f"{last.date()}); choose an earlier --as-of")
    return t1, min(t1 + horizon, last)


def evaluate_on_truth(ds: Dataset, truth: pd.DataFrame, t1, t2, settings: Settings, capacity: int,
                      market: str | None = None, feedback: bool = True, echo: Echo = lambda s: None,
                      engine=None) -> Evaluation:
    """Fit as of ``t1`` (decisions up to ``t1``), score as of ``t2``, compare with baselines against the truth.

    ``engine``: where the features run; with Dask the evaluated model's boosters train with ``lightgbm.dask`` (the
    feedback simulation's many small refits stay in this process).
    """
    echo(f"features as of {t1.date()} (training) and {t2.date()} (evaluation)")
    X1 = features_as_of(ds, t1, settings, market, engine)
    X2 = features_as_of(ds, t2, settings, market, engine)
    labels = load_labels(ds, settings, t1)
    echo(f"fitting on {len(X1):,} accounts with {len(labels)} review decisions up to {t1.date()}")
    model = fit_model(X1, labels, settings, t1, client=getattr(engine, "client", None))
    cold = model if model.mode_ == "cold_start" else fit_model(X1, labels.iloc[:0], settings, t1)
    forest = counts_forest(X1)
    learnt = set(labels["account_id"].astype(str))
    ev = X2.loc[~X2.index.isin(list(learnt))]
    tr = truth.reindex(ev.index)
    y = (tr["is_abuser"].fillna(False).astype(bool) & (tr["abuse_start"] <= t2)).to_numpy()
    pattern = tr["pattern"].fillna("normal").astype(str).to_numpy()
    scores = {"model": model.predict(ev), "cold_start": cold.predict(ev), **baseline_scores(ev, forest, settings)}
    rows = [{"method": m, **ranking_metrics(y, s, pattern, capacity)} for m, s in scores.items()]
    metrics = pd.DataFrame(rows).set_index("method")
    echo("building the review queue")
    queue = review_queue(ev, model, capacity, scores=scores["model"], pattern_share=settings.serial_pattern_share,
                         explore_share=settings.serial_explore_share)
    qt = truth.reindex(queue["account_id"])
    queue = queue.assign(true_pattern=qt["pattern"].fillna("normal").to_numpy(),
                         abuser=(qt["is_abuser"].fillna(False).astype(bool) & (qt["abuse_start"] <= t2)).to_numpy())
    top_part = queue["slot"].eq("top score").to_numpy()
    # Precision is measured on the top-score part: reserved pattern slots and the audit sample are there to learn
    # and to check, not to be precise.
    qm = {"queue_precision": float(queue["abuser"].mean()),
          "queue_precision_top_score": float(queue["abuser"][top_part].mean()) if top_part.any() else float("nan")}
    for p in PATTERNS:
        pos = int((y & (pattern == p)).sum())
        qm[f"queue_recall_{p}"] = float((queue["abuser"] & (queue["true_pattern"] == p)).sum() / max(pos, 1))
        qm[f"queue_found_{p}"] = int((queue["abuser"] & (queue["true_pattern"] == p)).sum())
    fb = None
    if feedback:
        echo("feedback simulation: reviews from the truth on the model's own queue")
        fb = feedback_simulation(X1, X2, truth, t1, t2, settings, exclude=learnt, cold=cold)
    params = {"t1": str(t1.date()), "t2": str(t2.date()), "capacity": capacity, "mode": model.mode_,
              "n_labels": model.n_labels_, "n_eval_accounts": len(ev), "n_eval_positives": int(y.sum()),
              "market": market or settings.market}
    slices = slice_table(account_slices(ds, ev, t2, settings, market), y, scores, capacity)
    return Evaluation(metrics, queue, qm, {m: (s, y) for m, s in scores.items()}, fb, params, model, slices, ev)


def account_slices(ds: Dataset, X: AccountFrame, as_of, settings: Settings, market: str | None = None,
                   new_days: int = 90) -> dict[str, np.ndarray]:
    """Model-card slices of the accounts ``X`` scored as of ``as_of``: new accounts (first order fewer than
    ``new_days`` days before), and accounts that returned something in a holiday window in the year before."""
    from training.model_card import in_holiday_windows

    day = as_day(as_of)
    new = X["tenure_days"].to_numpy() < new_days
    r = ds.returns[ds.returns["account_id"].notna()]
    r = r[(r["requested_at"] < day + pd.Timedelta(days=1)) & (r["requested_at"] >= day - pd.Timedelta(days=365))]
    in_window = in_holiday_windows(r["requested_at"], market or settings.market, settings)
    holiday_accounts = set(r.loc[in_window.to_numpy(), "account_id"].astype(str))
    holiday = X.index.astype(str).isin(list(holiday_accounts))
    return {"all accounts": np.ones(len(X), dtype=bool), "new_account": new, "established_account": ~new,
            "returned_in_holiday_window": holiday, "no_holiday_returns": ~holiday}


def slice_table(masks: dict[str, np.ndarray], y: np.ndarray, scores: dict[str, np.ndarray],
                capacity: int, positives: str = "abusers") -> pd.DataFrame:
    """PR-AUC of every method within each slice, and the share of the slice's positives (``y``, named
    ``positives``) in the model's top capacity."""
    from sklearn.metrics import average_precision_score

    top = np.zeros(len(y), dtype=bool)
    top[np.argsort(-scores["model"], kind="stable")[:capacity]] = True
    rows = []
    for name, m in masks.items():
        yy = y[m]
        row = {"slice": name, "accounts": int(m.sum()), positives: int(yy.sum()),
               "recall_in_queue_model": float((top[m] & yy).sum() / yy.sum()) if yy.any() else None}
        for method, s in scores.items():
            row[f"pr_auc_{method}"] = float(average_precision_score(yy, s[m])) if 0 < yy.sum() < len(yy) else None
        rows.append(row)
    return pd.DataFrame(rows)


def feedback_simulation(X1: AccountFrame, X2: AccountFrame, truth: pd.DataFrame, t1, t2, settings: Settings,
                        exclude: set[str] = frozenset(), cold: SerialReturnerModel | None = None,
                        checkpoints: tuple[int, ...] = FEEDBACK_CHECKPOINTS, round_size: int = 50) -> pd.DataFrame:
    """Start cold, review the model's own queue in rounds (decisions from the truth as of ``t1``), refit each round.

    At each checkpoint (number of reviewed accounts) the refitted model and the cold start are scored as of ``t2``
    on the accounts neither has seen reviewed. Columns: reviewed, positives, mode, pr_auc_supervised,
    pr_auc_cold_start, gain, and precision in a queue of K = the abusers left (supervised, cold start, gain).
    """
    from sklearn.metrics import average_precision_score

    cold = cold or fit_model(X1, pd.DataFrame(columns=["account_id", "label", "decided_at"]), settings, t1)
    tr1 = truth.reindex(X1.index)
    abuser_t1 = (tr1["is_abuser"].fillna(False).astype(bool) & (tr1["abuse_start"] <= t1))
    reviewed: list[str] = []
    labels: list[float] = []
    model, rows = cold, []
    for r in range(int(np.ceil(max(checkpoints) / round_size))):
        q = review_queue(X1, model, round_size, exclude=set(reviewed) | set(exclude),
                         pattern_share=settings.serial_pattern_share, explore_share=settings.serial_explore_share,
                         seed=r)
        reviewed += list(q["account_id"].astype(str))
        labels += list(abuser_t1.loc[q["account_id"]].astype(float))
        lab = pd.DataFrame({"account_id": reviewed, "label": labels})
        model = fit_model(X1, lab, settings, t1)
        if len(reviewed) in checkpoints:
            ev = X2.loc[~X2.index.isin(reviewed + list(exclude))]
            te = truth.reindex(ev.index)
            y = (te["is_abuser"].fillna(False).astype(bool) & (te["abuse_start"] <= t2)).to_numpy()
            ps, pc = model.predict(ev), cold.predict(ev)
            sup, base = average_precision_score(y, ps), average_precision_score(y, pc)
            k = max(int(y.sum()), 1)  # a queue as long as there are abusers left to find
            prec_s = float(y[np.argsort(-ps, kind="stable")[:k]].mean())
            prec_c = float(y[np.argsort(-pc, kind="stable")[:k]].mean())
            rows.append({"reviewed": len(reviewed), "positives": int(sum(labels)), "mode": model.mode_,
                         "pr_auc_supervised": sup, "pr_auc_cold_start": base, "gain": sup - base,
                         "precision_at_k_supervised": prec_s, "precision_at_k_cold_start": prec_c,
                         "precision_gain": prec_s - prec_c})
    return pd.DataFrame(rows)


def evaluate_forward(ds: Dataset, t1, settings: Settings, top: int = 50, horizon_days: int = FORWARD_HORIZON_DAYS,
                     market: str | None = None, echo: Echo = lambda s: None, engine=None, choose: bool = True
                     ) -> dict:
    """Data without ground truth: flag the top ``top`` as of ``t1``; how many are heavy returners in the next quarter.

    A heavy returner makes at least as many returns in (t1, t1 + horizon] as the top 10% of the accounts that
    returned anything in that window (at least 2). Compared with the rule, IsolationForest-on-counts and "most
    returns in the last 90 days" on the same accounts.
    """
    from sklearn.metrics import average_precision_score

    t1 = check_as_of(t1, ds.time_span())
    end = t1 + pd.Timedelta(days=horizon_days)
    if end > ds.time_span()[1]:
        echo(f"note: the data ends on {ds.time_span()[1].date()}, before the {horizon_days}-day window closes")
    X1 = features_as_of(ds, t1, settings, market, engine)
    labels = load_labels(ds, settings, t1)
    model = fit_model(X1, labels, settings, t1, client=getattr(engine, "client", None))
    future, threshold = _future_returns(ds, X1, t1, horizon_days)
    heavy = future >= threshold
    before = X1["returns_90d"].to_numpy() >= threshold
    scores = {"model": model.predict(X1), **baseline_scores(X1, counts_forest(X1), settings)}
    # The queue as the product builds it on data up to t1: the candidate (or blend) that won the checks flagged at
    # several earlier cut-offs and judged before t1 (nothing after t1 is read).
    queue_method, queue_evidence = "model", "no earlier cut-off to choose on"
    if choose:
        queue_method, queue_evidence = choose_by_forward_checks(ds, t1, settings, top, market, engine)
    scores["queue"] = _candidate_score(queue_method, scores)
    rows = []
    for m, s in scores.items():
        flagged = np.argsort(-s, kind="stable")[:top]
        rows.append({"method": m, "flagged": len(flagged), "heavy_next_quarter": int(heavy[flagged].sum()),
                     "precision": float(heavy[flagged].mean()), "heavy_before_too": int((heavy & before)[flagged].sum()),
                     "any_return_next_quarter": int((future[flagged] > 0).sum()),
                     "pr_auc": float(average_precision_score(heavy, s)) if heavy.any() else float("nan")})
    slices = slice_table(account_slices(ds, X1, t1, settings, market), heavy, scores, top, "heavy_returners")
    return {"queue_method": queue_method, "queue_evidence": queue_evidence,
            "t1": str(t1.date()), "window_end": str(end.date()), "heavy_threshold": threshold,
            "heavy_accounts": int(heavy.sum()), "accounts": len(X1), "mode": model.mode_,
            "table": pd.DataFrame(rows).set_index("method"), "model": model, "slices": slices, "X": X1,
            "y": heavy}


def _future_returns(ds: Dataset, X: AccountFrame, t, days: int) -> tuple[np.ndarray, float]:
    """(returns per account of ``X`` in (t, t + days], the heavy-returner threshold): at least as many returns as
    the top 10% of the accounts that returned anything in that window, and at least 2."""
    r = ds.returns
    end = t + pd.Timedelta(days=days)
    window = (r["requested_at"] >= t + pd.Timedelta(days=1)) & (r["requested_at"] < end + pd.Timedelta(days=1))
    counts = r.loc[window, "account_id"].dropna().astype(str).value_counts()
    threshold = max(2.0, float(np.ceil(counts.quantile(0.9)))) if len(counts) else 2.0
    return counts.reindex(X.index.astype(str)).fillna(0).to_numpy(), threshold


def _percentiles(s: np.ndarray) -> np.ndarray:
    return pd.Series(np.asarray(s, dtype=float)).rank(pct=True, method="average").to_numpy()


def _candidate_score(method: str, scores: dict[str, np.ndarray]) -> np.ndarray:
    """A candidate's scores from the single candidates' (a blend: the mean of its parts' percentiles)."""
    parts = blend_parts(method)
    if len(parts) == 1:
        return scores[method]
    return np.mean([_percentiles(scores[m]) for m in parts], axis=0)


def choose_by_forward_checks(ds: Dataset, t1, settings: Settings, top: int, market: str | None = None,
                             engine=None, window_days: int = CHECK_WINDOW_DAYS, cutoffs: int = CHECK_CUTOFFS
                             ) -> tuple[str, str]:
    """(method, evidence): what the queue ranks by on data up to ``t1``, chosen on forward checks before it.

    Each check flags accounts as of a cut-off (``cutoffs`` of them, 30 days apart, the latest ``window_days``
    before ``t1``) and counts the heavy returners of the next ``window_days`` among the top ``top``, 2 x ``top`` and
    4 x ``top``. Candidates: the model, every baseline, and the rank-average blend of the two best. The best mean
    precision over the checks wins, except that a single candidate must beat the blend by more than twice the
    standard error of their paired differences: one cut-off's top 50 is a few dozen accounts, and a blend of two
    close candidates holds up better on the next period than whichever of them led by chance.
    """
    first = ds.time_span()[0]
    t1 = as_day(t1)
    checks: list[tuple[str, dict[str, np.ndarray], np.ndarray]] = []
    for j in range(cutoffs):
        t0 = (t1 - pd.Timedelta(days=window_days + 30 * j)).normalize()
        if t0 < first + pd.Timedelta(days=window_days):
            break
        X = features_as_of(ds, t0, settings, market, engine)
        model = fit_model(X, load_labels(ds, settings, t0), settings, t0)
        future, threshold = _future_returns(ds, X, t0, window_days)
        heavy = future >= threshold
        scores = {"model": model.predict(X), **baseline_scores(X, counts_forest(X), settings)}
        checks.append((str(t0.date()), scores, heavy))
    if not checks:
        return "model", "no earlier cut-off to choose on"
    depths = (top, 2 * top, 4 * top)

    def precisions(method: str) -> np.ndarray:
        out = []
        for _, scores, heavy in checks:
            order = np.argsort(-_candidate_score(method, scores), kind="stable")
            out += [float(heavy[order[:d]].mean()) for d in depths]
        return np.array(out)

    table = {m: precisions(m) for m in CANDIDATES}
    ranked = sorted(table, key=lambda m: (-table[m].mean(), m != "model"))
    blend = f"blend:{ranked[0]}+{ranked[1]}"
    table[blend] = precisions(blend)
    best = max(table, key=lambda m: (table[m].mean(), m == blend, m == "model"))
    if best != blend:
        diff = table[best] - table[blend]
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
        if diff.mean() <= 2 * se:
            best = blend
    figures = ", ".join(f"{m} {v.mean():.3f}" for m, v in sorted(table.items(), key=lambda kv: -kv[1].mean()))
    when = ", ".join(c[0] for c in checks)
    return best, (f"mean precision of the top {'/'.join(map(str, depths))} on heavy returners of the next "
                  f"{window_days} days, flagged as of {when}: {figures}")


# --------------------------------------------------------------------------------------------------------------------
# Plots and logging


def evaluation_figures(curves: dict[str, tuple[np.ndarray, np.ndarray]], capacity: int):
    """(PR curve, precision-at-capacity curve) figures for every method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    pr, ax = plt.subplots(figsize=(6, 4.5))
    for m, (s, y) in curves.items():
        p, r, _ = precision_recall_curve(y, s)
        ax.plot(r, p, label=m)
    ax.set(xlabel="recall", ylabel="precision", title="Serial returners: precision-recall (later time)")
    ax.legend()
    cap, ax = plt.subplots(figsize=(6, 4.5))
    for m, (s, y) in curves.items():
        k = np.arange(1, min(len(y), 10 * capacity) + 1)
        hits = np.cumsum(y[np.argsort(-s, kind="stable")][: len(k)])
        ax.plot(k, hits / k, label=m)
    ax.axvline(capacity, color="grey", linestyle="--", label=f"capacity {capacity}")
    ax.set(xlabel="accounts reviewed (queue size)", ylabel="precision", title="Precision at capacity")
    ax.legend()
    return pr, cap


def _flat_metrics(ev: Evaluation) -> dict[str, float]:
    out = {}
    for m, row in ev.metrics.iterrows():
        for k, v in row.items():
            out[f"{m}_{k}"] = v
    out.update(ev.queue_metrics)
    main = ev.metrics.loc["model"]
    out.update({k: main[k] for k in ("pr_auc", "precision_at_capacity", "recall_at_1pct_fpr")})
    out["pr_auc_gain_vs_if_counts"] = main["pr_auc"] - ev.metrics.loc["if_counts", "pr_auc"]
    out["pr_auc_gain_vs_rule"] = main["pr_auc"] - ev.metrics.loc["rule", "pr_auc"]
    if ev.feedback is not None:
        for row in ev.feedback.itertuples():
            out[f"feedback_{row.reviewed}_pr_auc"] = row.pr_auc_supervised
            out[f"feedback_{row.reviewed}_gain"] = row.gain
    return out


def _log_evaluation(ev: Evaluation, capacity: int) -> None:
    from training import registry

    registry.log_params(ev.params)
    registry.log_metrics(_flat_metrics(ev))
    pr, cap = evaluation_figures(ev.curves, capacity)
    registry.log_figure(pr, "plots/pr_curve.png")
    registry.log_figure(cap, "plots/precision_at_capacity.png")
    registry.log_table(ev.metrics.reset_index(), "tables/metrics_by_method.csv")
    registry.log_table(ev.queue, "tables/review_queue_eval.csv")
    if ev.feedback is not None:
        registry.log_table(ev.feedback, "tables/feedback_simulation.csv")


def target_lines(ev: Evaluation) -> list[str]:
    """The issue's targets, each with its figure and PASS/FAIL."""
    m = ev.metrics
    gain = m.loc["model", "pr_auc"] - m.loc["if_counts", "pr_auc"]
    lines = [f"PR-AUC model {m.loc['model', 'pr_auc']:.3f} vs IsolationForest-on-counts "
             f"{m.loc['if_counts', 'pr_auc']:.3f}: +{gain:.3f} (target >= +{PR_AUC_MARGIN_TARGET}) "
             f"{'PASS' if gain >= PR_AUC_MARGIN_TARGET else 'FAIL'}"]
    found = {p: ev.queue_metrics[f"queue_found_{p}"] for p in PATTERNS}
    lines.append("every pattern found in the review queue: "
                 + ", ".join(f"{p} {n}" for p, n in found.items())
                 + f" {'PASS' if all(found.values()) else 'FAIL'}")
    ranked = {p: m.loc["model", f"recall_{p}_at_capacity"] for p in PATTERNS}
    lines.append("recall per pattern at capacity (pure ranking, no reserved slots): "
                 + ", ".join(f"{p} {v:.3f}" for p, v in ranked.items()))
    if ev.feedback is not None and len(ev.feedback):
        for row in ev.feedback.itertuples():
            lines.append(f"feedback after {row.reviewed} reviews ({row.positives} confirmed): supervised PR-AUC "
                         f"{row.pr_auc_supervised:.3f} vs cold start {row.pr_auc_cold_start:.3f} "
                         f"({'+' if row.gain >= 0 else ''}{row.gain:.3f}) {'PASS' if row.gain > 0 else 'FAIL'}")
    return lines


# --------------------------------------------------------------------------------------------------------------------
# Snapshots


def write_snapshots(X: AccountFrame, model: SerialReturnerModel, settings: Settings,
                   exclude: set[str] = frozenset(), capacity: int | None = None,
                   out: Path | None = None) -> dict[str, Path]:
    """Write every account's score (``accounts.parquet``) and the queue (``account_queue.parquet``) for serving into
    ``out`` (training: the registered version's ``snapshots/serial_returners/v<N>``; default the flat
    ``snapshots_dir``); files are replaced atomically so a reader never sees half a file."""
    out = Path(out or settings.snapshots_dir)
    out.mkdir(parents=True, exist_ok=True)
    scores = model.predict(X)
    snap = score_snapshot(X, model, scores=scores)
    queue = review_queue(X, model, capacity or settings.review_capacity, exclude=exclude, scores=scores,
                         pattern_share=settings.serial_pattern_share, explore_share=settings.serial_explore_share)
    paths = {}
    for name, frame in (("accounts", snap), ("account_queue", queue)):
        frame = frame.assign(as_of=X.attrs.get("as_of"), model_mode=model.mode_)
        tmp = out / f".{name}.parquet.tmp"
        frame.to_parquet(tmp, index=False)
        tmp.replace(out / f"{name}.parquet")
        paths[name] = out / f"{name}.parquet"
    return paths


# --------------------------------------------------------------------------------------------------------------------
# Training entry point


def gate_evidence(ds: Dataset, data_dir: Path, ev: Evaluation | None = None, fw: dict | None = None):
    """The promotion gate's evidence (:mod:`training.evidence`): with ground truth, the accounts evaluated as of T2
    by PR-AUC against the truth; without, the forward check's accounts as of T1 by PR-AUC of next quarter's heavy
    returners. The champion scores the same accounts' features; one that trained on this data folder after T1 has
    seen the evaluated period and is not scored."""
    from sklearn.metrics import average_precision_score

    from training.evidence import Evidence, Unscorable

    if ev is not None:
        X, (s_model, y) = ev.X_eval, ev.curves["model"]
        t1, when = pd.Timestamp(ev.params["t1"]), f"scored as of {ev.params['t2']}, abusers by the ground truth"
        base = {m: float(ev.metrics.loc[m, "pr_auc"]) for m in ("rule", "if_counts")}
        value = float(ev.metrics.loc["model", "pr_auc"])
    else:
        X, y, t1 = fw["X"], fw["y"], pd.Timestamp(fw["t1"])
        s_model = fw["model"].predict(X)
        when = f"as of {fw['t1']}, labelled by heavy returning up to {fw['window_end']} (a proxy)"
        base = {m: float(fw["table"].loc[m, "pr_auc"]) for m in fw["table"].index if m != "model"}
        value = float(fw["table"].loc["model", "pr_auc"])
    rows = f"{len(X):,} accounts {when}, {int(np.sum(y))} positives"

    def compare(champion, seen_until):
        if seen_until is not None and pd.Timestamp(seen_until).tz_localize(None) > t1.tz_localize(None):
            raise Unscorable(f"it trained on this data folder up to {pd.Timestamp(seen_until):%Y-%m-%d}, after the "
                             f"evaluation's training day {t1:%Y-%m-%d}: it has seen the evaluated period")
        return (float(average_precision_score(y, s_model)), float(average_precision_score(y, champion.predict(X))),
                rows)

    first, last = ds.time_span()
    return Evidence("pr_auc", True, value, base, rows, compare, str(Path(data_dir).resolve()), last, t1)


def _load(data_dir: Path, out_dir: Path, echo: Echo) -> Dataset:
    return load_for_command(data_dir, out_dir, echo)


def model_card(ds: Dataset, data_dir: Path, settings: Settings, final: SerialReturnerModel, capacity: int,
               ev: Evaluation | None = None, fw: dict | None = None, validated: bool = True) -> dict:
    """The model card's content (see :mod:`training.model_card`): figures from the evaluation as logged to MLflow."""
    from training.model_card import HOLIDAY_WINDOW_TEXT, data_summary, new_card

    card = new_card(
        "Serial returners (return abuse)",
        "An abuse score per account (higher = more abnormal returning) with reasons and the likely pattern "
        f"({', '.join(PATTERNS)}), and the review queue sized to the risk team's capacity ({capacity}). "
        f"Mode of this version: {final.mode_} ({final.n_labels_} review decisions learnt from). The queue ranks "
        f"by: {getattr(final, 'method_', 'model')} ({getattr(final, 'method_evidence_', '') or 'no evaluation'}).",
        "The risk team choosing which accounts to review; their decisions train the next version.",
        data_summary(ds, data_dir, validated, ["orders", "returns", "account_links", "review_decisions"]),
        "",
    )
    methods = {"model": "model", "cold_start": "cold-start detector", "rule": "rule baseline",
               "rate_rule": "(returns+1)/(lines+10)", "most_returns": "most returns",
               "if_counts": "IsolationForest on counts"}
    if ev is not None:
        p = ev.params
        card["evaluation"] = (
            f"Fitted as of T1 = {p['t1']} with the review decisions up to T1; every account scored as of "
            f"T2 = {p['t2']} (later time). Positives: accounts whose abuse (ground truth) had started by T2; the "
            f"{p['n_labels']} accounts the model learnt from are left out. {p['n_eval_accounts']:,} accounts "
            f"evaluated, {p['n_eval_positives']} abusers. Baselines on the same accounts: a rule (returns and "
            "return rate in 90 days above thresholds), the return-rate rule (returns+1)/(lines+10) and most returns "
            "over 365 days, and an IsolationForest on raw counts; each is a candidate for the queue (the best "
            "precision in the top of the queue wins, the model keeps ties); the cold-start "
            f"detector is shown too. The registered version is refitted as of the data's last day.")
        labels = {"pr_auc": "PR-AUC", "precision_at_capacity": f"precision in the top {capacity}",
                  "recall_at_1pct_fpr": "recall at 1% false positives", "recall_at_capacity":
                  f"recall in the top {capacity}"}
        m = ev.metrics
        card["metrics"] = pd.DataFrame([{"metric": f"{label} (`{key}`)",
                                         **{name: m.loc[meth, key] for meth, name in methods.items()}}
                                        for key, label in labels.items()])
        gain = m.loc["model", "pr_auc"] - m.loc["if_counts", "pr_auc"]
        card["metrics_note"] = (f"Each method's figures are logged as `<method>_<metric>`. PR-AUC gain over "
                                f"IsolationForest-on-counts {gain:+.4f} (target +{PR_AUC_MARGIN_TARGET}: "
                                f"{'met' if gain >= PR_AUC_MARGIN_TARGET else 'NOT met'}).")
        card["slices"] = ev.slices
        card["slices_note"] = ("Evaluated accounts as of T2. new_account: first order fewer than 90 days before T2; "
                               "returned_in_holiday_window: a return requested in the year before T2 in one of the "
                               f"{HOLIDAY_WINDOW_TEXT}. PR-AUC per method within the slice; recall_in_queue_model: "
                               f"share of the slice's abusers in the model's top {capacity}.")
    else:
        card["evaluation"] = (
            f"No ground truth in the data folder: forward check. Fitted as of {fw['t1']}, the top {capacity} "
            f"flagged are compared with the accounts that became heavy returners ({fw['heavy_threshold']:.0f}+ "
            f"returns) up to {fw['window_end']}; the rule, IsolationForest on counts and 'most returns in 90 days' "
            "on the same accounts; each is a candidate for the queue (best precision in the top wins, the model keeps "
            "ties). A proxy: heavy returning is not abuse.")
        t = fw["table"]
        card["metrics"] = pd.DataFrame([{"metric": f"{label} (`model_{key}`)", **{m: t.loc[m, key] for m in t.index}}
                                        for key, label in (("pr_auc", "PR-AUC, heavy returners next quarter"),
                                                           ("precision", f"precision in the top {capacity}"))])
        card["slices"] = fw["slices"]
        card["slices_note"] = (f"Accounts as of {fw['t1']}, labelled by the proxy (heavy returner next quarter). "
                               f"new_account: first order fewer than 90 days before; returned_in_holiday_window: a "
                               f"return requested in the year before in one of the {HOLIDAY_WINDOW_TEXT}. PR-AUC per "
                               f"method within the slice; recall_in_queue_model: share of the slice's heavy "
                               f"returners in the model's top {capacity}.")
    guests = int(ds.returns["account_id"].isna().sum())
    card["not_applicable"] = {
        "new merchants": "accounts are scored, not merchants.",
        "guest accounts": f"guests have no account to score or flag: {guests:,} of {len(ds.returns):,} returns in "
                          f"the data ({guests / max(len(ds.returns), 1):.1%}) were made without an account and are "
                          "invisible to this model."}
    limits = []
    if (Path(data_dir) / "truth").is_dir():
        limits.append("Trained and measured on a synthetic world with planted abuse patterns: the figures show the "
                      "method finds patterns like these, not that real abuse looks like them.")
    if fw is not None:
        t = fw["table"]["pr_auc"]
        better = [f"{meth} {t[meth]:.4f}" for meth in t.index if meth != "model" and t[meth] > t["model"]]
        limits.append("No ground truth: the figures measure finding next quarter's heavy returners, a proxy; "
                      "heavy returning is not abuse, and abuse with few returns (refund without return, rings) "
                      "is not measured at all.")
        if better:
            limits.append(f"On the proxy the model (PR-AUC {t['model']:.4f}) ranks worse than: {', '.join(better)}.")
    if final.mode_ == "cold_start":
        limits.append(f"This version is the unsupervised cold-start detector: fewer than {settings.serial_min_labels} "
                      "review decisions were available. It ranks unusual returning, which is not always abuse; "
                      "review decisions fed back make the next version supervised.")
    if ev is not None and ev.slices is not None:
        sl = ev.slices.set_index("slice")
        new = sl.loc["new_account"]
        if pd.isna(new["pr_auc_model"]) or new["abusers"] < 10:
            limits.append(f"New accounts are barely measurable: {int(new['accounts']):,} evaluated, "
                          f"{int(new['abusers'])} abusers; their 90- and 365-day features cover little history.")
        elif new["pr_auc_model"] < sl.loc["all accounts", "pr_auc_model"] - 0.05:
            limits.append(f"Weaker on new accounts: PR-AUC {new['pr_auc_model']:.4f} vs "
                          f"{sl.loc['all accounts', 'pr_auc_model']:.4f} overall.")
        mm = ev.metrics["pr_auc"]
        better = [f"{meth} {mm[meth]:.4f}" for meth in ("cold_start", *BASELINES) if mm[meth] > mm["model"]]
        if better:
            limits.append(f"On this evaluation the model ({ev.params['mode']}, PR-AUC {mm['model']:.4f}) ranks worse "
                          f"than: {', '.join(better)}. Prefer the better method's queue until more review decisions "
                          "arrive.")
        for pat in PATTERNS:
            r = ev.metrics.loc["model", f"recall_{pat}_at_capacity"]
            if r < 0.1:
                limits.append(f"The {pat} pattern is rarely ranked into the top {capacity} (recall {r:.4f}); the "
                              "queue's reserved per-pattern slots are what surfaces it.")
    limits.append("Linked accounts (shared address, device, payment) are scored one by one with group features; a "
                  "ring is flagged through its members, not as a unit.")
    card["limits"] = limits
    return card


def train(data_dir: Path, settings: Settings, engine=None) -> dict:
    """Evaluate on later time against baselines, fit on all data up to the end, register, write the snapshots.

    With ground truth (``DATA/truth/accounts.parquet``) the primary metric is the PR-AUC of the model fitted at T1
    and scored at T2; without it, the PR-AUC of finding next quarter's heavy returners (a proxy, logged as such).
    """
    from training import registry

    echo: Echo = click.echo
    t0 = time.perf_counter()
    out_dir = settings.models_dir / MODEL_NAME
    ds = _load(Path(data_dir), out_dir, echo)
    validated = data_validated(ds, echo)
    truth = _truth(Path(data_dir))
    first, last = ds.time_span()
    capacity = settings.review_capacity
    market = _market(Path(data_dir), None, settings)
    summary: dict = {}
    with registry.start_run(MODEL_NAME, run_name="train", settings=settings,
                            tags={"data_dir": str(data_dir), "evaluation": "truth" if truth is not None else "proxy"}):
        if truth is not None:
            t1, t2 = default_split(ds, settings)
            ev = evaluate_on_truth(ds, truth, t1, t2, settings, capacity, market, echo=echo, engine=engine)
            _log_evaluation(ev, capacity)
            primary = float(ev.metrics.loc["model", "pr_auc"])
            for line in target_lines(ev):
                echo("  " + line)
            extra = _flat_metrics(ev)
            summary.update({"pr_auc": round(primary, 4),
                            "pr_auc_if_counts": round(float(ev.metrics.loc["if_counts", "pr_auc"]), 4),
                            "pr_auc_rule": round(float(ev.metrics.loc["rule", "pr_auc"]), 4),
                            "precision_at_capacity": round(float(ev.metrics.loc["model", "precision_at_capacity"]), 3),
                            "evaluated": f"fit {t1.date()}, scored {t2.date()}"})
        else:
            t1 = max(last - pd.Timedelta(days=FORWARD_HORIZON_DAYS), first + (last - first) / 2).normalize()
            fw = evaluate_forward(ds, t1, settings, top=capacity, market=market, echo=echo, engine=engine)
            table = fw["table"]
            registry.log_table(table.reset_index(), "tables/forward_check.csv")
            extra = {f"{m}_{k}": v for m, row in table.iterrows() for k, v in row.items()}
            registry.log_metrics(extra)
            primary = float(table.loc["model", "pr_auc"])
            echo(table.to_string())
            summary.update({"pr_auc_proxy": round(primary, 4), "evaluated": f"forward from {fw['t1']}"})
        method, evidence = (choose_method(ev.metrics, "precision_at_capacity") if truth is not None
                            else choose_by_forward_checks(ds, last, settings, capacity, market, engine))
        echo(f"the queue ranks by: {method} ({evidence})")
        echo(f"fitting the final model on everything up to {last.date()}")
        X_end = features_as_of(ds, last, settings, market, engine=engine)
        labels = load_labels(ds, settings, last)
        final = fit_model(X_end, labels, settings, last, source=str(Path(data_dir).resolve()),
                          client=getattr(engine, "client", None))
        final.use(method, X_end, rule=_rule(settings), evidence=evidence)
        summary["queue_method"] = method
        registry.log_params({"final_mode": final.mode_, "final_labels": final.n_labels_, "as_of": str(last.date()),
                             "accounts": len(X_end), "queue_method": method})
        card = model_card(ds, Path(data_dir), settings, final, capacity, ev=ev if truth is not None else None,
                          fw=fw if truth is None else None, validated=validated)
        result = registry.log_and_register(
            MODEL_NAME, final, X_end[list(FEATURES)].head(5).reset_index(drop=True), primary_metric="pr_auc",
            metric_value=primary, higher_is_better=True, settings=settings, extra_metrics=extra,
            data_validated=validated, card=card,
            evidence=gate_evidence(ds, Path(data_dir), ev if truth is not None else None,
                                   fw if truth is None else None))
        echo(f"registered {MODEL_NAME} v{result.version}: {result.reason}")
        # The snapshots belong to the version; served only when it was promoted (a new generation).
        vdir = generations.version_dir(settings.snapshots_dir, MODEL_NAME, result.version)
        paths = write_snapshots(X_end, final, settings,
                               exclude=excluded_accounts(labels, last, settings.serial_review_cooldown_days),
                               out=vdir)
        served = generations.record_version(settings.snapshots_dir, MODEL_NAME, result.version, result.promoted,
                                            vdir, last, str(Path(data_dir).resolve()))
    summary.update({"mode": final.mode_, "labels": final.n_labels_, "accounts_scored": len(X_end),
                    "version": result.version, "promoted": result.promoted,
                    "snapshot": str(paths["accounts"]), "queue": str(paths["account_queue"]),
                    "served generation": served or "unchanged (not promoted)",
                    "seconds": round(time.perf_counter() - t0, 1)})
    return summary


# --------------------------------------------------------------------------------------------------------------------
# CLI


def _market(data_dir: Path, market: str | None, settings: Settings) -> str:
    """The market whose events mark wardrobing: the option, else the data folder's dataset.json, else the setting."""
    from features.scenarios import dataset_market

    return market or dataset_market(data_dir, settings.market)


def _data_dir(data_dir: Path | None, settings: Settings) -> Path:
    path = Path(data_dir or settings.data_dir)
    if not path.is_dir():
        raise click.ClickException(f"data folder {path} not found: make one with `aftersales generate --out {path}`")
    return path


def _choose_model(ds: Dataset, X: AccountFrame, day: pd.Timestamp, data_dir: Path, settings: Settings,
                  use: str, echo: Echo, client=None) -> SerialReturnerModel:
    """The registered champion when it was trained on this data no later than the as-of day; else a fresh fit."""
    if use in ("auto", "champion"):
        from training import registry

        try:
            loaded = registry.load_champion(MODEL_NAME, settings=settings)
            m = loaded.model
            same = getattr(m, "data_source_", "") == str(data_dir.resolve())
            if use == "champion" or (same and as_day(getattr(m, "as_of_", "2100-01-01")) <= day):
                echo(f"scoring with champion v{loaded.version} ({m.mode_}, trained as of {m.as_of_})")
                return m
        except registry.ModelNotFound:
            if use == "champion":
                raise click.ClickException(f"no champion for {MODEL_NAME}: run `aftersales train serial-returners "
                                           "--data DIR` first, or use --model fit") from None
    labels = load_labels(ds, settings, day)
    model = fit_model(X, labels, settings, day, source=str(data_dir.resolve()), client=client)
    echo(f"fitted as of {day.date()}: {model.mode_} ({model.n_labels_} review decisions up to that day)")
    return model


@click.command("flag-accounts")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Data folder holding the contract tables (default: AFTERSALES_DATA_DIR).")
@click.option("--as-of", "as_of", default=None,
              help="Last day whose data may be used (YYYY-MM-DD; default: the last day of the data).")
@click.option("--capacity", type=int, default=None,
              help="Accounts the team can review (default: AFTERSALES_REVIEW_CAPACITY).")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="Queue file to write (.csv or .parquet): account_id, score, rank, reasons, likely_pattern, slot.")
@click.option("--market", default=None, help="Market whose events mark wardrobing (default: AFTERSALES_MARKET).")
@click.option("--model", "use", type=click.Choice(["auto", "champion", "fit"]), default="auto", show_default=True,
              help="auto: the champion if it was trained on this data up to the as-of day, else fit as of that day.")
@click.option("--snapshot/--no-snapshot", default=False, hidden=True,
              help="Removed: served snapshots change only with a promotion or `aftersales refresh-features`.")
@engine_options
def flag_accounts_cmd(data_dir: Path | None, as_of: str | None, capacity: int | None, out: Path, market: str | None,
                      use: str, snapshot: bool, engine: str, scheduler: str | None) -> None:
    """Write the review queue of abnormal returners as of a day, sized to the team's capacity.

    Accounts already confirmed, or cleared within the cooldown, are left out; guests are never flagged. Writes only
    --out: what the service serves changes with a promotion or `aftersales refresh-features`.
    """
    settings = get_settings()
    data_dir = _data_dir(data_dir, settings)
    capacity = capacity or settings.review_capacity
    if capacity < 1:
        raise click.BadParameter("must be at least 1", param_hint="--capacity")
    ds = load_for_command(data_dir, Path(out).parent / f"{Path(out).stem}_rejects", click.echo, until=as_of)
    try:
        day = check_as_of(as_of or ds.time_span()[1], ds.time_span())
    except AsOfError as e:
        raise click.ClickException(str(e)) from e
    market = _market(data_dir, market, settings)
    with engine_for_command(engine, scheduler) as eng:
        X = account_features(ds.orders, ds.returns, ds.account_links, day, market, settings, engine=eng)
        model = _choose_model(ds, X, day, data_dir, settings, use, click.echo, client=eng.client)
    labels = load_labels(ds, settings, day)
    exclude = excluded_accounts(labels, day, settings.serial_review_cooldown_days)
    scores = model.predict(X)
    queue = review_queue(X, model, capacity, exclude=exclude, scores=scores,
                         pattern_share=settings.serial_pattern_share, explore_share=settings.serial_explore_share)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        queue.to_parquet(out, index=False)
    else:
        queue.to_csv(out, index=False)
    click.echo(f"{len(queue)} accounts flagged as of {day.date()} out of {len(X):,} "
               f"({len(exclude)} already decided left out) -> {out}")
    for p, n in queue["likely_pattern"].value_counts().items():
        click.echo(f"  {p}: {n}")
    if snapshot:
        click.echo("note: --snapshot no longer writes the served snapshot; served features change only with a "
                   "promotion (`aftersales train`) or `aftersales refresh-features`")


@click.group("review")
def review_group() -> None:
    """Record, list and import the risk team's decisions on flagged accounts (they feed the next training)."""


def _known_accounts(data_dir: Path | None) -> set[str] | None:
    if data_dir is None:
        return None
    try:
        ds = load_dataset(data_dir, tables=["orders", "returns"])
    except ContractError as e:
        raise click.ClickException(str(e)) from e
    ids = pd.concat([ds.orders["account_id"], ds.returns["account_id"]]).dropna().astype(str)
    return set(ids.unique())


@review_group.command("record")
@click.option("--account", "account_id", required=True, help="The reviewed account's ID.")
@click.option("--decision", required=True, help="confirmed_abuse or cleared.")
@click.option("--reviewer", required=True, help="Who decided.")
@click.option("--note", default=None, help="Free text kept with the decision.")
@click.option("--decision-id", default=None, help="Idempotency key: a retry with the same key is stored once.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path, exists=True), default=None,
              help="Data folder to check the account against (default: the account snapshot from training).")
def record_cmd(account_id: str, decision: str, reviewer: str, note: str | None, decision_id: str | None,
               data_dir: Path | None) -> None:
    """Store one decision (one transaction) in the review database (AFTERSALES_REVIEW_DB_URL or models/reviews.db)."""
    settings = get_settings()
    try:
        rec = record_decision(account_id, decision, reviewer, note, decision_id=decision_id,
                              known_accounts=_known_accounts(data_dir), source="cli", settings=settings)
    except DecisionError as e:
        raise click.ClickException(str(e)) from e
    state = "already recorded" if rec["duplicate"] else "recorded"
    click.echo(f"{state}: {rec['account_id']} {rec['decision']} by {rec['reviewer']} at {rec['decided_at']} "
               f"(decision_id {rec['decision_id']})")


@review_group.command("list")
@click.option("--account", "account_id", default=None, help="Only this account's decisions.")
@click.option("--since", default=None, help="Only decisions on or after this day (YYYY-MM-DD).")
def list_cmd(account_id: str | None, since: str | None) -> None:
    """List stored decisions, oldest first."""
    frame = list_decisions(get_settings(), account_id=account_id, since=since)
    if frame.empty:
        click.echo("no decisions stored yet: `aftersales review record --account ID --decision cleared --reviewer ME`")
        return
    click.echo(frame.drop(columns=["recorded_at"]).to_string(index=False))
    click.echo(f"{len(frame)} decisions ({int((frame['decision'] == 'confirmed_abuse').sum())} confirmed abuse)")


@review_group.command("import")
@click.argument("file", type=click.Path(exists=True, path_type=Path))
@click.option("--data", "data_dir", type=click.Path(path_type=Path, exists=True), default=None,
              help="Data folder to check the accounts against (default: the account snapshot from training).")
def import_cmd(file: Path, data_dir: Path | None) -> None:
    """Import a review_decisions table (CSV, CSV.gz or Parquet; contract columns) into the store.

    Rows breaking the contract, and rows the store refuses (unknown account, ...), go to FILE's folder as
    <name>_rejects/rejects.csv with the rule; every row is counted once: stored, already present or rejected. Each
    decision is keyed by its content, so importing the same file twice (or again after an interrupted import) stores
    each decision once.
    """
    from features.contract import REJECT_COLUMNS, load_table

    settings = get_settings()
    try:
        accepted, rejects, report = load_table("review_decisions", file)
    except ContractError as e:
        raise click.ClickException(str(e)) from e
    res = import_decisions(accepted, known_accounts=_known_accounts(data_dir), settings=settings)
    # Refused rows are reported under their row number in FILE (the accepted rows are the file's rows minus rejects).
    file_rows = [r for r in range(1, report.rows_in + 1) if r not in set(rejects["row"].tolist())]
    refused = pd.DataFrame([{"table": "review_decisions", "row": file_rows[r["position"]], "field": r["field"],
                             "rule": r["rule"], "value": r["value"], "record": ""} for r in res["refused_rows"]],
                           columns=REJECT_COLUMNS)
    all_rejects = pd.concat([rejects, refused], ignore_index=True) if len(refused) else rejects
    rej_dir = file.parent / f"{file.name.split('.')[0]}_rejects"
    rej_dir.mkdir(parents=True, exist_ok=True)
    all_rejects.sort_values("row", kind="stable").to_csv(rej_dir / "rejects.csv", index=False)
    click.echo(f"{report.rows_in} rows read, {report.rejected} rejected by the contract, {res['refused']} refused "
               f"by the store (details in {rej_dir / 'rejects.csv'})")
    click.echo(f"stored {res['stored']}, already present {res['already_present']}")
    for line in res["refusals"]:
        click.echo(f"  refused {line}")


@click.command("serial-returners")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Data folder (with truth/accounts.parquet for a ground-truth evaluation).")
@click.option("--as-of", "as_of", default=None,
              help="Training as-of day T1 (default: the evaluation horizon before the data ends).")
@click.option("--horizon-days", type=int, default=None,
              help="Days from T1 to the evaluation day T2 (default 182 with truth; 91, the next quarter, without).")
@click.option("--capacity", type=int, default=None, help="Queue size evaluated (default: AFTERSALES_REVIEW_CAPACITY).")
@click.option("--market", default=None, help="Market whose events mark wardrobing (default: AFTERSALES_MARKET).")
@click.option("--no-feedback", is_flag=True, help="Skip the feedback simulation.")
@click.option("--no-mlflow", is_flag=True, help="Print only; log nothing to MLflow.")
def evaluate_cmd(data_dir: Path | None, as_of: str | None, horizon_days: int | None, capacity: int | None,
                 market: str | None, no_feedback: bool, no_mlflow: bool) -> None:
    """Fit as of T1, score later time, compare with the rule and IsolationForest-on-counts baselines; print targets.

    With ground truth: PR-AUC, precision at capacity, recall at 1% FPR, recall per pattern, feedback simulation.
    Without (real data): how many of the top K flagged are heavy returners in the next quarter, next to the rule.
    """
    from contextlib import nullcontext

    from training import registry

    settings = get_settings()
    data_dir = _data_dir(data_dir, settings)
    capacity = capacity or settings.review_capacity
    ds = _load(data_dir, data_dir / "_evaluation", click.echo)
    truth = _truth(data_dir)
    market = _market(data_dir, market, settings)
    run = nullcontext() if no_mlflow else registry.start_run(MODEL_NAME, run_name="evaluate", settings=settings,
                                                             tags={"data_dir": str(data_dir)})
    try:
        with run:
            if truth is None:
                t1 = as_of or max(ds.time_span()[1] - pd.Timedelta(days=FORWARD_HORIZON_DAYS), ds.time_span()[0])
                fw = evaluate_forward(ds, t1, settings, top=capacity, market=market,
                                      horizon_days=horizon_days or FORWARD_HORIZON_DAYS, echo=click.echo)
                click.echo(f"no ground truth in {data_dir}: forward check. Top {capacity} flagged as of {fw['t1']} "
                           f"({fw['mode']}); heavy returner = {fw['heavy_threshold']:.0f}+ returns from the next day "
                           f"to {fw['window_end']} ({fw['heavy_accounts']} of {fw['accounts']:,} accounts)")
                click.echo(fw["table"].round(3).to_string())
                if not no_mlflow:
                    registry.log_table(fw["table"].reset_index(), "tables/forward_check.csv")
                    registry.log_metrics({f"{m}_{k}": v for m, row in fw["table"].iterrows() for k, v in row.items()})
                return
            t1, t2 = default_split(ds, settings, as_of, horizon_days)
            ev = evaluate_on_truth(ds, truth, t1, t2, settings, capacity, market, feedback=not no_feedback,
                                   echo=click.echo)
            if not no_mlflow:
                _log_evaluation(ev, capacity)
    except AsOfError as e:
        raise click.ClickException(str(e)) from e
    cols = ["pr_auc", "precision_at_capacity", "recall_at_1pct_fpr", *[f"recall_{p}_at_capacity" for p in PATTERNS]]
    click.echo(f"fitted as of {t1.date()} ({ev.model.mode_}, {ev.model.n_labels_} decisions), scored as of "
               f"{t2.date()} on {ev.params['n_eval_accounts']:,} accounts ({ev.params['n_eval_positives']} abusers)")
    click.echo(ev.metrics[cols].round(3).to_string())
    if ev.feedback is not None:
        click.echo(ev.feedback.round(3).to_string(index=False))
    click.echo("targets:")
    for line in target_lines(ev):
        click.echo("  " + line)
