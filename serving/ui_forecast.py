"""The planners' page ``/ui/forecast``: the served forecast as a fan chart, agents per channel and day, CSV
downloads and a sales-plan upload (see serving/ui.py)."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import date
from typing import Any

import pandas as pd
from fastapi import Depends, File, Form, Query, Request, UploadFile
from starlette.responses import HTMLResponse, Response

from serving.app import RETURN_VOLUME, ApiError, Runtime
from serving.schemas import ForecastRequest, ForecastResponse
from serving.ui_charts import fan_chart
from serving.ui_common import (
    FORECAST_CACHE,
    MAX_PLAN_BYTES,
    PAST_DAYS,
    STAFFING_COLUMNS,
    Ctx,
    error_page,
    log,
    logged_in,
    render,
    router,
)

# --------------------------------------------------------------------------------------------------------------------
# Planners' page


@dataclass(frozen=True)
class ServedForecast:
    """A forecast response and its tables (built once: 20 series x 60 days is 1,200 rows to convert)."""

    resp: ForecastResponse
    frame: pd.DataFrame  # date, series, p10, p50, p90
    staffing: pd.DataFrame  # STAFFING_COLUMNS
    channels: list[str]
    grid: list[tuple[date, list[tuple[int, int]]]]  # per day: (agents P50, agents P90) per channel


_forecasts: OrderedDict[tuple, ServedForecast] = OrderedDict()
_forecast_lock = threading.Lock()
_compute_lock = threading.Lock()


def served_forecast(rt: Runtime, origin: date | None, horizon: int) -> ServedForecast:
    """:meth:`Runtime.forecast` for every series (the ``/v1/forecast`` path), kept for the served generation."""
    s = rt.served
    model = s.model(RETURN_VOLUME)
    if origin is None:
        origin = rt._history(model.market).days[-1].date()
    key = (s.generation, s.versions(RETURN_VOLUME).get(RETURN_VOLUME), origin, horizon)
    with _forecast_lock:
        if key in _forecasts:
            _forecasts.move_to_end(key)
            return _forecasts[key]
    with _compute_lock:  # one forecast computed at a time: a second request for it waits, then finds it kept
        with _forecast_lock:
            if key in _forecasts:
                return _forecasts[key]
        return _compute_forecast(rt, key, origin, horizon)


def _compute_forecast(rt: Runtime, key: tuple, origin: date, horizon: int) -> ServedForecast:
    resp = rt.forecast(ForecastRequest(origin=origin, horizon=horizon))
    frame = pd.DataFrame([d.model_dump() for d in resp.forecast], columns=["date", "series", "p10", "p50", "p90"])
    staff = pd.DataFrame([d.model_dump() for d in resp.staffing], columns=STAFFING_COLUMNS)
    channels = list(dict.fromkeys(staff["channel"]))
    wide = staff.pivot_table(index="date", columns="channel", values=["agents_p50", "agents_p90"], aggfunc="first")
    p50, p90 = wide["agents_p50"][channels].to_numpy(), wide["agents_p90"][channels].to_numpy()
    grid = [(d, [(int(a), int(b)) for a, b in zip(r50, r90, strict=True)])
            for d, r50, r90 in zip(wide.index, p50, p90, strict=True)]
    out = ServedForecast(resp, frame, staff, channels, grid)
    with _forecast_lock:
        _forecasts[key] = out
        while len(_forecasts) > FORECAST_CACHE:
            _forecasts.popitem(last=False)
    return out


def component_weights(model: Any, series: str) -> pd.DataFrame | None:
    """The forecaster's component weights for ``series`` when the model exposes them, else None.

    An ensemble's ``weights_table()`` (one row per series, horizon band and kind of day, a column per component,
    and why) is shown for the picked series; a flat ``weights_`` mapping of component to weight as one row.
    """
    table = getattr(model, "weights_table", None)
    if callable(table):
        try:
            t = table()
        except Exception as e:  # noqa: BLE001 — an unfitted or older model: the page says there are none
            log.info("ui: weights_table() failed (%s)", e)
            return None
        if isinstance(t, pd.DataFrame) and not t.empty:
            if "series" in t.columns:
                t = t[t["series"].astype(str) == series].drop(columns="series")
            return t.reset_index(drop=True)
    w = getattr(model, "weights_", None)
    if isinstance(w, pd.Series):
        w = w.to_dict()
    if isinstance(w, dict) and w and all(isinstance(v, int | float) for v in w.values()):
        return pd.DataFrame([{str(k): float(v) for k, v in w.items()}])
    return None


def _plan_forecast(rt: Runtime, origin: date, horizon: int, plan: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The forecast with a sales plan (the forecaster's ``plan`` argument) and its staffing plan."""
    from features.staffing import staffing_plan

    model = rt.served.model(RETURN_VOLUME)
    history = rt._history(model.market)
    fc = model.forecast(history, origin=pd.Timestamp(origin), horizon=horizon, plan=plan)
    staff = staffing_plan(fc)
    fc = fc.assign(date=pd.to_datetime(fc["date"]).dt.date)
    staff = staff.assign(date=pd.to_datetime(staff["date"]).dt.date)
    return fc, staff[STAFFING_COLUMNS]


_event_cache: dict[tuple, list[tuple[date, str]]] = {}


def _events(rt: Runtime, market: str, start: date, end: date) -> list[tuple[date, str]]:
    """Holidays and shopping events (size 2 and up) between two days, names joined per day (kept per worker)."""
    key = (market, start, end, rt.settings.summer_sale, rt.settings.summer_sale_days)
    if key not in _event_cache:
        if len(_event_cache) > 256:
            _event_cache.clear()
        _event_cache[key] = _market_events(rt, market, start, end)
    return _event_cache[key]


def _market_events(rt: Runtime, market: str, start: date, end: date) -> list[tuple[date, str]]:
    from features.calendar import market_events

    ev = market_events(market, pd.Timestamp(start), pd.Timestamp(end), rt.settings)
    ev = ev[ev["size"] >= 2] if "size" in ev else ev
    out: dict[date, list[str]] = {}
    for d, name in zip(ev["date"], ev["name"], strict=True):
        out.setdefault(pd.Timestamp(d).date(), []).append(str(name))
    return [(d, ", ".join(dict.fromkeys(n))) for d, n in sorted(out.items())]


def _origin_param(origin: str | None) -> date | None:
    if not origin:
        return None
    try:
        return date.fromisoformat(origin)
    except ValueError:
        raise ApiError(400, f"origin: '{origin}' is not a date (YYYY-MM-DD)") from None


def _forecast_view(ctx: Ctx, series: str, horizon: int | None, origin: str | None,
                   plan: pd.DataFrame | None = None, plan_name: str | None = None,
                   plan_error: str | None = None) -> HTMLResponse:
    rt = ctx.rt
    try:
        model = rt.served.model(RETURN_VOLUME)
        horizon = min(horizon or model.horizon, model.horizon)
        sf = served_forecast(rt, _origin_param(origin), horizon)
    except ApiError as e:
        return error_page(ctx, e.status, e.message)
    resp, fc = sf.resp, sf.frame
    names = list(dict.fromkeys(fc["series"]))
    if series not in names:
        return error_page(ctx, 400, f"series: unknown series '{series}'; this model forecasts {', '.join(names)}")
    staff = sf.staffing
    history = rt._history(model.market)
    origin_day = resp.origin
    past = history.y[series] if series in history.y else pd.Series(dtype=float)
    past = past[(past.index > pd.Timestamp(origin_day) - pd.Timedelta(days=PAST_DAYS))
                & (past.index <= pd.Timestamp(origin_day))]
    past.index = [d.date() for d in past.index]
    shown = fc[fc["series"] == series].reset_index(drop=True)
    plan_fc = plan_staff = None
    effect = None
    if plan is not None:
        try:
            pf, plan_staff = _plan_forecast(rt, origin_day, horizon, plan)
        except ValueError as e:
            plan_error = f"{plan_name}: {e}"
        else:
            plan_fc = pf[pf["series"] == series].reset_index(drop=True)
            effect = {
                "p50_without": float(shown["p50"].sum()), "p50_with": float(plan_fc["p50"].sum()),
                "agents_without": int(staff["agents_p90"].sum()), "agents_with": int(plan_staff["agents_p90"].sum()),
            }
            plan_staff = plan_staff.merge(staff[["date", "channel", "agents_p90"]], on=["date", "channel"],
                                          suffixes=("", "_without"))
    end = shown["date"].max() if len(shown) else origin_day
    events = _events(rt, model.market, (pd.Timestamp(origin_day) - pd.Timedelta(days=PAST_DAYS)).date(), end)
    channels, grid = sf.channels, sf.grid
    weights = component_weights(model, series)
    return render(
        "forecast.html", ctx, series=series, names=names, horizon=horizon, max_horizon=model.horizon,
        origin=origin_day, origin_param=origin or "", history_end=resp.history_end, notes=resp.notes,
        chart=fan_chart(past, shown, events, plan_fc), events=[e for e in events if e[0] > origin_day],
        channels=channels, grid=grid, weights=weights, model_versions=resp.model_versions,
        rows=shown, plan_fc=plan_fc, plan_staff=plan_staff, plan_name=plan_name, plan_error=plan_error,
        effect=effect, total_p50=float(shown["p50"].sum()))


@router.get("/forecast")
def forecast_page(series: str = Query("total", max_length=200), horizon: int | None = Query(None, ge=1, le=366),
                  origin: str | None = Query(None, max_length=10), ctx: Ctx = Depends(logged_in)) -> HTMLResponse:
    return _forecast_view(ctx, series, horizon, origin)


@router.post("/forecast/plan")
def forecast_with_plan(request: Request, plan: UploadFile = File(...), series: str = Form("total", max_length=200),
                       horizon: int | None = Form(None, ge=1, le=366), origin: str = Form("", max_length=10),
                       csrf: str = Form("", max_length=128), ctx: Ctx = Depends(logged_in)) -> HTMLResponse:
    from features.return_volume import PlanError, validate_plan

    if not ctx.sessions.csrf_ok(ctx.session, csrf):
        return error_page(ctx, 403, "CSRF token missing or invalid: the plan was not read.")
    raw = plan.file.read(MAX_PLAN_BYTES + 1)
    name = plan.filename or "plan.csv"
    if len(raw) > MAX_PLAN_BYTES:
        return _forecast_view(ctx, series, horizon, origin or None, plan_name=name,
                              plan_error=f"{name}: over {MAX_PLAN_BYTES:,} bytes; a plan is one row per day")
    try:
        frame = validate_plan(pd.read_csv(io.BytesIO(raw)), source=name)
    except (PlanError, ValueError, pd.errors.ParserError) as e:
        return _forecast_view(ctx, series, horizon, origin or None, plan_name=name, plan_error=str(e))
    return _forecast_view(ctx, series, horizon, origin or None, plan=frame, plan_name=name)


def _csv_response(frame: pd.DataFrame, name: str, float_format: str) -> Response:
    out = frame.assign(date=pd.to_datetime(frame["date"]).dt.strftime("%Y-%m-%d"))
    return Response(out.to_csv(index=False, float_format=float_format), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})


def _requested_forecast(ctx: Ctx, horizon: int | None, origin: str | None) -> ServedForecast:
    """The served forecast for a download's query: the model's own horizon when none (or a longer one) is asked."""
    model = ctx.rt.served.model(RETURN_VOLUME)
    return served_forecast(ctx.rt, _origin_param(origin), min(horizon or model.horizon, model.horizon))


@router.get("/forecast/staffing.csv")
def staffing_csv(horizon: int | None = Query(None, ge=1, le=366), origin: str | None = Query(None, max_length=10),
                 ctx: Ctx = Depends(logged_in)) -> Response:
    """Agents per day and channel: the columns and number format of ``aftersales staff --out``."""
    try:
        sf = _requested_forecast(ctx, horizon, origin)
    except ApiError as e:
        return error_page(ctx, e.status, e.message)
    return _csv_response(sf.staffing, f"staffing-{sf.resp.origin}-h{sf.resp.horizon}.csv", "%.2f")


@router.get("/forecast/forecast.csv")
def forecast_csv(horizon: int | None = Query(None, ge=1, le=366), origin: str | None = Query(None, max_length=10),
                 ctx: Ctx = Depends(logged_in)) -> Response:
    """Every series' P10/P50/P90: the columns and number format of ``aftersales forecast --out`` (feed it to
    ``aftersales staff --forecast``)."""
    try:
        sf = _requested_forecast(ctx, horizon, origin)
    except ApiError as e:
        return error_page(ctx, e.status, e.message)
    return _csv_response(sf.frame, f"forecast-{sf.resp.origin}-h{sf.resp.horizon}.csv", "%.3f")
