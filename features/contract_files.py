"""Finding and reading a contract table's file: one file or a date-partitioned Parquet folder, read lazily up to a
day (used by :mod:`features.contract`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from features.contract_schema import ContractError


def find_table_file(data_dir: Path, table: str) -> Path | None:
    """The file (or Parquet folder) holding ``table`` in ``data_dir``, or None."""
    for name in (f"{table}.parquet", f"{table}.csv", f"{table}.csv.gz", table):
        p = data_dir / name
        if p.is_file() or (p.is_dir() and name == table and any(p.rglob("*.parquet"))):
            return p
    return None


def check_single_source(data_dir: Path, table: str) -> None:
    """Refuse a folder holding ``table`` twice (say orders.csv and orders.parquet): one of them would be ignored."""
    found = [n for n in (f"{table}.parquet", f"{table}.csv", f"{table}.csv.gz") if (data_dir / n).exists()]
    if (data_dir / table).is_dir() and any((data_dir / table).rglob("*.parquet")):
        found.append(f"{table}/")
    if len(found) > 1:
        raise ContractError(data_dir / found[0], f"table '{table}' is in {len(found)} places ({', '.join(found)}); "
                            "one would be silently ignored. Keep one (merge them first if both hold rows)")


# A table stored as a folder of Parquet files may be partitioned Hive-style by the UTC day of its event time
# (``orders/date=2024-11-11/part-0.parquet``; see features/partitioned.py). Commands with an as-of date read only the
# partitions up to it; the partition column itself is not a contract column and is dropped.
PARTITION_DATE = "date"
UNKNOWN_DAY = "unknown"  # the partition of rows whose event time cannot be read: always read, so they are rejected
EVENT_TIME = {"orders": "ordered_at", "returns": "requested_at", "tickets": "created_at"}


def date_partitioned(path: Path) -> bool:
    """Whether ``path`` is a folder of Parquet files partitioned by ``date=YYYY-MM-DD`` sub-folders."""
    return path.is_dir() and any(p.is_dir() and p.name.startswith(f"{PARTITION_DATE}=") for p in path.iterdir())


def partition_files(path: Path, until: pd.Timestamp | None = None) -> list[str]:
    """The Parquet files of a partitioned table folder that a read up to ``until`` (a day) opens."""
    import pyarrow.dataset as pads

    dataset = pads.dataset(path, format="parquet", partitioning="hive")
    flt = None
    if until is not None and date_partitioned(path):
        day = pads.field(PARTITION_DATE)
        flt = (day <= str(pd.Timestamp(until).date())) | (day == UNKNOWN_DAY)
    return [f.path for f in dataset.get_fragments(filter=flt)]


def read_raw(path: Path, until: pd.Timestamp | None = None) -> pd.DataFrame:
    """Read a table file as it is: CSV values stay strings, Parquet keeps its types.

    ``until``: for a folder partitioned by ``date=``, read only the partitions of days up to it (the filter is
    pushed down to the file listing: later files are never opened). Ignored for single files.
    """
    path = Path(path)
    csv_args = {"dtype": str, "keep_default_na": False, "na_values": [""], "encoding": "utf-8"}
    frame = None
    if path.suffix == ".csv" and path.is_file():
        with path.open("rb") as f:
            magic = f.read(4)
        for sig, what in ((b"PK\x03\x04", "an Excel workbook or ZIP archive"), (b"PAR1", "a Parquet file"),
                          (b"\x1f\x8b", "gzip-compressed")):
            if magic.startswith(sig):
                raise ContractError(path, f"cannot be read as CSV: it is {what}. Save it as CSV UTF-8 (Excel: "
                                    "Save As 'CSV UTF-8'), or give it the name that matches its format "
                                    "(.parquet, .csv.gz)")
    if path.is_dir() and date_partitioned(path):
        try:
            filters = None if until is None else [[(PARTITION_DATE, "<=", str(pd.Timestamp(until).date()))],
                                                   [(PARTITION_DATE, "==", UNKNOWN_DAY)]]
            frame = pd.read_parquet(path, filters=filters, partitioning="hive")
        except Exception as e:  # noqa: BLE001 - any reader failure is the same user problem
            raise ContractError(path, f"cannot be read as a partitioned Parquet folder: {type(e).__name__}: {e}. "
                                "A part file looks truncated or corrupt: copy or export that partition "
                                "again") from e
        frame = frame.drop(columns=[PARTITION_DATE])
    if not (path.is_dir() or path.suffix == ".parquet"):
        try:  # the pyarrow parser is ~4x faster; anything it refuses is re-read below for a precise message
            frame = pd.read_csv(path, engine="pyarrow", **csv_args)
        except Exception:  # noqa: BLE001 - the C parser below either reads it or names the problem
            frame = None
    try:
        if frame is None and (path.is_dir() or path.suffix == ".parquet"):
            frame = pd.read_parquet(path)
        elif frame is None:
            frame = pd.read_csv(path, **csv_args)
    except UnicodeDecodeError as e:
        utf16 = e.start == 0 and e.object[:2] in (b"\xff\xfe", b"\xfe\xff")
        raise ContractError(path, f"cannot be read: not UTF-8 text ({'UTF-16' if utf16 else e.reason} at byte "
                            f"{e.start}). Save it as UTF-8 (Excel: 'CSV UTF-8'; or iconv -f "
                            f"{'UTF-16' if utf16 else 'LATIN1'} -t UTF-8) and run again") from e
    except pd.errors.EmptyDataError as e:
        raise ContractError(path, "cannot be read: the file is empty (not even a header row). Export the table "
                            "again with its header row, or remove the file if the table is optional") from e
    except Exception as e:  # noqa: BLE001 - any reader failure is the same user problem
        raise ContractError(path, f"cannot be read: {type(e).__name__}: {str(e).rstrip('. ')}. The file looks truncated or corrupt, "
                            "or is not the format its name says (.parquet, .csv, .csv.gz): copy or export it "
                            "again") from e
    # Spreadsheet exports pad headers with blanks (and a BOM that the parsers do not always strip).
    frame.columns = [str(c).lstrip("\ufeff").strip() for c in frame.columns]
    return frame
