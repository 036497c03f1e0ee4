"""Loading a data folder for a command: validate it, write its rejects beside the command's output, say how many.

Also the ``--engine`` / ``--scheduler`` options the feature-building commands share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # the CLI imports this module for its options: pandas loads only when a command runs
    import pandas as pd

    from features.contract import Dataset

MAX_REJECTED_SHARE = 0.10  # above this share of a table's rows rejected, the data is untrusted: no promotion


def load_for_command(
    data_dir: Path | str, out_dir: Path | str, echo: Callable[[str], None] = click.echo,
    tables: Iterable[str] | None = None, until: str | pd.Timestamp | None = None,
) -> Dataset:
    """Load and validate ``data_dir``; write ``out_dir/rejects.csv``; report the count; unusable files stop the command.

    A :class:`ContractError` (unreadable file, missing required column) becomes a ``click.ClickException`` that names
    the file and column, so every command fails the same way on bad input. ``until`` (the command's as-of day): tables
    stored as date-partitioned Parquet folders are read only up to that day (nothing later is opened).
    """
    import pandas as pd

    from features.contract import ContractError, load_dataset

    if until is not None:
        try:
            until = pd.Timestamp(until)
        except (ValueError, TypeError) as e:
            raise click.ClickException(f"as-of date {until!r} is not a date: use YYYY-MM-DD") from e
    try:
        ds = load_dataset(data_dir, tables=tables, until=until)
    except ContractError as e:
        raise click.ClickException(str(e)) from e
    path = ds.write_rejects(out_dir)
    echo(f"  {ds.n_rejected:,} rows rejected by the input contract (details in {path})")
    return ds


def data_validated(ds: Dataset, echo: Callable[[str], None] = click.echo, tables: Iterable[str] | None = None,
                   max_share: float = MAX_REJECTED_SHARE) -> bool:
    """Whether ``ds`` passed validation: every table read (or each of ``tables``) lost at most ``max_share`` of its
    rows to the contract and accounts for every row. Training registers a model either way, but passes this to
    the promotion gate (``registry.log_and_register(data_validated=...)``): untrusted data never makes a champion.
    Says which table failed and what to do.
    """
    ok = True
    for name in tables or ds.reports:
        rep = ds.reports[name]
        if not rep.balanced:
            echo(f"warning: {name}: {rep.rows_in:,} rows read but {rep.accepted + rep.rejected:,} accounted for; "
                 "the model is registered but not promoted")
            ok = False
        share = rep.rejected / rep.rows_in if rep.rows_in else 0.0
        if share > max_share:
            echo(f"warning: {share:.0%} of {name} rows were rejected (more than {max_share:.0%}): the model is "
                 f"registered but not promoted; fix the export (the rejects file says which rows and why)")
            ok = False
    return ok


def engine_options(f):
    """``--engine pandas|dask`` and ``--scheduler ADDRESS`` for a command that builds features."""
    f = click.option("--scheduler", default=None, metavar="ADDRESS",
                     help="Dask scheduler to use (e.g. tcp://10.0.0.5:8786); without it --engine dask starts a "
                          "LocalCluster on this machine (2 worker processes).")(f)
    return click.option("--engine", type=click.Choice(["pandas", "dask"]), default="pandas", show_default=True,
                        help="Where features are built: this process, or Dask (the same feature code per entity "
                             "partition; LightGBM models then train with lightgbm.dask).")(f)


@contextmanager
def engine_for_command(name: str = "pandas", scheduler: str | None = None,
                       echo: Callable[[str], None] = click.echo) -> Iterator:
    """The ``features.engine`` engine a command asked for, closed (its LocalCluster shut down) afterwards."""
    from features.engine import get_engine
    from features.settings import get_settings

    settings = get_settings()
    try:
        engine = get_engine(name, scheduler, n_workers=settings.dask_workers,
                            threads_per_worker=settings.dask_threads_per_worker, processes=settings.dask_processes)
        if engine.name != "pandas" and settings.dask_partitions > 0:
            engine.npartitions = settings.dask_partitions
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    if engine.name != "pandas":
        echo(f"  engine: {engine.describe()}")
    try:
        yield engine
    finally:
        engine.close()
