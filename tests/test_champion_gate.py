"""The promotion gate compares champion and challenger on the challenger's held-out rows (training/evidence.py), and
what is served changes only with a promotion.

Worlds (small, seeds below 1000): A is a default world. B is another platform: another seed, its case types mean
other things (the labels are permuted, so what A's champion learnt about case types is wrong there), its wording
says nothing about the outcome (texts shuffled between tickets, so A's learnt text score misleads there) and 6% of
its outcomes are flipped at random (so every model's figure on B is lower than on A). N is B's seed with more such
noise but A's case types: a champion trained there ranks A's tickets well, while its own logged figure is low.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from features import generations
from features.contract import load_dataset
from features.settings import Settings
from features.synthetic import generate_world
from features.tickets import SNAPSHOT_FILES, CalendarTable, build_training_features
from training import evidence, registry
from training import ticket_triage as tt

WORLD_A = dict(seed=5, accounts=1500, merchants=60, start="2023-06-01", days=400, market="CN", progress=False)
WORLD_W = dict(seed=17, accounts=1500, merchants=60, start="2023-06-01", days=400, market="CN", progress=False)


def variant(src: Path, dst: Path, permute: bool, noise: float, seed: int = 0, shuffle_text: bool = False) -> Path:
    """A copy of world ``src`` whose tickets' case types are permuted, texts shuffled between tickets and/or a share
    of outcomes is random."""
    shutil.copytree(src, dst)
    t = pd.read_parquet(dst / "tickets.parquet")
    if shuffle_text:
        t["text"] = t["text"].sample(frac=1.0, random_state=seed).to_numpy()
    if permute:
        types = sorted(t["case_type"].dropna().astype(str).unique())
        mapping = dict(zip(types, types[1:] + types[:1], strict=True))
        t["case_type"] = t["case_type"].astype("object").map(mapping).astype(t["case_type"].dtype)
    if noise:
        rng = np.random.default_rng(seed)
        flip = (rng.random(len(t)) < noise) & t["escalated"].notna().to_numpy()
        t.loc[flip, "escalated"] = ~t.loc[flip, "escalated"].astype(bool)
    t.to_parquet(dst / "tickets.parquet", index=False)
    return dst


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gate_worlds")
    a, w = root / "A", root / "W"
    generate_world(a, **WORLD_A)
    generate_world(w, **WORLD_W)
    return {"A": a, "B": variant(w, root / "B", permute=True, noise=0.06, seed=1, shuffle_text=True),
            "N": variant(w, root / "N", permute=False, noise=0.15, seed=1)}


def served_files(settings: Settings) -> dict[str, bytes]:
    folder = generations.served_dir(settings.snapshots_dir)
    return {f: (folder / f).read_bytes() for f in SNAPSHOT_FILES.values() if (folder / f).exists()}


def champion_on_held_out(world: Path, version: int, settings: Settings) -> float:
    """ROC-AUC of registered ``version`` on ``world``'s held-out later tickets, computed here independently."""
    feats = build_training_features(load_dataset(world), CalendarTable("CN", first_year=2023, last_year=2025))
    split = tt.time_split(feats.meta)
    y = feats.meta["escalated"].iloc[split.test].astype(bool).to_numpy()
    model = registry.load_version("ticket_triage", version, settings).model
    return float(roc_auc_score(y, model.predict(feats.X.iloc[split.test])))


def test_challenger_promoted_on_the_same_rows_though_its_figure_is_lower(worlds, cli_settings):
    a = tt.train(worlds["A"], cli_settings)
    assert a["version"] == 1 and a["promoted"] is True
    gen_a, files_a = generations.current_id(cli_settings.snapshots_dir), served_files(cli_settings)
    assert gen_a and len(files_a) == len(SNAPSHOT_FILES) == 4  # accounts, merchants, orders, recent tickets

    b = tt.train(worlds["B"], cli_settings)
    # The precondition: B's own later-period figure is lower than the one A's champion logged.
    assert b["roc_auc"] < a["roc_auc"] - 0.03, (a, b)
    assert b["promoted"] is True, b["gate"]
    assert "on the same held-out rows" in b["gate"] and "champion v1" in b["gate"]
    client = MlflowClient(cli_settings.tracking_uri)
    mv = client.get_model_version("ticket_triage", "2")
    assert mv.tags["gate_decision"] == "promoted" and mv.tags["gate_champion_scored"] == "true"
    run = client.get_run(mv.run_id).data
    # Both figures are the ones recomputed here independently on B's held-out tickets.
    assert run.metrics["gate.champion"] == pytest.approx(champion_on_held_out(worlds["B"], 1, cli_settings),
                                                         abs=1e-9)
    assert run.metrics["gate.challenger"] == pytest.approx(b["roc_auc"], abs=1e-4)
    assert run.metrics["gate.challenger"] >= run.metrics["gate.champion"]
    assert registry.load_champion("ticket_triage", cli_settings).version == 2
    card = (cli_settings.cards_dir / "ticket_triage" / "v2.md").read_text()
    decision = card.split("## Promotion decision", 1)[1]
    assert "champion v1 on the same rows" in decision and "held-out rows compared" in decision

    # The promotion (and only it) changed what is served: B's features, pinned to v2.
    gen_b = generations.current_id(cli_settings.snapshots_dir)
    assert gen_b != gen_a and served_files(cli_settings) != files_a
    manifest = generations.current_manifest(cli_settings.snapshots_dir)
    assert manifest["models"]["ticket_triage"]["version"] == 2 and manifest["previous"] == gen_a
    assert str(worlds["B"].resolve()) in manifest["models"]["ticket_triage"]["source"]
    # Each version keeps its own snapshots.
    for v in (1, 2):
        assert all((generations.version_dir(cli_settings.snapshots_dir, "ticket_triage", v) / f).exists()
                   for f in SNAPSHOT_FILES.values())


def test_challenger_refused_when_the_champion_is_better_on_its_rows(worlds, cli_settings, monkeypatch):
    n = tt.train(worlds["N"], cli_settings)
    assert n["promoted"] is True
    gen, files = generations.current_id(cli_settings.snapshots_dir), served_files(cli_settings)
    # A weaker recipe (two stumps) on clean data: its own figure beats the noisy champion's logged one...
    weak = tt.model_params

    def two_stumps(settings, calibration="isotonic"):
        return {**weak(settings, calibration), "num_boost_round": 2, "num_leaves": 2, "early_stopping_rounds": 0}

    monkeypatch.setattr(tt, "model_params", two_stumps)
    c = tt.train(worlds["A"], cli_settings)
    assert c["roc_auc"] > n["roc_auc"], (n, c)
    # ...but on its own held-out rows the champion ranks better: refused.
    assert c["promoted"] is False, c["gate"]
    assert c["gate"].startswith("refused: on the same held-out rows") and "worse than champion v1" in c["gate"]
    assert registry.load_champion("ticket_triage", cli_settings).version == 1
    # A refused challenger changes nothing served; its snapshots are kept with its version.
    assert generations.current_id(cli_settings.snapshots_dir) == gen and served_files(cli_settings) == files
    assert (generations.version_dir(cli_settings.snapshots_dir, "ticket_triage", 2) / "meta.json").exists()
    mv = MlflowClient(cli_settings.tracking_uri).get_model_version("ticket_triage", "2")
    assert mv.tags["gate_decision"] == "refused"


def test_same_data_champion_is_not_scored_and_the_fallback_rule_decides(worlds, cli_settings):
    first = tt.train(worlds["A"], cli_settings)
    again = tt.train(worlds["A"], cli_settings)  # the champion trained on every held-out ticket
    assert first["promoted"] is True
    mv = MlflowClient(cli_settings.tracking_uri).get_model_version("ticket_triage", "2")
    assert mv.tags["gate_champion_scored"] == "false" and "covers the held-out period" in mv.tags["gate_unscorable"]
    assert mv.tags["gate_rule"] == evidence.FALLBACK_RULE
    # Fallback: promoted only because it beats the case-type baseline on its held-out tickets.
    assert again["roc_auc"] > again["baseline_roc_auc"] and again["promoted"] is True, again["gate"]


# --------------------------------------------------------------------------------------------------------------------
# The rules, and two registrations racing for one alias


def _ev(value: float, baselines: dict, compare=None) -> evidence.Evidence:
    return evidence.Evidence("roc_auc", True, value, baselines, "10 rows", compare)


def test_decide_rules():
    same = lambda v: (lambda model, seen: (0.7, v, "10 rows"))  # noqa: E731
    first = evidence.decide(_ev(0.7, {"b": 0.6}), None)  # no champion yet
    assert first.promoted and "warning" not in first.reason
    # A first version a baseline beats is still served (something must be), but the decision names the baseline.
    weak = evidence.decide(_ev(0.7, {"b": 0.6, "c": 0.72}), None)
    assert weak.promoted and "warning: c 0.72" in weak.reason and "b 0.6" not in weak.reason
    assert evidence.decide(_ev(0.7, {"b": 0.6}, same(0.7)), 3, object()).promoted  # a tie promotes
    d = evidence.decide(_ev(0.7, {"b": 0.6}, same(0.71)), 3, object())
    assert not d.promoted and d.champion == 0.71 and d.champion_scored
    # Not scorable (signature / load failure): decided on the baselines.
    d = evidence.decide(_ev(0.7, {"b": 0.6}), 3, None, load_error="its logged signature no longer fits")
    assert d.promoted and d.rule == evidence.FALLBACK_RULE and "signature" in d.reason
    d = evidence.decide(_ev(0.7, {"b": 0.6, "c": 0.7}), 3, None, load_error="x")
    assert not d.promoted and "does not beat c" in d.reason

    def raises(model, seen):
        raise evidence.Unscorable("it trained on these rows")

    d = evidence.decide(_ev(0.7, {"b": 0.6}, raises), 3, object())
    assert d.promoted and not d.champion_scored and d.unscorable == "it trained on these rows"


def test_two_concurrent_registrations_cannot_both_be_promoted(cli_settings, monkeypatch):
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300)})
    y = (X["a"] + rng.normal(size=300) > 0).astype(int)
    model = LogisticRegression().fit(X, y)
    registry.log_and_register("race", model, X.head(5), "roc_auc", 0.6, True, settings=cli_settings,
                              evidence=_ev(0.6, {"b": 0.5}))
    barrier = threading.Barrier(2, timeout=60)

    def compare(champion, seen):  # both gates have read champion v1 before either moves the alias
        barrier.wait()
        return 0.9, float(roc_auc_score(y, champion.predict_proba(X)[:, 1])) - 0.5, "300 rows"

    results = {}

    def register(i: int) -> None:
        results[i] = registry.log_and_register("race", model, X.head(5), "roc_auc", 0.9, True,
                                               settings=cli_settings, evidence=_ev(0.9, {"b": 0.5}, compare))

    # Registrations are serialised up to the gate by the local SQLite store; the race is in the gate itself.
    threads = [threading.Thread(target=register, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    promoted = [r for r in results.values() if r.promoted]
    refused = [r for r in results.values() if not r.promoted]
    assert len(promoted) == 1 and len(refused) == 1, [r.reason for r in results.values()]
    assert "another registration" in refused[0].reason or "moved" in refused[0].reason
    assert registry.load_champion("race", cli_settings).version == promoted[0].version
    assert refused[0].decision.tags()["gate_decision"] == "refused"
