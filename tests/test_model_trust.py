"""Which models the service will serve: only champions of the configured MLflow registry, only when their logged
signature lists the features the serving code sends, and never one trained on data that failed validation.

The service's start-up code (``serving.app.Runtime.load``, what each BentoML worker runs) is called in-process here;
the served routes answer from the same ``Runtime``.
"""

from __future__ import annotations

import logging
import pickle
import shutil
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyRegressor

from features import accounts, tickets
from features.settings import Settings
from features.synthetic import generate_world
from serving.app import ApiError, Runtime, served_features, signature_mismatch
from serving.schemas import TicketIn
from training import registry

TICKET = TicketIn(ticket_id="t1", created_at=datetime(2024, 8, 20, 9, 30, tzinfo=UTC), case_type="refund",
                  channel="chat")


def _stand_in(columns) -> tuple[DummyRegressor, pd.DataFrame]:
    example = pd.DataFrame({c: [0.0, 1.0, 2.0] for c in columns})
    return DummyRegressor().fit(example, [0.0, 1.0, 2.0]), example


def _register(name: str, columns, settings: Settings, value: float = 0.5) -> registry.RegisterResult:
    model, example = _stand_in(columns)
    return registry.log_and_register(name, model, example, "score", value, True, settings=settings)


@pytest.fixture(scope="module")
def registries(tmp_path_factory) -> dict[str, Settings]:
    """Two registries: ``configured`` (what the service is pointed at) and ``other`` (somewhere else on disk)."""
    root = tmp_path_factory.mktemp("trust")
    return {"configured": Settings(models_dir=root / "configured"), "other": Settings(models_dir=root / "other")}


def test_a_champion_whose_signature_differs_from_the_served_features_is_refused_at_start(registries, caplog):
    settings = registries["configured"]
    features = list(tickets.FEATURES)
    wrong = [c for c in features if c not in ("amount", "channel")] + ["legacy_score"]
    v = _register("ticket_triage", wrong, settings).version
    ok = _register("serial_returners", accounts.FEATURES, settings).version

    with caplog.at_level(logging.INFO, logger="aftersales.serving"):
        rt = Runtime.load(settings)
    try:
        assert "ticket_triage" not in rt.models
        problem = rt.problems["ticket_triage"]
        assert f"v{v}" in problem and "missing channel, amount" in problem and "unexpected legacy_score" in problem
        assert "aftersales train ticket-triage" in problem
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("signature" in m and "legacy_score" in m for m in errors), errors  # the start-up log says it
        with pytest.raises(ApiError) as refused:  # what the route answers
            rt.score_ticket(TICKET)
        assert refused.value.status == 503 and "legacy_score" in refused.value.message
        assert rt.models["serial_returners"].version == ok  # a matching signature is served
        assert rt.health().status == "degraded"
    finally:
        rt.close()


def test_signature_mismatch_names_what_differs():
    expected = served_features("merchant_risk")
    assert signature_mismatch("merchant_risk", expected) == ""
    assert signature_mismatch("merchant_risk", list(reversed(expected))) == ""  # order is the model's business
    assert signature_mismatch("merchant_risk", None) == "no signature was logged"
    assert signature_mismatch("merchant_risk", [*expected[1:], "x"]) == f"missing {expected[0]}; unexpected x"


def test_only_champions_of_the_configured_registry_are_loaded(registries, monkeypatch):
    configured, other = registries["configured"], registries["other"]
    # A good model exists elsewhere: another registry, and a pickle dropped into the configured models folder.
    elsewhere = _register("merchant_risk", served_features("merchant_risk"), other)
    assert elsewhere.promoted
    model, _ = _stand_in(served_features("merchant_risk"))
    configured.models_dir.mkdir(parents=True, exist_ok=True)
    for path in (configured.models_dir / "merchant_risk.pkl", configured.models_dir / "merchant_risk" / "model.pkl"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(model))
    # ... and the process environment points MLflow at the other registry: settings win.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other.tracking_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", other.tracking_uri)

    rt = Runtime.load(configured)
    try:
        assert "merchant_risk" not in rt.models
        assert configured.tracking_uri in rt.problems["merchant_risk"]
        assert "aftersales train merchant-risk" in rt.problems["merchant_risk"]
    finally:
        rt.close()

    # Registered in the configured registry, it is served, pinned to that registry's version and run.
    mine = _register("merchant_risk", served_features("merchant_risk"), configured)
    mine_run = registry.load_champion("merchant_risk", settings=configured).run_id
    rt = Runtime.load(configured)
    try:
        loaded = rt.models["merchant_risk"]
        assert loaded.version == mine.version and loaded.run_id == mine_run
        assert loaded.run_id != registry.load_champion("merchant_risk", settings=other).run_id
    finally:
        rt.close()


def test_training_on_data_that_failed_validation_moves_no_alias(tmp_path):
    """The real ``serial-returners`` train path on a data folder where 20% of orders break the contract: a version
    is registered and logged, the champion stays where it was (even though the new model scores far better)."""
    from training import serial_returners as sr
    from training.data import data_validated

    world = tmp_path / "world"
    generate_world(world, seed=3, accounts=500, merchants=15, start="2024-01-01", days=200, market="CN",
                   progress=False)
    shutil.rmtree(world / "truth")  # the proxy evaluation: quicker, and the point here is the gate
    orders = pd.read_parquet(world / "orders.parquet")
    orders.loc[orders.sample(frac=0.2, random_state=0).index, "ordered_at"] = pd.NaT
    orders.to_parquet(world / "orders.parquet", index=False)

    settings = Settings(models_dir=tmp_path / "models")
    champion = _register(sr.MODEL_NAME, accounts.FEATURES, settings, value=0.0)  # pr_auc 0: easy to beat
    messages: list[str] = []
    from features.contract import load_dataset

    assert not data_validated(load_dataset(world), messages.append)
    assert any("orders" in m and "not promoted" in m for m in messages), messages

    summary = sr.train(world, settings)
    assert summary["version"] == champion.version + 1 and summary["promoted"] is False
    assert registry.load_champion(sr.MODEL_NAME, settings=settings).version == champion.version
    listed = registry.list_models(settings)
    new = listed[(listed["name"] == sr.MODEL_NAME) & (listed["version"] == summary["version"])].iloc[0]
    assert "champion" not in new["aliases"]
    from mlflow import MlflowClient

    tags = MlflowClient(settings.tracking_uri, settings.tracking_uri).get_model_version(
        sr.MODEL_NAME, str(summary["version"])).tags
    assert tags["data_validated"] == "false" and "failed validation" in tags["gate_reason"]
    assert np.isfinite(new["value"]) and new["value"] > 0.0  # it would have won on the metric
