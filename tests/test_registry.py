"""The MLflow module: logging helpers, registration, the promotion gate, champion loading and the model listing.

One SQLite store is shared by the module (creating one runs MLflow's migrations, ~3 s); each test registers its own
model name so tests stay independent.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from features.settings import Settings
from training import registry


class BoostedRegressor:
    """A minimal model of ours: scikit-learn contract around a native LightGBM booster, with a categorical column."""

    def __init__(self, num_boost_round: int = 15, learning_rate: float = 0.1):
        self.num_boost_round = num_boost_round
        self.learning_rate = learning_rate

    def _frame(self, X: pd.DataFrame) -> pd.DataFrame:
        X = X.copy()
        X["channel"] = pd.Categorical(X["channel"], categories=["app", "chat", "email"])
        return X

    def fit(self, X: pd.DataFrame, y) -> BoostedRegressor:
        params = {"objective": "regression", "learning_rate": self.learning_rate, "num_threads": 1, "verbose": -1}
        self.booster_ = lgb.train(params, lgb.Dataset(self._frame(X), y), self.num_boost_round)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        if not hasattr(self, "booster_"):
            raise RuntimeError("BoostedRegressor is not fitted")
        return self.booster_.predict(self._frame(X))


class Lookup:
    """A fitted object with no predict (e.g. a delay distribution): it must still round-trip."""

    def __init__(self, table: dict[str, float]):
        self.table = table


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    # A models/ folder that does not exist yet, as on a fresh clone.
    return Settings(models_dir=tmp_path_factory.mktemp("reg") / "fresh" / "models")


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(7)
    n = 300
    X = pd.DataFrame({
        "orders": rng.poisson(50, n).astype("int64"),
        "lag7": rng.normal(10, 2, n),
        "channel": rng.choice(["app", "chat", "email"], n),
    })
    y = 0.3 * X["orders"] + X["lag7"] + (X["channel"] == "chat") * 5 + rng.normal(0, 1, n)
    return X, y.to_numpy()


def _register(name, model, X, value, higher=False, settings=None, **kw) -> registry.RegisterResult:
    with registry.start_run(name, run_name="train", settings=settings):
        return registry.log_and_register(name, model, X.head(5), "holiday_wape", value, higher,
                                         settings=settings, **kw)


def _champion_version(name: str, settings: Settings) -> int:
    return registry.load_champion(name, settings=settings).version


def test_configure_creates_sqlite_store_on_fresh_clone(settings):
    uri = registry.configure(settings)
    assert uri.startswith("sqlite:///") and uri.endswith("mlflow.db")
    assert settings.models_dir.is_dir()
    assert Path(registry._local_path(settings.artifact_root)).is_dir()


def test_first_model_becomes_champion_and_round_trips(settings, data):
    X, y = data
    model = BoostedRegressor().fit(X, y)
    result = _register("rt_model", model, X, 0.20, settings=settings)
    assert (result.version, result.promoted, result.champion_version) == (1, True, 1)
    assert result.champion_value == pytest.approx(0.20)
    assert "no champion yet" in result.reason

    loaded = registry.load_champion("rt_model", settings=settings)
    assert loaded.version == 1 and loaded.name == "rt_model"
    assert isinstance(loaded.model, BoostedRegressor)
    assert isinstance(loaded.model.booster_, lgb.Booster)  # the native booster, not a pyfunc wrapper
    np.testing.assert_allclose(loaded.model.predict(X), model.predict(X))
    assert loaded.metrics["holiday_wape"] == pytest.approx(0.20)
    assert loaded.run_id


def test_signature_and_input_example_are_logged(settings, data):
    import mlflow

    X, y = data
    _register("sig_model", BoostedRegressor().fit(X, y), X, 0.3, settings=settings)
    info = mlflow.models.get_model_info("models:/sig_model/1")
    assert info.signature is not None
    assert info.signature.inputs.input_names() == ["orders", "lag7", "channel"]
    assert info.signature.outputs is not None
    assert info.saved_input_example_info is not None


@pytest.mark.parametrize("higher, first, worse, equal, better", [
    (False, 0.20, 0.25, 0.20, 0.15),  # WAPE-like: lower is better
    (True, 0.70, 0.60, 0.70, 0.80),  # AUC-like: higher is better
])
def test_promotion_gate(settings, data, higher, first, worse, equal, better):
    X, y = data
    name = f"gate_{'higher' if higher else 'lower'}"
    model = BoostedRegressor().fit(X, y)
    assert _register(name, model, X, first, higher, settings).promoted

    refused = _register(name, model, X, worse, higher, settings)
    assert not refused.promoted and refused.version == 2
    assert (refused.champion_version, refused.champion_value) == (1, pytest.approx(first))
    assert "does not beat" in refused.reason
    assert _champion_version(name, settings) == 1

    tie = _register(name, model, X, equal, higher, settings)  # strictly better is required
    assert not tie.promoted and _champion_version(name, settings) == 1

    promoted = _register(name, model, X, better, higher, settings)
    assert promoted.promoted and promoted.version == 4 and promoted.champion_version == 4
    assert "beats champion v1" in promoted.reason
    assert _champion_version(name, settings) == 4


def test_unvalidated_data_never_promoted(settings, data):
    X, y = data
    model = BoostedRegressor().fit(X, y)
    first = _register("unvalidated", model, X, 0.1, settings=settings, data_validated=False)
    assert not first.promoted and first.champion_version is None and "failed validation" in first.reason
    with pytest.raises(registry.ModelNotFound):
        registry.load_champion("unvalidated", settings=settings)

    assert _register("unvalidated", model, X, 0.5, settings=settings).promoted
    much_better = _register("unvalidated", model, X, 0.01, settings=settings, data_validated=False)
    assert not much_better.promoted and much_better.champion_version == 2
    assert _champion_version("unvalidated", settings) == 2


def test_non_finite_metric_is_refused(settings, data):
    X, y = data
    result = _register("nan_metric", BoostedRegressor().fit(X, y), X, float("nan"), settings=settings)
    assert not result.promoted and "not finite" in result.reason


def test_load_champion_returns_the_pinned_version_not_the_latest(settings, data):
    X, y = data
    champion = BoostedRegressor(num_boost_round=30).fit(X, y)
    challenger = BoostedRegressor(num_boost_round=2).fit(X, y)
    assert not np.allclose(champion.predict(X), challenger.predict(X))
    _register("pinned", champion, X, 0.10, settings=settings, extra_metrics={"mase": np.float64(0.8)})
    assert not _register("pinned", challenger, X, 0.40, settings=settings).promoted

    loaded = registry.load_champion("pinned", settings=settings)
    assert loaded.version == 1
    assert loaded.model.num_boost_round == 30
    np.testing.assert_allclose(loaded.model.predict(X), champion.predict(X))
    # Both versions were logged from their own runs; the champion's metrics are its own, not the latest run's.
    assert loaded.metrics["holiday_wape"] == pytest.approx(0.10)
    assert loaded.metrics["mase"] == pytest.approx(0.8)


def test_two_versions_from_one_run_keep_their_own_metrics(settings, data):
    X, y = data
    model = BoostedRegressor().fit(X, y)
    with registry.start_run("one_run", settings=settings):
        registry.log_and_register("one_run", model, X.head(5), "wape", 0.3, False, settings=settings)
        registry.log_and_register("one_run", model, X.head(5), "wape", 0.4, False, settings=settings)
    loaded = registry.load_champion("one_run", settings=settings)
    assert loaded.version == 1 and loaded.metrics["wape"] == pytest.approx(0.3)


def test_object_without_predict_round_trips(settings, data):
    X, _ = data
    result = registry.log_and_register("lookup", Lookup({"apparel": 0.3}), X.head(3), "wape", 0.2, False,
                                       settings=settings)  # no active run: opens its own
    assert result.promoted
    loaded = registry.load_champion("lookup", settings=settings)
    assert isinstance(loaded.model, Lookup) and loaded.model.table == {"apparel": 0.3}


def test_list_models_shows_versions_aliases_and_metrics(settings, data):
    X, y = data
    model = BoostedRegressor().fit(X, y)
    for value in (0.30, 0.35, 0.25):
        _register("listed", model, X, value, settings=settings)
    frame = registry.list_models(settings)
    assert list(frame.columns) == ["name", "version", "aliases", "created", "primary_metric", "value", "run_id"]
    listed = frame[frame["name"] == "listed"].set_index("version")
    assert sorted(listed.index) == [1, 2, 3]
    assert listed.loc[3, "aliases"] == "champion"
    assert listed.loc[1, "aliases"] == "" and listed.loc[2, "aliases"] == ""
    assert listed["value"].to_dict() == {3: pytest.approx(0.25), 2: pytest.approx(0.35), 1: pytest.approx(0.30)}
    assert set(listed["primary_metric"]) == {"holiday_wape"}
    assert listed["run_id"].nunique() == 3


def test_list_models_on_a_fresh_clone_is_empty_and_creates_nothing(tmp_path):
    fresh = Settings(models_dir=tmp_path / "models")
    frame = registry.list_models(fresh)
    assert frame.empty and "aliases" in frame.columns
    assert not (tmp_path / "models").exists()


def test_model_not_found_message(settings):
    with pytest.raises(registry.ModelNotFound) as err:
        registry.load_champion("return_volume_nowhere", settings=settings)
    msg = str(err.value)
    assert "no champion for 'return_volume_nowhere'" in msg
    assert settings.tracking_uri in msg
    assert "aftersales train return-volume-nowhere" in msg
    assert isinstance(err.value, LookupError)


def test_logging_helpers(settings, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlflow import MlflowClient

    with registry.start_run("helpers", run_name="logging", settings=settings, tags={"origin": 3}) as run:
        registry.log_params({"lags": [1, 7], "alpha": np.float64(0.5), "skip": None})
        registry.log_metrics({"wape": np.float32(0.25), "n": np.int64(4), "none": None, "nan": float("nan"),
                              "inf": math.inf})
        registry.log_metrics({"loss": 1.5}, step=3)
        fig, ax = plt.subplots()
        ax.plot([1, 2, 3])
        registry.log_figure(fig, "plots/backtest.png")
        assert not plt.fignum_exists(fig.number)  # closed
        registry.log_table(pd.DataFrame({"origin": ["2024-01-01"], "wape": [0.2]}), "tables/backtest.csv")
        registry.log_text("hello", "notes/readme.txt")
        (tmp_path / "card.md").write_text("# card")
        registry.log_artifact(tmp_path / "card.md", "cards")

    client = MlflowClient(settings.tracking_uri)
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FINISHED"
    assert client.get_experiment(got.info.experiment_id).name == "helpers"
    assert client.get_experiment(got.info.experiment_id).artifact_location.startswith(settings.artifact_root)
    assert got.data.tags["origin"] == "3"
    assert got.data.params == {"lags": "[1, 7]", "alpha": "0.5"}
    assert got.data.metrics == {"wape": pytest.approx(0.25), "n": 4.0, "loss": 1.5}
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [3]
    paths = {a.path for d in ("plots", "tables", "notes", "cards") for a in client.list_artifacts(run.info.run_id, d)}
    assert paths == {"plots/backtest.png", "tables/backtest.csv", "notes/readme.txt", "cards/card.md"}
    table = client.download_artifacts(run.info.run_id, "tables/backtest.csv", str(tmp_path))
    assert pd.read_csv(table).columns.tolist() == ["origin", "wape"]


def test_failed_run_is_marked_failed(settings):
    from mlflow import MlflowClient

    with pytest.raises(ValueError), registry.start_run("helpers", run_name="boom", settings=settings) as run:
        raise ValueError("boom")
    assert MlflowClient(settings.tracking_uri).get_run(run.info.run_id).info.status == "FAILED"


def test_import_does_no_work():
    code = "import sys, training.registry; sys.exit('mlflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def _card(metrics: pd.DataFrame) -> dict:
    from training.model_card import new_card

    data = {"folder": "/data/x", "first_day": "2024-01-01", "last_day": "2024-03-31", "days": 91,
            "tables": pd.DataFrame({"table": ["orders"], "rows_in": [10], "accepted": [9], "rejected": [1]}),
            "rejected": 1, "validated": True, "synthetic": False, "note": ""}
    card = new_card("Toy", "a number per row", "tests", data, "held-out later rows")
    card |= {"metrics": metrics, "slices": pd.DataFrame({"slice": ["holiday_window"], "rows": [3], "wape": [0.5]}),
             "not_applicable": {"guest accounts": "no accounts here."}, "limits": ["small", "toy"]}
    return card


def test_card_is_logged_written_and_set_as_description(settings, data):
    from mlflow import MlflowClient

    X, y = data
    model = BoostedRegressor().fit(X, y)
    metrics = pd.DataFrame({"metric": ["WAPE (`holiday_wape`)"], "model": [0.2], "baseline": [0.3]})
    first = _register("carded", model, X, 0.2, settings=settings, card=_card(metrics))
    second = _register("carded", model, X, 0.25, settings=settings, card=_card(metrics))
    assert first.card_path == settings.cards_dir / "carded" / "v1.md"
    text = second.card_path.read_text()
    assert text.startswith("# Model card: Toy — `carded` version 2")
    assert "**Not champion**" in text and "does not beat champion v1" in text
    assert "version 1 (holiday_wape 0.2000)" in text  # the champion after the gate
    assert "| WAPE (`holiday_wape`) | 0.2000 | 0.3000 |" in text
    assert "| holiday_window | 3 | 0.5000 |" in text and "guest accounts: not applicable" in text
    assert "| orders | 10 | 9 | 1 |" in text and "2024-01-01 to 2024-03-31 (91 days)" in text
    assert registry.load_card("carded", 2, settings) == (2, text)
    assert registry.load_card("carded", settings=settings)[0] == 1  # default: the champion's card
    mv = MlflowClient(settings.tracking_uri).get_model_version("carded", "2")
    assert mv.description == text and mv.tags[registry.TAG_CARD] == "model_card/v2.md"
    # A version registered without a card says so; an unknown version says how to list them.
    _register("carded", model, X, 0.3, settings=settings)
    with pytest.raises(registry.ModelNotFound, match="version 3 has no model card"):
        registry.load_card("carded", 3, settings)
    with pytest.raises(registry.ModelNotFound, match="no version 9 of 'carded'.*aftersales models"):
        registry.load_card("carded", 9, settings)
    with pytest.raises(registry.ModelNotFound, match="no registered versions of 'nothing_here'"):
        registry.load_card("nothing_here", settings=settings)


def test_long_card_description_is_cut_at_a_section():
    from training.model_card import summary

    text = "# Model card\n\n## A\n\n" + "a" * 3000 + "\n\n## B\n\n" + "b" * 3000 + "\n"
    cut = summary(text, limit=4800, pointer="`aftersales card x --version 1`")
    assert len(cut) <= 4800 and "## A" in cut and "## B" not in cut
    assert cut.endswith("_(cut; full card: `aftersales card x --version 1`)_\n")
    assert summary("short", limit=4800) == "short"
