"""Scaling out: date-partitioned Parquet input, lightgbm.dask training, and the --engine dask commands end to end."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from features.contract import load_dataset, partition_files
from features.engine import get_engine
from features.partitioned import write_partitioned
from features.settings import Settings, get_settings
from features.tickets import CalendarTable, build_training_features
from training import registry
from training import serial_returners as sr
from training.cli import main
from training.ticket_triage import evaluate

WORLD = dict(seed=5, accounts=2000, merchants=40, start="2023-06-01", days=400, market="CN", progress=False)
KEYS = {"orders": ["order_id", "line_no"], "returns": ["return_id"], "tickets": ["ticket_id"]}
UNTIL = pd.Timestamp("2023-12-31")


@pytest.fixture(scope="module")
def world(world_factory) -> Path:
    return world_factory(**WORLD)


@pytest.fixture(scope="module")
def parted(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scale_world_parted")
    write_partitioned(world, out)
    return out


@pytest.fixture(scope="module")
def engine():
    eng = get_engine("dask", n_workers=2, threads_per_worker=1, processes=False)
    yield eng
    eng.close()


def test_partitioned_folder_round_trips(world, parted):
    assert (parted / "orders").is_dir() and not (parted / "orders.parquet").exists()
    assert any((parted / "orders").glob("date=2023-11-11/*.parquet"))
    assert (parted / "truth" / "accounts.parquet").exists() and (parted / "account_links.parquet").exists()
    a, b = load_dataset(world), load_dataset(parted)
    for name, frame in a.tables.items():
        other = b.tables[name]
        if name in KEYS:
            frame = frame.sort_values(KEYS[name]).reset_index(drop=True)
            other = other.sort_values(KEYS[name]).reset_index(drop=True)
        pd.testing.assert_frame_equal(other, frame)  # same rows, same contract types, no partition column


def test_date_filter_opens_fewer_files_and_reads_only_earlier_days(parted):
    full, cut = load_dataset(parted), load_dataset(parted, until=UNTIL)
    assert len(partition_files(parted / "orders", UNTIL)) < len(partition_files(parted / "orders")) / 1.5
    for name in KEYS:
        assert 0 < cut.reports[name].rows_in < full.reports[name].rows_in
        assert cut.reports[name].balanced
    assert cut.orders["ordered_at"].max() < pd.Timestamp("2024-01-01", tz="UTC")
    assert cut.returns["requested_at"].max() < pd.Timestamp("2024-01-01", tz="UTC")
    assert cut.n_rejected == 0  # no return lost its order: orders are never cut later than their returns


def test_bad_rows_in_a_partition_are_rejected_and_counted(parted, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(parted, data)
    day = data / "orders" / "date=2023-08-01"
    [f] = list(day.glob("*.parquet"))
    frame = pd.read_parquet(f)
    frame.loc[frame.index[:3], "quantity"] = -1
    frame.to_parquet(f, index=False)
    # A row whose event time cannot be read has a partition of its own, read whatever the date filter.
    bad = (data / "orders" / "date=unknown")
    bad.mkdir()
    frame.head(2).assign(ordered_at=pd.NaT).to_parquet(bad / "part-0.parquet", index=False)
    ds = load_dataset(data, until=UNTIL)
    rep = ds.reports["orders"]
    assert rep.rejected == 5 and rep.balanced
    assert rep.by_rule == {"quantity: must be > 0": 3, "ordered_at: required (must not be empty)": 2}
    assert (ds.rejects["table"] == "orders").sum() == 5


def test_lightgbm_dask_models_score_like_the_pandas_ones(world, engine, monkeypatch):
    """Held-out metrics of the Dask-trained models against the pandas-trained ones (close, not identical)."""
    monkeypatch.setenv("AFTERSALES_DASK_MIN_TRAIN_ROWS", "0")  # these fits are small: distribute them anyway
    get_settings.cache_clear()
    ds = load_dataset(world)
    feats = build_training_features(ds, CalendarTable("CN", first_year=2023, last_year=2025))
    quiet = {"echo": lambda *_: None}
    local = evaluate(feats, Settings(), **quiet).metrics
    ev = evaluate(feats, Settings(), client=engine.client, **quiet)
    dist = ev.metrics
    assert abs(dist["roc_auc"] - local["roc_auc"]) < 0.02, (dist["roc_auc"], local["roc_auc"])
    assert dist["roc_auc"] - dist["baseline_roc_auc"] >= 0.05 and dist["ece"] < 0.06
    # What gets registered and served: a pickled object with a local booster that scores without any cluster.
    served = pickle.loads(pickle.dumps(ev.model))
    assert type(served.booster_).__name__ == "Booster"
    np.testing.assert_allclose(served.predict(feats.X.tail(100)), ev.model.predict(feats.X.tail(100)))

    # Serial returners: the supervised model (60 decisions drawn from the truth as of t1), scored at t2.
    from sklearn.metrics import average_precision_score

    # the Dask-trained booster is what this test compares: the 'boost' learner, used whatever the decisions say
    settings = Settings(serial_supervised_gate=False, serial_learner="boost")
    t1, t2 = pd.Timestamp("2024-01-31", tz="UTC"), pd.Timestamp("2024-06-30", tz="UTC")
    X1, X2 = (sr.features_as_of(ds, t, settings, engine=engine) for t in (t1, t2))
    truth = sr._truth(world).reindex(X1.index)
    abuser = truth["is_abuser"].fillna(False).astype(bool) & (truth["abuse_start"] <= t1)
    rng = np.random.default_rng(0)
    picked = np.r_[rng.choice(np.flatnonzero(abuser), 30, replace=False),
                   rng.choice(np.flatnonzero(~abuser), 30, replace=False)]
    labels = pd.DataFrame({"account_id": X1.index[picked], "label": abuser.to_numpy()[picked].astype(float)})
    models = {"pandas": sr.fit_model(X1, labels, settings, t1), "dask": sr.fit_model(X1, labels, settings, t1,
                                                                                   client=engine.client)}
    ev = X2.loc[~X2.index.isin(labels["account_id"])]
    t2_truth = sr._truth(world).reindex(ev.index)
    y = (t2_truth["is_abuser"].fillna(False).astype(bool) & (t2_truth["abuse_start"] <= t2)).to_numpy()
    pr = {k: average_precision_score(y, m.predict(ev)) for k, m in models.items()}
    assert models["dask"].mode_ == "supervised" and type(models["dask"].booster_).__name__ == "Booster"
    assert abs(pr["dask"] - pr["pandas"]) < 0.05, pr
    assert pr["dask"] > 3 * y.mean(), pr  # far above chance


def _register_merchant_model(parted: Path, settings: Settings) -> None:
    """A merchant_risk champion without the backtest (what `train merchant-risk` registers, minus the evaluation)."""
    from features.merchants import MerchantRiskModel, build_snapshots, prepare_events

    events = prepare_events(load_dataset(parted))
    dates = pd.date_range("2023-10-01", "2024-04-01", freq="28D", tz="UTC")
    model = MerchantRiskModel(kind="poisson", n_estimators=50).fit(build_snapshots(events, dates))
    registry.log_and_register("merchant_risk", model, build_snapshots(events, dates[-1:], with_labels=False).head(3),
                              primary_metric="ndcg_at_50", metric_value=0.5, higher_is_better=True, settings=settings)


def test_dask_commands_end_to_end(parted, cli_settings, tmp_path, monkeypatch):
    """flag-accounts on a LocalCluster of worker processes; score-all and rank-merchants against the pandas engine."""
    run = CliRunner().invoke
    monkeypatch.setenv("AFTERSALES_SERIAL_SUPERVISED_GATE", "false")  # train the boosters on Dask whatever they score
    get_settings.cache_clear()
    r = run(main, ["flag-accounts", "--data", str(parted), "--as-of", "2024-03-31", "--out",
                   str(tmp_path / "queue.csv"), "--model", "fit", "--engine", "dask", "--no-snapshot"])
    assert r.exit_code == 0, r.output
    assert "engine: dask (2 workers" in r.output and "supervised" in r.output
    assert len(pd.read_csv(tmp_path / "queue.csv")) == cli_settings.review_capacity

    # The other commands on a LocalCluster of threads: the same code path, less start-up time for the test.
    monkeypatch.setenv("AFTERSALES_DASK_PROCESSES", "false")
    get_settings.cache_clear()
    _register_merchant_model(parted, get_settings())
    out, local = tmp_path / "scores", tmp_path / "local"
    for folder, extra in ((out, ["--engine", "dask"]), (local, [])):
        r = run(main, ["score-all", "--data", str(parted), "--as-of", "2024-03-31", "--out", str(folder), *extra])
        assert r.exit_code == 0, r.output
    acc, mer = pd.read_parquet(out / "accounts.parquet"), pd.read_parquet(out / "merchants.parquet")
    assert len(acc) > 1000 and acc["account_id"].is_unique and acc["abuse_score"].notna().all()
    assert (acc["as_of"] == "2024-03-31").all() and len(mer) >= 30 and mer["rank"].min() == 1
    # The same scores as the pandas engine (features per partition on Dask, the same models).
    pd.testing.assert_frame_equal(acc, pd.read_parquet(local / "accounts.parquet"))
    pd.testing.assert_frame_equal(mer, pd.read_parquet(local / "merchants.parquet"))
    r = run(main, ["rank-merchants", "--data", str(parted), "--as-of", "2024-03-31", "--out",
                   str(tmp_path / "rank.csv"), "--engine", "dask", "--no-snapshot"])
    assert r.exit_code == 0, r.output
    assert pd.read_csv(tmp_path / "rank.csv")["merchant_id"].astype(str).tolist() == mer["merchant_id"].tolist()


def test_scheduler_without_dask_engine_is_refused(parted, tmp_path):
    r = CliRunner().invoke(main, ["flag-accounts", "--data", str(parted), "--out", str(tmp_path / "q.csv"),
                                  "--scheduler", "tcp://127.0.0.1:1"])
    assert r.exit_code != 0 and "--scheduler needs --engine dask" in r.output


def test_generate_writes_partitioned_folders(tmp_path):
    out = tmp_path / "w"
    r = CliRunner().invoke(main, ["generate", "--out", str(out), "--accounts", "200", "--merchants", "8", "--days", "90",
                                  "--start", "2024-01-01", "--format", "parquet-partitioned"])
    assert r.exit_code == 0, r.output
    for table in KEYS:
        assert not (out / f"{table}.parquet").exists()
        days = sorted(p.name for p in (out / table).iterdir())
        assert days[0].startswith("date=2024-01") and len(days) > 30
    ds = load_dataset(out)
    assert ds.reports["orders"].rows_in == ds.reports["orders"].accepted > 300
