"""Crash and restart: the service is SIGKILLed (whole process group, no shutdown hook) in the middle of load that
scores tickets and records review decisions; started again, it has lost no acknowledged decision, stored none
twice, takes client retries of the unanswered ones exactly once, and serves the same pinned model versions.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pandas as pd
import psutil
import pytest
from _service import Service

from features import reviews
from features.settings import Settings

API_KEY = "restart-key-5d1c"
WRITERS, SCORERS = 3, 2
LOAD_BEFORE_KILL_S = 4.0


def _versions(client: httpx.Client) -> dict[str, int | None]:
    health = client.get("/v1/health").json()
    return {m["name"]: m["version"] for m in health["models"]}


@pytest.fixture(scope="module")
def setup(deployment_shared, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("restart")
    d = deployment_shared
    db = f"sqlite:///{root / 'reviews.db'}"
    env = dict(AFTERSALES_API_KEYS=json.dumps([API_KEY]), AFTERSALES_REVIEW_DB_URL=db)
    accounts = pd.read_parquet(d["settings"].snapshots_dir / "accounts.parquet", columns=["account_id"])
    return {"root": root, "deployment": d, "env": env, "store": Settings(models_dir=root, review_db_url=db),
            "accounts": accounts["account_id"].astype(str).tolist()}


def _start(setup: dict, name: str) -> Service:
    d = setup["deployment"]
    svc = Service(d["settings"].models_dir, d["world"], setup["root"] / f"{name}.log", api_key=API_KEY,
                  **setup["env"])
    svc.wait_ready()
    return svc


def test_a_killed_service_loses_no_acknowledged_decision_and_serves_the_same_models(setup):
    accounts, tickets = setup["accounts"], setup["deployment"]["json_tickets"]
    first = _start(setup, "first")
    before = _versions(first.client)
    assert all(v is not None for v in before.values()), before

    acked: dict[str, dict] = {}  # decision_id -> body, answered 2xx
    unanswered: dict[str, tuple[str, dict]] = {}  # decision_id -> (account, body), sent but no answer
    refused: list[str] = []
    scored = [0]
    stop = threading.Event()
    lock = threading.Lock()

    def writer(k: int) -> None:
        with httpx.Client(base_url=first.url, timeout=10, headers={"X-API-Key": API_KEY}) as c:
            i = 0
            while not stop.is_set():
                account = accounts[(k * 7919 + i * 31) % len(accounts)]
                body = {"decision": "cleared" if i % 3 else "confirmed_abuse", "reviewer": f"reviewer-{k}",
                        "decision_id": f"restart-{k}-{i}", "note": f"crash test {i}"}
                i += 1
                try:
                    r = c.post(f"/v1/accounts/{account}/decision", json=body)
                except httpx.HTTPError:
                    with lock:
                        unanswered[body["decision_id"]] = (account, body)
                    if first.proc.poll() is not None:
                        return
                    continue
                with lock:
                    if r.status_code in (200, 201):
                        acked[body["decision_id"]] = {"account_id": account, **body}
                    else:
                        refused.append(f"{r.status_code} {r.text[:200]}")

    def scorer(k: int) -> None:
        with httpx.Client(base_url=first.url, timeout=10, headers={"X-API-Key": API_KEY}) as c:
            i = 0
            while not stop.is_set():
                try:
                    r = c.post("/v1/tickets/score", json=tickets[(k + i) % len(tickets)])
                    scored[0] += r.status_code == 200
                except httpx.HTTPError:
                    if first.proc.poll() is not None:
                        return
                i += 1

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(WRITERS)]
    threads += [threading.Thread(target=scorer, args=(k,)) for k in range(SCORERS)]
    for t in threads:
        t.start()
    time.sleep(LOAD_BEFORE_KILL_S)
    processes = [psutil.Process(p) for p in first.worker_pids()]
    assert len(processes) >= 2, "expected the server and at least one worker"
    for p in processes[1:]:  # SIGKILL the workers and the server, mid-load: no graceful drain, requests in flight
        p.kill()
    first.kill()
    stop.set()
    for t in threads:
        t.join(30)
    assert not refused, refused[:5]
    assert len(acked) >= 10 and scored[0] >= 10, (len(acked), scored[0], first.tail())

    second = _start(setup, "second")
    try:
        assert _versions(second.client) == before  # same pinned versions after the restart

        stored = reviews.list_decisions(settings=setup["store"])
        counts = stored["decision_id"].value_counts()
        missing = sorted(set(acked) - set(counts.index))
        assert not missing, f"{len(missing)} acknowledged decisions lost: {missing[:5]}"
        assert counts.max() == 1, counts[counts > 1]
        for did, row in stored.set_index("decision_id").loc[list(acked)].iterrows():
            assert (row["account_id"], row["decision"], row["reviewer"]) == \
                (acked[did]["account_id"], acked[did]["decision"], acked[did]["reviewer"]), did

        # Clients retry what got no answer, with the same decision_id: each lands exactly once.
        for did, (account, body) in unanswered.items():
            r = second.client.post(f"/v1/accounts/{account}/decision", json=body)
            assert r.status_code in (200, 201), r.text
            assert r.json()["duplicate"] == (did in set(counts.index)), did
        after = reviews.list_decisions(settings=setup["store"])["decision_id"].value_counts()
        assert set(after.index) == set(acked) | set(unanswered) and after.max() == 1
        print(f"\nrestart: {len(acked)} decisions acknowledged and {len(unanswered)} unanswered at the kill "
              f"({sum(d in counts.index for d in unanswered)} of those already stored); {scored[0]} tickets scored; "
              f"none lost, none doubled; versions {before}")

        # The workers run in sessions of their own (circus): killing only the server's process group must not
        # leave one serving the old models on the port with no supervisor (serving.app.die_with_parent).
        workers = [psutil.Process(p) for p in second.worker_pids()[1:]]
        assert workers
        second.kill()
        _, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, f"workers outlived the killed server: {[p.pid for p in alive]}"
    finally:
        leftovers = [psutil.Process(p) for p in second.worker_pids()[1:]]
        second.stop()
        for p in leftovers:  # nothing of ours left behind, whatever failed
            if p.is_running():
                p.kill()
