"""Merchant complaint risk, reported: the figures against the targets, the lift chart, the MLflow logging of an
:class:`~training.merchant_evaluation.Evaluation`, and the model card's content."""

from __future__ import annotations

import math
from pathlib import Path

import click
import numpy as np
import pandas as pd

from features.merchants import (
    FEATURES,
    sort_ranking,
)
from features.settings import Settings
from training.merchant_evaluation import (
    BASELINE_TEXT,
    BASELINES,
    METHODS,
    MODELS,
    TARGET_NDCG_GAIN,
    Evaluation,
    lift_table,
    model_params,
)


def lift_figure(lift: pd.DataFrame):
    """Lift chart: actual complaint rate of each score decile over the average, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m, part in lift.groupby("method", sort=False):
        ax.plot(part["decile"], part["lift"], marker="o", label=m, linestyle="-" if "baseline" not in m else "--")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("score decile (10 = riskiest)")
    ax.set_ylabel("complaint rate / average")
    ax.set_title("Merchant complaint risk: lift on held-out later snapshots")
    ax.set_xticks(range(1, 11))
    ax.legend()
    fig.tight_layout()
    return fig


def _log_evaluation(bt: Evaluation, settings: Settings) -> None:
    """Params, metrics (every method), per-snapshot table and the lift chart into the active MLflow run."""
    import mlflow

    from training import registry

    registry.log_params({**model_params(settings), "chosen": bt.chosen, "ranking_uses": bt.served,
                         "horizon_days": settings.merchant_horizon_days,
                         "snapshot_every_days": settings.merchant_snapshot_every_days,
                         "train_snapshots": len(bt.train_dates), "test_snapshots": len(bt.test_dates),
                         "first_test_as_of": str(bt.test_dates[0].date()), "features": ",".join(FEATURES)})
    registry.log_metrics({f"validation_ndcg_at_50_{k}": v for k, v in (bt.validation or {}).items()})
    registry.log_text(bt.choice_text() + "\n" + bt.ranking_text(), "choice.txt")
    metrics = {f"{m}_{k}": v for m, row in bt.summary.iterrows() for k, v in row.items()}
    metrics |= {k: bt.summary.loc[bt.served, k] for k in bt.summary.columns}  # what ranks, unprefixed
    metrics |= {"ndcg_at_50_gain_over_best_baseline": bt.gain("ndcg_at_50"),
                "precision_at_decile_gain_over_best_baseline": bt.gain("precision_at_decile")}
    registry.log_metrics(metrics)
    mlflow.set_tags({"ranking_uses": bt.served, "ranking_uses_reason": bt.ranking_text()})
    registry.log_table(bt.per_snapshot, "tables/backtest_per_snapshot.csv")
    registry.log_table(bt.summary.reset_index(names="method"), "tables/backtest_summary.csv")
    lift = lift_table(bt.scored, list(METHODS), settings.merchant_min_label_orders)
    registry.log_table(lift, "tables/lift.csv")
    registry.log_figure(lift_figure(lift), "plots/lift.png")


def target_lines(bt: Evaluation) -> list[str]:
    """The figures against the targets, one line each."""
    base = bt.best_baseline
    gain = bt.gain("ndcg_at_50")
    p_model = bt.summary.loc[bt.chosen, "precision_at_decile"]
    p_base = bt.summary.loc[list(BASELINES), "precision_at_decile"].max()
    return [
        f"model: {bt.chosen} (the log-linear model ranks; the others are reported beside it: on the test "
        f"snapshots glm {bt.summary.loc['glm', 'ndcg_at_50']:.4f}, blend {bt.summary.loc['blend', 'ndcg_at_50']:.4f}, poisson "
        f"{bt.summary.loc['poisson', 'ndcg_at_50']:.4f}, lambdarank {bt.summary.loc['lambdarank', 'ndcg_at_50']:.4f})",
        f"target NDCG@50 >= best baseline + {TARGET_NDCG_GAIN:.2f}: {bt.summary.loc[bt.chosen, 'ndcg_at_50']:.4f} vs "
        f"{base} {bt.summary.loc[base, 'ndcg_at_50']:.4f} (gain {gain:+.4f}) -> "
        f"{'MET' if gain >= TARGET_NDCG_GAIN else 'NOT MET'}",
        f"target precision@decile above the best baseline: {p_model:.4f} vs {p_base:.4f} -> "
        f"{'MET' if p_model > p_base else 'NOT MET'}",
        bt.ranking_text(),
    ]


def report(bt: Evaluation, echo=click.echo) -> list[str]:
    """Print the metric table and the targets; return the target lines."""
    echo(bt.summary.round(4).to_string())
    lines = target_lines(bt)
    for line in lines:
        echo(line)
    return lines


# --------------------------------------------------------------------------------------------------------------------
# Model card


def decile_slices(scored: pd.DataFrame, methods: list[str], masks: dict[str, pd.Series],
                  min_orders: int) -> pd.DataFrame:
    """Top-decile recall and precision of each method within slices of the test merchant-snapshots.

    Per snapshot, among merchants with ``min_orders`` orders in the label window: the true top decile is the 10%
    with the highest label rate, a method's top decile the 10% it scores highest (ties by merchant_id). A slice's
    recall is the share of its truly top merchants the method put in its top decile; precision the share of its
    merchants in the method's top decile that are truly top.
    """
    ok = scored[scored["label_orders"] >= min_orders]
    true_top = pd.Series(False, index=ok.index)
    picked = {m: pd.Series(False, index=ok.index) for m in methods}
    for _, snap in ok.groupby("as_of"):
        k = max(1, math.ceil(0.1 * len(snap)))
        kth = np.sort(snap["label_rate"].to_numpy())[::-1][k - 1]
        true_top.loc[snap.index] = snap["label_rate"] >= kth
        for m in methods:
            top_ids = set(sort_ranking(snap, m)["merchant_id"].iloc[:k])
            picked[m].loc[snap.index[snap["merchant_id"].isin(top_ids).to_numpy()]] = True
    rows = []
    for name, mask in masks.items():
        sel = mask.reindex(ok.index, fill_value=False).to_numpy(dtype=bool)
        row = {"slice": name, "merchant_snapshots": int(sel.sum()), "truly_top_decile": int(true_top[sel].sum()),
               "complaints_per_order": float(ok.loc[sel, "label_complaints"].sum()
                                             / max(ok.loc[sel, "label_orders"].sum(), 1)) if sel.any() else None}
        for m in methods:
            hit = picked[m][sel] & true_top[sel]
            row[f"recall_{m}"] = float(hit.sum() / true_top[sel].sum()) if true_top[sel].any() else None
            row[f"precision_{m}"] = float(hit.sum() / picked[m][sel].sum()) if picked[m][sel].any() else None
        rows.append(row)
    return pd.DataFrame(rows)


def model_card(bt: Evaluation, ds, data_dir: Path, settings: Settings, validated: bool = True) -> dict:
    """The model card's content (see :mod:`training.model_card`): figures from the backtest as logged to MLflow."""
    from features.calendar import holiday_windows, in_windows
    from training.model_card import HOLIDAY_WINDOW_TEXT, data_summary, new_card

    s, horizon, min_orders = bt.summary, settings.merchant_horizon_days, settings.merchant_min_label_orders
    base = bt.best_baseline
    card = new_card(
        "Merchant complaint risk",
        f"Each merchant's expected complaints per order over the next {horizon} days, as a ranking: score, rank, "
        "expected complaints, the top reasons and flags (new_merchant, no_orders_in_window).",
        "The marketplace's merchant-quality team deciding which merchants to review or warn first; ticket triage "
        "reads each merchant's risk percentile.",
        data_summary(ds, data_dir, validated, ["orders", "returns", "tickets"]),
        f"As-of snapshots every {settings.merchant_snapshot_every_days} days; label = complaints per order in the "
        f"{horizon} days after each as-of. The latest {len(bt.test_dates)} matured snapshots "
        f"({bt.test_dates[0].date()} to {bt.test_dates[-1].date()}) are the test set; the models trained only on the "
        f"{len(bt.train_dates)} snapshots ({bt.train_dates[0].date()} to {bt.train_dates[-1].date()}) whose label "
        f"window closed before the first test as-of. Metrics per test snapshot among merchants with at least "
        f"{min_orders} orders in the label window, averaged over snapshots. Four models were "
        "compared: a log-linear Poisson model (GLM) of complaint counts on the merchant's shrunk log rates, a "
        "LightGBM Poisson model, a LambdaRank model, and the blend of the last two (each score standardised "
        f"on the training rows and added). The one registered ({bt.chosen}) is the log-linear model whatever the "
        "others score (they are reported beside it), refitted on every matured snapshot. Baselines: last period's "
        "raw complaint rate and complaint count; the better one ranks instead of the model when it scores higher "
        "on the held-out snapshots (NDCG@50 over the training period's latest snapshots, scored by models fitted "
        "on its earlier ones, and the test snapshots together). " + bt.choice_text() + " "
        + bt.ranking_text(),
    )
    labels = {"ndcg_at_20": "NDCG@20", "ndcg_at_50": "NDCG@50", "precision_at_decile": "precision at top decile",
              "spearman": "Spearman"}
    card["metrics"] = pd.DataFrame([{
        "metric": f"{label} (`{key}`)", f"model ({bt.chosen})": s.loc[bt.chosen, key],
        **{m: s.loc[m, key] for m in MODELS if m != bt.chosen},
        "baseline_rate": s.loc["baseline_rate", key], "baseline_count": s.loc["baseline_count", key]}
        for key, label in labels.items()])
    gain = bt.gain("ndcg_at_50")
    card["metrics_note"] = (f"{bt.ranking_text()} "
                            f"NDCG@50 gain of the model over the better baseline ({base}): {gain:+.4f} (target "
                            f"+{TARGET_NDCG_GAIN:.2f}: {'met' if gain >= TARGET_NDCG_GAIN else 'NOT met'}). Each "
                            f"method's figures are logged as `<method>_<metric>`; those of what ranks "
                            f"({bt.served}) also unprefixed.")
    scored = bt.scored
    new = scored["tenure_days"] < settings.merchant_new_days
    by_merchant = decile_slices(scored, [bt.chosen, base], {"all merchants": pd.Series(True, index=scored.index),
                                                            "new_merchant": new, "established_merchant": ~new},
                                min_orders)
    hw = holiday_windows(settings.market, bt.test_dates[0].tz_localize(None),
                         bt.test_dates[-1].tz_localize(None) + pd.Timedelta(days=horizon), settings)
    per = bt.per_snapshot
    holiday_rows = []
    for d in sorted(per["as_of"].unique()):
        days = pd.date_range(pd.Timestamp(d).tz_localize(None) + pd.Timedelta(days=1), periods=horizon, freq="D")
        inside = in_windows(days, hw)
        holiday_rows.append({"as_of": d, "share": float(inside.mean())})
    hol = pd.DataFrame(holiday_rows)
    snap_rows = []
    heavy = hol["share"] > hol["share"].median()  # the snapshots more exposed to holidays than the typical one
    for flag, name in ((True, "holiday-heavy label window"), (False, "other label windows")):
        group = hol[heavy == flag]
        days = set(group["as_of"])
        part = per[per["as_of"].isin(days)]
        snap_rows.append({"slice": name, "test snapshots": len(days),
                          "holiday days share": (f"{group['share'].min():.0%}-{group['share'].max():.0%}"
                                                 if len(group) else "—"),
                          **{f"ndcg_at_50 {m}": (float(part.loc[part["method"] == m, "ndcg_at_50"].mean())
                                                 if len(part) else None) for m in (bt.chosen, base)}})
    card["slices"] = [
        (f"Top-decile recall / precision of the model ({bt.chosen}) and the better baseline ({base}) within each "
         f"slice of the test merchant-snapshots ({min_orders}+ label-window orders); new_merchant: trading fewer "
         f"than {settings.merchant_new_days} days at the as-of date.", by_merchant),
        (f"Test snapshots by the share of their {horizon}-day label window's days in {HOLIDAY_WINDOW_TEXT}: "
         "holiday-heavy = above the median share of the test snapshots. NDCG@50 per snapshot, averaged.",
         pd.DataFrame(snap_rows)),
    ]
    guest_share = float(ds.orders["account_id"].isna().mean()) if len(ds.orders) else 0.0
    card["not_applicable"] = {"guest accounts": f"merchants are ranked, not accounts; the {guest_share:.1%} of order "
                                                "lines checked out as guests count toward their merchant like any "
                                                "other."}
    ok = scored["label_orders"] >= min_orders
    nm = by_merchant.set_index("slice").loc["new_merchant"]
    limits = []
    if (Path(data_dir) / "truth").is_dir():
        limits.append("Trained and measured on a synthetic world: the figures show the method works on data shaped "
                      "like the contract, not how it will rank the platform's real merchants.")
    limits.append(f"Only merchants with {min_orders}+ orders in the label window are measured: "
                  f"{int((~ok).sum()):,} of {len(scored):,} test merchant-snapshots are ranked but unmeasured.")
    if nm["truly_top_decile"] < 10:
        limits.append(f"New merchants are barely measurable: {int(nm['merchant_snapshots'])} measured "
                      f"merchant-snapshots, {int(nm['truly_top_decile'])} in the true top decile; their rank rests "
                      "on shrunk category rates more than on their own history.")
    if min(r["test snapshots"] for r in snap_rows) == 0:
        limits.append("The test snapshots do not cover both holiday-heavy and other label windows, so the ranking's "
                      "quality around holidays is not separated from the rest.")
    if bt.use != "model":
        limits.append(f"The model lost to a baseline on the held-out snapshots, so the served ranking is the "
                      f"{BASELINE_TEXT[bt.use]} alone; reasons and expected complaints still come from the model.")
    if gain < TARGET_NDCG_GAIN:
        limits.append(f"The NDCG@50 target (+{TARGET_NDCG_GAIN:.2f} over the better baseline) is not met: "
                      f"{gain:+.4f}.")
    limits.append("The label counts complaints as finally known (escalations resolved later included); a ranking "
                  "read on the as-of day cannot know which open tickets will escalate.")
    card["limits"] = limits
    return card
