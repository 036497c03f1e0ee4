"""Inline SVG charts for the pages under ``/ui/``: the forecast fan chart, sparklines and the account timeline. No
script, stylesheet or font is fetched."""

from __future__ import annotations

from datetime import date

import pandas as pd
from markupsafe import Markup

# --------------------------------------------------------------------------------------------------------------------
# Inline SVG


def _num(x: float) -> str:
    return f"{x:.1f}"


def fan_chart(past: pd.Series, fc: pd.DataFrame, events: list[tuple[date, str]], plan_fc: pd.DataFrame | None = None,
              width: int = 920, height: int = 300) -> Markup:
    """P10-P90 band, P50 line and the past days before the origin; events as dashed lines (names in tooltips)."""
    pad_l, pad_r, pad_t, pad_b = 48, 12, 14, 28
    days = [*past.index, *fc["date"]]
    if not days:
        return Markup("<p>No data to draw.</p>")
    d0, d1 = min(days), max(days)
    span = max((d1 - d0).days, 1)
    top = max([*past.tolist(), *fc["p90"].tolist(), *(plan_fc["p90"].tolist() if plan_fc is not None else []), 1.0])

    def x(d) -> float:
        return pad_l + (d - d0).days / span * (width - pad_l - pad_r)

    def y(v: float) -> float:
        return pad_t + (1 - v / top) * (height - pad_t - pad_b)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="forecast fan chart" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" class="chart">']
    for i in range(5):
        v = top * i / 4
        parts.append(f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{_num(y(v))}" y2="{_num(y(v))}" class="grid"/>'
                     f'<text x="{pad_l - 4}" y="{_num(y(v) + 4)}" text-anchor="end" class="axis">{v:,.0f}</text>')
    for d, name in events:
        if d0 <= d <= d1:
            parts.append(f'<line x1="{_num(x(d))}" x2="{_num(x(d))}" y1="{pad_t}" y2="{height - pad_b}" '
                         f'class="event"><title>{Markup.escape(name)} {d:%Y-%m-%d}</title></line>')

    def band(f: pd.DataFrame, cls: str) -> str:
        upper = " ".join(f"{_num(x(d))},{_num(y(v))}" for d, v in zip(f["date"], f["p90"], strict=True))
        lower = " ".join(f"{_num(x(d))},{_num(y(v))}" for d, v in zip(f["date"][::-1], f["p10"][::-1], strict=True))
        return f'<polygon points="{upper} {lower}" class="{cls}"/>'

    def line(ds, vs, cls: str) -> str:
        pts = " ".join(f"{_num(x(d))},{_num(y(v))}" for d, v in zip(ds, vs, strict=True))
        return f'<polyline points="{pts}" class="{cls}"/>'

    if len(fc):
        parts.append(band(fc, "band"))
        parts.append(line(fc["date"], fc["p50"], "p50"))
    if plan_fc is not None and len(plan_fc):
        parts.append(band(plan_fc, "band-plan"))
        parts.append(line(plan_fc["date"], plan_fc["p50"], "p50-plan"))
    if len(past):
        parts.append(line(past.index, past.to_numpy(), "past"))
    ticks = [t.date() for t in pd.date_range(d0, d1, freq="W-MON")]
    for d in ticks[:: max(1, len(ticks) // 10)]:
        parts.append(f'<text x="{_num(x(d))}" y="{height - 8}" text-anchor="middle" class="axis">{d:%m-%d}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def spark(values: list[float], width: int = 180, height: int = 32, fmt: str = "{:.0f}") -> Markup:
    """A small bar chart of weekly values (each bar's value in its tooltip)."""
    if not values:
        return Markup("")
    top = max(max(values), 1e-9)
    w = width / len(values)
    bars = "".join(
        f'<rect x="{_num(i * w)}" y="{_num(height - v / top * height)}" width="{_num(max(w - 1, 1))}" '
        f'height="{_num(v / top * height)}"><title>week {i + 1}: {fmt.format(v)}</title></rect>'
        for i, v in enumerate(values))
    return Markup(f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
                  f'height="{height}" class="spark">{bars}</svg>')


def timeline(orders: pd.DataFrame, returns: pd.DataFrame, end: pd.Timestamp, width: int = 920,
             height: int = 120) -> Markup:
    """Orders (above the axis) and returns (below; refunds without the item in red) along the last year."""
    start = end - pd.Timedelta(days=365)
    span = (end - start).total_seconds()

    def x(t) -> float:
        return 10 + max(0.0, min(1.0, (t - start).total_seconds() / span)) * (width - 20)

    mid = height / 2
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="order and return timeline" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" class="chart">',
             f'<line x1="10" x2="{width - 10}" y1="{mid}" y2="{mid}" class="grid"/>']
    for r in orders[orders["ordered_at"] >= start].itertuples(index=False):
        parts.append(f'<line x1="{_num(x(r.ordered_at))}" x2="{_num(x(r.ordered_at))}" y1="{mid - 4}" '
                     f'y2="{mid - 30}" class="order"><title>order {Markup.escape(r.order_id)} '
                     f'{r.ordered_at:%Y-%m-%d} {r.amount:,.2f}</title></line>')
    for r in returns[returns["requested_at"] >= start].itertuples(index=False):
        cls = "return-noitem" if r.item_returned is False else "return"
        parts.append(f'<line x1="{_num(x(r.requested_at))}" x2="{_num(x(r.requested_at))}" y1="{mid + 4}" '
                     f'y2="{mid + 30}" class="{cls}"><title>return {Markup.escape(r.return_id)} '
                     f'{r.requested_at:%Y-%m-%d} {Markup.escape(str(r.reason))} refund {r.refund_amount:,.2f}'
                     f'</title></line>')
    for d in pd.date_range(start.normalize(), end, freq="MS"):
        parts.append(f'<text x="{_num(x(d))}" y="{height - 4}" class="axis">{d:%Y-%m}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
