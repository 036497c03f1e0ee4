"""What the service does per request, and the routes BentoML's ``@bentoml.api`` cannot express.

:class:`Runtime` is loaded once per worker (by ``AfterSalesService.__init__``): every champion model by MLflow alias
``champion``, resolved to a version number and pinned; the online feature store; the triage policy. Its methods are
the endpoints' logic; ``serving/service.py`` only routes to them.

BentoML 1.4 APIs are POST-only and take no path parameters, so ``GET /v1/accounts/flagged``,
``GET /v1/merchants/risk``, ``POST /v1/accounts/{account_id}/decision`` and ``GET /v1/health`` live in the FastAPI
app :data:`api`, mounted into the BentoML service with ``@bentoml.asgi_app`` (same process, same middleware:
metrics, tracing, the OpenAPI page at ``/``).

Errors are JSON ``{"error": message, "detail": [...]}``: 4xx name the field or what to do, 503 names the model to
train; nothing returns a stack trace.
"""

from __future__ import annotations

import gc
import hmac
import json
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from features import catalogue
from features.settings import Settings
from serving import online_store as ostore
from serving.schemas import (
    DecisionIn,
    DecisionOut,
    FeatureSources,
    FlaggedAccount,
    FlaggedAccounts,
    ForecastDay,
    ForecastRequest,
    ForecastResponse,
    Health,
    MerchantRanking,
    MerchantRisk,
    ModelStatus,
    SnapshotStatus,
    StaffingDay,
    TicketBatchScores,
    TicketIn,
    TicketScore,
    TicketScoreItem,
)

log = logging.getLogger("aftersales.serving")

TICKET_TRIAGE, RETURN_VOLUME, SERIAL_RETURNERS, MERCHANT_RISK = (
    "ticket_triage", "return_volume", "serial_returners", "merchant_risk")
MODEL_NAMES = catalogue.NAMES  # every model the service loads (features/catalogue.py)
# The triage model's default flags (same names from score_one and score_batch) and what each means for a person.
DEFAULT_NOTES = (
    ("unknown_account", "account history: none on record, scored as a new account"),
    ("unknown_merchant", "merchant signals: unknown merchant (no recent orders)"),
    ("order_context_missing", "order context: order not in the snapshot (age, lateness, return reason unknown)"),
)
REQUIRED_TICKET_FIELDS = frozenset(f for f, info in TicketIn.model_fields.items() if info.is_required()) | {
    "account_id", "merchant_id", "order_id", "amount", "text"}  # contract columns, kept even when all null
# Generation thresholds once the loaded heap is frozen: young collections ~3x rarer than the default (700, 10, 10),
# each still under ~1 ms (measured at concurrency 16); 10,000 halves GC time but makes single pauses ~5 ms.
GC_THRESHOLD = (2_000, 20, 50)


class ApiError(Exception):
    """An error with an HTTP status and a message for the caller (never a stack trace)."""

    def __init__(self, status: int, message: str, detail: list[dict] | None = None):
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail

    def body(self) -> dict:
        """The JSON body of the error response."""
        return {"error": self.message} | ({"detail": self.detail} if self.detail else {})

    def response(self) -> JSONResponse:
        """The error as a response."""
        return JSONResponse(self.body(), status_code=self.status)


def unavailable(name: str, why: str) -> ApiError:
    """503 for an endpoint whose model is not loaded."""
    return ApiError(503, f"model '{name}' is not available: {why}")


# --------------------------------------------------------------------------------------------------------------------
# The runtime: models, online store and policy, loaded once


@dataclass(frozen=True)
class Served:
    """One served set: the pinned models and the online features of one snapshot generation.

    Swapped whole (one reference assignment in :class:`Runtime`): a request takes ``runtime.served`` once and uses
    only that, so no answer mixes two generations' models or snapshots.
    """

    generation: str | None  # models/snapshots/generations/<id>; None: the flat snapshot folder (no generation yet)
    models: dict[str, Any]  # name -> training.registry.LoadedModel
    problems: dict[str, str]  # name -> why it is not loaded
    store: ostore.OnlineStore | None
    snapshots: ostore.SnapshotStore | None
    manifest: dict = field(default_factory=dict)

    def model(self, name: str) -> Any:
        """The loaded model object of ``name``, or a 503 saying why it is not there."""
        loaded = self.models.get(name)
        if loaded is None:
            raise unavailable(name, self.problems.get(name, "not loaded"))
        return loaded.model

    def versions(self, *names: str) -> dict[str, int]:
        """Pinned versions of the named models that are loaded."""
        return {n: self.models[n].version for n in names if n in self.models}


def _check_loaded(name: str, loaded: Any) -> str | None:
    """Why a loaded version must not be served (None: it may): pickled by an older version of its class, or trained
    on other columns than this code builds (its answers would be wrong or fail)."""
    stale = _missing_params(loaded.model)
    mismatch = None if stale else signature_mismatch(name, loaded.input_columns)
    if not (stale or mismatch):
        return None
    why = (f"was saved by an older version of {type(loaded.model).__name__} (no {', '.join(stale[:3])})"
           if stale else
           f"was logged with a signature that does not match the features this service sends ({mismatch})")
    return f"v{loaded.version} {why}; retrain it with `aftersales train {catalogue.cli_name(name)}`"


def load_served(settings: Settings, previous: Served | None = None) -> Served:
    """The served set named by ``models/snapshots/CURRENT``: the model versions its manifest pins (the champion
    alias for models it does not pin) and its snapshot files. Models already loaded in ``previous`` at the same
    version are reused, not reloaded."""
    from features import generations
    from training import registry

    snapdir = settings.snapshots_dir
    gen = generations.current_id(snapdir)
    folder = generations.generation_dir(snapdir, gen) if gen else snapdir
    manifest = generations.read_manifest(folder) if gen else {}
    pins = {n: int(e["version"]) for n, e in manifest.get("models", {}).items() if e.get("version") is not None}
    models: dict[str, Any] = {}
    problems: dict[str, str] = {}
    champions: set[str] | None = None
    for name in MODEL_NAMES:
        t0 = time.perf_counter()
        before = previous.models.get(name) if previous is not None else None
        if before is not None and (name not in pins or before.version == pins[name]):
            models[name] = before
            continue
        if previous is not None and name not in pins:
            if name in previous.problems:
                problems[name] = previous.problems[name]
            continue
        try:
            if name in pins:
                loaded = registry.load_version(name, pins[name], settings=settings)
            else:
                if champions is None:
                    # Listing first: names without a champion are reported without touching MLflow further (and an
                    # absent SQLite store is not created just to find it empty).
                    listed = registry.list_models(settings)
                    champions = set(listed.loc[listed["aliases"].str.split(",").apply(
                        lambda a: registry.CHAMPION in a), "name"]) if not listed.empty else set()
                if name not in champions:
                    problems[name] = (f"no champion for '{name}' in {settings.tracking_uri}; "
                                      f"run `aftersales train {catalogue.cli_name(name)}`")
                    log.warning("serving: %s", problems[name])
                    continue
                loaded = registry.load_champion(name, settings=settings)
        except registry.ModelNotFound as e:  # the alias moved away between listing and loading
            problems[name] = str(e)
            log.warning("serving: %s", e)
            continue
        except Exception as e:  # a corrupt artifact must not take the other endpoints down
            problems[name] = f"failed to load ({type(e).__name__}: {e}); retrain or re-register it"
            log.exception("serving: loading %s failed", name)
            continue
        problem = _check_loaded(name, loaded)
        if problem:
            problems[name] = problem
            log.error("serving: %s", problem)
            continue
        models[name] = loaded
        log.info("serving: %s v%s loaded in %.1fs", name, loaded.version, time.perf_counter() - t0)
    store, snapshots = ostore.open_store(folder, settings.redis_url, prefix=manifest.get("redis_prefix"))
    return Served(gen, models, problems, store, snapshots, manifest)


@dataclass
class Runtime:
    """Everything a worker serves from: the served set (models + snapshots of one generation), swapped whole when
    ``models/snapshots/CURRENT`` changes (:meth:`start_watching`); request methods only read it."""

    settings: Settings
    served: Served | None = None
    decide: Callable | None = None
    decide_batch: Callable | None = None
    reviews: Any = None  # features.reviews module (decision store), when present
    policy_problem: str | None = None
    generation_problem: str | None = None  # why the newest generation could not be loaded
    _failed_generation: str | None = None  # not retried every poll: only when CURRENT names another one
    _history_cache: Any = None  # return-volume History, built on the first forecast request
    _history_lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _watcher: threading.Thread | None = None
    _retired: list = field(default_factory=list)  # stores of replaced generations, closed one swap later

    @classmethod
    def load(cls, settings: Settings) -> Runtime:
        """Load the served set (a missing model is recorded, not fatal) and the policy."""
        rt = cls(settings)
        rt.served = load_served(settings)
        try:
            from features import triage_policy

            rt.decide = triage_policy.decide
            rt.decide_batch = getattr(triage_policy, "decide_batch", None)
        except ImportError as e:
            rt.policy_problem = f"the triage policy is not in this build ({e})"
        try:
            from features import reviews

            rt.reviews = reviews
        except ImportError:
            rt.reviews = None
        return rt

    # ---------------------------------------------------------------- the served set and its swaps

    @property
    def models(self) -> dict[str, Any]:
        return self.served.models

    @property
    def problems(self) -> dict[str, str]:
        extra = {TICKET_TRIAGE: self.policy_problem} if self.policy_problem else {}
        return {**extra, **self.served.problems}

    @property
    def store(self) -> ostore.OnlineStore | None:
        return self.served.store

    @property
    def snapshots(self) -> ostore.SnapshotStore | None:
        return self.served.snapshots

    def refresh(self) -> bool:
        """Serve the generation CURRENT names if it is not the one served; True when a new one was swapped in.

        The new set is loaded completely before one reference assignment replaces the old; if it cannot be loaded,
        or a model the old set serves would be lost (its pinned version fails to load or no longer fits), the old one
        stays served and ``/v1/health`` says why (that generation is not retried until CURRENT names another).
        """
        from features import generations

        now = generations.current_id(self.settings.snapshots_dir)
        old = self.served
        if now == old.generation or now == self._failed_generation:
            return False
        try:
            new = load_served(self.settings, previous=old)
        except Exception as e:  # noqa: BLE001 — keep serving the old set, loudly
            self.generation_problem = f"generation {now} could not be loaded ({type(e).__name__}: {e})"
            self._failed_generation = now
            log.exception("serving: %s", self.generation_problem)
            return False
        lost = [n for n in old.models if n not in new.models]
        if lost:
            self.generation_problem = (f"generation {now} is not served (still {old.generation}): "
                                       + "; ".join(f"{n}: {new.problems.get(n, 'not loaded')}" for n in lost))
            self._failed_generation = now
            log.error("serving: %s", self.generation_problem)
            if new.store is not None:
                new.store.close()
            return False
        self.served = new  # the swap: one reference, so a request sees the old set or the new, never a mix
        self.generation_problem = None
        with self._history_lock:
            if new.models.get(RETURN_VOLUME) is not old.models.get(RETURN_VOLUME):
                self._history_cache = None
        for store in self._retired:  # closed one swap late: no request still holds them
            store.close()
        self._retired = [old.store] if old.store is not None and old.store is not new.store else []
        log.info("serving: now serving snapshot generation %s (was %s)", new.generation, old.generation)
        return True

    def start_watching(self, interval_s: float = 1.0) -> None:
        """Poll ``models/snapshots/CURRENT`` every ``interval_s`` seconds in a daemon thread and swap on change."""
        if self._watcher is not None or interval_s <= 0:
            return

        def watch() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.refresh()
                except Exception:  # noqa: BLE001 — the watcher must outlive one bad poll
                    log.exception("serving: snapshot generation poll failed")

        self._watcher = threading.Thread(target=watch, name="snapshot-generation-watcher", daemon=True)
        self._watcher.start()

    # ---------------------------------------------------------------- helpers

    def model(self, name: str) -> Any:
        """The loaded model object of ``name``, or a 503 saying why it is not there."""
        return self.served.model(name)

    def versions(self, *names: str) -> dict[str, int]:
        """Pinned versions of the named models that are loaded."""
        return self.served.versions(*names)

    def close(self) -> None:
        """Stop watching and release the online stores' connections."""
        self._stop.set()
        for store in [*self._retired, self.served.store if self.served else None]:
            if store is not None:
                store.close()

    # ---------------------------------------------------------------- tickets

    def _check_triage(self, s: Served) -> Any:
        model = s.model(TICKET_TRIAGE)
        if self.decide is None:
            raise unavailable(TICKET_TRIAGE, self.policy_problem or "no triage policy")
        return model

    def score_ticket(self, ticket: TicketIn) -> TicketScore:
        """Triage one ticket: online features, escalation probability, policy; no pandas on this path."""
        s = self.served  # one served set for the whole request
        model = self._check_triage(s)
        t = ticket.__dict__  # the validated fields as a plain dict (read only)
        found = s.store.lookup(t["account_id"], t["merchant_id"], t["order_id"])
        scored = model.score_one(t, found.account, found.merchant, found.order)
        item = self._triage(t, scored["escalation_probability"], scored["reasons"], scored, found.account,
                            found.merchant, (found.account_source, found.merchant_source, found.order_source))
        return TicketScore(**item, model_versions=self._ticket_versions(s), snapshot_generation=s.generation)

    @staticmethod
    def _ticket_versions(s: Served) -> dict[str, int]:
        return s.versions(TICKET_TRIAGE, SERIAL_RETURNERS, MERCHANT_RISK)

    def _triage(self, t: dict, p: float, model_reasons: Sequence[str], flags: Any, account: dict | None,
                merchant: dict | None, sources: tuple[str, str, str]) -> dict:
        """The policy on top of a model score, and the response fields (shared by single and batch scoring)."""
        abuse = account.get("abuse_score") if account else None
        mrisk = merchant.get("merchant_risk_percentile") if merchant else None
        priority, action, policy_reasons = self.decide(p, abuse, mrisk, t["amount"], t["case_type"], self.settings)
        defaults = [text for flag, text in DEFAULT_NOTES if flags[flag]]
        if abuse is None and t["account_id"]:
            defaults.append("abuse risk: account not in the serial-returner snapshot")
        if mrisk is None and t["merchant_id"]:
            defaults.append("merchant risk: merchant not in the merchant-risk snapshot")
        return {
            "ticket_id": t["ticket_id"], "escalation_probability": p, "priority": priority, "action": action,
            "abuse_risk": abuse, "merchant_risk": mrisk, "reasons": [*policy_reasons, *model_reasons],
            "feature_sources": FeatureSources(account=sources[0], merchant=sources[1], order=sources[2]),
            "defaults_used": defaults,
        }

    def score_batch(self, tickets: Sequence[TicketIn]) -> TicketBatchScores:
        """Triage many tickets with the vectorised path (one model call for the whole batch)."""

        if len(tickets) > self.settings.max_batch_size:
            raise ApiError(413, f"tickets: {len(tickets):,} tickets is more than the limit of "
                                f"{self.settings.max_batch_size:,} per request; split the batch")
        s = self.served  # one served set for the whole request
        model = self._check_triage(s)
        rows = [t.__dict__ for t in tickets]
        found = {}
        for kind in ostore.KINDS:
            ids = [r[ostore.KEYS[kind]] for r in rows]
            distinct = list(dict.fromkeys(ids))  # each account/merchant/order looked up once per batch
            recs, srcs = s.store.records(kind, distinct)
            by_id = dict(zip(distinct, zip(recs, srcs, strict=True), strict=True))
            found[kind] = ([by_id[k][0] for k in ids], [by_id[k][1] for k in ids],
                           _records_frame(ostore.KEYS[kind], distinct, recs))
        scored = model.score_batch(_tickets_frame(rows), found[ostore.ACCOUNTS][2], found[ostore.MERCHANTS][2],
                                   found[ostore.ORDERS][2])
        probs = scored["escalation_probability"].to_numpy(dtype=float).tolist()
        flags = scored[[f for f, _ in DEFAULT_NOTES]].to_dict("records")
        acc, mer, order = (found[k] for k in ostore.KINDS)
        results = [
            TicketScoreItem(**self._triage(r, p, why, fl, a, m, (sa, sm, so)))
            for r, p, why, fl, a, m, sa, sm, so in zip(rows, probs, scored["reasons"].tolist(), flags, acc[0], mer[0],
                                                       acc[1], mer[1], order[1], strict=True)
        ]
        return TicketBatchScores(count=len(results), model_versions=self._ticket_versions(s),
                                 snapshot_generation=s.generation, results=results)

    # ---------------------------------------------------------------- forecast

    def forecast(self, req: ForecastRequest) -> ForecastResponse:
        """Daily P10/P50/P90 per series for the ``horizon`` days after ``origin`` and agents per day and channel.

        The model forecasts from the daily history up to the origin, read from the data folder
        (``AFTERSALES_DATA_DIR``) on the first forecast request and kept; every series is forecast so the staffing
        plan always sees the channel series, and ``series`` only filters what is returned.
        """
        s = self.served
        model = s.model(RETURN_VOLUME)  # before the imports: a missing model answers at once
        from features.return_volume import HistoryError
        from features.staffing import staffing_plan

        history = self._history(model.market)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                fc = model.forecast(history, origin=req.origin, horizon=req.horizon)
            except HistoryError as e:
                raise ApiError(422, f"origin: {e}") from None
            except ValueError as e:  # origin before the model's training end, horizon beyond the trained one
                field_name = "horizon" if "horizon" in str(e) else "origin"
                raise ApiError(422, f"{field_name}: {e}") from None
        known = list(dict.fromkeys(fc["series"].astype(str)))
        unknown = [s for s in (req.series or []) if s not in known]
        if unknown:
            raise ApiError(422, f"series: unknown series {', '.join(unknown[:5])}; this model forecasts "
                                f"{', '.join(known[:30])}")
        plan = staffing_plan(fc)
        shown = fc if not req.series else fc[fc["series"].astype(str).isin(req.series)]
        days = [ForecastDay(date=_day(r.date), series=str(r.series), p10=float(r.p10), p50=float(r.p50),
                            p90=float(r.p90)) for r in shown.itertuples(index=False)]
        staff = [StaffingDay(date=_day(r.date), channel=str(r.channel), volume_p50=float(r.volume_p50),
                             volume_p90=float(r.volume_p90), agents_p50=int(r.agents_p50),
                             agents_p90=int(r.agents_p90)) for r in plan.itertuples(index=False)]
        # Caveats for planners (e.g. an event never seen before), not library deprecation chatter.
        notes = list(dict.fromkeys(str(w.message) for w in caught
                                   if not issubclass(w.category, DeprecationWarning | FutureWarning)))
        return ForecastResponse(origin=req.origin, horizon=req.horizon, model_versions=s.versions(RETURN_VOLUME),
                                history_end=_day(history.days[-1]), forecast=days, staffing=staff, notes=notes)

    def _history(self, market: str):
        """The return-volume history of the data folder, built once (first forecast request) and kept."""
        from features.contract import ContractError
        from features.return_volume import load_history

        with self._history_lock:
            if self._history_cache is not None:
                return self._history_cache
            data_dir = self.settings.data_dir
            if not data_dir.is_dir():
                raise ApiError(503, f"forecasts need the data folder {data_dir} (AFTERSALES_DATA_DIR), which does "
                                    "not exist on this server")
            t0 = time.perf_counter()
            try:
                history, ds = load_history(data_dir, market)
            except ContractError as e:
                raise ApiError(503, f"forecasts need a readable data folder: {e}") from None
            log.info("serving: return-volume history of %s loaded in %.1fs (%d days, %d rows rejected)", data_dir,
                     time.perf_counter() - t0, len(history.days), getattr(ds, "n_rejected", 0))
            self._history_cache = history
            return history

    # ---------------------------------------------------------------- review queue and decisions

    @staticmethod
    def _accounts_table(s: Served) -> ostore.SnapshotTable:
        s.model(SERIAL_RETURNERS)
        table = s.snapshots.accounts if s.snapshots else None
        if table is None:
            why = (s.snapshots.errors.get(ostore.ACCOUNTS) if s.snapshots else None) or "no snapshot"
            raise unavailable(SERIAL_RETURNERS, f"no account snapshot ({why})")
        return table

    def flagged(self, limit: int) -> FlaggedAccounts:
        """The review queue, minus accounts the team has decided on since it was written.

        Served from the queue serial-returners training writes (``account_queue.parquet``: top scores plus pattern
        coverage and exploration slots); without it, from the accounts snapshot's highest scores. Left out, as
        training's queue does: confirmed abusers, and accounts cleared within ``serial_review_cooldown_days``.
        """
        s = self.served
        table = self._accounts_table(s)
        decided = self._decided_accounts()
        queue = s.snapshots.queue
        if queue is not None:
            rows = [(r["account_id"], r) for r in queue if r["account_id"] not in decided][:limit]
            source = f"{ostore.QUEUE_FILE} in {s.snapshots.snapshots_dir} (written " \
                     f"{s.snapshots.queue_written_at.isoformat(timespec='seconds')})"
        else:
            rows = table.top(limit, skip=decided)
            source = table.describe()
        accounts = []
        for i, (k, r) in enumerate(rows, start=1):
            snap = table.get(k) or {}
            accounts.append(FlaggedAccount(
                rank=i, account_id=k, score=float(_first(r.get("score"), r.get("abuse_score"), 0.0)),
                percentile=snap.get("abuse_percentile"),
                likely_pattern=_first(r.get("likely_pattern"), snap.get("likely_pattern")),
                reasons=_as_list(_first(r.get("reasons"), r.get("top_reason"))), slot=r.get("slot")))
        return FlaggedAccounts(count=len(accounts), already_decided=len(decided), source=source,
                               model_versions=s.versions(SERIAL_RETURNERS), snapshot_generation=s.generation,
                               accounts=accounts)

    def _decided_accounts(self) -> set[str]:
        """Accounts kept out of the queue: confirmed abusers, and accounts cleared within the cooldown."""
        if self.reviews is None:
            return set()
        labels = self.reviews.decision_labels(self.reviews.list_decisions(settings=self.settings))
        recent = labels["decided_at"] >= datetime.now(UTC) - timedelta(days=self.settings.serial_review_cooldown_days)
        return set(labels.loc[(labels["label"] == 1) | recent, "account_id"].astype(str))

    def record_decision(self, account_id: str, body: DecisionIn) -> DecisionOut:
        """Persist one review decision (one transaction, idempotent on decision_id) through features.reviews."""
        if self.reviews is None:
            raise ApiError(503, "the review decision store (features/reviews.py) is not in this build")
        table = self._accounts_table(self.served)
        if account_id not in table:
            raise ApiError(404, f"account_id: unknown account '{account_id}' (not in {table.describe()}); "
                                "decide only on accounts the queue showed")
        try:
            stored = self.reviews.record_decision(
                account_id, body.decision, body.reviewer, body.note, decided_at=body.decided_at,
                decision_id=body.decision_id, known_accounts=table, source="api", settings=self.settings)
        except self.reviews.DecisionError as e:
            raise ApiError(409 if "already used" in str(e) else 422, str(e)) from None
        log.info("review decision %s on account %s by %s (%s)", body.decision, account_id, body.reviewer,
                 "duplicate" if stored["duplicate"] else "stored")
        return DecisionOut(decision_id=stored["decision_id"], account_id=account_id, decision=stored["decision"],
                           reviewer=stored["reviewer"], note=stored["note"], decided_at=stored["decided_at"],
                           recorded_at=stored["recorded_at"], duplicate=stored["duplicate"])

    # ---------------------------------------------------------------- merchants and health

    def merchants(self, limit: int) -> MerchantRanking:
        """The merchant complaint-risk ranking from the latest snapshot."""
        s = self.served
        s.model(MERCHANT_RISK)
        table = s.snapshots.merchants if s.snapshots else None
        if table is None:
            why = (s.snapshots.errors.get(ostore.MERCHANTS) if s.snapshots else None) or "no snapshot"
            raise unavailable(MERCHANT_RISK, f"no merchant snapshot ({why})")
        out = [MerchantRisk(rank=i, merchant_id=k, score=float(r.get("merchant_risk_score") or 0.0),
                            percentile=r.get("merchant_risk_percentile"),
                            expected_complaints=r.get("expected_complaints"),
                            late_delivery_rate=r.get("late_delivery_rate"),
                            complaint_rate_90d=r.get("complaint_rate_90d"), reasons=_as_list(r.get("top_reason")))
               for i, (k, r) in enumerate(table.top(limit), start=1)]
        return MerchantRanking(count=len(out), model_versions=s.versions(MERCHANT_RISK),
                               snapshot=table.describe(), snapshot_generation=s.generation, merchants=out)

    def health(self) -> Health:
        """Model versions, snapshots and the store in use; 'degraded' when a model, a snapshot or Redis is missing."""
        s = self.served
        problems = self.problems
        models = [ModelStatus(name=n, loaded=n in s.models, version=s.models[n].version if n in s.models
                              else None, detail=problems.get(n)) for n in MODEL_NAMES]
        snaps = []
        now = datetime.now(UTC)
        entries = s.manifest.get("models", {})
        owner = {f: name for name, e in entries.items() for f in e.get("files", {})}
        for kind, table in (s.snapshots.tables.items() if s.snapshots else []):
            problem = s.snapshots.errors.get(kind)
            # The model whose training (or refresh) wrote this kind's first file: its version and as-of day.
            entry = entries.get(owner.get(table.paths[0].name, ""), {}) if table and table.paths else {}
            snaps.append(SnapshotStatus(name=kind, rows=len(table) if table else 0,
                                        paths=[str(p) for p in table.paths] if table else [],
                                        written_at=table.written_at if table else None,
                                        age_seconds=round((now - table.written_at).total_seconds(), 1)
                                        if table and table.written_at else None,
                                        as_of=entry.get("as_of") or None, model_version=entry.get("version"),
                                        problem=problem))
        store = s.store.kind if s.store is not None else "none"
        if isinstance(s.store, ostore.RedisStore) and not s.store.ping():
            store += " (not answering: lookups use the local snapshots or defaults)"
            ok = False
        else:
            ok = True
        ok = (ok and all(m.loaded for m in models) and not problems and not any(x.problem for x in snaps)
              and self.generation_problem is None)
        return Health(status="ok" if ok else "degraded", models=models, snapshots=snaps, online_store=store,
                      snapshot_generation=s.generation, generation_created_at=s.manifest.get("created_at"),
                      generation_problem=self.generation_problem)

    def warm_up(self) -> None:
        """Score one synthetic ticket so lazy imports and caches exist before the heap is frozen."""
        if TICKET_TRIAGE not in self.served.models or self.decide is None:
            return
        probe = TicketIn(ticket_id="warm-up", created_at=datetime.now(UTC), case_type="refund", channel="chat",
                         amount=10.0, text="warm up")
        try:
            self.score_ticket(probe)
        except Exception:  # a warm-up failure shows on the first real request with its proper error
            log.exception("serving: warm-up scoring failed")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _utc_times(values: Sequence[datetime | None]):
    """Aware (or naive = UTC) datetimes as a ``datetime64[us, UTC]`` array, exactly, via integer microseconds.

    pandas parses a column of ``datetime`` objects one by one and hashes them (~60 ms per 10,000); this is ~5 ms.
    """
    import pandas as pd

    ints = pd.array([None if v is None else ((v if v.tzinfo else v.replace(tzinfo=UTC)) - _EPOCH) // _MICROSECOND
                     for v in values], dtype="Int64")
    return pd.to_datetime(ints, unit="us", utc=True).astype("datetime64[us, UTC]")


def _with_times(frame):
    """``frame`` with its columns of datetimes converted by :func:`_utc_times` (other columns untouched)."""
    for col in frame.columns:
        if frame[col].dtype == object:
            first = next((v for v in frame[col] if v is not None), None)
            if isinstance(first, datetime):
                frame[col] = _utc_times(frame[col].tolist())
    return frame


def _tickets_frame(rows: Sequence[dict]):
    """Validated tickets as a frame, timestamps as ``datetime64[us, UTC]``; optional fields nobody sent are left
    out (an all-null column would override the order snapshot's typed columns with slow object columns)."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    empty = [c for c in frame.columns if c not in REQUIRED_TICKET_FIELDS and frame[c].isna().all()]
    return _with_times(frame.drop(columns=empty))


def _records_frame(key: str, ids: Sequence[str | None], records: Sequence[dict | None]):
    """The found records of a batch as one frame keyed by ID (one row per distinct ID), timestamps typed."""
    import pandas as pd

    seen: dict[str, dict] = {}
    for k, r in zip(ids, records, strict=True):
        if r is not None and k not in seen:
            seen[k] = {key: k, **r}
    return _with_times(pd.DataFrame(list(seen.values()), columns=None if seen else [key]))


def _missing_params(model: Any) -> list[str]:
    """Constructor parameters the object lacks (scikit-learn contract: ``__init__`` stores each one as is).

    A model pickled before its class gained a parameter has none of it, and fails later in the middle of a request.
    """
    import inspect

    try:
        params = inspect.signature(type(model).__init__).parameters
    except (TypeError, ValueError):
        return []
    return [p for p, v in params.items() if p != "self" and v.kind is v.POSITIONAL_OR_KEYWORD
            and not hasattr(model, p)]


def served_features(name: str) -> tuple[str, ...]:
    """The columns this code builds for (or, for snapshot-served models, scored with) model ``name``: what its
    logged MLflow signature must list."""
    if name == TICKET_TRIAGE:
        from features.tickets import FEATURES
    elif name == SERIAL_RETURNERS:
        from features.accounts import FEATURES
    elif name == MERCHANT_RISK:
        from features.merchants import FEATURES
    elif name == RETURN_VOLUME:
        from features.return_volume import FEATURES

        return (*FEATURES, "scale", "prior")  # predict() also takes each row's scale and prior
    else:
        raise KeyError(name)
    return tuple(FEATURES)


def signature_mismatch(name: str, logged: Sequence[str] | None) -> str:
    """What differs between a champion's logged input columns and :func:`served_features` ('' when they match)."""
    if logged is None:
        return "no signature was logged"
    expected = served_features(name)
    missing = [c for c in expected if c not in set(logged)]
    extra = [c for c in logged if c not in set(expected)]

    def some(cols: list[str]) -> str:
        return ", ".join(cols[:8]) + (f" and {len(cols) - 8} more" if len(cols) > 8 else "")

    return "; ".join(([f"missing {some(missing)}"] if missing else []) +
                     ([f"unexpected {some(extra)}"] if extra else []))


def _first(*values: Any) -> Any:
    """The first value that is not None."""
    return next((v for v in values if v is not None), None)


def _as_list(value: Any) -> list[str]:
    """Reasons as a list of strings (a snapshot holds one string, a model may give a list or '; '-joined text)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [s for s in value.split("; ") if s]
    return [str(v) for v in value if v]


def _day(value: Any) -> date:
    return value.date() if hasattr(value, "date") and callable(value.date) else date.fromisoformat(str(value)[:10])


HEALTH_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/v1/health"})  # open even when API keys are set
UI_PREFIX = "/ui"  # the browser pages (serving/ui.py): their own login (session cookie) and CSRF-checked forms
REAL_PATH = "aftersales.real_path"  # scope key: the request path while the metrics middleware sees the template
UNMATCHED = "/{unmatched}"  # the metrics label of every path that is no route (404s)


def route_labeler(static: Sequence[str], templated: Sequence[Any]) -> Callable[[str], str]:
    """A function from request path to metrics label: static routes as they are, templated routes as their
    template (``/v1/accounts/{account_id}/decision``), anything else :data:`UNMATCHED`; so the number of metric
    series is bounded by the number of routes, whatever paths clients send. ``templated``: (regex, template)."""
    known = frozenset(static)

    def label(path: str) -> str:
        if path in known:
            return path
        for regex, template in templated:
            if regex.match(path):
                return template
        return UNMATCHED

    return label


BENTOML_PATHS = ("/", "/docs.json", "/schema.json", "/livez", "/readyz", "/healthz", "/metrics")


def service_labeler(native_routes: Sequence[str]) -> Callable[[str], str]:
    """:func:`route_labeler` for this service: BentoML's own pages, its API routes, and the mounted FastAPI routes."""
    import re

    static, templated = [*BENTOML_PATHS, *native_routes], [(re.compile(r"^/static_content/"), "/static_content/")]
    for route in api.routes:
        path = getattr(route, "path", None)
        if path is None:
            continue
        if "{" in path:
            templated.append((route.path_regex, path))
        else:
            static.append(path)
    return route_labeler(static, templated)


def label_metrics_by_route(label: Callable[[str], str]) -> None:
    """Make BentoML's request metrics label by route instead of by raw path.

    BentoML 1.4's ``RunnerTrafficMetricsMiddleware`` uses ``scope["path"]`` as the ``endpoint`` label, so each
    account ID posted to ``/v1/accounts/{id}/decision`` (and each random 404 path) adds series to ``/metrics`` for
    the life of the process: memory and scrape size grow without bound. The patched middleware sees the route
    label as the path; :class:`GuardMiddleware` (inner) puts the real path back before routing.
    """
    check_bentoml_internals()
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    middleware = RunnerTrafficMetricsMiddleware
    original = getattr(middleware, "_aftersales_original", middleware.__call__)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] != "/metrics":
            path = scope["path"]
            shown = label(path)
            if shown != path:
                scope = dict(scope, path=shown, **{REAL_PATH: path})
        return await original(self, scope, receive, send)

    middleware._aftersales_original = original
    middleware.__call__ = __call__


class GuardMiddleware:
    """API keys and a body size limit for every route (ASGI middleware added to the BentoML service).

    - With ``AFTERSALES_API_KEYS`` set (a JSON list), every route but health needs ``X-API-Key: <key>`` or
      ``Authorization: Bearer <key>``; keys are compared in constant time and never logged.
    - A body larger than ``AFTERSALES_MAX_BODY_BYTES`` is refused with 413 before it is read (declared length) or
      as soon as it passes the limit (chunked upload).
    - A body that is not JSON (form, multipart, text) is refused with 415.
    - ``/ui/`` (the browser pages, :mod:`serving.ui`) is left to its own login and CSRF checks, and may post forms;
      the body size limit applies to it too.
    - Puts back the real path where :func:`label_metrics_by_route` handed BentoML's metrics the route template.
    Settings are read when the worker builds its app, not at import.
    """

    def __init__(self, app) -> None:
        from features.settings import get_settings

        settings = get_settings()
        self.app = app
        self.keys = [k.encode() for k in settings.api_keys if k]
        self.max_body = settings.max_body_bytes

    def _authorized(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        given = b""
        for name, value in headers:
            if name == b"x-api-key":
                given = value.strip()
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                given = given or value[7:].strip()
        ok = False
        for key in self.keys:  # every key compared: the time taken says nothing about which one nearly matched
            ok |= hmac.compare_digest(given, key)
        return ok

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        real_path = scope.pop(REAL_PATH, None)
        if real_path is not None:  # the metrics middleware saw the route template; routing needs the real path
            scope["path"] = real_path
        headers = scope["headers"]
        path = scope["path"]
        ui = path == UI_PREFIX or path.startswith(UI_PREFIX + "/")  # serving/ui.py checks its session and CSRF
        if self.keys and not ui and path not in HEALTH_PATHS and not self._authorized(headers):
            return await _reject(send, 401, "missing or invalid API key: send it in the X-API-Key header")
        if scope["method"] in ("POST", "PUT", "PATCH") and not ui:
            ctype = next((v for k, v in headers if k == b"content-type"), None)
            media = ctype.split(b";", 1)[0].strip().lower() if ctype is not None else b"application/json"
            if media != b"application/json" and not media.endswith(b"+json"):
                # BentoML would otherwise parse forms and multipart bodies (and fetch URLs found in file fields).
                return await _reject(send, 415, "request bodies are JSON: send Content-Type: application/json")
        declared = next((v for k, v in headers if k == b"content-length"), None)
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_body:
                return await _reject(send, 413, f"request body over the limit of {self.max_body:,} bytes "
                                                "(AFTERSALES_MAX_BODY_BYTES); split the batch")
            return await self.app(scope, receive, send)
        # No declared length (chunked upload): read up to the limit here, then hand the body on in one piece.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            size += len(message.get("body", b""))
            if size > self.max_body:
                return await _reject(send, 413, f"request body over the limit of {self.max_body:,} bytes "
                                                "(AFTERSALES_MAX_BODY_BYTES); split the batch")
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


async def _reject(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                + ([(b"www-authenticate", b"Bearer")] if status == 401 else [])})
    await send({"type": "http.response.body", "body": body})


BENTOML_PATCHED = "1.4"  # the BentoML series whose private internals the patches below were written against


def check_bentoml_internals() -> None:
    """Refuse to start, naming the installed BentoML, if the private pieces patched below are not where they were.

    :func:`cancel_timeout_timers` and :func:`label_metrics_by_route` replace methods of BentoML 1.4 private
    classes, and :func:`quiet_client_errors` filters a private logger; pyproject.toml bounds ``bentoml<1.5``. A
    release that moved them would otherwise fail on the first request, or silently drop the fixes.
    """
    import importlib
    import inspect

    import bentoml

    moved = []

    def find(module: str, name: str | None = None) -> Any:
        try:
            found = importlib.import_module(module)
            return getattr(found, name) if name else found
        except (ImportError, AttributeError):
            moved.append(f"{module}{'.' + name if name else ''}")
            return None

    timeout = find("bentoml._internal.server.http.traffic", "TimeoutMiddleware")
    if timeout is not None:
        if not callable(getattr(timeout, "_set_timer_out", None)):
            moved.append("TimeoutMiddleware._set_timer_out")
        if "timeout" not in inspect.signature(timeout.__init__).parameters:
            moved.append("TimeoutMiddleware(app, timeout)")
    metrics = find("bentoml._internal.server.http.instruments", "RunnerTrafficMetricsMiddleware")
    for cls in (timeout, metrics):
        if cls is not None and list(inspect.signature(getattr(cls, "_aftersales_original", cls.__call__))
                                    .parameters)[1:] != ["scope", "receive", "send"]:
            moved.append(f"{cls.__name__}.__call__(scope, receive, send)")
    find("bentoml._internal.server.http_app")
    if moved:
        raise RuntimeError(
            f"BentoML {bentoml.__version__} is installed, but serving/app.py patches BentoML {BENTOML_PATCHED} "
            f"internals that are not there in it: {', '.join(moved)}. Install the version pyproject.toml names "
            f"(bentoml>=1.4.30,<1.5, as pinned in requirements.lock) or port the patches in serving/app.py.")


def cancel_timeout_timers() -> None:
    """Make BentoML's request-timeout middleware cancel its timer when the request finishes.

    BentoML 1.4's ``TimeoutMiddleware`` schedules ``loop.call_later(timeout, ...)`` per request and never cancels
    it, so every request leaves a timer, a future and its captured context alive for ``traffic.timeout`` seconds
    (120 s here: ~600k tracked objects at 1,000 requests/s). They pile up in the event loop's heap, get promoted
    through the GC generations and make young collections take milliseconds (measured: 11k timers after 10 s of
    load, gen-0 pauses up to 12 ms). Same behaviour otherwise: a request still gets a 504 after the timeout.
    """
    import asyncio

    check_bentoml_internals()
    from bentoml._internal.server.http import traffic

    middleware = traffic.TimeoutMiddleware
    if getattr(middleware, "_cancels_timer", False):
        return

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            await waiter
        except TimeoutError:
            if fut.cancel():
                resp = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                    status_code=504)
                await resp(scope, receive, send)
        else:
            await fut
        finally:
            timer.cancel()

    middleware.__call__ = __call__
    middleware._cancels_timer = True


class _ClientErrorFilter(logging.Filter):
    """Turns BentoML's ERROR-with-traceback for each request that fails validation into one WARNING line.

    Those are the client's mistakes, answered 400 with the details; a traceback per bad request lets anyone fill
    the log, and pydantic's message quotes the submitted values into it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ == "ValidationError" and record.msg.startswith("Exception on"):
            fields = sorted({".".join(str(x) for x in e.get("loc", ())) or "body" for e in exc.errors()})
            record.msg, record.args = "invalid request on %s [%s] answered 400: %s", (
                *record.args[:2], ", ".join(fields[:10]))
            record.levelno, record.levelname, record.exc_info, record.exc_text = (
                logging.WARNING, "WARNING", None, None)
        return True


def quiet_client_errors() -> None:
    """Install :class:`_ClientErrorFilter` on BentoML's HTTP app logger (once per worker, after logging is set)."""
    logger = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, _ClientErrorFilter) for f in logger.filters):
        logger.addFilter(_ClientErrorFilter())


def die_with_parent() -> None:
    """Linux: have the kernel send this worker SIGTERM when the ``bentoml serve`` process that started it dies.

    BentoML's process manager (circus) starts each worker in its own session, so killing the server's process
    group with SIGKILL (a crash, the OOM killer, ``kill -9``) left the worker running: still bound to the port,
    serving the old model versions with no supervisor, and in the way of the restarted service. With this the
    worker finishes its in-flight requests and exits. No-op elsewhere.
    """
    import os
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, signal.SIGTERM, 0, 0, 0) != 0:  # 1 = PR_SET_PDEATHSIG
        log.warning("serving: prctl(PR_SET_PDEATHSIG) failed (errno %d); an orphaned worker will not exit by itself",
                    ctypes.get_errno())
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def bind_apis_once(instance: Any, service: Any) -> None:
    """Bind each BentoML API method of ``instance`` once instead of on every request.

    BentoML 1.4 answers a request with ``getattr(instance, api).local``: the descriptor re-inspects the method's
    signature, wraps it, and builds a remote-proxy method it does not use, every time (~25 us of a ~300 us request,
    measured in-process). An instance attribute with the same callable shadows the descriptor. Skipped (BentoML's own
    per-request binding stays) if this BentoML has no ``_local_call``.
    """
    for name, method in service.apis.items():
        make = getattr(method, "_local_call", None)
        if make is None:
            log.info("serving: this BentoML binds APIs per request (no _local_call); leaving it so")
            return
        local = make(instance)
        local.local = local
        instance.__dict__[name] = local


def tune_gc() -> None:
    """Freeze what loading created and collect young objects less often.

    Loading MLflow, pandas, LightGBM and BentoML leaves millions of long-lived objects; a full collection walks
    them all (hundreds of ms on 2 cores: the p99 spikes). Frozen objects are never walked again.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


# --------------------------------------------------------------------------------------------------------------------
# The FastAPI routes mounted into the BentoML service

api = FastAPI(title="aftersales (mounted routes)", docs_url=None, redoc_url=None, openapi_url=None)
_runtime: Runtime | None = None


def install(runtime: Runtime | None) -> None:
    """Make ``runtime`` the one the mounted routes serve from (called by the BentoML service at start)."""
    global _runtime
    _runtime = runtime


async def current_runtime() -> Runtime:
    """The installed runtime (async: a sync dependency would cost a thread hop per request)."""
    if _runtime is None:
        raise ApiError(503, "the service is still starting; retry in a few seconds")
    return _runtime


def _field_errors(errors: Sequence[dict]) -> tuple[str, list[dict]]:
    detail = [{"loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in errors]
    fields = "; ".join(f"{'.'.join(d['loc'][1:] or d['loc'])}: {d['msg']}" for d in detail[:5])
    return f"invalid request: {fields}", detail


@api.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return exc.response()


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    message, detail = _field_errors(exc.errors())
    return JSONResponse({"error": message, "detail": detail}, status_code=400)  # as BentoML's own routes answer


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("serving: %s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal error; the server log has the details"}, status_code=500)


@api.get("/v1/accounts/flagged", response_model=FlaggedAccounts, tags=["accounts"])
def flagged_accounts(limit: int | None = Query(None, ge=1, le=10_000, description="Queue length (default: "
                                                     "AFTERSALES_REVIEW_CAPACITY)."),
                           rt: Runtime = Depends(current_runtime)) -> FlaggedAccounts:
    """The serial-returner review queue, sized to the team's capacity, with reasons and likely pattern."""
    return rt.flagged(limit or rt.settings.review_capacity)


@api.post("/v1/accounts/{account_id}/decision", response_model=DecisionOut, status_code=201, tags=["accounts"],
          responses={200: {"model": DecisionOut, "description": "Already stored under this decision_id."}})
def record_decision(body: DecisionIn, response: Response, account_id: str = Path(min_length=1, max_length=128),
                    rt: Runtime = Depends(current_runtime)) -> DecisionOut:
    """Record the risk team's decision on an account (one transaction; it feeds the next training).

    Sync on purpose: the database write runs in FastAPI's thread pool, not on the event loop.
    """
    out = rt.record_decision(account_id, body)
    if out.duplicate:
        response.status_code = 200
    return out


@api.get("/v1/merchants/risk", response_model=MerchantRanking, tags=["merchants"])
async def merchant_risk(limit: int = Query(50, ge=1, le=100_000, description="Merchants to return."),
                        rt: Runtime = Depends(current_runtime)) -> MerchantRanking:
    """Merchants ranked by complaint risk in the coming period, with expected complaints and reasons."""
    return rt.merchants(limit)


@api.get("/v1/health", response_model=Health, tags=["health"])
async def health(rt: Runtime = Depends(current_runtime)) -> Health:
    """Pinned model versions, loaded snapshots and the online store (BentoML's /livez and /readyz also exist)."""
    return rt.health()
