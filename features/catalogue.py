"""The model catalogue: every model of the project, listed once.

The CLI (``aftersales train|evaluate|...``), the registry's messages, the report's sections, the snapshot generations,
the online store and the service's health list read this table instead of keeping lists of their own, so adding a
model takes its own feature and training modules plus one :class:`Model` entry here.

Plain data only: no pandas, no MLflow, no HTTP. Training code is named by module path (a string) and resolved by
import where it is used (``training/cli.py``), so importing the catalogue costs nothing and ``features`` never imports
``training``.

Order matters: it is the training order of ``aftersales train all`` (the ticket model reads the account and merchant
snapshots the serial-returner and merchant models write, so it comes last), the order of the report's sections and of
the files joined per online-store table (a later file's columns win where names clash).
"""

from __future__ import annotations

from dataclasses import dataclass

# Online-store tables (serving/online_store.py) and the ID each is keyed by.
ACCOUNTS, MERCHANTS, ORDERS = "accounts", "merchants", "orders"
TABLE_KEYS: dict[str, str] = {ACCOUNTS: "account_id", MERCHANTS: "merchant_id", ORDERS: "order_id"}


@dataclass(frozen=True)
class Snapshot:
    """One file a model's training writes for serving.

    ``table``: the online-store table it is joined into on that table's key (None: read whole, e.g. the review
    queue). ``score``: the column the table is ranked by (review queue, merchant ranking), highest first.
    ``columns``: the served columns other code reads by name (not every column the file holds).
    """

    file: str
    table: str | None
    score: str | None = None
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Command:
    """A model-specific CLI command: ``aftersales NAME``, the click command ``training.<module>:<attr>``."""

    name: str
    attr: str
    help: str


@dataclass(frozen=True)
class Model:
    """One model: how the registry, the CLI, serving and the report name it, and what it serves."""

    name: str  # registered model name in MLflow (also its experiment and its snapshot folder)
    cli: str  # `aftersales train CLI`, `aftersales evaluate CLI`, report section id
    title: str  # report section title
    intro: str  # report section introduction (one sentence a reader of the report needs)
    training: str  # module holding train(), evaluate_cmd and the model's commands (resolved by import)
    evaluate_help: str  # one line for `aftersales evaluate --help`
    snapshots: tuple[Snapshot, ...] = ()
    routes: tuple[str, ...] = ()  # HTTP routes served from this model (serving/service.py, serving/app.py)
    commands: tuple[Command, ...] = ()
    dask: bool = False  # train() takes a features.engine engine (Dask features + lightgbm.dask)

    @property
    def files(self) -> tuple[str, ...]:
        """The snapshot file names it serves."""
        return tuple(s.file for s in self.snapshots)

    def target(self, attr: str) -> str:
        """``"module:attr"`` of an attribute of its training module (what the CLI resolves lazily)."""
        return f"{self.training}:{attr}"


MODELS: tuple[Model, ...] = (
    Model(
        name="return_volume", cli="return-volume", title="Holiday return volume",
        intro="How many returns to expect per day around the big shopping events and holidays, how well the "
              "forecast did on past events against simpler methods, and how many agents to roster.",
        training="training.return_volume",
        evaluate_help="Rolling-origin backtest of the return-volume forecast.",
        routes=("/v1/forecast",),
        commands=(Command("forecast", "forecast_cmd", "Forecast daily return volume P10/P50/P90 after an origin date."),
                  Command("staff", "staff_cmd", "Turn a forecast into agents per day and channel (Erlang C, backlog).")),
    ),
    Model(
        name="serial_returners", cli="serial-returners", title="Serial returner review",
        intro="Accounts whose returns look abusive (serial returning, wardrobing, refunds without a return, linked "
              "rings), how well they are found, and who the risk team should review next.",
        training="training.serial_returners",
        evaluate_help="Evaluate the serial-returner detector on later time.",
        snapshots=(Snapshot("accounts.parquet", ACCOUNTS, score="abuse_score",
                            columns=("abuse_score", "abuse_percentile", "likely_pattern", "top_reason")),
                   Snapshot("account_queue.parquet", None)),
        routes=("/v1/accounts/flagged", "/v1/accounts/{account_id}/decision"),
        commands=(Command("flag-accounts", "flag_accounts_cmd",
                          "Write the review queue of abnormal returners, sized to capacity."),
                  Command("review", "review_group", "Record and list the risk team's review decisions.")),
        dask=True,
    ),
    Model(
        name="merchant_risk", cli="merchant-risk", title="Merchant complaint risk",
        intro="Which merchants will draw complaints in the coming 60 days, how well the ranking did on later periods, "
              "and why each merchant ranks where it does.",
        training="training.merchant_risk",
        evaluate_help="Evaluate the merchant complaint ranking on later snapshots.",
        snapshots=(Snapshot("merchants.parquet", MERCHANTS, score="merchant_risk_score",
                            columns=("merchant_risk_score", "merchant_risk_percentile", "expected_complaints",
                                     "late_delivery_rate", "complaint_rate_90d", "top_reason")),),
        routes=("/v1/merchants/risk",),
        commands=(Command("rank-merchants", "rank_merchants_cmd",
                          "Rank merchants by their complaint risk in the coming period."),),
    ),
    Model(
        name="ticket_triage", cli="ticket-triage", title="Ticket triage",
        intro="How likely a new after-sales case is to escalate, how trustworthy those probabilities are, what the "
              "triage policy does with them, and how fast scoring is.",
        training="training.ticket_triage",
        evaluate_help="Evaluate the ticket escalation model on later tickets.",
        # The same names as features.tickets.SNAPSHOT_FILES (tests/test_catalogue.py checks they agree).
        snapshots=(Snapshot("ticket_triage_accounts.parquet", ACCOUNTS),
                   Snapshot("ticket_triage_merchants.parquet", MERCHANTS),
                   Snapshot("ticket_triage_orders.parquet", ORDERS),
                   Snapshot("ticket_triage_recent.parquet", None)),
        routes=("/v1/tickets/score", "/v1/tickets/score-batch"),
        dask=True,
    ),
)

BY_NAME: dict[str, Model] = {m.name: m for m in MODELS}
BY_CLI: dict[str, Model] = {m.cli: m for m in MODELS}
NAMES: tuple[str, ...] = tuple(m.name for m in MODELS)


def get(name: str) -> Model:
    """The model registered as ``name`` or called ``name`` on the command line (``merchant_risk``/``merchant-risk``)."""
    model = BY_NAME.get(name) or BY_CLI.get(name)
    if model is None:
        raise KeyError(f"no model '{name}' in the catalogue (features/catalogue.py); known: {', '.join(NAMES)}")
    return model


def cli_name(name: str) -> str:
    """The command-line name of a registered model (its own name for one not in the catalogue, '_' -> '-')."""
    model = BY_NAME.get(name)
    return model.cli if model is not None else name.replace("_", "-")


def registered_name(name: str) -> str:
    """The registered name of a model given by either name (``merchant-risk`` -> ``merchant_risk``); a name not in
    the catalogue comes back with '-' -> '_'."""
    model = BY_NAME.get(name) or BY_CLI.get(name)
    return model.name if model is not None else name.replace("-", "_")


def table_files(table: str) -> tuple[str, ...]:
    """The snapshot files joined into an online-store table, in catalogue order (a later file wins on a clash)."""
    return tuple(s.file for m in MODELS for s in m.snapshots if s.table == table)


def writer(file: str) -> Model | None:
    """The model whose training writes a snapshot file (None for a file no model lists)."""
    return next((m for m in MODELS if file in m.files), None)


def score_column(table: str) -> str | None:
    """The column an online-store table is ranked by, from the snapshot that declares one."""
    return next((s.score for m in MODELS for s in m.snapshots if s.table == table and s.score), None)
