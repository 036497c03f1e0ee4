"""The ``aftersales`` command line: one entry point for data, training, evaluation, forecasts, queues and serving.

Model-specific commands live beside their model's training code and are imported only when called, so
``aftersales --help`` answers at once.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

import click

from features import catalogue
from training.data import engine_for_command, engine_options

# Command name -> "module:attribute" of a click.Command, imported on first use. Model commands come from the
# catalogue (features/catalogue.py); the rest are the project's own.
LAZY_HELP: dict[str, str] = {
    **{c.name: c.help for m in catalogue.MODELS for c in m.commands},
    "report": "Write a static HTML report of every model's results.",
    "score-all": "Score every account and merchant as of a day; write Parquet (pandas or Dask).",
    "refresh-features": "Recompute the served features as of the data's end for the champions; swap them in.",
    **{m.cli: m.evaluate_help for m in catalogue.MODELS},
    "benchmark-models": "Every model vs every baseline on K random worlds (and Online Retail).",
}
LAZY_COMMANDS: dict[str, str] = {
    **{c.name: m.target(c.attr) for m in catalogue.MODELS for c in m.commands},
    "report": "training.report:report_cmd",
    "score-all": "training.scoring:score_all_cmd",
    "refresh-features": "training.refresh:refresh_features_cmd",
    "benchmark-models": "training.benchmark:benchmark_models_cmd",
}
# `aftersales evaluate MODEL`: every model's check on later time than it trained on (for return-volume a rolling-origin
# backtest, also reachable as `aftersales backtest return-volume`).
LAZY_EVALUATIONS: dict[str, str] = {m.cli: m.target("evaluate_cmd") for m in catalogue.MODELS}
LAZY_BACKTESTS: dict[str, str] = {"return-volume": LAZY_EVALUATIONS["return-volume"]}
# Trainers that take a features.engine engine (Dask features + lightgbm.dask).
DASK_TRAINERS = tuple(m.cli for m in catalogue.MODELS if m.dask)
# Training order matters (catalogue order): triage reads the account and merchant snapshots the other two write.
TRAINERS: dict[str, str] = {m.cli: m.target("train") for m in catalogue.MODELS}


def _resolve(target: str):
    module, attr = target.split(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ModuleNotFoundError, AttributeError) as e:
        raise click.ClickException(f"{target} is not available in this build ({e})") from e


class LazyGroup(click.Group):
    """A click group whose listed subcommands are imported only when invoked (or when help lists them)."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name in self.lazy:
            return _resolve(self.lazy[name])
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        # Listing lazy commands must not import them all: show their names with a pointer to --help.
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy:
                rows.append((name, LAZY_HELP.get(name, f"(see `{ctx.command_path} {name} --help`)")))
            else:
                cmd = super().get_command(ctx, name)
                if cmd is not None and not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(limit=70)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _settings():
    from features.settings import get_settings

    return get_settings()


def _data_option(f):
    return click.option(
        "--data", "data_dir", type=click.Path(path_type=Path), default=None,
        help="Data folder holding the contract tables (default: AFTERSALES_DATA_DIR or data/default).",
    )(f)


def _data_dir(data_dir: Path | None) -> Path:
    path = data_dir or _settings().data_dir
    if not path.is_dir():
        raise click.ClickException(
            f"data folder {path} not found: make one with `aftersales generate --out {path}` "
            "or import real data with `aftersales import-online-retail FILE --out DIR`"
        )
    return path


# Libraries whose versions decide whether a registered model loads and how the service behaves (bug reports).
VERSION_OF = ("bentoml", "mlflow-skinny", "lightgbm", "scikit-learn", "pandas")


def version_text() -> str:
    """``aftersales X (Python Y; bentoml ..., ...)``: the installed package, or this checkout's pyproject.toml."""
    import platform
    import tomllib
    from importlib import metadata

    def installed(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    own = (tomllib.loads(pyproject.read_text())["project"]["version"] if pyproject.exists()
           else installed("aftersales") or "unknown")
    libs = ", ".join(f"{d.removesuffix('-skinny')} {v}" for d in VERSION_OF if (v := installed(d)))
    return f"aftersales {own} (Python {platform.python_version()}; {libs})"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_text())
        ctx.exit()


@click.group(cls=LazyGroup, lazy=LAZY_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print the version of aftersales and of the libraries its models depend on, and exit.")
def main() -> None:
    """After-sales risk and forecasting service.

    Typical flow: `aftersales generate --out data/default`, `aftersales validate --data data/default`,
    `aftersales train all --data data/default`, `aftersales models`, `aftersales serve`. Settings come from
    AFTERSALES_* environment variables (see README).
    """


def _scenario_choices() -> list[str]:
    from features.scenarios import SCENARIO_CHOICES

    return list(SCENARIO_CHOICES)


@main.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Folder to write the world to.")
@click.option("--seed", default=42, show_default=True, help="Random seed: same seed, same bytes.")
@click.option("--scenario", default="default", show_default=True, type=click.Choice(_scenario_choices()),
              help="default: the default world; random: every mechanic drawn from the documented ranges (see the "
                   "world's truth/README.md) from --seed; a named scenario pins a few mechanics of a random draw. "
                   "With random/named, --market, --start and --days are drawn unless given.")
@click.option("--accounts", default=20_000, show_default=True, help="Number of customer accounts.")
@click.option("--merchants", default=400, show_default=True, help="Number of merchants.")
@click.option("--start", default="2023-01-01", show_default=True, help="First day (YYYY-MM-DD).")
@click.option("--days", default=730, show_default=True, help="Number of days simulated.")
@click.option("--market", default="CN", show_default=True, help="Market whose holidays apply (CN, US, GB, DE, BR).")
@click.option("--format", "fmt", type=click.Choice(["parquet", "parquet-partitioned"]), default="parquet",
              show_default=True,
              help="parquet: one file per table; parquet-partitioned: orders, returns and tickets as folders "
                   "partitioned by day (orders/date=2024-11-11/part-0.parquet), read lazily up to a command's as-of.")
def generate(out_dir: Path, seed: int, scenario: str, accounts: int, merchants: int, start: str, days: int,
             market: str, fmt: str) -> None:
    """Write a synthetic after-sales world (all contract tables, dataset.json, and truth/ with the ground truth and
    the scenario's drawn values)."""
    from click.core import ParameterSource

    from features.scenarios import make_scenario
    from features.synthetic import generate_world

    ctx = click.get_current_context()
    given = lambda name: ctx.get_parameter_source(name) != ParameterSource.DEFAULT  # noqa: E731
    if scenario == "default":
        sc = make_scenario("default", seed, market.upper(), days, start)
    else:
        sc = make_scenario(scenario, seed, market.upper() if given("market") else None,
                           days if given("days") else None, start if given("start") else None)
    t0 = time.perf_counter()
    try:
        summary = generate_world(out_dir, seed=seed, accounts=accounts, merchants=merchants, progress=True,
                                 scenario=sc)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    if fmt == "parquet-partitioned":
        from features.partitioned import write_partitioned

        write_partitioned(out_dir, out_dir, progress=click.echo)
    click.echo(f"wrote {out_dir} in {time.perf_counter() - t0:.1f}s")
    for k, v in summary.items():
        if k.endswith("rows") or isinstance(v, int):
            click.echo(f"  {k}: {v}")


@main.command("import-online-retail")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Data folder to write.")
@click.option("--merchant", default="online_retail", show_default=True, help="merchant_id given to every row.")
def import_online_retail(files: tuple[Path, ...], out_dir: Path, merchant: str) -> None:
    """Convert UCI Online Retail (II) files (CSV, CSV.gz, XLSX, Parquet) into contract tables.

    Sales invoices become orders; each cancellation invoice (C...) becomes one return request; other rows go to
    OUT/import_rejects.csv with a reason.
    """
    from features.contract import ContractError
    from features.online_retail import import_online_retail as run_import

    try:
        summary = run_import(list(files), out_dir, merchant_id=merchant, progress=True)
    except ContractError as e:
        raise click.ClickException(str(e)) from e
    for k, v in summary.items():
        click.echo(f"  {k}: {v}")


@main.command()
@_data_option
@click.option("--rejects-dir", type=click.Path(path_type=Path), default=None,
              help="Where to write rejects.csv (default: DATA/_validation).")
def validate(data_dir: Path | None, rejects_dir: Path | None) -> None:
    """Check a data folder against the input contract; write rejected rows with the rule each broke.

    Writes rejects.csv (one line per rejected row: table, row, field, rule, value, record) and summary.csv (per table:
    rows in, accepted, rejected, rules broken, values remapped or truncated) to --rejects-dir. Exits 1 when a file
    cannot be used at all (unreadable, missing a required column); rejected rows alone do not fail.
    """
    from training.data import load_for_command

    data_dir = _data_dir(data_dir)
    out = rejects_dir or data_dir / "_validation"
    ds = load_for_command(data_dir, out)
    summary = ds.summary()
    summary.to_csv(Path(out) / "summary.csv", index=False)
    click.echo(summary.to_string(index=False))
    click.echo(f"  counts per table in {Path(out) / 'summary.csv'}")


@main.command()
@click.argument("model", type=click.Choice([*TRAINERS, "all"]))
@_data_option
@engine_options
def train(model: str, data_dir: Path | None, engine: str = "pandas", scheduler: str | None = None) -> None:
    """Train MODEL (or all), evaluate it on held-out later time against baselines, register it in MLflow.

    The `champion` alias moves to the new version only when, on the new version's held-out later rows, it is at
    least as good as the current champion scored on the same rows (see the README's "Promotion and served
    features"); a promotion also serves the new version's snapshots. With --engine dask, serial-returners and ticket-triage build their features on Dask
    and train with lightgbm.dask; return-volume and merchant-risk train in this process.
    """
    data_dir = _data_dir(data_dir)
    names = list(TRAINERS) if model == "all" else [model]
    settings = _settings()
    with engine_for_command(engine, scheduler) as eng:
        for name in names:
            click.secho(f"== training {name} on {data_dir}", bold=True)
            t0 = time.perf_counter()
            trainer = _resolve(TRAINERS[name])
            if eng.name != "pandas" and name in DASK_TRAINERS:
                summary = trainer(data_dir, settings, engine=eng) or {}
            else:
                if eng.name != "pandas":
                    click.echo(f"  ({name} trains in this process: its features are small daily or per-merchant "
                               "series)")
                summary = trainer(data_dir, settings) or {}
            for k, v in summary.items():
                click.echo(f"  {k}: {v}")
            click.echo(f"  ({time.perf_counter() - t0:.1f}s)")


@main.group(cls=LazyGroup, lazy=LAZY_BACKTESTS)
def backtest() -> None:
    """Rolling-origin backtests against baselines (printed and logged to MLflow)."""


@main.group(cls=LazyGroup, lazy=LAZY_EVALUATIONS)
def evaluate() -> None:
    """Evaluate a model on later time than it trained on, against baselines (printed and logged to MLflow)."""


@main.command()
def models() -> None:
    """List registered models, their versions, aliases and primary metrics."""
    from training import registry

    frame = registry.list_models(_settings())
    if frame.empty:
        click.echo("no registered models yet: run `aftersales train all --data DIR`")
        return
    click.echo(frame.to_string(index=False))
    from features import generations

    manifest = generations.current_manifest(_settings().snapshots_dir)
    if manifest:
        pins = ", ".join(f"{n} v{e['version']}" for n, e in manifest.get("models", {}).items()
                         if e.get("version") is not None)
        click.echo(f"\nserved snapshot generation: {manifest['generation']} ({manifest.get('reason', '')}; "
                   f"pins {pins or 'no version'})")
    click.echo("\nmodel cards: `aftersales card NAME [--version N]` (local copies of the cards registered from this "
               f"machine: {_settings().cards_dir})")


@main.command("card")
@click.argument("model")
@click.option("--version", type=int, default=None,
              help="Version number (default: the champion, or the latest version when there is none).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the Markdown to this file instead of printing it.")
def card(model: str, version: int | None, out: Path | None) -> None:
    """Print the model card of MODEL (e.g. ticket-triage): what it predicts, the data and period it saw, metrics
    against the baselines, slices, known limits and the promotion decision. Read from MLflow, so a card registered
    by a team member on a shared tracking server prints here too."""
    from training import registry

    name = catalogue.registered_name(model)
    try:
        got, text = registry.load_card(name, version, _settings())
    except registry.ModelNotFound as e:
        raise click.ClickException(str(e)) from e
    if out is None:
        click.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    click.echo(f"wrote the card of {name} version {got} to {out}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=3000, show_default=True, help="Port to listen on.")
@click.option("--workers", default=1, show_default=True, help="Worker processes.")
def serve(host: str, port: int, workers: int) -> None:
    """Start the BentoML HTTP service (models loaded by MLflow alias `champion`).

    This process becomes `bentoml serve` (exec, same PID): SIGTERM or SIGINT from a supervisor or Ctrl-C reaches the
    server itself, which stops its workers. Run as a child instead, a SIGTERM ended only this wrapper and left the
    server and its worker serving on the port with no parent.
    """
    bentoml = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or "bentoml"
    cmd = [bentoml, "serve", "serving.service:AfterSalesService", "--host", host, "--port", str(port)]
    env = dict(os.environ)
    if workers != 1:
        # BentoML >= 1.2 services ignore --api-workers; the worker count is a service config option.
        extra = f"services.aftersales.workers={workers}"
        env["BENTOML_CONFIG_OPTIONS"] = " ".join(filter(None, [env.get("BENTOML_CONFIG_OPTIONS"), extra]))
    click.echo(" ".join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(bentoml, cmd, env)
    except OSError as e:
        raise click.ClickException(f"could not start {bentoml} ({e}); is BentoML installed in this environment?") from e


@main.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Where to write the synthetic world (default: AFTERSALES_DATA_DIR or data/default).")
@click.option("--seed", default=42, show_default=True, help="Random seed of the world.")
@click.option("--fresh", is_flag=True, help="Regenerate the world even if it exists.")
def demo(out_dir: Path | None, seed: int, fresh: bool) -> None:
    """Generate the default world, train and register every model, and say where everything is."""
    from features.synthetic import generate_world

    settings = _settings()
    out_dir = out_dir or settings.data_dir
    if fresh or not (out_dir / "orders.parquet").exists():
        click.secho(f"== generating the default synthetic world in {out_dir}", bold=True)
        generate_world(out_dir, seed=seed, progress=True)
    else:
        click.echo(f"== using the existing world in {out_dir} (--fresh to regenerate)")
    ctx = click.get_current_context()
    ctx.invoke(validate, data_dir=out_dir, rejects_dir=None)
    available = [n for n, t in TRAINERS.items() if importlib.util.find_spec(t.split(":")[0]) is not None]
    for name in available:
        ctx.invoke(train, model=name, data_dir=out_dir)
    click.secho("\n== registered models", bold=True)
    ctx.invoke(models)
    ui = (f"the MLflow UI: {settings.tracking_uri}" if settings.tracking_server else
          f"open the MLflow UI: .venv/bin/mlflow ui --backend-store-uri {settings.tracking_uri} --port 5000")
    click.echo(
        f"\ndata: {out_dir}\nMLflow: {settings.tracking_uri}\n{ui}\n"
        f"model cards: {settings.cards_dir} (or `aftersales card NAME`)\n"
        "start the service: .venv/bin/aftersales serve   (API docs at http://127.0.0.1:3000/, OpenAPI spec at "
        "http://127.0.0.1:3000/docs.json)"
    )


if __name__ == "__main__":
    main()
