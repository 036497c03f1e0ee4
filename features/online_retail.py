"""Import the UCI Online Retail data sets (a UK online gift retailer) into the input contract.

Two layouts are read, from CSV / CSV.gz, XLSX (every sheet) or Parquet:

- Online Retail II (UCI data set 502): Invoice, StockCode, Description, Quantity, InvoiceDate, Price, Customer ID,
  Country;
- Online Retail (UCI data set 352): InvoiceNo, StockCode, Description, Quantity, InvoiceDate, UnitPrice, CustomerID,
  Country.

Sales invoices become order lines of one merchant; each cancellation invoice (number starting with ``C``) becomes one
return request whose quantity and refund are summed over its lines (the original order is unknown, so ``order_id`` is
null); everything else (adjustments, bad debt, free or negative-price lines, ...) goes to ``import_rejects.csv`` with a
reason. ``rows in = order lines + cancellation lines + rejected rows`` is checked on every import.

The UCI files do not say which time zone InvoiceDate is in; naive times are read as UTC, as the contract says.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from features.contract import ContractError, normalise_ids
from features.scenarios import write_dataset_meta

# Canonical field -> column name, per layout. Headers are matched ignoring case, blanks and underscores.
Layout = dict[str, str]
LAYOUTS: dict[str, Layout] = {
    "Online Retail II": {
        "invoice": "Invoice", "stock_code": "StockCode", "description": "Description", "quantity": "Quantity",
        "invoice_date": "InvoiceDate", "price": "Price", "customer_id": "Customer ID", "country": "Country",
    },
    "Online Retail": {
        "invoice": "InvoiceNo", "stock_code": "StockCode", "description": "Description", "quantity": "Quantity",
        "invoice_date": "InvoiceDate", "price": "UnitPrice", "customer_id": "CustomerID", "country": "Country",
    },
}
FIELDS = list(LAYOUTS["Online Retail II"])
REJECT_FILE = "import_rejects.csv"

# Reasons a row is neither an order line nor a cancellation line, in the order they are tested (first one wins).
R_DUPLICATE = "duplicate invoice: already imported from an earlier file or sheet"
R_NO_INVOICE = "missing invoice number"
R_ADJUSTMENT = "adjustment invoice (A prefix, e.g. 'Adjust bad debt')"
R_BAD_DEBT = "bad debt adjustment (StockCode B)"
R_UNKNOWN_INVOICE = "invoice number is neither a sale (digits) nor a cancellation (C prefix)"
R_DATE = "unparseable InvoiceDate"
R_FUTURE = "InvoiceDate in the future"
R_QUANTITY = "Quantity is not a whole number"
R_PRICE = "unparseable Price"
R_ZERO_QTY = "zero quantity"
R_PRICE_NONPOS = "non-positive price"
R_SALE_NEGATIVE = "sales line with negative quantity"

# Non-product StockCodes of this retailer: postage, carriage, manual entries, discounts, samples, bank and marketplace
# fees, test lines, gift vouchers. They are real invoice lines, so they stay as orders, but not as products.
NON_PRODUCT_CODES = r"^(?:POST|DOT|M|C2|C3|D|S|PADS|CRUK|BANK CHARGES|AMAZONFEE|ADJUST\d*|TEST\d*|GIFT_\d+_\d+)$"
NON_PRODUCT = "fees_and_services"
# Coarse product categories from keywords in the Description (upper case; first matching rule wins). A heuristic
# for a gift-ware catalogue, not ground truth: descriptions matching no rule get a null category.
CATEGORY_RULES: tuple[tuple[str, str], ...] = (
    ("christmas", r"CHRISTMAS|XMAS|ADVENT|SANTA|REINDEER|SNOWFLAKE|NATIVITY|BAUBLE"),
    ("bags", r"\bBAGS?\b|HANDBAG|SHOPPER|\bTOTE\b|PURSE|WASHBAG"),
    ("jewellery_accessories", r"NECKLACE|EARRING|BRACELET|\bRING\b|JEWEL|BROOCH|\bHAIR|UMBRELLA|SCARF|\bGLOVES?\b"
                              r"|\bHAT\b|\bBEADS?\b|CHARM|KEY ?RING|KEY FOB|WALLET|SUNGLASSES|DIAMANTE|HAND WARMER|\bFAN\b"),
    ("lighting_candles", r"LIGHTS?\b|LANTERN|CANDLE|T-LIGHT|TEA ?LIGHT|\bLAMP|CHANDELIER|\bTORCH|OIL BURNER"),
    ("toys_children", r"\bTOYS?\b|\bGAMES?\b|PUZZLE|\bDOLLS?\b|DOLLY|SPACEBOY|\bCHILDS?\b|CHILDREN|\bKIDS?\b"
                      r"|\bBABY|TEDDY|SKIPPING|JIGSAW|DOMINO|PLAYHOUSE|\bMAGIC|SOLDIER|COLOURING|CRAYON"
                      r"|FELTCRAFT|\bKIT\b|\bBALL\b|SPINNING TOP|MARBLES|BUILDING BLOCK|BINGO|SNAKES & LADDERS|MODELLING"
                      r"|PAINT SET|TATTOO|INFLATABLE"),
    ("stationery_party", r"\bCARDS?\b|\bWRAP|PAPER|NOTEBOOK|NOTE ?BOOK|PENCIL|\bPENS?\b|STICKER|ENVELOPE"
                         r"|BUNTING|PARTY|BIRTHDAY|BALLOON|TISSUE|RIBBON|\bCHALK|DIARY|JOURNAL|ERASER|RULER"
                         r"|GIFT TAG|CRACKER|CONFETTI|\bNAPKIN|STATIONERY|LETTER|\bSTAMP|MEMO ?BOARD|WRITING SET|CALCULATOR"),
    ("kitchen_dining", r"\bMUGS?\b|\bCUPS?\b|\bPLATES?\b|\bBOWLS?\b|TEAPOT|TEA ?TOWEL|\bCAKE|\bJARS?\b"
                       r"|\bBOTTLE|CUTLERY|BAKING|KITCHEN|LUNCH|\bTRAYS?\b|TUMBLER|\bGLASS(?:ES)?\b|SPOON"
                       r"|BISCUIT|\bEGG|COASTER|APRON|\bJUGS?\b|SAUCER|CHOPSTICK|OVEN GLOVE|\bSTRAWS?\b|TEA SET"
                       r"|\bTEA\b|COFFEE|SUGAR|\bMILK|CAKESTAND|DISH|PANTRY|RECIPE|JELLY|SWEETIE|\bTINS?\b|COOKIE CUTTER"
                       r"|FRYING PAN|\bCONTAINER"),
    ("bath_beauty", r"\bSOAP|\bBATH|TOWEL|MAKE ?UP|LIP ?GLOSS|TOOTH|SPONGE|FLANNEL|TOILETRY|PERFUME|\bNAIL"
                    r"|SHOWER|MIRROR COMPACT|COSMETIC"),
    ("garden_outdoor", r"GARDEN|\bPLANT|(?<!TRINKET )\bPOTS?\b|WATERING|BIRD ?HOUSE|BIRD FEEDER|PICNIC|PARASOL|OUTDOOR|\bHERB"
                       r"|\bSEED|THERMOMETER|WINDMILL|WICKER|TRELLIS|\bSPADE|\bTROWEL"),
    ("home_decor", r"\bSIGN\b|FRAME|CLOCK|CUSHION|DOOR ?MAT|DOORSTOP|\bHOOKS?\b|DECORATION|ORNAMENT|HANGING"
                   r"|MIRROR|\bVASE|\bWALL\b|DRAWER|CABINET|SHELF|\bBOX(?:ES)?\b|STORAGE|HOLDER|WREATH"
                   r"|GARLAND|\bHEARTS?\b|PHOTO|CURTAIN|BLANKET|THROW|QUILT|\bRUG\b|\bMAT\b|\bTILE|PLAQUE|RACK"
                   r"|TRINKET|\bSTAND\b|\bBELLS?\b|CHIME|BASKET|HOT WATER|DOORSTOP|\bSTOOL|\bCHAIR|\bTABLE\b"
                   r"|\bBIRD\b|\bSTAR\b|\bFLOWER|\bFELT\b|\bZINC\b|\bMETAL\b|\bENAMEL\b|\bWOODEN\b|MAGNET"
                   r"|PIGGY BANK|\bPEGS\b|\bCHEST\b"),
)
# Date formats tried (after ISO 8601) on values that did not parse: common re-exports of the UCI workbooks.
DATE_FORMATS = ("%m/%d/%Y %H:%M", "%d/%m/%Y %H:%M", "%m/%d/%Y %H:%M:%S", "%d/%m/%Y %H:%M:%S", "%d-%m-%Y %H:%M",
                "%d.%m.%Y %H:%M")
FUTURE_TOLERANCE = pd.Timedelta(days=1)  # same as the contract's, so every imported row loads


def _key(name: object) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def detect_layout(columns: Iterable[object], source: str) -> tuple[str, dict[str, str]]:
    """Which UCI layout a header is, and the header's column for each field; ContractError naming what is missing."""
    columns = [str(c) for c in columns]
    by_key = {_key(c): c for c in columns}
    best: tuple[int, str, list[str]] | None = None
    for name, layout in LAYOUTS.items():
        missing = [col for col in layout.values() if _key(col) not in by_key]
        if not missing:
            return name, {f: by_key[_key(col)] for f, col in layout.items()}
        if best is None or len(missing) < best[0]:
            best = (len(missing), name, missing)
    assert best is not None
    _, name, missing = best
    expected = "; ".join(f"{n}: {', '.join(lay.values())}" for n, lay in LAYOUTS.items())
    raise ContractError(
        source,
        f"not an Online Retail file: closest layout '{name}' lacks column{'s' if len(missing) > 1 else ''} "
        f"{', '.join(repr(m) for m in missing)} (columns found: {', '.join(columns) or 'none'}). Expected the "
        f"header of one of {expected}",
        column=missing[0],
    )


def _read_csv(path: Path) -> pd.DataFrame:
    args = {"dtype": str, "keep_default_na": False, "na_values": [""]}
    try:
        return pd.read_csv(path, engine="pyarrow", **args)
    except Exception:  # noqa: BLE001 - the C parser below reads it or says why not
        pass
    try:
        return pd.read_csv(path, encoding="utf-8", **args)
    except UnicodeDecodeError:
        # Older re-exports of the UCI workbook are Windows-1252 (e.g. a pound sign in Description).
        return pd.read_csv(path, encoding="cp1252", **args)


def _read_xlsx(path: Path, progress: bool) -> Iterator[tuple[str, pd.DataFrame]]:
    import openpyxl  # only XLSX imports need it

    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        for sheet in book.worksheets:
            rows = sheet.iter_rows(values_only=True)
            header = next(rows, None)
            if header is None or all(h is None for h in header):
                continue  # an empty sheet holds no data
            total = max((sheet.max_row or 1) - 1, 0)
            data = list(tqdm(rows, total=total, desc=f"{path.name} [{sheet.title}]", unit="row",
                             disable=not progress, leave=False))
            names = [str(h) if h is not None else f"column_{i}" for i, h in enumerate(header)]
            frame = pd.DataFrame(data, columns=names, dtype=object)
            frame = frame.dropna(how="all")  # trailing blank rows that Excel keeps
            yield f"{path}[{sheet.title}]", frame.reset_index(drop=True)
    finally:
        book.close()


def read_sources(path: Path, progress: bool = False) -> Iterator[tuple[str, pd.DataFrame]]:
    """The tables in one file as read, each labelled with its source (``file`` or ``file[sheet]``)."""
    path = Path(path)
    if not path.exists():
        raise ContractError(path, "file not found; pass the path of an Online Retail CSV, XLSX or Parquet file")
    name = path.name.lower()
    try:
        if name.endswith((".xlsx", ".xlsm")):
            yield from _read_xlsx(path, progress)
        elif name.endswith(".parquet") or path.is_dir():
            yield str(path), pd.read_parquet(path)
        elif name.endswith((".csv", ".csv.gz", ".txt", ".txt.gz")):
            yield str(path), _read_csv(path)
        else:
            raise ContractError(path, "unsupported file type; use .csv, .csv.gz, .xlsx or .parquet "
                                      "(the old .xls workbook: open it and save it as .xlsx or .csv)")
    except ContractError:
        raise
    except pd.errors.EmptyDataError as e:
        raise ContractError(path, "cannot be read: the file is empty (not even a header row)") from e
    except Exception as e:  # noqa: BLE001 - any reader failure is the same user problem
        raise ContractError(path, f"cannot be read: {type(e).__name__}: {e}") from e


def _parse_dates(s: pd.Series) -> pd.Series:
    """InvoiceDate as UTC: datetimes as they are (naive read as UTC), text as ISO 8601 or a common re-export format."""
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        return s.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_any_dtype(s):
        return s.dt.tz_localize("UTC")
    out = pd.to_datetime(s, utc=True, errors="coerce", format="ISO8601")
    failed = out.isna() & s.notna()
    if failed.any():
        text = s[failed].astype("string").str.strip()
        # One format per file: the one that parses the most values that ISO 8601 did not.
        tries = {f: pd.to_datetime(text, format=f, utc=True, errors="coerce") for f in DATE_FORMATS}
        fmt = max(DATE_FORMATS, key=lambda f: int(tries[f].notna().sum()))
        out[failed] = tries[fmt]
    return out


def categorise(description: pd.Series, stock_code: pd.Series) -> pd.Series:
    """A coarse product category from keywords in the Description (null when no rule matches)."""
    desc = description.astype("string").str.upper().str.strip()
    uniques = pd.Series(desc.dropna().unique(), dtype="string")
    cat = pd.Series(pd.NA, index=uniques.index, dtype="string")
    for name, pattern in CATEGORY_RULES:  # evaluated on the few thousand distinct texts, then mapped to the rows
        hit = cat.isna() & uniques.str.contains(pattern, regex=True).fillna(False)
        cat[hit] = name
    out = desc.map(dict(zip(uniques, cat, strict=True))).astype("string")
    non_product = stock_code.astype("string").str.upper().str.strip().str.fullmatch(NON_PRODUCT_CODES).fillna(False)
    return out.mask(non_product, NON_PRODUCT)


def _standardise(raw: pd.DataFrame, columns: dict[str, str], source: str) -> pd.DataFrame:
    """The fields of one source under canonical names, typed, with the source and its 1-based data row."""
    out = pd.DataFrame({f: raw[c] for f, c in columns.items()})
    out.columns = FIELDS
    std = pd.DataFrame({
        "source": source,
        "row": np.arange(1, len(out) + 1),
        "invoice": normalise_ids(out["invoice"]).str.upper(),
        "stock_code": normalise_ids(out["stock_code"]),
        "description": out["description"].astype("string").str.strip(),
        "quantity": pd.to_numeric(out["quantity"], errors="coerce").astype("float64"),
        "invoice_date": _parse_dates(out["invoice_date"]),
        "price": pd.to_numeric(out["price"], errors="coerce").astype("float64"),
        "customer_id": normalise_ids(out["customer_id"]),
        "country": out["country"].astype("string").str.strip(),
    })
    return std


def _reject_reasons(std: pd.DataFrame, duplicate: pd.Series, now: pd.Timestamp) -> pd.Series:
    """The first reason each row is neither an order line nor a cancellation line (null when it is one)."""
    inv = std["invoice"]
    is_cancel = inv.str.startswith("C").fillna(False)
    is_sale = inv.str.fullmatch(r"\d+").fillna(False)
    q, p = std["quantity"], std["price"]
    checks = [
        (duplicate, R_DUPLICATE),
        (inv.isna(), R_NO_INVOICE),
        (inv.str.startswith("A").fillna(False), R_ADJUSTMENT),
        (std["stock_code"].str.upper().eq("B").fillna(False), R_BAD_DEBT),
        (~is_sale & ~is_cancel, R_UNKNOWN_INVOICE),
        (std["invoice_date"].isna(), R_DATE),
        (std["invoice_date"] > now + FUTURE_TOLERANCE, R_FUTURE),
        (q.isna() | (q != np.round(q)), R_QUANTITY),
        (p.isna() | ~np.isfinite(p), R_PRICE),
        (p <= 0, R_PRICE_NONPOS),
        (q == 0, R_ZERO_QTY),
        (is_sale & (q < 0), R_SALE_NEGATIVE),
    ]
    reason = pd.Series(pd.NA, index=std.index, dtype="string")
    for mask, text in checks:
        reason[mask.fillna(False).astype(bool) & reason.isna()] = text
    return reason


def _orders(sales: pd.DataFrame, merchant_id: str) -> pd.DataFrame:
    """Order lines in the contract's columns (plus stock_code, description and unit_price, kept and ignored)."""
    no_time = pd.Series(pd.NaT, index=sales.index, dtype="datetime64[us, UTC]")
    return pd.DataFrame({
        "order_id": sales["invoice"],
        # line number within the invoice, in file order; keeps repeated (invoice, StockCode) lines distinct
        "line_no": sales.groupby("invoice", sort=False).cumcount().astype("int64") + 1,
        "account_id": sales["customer_id"],
        "merchant_id": pd.Series(merchant_id, index=sales.index, dtype="string"),
        "ordered_at": sales["invoice_date"].dt.as_unit("us"),
        "category": sales["category"],
        "quantity": sales["quantity"].astype("int64"),
        "amount": (sales["quantity"] * sales["price"]).round(6),  # float noise only: prices have sub-penny digits
        "region": sales["country"],
        "promised_delivery_at": no_time,
        "delivered_at": no_time,
        "stock_code": sales["stock_code"],
        "description": sales["description"],
        "unit_price": sales["price"],
    }).reset_index(drop=True)


def _returns(cancels: pd.DataFrame, merchant_id: str) -> pd.DataFrame:
    """One return request per cancellation invoice, quantity and refund summed over its lines."""
    lines = cancels.assign(abs_qty=cancels["quantity"].abs(), refund=(cancels["quantity"] * cancels["price"]).abs())
    g = lines.groupby("invoice", sort=False)
    agg = pd.DataFrame({
        "account_id": g["customer_id"].first(),  # first non-null: a cancellation has one customer
        "requested_at": g["invoice_date"].min(),
        "quantity": g["abs_qty"].sum().astype("int64"),
        "refund_amount": g["refund"].sum().round(6),
        "region": g["country"].first(),
        "lines": g.size().astype("int64"),
    })
    n = len(agg)
    return pd.DataFrame({
        "return_id": agg.index.astype("string"),
        "order_id": pd.Series(pd.NA, index=range(n), dtype="string"),  # the cancelled invoice is not recorded
        "account_id": agg["account_id"].astype("string").to_numpy(),
        "merchant_id": pd.Series(merchant_id, index=range(n), dtype="string"),
        "requested_at": agg["requested_at"].dt.as_unit("us").to_numpy(),
        "reason": pd.Series("other", index=range(n), dtype="string"),
        "quantity": agg["quantity"].to_numpy(),
        "refund_amount": agg["refund_amount"].to_numpy(),
        "item_returned": pd.Series(pd.NA, index=range(n), dtype="boolean"),
        "region": agg["region"].astype("string").to_numpy(),
        "lines": agg["lines"].to_numpy(),
    })


def import_online_retail(
    paths: list[Path], out_dir: Path, merchant_id: str = "online_retail", progress: bool = True,
    now: pd.Timestamp | None = None,
) -> dict:
    """Import UCI Online Retail (II) files into ``out_dir`` as orders.parquet, returns.parquet and import_rejects.csv.

    Files are read in the order given; an invoice already read from an earlier file or sheet is rejected as a
    duplicate (the two sheets of the II workbook overlap from 2010-12-01 to 2010-12-09, and the older data set repeats
    the II 2010-2011 sheet). Returns a summary of the counts; raises ContractError for a file that cannot be used.
    """
    started = time.perf_counter()
    now = now if now is not None else pd.Timestamp.now(tz="UTC")
    out_dir = Path(out_dir)
    paths = [Path(p) for p in paths]
    if not paths:
        raise ContractError(out_dir, "no input files given; pass one or more Online Retail CSV, XLSX or Parquet files")
    frames, raws, sources, seen = [], [], [], set()
    for path in tqdm(paths, desc="reading", unit="file", disable=not progress or len(paths) < 2):
        for source, raw in read_sources(path, progress=progress):
            layout, columns = detect_layout(raw.columns, source)
            std = _standardise(raw, columns, source)
            duplicate = std["invoice"].isin(seen).fillna(False) if seen else pd.Series(False, index=std.index)
            std["reason"] = _reject_reasons(std, duplicate, now)
            seen.update(std["invoice"].dropna().unique())
            frames.append(std)
            raws.append(pd.DataFrame({f: raw[c] for f, c in columns.items()}))
            sources.append({"source": source, "layout": layout, "rows": len(raw)})
    std = pd.concat(frames, ignore_index=True)
    raw_all = pd.concat(raws, ignore_index=True)
    rejected = std["reason"].notna()
    is_cancel = ~rejected & std["invoice"].str.startswith("C").fillna(False)
    is_sale = ~rejected & ~is_cancel
    std["category"] = categorise(std["description"], std["stock_code"])

    orders = _orders(std.loc[is_sale], merchant_id)
    returns = _returns(std.loc[is_cancel], merchant_id)
    rejects = pd.concat([std.loc[rejected, ["source", "row", "reason"]].reset_index(drop=True),
                         raw_all.loc[rejected].astype("string").reset_index(drop=True)], axis=1)

    rows_in = len(std)
    n_sale, n_cancel, n_rej = int(is_sale.sum()), int(is_cancel.sum()), int(rejected.sum())
    if rows_in != n_sale + n_cancel + n_rej or len(orders) != n_sale or int(returns["lines"].sum()) != n_cancel:
        raise AssertionError(f"import lost rows: {rows_in} in != {n_sale} order lines + {n_cancel} cancellation "
                             f"lines + {n_rej} rejected")

    out_dir.mkdir(parents=True, exist_ok=True)
    orders.to_parquet(out_dir / "orders.parquet", index=False)
    returns.to_parquet(out_dir / "returns.parquet", index=False)
    rejects.to_csv(out_dir / REJECT_FILE, index=False)
    product = orders["category"].ne(NON_PRODUCT).fillna(True)
    span = pd.concat([orders["ordered_at"], returns["requested_at"]])
    # A UK retailer: its calendar is GB's (commands read the market from dataset.json).
    meta_file = write_dataset_meta(out_dir, {
        "source": "online_retail", "market": "GB", "merchant_id": merchant_id,
        "start": str(span.min().date()) if len(span) else None, "end": str(span.max().date()) if len(span) else None})
    return {
        "sources": sources,
        "rows_in": rows_in,
        "order_lines": n_sale,
        "orders": int(orders["order_id"].nunique()),
        "cancellation_lines": n_cancel,
        "returns": len(returns),
        "rejected": n_rej,
        "rejected_by_reason": {k: int(v) for k, v in std.loc[rejected, "reason"].value_counts().items()},
        "rows_without_customer_id": int(std["customer_id"].isna().sum()),
        "guest_order_lines": int(orders["account_id"].isna().sum()),
        "guest_returns": int(returns["account_id"].isna().sum()),
        "customers": int(pd.concat([orders["account_id"], returns["account_id"]]).nunique()),
        "product_lines_categorised": round(float(orders.loc[product, "category"].notna().mean()), 4)
        if product.any() else 0.0,
        "first_day": str(span.min().date()) if len(span) else None,
        "last_day": str(span.max().date()) if len(span) else None,
        "out_dir": str(out_dir),
        "files": [str(out_dir / "orders.parquet"), str(out_dir / "returns.parquet"), str(out_dir / REJECT_FILE),
                  str(meta_file)],
        "seconds": round(time.perf_counter() - started, 2),
    }
