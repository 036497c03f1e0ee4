"""The BentoML 1.4 service: ``bentoml serve serving.service:AfterSalesService`` (what ``aftersales serve`` runs).

Thin on purpose: the class loads a :class:`serving.runtime.Runtime` once per worker (champion models pinned to their
version, online features, policy) and each API is a call into it. GET routes and the decision route (path parameter)
are FastAPI routes mounted from ``serving/routes.py``; BentoML adds ``/livez``, ``/readyz``, ``/metrics`` (Prometheus)
and the OpenAPI page at ``/`` (spec at ``/docs.json``).

Latency choices. Ablation on this 2-core machine, one ticket at concurrency 16 for 8 s per variant, each step
adding to the previous (req/s, p99): out of the box 845/s, 32 ms (max 367 ms: GC pauses) -> gc.freeze and
thresholds 1,142/s, 21 ms -> timeout-timer fix ~same over 8 s -> hot route out of OpenTelemetry 1,716/s, 15 ms ->
access log off 1,923/s, 15 ms -> APIs bound once ~same within noise. ``benchmarks/bench_serving.py`` has the
comparison with a bare FastAPI app.

- ``gc.freeze()`` after loading (:func:`serving.worker.tune_gc`): full collections no longer walk the ~400k objects
  MLflow, pandas and BentoML leave behind;
- BentoML's request-timeout middleware leaves a timer, a future and a context alive per request for the whole
  timeout; :func:`serving.bentoml_patches.cancel_timeout_timers` cancels it when the request ends (without it the worker grew
  25 MB in 30 s of load and kept growing until the timeout's worth of requests had piled up);
- the single-ticket route is excluded from OpenTelemetry: its ASGI middleware builds spans around every receive
  and send even when nothing is sampled. With a trace exporter configured, override ``tracing.excluded_urls`` in a
  BentoML config file to trace it anyway;
- per-request access logging is off; request counts and latency per route are still in ``/metrics``
  (``bentoml_service_request_*``). Turn it on with
  ``BENTOML_CONFIG_OPTIONS="services.aftersales.logging.access.enabled=true"``;
- single-ticket scoring is ``async``: ~0.1 ms of CPU runs on the event loop instead of paying a thread hop;
  the batch and forecast APIs are sync, so BentoML runs them in a worker thread and the loop stays responsive;
- ``POST /v1/tickets/score`` is answered by :class:`serving.fast_path.ScoreTicketFastPath` (inner to the guard and
  BentoML's middleware) without BentoML's generic per-API dispatch, validated by the API's own input class; the
  request timeout runs in the request's task (:func:`serving.bentoml_patches.cancel_timeout_timers`). README,
  "Serving speed", has the per-request split before and after, measured with wrk and py-spy;
- one worker by default; ``aftersales serve --workers N`` (``BENTOML_CONFIG_OPTIONS="services.aftersales.workers=N"``;
  ``bentoml serve --api-workers`` does not apply to BentoML >= 1.2 services). On 2 cores shared with wrk, 2 workers
  gave ~1.5x the requests/s of one at concurrency 16 (150% of the bare reference against 96%): one worker per
  core the service may use;
- LightGBM and OpenMP use one thread (``OMP_NUM_THREADS=1``): on 2 shared cores, threads per request only fight.
"""

from __future__ import annotations

import os

# Before anything loads LightGBM/OpenMP: one thread per prediction (see the module docstring).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import bentoml  # noqa: E402

from features.settings import get_settings  # noqa: E402
from serving.bentoml_patches import (  # noqa: E402
    bind_apis_once,
    cancel_timeout_timers,
    label_metrics_by_route,
    quiet_client_errors,
)
from serving.errors import ApiError  # noqa: E402
from serving.fast_path import SCORE_PATH, ScoreTicketFastPath  # noqa: E402
from serving.middleware import GuardMiddleware, service_labeler  # noqa: E402
from serving.routes import api, install, installed  # noqa: E402
from serving.runtime import Runtime  # noqa: E402
from serving.schemas import (  # noqa: E402
    ForecastRequest,
    ForecastResponse,
    TicketBatch,
    TicketBatchScores,
    TicketIn,
    TicketScore,
)
from serving.ui import mount_ui  # noqa: E402
from serving.worker import die_with_parent, tune_gc  # noqa: E402

mount_ui(api)  # the browser pages under /ui/ (serving/ui.py), before the metrics labeller lists the routes
HOT_ROUTES = ["/v1/tickets/score$"]  # regexes over the URL (OpenTelemetry ExcludeList); the batch route is traced
cancel_timeout_timers()  # a BentoML 1.4 fix, applied before the worker builds its app (see serving/bentoml_patches.py)


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
        die_with_parent()
        quiet_client_errors()
        self.runtime = Runtime.load(get_settings())
        install(self.runtime)
        bind_apis_once(self, AfterSalesService)
        self.runtime.warm_up()
        tune_gc()
        # New snapshot generations (a promotion, `aftersales refresh-features`) are swapped in without a restart.
        self.runtime.start_watching(get_settings().snapshot_poll_s)

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


# API keys, the body size limit and JSON-only bodies, on every route (native and mounted); inner to BentoML's metrics
# and tracing. Metrics are labelled by route, not raw path (GuardMiddleware restores the path: the two go together).
AfterSalesService.add_asgi_middleware(GuardMiddleware)
# The single-ticket route answered without BentoML's per-API dispatch (serving/fast_path.py), inner to the guard;
# validated by the class BentoML builds for the API, so errors read the same.
assert AfterSalesService.apis["score_ticket"].route == SCORE_PATH
AfterSalesService.add_asgi_middleware(ScoreTicketFastPath, input_model=AfterSalesService.apis["score_ticket"].input_spec,
                                      runtime=installed, server_header="BentoML Service/aftersales")
label_metrics_by_route(service_labeler([a.route for a in AfterSalesService.apis.values()], api.routes))
