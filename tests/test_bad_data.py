"""Broken files and hostile inputs, end to end through ``aftersales validate --data DIR`` (and ``load_dataset``).

test_contract.py checks each rule on frames; this suite breaks *files* the way exports break them and checks what a
user sees: either the command stops (exit 1, no traceback) with a message naming the file, the field and what to do,
or the bad rows land in rejects.csv with their rule, and for every table the rows in the file (counted here,
independently of the loader) = rows accepted + rows rejected, as summary.csv reports.
"""

from __future__ import annotations

import csv
import gzip
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_contract import base_world, write_world

from features.contract import (
    MAX_TEXT_CHARS,
    MAX_VALUE_CHARS,
    ORDERING_RULES,
    TABLES,
    ContractError,
    find_table_file,
    load_dataset,
    load_table,
)
from training.cli import main

FUTURE = "2999-01-01T00:00:00Z"


# --- running the command and checking its counts -------------------------------------------------------------------


def file_rows(path: Path) -> int:
    """Data rows in a table file, counted without the contract loader (csv module / Parquet metadata)."""
    if path.is_dir():
        return sum(pq.ParquetFile(p).metadata.num_rows for p in sorted(path.rglob("*.parquet")))
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    opener = gzip.open if path.name.endswith(".gz") else open
    csv.field_size_limit(sys.maxsize)  # a 10 MB cell is one field
    with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
        rows = [r for r in csv.reader(f) if r]  # blank lines are not rows
    return max(len(rows) - 1, 0)


def validate(data: Path, tmp_path: Path):
    """Run `aftersales validate`; return (result, summary indexed by table, rejects)."""
    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["validate", "--data", str(data), "--rejects-dir", str(out)])
    assert "Traceback" not in res.output
    if res.exit_code != 0:
        return res, None, None
    assert isinstance(res.exception, type(None)), res.exception
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False).set_index("table")
    rejects = pd.read_csv(out / "rejects.csv", dtype={"value": str, "record": str, "field": str, "rule": str})
    return res, summary, rejects


def assert_conserved(data: Path, summary: pd.DataFrame, rejects: pd.DataFrame) -> None:
    """For every table: rows in the file = rows_in = accepted + rejected = its lines in rejects.csv + accepted."""
    for name in TABLES:
        path = find_table_file(data, name)
        row = summary.loc[name]
        expected = file_rows(path) if path is not None else 0
        assert row["rows_in"] == expected, (name, row.to_dict(), expected)
        assert row["rows_in"] == row["accepted"] + row["rejected"], (name, row.to_dict())
        assert int((rejects["table"] == name).sum()) == row["rejected"], name


def refused(res, *needles: str) -> str:
    """The command stopped with exit 1 and a one-paragraph message containing every needle."""
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)  # a ClickException, not a crash
    assert "Traceback" not in res.output
    for n in needles:
        assert n in res.output, (n, res.output)
    return res.output


def world_dir(tmp_path: Path, world=None, fmt: str = "csv") -> Path:
    return write_world(tmp_path / "data", world or base_world(), fmt=fmt)


# --- one case per contract rule, through the files --------------------------------------------------------------


def _rule_cases():
    """(case, table, changes to a copy of the table's first row, expected field, expected rule) for every rule.

    Built from the contract's own table specs, so a rule added to a column is covered here without a new test.
    """
    bad_value = {"int": "two", "float": "12,5 EUR", "timestamp": "next tuesday", "bool": "maybe"}
    for table, spec in TABLES.items():
        for col in spec.columns:
            c = col.name
            if col.kind != "str":
                yield f"{table}.{c}-type", table, {c: bad_value[col.kind]}, c, f"must be a valid {col.kind}"
            if col.required:
                yield f"{table}.{c}-required", table, {c: ""}, c, "required (must not be empty)"
            if col.allowed is not None and col.unknown_to is None:
                yield f"{table}.{c}-code", table, {c: "pigeon"}, c, f"must be one of {', '.join(col.allowed)}"
            if col.min_value is not None:
                bad = col.min_value if col.min_exclusive else col.min_value - 1
                yield (f"{table}.{c}-min", table, {c: f"{bad:g}"}, c,
                       f"must be {'>' if col.min_exclusive else '>='} {col.min_value:g}")
            if col.event_time:
                yield f"{table}.{c}-future", table, {c: FUTURE}, c, "must not lie in the future"
            if col.kind == "str" and not col.free_text:
                yield (f"{table}.{c}-length", table, {c: "x" * (MAX_VALUE_CHARS + 1)}, c,
                       f"must be at most {MAX_VALUE_CHARS} characters")
        if spec.unique:
            yield (f"{table}-duplicate", table, {}, "+".join(spec.unique),
                   "must be unique (later duplicate rejected)")
    for table, later, _earlier, rule in ORDERING_RULES:
        yield (f"{table}.{later}-order", table, {later: "2020-01-01T00:00:00Z"}, later,
               f"must be {rule.split(' ', 1)[1]}")
    yield "returns.order_id-unknown", "returns", {"order_id": "o404"}, "order_id", \
        "must refer to an accepted order in orders"
    yield "returns.requested_at-before-order", "returns", {"requested_at": "2024-01-01T00:00:00Z"}, \
        "requested_at", "must be >= the order's ordered_at"


RULE_CASES = list(_rule_cases())


def test_the_rule_cases_cover_every_rule_kind():
    """A guard on the generator above: every kind of rule in the contract has a case."""
    kinds = {c[0].rsplit("-", 1)[-1] for c in RULE_CASES}
    assert kinds == {"type", "required", "code", "min", "future", "length", "duplicate", "order", "unknown"}
    assert sum(c[0].endswith("-type") for c in RULE_CASES) == sum(
        c.kind != "str" for s in TABLES.values() for c in s.columns)
    assert len(RULE_CASES) > 60


def test_every_rule_rejects_its_row_through_the_command(tmp_path):
    """One data folder, one broken row per rule (each a copy of a valid row with its own key): one validate run."""
    world = base_world()
    key_of = {"orders": "order_id", "returns": "return_id", "tickets": "ticket_id"}
    expected = {}
    for i, (case, table, changes, fld, rule) in enumerate(RULE_CASES):
        row = dict(world[table][0])
        if table in key_of:
            row[key_of[table]] = f"case{i}"
        if case.endswith("-duplicate"):  # an exact copy of the first row: its key is taken
            row = dict(world[table][0])
        row.update(changes)
        world[table].append(row)
        expected[case] = (table, len(world[table]), fld, rule)
    data = world_dir(tmp_path, world)
    res, summary, rejects = validate(data, tmp_path)
    assert res.exit_code == 0, res.output
    got = {(r.table, r.row): (r.table, r.row, r.field, r.rule) for r in rejects.itertuples()}
    assert {case: got.get(exp[:2]) for case, exp in expected.items()} == expected
    assert len(rejects) == len(expected)  # nothing else rejected: each case broke exactly its rule
    assert (rejects["record"].str.len() <= 2000).all() and (rejects["value"].dropna().str.len() <= 200).all()
    for table in TABLES:
        counts = dict(part.rsplit(": ", 1) for part in summary.loc[table, "rules_broken"].split("; ") if part)
        want = pd.Series([f"{f}: {r}" for t, _, f, r in expected.values() if t == table]).value_counts()
        assert {k: int(v) for k, v in counts.items()} == want.to_dict(), table
    assert_conserved(data, summary, rejects)


def test_unknown_return_reason_is_remapped_and_counted_not_rejected(tmp_path):
    world = base_world()
    world["returns"][0]["reason"] = "customer is always right"
    data = world_dir(tmp_path, world)
    res, summary, rejects = validate(data, tmp_path)
    assert res.exit_code == 0 and rejects.empty
    assert summary.loc["returns", "remapped"] == "reason: 1"
    assert_conserved(data, summary, rejects)


# --- files that cannot be used: the command stops and says which file and what to do ------------------------------


def _cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_parquet(tmp_path):
    data = world_dir(tmp_path, fmt="parquet")
    _cut(data / "orders.parquet")
    res, _, _ = validate(data, tmp_path)
    refused(res, "orders.parquet", "cannot be read", "truncated or corrupt", "export it again")


def test_truncated_part_file_in_a_parquet_folder(tmp_path):
    data = world_dir(tmp_path, fmt="parquet")
    orders = pd.read_parquet(data / "orders.parquet")
    (data / "orders.parquet").unlink()
    (data / "orders").mkdir()
    orders.iloc[:2].to_parquet(data / "orders" / "part-0.parquet")
    orders.iloc[2:].to_parquet(data / "orders" / "part-1.parquet")
    _cut(data / "orders" / "part-1.parquet")
    res, _, _ = validate(data, tmp_path)
    refused(res, "orders", "cannot be read", "export it again")


@pytest.mark.parametrize(("encoding", "named"), [("latin-1", "LATIN1"), ("utf-16", "UTF-16"), ("cp1252", "LATIN1")])
def test_csv_in_the_wrong_encoding(tmp_path, encoding, named):
    data = world_dir(tmp_path)
    text = (data / "orders.csv").read_text(encoding="utf-8")
    text = text.replace("apparel", "Bekleidung für Damen").replace("a1,", "Zoë-Müller,")
    (data / "orders.csv").write_bytes(text.encode(encoding))
    res, _, _ = validate(data, tmp_path)
    refused(res, "orders.csv", "not UTF-8", "Save it as UTF-8", named)


@pytest.mark.parametrize("name", ["tickets.csv", "orders.csv", "orders.csv.gz", "orders.parquet"])
def test_empty_file(tmp_path, name):
    data = world_dir(tmp_path)
    (data / f"{name.split('.')[0]}.csv").unlink()
    (data / name).write_bytes(b"")
    res, _, _ = validate(data, tmp_path)
    refused(res, name, "cannot be read")


def test_header_only_files_are_empty_tables_and_their_dependants_are_rejected(tmp_path):
    world = base_world()
    world["orders"] = []
    world["tickets"] = []
    data = world_dir(tmp_path, world)
    res, summary, rejects = validate(data, tmp_path)
    assert res.exit_code == 0, res.output
    assert summary.loc["orders", "rows_in"] == 0 and summary.loc["tickets", "rows_in"] == 0
    # r1 names order o1, which is not there any more: rejected, not silently kept or dropped.
    assert rejects[["table", "field"]].values.tolist() == [["returns", "order_id"]]
    assert_conserved(data, summary, rejects)


def test_corrupt_gzip(tmp_path):
    data = world_dir(tmp_path)
    orders = pd.read_csv(data / "orders.csv", dtype=str)
    big = pd.concat([orders] * 3000, ignore_index=True).assign(line_no=lambda f: range(len(f)))
    payload = gzip.compress(big.to_csv(index=False).encode())
    (data / "orders.csv").unlink()
    (data / "orders.csv.gz").write_bytes(payload[: len(payload) // 2])  # cut mid-stream: no partial table
    res, _, _ = validate(data, tmp_path)
    refused(res, "orders.csv.gz", "cannot be read", "truncated or corrupt")


def test_gzip_name_on_plain_text_is_not_a_crash(tmp_path):
    data = world_dir(tmp_path)
    (data / "orders.csv").rename(data / "orders.csv.gz")  # not compressed at all
    res, _, _ = validate(data, tmp_path)
    refused(res, "orders.csv.gz", "cannot be read")


def test_missing_required_column(tmp_path):
    data = world_dir(tmp_path)
    pd.read_csv(data / "returns.csv", dtype=str).drop(columns=["refund_amount"]).to_csv(data / "returns.csv",
                                                                                         index=False)
    res, _, _ = validate(data, tmp_path)
    refused(res, "returns.csv", "column 'refund_amount'", "missing", "Add the column or rename")


def test_semicolon_separated_export_gets_a_hint(tmp_path):
    data = world_dir(tmp_path)
    pd.read_csv(data / "orders.csv", dtype=str).to_csv(data / "orders.csv", index=False, sep=";")
    res, _, _ = validate(data, tmp_path)
    refused(res, "orders.csv", "separated by ';'", "comma-separated")


def test_repeated_header_column_is_refused(tmp_path):
    data = world_dir(tmp_path)
    lines = (data / "orders.csv").read_text().splitlines()
    lines[0] = lines[0].replace("category", "quantity")  # two `quantity` columns: which one counts?
    (data / "orders.csv").write_text("\n".join(lines) + "\n")
    res, _, _ = validate(data, tmp_path)
    refused(res, "orders.csv", "column 'quantity'", "more than once")


def test_one_table_in_two_files_is_refused(tmp_path):
    data = world_dir(tmp_path)
    more = pd.read_csv(data / "orders.csv", dtype=str).assign(order_id=lambda f: "x" + f["order_id"])
    more.to_parquet(data / "orders.parquet")  # without the check one of the two files was silently ignored
    res, _, _ = validate(data, tmp_path)
    refused(res, "orders.parquet", "orders.csv", "Keep one")


def _excel(path: Path) -> None:
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 300)  # what an .xlsx saved under a .csv name starts with


def _headless(path: Path) -> None:
    path.write_text(path.read_text().split("\n", 1)[1])


def _open_quote(path: Path) -> None:
    path.write_text(path.read_text().replace("o2,", '"o2,', 1))


@pytest.mark.parametrize(("breaker", "needles"), [
    (_excel, ["an Excel workbook", "CSV UTF-8"]),
    (_headless, ["None of the table's columns is in the first line", "header row"]),
    (_open_quote, ["cannot be read", "EOF inside string", "export it again"]),
], ids=["excel-named-csv", "no-header-row", "unbalanced-quote"])
def test_files_that_are_not_the_csv_they_claim(tmp_path, breaker, needles):
    data = world_dir(tmp_path)
    breaker(data / "orders.csv")
    res, _, _ = validate(data, tmp_path)
    refused(res, "orders.csv", *needles)


# --- rows that are wrong or odd ------------------------------------------------------------------------------------


def test_duplicate_ids_within_a_file_and_across_part_files(tmp_path):
    world = base_world()
    world["returns"].append(dict(world["returns"][0]))  # r1 twice in returns.csv
    data = world_dir(tmp_path, world, fmt="parquet")
    orders = pd.read_parquet(data / "orders.parquet")
    (data / "orders.parquet").unlink()
    (data / "orders").mkdir()
    orders.to_parquet(data / "orders" / "day=1.parquet")
    orders.iloc[[0]].to_parquet(data / "orders" / "day=2.parquet")  # o1 line 1 again in another file
    res, summary, rejects = validate(data, tmp_path)
    assert res.exit_code == 0, res.output
    assert sorted(rejects["field"]) == ["order_id+line_no", "return_id"]
    assert set(rejects["rule"]) == {"must be unique (later duplicate rejected)"}
    assert summary.loc["orders", "accepted"] == 3 and summary.loc["returns", "accepted"] == 2
    assert_conserved(data, summary, rejects)


def test_mixed_time_zones_in_one_column_are_all_read_as_utc(tmp_path):
    world = base_world()
    world["tickets"].extend([dict(world["tickets"][1], ticket_id=f"t{i}") for i in range(3, 8)])
    stamps = ["2024-01-21T17:00:00+08:00", "2024-01-21T09:00:00Z", "2024-01-21 09:00:00", "2024-01-21T04:00:00-05:00",
              "2024-01-21T10:00:00+0100", "2024-01-21T09:00:00.000000Z", "21/01/2024 09:00"]
    for row, ts in zip(world["tickets"], stamps, strict=True):
        row.update(created_at=ts, resolved_at="")
    data = world_dir(tmp_path, world)
    res, summary, rejects = validate(data, tmp_path)
    assert res.exit_code == 0, res.output
    # every zone spelling is the same instant; a day-first local date is not ISO 8601 and is rejected, not guessed
    assert rejects[["row", "field", "rule"]].values.tolist() == [[7, "created_at", "must be a valid timestamp"]]
    ds = load_dataset(data)
    assert ds.tickets["created_at"].eq(pd.Timestamp("2024-01-21 09:00", tz="UTC")).all()
    assert len(ds.tickets) == 6
    assert_conserved(data, summary, rejects)


def test_dates_in_the_future_relative_to_now(tmp_path):
    now = pd.Timestamp.now(tz="UTC")
    world = base_world()
    world["returns"][1]["requested_at"] = (now + pd.Timedelta(hours=12)).isoformat()  # clock skew: tolerated
    world["tickets"][1]["created_at"] = (now + pd.Timedelta(days=3)).isoformat()
    world["review_decisions"][0]["decided_at"] = (now + pd.Timedelta(days=400)).isoformat()
    world["orders"][0]["promised_delivery_at"] = (now + pd.Timedelta(days=30)).isoformat()  # a promise may be ahead
    data = world_dir(tmp_path, world)
    res, summary, rejects = validate(data, tmp_path)
    assert res.exit_code == 0, res.output
    got = rejects[["table", "field", "rule"]].values.tolist()
    assert got == [["tickets", "created_at", "must not lie in the future"],
                   ["review_decisions", "decided_at", "must not lie in the future"]]
    assert_conserved(data, summary, rejects)


def test_wrong_types_nan_and_inf_in_numbers(tmp_path):
    world = base_world()
    world["orders"][0]["amount"] = "NaN"
    world["orders"][1]["amount"] = "inf"
    world["orders"][2]["quantity"] = "1e400"  # overflows to inf
    world["orders"][2]["line_no"] = "99999999999999999999999"  # beyond int64 (once crashed the int cast)
    world["returns"][1]["refund_amount"] = "-Infinity"
    world["tickets"][0]["amount"] = "twelve"
    data = world_dir(tmp_path, world)
    res, summary, rejects = validate(data, tmp_path)
    assert res.exit_code == 0, res.output
    by = rejects.set_index(["table", "row"])
    assert by.loc[("orders", 1), "rule"] == by.loc[("orders", 2), "rule"] == "must be a valid float"
    assert by.loc[("orders", 3), "rule"] == "must be a valid int"
    assert by.loc[("returns", 2), "field"] == "refund_amount" and by.loc[("tickets", 1), "field"] == "amount"
    # every order is gone, so r1 (of order o1) is rejected too; nothing crashes on an empty orders table
    assert by.loc[("returns", 1), "rule"] == "must refer to an accepted order in orders"
    assert_conserved(data, summary, rejects)


def test_nan_and_inf_in_typed_parquet(tmp_path):
    data = world_dir(tmp_path, fmt="parquet")
    orders = pd.read_parquet(data / "orders.parquet")
    orders["amount"] = [float("nan"), float("inf"), 3.0]
    orders["quantity"] = ["2", "two", "1"]  # text in a numeric column of a Parquet file
    orders.to_parquet(data / "orders.parquet")
    tickets = pd.read_parquet(data / "tickets.parquet")
    tickets["amount"] = [float("nan"), float("-inf")]  # optional: NaN is missing, -inf is not a number
    tickets.to_parquet(data / "tickets.parquet")
    res, summary, rejects = validate(data, tmp_path)
    assert res.exit_code == 0, res.output
    got = rejects[["table", "row", "field", "rule"]].values.tolist()
    assert got == [["orders", 1, "amount", "required (must not be empty)"],
                   ["orders", 2, "quantity", "must be a valid int"],
                   ["returns", 1, "order_id", "must refer to an accepted order in orders"],  # o1's lines are gone
                   ["tickets", 2, "amount", "must be a valid float"]]
    assert_conserved(data, summary, rejects)


def test_negative_quantities_and_amounts(tmp_path):
    world = base_world()
    world["orders"][2]["quantity"] = "-3"
    world["returns"][0]["quantity"] = "-1"
    world["returns"][1]["refund_amount"] = "-0.01"
    data = world_dir(tmp_path, world)
    res, summary, rejects = validate(data, tmp_path)
    assert res.exit_code == 0, res.output
    assert rejects[["table", "field", "rule"]].values.tolist() == [
        ["orders", "quantity", "must be > 0"], ["returns", "quantity", "must be > 0"],
        ["returns", "refund_amount", "must be >= 0"]]
    assert_conserved(data, summary, rejects)


def test_extra_unknown_columns_are_kept_and_rows_accepted(tmp_path):
    world = base_world()
    for i, row in enumerate(world["orders"]):
        row.update(warehouse=f"W{i}", **{"Unnamed: 0": str(i), "": "blank header"})
    data = world_dir(tmp_path, world)
    res, summary, rejects = validate(data, tmp_path)
    assert res.exit_code == 0 and rejects.empty, res.output
    assert load_dataset(data).orders["warehouse"].tolist() == ["W0", "W1", "W2"]
    assert_conserved(data, summary, rejects)


@pytest.mark.parametrize("variant", ["bom", "crlf", "bom+crlf+blank lines", "gzip+bom+crlf"])
def test_harmless_export_quirks_lose_no_row(tmp_path, variant):
    world = base_world()
    world["tickets"][0]["text"] = "line one\nline two, with a comma and \"quotes\""
    data = world_dir(tmp_path, world)
    for path in sorted(data.glob("*.csv")):
        raw = path.read_bytes()
        if "crlf" in variant:
            raw = raw.replace(b"\n", b"\r\n")
        if "blank" in variant:
            raw = raw + b"\r\n\r\n"
        if "bom" in variant:
            raw = b"\xef\xbb\xbf" + raw
        if "gzip" in variant:
            path.unlink()
            path = path.with_name(path.name + ".gz")
            raw = gzip.compress(raw)
        path.write_bytes(raw)
    res, summary, rejects = validate(data, tmp_path)
    assert res.exit_code == 0, res.output
    assert rejects.empty and (summary["rejected"] == 0).all()
    ds = load_dataset(data)
    # a CRLF export turns the newline inside the quoted text into CRLF too: it is the text, kept as it is
    assert ds.tickets.loc[0, "text"].replace("\r\n", "\n") == "line one\nline two, with a comma and \"quotes\""
    assert ds.orders["order_id"].tolist() == ["o1", "o1", "o2"]  # the BOM is not part of the first header
    assert_conserved(data, summary, rejects)


def test_nul_bytes_and_non_ascii_text_are_plain_text(tmp_path):
    world = base_world()
    world["tickets"][0]["text"] = "退货 \x00 Größe passt nicht 🙁"
    world["account_links"][0]["account_id"] = "账户-١٢٣"
    data = world_dir(tmp_path, world)
    res, summary, rejects = validate(data, tmp_path)
    assert res.exit_code == 0 and rejects.empty, res.output
    assert_conserved(data, summary, rejects)


# --- a 10 MB text field ---------------------------------------------------------------------------------------------

TEN_MB = 10 * 1024 * 1024


def _run_validate_subprocess(data: Path, out: Path) -> tuple[subprocess.CompletedProcess, float]:
    """`aftersales validate` in a child process; returns the result and the child's peak RSS in MB."""
    code = ("import resource, sys; from training.cli import main\n"
            "try:\n    main(['validate', '--data', sys.argv[1], '--rejects-dir', sys.argv[2]])\n"
            "except SystemExit as e:\n"
            "    print('MAXRSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr)\n"
            "    raise\n")
    res = subprocess.run([sys.executable, "-c", code, str(data), str(out)], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[1], env={**os.environ, "PYTHONPATH": "."})
    rss = float(res.stderr.rsplit("MAXRSS_MB", 1)[1].split()[0])
    return res, rss


def test_a_10_mb_text_field_is_truncated_and_a_10_mb_id_rejected_without_blowing_memory(tmp_path):
    data = world_dir(tmp_path)
    small, small_rss = _run_validate_subprocess(data, tmp_path / "small")
    assert small.returncode == 0, small.stderr[-2000:]

    def swell(name: str, old: str, new: str) -> None:
        path = data / name
        path.write_text(path.read_text(encoding="utf-8").replace(old, new, 1), encoding="utf-8")

    swell("tickets.csv", "item too small", "Ich möchte zurückgeben. " * (TEN_MB // 24))  # a 10 MB first message
    swell("review_decisions.csv", "kim,", "kim," + "n" * TEN_MB)  # a 10 MB note
    swell("orders.csv", "2024-02-01T08:00:00Z,,", "2024-02-01T08:00:00Z," + "c" * TEN_MB + ",")  # a 10 MB category
    assert (data / "tickets.csv").stat().st_size > TEN_MB
    res, rss = _run_validate_subprocess(data, tmp_path / "out")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    summary = pd.read_csv(tmp_path / "out" / "summary.csv", keep_default_na=False).set_index("table")
    rejects = pd.read_csv(tmp_path / "out" / "rejects.csv")
    assert summary.loc["tickets", "truncated"] == "text: 1" and summary.loc["tickets", "rejected"] == 0
    assert summary.loc["review_decisions", "truncated"] == "note: 1"
    assert rejects[["table", "row", "field", "rule"]].values.tolist() == [
        ["orders", 3, "category", f"must be at most {MAX_VALUE_CHARS} characters"]]
    assert (tmp_path / "out" / "rejects.csv").stat().st_size < 10_000  # the 10 MB value is not copied out
    assert_conserved(data, summary, rejects)
    tickets = load_table("tickets", data / "tickets.csv")[0]
    assert len(tickets.loc[0, "text"]) == MAX_TEXT_CHARS and tickets.loc[0, "text"].startswith("Ich möchte")
    # 30 MB of input cells: the extra peak memory stays within a small multiple of the input, not hundreds of MB
    print(f"peak RSS: {small_rss:.0f} MB small world, {rss:.0f} MB with three 10 MB cells")
    assert rss - small_rss < 400, (small_rss, rss)


# --- the loader itself, for callers other than the CLI ---------------------------------------------------------


def test_loader_errors_are_contract_errors_with_file_and_column(tmp_path):
    data = world_dir(tmp_path)
    lines = (data / "tickets.csv").read_text().splitlines()
    lines[0] = lines[0].replace("channel", "channel ").replace("case_type", "channel")
    (data / "tickets.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ContractError) as err:
        load_dataset(data)
    assert err.value.path.endswith("tickets.csv") and err.value.column == "channel"


def test_only_the_required_columns(tmp_path):
    """Every optional column absent (a minimal export): no crash, every row accepted, defaults filled."""
    world = base_world()
    for table, rows in world.items():
        keep = [c.name for c in TABLES[table].columns if c.required]
        world[table] = [{k: v for k, v in row.items() if k in keep} for row in rows]
    del world["orders"][1]  # o1's second line: without line_no it would be a duplicate of the first (and rejected)
    data = world_dir(tmp_path, world)
    res, summary, rejects = validate(data, tmp_path)
    assert res.exit_code == 0 and rejects.empty, res.output + rejects.to_string()
    ds = load_dataset(data)
    assert ds.orders["line_no"].tolist() == [1, 1] and ds.returns["reason"].eq("other").all()
    assert_conserved(data, summary, rejects)
