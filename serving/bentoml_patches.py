"""Every use of BentoML 1.4 private internals, in one place, behind one version check.

:func:`check_bentoml_internals` refuses to start when the private pieces are not where they were;
:func:`cancel_timeout_timers` and :func:`label_metrics_by_route` replace methods of private middleware classes,
:func:`quiet_client_errors` filters a private logger, and :func:`bind_apis_once` uses the API methods' private
``_local_call``. pyproject.toml bounds ``bentoml<1.5``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse

from serving.middleware import REAL_PATH

log = logging.getLogger("aftersales.serving")

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
            f"BentoML {bentoml.__version__} is installed, but serving/bentoml_patches.py patches BentoML {BENTOML_PATCHED} "
            f"internals that are not there in it: {', '.join(moved)}. Install the version pyproject.toml names "
            f"(bentoml>=1.4.30,<1.5, as pinned in requirements.lock) or port the patches in serving/bentoml_patches.py.")


def cancel_timeout_timers() -> None:
    """Make BentoML's request-timeout middleware cancel its timer when the request finishes.

    BentoML 1.4's ``TimeoutMiddleware`` schedules ``loop.call_later(timeout, ...)`` per request and never cancels
    it, so every request leaves a timer, a future and its captured context alive for ``traffic.timeout`` seconds
    (120 s here: ~600k tracked objects at 1,000 requests/s). They pile up in the event loop's heap, get promoted
    through the GC generations and make young collections take milliseconds (measured: 11k timers after 10 s of
    load, gen-0 pauses up to 12 ms). It also ran every request in a task of its own; this runs it in the
    request's task under ``asyncio.timeout`` (no task, future and timer callback per request). Same behaviour
    otherwise: a request that has not begun its answer within the timeout gets a 504.
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
        started = False
        deadline = asyncio.timeout(self.timeout)

        async def _send(message) -> None:
            nonlocal started
            if not started:
                started = True
                deadline.reschedule(None)  # the answer has begun: no 504 after this, as in BentoML's own
            await send(message)

        try:
            async with deadline:
                await self.app(scope, receive, _send)
        except TimeoutError:
            if started or not deadline.expired():
                raise  # the application's own TimeoutError
            resp = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                status_code=504)
            await resp(scope, receive, send)

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
