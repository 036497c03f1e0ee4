"""Loading a data folder for a command: validate it, write its rejects beside the command's output, say how many."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import click

from features.contract import ContractError, Dataset, load_dataset


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
