"""The routes BentoML's ``@bentoml.api`` cannot express, as a FastAPI app mounted into the BentoML service.

BentoML 1.4 APIs are POST-only and take no path parameters, so ``GET /v1/accounts/flagged``,
``GET /v1/merchants/risk``, ``POST /v1/accounts/{account_id}/decision`` and ``GET /v1/health`` live in the FastAPI
app :data:`api`, mounted with ``@bentoml.asgi_app`` (same process, same middleware: metrics, tracing, the OpenAPI
page at ``/``). Errors answer as BentoML's own routes do: JSON ``{"error": message, "detail": [...]}``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from serving.errors import ApiError
from serving.runtime import Runtime
from serving.schemas import DecisionIn, DecisionOut, FlaggedAccounts, Health, MerchantRanking

log = logging.getLogger("aftersales.serving")

api = FastAPI(title="aftersales (mounted routes)", docs_url=None, redoc_url=None, openapi_url=None)
_runtime: Runtime | None = None


def install(runtime: Runtime | None) -> None:
    """Make ``runtime`` the one the mounted routes serve from (called by the BentoML service at start)."""
    global _runtime
    _runtime = runtime


def installed() -> Runtime | None:
    """The installed runtime, or None while the worker starts."""
    return _runtime


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
