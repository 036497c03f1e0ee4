"""The input contract (shared/CONTRACT.md): one test per rule, each failing if the rule stops being enforced.

Every test builds a tiny valid data folder, breaks one thing, and checks that exactly that row is rejected (with the
table, row, field and rule) or that the file is refused with a message naming it.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from features.contract import (
    REJECT_COLUMNS,
    TABLES,
    ContractError,
    load_dataset,
    normalise_ids,
    read_raw,
)

NOW = pd.Timestamp("2024-06-01", tz="UTC")
Rows = list[dict[str, object]]


def base_world() -> dict[str, Rows]:
    """A small valid world: every table present, every row acceptable."""
    return {
        "orders": [
            {"order_id": "o1", "line_no": "1", "account_id": "a1", "merchant_id": "m1",
             "ordered_at": "2024-01-10T10:00:00Z", "category": "apparel", "quantity": "2", "amount": "40.0",
             "region": "GB", "promised_delivery_at": "2024-01-13T00:00:00Z",
             "delivered_at": "2024-01-12T09:00:00Z"},
            {"order_id": "o1", "line_no": "2", "account_id": "a1", "merchant_id": "m1",
             "ordered_at": "2024-01-10T10:00:00Z", "category": "home", "quantity": "1", "amount": "0",
             "region": "GB", "promised_delivery_at": "", "delivered_at": ""},
            {"order_id": "o2", "line_no": "1", "account_id": "", "merchant_id": "m2",
             "ordered_at": "2024-02-01T08:00:00Z", "category": "", "quantity": "1", "amount": "15.5",
             "region": "", "promised_delivery_at": "", "delivered_at": ""},
        ],
        "returns": [
            {"return_id": "r1", "order_id": "o1", "account_id": "a1", "merchant_id": "m1",
             "requested_at": "2024-01-20T12:00:00Z", "reason": "size_fit", "quantity": "1",
             "refund_amount": "20.0", "item_returned": "true"},
            {"return_id": "r2", "order_id": "", "account_id": "", "merchant_id": "m2",
             "requested_at": "2024-02-05T12:00:00Z", "reason": "defective", "quantity": "1",
             "refund_amount": "0", "item_returned": ""},
        ],
        "tickets": [
            {"ticket_id": "t1", "created_at": "2024-01-21T09:00:00Z", "account_id": "a1", "merchant_id": "m1",
             "order_id": "o1", "case_type": "complaint", "channel": "chat", "amount": "20.0",
             "text": "item too small", "escalated": "false", "resolved_at": "2024-01-22T09:00:00Z"},
            {"ticket_id": "t2", "created_at": "2024-02-06T09:00:00Z", "account_id": "", "merchant_id": "",
             "order_id": "", "case_type": "inquiry", "channel": "email", "amount": "", "text": "",
             "escalated": "", "resolved_at": ""},
        ],
        "account_links": [
            {"account_id": "a1", "link_type": "device", "link_value": "h1"},
            {"account_id": "a2", "link_type": "payment", "link_value": "h2"},
        ],
        "review_decisions": [
            {"account_id": "a1", "decision": "cleared", "decided_at": "2024-03-01T10:00:00Z", "reviewer": "kim",
             "note": ""},
        ],
    }


def write_world(folder: Path, world: dict[str, Rows], fmt: str = "csv") -> Path:
    """Write each table as CSV (strings, as exports are) or Parquet; return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in world.items():
        frame = pd.DataFrame(rows, columns=list(rows[0]) if rows else TABLES[name].names)
        if fmt == "csv":
            frame.to_csv(folder / f"{name}.csv", index=False)
        elif fmt == "csv.gz":
            frame.to_csv(folder / f"{name}.csv.gz", index=False)
        else:
            frame.replace("", None).to_parquet(folder / f"{name}.parquet", index=False)
    return folder


def load_with(tmp_path: Path, table: str, row: int, **changes: object):
    """Load the base world with one row's fields changed; return the dataset."""
    world = base_world()
    world[table][row].update({k: v for k, v in changes.items()})
    return load_dataset(write_world(tmp_path / "data", world), now=NOW)


def only_reject(ds, table: str) -> pd.Series:
    """The single rejected row (asserting there is exactly one, in `table`)."""
    assert len(ds.rejects) == 1, ds.rejects.to_string()
    rej = ds.rejects.iloc[0]
    assert rej["table"] == table
    return rej


def assert_balanced(ds) -> None:
    """Rows in = accepted + rejected for every table, and the rejects frame agrees with the reports."""
    for name, report in ds.reports.items():
        assert report.rows_in == report.accepted + report.rejected, name
        assert report.accepted == len(ds.tables[name]), name
        assert report.rejected == int((ds.rejects["table"] == name).sum()), name
        assert sum(report.by_rule.values()) == report.rejected, name


# --- a valid world --------------------------------------------------------------------------------------------


def test_valid_world_loads_every_row_with_contract_types(tmp_path):
    ds = load_dataset(write_world(tmp_path, base_world()), now=NOW)
    assert ds.n_rejected == 0 and ds.rejects.empty
    assert [len(ds.tables[t]) for t in TABLES] == [3, 2, 2, 2, 1]
    assert str(ds.orders["ordered_at"].dtype) == "datetime64[us, UTC]"
    assert ds.orders["order_id"].dtype == "string" and ds.returns["account_id"].dtype == "string"
    assert ds.orders["quantity"].dtype == "int64" and ds.orders["amount"].dtype == "float64"
    assert ds.orders["account_id"].isna().sum() == 1  # guest checkout stays null
    assert ds.returns["item_returned"].tolist()[0] is True
    assert_balanced(ds)


def test_optional_tables_absent_come_back_empty_with_columns(tmp_path):
    world = {k: v for k, v in base_world().items() if k in ("orders", "returns")}
    ds = load_dataset(write_world(tmp_path, world), now=NOW)
    for name in ("tickets", "account_links", "review_decisions"):
        assert ds.tables[name].empty and list(ds.tables[name].columns) == TABLES[name].names
        assert not ds.has(name)
    assert ds.has("orders")


@pytest.mark.parametrize("table", ["orders", "returns"])
def test_missing_required_table_stops_with_message(tmp_path, table):
    world = base_world()
    del world[table]
    with pytest.raises(ContractError, match=f"required table '{table}' not found"):
        load_dataset(write_world(tmp_path, world), now=NOW)


def test_missing_data_folder_says_how_to_make_one(tmp_path):
    with pytest.raises(ContractError, match="aftersales generate"):
        load_dataset(tmp_path / "nope")


# --- required columns and values -----------------------------------------------------------------------------

REQUIRED = [(t, c.name) for t, spec in TABLES.items() for c in spec.columns if c.required]


@pytest.mark.parametrize(("table", "column"), REQUIRED)
def test_missing_required_column_names_file_and_column(tmp_path, table, column):
    world = base_world()
    for row in world[table]:
        del row[column]
    with pytest.raises(ContractError) as err:
        load_dataset(write_world(tmp_path, world), now=NOW)
    assert err.value.column == column
    assert f"{table}.csv" in str(err.value) and column in str(err.value)


@pytest.mark.parametrize(("table", "column"), REQUIRED)
def test_required_value_must_not_be_empty(tmp_path, table, column):
    ds = load_with(tmp_path, table, 0, **{column: "  "})
    rej = only_reject(ds, table)
    assert (rej["field"], rej["rule"], rej["row"]) == (column, "required (must not be empty)", 1)
    assert_balanced(ds)


def test_line_no_is_optional_and_defaults_to_1(tmp_path):
    world = base_world()
    world["orders"] = [world["orders"][0], world["orders"][2]]  # one line per order: the default key stays unique
    for row in world["orders"]:
        del row["line_no"]
    ds = load_dataset(write_world(tmp_path, world), now=NOW)
    assert ds.n_rejected == 0 and ds.orders["line_no"].tolist() == [1, 1]


# --- types -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "column", "value", "kind"),
    [
        ("orders", "quantity", "two", "int"),
        ("orders", "quantity", "1.5", "int"),
        ("orders", "line_no", "x", "int"),
        ("orders", "amount", "12,50 EUR", "float"),
        ("orders", "amount", "inf", "float"),
        ("orders", "ordered_at", "yesterday", "timestamp"),
        ("orders", "delivered_at", "2024-13-45", "timestamp"),
        ("orders", "promised_delivery_at", "soon", "timestamp"),
        ("returns", "requested_at", "31/01/2024", "timestamp"),
        ("returns", "quantity", "one", "int"),
        ("returns", "refund_amount", "free", "float"),
        ("returns", "item_returned", "maybe", "bool"),
        ("tickets", "created_at", "tbd", "timestamp"),
        ("tickets", "amount", "n/a", "float"),
        ("tickets", "escalated", "perhaps", "bool"),
        ("tickets", "resolved_at", "later", "timestamp"),
        ("review_decisions", "decided_at", "someday", "timestamp"),
    ],
)
def test_bad_type_is_rejected(tmp_path, table, column, value, kind):
    ds = load_with(tmp_path, table, 0, **{column: value})
    rej = only_reject(ds, table)
    assert (rej["field"], rej["rule"], rej["value"]) == (column, f"must be a valid {kind}", value)
    assert_balanced(ds)


@pytest.mark.parametrize(("text", "expected"), [("TRUE", True), ("yes", True), ("0", False), ("F", False)])
def test_bool_spellings_are_understood(tmp_path, text, expected):
    ds = load_with(tmp_path, "returns", 0, item_returned=text)
    assert ds.n_rejected == 0 and ds.returns["item_returned"].tolist()[0] is expected


# --- bounds ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "column", "bad", "edge", "rule"),
    [
        ("orders", "quantity", "0", "1", "must be > 0"),
        ("orders", "quantity", "-3", "1", "must be > 0"),
        ("orders", "amount", "-0.01", "0", "must be >= 0"),
        ("orders", "line_no", "-1", "7", "must be >= 0"),
        ("returns", "quantity", "0", "1", "must be > 0"),
        ("returns", "refund_amount", "-5", "0", "must be >= 0"),
        ("tickets", "amount", "-1", "0", "must be >= 0"),
    ],
)
def test_bounds(tmp_path, table, column, bad, edge, rule):
    ds = load_with(tmp_path / "bad", table, 0, **{column: bad})
    rej = only_reject(ds, table)
    assert (rej["field"], rej["rule"]) == (column, rule)
    assert_balanced(ds)
    assert load_with(tmp_path / "edge", table, 0, **{column: edge}).n_rejected == 0  # the bound itself is fine


# --- allowed values --------------------------------------------------------------------------------------------


def test_unknown_reason_maps_to_other_and_is_counted(tmp_path):
    ds = load_with(tmp_path, "returns", 0, reason="Broken screen")
    assert ds.n_rejected == 0
    assert ds.returns["reason"].tolist() == ["other", "defective"]
    assert ds.reports["returns"].remapped == {"reason": 1}
    assert "reason: 1" in ds.summary().set_index("table").loc["returns", "remapped"]


def test_reason_case_and_blanks_are_normalised_not_remapped(tmp_path):
    world = base_world()
    world["returns"][0]["reason"] = " Size_Fit "
    world["returns"][1]["reason"] = ""
    ds = load_dataset(write_world(tmp_path, world), now=NOW)
    assert ds.returns["reason"].tolist() == ["size_fit", "other"]  # empty reason is "other" by default
    assert ds.reports["returns"].remapped == {}


@pytest.mark.parametrize(
    ("table", "column", "value"),
    [("tickets", "case_type", "escalation"), ("tickets", "channel", "fax"),
     ("account_links", "link_type", "ip"), ("review_decisions", "decision", "maybe")],
)
def test_unknown_code_is_rejected(tmp_path, table, column, value):
    ds = load_with(tmp_path, table, 0, **{column: value})
    rej = only_reject(ds, table)
    assert rej["field"] == column and rej["rule"].startswith("must be one of") and rej["value"] == value
    assert_balanced(ds)


def test_codes_are_case_insensitive(tmp_path):
    ds = load_with(tmp_path, "tickets", 0, channel=" Chat", case_type="COMPLAINT")
    assert ds.n_rejected == 0 and ds.tickets["channel"].iloc[0] == "chat"


# --- uniqueness ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("table", "key"), [("orders", "order_id+line_no"), ("returns", "return_id"),
                                            ("tickets", "ticket_id")])
def test_duplicate_key_rejects_the_later_row(tmp_path, table, key):
    world = base_world()
    world[table].append(dict(world[table][0]))
    ds = load_dataset(write_world(tmp_path, world), now=NOW)
    rej = only_reject(ds, table)
    assert (rej["field"], rej["row"]) == (key, len(world[table]))
    assert rej["rule"].startswith("must be unique")
    assert_balanced(ds)


def test_same_order_other_line_is_not_a_duplicate(tmp_path):
    ds = load_with(tmp_path, "orders", 1, line_no="3")
    assert ds.n_rejected == 0


def test_invalid_first_copy_does_not_take_the_key(tmp_path):
    """The first row of a duplicate pair is invalid: the second, valid, copy must be kept."""
    world = base_world()
    good = dict(world["returns"][1])
    world["returns"][1]["quantity"] = "0"
    world["returns"].append(good)
    ds = load_dataset(write_world(tmp_path, world), now=NOW)
    rej = only_reject(ds, "returns")
    assert (rej["row"], rej["field"]) == (2, "quantity")
    assert ds.returns["return_id"].tolist() == ["r1", "r2"]


# --- ordering within a row -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("table", "later", "earlier_value"),
                         [("orders", "delivered_at", "2024-01-10T09:59:59Z"),
                          ("tickets", "resolved_at", "2024-01-21T08:00:00Z")])
def test_later_time_must_not_precede_earlier(tmp_path, table, later, earlier_value):
    ds = load_with(tmp_path, table, 0, **{later: earlier_value})
    rej = only_reject(ds, table)
    assert rej["field"] == later and rej["rule"].startswith("must be >=")
    assert_balanced(ds)


def test_delivery_at_the_order_time_is_fine(tmp_path):
    assert load_with(tmp_path, "orders", 0, delivered_at="2024-01-10T10:00:00Z").n_rejected == 0


# --- cross-table -----------------------------------------------------------------------------------------------


def test_return_order_must_exist(tmp_path):
    ds = load_with(tmp_path, "returns", 0, order_id="o404")
    rej = only_reject(ds, "returns")
    assert (rej["field"], rej["rule"]) == ("order_id", "must refer to an accepted order in orders")
    assert_balanced(ds)


def test_return_of_a_rejected_order_is_rejected(tmp_path):
    world = base_world()
    world["orders"][2]["quantity"] = "0"  # o2's only line is rejected ...
    world["returns"][1]["order_id"] = "o2"  # ... so a return that names o2 has no order to refer to
    ds = load_dataset(write_world(tmp_path, world), now=NOW)
    assert sorted(ds.rejects["table"]) == ["orders", "returns"]
    assert_balanced(ds)


def test_return_cannot_precede_its_order(tmp_path):
    ds = load_with(tmp_path, "returns", 0, requested_at="2024-01-10T09:00:00Z")
    rej = only_reject(ds, "returns")
    assert (rej["field"], rej["rule"]) == ("requested_at", "must be >= the order's ordered_at")
    assert_balanced(ds)


def test_return_without_order_needs_no_order(tmp_path):
    ds = load_with(tmp_path, "returns", 1, requested_at="2020-01-01T00:00:00Z")
    assert ds.n_rejected == 0


# --- future events ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("table", "column"), [("orders", "ordered_at"), ("orders", "delivered_at"),
                                               ("returns", "requested_at"), ("tickets", "created_at"),
                                               ("tickets", "resolved_at"), ("review_decisions", "decided_at")])
def test_event_in_the_future_is_rejected(tmp_path, table, column):
    ds = load_with(tmp_path, table, 0, **{column: "2024-06-03T00:00:00Z"})  # NOW + 2 days
    rej = only_reject(ds, table)
    assert (rej["field"], rej["rule"]) == (column, "must not lie in the future")


def test_promised_delivery_may_lie_in_the_future(tmp_path):
    assert load_with(tmp_path, "orders", 0, promised_delivery_at="2025-01-01T00:00:00Z").n_rejected == 0


def test_clock_skew_within_a_day_is_tolerated(tmp_path):
    assert load_with(tmp_path, "returns", 1, requested_at="2024-06-01T20:00:00Z").n_rejected == 0


# --- IDs and time zones ----------------------------------------------------------------------------------------


def test_float_ids_from_exports_become_integers(tmp_path):
    world = base_world()
    world["orders"][2]["account_id"] = "13085.0"
    world["returns"][1]["account_id"] = "13085"
    world["account_links"][1]["account_id"] = " 13085.00 "
    ds = load_dataset(write_world(tmp_path, world), now=NOW)
    assert ds.orders["account_id"].iloc[2] == "13085"
    assert ds.account_links["account_id"].iloc[1] == "13085"
    assert ds.returns["account_id"].iloc[1] == ds.orders["account_id"].iloc[2]


def test_float_id_column_from_parquet(tmp_path):
    write_world(tmp_path, base_world(), fmt="parquet")
    orders = pd.read_parquet(tmp_path / "orders.parquet")
    orders["account_id"] = [13085.0, 13085.0, None]  # what a float export of a numeric ID looks like
    orders.to_parquet(tmp_path / "orders.parquet", index=False)
    ds = load_dataset(tmp_path, now=NOW)
    assert ds.orders["account_id"].tolist()[:2] == ["13085", "13085"] and pd.isna(ds.orders["account_id"].iloc[2])
    assert ds.orders["account_id"].dtype == "string"
    ids = normalise_ids(pd.Series([13085.0, None, 1.5]))
    assert ids.tolist() == ["13085", pd.NA, "1.5"]  # a non-whole float keeps its text instead of crashing


def test_free_text_is_not_treated_as_an_id(tmp_path):
    ds = load_with(tmp_path, "tickets", 0, text="2.0")
    assert ds.tickets["text"].iloc[0] == "2.0"


def test_naive_timestamps_are_utc_and_offsets_are_normalised(tmp_path):
    world = base_world()
    world["orders"][0]["ordered_at"] = "2024-01-10 10:00:00"  # naive: read as UTC
    world["orders"][0]["delivered_at"] = "2024-01-12T17:00:00+08:00"  # 09:00 UTC
    world["orders"][1]["ordered_at"] = "2024-01-10T05:00:00-05:00"  # 10:00 UTC
    ds = load_dataset(write_world(tmp_path, world), now=NOW)
    assert ds.n_rejected == 0
    o = ds.orders
    assert o["ordered_at"].iloc[0] == o["ordered_at"].iloc[1] == pd.Timestamp("2024-01-10 10:00", tz="UTC")
    assert o["delivered_at"].iloc[0] == pd.Timestamp("2024-01-12 09:00", tz="UTC")
    assert str(o["ordered_at"].dtype) == "datetime64[us, UTC]"


def test_parquet_naive_and_zoned_datetimes_become_utc(tmp_path):
    world = base_world()
    write_world(tmp_path, world, fmt="parquet")
    orders = pd.read_parquet(tmp_path / "orders.parquet")
    orders["ordered_at"] = pd.to_datetime(["2024-01-10 10:00"] * 2 + ["2024-02-01 08:00"])  # naive
    orders["delivered_at"] = pd.to_datetime(["2024-01-12 17:00", None, None]).tz_localize("Asia/Shanghai")
    orders.to_parquet(tmp_path / "orders.parquet", index=False)
    ds = load_dataset(tmp_path, now=NOW)
    assert ds.n_rejected == 0
    assert ds.orders["ordered_at"].iloc[0] == pd.Timestamp("2024-01-10 10:00", tz="UTC")
    assert ds.orders["delivered_at"].iloc[0] == pd.Timestamp("2024-01-12 09:00", tz="UTC")


# --- file formats ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "parquet", "parquet-folder"])
def test_every_format_loads_the_same(tmp_path, fmt):
    world = base_world()
    world["returns"][0]["quantity"] = "0"  # one reject, so the rejects path is exercised in every format
    reference = load_dataset(write_world(tmp_path / "ref", world), now=NOW)
    folder = tmp_path / fmt
    if fmt == "parquet-folder":
        write_world(folder, world, fmt="parquet")
        orders = pd.read_parquet(folder / "orders.parquet")
        (folder / "orders.parquet").unlink()
        (folder / "orders").mkdir()
        orders.iloc[:2].to_parquet(folder / "orders" / "part-0.parquet", index=False)
        orders.iloc[2:].to_parquet(folder / "orders" / "part-1.parquet", index=False)
    else:
        write_world(folder, world, fmt=fmt)
    ds = load_dataset(folder, now=NOW)
    for name in TABLES:
        pd.testing.assert_frame_equal(ds.tables[name], reference.tables[name], check_dtype=False)
    assert ds.rejects[["table", "row", "field", "rule"]].equals(reference.rejects[["table", "row", "field", "rule"]])
    assert_balanced(ds)


def test_truncated_parquet_names_the_file(tmp_path):
    write_world(tmp_path, base_world(), fmt="parquet")
    data = (tmp_path / "orders.parquet").read_bytes()
    (tmp_path / "orders.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(ContractError, match=r"orders\.parquet: cannot be read"):
        load_dataset(tmp_path, now=NOW)


def test_non_utf8_csv_names_the_file(tmp_path):
    write_world(tmp_path, base_world())
    text = (tmp_path / "returns.csv").read_text().replace("size_fit", "taille d\u00e9fectueuse")
    (tmp_path / "returns.csv").write_bytes(text.encode("latin-1"))
    with pytest.raises(ContractError, match=r"returns\.csv: cannot be read: not UTF-8"):
        load_dataset(tmp_path, now=NOW)


def test_empty_file_names_the_file(tmp_path):
    write_world(tmp_path, base_world())
    (tmp_path / "tickets.csv").write_text("")
    with pytest.raises(ContractError, match=r"tickets\.csv: cannot be read: the file is empty"):
        load_dataset(tmp_path, now=NOW)


def test_corrupt_gzip_names_the_file(tmp_path):
    write_world(tmp_path, base_world())
    (tmp_path / "orders.csv").unlink()
    (tmp_path / "orders.csv.gz").write_bytes(gzip.compress(b"order_id,merchant_id\n")[:15])
    with pytest.raises(ContractError, match=r"orders\.csv\.gz: cannot be read"):
        load_dataset(tmp_path, now=NOW)


def test_excel_bom_padded_header_and_multiline_text(tmp_path):
    write_world(tmp_path, base_world())
    text = (tmp_path / "tickets.csv").read_text().replace("item too small", '"item too\nsmall"')
    text = text.replace("ticket_id,", " ticket_id ,", 1)
    (tmp_path / "tickets.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # Excel's UTF-8 BOM
    ds = load_dataset(tmp_path, now=NOW)
    assert ds.n_rejected == 0 and ds.tickets["text"].iloc[0] == "item too\nsmall"


def test_ragged_csv_names_the_file(tmp_path):
    write_world(tmp_path, base_world())
    with (tmp_path / "orders.csv").open("a") as f:
        f.write("o9,1,a1,m1,2024-01-10,x,1,1,GB,,,surplus,fields\n")
    with pytest.raises(ContractError, match=r"orders\.csv: cannot be read"):
        load_dataset(tmp_path, now=NOW)


def test_header_only_file_is_an_empty_table(tmp_path):
    world = base_world()
    world["tickets"] = []
    ds = load_dataset(write_world(tmp_path, world), now=NOW)
    assert ds.has("tickets") and ds.tickets.empty and ds.reports["tickets"].rows_in == 0


def test_read_raw_keeps_csv_values_as_text(tmp_path):
    write_world(tmp_path, base_world())
    raw = read_raw(tmp_path / "orders.csv")
    assert raw["quantity"].tolist() == ["2", "1", "1"] and raw["account_id"].isna().sum() == 1


# --- rejects, counts and extra columns -------------------------------------------------------------------------


def messy_world() -> dict[str, Rows]:
    """At least one rejected row in every table, some breaking several rules at once."""
    world = base_world()
    world["orders"].append({**world["orders"][0], "line_no": "9", "quantity": "0", "amount": "-1",
                            "ordered_at": "bad"})  # three rules broken, one reject
    world["returns"].append({**world["returns"][0], "return_id": "r3", "order_id": "o404", "refund_amount": "-2"})
    world["tickets"].append({**world["tickets"][0], "ticket_id": "t9", "channel": "fax"})
    world["account_links"].append({"account_id": "", "link_type": "ip", "link_value": ""})
    world["review_decisions"].append({**world["review_decisions"][0], "reviewer": ""})
    return world


def test_rows_in_equals_accepted_plus_rejected_for_every_table(tmp_path):
    ds = load_dataset(write_world(tmp_path, messy_world()), now=NOW)
    for name in TABLES:
        report = ds.reports[name]
        assert report.rejected == 1, name
        assert report.rows_in == report.accepted + report.rejected, name
        assert report.balanced
    assert ds.n_rejected == len(ds.rejects) == 5
    assert_balanced(ds)


def test_row_breaking_several_rules_is_rejected_and_counted_once(tmp_path):
    ds = load_dataset(write_world(tmp_path, messy_world()), now=NOW)
    order_rejects = ds.rejects[ds.rejects["table"] == "orders"]
    assert len(order_rejects) == 1
    assert order_rejects["field"].iloc[0] == "ordered_at"  # the first rule in contract column order
    assert ds.reports["orders"].by_rule == {"ordered_at: must be a valid timestamp": 1}
    summary = ds.summary().set_index("table")
    assert summary.loc["orders", "rejected"] == 1


def test_rejects_frame_and_file(tmp_path):
    ds = load_dataset(write_world(tmp_path / "data", messy_world()), now=NOW)
    assert list(ds.rejects.columns) == REJECT_COLUMNS == ["table", "row", "field", "rule", "value", "record"]
    tickets = ds.rejects.set_index("table").loc["tickets"]
    assert (tickets["row"], tickets["field"], tickets["value"]) == (3, "channel", "fax")
    record = json.loads(tickets["record"])
    assert record["ticket_id"] == "t9" and record["channel"] == "fax" and record["text"] == "item too small"
    links = json.loads(ds.rejects.set_index("table").loc["account_links", "record"])
    assert links["account_id"] is None  # missing values are JSON null, not the text "<NA>"
    path = ds.write_rejects(tmp_path / "out")
    assert path == tmp_path / "out" / "rejects.csv"
    written = pd.read_csv(path)
    assert list(written.columns) == REJECT_COLUMNS and len(written) == 5
    assert sorted(written["table"]) == sorted(TABLES)


def test_write_rejects_writes_a_header_when_nothing_was_rejected(tmp_path):
    ds = load_dataset(write_world(tmp_path / "data", base_world()), now=NOW)
    written = pd.read_csv(ds.write_rejects(tmp_path / "out"))
    assert written.empty and list(written.columns) == REJECT_COLUMNS


def test_extra_columns_are_kept(tmp_path):
    world = base_world()
    for row in world["orders"]:
        row["warehouse"] = "W1"
    ds = load_dataset(write_world(tmp_path, world), now=NOW)
    assert ds.orders["warehouse"].tolist() == ["W1"] * 3


def test_summary_and_time_span(tmp_path):
    ds = load_dataset(write_world(tmp_path, messy_world()), now=NOW)
    summary = ds.summary()
    assert list(summary["table"]) == list(TABLES)
    assert (summary["rows_in"] == summary["accepted"] + summary["rejected"]).all()
    assert ds.time_span() == (pd.Timestamp("2024-01-10", tz="UTC"), pd.Timestamp("2024-02-05", tz="UTC"))
