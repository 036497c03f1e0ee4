"""Loading a data folder for a command: validate it, write its rejects beside the command's output, say how many."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import click

from features.contract import ContractError, Dataset, load_dataset

MAX_REJECTED_SHARE = 0.10  # above this share of a table's rows rejected, the data is untrusted: no promotion


def load_for_command(
    data_dir: Path | str, out_dir: Path | str, echo: Callable[[str], None] = click.echo,
    tables: Iterable[str] | None = None,
) -> Dataset:
    """Load and validate ``data_dir``; write ``out_dir/rejects.csv``; report the count; unusable files stop the command.

    A :class:`ContractError` (unreadable file, missing required column) becomes a ``click.ClickException`` that names
    the file and column, so every command fails the same way on bad input.
    """
    try:
        ds = load_dataset(data_dir, tables=tables)
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
