"""``aftersales refresh-features``: fresh served features for the champion versions, without retraining.

Recomputes, as of the data folder's end and with the same functions training uses, the account snapshot and review
queue (scored by the pinned serial-returner version), the merchant snapshot (ranked by the pinned merchant-risk
version) and the ticket-triage account, merchant and order context; writes them as a new snapshot generation
(:mod:`features.generations`) that keeps every model version pinned, publishes it to Redis under its own key prefix
when ``AFTERSALES_REDIS_URL`` is set, and only then swaps ``CURRENT``. A running service picks the generation up on
its next poll (about a second), whole.

The versions served are the champions at refresh time (the ``champion`` alias, resolved and pinned in the new
generation), so a promotion registered from another machine against a team server is served, with features computed
for it, after the next refresh; a model without a champion keeps the version the current generation pins, and a
model with neither keeps its snapshot as it is.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import click

from features import generations
from features.contract import ContractError
from features.settings import Settings, get_settings
from training.data import load_for_command


def _pinned(name: str, pins: dict[str, int], settings: Settings, echo):
    """The version of ``name`` to serve: its champion (pinned from now on), else the version the served generation
    pins; None when there is neither."""
    from training import registry

    try:
        loaded = registry.load_champion(name, settings=settings)
    except registry.ModelNotFound as e:
        if name not in pins:
            echo(f"  {name}: {e}; its snapshot is kept as it is")
            return None
        echo(f"  {name}: no champion; keeping the served v{pins[name]}")
        return registry.load_version(name, pins[name], settings=settings)
    if name in pins and pins[name] != loaded.version:
        echo(f"  {name}: champion v{loaded.version} replaces the served v{pins[name]} (promoted from another "
             "machine, or the alias was moved by hand)")
    return loaded


def refresh_features(data_dir: Path, settings: Settings, echo=click.echo) -> dict:
    """Write a new generation of served features as of the end of ``data_dir`` and serve it; returns a summary."""

    t0 = time.perf_counter()
    snapdir = settings.snapshots_dir
    # Loaded before taking the lock: a promotion may finish meanwhile; the pins are read under the lock.
    ds = load_for_command(data_dir, settings.models_dir / "refresh", echo)
    with generations.lock(snapdir):
        return _refresh(ds, data_dir, settings, echo, t0)


def _refresh(ds, data_dir: Path, settings: Settings, echo, t0: float) -> dict:
    """The refresh proper, under the generations lock: read the pins, compute, stage, publish, swap."""
    from features.merchants import prepare_events
    from features.tickets import data_end
    from training import merchant_risk as mr
    from training import serial_returners as sr
    from training.ticket_triage import write_snapshots

    snapdir = settings.snapshots_dir
    base = generations.current_manifest(snapdir)
    pins = {n: int(e["version"]) for n, e in base.get("models", {}).items() if e.get("version") is not None}
    first, last = ds.time_span()
    source = f"refresh-features on {Path(data_dir).resolve()}"
    origin = "written by refresh-features into this generation"
    staging = snapdir / ".refresh" / uuid.uuid4().hex[:8]
    entries: dict[str, dict] = {}
    timings: dict[str, float] = {}
    try:
        loaded = _pinned(sr.MODEL_NAME, pins, settings, echo)
        if loaded is not None:
            t = time.perf_counter()
            X = sr.features_as_of(ds, last, settings)
            labels = sr.load_labels(ds, settings, last)
            out = staging / sr.MODEL_NAME
            sr.write_snapshots(X, loaded.model, settings, out=out,
                              exclude=sr.excluded_accounts(labels, last, settings.serial_review_cooldown_days))
            entries[sr.MODEL_NAME] = {"version": loaded.version, "dir": out, "as_of": str(last.date()),
                                      "source": source, "origin": origin}
            timings["accounts"] = time.perf_counter() - t
            echo(f"  accounts: {len(X):,} scored by {sr.MODEL_NAME} v{loaded.version} as of {last.date()} "
                 f"({timings['accounts']:.1f}s)")
        loaded = _pinned(mr.MODEL_NAME, pins, settings, echo)
        if loaded is not None:
            t = time.perf_counter()
            events = prepare_events(ds)
            ranking = mr.rank_as_of(loaded.model, events, events.end, settings)
            out = staging / mr.MODEL_NAME
            mr.write_snapshots(ranking, settings, out=out)
            entries[mr.MODEL_NAME] = {"version": loaded.version, "dir": out, "as_of": str(events.end.date()),
                                      "source": source, "origin": origin}
            timings["merchants"] = time.perf_counter() - t
            echo(f"  merchants: {len(ranking):,} ranked by {mr.MODEL_NAME} v{loaded.version} as of "
                 f"{events.end.date()} ({timings['merchants']:.1f}s)")
        if ds.has("tickets"):
            from training.ticket_triage import MODEL_NAME as TRIAGE

            t = time.perf_counter()
            triage = _pinned(TRIAGE, pins, settings, echo)
            version = triage.version if triage is not None else pins.get(TRIAGE)
            out = staging / TRIAGE
            write_snapshots(ds, settings, out=out)
            end = data_end(ds)
            entries[TRIAGE] = {"version": version, "dir": out, "as_of": str(end), "source": source, "origin": origin}
            timings["ticket context"] = time.perf_counter() - t
            echo(f"  ticket-triage account, merchant and order context as of {end:%Y-%m-%d %H:%M} "
                 f"({timings['ticket context']:.1f}s)")
        if not entries:
            raise click.ClickException("nothing to refresh: no served or champion model; run `aftersales train all "
                                       "--data DIR` first")
        gen_id, folder = generations.stage(snapdir, entries, reason=source)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    published = {}
    if settings.redis_url:
        from serving.online_store import publish_all

        prefix = f"aftersales:{gen_id}"
        published = publish_all(folder, settings.redis_url, prefix=prefix)
        generations.update_manifest(snapdir, gen_id, redis_prefix=prefix)
        echo(f"  published to Redis under {prefix}: " + ", ".join(f"{k} {v:,}" for k, v in published.items()))
    generations.activate(snapdir, gen_id)
    return {"generation": gen_id, "folder": str(folder), "as_of": str(last.date()),
            "pinned": {n: e["version"] for n, e in entries.items()}, "redis": published,
            "seconds": round(time.perf_counter() - t0, 1)}


@click.command("refresh-features")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Data folder holding the contract tables (default: AFTERSALES_DATA_DIR or data/default).")
def refresh_features_cmd(data_dir: Path | None) -> None:
    """Recompute the served account, merchant and order features as of the data's end, for the champion versions
    (pinned in the new generation), and serve them (a new snapshot generation; the running service swaps to it within a second).

    No model is retrained or promoted. With AFTERSALES_REDIS_URL set, the generation is published to Redis first.
    Run it on a schedule (hourly or daily: see the README's "Promotion and served features").
    """
    settings = get_settings()
    data_dir = Path(data_dir or settings.data_dir)
    if not data_dir.is_dir():
        raise click.ClickException(f"data folder {data_dir} not found")
    try:
        summary = refresh_features(data_dir, settings)
    except ContractError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"serving snapshot generation {summary['generation']} (as of {summary['as_of']}, pinned "
               + ", ".join(f"{n} v{v}" for n, v in summary["pinned"].items()) + f") in {summary['seconds']}s")
