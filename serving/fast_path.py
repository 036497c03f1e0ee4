"""The single-ticket route answered without BentoML's generic per-API dispatch (the service's hot path).

``POST /v1/tickets/score`` stays a BentoML API (``AfterSalesService.score_ticket``: the OpenAPI spec, the docs page)
and every request still passes BentoML's server and its middleware (request metrics, tracing, the request timeout)
and :class:`serving.middleware.GuardMiddleware` (API keys, body limit, JSON only). What this innermost middleware
skips is the work BentoML's dispatcher does for any API on every request and this route does not need: a Starlette
``Request`` and the service context, routing, the serde lookup, re-inspecting the method, wrapping the answer in
the output descriptor, a chunked three-write response and a background task per request (py-spy under wrk: about a
third of the worker's time per request; see README, "Serving speed").

Same contract as the BentoML route: the body is validated by the very class BentoML builds for the API
(``AfterSalesService.apis["score_ticket"].input_spec``), so a 400 carries the same ``error`` and ``detail``; the
answer is :meth:`serving.runtime.Runtime.score_ticket`'s ``TicketScore`` as JSON; :class:`serving.errors.ApiError`
answers its status and message; anything else is a 500 without a stack trace (logged).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from serving.errors import ApiError

log = logging.getLogger("aftersales.serving")

SCORE_PATH = "/v1/tickets/score"
_JSON = (b"content-type", b"application/json")
INTERNAL = {"error": "An unexpected error has occurred, please check the server log."}  # BentoML's own wording


class ScoreTicketFastPath:
    """ASGI middleware answering ``POST /v1/tickets/score`` itself; every other request goes on to BentoML.

    ``input_model``: the API's input class (validation and error wording as BentoML's); ``runtime``: a callable giving
    the installed :class:`serving.runtime.Runtime` (None while the worker starts: BentoML's route answers then).
    """

    def __init__(self, app, input_model: Any, runtime: Callable[[], Any], server_header: str) -> None:
        self.app = app
        self.input_model = input_model
        self.runtime = runtime
        self.headers = [_JSON, (b"server", server_header.encode())]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != SCORE_PATH or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        rt = self.runtime()
        if rt is None:
            return await self.app(scope, receive, send)
        body = b""
        while True:  # GuardMiddleware has checked the size (declared length, or read it whole)
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            ticket = self.input_model.model_validate_json(body or b"{}")
        except ValidationError as exc:
            fields = sorted({".".join(str(x) for x in e.get("loc", ())) or "body" for e in exc.errors()})
            log.warning("invalid request on %s [POST] answered 400: %s", SCORE_PATH, ", ".join(fields[:10]))
            detail = exc.errors(include_context=False, include_input=False)
            return await self._answer(send, 400, json.dumps(
                {"error": f"{exc.error_count()} validation error for {exc.title}", "detail": detail}).encode())
        try:
            payload, status = rt.score_ticket(ticket).model_dump_json().encode(), 200
        except ApiError as e:
            payload, status = json.dumps(e.body()).encode(), e.status
        except Exception:  # noqa: BLE001 — a 500 without a stack trace for the caller; the log has it
            log.exception("serving: POST %s failed", SCORE_PATH)
            payload, status = json.dumps(INTERNAL).encode(), 500
        await self._answer(send, status, payload)

    async def _answer(self, send, status: int, payload: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [*self.headers, (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
