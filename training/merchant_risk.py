"""Merchant complaint risk: training entry point, ranking, the serving snapshot, and the CLI commands.

The pieces this uses live in :mod:`training.merchant_evaluation` (backtest over as-of snapshots, metrics, the
choice of model and of a baseline) and :mod:`training.merchant_report` (targets, lift chart, MLflow logging, model
card); their names stay importable from here.
"""

from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from features import generations
from features.contract import ContractError
from features.merchants import (
    FEATURES,
    AsOfError,
    MerchantEvents,
    MerchantRiskModel,
    build_features,
    build_snapshots,
    dataset_merchant_features,
    prepare_events,
)
from features.settings import Settings, get_settings
from training.data import data_validated, engine_for_command, engine_options, load_for_command
from training.merchant_evaluation import (  # noqa: F401 (re-exported: the module's public names before the split)
    BASELINE_TEXT,
    BASELINES,
    DEFAULT_KIND,
    METHODS,
    MODELS,
    PRIMARY_METRIC,
    TARGET_NDCG_GAIN,
    Evaluation,
    check_rankable,
    evaluate,
    evaluate_scores,
    lift_table,
    model_params,
    ndcg_at_k,
    ranking_metrics,
    score_methods,
    snapshot_dates,
    split_dates,
)
from training.merchant_report import (  # noqa: F401 (re-exported: the module's public names before the split)
    _log_evaluation,
    decile_slices,
    lift_figure,
    model_card,
    report,
    target_lines,
)

MODEL_NAME = "merchant_risk"
SNAPSHOT_COLUMNS = ["merchant_id", "merchant_risk_score", "merchant_risk_percentile", "expected_complaints",
                    "late_delivery_rate", "complaint_rate_90d", "top_reason"]


# --------------------------------------------------------------------------------------------------------------------
# Ranking and the serving snapshot


def _load(data_dir: Path, out_dir: Path, echo=click.echo) -> MerchantEvents:
    """Load and validate the data, write its rejects to ``out_dir``, and prepare the merchant events."""
    return prepare_events(load_for_command(data_dir, out_dir, echo))


def rank_as_of(model: MerchantRiskModel, events: MerchantEvents, as_of, settings: Settings) -> pd.DataFrame:
    """Every merchant known on ``as_of`` ranked by the fitted model (merchants without recent orders flagged)."""
    features = build_features(events, as_of, horizon_days=settings.merchant_horizon_days,
                              new_merchant_days=settings.merchant_new_days)
    return model.rank(features)


def write_snapshots(ranking: pd.DataFrame, settings: Settings, out: Path | None = None) -> Path:
    """Write the merchant snapshot ticket triage loads: ``merchants.parquet`` (SNAPSHOT_COLUMNS) in ``out``
    (training: the registered version's ``snapshots/merchant_risk/v<N>``; default the flat ``snapshots_dir``)."""
    n = len(ranking)
    # Percentile of risk: 1.0 for the riskiest merchant, by rank so ties stay deterministic.
    pct = 1.0 - (ranking["rank"].to_numpy() - 1) / max(n, 1)
    snap = pd.DataFrame({
        "merchant_id": ranking["merchant_id"].astype("string"),
        "merchant_risk_score": ranking["score"].astype(float),
        "merchant_risk_percentile": pct,
        "expected_complaints": ranking["expected_complaints"].astype(float),
        "late_delivery_rate": ranking["late_delivery_rate"].astype(float),
        "complaint_rate_90d": ranking["complaint_rate_90d"].astype(float),
        "top_reason": ranking["reasons"].str.split("; ").str[0].astype("string"),
    })
    out = Path(out or settings.snapshots_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "merchants.parquet"
    tmp = out / ".merchants.parquet.tmp"
    snap.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def gate_evidence(bt: Evaluation, events: MerchantEvents, settings: Settings, data_dir: Path):
    """The promotion gate's evidence: the backtest's held-out test snapshots, NDCG@50 averaged per snapshot
    (:mod:`training.evidence`); the champion ranks the same merchant-snapshots."""
    from training.evidence import Evidence, Unscorable, check_seen

    min_orders = settings.merchant_min_label_orders
    scored = bt.scored

    def rows(frame: pd.DataFrame) -> str:
        d = pd.to_datetime(frame["as_of"])
        return (f"{len(frame):,} merchant-snapshots of {d.nunique()} test as-of dates {d.min():%Y-%m-%d} to "
                f"{d.max():%Y-%m-%d} (label window {settings.merchant_horizon_days} days)")

    def compare(champion, seen_until):
        mask = check_seen(seen_until, scored["as_of"], 10, "merchant-snapshots").to_numpy()
        part = scored[mask]
        # The champion gets the features and the baselines' columns (one that ranks by a baseline reads its own).
        part = part.assign(challenger=part[bt.served],
                           champion=champion.predict(part[[*FEATURES, *BASELINES.values()]]))
        try:
            summary, _ = evaluate_scores(part, ["challenger", "champion"], min_orders)
        except ValueError as e:
            raise Unscorable(str(e)) from None
        return (float(summary.loc["challenger", PRIMARY_METRIC]), float(summary.loc["champion", PRIMARY_METRIC]),
                rows(part))

    return Evidence(PRIMARY_METRIC, True, float(bt.summary.loc[bt.served, PRIMARY_METRIC]),
                    {b: float(bt.summary.loc[b, PRIMARY_METRIC]) for b in BASELINES if b != bt.served},
                    rows(scored), compare,
                    str(Path(data_dir).resolve()), events.end, bt.test_dates[0])


def write_ranking(ranking: pd.DataFrame, out: Path) -> Path:
    """Write the ranking as CSV (default) or Parquet, by the file's suffix."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        ranking.to_parquet(out, index=False)
    else:
        ranking.to_csv(out, index=False)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Entry points


def train(data_dir: Path, settings: Settings) -> dict:
    """Backtest both models against the baselines, refit the better on every matured snapshot, register it
    (promoted by the gate on NDCG@50) and write the serving snapshot as of the data's last day."""
    from training import registry

    data_dir = Path(data_dir)
    try:
        ds = load_for_command(data_dir, settings.models_dir / "merchant_risk", click.echo)
        validated = data_validated(ds)
        events = prepare_events(ds)
        check_rankable(events)
        snapshot_dates(events, settings)
    except (ContractError, ValueError) as e:
        raise click.ClickException(f"merchant-risk: {e}") from e
    with registry.start_run(MODEL_NAME, run_name="train", settings=settings):
        bt = evaluate(events, settings)
        report(bt)
        _log_evaluation(bt, settings)
        all_dates = snapshot_dates(events, settings)
        click.echo(f"  refitting {bt.chosen} on all {len(all_dates)} matured snapshots (ranking by {bt.served})")
        final = MerchantRiskModel(kind=bt.chosen, use=bt.use, **model_params(settings)).fit(
            build_snapshots(events, all_dates, settings.merchant_horizon_days))
        ranking = rank_as_of(final, events, events.end, settings)
        registry.log_table(ranking.head(100), "tables/top_merchants.csv")
        example = build_features(events, events.end)[list(FEATURES)].head(5)
        result = registry.log_and_register(
            MODEL_NAME, final, input_example=example, primary_metric=PRIMARY_METRIC,
            metric_value=bt.summary.loc[bt.served, PRIMARY_METRIC], higher_is_better=True, settings=settings,
            extra_metrics={k: bt.summary.loc[bt.served, k] for k in bt.summary.columns}, data_validated=validated,
            card=model_card(bt, ds, data_dir, settings, validated),
            evidence=gate_evidence(bt, events, settings, data_dir))
    # The snapshot belongs to the version; it is served only when the version was promoted (a new generation).
    vdir = generations.version_dir(settings.snapshots_dir, MODEL_NAME, result.version)
    snap = write_snapshots(ranking, settings, out=vdir)
    served = generations.record_version(settings.snapshots_dir, MODEL_NAME, result.version, result.promoted, vdir,
                                        events.end, str(data_dir.resolve()))
    s = bt.summary
    return {
        "model": bt.chosen, "ranking uses": bt.served, "version": result.version, "promoted": result.promoted, "gate": result.reason,
        **{f"{m} ndcg@20/@50, p@10%, spearman": " / ".join(f"{s.loc[m, c]:.3f}" for c in s.columns) for m in METHODS},
        "ndcg@50 gain over best baseline": round(bt.gain(), 4),
        "merchants ranked as of": f"{len(ranking)} on {events.end.date()}", "snapshot": str(snap),
        "served generation": served or "unchanged (not promoted)",
    }


@click.command("merchant-risk")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Data folder holding the contract tables (default: AFTERSALES_DATA_DIR or data/default).")
def evaluate_cmd(data_dir: Path | None) -> None:
    """Backtest the merchant complaint ranking on later snapshots than it trained on, against two baselines.

    Prints NDCG@20/@50, precision at the top decile and Spearman for the LambdaRank and Poisson models and for
    last period's complaint rate and count, the targets (NDCG@50 at least 0.10 above the better baseline, precision
    at the top decile above it), and logs all of it with a lift chart to MLflow (experiment merchant_risk).
    """
    from training import registry

    settings = get_settings()
    data_dir = data_dir or settings.data_dir
    try:
        events = _load(data_dir, settings.models_dir / "merchant_risk", click.echo)
        with registry.start_run(MODEL_NAME, run_name="evaluate", settings=settings):
            bt = evaluate(events, settings)
            lines = report(bt)
            _log_evaluation(bt, settings)
            registry.log_text("\n".join(lines), "targets.txt")
    except (ContractError, ValueError) as e:
        raise click.ClickException(str(e)) from e


@click.command("rank-merchants")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Data folder holding the contract tables (default: AFTERSALES_DATA_DIR or data/default).")
@click.option("--as-of", "as_of", default=None,
              help="Last day whose data may be used (YYYY-MM-DD; default: the data's last day).")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="Ranking file to write (.csv or .parquet).")
@click.option("--top", type=int, default=None, help="Write only the N riskiest merchants (default: all).")
@click.option("--snapshot/--no-snapshot", default=False, hidden=True,
              help="Removed: served snapshots change only with a promotion or `aftersales refresh-features`.")
@engine_options
def rank_merchants_cmd(data_dir: Path | None, as_of: str | None, out: Path, top: int | None, snapshot: bool,
                       engine: str = "pandas", scheduler: str | None = None) -> None:
    """Rank merchants by the complaints per order expected in the coming period, with reasons and flags.

    Uses the registered champion of merchant_risk (train it with `aftersales train merchant-risk --data DIR`).
    Writes merchant_id, score, rank, expected_complaints, reasons, flag (no_orders_in_window, new_merchant) and
    context columns; every merchant known on the as-of date is ranked, ties broken by merchant_id. Writes only
    --out: what the service serves changes with a promotion or `aftersales refresh-features`.
    """
    from training import registry

    settings = get_settings()
    data_dir = data_dir or settings.data_dir
    try:
        ds = load_for_command(data_dir, out.parent, click.echo, until=as_of)
        loaded = registry.load_champion(MODEL_NAME, settings=settings)
        with engine_for_command(engine, scheduler) as eng:
            features = dataset_merchant_features(ds, as_of, eng, horizon_days=settings.merchant_horizon_days,
                                                 new_merchant_days=settings.merchant_new_days)
        day = features.attrs["as_of"]
        ranking = loaded.model.rank(features)
    except registry.ModelNotFound as e:
        raise click.ClickException(str(e)) from e
    except (ContractError, AsOfError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    if snapshot:
        click.echo("  note: --snapshot no longer writes the served snapshot; served features change only with a "
                   "promotion (`aftersales train`) or `aftersales refresh-features`")
    written = write_ranking(ranking.head(top) if top else ranking, out)
    flagged = (ranking["flag"] != "").sum()
    click.echo(f"ranked {len(ranking)} merchants as of {day.date()} with {MODEL_NAME} v{loaded.version} "
               f"({flagged} flagged); wrote {min(len(ranking), top or len(ranking))} rows to {written}")
    click.echo(ranking.head(10)[["rank", "merchant_id", "score", "expected_complaints", "flag", "reasons"]]
               .to_string(index=False, max_colwidth=90))
