"""Feature engines: apply a pandas feature function per entity partition, in this process or on a Dask cluster.

There is one implementation of every feature: the pandas functions in ``features/``. An engine only decides where
they run:

- :class:`PandasEngine` calls the function once on the whole tables (what every command did before). Running it
  per entity partition in this process was measured too and is slower (4.8M order lines: 35 s against 23 s for
  the four pipelines; the hashing and row selection cost more than the smaller sorts save) for no less memory.
- :class:`DaskEngine` hashes each table's entity key (``account_id``, ``merchant_id``, ``order_id``) to one of
  ``npartitions`` partitions, shuffles every table on that partition number on the cluster, and calls the same
  function on partition *i* of every table at once. All rows of one entity meet in one partition (the same rule a
  Dask hash join relies on: equal values, equal dtype, same partition count -> same output partition), so a
  function whose result for an entity depends only on that entity's rows gives the same result. Rows with a null
  key go to partition 0, where the function sees them exactly as it does on the whole table (guests, orphan
  returns).

What depends on more than one entity (population priors of shrunk rates, the account link graph, the category
priors of merchant rates) is not computed per partition: the feature modules split such features into a
per-entity stage (run by the engine) and a small global stage on the per-entity results (one row per entity),
computed once; see ``features.accounts.account_counts`` / ``finish_account_features`` and
``features.merchants.merchant_counts`` / ``finish_merchant_features``.

The Dask path validates nothing itself: it is given the tables the input contract accepted. The client is
``distributed.Client(ADDRESS)`` for ``--scheduler ADDRESS``, else a ``LocalCluster`` on this machine.
Also here: :func:`train_booster`, which trains a LightGBM booster with ``lightgbm.dask`` when an engine has a
client and returns a local ``lightgbm.Booster`` either way, so the fitted models pickle and serve the same.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

ENGINES = ("pandas", "dask")
# Rows per partition the Dask engine aims at when it chooses the partition count itself.
ROWS_PER_PARTITION = 1_000_000
# Row blocks the Dask engine scatters per call (of up to 250,000 rows each).
SCATTER_BATCH = 2

Tables = Mapping[str, tuple[pd.DataFrame, str | None]]  # name -> (frame, entity key column or None = broadcast)


class PandasEngine:
    """Run a feature function on the whole tables in this process."""

    name = "pandas"
    client = None

    def by_key(self, fn: Callable[..., pd.DataFrame | None], tables: Tables, primary: str | None = None,
               **kwargs: Any) -> pd.DataFrame | None:
        """``fn(**tables, **kwargs)`` on the whole frames (the keys are not needed: every entity is there)."""
        return fn(**{name: frame for name, (frame, _) in tables.items()}, **kwargs)

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return "pandas (one process)"


def partition_of(keys: pd.Series, npartitions: int) -> np.ndarray:
    """Partition number 0..npartitions-1 of each key (a stable hash of its text; null keys -> 0)."""
    text = keys.astype("string")
    hashed = pd.util.hash_pandas_object(text.fillna(""), index=False).to_numpy()
    out = (hashed % np.uint64(npartitions)).astype(np.int64)
    out[text.isna().to_numpy()] = 0
    return out


def _split(frame: pd.DataFrame, key: str, npartitions: int) -> list[pd.DataFrame]:
    """The rows of ``frame`` whose key falls in partition 0, 1, ..., npartitions-1 (row order kept)."""
    part = partition_of(frame[key], npartitions)
    if npartitions <= np.iinfo(np.int16).max:  # a stable sort of 16-bit integers is a radix sort: linear time
        part = part.astype(np.int16)
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(npartitions + 1))
    return [frame.iloc[order[bounds[i]:bounds[i + 1]]] for i in range(npartitions)]


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames) if len(frames) > 1 else frames[0]


def _apply(fn: Callable, kwargs: dict, names: list[str], needed: list[str], *frames: pd.DataFrame
           ) -> pd.DataFrame | None:
    """Run ``fn`` on one partition of every table; None when the ``needed`` tables are all empty."""
    parts = dict(zip(names, frames, strict=True))
    if all(len(parts[n]) == 0 for n in needed):
        return None
    return fn(**parts, **kwargs)


class DaskEngine:
    """Run a feature function per entity partition on a Dask cluster (see the module docstring)."""

    name = "dask"

    def __init__(self, client, npartitions: int | None = None, owns_cluster: bool = False):
        self.client = client
        self.npartitions = npartitions
        self.owns_cluster = owns_cluster

    def _nparts(self, tables: Tables) -> int:
        if self.npartitions:
            return int(self.npartitions)
        workers = max(len(self.client.scheduler_info().get("workers", {})), 1)
        rows = max((len(f) for f, _ in tables.values()), default=0)
        return max(workers, math.ceil(rows / ROWS_PER_PARTITION))

    def _shuffled(self, frame, key: str, npartitions: int, keep: list) -> list:
        """The frame on the cluster as ``npartitions`` delayed partitions: partition i holds the keys hashing to i.

        A task-based hash shuffle: every input block is split by :func:`partition_of` on a worker, and partition i
        concatenates the i-th piece of every block. ``keep`` collects the futures of blocks scattered from this
        process: the caller holds them until the computation is done (a future nobody references is released).
        """
        import dask.dataframe as dd
        from dask import delayed

        if isinstance(frame, dd.DataFrame):
            blocks = frame.to_delayed()
        else:
            # Scatter row blocks straight to the workers (no copy through the scheduler). Unhashed keys: the same
            # table scattered again by a later call must not share a key that the earlier call is releasing.
            n_in = max(1, min(npartitions, math.ceil(len(frame) / 250_000)))
            bounds = np.linspace(0, len(frame), n_in + 1).astype(int)
            spans = list(zip(bounds[:-1], bounds[1:], strict=True))
            blocks = []
            for i in range(0, n_in, SCATTER_BATCH):  # a few blocks at a time: few serialised copies in flight
                blocks.extend(self.client.scatter([frame.iloc[a:b] for a, b in spans[i:i + SCATTER_BATCH]],
                                                  hash=False))
            keep.extend(blocks)
        pieces = [delayed(_split, nout=npartitions, pure=True)(blk, key, npartitions) for blk in blocks]
        return [delayed(_concat, pure=True)([pc[i] for pc in pieces]) for i in range(npartitions)]

    def by_key(self, fn: Callable[..., pd.DataFrame | None], tables: Tables, primary: str | None = None,
               **kwargs: Any) -> pd.DataFrame | None:
        """``fn`` on partition i of every keyed table (and the whole of every unkeyed one), results concatenated.

        A partition is skipped when its ``primary`` table (default: every keyed table) has no rows. The result's index is what ``fn`` returns per partition (entity IDs, or the row labels of a query table);
        callers sort or reindex it.
        """
        from dask import delayed

        p = self._nparts(tables)
        names = list(tables)
        keyed = [n for n, (_, key) in tables.items() if key is not None]
        parts: dict[str, list] = {}
        keep: list = []
        for n, (frame, key) in tables.items():
            if key is None:  # a small table every partition needs whole: sent once, shared by every task
                [fut] = self.client.scatter([frame], broadcast=True, hash=False)
                keep.append(fut)
                parts[n] = [fut] * p
            else:
                parts[n] = self._shuffled(frame, key, p, keep)
        run = delayed(_apply, pure=False)
        needed = [primary] if primary else keyed
        tasks = [run(fn, kwargs, names, needed, *(parts[n][i] for n in names)) for i in range(p)]
        futures = self.client.compute(tasks)
        # Drop this process's references to the scattered blocks: the cluster keeps each only until the tasks that
        # read it are done, so a table's blocks and its shuffled pieces are not all held at once.
        del keep, parts, tasks
        results = [r for r in self.client.gather(futures) if r is not None]
        del futures
        if not results:
            return None
        return pd.concat(results) if len(results) > 1 else results[0]

    def close(self) -> None:
        if self.owns_cluster:
            cluster = getattr(self.client, "cluster", None)
            self.client.close()
            if cluster is not None:
                cluster.close()

    def describe(self) -> str:
        workers = self.client.scheduler_info().get("workers", {})
        return f"dask ({len(workers)} workers at {self.client.scheduler.address})"


def get_engine(name: str = "pandas", scheduler: str | None = None, n_workers: int = 2, threads_per_worker: int = 1,
               processes: bool = True, memory_limit: str | int | None = "auto") -> PandasEngine | DaskEngine:
    """The engine ``name``: pandas, or Dask on ``scheduler`` (an address) or on a new LocalCluster.

    Close it with ``engine.close()`` (a LocalCluster started here is shut down then).
    """
    if name == "pandas":
        if scheduler:
            raise ValueError("--scheduler needs --engine dask")
        return PandasEngine()
    if name != "dask":
        raise ValueError(f"unknown engine {name!r}: use one of {', '.join(ENGINES)}")
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as e:
            raise ValueError(f"cannot reach the Dask scheduler at {scheduler} ({e}): start one with "
                             "`dask scheduler` and workers with `dask worker ADDRESS`, or leave out --scheduler "
                             "for a local cluster") from e
        return DaskEngine(client)
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=processes,
                           dashboard_address=":0", memory_limit=memory_limit)
    return DaskEngine(Client(cluster), owns_cluster=True)


# --------------------------------------------------------------------------------------------------------------------
# Training: lightgbm.dask when the engine has a cluster


def train_booster(params: dict, X: pd.DataFrame | np.ndarray, y: np.ndarray, num_boost_round: int, client=None,
                  weight: np.ndarray | None = None, init_score: np.ndarray | None = None,
                  categorical_feature: list[int] | None = None, feature_name: list[str] | None = None,
                  eval_set: tuple | None = None, early_stopping_rounds: int | None = None):
    """A trained ``lightgbm.Booster``: ``lgb.train`` here, or ``lightgbm.dask.DaskLGBMClassifier`` on ``client``.

    On Dask the rows are split into one chunk per worker and trained data-parallel; the fitted model is brought back
    with ``to_local()`` so what is pickled and served is a plain booster. ``lightgbm.dask`` has no early stopping:
    with ``eval_set`` it records the validation loss of every round and the booster is cut at the best round
    afterwards (the same choice early stopping makes, at the cost of training every round). Fits of fewer rows than
    ``AFTERSALES_DASK_MIN_TRAIN_ROWS`` (default 50,000) stay in this process. Returns (booster, best_iteration).
    """
    import lightgbm as lgb

    from features.settings import get_settings

    if client is not None and len(X) < get_settings().dask_min_train_rows:
        client = None  # a small fit: the cluster's per-fit network set-up would cost more than the fit
    if client is None:
        data = lgb.Dataset(X, y, weight=weight, init_score=init_score, feature_name=feature_name or "auto",
                           categorical_feature=categorical_feature or "auto", free_raw_data=True)
        valid, callbacks = [], []
        if eval_set is not None:
            valid = [lgb.Dataset(eval_set[0], eval_set[1], reference=data)]
            callbacks = [lgb.early_stopping(early_stopping_rounds, verbose=False)] if early_stopping_rounds else []
        booster = lgb.train(params, data, num_boost_round, valid_sets=valid, callbacks=callbacks)
        return booster, int(booster.best_iteration or booster.current_iteration())
    import dask.array as da
    from lightgbm.dask import DaskLGBMClassifier

    workers = max(len(client.scheduler_info().get("workers", {})), 1)
    Xa = np.asarray(X, dtype=np.float64)
    chunk = max(1, math.ceil(len(Xa) / workers))
    dX = da.from_array(Xa, chunks=(chunk, Xa.shape[1]))
    dy = da.from_array(np.asarray(y, dtype=np.float64), chunks=chunk)
    kw: dict[str, Any] = {}
    if weight is not None:
        kw["sample_weight"] = da.from_array(np.asarray(weight, dtype=np.float64), chunks=chunk)
    if init_score is not None:
        kw["init_score"] = da.from_array(np.asarray(init_score, dtype=np.float64), chunks=chunk)
    if categorical_feature:
        kw["categorical_feature"] = categorical_feature
    if feature_name:
        kw["feature_name"] = feature_name
    if eval_set is not None:
        ex = np.asarray(eval_set[0], dtype=np.float64)
        ec = max(1, math.ceil(len(ex) / workers))
        kw["eval_X"] = (da.from_array(ex, chunks=(ec, ex.shape[1])),)
        kw["eval_y"] = (da.from_array(np.asarray(eval_set[1], dtype=np.float64), chunks=ec),)
        kw["eval_metric"] = "binary_logloss"
    skip = {"objective", "num_threads", "verbose", "deterministic", "force_row_wise"}
    extra = {k: v for k, v in params.items() if k not in skip}
    # Threads per worker come from the Dask workers (lightgbm.dask ignores n_jobs).
    model = DaskLGBMClassifier(client=client, objective=params.get("objective", "binary"),
                               n_estimators=num_boost_round, verbose=-1, **extra)
    with warnings.catch_warnings():  # the scikit-learn wrapper always passes n_jobs, which lightgbm.dask drops
        warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
        model.fit(dX, dy, **kw)
    booster = model.to_local().booster_
    best = booster.current_iteration()
    if eval_set is not None:
        loss = np.asarray(model.evals_result_["valid_0"]["binary_logloss"])
        best = int(np.argmin(loss)) + 1
        booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    return booster, best
