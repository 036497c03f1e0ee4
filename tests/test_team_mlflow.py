"""Team MLflow: a real PostgreSQL server and a real ``mlflow server`` on it, shared by two team members.

The module starts its own PostgreSQL cluster (initdb in a temporary folder, a free loopback port; as the
``postgres`` user when the tests run as root, since initdb refuses root) and an MLflow tracking server whose backend
store is that database and whose artifacts it proxies to a temporary folder. Nothing is skipped: without the
PostgreSQL binaries the tests fail saying what to install (``.ci/run`` installs them from Debian where missing).
"""

from __future__ import annotations

import glob
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.contract import load_dataset
from features.merchants import build_features, prepare_events
from features.reviews import import_decisions, list_decisions, record_decision
from features.settings import Settings
from training import merchant_risk, registry

BIN = Path(sys.executable).parent
INSTALL_HINT = ("install PostgreSQL (Debian/Ubuntu: apt-get install postgresql; `.ci/run` does it where missing), "
                "or put its bin folder (initdb, pg_ctl) on PATH")
# The merchant-risk world of tests/test_merchant_risk.py: the cheapest model to train end to end (~5 s).
WORLD = dict(seed=5, accounts=1500, merchants=50, start="2023-01-01", days=420, market="CN", progress=False)
MIN_LABEL_ORDERS = 10


def _pg_program(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if versions:
        return versions[-1]
    pytest.fail(f"PostgreSQL's {name} not found on PATH nor in /usr/lib/postgresql/*/bin: {INSTALL_HINT}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Postgres:
    """A running throw-away PostgreSQL cluster (trust authentication on loopback only)."""

    port: int
    user: str = "postgres"

    def url(self, database: str, driver: str = "psycopg2") -> str:
        return f"postgresql+{driver}://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres")
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            conn.cursor().execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)


@pytest.fixture(scope="module")
def postgres():
    initdb, pg_ctl = _pg_program("initdb"), _pg_program("pg_ctl")
    # Not under pytest's tmp_path: that is private to root, and the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="aftersales-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            shutil.chown(base, "postgres")
        except LookupError:
            pytest.fail(f"running as root and there is no `postgres` user to run PostgreSQL as: {INSTALL_HINT}")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", _free_port()
    init = subprocess.run([*as_postgres, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                           "--no-sync"], capture_output=True, text=True)
    assert init.returncode == 0, f"initdb failed:\n{init.stdout}\n{init.stderr}"
    opts = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off "
            "-c synchronous_commit=off")
    start = subprocess.run([*as_postgres, pg_ctl, "-D", str(data), "-l", str(base / "server.log"), "-o", opts, "-w",
                            "-t", "60", "start"], capture_output=True, text=True)
    log = base / "server.log"
    assert start.returncode == 0, (f"PostgreSQL did not start:\n{start.stderr}\n"
                                   f"{log.read_text() if log.exists() else ''}")
    try:
        yield Postgres(port)
    finally:
        subprocess.run([*as_postgres, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class MlflowServer:
    uri: str
    artifacts: Path
    backend: str


def _wait_healthy(uri: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {timeout:.0f}s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """The README's team server command, on the test's PostgreSQL and a temporary artifact folder."""
    backend = postgres.create_database("mlflow")
    artifacts = tmp_path_factory.mktemp("team_artifacts")
    port = _free_port()
    log = artifacts.parent / "mlflow_server.log"
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend, "--artifacts-destination",
           artifacts.as_uri(), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # MLflow's background job runner serves GenAI features this project does not use: one process less to start.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "w") as out:
        # Own session: the server's workers are stopped with it, and nothing else.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(uri, proc, log)
        yield MlflowServer(uri, artifacts, backend)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def world(world_factory) -> Path:
    return world_factory(**WORLD)


def _member_env(server: MlflowServer, models_dir: Path) -> dict[str, str]:
    """A team member's environment: their own models/ folder, the shared tracking server (README settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFTERSALES_")}
    env |= {"AFTERSALES_MLFLOW_TRACKING_URI": server.uri, "AFTERSALES_MODELS_DIR": str(models_dir),
            "AFTERSALES_MERCHANT_MIN_LABEL_ORDERS": str(MIN_LABEL_ORDERS)}
    return env


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    res = subprocess.run([str(BIN / "aftersales"), *args], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"aftersales {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res


# --------------------------------------------------------------------------------------------------------------------
# Tests


def test_two_team_members_share_models_and_the_gate_through_the_server(mlflow_server, world, tmp_path):
    server = mlflow_server
    alice_dir, bob_dir = tmp_path / "alice" / "models", tmp_path / "bob" / "models"
    alice = Settings(models_dir=alice_dir, mlflow_tracking_uri=server.uri, merchant_min_label_orders=MIN_LABEL_ORDERS)
    assert alice.artifact_root is None  # the server decides where artifacts go

    # Alice trains in this process: the first version becomes champion.
    first = merchant_risk.train(world, alice)
    assert (first["version"], first["promoted"]) == (1, True)

    # Bob, another process with his own models/ folder and only the README's settings, retrains on the same data:
    # the gate finds Alice's champion on the server, sees it trained on this data over the held-out period (so it
    # cannot be scored fairly on those rows) and decides by the documented rule: beat every baseline.
    bob_env = _member_env(server, bob_dir)
    res = _cli(["train", "merchant-risk", "--data", str(world)], bob_env)
    assert "version: 2" in res.stdout and "promoted: True" in res.stdout, res.stdout
    assert "champion v1 could not be scored" in res.stdout and "beats every baseline" in res.stdout

    # Bob lists the models: both versions, the champion alias moved to Bob's on the shared server.
    listing = _cli(["models"], bob_env).stdout
    rows = [line.split() for line in listing.splitlines() if line.startswith("merchant_risk")]
    versions = {int(r[1]): r for r in rows}
    assert set(versions) == {1, 2} and versions[2][2] == "champion" and versions[1][2] != "champion"

    # Both load the same pinned champion through the server; neither has artifacts on their own disk.
    for settings in (alice, Settings(models_dir=bob_dir, mlflow_tracking_uri=server.uri)):
        loaded = registry.load_champion("merchant_risk", settings=settings)
        assert loaded.version == 2 and loaded.metrics["ndcg_at_50"] > 0
        events = prepare_events(load_dataset(world))
        X = build_features(events, events.end)
        scores = loaded.model.predict(X)
        assert np.isfinite(scores).all() and len(scores) == len(X)
    assert not list(alice_dir.rglob("MLmodel")) and not list(bob_dir.rglob("MLmodel"))
    assert len(list(server.artifacts.rglob("MLmodel"))) == 2  # both versions, in the server's destination
    assert list(server.artifacts.rglob("lift.png"))  # run artifacts too

    # The run metadata is in PostgreSQL, not in a local SQLite file.
    import psycopg2

    conn = psycopg2.connect(server.backend.replace("postgresql+psycopg2", "postgresql"))
    try:
        cur = conn.cursor()
        cur.execute("SELECT version FROM model_versions WHERE name = 'merchant_risk' ORDER BY version")
        assert [v for (v,) in cur.fetchall()] == [1, 2]
        cur.execute("SELECT version FROM registered_model_aliases WHERE name = 'merchant_risk' AND alias = 'champion'")
        assert cur.fetchall() == [(2,)]
    finally:
        conn.close()
    assert not list(tmp_path.rglob("mlflow.db"))

    # Cards: each member's registration wrote one locally; a third member, with an empty models/ folder, prints
    # Bob's card (version 2, promoted by the rule, saying why the champion was not scored) from the server.
    assert (alice_dir / "cards" / "merchant_risk" / "v1.md").exists()
    bob_card = (bob_dir / "cards" / "merchant_risk" / "v2.md").read_text()
    assert "**Not champion**" not in bob_card and "champion v1 could not be scored" in bob_card
    printed = _cli(["card", "merchant-risk", "--version", "2"], _member_env(server, tmp_path / "carol" / "models"))
    assert printed.stdout == bob_card


def _pg_writer(url: str, worker: int, n: int) -> None:
    known = {f"A{i:03d}" for i in range(20)}
    for i in range(n):
        # Workers 0 and 1 write the same six keys, as do 2 and 3: retries of one decision from two processes.
        key = f"{worker // 2}-{i % 6}"
        record_decision(f"A{i % 6:03d}", "cleared", "team", decision_id=key, known_accounts=known, url=url)


def test_review_decision_store_on_postgresql(postgres):
    url = postgres.create_database("reviews")
    known = {f"A{i:03d}" for i in range(20)}
    rec = record_decision("A001", "confirmed_abuse", "li.wei", "14 returns in a month", known_accounts=known,
                          decided_at="2024-03-01T10:00:00", decision_id="k-1", url=url)
    again = record_decision("A001", "confirmed_abuse", "li.wei", decision_id="k-1", known_accounts=known, url=url)
    assert not rec["duplicate"] and again["duplicate"]
    frame = list_decisions(url=url)
    assert frame["decision_id"].tolist() == ["k-1"]
    assert frame.loc[0, "decided_at"] == pd.Timestamp("2024-03-01T10:00:00", tz="UTC")  # timestamptz round trip
    assert frame.loc[0, "note"] == "14 returns in a month"

    table = pd.DataFrame({"account_id": ["A002", "A003"], "decision": ["cleared", "confirmed_abuse"],
                          "decided_at": pd.to_datetime(["2024-01-02", "2024-01-03"], utc=True),
                          "reviewer": ["m.chen", "m.chen"], "note": [None, None]})
    assert import_decisions(table, known_accounts=known, url=url)["stored"] == 2
    assert import_decisions(table, known_accounts=known, url=url)["already_present"] == 2

    # Four processes, two pairs writing the same idempotency keys at once: each decision stored exactly once.
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_pg_writer, args=(url, w, 12)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 4
    stored = list_decisions(url=url)
    written = stored[stored["reviewer"] == "team"]
    assert sorted(written["decision_id"]) == sorted(f"{pair}-{k}" for pair in (0, 1) for k in range(6))
    assert len(stored) == 3 + 12
