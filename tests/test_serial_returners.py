"""Serial-returner training and evaluation: baselines on later time, feedback simulation, CLI commands, training run."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cardcheck import assert_card
from click.testing import CliRunner

from features.accounts import baseline_score, blend_parts
from features.contract import load_dataset
from features.reviews import record_decision
from features.settings import Settings
from training import serial_returners as sr


@pytest.fixture(scope="session")
def world(world_factory) -> Path:
    return world_factory(seed=5, accounts=3000, merchants=50, days=540, start="2023-01-01")


@pytest.fixture(scope="session")
def ds(world):
    return load_dataset(world)


@pytest.fixture(scope="session")
def evaluation(world, ds, tmp_path_factory):
    settings = Settings(models_dir=tmp_path_factory.mktemp("sr_eval_models"))
    t1, t2 = sr.default_split(ds, settings)
    return sr.evaluate_on_truth(ds, sr._truth(world), t1, t2, settings, capacity=25, feedback=False)


def test_evaluation_is_on_later_time_and_leaves_learnt_accounts_out(evaluation, ds):
    t1, t2 = pd.Timestamp(evaluation.params["t1"]), pd.Timestamp(evaluation.params["t2"])
    assert t1 < t2
    # The world's prior decisions are enough labels; the supervised model is used only if it beats the cold start
    # on held-out decisions.
    g = evaluation.model.gate_
    assert g["heldout_decisions"] >= 10
    assert evaluation.params["mode"] == ("supervised" if g["auc_supervised"] > g["auc_cold_start"] else "cold_start")
    decided = set(ds.review_decisions["account_id"])
    assert not decided & set(evaluation.queue["account_id"])


def test_slices_partition_the_evaluated_accounts(evaluation):
    sl = evaluation.slices.set_index("slice")
    total = sl.loc["all accounts"]
    assert total["accounts"] == evaluation.params["n_eval_accounts"]
    assert total["abusers"] == evaluation.params["n_eval_positives"]
    assert total["pr_auc_model"] == pytest.approx(evaluation.metrics.loc["model", "pr_auc"])
    for a, b in (("new_account", "established_account"), ("returned_in_holiday_window", "no_holiday_returns")):
        assert sl.loc[a, "accounts"] + sl.loc[b, "accounts"] == total["accounts"]
        assert sl.loc[a, "abusers"] + sl.loc[b, "abusers"] == total["abusers"]
        assert min(sl.loc[a, "accounts"], sl.loc[b, "accounts"]) > 0


def test_forward_check_without_truth_has_proxy_slices_and_card(world, ds, tmp_path):
    """Data without ground truth: the forward check's slices use the proxy label, and the card says it is one."""
    from training.model_card import render

    settings = Settings(models_dir=tmp_path / "models")
    fw = sr.evaluate_forward(ds, "2024-03-01", settings, top=25)
    sl = fw["slices"].set_index("slice")
    assert sl.loc["all accounts", "heavy_returners"] == fw["heavy_accounts"] > 0
    assert sl.loc["all accounts", "pr_auc_model"] == pytest.approx(fw["table"].loc["model", "pr_auc"])
    assert sl.loc["new_account", "accounts"] + sl.loc["established_account", "accounts"] == fw["accounts"]
    card = sr.model_card(ds, world, settings, fw["model"], 25, fw=fw)
    text = render(card, sr.MODEL_NAME, 1, promoted=True, reason="promoted: no champion yet", champion_version=1,
                  champion_value=0.3, primary_metric="pr_auc", higher_is_better=True)
    assert "forward check" in text and "a proxy" in text and "| new_account |" in text
    assert f"(`model_pr_auc`) | {fw['table'].loc['model', 'pr_auc']:.4f} |" in text


def test_model_beats_both_baselines(evaluation):
    m = evaluation.metrics
    assert set(m.index) == {"model", "cold_start", "rule", "rate_rule", "most_returns", "if_counts"}
    assert m.loc["model", "pr_auc"] >= m.loc["if_counts", "pr_auc"] + 0.15
    assert m.loc["model", "pr_auc"] > m.loc["rule", "pr_auc"]
    assert m.loc["cold_start", "pr_auc"] > m.loc["rate_rule", "pr_auc"]
    assert 0 <= m.loc["model", "recall_at_1pct_fpr"] <= 1
    assert m.loc["model", "precision_at_capacity"] >= 0.6


def test_baselines_are_candidates_and_the_winner_is_what_the_model_ranks_by(evaluation, ds, tmp_path):


    table = pd.DataFrame({"precision": [0.5, 0.7, 0.6, 0.1, 0.2]},
                         index=["model", "rate_rule", "most_returns", "rule", "if_counts"])
    method, evidence = sr.choose_method(table, "precision")
    assert method == "rate_rule" and "rate_rule 0.700" in evidence
    table.loc["model", "precision"] = 0.7
    assert sr.choose_method(table, "precision")[0] == "model"  # the model keeps ties
    settings = Settings(models_dir=tmp_path / "models")
    X = sr.features_as_of(ds, evaluation.params["t2"], settings)
    for name in ("rate_rule", "most_returns", "if_counts"):
        m = copy.deepcopy(evaluation.model).use(name, X, evidence="test")
        s = m.predict(X)
        assert ((s >= 0) & (s <= 1)).all()
        ref = baseline_score(name, X, forest=getattr(m, "forest_", None))
        # The model object ranks exactly as the baseline does: the queue, flag-accounts and the snapshot follow.
        assert np.array_equal(np.argsort(-s, kind="stable")[:50], np.argsort(-ref, kind="stable")[:50])
    with pytest.raises(ValueError, match="unknown method"):
        copy.deepcopy(evaluation.model).use("coin_flip")


def test_every_pattern_is_found_in_the_queue(evaluation):
    found = {p: evaluation.queue_metrics[f"queue_found_{p}"] for p in sr.PATTERNS}
    assert all(n > 0 for n in found.values()), found
    lines = sr.target_lines(evaluation)
    assert lines[0].startswith("PR-AUC model") and lines[0].endswith("PASS")


def test_feedback_never_worsens_the_ranking_and_the_gate_follows_held_out_decisions(world, ds, tmp_path):
    settings = Settings(models_dir=tmp_path / "models")
    t1, t2 = sr.default_split(ds, settings)
    X1, X2 = sr.features_as_of(ds, t1, settings), sr.features_as_of(ds, t2, settings)
    fb = sr.feedback_simulation(X1, X2, sr._truth(world), t1, t2, settings, checkpoints=(50, 100, 150),
                                round_size=25)
    assert fb["reviewed"].tolist() == [50, 100, 150]
    # The gate keeps the cold start until held-out decisions show the supervised model ranks better. Where it
    # switches, the held-out decisions preferred the learnt ranking, and on the truth it is not worse by more than
    # what a hundred decisions can resolve (on this world, since the claims weighed by their parcels' lateness, the
    # gate switched at 100 decisions on held-out AUC 0.974 against 0.964 and the truth's PR-AUC read 0.314 against
    # the cold start's 0.321). By 150 decisions the gate has a verdict: the learnt ranking where the held-out
    # decisions prefer it (and then it ranks better on the truth too), else the cold start, kept because they ranked
    # it at least as well.
    switched = fb[fb["mode"] == "supervised"]
    assert (switched["gate_auc_supervised"] > switched["gate_auc_cold_start"]).all(), fb
    assert (fb["gain"] >= -0.01).all(), fb
    last = fb.iloc[-1]
    assert last["status"] != "too_few_decisions", fb
    if last["mode"] == "supervised":
        assert last["gain"] > 0 and last["precision_gain"] >= 0, fb
    else:
        assert last["status"] == "held_out_kept_cold_start", fb
        assert last["gate_auc_cold_start"] >= last["gate_auc_supervised"], fb
    assert (fb.loc[fb["mode"] == "cold_start", "gain"] == 0).all(), fb
    # The simulated reviews are the queue as a team reviews it: its audit sample included, whose decisions are the
    # cleared accounts the top of the queue rarely holds.
    assert (fb["audit_reviewed"] > 0).all() and (fb["cleared"] == fb["reviewed"] - fb["positives"]).all(), fb
    assert fb["audit_cleared"].iloc[-1] > 0, fb
    for row in fb.to_dict("records"):
        line = sr.feedback_line(row)
        if row["mode"] == "cold_start":  # the same ranking twice: nothing to pass or fail
            assert "keeps the cold start" in line and not line.endswith(("PASS", "FAIL")), line
        else:
            assert line.endswith("PASS" if row["gain"] > 0 else "FAIL"), line


def _feedback_row(positives: int, cleared: int, status: str, **kw) -> dict:
    row = {"reviewed": positives + cleared, "positives": positives, "cleared": cleared, "audit_reviewed": 10,
           "audit_cleared": 1, "mode": "supervised" if status == "supervised" else "cold_start", "status": status,
           "gate_auc_supervised": float("nan"), "gate_auc_cold_start": float("nan"), "pr_auc_supervised": 0.5,
           "pr_auc_cold_start": 0.5, "gain": 0.0}
    return {**row, **kw}


def test_feedback_line_says_why_the_queue_keeps_the_cold_start():
    """A queue whose 200 decisions hold a handful of cleared accounts keeps the cold start: the line says so, why,
    and what would help, instead of a FAIL; PASS/FAIL only where a learnt ranking was compared with the cold start."""
    line = sr.feedback_line(_feedback_row(198, 2, "too_few_decisions"), min_labels=30, min_per_class=3)
    assert "198 confirmed, 2 cleared" in line and "keeps the cold start" in line
    assert "only 2 cleared accounts, too few to learn from" in line and "audit sample" in line
    assert "PASS" not in line and "FAIL" not in line
    line = sr.feedback_line(_feedback_row(20, 0, "too_few_decisions"), min_labels=30)
    assert "too few decisions to learn from (20 < 30)" in line
    line = sr.feedback_line(_feedback_row(196, 4, "held_out_kept_cold_start", gate_auc_supervised=0.61,
                                          gate_auc_cold_start=0.70))
    assert "ROC-AUC learnt 0.610 vs cold start 0.700" in line and "rests on only 4 cleared accounts" in line
    assert "audit sample" in line and "PASS" not in line and "FAIL" not in line
    line = sr.feedback_line(_feedback_row(5, 195, "held_out_kept_cold_start", gate_auc_supervised=0.6,
                                          gate_auc_cold_start=0.7))
    assert "only 5 confirmed" in line and "top of the queue" in line
    line = sr.feedback_line(_feedback_row(120, 80, "held_out_kept_cold_start", gate_auc_supervised=0.6,
                                          gate_auc_cold_start=0.7))
    assert "rests on only" not in line and "more decisions" in line
    assert sr.feedback_line(_feedback_row(150, 50, "supervised", gain=0.03)).endswith("(+0.030) PASS")
    assert sr.feedback_line(_feedback_row(150, 50, "supervised", gain=-0.02)).endswith("(-0.020) FAIL")


def test_decisions_in_the_store_feed_training(ds, tmp_path):
    settings = Settings(models_dir=tmp_path / "models")
    before = sr.load_labels(ds, settings)
    known = set(ds.orders["account_id"].dropna())
    new = sorted(known - set(before["account_id"]))[:3]
    for a in new:
        record_decision(a, "confirmed_abuse", "li.wei", known_accounts=known, settings=settings)
    after = sr.load_labels(ds, settings)
    assert len(after) == len(before) + 3
    assert after.set_index("account_id").loc[new, "label"].eq(1).all()


def test_flag_accounts_cli_writes_the_queue_only(world, ds, cli_settings, tmp_path):
    from training.cli import main

    out = tmp_path / "queue.csv"
    as_of = str((ds.time_span()[1] - pd.Timedelta(days=30)).date())
    res = CliRunner().invoke(main, ["flag-accounts", "--data", str(world), "--as-of", as_of, "--capacity", "15",
                                    "--out", str(out), "--model", "fit"])
    assert res.exit_code == 0, res.output
    q = pd.read_csv(out)
    assert list(q.columns[:5]) == ["account_id", "score", "rank", "reasons", "likely_pattern"]
    assert len(q) == 15 and q["account_id"].notna().all() and q["rank"].tolist() == list(range(1, 16))
    assert q["reasons"].str.len().gt(0).all()
    # An ad-hoc queue changes nothing the service serves (only a promotion or refresh-features does).
    assert not (cli_settings.snapshots_dir / "accounts.parquet").exists()
    assert not (cli_settings.snapshots_dir / "CURRENT").exists()
    assert "rows rejected" in res.output


def test_flag_accounts_refuses_as_of_outside_the_data(world, ds, cli_settings, tmp_path):
    from training.cli import main

    first, last = ds.time_span()
    for day, message in ((first - pd.Timedelta(days=3), "before the data starts"),
                         (last + pd.Timedelta(days=3), "after the data ends")):
        res = CliRunner().invoke(main, ["flag-accounts", "--data", str(world), "--as-of", str(day.date()),
                                        "--out", str(tmp_path / "q.csv")])
        assert res.exit_code != 0 and message in res.output, res.output


def test_review_cli_record_list_import(world, ds, cli_settings, tmp_path):
    from training.cli import main

    runner = CliRunner()
    account = ds.orders["account_id"].dropna().iloc[0]
    ok = runner.invoke(main, ["review", "record", "--account", account, "--decision", "cleared", "--reviewer",
                              "li.wei", "--note", "bracketer", "--data", str(world)])
    assert ok.exit_code == 0 and "recorded" in ok.output, ok.output
    bad = runner.invoke(main, ["review", "record", "--account", "NOBODY", "--decision", "cleared", "--reviewer",
                               "li.wei", "--data", str(world)])
    assert bad.exit_code != 0 and "unknown account 'NOBODY'" in bad.output
    bad = runner.invoke(main, ["review", "record", "--account", account, "--decision", "fraud", "--reviewer", "x",
                               "--data", str(world)])
    assert bad.exit_code != 0 and "unknown decision 'fraud'" in bad.output
    listed = runner.invoke(main, ["review", "list"])
    assert account in listed.output and "1 decisions" in listed.output
    path = tmp_path / "review_decisions.csv"
    table = ds.review_decisions.head(6).copy()
    table.loc[len(table)] = ["GHOST", "maybe", table["decided_at"].iloc[0], "li.wei", None]  # breaks the contract
    table.to_csv(path, index=False)
    first = runner.invoke(main, ["review", "import", str(path), "--data", str(world)])
    assert first.exit_code == 0 and "stored 6" in first.output and "1 rejected" in first.output, first.output
    again = runner.invoke(main, ["review", "import", str(path), "--data", str(world)])
    assert "stored 0, already present 6" in again.output


def test_evaluate_cli_prints_targets(world, cli_settings):
    from training.cli import main

    res = CliRunner().invoke(main, ["evaluate", "serial-returners", "--data", str(world), "--capacity", "25",
                                    "--no-feedback", "--no-mlflow"])
    assert res.exit_code == 0, res.output
    assert "targets:" in res.output and "IsolationForest-on-counts" in res.output
    bad = CliRunner().invoke(main, ["evaluate", "serial-returners", "--data", str(world), "--as-of", "2001-01-01",
                                    "--no-mlflow"])
    assert bad.exit_code != 0 and "before the data starts" in bad.output


@pytest.mark.slow
def test_train_registers_and_writes_the_serving_snapshot(world, cli_settings):
    summary = sr.train(world, cli_settings)
    assert summary["version"] == 1 and summary["promoted"] is True
    assert summary["queue_method"] in sr.CANDIDATES
    assert summary["pr_auc"] > summary["pr_auc_if_counts"]
    from features import generations
    from training import registry

    loaded = registry.load_champion(sr.MODEL_NAME, settings=cli_settings)
    assert loaded.model.method_ == summary["queue_method"]  # the artifact carries the queue's choice
    snap = pd.read_parquet(generations.served_dir(cli_settings.snapshots_dir) / "accounts.parquet")
    assert {"account_id", "abuse_score", "abuse_percentile", "likely_pattern", "top_reason", "returns_30d",
            "return_rate_90d", "refund_without_return_90d", "link_group_size"} <= set(snap.columns)
    assert generations.current_manifest(cli_settings.snapshots_dir)["models"][sr.MODEL_NAME]["version"] == 1
    X = sr.features_as_of(load_dataset(world), snap["as_of"].iloc[0], cli_settings)
    scores = pd.Series(loaded.model.predict(X), index=X.index)
    # Serving loads the object training fitted: its scores are the snapshot's.
    pd.testing.assert_series_equal(scores.loc[snap["account_id"]].reset_index(drop=True),
                                   snap["abuse_score"].reset_index(drop=True), check_names=False, atol=1e-6)
    card = assert_card(sr.MODEL_NAME, 1, cli_settings, promoted=True, metrics={
        "PR-AUC": ("pr_auc", "model_pr_auc", "cold_start_pr_auc", "rule_pr_auc", "if_counts_pr_auc"),
        "precision in the top": ("precision_at_capacity", "rule_precision_at_capacity")},
        slices=("new_account", "established_account", "returned_in_holiday_window", "no_holiday_returns"))
    assert "guest accounts: not applicable" in card and "returns in the data" in card
    assert f"The queue ranks by: {summary['queue_method']}" in card


def test_blend_of_candidates_ranks_by_mean_percentile(evaluation, ds, tmp_path):
    settings = Settings(models_dir=tmp_path / "models")
    X = sr.features_as_of(ds, evaluation.params["t2"], settings)
    m = copy.deepcopy(evaluation.model).use("blend:if_counts+most_returns", X, evidence="test")
    s = m.predict(X)
    assert ((s >= 0) & (s <= 1)).all()
    # Each part is placed on the population's scale: scoring a handful of accounts gives them the same scores.
    assert np.allclose(m.predict(X.iloc[:40]), s[:40])
    parts = [pd.Series(baseline_score(n, X, forest=m.forest_)).rank(pct=True).to_numpy()
             for n in ("if_counts", "most_returns")]
    assert np.corrcoef(s, np.mean(parts, axis=0))[0, 1] > 0.99
    with pytest.raises(ValueError, match="unknown method"):
        copy.deepcopy(evaluation.model).use("blend:if_counts+coin_flip", X)


def test_queue_method_is_chosen_on_several_earlier_cutoffs(ds, tmp_path):
    settings = Settings(models_dir=tmp_path / "models")
    last = ds.time_span()[1]
    method, evidence = sr.choose_by_forward_checks(ds, last, settings, top=25)
    parts = blend_parts(method)
    assert all(p in sr.CANDIDATES for p in parts), method
    assert evidence.count(", 20") >= 2 and "flagged as of" in evidence  # three cut-offs named
    # A blend ranks first the account both parts place high, whatever their scales.
    scores = {"model": np.array([0.9, 0.8, 0.1]), "most_returns": np.array([1.0, 30.0, 20.0])}
    blended = sr._candidate_score("blend:model+most_returns", scores)
    assert np.argmax(blended) == 1 and np.argmin(blended) == 2
