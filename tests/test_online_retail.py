"""The UCI Online Retail importer: counts on the real shared file, both layouts, CSV / XLSX / Parquet, rejects."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from features.contract import ContractError, load_dataset
from features.online_retail import (
    NON_PRODUCT,
    R_ADJUSTMENT,
    R_BAD_DEBT,
    R_DATE,
    R_DUPLICATE,
    R_FUTURE,
    R_PRICE_NONPOS,
    R_QUANTITY,
    R_SALE_NEGATIVE,
    R_UNKNOWN_INVOICE,
    R_ZERO_QTY,
    REJECT_FILE,
    categorise,
    detect_layout,
    import_online_retail,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_FILE = SHARED_DATA / "online_retail_ii_2009_2010.csv.gz"
NOW = pd.Timestamp("2024-01-01", tz="UTC")
II_HEADER = ["Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price", "Customer ID", "Country"]
OLD_HEADER = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]


def assert_balanced(summary: dict) -> None:
    """Every row read is an order line, a cancellation line or a reject."""
    assert summary["rows_in"] == summary["order_lines"] + summary["cancellation_lines"] + summary["rejected"]
    assert summary["rejected"] == sum(summary["rejected_by_reason"].values())


# --- the real file -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_import(tmp_path_factory):
    """One import of the shared Online Retail II file, plus the raw file for independent checks."""
    if not REAL_FILE.exists():
        pytest.skip(f"shared data file {REAL_FILE} is absent (it lives in ../shared/data beside the repository)")
    out = tmp_path_factory.mktemp("online_retail")
    summary = import_online_retail([REAL_FILE], out, progress=False)
    raw = pd.read_csv(REAL_FILE, dtype=str, keep_default_na=False, na_values=[""])
    return summary, out, raw


def test_real_file_counts(real_import):
    summary, _, _ = real_import
    assert summary["sources"][0]["layout"] == "Online Retail II"
    assert summary["rows_in"] == 525_461
    assert summary["cancellation_lines"] == 10_206
    assert summary["returns"] == 4_592
    assert summary["rows_without_customer_id"] == 107_927
    assert summary["rejected_by_reason"] == {R_PRICE_NONPOS: 3_687, R_ADJUSTMENT: 3}
    assert summary["order_lines"] == 525_461 - 10_206 - 3_690 == 511_565
    assert_balanced(summary)
    assert (summary["first_day"], summary["last_day"]) == ("2009-12-01", "2010-12-09")


def test_real_import_loads_with_zero_rejects(real_import):
    summary, out, raw = real_import
    ds = load_dataset(out)
    assert ds.n_rejected == 0
    assert len(ds.orders) == summary["order_lines"] and len(ds.returns) == summary["returns"]
    # Independent of the importer: sums over the cancellation lines of the raw file.
    cancel = raw[raw["Invoice"].str.startswith("C")]
    qty, price = pd.to_numeric(cancel["Quantity"]), pd.to_numeric(cancel["Price"])
    assert ds.returns["quantity"].sum() == qty.abs().sum()
    assert ds.returns["refund_amount"].sum() == pytest.approx((qty * price).abs().sum(), rel=1e-9)
    assert set(ds.returns["return_id"]) == set(cancel["Invoice"])
    assert ds.returns["order_id"].isna().all() and (ds.returns["reason"] == "other").all()
    assert ds.returns["item_returned"].isna().all()
    sales = raw[raw["Invoice"].str.fullmatch(r"\d+") & (pd.to_numeric(raw["Price"]) > 0)]
    assert ds.orders["amount"].sum() == pytest.approx(
        (pd.to_numeric(sales["Quantity"]) * pd.to_numeric(sales["Price"])).sum(), rel=1e-9)


def test_real_import_guests_and_ids(real_import):
    summary, out, raw = real_import
    ds = load_dataset(out)
    assert summary["guest_order_lines"] == int(ds.orders["account_id"].isna().sum()) == 103_901
    assert summary["guest_returns"] == int(ds.returns["account_id"].isna().sum()) == 220
    first = ds.orders.iloc[0]
    assert (first["order_id"], first["line_no"], first["account_id"]) == ("489434", 1, "13085")
    assert first["ordered_at"] == pd.Timestamp("2009-12-01 07:45", tz="UTC")
    assert not ds.orders["account_id"].str.contains(".", regex=False).any()
    assert (ds.orders["merchant_id"] == "online_retail").all()
    assert set(ds.orders["region"]) <= set(raw["Country"])


def test_real_import_keeps_repeated_stock_code_lines(real_import):
    _, out, raw = real_import
    ds = load_dataset(out)
    assert not ds.orders.duplicated(["order_id", "line_no"]).any()
    sales = raw[raw["Invoice"].str.fullmatch(r"\d+") & (pd.to_numeric(raw["Price"]) > 0)]
    repeated = sales[sales.duplicated(["Invoice", "StockCode"], keep=False)]
    assert len(repeated) > 1000  # the file really has such lines
    inv, code = repeated.iloc[0][["Invoice", "StockCode"]]
    assert (ds.orders["order_id"].eq(inv) & ds.orders["stock_code"].eq(code)).sum() == (
        (repeated["Invoice"] == inv) & (repeated["StockCode"] == code)).sum()


def test_real_import_rejects_file(real_import):
    summary, out, _ = real_import
    rejects = pd.read_csv(out / REJECT_FILE, dtype=str)
    assert len(rejects) == summary["rejected"] == 3_690
    assert list(rejects.columns[:3]) == ["source", "row", "reason"]
    adjustments = rejects[rejects["reason"] == R_ADJUSTMENT]
    assert adjustments["invoice"].str.startswith("A").all() and len(adjustments) == 3
    assert (pd.to_numeric(rejects.loc[rejects["reason"] == R_PRICE_NONPOS, "price"]) <= 0).all()


def test_real_import_categories_are_coarse_and_mostly_filled(real_import):
    summary, out, _ = real_import
    orders = pd.read_parquet(out / "orders.parquet")
    assert summary["product_lines_categorised"] > 0.85
    assert orders["category"].nunique() <= 12
    postage = orders[orders["stock_code"] == "POST"]
    assert len(postage) > 0 and (postage["category"] == NON_PRODUCT).all()


# --- small hand-made files -----------------------------------------------------------------------------------

OLD_ROWS = [
    # InvoiceNo, StockCode, Description, Quantity, InvoiceDate (m/d/Y, as the common CSV re-export), UnitPrice, ...
    ["536365", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", "6", "12/1/2010 8:26", "2.55", "17850.0", "United Kingdom"],
    ["536365", "71053", "WHITE METAL LANTERN", "6", "12/1/2010 8:26", "3.39", "17850.0", "United Kingdom"],
    ["536365", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", "2", "12/1/2010 8:26", "2.55", "17850.0",
     "United Kingdom"],  # same StockCode again in the invoice: a distinct line
    ["536366", "22633", "HAND WARMER UNION JACK £", "6", "12/13/2010 8:28", "1.85", "", "France"],  # guest
    ["C536379", "D", "Discount", "-1", "12/14/2010 9:41", "27.5", "14527.0", "United Kingdom"],
    ["C536379", "22556", "PLASTERS IN TIN CIRCUS PARADE", "-12", "12/14/2010 9:41", "1.65", "14527.0",
     "United Kingdom"],
    ["C536380", "22557", "PLASTERS IN TIN VINTAGE PAISLEY", "-2", "12/15/2010 10:00", "1.65", "", "Spain"],
    ["A563185", "B", "Adjust bad debt", "1", "8/12/2011 14:50", "11062.06", "", "United Kingdom"],
    ["563186", "B", "Adjust bad debt", "1", "8/12/2011 14:51", "-11062.06", "", "United Kingdom"],
    ["536414", "22139", "", "56", "12/1/2010 11:52", "0", "", "United Kingdom"],
    ["536415", "21275", "?", "-30", "12/1/2010 11:53", "0.85", "", "United Kingdom"],
    ["536416", "21276", "ZERO", "0", "12/1/2010 11:54", "0.85", "", "United Kingdom"],
    ["536417", "21277", "LATE", "1", "not a date", "0.85", "", "United Kingdom"],
    ["536418", "21278", "HALF", "1.5", "12/1/2010 11:56", "0.85", "", "United Kingdom"],
    ["X536419", "21279", "ODD", "1", "12/1/2010 11:57", "0.85", "", "United Kingdom"],
    ["536420", "21280", "FUTURE", "1", "12/1/2030 11:57", "0.85", "", "United Kingdom"],
]


@pytest.fixture()
def old_layout_import(tmp_path):
    path = tmp_path / "Online Retail.csv"
    # Windows-1252, as older re-exports of the workbook are (the pound sign is not valid UTF-8)
    pd.DataFrame(OLD_ROWS, columns=OLD_HEADER).to_csv(path, index=False, encoding="cp1252")
    summary = import_online_retail([path], tmp_path / "out", merchant_id="uk_gifts", progress=False, now=NOW)
    return summary, tmp_path / "out"


def test_old_layout_counts_and_reasons(old_layout_import):
    summary, _ = old_layout_import
    assert summary["sources"][0]["layout"] == "Online Retail"
    assert (summary["rows_in"], summary["order_lines"], summary["orders"]) == (16, 4, 2)
    assert (summary["cancellation_lines"], summary["returns"]) == (3, 2)
    assert summary["rejected_by_reason"] == {
        R_ADJUSTMENT: 1, R_BAD_DEBT: 1, R_PRICE_NONPOS: 1, R_SALE_NEGATIVE: 1, R_ZERO_QTY: 1, R_DATE: 1,
        R_QUANTITY: 1, R_UNKNOWN_INVOICE: 1, R_FUTURE: 1,
    }
    assert summary["rows_without_customer_id"] == 11
    assert_balanced(summary)


def test_old_layout_orders_and_returns(old_layout_import):
    _, out = old_layout_import
    ds = load_dataset(out, now=NOW)
    assert ds.n_rejected == 0
    o = ds.orders
    assert o["order_id"].tolist() == ["536365"] * 3 + ["536366"]
    assert o["line_no"].tolist() == [1, 2, 3, 1]
    assert o["account_id"].tolist()[:3] == ["17850"] * 3 and pd.isna(o["account_id"].iloc[3])
    assert o["amount"].tolist() == [15.3, 20.34, 5.1, 11.1]
    assert o["ordered_at"].iloc[3] == pd.Timestamp("2010-12-13 08:28", tz="UTC")  # month/day/year
    assert o["description"].iloc[3] == "HAND WARMER UNION JACK £"
    assert (o["merchant_id"] == "uk_gifts").all() and o["region"].iloc[3] == "France"
    r = ds.returns.set_index("return_id")
    assert r.loc["C536379", "quantity"] == 13 and r.loc["C536379", "refund_amount"] == pytest.approx(47.3)
    assert r.loc["C536379", "account_id"] == "14527" and pd.isna(r.loc["C536380", "account_id"])
    assert r.loc["C536379", "requested_at"] == pd.Timestamp("2010-12-14 09:41", tz="UTC")
    assert r["order_id"].isna().all() and (r["reason"] == "other").all()


def test_rejects_file_names_source_row_and_reason(old_layout_import):
    _, out = old_layout_import
    rejects = pd.read_csv(out / REJECT_FILE, dtype=str)
    assert len(rejects) == 9
    bad_date = rejects[rejects["reason"] == R_DATE].iloc[0]
    assert bad_date["row"] == "13" and bad_date["invoice"] == "536417" and bad_date["invoice_date"] == "not a date"
    assert bad_date["source"].endswith("Online Retail.csv")


def _ii_frame(rows: list[list[object]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=II_HEADER)


def test_xlsx_all_sheets_and_overlap_between_sheets(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    when = dt.datetime(2010, 12, 1, 9, 0)
    sheet_a = [["489434", "85048", "15CM CHRISTMAS GLASS BALL 20 LIGHTS", 12, when, 6.95, 13085.0, "United Kingdom"],
               ["C489449", "22087", "PAPER BUNTING WHITE LACE", -12, when, 2.95, 16321.0, "Australia"]]
    sheet_b = [["489434", "85048", "15CM CHRISTMAS GLASS BALL 20 LIGHTS", 12, when, 6.95, 13085.0,
                "United Kingdom"],  # the same invoice again: the two workbook sheets overlap
               [536365, "71053", "WHITE METAL LANTERN", 6, dt.datetime(2010, 12, 2, 8, 26), 3.39, None, "France"]]
    path = tmp_path / "online_retail_II.xlsx"
    book = openpyxl.Workbook()
    for i, (title, rows) in enumerate([("Year 2009-2010", sheet_a), ("Year 2010-2011", sheet_b)]):
        ws = book.active if i == 0 else book.create_sheet()
        ws.title = title
        ws.append(II_HEADER)
        for row in rows:
            ws.append(row)
    book.create_sheet("notes")  # an empty sheet is skipped
    book.save(path)
    summary = import_online_retail([path], tmp_path / "out", progress=False, now=NOW)
    assert [s["source"].split("[")[-1] for s in summary["sources"]] == ["Year 2009-2010]", "Year 2010-2011]"]
    assert (summary["order_lines"], summary["returns"], summary["rejected_by_reason"]) == (2, 1, {R_DUPLICATE: 1})
    assert_balanced(summary)
    ds = load_dataset(tmp_path / "out", now=NOW)
    assert ds.n_rejected == 0
    assert ds.orders["order_id"].tolist() == ["489434", "536365"]
    assert ds.orders["account_id"].tolist()[0] == "13085"
    assert ds.orders["ordered_at"].iloc[0] == pd.Timestamp(when, tz="UTC")
    assert ds.returns["account_id"].tolist() == ["16321"]


def test_parquet_and_several_files(tmp_path):
    first = _ii_frame([["489434", "85048", "GLASS BALL", 12, pd.Timestamp("2009-12-01 07:45"), 6.95, 13085.0, "UK"]])
    second = _ii_frame([["489435", "22350", "CAT BOWL", 12, pd.Timestamp("2009-12-01 07:46"), 2.55, None, "UK"],
                        ["C489436", "22350", "CAT BOWL", -1, pd.Timestamp("2009-12-01 08:00"), 2.55, None, "UK"]])
    first.to_parquet(tmp_path / "a.parquet")
    second.to_csv(tmp_path / "b.csv.gz", index=False)
    summary = import_online_retail([tmp_path / "a.parquet", tmp_path / "b.csv.gz"], tmp_path / "out",
                                   progress=False, now=NOW)
    assert (summary["rows_in"], summary["order_lines"], summary["returns"], summary["rejected"]) == (3, 2, 1, 0)
    ds = load_dataset(tmp_path / "out", now=NOW)
    assert ds.orders["account_id"].tolist()[0] == "13085" and pd.isna(ds.orders["account_id"].iloc[1])
    assert ds.returns["refund_amount"].tolist() == [2.55]


# --- bad files -----------------------------------------------------------------------------------------------


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "retail.csv"
    _ii_frame([]).drop(columns=["Price"]).to_csv(path, index=False)
    with pytest.raises(ContractError) as err:
        import_online_retail([path], tmp_path / "out", progress=False)
    assert err.value.column == "Price" and "retail.csv" in str(err.value) and "'Price'" in str(err.value)


def test_unrelated_file_is_refused_with_both_layouts_named(tmp_path):
    path = tmp_path / "orders.csv"
    pd.DataFrame({"order_id": ["1"], "amount": ["2"]}).to_csv(path, index=False)
    with pytest.raises(ContractError, match="not an Online Retail file") as err:
        import_online_retail([path], tmp_path / "out", progress=False)
    assert "InvoiceNo" in str(err.value) and "Customer ID" in str(err.value)


def test_header_matching_ignores_case_and_blanks():
    name, cols = detect_layout(["invoiceno", "Stock Code", "description", "QUANTITY", "invoice_date",
                                "unit price", "Customer ID", "country"], "x.csv")
    assert name == "Online Retail" and cols["customer_id"] == "Customer ID" and cols["price"] == "unit price"


@pytest.mark.parametrize(("name", "content", "message"), [
    ("empty.csv", b"", "the file is empty"),
    ("broken.parquet", b"PAR1 not really", "cannot be read"),
    ("old.xls", b"\xd0\xcf\x11\xe0", "unsupported file type"),
])
def test_unreadable_file_names_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ContractError, match=message) as err:
        import_online_retail([path], tmp_path / "out", progress=False)
    assert name in str(err.value)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(ContractError, match="file not found"):
        import_online_retail([tmp_path / "nope.csv"], tmp_path / "out", progress=False)


def test_categorise():
    cats = categorise(pd.Series(["15CM CHRISTMAS GLASS BALL 20 LIGHTS", "POSTAGE", "jumbo bag red retrospot",
                                 "QWERTY", None]),
                      pd.Series(["85048", "POST", "85099B", "1", "2"]))
    assert cats.tolist()[:3] == ["christmas", NON_PRODUCT, "bags"]
    assert pd.isna(cats.iloc[3]) and pd.isna(cats.iloc[4])
