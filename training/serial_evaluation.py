"""Serial-return accounts: fitting, evaluation on later time against the baselines, the feedback simulation, the
forward check on data without ground truth (and the choice of what the queue ranks by), plots and logging.

Evaluation protocol (worlds with ground truth): the model is fitted as of T1 with the review decisions taken up to
T1, then scores every account as of T2 (later); the positives are the accounts whose abuse had started by T2, and
accounts the model learnt from are left out of every metric. Baselines in the same run, on the same accounts: a rule
(return count and rate above thresholds) and an IsolationForest on raw counts. On data without ground truth (the
Online Retail import) the check is forward-looking: flag the top K as of T1 and count how many are heavy returners in
the quarter after; what the queue ranks by is chosen on such checks at several earlier cut-offs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features.accounts import (
    BASELINES,
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
    queue_settings,
    review_queue,
)
from features.contract import Dataset
from features.reviews import decision_labels, list_decisions
from features.settings import Settings
from training.data import load_for_command

MODEL_NAME = "serial_returners"
METHODS = ("model", "cold_start", *BASELINES)
CANDIDATES = ("model", *BASELINES)  # what the queue may rank by: the model or a baseline that beats it
PR_AUC_MARGIN_TARGET = 0.15  # the model's PR-AUC must beat IsolationForest-on-counts by this much
FEEDBACK_CHECKPOINTS = (50, 200)
# Fewer decisions of a class than this (cleared accounts, typically, in a queue reviewed from the top): a held-out
# comparison of rankings rests on a handful of accounts, and the feedback line says so.
FEEDBACK_FEW_PER_CLASS = 10
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
              source: str = "", client=None, links: pd.DataFrame | None = None) -> SerialReturnerModel:
    """Fit the serial-return model on the population ``X``; supervised when ``labels`` are enough, else cold start.

    The decided accounts' features are those of ``X`` (as of the training day): a confirmed abuser's later
    behaviour is still the abuser's, and nothing after the training day is read. ``links``: the dataset's
    ``account_links``; with them the decisions also speak for the decided accounts' linked accounts
    (``SerialReturnerModel.fit``).
    """
    lab = labels[labels["account_id"].isin(X.index)]
    Xl = X.loc[lab["account_id"].to_numpy()]
    model = SerialReturnerModel(min_labels=settings.serial_min_labels, num_threads=settings.serial_num_threads,
                                gate=settings.serial_supervised_gate, learner=settings.serial_learner)
    model.fit(pd.concat([X, Xl]), np.r_[np.full(len(X), np.nan), lab["label"].to_numpy(dtype=float)], client=client,
              links=links)
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
    model = fit_model(X1, labels, settings, t1, client=getattr(engine, "client", None), links=ds.account_links)
    cold = model if model.mode_ == "cold_start" else fit_model(X1, labels.iloc[:0], settings, t1)
    forest = counts_forest(X1)
    learnt = set(labels["account_id"].astype(str))
    ev = X2.loc[~X2.index.isin(list(learnt))]
    tr = truth.reindex(ev.index)
    y = (tr["is_abuser"].fillna(False).astype(bool) & (tr["abuse_start"] <= t2)).to_numpy()
    pattern = tr["pattern"].fillna("normal").astype(str).to_numpy()
    # Scored as flag-accounts scores on a later day: a cold start's null is refitted on that day's accounts.
    model_t2, cold_t2 = model.for_day(X2), cold.for_day(X2)
    scores = {"model": model_t2.predict(ev), "cold_start": cold_t2.predict(ev), **baseline_scores(ev, forest, settings)}
    rows = [{"method": m, **ranking_metrics(y, s, pattern, capacity)} for m, s in scores.items()]
    metrics = pd.DataFrame(rows).set_index("method")
    echo("building the review queue")
    queue = review_queue(ev, model_t2, capacity, scores=scores["model"], **queue_settings(settings))
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
        fb = feedback_simulation(X1, X2, truth, t1, t2, settings, exclude=learnt, cold=cold, links=ds.account_links)
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
                        checkpoints: tuple[int, ...] = FEEDBACK_CHECKPOINTS, round_size: int = 50,
                        links: pd.DataFrame | None = None) -> pd.DataFrame:
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
    audit: list[bool] = []  # the decision was on the queue's audit sample (slot 'exploration')
    model, rows = cold, []
    for r in range(int(np.ceil(max(checkpoints) / round_size))):
        q = review_queue(X1, model, round_size, exclude=set(reviewed) | set(exclude), seed=r,
                         **queue_settings(settings))
        reviewed += list(q["account_id"].astype(str))
        labels += list(abuser_t1.loc[q["account_id"]].astype(float))
        audit += list(q["slot"].eq("exploration"))
        lab = pd.DataFrame({"account_id": reviewed, "label": labels})
        model = fit_model(X1, lab, settings, t1, links=links)
        if len(reviewed) in checkpoints:
            ev = X2.loc[~X2.index.isin(reviewed + list(exclude))]
            te = truth.reindex(ev.index)
            y = (te["is_abuser"].fillna(False).astype(bool) & (te["abuse_start"] <= t2)).to_numpy()
            ps, pc = model.predict(ev), cold.predict(ev)
            sup, base = average_precision_score(y, ps), average_precision_score(y, pc)
            k = max(int(y.sum()), 1)  # a queue as long as there are abusers left to find
            prec_s = float(y[np.argsort(-ps, kind="stable")[:k]].mean())
            prec_c = float(y[np.argsort(-pc, kind="stable")[:k]].mean())
            lab_arr, aud = np.array(labels), np.array(audit)
            g = model.gate_
            rows.append({"reviewed": len(reviewed), "positives": int(sum(labels)),
                         "cleared": int(len(labels) - sum(labels)), "audit_reviewed": int(aud.sum()),
                         "audit_cleared": int((aud & (lab_arr == 0)).sum()), "mode": model.mode_,
                         "status": feedback_status(model),
                         "gate_auc_supervised": _nan_if_none(g.get("auc_supervised")),
                         "gate_auc_cold_start": _nan_if_none(g.get("auc_cold_start")),
                         "pr_auc_supervised": sup, "pr_auc_cold_start": base, "gain": sup - base,
                         "precision_at_k_supervised": prec_s, "precision_at_k_cold_start": prec_c,
                         "precision_gain": prec_s - prec_c})
    return pd.DataFrame(rows)


def _nan_if_none(v) -> float:
    return float("nan") if v is None else float(v)


def feedback_status(model: SerialReturnerModel) -> str:
    """Why a model fitted on review decisions ranks as it does: 'supervised' (the learnt ranking won the held-out
    check), 'held_out_kept_cold_start' (it was fitted and the held-out decisions preferred the cold start) or
    'too_few_decisions' (fewer than ``min_labels`` decisions, or fewer than ``min_per_class`` of either class:
    nothing was learnt, the queue keeps the cold start)."""
    if model.mode_ == "supervised":
        return "supervised"
    if getattr(model, "gate_", {}).get("heldout_decisions"):
        return "held_out_kept_cold_start"
    return "too_few_decisions"


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
    model = fit_model(X1, labels, settings, t1, client=getattr(engine, "client", None), links=ds.account_links)
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
        model = fit_model(X, load_labels(ds, settings, t0), settings, t0, links=ds.account_links)
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
        limits = (ev.model.min_labels, ev.model.min_per_class) if ev.model is not None else ()
        lines += [feedback_line(row, *limits) for row in ev.feedback.to_dict("records")]
    return lines


def feedback_line(row: dict, min_labels: int = 30, min_per_class: int = 3) -> str:
    """One checkpoint of the feedback simulation in words, for a risk team.

    PASS/FAIL only where the decisions produced a learnt ranking to compare with the cold start (against the
    truth, on the accounts not reviewed). Where the queue kept the cold start the two rankings are the same one, so
    the line says why (too few decisions of a class to learn from, or held-out decisions that did not favour a
    learnt ranking, with how few of a class they rest on) and what would give the next fit more to learn from.
    """
    n, pos = int(row["reviewed"]), int(row["positives"])
    neg = int(row.get("cleared", n - pos))
    audit, audit_neg = int(row.get("audit_reviewed", 0)), int(row.get("audit_cleared", 0))
    head = (f"feedback after {n} reviews ({pos} confirmed, {neg} cleared; {audit} from the audit sample, "
            f"{audit_neg} of those cleared)")
    why = row.get("status") or ("supervised" if row.get("mode") == "supervised" else "too_few_decisions")
    if why == "supervised":
        gain = float(row["gain"])
        return (f"{head}: the learnt ranking is used; PR-AUC {row['pr_auc_supervised']:.3f} vs cold start "
                f"{row['pr_auc_cold_start']:.3f} ({'+' if gain >= 0 else ''}{gain:.3f}) "
                f"{'PASS' if gain > 0 else 'FAIL'}")
    few = min(pos, neg)
    scarce = "cleared" if neg <= pos else "confirmed"
    if why == "too_few_decisions":
        reason = (f"too few decisions to learn from ({n} < {min_labels})" if n < min_labels else
                  f"the decisions hold only {few} {scarce} accounts, too few to learn from (at least "
                  f"{min_per_class} of each are needed)")
    else:
        reason = (f"on held-out decisions the cold start ranked them at least as well (ROC-AUC learnt "
                  f"{row['gate_auc_supervised']:.3f} vs cold start {row['gate_auc_cold_start']:.3f})")
        if few < FEEDBACK_FEW_PER_CLASS:
            reason += f", a check that rests on only {few} {scarce} accounts"
    if few >= FEEDBACK_FEW_PER_CLASS:
        helps = "more decisions; every fit repeats the held-out check and switches when the decisions support it"
    elif scarce == "cleared":
        helps = ("cleared accounts, which the top of the queue rarely holds: review the queue's audit sample (its "
                 "'exploration' slots, drawn below the top; a larger serial_explore_share draws more) and record "
                 "clearances as well as confirmations")
    else:
        helps = "more confirmed decisions: keep reviewing the top of the queue"
    return (f"{head}: the queue keeps the cold start (PR-AUC {row['pr_auc_cold_start']:.3f}; no learnt ranking "
            f"to compare, not a failure): {reason}. What would help: {helps}.")


def _load(data_dir: Path, out_dir: Path, echo: Echo) -> Dataset:
    return load_for_command(data_dir, out_dir, echo)
