"""Serial-return accounts: train (evaluate, choose what the queue ranks by, fit the final model, register, write the
snapshots) and the model card; the one import path for the serial-returner training pieces.

The pieces, each with one reason to change (their public names, and the commands the model catalogue names, are
re-exported here, so ``training.serial_returners:flag_accounts_cmd`` and ``sr.evaluate_on_truth`` keep working):

- :mod:`training.serial_evaluation`: fitting helpers, metrics, evaluation on truth, the feedback simulation, the
  forward check and the choice among the model, the baselines and their blends; plots and MLflow logging.
- :mod:`training.serial_cli`: the commands.
- here: :func:`train`, :func:`model_card`, :func:`gate_evidence`, :func:`write_snapshots`.

Every MLflow call goes through :mod:`training.registry`.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
import pandas as pd

from features import generations
from features.accounts import (  # noqa: F401  (re-exported: the names this module has always offered)
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
    queue_settings,
    review_queue,
    score_snapshot,
)
from features.contract import Dataset
from features.settings import Settings
from training.data import data_validated
from training.serial_cli import (  # noqa: F401  (re-exported: the model catalogue names the commands)
    _choose_model,
    _data_dir,
    _known_accounts,
    _market,
    evaluate_cmd,
    flag_accounts_cmd,
    import_cmd,
    list_cmd,
    record_cmd,
    review_group,
)
from training.serial_evaluation import (  # noqa: F401  (re-exported)
    CANDIDATES,
    CHECK_CUTOFFS,
    CHECK_WINDOW_DAYS,
    FEEDBACK_CHECKPOINTS,
    FEEDBACK_FEW_PER_CLASS,
    FORWARD_HORIZON_DAYS,
    METHODS,
    MODEL_NAME,
    PR_AUC_MARGIN_TARGET,
    Echo,
    Evaluation,
    _candidate_score,
    _flat_metrics,
    _forest_score,
    _future_returns,
    _load,
    _log_evaluation,
    _percentiles,
    _rule,
    _truth,
    account_slices,
    baseline_scores,
    choose_by_forward_checks,
    choose_method,
    default_split,
    evaluate_forward,
    evaluate_on_truth,
    evaluation_figures,
    excluded_accounts,
    features_as_of,
    feedback_line,
    feedback_simulation,
    feedback_status,
    fit_model,
    load_labels,
    ranking_metrics,
    rule_score,
    slice_table,
    target_lines,
)

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
    model = model.for_day(X)  # refresh-features with a champion fitted earlier: scored as flag-accounts scores it
    scores = model.predict(X)
    snap = score_snapshot(X, model, scores=scores)
    queue = review_queue(X, model, capacity or settings.review_capacity, exclude=exclude, scores=scores,
                         **queue_settings(settings))
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


def learner_text(model: SerialReturnerModel) -> str:
    """What the model's own score is, in words (the card says it; MLflow logs ``final_learner``)."""
    if model.mode_ != "supervised":
        return "the pattern detector's evidence added up (-log10 of the joint chance for an ordinary account)"
    g = model.gate_
    gate = (f"; chosen over the cold start on held-out decisions, ROC-AUC {g['auc_supervised']:.3f} against "
            f"{g['auc_cold_start']:.3f}" if g.get("auc_supervised") is not None else "")
    if model.learner == "logistic":
        w = ", ".join(f"{c.removeprefix('tail_')} {v:+.2f}" for c, v in
                      zip(model.logistic_columns_, model.booster_.coef_[0], strict=True))
        return (f"a logistic regression on the detector's evidence per pattern (standardised weights; no evidence "
                f"counted against an account: {w}){gate}")
    return f"a LightGBM on every feature boosted from a logistic prior on the detector's score{gate}"


def model_card(ds: Dataset, data_dir: Path, settings: Settings, final: SerialReturnerModel, capacity: int,
               ev: Evaluation | None = None, fw: dict | None = None, validated: bool = True) -> dict:
    """The model card's content (see :mod:`training.model_card`): figures from the evaluation as logged to MLflow."""
    from training.model_card import HOLIDAY_WINDOW_TEXT, data_summary, new_card

    card = new_card(
        "Serial returners (return abuse)",
        "An abuse score per account (higher = more abnormal returning) with reasons and the likely pattern "
        f"({', '.join(PATTERNS)}), and the review queue sized to the risk team's capacity ({capacity}). "
        f"Mode of this version: {final.mode_} ({final.n_labels_} review decisions learnt from): "
        f"{learner_text(final)}. The queue ranks "
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
                          client=getattr(engine, "client", None), links=ds.account_links)
        final.use(method, X_end, rule=_rule(settings), evidence=evidence)
        summary["queue_method"] = method
        registry.log_params({"final_mode": final.mode_, "final_labels": final.n_labels_, "as_of": str(last.date()),
                             "final_learner": final.learner if final.mode_ == "supervised"
                             else "cold_start",
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
