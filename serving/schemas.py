"""Request and response bodies of the HTTP API (``/v1/...``): pydantic models with named fields, never bare arrays.

A ticket is the contract's ``tickets`` row without what is only known when the case closes (``escalated``,
``resolved_at``). Unknown extra fields are ignored, as in the input contract; IDs sent as JSON numbers become strings
(a CSV-born ``13085`` is the ID ``"13085"``). Every limit here is a documented 4xx, never a 5xx.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from features.contract import CASE_TYPES, CHANNELS

CaseType = Literal["return", "refund", "exchange", "complaint", "logistics", "quality", "inquiry", "other"]
Channel = Literal["chat", "phone", "email", "app", "other"]
Priority = Literal["P1", "P2", "P3", "P4"]
Decision = Literal["confirmed_abuse", "cleared"]
# Where a ticket's account / merchant features came from: the online store, or defaults (and why).
FeatureSource = Literal["online_store", "snapshot_fallback", "default_unknown_id", "default_no_id",
                        "default_store_unavailable"]
ModelVersions = dict[str, int]

# The Literal types above restate the contract's vocabularies so the OpenAPI spec lists them; keep them in step.
assert set(CaseType.__args__) == set(CASE_TYPES), "serving.schemas.CaseType drifted from features.contract"
assert set(Channel.__args__) == set(CHANNELS), "serving.schemas.Channel drifted from features.contract"

_ID = Field(min_length=1, max_length=128)
MIN_YEAR, MAX_YEAR = 1970, 2199  # times outside are typos or attacks (and overflow pandas' nanosecond times)


def _plausible(value: date) -> date:
    # The local year is checked (a zone offset moves a time by hours, which pandas' range absorbs).
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise ValueError(f"must lie between the years {MIN_YEAR} and {MAX_YEAR} (got {value.isoformat()})")
    return value


Instant = Annotated[datetime, AfterValidator(_plausible)]  # ISO 8601, years 1970-2199; no zone = UTC
Day = Annotated[date, AfterValidator(_plausible)]
MAX_TEXT = 20_000  # characters of a first message; real ones are far shorter, the cap bounds work per request


class _In(BaseModel):
    # Extra fields are ignored as in the contract; numbers sent for string IDs are accepted as their text.
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True, str_strip_whitespace=True)


class TicketIn(_In):
    """One after-sales case as the ticket system knows it when the case is opened."""

    ticket_id: str = _ID
    created_at: Instant = Field(description="ISO 8601; a time without zone is UTC.")
    account_id: str | None = Field(None, max_length=128, description="Null for guest checkouts.")
    merchant_id: str | None = Field(None, max_length=128)
    order_id: str | None = Field(None, max_length=128)
    case_type: CaseType
    channel: Channel
    amount: float | None = Field(None, ge=0, allow_inf_nan=False, description="Amount at stake, one currency.")
    text: str | None = Field(None, max_length=MAX_TEXT, description="Free text of the first message.")
    # Optional order context the ticket system may attach (else unknown to the model).
    ordered_at: Instant | None = None
    promised_delivery_at: Instant | None = None
    delivered_at: Instant | None = None
    return_reason: str | None = Field(None, max_length=32, description="Reason of a return already requested.")
    return_requested_at: Instant | None = None
    prior_tickets_30d: int | None = Field(None, ge=0, description="The account's tickets in the 30 days before "
                                          "(else counted by the service from the tickets it scores).")
    tickets_last_24h: int | None = Field(None, ge=0, description="The platform's tickets (every customer) created in "
                                         "the 24 hours before (else counted by the service).")
    typical_tickets_24h: float | None = Field(None, ge=0, allow_inf_nan=False,
                                              description="The platform's typical day: its mean daily tickets over "
                                              "the 28 days before (else counted by the service).")
    acct_tickets_365d: int | None = Field(None, ge=0, description="The account's tickets in the 365 days before "
                                          "(else the snapshot's count plus the service's live count since it).")


class FeatureSources(BaseModel):
    """Where a ticket's account, merchant and order features came from; ``default_*``: defaults were used."""

    account: FeatureSource
    merchant: FeatureSource
    order: FeatureSource


class TicketScoreItem(BaseModel):
    """The triage of one ticket: escalation probability, priority, suggested action and the reasons for them."""

    ticket_id: str
    escalation_probability: float = Field(ge=0, le=1)
    priority: Priority
    action: str = Field(description="auto_approve_refund, standard_queue, senior_agent or risk_review.")
    abuse_risk: float | None = Field(description="The account's serial-return score (null: no account known).")
    merchant_risk: float | None = Field(description="The merchant's complaint-risk percentile (null: unknown).")
    reasons: list[str]
    feature_sources: FeatureSources
    defaults_used: list[str] = Field(description="Online features filled with defaults, and why (empty: none).")


class TicketScore(TicketScoreItem):
    """Response of ``POST /v1/tickets/score``: the triage plus the pinned model versions that produced it."""

    model_versions: ModelVersions
    snapshot_generation: str | None = Field(None, description="The served snapshot generation this answer used "
                                            "(models/snapshots/generations/<id>; null: the flat snapshot folder).")


class TicketBatch(_In):
    """Request of ``POST /v1/tickets/score-batch``: up to ``AFTERSALES_MAX_BATCH_SIZE`` (10,000) tickets."""

    tickets: list[TicketIn] = Field(min_length=1)


class TicketBatchScores(BaseModel):
    """Response of ``POST /v1/tickets/score-batch``: one result per ticket, in request order."""

    count: int
    model_versions: ModelVersions
    snapshot_generation: str | None = Field(None, description="The served snapshot generation this answer used "
                                            "(models/snapshots/generations/<id>; null: the flat snapshot folder).")
    results: list[TicketScoreItem]


class ForecastRequest(_In):
    """Request of ``POST /v1/forecast``: the forecast covers the ``horizon`` days after ``origin``."""

    origin: Day = Field(description="Last day whose data may be used (YYYY-MM-DD).")
    horizon: int = Field(ge=1, le=366, description="Days to forecast after the origin.")
    series: list[str] | None = Field(
        None, max_length=1000, description="Series to return (e.g. 'total', 'channel=chat'); default: all.")


class ForecastDay(BaseModel):
    """P10/P50/P90 of one series on one day."""

    date: date
    series: str
    p10: float
    p50: float
    p90: float


class StaffingDay(BaseModel):
    """Agents to roster on one day and channel, at P50 and P90 volume."""

    date: date
    channel: str
    volume_p50: float
    volume_p90: float
    agents_p50: int
    agents_p90: int


class ForecastResponse(BaseModel):
    """Response of ``POST /v1/forecast``: daily quantiles per series and the staffing plan per channel."""

    origin: date
    horizon: int
    model_versions: ModelVersions
    history_end: date = Field(description="Last day of data the service holds (origins up to it are possible).")
    forecast: list[ForecastDay]
    staffing: list[StaffingDay]
    notes: list[str] = Field(description="Caveats, e.g. an event with no previous instance in the history.")


class FlaggedAccount(BaseModel):
    """One account in the risk team's review queue."""

    rank: int
    account_id: str
    score: float
    percentile: float | None
    likely_pattern: str | None
    reasons: list[str]
    slot: str | None = Field(None, description="Why it is in the queue: top score, pattern coverage, exploration.")


class FlaggedAccounts(BaseModel):
    """Response of ``GET /v1/accounts/flagged``: the queue in rank order, accounts already decided left out."""

    count: int
    already_decided: int = Field(description="Accounts kept out: confirmed abusers and recently cleared accounts.")
    model_versions: ModelVersions
    source: str = Field(description="File the queue was read from and when it was written.")
    snapshot_generation: str | None = Field(None, description="The served snapshot generation this answer used "
                                            "(models/snapshots/generations/<id>; null: the flat snapshot folder).")
    accounts: list[FlaggedAccount]


class DecisionIn(_In):
    """Request of ``POST /v1/accounts/{account_id}/decision``."""

    decision: Decision
    reviewer: str = _ID
    note: str | None = Field(None, max_length=2000)
    decided_at: Instant | None = Field(None, description="When it was decided (default: now); not in the future.")
    decision_id: str | None = Field(
        None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$",
        description="Idempotency key: a retry with the same key is stored once (default: a new random key).")


class DecisionOut(BaseModel):
    """The decision as stored (it feeds the next serial-returners training)."""

    decision_id: str
    account_id: str
    decision: Decision
    reviewer: str
    note: str | None
    decided_at: datetime
    recorded_at: datetime
    duplicate: bool = Field(description="True when this decision_id was already stored (nothing new was written).")


class MerchantRisk(BaseModel):
    """One merchant in the complaint-risk ranking."""

    rank: int
    merchant_id: str
    score: float
    percentile: float | None
    expected_complaints: float | None
    late_delivery_rate: float | None
    complaint_rate_90d: float | None
    reasons: list[str]


class MerchantRanking(BaseModel):
    """Response of ``GET /v1/merchants/risk``: riskiest first, ties broken by merchant_id."""

    count: int
    model_versions: ModelVersions
    snapshot: str
    snapshot_generation: str | None = Field(None, description="The served snapshot generation this answer used "
                                            "(models/snapshots/generations/<id>; null: the flat snapshot folder).")
    merchants: list[MerchantRisk]


class ModelStatus(BaseModel):
    """A model the service tried to load at start."""

    name: str
    loaded: bool
    version: int | None = None
    detail: str | None = Field(None, description="Why it is not loaded (what to run to fix it).")


class SnapshotStatus(BaseModel):
    """An online-feature snapshot the service loaded at start (the files of one kind, joined on the ID)."""

    name: str
    rows: int
    paths: list[str]
    written_at: datetime | None = Field(description="When the oldest of its files was written.")
    age_seconds: float | None = Field(None, description="Seconds since the oldest of its files was written.")
    as_of: str | None = Field(None, description="The data day its features were computed as of (generation "
                              "manifest; null: unknown).")
    model_version: int | None = Field(None, description="The model version these snapshots belong to.")
    problem: str | None = None


class Health(BaseModel):
    """Response of ``GET /v1/health``: pinned model versions, snapshots and the online store in use."""

    status: Literal["ok", "degraded"]
    models: list[ModelStatus]
    snapshots: list[SnapshotStatus]
    online_store: str
    snapshot_generation: str | None = Field(None, description="The generation served (null: flat snapshot folder).")
    generation_created_at: str | None = None
    generation_problem: str | None = Field(None, description="Why a newer generation could not be loaded (the "
                                           "previous one is still served).")


class ErrorBody(BaseModel):
    """Every error the API returns: a message for a person, and the offending fields where there are some."""

    error: str
    detail: list[dict] | None = None
