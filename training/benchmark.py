"""Cross-world model benchmark: every model on worlds it was not shaped on, against every baseline, on later time.

``aftersales benchmark-models --worlds K --seed-base S --out DIR`` generates K worlds (``--scenario random``, seeds
S..S+K-1) and, in each, trains on earlier time and scores later time through the project's own functions and
commands (so whatever improves a model shows here):

- **holiday return volume**: the ``forecast`` command from an origin before the last Christmas (Nov 30, 60 days),
  holiday-window WAPE of ``total`` against the planners' same-period-last-year x growth, statsforecast AutoETS and
  MSTL, and the seasonal naive; plus the 80% interval's coverage inside the holiday windows.
- **serial returners, cold start** (the world's prior review decisions removed): the model fitted as of T1 ranks the
  accounts as of T2 (``training.serial_returners.default_split``); precision of the review queue of K = the number
  of abusive accounts (truth), against the return-rate rule (returns+1)/(orders+10), the most-returns rule and an
  IsolationForest on counts; recall per pattern; then 200 decisions by simulated reviewers (the top of the cold
  queue as of T1, decided from the truth) go through the review decision store and the model is refitted; its
  queue on the accounts not reviewed (``model_200``) is compared with the cold start's queue on the same accounts
  and the same K (``cold_start_200``): the reviews took the easiest abusers out of both. Both also on the queues'
  top-score part (``*_top_score_part``, reserved pattern slots and audit sample left out; ``*_top_score_n``
  accounts). After review K is often a handful (median 13 on the 48 tuning worlds 600-611, 700-711, 800-811,
  900-911), where one account moves a world by 0.1 or more: the table's ``pooled`` row gives each precision
  column as all worlds' hits over all worlds' K.
- **merchant risk**: ``train merchant-risk`` on the data as known 60 days before the end, the champion ranks the
  merchants (``rank-merchants``), NDCG@50 of the next 60 days' complaint rates against the last-60-day complaint
  rate and count.
- **ticket triage**: ``train ticket-triage`` on the same earlier data, then the serving ``Runtime`` (in process)
  scores the later tickets carrying only their own fields, as a ticket system sends them; ROC-AUC against the
  case-type escalation rate.

Each model's section is isolated: an error is recorded in its table and the benchmark goes on. Outputs: one CSV
per model (rows: worlds; columns: the model and each baseline on the model's metric, then details; last rows: min,
median, max and how many worlds the model wins) and ``index.html`` with a table and a plot per model.
Discipline: tune on seeds below 1000; report figures from seeds at or above 1000, run once.

This module runs worlds and the real data and writes the tables and the page; the sections are in
:mod:`training.benchmark_sections`, the sections' list and the data as of a day in :mod:`training.benchmark_worlds`.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import pandas as pd

from training.benchmark_sections import (
    REFRESH_CADENCES,
    account_counts_as_of,
    holiday_section,
    merchant_section,
    serial_section,
    top_k,
    triage_section,
)
from training.benchmark_worlds import (  # noqa: F401 — SECTIONS and WorldResult are read as training.benchmark.*
    LABEL_DAYS,
    SECTIONS,
    Echo,
    Section,
    WorldResult,
    data_as_of,
    last_day,
    utc_day_end,
    world_settings,
)

REAL_HOLIDAY_ORIGIN, REAL_HOLIDAY_END = "2010-10-31", "2010-12-09"
REAL_SERIAL_AS_OF, REAL_SERIAL_TOP, REAL_SERIAL_DAYS = "2010-06-30", 50, 183


# --------------------------------------------------------------------------------------------------------------------
# One world, all worlds, the real data


def _isolated(fn, *args, **kwargs) -> dict:
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 — one model's failure must not stop the others
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}


def run_world(seed: int, root: Path, accounts: int, merchants: int, sections: tuple[str, ...], echo: Echo,
              tick: Callable[[], None] = lambda: None, refresh_cadence: str = "both",
              serve_refresh_days: int = 0) -> WorldResult:
    """Generate the world of ``seed`` (random scenario) and run every section on it."""
    from features.scenarios import make_scenario
    from features.synthetic import generate_world

    t0 = time.perf_counter()
    wdir = root / f"seed_{seed}"
    data = wdir / "data"
    if wdir.exists():
        shutil.rmtree(wdir)
    sc = make_scenario("random", seed)
    generate_world(data, seed=seed, accounts=accounts, merchants=merchants, progress=False, scenario=sc)
    res = WorldResult(seed, f"seed {seed} ({sc.market}, {sc.days} days)")
    res.seconds["generate"] = time.perf_counter() - t0
    end = last_day(data)
    cut = end - pd.Timedelta(days=LABEL_DAYS)
    asof = None
    for key in sections:
        t = time.perf_counter()
        if key == "holiday_volume":
            # The forecast command only logs runs: one MLflow store for every world's forecasts (a new store costs
            # its schema migrations each time).
            res.rows[key] = _isolated(holiday_section, data, sc.market, wdir / "forecast", root / "_forecast_models")
        elif key == "serial_returners":
            res.rows[key] = _isolated(serial_section, data, sc.market, wdir / "models_serial")
        else:
            if asof is None:
                asof = data_as_of(data, wdir / "data_as_of", cut)
            if key == "merchant_risk":
                res.rows[key] = _isolated(merchant_section, data, asof, cut, sc.market, wdir / "models_as_of")
            else:
                res.rows[key] = _isolated(triage_section, data, asof, cut, sc.market, wdir / "models_as_of",
                                          cadence=refresh_cadence, serve_refresh_days=serve_refresh_days)
        res.seconds[key] = time.perf_counter() - t
        tick()
    res.seconds["total"] = time.perf_counter() - t0
    echo(f"  {res.label}: " + ", ".join(f"{k} {v:.1f}s" for k, v in res.seconds.items()))
    return res


def real_checks(file: Path, root: Path, echo: Echo) -> pd.DataFrame:
    """The Online Retail checks: holiday volume from 2010-10-31 to 2010-12-09 (GB) and serial returners as of
    2010-06-30 (top 50 still heavy returners in the next 6 months)."""
    from features.contract import load_dataset
    from features.online_retail import import_online_retail
    from training.serial_returners import evaluate_forward

    data = root / "online_retail"
    if data.exists():
        shutil.rmtree(data)
    import_online_retail([file], data, progress=False)
    rows = []
    t = time.perf_counter()
    origin = pd.Timestamp(REAL_HOLIDAY_ORIGIN)
    h = int((pd.Timestamp(REAL_HOLIDAY_END) - origin).days)
    hv = _isolated(holiday_section, data, "GB", root / "online_retail_forecast", root / "online_retail_models",
                   origin=origin, horizon=h)
    for name in ("model", *SECTIONS["holiday_volume"].baselines):
        rows.append({"check": f"holiday volume {REAL_HOLIDAY_ORIGIN}..{REAL_HOLIDAY_END} (GB)",
                     "metric": "holiday-window WAPE (lower is better)", "method": name, "value": hv.get(name),
                     "coverage80": hv.get(f"coverage80_{name}"), "wape_all_days": hv.get(f"{name}_wape_all_days"),
                     "note": hv.get("error") or hv.get("note", "")})
    echo(f"  real: holiday volume {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    try:
        settings = world_settings(root / "online_retail_models_serial", "GB")
        ds = load_dataset(data)
        fw = evaluate_forward(ds, REAL_SERIAL_AS_OF, settings, top=REAL_SERIAL_TOP, horizon_days=REAL_SERIAL_DAYS,
                              market="GB")
        table = fw["table"]
        # The planners' rule of the issue: the 50 accounts with most returns so far (all history up to the day).
        day = pd.Timestamp(REAL_SERIAL_AS_OF)
        counts = account_counts_as_of(ds.orders, ds.returns, day, _accounts_of(ds, day))
        end, start = utc_day_end(fw["window_end"]), utc_day_end(day)
        r = ds.returns
        future = r.loc[(r["requested_at"] >= start) & (r["requested_at"] < end), "account_id"].dropna().astype(str)
        fut = future.value_counts().reindex(counts.index).fillna(0).to_numpy()
        heavy = fut >= fw["heavy_threshold"]
        top = top_k(counts["returns"].to_numpy(), counts.index, REAL_SERIAL_TOP)
        note = (f"heavy = at least {fw['heavy_threshold']:.0f} returns in {REAL_SERIAL_AS_OF}..{fw['window_end']} "
                f"({fw['heavy_accounts']} accounts); model mode {fw['mode']}")
        note += f"; the queue ranks by {fw['queue_method']} ({fw['queue_evidence']})"
        for name, label in (("model", "model"), ("queue", "queue"), ("rule", "rule_90d"),
                            ("if_counts", "isolation_forest"), ("most_returns", "most_returns_365d")):
            rows.append({"check": f"serial returners as of {REAL_SERIAL_AS_OF}, top {REAL_SERIAL_TOP}",
                         "metric": "share still heavy returners next 6 months", "method": label,
                         "value": float(table.loc[name, "precision"]), "note": note})
        rows.append({"check": f"serial returners as of {REAL_SERIAL_AS_OF}, top {REAL_SERIAL_TOP}",
                     "metric": "share still heavy returners next 6 months", "method": "most_returns_so_far",
                     "value": float(heavy[top].mean()), "note": note})
    except Exception as e:  # noqa: BLE001
        rows.append({"check": f"serial returners as of {REAL_SERIAL_AS_OF}", "metric": "", "method": "model",
                     "value": float("nan"), "note": f"{type(e).__name__}: {str(e)[:300]}"})
    echo(f"  real: serial returners {time.perf_counter() - t:.1f}s")
    return pd.DataFrame(rows)


def _accounts_of(ds, day: pd.Timestamp) -> pd.Index:
    end = utc_day_end(day)
    a = pd.concat([ds.orders.loc[ds.orders["ordered_at"] < end, "account_id"],
                   ds.returns.loc[ds.returns["requested_at"] < end, "account_id"]]).dropna().astype(str)
    return pd.Index(sorted(a.unique()))


# --------------------------------------------------------------------------------------------------------------------
# Tables, plots, HTML


def section_table(section: Section, results: list[WorldResult]) -> pd.DataFrame:
    """Rows: worlds, then min, median, max and wins; columns: model, baselines, then the section's details."""
    rows = []
    for r in results:
        row = r.rows.get(section.key, {})
        rows.append({"world": r.label, "seed": r.seed, **row})
    df = pd.DataFrame(rows)
    cols = ["model", *section.baselines]
    for c in [*cols, "error"]:
        if c not in df.columns:
            df[c] = np.nan if c != "error" else ""
    df["error"] = df["error"].fillna("")
    vals = df[cols].astype(float)
    better = (lambda a, b: a > b) if section.higher_is_better else (lambda a, b: a < b)
    win = vals["model"].notna() & np.logical_and.reduce(
        [vals[b].isna() | better(vals["model"], vals[b]) for b in section.baselines])
    df["model_wins"] = win
    rest = [c for c in df.columns if c not in ("world", "seed", *cols, "model_wins", "error")]
    df = df[["world", "seed", *cols, "model_wins", *rest, "error"]]
    summary = [{"world": "min", **vals.min().to_dict()}, {"world": "median", **vals.median().to_dict()},
               {"world": "max", **vals.max().to_dict()},
               {"world": "wins", "model": float(win.sum()),
                **{b: float((vals[b].notna() & ~vals["model"].isna() & ~better(vals["model"], vals[b])
                             & ~(vals["model"] == vals[b])).sum()) for b in section.baselines}}]
    if section.pooled:
        summary.append({"world": "pooled", **pooled_means(df, section.pooled)})
    return pd.concat([df, pd.DataFrame(summary)], ignore_index=True)


def pooled_means(df: pd.DataFrame, pairs: tuple[tuple[str, str], ...]) -> dict[str, float]:
    """Each column's mean over the worlds weighted by its weight column (``Section.pooled``), over the worlds where
    both are known: for a precision in a queue of K weighted by K, all worlds' hits over all worlds' K."""
    out = {}
    for col, weight in pairs:
        if col not in df.columns or weight not in df.columns:
            continue
        v, w = pd.to_numeric(df[col], errors="coerce"), pd.to_numeric(df[weight], errors="coerce")
        ok = v.notna() & w.notna() & (w > 0)
        out[col] = float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else float("nan")
    return out


def _plot(section: Section, table: pd.DataFrame) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worlds = table[table["seed"].notna()]
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(worlds) + 3), 3.2))
    x = np.arange(len(worlds))
    for name in ["model", *section.baselines]:
        v = pd.to_numeric(worlds[name], errors="coerce").to_numpy()
        ax.plot(x, v, "o-" if name == "model" else "x", label=name, lw=2 if name == "model" else 0,
                ms=7 if name == "model" else 6, zorder=3 if name == "model" else 2)
    ax.set_xticks(x, [str(int(s)) for s in worlds["seed"]])
    ax.set_xlabel("world (seed)")
    ax.set_ylabel(section.metric.split(" (")[0], fontsize=8)
    ax.set_title(section.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def write_html(out: Path, tables: dict[str, pd.DataFrame], real: pd.DataFrame | None, meta: dict) -> Path:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Cross-world benchmark</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#eee}</style></head><body>",
             "<h1>Cross-world model benchmark</h1>",
             f"<p>{meta['worlds']} worlds (random scenarios, seeds {meta['seeds']}), {meta['accounts']} accounts and "
             f"{meta['merchants']} merchants each; took {meta['seconds']:.0f}s. Each model trains on earlier time "
             "and is scored on later time; the baselines on the same accounts, merchants, tickets or days. Row "
             "<i>wins</i>: under <i>model</i> the worlds where the model beats every baseline; under a baseline the "
             "worlds where that baseline beats the model.</p>"]
    for key, table in tables.items():
        s = SECTIONS[key]
        shown = table[["world", "model", *s.baselines, "model_wins", "error"]]
        parts += [f"<h2>{s.title}</h2><p>Metric: {s.metric}.</p>",
                  f"<img src='data:image/png;base64,{_plot(s, table)}'/>",
                  shown.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"),
                  f"<p>Details in <code>{key}.csv</code>.</p>"]
    if real is not None:
        parts += ["<h2>Real data: UCI Online Retail II (2009-2010)</h2>",
                  real.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")]
    parts.append("</body></html>")
    path = out / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def run_benchmark(worlds: int, seed_base: int, out: Path, accounts: int = 3000, merchants: int = 120,
                  real: Path | None = None, sections: tuple[str, ...] = tuple(SECTIONS), echo: Echo = click.echo,
                  progress: bool = True, keep_worlds: bool = True, refresh_cadence: str = "both",
                  serve_refresh_days: int = 0) -> dict:
    """Run every section on ``worlds`` random worlds (and the real checks); write the CSVs and index.html.
    ``refresh_cadence``: the triage section's refresh week(s); ``serve_refresh_days``: N > 0 also serves the later
    tickets with `refresh-features` every N days (:func:`training.benchmark_sections.triage_section`)."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = out / "worlds"
    seeds = list(range(seed_base, seed_base + worlds))
    results: list[WorldResult] = []
    import logging

    for name in ("mlflow", "aftersales.serving", "serving", "alembic"):  # registrations, missing-champion notes
        logging.getLogger(name).setLevel(logging.ERROR)
    with click.progressbar(length=len(seeds) * len(sections), label="benchmark", show_pos=True,
                           hidden=not progress, file=None) as bar:
        for seed in seeds:
            results.append(run_world(seed, root, accounts, merchants, sections, echo, tick=lambda: bar.update(1),
                                     refresh_cadence=refresh_cadence, serve_refresh_days=serve_refresh_days))
            if not keep_worlds:
                shutil.rmtree(root / f"seed_{seed}", ignore_errors=True)
    tables = {}
    for key in sections:
        tables[key] = section_table(SECTIONS[key], results)
        tables[key].to_csv(out / f"{key}.csv", index=False)
    real_table = None
    if real is not None:
        echo("real data checks (Online Retail)")
        real_table = real_checks(Path(real), out / "real", echo)
        real_table.to_csv(out / "real.csv", index=False)
    timings = pd.DataFrame([{"seed": r.seed, **r.seconds} for r in results])
    timings.to_csv(out / "timings.csv", index=False)
    seconds = time.perf_counter() - t0
    meta = {"worlds": worlds, "seeds": f"{seeds[0]}..{seeds[-1]}" if seeds else "-", "accounts": accounts,
            "merchants": merchants, "seconds": seconds}
    html = write_html(out, tables, real_table, meta)
    (out / "benchmark.json").write_text(json.dumps({**meta, "sections": list(sections),
                                                    "refresh_cadence": refresh_cadence,
                                                    "serve_refresh_days": serve_refresh_days,
                                                    "real": str(real) if real else None}, indent=1))
    return {"tables": tables, "real": real_table, "html": html, "seconds": seconds, "timings": timings}


@click.command("benchmark-models")
@click.option("--worlds", "n_worlds", default=12, show_default=True, type=click.IntRange(1, 500),
              help="Number of random worlds.")
@click.option("--seed-base", default=0, show_default=True, type=int,
              help="Worlds use seeds S..S+K-1. Tune on seeds below 1000; report from seeds at or above 1000, once.")
@click.option("--real", "real", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="UCI Online Retail II 2009-2010 file: also run the real-data checks on it.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the CSVs, index.html and the worlds.")
@click.option("--accounts", default=3000, show_default=True, help="Accounts per world.")
@click.option("--merchants", default=120, show_default=True, help="Merchants per world.")
@click.option("--models", "only", default=",".join(SECTIONS), show_default=True,
              help="Comma-separated sections to run: " + ", ".join(SECTIONS) + ".")
@click.option("--keep-worlds/--drop-worlds", default=True, show_default=True,
              help="Keep each world's data and models under OUT/worlds.")
@click.option("--refresh-cadence", type=click.Choice(REFRESH_CADENCES), default="both", show_default=True,
              help="Ticket triage, the week after `refresh-features`: 'once' refreshes on the refresh day and scores "
                   "the week with that snapshot (refresh_week_*); 'daily' refreshes at the start of each day of the "
                   "week, the running service swapping each time, as a daily cron would (refresh_daily_*; six more "
                   "refreshes per world); 'both' reports the two on the same tickets.")
@click.option("--serve-refresh-days", type=click.IntRange(min=0), default=0, show_default=True,
              help="Ticket triage: also serve the later tickets through a Runtime that runs `refresh-features` every N "
                   "days of the later period and swaps to it while running (column model_refreshed; 0: off).")
def benchmark_models_cmd(n_worlds: int, seed_base: int, real: Path | None, out: Path, accounts: int, merchants: int,
                         only: str, keep_worlds: bool, refresh_cadence: str, serve_refresh_days: int) -> None:
    """Every model against every baseline on K fresh worlds (and, with --real, on Online Retail).

    Writes OUT/<model>.csv (rows: worlds; columns: model and baselines on the model's metric, details; last rows:
    min, median, max, wins) and OUT/index.html with a plot per model. Prints each world's timings.
    """
    sections = tuple(s.strip() for s in only.split(",") if s.strip())
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise click.BadParameter(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}",
                                 param_hint="--models")
    if seed_base >= 1000:
        click.echo("note: seeds >= 1000 are the report seeds: run them once, after the models are fixed")
    res = run_benchmark(n_worlds, seed_base, out, accounts, merchants, real, sections, keep_worlds=keep_worlds,
                        refresh_cadence=refresh_cadence, serve_refresh_days=serve_refresh_days)
    for key, table in res["tables"].items():
        s = SECTIONS[key]
        summary = table[table["seed"].isna()].set_index("world")[["model", *s.baselines]]
        click.secho(f"\n{s.title}: {s.metric}", bold=True)
        click.echo(summary.to_string(float_format=lambda v: f"{v:.3f}"))
        errors = table.loc[table["seed"].notna() & (table["error"].fillna("").astype(str) != ""),
                           ["world", "error"]]
        for _, e in errors.iterrows():
            click.echo(f"  error in {e['world']}: {e['error']}")
        if key == "ticket_triage":
            w = table[table["seed"].notna()]
            lift = pd.to_numeric(w["model"], errors="coerce") - pd.to_numeric(w["case_type_rate"], errors="coerce")
            click.echo(f"  lift over case-type rate >= 0.10 on {int((lift >= 0.10).sum())}/{len(w)} worlds "
                       f"(median {lift.median():+.3f})")
            for name, what in (("refresh_week", "one refresh-features, the week after it"),
                               ("refresh_daily", "refresh-features each morning of that week")):
                if f"{name}_gap" not in table.columns:
                    continue
                gap = pd.to_numeric(w[f"{name}_gap"], errors="coerce").dropna()
                sd = pd.to_numeric(w.get(f"{name}_gap_sd"), errors="coerce")
                click.echo(f"  {what}: served within 0.01 of the offline point-in-time ROC-AUC on "
                           f"{int((gap.abs() <= 0.01).sum())}/{len(gap)} worlds (median gap {gap.median():+.4f}, "
                           f"median |gap| {gap.abs().median():.4f}; bootstrap SD of a world's gap, median "
                           f"{sd.median():.4f})")
    if res["real"] is not None:
        click.secho("\nOnline Retail", bold=True)
        click.echo(res["real"].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    click.echo(f"\nwrote {out}/index.html and one CSV per model; total {res['seconds']:.0f}s")
