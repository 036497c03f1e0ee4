"""The input data contract (``shared/CONTRACT.md``): table specs, loading and row-level validation.

Every row either comes out accepted or goes to the rejects frame with its table, row number, field and the rule it
broke; ``rows_in == accepted + rejected`` holds for every table. A file that cannot be read, or that lacks a required
column, raises :class:`ContractError` naming the file and column.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

Kind = Literal["str", "int", "float", "bool", "timestamp"]
RETURN_REASONS = (
    "defective", "not_as_described", "wrong_item", "size_fit", "changed_mind", "damaged_in_transit", "not_received",
    "other",
)
CASE_TYPES = ("return", "refund", "exchange", "complaint", "logistics", "quality", "inquiry", "other")
CHANNELS = ("chat", "phone", "email", "app", "other")
LINK_TYPES = ("address", "device", "payment", "phone", "email")
DECISIONS = ("confirmed_abuse", "cleared")
# Event timestamps later than this past the load time are rejected (clock errors, test rows).
FUTURE_TOLERANCE = pd.Timedelta(days=1)
_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n"}


class ContractError(ValueError):
    """A file that cannot be used at all: unreadable, or missing a required column."""

    def __init__(self, path: Path | str, message: str, column: str | None = None):
        self.path, self.column = str(path), column
        where = f"{path}" + (f", column '{column}'" if column else "")
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Column:
    """One column of a table and the rules its values obey."""

    name: str
    kind: Kind
    required: bool = False  # must be present in the file and non-null
    optional_column: bool = False  # may be absent from the file (then filled with `default`)
    default: object = None
    allowed: tuple[str, ...] | None = None
    min_value: float | None = None
    min_exclusive: bool = False
    unknown_to: str | None = None  # map values outside `allowed` to this value instead of rejecting
    event_time: bool = False  # a time at which something happened: must not lie in the future


@dataclass(frozen=True)
class TableSpec:
    """A contract table: its columns, its unique key and whether the data folder must hold it."""

    name: str
    columns: tuple[Column, ...]
    unique: tuple[str, ...] = ()
    required_table: bool = False

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


def _ts(name: str, required: bool = False, event: bool = True) -> Column:
    return Column(name, "timestamp", required=required, event_time=event)


TABLES: dict[str, TableSpec] = {
    "orders": TableSpec(
        "orders",
        (
            Column("order_id", "str", required=True),
            Column("line_no", "int", optional_column=True, default=1, min_value=0),
            Column("account_id", "str"),
            Column("merchant_id", "str", required=True),
            _ts("ordered_at", required=True),
            Column("category", "str"),
            Column("quantity", "int", required=True, min_value=0, min_exclusive=True),
            Column("amount", "float", required=True, min_value=0),
            Column("region", "str"),
            _ts("promised_delivery_at", event=False),
            _ts("delivered_at"),
        ),
        unique=("order_id", "line_no"),
        required_table=True,
    ),
    "returns": TableSpec(
        "returns",
        (
            Column("return_id", "str", required=True),
            Column("order_id", "str"),
            Column("account_id", "str"),
            Column("merchant_id", "str", required=True),
            _ts("requested_at", required=True),
            Column("reason", "str", allowed=RETURN_REASONS, unknown_to="other"),
            Column("quantity", "int", required=True, min_value=0, min_exclusive=True),
            Column("refund_amount", "float", required=True, min_value=0),
            Column("item_returned", "bool"),
        ),
        unique=("return_id",),
        required_table=True,
    ),
    "tickets": TableSpec(
        "tickets",
        (
            Column("ticket_id", "str", required=True),
            _ts("created_at", required=True),
            Column("account_id", "str"),
            Column("merchant_id", "str"),
            Column("order_id", "str"),
            Column("case_type", "str", required=True, allowed=CASE_TYPES),
            Column("channel", "str", required=True, allowed=CHANNELS),
            Column("amount", "float", min_value=0),
            Column("text", "str"),
            Column("escalated", "bool"),
            _ts("resolved_at"),
        ),
        unique=("ticket_id",),
    ),
    "account_links": TableSpec(
        "account_links",
        (
            Column("account_id", "str", required=True),
            Column("link_type", "str", required=True, allowed=LINK_TYPES),
            Column("link_value", "str", required=True),
        ),
    ),
    "review_decisions": TableSpec(
        "review_decisions",
        (
            Column("account_id", "str", required=True),
            Column("decision", "str", required=True, allowed=DECISIONS),
            _ts("decided_at", required=True),
            Column("reviewer", "str", required=True),
            Column("note", "str"),
        ),
    ),
}
# Cross-column rules: (table, later column, earlier column, rule name)
ORDERING_RULES = (
    ("orders", "delivered_at", "ordered_at", "delivered_at >= ordered_at"),
    ("tickets", "resolved_at", "created_at", "resolved_at >= created_at"),
)
REJECT_COLUMNS = ["table", "row", "field", "rule", "value", "record"]


@dataclass
class TableReport:
    """Counts for one table: rows read, accepted, rejected, rejections by rule, and values remapped."""

    table: str
    source: str
    rows_in: int = 0
    accepted: int = 0
    rejected: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)
    remapped: dict[str, int] = field(default_factory=dict)


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
            })
        return pd.DataFrame(rows)


def find_table_file(data_dir: Path, table: str) -> Path | None:
    """The file (or Parquet folder) holding ``table`` in ``data_dir``, or None."""
    for name in (f"{table}.parquet", f"{table}.csv", f"{table}.csv.gz", table):
        p = data_dir / name
        if p.is_file() or (p.is_dir() and name == table and any(p.rglob("*.parquet"))):
            return p
    return None


def read_raw(path: Path) -> pd.DataFrame:
    """Read a table file as it is: CSV values stay strings, Parquet keeps its types."""
    try:
        if path.is_dir() or path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ContractError(path, f"cannot be read: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except pd.errors.EmptyDataError as e:
        raise ContractError(path, "cannot be read: the file is empty (not even a header row)") from e
    except Exception as e:  # noqa: BLE001 - any reader failure is the same user problem
        raise ContractError(path, f"cannot be read: {type(e).__name__}: {e}") from e


def normalise_ids(s: pd.Series) -> pd.Series:
    """IDs as strings; float-looking IDs from exports (``13085.0``) become ``13085``; blanks become null."""
    if pd.api.types.is_float_dtype(s):
        out = s.astype("Int64").astype("string")
    else:
        out = s.astype("string").str.strip()
        out = out.str.replace(r"^(-?\d+)\.0+$", r"\1", regex=True)
    return out.mask(out == "", pd.NA)


def _parse_timestamps(s: pd.Series) -> pd.Series:
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        return s.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_any_dtype(s):
        return s.dt.tz_localize("UTC")
    return pd.to_datetime(s.astype("string"), utc=True, errors="coerce", format="ISO8601")


def _parse_bool(s: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(s):
        return s.astype("boolean")
    low = s.astype("string").str.strip().str.lower()
    out = pd.Series(pd.NA, index=s.index, dtype="boolean")
    out[low.isin(_TRUE).fillna(False)] = True
    out[low.isin(_FALSE).fillna(False)] = False
    return out


def _coerce(col: Column, raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Return the typed column and a mask of values present in the input that could not be parsed."""
    present = raw.notna() & (raw.astype("string").str.strip() != "").fillna(False)
    if col.kind == "str":
        return normalise_ids(raw), pd.Series(False, index=raw.index)
    if col.kind == "timestamp":
        out = _parse_timestamps(raw)
    elif col.kind == "bool":
        out = _parse_bool(raw)
    else:
        num = pd.to_numeric(raw, errors="coerce")
        if col.kind == "int":
            whole = num.notna() & np.isfinite(num) & (num == np.round(num))
            num = num.where(whole)
            out = num.astype("Int64")
        else:
            out = num.where(np.isfinite(num)).astype("Float64")
    return out, present & out.isna()


def _record_json(frame: pd.DataFrame) -> pd.Series:
    return pd.Series(
        [json.dumps(r, default=str, ensure_ascii=False)[:2000] for r in frame.astype("string").to_dict("records")],
        index=frame.index,
    )


class _Violations:
    """Collects the first broken rule per row (later rules still count in the per-rule tally)."""

    def __init__(self, index: pd.Index):
        self.field = pd.Series(pd.NA, index=index, dtype="string")
        self.rule = pd.Series(pd.NA, index=index, dtype="string")
        self.value = pd.Series(pd.NA, index=index, dtype="string")
        self.by_rule: dict[str, int] = {}

    def add(self, mask: pd.Series, fld: str, rule: str, values: pd.Series | None = None) -> None:
        mask = mask.fillna(False).astype(bool)
        n = int(mask.sum())
        if not n:
            return
        self.by_rule[f"{fld}: {rule}"] = self.by_rule.get(f"{fld}: {rule}", 0) + n
        new = mask & self.rule.isna()
        self.field[new] = fld
        self.rule[new] = rule
        if values is not None:
            self.value[new] = values[new].astype("string").str.slice(0, 200)

    @property
    def mask(self) -> pd.Series:
        return self.rule.notna()


def validate_table(
    spec: TableSpec, raw: pd.DataFrame, source: Path | str, now: pd.Timestamp | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, TableReport, _Violations]:
    """Type and check one table; return (accepted, rejects, report, violations for cross-table rules)."""
    source = str(source)
    missing = [c.name for c in spec.columns if c.required and c.name not in raw.columns]
    if missing:
        raise ContractError(source, f"required column missing (table {spec.name}; columns found: "
                            f"{', '.join(map(str, raw.columns)) or 'none'})", column=missing[0])
    raw = raw.reset_index(drop=True)
    now = now if now is not None else pd.Timestamp.now(tz="UTC")
    out = pd.DataFrame(index=raw.index)
    v = _Violations(raw.index)
    report = TableReport(spec.name, source, rows_in=len(raw))
    for col in spec.columns:
        if col.name not in raw.columns:
            out[col.name] = pd.Series(col.default if col.default is not None else pd.NA, index=raw.index)
            out[col.name] = _coerce(col, out[col.name])[0]
            continue
        typed, bad = _coerce(col, raw[col.name])
        v.add(bad, col.name, f"must be a valid {col.kind}", raw[col.name])
        if col.default is not None:
            typed = typed.fillna(col.default)
        if col.required:
            v.add(typed.isna() & ~bad, col.name, "required (must not be empty)")
        if col.allowed is not None:
            outside = typed.notna() & ~typed.isin(col.allowed)
            if col.unknown_to is not None:
                remapped = int(outside.sum()) + int((typed.isna() & ~col.required).sum())
                if remapped:
                    report.remapped[col.name] = remapped
                typed = typed.where(~outside, col.unknown_to).fillna(col.unknown_to)
            else:
                v.add(outside, col.name, f"must be one of {', '.join(col.allowed)}", raw[col.name])
        if col.min_value is not None:
            low = typed < col.min_value if not col.min_exclusive else typed <= col.min_value
            v.add(low, col.name, f"must be {'>' if col.min_exclusive else '>='} {col.min_value:g}", raw[col.name])
        if col.event_time:
            v.add(typed > now + FUTURE_TOLERANCE, col.name, "must not lie in the future", raw[col.name])
        out[col.name] = typed
    for table, later, earlier, rule in ORDERING_RULES:
        if table == spec.name:
            v.add(out[later] < out[earlier], later, f"must be {rule.split(' ', 1)[1]}", raw.get(later))
    if spec.unique:
        dup = out.duplicated(list(spec.unique), keep="first") & out[list(spec.unique)].notna().all(axis=1)
        v.add(dup & ~v.mask, "+".join(spec.unique), "must be unique (later duplicate rejected)")
    extra = [c for c in raw.columns if c not in spec.names]
    for c in extra:  # columns not in the contract are kept and ignored
        out[c] = raw[c]
    report.by_rule = dict(v.by_rule)
    return out, raw, report, v


def _finish(spec_name: str, out: pd.DataFrame, raw: pd.DataFrame, v: _Violations, report: TableReport):
    bad = v.mask
    rejects = pd.DataFrame({
        "table": spec_name,
        "row": (raw.index[bad] + 1).astype(int),
        "field": v.field[bad].values,
        "rule": v.rule[bad].values,
        "value": v.value[bad].values,
        "record": _record_json(raw.loc[bad]).values if bad.any() else [],
    })
    accepted = _plain_dtypes(out.loc[~bad].reset_index(drop=True))
    report.rejected = int(bad.sum())
    report.accepted = len(accepted)
    return accepted, rejects


def _plain_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """Numpy dtypes for numbers (NaN for missing floats, int64 where no value is missing), microsecond UTC times."""
    for c in frame.columns:
        s = frame[c]
        if isinstance(s.dtype, pd.Float64Dtype):
            frame[c] = s.astype("float64")
        elif isinstance(s.dtype, pd.Int64Dtype) and not s.isna().any():
            frame[c] = s.astype("int64")
        elif isinstance(s.dtype, pd.DatetimeTZDtype):
            frame[c] = s.dt.as_unit("us")
    return frame


def empty_table(name: str) -> pd.DataFrame:
    """A zero-row frame with the contract's columns and types for ``name``."""
    spec = TABLES[name]
    empty = pd.DataFrame({c.name: pd.Series([], dtype="string") for c in spec.columns})
    return _plain_dtypes(validate_table(spec, empty, "")[0])


def load_dataset(
    data_dir: Path | str, tables: Iterable[str] | None = None, now: pd.Timestamp | None = None
) -> Dataset:
    """Read and validate every contract table in ``data_dir``; optional tables that are absent come back empty."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ContractError(data_dir, "data folder not found (run `aftersales generate --out DIR` to make one)")
    wanted = list(tables) if tables is not None else list(TABLES)
    frames, raws, reports, viols = {}, {}, {}, {}
    for name in TABLES:
        spec = TABLES[name]
        path = find_table_file(data_dir, name)
        if path is None:
            if spec.required_table:
                raise ContractError(data_dir / f"{name}.parquet",
                                    f"required table '{name}' not found (looked for {name}.parquet, {name}.csv, "
                                    f"{name}.csv.gz or a folder {name}/ of Parquet files)")
            frames[name], raws[name] = empty_table(name), None
            reports[name] = TableReport(name, "")
            continue
        if name not in wanted and not spec.required_table:
            frames[name], raws[name] = empty_table(name), None
            reports[name] = TableReport(name, "")
            continue
        out, raw, report, v = validate_table(spec, read_raw(path), path, now=now)
        frames[name], raws[name], reports[name], viols[name] = out, raw, report, v
    # Cross-table rules on returns: the order must exist when given, and the return cannot precede it.
    r, v = frames["returns"], viols["returns"]
    o_ok = frames["orders"].loc[~viols["orders"].mask]
    first_order = o_ok.groupby("order_id", observed=True)["ordered_at"].min()
    given = r["order_id"].notna()
    known = r["order_id"].isin(first_order.index)
    v.add(given & ~known, "order_id", "must refer to an order in orders", raws["returns"]["order_id"])
    ordered_at = r["order_id"].map(first_order)
    v.add(known & (r["requested_at"] < ordered_at), "requested_at", "must be >= the order's ordered_at",
          raws["returns"]["requested_at"])
    reports["returns"].by_rule = dict(v.by_rule)
    accepted, rejects = {}, []
    for name in TABLES:
        if raws[name] is None:
            accepted[name] = frames[name]
            continue
        accepted[name], rej = _finish(name, frames[name], raws[name], viols[name], reports[name])
        rejects.append(rej)
    rej_all = pd.concat(rejects, ignore_index=True) if rejects else pd.DataFrame(columns=REJECT_COLUMNS)
    return Dataset(accepted, rej_all[REJECT_COLUMNS], reports, data_dir)
