"""The Dask engine gives the pandas path's features: daily volumes, accounts, merchants, tickets (LocalCluster, 2 workers)."""

from __future__ import annotations

import pandas as pd
import pytest

from features.accounts import account_features
from features.contract import load_dataset
from features.engine import PandasEngine, get_engine, partition_of
from features.merchants import build_features, dataset_merchant_features, prepare_events
from features.return_volume import build_history
from features.tickets import CalendarTable, build_training_features

WORLD = dict(seed=5, accounts=1200, merchants=30, start="2023-06-01", days=400, market="CN", progress=False)
AS_OF = pd.Timestamp("2024-05-31", tz="UTC")


@pytest.fixture(scope="module")
def ds(world_factory):
    return load_dataset(world_factory(**WORLD))


@pytest.fixture(scope="module")
def engine():
    # Threads, not processes: the same scheduler, shuffle and tasks, a few seconds faster to start on a busy machine
    # (the process-based cluster the CLI starts is exercised by tests/test_scale_cli.py).
    eng = get_engine("dask", n_workers=2, threads_per_worker=1, processes=False)
    eng.npartitions = 4  # more partitions than workers: entities of one worker still split
    yield eng
    eng.close()


def test_partition_of_is_stable_and_puts_nulls_in_partition_zero():
    keys = pd.Series(["a", "b", None, "a", "c"], dtype="string")
    p = partition_of(keys, 4)
    assert p[0] == p[3] and p[2] == 0 and ((p >= 0) & (p < 4)).all()
    # The same IDs in another dtype land in the same partitions (tables are hashed alike).
    assert (partition_of(keys.astype(object), 4) == p).all()


def test_engine_runs_on_more_than_one_partition(ds, engine):
    seen = engine.by_key(lambda orders: pd.DataFrame({"n": [len(orders)]}), {"orders": (ds.orders, "account_id")})
    assert len(seen) == 4 and seen["n"].sum() == len(ds.orders) and (seen["n"] < len(ds.orders)).all()


def test_account_features_equal(ds, engine):
    args = (ds.orders, ds.returns, ds.account_links, AS_OF, "CN")
    expected = account_features(*args)
    got = account_features(*args, engine=engine)
    assert len(expected) > 500 and (expected["link_group_size"] > 1).any()
    pd.testing.assert_frame_equal(got, expected)
    pd.testing.assert_frame_equal(account_features(*args, engine=PandasEngine()), expected)


def test_merchant_features_equal(ds, engine):
    expected = build_features(prepare_events(ds), AS_OF)
    got = dataset_merchant_features(ds, AS_OF, engine=engine)
    assert len(expected) >= 20
    pd.testing.assert_frame_equal(got, expected)


def test_ticket_features_equal(ds, engine):
    cal = CalendarTable("CN", first_year=2023, last_year=2025)
    expected = build_training_features(ds, cal)
    got = build_training_features(ds, cal, engine=engine)
    assert len(expected.X) > 1000 and expected.X["mer_late_delivery_rate"].notna().any()
    pd.testing.assert_frame_equal(got.X, expected.X)
    pd.testing.assert_frame_equal(got.meta, expected.meta)


def test_daily_volumes_equal(ds, engine):
    expected = build_history(ds, "CN")
    got = build_history(ds, "CN", engine=engine)
    pd.testing.assert_frame_equal(got.y, expected.y)
    pd.testing.assert_frame_equal(got.drivers, expected.drivers)
    pd.testing.assert_frame_equal(got.linked, expected.linked)
    assert got.region_mix == expected.region_mix and len(expected.linked) > 1000


def test_pandas_engine_refuses_a_scheduler_and_unknown_engines():
    with pytest.raises(ValueError, match="--engine dask"):
        get_engine("pandas", scheduler="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="unknown engine"):
        get_engine("spark")
    assert isinstance(get_engine("pandas"), PandasEngine)
