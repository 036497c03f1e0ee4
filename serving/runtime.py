"""What the service does per request: :class:`Runtime`, loaded once per worker.

The runtime holds the served set (:class:`serving.served.Served`: every champion model pinned to its version and the
online features of one snapshot generation), swapped whole when ``models/snapshots/CURRENT`` changes, and the
triage policy. Its methods are the endpoints' logic; ``serving/service.py`` (BentoML APIs) and
``serving/routes.py`` (mounted FastAPI routes) only route to them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from features.live_counts import fill_frame, fill_one
from features.settings import Settings
from serving import online_store as ostore
from serving.errors import ApiError, unavailable
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
from serving.served import (
    MERCHANT_RISK,
    MODEL_NAMES,
    RETURN_VOLUME,
    SERIAL_RETURNERS,
    TICKET_TRIAGE,
    Served,
    load_served,
)

log = logging.getLogger("aftersales.serving")

REQUIRED_TICKET_FIELDS = frozenset(f for f, info in TicketIn.model_fields.items() if info.is_required()) | {
    "account_id", "merchant_id", "order_id", "amount", "text"}  # contract columns, kept even when all null


@dataclass
class Runtime:
    """Everything a worker serves from: the served set (models + snapshots of one generation), swapped whole when
    ``models/snapshots/CURRENT`` changes (:meth:`start_watching`); request methods only read it."""

    settings: Settings
    served: Served | None = None
    triage: Any = None  # features.triage module (score + policy + notes), when present
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
            from features import triage

            rt.triage = triage
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
        if new.recent is not None and old.recent is not None and new.recent is not old.recent:
            # Tickets the old set counted while the new one loaded (a ticket counts once: IDs are remembered).
            since = new.recent.seeded_until
            new.recent.merge_newer(old.recent, since if since is not None else -math.inf)
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
        if self.triage is None:
            raise unavailable(TICKET_TRIAGE, self.policy_problem or "no triage policy")
        return model

    def score_ticket(self, ticket: TicketIn, count: bool = True) -> TicketScore:
        """Triage one ticket (:func:`features.triage.triage_one`): online features, escalation probability, policy; no pandas on this path.

        The load and the account's contacts come from the served set's live counter, which counts this ticket
        (``count=False``: neither read nor counted, as for the warm-up probe); the ticket's own values win."""
        s = self.served  # one served set for the whole request
        model = self._check_triage(s)
        t = fill_one(ticket.__dict__, s.recent if count else None)  # validated fields (+ live counts), a plain dict
        found = s.store.lookup(t["account_id"], t["merchant_id"], t["order_id"])
        item = self.triage.triage_one(model, t, found.account, found.merchant, found.order, self.settings)
        return TicketScore(**_item_fields(item, found.account_source, found.merchant_source, found.order_source),
                           model_versions=self._ticket_versions(s), snapshot_generation=s.generation)

    @staticmethod
    def _ticket_versions(s: Served) -> dict[str, int]:
        return s.versions(TICKET_TRIAGE, SERIAL_RETURNERS, MERCHANT_RISK)

    def score_batch(self, tickets: Sequence[TicketIn]) -> TicketBatchScores:
        """Triage many tickets (:func:`features.triage.triage_batch`: one model call for the whole batch)."""

        if len(tickets) > self.settings.max_batch_size:
            raise ApiError(413, f"tickets: {len(tickets):,} tickets is more than the limit of "
                                f"{self.settings.max_batch_size:,} per request; split the batch")
        s = self.served  # one served set for the whole request
        model = self._check_triage(s)
        rows = [t.__dict__ for t in tickets]
        frames, sources = {}, {}
        for kind in ostore.KINDS:
            ids = [r[ostore.KEYS[kind]] for r in rows]
            distinct = list(dict.fromkeys(ids))  # each account/merchant/order looked up once per batch
            recs, srcs = s.store.records(kind, distinct)
            by_source = dict(zip(distinct, srcs, strict=True))
            sources[kind] = [by_source[k] for k in ids]
            frames[kind] = _records_frame(ostore.KEYS[kind], distinct, recs)
        # The live counts, each ticket counted in creation-time order (only earlier tickets count for it).
        frame = fill_frame(_tickets_frame(rows), s.recent)
        triaged = self.triage.triage_batch(model, frame, frames[ostore.ACCOUNTS],
                                           frames[ostore.MERCHANTS], frames[ostore.ORDERS], self.settings)
        results = [TicketScoreItem(**_item_fields(item, sa, sm, so)) for item, sa, sm, so in zip(
            triaged.to_dict("records"), *(sources[k] for k in ostore.KINDS), strict=True)]
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
        if TICKET_TRIAGE not in self.served.models or self.triage is None:
            return
        probe = TicketIn(ticket_id="warm-up", created_at=datetime.now(UTC), case_type="refund", channel="chat",
                         amount=10.0, text="warm up")
        try:
            self.score_ticket(probe, count=False)  # a probe is no ticket: the live counts must not see it
        except Exception:  # a warm-up failure shows on the first real request with its proper error
            log.exception("serving: warm-up scoring failed")


def _item_fields(item: dict, account: str, merchant: str, order: str) -> dict:
    """The response fields of one triage answer (:func:`features.triage.triage_one`), with where its features
    came from."""
    return {"ticket_id": item["ticket_id"], "escalation_probability": item["escalation_probability"],
            "priority": item["priority"], "action": item["action"], "abuse_risk": item["abuse_risk"],
            "merchant_risk": item["merchant_risk"], "reasons": item["reasons"],
            "feature_sources": FeatureSources(account=account, merchant=merchant, order=order),
            "defaults_used": item["defaults_used"]}


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
