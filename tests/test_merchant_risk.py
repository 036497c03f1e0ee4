"""Merchant risk training: metrics, the time split, the backtest against baselines, MLflow logging and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cardcheck import assert_card
from click.testing import CliRunner

from features.contract import load_dataset
from features.merchants import prepare_events, sort_ranking
from features.settings import Settings, get_settings
from training.cli import main
from training.merchant_risk import (
    BASELINES,
    MODELS,
    SNAPSHOT_COLUMNS,
    evaluate,
    lift_table,
    ndcg_at_k,
    ranking_metrics,
    snapshot_dates,
    split_dates,
)

WORLD = dict(seed=5, accounts=1500, merchants=50, start="2023-01-01", days=420, market="CN", progress=False)
ENV = {"AFTERSALES_MERCHANT_MIN_LABEL_ORDERS": "10"}


@pytest.fixture(scope="session")
def world(world_factory) -> Path:
    return world_factory(**WORLD)


@pytest.fixture(scope="session")
def events(world):
    return prepare_events(load_dataset(world))


@pytest.fixture(scope="session")
def settings(tmp_path_factory) -> Settings:
    return Settings(models_dir=tmp_path_factory.mktemp("mr_models"), merchant_min_label_orders=10)


@pytest.fixture(scope="session")
def bt(events, settings):
    return evaluate(events, settings, echo=lambda *_: None)


# --------------------------------------------------------------------------------------------------------------------
# Metrics


def test_ndcg_at_k():
    assert ndcg_at_k(np.array([3, 2, 1, 0]), 4) == pytest.approx(1.0)
    # grades [0, 2]: DCG = 3/log2(3); ideal = 3/log2(2)
    assert ndcg_at_k(np.array([0, 2]), 2) == pytest.approx((3 / np.log2(3)) / 3)
    assert ndcg_at_k(np.array([0, 1, 2]), 1) == 0.0
    assert np.isnan(ndcg_at_k(np.zeros(5), 3))  # nothing relevant: undefined, not 0 or 1


def test_ranking_metrics_perfect_and_reversed():
    n = 200
    frame = pd.DataFrame({"merchant_id": [f"M{i:03d}" for i in range(n)], "label_orders": 50,
                          "label_rate": np.linspace(0, 0.2, n)})
    frame["good"] = frame["label_rate"]
    frame["bad"] = -frame["label_rate"]
    good, bad = ranking_metrics(frame, "good", 20), ranking_metrics(frame, "bad", 20)
    assert good["ndcg_at_50"] == pytest.approx(1.0) and good["precision_at_decile"] == 1.0
    assert good["spearman"] == pytest.approx(1.0) and bad["spearman"] == pytest.approx(-1.0)
    assert bad["precision_at_decile"] == 0.0 and bad["ndcg_at_20"] < 0.1
    # Merchants under the minimum of label orders are left out of the metric.
    small = frame.assign(label_orders=np.where(frame.index % 2 == 0, 5, 50))
    assert ranking_metrics(small, "good", 20)["precision_at_decile"] == 1.0
    assert ranking_metrics(frame.head(5), "good", 20) == {}


# --------------------------------------------------------------------------------------------------------------------
# Time split and backtest


def test_snapshots_mature_and_training_labels_close_before_the_test(events, settings):
    dates = snapshot_dates(events, settings)
    horizon = pd.Timedelta(days=settings.merchant_horizon_days)
    assert dates[-1] + horizon <= events.end and dates[-1] + horizon > events.end - pd.Timedelta(days=14)
    assert (np.diff(dates) == pd.Timedelta(days=settings.merchant_snapshot_every_days)).all()
    train, test = split_dates(dates, settings)
    assert max(train) + horizon <= min(test)  # no label of a training snapshot reaches into test time
    assert len(test) == int(np.ceil(len(dates) * settings.merchant_test_fraction))


def test_backtest_beats_both_baselines_on_a_small_world(bt):
    s = bt.summary
    assert set(s.index) == {*MODELS, *BASELINES} and bt.chosen in MODELS
    best_base = s.loc[list(BASELINES)]
    assert s.loc[bt.chosen, "ndcg_at_50"] > best_base["ndcg_at_50"].max()
    assert s.loc[bt.chosen, "precision_at_decile"] > best_base["precision_at_decile"].max()
    # Evaluated only on snapshots later than every training label.
    assert bt.scored["as_of"].min() >= max(bt.train_dates) + pd.Timedelta(days=60)


def test_the_glm_ranks_and_the_validation_figures_are_reported(bt):
    from training.merchant_evaluation import DEFAULT_KIND

    assert bt.chosen == DEFAULT_KIND == "glm"
    val = bt.validation
    assert set(val) == set(MODELS)
    text = bt.choice_text()
    assert "The model kind is glm" in text
    assert all(f"{k} {v:.4f}" in text for k, v in val.items())
    # The model-or-baseline decision is on every held-out snapshot: the validation ones and the test ones.
    assert bt.n_validation >= 1 and set(bt.held_out) == {"glm", *BASELINES}
    assert f"({bt.n_validation} validation and {len(bt.test_dates)} test)" in bt.ranking_text()


def _per_snapshot(figures: dict[str, list[float]], start: str) -> pd.DataFrame:
    """evaluate_scores' per-snapshot frame for hand-picked NDCG@50 figures (one list entry per snapshot)."""
    days = pd.date_range(start, periods=len(next(iter(figures.values()))), freq="14D", tz="UTC")
    return pd.DataFrame([{"as_of": d, "method": m, "ndcg_at_50": v[i]} for m, v in figures.items()
                         for i, d in enumerate(days)])


def test_a_baseline_ranks_only_when_it_wins_over_validation_and_test_snapshots_together():
    from training.merchant_evaluation import served_method

    # Ahead by 0.025 on three test snapshots, behind by 0.06 on two validation snapshots: the model ranks.
    test = _per_snapshot({"glm": [0.50, 0.50, 0.50], "baseline_rate": [0.49] * 3, "baseline_count": [0.525] * 3},
                         "2024-09-01")
    val = _per_snapshot({"glm": [0.60, 0.61], "baseline_rate": [0.48, 0.49], "baseline_count": [0.54, 0.55]},
                        "2024-05-01")
    use, held = served_method(test, val, "glm")
    assert use == "model"
    assert held["glm"] == pytest.approx((0.5 * 3 + 0.6 + 0.61) / 5)
    assert held["baseline_count"] == pytest.approx((0.525 * 3 + 0.54 + 0.55) / 5)
    # Ahead on both: the count ranks. Without validation snapshots the test ones decide alone.
    val_lost = _per_snapshot({"glm": [0.50, 0.52], "baseline_rate": [0.4, 0.4], "baseline_count": [0.55, 0.56]},
                             "2024-05-01")
    assert served_method(test, val_lost, "glm")[0] == "baseline_count"
    assert served_method(test, pd.DataFrame(), "glm")[0] == "baseline_count"


def test_lift_rises_toward_the_riskiest_decile(bt, settings):
    lift = lift_table(bt.scored, [bt.chosen], settings.merchant_min_label_orders).set_index("decile")["lift"]
    assert lift.loc[10] > 1.5 and lift.loc[10] > lift.loc[1] * 2
    assert lift.loc[[8, 9, 10]].mean() > lift.loc[[1, 2, 3]].mean()


# --------------------------------------------------------------------------------------------------------------------
# CLI and MLflow


@pytest.fixture()
def cli_env(monkeypatch, tmp_path_factory):
    models = tmp_path_factory.mktemp("mr_cli_models")
    monkeypatch.setenv("AFTERSALES_MODELS_DIR", str(models))
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    yield models
    get_settings.cache_clear()


def test_cli_train_rank_evaluate(world, cli_env, tmp_path):
    runner = CliRunner()
    out = tmp_path / "ranking.csv"
    # Nothing registered yet: a clear message saying what to run.
    res = runner.invoke(main, ["rank-merchants", "--data", str(world), "--out", str(out)])
    assert res.exit_code != 0 and "aftersales train merchant-risk" in res.output

    res = runner.invoke(main, ["train", "merchant-risk", "--data", str(world)])
    assert res.exit_code == 0, res.output
    assert "ndcg@50 gain over best baseline" in res.output and "promoted: True" in res.output
    assert "The ranking uses: the model" in res.output  # the model beats the baselines here: it ranks
    from features import generations

    served = generations.served_dir(cli_env / "snapshots")
    snap = pd.read_parquet(served / "merchants.parquet")
    assert list(snap.columns) == SNAPSHOT_COLUMNS
    assert snap["merchant_risk_percentile"].max() == 1.0 and snap["merchant_id"].is_unique
    assert snap["merchant_risk_score"].is_monotonic_decreasing
    assert list((cli_env / "artifacts").rglob("lift.png")), "lift chart not logged"
    card = assert_card("merchant_risk", 1, get_settings(), promoted=True, metrics={
        "NDCG@50": ("ndcg_at_50", "blend_ndcg_at_50", "lambdarank_ndcg_at_50", "poisson_ndcg_at_50", "baseline_rate_ndcg_at_50",
                    "baseline_count_ndcg_at_50"),
        "precision at top decile": ("precision_at_decile", "baseline_rate_precision_at_decile")},
        slices=("new_merchant", "established_merchant", "holiday-heavy label window"))
    assert "guest accounts: not applicable" in card and "The ranking uses: the model" in card
    assert "The model kind " in card and "NDCG@50: glm " in card  # which kind ranks, and the figures it won on
    printed = runner.invoke(main, ["card", "merchant-risk", "--version", "1"])
    assert printed.exit_code == 0 and printed.output == card
    missing = runner.invoke(main, ["card", "merchant-risk", "--version", "7"])
    assert missing.exit_code != 0 and "no version 7" in missing.output

    res = runner.invoke(main, ["rank-merchants", "--data", str(world), "--as-of", "2023-11-30", "--out", str(out),
                               "--top", "10"])
    assert res.exit_code == 0, res.output
    assert "rows rejected" in res.output and (tmp_path / "rejects.csv").exists()
    ranking = pd.read_csv(out, keep_default_na=False)
    # An ad-hoc ranking (another as-of day) changes nothing served.
    assert generations.served_dir(cli_env / "snapshots") == served
    pd.testing.assert_frame_equal(pd.read_parquet(served / "merchants.parquet"), snap)
    assert len(ranking) == 10 and ranking["rank"].tolist() == list(range(1, 11))
    assert {"merchant_id", "score", "rank", "expected_complaints", "reasons", "flag"} <= set(ranking.columns)
    assert ranking["reasons"].str.len().min() > 10

    for bad in ("2022-12-31", "2030-01-01"):
        res = runner.invoke(main, ["rank-merchants", "--data", str(world), "--as-of", bad, "--out", str(out)])
        assert res.exit_code != 0 and "outside the data" in res.output

    res = runner.invoke(main, ["evaluate", "merchant-risk", "--data", str(world)])
    assert res.exit_code == 0, res.output
    assert "target NDCG@50" in res.output and "precision@decile" in res.output
    for m in ("blend", "lambdarank", "poisson", "baseline_rate", "baseline_count"):
        assert m in res.output


def test_train_refuses_data_without_complaints(world, cli_env, tmp_path):
    data = tmp_path / "no_tickets"
    data.mkdir()
    for table in ("orders", "returns"):
        (data / f"{table}.parquet").write_bytes((world / f"{table}.parquet").read_bytes())
    res = CliRunner().invoke(main, ["train", "merchant-risk", "--data", str(data)])
    assert res.exit_code != 0 and "no merchant complaints" in res.output and "tickets" in res.output


# --------------------------------------------------------------------------------------------------------------------
# Baselines are candidates


def test_a_baseline_mode_ranks_by_its_own_column_and_the_gate_scores_it(bt, events, settings, world):
    from features.merchants import MerchantRiskModel, build_features, build_snapshots
    from training.merchant_risk import gate_evidence

    assert bt.use == "model" and bt.served == bt.chosen  # the model wins on this world: it ranks
    snaps = build_snapshots(events, bt.train_dates, settings.merchant_horizon_days)
    model = MerchantRiskModel(kind="poisson", use="baseline_rate", n_estimators=20).fit(snaps)
    feats = build_features(events, events.end)
    np.testing.assert_array_equal(model.predict(feats), feats["baseline_rate"].to_numpy(float))
    ranking = model.rank(feats)
    assert ranking["merchant_id"].tolist() == sort_ranking(feats.reset_index(), "baseline_rate")["merchant_id"].tolist()
    assert ranking["reasons"].str.len().min() > 10  # reasons still come from the features
    with pytest.raises(ValueError, match="baseline_rate"):
        model.predict(feats.drop(columns=["baseline_rate"]))
    with pytest.raises(ValueError, match="use must be"):
        MerchantRiskModel(use="median").fit(snaps)
    # The gate re-scores such a champion on the same held-out rows: it scores exactly as the baseline did.
    ev = gate_evidence(bt, events, settings, world)
    challenger, champion, _ = ev.compare(model, None)
    assert challenger == pytest.approx(bt.summary.loc[bt.chosen, "ndcg_at_50"])
    assert champion == pytest.approx(bt.summary.loc["baseline_rate", "ndcg_at_50"])


def test_train_serves_the_baseline_when_it_beats_the_model(world, cli_env, monkeypatch):
    """The model is made to lose (its scores replaced by noise): the registered version ranks by the better
    baseline, the served snapshot follows it, MLflow and the card say so."""
    from mlflow import MlflowClient

    from features import generations
    from features.merchants import MerchantRiskModel, build_features
    from training import registry

    rng = np.random.default_rng(0)
    monkeypatch.setattr(MerchantRiskModel, "blend_parts", lambda self, X: rng.normal(size=(len(X), 2)))
    monkeypatch.setattr(MerchantRiskModel, "glm_rate", lambda self, X: rng.uniform(size=len(X)))
    res = CliRunner().invoke(main, ["train", "merchant-risk", "--data", str(world)])
    assert res.exit_code == 0, res.output
    assert "The ranking uses: last-60-day complaint" in res.output
    settings = get_settings()
    loaded = registry.load_champion("merchant_risk", settings=settings)
    use = loaded.model.use
    assert use in BASELINES
    ev = prepare_events(load_dataset(world))
    feats = build_features(ev, ev.end)
    np.testing.assert_array_equal(loaded.model.predict(feats), feats[use].to_numpy(float))
    snap = pd.read_parquet(generations.served_dir(cli_env / "snapshots") / "merchants.parquet")
    expected = sort_ranking(feats.reset_index(), use)["merchant_id"].tolist()
    assert snap["merchant_id"].tolist() == expected
    run = MlflowClient(settings.tracking_uri).get_run(loaded.run_id).data
    assert run.tags["ranking_uses"] == use and run.params["ranking_uses"] == use
    # What ranks is what the version's figures are: the baseline's, above the (noise) model's.
    assert loaded.metrics["ndcg_at_50"] == pytest.approx(run.metrics[f"{use}_ndcg_at_50"])
    assert run.metrics[f"{use}_ndcg_at_50"] > run.metrics[f"{run.params['chosen']}_ndcg_at_50"]
    card = (settings.cards_dir / "merchant_risk" / "v1.md").read_text()
    assert f"The ranking uses: last-60-day complaint {use.split('_')[1]} (`{use}`), because on the held-out" in card


def test_merchant_route_serves_the_merchant_models_rates_not_the_ticket_models(deployment_shared):
    """Both the merchant ranking and the ticket model's merchant snapshot describe each merchant's late deliveries and
    complaints, and the service joins the two files on merchant_id (a later file's columns win where names clash):
    ``/v1/merchants/risk`` must show the merchant model's figures, not the ticket model's (issue 19)."""
    from serving.runtime import Runtime

    settings = deployment_shared["settings"]
    rt = Runtime.load(settings)
    try:
        served = pd.DataFrame([m.model_dump() for m in rt.merchants(100_000).merchants])
    finally:
        rt.close()
    # The deployment's merchant ranking was written with these figures (tests/_service.py).
    np.testing.assert_allclose(served["late_delivery_rate"], served["score"] / 4)
    np.testing.assert_allclose(served["complaint_rate_90d"], served["score"] / 50)
    # The ticket model's merchant snapshot is there too, with its own (different) figures for the same merchants.
    files = sorted(settings.snapshots_dir.rglob("ticket_triage_merchants.parquet"))
    assert files, "the deployment has no ticket-model merchant snapshot: the test would prove nothing"
    ticket = pd.read_parquet(files[-1])
    ticket = ticket.set_index("merchant_id") if "merchant_id" in ticket.columns else ticket
    rates = [c for c in ticket.columns if c.endswith("late_delivery_rate")]
    assert rates
    both = served.set_index("merchant_id").join(ticket[rates[0]].rename("ticket_rate"), how="inner")
    assert len(both) > 10 and not np.allclose(both["ticket_rate"].astype(float), both["late_delivery_rate"])
