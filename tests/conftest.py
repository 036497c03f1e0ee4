"""Fixtures shared by the service tests (fuzzing, soak, restart): one deployment per test session."""

from __future__ import annotations

import pytest
from _service import shared_deployment


@pytest.fixture(scope="session")
def deployment_shared(tmp_path_factory, worker_id) -> dict:
    """Every champion the service loads, built once per session (xdist workers share it; read only)."""
    base = tmp_path_factory.getbasetemp()
    return shared_deployment(base.parent if worker_id != "master" else base)
