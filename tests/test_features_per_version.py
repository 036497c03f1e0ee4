"""Served features belong to model versions and change only with a promotion or `aftersales refresh-features`; a
running service swaps to a new generation whole, answering throughout, never mixing two generations in one answer.

One small deployment (tests/_service.py, the way training builds it) with a real merchant-risk champion; the world
is served first as it was at an earlier day (``early``: every table cut there), then refreshed to its end.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from _service import Service, build_deployment, json_ticket
from click.testing import CliRunner

from features import generations
from features.contract import load_dataset
from features.settings import get_settings
from features.tickets import SNAPSHOT_FILES
from serving.online_store import SnapshotStore
from serving.schemas import TicketIn
from training import registry
from training.cli import main
from training.refresh import refresh_features

CUTOFF = pd.Timestamp("2024-07-01", tz="UTC")  # the deployment's world runs 2024-01-01 to 2024-08-27


def cut(src: Path, dst: Path, at: pd.Timestamp) -> Path:
    """World ``src`` as it was known at ``at``: later rows dropped, later deliveries and outcomes not yet known."""
    dst.mkdir(parents=True)
    ds = load_dataset(src)
    o = ds.orders[ds.orders["ordered_at"] < at].copy()
    o.loc[o["delivered_at"] >= at, "delivered_at"] = pd.NaT
    t = ds.tickets[ds.tickets["created_at"] < at].copy()
    late = t["resolved_at"] >= at
    t.loc[late, "resolved_at"] = pd.NaT
    t["escalated"] = t["escalated"].astype("boolean").mask(late.to_numpy())
    tables = {"orders": o, "returns": ds.returns[ds.returns["requested_at"] < at], "tickets": t,
              "account_links": ds.account_links,
              "review_decisions": ds.review_decisions[ds.review_decisions["decided_at"] < at]}
    for name, frame in tables.items():
        frame.to_parquet(dst / f"{name}.parquet", index=False)
    return dst


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> dict:
    from features.merchants import MerchantRiskModel, build_snapshots, prepare_events

    d = build_deployment(tmp_path_factory.mktemp("per_version"))
    settings, world = d["settings"], d["world"]
    events = prepare_events(load_dataset(world))
    dates = pd.date_range("2024-04-01", "2024-06-01", freq="14D", tz="UTC")
    model = MerchantRiskModel(kind="poisson", n_estimators=30).fit(build_snapshots(events, dates))
    registry.log_and_register("merchant_risk", model, build_snapshots(events, dates[-1:], with_labels=False).head(3),
                              "ndcg_at_50", 0.9, True, settings=settings)
    d["early"] = cut(world, d["root"] / "early", CUTOFF)
    return d


def served_bytes(settings) -> dict[str, bytes]:
    folder = generations.served_dir(settings.snapshots_dir)
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.parquet"))}


def quiet(*_):
    pass


def test_only_refresh_changes_what_is_served(deployment, tmp_path, monkeypatch):
    settings = deployment["settings"]
    versions = {n: registry.load_champion(n, settings).version for n in ("serial_returners", "merchant_risk",
                                                                        "ticket_triage")}
    first = refresh_features(deployment["early"], settings, echo=quiet)
    assert generations.current_id(settings.snapshots_dir) == first["generation"]
    manifest = generations.current_manifest(settings.snapshots_dir)
    assert {n: e["version"] for n, e in manifest["models"].items()} == versions  # the champions, pinned
    before = served_bytes(settings)
    assert {"accounts.parquet", "account_queue.parquet", "merchants.parquet", *SNAPSHOT_FILES.values()} <= set(before)

    # Ad-hoc commands on the newer data write their own outputs only.
    monkeypatch.setenv("AFTERSALES_MODELS_DIR", str(settings.models_dir))
    get_settings.cache_clear()
    try:
        run = CliRunner().invoke
        for args in (["flag-accounts", "--out", str(tmp_path / "q.csv")],
                     ["rank-merchants", "--out", str(tmp_path / "r.csv")],
                     ["score-all", "--out", str(tmp_path / "all")]):
            r = run(main, [*args, "--data", str(deployment["world"])])
            assert r.exit_code == 0, r.output
        r = run(main, ["models"])
        assert f"served snapshot generation: {first['generation']}" in r.output, r.output
    finally:
        get_settings.cache_clear()
    assert generations.current_id(settings.snapshots_dir) == first["generation"]
    assert served_bytes(settings) == before

    # The refresh: the same pinned versions, features as of the data's end.
    second = refresh_features(deployment["world"], settings, echo=quiet)
    assert second["generation"] != first["generation"] and second["pinned"] == versions
    manifest = generations.current_manifest(settings.snapshots_dir)
    assert manifest["previous"] == first["generation"]
    assert {n: e["version"] for n, e in manifest["models"].items()} == versions
    assert manifest["models"]["serial_returners"]["as_of"] == "2024-08-27"
    served = generations.served_dir(settings.snapshots_dir)
    orders = pd.read_parquet(served / SNAPSHOT_FILES["orders"])
    old = pd.read_parquet(generations.generation_dir(settings.snapshots_dir, first["generation"])
                          / SNAPSHOT_FILES["orders"])
    late = load_dataset(deployment["world"]).orders.query("ordered_at >= @CUTOFF")["order_id"].astype(str)
    # Orders placed after the early generation's day now have their context.
    assert orders["order_id"].astype(str).isin(late).sum() > 100 and not old["order_id"].astype(str).isin(late).any()
    accounts = pd.read_parquet(served / "accounts.parquet")
    assert (accounts["as_of"].astype(str).str[:10] == "2024-08-27").all()


def _expected(store: SnapshotStore, model, ticket: dict) -> tuple[float, float | None]:
    """What the served set of a generation answers for ``ticket``: escalation probability and abuse risk."""
    t = TicketIn(**ticket).__dict__
    found = store.lookup(t["account_id"], t["merchant_id"], t["order_id"])
    scored = model.score_one(t, found.account, found.merchant, found.order)
    return scored["escalation_probability"], (found.account or {}).get("abuse_score")


def test_live_service_answers_throughout_refreshes_without_mixing(deployment):
    settings = deployment["settings"]
    start = refresh_features(deployment["early"], settings, echo=quiet)["generation"]
    world = load_dataset(deployment["world"])
    recent = world.tickets[world.tickets["created_at"] >= CUTOFF].merge(
        world.orders[["order_id", "ordered_at"]].drop_duplicates("order_id"), on="order_id")
    about_late_orders = recent[recent["ordered_at"] >= CUTOFF].head(15)
    # The ticket system sends the load and contact counts (and the year count) itself, so an answer depends on its generation only (the
    # service's live counts depend on which tickets it saw first; tests/test_serving.py checks those).
    live = {"tickets_last_24h": 12, "typical_tickets_24h": 9.5, "prior_tickets_30d": 1, "acct_tickets_365d": 3}
    tickets = [json_ticket(r) | live for _, r in pd.concat([about_late_orders, recent.head(5)]).iterrows()]
    svc = Service(settings.models_dir, deployment["world"], deployment["root"] / "live.log",
                  AFTERSALES_SNAPSHOT_POLL_S="0.2")
    answers: list[tuple[dict, int, dict]] = []
    stop = threading.Event()
    try:
        svc.wait_ready()

        def hammer() -> None:
            while not stop.is_set():
                for t in tickets:
                    r = svc.client.post("/v1/tickets/score", json=t)
                    answers.append((t, r.status_code, r.json()))

        caller = threading.Thread(target=hammer)
        caller.start()
        made = []
        try:
            for data in ("world", "early", "world"):
                time.sleep(1.5)
                made.append(refresh_features(deployment[data], settings, echo=quiet)["generation"])
            time.sleep(1.5)
        finally:
            stop.set()
            caller.join(60)
        health = svc.client.get("/v1/health").json()
    finally:
        svc.stop()

    assert answers and all(code == 200 for _, code, _ in answers), [a for a in answers if a[1] != 200][:3]
    seen = [body["snapshot_generation"] for _, _, body in answers]
    assert set(made) <= set(seen), (made, sorted(set(seen)))  # every refresh reached the running service
    assert seen[0] == start and len(answers) > 4 * len(tickets)
    assert seen[-1] == made[-1] and health["snapshot_generation"] == made[-1]
    ages = {s["name"]: s for s in health["snapshots"]}
    assert all(s["age_seconds"] is not None and s["age_seconds"] < 600 for s in ages.values())
    assert ages["accounts"]["as_of"] == "2024-08-27" and ages["accounts"]["model_version"] is not None
    # Each answer is exactly what its own generation's models and snapshots give: no answer mixes two.
    stores = {g: SnapshotStore(generations.generation_dir(settings.snapshots_dir, g)) for g in set(seen)}
    pins = {g: generations.read_manifest(generations.generation_dir(settings.snapshots_dir, g))["models"]
            ["ticket_triage"]["version"] for g in set(seen)}
    models = {v: registry.load_version("ticket_triage", v, settings).model for v in set(pins.values())}
    late_ids = set(about_late_orders["ticket_id"].astype(str))
    for t, _, body in answers:
        gen = body["snapshot_generation"]
        assert body["model_versions"]["ticket_triage"] == pins[gen]  # the version its generation pins
        p, abuse = _expected(stores[gen], models[pins[gen]], t)
        assert body["escalation_probability"] == pytest.approx(p, abs=1e-12)
        assert body["abuse_risk"] == abuse
        if t["ticket_id"] in late_ids:  # its order is known to the generations made from the whole world only
            early = body["snapshot_generation"] in (start, made[1])
            assert (body["feature_sources"]["order"] != "online_store") == early, body


def test_refresh_publishes_each_generation_to_redis_under_its_own_prefix(deployment, tmp_path):
    import shutil

    from test_online_store import _free_port, _start_redis

    from serving.app import Runtime
    from serving.online_store import FOUND, RedisStore

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    port = _free_port()
    proc = _start_redis(port, tmp_path)
    try:
        settings = deployment["settings"].model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
        first = refresh_features(deployment["early"], settings, echo=quiet)
        prefix = generations.current_manifest(settings.snapshots_dir)["redis_prefix"]
        assert prefix == f"aftersales:{first['generation']}" and first["redis"]["accounts"] > 0
        rt = Runtime.load(settings)
        try:
            assert isinstance(rt.store, RedisStore) and rt.store.prefix == prefix
            account = next(iter(rt.snapshots.accounts.ids))
            found = rt.store.lookup(account, None, None)
            assert found.account_source == FOUND and found.account == rt.snapshots.accounts.get(account)
            second = refresh_features(deployment["world"], settings, echo=quiet)
            assert rt.refresh() and rt.served.generation == second["generation"]
            assert rt.store.prefix == f"aftersales:{second['generation']}"
            found = rt.store.lookup(account, None, None)
            assert found.account_source == FOUND and found.account == rt.snapshots.accounts.get(account)
        finally:
            rt.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_refresh_serves_a_champion_promoted_from_another_machine(deployment):
    """A promotion registered against the same (team) MLflow from elsewhere makes no generation here; the next
    refresh pins it with features computed for it, and a running worker swaps model and snapshots together."""
    from serving.app import Runtime

    settings = deployment["settings"]
    refresh_features(deployment["early"], settings, echo=quiet)
    rt = Runtime.load(settings)
    try:
        before = rt.served.versions("ticket_triage")["ticket_triage"]
        from features.tickets import FEATURES, CalendarTable, build_training_features

        current = registry.load_champion("ticket_triage", settings)
        example = build_training_features(load_dataset(deployment["early"]),
                                          CalendarTable("CN", first_year=2023, last_year=2025)).X.head(5)
        example = example[list(FEATURES)]  # the model's inputs (X also carries the text its scorer learns from)
        elsewhere = registry.log_and_register("ticket_triage", current.model, example, "roc_auc", 0.999, True,
                                              settings=settings)
        assert elsewhere.promoted and not rt.refresh()  # nothing served changed yet
        lines: list[str] = []
        refresh_features(deployment["world"], settings, echo=lines.append)
        assert any(f"champion v{elsewhere.version} replaces the served v{before}" in line for line in lines)
        assert generations.current_manifest(settings.snapshots_dir)["models"]["ticket_triage"]["version"] == \
            elsewhere.version
        old = rt.served
        assert rt.refresh() and rt.served.versions("ticket_triage")["ticket_triage"] == elsewhere.version
        assert old.versions("ticket_triage")["ticket_triage"] == before  # a request holding the old set keeps it
        assert rt.served.models["serial_returners"] is old.models["serial_returners"]  # unchanged: not reloaded
    finally:
        rt.close()


def test_a_generation_that_would_lose_a_served_model_is_not_swapped_in(deployment):
    """A champion whose signature no longer fits the served features: the refresh pins it, but the worker keeps its
    current set (no outage) and says why in /v1/health."""
    from serving.app import Runtime

    settings = deployment["settings"]
    first = refresh_features(deployment["world"], settings, echo=quiet)["generation"]
    rt = Runtime.load(settings)
    try:
        served = rt.served.versions("ticket_triage")["ticket_triage"]
        current = registry.load_champion("ticket_triage", settings)
        bad = registry.log_and_register("ticket_triage", current.model, pd.DataFrame({"x": [0.0]}), "roc_auc", 1.0,
                                        True, settings=settings)
        assert bad.promoted
        second = refresh_features(deployment["world"], settings, echo=quiet)["generation"]
        assert not rt.refresh() and not rt.refresh()  # refused once, not retried every poll
        assert rt.served.generation == first and rt.served.versions("ticket_triage")["ticket_triage"] == served
        health = rt.health()
        assert health.status == "degraded" and second in health.generation_problem
        assert "signature" in health.generation_problem and health.snapshot_generation == first
    finally:
        rt.close()
