"""Shared fixtures: the settings a CLI test runs under, and one service deployment per test session (fuzzing,
soak, restart)."""

from __future__ import annotations

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
def deployment_shared(tmp_path_factory, worker_id) -> dict:
    """Every champion the service loads, built once per session (xdist workers share it; read only)."""
    base = tmp_path_factory.getbasetemp()
    return shared_deployment(base.parent if worker_id != "master" else base)
