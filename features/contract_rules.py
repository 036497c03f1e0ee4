"""Row-level validation of one contract table: ID normalisation, typing, the column rules, the cross-column and
cross-table rules and uniqueness; each broken rule is one reject row (used by :mod:`features.contract`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from features.contract_schema import (
    FUTURE_TOLERANCE,
    MAX_TEXT_CHARS,
    MAX_VALUE_CHARS,
    ORDERING_RULES,
    Column,
    ContractError,
    TableReport,
    TableSpec,
)

_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n"}

def normalise_ids(s: pd.Series) -> pd.Series:
    """IDs as strings; float-looking IDs from exports (``13085.0``) become ``13085``; blanks become null."""
    if pd.api.types.is_float_dtype(s):
        # Whole floats are integer IDs written as floats; any other float keeps its text form rather than crash.
        whole = s.notna() & (s == np.round(s))
        out = s.astype("string")
        if whole.any():
            out[whole] = s[whole].astype("int64").astype("string")
        return out
    out = _clean_text(s)
    dotted = out.str.contains(".", regex=False).fillna(False)  # the regex only runs where it can match
    if dotted.any():
        out[dotted] = out[dotted].str.replace(r"^(-?\d+)\.0+$", r"\1", regex=True)
    return out


def _clean_text(s: pd.Series) -> pd.Series:
    """Text as pandas strings, surrounding blanks stripped, empty values null."""
    out = s.astype("string").str.strip()
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
    if col.kind == "str":
        if col.allowed is not None:  # category codes: `Chat ` is chat
            return _clean_text(raw).str.lower(), pd.Series(False, index=raw.index)
        out = normalise_ids(raw) if col.is_id else _clean_text(raw)
        return out, pd.Series(False, index=raw.index)
    if pd.api.types.is_string_dtype(raw) or raw.dtype == object:
        present = _clean_text(raw).notna()
    else:
        present = raw.notna()
    if col.kind == "timestamp":
        out = _parse_timestamps(raw)
    elif col.kind == "bool":
        out = _parse_bool(raw)
    elif col.kind == "int" and pd.api.types.is_integer_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        out = raw.astype("Int64")
    else:
        # float64 (NaN for missing) keeps the finite/whole checks simple whatever the input dtype was.
        num = pd.to_numeric(raw, errors="coerce").astype("float64")
        ok = np.isfinite(num)
        if col.kind == "int":
            ok &= (num == np.round(num)) & (num.abs() < 2.0**63)  # beyond int64 is not a count or line number
        out = num.where(ok).astype("Int64" if col.kind == "int" else "Float64")
    return out, present & out.isna()


def _record_json(frame: pd.DataFrame) -> pd.Series:
    """The rejected rows as they were read, one JSON object each (missing values as null)."""
    text = frame.astype("string")
    text = text.apply(lambda s: s.str.slice(0, 2000)).astype(object)  # a 10 MB cell is not copied whole
    text = text.where(frame.notna(), None)
    return pd.Series(
        [json.dumps(r, ensure_ascii=False)[:2000] for r in text.to_dict("records")],
        index=frame.index,
    )


class _Violations:
    """The first broken rule per row; a row is rejected once and counted once, under that rule."""

    def __init__(self, index: pd.Index):
        self.field = pd.Series(pd.NA, index=index, dtype="string")
        self.rule = pd.Series(pd.NA, index=index, dtype="string")
        self.value = pd.Series(pd.NA, index=index, dtype="string")
        self.by_rule: dict[str, int] = {}
        self.remapped: dict[str, pd.Series] = {}  # column -> rows whose unknown value was mapped
        self.truncated: dict[str, pd.Series] = {}  # column -> rows whose free text was cut to MAX_TEXT_CHARS

    def add(self, mask: pd.Series, fld: str, rule: str, values: pd.Series | None = None) -> None:
        mask = mask.fillna(False).astype(bool)
        new = mask & self.rule.isna()
        n = int(new.sum())
        if not n:
            return
        self.by_rule[f"{fld}: {rule}"] = self.by_rule.get(f"{fld}: {rule}", 0) + n
        self.field[new] = fld
        self.rule[new] = rule
        if values is not None:
            self.value[new] = values[new].astype("string").str.slice(0, 200)

    @property
    def mask(self) -> pd.Series:
        return self.rule.notna()


def validate_table(
    spec: TableSpec, raw: pd.DataFrame, source: Path | str, now: pd.Timestamp | None = None,
    check_unique: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, TableReport, _Violations]:
    """Type and check one table's own rules.

    Returns ``(typed, raw, report, violations)``: ``typed`` holds every row (accepted or not) with contract types,
    ``raw`` the rows as read (index 0..n-1), and ``violations`` the first rule each row broke. ``load_dataset`` adds
    the cross-table rules and then splits accepted from rejected rows; ``check_unique=False`` leaves the uniqueness
    rule to the caller so that it runs last, among rows that passed every other rule.
    """
    source = str(source)
    for c in spec.names:  # the CSV readers rename a repeated header `quantity` to `quantity.1`: which one is meant?
        if f"{c}.1" in raw.columns or int((raw.columns == c).sum()) > 1:
            raise ContractError(source, f"column '{c}' appears more than once in the header (table {spec.name}). "
                                "Keep one column of that name", column=c)
    missing = [c.name for c in spec.columns if c.required and c.name not in raw.columns]
    if missing:
        cols = list(map(str, raw.columns))
        hint = next((f" The header looks separated by '{sep}', not commas: export the file comma-separated."
                     for sep in (";", "\t", "|") if len(cols) == 1 and sep in cols[0]), "")
        if not hint and not set(cols) & set(spec.names):
            hint = " None of the table's columns is in the first line: does the file start with its header row?"
        raise ContractError(source, f"required column{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(missing)} missing (table {spec.name}; columns found: "
                            f"{', '.join(cols)[:500] or 'none'}). Add the column or rename the one "
                            f"that holds it; see shared/CONTRACT.md.{hint}", column=missing[0])
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
        if col.kind == "str":
            length = typed.str.len()
            if col.free_text:
                long = (length > MAX_TEXT_CHARS).fillna(False)
                if long.any():
                    v.truncated[col.name] = long
                    typed = typed.where(~long, typed.str.slice(0, MAX_TEXT_CHARS))
            else:
                v.add(length > MAX_VALUE_CHARS, col.name, f"must be at most {MAX_VALUE_CHARS} characters",
                      raw[col.name])
        if col.default is not None:
            typed = typed.fillna(col.default)
        if col.required:
            v.add(typed.isna() & ~bad, col.name, "required (must not be empty)")
        if col.allowed is not None:
            outside = typed.notna() & ~typed.isin(col.allowed)
            if col.unknown_to is not None:
                v.remapped[col.name] = outside  # counted once the rejected rows are known (see _tally)
                typed = typed.where(~outside, col.unknown_to)
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
    if check_unique:
        check_uniqueness(spec, out, v)
    extra = [c for c in raw.columns if c not in spec.names]
    for c in extra:  # columns not in the contract are kept and ignored
        out[c] = raw[c]
    _tally(report, v)
    return out, raw, report, v


def _tally(report: TableReport, v: _Violations) -> None:
    """Copy rule counts into the report; remapped values count only on accepted rows, so counts match the output."""
    report.by_rule = dict(v.by_rule)
    report.remapped = {c: n for c, m in v.remapped.items() if (n := int((m & ~v.mask).sum()))}
    report.truncated = {c: n for c, m in v.truncated.items() if (n := int((m & ~v.mask).sum()))}


def check_uniqueness(spec: TableSpec, typed: pd.DataFrame, v: _Violations) -> None:
    """Reject later duplicates of the table's key among rows no other rule rejected (the first valid row wins)."""
    if not spec.unique:
        return
    key = list(spec.unique)
    alive = typed.loc[~v.mask, key]
    dup = alive.duplicated(keep="first") & alive.notna().all(axis=1)
    v.add(dup.reindex(typed.index, fill_value=False), "+".join(key), "must be unique (later duplicate rejected)",
          typed[key[0]])


def _finish(spec_name: str, out: pd.DataFrame, raw: pd.DataFrame, v: _Violations, report: TableReport):
    bad = v.mask
    _tally(report, v)
    rejects = pd.DataFrame({
        "table": spec_name,
        # 1-based data row in the file (a CSV's header is not counted: file line = row + 1)
        "row": (raw.index[bad] + 1).astype(int),
        "field": v.field[bad].values,
        "rule": v.rule[bad].values,
        "value": v.value[bad].values,
        "record": _record_json(raw.loc[bad]).values if bad.any() else [],
    })
    accepted = _plain_dtypes(out.loc[~bad].reset_index(drop=True) if bad.any() else out)
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
        elif isinstance(s.array, pd.arrays.ArrowStringArray) and s.array.__arrow_array__().num_chunks > 1:
            # A partitioned folder reads as one Arrow chunk per file: one contiguous array makes every later take
            # (row selection, partitioning) several times faster (measured: 6x on 1M of 4.8M order IDs).
            frame[c] = pd.Series(type(s.array)(s.array.__arrow_array__().combine_chunks()), index=s.index)
    return frame


def _check_returns_against_orders(r: pd.DataFrame, raw: pd.DataFrame, v: _Violations, orders: pd.DataFrame) -> None:
    """Cross-table rules on returns: the order must be an accepted order when given, and the return cannot precede it."""
    first_order = orders.groupby("order_id", observed=True)["ordered_at"].min()
    given = r["order_id"].notna()
    if first_order.empty:  # no accepted order at all (header-only file, every row rejected): nothing to join
        ordered_at = pd.Series(pd.NaT, index=r.index, dtype=r["requested_at"].dtype)
    else:
        ordered_at = r["order_id"].map(first_order)  # a join, much faster than isin() on arrow strings
    known = ordered_at.notna()
    v.add(given & ~known, "order_id", "must refer to an accepted order in orders", raw.get("order_id"))
    v.add(known & (r["requested_at"] < ordered_at), "requested_at", "must be >= the order's ordered_at",
          raw["requested_at"])
