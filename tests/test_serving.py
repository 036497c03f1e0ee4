"""The BentoML service end to end: the real ``bentoml serve`` on a free loopback port, against a models folder the
test builds (a small world, the real ticket-triage model and snapshots, a return-volume forecaster, the
serial-returner snapshot, a merchant ranking), plus a second service on an empty models folder for the 503 paths.
"""

from __future__ import annotations

import json

import httpx
import pandas as pd
import pytest
from _service import Service, build_deployment
from _service import json_ticket as _json_ticket

from features import generations
from features.live_counts import counter_from_snapshot, fill_one
from features.return_volume import ReturnVolumeForecaster
from features.tickets import SNAPSHOT_FILES, load_serving_snapshots
from training import registry

MAX_BATCH = 40  # the served limit in these tests (AFTERSALES_MAX_BATCH_SIZE), so a too-large batch is cheap
MAX_BODY = 300_000  # bytes (AFTERSALES_MAX_BODY_BYTES)
API_KEYS = ["key-for-tests-1", "key-for-tests-2"]


# --------------------------------------------------------------------------------------------------------------------
# Fixtures: models folder, running services


@pytest.fixture(scope="module")
def empty_service(tmp_path_factory) -> Service:
    """A service on a models folder with nothing registered (and no data folder)."""
    root = tmp_path_factory.mktemp("empty")
    svc = Service(root / "models", root / "no-data", root / "service.log", AFTERSALES_MAX_BATCH_SIZE=str(MAX_BATCH))
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, empty_service) -> dict:
    """Every champion the service loads, built the way training builds them (this module's own: it registers a
    new champion). Depends on ``empty_service`` only so that one boots while this builds."""
    return build_deployment(tmp_path_factory.mktemp("serving"))


@pytest.fixture(scope="module")
def service(deployment) -> Service:
    svc = Service(deployment["settings"].models_dir, deployment["world"], deployment["root"] / "service.log",
                  api_key=API_KEYS[1], AFTERSALES_API_KEYS=json.dumps(API_KEYS),
                  AFTERSALES_MAX_BODY_BYTES=str(MAX_BODY), AFTERSALES_MAX_BATCH_SIZE=str(MAX_BATCH))
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


def _no_trace(r: httpx.Response) -> None:
    assert "Traceback" not in r.text and 'File "' not in r.text, r.text


# --------------------------------------------------------------------------------------------------------------------
# Ticket scoring


def test_score_one_ticket_returns_the_triage_and_the_pinned_version(service, deployment):
    ticket = _json_ticket(deployment["tickets"].iloc[-1])
    r = service.client.post("/v1/tickets/score", json=ticket)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ticket_id"] == ticket["ticket_id"]
    assert 0.0 <= body["escalation_probability"] <= 1.0
    assert body["priority"] in {"P1", "P2", "P3", "P4"}
    assert body["action"] in {"auto_approve_refund", "standard_queue", "senior_agent", "risk_review"}
    assert body["reasons"] and all(isinstance(x, str) and x for x in body["reasons"])
    assert body["model_versions"]["ticket_triage"] == deployment["triage_version"]
    assert set(body["model_versions"]) == {"ticket_triage", "serial_returners", "merchant_risk"}
    assert body["feature_sources"]["merchant"] == "online_store"
    assert body["merchant_risk"] is not None and 0 < body["merchant_risk"] <= 1


def test_served_probability_is_the_models_own(service, deployment):
    """The service adds no skew: same number as the registered model's score_one on the same snapshots (and the
    live counts, which for these tickets, all older than the snapshot, its recent tickets give exactly)."""
    settings = deployment["settings"]
    model = registry.load_champion("ticket_triage", settings=settings).model
    served_dir = generations.served_dir(settings.snapshots_dir)
    snaps = load_serving_snapshots(served_dir)
    counter = counter_from_snapshot(pd.read_parquet(served_dir / SNAPSHOT_FILES["recent"]))
    for _, row in deployment["tickets"].tail(8).iterrows():
        ticket = fill_one(_json_ticket(row), counter)
        served = service.client.post("/v1/tickets/score", json=ticket).json()
        offline = model.score_one(ticket, snaps.accounts.get(ticket.get("account_id")),
                                  snaps.merchants.get(ticket.get("merchant_id")),
                                  snaps.orders.get(ticket.get("order_id")))
        assert served["escalation_probability"] == pytest.approx(offline["escalation_probability"], abs=1e-9)


def test_unknown_ids_are_scored_with_defaults_that_say_so(service):
    ticket = {"ticket_id": "new-1", "created_at": "2024-08-20T09:30:00", "account_id": "A-never-seen",
              "merchant_id": "M-never-seen", "order_id": "O-never-seen", "case_type": "refund", "channel": "chat",
              "amount": 12.5, "text": "where is my refund"}
    body = service.client.post("/v1/tickets/score", json=ticket).json()
    assert body["feature_sources"] == {"account": "default_unknown_id", "merchant": "default_unknown_id",
                                       "order": "default_unknown_id"}
    assert body["abuse_risk"] is None and body["merchant_risk"] is None
    joined = " ".join(body["defaults_used"])
    assert "new account" in joined and "unknown merchant" in joined and "order not in the snapshot" in joined
    guest = dict(ticket, ticket_id="guest-1", account_id=None, merchant_id=None, order_id=None)
    body = service.client.post("/v1/tickets/score", json=guest).json()
    assert body["feature_sources"]["account"] == "default_no_id" and body["defaults_used"] == []


def test_batch_scores_every_ticket_in_order_like_single_scoring(service, deployment):
    tickets = [_json_ticket(r) for _, r in deployment["tickets"].tail(MAX_BATCH).iterrows()]
    r = service.client.post("/v1/tickets/score-batch", json={"tickets": tickets})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(tickets) == len(body["results"])
    assert [x["ticket_id"] for x in body["results"]] == [t["ticket_id"] for t in tickets]
    assert body["model_versions"]["ticket_triage"] == deployment["triage_version"]
    for t, res in list(zip(tickets, body["results"], strict=True))[::7]:
        one = service.client.post("/v1/tickets/score", json=t).json()
        assert res["escalation_probability"] == pytest.approx(one["escalation_probability"], abs=1e-9)
        assert (res["priority"], res["action"], res["reasons"]) == (one["priority"], one["action"], one["reasons"])
        assert res["feature_sources"] == one["feature_sources"] and res["defaults_used"] == one["defaults_used"]


def test_the_service_counts_load_and_contacts_as_training_does(deployment):
    """Tickets newer than the snapshot, sent one by one and in a shuffled batch to the serving Runtime: their load
    and repeat-contact counts are the training functions' (point in time over the snapshot's tickets and the new
    ones), so each probability is the model's on exactly the training features; a retried ticket counts once."""
    from types import SimpleNamespace

    import numpy as np

    from features.contract import load_dataset
    from features.tickets import account_history, platform_load, series_us
    from serving.runtime import Runtime
    from serving.schemas import TicketIn

    settings = deployment["settings"]
    ds = load_dataset(deployment["world"])
    rng = np.random.default_rng(7)
    new = ds.tickets.drop(columns=["escalated", "resolved_at"]).tail(36).reset_index(drop=True)
    accounts = ds.tickets["account_id"].dropna().tail(400).unique()[:6]
    new["account_id"] = pd.Series([accounts[i % 6] if i % 9 else None for i in range(len(new))], dtype="object")
    new["ticket_id"] = [f"NEW-{i}" for i in range(len(new))]
    start = ds.tickets["created_at"].max()
    new["created_at"] = start + pd.to_timedelta(np.sort(rng.uniform(0.02, 2.5, len(new))), unit="D")
    rt = Runtime.load(settings)
    try:
        single = {t["ticket_id"]: rt.score_ticket(TicketIn(**t)).escalation_probability
                  for t in [_json_ticket(r) for _, r in new.head(18).iterrows()]}
        rt.score_ticket(TicketIn(**_json_ticket(new.iloc[17])))  # a retry: not counted again
        later = [_json_ticket(r) for _, r in new.iloc[18:].sample(frac=1.0, random_state=3).iterrows()]
        batch = {x.ticket_id: x.escalation_probability for x in rt.score_batch([TicketIn(**t) for t in later]).results}
        model = rt.model("ticket_triage")
    finally:
        rt.close()
    every = pd.concat([ds.tickets, new.assign(resolved_at=pd.NaT, escalated=pd.NA)], ignore_index=True)
    times = series_us(new["created_at"])
    load = platform_load(every, times)
    contacts = account_history(SimpleNamespace(orders=ds.orders, returns=ds.returns, tickets=every),
                               new["account_id"], times)["prior_tickets_30d"].to_numpy()
    assert load["tickets_last_24h"].max() > load["tickets_last_24h"].min() and np.nanmax(contacts) >= 2
    snaps = load_serving_snapshots(generations.served_dir(settings.snapshots_dir))
    for i, (_, row) in enumerate(new.iterrows()):
        t = _json_ticket(row)
        t |= {"tickets_last_24h": float(load["tickets_last_24h"].iloc[i]),
              "typical_tickets_24h": float(load["typical_tickets_24h"].iloc[i])}
        if not np.isnan(contacts[i]):
            t["prior_tickets_30d"] = float(contacts[i])
        want = model.score_one(t, snaps.accounts.get(t.get("account_id")), snaps.merchants.get(t.get("merchant_id")),
                               snaps.orders.get(t.get("order_id")))["escalation_probability"]
        got = single[t["ticket_id"]] if i < 18 else batch[t["ticket_id"]]
        assert got == pytest.approx(want, abs=1e-9), t["ticket_id"]


def test_a_batch_over_the_limit_is_refused_with_a_message(service):
    ticket = {"created_at": "2024-08-20T09:30:00Z", "case_type": "inquiry", "channel": "email"}
    tickets = [dict(ticket, ticket_id=f"t{i}") for i in range(MAX_BATCH + 1)]
    r = service.client.post("/v1/tickets/score-batch", json={"tickets": tickets})
    assert r.status_code == 413
    assert "tickets" in r.json()["error"] and f"{MAX_BATCH}" in r.json()["error"]


@pytest.mark.parametrize("change, field", [
    ({"case_type": "teleport"}, "case_type"),
    ({"channel": "pigeon"}, "channel"),
    ({"amount": -3}, "amount"),
    ({"created_at": "yesterday-ish"}, "created_at"),
    ({"created_at": None}, "created_at"),
    ({"ticket_id": ""}, "ticket_id"),
])
def test_invalid_ticket_gets_4xx_naming_the_field(service, change, field):
    ticket = {"ticket_id": "t1", "created_at": "2024-08-20T09:30:00Z", "case_type": "refund", "channel": "chat"}
    ticket.update(change)
    r = service.client.post("/v1/tickets/score", json=ticket)
    assert 400 <= r.status_code < 500, r.text
    assert any(field in d["loc"] for d in r.json()["detail"]), r.text
    _no_trace(r)


def test_malformed_bodies_get_4xx_without_stack_traces(service):
    for path in ("/v1/tickets/score", "/v1/tickets/score-batch", "/v1/forecast"):
        r = service.client.post(path, content=b'{"ticket_id": ', headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (path, r.text)
        _no_trace(r)
    r = service.client.post("/v1/tickets/score-batch", json={"tickets": [{"ticket_id": "x"}]})
    assert r.status_code == 400 and any(d["loc"][:2] == ["tickets", 0] for d in r.json()["detail"])
    r = service.client.get("/v1/accounts/flagged", params={"limit": "many"})
    assert r.status_code == 400 and "limit" in r.json()["error"]  # schema errors are 400 on every route
    r = service.client.post("/v1/accounts/A1/decision", json={"decision": "maybe", "reviewer": "li"})
    assert r.status_code == 400 and "decision" in r.json()["error"]
    _no_trace(r)


def test_versions_stay_pinned_when_the_champion_moves(service, deployment):
    """A newer champion registered while the service runs does not change what it serves until restart."""
    settings = deployment["settings"]
    current = registry.load_champion("ticket_triage", settings=settings)
    moved = registry.log_and_register("ticket_triage", current.model, pd.DataFrame({"x": [0.0]}), "roc_auc", 0.99,
                                      True, settings=settings)
    assert moved.promoted and moved.version > deployment["triage_version"]
    ticket = _json_ticket(deployment["tickets"].iloc[0])
    assert service.client.post("/v1/tickets/score", json=ticket).json()["model_versions"]["ticket_triage"] == \
        deployment["triage_version"]
    health = service.client.get("/v1/health").json()
    assert {m["name"]: m["version"] for m in health["models"]}["ticket_triage"] == deployment["triage_version"]


# --------------------------------------------------------------------------------------------------------------------
# Forecast, review queue, decisions, merchant ranking


def test_forecast_gives_quantiles_and_staffing(service, deployment):
    origin = deployment["history_end"].date().isoformat()
    r = service.client.post("/v1/forecast", json={"origin": origin, "horizon": 5, "series": ["total"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_versions"]["return_volume"] >= 1 and body["history_end"] == origin
    days = [d for d in body["forecast"] if d["series"] == "total"]
    assert len(days) == 5 and {d["series"] for d in body["forecast"]} == {"total"}
    assert days[0]["date"] == (deployment["history_end"] + pd.Timedelta(days=1)).date().isoformat()
    assert all(d["p10"] <= d["p50"] <= d["p90"] for d in days)
    channels = {s["channel"] for s in body["staffing"]}
    assert {"chat", "phone", "email"} <= channels and len(body["staffing"]) == 5 * len(channels)
    assert all(s["agents_p90"] >= s["agents_p50"] >= 0 for s in body["staffing"])
    r = service.client.post("/v1/forecast", json={"origin": origin, "horizon": 30})
    assert r.status_code == 422 and r.json()["error"].startswith("horizon")
    r = service.client.post("/v1/forecast", json={"origin": origin, "horizon": 3, "series": ["category=caviar"]})
    assert r.status_code == 422 and "category=caviar" in r.json()["error"]


def test_review_queue_and_a_decision_that_is_persisted(service, deployment):
    from features import reviews

    settings = deployment["settings"]
    written = pd.read_parquet(settings.snapshots_dir / "account_queue.parquet").sort_values("rank")
    queue = service.client.get("/v1/accounts/flagged", params={"limit": 5}).json()
    assert queue["count"] == 5 and queue["model_versions"]["serial_returners"] >= 1
    assert "account_queue.parquet" in queue["source"]
    ids = [a["account_id"] for a in queue["accounts"]]
    assert ids == written["account_id"].astype(str).head(5).tolist()  # training's queue, in its order
    assert [a["rank"] for a in queue["accounts"]] == [1, 2, 3, 4, 5]
    assert all(a["reasons"] and a["slot"] for a in queue["accounts"])
    top, second = ids[0], ids[1]
    body = {"decision": "confirmed_abuse", "reviewer": "li.wei", "note": "ring of 4 accounts",
            "decision_id": "test-decision-1"}
    r = service.client.post(f"/v1/accounts/{top}/decision", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["account_id"] == top and r.json()["duplicate"] is False
    stored = reviews.list_decisions(settings=settings)
    assert (stored["decision_id"] == "test-decision-1").sum() == 1
    assert stored.loc[stored["decision_id"] == "test-decision-1", "account_id"].iloc[0] == top
    again = service.client.post(f"/v1/accounts/{top}/decision", json=body)  # a client retry: stored once
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert (reviews.list_decisions(settings=settings)["decision_id"] == "test-decision-1").sum() == 1
    cleared = service.client.post(f"/v1/accounts/{second}/decision", json={"decision": "cleared", "reviewer": "li"})
    assert cleared.status_code == 201
    after = service.client.get("/v1/accounts/flagged", params={"limit": 5}).json()
    after_ids = [a["account_id"] for a in after["accounts"]]
    assert top not in after_ids and second not in after_ids and after["already_decided"] == 2
    assert after_ids == written["account_id"].astype(str).iloc[2:7].tolist()
    r = service.client.post("/v1/accounts/not-an-account/decision", json={"decision": "cleared", "reviewer": "li"})
    assert r.status_code == 404 and "not-an-account" in r.json()["error"]


def test_merchant_ranking_is_sorted_with_reasons(service):
    r = service.client.get("/v1/merchants/risk", params={"limit": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 4 and body["model_versions"]["merchant_risk"] >= 1
    scores = [m["score"] for m in body["merchants"]]
    assert scores == sorted(scores, reverse=True) and body["merchants"][0]["percentile"] == 1.0
    assert body["merchants"][0]["reasons"] == ["complaints 100% of orders"]


# --------------------------------------------------------------------------------------------------------------------
# Health, metrics, docs, and a service with nothing registered


def test_health_metrics_and_openapi(service):
    assert service.client.get("/livez").status_code == 200 and service.client.get("/readyz").status_code == 200
    health = service.client.get("/v1/health").json()
    assert health["status"] == "ok" and all(m["loaded"] for m in health["models"])
    assert {s["name"] for s in health["snapshots"]} == {"accounts", "merchants", "orders"}
    service.client.post("/v1/tickets/score", json={"ticket_id": "m", "created_at": "2024-08-20T09:30:00Z",
                                                   "case_type": "refund", "channel": "app"})
    metrics = service.client.get("/metrics").text
    assert "bentoml_service_request_total" in metrics and 'endpoint="/v1/tickets/score"' in metrics
    paths = service.client.get("/docs.json").json()["paths"]
    for p in ("/v1/tickets/score", "/v1/tickets/score-batch", "/v1/forecast", "/v1/accounts/flagged",
              "/v1/accounts/{account_id}/decision", "/v1/merchants/risk", "/v1/health"):
        assert p in paths, p


def test_a_service_without_models_starts_and_answers_503_with_what_to_do(empty_service):
    empty_service.wait_ready()
    assert not (empty_service.log.parent / "models" / "mlflow.db").exists()  # nothing created just to look
    c = empty_service.client
    assert c.get("/livez").status_code == 200
    r = c.post("/v1/tickets/score", json={"ticket_id": "t", "created_at": "2024-08-20T09:30:00Z",
                                          "case_type": "refund", "channel": "chat"})
    assert r.status_code == 503 and "ticket_triage" in r.json()["error"]
    assert "aftersales train ticket-triage" in r.json()["error"]
    r = c.post("/v1/forecast", json={"origin": "2024-08-01", "horizon": 3})
    assert r.status_code == 503 and "return_volume" in r.json()["error"]
    assert c.get("/v1/accounts/flagged").status_code == 503
    assert c.get("/v1/merchants/risk").status_code == 503
    r = c.post("/v1/accounts/A1/decision", json={"decision": "cleared", "reviewer": "li"})
    assert r.status_code == 503
    health = c.get("/v1/health").json()
    assert health["status"] == "degraded" and not any(m["loaded"] for m in health["models"])
    _no_trace(r)


def test_api_keys_guard_every_route_but_health(service):
    ticket = {"ticket_id": "k", "created_at": "2024-08-20T09:30:00Z", "case_type": "refund", "channel": "chat"}
    with httpx.Client(base_url=service.url, timeout=30) as anonymous:
        for method, path in (("POST", "/v1/tickets/score"), ("POST", "/v1/tickets/score-batch"),
                             ("POST", "/v1/forecast"), ("GET", "/v1/accounts/flagged"),
                             ("POST", "/v1/accounts/A1/decision"), ("GET", "/v1/merchants/risk"),
                             ("GET", "/metrics"), ("GET", "/docs.json")):
            r = anonymous.request(method, path, json=ticket)
            assert r.status_code == 401 and "X-API-Key" in r.json()["error"], (path, r.text)
        r = anonymous.post("/v1/tickets/score", json=ticket, headers={"X-API-Key": "key-for-tests-3"})
        assert r.status_code == 401
        r = anonymous.post("/v1/tickets/score", json=ticket, headers={"Authorization": f"Bearer {API_KEYS[0]}"})
        assert r.status_code == 200, r.text
        for path in ("/livez", "/readyz", "/v1/health"):
            assert anonymous.get(path).status_code == 200, path
    assert API_KEYS[1] not in service.tail(200_000)  # keys are never logged


def test_api_keys_are_compared_whole_in_constant_time_and_never_logged(service, monkeypatch):
    from serving import middleware as app

    ticket = {"ticket_id": "k2", "created_at": "2024-08-20T09:30:00Z", "case_type": "refund", "channel": "chat"}
    key = API_KEYS[0]
    wrong_same_length = key[:-1] + ("x" if key[-1] != "x" else "y")
    with httpx.Client(base_url=service.url, timeout=30) as anonymous:
        for given in (wrong_same_length, key[:-1], key[:4], key + "0", key.upper(), ""):
            r = anonymous.post("/v1/tickets/score", json=ticket, headers={"X-API-Key": given})
            assert r.status_code == 401, (given, r.text)
            assert key not in r.text
        r = anonymous.post("/v1/tickets/score", json=ticket, headers={"X-API-Key": key})
        assert r.status_code == 200
    log = service.tail(10_000_000)
    assert not any(k in log for k in (*API_KEYS, wrong_same_length)), "an API key reached the log"

    # The comparison itself: hmac.compare_digest against every configured key (no early exit on a match).
    calls: list[tuple[bytes, bytes]] = []

    def spy(a, b):
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(app.hmac, "compare_digest", spy)
    monkeypatch.setenv("AFTERSALES_API_KEYS", json.dumps(API_KEYS))
    from features.settings import get_settings

    get_settings.cache_clear()
    try:
        guard = app.GuardMiddleware(None)
        assert guard._authorized([(b"x-api-key", key.encode())])
        assert not guard._authorized([(b"x-api-key", wrong_same_length.encode())])
    finally:
        get_settings.cache_clear()
    assert len(calls) == 2 * len(API_KEYS)  # every key compared, each time


def test_metrics_have_one_series_per_route_not_per_account(service, deployment):
    """200 different account IDs (and 50 random paths) add no metric series beyond one per route and status."""
    def series() -> set[str]:
        text = service.client.get("/metrics").text
        return {line.split(" ")[0] for line in text.splitlines()
                if line.startswith("bentoml_service_request_total{")}

    before = series()
    for i in range(200):
        r = service.client.post(f"/v1/accounts/no-such-account-{i}/decision", json={"decision": "cleared",
                                                                                    "reviewer": "li"})
        assert r.status_code == 404
    for i in range(50):
        assert service.client.get(f"/v1/random-{i}/x").status_code == 404
    after = series()
    new = after - before
    assert len(new) <= 2, new  # at most the decision route's 404 series and the one for unmatched paths
    assert not any("no-such-account" in s or "random-" in s for s in after)
    assert any('endpoint="/v1/accounts/{account_id}/decision"' in s and 'http_response_code="404"' in s
               for s in after), sorted(after)
    text = service.client.get("/metrics").text
    count = next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith("bentoml_service_request_total{")
                 and 'endpoint="/v1/accounts/{account_id}/decision"' in line and 'code="404"' in line)
    assert count >= 200


def test_non_json_bodies_are_refused_with_415(service):
    for ctype in ("multipart/form-data", "application/x-www-form-urlencoded", "text/plain"):
        r = service.client.post("/v1/tickets/score", content=b"ticket_id=1", headers={"content-type": ctype})
        assert r.status_code == 415 and "application/json" in r.json()["error"], (ctype, r.text)
    r = service.client.post("/v1/tickets/score", content=b'{"ticket_id": "j", "created_at": "2024-08-20T09:30:00Z",'
                            b' "case_type": "refund", "channel": "chat"}',
                            headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text


def test_the_single_ticket_route_answers_as_bentomls_own_dispatch(service, deployment):
    """serving/fast_path.py answers POST /v1/tickets/score: validated by the class BentoML builds for the API (same
    400 error and detail), a Content-Length answer (not chunked), counted in /metrics under its route."""
    from pydantic import ValidationError

    from serving.service import AfterSalesService

    bad = {"ticket_id": "", "created_at": "not a time", "case_type": "nope", "channel": "chat", "amount": -1}
    r = service.client.post("/v1/tickets/score", json=bad)
    with pytest.raises(ValidationError) as e:
        AfterSalesService.apis["score_ticket"].input_spec.model_validate_json(json.dumps(bad))
    expected = {"error": f"{e.value.error_count()} validation error for {e.value.title}",
                "detail": json.loads(json.dumps(e.value.errors(include_context=False, include_input=False)))}
    assert r.status_code == 400 and r.json() == expected, r.text
    ok = service.client.post("/v1/tickets/score", json=_json_ticket(deployment["tickets"].iloc[0]))
    assert ok.status_code == 200 and int(ok.headers["content-length"]) == len(ok.content)
    assert "chunked" not in ok.headers.get("transfer-encoding", "")
    assert ok.json()["model_versions"]["ticket_triage"] == deployment["triage_version"]
    metrics = service.client.get("/metrics").text
    assert any('endpoint="/v1/tickets/score"' in line and 'http_response_code="400"' in line
               for line in metrics.splitlines()), "the fast path's answers are not in /metrics"
    assert "invalid request on /v1/tickets/score [POST] answered 400" in service.tail(200_000)


def test_times_outside_plausible_years_are_a_400_naming_the_field(service):
    ticket = {"ticket_id": "y", "created_at": "0203-10-11T01:53:20+07:15", "case_type": "refund", "channel": "chat"}
    r = service.client.post("/v1/tickets/score", json=ticket)
    assert r.status_code == 400 and any(d["loc"] == ["created_at"] for d in r.json()["detail"]), r.text
    r = service.client.post("/v1/tickets/score-batch", json={"tickets": [dict(ticket, created_at="2024-01-01",
                                                                              delivered_at="9999-01-01T00:00:00")]})
    assert r.status_code == 400 and "delivered_at" in r.text
    _no_trace(r)


def test_bodies_over_the_limit_are_refused_before_they_are_read(service):
    big = json.dumps({"tickets": [{"ticket_id": f"t{i}", "created_at": "2024-08-20T09:30:00Z", "case_type": "refund",
                                   "channel": "chat", "text": "x" * 19_000} for i in range(20)]}).encode()
    assert len(big) > MAX_BODY
    r = service.client.post("/v1/tickets/score-batch", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunks():  # no Content-Length: counted as it arrives
        for i in range(0, len(big), 65_536):
            yield big[i:i + 65_536]

    r = service.client.post("/v1/tickets/score-batch", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    small = json.dumps({"tickets": [{"ticket_id": "c1", "created_at": "2024-08-20T09:30:00Z", "case_type": "refund",
                                     "channel": "chat"}]}).encode()
    r = service.client.post("/v1/tickets/score-batch", content=iter([small[:50], small[50:]]),
                            headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["count"] == 1  # a chunked body under the limit is served
    assert service.client.get("/livez").status_code == 200  # the service is still there


def test_request_timeouts_leave_no_timer_behind_and_still_answer_504():
    """The BentoML timeout middleware, as patched by the service: no timer per finished request, 504 when slow."""
    import asyncio

    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    from serving.bentoml_patches import cancel_timeout_timers

    cancel_timeout_timers()

    async def fast(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def slow(scope, receive, send):
        await asyncio.sleep(5)

    async def run() -> tuple[int, list[dict]]:
        loop = asyncio.get_running_loop()
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        app = TimeoutMiddleware(fast, timeout=60)
        for _ in range(200):
            await app({"type": "http"}, receive, send)
        pending = sum(1 for h in loop._scheduled if not h.cancelled())
        await TimeoutMiddleware(slow, timeout=0.05)({"type": "http"}, receive, send)
        return pending, sent

    pending, sent = asyncio.run(run())
    assert pending == 0  # unpatched: 200 live timers, each holding its request's future for 60 s
    assert sent[-2]["status"] == 504 and b"0.05 seconds" in sent[-1]["body"]


def test_a_model_pickled_by_an_older_class_version_is_refused_by_name():
    from serving.served import _missing_params

    current = ReturnVolumeForecaster(horizon=7)
    assert _missing_params(current) == []
    old = ReturnVolumeForecaster(horizon=7)
    del old.__dict__["seed"]  # as if pickled before the class gained `seed`
    assert _missing_params(old) == ["seed"]

