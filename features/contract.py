"""The input data contract (``shared/CONTRACT.md``): table specs, loading and row-level validation.

Every row either comes out accepted or goes to the rejects frame with its table, row number, field and the rule it
broke; ``rows_in == accepted + rejected`` holds for every table. A row that breaks several rules is rejected once,
under the first rule it broke (columns in contract order, then cross-column, cross-table and uniqueness rules), and
counted once. A file that cannot be read, or that lacks a required column, raises :class:`ContractError` naming the file
and column.

The pieces: :mod:`features.contract_schema` (tables, columns, rules), :mod:`features.contract_files` (finding and
reading a table's file or partitioned folder), :mod:`features.contract_rules` (row-level validation); this module
loads a folder into a :class:`Dataset`, and every public name of the contract is importable from here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from features.contract_files import (  # noqa: F401 — re-exported: the contract's public names stay here
    EVENT_TIME,
    PARTITION_DATE,
    UNKNOWN_DAY,
    check_single_source,
    date_partitioned,
    find_table_file,
    partition_files,
    read_raw,
)
from features.contract_rules import (  # noqa: F401 — re-exported
    _check_returns_against_orders,
    _finish,
    _plain_dtypes,
    check_uniqueness,
    normalise_ids,
    validate_table,
)
from features.contract_schema import (  # noqa: F401 — re-exported
    CASE_TYPES,
    CHANNELS,
    DECISIONS,
    FUTURE_TOLERANCE,
    LINK_TYPES,
    MAX_TEXT_CHARS,
    MAX_VALUE_CHARS,
    ORDERING_RULES,
    REJECT_COLUMNS,
    RETURN_REASONS,
    TABLES,
    Column,
    ContractError,
    TableReport,
    TableSpec,
)


@dataclass
class Dataset:
    """The validated tables of one data folder, with the rows that were rejected and why."""

    tables: dict[str, pd.DataFrame]
    rejects: pd.DataFrame
    reports: dict[str, TableReport]
    source: Path

    @property
    def orders(self) -> pd.DataFrame:
        return self.tables["orders"]

    @property
    def returns(self) -> pd.DataFrame:
        return self.tables["returns"]

    @property
    def tickets(self) -> pd.DataFrame:
        return self.tables["tickets"]

    @property
    def account_links(self) -> pd.DataFrame:
        return self.tables["account_links"]

    @property
    def review_decisions(self) -> pd.DataFrame:
        return self.tables["review_decisions"]

    def has(self, table: str) -> bool:
        """Whether the folder held this table (optional tables are empty frames when absent)."""
        return self.reports[table].source != ""

    @property
    def n_rejected(self) -> int:
        return int(sum(r.rejected for r in self.reports.values()))

    def time_span(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """First and last day with orders or returns (UTC, normalised to midnight)."""
        ts = pd.concat([self.orders["ordered_at"], self.returns["requested_at"]]).dropna()
        if ts.empty:
            raise ValueError(f"{self.source}: no orders or returns with a timestamp; nothing to work on")
        return ts.min().normalize(), ts.max().normalize()

    def write_rejects(self, out_dir: Path | str) -> Path:
        """Write the rejected rows to ``out_dir/rejects.csv`` (written even when empty) and return its path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "rejects.csv"
        self.rejects.to_csv(path, index=False)
        return path

    def summary(self) -> pd.DataFrame:
        """One row per table: source, rows in, accepted, rejected, the rules broken and values remapped."""
        rows = []
        for r in self.reports.values():
            rows.append({
                "table": r.table, "source": r.source or "(absent)", "rows_in": r.rows_in, "accepted": r.accepted,
                "rejected": r.rejected,
                "rules_broken": "; ".join(f"{k}: {v}" for k, v in sorted(r.by_rule.items())),
                "remapped": "; ".join(f"{k}: {v}" for k, v in sorted(r.remapped.items())),
                "truncated": "; ".join(f"{k}: {v}" for k, v in sorted(r.truncated.items())),
            })
        return pd.DataFrame(rows)


def load_table(
    name: str, path: Path | str, now: pd.Timestamp | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, TableReport]:
    """Read and validate one file as contract table ``name`` (single-table rules only, no cross-table checks).

    Returns (accepted rows, rejects with table/row/field/rule/value/record, the table's report).
    """
    path = Path(path)
    typed, raw, report, v = validate_table(TABLES[name], read_raw(path), path, now=now)
    accepted, rejects = _finish(name, typed, raw, v, report)
    return accepted, rejects, report


def empty_table(name: str) -> pd.DataFrame:
    """A zero-row frame with the contract's columns and types for ``name``."""
    spec = TABLES[name]
    empty = pd.DataFrame({c.name: pd.Series([], dtype="string") for c in spec.columns})
    return _plain_dtypes(validate_table(spec, empty, "")[0])


def release_memory() -> None:
    """Give memory freed by a large read back to the operating system (glibc keeps freed heap pages otherwise)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def load_dataset(
    data_dir: Path | str, tables: Iterable[str] | None = None, now: pd.Timestamp | None = None,
    until: pd.Timestamp | str | None = None,
) -> Dataset:
    """Read and validate every contract table in ``data_dir``; optional tables that are absent come back empty.

    ``until`` (a day): tables stored as date-partitioned Parquet folders are read only up to that day's partition
    (rows read are then validated and counted as usual: rows in = accepted + rejected of what was read).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ContractError(data_dir, "data folder not found (run `aftersales generate --out DIR` to make one)")
    wanted = list(tables) if tables is not None else list(TABLES)
    accepted: dict[str, pd.DataFrame] = {}
    reports: dict[str, TableReport] = {}
    rejects = []
    # One table at a time, finished (split into accepted rows and rejects) before the next is read, so only one
    # table's raw and typed copies are in memory at once. Orders come first: the returns' rules need them.
    for name in TABLES:
        spec = TABLES[name]
        check_single_source(data_dir, name)
        path = find_table_file(data_dir, name)
        if path is None:
            if spec.required_table:
                raise ContractError(data_dir / f"{name}.parquet",
                                    f"required table '{name}' not found (looked for {name}.parquet, {name}.csv, "
                                    f"{name}.csv.gz or a folder {name}/ of Parquet files)")
            accepted[name], reports[name] = empty_table(name), TableReport(name, "")
            continue
        if name not in wanted and not spec.required_table:
            accepted[name], reports[name] = empty_table(name), TableReport(name, "")
            continue
        out, raw, report, v = validate_table(spec, read_raw(path, until), path, now=now, check_unique=False)
        if name == "returns":
            _check_returns_against_orders(out, raw, v, accepted["orders"])
        check_uniqueness(spec, out, v)  # last: a key is taken by the first row that passed everything else
        accepted[name], rej = _finish(name, out, raw, v, report)
        reports[name] = report
        rejects.append(rej)
        del out, raw, v
    release_memory()
    rej_all = pd.concat(rejects, ignore_index=True) if rejects else pd.DataFrame(columns=REJECT_COLUMNS)
    return Dataset(accepted, rej_all[REJECT_COLUMNS], reports, data_dir)
