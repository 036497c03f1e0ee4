"""Shared fixtures: the settings a CLI test runs under, synthetic worlds generated once per test run and shared by
every module that asks for the same one (``world_factory``), and one service deployment per test session (fuzzing,
soak, restart)."""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from _service import shared_deployment

from features.settings import Settings, get_settings


@pytest.fixture()
def cli_settings(tmp_path, monkeypatch) -> Settings:
    """Settings whose models folder (MLflow store, snapshots, cards) is this test's own; the cache is cleared on both
    sides so no other test sees it."""
    monkeypatch.setenv("AFTERSALES_MODELS_DIR", str(tmp_path / "models"))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


class WorldFactory:
    """Synthetic worlds keyed by their generation parameters: each is generated once per test run, by the first test
    process to ask (under a lock, so xdist workers share it), and handed out read-only to every module asking for the
    same parameters. A test that writes into its world copies it first (or generates its own)."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._made: dict[str, Path] = {}

    def __call__(self, **params) -> Path:
        params = {k: v for k, v in params.items() if k != "progress"}
        key = "-".join(f"{k}={params[k]}" for k in sorted(params)).replace("/", "_")
        if key in self._made:
            return self._made[key]
        out = self.root / key
        done = out / ".generated.json"
        with (self.root / f".{key}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not done.exists():
                from features.synthetic import generate_world

                shutil.rmtree(out, ignore_errors=True)  # a run killed half-way leaves a partial folder
                generate_world(out, progress=False, **params)
                done.write_text(json.dumps(params, sort_keys=True))
        self._made[key] = out
        return out


@pytest.fixture(scope="session")
def world_factory(tmp_path_factory, worker_id) -> WorldFactory:
    """``world_factory(seed=5, accounts=1500, ...)``: the path of that world, generated once per test run."""
    base = tmp_path_factory.getbasetemp()
    return WorldFactory((base.parent if worker_id != "master" else base) / "shared-worlds")


@pytest.fixture(scope="session")
def small_world(world_factory) -> Path:
    """One small synthetic world (seed 5, 1,500 accounts, 50 merchants, 500 days from 2023-01-01, CN), shared
    read-only by the return-volume and forecaster tests."""
    return world_factory(seed=5, accounts=1500, merchants=50, start="2023-01-01", days=500, market="CN")


@pytest.fixture(scope="session")
def deployment_shared(tmp_path_factory, worker_id) -> dict:
    """Every champion the service loads, built once per session (xdist workers share it; read only)."""
    base = tmp_path_factory.getbasetemp()
    return shared_deployment(base.parent if worker_id != "master" else base)


@pytest.fixture(scope="session")
def account_world(world_factory):
    """The accounts tests' world (seed 11, 2,500 accounts, 400 days from 2023-01-01) and its truth per account:
    ``(dataset, truth)``, generated once per run."""
    from features.contract import load_dataset

    out = world_factory(seed=11, accounts=2500, merchants=40, days=400, start="2023-01-01")
    truth = pd.read_parquet(out / "truth" / "accounts.parquet").set_index("account_id")
    return load_dataset(out), truth
