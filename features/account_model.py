"""Serial-return accounts: :class:`SerialReturnerModel`, the model training fits and serving loads.

The detector (:mod:`features.account_detector`), plus, once enough review decisions exist, a supervised learner
calibrated by Platt scaling on out-of-fold scores and used only when it beats the detector on held-out decisions:
by default a logistic regression on the detector's per-pattern evidence and its combined score (which patterns the
reviewers confirm on this platform: few weights, learnt from a few hundred decisions); or (``learner='boost'``) a
small LightGBM on all features and the detector's score, boosted from a logistic prior on that score, with a
background sample of the population as weak negatives (positive-unlabelled learning).
``explain`` turns LightGBM contributions (``pred_contrib``) or the detector's deviations into sentences a reviewer
reads, and names the likely pattern (serial, wardrobing, refund_without_return, ring) from the reasons that dominate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from features.account_detector import (
    BASELINES,
    PatternDetector,
    baseline_score,
    blend_parts,
    combined_score,
    counts_forest,
)
from features.account_features import ANOMALY_FEATURE, FEATURE_PATTERN, FEATURES, PATTERNS, AccountFrame
from features.account_reasons import pattern_text, typical_values

LEARNERS = ("logistic", "boost")
# The logistic learner's inputs: the detector's evidence per pattern and combined (-log10 of the chance for an
# ordinary account of the platform), each on the platform's own scale.
LOGISTIC_COLUMNS: tuple[str, ...] = (*(f"tail_{p}" for p in PATTERNS), ANOMALY_FEATURE)
# What the decisions say about an account's linked accounts (shared address, device, payment): log(1 + the number
# of its linked accounts the reviewers confirmed / cleared). The logistic learner adds them to its inputs when the
# account links are given to ``fit``: a confirmed ring member makes the accounts it shares identifiers with
# suspicious, by as much as this platform's decisions say.
DECISION_LINK_COLUMNS: tuple[str, ...] = ("linked_confirmed", "linked_cleared")


class _EvidenceLogistic:
    """A logistic regression on standardised columns, kept as plain arrays (``coef_``, ``intercept_``,
    ``center_``, ``scale_``) so a registered model needs no scikit-learn pipeline to score."""

    def __init__(self, coef: np.ndarray, intercept: float, center: np.ndarray, scale: np.ndarray):
        self.coef_, self.intercept_, self.center_, self.scale_ = coef, intercept, center, scale

    def decision_function(self, Z: np.ndarray) -> np.ndarray:
        return ((np.asarray(Z, dtype=float) - self.center_) / self.scale_) @ self.coef_[0] + self.intercept_


# The sign each logistic weight may take: more evidence of a pattern (or a confirmed linked account) never makes an
# account less suspicious, and a linked account the reviewers cleared never makes it more suspicious. Two hundred
# decisions from the top of a queue are a biased sample: on seed 707 the unconstrained regression learnt + 2.6 for
# linked *cleared* accounts (ring members whose abuse began after the review were cleared then) and pushed the
# cleared rings' innocent neighbours into the next queue. Seeds 600-611, 700-711, 800-811 (36 worlds, queue with
# 200 decisions vs the cold start's on the same accounts): with C = 0.03 the bounds alone took better / same /
# worse from 20 / 15 / 1 to 21 / 15 / 0; bounded, a weaker penalty no longer overfits: C = 0.1 gives 23 / 13 / 0,
# + 0.05 or more on 17 -> 19 worlds, mean gain + 0.103 -> + 0.113, median + 0.038 -> + 0.065 (C = 0.06 and 0.15:
# 22 / 14 / 0, 19 and 18 worlds, + 0.110 and + 0.109).
NEGATIVE_WEIGHT_COLUMNS: tuple[str, ...] = ("linked_cleared",)


def _fit_logistic(D: pd.DataFrame, y: np.ndarray, c: float, columns: Sequence[str] = LOGISTIC_COLUMNS
                  ) -> _EvidenceLogistic:
    """L2 logistic regression (strength 1 / ``c``, intercept not penalised, as scikit-learn's) of the decisions on
    ``columns`` (:data:`LOGISTIC_COLUMNS`, and :data:`DECISION_LINK_COLUMNS` when the links were given),
    standardised by the decided accounts' own mean and spread, with each weight held to its sign: at least 0, at
    most 0 for :data:`NEGATIVE_WEIGHT_COLUMNS` (fitted by L-BFGS-B within those bounds)."""
    from scipy.optimize import minimize
    from scipy.special import expit

    Z = D[list(columns)].to_numpy(dtype=float)
    center, scale = Z.mean(axis=0), Z.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    Zs = (Z - center) / scale
    yf = np.asarray(y, dtype=float)
    n_w = Zs.shape[1]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:n_w], theta[n_w]
        margin = Zs @ w + b
        nll = np.logaddexp(0.0, np.where(yf == 1, -margin, margin)).sum()
        err = expit(margin) - yf
        return 0.5 * w @ w + c * nll, np.r_[w + c * (Zs.T @ err), c * err.sum()]

    bounds = [(None, 0.0) if col in NEGATIVE_WEIGHT_COLUMNS else (0.0, None) for col in columns] + [(None, None)]
    fit = minimize(loss, np.zeros(n_w + 1), jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": 2000})
    return _EvidenceLogistic(fit.x[:n_w].reshape(1, -1), float(fit.x[n_w]), center, scale)


class SerialReturnerModel:
    """The serial-return model that training fits and serving loads.

    ``fit(X, y)``: ``X`` holds the population (rows whose ``y`` is NaN, or every row when ``y`` is None) and the
    labelled accounts (1 = confirmed abuse, 0 = cleared) in decision-time order. With fewer than ``min_labels``
    labels, or fewer than ``min_per_class`` of either class, it stays in cold start: the detector's score.

    Otherwise it learns from the decisions. ``learner='logistic'`` (default): a logistic regression (L2, strength
    ``1 / logistic_c``, standardised inputs, each weight held to its sign: evidence never counts against an account,
    a cleared linked account never for it, :data:`NEGATIVE_WEIGHT_COLUMNS`) on the detector's evidence per pattern
    (:data:`LOGISTIC_COLUMNS`):
    how much each pattern's evidence counts on this platform, as its reviewers decide; given the account links
    (``fit(..., links=)``), also how many of each account's linked accounts were confirmed and cleared
    (:data:`DECISION_LINK_COLUMNS`: a confirmed ring member makes the accounts it shares identifiers with
    suspicious; on the tuning worlds this took the queue with 200 decisions from better than the cold start on 13
    of 32 worlds to 18, + 0.05 on 11 -> 15, mean gain + 0.061 -> + 0.099). On the tuning worlds (seeds
    600-607, 700-711, 800-811; 200 decisions from the top of the cold queue, ``benchmark-models``) it beat the
    boosted model below: the queue on the unreviewed accounts was better than the cold start's on 18 of 32 worlds
    (boost 13), worse on 1 (boost 4), + 0.05 on 12 (boost 11), mean gain + 0.084 (boost + 0.059); 200 decisions
    from the top of a queue are few, and biased, for a tree model on every feature.
    ``learner='boost'``: starting from the detector, a logistic prior on the detector's score
    (the boosting's ``init_score``), then a small LightGBM on every feature and that score, which corrects the prior
    where decisions say so. Where the reviewed sample holds no example (a pattern never reviewed), the prior, and so
    the detector, still ranks. ``background`` accounts drawn from the population join the decisions as weak
    negatives with a total weight of ``background_weight`` x the number of decisions (positive-unlabelled
    learning): with 50 decisions, nearly all confirmed, "how confirmed abusers differ from everybody" is what can
    be learnt. The raw score is calibrated by Platt scaling on out-of-fold scores of the decisions (contiguous
    blocks in decision order), so the probability is not the booster's own over-confidence; it is a probability
    for accounts like those reviewed.
    """

    # Models pickled before the logistic learner existed were all boosted; a new instance sets its own.
    learner: str = "boost"
    # Models pickled before decision links existed: no linked decisions.
    decision_links_: pd.DataFrame | None = None

    def __init__(self, min_labels: int = 30, min_per_class: int = 3, n_folds: int = 5,
                 num_boost_round: int = 120, learning_rate: float = 0.05, num_leaves: int = 7,
                 background: int = 2000, background_weight: float = 1.0, num_threads: int = 1,
                 random_state: int = 0, detector_params: dict | None = None, gate: bool = True,
                 gate_repeats: int = 3, learner: str = "logistic", logistic_c: float = 0.1):
        if learner not in LEARNERS:
            raise ValueError(f"unknown learner {learner!r}: choose one of {', '.join(LEARNERS)}")
        self.learner = learner
        self.logistic_c = logistic_c
        self.min_labels = min_labels
        self.min_per_class = min_per_class
        self.n_folds = n_folds
        self.num_boost_round = num_boost_round
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.background = background
        self.background_weight = background_weight
        self.num_threads = num_threads
        self.random_state = random_state
        self.detector_params = detector_params
        self.gate = gate
        self.gate_repeats = gate_repeats

    # -- fitting -----------------------------------------------------------------------------------------------------

    def _params(self, n: int) -> dict:
        return {"objective": "binary", "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
                "min_data_in_leaf": max(3, n // 25), "min_sum_hessian_in_leaf": 1e-3, "lambda_l2": 1.0,
                "feature_fraction": 0.8, "bagging_fraction": 0.9, "bagging_freq": 1, "seed": self.random_state,
                "num_threads": self.num_threads, "verbose": -1, "deterministic": True, "force_row_wise": True}

    @property
    def logistic_columns_(self) -> tuple[str, ...]:
        """The logistic learner's inputs: :data:`LOGISTIC_COLUMNS`, and :data:`DECISION_LINK_COLUMNS` when the fit
        kept decisions on linked accounts (``decision_links_``)."""
        return LOGISTIC_COLUMNS if self.decision_links_ is None else (*LOGISTIC_COLUMNS, *DECISION_LINK_COLUMNS)

    def _link_counts(self, X: AccountFrame) -> np.ndarray:
        """Per account of ``X``: its linked accounts the reviewers confirmed and cleared (the columns of
        :data:`DECISION_LINK_COLUMNS`), zeros for an account with none; needs ``decision_links_``."""
        return self.decision_links_.reindex(X.index.astype(str)).fillna(0.0).to_numpy()

    def _fit_raw(self, D: pd.DataFrame, y: np.ndarray, B: pd.DataFrame | None = None):
        """(prior, fitted): for 'boost' the logistic prior on the detector score and the booster correcting it;
        for 'logistic' (None, the fitted regression).

        ``B`` ('boost' only): background accounts from the population, weak negatives (positive-unlabelled
        learning): a few dozen decisions say little on their own about how confirmed abusers differ from everybody
        else. The logistic regression learns from the decisions alone: on the tuning worlds background negatives
        made it worse (it then learnt "unusual" again rather than which patterns the reviewers confirm).
        """
        if self.learner == "logistic":
            return None, _fit_logistic(D, y, self.logistic_c, self.logistic_columns_)
        from features.engine import train_booster

        anomaly = D[ANOMALY_FEATURE].to_numpy()
        a, b = _platt(anomaly, y)
        # The prior may only say "more abnormal, more suspicious"; a biased handful of decisions can say otherwise.
        prior = (a, b) if a > 0 else (0.0, float(np.log((y.mean() + 1e-3) / (1 - y.mean() + 1e-3))))
        w = np.ones(len(y))
        if B is not None and len(B):
            D = pd.concat([D, B])
            w = np.r_[w, np.full(len(B), self.background_weight * len(y) / len(B))]
            y = np.r_[y, np.zeros(len(B))]
        init = prior[0] * D[ANOMALY_FEATURE].to_numpy() + prior[1]
        booster, _ = train_booster(self._params(int(w.sum())), D, y, self.num_boost_round,
                                   client=getattr(self, "_client", None), weight=w, init_score=init,
                                   feature_name=list(D.columns))
        return prior, booster

    def _raw(self, D: pd.DataFrame, prior: tuple[float, float] | None, booster) -> np.ndarray:
        if prior is None:  # the logistic learner
            return booster.decision_function(D[list(self.logistic_columns_)].to_numpy())
        return booster.predict(D, raw_score=True) + prior[0] * D[ANOMALY_FEATURE].to_numpy() + prior[1]

    def fit(self, X: AccountFrame, y: Sequence[float] | np.ndarray | None = None, client=None,
            links: pd.DataFrame | None = None) -> SerialReturnerModel:
        """Fit the detector on the population and, when the labels allow, the calibrated supervised model.

        ``client``: a ``distributed.Client``; the boosters are then trained with ``lightgbm.dask`` and kept as local
        boosters (the client is not kept on the fitted model).
        ``links``: the contract's ``account_links`` table. With the logistic learner, what the decisions say about
        each account's linked accounts (:data:`DECISION_LINK_COLUMNS`) joins its inputs: how much a confirmed (or
        cleared) linked account counts is learnt from the decisions like every other weight, and the held-out check
        judges the whole. The counts are kept on the model (``decision_links_``, the accounts with a decided linked
        account) and looked up by account ID when scoring.
        """
        self._client = client
        try:
            return self._fit(X, y, links)
        finally:
            del self._client

    def _decision_links(self, population: AccountFrame, decided: pd.Series,
                        links: pd.DataFrame | None) -> pd.DataFrame | None:
        """Per account of ``population`` with a decided linked account: how many of its linked accounts were
        confirmed and how many cleared (``decided``: label by account ID). An account's own decision never counts
        for itself."""
        from features.account_features import link_pairs

        if links is None or links.empty or decided.empty:
            return None
        ids = pd.Index(population.index.astype(str))
        pairs = link_pairs(links, ids)
        a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
        la, lb = decided.reindex(ids[a]).to_numpy(), decided.reindex(ids[b]).to_numpy()
        out = np.zeros((len(ids), 2))
        for k, value in enumerate((1.0, 0.0)):
            np.add.at(out[:, k], a, lb == value)
            np.add.at(out[:, k], b, la == value)
        hit = out.sum(axis=1) > 0
        return pd.DataFrame(out[hit], index=ids[hit], columns=list(DECISION_LINK_COLUMNS))

    def _fit(self, X: AccountFrame, y, links: pd.DataFrame | None = None) -> SerialReturnerModel:
        y_arr = np.full(len(X), np.nan) if y is None else np.asarray(y, dtype=float)
        if len(y_arr) != len(X):
            raise ValueError(f"y has {len(y_arr)} values for {len(X)} rows")
        labelled = ~np.isnan(y_arr)
        population = X.loc[~labelled] if (~labelled).any() else X
        self.detector_ = PatternDetector(**(self.detector_params or {})).fit(population)
        self.typical_ = typical_values(population[list(FEATURES)])
        self.anomaly_mean_ = float(np.mean(self.detector_.score(population)))
        self.n_labels_ = int(labelled.sum())
        yl = y_arr[labelled]
        self.n_positive_ = int((yl == 1).sum())
        n_neg = self.n_labels_ - self.n_positive_
        self.mode_ = ("supervised" if self.n_labels_ >= self.min_labels
                      and min(self.n_positive_, n_neg) >= self.min_per_class else "cold_start")
        self.prior_, self.booster_, self.platt_, self.oof_ = None, None, None, None
        self.gate_ = {"use_supervised": False, "heldout_decisions": 0, "auc_supervised": None, "auc_cold_start": None,
                      "folds": 0, "folds_won": 0}
        self.decision_links_ = None
        if self.mode_ == "supervised" and self.learner == "logistic" and links is not None:
            decided = pd.Series(yl, index=X.index[labelled].astype(str))
            self.decision_links_ = self._decision_links(population, decided[~decided.index.duplicated(keep="last")],
                                                        links)
        if self.mode_ == "supervised":
            D = self._design(X.loc[labelled])
            B = None
            if self.background and (~labelled).any() and self.learner == "boost":
                rng = np.random.default_rng(self.random_state)
                pick = rng.choice(len(population), min(self.background, len(population)), replace=False)
                B = self._design(population.iloc[np.sort(pick)])
            self.platt_ = self._calibrate(D, yl, B)
            self.gate_ = self._gate(D, yl, B)
            if self.gate_["use_supervised"] or not self.gate:
                self.prior_, self.booster_ = self._fit_raw(D, yl, B)  # the final model sees every decision
            else:  # held-out decisions say the detector ranks them at least as well: keep the cold start
                self.mode_, self.platt_, self.decision_links_ = "cold_start", None, None
        return self

    def on_population(self, X: AccountFrame) -> SerialReturnerModel:
        """In cold start, a copy whose detector null (each test's beta-binomial and calibration) is refitted on the
        population ``X``, the accounts as of the day being scored: evidence is then "rarer than for an ordinary
        account of the platform as it is that day", not as it was when the model was fitted (months earlier for a
        champion). No label is read. A supervised model is returned as it is: its weights were learnt on evidence
        under its own day's null (refreshed, its queues with 200 decisions fell from a mean gain of + 0.084 over
        the cold start to + 0.053 on the tuning worlds).

        Tuning worlds (seeds 600-607, 700-711, 800-811; fitted 182 days before the queue): the cold queue's
        top-score part 0.822 -> 0.827 median (mean + 0.012; better on 13 worlds, worse on 6, + 0.10 over the
        return-rate rule on 31 of 32 both), whole queue 0.778 -> 0.790."""
        import copy

        self._check()
        if self.mode_ != "cold_start":
            return self
        out = copy.copy(self)
        out.detector_ = PatternDetector(**(self.detector_params or {})).fit(X)
        out.typical_ = typical_values(X[list(FEATURES)])
        out.anomaly_mean_ = float(np.mean(out.detector_.score(X)))
        return out

    def for_day(self, X: AccountFrame) -> SerialReturnerModel:
        """The model to score ``X`` with: :meth:`on_population` when ``X`` is as of a later day than the one the
        model was fitted on (``as_of_``, set by training), else the model itself. ``flag-accounts`` and the served
        snapshots (``train``, ``refresh-features``) both score through this, so the served queue and the command's
        queue of the same day agree."""
        fitted, day = getattr(self, "as_of_", None), X.attrs.get("as_of")
        if fitted is None or day is None or pd.Timestamp(day) <= pd.Timestamp(fitted):
            return self
        return self.on_population(X)

    def _gate(self, D: pd.DataFrame, y: np.ndarray, B: pd.DataFrame | None = None) -> dict:
        """Whether the supervised model beats the cold start on held-out decisions.

        Cross-validated over the decisions: ``gate_repeats`` x ``n_folds`` stratified random folds; in each, the
        supervised model fitted on the other decisions and the detector's score rank the held-out ones, and the
        mean ROC-AUC over the folds decides (``use_supervised`` when the supervised one is higher). Each fold's
        AUC is computed within the fold: pooling out-of-fold scores of different models puts them on different
        scales, and contiguous blocks of a queue reviewed top-down hold one class each (the top block all
        confirmed), which made the choice one noisy comparison that the detector's single scale nearly always won.
        Without enough decisions of each class for the folds, no.
        """
        from sklearn.metrics import roc_auc_score
        from sklearn.model_selection import RepeatedStratifiedKFold

        n_min = int(min((y == 1).sum(), (y == 0).sum()))
        folds = min(self.n_folds, n_min)
        none = {"use_supervised": False, "heldout_decisions": 0, "auc_supervised": None, "auc_cold_start": None,
                "folds": 0, "folds_won": 0}
        if len(y) < 10 or folds < 2:
            return none
        cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=self.gate_repeats, random_state=self.random_state)
        anomaly = D[ANOMALY_FEATURE].to_numpy()
        sup, cold = [], []
        for rest, held in cv.split(np.zeros(len(y)), y.astype(int)):
            prior, booster = self._fit_raw(D.iloc[rest], y[rest], B)
            sup.append(float(roc_auc_score(y[held], self._raw(D.iloc[held], prior, booster))))
            cold.append(float(roc_auc_score(y[held], anomaly[held])))
        s_auc, c_auc = float(np.mean(sup)), float(np.mean(cold))
        return {"use_supervised": s_auc > c_auc, "heldout_decisions": int(len(y)), "auc_supervised": s_auc,
                "auc_cold_start": c_auc, "folds": len(sup), "folds_won": int(np.sum(np.array(sup) > np.array(cold)))}

    def _calibrate(self, D: pd.DataFrame, y: np.ndarray, B: pd.DataFrame | None) -> tuple[float, float] | None:
        """Platt (a, b) on out-of-fold raw scores from contiguous blocks of decisions; None if too few to fit."""
        oof = np.full(len(y), np.nan)
        for block in np.array_split(np.arange(len(y)), self.n_folds):
            rest = np.setdiff1d(np.arange(len(y)), block)
            if len(np.unique(y[rest])) < 2:
                continue
            prior, booster = self._fit_raw(D.iloc[rest], y[rest], B)
            oof[block] = self._raw(D.iloc[block], prior, booster)
        self.oof_ = oof
        ok = ~np.isnan(oof)
        if ok.sum() < 10 or len(np.unique(y[ok])) < 2:
            return None
        a, b = _platt(oof[ok], y[ok])
        # A slope at or below zero means held-out decisions do not follow the score (too few of one class):
        # calibrating on it would turn the ranking upside down, so the raw logit is kept.
        return (a, b) if a > 0 else None

    def _design(self, X: AccountFrame) -> pd.DataFrame:
        D = X[list(FEATURES)].astype(float).copy()
        tails = self.detector_.tails(X)
        for p in PATTERNS:
            D[f"tail_{p}"] = tails[p].to_numpy()
        D[ANOMALY_FEATURE] = combined_score(tails.to_numpy())
        if self.decision_links_ is not None:
            counts = self._link_counts(X)
            for j, col in enumerate(DECISION_LINK_COLUMNS):
                D[col] = np.log1p(counts[:, j])
        return D

    # -- scoring -----------------------------------------------------------------------------------------------------

    def _check(self) -> None:
        if not hasattr(self, "detector_"):
            raise RuntimeError("SerialReturnerModel is not fitted: call fit(features, labels) first")

    def use(self, method: str, X: AccountFrame | None = None, rule: tuple[float, float] = (5, 0.5),
            evidence: str = "") -> SerialReturnerModel:
        """Make ``method`` what :meth:`predict` ranks by: 'model' (this model), a baseline of :data:`BASELINES`
        or a blend 'blend:A+B' of those (mean percentile; ``X`` is the population that sets each part's scale)
        that won the evaluation on the user's data (``evidence`` says how; kept for the model card). 'if_counts'
        fits its IsolationForest on ``X``; 'rule' keeps its thresholds (returns in 90 days, 90-day rate)."""
        self._check()
        parts = blend_parts(method)
        if not parts or any(m not in ("model", *BASELINES) for m in parts):
            raise ValueError(f"unknown method {method!r}: choose model, one of {', '.join(BASELINES)} or "
                             f"'blend:A+B' of those")
        if "if_counts" in parts:
            if X is None:
                raise ValueError("method 'if_counts' needs the accounts to fit its IsolationForest on")
            self.forest_ = counts_forest(X)
        self.method_, self.rule_, self.method_evidence_ = "model", tuple(rule), evidence
        if len(parts) > 1:
            if X is None:
                raise ValueError(f"method {method!r} needs the accounts whose scores place each part on one scale")
            # Each part's scores on the day's population, sorted: a new account's part score becomes its share of
            # the population scored at or below it, whatever subset of accounts is scored later.
            self.blend_refs_ = {m: np.sort(self._method_score(m, X)) for m in parts}
        self.method_ = method
        return self

    def _method_score(self, method: str, X: AccountFrame) -> np.ndarray:
        if method == "model":
            if self.booster_ is None:
                return self.detector_.predict(X)
            raw = self._raw(self._design(X), self.prior_, self.booster_)
            a, b = self.platt_ if self.platt_ is not None else (1.0, 0.0)
            return 1.0 / (1.0 + np.exp(-(a * raw + b)))
        s = baseline_score(method, X, forest=getattr(self, "forest_", None), rule=self.rule_)
        return s / (s + 1.0) if method in ("most_returns", "rule") else s

    def predict(self, X: AccountFrame) -> np.ndarray:
        """Abuse score per account in [0, 1]: by the method chosen with :meth:`use` (default the model: a
        calibrated probability when supervised, the detector's score in cold start)."""
        self._check()
        method = getattr(self, "method_", "model")
        parts = blend_parts(method)
        if len(parts) == 1:
            return self._method_score(method, X)
        # A blend: the mean of each part's percentile in the population it was set up on (mid-rank for ties).
        pct = [(np.searchsorted(ref, s, "left") + np.searchsorted(ref, s, "right")) / (2.0 * max(len(ref), 1))
               for ref, s in ((self.blend_refs_[m], self._method_score(m, X)) for m in parts)]
        return np.mean(pct, axis=0)

    def contributions(self, X: AccountFrame) -> pd.DataFrame:
        """Each feature's push towards 'abuse' for each account (positive = more suspicious).

        Supervised, 'boost': LightGBM ``pred_contrib`` plus the prior's part, with the detector-score share spread
        over the detector's deviations (that is what the score is made of). 'logistic': each evidence column's
        weighted departure from the decided accounts' mean, spread over the deviations of that pattern's features
        (the combined score's over all deviations). Cold start: the detector's deviations.
        """
        self._check()
        dev = self.detector_.deviations(X)
        if self.booster_ is None:
            return dev
        D = self._design(X)
        share = dev.div(dev.sum(axis=1).replace(0, np.nan), axis=0).fillna(0.0)
        if self.prior_ is None:  # the logistic learner
            lr = self.booster_
            columns = self.logistic_columns_
            terms = lr.coef_[0] * (D[list(columns)].to_numpy() - lr.center_) / lr.scale_
            C = pd.DataFrame(0.0, index=X.index, columns=list(FEATURES))
            for j, col in enumerate(columns):
                # Decisions on linked accounts speak of a ring: their push goes to the ring's features.
                pat = (col[len("tail_"):] if col.startswith("tail_") else
                       "ring" if col in DECISION_LINK_COLUMNS else None)
                cols = [f for f in FEATURES if FEATURE_PATTERN.get(f) == pat] if pat else list(FEATURES)
                part = dev[cols]
                w = part.div(part.sum(axis=1).replace(0, np.nan), axis=0)
                # No deviation of that pattern's features: the term goes to the pattern's own features evenly.
                w = w.fillna(1.0 / max(len(cols), 1))
                C[cols] += w.mul(terms[:, j], axis=0).to_numpy()
            return C
        contrib = self.booster_.predict(D, pred_contrib=True)[:, :-1]  # drop the bias column
        anomaly = contrib[:, len(FEATURES):].sum(axis=1) + self.prior_[0] * (D[ANOMALY_FEATURE].to_numpy()
                                                                            - self.anomaly_mean_)
        C = pd.DataFrame(contrib[:, :len(FEATURES)], index=X.index, columns=list(FEATURES))
        C[share.columns] += share.mul(anomaly, axis=0).to_numpy()
        return C

    def _linked_confirmed(self, X: AccountFrame) -> np.ndarray:
        """Per account of ``X``: its linked accounts the reviewers confirmed, where the supervised score counts them
        as suspicious (a positive weight); else zeros."""
        if self.decision_links_ is None or self.booster_ is None or self.prior_ is not None:
            return np.zeros(len(X))
        weight = dict(zip(self.logistic_columns_, self.booster_.coef_[0], strict=True)).get("linked_confirmed", 0.0)
        if weight <= 0:
            return np.zeros(len(X))
        return self._link_counts(X)[:, DECISION_LINK_COLUMNS.index("linked_confirmed")]

    def explain(self, X: AccountFrame, top: int = 3) -> pd.DataFrame:
        """Top reasons (sentences with the account's numbers), the top reason alone, the likely pattern and its
        evidence (``pattern_evidence``: -log10 of the chance that an ordinary account of the platform shows as much).

        The likely pattern is the one whose detector is furthest out in the platform's tail; each reason names a
        pattern, its evidence and how rare that is for an ordinary account of this platform.
        """
        self._check()
        tails = self.detector_.tails(X)
        vals = tails.to_numpy()
        pats = np.array(tails.columns)
        best = pats[vals.argmax(axis=1)] if len(vals) else np.array([], dtype=object)
        patterns = np.where(vals.max(axis=1, initial=0.0) > 0, best, "serial")
        order = np.argsort(-vals, axis=1)[:, :top]
        rates = {p: {k: self.detector_.rates_[k] for k in self.detector_._tests()[p]} for p in PATTERNS}
        typ = self.typical_
        feats = X.to_numpy(dtype=float, na_value=np.nan)
        cols = list(X.columns)
        linked = self._linked_confirmed(X)
        reasons, tops = [], []
        for i in range(len(X)):
            row = dict(zip(cols, feats[i], strict=True))
            texts = [pattern_text(pats[j], row, vals[i, j], rates[pats[j]], typ) for j in order[i]
                     if vals[i, j] >= 1.0 or j == order[i][0]]
            if linked[i] > 0:
                n = int(linked[i])
                texts.insert(0, f"ring: shares an address, device or payment with {n} account{'s' if n > 1 else ''} "
                                "the reviewers confirmed as abusive")
            reasons.append("; ".join(texts))
            tops.append(texts[0] if texts else "")
        return pd.DataFrame({"reasons": reasons, "top_reason": tops, "likely_pattern": patterns,
                             "pattern_evidence": vals.max(axis=1, initial=0.0)}, index=X.index)


def _platt(raw: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt scaling: (a, b) of p = sigmoid(a * raw + b), fitted by a lightly regularised logistic regression."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=10.0).fit(np.asarray(raw, dtype=float).reshape(-1, 1), np.asarray(y).astype(int))
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])
