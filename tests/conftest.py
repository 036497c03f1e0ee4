"""Shared fixtures: the settings a CLI test runs under, and one service deployment per test session (fuzzing,
soak, restart)."""

from __future__ import annotations

from pathlib import Path

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


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> Path:
    """One small synthetic world (seed 5, 1,500 accounts, 50 merchants, 500 days from 2023-01-01, CN), generated once
    per test process and shared read-only by the return-volume and forecaster tests."""
    from features.synthetic import generate_world

    out = tmp_path_factory.mktemp("small_world") / "world"
    generate_world(out, seed=5, accounts=1500, merchants=50, start="2023-01-01", days=500, market="CN",
                   progress=False)
    return out


@pytest.fixture(scope="session")
def deployment_shared(tmp_path_factory, worker_id) -> dict:
    """Every champion the service loads, built once per session (xdist workers share it; read only)."""
    base = tmp_path_factory.getbasetemp()
    return shared_deployment(base.parent if worker_id != "master" else base)
