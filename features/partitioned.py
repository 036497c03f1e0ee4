"""Write a data folder's event tables as date-partitioned Parquet folders (``orders/date=2024-11-11/part-0.parquet``).

Orders, returns and tickets are split by the UTC day of their event time (``features.contract.EVENT_TIME``); the
other tables (account links, review decisions) and everything else in the folder (``truth/``) are copied as they
are. ``features.contract.load_dataset`` reads such a folder like single files; with ``until`` it opens only the
partitions up to that day.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from features.contract import EVENT_TIME, PARTITION_DATE, UNKNOWN_DAY, find_table_file, read_raw


def _day_text(ts: pd.Series) -> pd.Series:
    t = pd.to_datetime(ts, utc=True, errors="coerce", format="ISO8601")
    # Rows whose event time cannot be read keep a partition of their own, so the contract still sees and rejects them.
    return t.dt.strftime("%Y-%m-%d").fillna(UNKNOWN_DAY)


def write_partitioned(src: Path | str, out: Path | str, progress=None) -> dict[str, int]:
    """Copy data folder ``src`` to ``out`` with orders/returns/tickets as date-partitioned Parquet folders.

    ``src`` may equal ``out`` (the single files are then replaced). Returns the number of files written per table.
    """
    say = progress or (lambda _m: None)
    src, out = Path(src), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    for table, column in EVENT_TIME.items():
        path = find_table_file(src, table)
        if path is None:
            continue
        frame = read_raw(path)
        if column not in frame.columns:
            raise ValueError(f"{path}: column {column} missing; it decides the date partition of table {table}")
        frame[PARTITION_DATE] = _day_text(frame[column])
        target = out / table
        tmp = out / f".{table}.partitioning"
        shutil.rmtree(tmp, ignore_errors=True)
        pads.write_dataset(pa.Table.from_pandas(frame, preserve_index=False), tmp, format="parquet",
                           partitioning=pads.partitioning(pa.schema([(PARTITION_DATE, pa.string())]), flavor="hive"),
                           basename_template="part-{i}.parquet", existing_data_behavior="overwrite_or_ignore",
                           max_rows_per_group=1 << 20)
        if path.is_file() and path.parent == out:
            path.unlink()
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        written[table] = sum(1 for _ in target.rglob("*.parquet"))
        say(f"  {table}: {len(frame):,} rows in {written[table]:,} files under {target}/")
    if src.resolve() != out.resolve():
        for item in src.iterdir():
            if item.name in EVENT_TIME or item.name.split(".")[0] in EVENT_TIME:
                continue
            dest = out / item.name
            if item.is_dir():
                shutil.copytree(item, dest, dirs_exist_ok=True)
            else:
                shutil.copy2(item, dest)
    return written
