"""Online features for serving: the latest account and merchant snapshots, keyed by ID.

The served snapshots are the files of the current generation (:mod:`features.generations`: a promotion or
``aftersales refresh-features`` makes one; the flat ``settings.snapshots_dir`` before any): ``accounts.parquet`` (serial
returners: abuse score, pattern, reason), ``merchants.parquet`` (merchant risk), and the ticket-triage history columns
``ticket_triage_{accounts,merchants,orders}.parquet`` (computed by the same functions training uses, so there is no
train/serve skew). Files of one kind are joined on the ID, later files winning on shared columns, as
:func:`features.tickets.load_serving_snapshots` does. The service reads them once at start into column lists with an
ID -> row index, so a lookup costs a dict probe and builds one small dict; no pandas per request. A million accounts
take about 100 MB this way (a dict per row would take several times that).

With ``AFTERSALES_REDIS_URL`` set, per-ID lookups go to Redis instead (one ``MGET`` round trip for the account and
the merchant of a ticket), so a fleet of workers shares one store that batch jobs refresh without restarting the
service: :func:`publish_snapshot` writes a snapshot there. If Redis fails, lookups fall back to the local snapshot
(when there is one) or to defaults, say so in the response, and Redis is not retried for a few seconds, so an
outage costs one timeout, not one per request.

Unknown IDs are not errors: the record is ``None`` and the source says why (``default_unknown_id``,
``default_no_id``, ``default_store_unavailable``); the model and the policy apply their defaults.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from features import catalogue

log = logging.getLogger(__name__)

Record = dict[str, Any]  # one snapshot row without its ID column, JSON-ready (NaN/NA -> None)
ACCOUNTS, MERCHANTS, ORDERS = catalogue.ACCOUNTS, catalogue.MERCHANTS, catalogue.ORDERS
KINDS = (ACCOUNTS, MERCHANTS, ORDERS)
KEYS = {k: catalogue.TABLE_KEYS[k] for k in KINDS}
# Files of each kind (features/catalogue.py), joined on the ID in this order (a later file's columns win where names
# clash).
FILES = {k: catalogue.table_files(k) for k in KINDS}
QUEUE_FILE = "account_queue.parquet"  # the review queue serial-returners training (and flag-accounts) writes
# Which training writes each file (said in messages about a missing one).
WRITERS = {f: m.cli for m in catalogue.MODELS for f in m.files}
# The column a snapshot is ranked by (review queue, merchant ranking), highest first, ties by ID.
SCORES = {k: s for k in KINDS if (s := catalogue.score_column(k))}

FOUND = "online_store"
FALLBACK = "snapshot_fallback"
UNKNOWN_ID = "default_unknown_id"
NO_ID = "default_no_id"
UNAVAILABLE = "default_store_unavailable"


class SnapshotError(ValueError):
    """A snapshot file exists but cannot be used (unreadable, or its ID column is missing)."""


# --------------------------------------------------------------------------------------------------------------------
# Snapshot tables


def _clean(value: Any) -> Any:
    """A cell as a JSON-ready Python value: NaN, NA and NaT become None, numpy scalars become Python ones."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if hasattr(value, "item"):  # numpy scalar
        return _clean(value.item())
    return value


class SnapshotTable:
    """One snapshot held column-wise with an ID -> row index; rows come back as small dicts."""

    def __init__(self, name: str, frame: pd.DataFrame, paths: Sequence[Path] = (),
                 written_at: datetime | None = None):
        key = KEYS[name]
        if key not in frame.columns:
            raise SnapshotError(f"{name} snapshot: column '{key}' is missing")
        frame = frame[frame[key].notna()].drop_duplicates(key, keep="last")
        self.name, self.key, self.paths, self.written_at = name, key, list(paths), written_at
        self.ids: list[str] = [str(v) for v in frame[key].tolist()]
        self.columns: tuple[str, ...] = tuple(c for c in frame.columns if c != key)
        # Python lists, not numpy arrays: indexing a list returns a Python value with no conversion per request.
        self._cols: list[list[Any]] = [[_clean(v) for v in frame[c].tolist()] for c in self.columns]
        self._index: dict[str, int] = {k: i for i, k in enumerate(self.ids)}
        score = SCORES.get(name)
        if score in frame.columns:
            order = pd.DataFrame({"s": pd.to_numeric(frame[score], errors="coerce").to_numpy(), "id": self.ids})
            order = order.sort_values(["s", "id"], ascending=[False, True], na_position="last", kind="mergesort")
            self._ranked: list[int] = order.index.tolist()
        else:
            self._ranked = []

    @classmethod
    def read(cls, name: str, paths: Sequence[Path]) -> SnapshotTable | None:
        """The files of one kind that exist, outer-joined on the ID (later files win); None when none exists."""
        key, frame, used = KEYS[name], None, []
        for path in paths:
            if not path.exists():
                continue
            try:
                f = pd.read_parquet(path)
            except Exception as e:  # pyarrow raises several types for a truncated or foreign file
                raise SnapshotError(f"{path}: cannot read the snapshot ({type(e).__name__}: {e}); rewrite it with "
                                    f"`aftersales train {WRITERS.get(path.name, '...')}`") from None
            if key not in f.columns:
                raise SnapshotError(f"{path}: column '{key}' is missing; rewrite it with "
                                    f"`aftersales train {WRITERS.get(path.name, '...')}`")
            f = f[f[key].notna()].drop_duplicates(key, keep="last")
            f = f.set_index(f[key].astype("string").rename(None)).drop(columns=[key])
            if frame is None:
                frame = f
            else:
                frame = frame.drop(columns=[c for c in f.columns if c in frame.columns]).join(f, how="outer")
            used.append(path)
        if frame is None:
            return None
        frame = frame.rename_axis(key).reset_index()
        written = min(datetime.fromtimestamp(p.stat().st_mtime, tz=UTC) for p in used)
        return cls(name, frame, used, written)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def row(self, i: int) -> Record:
        """Row ``i`` as a dict (without the ID column)."""
        return {c: col[i] for c, col in zip(self.columns, self._cols, strict=True)}

    def get(self, key: str | None) -> Record | None:
        """The row of one ID, or None when the ID is absent."""
        i = self._index.get(key) if key is not None else None
        return None if i is None else self.row(i)

    def top(self, n: int, skip: Iterable[str] = ()) -> list[tuple[str, Record]]:
        """The ``n`` highest-scoring rows as (ID, record), skipping IDs in ``skip``; ties by ID."""
        skip = set(skip)
        out = []
        for i in self._ranked:
            if len(out) >= n:
                break
            if self.ids[i] not in skip:
                out.append((self.ids[i], self.row(i)))
        return out

    def frame(self) -> pd.DataFrame:
        """The whole snapshot as a DataFrame (ID column first)."""
        return pd.DataFrame({self.key: self.ids, **dict(zip(self.columns, self._cols, strict=True))})

    def describe(self) -> str:
        """Where the snapshot came from, for responses: 'file, file (written 2024-...)'."""
        when = self.written_at.isoformat(timespec="seconds") if self.written_at else "unknown time"
        return f"{', '.join(p.name for p in self.paths) or self.name} in {_parent(self.paths)} (written {when})"


# --------------------------------------------------------------------------------------------------------------------
# Stores


def _parent(paths: Sequence[Path]) -> str:
    return str(paths[0].parent) if paths else "?"


@dataclass(frozen=True, slots=True)
class Lookup:
    """The online features of one ticket's account, merchant and order, and where each came from."""

    account: Record | None
    merchant: Record | None
    order: Record | None
    account_source: str
    merchant_source: str
    order_source: str


class SnapshotStore:
    """Lookups from the snapshot files in ``snapshots_dir`` (read once, at construction)."""

    kind = "snapshot"

    def __init__(self, snapshots_dir: Path):
        self.snapshots_dir = Path(snapshots_dir)
        self.tables: dict[str, SnapshotTable | None] = {}
        self.errors: dict[str, str] = {}
        for name in KINDS:
            paths = [self.snapshots_dir / f for f in FILES[name]]
            try:
                self.tables[name] = SnapshotTable.read(name, paths)
            except SnapshotError as e:
                # A broken snapshot must not stop the service: those features fall back to defaults, loudly.
                log.error("online store: %s", e)
                self.tables[name], self.errors[name] = None, str(e)
                continue
            absent = [p.name for p in paths if not p.exists()]
            if absent:
                self.errors[name] = "; ".join(f"{self.snapshots_dir / f} not found (written by `aftersales train "
                                              f"{WRITERS[f]}`)" for f in absent)
                log.warning("online store: %s", self.errors[name])
        self.queue, self.queue_written_at = self._read_queue(self.snapshots_dir / QUEUE_FILE)

    def _read_queue(self, path: Path) -> tuple[list[Record] | None, datetime | None]:
        """The review queue as records in rank order (None when the file is absent or unreadable)."""
        if not path.exists():
            return None, None
        try:
            frame = pd.read_parquet(path)
            if "account_id" not in frame.columns:
                raise SnapshotError(f"{path}: column 'account_id' is missing")
        except Exception as e:  # the queue falls back to the accounts snapshot's top scores
            self.errors["account_queue"] = f"{path}: cannot read the review queue ({type(e).__name__}: {e})"
            log.error("online store: %s", self.errors["account_queue"])
            return None, None
        if "rank" in frame.columns:
            frame = frame.sort_values("rank", kind="mergesort")
        frame = frame[frame["account_id"].notna()]
        records = [{k: _clean(v) for k, v in row.items()} for row in frame.to_dict("records")]
        for r in records:
            r["account_id"] = str(r["account_id"])
        return records, datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)

    @property
    def accounts(self) -> SnapshotTable | None:
        """The accounts snapshot, or None when it is missing."""
        return self.tables[ACCOUNTS]

    @property
    def merchants(self) -> SnapshotTable | None:
        """The merchants snapshot, or None when it is missing."""
        return self.tables[MERCHANTS]

    def _one(self, name: str, key: str | None, found: str = FOUND) -> tuple[Record | None, str]:
        if key is None or key == "":
            return None, NO_ID
        table = self.tables[name]
        if table is None:
            return None, UNAVAILABLE
        rec = table.get(key)
        return rec, (found if rec is not None else UNKNOWN_ID)

    def lookup(self, account_id: str | None, merchant_id: str | None, order_id: str | None = None) -> Lookup:
        """The account, merchant and order records of one ticket."""
        acc, acc_src = self._one(ACCOUNTS, account_id)
        mer, mer_src = self._one(MERCHANTS, merchant_id)
        order, ord_src = self._one(ORDERS, order_id)
        return Lookup(acc, mer, order, acc_src, mer_src, ord_src)

    def records(self, name: str, keys: Sequence[str | None]) -> tuple[list[Record | None], list[str]]:
        """Records and sources of many IDs of one kind (batch scoring)."""
        pairs = [self._one(name, k) for k in keys]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def close(self) -> None:
        """Nothing to release for files read at start."""


class RedisStore:
    """Lookups from Redis (``{prefix}:{accounts|merchants}:{id}`` -> JSON record), falling back to snapshots."""

    kind = "redis"

    def __init__(self, url: str, fallback: SnapshotStore | None = None, prefix: str = "aftersales",
                 timeout_s: float = 0.05, retry_after_s: float = 5.0):
        import redis

        self.url, self.prefix, self.fallback = url, prefix, fallback
        self.retry_after_s = retry_after_s
        # A short socket timeout: a stuck Redis must cost one ticket milliseconds, not the whole event loop seconds.
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._down_until = 0.0
        self._errors = (redis.RedisError, OSError)

    def key(self, name: str, key: str) -> str:
        """The Redis key of one record."""
        return f"{self.prefix}:{name}:{key}"

    def _available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, e: Exception) -> None:
        log.warning("online store: Redis at %s failed (%s); using %s for %.0f s", _safe_url(self.url),
                    type(e).__name__, "the local snapshot" if self.fallback else "defaults", self.retry_after_s)
        self._down_until = time.monotonic() + self.retry_after_s

    def _from_fallback(self, name: str, key: str | None) -> tuple[Record | None, str]:
        if key is None or key == "":
            return None, NO_ID
        if self.fallback is None:
            return None, UNAVAILABLE
        return self.fallback._one(name, key, found=FALLBACK)

    def _mget(self, keys: list[str]) -> list[bytes | None] | None:
        if not keys or not self._available():
            return None
        try:
            return self.client.mget(keys)
        except self._errors as e:
            self._failed(e)
            return None

    def lookup(self, account_id: str | None, merchant_id: str | None, order_id: str | None = None) -> Lookup:
        """The account, merchant and order records of one ticket, in one round trip."""
        wanted = [(ACCOUNTS, account_id), (MERCHANTS, merchant_id), (ORDERS, order_id)]
        present = [(n, k) for n, k in wanted if k not in (None, "")]
        raw = self._mget([self.key(n, k) for n, k in present])
        got: dict[str, tuple[Record | None, str]] = {}
        for j, (name, key) in enumerate(present):
            if raw is None:
                got[name] = self._from_fallback(name, key)
            else:
                rec = json.loads(raw[j]) if raw[j] is not None else None
                got[name] = (rec, FOUND if rec is not None else UNKNOWN_ID)
        acc, acc_src = got.get(ACCOUNTS, (None, NO_ID))
        mer, mer_src = got.get(MERCHANTS, (None, NO_ID))
        order, ord_src = got.get(ORDERS, (None, NO_ID))
        return Lookup(acc, mer, order, acc_src, mer_src, ord_src)

    def records(self, name: str, keys: Sequence[str | None], chunk: int = 5000
                ) -> tuple[list[Record | None], list[str]]:
        """Records and sources of many IDs of one kind (batch scoring), ``chunk`` keys per round trip."""
        recs: list[Record | None] = [None] * len(keys)
        srcs: list[str] = [NO_ID] * len(keys)
        pos = [i for i, k in enumerate(keys) if k not in (None, "")]
        for start in range(0, len(pos), chunk):
            part = pos[start:start + chunk]
            raw = self._mget([self.key(name, keys[i]) for i in part])
            for j, i in enumerate(part):
                if raw is None:
                    recs[i], srcs[i] = self._from_fallback(name, keys[i])
                elif raw[j] is not None:
                    recs[i], srcs[i] = json.loads(raw[j]), FOUND
                else:
                    srcs[i] = UNKNOWN_ID
        return recs, srcs

    def ping(self) -> bool:
        """Whether Redis answers now."""
        try:
            return bool(self.client.ping())
        except self._errors:
            return False

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()


OnlineStore = SnapshotStore | RedisStore


def _safe_url(url: str) -> str:
    """A Redis URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1) if "://" in url else ("redis", url)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def open_store(snapshots_dir: Path, redis_url: str | None = None,
               prefix: str | None = None) -> tuple[OnlineStore, SnapshotStore]:
    """The store lookups use (Redis when a URL is configured, else the snapshots) and the local snapshots.

    The local snapshots are always read when present: the review queue and the merchant ranking come from them,
    and they are Redis's fallback. ``prefix``: the Redis key prefix of the served generation (``refresh-features``
    publishes each generation under its own prefix, so a swap never mixes two generations' records); default
    ``aftersales`` (what ``python -m serving.online_store`` publishes).
    """
    snapshots = SnapshotStore(snapshots_dir)
    if not redis_url:
        return snapshots, snapshots
    return RedisStore(redis_url, fallback=snapshots, prefix=prefix or "aftersales"), snapshots


def publish_snapshot(client, table: SnapshotTable, prefix: str = "aftersales", chunk: int = 1000) -> int:
    """Write every row of ``table`` into Redis (``client``: a ``redis.Redis``); returns the rows written.

    Rows are written in pipelined chunks; a ``{prefix}:{name}:__meta__`` key records when and from where.
    Timestamps are stored as ISO 8601 text.
    IDs absent from a newer snapshot keep their old record (accounts rarely disappear); flush the prefix to drop them.
    """
    n = len(table)
    for start in range(0, n, chunk):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + chunk)):
            pipe.set(f"{prefix}:{table.name}:{table.ids[i]}",
                     json.dumps(table.row(i), allow_nan=False, default=_json_default))
        pipe.execute()
    meta = {"rows": n, "paths": [str(p) for p in table.paths],
            "written_at": table.written_at.isoformat() if table.written_at else None,
            "published_at": datetime.now(UTC).isoformat()}
    client.set(f"{prefix}:{table.name}:__meta__", json.dumps(meta))
    return n


def _json_default(value: Any) -> str:
    """Timestamps as ISO 8601 (the triage features parse them back)."""
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot store {type(value).__name__} in the online store")


def publish_all(snapshots_dir: Path, redis_url: str, prefix: str = "aftersales") -> dict[str, int]:
    """Publish every snapshot in ``snapshots_dir`` to the Redis at ``redis_url``; returns rows written per kind.

    Run after training (or a batch scoring job) has written new snapshots; running services pick the new values up
    on their next lookup, without a restart.
    """
    import redis

    local = SnapshotStore(snapshots_dir)
    client = redis.Redis.from_url(redis_url)
    try:
        return {name: publish_snapshot(client, table, prefix) for name, table in local.tables.items()
                if table is not None}
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m serving.online_store``: publish the snapshots of ``AFTERSALES_MODELS_DIR`` to
    ``AFTERSALES_REDIS_URL`` (or ``--redis-url``)."""
    import argparse

    from features.settings import get_settings

    settings = get_settings()
    ap = argparse.ArgumentParser(description=main.__doc__)
    from features.generations import served_dir

    ap.add_argument("--snapshots", type=Path, default=served_dir(settings.snapshots_dir),
                    help="Snapshot folder to publish (default: the served generation's).")
    ap.add_argument("--redis-url", default=settings.redis_url, help="redis:// URL (default AFTERSALES_REDIS_URL).")
    args = ap.parse_args(argv)
    if not args.redis_url:
        raise SystemExit("no Redis configured: set AFTERSALES_REDIS_URL or pass --redis-url redis://host:6379/0")
    written = publish_all(args.snapshots, args.redis_url)
    if not written:
        raise SystemExit(f"no snapshots in {args.snapshots}: train the models first (`aftersales train all`)")
    for name, n in written.items():
        print(f"{name}: {n:,} rows published to {_safe_url(args.redis_url)}")


if __name__ == "__main__":
    main()
