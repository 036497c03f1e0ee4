"""The fitted escalation model, :class:`TicketTriageModel` (scikit-learn contract, native LightGBM, calibrated),
and the reasons a person reads, one rule table (:data:`REASON_RULES`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.contract import CASE_TYPES, CHANNELS, RETURN_REASONS
from features.ticket_features import (
    _IDX,
    ACCOUNT_FEATURES,
    CATEGORICAL,
    FEATURES,
    MERCHANT_FEATURES,
    NEW_ACCOUNT,
    ORDER_CONTEXT,
    CalendarTable,
    Row,
    _column,
    _present,
    assemble_batch,
    assemble_one,
)
from features.ticket_text import TextScorer, out_of_fold_text_scores

Arr = np.ndarray

# --------------------------------------------------------------------------------------------------------------------
# Reasons a person reads, from feature values (pred_contrib costs ~1.2 ms per row: too slow for the hot path)

@dataclass(frozen=True)
class ReasonRule:
    """One reason a person reads: its code, when it fires (in words), the test on the features, the sentence.

    ``fires(model, v)``: ``v`` a row (list, :data:`FEATURES` order) gives a bool, a matrix (2-D array) a bool array;
    it reads the lifts and top-decile thresholds the model learned (:meth:`TicketTriageModel._fit_reasons`).
    ``text(model, v)``: the sentence for a row where it fired, with the ticket's own values.
    """

    code: str
    description: str
    fires: Callable[[Any, Any], Any]
    text: Callable[[Any, Any], str]


def _th(model: Any, name: str, floor: float = -math.inf) -> float:
    return max(model.reason_thresholds_[name], floor)


def _late_text(m: Any, v: Any) -> str:
    late = v[_IDX["lateness_days"]]
    if v[_IDX["delivered_by_creation"]] >= 1.0:
        return f"the parcel arrived {late:.1f} days after the promised date"
    return f"the parcel is still not delivered, {late:.1f} days after the promised date"


def _repeat_text(m: Any, v: Any) -> str:
    n = int(v[_IDX["prior_tickets_30d"]])
    return f"the customer's {n + 1}{_ordinal(n + 1)} contact in 30 days"


BUSY_RATIO = 1.5  # the "busy day" reason: 24-hour load at least this many times the platform's typical day

# The one table of reasons, in the order of the model's learned rule lifts (reason_lift_by_rule_, reason_order_).
# Append new rules at the end: a fitted model's reason_order_ indexes this table.
REASON_RULES: tuple[ReasonRule, ...] = (
    ReasonRule("case_type",
               "the case type escalates at least 1.5x as often as tickets overall (learned on training data)",
               lambda m, v: _lift_of(m.case_lift_, _g(v, "case_type")) >= 1.5,
               lambda m, v: (f"'{CASE_TYPES[int(v[_IDX['case_type']])]}' cases escalate "
                             f"{m.case_lift_[int(v[_IDX['case_type']])]:.1f}x as often as the average ticket")),
    ReasonRule("channel", "the contact channel escalates at least 1.3x as often as tickets overall",
               lambda m, v: _lift_of(m.channel_lift_, _g(v, "channel")) >= 1.3,
               lambda m, v: (f"contacts by {CHANNELS[int(v[_IDX['channel']])]} escalate "
                             f"{m.channel_lift_[int(v[_IDX['channel']])]:.1f}x as often as average")),
    ReasonRule("late_delivery",
               "the parcel was 2+ days late when the ticket was opened (delivered late or still on its way)",
               lambda m, v: _g(v, "lateness_days") >= 2.0, _late_text),
    ReasonRule("return_reason", "the order's return reason escalates at least 1.3x as often as tickets overall",
               lambda m, v: _lift_of(m.reason_lift_, _g(v, "return_reason")) >= 1.3,
               lambda m, v: f"return requested as '{RETURN_REASONS[int(v[_IDX['return_reason']])]}'"),
    ReasonRule("repeat_contact", "the customer opened another ticket in the last 30 days",
               lambda m, v: _g(v, "prior_tickets_30d") >= 1.0, _repeat_text),
    ReasonRule("message_wording",
               "the first message's wording escalates: its score, learned from the platform's own tickets, is in the "
               "top 10% of tickets",
               lambda m, v: _g(v, "text_score") >= _th(m, "text_score"),
               lambda m, v: ("the first message is worded like the tickets that escalate on this platform (top 10% "
                             "by its learned text score)")),
    ReasonRule("high_amount", "the amount is in the top 10% of tickets",
               lambda m, v: _g(v, "amount") >= _th(m, "amount"),
               lambda m, v: f"high amount {v[_IDX['amount']]:.2f} (top 10% of tickets)"),
    ReasonRule("merchant_late", "the merchant's 90-day late-delivery rate is in the top 10% of tickets",
               lambda m, v: _g(v, "mer_late_delivery_rate") >= _th(m, "mer_late_delivery_rate"),
               lambda m, v: (f"the merchant delivered {v[_IDX['mer_late_delivery_rate']]:.0%} of orders late in the "
                             "last 90 days")),
    ReasonRule("merchant_complaints", "the merchant's 90-day complaint rate is in the top 10% of tickets",
               lambda m, v: _g(v, "mer_complaint_rate_90d") >= _th(m, "mer_complaint_rate_90d"),
               lambda m, v: (f"the merchant drew {v[_IDX['mer_complaint_rate_90d']]:.1%} complaints per order in "
                             "the last 90 days (top 10%)")),
    ReasonRule("account_returns",
               "the account's 30-day returns or refunds without return are in the top 10% of tickets",
               lambda m, v: ((_g(v, "returns_30d") >= _th(m, "returns_30d", 1.0))
                             | (_g(v, "refund_without_return_90d") >= _th(m, "refund_without_return_90d", 1.0))),
               lambda m, v: (f"the account returned {int(v[_IDX['returns_30d']])} items in 30 days, "
                             f"{int(v[_IDX['refund_without_return_90d']])} refunds without return in 90 days")),
    ReasonRule("peak_period", "the ticket was opened in a holiday/shopping-event peak window",
               lambda m, v: _g(v, "in_event_window") >= 1.0,
               lambda m, v: "opened during a holiday / shopping-event peak, when queues are long"),
    ReasonRule("busy_day",
               f"the platform's tickets in the 24 hours before are at least {BUSY_RATIO}x its typical day",
               lambda m, v: _g(v, "load_ratio_24h") >= BUSY_RATIO,
               lambda m, v: (f"opened on a busy day: {v[_IDX['tickets_last_24h']]:.0f} tickets in the last 24 hours, "
                             f"{v[_IDX['load_ratio_24h']]:.1f}x the platform's typical day")),
)
REASON_CODES = tuple(r.code for r in REASON_RULES)


def _g(v: Any, name: str) -> Any:
    """Feature ``name`` of a row vector (list) or a feature matrix (2-D array: a column)."""
    i = _IDX[name]
    return v[:, i] if isinstance(v, np.ndarray) and v.ndim == 2 else v[i]


def _lift_of(table: Arr, code: Any) -> Any:
    """Lift of a categorical code from a lookup table (codes may be NaN: lift 0)."""
    if isinstance(code, np.ndarray):
        ok = ~np.isnan(code)
        out = np.zeros(len(code))
        out[ok] = table[code[ok].astype(np.int64)]
        return out
    return 0.0 if math.isnan(code) else float(table[int(code)])


class TicketTriageModel:
    """Escalation probability of a new ticket: LightGBM binary classifier plus centred isotonic (or Platt) calibration.

    scikit-learn contract: ``__init__`` stores parameters, ``fit(X, y)`` learns (``X`` = :data:`FEATURES` columns in
    time order: the last ``calibration_fraction`` of the rows is the later slice used for early stopping and
    calibration), ``predict(X)`` returns calibrated probabilities. With ``refit_all`` (default) a second booster is
    trained on every row, the later slice included, for the number of rounds early stopping chose on it, and the score
    is the mean of the two boosters' margins (the calibrator, fitted on the first booster's held-out margins, maps
    it). Serving uses :meth:`score_one` (one ticket, plain
    Python, native booster, well under 1 ms) and :meth:`score_batch` (vectorised); both give the same numbers.
    """

    def __init__(self, num_boost_round: int = 1000, learning_rate: float = 0.05, num_leaves: int = 31,
                 min_child_samples: int = 50, feature_fraction: float = 0.8, bagging_fraction: float = 0.8,
                 lambda_l2: float = 1.0, early_stopping_rounds: int = 50, calibration: str = "isotonic",
                 calibration_fraction: float = 0.2, num_threads: int = 2, seed: int = 0, market: str = "CN",
                 summer_sale: str = "07-15", summer_sale_days: int = 3, text_C: float = 1.0, refit_all: bool = True):
        self.num_boost_round = num_boost_round
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.lambda_l2 = lambda_l2
        self.early_stopping_rounds = early_stopping_rounds
        self.calibration = calibration
        self.calibration_fraction = calibration_fraction
        self.num_threads = num_threads
        self.seed = seed
        self.market = market
        self.summer_sale = summer_sale
        self.summer_sale_days = summer_sale_days
        self.text_C = text_C
        self.refit_all = refit_all

    # ---- fitting -----------------------------------------------------------------------------------------------

    def _matrix(self, X: pd.DataFrame | Arr) -> Arr:
        if isinstance(X, pd.DataFrame):
            missing = [f for f in FEATURES if f not in X.columns]
            if missing:
                raise ValueError(f"ticket feature frame lacks columns {missing[:5]}: build it with "
                                 "features.tickets.build_training_features")
            Xm = X[list(FEATURES)].to_numpy(dtype=np.float64, copy=True)
            if "text" in X.columns and getattr(self, "text_scorer_", None) is not None:
                Xm[:, _IDX["text_score"]] = self.text_scorer_.score(X["text"])
            return Xm
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(FEATURES):
            raise ValueError(f"expected a (n, {len(FEATURES)}) feature matrix, got shape {X.shape}")
        return X

    def fit(self, X: pd.DataFrame | Arr, y, client=None) -> TicketTriageModel:
        """Fit booster and calibrator on ``X`` (time-ordered feature rows) and ``y`` (1 = escalated).

        ``client``: a ``distributed.Client``; the booster is then trained with ``lightgbm.dask`` across its workers
        (see ``features.engine.train_booster``) and kept as a local booster, so the fitted model is the same kind of
        object either way.
        """
        import lightgbm as lgb

        from features.engine import train_booster

        if self.calibration not in ("isotonic", "platt"):
            raise ValueError(f"calibration must be 'isotonic' or 'platt', got {self.calibration!r}")
        self.text_scorer_ = None
        Xm = self._matrix(X)
        y = np.asarray(y, dtype=np.float64)
        if len(y) != len(Xm) or np.isnan(y).any() or not np.isin(y, (0.0, 1.0)).all():
            raise ValueError("y must be 0/1 labels, one per row of X, with no missing values "
                             "(drop unlabelled tickets first)")
        if isinstance(X, pd.DataFrame) and "text" in X.columns:
            # The booster learns from out-of-fold text scores (what the score is worth on texts its scorer did not
            # see); the scorer kept for prediction is fitted on every row.
            Xm[:, _IDX["text_score"]] = out_of_fold_text_scores(X["text"], y, C=self.text_C)
            self.text_scorer_ = TextScorer(self.text_C).fit(X["text"], y)
        n_cal = int(round(len(y) * self.calibration_fraction))
        if n_cal < 50 or len(y) - n_cal < 100 or y[:-n_cal].min() == y[:-n_cal].max():
            raise ValueError(f"too few labelled tickets to fit and calibrate ({len(y)} rows, {int(y.sum())} "
                             "escalated): need a few hundred with both outcomes")
        fit_X, fit_y, cal_X, cal_y = Xm[:-n_cal], y[:-n_cal], Xm[-n_cal:], y[-n_cal:]
        params = self.booster_params()
        cats = [_IDX[c] for c in CATEGORICAL]
        booster, self.best_iteration_ = train_booster(
            params, fit_X, fit_y, self.num_boost_round, client=client, categorical_feature=cats,
            feature_name=list(FEATURES), eval_set=(cal_X, cal_y), early_stopping_rounds=self.early_stopping_rounds)
        # Keep only the trees early stopping chose: predict() then needs no num_iteration argument.
        self.booster_ = lgb.Booster(model_str=booster.model_to_string(num_iteration=self.best_iteration_))
        margin = self.booster_.predict(cal_X, raw_score=True)
        self.booster_all_ = None
        if self.refit_all:
            # The latest tickets (the later slice) are the nearest to the ones the model will score: a second booster
            # learns from them too, for the rounds the time-ordered validation chose; the margins are averaged.
            full, _ = train_booster(params, Xm, y, self.best_iteration_, client=client, categorical_feature=cats,
                                    feature_name=list(FEATURES))
            self.booster_all_ = lgb.Booster(model_str=full.model_to_string())
        self._fit_calibrator(margin, cal_y)
        self._fit_reasons(fit_X, fit_y)
        self.calendar_ = CalendarTable(self.market, self.summer_sale, self.summer_sale_days)
        self.n_features_in_ = len(FEATURES)
        self.feature_names_in_ = np.array(FEATURES, dtype=object)
        self.base_rate_ = float(fit_y.mean())
        self.n_train_, self.n_calibration_ = len(fit_y), n_cal
        return self

    def booster_params(self) -> dict:
        """The LightGBM parameters both boosters are trained with (also read by benchmarks/diag_triage_drivers.py)."""
        return {
            "objective": "binary", "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples, "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction, "bagging_freq": 1, "lambda_l2": self.lambda_l2,
            "cat_smooth": 10, "num_threads": self.num_threads, "seed": self.seed, "verbose": -1,
            "deterministic": True,
        }

    def _fit_calibrator(self, margin: Arr, y: Arr) -> None:
        """Map raw margins to probabilities on the later slice; stored as plain arrays / two floats."""
        if self.calibration == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(margin, y)
            # Centred isotonic regression (Oron & Flournoy 2017): each block of equal fitted value becomes one point
            # at its margins' mean, joined by straight lines, so the map is strictly increasing between the first
            # and the last block's centre: no plateau where tickets the booster ranks apart get one probability.
            fitted = iso.predict(margin)
            values, block = np.unique(fitted, return_inverse=True)
            centres = np.bincount(block, weights=margin) / np.bincount(block)
            self.cal_x_ = np.asarray(centres, dtype=np.float64)
            self.cal_y_ = np.asarray(values, dtype=np.float64)
            self.platt_ = None
        else:
            from sklearn.linear_model import LogisticRegression

            lr = LogisticRegression(C=1e6).fit(margin.reshape(-1, 1), y)
            self.platt_ = (float(lr.coef_[0, 0]), float(lr.intercept_[0]))
            self.cal_x_ = self.cal_y_ = None

    def _fit_reasons(self, X: Arr, y: Arr) -> None:
        """Lifts and top-decile thresholds that drive the human-readable reasons (learned on the fit slice)."""
        base = max(float(y.mean()), 1e-9)

        def lift_table(col: str, n: int) -> Arr:
            code = X[:, _IDX[col]]
            out = np.zeros(n)
            for k in range(n):
                sel = code == k
                if sel.sum() >= 30:  # too few tickets say nothing
                    out[k] = float(y[sel].mean()) / base
            return out

        self.case_lift_ = lift_table("case_type", len(CASE_TYPES))
        self.channel_lift_ = lift_table("channel", len(CHANNELS))
        self.reason_lift_ = lift_table("return_reason", len(RETURN_REASONS))
        q = {c: float(np.nanquantile(X[:, _IDX[c]], 0.9)) if np.isfinite(X[:, _IDX[c]]).any() else np.inf
             for c in ("amount", "mer_late_delivery_rate", "mer_complaint_rate_90d", "returns_30d",
                       "refund_without_return_90d", "text_score")}
        self.reason_thresholds_ = q
        fired = self._reason_flags(X)
        self.reason_lift_by_rule_ = np.array(
            [float(y[f].mean()) / base if f.sum() >= 30 else 1.0 for f in fired.T], dtype=np.float64)
        self.reason_order_ = [int(i) for i in np.argsort(-self.reason_lift_by_rule_, kind="stable")]

    def _check(self) -> None:
        if not hasattr(self, "booster_"):
            raise RuntimeError("TicketTriageModel is not fitted: call fit(X, y) or load the registered champion")

    # ---- batch prediction ---------------------------------------------------------------------------------------

    def _calibrate(self, margin: Arr) -> Arr:
        if self.platt_ is not None:
            a, b = self.platt_
            return 1.0 / (1.0 + np.exp(-(a * margin + b)))
        return np.interp(margin, self.cal_x_, self.cal_y_)

    def _margins(self, X: Arr, num_threads: int) -> Arr:
        """The booster's raw margins of a feature matrix, averaged with the all-rows booster's when there is one
        (models fitted before ``refit_all`` have none)."""
        m = self.booster_.predict(X, raw_score=True, num_threads=num_threads)
        full = getattr(self, "booster_all_", None)
        if full is not None:
            m = 0.5 * (m + full.predict(X, raw_score=True, num_threads=num_threads))
        return m

    def predict_margin(self, X: pd.DataFrame | Arr) -> Arr:
        """Raw booster margins (log-odds before calibration)."""
        self._check()
        return self._margins(self._matrix(X), self.num_threads)

    def predict(self, X: pd.DataFrame | Arr) -> Arr:
        """Calibrated escalation probability of each feature row."""
        return self._calibrate(self.predict_margin(X))

    def predict_proba(self, X: pd.DataFrame | Arr) -> Arr:
        """scikit-learn style (n, 2) array: [P(not escalated), P(escalated)]."""
        p = self.predict(X)
        return np.column_stack([1.0 - p, p])

    # ---- reasons -------------------------------------------------------------------------------------------------

    def _reason_flags(self, v: Any) -> Any:
        """Which reason rules fire, in :data:`REASON_RULES` order, for a row (list) or a matrix (bool (n, R))."""
        flags = [rule.fires(self, v) for rule in REASON_RULES]
        if isinstance(v, np.ndarray) and v.ndim == 2:
            return np.column_stack(flags)
        return [bool(f) for f in flags]

    def _reasons_row(self, v: Any, fired: Any, max_reasons: int) -> tuple[list[str], list[str]]:
        """The strongest fired rules (by their escalation lift on training data), as codes and sentences."""
        idx = [i for i in self.reason_order_ if fired[i]][:max_reasons]
        return [REASON_RULES[i].code for i in idx], [REASON_RULES[i].text(self, v) for i in idx]

    # ---- serving -------------------------------------------------------------------------------------------------

    def score_one(self, ticket: Row, account: Row | None = None, merchant: Row | None = None,
                  order: Row | None = None, max_reasons: int = 3) -> dict[str, Any]:
        """Score one ticket (hot path: plain Python, native booster with one thread, no pandas).

        ``ticket``: contract ticket fields (created_at required; case_type, channel, amount, text, account_id,
        merchant_id, order_id), optionally order context (:data:`ORDER_CONTEXT`) and fresher account counts
        (e.g. ``prior_tickets_30d``). ``account`` / ``merchant`` / ``order``: snapshot rows, None when the ID is
        not in the snapshot. Returns escalation_probability, reasons, reason_codes and which defaults were used:
        guest (no account_id), unknown_account, unknown_merchant, order_context_missing, defaults_used.
        """
        self._check()
        guest = ticket.get("account_id") in (None, "")
        unknown_account = not guest and account is None
        unknown_merchant = ticket.get("merchant_id") not in (None, "") and merchant is None
        has_order = ticket.get("order_id") not in (None, "")
        order_missing = has_order and order is None and ticket.get("ordered_at") is None
        defaults = []
        if unknown_account:
            account = NEW_ACCOUNT  # an account without a snapshot row had no activity: a new account
            defaults.append("account history: none on record (new account)")
        elif account is not None and not any(_present(account.get(f)) for f in ACCOUNT_FEATURES):
            # A row from another model's snapshot only: our snapshot lists every account active in the last 365
            # days, so this one had none -> zero history, as training computes it.
            account = {**account, **NEW_ACCOUNT}
            defaults.append("account history: no activity in the last 365 days (zero history)")
        if unknown_merchant:
            defaults.append("merchant signals: unknown merchant (no recent orders)")
        if order_missing:
            defaults.append("order context: order not in the snapshot (age, lateness, return reason unknown)")
        v = assemble_one(ticket, order, account, merchant, self.calendar_)
        if getattr(self, "text_scorer_", None) is not None:
            v[_IDX["text_score"]] = self.text_scorer_.score_one(ticket.get("text"))
        margin = float(self._margins(np.array([v], dtype=np.float64), 1)[0])
        if self.platt_ is not None:
            a, b = self.platt_
            p = 1.0 / (1.0 + math.exp(-(a * margin + b)))
        else:
            p = float(np.interp(margin, self.cal_x_, self.cal_y_))
        codes, texts = self._reasons_row(v, self._reason_flags(v), max_reasons)
        return {"ticket_id": ticket.get("ticket_id"), "escalation_probability": p, "reasons": texts,
                "reason_codes": codes, "guest": guest, "unknown_account": unknown_account,
                "unknown_merchant": unknown_merchant, "order_context_missing": order_missing,
                "defaults_used": defaults}

    def features_batch(self, tickets: pd.DataFrame, accounts: pd.DataFrame | None = None,
                       merchants: pd.DataFrame | None = None, orders: pd.DataFrame | None = None
                       ) -> tuple[Arr, pd.DataFrame]:
        """Feature matrix of many tickets from snapshot frames (indexed by ID, or with an ID column), and flags."""
        self._check()
        t = tickets.reset_index(drop=True)
        n = len(t)

        def ids(col: str) -> pd.Series:
            s = t[col].astype("string") if col in t else pd.Series(pd.NA, index=t.index, dtype="string")
            return s.mask(s == "")

        def lookup(frame: pd.DataFrame | None, key: str, cols: Sequence[str], keys: pd.Series
                   ) -> tuple[pd.DataFrame, Arr]:
            if frame is None or frame.empty:
                return pd.DataFrame(index=t.index, columns=list(cols), dtype="object"), np.zeros(n, bool)
            f = frame.set_index(frame[key].astype("string")) if key in frame.columns else frame
            f = f[~f.index.duplicated(keep="last")]
            pos = pd.Index(f.index.astype("string")).get_indexer(keys)
            found = pos >= 0
            safe, hit = np.maximum(pos, 0), pd.Series(found, index=t.index)
            out = pd.DataFrame(index=t.index)
            for c in cols:  # positional take keeps each column's dtype (no per-value conversion)
                if c in f.columns and len(f):
                    out[c] = f[c].iloc[safe].set_axis(t.index).where(hit)
                else:
                    out[c] = np.nan
            return out, found

        acc_id, mer_id, ord_id = ids("account_id"), ids("merchant_id"), ids("order_id")
        acc, acc_found = lookup(accounts, "account_id", ACCOUNT_FEATURES, acc_id)
        mer, mer_found = lookup(merchants, "merchant_id", MERCHANT_FEATURES, mer_id)
        ctx, ord_found = lookup(orders, "order_id", ORDER_CONTEXT, ord_id)
        guest = acc_id.isna().to_numpy()
        unknown_account = ~guest & ~acc_found
        unknown_merchant = mer_id.notna().to_numpy() & ~mer_found
        hist = np.column_stack([pd.to_numeric(acc[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
                                for c in ACCOUNT_FEATURES])
        inactive = acc_found & np.isnan(hist).all(axis=1)  # row only in another snapshot: zero history (score_one)
        for j, c in enumerate(ACCOUNT_FEATURES):
            vals = np.where(unknown_account | inactive, NEW_ACCOUNT[c], hist[:, j])
            if c in t:  # the ticket's own (fresher) value wins, as in score_one
                own = pd.to_numeric(t[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
                vals = np.where(np.isnan(own), vals, own)
            acc[c] = vals
        for c in ORDER_CONTEXT:
            if c in t:  # the ticket's own order fields win, as in score_one
                own = t[c].astype(object)
                ctx[c] = own.where(own.notna(), ctx[c])
        order_given = t["ordered_at"].notna().to_numpy() if "ordered_at" in t else np.zeros(n, bool)
        order_missing = ord_id.notna().to_numpy() & ~ord_found & ~order_given
        X = assemble_batch(t, ctx, pd.concat([acc, mer], axis=1), self.calendar_)
        if getattr(self, "text_scorer_", None) is not None:
            X[:, _IDX["text_score"]] = self.text_scorer_.score(_column(t, "text"))
        flags = pd.DataFrame({"guest": guest, "unknown_account": unknown_account,
                              "unknown_merchant": unknown_merchant, "order_context_missing": order_missing})
        return X, flags

    def score_batch(self, tickets: pd.DataFrame, accounts: pd.DataFrame | None = None,
                    merchants: pd.DataFrame | None = None, orders: pd.DataFrame | None = None,
                    max_reasons: int = 3, reasons: bool = True) -> pd.DataFrame:
        """Score many tickets at once (vectorised twin of :meth:`score_one`; same numbers to 1e-9).

        ``accounts`` / ``merchants`` / ``orders``: snapshot frames indexed by ID or with the ID column. Returns one
        row per ticket, in input order: ticket_id, escalation_probability, reasons, reason_codes (lists; empty when
        ``reasons=False``), guest, unknown_account, unknown_merchant, order_context_missing.
        """
        X, flags = self.features_batch(tickets, accounts, merchants, orders)
        margin = self._margins(X, self.num_threads) if len(X) else np.zeros(0)
        out = pd.DataFrame({"ticket_id": tickets["ticket_id"].to_numpy() if "ticket_id" in tickets else None,
                            "escalation_probability": self._calibrate(margin)})
        codes: list[list[str]] = [[] for _ in range(len(X))]
        texts: list[list[str]] = [[] for _ in range(len(X))]
        if reasons and len(X):
            fired = self._reason_flags(X)
            for i in range(len(X)):
                codes[i], texts[i] = self._reasons_row(X[i], fired[i], max_reasons)
        out["reasons"] = texts
        out["reason_codes"] = codes
        return pd.concat([out, flags], axis=1)


def _ordinal(n: int) -> str:
    return "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
