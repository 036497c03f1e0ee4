"""The review decision store: what the risk team decided about flagged accounts, in a SQL database.

SQLAlchemy 2.0 Core over SQLite (default ``settings.review_db``, a file under models/) or any other URL, e.g.
``postgresql+psycopg2://user:pw@host/db`` (psycopg2 is the PostgreSQL driver the project installs). Each decision is
one transaction. Concurrent writers neither lose nor double a decision:

- every decision carries a ``decision_id`` (an idempotency key; given by the caller, or derived from the decision's
  content for imports, or random); a unique constraint makes a retried write land once;
- on SQLite the file runs in WAL mode with a busy timeout, and write transactions start with ``BEGIN IMMEDIATE`` so
  two writers queue for the lock instead of failing half-way; a "database is locked" that still escapes is retried.

Validation refuses an unknown decision value or an account the platform does not know, with a message saying what to
do. The known accounts come from the caller (a data folder, the service's snapshot) or from the account snapshot
that training writes.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import time
import uuid
from collections.abc import Collection
from pathlib import Path

import pandas as pd
from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from features.contract import DECISIONS
from features.settings import Settings, get_settings

Decision = dict  # one stored decision: decision_id, account_id, decision, decided_at, reviewer, note, source, ...

metadata = MetaData()
decisions_table = Table(
    "review_decisions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("decision_id", String(64), nullable=False, unique=True),
    Column("account_id", String(128), nullable=False, index=True),
    Column("decision", String(32), nullable=False),
    Column("decided_at", DateTime(timezone=True), nullable=False),
    Column("reviewer", String(128), nullable=False),
    Column("note", Text, nullable=True),
    Column("source", String(32), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("decision IN ('confirmed_abuse', 'cleared')", name="ck_review_decision_value"),
)
COLUMNS = ["decision_id", "account_id", "decision", "decided_at", "reviewer", "note", "source", "recorded_at"]
LOCK_RETRIES = 8
SQLITE_SYNCHRONOUS = "FULL"  # see _sqlite_pragmas; benchmarks/bench_decision_writers.py compares it with NORMAL
MAX_LEN = {"decision_id": 64, "account_id": 128, "reviewer": 128}  # the column widths (PostgreSQL enforces them)


class DecisionError(ValueError):
    """A decision the store refuses: unknown account, unknown decision value, missing reviewer, reused key.

    ``field`` names the input field at fault (for rejects files and HTTP error details).
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


# --------------------------------------------------------------------------------------------------------------------
# Engine

_engines: dict[tuple[str, int], Engine] = {}


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # Let SQLAlchemy, not the driver, issue BEGIN (see _begin), then make the file safe for several writers.
    dbapi_connection.isolation_level = None
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA busy_timeout = 30000")
    cur.execute("PRAGMA journal_mode = WAL")
    # FULL, not NORMAL: in WAL mode NORMAL already survives a killed process, but a power cut or OS crash can lose
    # the last commits; FULL fsyncs the WAL at every commit, so an acknowledged decision is on disk (~5-10 ms each).
    cur.execute(f"PRAGMA synchronous = {SQLITE_SYNCHRONOUS}")
    cur.close()


def _begin(conn) -> None:
    # IMMEDIATE takes the write lock at the start: writers wait in line (busy_timeout) rather than deadlocking when
    # two read-then-write transactions both try to upgrade their lock.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def get_engine(url: str | None = None, settings: Settings | None = None) -> Engine:
    """The engine for ``url`` (default ``settings.review_db``), created once per process, tables created if absent."""
    url = url or (settings or get_settings()).review_db
    key = (url, os.getpid())  # engines must not cross a fork: each process opens its own connections
    engine = _engines.get(key)
    if engine is not None:
        return engine
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _begin)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    _retry(lambda: _create_tables(engine))
    _engines[key] = engine
    return engine


def _create_tables(engine: Engine) -> None:
    """Create the table if absent; several processes opening a new store at once create it once.

    SQLite queues them at BEGIN IMMEDIATE; PostgreSQL's check-then-CREATE would race (two CREATE TABLEs, one failing
    on a duplicate type), so creators take a transaction-scoped advisory lock first.
    """
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(4711001)")
        metadata.create_all(conn)


def _retry(fn, attempts: int = LOCK_RETRIES):
    """Run ``fn``, retrying with jittered backoff when SQLite reports a lock that outlived the busy timeout.

    Safe for writes because each attempt is a whole transaction with the same idempotency key: an attempt that did
    commit before the error surfaced is found by the next one, not written twice. The driver's own error is caught
    too: the pragmas run while a connection opens, where SQLAlchemy has not wrapped it yet.
    """
    for i in range(attempts):
        try:
            return fn()
        except (OperationalError, sqlite3.OperationalError) as e:
            text = str(e).lower()
            if ("locked" not in text and "busy" not in text) or i == attempts - 1:
                raise
            time.sleep(0.05 * 2 ** i * (0.5 + random.random()))
    return None


# --------------------------------------------------------------------------------------------------------------------
# Validation


def known_accounts_from_snapshot(settings: Settings | None = None) -> set[str] | None:
    """Account IDs in the serving snapshot written by training/scoring, or None when there is none yet."""
    settings = settings or get_settings()
    from features.generations import served_dir

    path = served_dir(settings.snapshots_dir) / "accounts.parquet"
    if not path.exists():
        return None
    return set(pd.read_parquet(path, columns=["account_id"])["account_id"].astype(str))


def _utc(value) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def validate_decision(account_id: str, decision: str, reviewer: str, known_accounts: Collection[str] | None,
                      decided_at=None) -> pd.Timestamp:
    """Check one decision; return its UTC time. Raises :class:`DecisionError` with what to do next."""
    if decision not in DECISIONS:
        raise DecisionError(f"unknown decision {decision!r}: use one of {', '.join(DECISIONS)}", "decision")
    if account_id is None or not str(account_id).strip():
        raise DecisionError("account_id is empty: give the ID of the reviewed account", "account_id")
    if reviewer is None or not str(reviewer).strip():
        raise DecisionError("reviewer is empty: say who decided (e.g. --reviewer li.wei)", "reviewer")
    for name, value in (("account_id", account_id), ("reviewer", reviewer)):
        if len(str(value).strip()) > MAX_LEN[name]:
            raise DecisionError(f"{name} is {len(str(value).strip())} characters long; the store keeps at most "
                                f"{MAX_LEN[name]}: check the value", name)
    if known_accounts is None:
        raise DecisionError(
            "cannot check the account: no account list was given and there is no account snapshot yet; pass "
            "--data DIR (the data folder the account comes from) or run `aftersales train serial-returners` first",
            "account_id")
    if str(account_id) not in known_accounts:
        raise DecisionError(f"unknown account {account_id!r}: it has no orders or returns in the data; check the ID "
                            "(guest orders have no account and cannot be reviewed)", "account_id")
    when = _utc(decided_at) if decided_at is not None else pd.Timestamp.now(tz="UTC")
    if when > pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=1):
        raise DecisionError(f"decided_at {when} lies in the future: give the time the decision was taken",
                            "decided_at")
    return when


def content_key(account_id: str, decision: str, decided_at, reviewer: str) -> str:
    """A stable decision_id from a decision's content: importing the same file twice stores each decision once."""
    raw = f"{account_id}|{decision}|{_utc(decided_at).isoformat()}|{reviewer}"
    return "imp-" + hashlib.sha256(raw.encode()).hexdigest()[:40]


# --------------------------------------------------------------------------------------------------------------------
# Writing and reading


def _row_dict(row) -> Decision:
    d = dict(row._mapping)
    d.pop("id", None)
    for k in ("decided_at", "recorded_at"):
        d[k] = _utc(d[k])  # SQLite hands times back without a zone; they were stored in UTC
    return d


def record_decision(account_id: str, decision: str, reviewer: str, note: str | None = None, *,
                    decided_at=None, decision_id: str | None = None,
                    known_accounts: Collection[str] | None = None, source: str = "api",
                    settings: Settings | None = None, url: str | None = None) -> Decision:
    """Store one decision in its own transaction and return it (with ``duplicate=True`` if it was already there).

    ``decision_id`` is the idempotency key: a client retrying after a timeout passes the same one and the decision
    is stored once. Without one, a random key is used. ``known_accounts`` defaults to the account snapshot.
    """
    if decision_id is not None and not (0 < len(str(decision_id).strip()) <= MAX_LEN["decision_id"]):
        raise DecisionError(f"decision_id must be 1 to {MAX_LEN['decision_id']} characters (got "
                            f"{len(str(decision_id).strip())}): use a short unique key, e.g. a UUID", "decision_id")
    if known_accounts is None:
        known_accounts = known_accounts_from_snapshot(settings)
    when = validate_decision(account_id, decision, reviewer, known_accounts, decided_at)
    decision_id = str(decision_id).strip() if decision_id is not None else uuid.uuid4().hex
    row = {"decision_id": decision_id, "account_id": str(account_id), "decision": decision,
           "decided_at": when.to_pydatetime(), "reviewer": str(reviewer).strip(),
           "note": (note or None), "source": source, "recorded_at": pd.Timestamp.now(tz="UTC").to_pydatetime()}
    engine = get_engine(url, settings)

    def write() -> Decision:
        try:
            with engine.begin() as conn:  # one decision, one transaction
                conn.execute(insert(decisions_table).values(**row))
            return {**row, "decided_at": when, "recorded_at": _utc(row["recorded_at"]), "duplicate": False}
        except IntegrityError:
            with engine.begin() as conn:
                existing = conn.execute(select(decisions_table).where(
                    decisions_table.c.decision_id == row["decision_id"])).first()
            if existing is None:
                raise
            stored = _row_dict(existing)
            same = all(stored[k] == row[k] for k in ("account_id", "decision", "reviewer"))
            if not same:
                raise DecisionError(f"decision_id {row['decision_id']!r} was already used for another decision "
                                    f"(account {stored['account_id']}, {stored['decision']}); use a new key",
                                    "decision_id") from None
            return {**stored, "duplicate": True}

    return _retry(write)


def list_decisions(settings: Settings | None = None, url: str | None = None, account_id: str | None = None,
                   since=None) -> pd.DataFrame:
    """Stored decisions, oldest first: :data:`COLUMNS` (times tz-aware UTC)."""
    engine = get_engine(url, settings)
    q = select(decisions_table).order_by(decisions_table.c.decided_at, decisions_table.c.id)
    if account_id is not None:
        q = q.where(decisions_table.c.account_id == str(account_id))
    if since is not None:
        q = q.where(decisions_table.c.decided_at >= _utc(since).to_pydatetime())

    def read() -> list:
        with engine.begin() as conn:
            return conn.execute(q).fetchall()

    rows = [_row_dict(r) for r in _retry(read)]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for c in ("decided_at", "recorded_at"):
        frame[c] = pd.to_datetime(frame[c], utc=True).dt.as_unit("us")
    for c in ("decision_id", "account_id", "decision", "reviewer", "note", "source"):
        frame[c] = frame[c].astype("string")
    return frame


def import_decisions(frame: pd.DataFrame, known_accounts: Collection[str] | None = None, source: str = "import",
                     settings: Settings | None = None, url: str | None = None) -> dict:
    """Store a contract ``review_decisions`` frame (validated rows); each row one transaction, content-keyed.

    Returns counts: stored, already_present, refused (``stored + already_present + refused == len(frame)``), the
    first refusal reasons, and ``refused_rows``: one dict per refused row (position in ``frame``, field, rule,
    value). Rows for unknown accounts or with unknown decision values are refused, not stored. Importing the same
    rows again, or after an interrupted import, stores each decision once: its key is its content.
    """
    if known_accounts is None:
        known_accounts = known_accounts_from_snapshot(settings)
    stored = present = 0
    refused: list[str] = []
    refused_rows: list[dict] = []
    for pos, rec in enumerate(frame.itertuples(index=False)):
        note = None if pd.isna(getattr(rec, "note", None)) else rec.note
        try:
            out = record_decision(rec.account_id, rec.decision, rec.reviewer, note, decided_at=rec.decided_at,
                                  decision_id=content_key(rec.account_id, rec.decision, rec.decided_at, rec.reviewer),
                                  known_accounts=known_accounts, source=source, settings=settings, url=url)
        except DecisionError as e:
            refused.append(f"{rec.account_id}: {e}")
            fld = e.field or "account_id"
            refused_rows.append({"position": pos, "field": fld, "rule": str(e),
                                 "value": str(getattr(rec, fld, ""))[:200]})
            continue
        present += out["duplicate"]
        stored += not out["duplicate"]
    return {"stored": stored, "already_present": present, "refused": len(refused), "refusals": refused[:10],
            "refused_rows": refused_rows}


def decision_labels(decisions: pd.DataFrame, as_of=None) -> pd.DataFrame:
    """One label per account from decisions up to the end of ``as_of``: the latest decision wins.

    Accepts the store's frame and the contract's ``review_decisions`` table alike (both have account_id, decision,
    decided_at, reviewer). Columns: account_id, label (1 = confirmed_abuse, 0 = cleared), decided_at; ordered by
    decision time (the order SerialReturnerModel expects).
    """
    d = decisions[["account_id", "decision", "decided_at", "reviewer"]].dropna(subset=["account_id", "decision"])
    d = d.assign(decided_at=pd.to_datetime(d["decided_at"], utc=True))
    if as_of is not None:
        d = d[d["decided_at"] < _utc(as_of).normalize() + pd.Timedelta(days=1)]
    # The same decision imported and also present in the data folder counts once.
    d = d.drop_duplicates(["account_id", "decision", "decided_at", "reviewer"])
    d = d.sort_values(["decided_at"], kind="stable").drop_duplicates("account_id", keep="last")
    return pd.DataFrame({"account_id": d["account_id"].astype("string").to_numpy(),
                         "label": (d["decision"] == "confirmed_abuse").astype(float).to_numpy(),
                         "decided_at": d["decided_at"].to_numpy()})
