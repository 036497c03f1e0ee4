"""Ticket triage training: time split, beating the case-type baseline, calibration, MLflow registration, CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cardcheck import assert_card
from click.testing import CliRunner

from features import generations
from features.contract import load_dataset
from features.live_counts import counter_from_snapshot, fill_frame, fill_one
from features.settings import Settings
from features.tickets import (
    FEATURES,
    SNAPSHOT_FILES,
    CalendarTable,
    TicketTriageModel,
    as_served,
    build_training_features,
    feature_snapshots,
)
from training import registry
from training.cli import main
from training.ticket_triage import (
    CaseTypeBaseline,
    evaluate,
    measure_latency,
    reliability_table,
    serving_path_check,
    time_split,
)

WORLD = dict(seed=5, accounts=2000, merchants=60, start="2023-06-01", days=400, market="CN", progress=False)


@pytest.fixture(scope="session")
def world(world_factory) -> Path:
    return world_factory(**WORLD)


@pytest.fixture(scope="session")
def feats(world):
    return build_training_features(load_dataset(world), CalendarTable("CN", first_year=2023, last_year=2025))


@pytest.fixture(scope="session")
def evaluation(feats):
    return evaluate(feats, Settings(), echo=lambda *_: None)


def test_time_split_trains_on_earlier_tickets_and_counts_unlabelled(feats):
    meta = feats.meta
    split = time_split(meta, test_fraction=0.25)
    created, resolved = meta["created_at"], meta["resolved_at"]
    assert created.iloc[split.train].max() < split.cutoff <= created.iloc[split.test].min()
    assert (resolved.iloc[split.train] < split.cutoff).all()  # outcomes known at the cut-off
    assert meta["escalated"].iloc[np.concatenate([split.train, split.test])].notna().all()
    assert split.n_unlabelled == int(meta["escalated"].isna().sum()) > 0
    assert split.n_label_after_cutoff > 0  # cases open at the cut-off are left out, not leaked
    n_lab = int(meta["escalated"].notna().sum())
    assert len(split.train) + len(split.test) + split.n_label_after_cutoff == n_lab
    assert len(split.test) == pytest.approx(0.25 * n_lab, rel=0.02)
    with pytest.raises(ValueError, match="test_fraction"):
        time_split(meta, 0.95)


def test_model_beats_the_case_type_baseline(evaluation):
    m = evaluation.metrics
    assert m["roc_auc"] - m["baseline_roc_auc"] >= 0.05
    assert m["pr_auc"] > m["baseline_pr_auc"] and m["brier"] < m["baseline_brier"]
    assert m["test_tickets"] > 500 and m["train_tickets"] > 2 * m["test_tickets"]


def test_probabilities_are_calibrated(evaluation):
    m, rel = evaluation.metrics, evaluation.reliability
    assert abs(m["mean_predicted"] - m["test_escalation_rate"]) < 0.04
    assert m["ece"] < 0.05
    assert rel["observed_rate"].iloc[-1] > 4 * max(rel["observed_rate"].iloc[0], 0.01)  # it separates
    assert rel["tickets"].sum() == m["test_tickets"]
    assert evaluation.figure.axes and evaluation.slices["slice"].str.startswith("case_type=").sum() >= 5


def test_calibration_keeps_the_boosters_ranking(evaluation, feats):
    """The calibration map is strictly increasing between its first and last points (centred isotonic regression):
    later tickets the booster ranks apart inside that range get different probabilities, in the booster's order, so
    the calibrated ROC-AUC is the booster's own (no plateaus of tied probabilities)."""
    from sklearn.metrics import roc_auc_score

    model = evaluation.model
    assert (np.diff(model.cal_x_) > 0).all() and (np.diff(model.cal_y_) > 0).all()
    te = evaluation.split.test
    margin = model.predict_margin(feats.X.iloc[te])
    p = model.predict(feats.X.iloc[te])
    inside = (margin > model.cal_x_[0]) & (margin < model.cal_x_[-1])
    assert inside.mean() > 0.5
    assert len(np.unique(p[inside])) == len(np.unique(margin[inside]))
    y = feats.meta["escalated"].iloc[te].astype(bool).to_numpy()
    assert roc_auc_score(y[inside], p[inside]) == pytest.approx(roc_auc_score(y[inside], margin[inside]), abs=1e-12)


def test_serving_path_scores_like_the_training_path(world, feats, evaluation):
    """Scored from snapshots taken at the cut-off (as the service holds them), later tickets get nearly the
    probabilities the point-in-time training features give: the skew is only what a stale snapshot misses."""
    check = serving_path_check(evaluation.model, load_dataset(world), feats, evaluation.split.cutoff, days=14)
    assert check["serving_check_tickets"] >= 50
    assert check["serving_check_mean_abs_diff"] < 0.06
    # Most of what a stale snapshot misses is the latest contacts and the order's news (the return just requested):
    # when the ticket carries them, the gap shrinks.
    assert check["serving_check_live_fields_mean_abs_diff"] < 0.7 * check["serving_check_mean_abs_diff"]


def test_fresh_snapshots_give_exactly_the_training_features(world, feats, evaluation):
    """A snapshot taken at the ticket's creation instant holds exactly what training saw: no skew by design."""
    ds = load_dataset(world)
    meta = feats.meta
    picks = meta.index[(meta["created_at"] > evaluation.split.cutoff) & meta["account_id"].notna()
                       & meta["order_id"].notna()][::40][:12]
    assert len(picks) >= 8
    for i in picks:
        t = ds.tickets[ds.tickets["ticket_id"] == meta.at[i, "ticket_id"]].drop(columns=["escalated", "resolved_at"])
        snaps = feature_snapshots(ds, meta.at[i, "created_at"])
        t = fill_frame(t, counter_from_snapshot(snaps["recent"], meta.at[i, "created_at"]))  # the live counts
        X, flags = evaluation.model.features_batch(t, snaps["accounts"], snaps["merchants"], snaps["orders"])
        expected = feats.X.loc[i, list(FEATURES)].to_numpy(dtype=float, copy=True)
        expected[TEXT] = evaluation.model.text_scorer_.score_one(feats.X.at[i, "text"])
        assert np.array_equal(X[0], expected, equal_nan=True), meta.at[i, "ticket_id"]
        assert not flags["order_context_missing"].iloc[0]


TEXT = FEATURES.index("text_score")

# The columns the service keeps live (features.live_counts): equal to the training features for every ticket of the
# week after a snapshot (the refresh week), not only at the snapshot's instant.
LIVE_COLUMNS = ("prior_tickets_30d", "acct_tickets_365d", "tickets_last_24h", "load_ratio_24h")


def test_refresh_week_tickets_get_their_point_in_time_live_columns(world, feats, evaluation):
    """A snapshot taken two weeks before the data ends (as refresh-features writes it), then the week after it
    served one ticket at a time and in a batch, as the service does: the load, the account's contacts in 30 days and
    its tickets in 365 days (the snapshot's value plus the live change: tickets since, less those that left the year)
    equal the offline point-in-time features; the ticket's own columns too."""
    from features.live_counts import YEAR_CHANGE

    ds = load_dataset(world)
    model = evaluation.model
    at = ds.tickets["created_at"].max().floor("D") - pd.Timedelta(days=14) + pd.Timedelta(hours=9)
    snaps = feature_snapshots(ds, at)
    tk = ds.tickets.sort_values(["created_at", "ticket_id"], kind="stable")
    week = tk[(tk["created_at"] >= at) & (tk["created_at"] < at + pd.Timedelta(days=7))]
    week = week.drop(columns=["escalated", "resolved_at"]).reset_index(drop=True)
    assert len(week) > 50
    filled = fill_frame(week, counter_from_snapshot(snaps["recent"], at))
    X, _ = model.features_batch(filled, snaps["accounts"], snaps["merchants"], snaps["orders"])
    pos = pd.Series(np.arange(len(feats.meta)), index=feats.meta["ticket_id"].to_numpy())
    offline = feats.X[list(FEATURES)].iloc[pos.loc[week["ticket_id"]].to_numpy()].to_numpy(dtype=float)
    own = [FEATURES.index(c) for c in ("case_type", "channel", "amount", "has_order", "hour", "dow", "text_len",
                                       "n_exclaim")]
    for c in (*LIVE_COLUMNS, *(FEATURES[j] for j in own)):
        j = FEATURES.index(c)
        assert np.array_equal(X[:, j], offline[:, j], equal_nan=True), c
    # Teeth: the snapshot's own year count is stale for some of these accounts, in both directions.
    snap_year = snaps["accounts"].set_index("account_id")["acct_tickets_365d"].reindex(week["account_id"]).to_numpy()
    j = FEATURES.index("acct_tickets_365d")
    known = ~np.isnan(snap_year)
    assert (offline[known, j] != snap_year[known]).sum() >= 5
    assert (filled[YEAR_CHANGE].dropna() != 0).sum() >= 3  # the live change at work
    # One ticket at a time (the single-ticket endpoint's path) scores the same as the batch.
    counter = counter_from_snapshot(snaps["recent"], at)
    acc = snaps["accounts"].set_index("account_id").astype(object)
    mer = snaps["merchants"].set_index("merchant_id").astype(object)
    orders = snaps["orders"].set_index("order_id").astype(object)
    p_batch = model.score_batch(filled, snaps["accounts"], snaps["merchants"], snaps["orders"])
    for i, row in enumerate(week.astype(object).where(week.notna(), None).to_dict("records")):
        one = fill_one(row, counter)
        a, m, o = (f.loc[k].where(f.loc[k].notna(), None).to_dict() if k is not None and k in f.index else None
                   for f, k in ((acc, row["account_id"]), (mer, row["merchant_id"]), (orders, row["order_id"])))
        p = model.score_one(one, a, m, o)["escalation_probability"]
        assert p == pytest.approx(p_batch["escalation_probability"].iloc[i], abs=1e-9), row["ticket_id"]


def test_as_served_rows_are_what_the_service_computes_from_an_older_snapshot(world, feats, evaluation):
    """Training rows seen "as served" equal the service's features from a snapshot taken that long before the
    ticket (orders placed since have no context, history stops at the snapshot); at age 0 they are the training
    rows themselves."""
    ds = load_dataset(world)
    meta = feats.meta
    picks = np.flatnonzero(((meta["created_at"] > evaluation.split.cutoff) & meta["order_id"].notna()).to_numpy())
    picks = picks[::60][:10]
    cal = evaluation.model.calendar_
    same = as_served(ds, feats, picks, np.zeros(len(picks)), cal)
    pd.testing.assert_frame_equal(same, feats.X.iloc[picks], check_exact=True)
    lags = np.array([1 / 24, 2.0, 6.0, 15.0, 40.0, 3.0, 9.0, 20.0, 0.5, 60.0])[:len(picks)]
    served = as_served(ds, feats, picks, lags, cal)
    newer_order = 0
    for k, i in enumerate(picks):
        t = ds.tickets[ds.tickets["ticket_id"] == meta.at[i, "ticket_id"]].drop(columns=["escalated", "resolved_at"])
        snap_at = meta.at[i, "created_at"] - pd.Timedelta(days=lags[k])
        snaps = feature_snapshots(ds, snap_at)
        # The service's live counter: seeded from the snapshot, then it saw every ticket created since.
        counter = counter_from_snapshot(snaps["recent"], snap_at)
        since = ds.tickets[(ds.tickets["created_at"] >= snap_at) & (ds.tickets["created_at"] < t["created_at"].iloc[0])]
        fill_frame(since, counter)
        X, flags = evaluation.model.features_batch(fill_frame(t, counter), snaps["accounts"], snaps["merchants"],
                                                   snaps["orders"])
        expected = served[list(FEATURES)].iloc[k].to_numpy(dtype=float, copy=True)
        expected[TEXT] = X[0, TEXT]
        assert np.array_equal(X[0], expected, equal_nan=True), (meta.at[i, "ticket_id"], lags[k])
        newer_order += bool(flags["order_context_missing"].iloc[0])
    assert newer_order >= 1  # the test has teeth: some orders were placed after their snapshot


def test_reliability_table_and_baseline_by_hand():
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    rel = reliability_table(y, p, bins=2)
    assert rel["tickets"].tolist() == [3, 3]
    assert rel["observed_rate"].tolist() == pytest.approx([1 / 3, 2 / 3])
    base = CaseTypeBaseline().fit(pd.Series(["refund", "refund", "complaint"]), np.array([0.0, 1.0, 1.0]))
    assert base.predict(pd.Series(["complaint", "refund", "inquiry"])).tolist() == pytest.approx([1.0, 0.5, 2 / 3])


def test_latency_measurement_runs_on_the_serving_path(world, evaluation, tmp_path):
    from features.tickets import data_end, feature_snapshots

    ds = load_dataset(world)
    for name, frame in feature_snapshots(ds, data_end(ds)).items():
        frame.to_parquet(tmp_path / SNAPSHOT_FILES[name], index=False)
    lat = measure_latency(evaluation.model, ds, tmp_path, n_calls=300, n_batch=1000)
    assert 0 < lat["score_one_us"] < 50_000 and 0 < lat["score_batch_10k_s"] < 30


@pytest.fixture()
def models_dir(cli_settings) -> Path:
    return cli_settings.models_dir


def test_cli_train_registers_and_evaluate_reports(world, models_dir):
    res = CliRunner().invoke(main, ["train", "ticket-triage", "--data", str(world)])
    assert res.exit_code == 0, res.output
    assert "vs case-type baseline" in res.output and "promoted: True" in res.output
    assert "0 rows rejected" in res.output and (models_dir / "ticket_triage" / "rejects.csv").exists()
    settings = Settings(models_dir=models_dir)
    loaded = registry.load_champion("ticket_triage", settings=settings)
    assert loaded.version == 1 and isinstance(loaded.model, TicketTriageModel)
    assert loaded.metrics["roc_auc"] > loaded.metrics["baseline_roc_auc"] + 0.05
    served = generations.served_dir(settings.snapshots_dir)  # the promotion made a generation and serves it
    assert served != settings.snapshots_dir and all((served / f).exists() for f in SNAPSHOT_FILES.values())
    card = assert_card("ticket_triage", 1, settings, promoted=True, metrics={
        "ROC-AUC": ("roc_auc", "baseline_roc_auc", "uncalibrated_roc_auc"), "Brier score": ("brier", "baseline_brier"),
        "expected calibration error": ("ece", "baseline_ece")},
        slices=("holiday_window", "outside_holiday_windows", "new_merchant", "established_merchant", "guest",
                "registered"))
    assert "Time split at" in card
    assert list(models_dir.rglob("calibration.png"))  # the plot went to MLflow's artifact store
    # The refitted champion scores a ticket through the hot path.
    out = loaded.model.score_one({"ticket_id": "T", "created_at": "2024-07-05T10:00:00Z", "case_type": "complaint",
                                  "channel": "phone", "account_id": None, "text": "Worst service ever!"})
    assert 0.0 <= out["escalation_probability"] <= 1.0 and out["guest"]

    res = CliRunner().invoke(main, ["evaluate", "ticket-triage", "--data", str(world), "--no-latency"])
    assert res.exit_code == 0, res.output
    assert "reliability" in res.output and "ROC-AUC" in res.output and "slices" in res.output


def test_cli_without_tickets_says_what_to_do(world, tmp_path, models_dir):
    data = tmp_path / "no_tickets"
    data.mkdir()
    for name in ("orders.parquet", "returns.parquet"):
        shutil.copy(world / name, data / name)
    res = CliRunner().invoke(main, ["train", "ticket-triage", "--data", str(data)])
    assert res.exit_code != 0 and "no tickets table" in res.output
