"""The BentoML 1.4 service: ``bentoml serve serving.service:AfterSalesService`` (what ``aftersales serve`` runs).

Thin on purpose: the class loads a :class:`serving.app.Runtime` once per worker (champion models pinned to their
version, online features, policy) and each API is a call into it. GET routes and the decision route (path parameter)
are FastAPI routes mounted from ``serving/app.py``; BentoML adds ``/livez``, ``/readyz``, ``/metrics`` (Prometheus)
and the OpenAPI page at ``/`` (spec at ``/docs.json``).

Latency choices, each measured with ``benchmarks/bench_serving.py`` (2 cores, concurrency 16):

- ``gc.freeze()`` after loading: full collections no longer walk the millions of objects MLflow, pandas and
  BentoML leave behind (p99 ~250 ms -> ~40 ms alone);
- the single-ticket route is excluded from OpenTelemetry: its ASGI middleware builds spans around every
  receive/send even when nothing is sampled (roughly halves throughput); with a trace exporter configured,
  set ``tracing.excluded_urls`` in a BentoML config file to trace it anyway;
- per-request access logging is off; request counts and latency per route are still in ``/metrics``
  (``bentoml_service_request_*``). Turn it on with ``BENTOML_CONFIG_OPTIONS="services.aftersales.logging.access.
  enabled=true"``;
- single-ticket scoring is ``async``: ~0.2 ms of CPU runs on the event loop instead of paying a thread hop;
  the batch and forecast APIs are sync, so BentoML runs them in a worker thread and the loop stays responsive;
- LightGBM and OpenMP use one thread (``OMP_NUM_THREADS=1``): on 2 shared cores, threads per request only fight.
"""

from __future__ import annotations

import os

# Before anything loads LightGBM/OpenMP: one thread per prediction (see the module docstring).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import bentoml  # noqa: E402

from features.settings import get_settings  # noqa: E402
from serving.app import (  # noqa: E402
    ApiError,
    GuardMiddleware,
    Runtime,
    api,
    bind_apis_once,
    cancel_timeout_timers,
    install,
    tune_gc,
)
from serving.schemas import (  # noqa: E402
    ForecastRequest,
    ForecastResponse,
    TicketBatch,
    TicketBatchScores,
    TicketIn,
    TicketScore,
)

HOT_ROUTES = ["/v1/tickets/score$"]  # regexes over the URL (OpenTelemetry ExcludeList); the batch route is traced
cancel_timeout_timers()  # a BentoML 1.4 fix, applied before the worker builds its app (see serving/app.py)


@bentoml.service(
    name="aftersales",
    workers=1,
    traffic={"timeout": 120},
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": HOT_ROUTES},
)
@bentoml.asgi_app(api, path="/")
class AfterSalesService:
    """After-sales risk and forecasting: ticket triage, return-volume forecast, review queue, merchant risk."""

    def __init__(self) -> None:
        self.runtime = Runtime.load(get_settings())
        install(self.runtime)
        bind_apis_once(self, AfterSalesService)
        self.runtime.warm_up()
        tune_gc()

    @bentoml.api(route="/v1/tickets/score")
    async def score_ticket(self, ticket: TicketIn, /) -> TicketScore:
        """Triage one new ticket: escalation probability, priority P1-P4, suggested action and reasons."""
        try:
            return self.runtime.score_ticket(ticket)
        except ApiError as e:
            return e.response()

    @bentoml.api(route="/v1/tickets/score-batch")
    def score_batch(self, batch: TicketBatch, /) -> TicketBatchScores:
        """Triage up to 10,000 tickets in one call (results in request order)."""
        try:
            return self.runtime.score_batch(batch.tickets)
        except ApiError as e:
            return e.response()

    @bentoml.api(route="/v1/forecast")
    def forecast(self, request: ForecastRequest, /) -> ForecastResponse:
        """Daily return-volume P10/P50/P90 after an origin date, and agents per day and channel."""
        try:
            return self.runtime.forecast(request)
        except ApiError as e:
            return e.response()

    @bentoml.on_shutdown
    def close(self) -> None:
        """Release the online store and detach the mounted routes."""
        install(None)
        self.runtime.close()


# API keys and the body size limit, on every route (native and mounted); inner to BentoML's metrics and tracing.
AfterSalesService.add_asgi_middleware(GuardMiddleware)
