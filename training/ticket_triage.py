"""Ticket triage: train, evaluate against the case-type baseline on later tickets, log to MLflow, register.

``aftersales train ticket-triage --data DIR`` (:func:`train`) and ``aftersales evaluate ticket-triage --data DIR``
(:data:`evaluate_cmd`). The split is by time: the model learns from earlier tickets whose outcome was known at the
cut-off (resolved before it) and is measured on tickets created after it. Tickets whose ``escalated`` is null are
unlabelled: left out of training and metrics, and counted. The baseline, in the same run, is the escalation rate of
the ticket's case type learned on the training tickets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pandas as pd

from features import generations
from features.contract import Dataset
from features.settings import Settings, get_settings
from features.tickets import (
    FEATURES,
    SNAPSHOT_FILES,
    CalendarTable,
    TicketFeatures,
    TicketTriageModel,
    as_served,
    build_training_features,
    data_end,
    feature_snapshots,
)
from training.data import MAX_REJECTED_SHARE, data_validated, load_for_command
from training.model_card import HOLIDAY_WINDOW_TEXT as HOLIDAY_TEXT
from training.ticket_metrics import (  # noqa: F401 — re-exported
    calibration_figure,
    card_slices,
    measure_latency,
    metrics,
    reliability_table,
    serving_path_check,
    slice_table,
)

MODEL_NAME = "ticket_triage"
PRIMARY_METRIC = "roc_auc"
TARGET_LIFT = 0.05  # ROC-AUC above the case-type baseline on the default world
TEST_FRACTION = 0.2
# The service scores from snapshots older than the ticket: this share of the training rows is seen as the service
# would see it, from a snapshot taken a log-uniform 1 hour to MAX_SNAPSHOT_AGE_DAYS before the ticket.
AS_SERVED_SHARE = 0.5
MAX_SNAPSHOT_AGE_DAYS = 120.0


@dataclass
class TimeSplit:
    """Row positions (into the time-ordered features) of the training and test tickets, and what was left out."""

    train: np.ndarray
    test: np.ndarray
    cutoff: pd.Timestamp
    n_unlabelled: int
    n_label_after_cutoff: int  # labelled earlier tickets whose outcome was only known after the cut-off


def time_split(meta: pd.DataFrame, test_fraction: float = TEST_FRACTION) -> TimeSplit:
    """Train on tickets created (and resolved) before the cut-off, test on tickets created at or after it.

    The cut-off is the (1 - test_fraction) quantile of labelled tickets' creation times. A training ticket must have
    its outcome known by the cut-off (resolved before it, or no resolution time given): at that moment nobody knew
    how later-resolved cases would end.
    """
    if not 0.0 < test_fraction < 0.9:
        raise ValueError(f"test_fraction must be in (0, 0.9), got {test_fraction}")
    labelled = meta["escalated"].notna().to_numpy()
    if labelled.sum() < 200:
        raise ValueError(f"only {int(labelled.sum())} tickets have a known outcome (escalated not null): "
                         "need at least 200 to train and evaluate; use a longer period of data")
    created = meta["created_at"]
    cutoff = created[labelled].quantile(1.0 - test_fraction)
    known_by_cut = (meta["resolved_at"].isna() | (meta["resolved_at"] < cutoff)).to_numpy()
    before = (created < cutoff).to_numpy()
    train = np.flatnonzero(labelled & before & known_by_cut)
    test = np.flatnonzero(labelled & ~before)
    return TimeSplit(train, test, cutoff, int((~labelled).sum()), int((labelled & before & ~known_by_cut).sum()))


class CaseTypeBaseline:
    """The baseline: each ticket gets the escalation rate of its case type on the training tickets."""

    def fit(self, case_type: pd.Series, y: np.ndarray) -> CaseTypeBaseline:
        """Learn the rate per case type (and the overall rate for types not seen in training)."""
        self.rates_ = pd.Series(np.asarray(y, float), index=case_type.astype("object").to_numpy()).groupby(
            level=0).mean()
        self.overall_ = float(np.mean(y))
        return self

    def predict(self, case_type: pd.Series) -> np.ndarray:
        """The rate of each ticket's case type."""
        return case_type.astype("object").map(self.rates_).fillna(self.overall_).to_numpy(dtype=float)


def fit_frame(feats: TicketFeatures, rows: np.ndarray, settings: Settings, ds: Dataset | None = None, engine=None,
              seed: int = 0) -> pd.DataFrame:
    """The training rows ``rows`` of ``feats.X``, a share (:data:`AS_SERVED_SHARE`) of them as the service sees them
    (:func:`features.tickets.as_served`: snapshots a log-uniform 1 hour to :data:`MAX_SNAPSHOT_AGE_DAYS` old), so the
    model learns to score tickets whose order is newer than the snapshot and whose history has moved on since.
    Without ``ds`` the rows are returned as they are."""
    X = feats.X.iloc[rows].copy()
    if ds is None or AS_SERVED_SHARE <= 0 or len(rows) == 0:
        return X
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(rows), int(AS_SERVED_SHARE * len(rows)), replace=False))
    lag = np.exp(rng.uniform(np.log(1 / 24), np.log(MAX_SNAPSHOT_AGE_DAYS), len(pick)))
    cal = CalendarTable(settings.market, settings.summer_sale, settings.summer_sale_days)
    X.iloc[pick] = as_served(ds, feats, np.asarray(rows)[pick], lag, cal, engine).to_numpy()
    return X


def model_params(settings: Settings, calibration: str = "isotonic") -> dict:
    """Hyperparameters of the escalation model (one thread: the machine's 2 cores are shared). Smaller, more
    regularised trees than the class defaults: on 12 random-scenario worlds (seeds 11-22) served ROC-AUC lift was
    the same or better on every world, and small worlds (a few thousand tickets) overfit less. ``refit_all``: the
    score averages the early-stopped booster with one refitted on every row for the same rounds (served ROC-AUC
    higher on 25 of 31 tuning worlds, lower on 3; README "Ticket triage: where the margin is bound")."""
    return {"calibration": calibration, "num_threads": 1, "num_leaves": 15, "min_child_samples": 100,
            "lambda_l2": 10.0, "refit_all": True, "market": settings.market,
            "summer_sale": settings.summer_sale, "summer_sale_days": settings.summer_sale_days}


@dataclass
class Evaluation:
    """Everything the time-split evaluation produced."""

    model: TicketTriageModel
    split: TimeSplit
    metrics: dict[str, float]
    reliability: pd.DataFrame
    reliability_baseline: pd.DataFrame
    slices: pd.DataFrame
    figure: object
    fit_seconds: float


def evaluate(feats: TicketFeatures, settings: Settings, test_fraction: float = TEST_FRACTION,
             calibration: str = "isotonic", echo=click.echo, ds: Dataset | None = None, client=None,
             engine=None) -> Evaluation:
    """Fit on earlier tickets, score later ones; model and case-type baseline side by side.

    With ``ds``, also the serving-path check (:func:`serving_path_check`) on the week after the cut-off. With
    ``client`` (a ``distributed.Client``) the booster trains with ``lightgbm.dask``.
    """
    split = time_split(feats.meta, test_fraction)
    X, meta = feats.X, feats.meta
    y = meta["escalated"].astype("boolean").fillna(False).to_numpy(dtype=float)
    tr, te = split.train, split.test
    echo(f"split at {split.cutoff:%Y-%m-%d %H:%M}: {len(tr):,} training tickets, {len(te):,} later test tickets; "
         f"{split.n_unlabelled:,} unlabelled left out; {split.n_label_after_cutoff:,} earlier tickets left out "
         "(outcome known only after the cut-off)")
    t0 = time.perf_counter()
    model = TicketTriageModel(**model_params(settings, calibration)).fit(fit_frame(feats, tr, settings, ds, engine),
                                                                          y[tr], client=client)
    fit_s = time.perf_counter() - t0
    echo(f"fitted in {fit_s:.1f}s ({model.best_iteration_} trees, {calibration} calibration on the last "
         f"{model.n_calibration_:,} training tickets)")
    p = model.predict(X.iloc[te])
    base = CaseTypeBaseline().fit(meta["case_type"].iloc[tr], y[tr]).predict(meta["case_type"].iloc[te])
    yt = y[te]
    raw = 1.0 / (1.0 + np.exp(-model.predict_margin(X.iloc[te])))  # the booster's own probability
    m = {**metrics(yt, p), **metrics(yt, base, "baseline_"), **metrics(yt, raw, "uncalibrated_")}
    m["roc_auc_lift"] = m["roc_auc"] - m["baseline_roc_auc"]
    m |= {"train_tickets": len(tr), "test_tickets": len(te), "unlabelled_tickets": split.n_unlabelled,
          "label_after_cutoff_tickets": split.n_label_after_cutoff, "test_escalation_rate": float(yt.mean()),
          "trees": model.best_iteration_, "fit_seconds": fit_s}
    if ds is not None:
        m |= serving_path_check(model, ds, feats, split.cutoff)
    rel, rel_b = reliability_table(yt, p), reliability_table(yt, base)
    fig = calibration_figure(rel, rel_b, p, f"Ticket escalation, tickets from {split.cutoff:%Y-%m-%d} "
                                            f"(n={len(te):,})")
    slices = slice_table(meta.iloc[te], X.iloc[te], yt, p, base, card_slices(meta.iloc[te], settings, ds))
    return Evaluation(model, split, m, rel, rel_b, slices, fig, fit_s)


def target_lines(m: dict[str, float]) -> list[str]:
    """The figures a person reads, with the target verdict."""
    lift = m["roc_auc_lift"]
    verdict = "met" if lift >= TARGET_LIFT else "NOT met"
    lines = [
        f"ROC-AUC {m['roc_auc']:.4f} vs case-type baseline {m['baseline_roc_auc']:.4f}: {lift:+.4f} "
        f"(target >= +{TARGET_LIFT:.2f}: {verdict})",
        f"PR-AUC  {m['pr_auc']:.4f} vs baseline {m['baseline_pr_auc']:.4f} (test escalation rate "
        f"{m['test_escalation_rate']:.3f})",
        f"Brier   {m['brier']:.4f} vs baseline {m['baseline_brier']:.4f} (uncalibrated booster "
        f"{m['uncalibrated_brier']:.4f}); ECE {m['ece']:.4f}; mean predicted {m['mean_predicted']:.3f}",
    ]
    if "serving_check_tickets" in m:
        lines.append(
            f"serving path (snapshots at the cut-off, next {int(m['serving_check_tickets']):,} tickets in 7 days): "
            f"ROC-AUC {m['serving_check_roc_auc']:.4f} vs {m['serving_check_offline_roc_auc']:.4f} offline, "
            f"mean |p_served - p_offline| {m['serving_check_mean_abs_diff']:.4f}, order context missing "
            f"{m['serving_check_order_context_missing']:.1%}; tickets carrying live contact count and order "
            f"context: ROC-AUC {m['serving_check_live_fields_roc_auc']:.4f}, mean |diff| "
            f"{m['serving_check_live_fields_mean_abs_diff']:.4f}")
    return lines


def _load(data_dir: Path, out_dir: Path, echo=click.echo) -> tuple[Dataset, bool]:
    """Load and validate the data folder, write its rejects beside our outputs, say how many rows were rejected."""
    ds = load_for_command(data_dir, out_dir, echo)
    if not ds.has("tickets"):
        raise click.ClickException(f"{data_dir}: no tickets table (tickets.parquet / tickets.csv): the escalation "
                                   "model learns from past tickets; add the platform's ticket export")
    return ds, data_validated(ds, echo)


def _features(ds: Dataset, settings: Settings, echo=click.echo, engine=None) -> TicketFeatures:
    cal = CalendarTable(settings.market, settings.summer_sale, settings.summer_sale_days)
    return build_training_features(ds, cal, progress=echo, engine=engine)


def _log_evaluation(ev: Evaluation, settings: Settings, extra_params: dict | None = None) -> None:
    from training import registry

    registry.log_params({**model_params(settings, ev.model.calibration), "cutoff": str(ev.split.cutoff), "n_features": len(FEATURES), **(extra_params or {})})
    registry.log_metrics(ev.metrics)
    registry.log_figure(ev.figure, "plots/calibration.png")
    registry.log_table(ev.reliability, "tables/reliability.csv")
    registry.log_table(ev.reliability_baseline, "tables/reliability_baseline.csv")
    registry.log_table(ev.slices, "tables/slices.csv")
    registry.log_text("\n".join(target_lines(ev.metrics)), "targets.txt")


def model_card(ev: Evaluation, ds: Dataset, data_dir: Path, validated: bool, n_refit: int) -> dict:
    """The model card's content (see :mod:`training.model_card`): every figure from ``ev`` (as logged to MLflow)."""
    from training.model_card import data_summary, new_card

    m, split = ev.metrics, ev.split
    rep = ds.reports["tickets"]
    card = new_card(
        "Ticket triage (escalation risk)",
        "The probability that a new after-sales ticket escalates (becomes a formal complaint or needs platform "
        "intervention), calibrated, with a priority P1-P4 and an auto-approve / risk-review recommendation from "
        "the business thresholds in the settings.",
        "Customer-service leads and the ticket router deciding which cases a senior agent sees first.",
        data_summary(ds, data_dir, validated, ["tickets", "orders", "returns", "account_links"],
                     note=f"{rep.rejected:,} of {rep.rows_in:,} ticket rows rejected "
                          f"({rep.rejected / max(rep.rows_in, 1):.1%}; above {MAX_REJECTED_SHARE:.0%} the version "
                          "is registered but not promoted)"),
        f"Time split at {split.cutoff:%Y-%m-%d %H:%M} UTC: fitted on {m['train_tickets']:,} tickets created and "
        f"resolved before it, scored on the {m['test_tickets']:,} labelled tickets created after it (the latest "
        f"{TEST_FRACTION:.0%}). {m['unlabelled_tickets']:,} tickets without a known outcome and "
        f"{m['label_after_cutoff_tickets']:,} earlier tickets whose outcome was only known after the cut-off are "
        f"left out. The registered version is the same model refitted on all {n_refit:,} labelled tickets; the "
        "figures below are those of the time-split fit. Baseline: the escalation rate of the ticket's case type "
        "on the training tickets.",
    )
    rows = [("ROC-AUC", "roc_auc"), ("PR-AUC", "pr_auc"), ("Brier score", "brier"), ("log loss", "log_loss"),
            ("expected calibration error", "ece"), ("mean predicted", "mean_predicted")]
    card["metrics"] = pd.DataFrame([{
        "metric": f"{label} (`{key}`)", "model": m[key], "case-type baseline": m[f"baseline_{key}"],
        "uncalibrated booster": m[f"uncalibrated_{key}"]} for label, key in rows])
    card["metrics_note"] = (f"Test escalation rate {m['test_escalation_rate']:.4f}. ROC-AUC lift over the baseline "
                            f"{m['roc_auc_lift']:+.4f} (target +{TARGET_LIFT:.2f}: "
                            f"{'met' if m['roc_auc_lift'] >= TARGET_LIFT else 'NOT met'}).")
    card["slices"] = ev.slices
    card["slices_note"] = (f"Later (test) tickets only. holiday_window: created in one of the {HOLIDAY_TEXT}; new_merchant: "
                           "about a merchant whose first order in the data is fewer than merchant_new_days days "
                           "before the ticket; guest: no account_id (registered: with one). roc_auc is empty where "
                           "a slice has only one outcome.")
    sl = ev.slices.set_index("slice")
    limits = []
    if (Path(data_dir) / "truth").is_dir():
        limits.append("Trained and measured on a synthetic world: the figures show the method works on data shaped "
                      "like the contract, not how it will do on the platform's real tickets.")
    for name in ("guest", "new_merchant", "holiday_window"):
        if name not in sl.index:
            continue
        n, auc = int(sl.loc[name, "tickets"]), sl.loc[name, "roc_auc"]
        if pd.notna(auc) and n >= 30 and auc < m["roc_auc"] - 0.02:
            limits.append(f"Weaker on {name} tickets: ROC-AUC {auc:.4f} vs {m['roc_auc']:.4f} overall "
                          f"({n:,} test tickets).")
        elif pd.isna(auc) or n < 30:
            rate = sl.loc[name, "escalation_rate"]
            limits.append(f"Not measurable on {name} tickets: {n:,} in the test period"
                          + (f", escalation rate {rate:.4f}" if pd.notna(rate) else "")
                          + "; their ranking is unproven.")
    limits.append("Guests have no account history: their tickets are scored from the ticket, order and merchant "
                  "alone.")
    if "serving_check_mean_abs_diff" in m:
        limits.append(f"The service scores from snapshots taken at training time: on the week after the cut-off, "
                      f"served probabilities differ from the training path by {m['serving_check_mean_abs_diff']:.4f} "
                      f"on average (ROC-AUC {m['serving_check_roc_auc']:.4f} served vs "
                      f"{m['serving_check_offline_roc_auc']:.4f}); stale snapshots cost more as they age "
                      "(`aftersales refresh-features` renews them without retraining).")
    limits.append("The text score is learned from this platform's own first messages (hashed words, word pairs and "
                  "character 4-grams, weighted by what escalated); wording it has never seen adds nothing.")
    limits.append(f"Half the training tickets are seen as the service sees them, from snapshots 1 hour to "
                  f"{MAX_SNAPSHOT_AGE_DAYS:.0f} days old (orders newer than the snapshot without context): the model "
                  "expects snapshots refreshed within that age.")
    limits.append(f"{m['unlabelled_tickets']:,} open tickets had no outcome and were not learnt from; if long-open "
                  "cases differ from quickly closed ones, the model has not seen them.")
    card["limits"] = limits
    return card


def write_snapshots(ds: Dataset, settings: Settings, out: Path | None = None) -> dict[str, Path]:
    """The account, merchant and order context serving needs, as of the end of the data (same code as training).

    ``out``: the folder to write (training: the registered version's ``snapshots/ticket_triage/v<N>``; default the
    flat ``settings.snapshots_dir``)."""
    snaps = feature_snapshots(ds, data_end(ds))
    out = Path(out or settings.snapshots_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, frame in snaps.items():
        paths[name] = out / SNAPSHOT_FILES[name]
        tmp = out / f".{SNAPSHOT_FILES[name]}.tmp"
        frame.to_parquet(tmp, index=False)
        tmp.replace(paths[name])
    return paths


def gate_evidence(ev: Evaluation, feats: TicketFeatures, ds: Dataset, data_dir: Path):
    """The promotion gate's evidence: the held-out later tickets of ``ev``'s split, scored by ROC-AUC
    (:mod:`training.evidence`); the champion is scored on those tickets the same way."""
    from sklearn.metrics import roc_auc_score

    from training.evidence import Evidence, Unscorable, check_seen

    te = ev.split.test
    X_te = feats.X.iloc[te]
    y = feats.meta["escalated"].iloc[te].astype("boolean").fillna(False).to_numpy(dtype=float)
    times = feats.meta["created_at"].iloc[te]
    p_challenger = ev.model.predict(X_te)

    def rows(mask: np.ndarray) -> str:
        t = times[mask]
        return f"{int(mask.sum()):,} labelled tickets created {t.min():%Y-%m-%d} to {t.max():%Y-%m-%d}"

    def compare(champion, seen_until):
        mask = check_seen(seen_until, times, 200, "tickets").to_numpy()
        if y[mask].min() == y[mask].max():
            raise Unscorable("the held-out tickets it has not seen have one outcome only")
        return (float(roc_auc_score(y[mask], p_challenger[mask])),
                float(roc_auc_score(y[mask], champion.predict(X_te.iloc[mask]))), rows(mask))

    return Evidence(PRIMARY_METRIC, True, float(ev.metrics["roc_auc"]),
                    {"case_type_rate": float(ev.metrics["baseline_roc_auc"])}, rows(np.ones(len(te), bool)),
                    compare, str(Path(data_dir).resolve()), data_end(ds), ev.split.cutoff)


def train(data_dir: Path, settings: Settings, engine=None) -> dict:
    """Evaluate on later tickets, refit on every labelled ticket, register (gate on ROC-AUC), write snapshots.

    ``engine``: a ``features.engine`` engine; with Dask the ticket features are built per entity partition and
    both fits train with ``lightgbm.dask`` (the registered model holds a local booster either way).
    """
    client = getattr(engine, "client", None)
    from training import registry

    t_start = time.perf_counter()
    out_dir = settings.models_dir / MODEL_NAME
    ds, validated = _load(Path(data_dir), out_dir)
    feats = _features(ds, settings, engine=engine)
    ev = evaluate(feats, settings, ds=ds, client=client, engine=engine)
    for line in target_lines(ev.metrics):
        click.echo(line)
    click.echo(ev.reliability.round(4).to_string(index=False))
    # The registered model: same settings refitted on every ticket whose outcome is known (the evaluated fit is
    # five months staler); the gate compares the time-split ROC-AUC measured above.
    labelled = np.flatnonzero(feats.meta["escalated"].notna().to_numpy())
    y = feats.meta["escalated"].astype("boolean").fillna(False).to_numpy(dtype=float)
    t0 = time.perf_counter()
    final = TicketTriageModel(**model_params(settings)).fit(fit_frame(feats, labelled, settings, ds, engine),
                                                            y[labelled], client=client)
    refit_s = time.perf_counter() - t0
    click.echo(f"refitted on all {len(labelled):,} labelled tickets in {refit_s:.1f}s ({final.best_iteration_} trees)")
    with registry.start_run(MODEL_NAME, run_name="train", settings=settings):
        _log_evaluation(ev, settings, {"test_fraction": TEST_FRACTION, "refit_on_all_labelled": True,
                                       "refit_tickets": len(labelled)})
        registry.log_metrics({"refit_seconds": refit_s, "refit_trees": final.best_iteration_})
        result = registry.log_and_register(
            MODEL_NAME, final, input_example=feats.X[list(FEATURES)].iloc[labelled[-5:]], primary_metric=PRIMARY_METRIC,
            metric_value=ev.metrics["roc_auc"], higher_is_better=True, settings=settings,
            extra_metrics={k: ev.metrics[k] for k in ("baseline_roc_auc", "roc_auc_lift", "pr_auc", "brier",
                                                      "ece")},
            data_validated=validated, card=model_card(ev, ds, Path(data_dir), validated, len(labelled)),
            evidence=gate_evidence(ev, feats, ds, data_dir))
    # Snapshots belong to the version; they are served only when it was promoted (a new generation).
    vdir = generations.version_dir(settings.snapshots_dir, MODEL_NAME, result.version)
    paths = write_snapshots(ds, settings, out=vdir)
    served = generations.record_version(settings.snapshots_dir, MODEL_NAME, result.version, result.promoted, vdir,
                                        data_end(ds), str(Path(data_dir).resolve()))
    m = ev.metrics
    return {
        "tickets": len(feats.meta), "train_tickets": m["train_tickets"], "test_tickets": m["test_tickets"],
        "unlabelled_tickets": m["unlabelled_tickets"], "cutoff": str(ev.split.cutoff.date()),
        "roc_auc": round(m["roc_auc"], 4), "baseline_roc_auc": round(m["baseline_roc_auc"], 4),
        "roc_auc_lift": round(m["roc_auc_lift"], 4), "pr_auc": round(m["pr_auc"], 4),
        "baseline_pr_auc": round(m["baseline_pr_auc"], 4), "brier": round(m["brier"], 4),
        "baseline_brier": round(m["baseline_brier"], 4), "ece": round(m["ece"], 4),
        "target_met": m["roc_auc_lift"] >= TARGET_LIFT, "version": result.version, "promoted": result.promoted,
        "gate": result.reason, "snapshots": f"{vdir} ({len(paths)} files)",
        "served generation": served or "unchanged (not promoted)",
        "seconds": round(time.perf_counter() - t_start, 1),
    }


@click.command("ticket-triage")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Data folder holding the contract tables (default: AFTERSALES_DATA_DIR or data/default).")
@click.option("--test-fraction", default=TEST_FRACTION, show_default=True,
              help="Share of labelled tickets, the latest, held out as the test period.")
@click.option("--calibration", type=click.Choice(["isotonic", "platt"]), default="isotonic", show_default=True,
              help="How raw scores become probabilities (fitted on the latest training slice).")
@click.option("--latency/--no-latency", default=True, show_default=True,
              help="Also time score_one (10,000 calls) and score_batch (10,000 tickets).")
def evaluate_cmd(data_dir: Path | None, test_fraction: float, calibration: str, latency: bool) -> None:
    """Evaluate the ticket escalation model on later tickets against the case-type baseline.

    Fits on tickets created (and resolved) before a cut-off, scores the later ones, prints ROC-AUC, PR-AUC, Brier
    score and a reliability table for the model and the baseline, and logs them with a calibration plot to MLflow
    (run 'evaluate' of the ticket_triage experiment; nothing is registered).
    """
    from training import registry

    settings = get_settings()
    data_dir = data_dir or settings.data_dir
    if not Path(data_dir).is_dir():
        raise click.ClickException(f"data folder {data_dir} not found: make one with "
                                   f"`aftersales generate --out {data_dir}`")
    out_dir = settings.models_dir / MODEL_NAME / "evaluate"
    ds, _ = _load(Path(data_dir), out_dir)
    feats = _features(ds, settings)
    ev = evaluate(feats, settings, test_fraction, calibration, ds=ds)
    lines = target_lines(ev.metrics)
    for line in lines:
        click.echo(line)
    click.echo("\nreliability (10 equal-count bins of predicted probability, later tickets):")
    click.echo(ev.reliability.round(4).to_string(index=False))
    click.echo("\nslices:")
    click.echo(ev.slices.round(4).to_string(index=False))
    lat = {}
    if latency:
        snap_dir = out_dir / "snapshots"
        for name, frame in feature_snapshots(ds, data_end(ds)).items():
            snap_dir.mkdir(parents=True, exist_ok=True)
            frame.to_parquet(snap_dir / SNAPSHOT_FILES[name], index=False)
        lat = measure_latency(ev.model, ds, snap_dir)
        click.echo(f"\nscore_one: {lat['score_one_us']:.0f} µs per call (timeit, 10,000 calls); score_batch: "
                   f"{lat['score_batch_10k_s']:.3f}s for 10,000 tickets with reasons, "
                   f"{lat['score_batch_10k_no_reasons_s']:.3f}s without")
    with registry.start_run(MODEL_NAME, run_name="evaluate", settings=settings):
        _log_evaluation(ev, settings, {"test_fraction": test_fraction})
        registry.log_metrics(lat)
