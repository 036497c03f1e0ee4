"""The input data contract's schema (``shared/CONTRACT.md``): the tables, their columns and rules, and the
report each table's load fills in. Loading lives in :mod:`features.contract`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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
# Longest value of an ID, code or short text column; a longer one is rejected (a broken export, not an ID).
MAX_VALUE_CHARS = 256
# Free text (a ticket's first message, a reviewer's note) longer than this is cut to it and counted as truncated:
# the row is kept, a 10 MB paste does not travel into features and reports.
MAX_TEXT_CHARS = 20_000


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
    free_text: bool = False  # long values are truncated to MAX_TEXT_CHARS (and counted) instead of rejected

    @property
    def is_id(self) -> bool:
        """Identifier columns get export clean-up (``13085.0`` -> ``13085``); free text does not."""
        return self.name.endswith("_id")


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
            # An empty reason is "other" (the default, not counted); a reason outside the list is remapped and counted.
            Column("reason", "str", default="other", allowed=RETURN_REASONS, unknown_to="other"),
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
            Column("text", "str", free_text=True),
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
            Column("note", "str", free_text=True),
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
    truncated: dict[str, int] = field(default_factory=dict)  # free-text values cut to MAX_TEXT_CHARS, by column

    @property
    def balanced(self) -> bool:
        """Rows in == accepted + rejected (no row is lost silently)."""
        return self.rows_in == self.accepted + self.rejected
