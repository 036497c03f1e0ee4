"""Eight processes writing review decisions at once, two of them killed mid-write: no acknowledged decision is lost.

Each writer is a fresh process calling the project's own ``record_decision`` against the same store (a fresh file:
they also race to create the table), released together by a barrier, and appends a decision's key to its own log, fsync'd, only after ``record_decision`` returned: that log is
what the writer's client was told. One writer SIGKILLs itself inside a decision's transaction (after the INSERT,
before the COMMIT); the parent SIGKILLs another at a random moment while it loops. Afterwards every acknowledged
decision is in the store exactly once, nothing is stored that was never asked for, no row is partial, the file passes
``PRAGMA integrity_check``, and restarting the killed writers (same keys: a client retrying) doubles nothing.

The same run goes against SQLite (the default store) and a throwaway PostgreSQL server started here (initdb from the
Debian postgresql package, as the ``postgres`` user when running as root).
"""

from __future__ import annotations

import glob
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from features.reviews import list_decisions, record_decision

# "forkserver": each writer is forked from a clean server process that has imported features.reviews and nothing
# else (no engine, no connection, nothing of the test process), so it starts like a fresh interpreter without paying
# pandas' and SQLAlchemy's import eight times (~3 s of CPU each here). "spawn" works too, only slower.
START_METHOD = "forkserver"

KNOWN = {f"A{i:03d}" for i in range(60)}
WORKERS, PER_WORKER = 8, 20
SELF_KILLER, PARENT_KILLED = 6, 7
KILL_IN_TRANSACTION_AT = 11  # the self-killer dies inside its 12th decision's transaction
SHARED = tuple(f"w99-{i}" for i in range(6))  # sent by every writer


def expected_row(key: str) -> dict:
    """What decision `key` holds: a writer writes exactly this, so a stored row can be checked field by field."""
    worker, i = (int(x) for x in key[1:].split("-"))
    return {"account_id": f"A{(worker * 7 + i) % 60:03d}", "decision": "cleared" if i % 2 else "confirmed_abuse",
            "reviewer": f"reviewer-{worker}", "note": f"case {key}: " + "x" * (i * 13 % 300)}


def _ack(log, line: str) -> None:
    log.write(line + "\n")
    log.flush()
    os.fsync(log.fileno())


def writer(url: str, worker: int, n: int, log_path: str, start, kill_at: int | None = None,
           shared: tuple[str, ...] = ()) -> None:
    """Record the ``shared`` decisions, then w{worker}-0 .. w{worker}-{n-1}; acknowledge each in `log_path` after
    the call returned.

    With ``kill_at``, SIGKILL this process inside that decision's transaction: after its INSERT, before COMMIT.
    Every fifth decision is sent twice, as a client does after a timeout.
    """
    from sqlalchemy import event

    from features.reviews import get_engine

    engine = get_engine(url)
    armed = {"key": None}
    if kill_at is not None:
        @event.listens_for(engine, "commit")
        def _die_before_commit(conn) -> None:  # SQLAlchemy calls this just before it sends COMMIT
            if armed["key"] is not None:
                os.kill(os.getpid(), signal.SIGKILL)

    start.wait(120)
    with open(log_path, "a", encoding="utf-8") as log:
        for key in shared:  # decisions every writer sends: eight clients retrying the same keys at once
            row = expected_row(key)
            rec = record_decision(row["account_id"], row["decision"], row["reviewer"], row["note"], decision_id=key,
                                  known_accounts=KNOWN, source="test", url=url)
            _ack(log, f"{key} {'dup' if rec['duplicate'] else 'new'}")
        for i in range(n):
            key = f"w{worker}-{i}"
            row = expected_row(key)
            armed["key"] = key if i == kill_at else None
            rec = record_decision(row["account_id"], row["decision"], row["reviewer"], row["note"], decision_id=key,
                                  known_accounts=KNOWN, source="test", url=url)
            _ack(log, f"{key} {'dup' if rec['duplicate'] else 'new'}")
            if i % 5 == 0:
                again = record_decision(row["account_id"], row["decision"], row["reviewer"], row["note"],
                                        decision_id=key, known_accounts=KNOWN, source="test", url=url)
                assert again["duplicate"] and again["decision_id"] == key
                _ack(log, f"{key} dup")


def acknowledged(log_path: Path) -> list[str]:
    if not log_path.exists():
        return []
    lines = log_path.read_text(encoding="utf-8").splitlines()
    return [line.split()[0] for line in lines if line.strip()]


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0]


def check_store(url: str, acked: set[str], attempted: set[str]) -> None:
    """Every acknowledged decision exactly once; only attempted keys; each row whole and as written."""
    stored = list_decisions(url=url)
    keys = stored["decision_id"].tolist()
    assert len(keys) == len(set(keys)), "a decision is stored twice"
    missing = acked - set(keys)
    assert not missing, f"acknowledged but lost: {sorted(missing)[:10]}"
    assert set(keys) <= attempted, f"stored but never sent: {sorted(set(keys) - attempted)[:10]}"
    for rec in stored.itertuples():
        exp = expected_row(rec.decision_id)
        got = {"account_id": rec.account_id, "decision": rec.decision, "reviewer": rec.reviewer, "note": rec.note}
        assert got == exp, rec.decision_id  # no partial or mixed-up row
        assert rec.source == "test" and rec.decided_at is not None and rec.recorded_at is not None


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]), None)
    if found is None:
        pytest.fail(f"PostgreSQL's {name} not found: install the server (Debian: apt-get install postgresql); "
                    ".ci/run does this in CI")
    return found


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on a free loopback port; yields a function making a fresh database URL."""
    root = Path(tempfile.mkdtemp(prefix="aftersales-pg-"))
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg:
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run([*as_pg, _pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync",
                    "-E", "UTF8"], check=True, capture_output=True)
    subprocess.run([*as_pg, _pg_bin("pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    import psycopg2

    created = []

    def new_database() -> str:
        name = f"reviews_{len(created)}"
        con = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        con.autocommit = True
        con.cursor().execute(f"CREATE DATABASE {name}")
        con.close()
        created.append(name)
        return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{name}"

    try:
        yield new_database
    finally:
        subprocess.run([*as_pg, _pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _pg_healthy(url: str) -> str:
    """No transaction of a killed writer is left open (the server rolled it back when the client vanished)."""
    import psycopg2
    from sqlalchemy.engine import make_url

    u = make_url(url)
    con = psycopg2.connect(host=u.host, port=u.port, user=u.username, dbname=u.database)
    try:
        for _ in range(100):
            with con.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state LIKE "
                            "'idle in transaction%%' AND pid <> pg_backend_pid()", (u.database,))
                if cur.fetchone()[0] == 0:
                    return "ok"
            time.sleep(0.05)
        return "a killed writer's transaction is still open"
    finally:
        con.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """(url, health check returning "ok") for a fresh, empty store."""
    if request.param == "sqlite":
        db = tmp_path / "reviews.db"
        return f"sqlite:///{db}", lambda: integrity(db)
    url = request.getfixturevalue("postgres")()
    return url, lambda: _pg_healthy(url)


def writer_context():
    ctx = mp.get_context(START_METHOD)
    if START_METHOD == "forkserver":
        ctx.set_forkserver_preload(["features.reviews"])
    return ctx


def test_eight_writers_two_killed_mid_write_lose_and_double_nothing(store, tmp_path):
    url, healthy = store  # a fresh store: the eight processes also race to create the table
    ctx = writer_context()
    start = ctx.Barrier(WORKERS + 1)  # all eight start writing at the same moment
    logs = [tmp_path / f"ack-{w}.log" for w in range(WORKERS)]
    procs = []
    for w in range(WORKERS):
        n = 10_000 if w == PARENT_KILLED else PER_WORKER  # the parent-killed writer loops until it is killed
        kill_at = KILL_IN_TRANSACTION_AT if w == SELF_KILLER else None
        procs.append(ctx.Process(target=writer, args=(url, w, n, str(logs[w]), start, kill_at, SHARED), daemon=True))
    for p in procs:
        p.start()
    start.wait(120)
    # SIGKILL the looping writer at a random moment once it has acknowledged a few of its own decisions.
    rng = random.Random()
    target = len(SHARED) + rng.randint(5, 12)
    deadline = time.monotonic() + 120
    while len(acknowledged(logs[PARENT_KILLED])) < target and time.monotonic() < deadline:
        assert procs[PARENT_KILLED].is_alive(), f"the looping writer died early ({procs[PARENT_KILLED].exitcode})"
        time.sleep(0.002)
    time.sleep(rng.uniform(0, 0.03))
    os.kill(procs[PARENT_KILLED].pid, signal.SIGKILL)
    for p in procs:
        p.join(timeout=180)
    codes = [p.exitcode for p in procs]
    assert codes[SELF_KILLER] == codes[PARENT_KILLED] == -signal.SIGKILL, codes
    assert [c for w, c in enumerate(codes) if w not in (SELF_KILLER, PARENT_KILLED)] == [0] * (WORKERS - 2), codes

    lines = {w: [ln.split() for ln in logs[w].read_text().splitlines()] for w in range(WORKERS)}
    acks = {w: [k for k, _ in lines[w]] for w in range(WORKERS)}
    # the self-killer acknowledged everything before the decision it died in, and not that one
    assert acks[SELF_KILLER][-1] == f"w{SELF_KILLER}-{KILL_IN_TRANSACTION_AT - 1}"
    last = int(acks[PARENT_KILLED][-1].split("-")[1])
    parent_killed_sent = last + 2  # the decision after the last acknowledged one may have been in flight
    attempted = set(SHARED) | {f"w{w}-{i}" for w in range(WORKERS) if w != PARENT_KILLED for i in range(PER_WORKER)}
    attempted |= {f"w{PARENT_KILLED}-{i}" for i in range(parent_killed_sent)}
    acked = {k for a in acks.values() for k in a}
    assert healthy() == "ok"
    check_store(url, acked, attempted)
    stored = set(list_decisions(url=url)["decision_id"])
    assert f"w{SELF_KILLER}-{KILL_IN_TRANSACTION_AT}" not in stored  # killed before COMMIT: nothing left behind
    for w in range(WORKERS):
        if w not in (SELF_KILLER, PARENT_KILLED):
            assert {f"w{w}-{i}" for i in range(PER_WORKER)} <= stored, w
    # eight clients sent each shared key at once: one was told "stored", seven "already there"
    for key in SHARED:
        states = sorted(state for w in range(WORKERS) for k, state in lines[w] if k == key)
        assert states == ["dup"] * (WORKERS - 1) + ["new"], (key, states)

    # Restart the two killed writers: their clients retry every decision with the same keys.
    for w in (SELF_KILLER, PARENT_KILLED):
        n = PER_WORKER if w == SELF_KILLER else parent_killed_sent
        retry_log = tmp_path / f"retry-{w}.log"
        go = threading.Event()
        go.set()
        writer(url, w, n, str(retry_log), go)
        already = {ln.split()[0] for ln in retry_log.read_text().splitlines() if ln.endswith(" dup")}
        assert set(acks[w]) - set(SHARED) <= already, "an acknowledged decision was written again"
    check_store(url, attempted, attempted)  # now every decision sent is there, once
    assert len(list_decisions(url=url)) == len(attempted)
    assert healthy() == "ok"


def test_store_settings_make_writers_queue_and_commits_durable(tmp_path):
    url = f"sqlite:///{tmp_path / 'reviews.db'}"
    record_decision("A001", "cleared", "li.wei", known_accounts=KNOWN, url=url)
    from features.reviews import get_engine

    with get_engine(url).connect() as conn:
        pragma = {p: conn.exec_driver_sql(f"PRAGMA {p}").scalar() for p in ("journal_mode", "synchronous",
                                                                            "busy_timeout")}
    assert pragma == {"journal_mode": "wal", "synchronous": 2, "busy_timeout": 30000}  # 2 = FULL


# --- bulk import: idempotent, every row counted, an interrupted import resumed without doubles ----------------------


def _decisions_file(tmp_path: Path) -> tuple[Path, Path]:
    """A data folder knowing accounts A000..A059 and a review_decisions.csv with good, bad and repeated rows."""
    data = tmp_path / "data"
    data.mkdir()
    accounts = sorted(KNOWN)
    pd.DataFrame({"order_id": [f"o{i}" for i in range(60)], "account_id": accounts, "merchant_id": "m1",
                  "ordered_at": "2024-01-02T00:00:00Z", "quantity": 1, "amount": 9.5}).to_csv(data / "orders.csv",
                                                                                            index=False)
    pd.DataFrame(columns=["return_id", "merchant_id", "requested_at", "quantity", "refund_amount"]).to_csv(
        data / "returns.csv", index=False)
    rows = [{"account_id": a, "decision": "cleared" if i % 3 else "confirmed_abuse",
             "decided_at": f"2024-02-{1 + i % 28:02d}T10:00:00Z", "reviewer": f"r{i % 4}", "note": f"n{i}"}
            for i, a in enumerate(accounts[:40])]
    rows.insert(5, {**rows[2]})  # the same decision twice in the file: stored once, counted as already present
    rows.insert(9, {"account_id": "A001", "decision": "maybe", "decided_at": "2024-02-01", "reviewer": "x",
                    "note": ""})  # breaks the contract
    rows.insert(14, {"account_id": "GHOST", "decision": "cleared", "decided_at": "2024-02-01", "reviewer": "x",
                     "note": ""})  # passes the contract, refused by the store: unknown account
    path = tmp_path / "review_decisions.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return data, path


def _import(path: Path, data: Path):
    from click.testing import CliRunner

    from features.settings import get_settings
    from training.cli import main

    get_settings.cache_clear()  # read AFTERSALES_REVIEW_DB_URL afresh
    try:
        res = CliRunner().invoke(main, ["review", "import", str(path), "--data", str(data)])
    finally:
        get_settings.cache_clear()
    assert res.exit_code == 0, res.output
    return res


def test_review_import_counts_every_row_and_is_idempotent(tmp_path, monkeypatch):
    data, path = _decisions_file(tmp_path)
    db = tmp_path / "reviews.db"
    monkeypatch.setenv("AFTERSALES_REVIEW_DB_URL", f"sqlite:///{db}")
    first = _import(path, data)
    again = _import(path, data)
    assert "43 rows read, 1 rejected by the contract, 1 refused by the store" in first.output
    assert "stored 40, already present 1" in first.output  # 40 + 1 + 1 + 1 = 43: every row counted once
    assert "stored 0, already present 41" in again.output
    rejects = pd.read_csv(tmp_path / "review_decisions_rejects" / "rejects.csv")
    assert rejects[["row", "field"]].values.tolist() == [[10, "decision"], [15, "account_id"]]  # rows in the file
    assert "unknown account 'GHOST'" in rejects.loc[1, "rule"]
    stored = list_decisions(url=f"sqlite:///{db}")
    assert len(stored) == stored["decision_id"].nunique() == 40


def importer(url: str, frame: pd.DataFrame, kill_after: int) -> None:
    """Import `frame`, SIGKILLed inside the transaction of its row number `kill_after` (0-based)."""
    from sqlalchemy import event

    from features.reviews import get_engine, import_decisions

    commits = {"n": 0}

    @event.listens_for(get_engine(url), "commit")
    def _die(conn) -> None:
        if commits["n"] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        commits["n"] += 1

    import_decisions(frame, known_accounts=KNOWN, url=url)


def test_an_import_killed_half_way_and_run_again_stores_each_decision_once(tmp_path):
    from features.contract import load_table
    from features.reviews import import_decisions

    _, path = _decisions_file(tmp_path)
    frame = load_table("review_decisions", path)[0]
    url = f"sqlite:///{tmp_path / 'reviews.db'}"
    list_decisions(url=url)  # create the table first, so the kill counts only decision commits
    p = writer_context().Process(target=importer, args=(url, frame, 17))
    p.start()
    p.join(timeout=120)
    assert p.exitcode == -signal.SIGKILL
    half = list_decisions(url=url)
    assert 0 < len(half) < 40 and integrity(tmp_path / "reviews.db") == "ok"
    res = import_decisions(frame, known_accounts=KNOWN, url=url)  # the operator runs the import again
    assert res["already_present"] >= len(half) and res["stored"] + res["already_present"] + res["refused"] == len(frame)
    final = list_decisions(url=url)
    assert len(final) == final["decision_id"].nunique() == 40
    assert set(half["decision_id"]) <= set(final["decision_id"])


def test_cli_retry_with_the_same_decision_id_is_stored_once(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from features.settings import get_settings
    from training.cli import main

    data, _ = _decisions_file(tmp_path)
    monkeypatch.setenv("AFTERSALES_REVIEW_DB_URL", f"sqlite:///{tmp_path / 'reviews.db'}")
    get_settings.cache_clear()
    args = ["review", "record", "--account", "A007", "--decision", "cleared", "--reviewer", "li.wei", "--data",
            str(data)]
    try:
        runner = CliRunner()
        first = runner.invoke(main, [*args, "--decision-id", "ticket-4711"])
        again = runner.invoke(main, [*args, "--decision-id", "ticket-4711"])  # the operator's retry after a timeout
        too_long = runner.invoke(main, [*args, "--decision-id", "k" * 65])
    finally:
        get_settings.cache_clear()
    assert first.exit_code == 0 and first.output.startswith("recorded"), first.output
    assert again.exit_code == 0 and again.output.startswith("already recorded"), again.output
    assert too_long.exit_code == 1 and "decision_id must be 1 to 64 characters" in too_long.output
    assert list_decisions(url=f"sqlite:///{tmp_path / 'reviews.db'}")["decision_id"].tolist() == ["ticket-4711"]
