"""Measures of the ticket escalation model: ROC-AUC and calibration metrics, the reliability table and figure, the
slices the model card shows, the train/serve skew on the days after a snapshot (:func:`serving_path_check`) and
scoring latency. Used by :mod:`training.ticket_triage` (train, evaluate) and the report."""

from __future__ import annotations

import time
import timeit
from pathlib import Path

import numpy as np
import pandas as pd

from features.contract import Dataset
from features.settings import Settings
from features.tickets import (
    ORDER_CONTEXT,
    TicketFeatures,
    TicketTriageModel,
    feature_snapshots,
    load_serving_snapshots,
    order_context,
    series_us,
)


def reliability_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Equal-count bins of predicted probability: tickets, mean predicted and observed escalation rate."""
    order = np.argsort(p, kind="stable")
    groups = np.array_split(order, bins)
    rows = [{"bin": i + 1, "tickets": len(g), "p_min": float(p[g].min()), "p_max": float(p[g].max()),
             "mean_predicted": float(p[g].mean()), "observed_rate": float(y[g].mean())}
            for i, g in enumerate(groups) if len(g)]
    return pd.DataFrame(rows)


def metrics(y: np.ndarray, p: np.ndarray, prefix: str = "") -> dict[str, float]:
    """ROC-AUC, PR-AUC, Brier score, log loss and expected calibration error (10 equal-count bins)."""
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    rel = reliability_table(y, p)
    ece = float((rel["tickets"] * (rel["mean_predicted"] - rel["observed_rate"]).abs()).sum() / len(y))
    return {
        f"{prefix}roc_auc": float(roc_auc_score(y, p)),
        f"{prefix}pr_auc": float(average_precision_score(y, p)),
        f"{prefix}brier": float(brier_score_loss(y, p)),
        f"{prefix}log_loss": float(log_loss(y, np.clip(p, 1e-6, 1 - 1e-6))),
        f"{prefix}ece": ece,
        f"{prefix}mean_predicted": float(np.mean(p)),
    }


def card_slices(meta: pd.DataFrame, settings: Settings, ds: Dataset | None = None) -> dict[str, np.ndarray]:
    """The model card's slices of ``meta``'s tickets beyond :func:`slice_table`'s own: registered accounts, and (with
    ``ds``) tickets about merchants trading fewer than ``merchant_new_days`` days (first order in the data)."""
    from training.model_card import first_seen

    out = {"registered": meta["account_id"].notna().to_numpy()}
    if ds is not None:
        start = first_seen(ds.orders["ordered_at"], ds.orders["merchant_id"])
        since = meta["merchant_id"].astype("string").map(start)
        age = (pd.to_datetime(meta["created_at"], utc=True) - pd.to_datetime(since, utc=True)).dt.days
        known = age.notna().to_numpy()
        new = known & (age.fillna(1e9).to_numpy() < settings.merchant_new_days)
        out |= {"new_merchant": new, "established_merchant": known & ~new}
    return out


def slice_table(meta: pd.DataFrame, X: pd.DataFrame, y: np.ndarray, p: np.ndarray, b: np.ndarray,
                extra: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Metrics on the slices that matter: each case type, holiday windows (the calendar's ``in_event_window``),
    guests, phone contacts (and ``extra`` masks, e.g. :func:`card_slices`)."""
    from sklearn.metrics import roc_auc_score

    slices = {f"case_type={c}": (meta["case_type"] == c).to_numpy() for c in sorted(meta["case_type"].unique())}
    slices |= {
        "holiday_window": X["in_event_window"].to_numpy() >= 1,
        "outside_holiday_windows": X["in_event_window"].to_numpy() < 1,
        "guest": meta["account_id"].isna().to_numpy(),
        "channel=phone": (meta["channel"] == "phone").to_numpy(),
        "no_order": X["has_order"].to_numpy() < 1,
        **(extra or {}),
    }
    rows = []
    for name, m in slices.items():
        m = np.asarray(m, dtype=bool)
        both = m.sum() > 0 and 0 < y[m].sum() < m.sum()
        rows.append({"slice": name, "tickets": int(m.sum()), "escalation_rate": float(y[m].mean()) if m.any() else None,
                     "mean_predicted": float(p[m].mean()) if m.any() else None,
                     "roc_auc": float(roc_auc_score(y[m], p[m])) if both else None,
                     "baseline_roc_auc": float(roc_auc_score(y[m], b[m])) if both and np.ptp(b[m]) > 0 else None})
    return pd.DataFrame(rows)


def calibration_figure(rel_model: pd.DataFrame, rel_base: pd.DataFrame, p: np.ndarray, title: str):
    """Reliability diagram (model and case-type baseline) above a histogram of the model's probabilities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hx) = plt.subplots(2, 1, figsize=(6, 7), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    ax.plot(rel_model["mean_predicted"], rel_model["observed_rate"], marker="o", label="model (calibrated)")
    ax.plot(rel_base["mean_predicted"], rel_base["observed_rate"], marker="s", alpha=0.7, label="case-type baseline")
    ax.set_ylabel("observed escalation rate")
    ax.set_title(title)
    ax.legend(loc="upper left")
    hx.hist(p, bins=40, range=(0, 1), color="tab:blue", alpha=0.7)
    hx.set_xlabel("predicted escalation probability (later tickets)")
    hx.set_ylabel("tickets")
    fig.tight_layout()
    return fig


def serving_path_check(model: TicketTriageModel, ds: Dataset, feats: TicketFeatures, as_of: pd.Timestamp,
                       days: int = 7) -> dict[str, float]:
    """Train/serve skew, measured: tickets of the ``days`` after ``as_of`` scored the serving way (snapshots taken at
    ``as_of``, as the service would hold them) against the training way (history up to each ticket's creation).

    The difference is what a day-old snapshot costs: returns and deliveries between the snapshot and the ticket are
    invisible to the service. The load and the account's contacts are counted live, as the service counts them
    (:mod:`features.live_counts`: seeded from the snapshot's recent tickets, then every ticket of the period, the
    unlabelled ones too, in the order they were created).
    """
    from sklearn.metrics import roc_auc_score

    from features.live_counts import counter_from_snapshot, fill_frame

    meta = feats.meta
    period = ((meta["created_at"] >= as_of) & (meta["created_at"] < as_of + pd.Timedelta(days=days))).to_numpy()
    idx = np.flatnonzero(period & meta["escalated"].notna().to_numpy())
    if len(idx) < 50:
        return {}
    snaps = feature_snapshots(ds, as_of)
    seen = ds.tickets.set_index("ticket_id").loc[meta["ticket_id"].iloc[np.flatnonzero(period)].to_numpy()]
    seen = fill_frame(seen.reset_index().drop(columns=["escalated", "resolved_at"]),
                      counter_from_snapshot(snaps["recent"], as_of))
    request = seen.set_index("ticket_id").loc[meta["ticket_id"].iloc[idx].to_numpy()].reset_index()
    served = model.score_batch(request, snaps["accounts"], snaps["merchants"], snaps["orders"], reasons=False)
    # The same when the ticket carries what the ticket system knows live: the customer's contacts in 30 days and
    # the order's context (delivery, the return just requested), which a snapshot taken earlier cannot hold.
    ctx = order_context(ds, request["order_id"], series_us(request["created_at"]))
    live = request.assign(prior_tickets_30d=feats.X["prior_tickets_30d"].iloc[idx].to_numpy(),
                          **{c: ctx[c].to_numpy() for c in ORDER_CONTEXT})
    fresh = model.score_batch(live, snaps["accounts"], snaps["merchants"], snaps["orders"], reasons=False)
    offline = model.predict(feats.X.iloc[idx])
    y = meta["escalated"].iloc[idx].astype(bool).to_numpy()
    p = served["escalation_probability"].to_numpy()
    both = 0 < y.sum() < len(y)
    pf = fresh["escalation_probability"].to_numpy()
    return {
        "serving_check_tickets": len(idx),
        "serving_check_live_fields_mean_abs_diff": float(np.abs(pf - offline).mean()),
        "serving_check_live_fields_roc_auc": float(roc_auc_score(y, pf)) if both else float("nan"),
        "serving_check_mean_abs_diff": float(np.abs(p - offline).mean()),
        "serving_check_share_diff_over_0.05": float((np.abs(p - offline) > 0.05).mean()),
        "serving_check_roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "serving_check_offline_roc_auc": float(roc_auc_score(y, offline)) if both else float("nan"),
        "serving_check_order_context_missing": float(served["order_context_missing"].mean()),
        "serving_check_unknown_account": float(served["unknown_account"].mean()),
    }


def measure_latency(model: TicketTriageModel, ds: Dataset, snapshots_dir: Path, n_calls: int = 10_000,
                    n_batch: int = 10_000) -> dict[str, float]:
    """score_one latency (timeit over ``n_calls`` calls on varied tickets) and score_batch time for ``n_batch``."""
    snaps = load_serving_snapshots(snapshots_dir)
    tickets = ds.tickets.drop(columns=["escalated", "resolved_at"])
    tickets = tickets.sample(n_batch, replace=len(tickets) < n_batch, random_state=0).reset_index(drop=True)
    records = tickets.astype(object).where(tickets.notna(), None).to_dict("records")
    for r in records:
        r["created_at"] = r["created_at"].isoformat()  # as a JSON request would carry it
    calls = [(r, snaps.accounts.get(r["account_id"]), snaps.merchants.get(r["merchant_id"]),
              snaps.orders.get(r["order_id"])) for r in records]
    it = iter(calls * (n_calls // len(calls) + 1))

    def one() -> None:
        model.score_one(*next(it))

    one_s = timeit.timeit(one, number=n_calls) / n_calls
    frames = snaps.frames()
    model.score_batch(tickets.head(100), frames["accounts"], frames["merchants"], frames["orders"])  # warm-up
    t0 = time.perf_counter()
    model.score_batch(tickets, frames["accounts"], frames["merchants"], frames["orders"])
    batch_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.score_batch(tickets, frames["accounts"], frames["merchants"], frames["orders"], reasons=False)
    batch_nr_s = time.perf_counter() - t0
    return {"score_one_us": one_s * 1e6, "score_batch_10k_s": batch_s, "score_batch_10k_no_reasons_s": batch_nr_s}
