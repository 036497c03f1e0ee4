"""The foundation CLI end to end: generate, validate (with rejects), import, models, and --help everywhere."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from training.cli import LAZY_BACKTESTS, LAZY_COMMANDS, LAZY_EVALUATIONS, TRAINERS, main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "online_retail_ii_2009_2010.csv.gz"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "world"
    res = CliRunner().invoke(main, ["generate", "--out", str(out), "--accounts", "600", "--merchants", "20",
                                    "--days", "120", "--start", "2024-01-01"])
    assert res.exit_code == 0, res.output
    return out


def test_every_command_has_help():
    runner = CliRunner()
    res = runner.invoke(main, ["--help"])
    assert res.exit_code == 0
    for name in ["generate", "import-online-retail", "validate", "train", "models", "demo", "serve", *LAZY_COMMANDS]:
        assert name in res.output
    for name in ["generate", "import-online-retail", "validate", "train", "models", "demo", "serve"]:
        sub = runner.invoke(main, [name, "--help"])
        assert sub.exit_code == 0 and "Usage" in sub.output and len(sub.output) > 120, name
    assert set(TRAINERS) == {"return-volume", "merchant-risk", "serial-returners", "ticket-triage"}
    assert "return-volume" in LAZY_BACKTESTS and "merchant-risk" in LAZY_EVALUATIONS


def test_validate_writes_rejects_and_counts(world: Path, tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    orders = pd.read_parquet(world / "orders.parquet")
    orders.loc[orders.index[:3], "quantity"] = 0  # three rule breaks
    orders.to_parquet(data / "orders.parquet")
    (data / "returns.parquet").write_bytes((world / "returns.parquet").read_bytes())
    res = CliRunner().invoke(main, ["validate", "--data", str(data), "--rejects-dir", str(tmp_path / "rej")])
    assert res.exit_code == 0, res.output
    rejects = pd.read_csv(tmp_path / "rej" / "rejects.csv")
    assert (rejects["table"] == "orders").sum() >= 3
    assert "quantity" in set(rejects["field"])
    assert "rows rejected" in res.output


def test_validate_missing_column_names_file_and_column(tmp_path: Path):
    pd.DataFrame({"order_id": ["1"]}).to_csv(tmp_path / "orders.csv", index=False)
    pd.DataFrame({"return_id": ["r"]}).to_csv(tmp_path / "returns.csv", index=False)
    res = CliRunner().invoke(main, ["validate", "--data", str(tmp_path)])
    assert res.exit_code != 0
    assert "orders.csv" in res.output and "merchant_id" in res.output


def test_missing_data_folder_says_what_to_do(tmp_path: Path):
    res = CliRunner().invoke(main, ["validate", "--data", str(tmp_path / "nope")])
    assert res.exit_code != 0 and "aftersales generate" in res.output


def test_models_on_empty_registry(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("AFTERSALES_MODELS_DIR", str(tmp_path))
    from features.settings import get_settings

    get_settings.cache_clear()
    try:
        res = CliRunner().invoke(main, ["models"])
    finally:
        get_settings.cache_clear()
    assert res.exit_code == 0, res.output
    assert "no registered models" in res.output


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data/online_retail_ii_2009_2010.csv.gz not present")
def test_import_online_retail_cli(tmp_path: Path):
    res = CliRunner().invoke(main, ["import-online-retail", str(SHARED), "--out", str(tmp_path / "or")])
    assert res.exit_code == 0, res.output
    returns = pd.read_parquet(tmp_path / "or" / "returns.parquet")
    assert len(returns) == 4592


def test_version_names_the_release_and_the_libraries_the_models_depend_on():
    import tomllib

    import bentoml

    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0, res.output
    release = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["version"]
    assert res.output.startswith(f"aftersales {release} (Python 3.")
    assert f"bentoml {bentoml.__version__}" in res.output and "lightgbm " in res.output and "mlflow " in res.output
    assert len(res.output.splitlines()) == 1
