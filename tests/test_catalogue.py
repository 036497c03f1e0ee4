"""The model catalogue (features/catalogue.py) is the one list the CLI, the online store, generations and the report
read: what it names must exist, and what reads it must follow it."""

from __future__ import annotations

import importlib

import click
import pytest
from click.testing import CliRunner

from features import catalogue, generations
from serving import online_store as ostore
from training.cli import DASK_TRAINERS, LAZY_COMMANDS, LAZY_EVALUATIONS, TRAINERS, main


def test_every_model_once_with_distinct_names():
    names = [m.name for m in catalogue.MODELS]
    clis = [m.cli for m in catalogue.MODELS]
    files = [f for m in catalogue.MODELS for f in m.files]
    assert len(set(names)) == len(names) == len(set(clis)) == 4
    assert len(set(files)) == len(files), "a snapshot file belongs to one model"
    assert catalogue.get("merchant-risk") is catalogue.get("merchant_risk")
    assert catalogue.registered_name("ticket-triage") == "ticket_triage"
    assert catalogue.cli_name("serial_returners") == "serial-returners"
    with pytest.raises(KeyError, match="features/catalogue.py"):
        catalogue.get("no-such-model")
    # The ticket model is trained last: it reads the snapshots of the account and merchant models.
    assert names[-1] == "ticket_triage"


@pytest.mark.parametrize("model", catalogue.MODELS, ids=lambda m: m.cli)
def test_training_module_has_the_steps_the_cli_resolves(model):
    module = importlib.import_module(model.training)
    assert module.MODEL_NAME == model.name
    assert callable(module.train)
    assert isinstance(module.evaluate_cmd, click.Command) and module.evaluate_cmd.name == model.cli
    for cmd in model.commands:
        assert isinstance(getattr(module, cmd.attr), click.Command), cmd
        assert getattr(module, cmd.attr).name == cmd.name


def test_cli_registration_follows_the_catalogue():
    assert list(TRAINERS) == [m.cli for m in catalogue.MODELS]
    assert set(LAZY_EVALUATIONS) == {m.cli for m in catalogue.MODELS}
    assert set(DASK_TRAINERS) == {"serial-returners", "ticket-triage"}
    assert {"forecast", "staff", "flag-accounts", "review", "rank-merchants"} <= set(LAZY_COMMANDS)
    runner = CliRunner()
    res = runner.invoke(main, ["evaluate", "--help"])
    assert res.exit_code == 0
    for m in catalogue.MODELS:
        assert m.cli in res.output and m.evaluate_help[:30] in res.output
    # The old verb still reaches the same command.
    res = runner.invoke(main, ["backtest", "return-volume", "--help"])
    assert res.exit_code == 0 and "Rolling-origin backtest" in res.output


def test_served_files_follow_the_catalogue():
    from features.tickets import SNAPSHOT_FILES
    from training.merchant_risk import SNAPSHOT_COLUMNS as MERCHANT_COLUMNS

    assert set(catalogue.get("ticket_triage").files) == set(SNAPSHOT_FILES.values())
    assert ostore.FILES[ostore.ACCOUNTS] == ("accounts.parquet", SNAPSHOT_FILES["accounts"])
    assert ostore.FILES[ostore.MERCHANTS] == ("merchants.parquet", SNAPSHOT_FILES["merchants"])
    assert ostore.FILES[ostore.ORDERS] == (SNAPSHOT_FILES["orders"],)
    assert ostore.WRITERS["merchants.parquet"] == "merchant-risk"
    assert ostore.SCORES == {ostore.ACCOUNTS: "abuse_score", ostore.MERCHANTS: "merchant_risk_score"}
    assert generations.FILES_BY_MODEL == {m.name: m.files for m in catalogue.MODELS}
    # The columns the catalogue says a snapshot serves are columns its training writes.
    assert set(catalogue.get("merchant_risk").snapshots[0].columns) <= set(MERCHANT_COLUMNS)
    from features.accounts import SNAPSHOT_COLUMNS as ACCOUNT_COLUMNS

    assert set(catalogue.get("serial_returners").snapshots[0].columns) <= set(ACCOUNT_COLUMNS)
