"""A synthetic after-sales world: orders, returns, tickets, account links and review decisions, with ground truth.

The world is generated in vectorised steps (no Python loop over orders) from one ``numpy.random.Generator``, so the
same seed gives the same bytes. The mechanics the models learn (seasonality, return lags, abuse patterns, merchant
deterioration, escalation causes) are documented in ``truth/README.md`` written beside the ground truth.

This module assembles and writes the tables; the steps live in :mod:`features.synthetic_world` (constants, day grid,
merchants, accounts, orders and lines), :mod:`features.synthetic_aftersales` (returns, tickets, links, reviews) and
:mod:`features.synthetic_truth` (the ground truth and its README).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from features.calendar import SIZE_CLASSES, market_events
from features.scenarios import Scenario, default_scenario, write_scenario_files
from features.settings import Settings
from features.synthetic_aftersales import _links, _returns, _reviews, _tickets
from features.synthetic_truth import _write_truth
from features.synthetic_world import (
    CASE_TYPES,
    CATEGORIES,
    CHANNELS,
    P_NORMAL,
    REASONS,
    REGIONS,
    _accounts,
    _day_grid,
    _ids,
    _lines,
    _merchants,
    _orders,
    _take,
    _ts,
    _write,
)


def generate_world(out_dir: Path | str, seed: int = 42, accounts: int = 20_000, merchants: int = 400,
                   start: str = "2023-01-01", days: int = 730, market: str = "CN", progress: bool = True,
                   settings: Settings | None = None, scenario: Scenario | None = None) -> dict:
    """Generate a synthetic after-sales world into ``out_dir``; return a summary (row counts, paths, seconds).

    Writes the contract tables as Parquet (orders, returns, tickets, account_links, review_decisions) and the
    ground truth under ``out_dir/truth/``. Same arguments, same bytes. Order volume scales with ``accounts``
    (about 20 order lines per account over two years). A ``scenario`` (``features.scenarios``) sets every mechanic
    and its own market, start and days (which then replace the arguments); without one the default world is made.
    """
    if scenario is None:
        scenario = default_scenario(market, start, int(days))
    sc = scenario
    market, start, days = sc.market, sc.start, int(sc.days)
    if accounts < 50 or merchants < 5 or days < 60:
        raise ValueError(f"world too small (accounts={accounts}, merchants={merchants}, days={days}): "
                         "use at least 50 accounts, 5 merchants and 60 days")
    first = pd.Timestamp(start)
    last_day = first + pd.Timedelta(days=int(days))
    if last_day > pd.Timestamp.now().normalize() + pd.Timedelta(days=1):
        raise ValueError(f"the world would end on {last_day.date()}, in the future: the input contract rejects "
                         "future timestamps, so choose an earlier --start or fewer --days")
    t0 = time.perf_counter()
    settings = settings or Settings()
    out = Path(out_dir)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    steps = tqdm(total=8, desc="generate", disable=not progress, unit="step")

    def step(label: str) -> None:
        steps.set_postfix_str(label)
        steps.update(1)

    w = _day_grid(rng, pd.Timestamp(start), int(days), market, settings, sc)
    ev = market_events(market, w.start, w.start + pd.Timedelta(days=days - 1), settings)
    big = ev[ev["size"] >= SIZE_CLASSES["medium"]]
    event_days = np.unique(((big["date"] - w.start).dt.days).to_numpy())
    # One wardrobing occasion per event block (first day of consecutive days).
    event_days = event_days[np.concatenate([[True], np.diff(event_days) > 1])] if len(event_days) else event_days
    mer = _merchants(rng, merchants, w, sc)
    acc = _accounts(rng, accounts, w, sc)
    step("accounts & merchants")
    orders = _orders(rng, w, acc, mer, accounts, event_days, sc)
    ln = _lines(rng, w, orders, acc, mer, sc)
    step("orders")
    rt = _returns(rng, w, ln, acc, mer, sc)
    step("returns")
    tk = _tickets(rng, w, ln, rt, acc, mer, sc)
    step("tickets")
    link_acc, link_type, link_val = _links(rng, acc, sc)
    rv = _reviews(rng, w, acc, ln, rt)
    step("links & reviews")

    acc_ids, mer_ids = _ids("A", accounts), _ids("M", merchants)
    order_ids = _ids("O", len(orders["day"]), width=max(len(str(len(orders["day"]))), 7))
    cat_names = pa.array(np.array(CATEGORIES))
    orders_tbl = pa.table({
        "order_id": order_ids.take(pa.array(ln["order"])),
        "line_no": pa.array(ln["line_no"].astype(np.int64)),
        "account_id": _take(acc_ids, ln["account"]),
        "merchant_id": mer_ids.take(pa.array(ln["merchant"])),
        "ordered_at": _ts(ln["ordered_s"]),
        "category": cat_names.take(pa.array(ln["category"])),
        "quantity": pa.array(ln["quantity"].astype(np.int64)),
        "amount": pa.array(ln["amount"].astype(np.float64)),
        "region": pa.array(REGIONS).take(pa.array(ln["region"])),
        "promised_delivery_at": _ts(ln["promised_s"]),
        "delivered_at": _ts(ln["delivered_s"], null=~ln["delivered"]),
    })
    _write(orders_tbl, out / "orders.parquet")
    step("write orders")
    rl = rt["line"]
    returns_tbl = pa.table({
        "return_id": _ids("R", len(rl), width=max(len(str(len(rl))), 7)),
        "order_id": _take(order_ids, ln["order"][rl], null=rt["order_null"]),
        "account_id": _take(acc_ids, ln["account"][rl]),
        "merchant_id": mer_ids.take(pa.array(ln["merchant"][rl])),
        "requested_at": _ts(rt["requested_s"]),
        "reason": pa.array(np.array(REASONS)).take(pa.array(rt["reason"])),
        "quantity": pa.array(rt["quantity"].astype(np.int64)),
        "refund_amount": pa.array(rt["refund"].astype(np.float64)),
        "item_returned": pa.array(rt["item_returned"], mask=rt["returned_null"], type=pa.bool_()),
    })
    _write(returns_tbl, out / "returns.parquet")
    tl = tk["line"]
    n_t = len(tl)
    ticket_ids = _ids("T", n_t, width=max(len(str(n_t)), 7))
    open_ = tk["open"]
    tickets_tbl = pa.table({
        "ticket_id": ticket_ids,
        "created_at": _ts(tk["created"]),
        "account_id": _take(acc_ids, tk["account"]),
        "merchant_id": mer_ids.take(pa.array(tk["merchant"])),
        "order_id": _take(order_ids, ln["order"][tl], null=~tk["has_order"]),
        "case_type": pa.array(CASE_TYPES).take(pa.array(tk["case"])),
        "channel": pa.array(CHANNELS).take(pa.array(tk["channel"])),
        "amount": pa.array(np.round(tk["amount"], 2).astype(np.float64), mask=~tk["has_order"]),  # no order, no amount
        "text": pa.array(tk["text"], type=pa.string()),
        "escalated": pa.array(tk["escalated"], mask=open_, type=pa.bool_()),
        "resolved_at": _ts(tk["resolved"], null=open_),
    })
    _write(tickets_tbl, out / "tickets.parquet")
    links_tbl = pa.table({
        "account_id": acc_ids.take(pa.array(link_acc)),
        "link_type": pa.array(link_type, type=pa.string()),
        "link_value": pa.array(link_val, type=pa.string()),
    })
    _write(links_tbl, out / "account_links.parquet")
    reviews_tbl = pa.table({
        "account_id": acc_ids.take(pa.array(rv["account"])),
        "decision": pa.array(np.where(rv["confirmed"], "confirmed_abuse", "cleared"), type=pa.string()),
        "decided_at": _ts(rv["decided"]),
        "reviewer": pa.array(rv["reviewer"], type=pa.string()),
        "note": pa.array(rv["note"], mask=rv["note_null"], type=pa.string()),
    })
    _write(reviews_tbl, out / "review_decisions.parquet")
    step("write returns, tickets, links")
    _write_truth(out / "truth", w, acc, mer, ln, tk, acc_ids, mer_ids, ticket_ids, seed, market, sc)
    write_scenario_files(out, sc, seed, w.start + pd.Timedelta(days=w.days - 1))
    step("truth")
    steps.close()
    summary = {
        "out_dir": str(out), "seed": seed, "scenario": sc.name, "market": market, "start": str(w.start.date()),
        "days": int(days),
        "orders_rows": orders_tbl.num_rows, "returns_rows": returns_tbl.num_rows, "tickets_rows": tickets_tbl.num_rows,
        "account_links_rows": links_tbl.num_rows, "review_decisions_rows": reviews_tbl.num_rows,
        "accounts": int(accounts), "merchants": int(merchants),
        "abusive_accounts": int((acc["pattern"] != P_NORMAL).sum()), "risky_merchants": int(mer["risky"].sum()),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return summary
