"""``aftersales score-all``: score every account and every merchant as of a day and write Parquet.

Features come from the same functions as training (``features.accounts.account_features``,
``features.merchants.dataset_merchant_features``), run in this process or per entity partition on Dask
(``--engine dask``); account scores are computed per account partition on the cluster too. Models: the registered
champions (the serial-returner model is fitted as of the day when its champion was trained on other data or later,
exactly as ``flag-accounts`` does; merchants need a merchant_risk champion).
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
import pandas as pd

from features.accounts import AsOfError, account_features, check_as_of, score_snapshot
from features.settings import get_settings
from training.data import engine_for_command, engine_options, load_for_command


def _predict_part(accounts: pd.DataFrame, model) -> pd.DataFrame:
    """The model's scores of one partition of account features (index account_id)."""
    return pd.DataFrame({"score": model.predict(accounts)}, index=accounts.index)


def score_accounts(X: pd.DataFrame, model, engine=None) -> np.ndarray:
    """Scores of every account of ``X`` (rows in X's order); per account partition on a Dask engine."""
    if engine is None or engine.name == "pandas":
        return model.predict(X)
    frame = X.rename_axis("account_id").reset_index()
    got = engine.by_key(lambda accounts, model: _predict_part(accounts.set_index("account_id"), model),
                        {"accounts": (frame, "account_id")}, model=model)
    return got["score"].reindex(X.index).to_numpy()


@click.command("score-all")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Data folder holding the contract tables (default: AFTERSALES_DATA_DIR).")
@click.option("--as-of", "as_of", default=None,
              help="Last day whose data may be used (YYYY-MM-DD; default: the data's last day). Date-partitioned "
                   "tables are read only up to it.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder to write accounts.parquet and merchants.parquet (and rejects.csv) to.")
@click.option("--market", default=None, help="Market whose events mark wardrobing (default: AFTERSALES_MARKET).")
@engine_options
def score_all_cmd(data_dir: Path | None, as_of: str | None, out_dir: Path, market: str | None, engine: str,
                  scheduler: str | None) -> None:
    """Score every account (abuse risk) and every merchant (complaint risk) as of a day; write Parquet files.

    OUT/accounts.parquet: account_id, abuse_score, abuse_percentile, likely_pattern, top_reason and context columns
    (reasons for the top 10%). OUT/merchants.parquet: the merchant ranking (score, rank, expected complaints,
    reasons, flags). Train first: `aftersales train all --data DIR`.
    """
    from training import registry
    from training.merchant_risk import MODEL_NAME as MERCHANT_MODEL
    from training.serial_returners import _choose_model
    from training.serial_returners import _data_dir as checked_dir

    settings = get_settings()
    data_dir = checked_dir(data_dir, settings)
    t0 = time.perf_counter()
    ds = load_for_command(data_dir, out_dir, click.echo, until=as_of)
    try:
        day = check_as_of(as_of or ds.time_span()[1], ds.time_span())
    except AsOfError as e:
        raise click.ClickException(str(e)) from e
    out_dir.mkdir(parents=True, exist_ok=True)
    with engine_for_command(engine, scheduler) as eng:
        t1 = time.perf_counter()
        X = account_features(ds.orders, ds.returns, ds.account_links, day, market or settings.market, settings,
                             engine=eng)
        click.echo(f"  account features: {len(X):,} accounts in {time.perf_counter() - t1:.1f}s")
        model = _choose_model(ds, X, day, data_dir, settings, "auto", click.echo, client=eng.client)
        scores = score_accounts(X, model, eng)
        accounts = score_snapshot(X, model, scores=scores)
        accounts.insert(1, "as_of", str(day.date()))
        accounts.to_parquet(out_dir / "accounts.parquet", index=False)
        click.echo(f"  wrote {len(accounts):,} accounts to {out_dir / 'accounts.parquet'}")
        try:
            loaded = registry.load_champion(MERCHANT_MODEL, settings=settings)
        except registry.ModelNotFound:
            click.echo(f"  merchants not scored: no {MERCHANT_MODEL} champion yet (run `aftersales train "
                       "merchant-risk --data DIR`)")
            loaded = None
        if loaded is not None:
            from features.merchants import dataset_merchant_features

            t1 = time.perf_counter()
            features = dataset_merchant_features(ds, day, eng, horizon_days=settings.merchant_horizon_days,
                                                 new_merchant_days=settings.merchant_new_days)
            click.echo(f"  merchant features: {len(features):,} merchants in {time.perf_counter() - t1:.1f}s")
            ranking = loaded.model.rank(features)
            ranking.insert(1, "as_of", str(day.date()))
            ranking.to_parquet(out_dir / "merchants.parquet", index=False)
            click.echo(f"  wrote {len(ranking):,} merchants to {out_dir / 'merchants.parquet'} "
                       f"({MERCHANT_MODEL} v{loaded.version})")
    click.echo(f"scored as of {day.date()} in {time.perf_counter() - t0:.1f}s")
