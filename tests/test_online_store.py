"""Online feature store: snapshot tables keyed by ID, defaults that say why, and Redis against a real server.

The Redis tests start their own ``redis-server`` on a free loopback port (installed by ``.ci/run`` from Debian) and
skip with a reason when the binary is absent.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.tickets import SNAPSHOT_FILES
from serving import online_store as ostore
from serving.online_store import RedisStore, SnapshotError, SnapshotStore, SnapshotTable, publish_snapshot


def _write(d: Path, name: str, frame: pd.DataFrame) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(d / name, index=False)
    return d / name


@pytest.fixture()
def snapshots(tmp_path: Path) -> Path:
    d = tmp_path / "snapshots"
    _write(d, "accounts.parquet", pd.DataFrame({
        "account_id": pd.array(["A1", "A2", "A3", "A4"], dtype="string"),
        "abuse_score": [0.9, 0.2, 0.9, np.nan],
        "abuse_percentile": [0.99, 0.4, 0.98, np.nan],
        "likely_pattern": pd.array(["serial", "none", "ring", None], dtype="string"),
        "top_reason": pd.array(["14 returns in 30 days, 9x the median account", "", "shares a device", None],
                               dtype="string"),
        "returns_30d": [14.0, 1.0, 3.0, 0.0],
    }))
    # The triage history file: its returns_30d wins over accounts.parquet's; A5 is only here.
    _write(d, SNAPSHOT_FILES["accounts"], pd.DataFrame({
        "account_id": pd.array(["A1", "A5"], dtype="string"), "returns_30d": [15.0, 2.0],
        "prior_tickets_30d": [3.0, 0.0]}))
    _write(d, "merchants.parquet", pd.DataFrame({
        "merchant_id": pd.array(["M1", "M2", "M3"], dtype="string"), "merchant_risk_score": [0.1, 0.7, 0.7],
        "merchant_risk_percentile": [0.33, 1.0, 0.66]}))
    _write(d, SNAPSHOT_FILES["orders"], pd.DataFrame({
        "order_id": pd.array(["O1"], dtype="string"),
        "ordered_at": pd.to_datetime(["2024-11-01T08:00:00Z"], utc=True).astype("datetime64[us, UTC]"),
        "delivered_at": pd.Series([pd.NaT], dtype="datetime64[us, UTC]"),
        "return_reason": pd.array([None], dtype="string")}))
    return d


def test_files_of_one_kind_are_joined_on_the_id_later_file_winning(snapshots: Path):
    store = SnapshotStore(snapshots)
    a1 = store.accounts.get("A1")
    assert a1["abuse_score"] == 0.9 and a1["likely_pattern"] == "serial"
    assert a1["returns_30d"] == 15.0 and a1["prior_tickets_30d"] == 3.0  # the triage file wins on shared columns
    a5 = store.accounts.get("A5")  # only in the triage file: known, without an abuse score
    assert a5["abuse_score"] is None and a5["returns_30d"] == 2.0
    assert len(store.accounts) == 5 and ostore.ACCOUNTS not in store.errors
    # A kind with one of its files missing still serves the other, and says which file is missing.
    assert len(store.merchants) == 3 and "ticket_triage_merchants.parquet not found" in store.errors[ostore.MERCHANTS]


def test_values_come_back_as_plain_python_with_missing_as_none(snapshots: Path):
    store = SnapshotStore(snapshots)
    a4 = store.accounts.get("A4")
    assert a4["abuse_score"] is None and a4["likely_pattern"] is None and a4["top_reason"] is None
    order = store.tables[ostore.ORDERS].get("O1")
    assert order["ordered_at"] == datetime(2024, 11, 1, 8, tzinfo=UTC) and order["delivered_at"] is None
    assert type(store.merchants.get("M1")["merchant_risk_score"]) is float


def test_lookup_says_where_each_feature_came_from(snapshots: Path):
    store = SnapshotStore(snapshots)
    found = store.lookup("A1", "M9", None)
    assert found.account["abuse_score"] == 0.9 and found.account_source == ostore.FOUND
    assert found.merchant is None and found.merchant_source == ostore.UNKNOWN_ID
    assert found.order is None and found.order_source == ostore.NO_ID
    assert store.lookup("", None, "O1").account_source == ostore.NO_ID  # empty ID = no ID (guest)
    recs, srcs = store.records(ostore.MERCHANTS, ["M2", None, "M404"])
    assert recs[0]["merchant_risk_percentile"] == 1.0 and recs[1] is None and recs[2] is None
    assert srcs == [ostore.FOUND, ostore.NO_ID, ostore.UNKNOWN_ID]


def test_ranking_is_by_score_with_ties_broken_by_id_and_missing_last(snapshots: Path):
    store = SnapshotStore(snapshots)
    assert [k for k, _ in store.accounts.top(10)] == ["A1", "A3", "A2", "A4", "A5"]
    assert [k for k, _ in store.accounts.top(2, skip={"A1"})] == ["A3", "A2"]
    assert [k for k, _ in store.merchants.top(3)] == ["M2", "M3", "M1"]


def test_missing_snapshots_give_defaults_and_a_reason(tmp_path: Path, snapshots: Path):
    empty = SnapshotStore(tmp_path / "nothing")
    found = empty.lookup("A1", "M1", "O1")
    assert (found.account_source, found.merchant_source, found.order_source) == (ostore.UNAVAILABLE,) * 3
    assert "serial-returners" in empty.errors[ostore.ACCOUNTS]
    (snapshots / "merchants.parquet").unlink()  # the triage part alone still serves lookups, and the gap is named
    partial = SnapshotStore(snapshots)
    assert partial.merchants is None or "merchant-risk" in partial.errors[ostore.MERCHANTS]


def test_a_corrupt_snapshot_is_reported_not_fatal(snapshots: Path):
    (snapshots / "merchants.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(SnapshotError, match=r"merchants\.parquet.*train merchant-risk"):
        SnapshotTable.read(ostore.MERCHANTS, [snapshots / "merchants.parquet"])
    store = SnapshotStore(snapshots)  # the service still starts: merchants fall back to defaults
    assert store.merchants is None and "cannot read" in store.errors[ostore.MERCHANTS]
    assert store.lookup("A1", "M1").merchant_source == ostore.UNAVAILABLE
    assert store.lookup("A1", "M1").account_source == ostore.FOUND


def test_a_snapshot_without_its_id_column_is_refused(tmp_path: Path):
    path = _write(tmp_path, "accounts.parquet", pd.DataFrame({"customer": ["A1"], "abuse_score": [0.5]}))
    with pytest.raises(SnapshotError, match="'account_id' is missing"):
        SnapshotTable.read(ostore.ACCOUNTS, [path])


# --------------------------------------------------------------------------------------------------------------------
# Redis, against a real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_redis(port: int, workdir: Path) -> subprocess.Popen:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            if client.ping():
                return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not answer within 5 s")


@pytest.fixture()
def redis_server(tmp_path: Path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    port = _free_port()
    proc = _start_redis(port, tmp_path)
    yield port, proc
    proc.terminate()
    proc.wait(10)


def test_redis_store_serves_what_was_published(snapshots: Path, redis_server):
    import redis

    port, _ = redis_server
    local = SnapshotStore(snapshots)
    client = redis.Redis(port=port)
    for kind in ostore.KINDS:
        assert publish_snapshot(client, local.tables[kind], chunk=2) == len(local.tables[kind])
    store = RedisStore(f"redis://127.0.0.1:{port}/0")
    got, want = store.lookup("A1", "M2", "O1"), local.lookup("A1", "M2", "O1")
    assert got.account == want.account and got.merchant == want.merchant
    assert (got.account_source, got.merchant_source, got.order_source) == (ostore.FOUND,) * 3
    # Timestamps travel as ISO text, which the triage features parse back to the same instant.
    from features.tickets import to_us

    assert to_us(got.order["ordered_at"]) == to_us(want.order["ordered_at"])
    assert store.lookup("A404", None).account_source == ostore.UNKNOWN_ID
    recs, srcs = store.records(ostore.ACCOUNTS, ["A3", None, "A404", "A1"], chunk=2)
    assert recs[0]["likely_pattern"] == "ring" and recs[3]["returns_30d"] == 15.0
    assert srcs == [ostore.FOUND, ostore.NO_ID, ostore.UNKNOWN_ID, ostore.FOUND]
    meta = client.get("aftersales:accounts:__meta__")
    assert b'"rows": 5' in meta
    store.close()


def test_redis_outage_falls_back_to_the_snapshot_and_does_not_retry_at_once(snapshots: Path, redis_server):
    port, proc = redis_server
    local = SnapshotStore(snapshots)
    store = RedisStore(f"redis://127.0.0.1:{port}/0", fallback=local, timeout_s=0.05, retry_after_s=30)
    assert store.lookup("A1", None).account_source == ostore.UNKNOWN_ID  # up, but nothing published
    proc.terminate()
    proc.wait(10)
    first = store.lookup("A1", "M2")
    assert first.account["abuse_score"] == 0.9 and first.account_source == ostore.FALLBACK
    assert first.merchant_source == ostore.FALLBACK
    t0 = time.perf_counter()
    for _ in range(200):  # the breaker is open: no connection attempt, no timeout per lookup
        assert store.lookup("A2", "M404").merchant_source == ostore.UNKNOWN_ID
    assert time.perf_counter() - t0 < 0.5
    no_fallback = RedisStore(f"redis://127.0.0.1:{port}/0", timeout_s=0.05)
    assert no_fallback.lookup("A1", "M1").account_source == ostore.UNAVAILABLE
    assert no_fallback.ping() is False


def test_open_store_picks_redis_only_when_configured(snapshots: Path):
    store, local = ostore.open_store(snapshots)
    assert store is local and store.kind == "snapshot"
    store, local = ostore.open_store(snapshots, "redis://127.0.0.1:1/0")  # nothing listens on port 1
    assert store.kind == "redis" and store.fallback is local
    assert store.lookup("A1", None).account_source == ostore.FALLBACK
    assert ostore._safe_url("redis://user:secret@host:6379/0") == "redis://***@host:6379/0"


def test_publish_command_fills_redis_for_running_services(snapshots: Path, redis_server, capsys):
    port, _ = redis_server
    url = f"redis://127.0.0.1:{port}/0"
    store = RedisStore(url)
    assert store.lookup("A3", "M3").account_source == ostore.UNKNOWN_ID  # a service started before publishing
    ostore.main(["--snapshots", str(snapshots), "--redis-url", url])
    assert "accounts: 5 rows published" in capsys.readouterr().out
    found = store.lookup("A3", "M3", "O1")  # the same running store now sees the published rows
    assert found.account["likely_pattern"] == "ring" and found.merchant["merchant_risk_percentile"] == 0.66
    assert found.order_source == ostore.FOUND
    with pytest.raises(SystemExit, match="AFTERSALES_REDIS_URL"):
        ostore.main(["--snapshots", str(snapshots), "--redis-url", ""])
