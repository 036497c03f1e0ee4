"""Serial-return accounts: the commands (`flag-accounts`, `review record|list|import`, `evaluate serial-returners`)."""

from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from features.accounts import (
    PATTERNS,
    AccountFrame,
    AsOfError,
    SerialReturnerModel,
    account_features,
    as_day,
    check_as_of,
    queue_settings,
    review_queue,
)
from features.contract import ContractError, Dataset, load_dataset
from features.reviews import DecisionError, import_decisions, list_decisions, record_decision
from features.settings import Settings, get_settings
from training.data import engine_for_command, engine_options, load_for_command
from training.serial_evaluation import (
    FORWARD_HORIZON_DAYS,
    MODEL_NAME,
    Echo,
    _load,
    _log_evaluation,
    _truth,
    default_split,
    evaluate_forward,
    evaluate_on_truth,
    excluded_accounts,
    fit_model,
    load_labels,
    target_lines,
)


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
    model = fit_model(X, labels, settings, day, source=str(data_dir.resolve()), client=client,
                      links=ds.account_links)
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
    model = model.for_day(X)  # a cold-start champion fitted earlier: its null refitted on this day's accounts
    labels = load_labels(ds, settings, day)
    exclude = excluded_accounts(labels, day, settings.serial_review_cooldown_days)
    scores = model.predict(X)
    queue = review_queue(X, model, capacity, exclude=exclude, scores=scores,
                         **queue_settings(settings))
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
