"""ASGI middleware of the service: API keys, body limits and JSON-only bodies (:class:`GuardMiddleware`), and the
route labels BentoML's request metrics use (:func:`service_labeler`), so metric series stay bounded by the routes.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Sequence
from typing import Any

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


def service_labeler(native_routes: Sequence[str], mounted: Sequence[Any] = ()) -> Callable[[str], str]:
    """:func:`route_labeler` for this service: BentoML's own pages, its API routes (``native_routes``), and the
    mounted FastAPI routes (``mounted``: ``serving.routes.api.routes``)."""
    import re

    static, templated = [*BENTOML_PATHS, *native_routes], [(re.compile(r"^/static_content/"), "/static_content/")]
    for route in mounted:
        path = getattr(route, "path", None)
        if path is None:
            continue
        if "{" in path:
            templated.append((route.path_regex, path))
        else:
            static.append(path)
    return route_labeler(static, templated)


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
