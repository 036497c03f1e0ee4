"""Server-rendered pages under ``/ui/`` for the risk team and the planners, served by the same BentoML service.

Four pages, each a view over what the JSON API already serves (no second code path):

- ``/ui/queue``: the review queue of :meth:`serving.app.Runtime.flagged` (the serial-returner queue snapshot minus
  decided accounts), filtered by likely pattern, sized by capacity;
- ``/ui/accounts/{id}``: the account's snapshot row, its order and return timeline, the evidence behind each reason
  (its returns, refunds without the item, the accounts linked to it and what links them, the ring's members and
  their figures), earlier decisions, and a confirm/clear form stored through :meth:`Runtime.record_decision` (the
  same decision store and idempotency key as ``POST /v1/accounts/{id}/decision``: the form carries a decision_id
  made when the page was drawn, so a double click stores once);
- ``/ui/forecast``: the forecast of :meth:`Runtime.forecast` (the ``/v1/forecast`` path: champion model, history
  from the data folder, :func:`features.staffing.staffing_plan`) as a fan chart with past weeks and event markers,
  agents per channel and day, CSV downloads (the staffing CSV has ``aftersales staff``'s columns and format) and a
  sales-plan upload (the forecaster's ``plan`` argument, as ``aftersales forecast --plan``);
- ``/ui/merchants``: the merchant ranking of :meth:`Runtime.merchants` with each merchant's weekly complaint and
  late-delivery history from the data folder.

Plots are inline SVG drawn here; no script, stylesheet or font is fetched from anywhere, and every page reads
without JavaScript.

Authentication. With ``AFTERSALES_API_KEYS`` set, ``/ui/login`` takes an API key (checked in constant time against
every key) and the reviewer's name and sets a session cookie: HMAC-SHA256-signed, ``Secure``, ``HttpOnly``,
``SameSite=Strict``, path ``/ui``, 12 hours. The signing key is derived from the configured API keys, so every
worker accepts the same sessions and removing or rotating a key ends all sessions. Without API keys the login only
asks for the name (nothing is secret) and the signing key is random per process. Every form carries a CSRF token
bound to the session (HMAC of the session's random ID); a POST without a valid session and token writes nothing and
answers 403. :class:`serving.app.GuardMiddleware` leaves ``/ui/`` to this module's login (pages are browsed, not
called with an ``X-API-Key`` header) and lets its forms through; its body-size limit still applies.

This module holds the login, queue, account and merchant pages and mounts them all; the shared router, templates,
sessions and rendering are in :mod:`serving.ui_common`, the planners' page in :mod:`serving.ui_forecast`, the
account evidence in :mod:`serving.ui_evidence` and the SVG charts in :mod:`serving.ui_charts`.
"""

from __future__ import annotations

import logging
import threading
import uuid

import pandas as pd
from fastapi import Depends, FastAPI, Form, Query, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from serving.app import RETURN_VOLUME, UI_PREFIX, ApiError, Runtime, current_runtime
from serving.schemas import DecisionIn
from serving.ui_charts import spark, timeline
from serving.ui_common import (
    HISTORY_WEEKS,
    SESSION_COOKIE,
    Ctx,
    LoginRequired,
    _safe_next,
    error_page,
    logged_in,
    render,
    router,
    sessions_for,
    set_session_cookie,
)
from serving.ui_evidence import evidence_for
from serving.ui_forecast import served_forecast

log = logging.getLogger("aftersales.serving.ui")


@router.get("", include_in_schema=False)
@router.get("/", include_in_schema=False)
async def index() -> RedirectResponse:
    return RedirectResponse(f"{UI_PREFIX}/queue", status_code=303)


_prefetched: set[int] = set()


def prefetch(rt: Runtime) -> None:
    """Read the data folder's evidence and compute the default forecast in a background thread, once per runtime.

    Started when someone opens the login page: those two take seconds on the first request of a worker (reading
    the data folder, forecasting every series), and are ready by the time the reviewer or planner has logged in.
    """
    if id(rt) in _prefetched:
        return
    _prefetched.add(id(rt))

    def run() -> None:
        for what, job in (("evidence", lambda: evidence_for(rt)),
                          ("forecast", lambda: served_forecast(rt, None, rt.served.model(RETURN_VOLUME).horizon))):
            try:
                job()
            except Exception as e:  # noqa: BLE001 — the page itself reports the problem when it is asked for
                log.info("ui: prefetch of the %s skipped (%s)", what, e)

    threading.Thread(target=run, name="ui-prefetch", daemon=True).start()


@router.get("/login")
async def login_page(request: Request, next: str | None = Query(None, max_length=500),
                     rt: Runtime = Depends(current_runtime)) -> HTMLResponse:
    prefetch(rt)
    sessions = sessions_for(rt)
    s = sessions.read(request.cookies.get(SESSION_COOKIE))
    cookie = None
    if s is None:
        s, cookie = sessions.issue(None)
    resp = render("login.html", Ctx(rt, s, sessions), next=_safe_next(next), error=None)
    if cookie:
        set_session_cookie(resp, cookie)
    return resp


@router.post("/login")
async def login(request: Request, reviewer: str = Form("", max_length=128), api_key: str = Form("", max_length=512),
                csrf: str = Form("", max_length=128), next: str = Form("", max_length=500),
                rt: Runtime = Depends(current_runtime)) -> Response:
    sessions = sessions_for(rt)
    s = sessions.read(request.cookies.get(SESSION_COOKIE))
    if not sessions.csrf_ok(s, csrf):
        return error_page(None, 403, "The form's CSRF token does not match this browser's session: reload the "
                                     "login page and try again.")
    name = reviewer.strip()
    ctx = Ctx(rt, s, sessions)
    if not name:
        return render("login.html", ctx, status=400, next=_safe_next(next), error="reviewer: give your name; it is "
                      "stored with each decision you record")
    if sessions.keys_required and not sessions.key_ok(api_key):
        log.warning("ui: failed login for reviewer %r", name[:64])
        return render("login.html", ctx, status=401, next=_safe_next(next), error="api_key: not a valid API key")
    _, cookie = sessions.issue(name)  # a fresh session ID on login (no fixation)
    resp = RedirectResponse(_safe_next(next), status_code=303)
    set_session_cookie(resp, cookie)
    return resp


@router.post("/logout")
async def logout(request: Request, csrf: str = Form("", max_length=128),
                 rt: Runtime = Depends(current_runtime)) -> Response:
    sessions = sessions_for(rt)
    s = sessions.read(request.cookies.get(SESSION_COOKIE))
    if not sessions.csrf_ok(s, csrf):
        return error_page(None, 403, "CSRF token missing or invalid: nothing was done.")
    resp = RedirectResponse(f"{UI_PREFIX}/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path=UI_PREFIX, secure=True, httponly=True, samesite="strict")
    return resp


# --------------------------------------------------------------------------------------------------------------------
# Pages: review queue and account


def _patterns() -> tuple[str, ...]:
    from features.accounts import PATTERNS

    return PATTERNS


@router.get("/queue")
def queue_page(pattern: str | None = Query(None, max_length=64),
               capacity: int | None = Query(None, ge=1, le=10_000),
               ctx: Ctx = Depends(logged_in)) -> HTMLResponse:
    rt = ctx.rt
    capacity = capacity or rt.settings.review_capacity
    try:
        q = rt.flagged(capacity)
    except ApiError as e:
        return error_page(ctx, e.status, e.message)
    patterns = _patterns()
    if pattern and pattern not in patterns:
        return error_page(ctx, 400, f"pattern: unknown pattern '{pattern}'; one of {', '.join(patterns)}")
    rows = [a for a in q.accounts if not pattern or a.likely_pattern == pattern]
    counts = {p: sum(a.likely_pattern == p for a in q.accounts) for p in patterns}
    return render("queue.html", ctx, queue=q, rows=rows, pattern=pattern or "", capacity=capacity,
                  patterns=patterns, counts=counts)


_REASON_EVIDENCE = (  # which evidence section a reason's own wording points to (the reasons are this project's text)
    (("without the item", "refund without", "not received", "claims"), "no-item"),
    (("linked", "shar", "group", "ring"), "linked"),
    (("wardrob", "worn", "soon after delivery"), "returns"),
)


def _evidence_anchor(reason: str) -> str:
    low = reason.lower()
    for words, anchor in _REASON_EVIDENCE:
        if any(w in low for w in words):
            return anchor
    return "returns"


def _decisions(rt: Runtime, account_id: str) -> list[dict]:
    if rt.reviews is None:
        return []
    d = rt.reviews.list_decisions(settings=rt.settings, account_id=account_id)
    return d.sort_values("decided_at", ascending=False).to_dict("records")


def _account_record(rt: Runtime, account_id: str) -> tuple[dict, dict | None]:
    s = rt.served
    table = rt._accounts_table(s)  # the same snapshot the decision route checks accounts against
    rec = table.get(account_id)
    if rec is None:
        raise ApiError(404, f"account_id: unknown account '{account_id}' (not in {table.describe()})")
    queued = next((r for r in (s.snapshots.queue or []) if r["account_id"] == account_id), None)
    return rec, queued


@router.get("/accounts/{account_id}")
def account_page(account_id: str, msg: str | None = Query(None, max_length=300),
                 ctx: Ctx = Depends(logged_in)) -> HTMLResponse:
    from features.accounts import MAX_LINK_SHARE

    rt = ctx.rt
    try:
        rec, queued = _account_record(rt, account_id)
        ev = evidence_for(rt)
    except ApiError as e:
        return error_page(ctx, e.status, e.message)
    from serving.app import _as_list

    reasons = _as_list((queued or {}).get("reasons")) or _as_list(rec.get("top_reason"))
    orders, returns = ev.account_orders(account_id), ev.account_returns(account_id)
    linked = ev.linked(account_id, MAX_LINK_SHARE)
    ring = ev.ring(account_id, MAX_LINK_SHARE)
    table = rt.served.snapshots.accounts
    members = [{"account_id": a, **(table.get(a) or {})} for a in ring]
    no_item = returns[returns["item_returned"].astype("boolean").eq(False).fillna(False).to_numpy()]
    year_ago = ev.end - pd.Timedelta(days=365)
    figures = {k: v for k, v in rec.items() if k not in ("top_reason", "as_of", "model_mode")}
    return render(
        "account.html", ctx, account_id=account_id, rec=rec, queued=queued, figures=figures,
        reasons=[(r, _evidence_anchor(r)) for r in reasons], orders=orders.tail(200).iloc[::-1],
        n_orders=len(orders), returns=returns.iloc[::-1], n_returns_year=int((returns["requested_at"] >= year_ago).sum()),
        no_item=no_item.iloc[::-1], linked=linked, members=members, links_shown=len(linked),
        decisions=_decisions(rt, account_id), decision_id=uuid.uuid4().hex, msg=msg,
        timeline=timeline(orders, returns, ev.end), spent=float(orders["amount"].sum()),
        refunded=float(returns["refund_amount"].sum()))


@router.post("/accounts/{account_id}/decision")
def decide(account_id: str, request: Request, decision: str = Form(..., max_length=32),
           note: str = Form("", max_length=2000), decision_id: str = Form(..., max_length=64),
           csrf: str = Form("", max_length=128), rt: Runtime = Depends(current_runtime)) -> Response:
    sessions = sessions_for(rt)
    s = sessions.read(request.cookies.get(SESSION_COOKIE))
    if s is None or not s.logged_in:
        return error_page(None, 401, "Not logged in: nothing was recorded. Log in and decide again.")
    ctx = Ctx(rt, s, sessions)
    if not sessions.csrf_ok(s, csrf):
        log.warning("ui: decision on %s refused: CSRF token mismatch (reviewer %r)", account_id, s.reviewer)
        return error_page(ctx, 403, "CSRF token missing or invalid: nothing was recorded. Reload the account page "
                                    "and decide again.")
    try:
        body = DecisionIn(decision=decision, reviewer=s.reviewer, note=note.strip() or None, decision_id=decision_id)
    except ValueError as e:
        return error_page(ctx, 400, f"invalid decision: {e}")
    try:
        out = rt.record_decision(account_id, body)
    except ApiError as e:
        return error_page(ctx, e.status, e.message)
    msg = (f"Already recorded: {out.decision} by {out.reviewer} (this form was sent before; stored once)"
           if out.duplicate else f"Recorded: {out.decision} by {out.reviewer}")
    return RedirectResponse(f"{UI_PREFIX}/accounts/{account_id}?{_query(msg=msg)}", status_code=303)


def _query(**values: str) -> str:
    from urllib.parse import urlencode

    return urlencode(values)


# --------------------------------------------------------------------------------------------------------------------
# Merchants


@router.get("/merchants")
def merchants_page(limit: int = Query(50, ge=1, le=5_000), ctx: Ctx = Depends(logged_in)) -> HTMLResponse:
    rt = ctx.rt
    try:
        ranking = rt.merchants(limit)
    except ApiError as e:
        return error_page(ctx, e.status, e.message)
    try:
        history = evidence_for(rt).merchant_history()
        history_problem = None
    except ApiError as e:
        history, history_problem = {}, e.message
    rows = []
    for m in ranking.merchants:
        h = history.get(m.merchant_id)
        rows.append({"m": m, "h": h,
                     "complaints": spark(h["complaints"]) if h else None,
                     "late": spark([100 * v for v in h["late_share"]], fmt="{:.0f}% late") if h else None,
                     "complaints_total": sum(h["complaints"]) if h else None,
                     "late_total": (sum(h["late"]) / max(sum(h["delivered"]), 1)) if h else None})
    return render("merchants.html", ctx, ranking=ranking, rows=rows, limit=limit, weeks=HISTORY_WEEKS,
                  history_problem=history_problem)


# --------------------------------------------------------------------------------------------------------------------
# Mounting


async def _login_required(request: Request, exc: LoginRequired) -> Response:
    if request.method == "GET":
        return RedirectResponse(f"{UI_PREFIX}/login?{_query(next=exc.next_path)}", status_code=303)
    return error_page(None, 401, "Not logged in: nothing was done. Log in and try again.")


def mount_ui(app: FastAPI) -> None:
    """Add the pages to the FastAPI app the BentoML service mounts (``serving/service.py``)."""
    if any(getattr(r, "path", "").startswith(UI_PREFIX + "/") for r in app.routes):
        return
    app.include_router(router)
    app.add_exception_handler(LoginRequired, _login_required)
