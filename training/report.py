"""``aftersales report``: one self-contained HTML file with every model's plots and tables, for people who read
results rather than run code. The plots and tables come from :mod:`training.views`, the same builders the notebooks
in ``notebooks/`` call.

The file has no external references: plots are inline base64 PNGs, tables are HTML, styles are inline, so it opens
from disk (or as a mail attachment) in any browser with no server. A small script marks ``<body>`` with how many
plots the browser decoded (``data-plots-loaded`` / ``data-plots-total``), which the test reads in headless Chromium.
"""

from __future__ import annotations

import html
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import click
import pandas as pd

from features import catalogue
from features.settings import Settings, get_settings
from training import views
from training.data import load_for_command

REPORT_FILE = "report.html"
# What a section may raise when the data cannot support it (too short, no tickets, one merchant, ...): the section
# then says so and the rest of the report is still written. Anything else is a bug and stops the command.
EXPECTED_ERRORS = (ValueError, LookupError, click.ClickException)

CSS = """
body { font-family: -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 0 24px 48px; color: #222; line-height: 1.45; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 48px; }
h3 { margin: 28px 0 6px; }
.meta { color: #555; font-size: 14px; } .meta td { padding: 1px 12px 1px 0; }
nav ol { columns: 2; font-size: 14px; }
figure { margin: 8px 0 20px; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .caption { color: #444; font-size: 14px; max-width: 900px; margin: 4px 0 8px; }
table.data { border-collapse: collapse; font-size: 13px; margin: 4px 0 18px; }
table.data th, table.data td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; vertical-align: top; }
table.data th { background: #f4f4f4; } table.data td:last-child { text-align: left; }
.error { background: #fff3f3; border-left: 4px solid #c33; padding: 8px 12px; }
ul.lines { font-size: 14px; }
"""

SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img.plot'), ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; } }
  document.body.setAttribute('data-plots-total', String(imgs.length));
  document.body.setAttribute('data-plots-loaded', String(ok));
});
"""

USE_HELP = ("Where the operational tables (review queue, merchant ranking) come from: 'auto' uses the registered "
            "champion when there is one that fits the data, else fits a model on the data up to its last day; "
            "'fit' always fits. Evaluation figures are always computed on held-out later time, never from a champion "
            "trained on all the data.")


def _table_html(frame: pd.DataFrame) -> str:
    if frame is None or frame.empty:
        return '<p class="caption">(empty)</p>'
    f = frame.copy()
    for c in f.columns:
        if f[c].map(lambda v: isinstance(v, list | tuple)).any():
            f[c] = f[c].map(lambda v: "; ".join(map(str, v)) if isinstance(v, list | tuple) else v)
    return f.to_html(index=False, classes="data", border=0, na_rep="", float_format=_number)


def _number(v: float) -> str:
    """Four significant digits, without exponents for the counts and volumes people read."""
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _slug(*parts: str) -> str:
    return "-".join("".join(ch if ch.isalnum() else "-" for ch in p.lower()).strip("-") for p in parts)


def render(sections: list[views.Section], header: dict[str, str], models: pd.DataFrame) -> str:
    """The report as one HTML string (sections in order, a table of contents, plots inline)."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>After-sales models report</title>", f"<style>{CSS}</style></head><body>",
           "<h1>After-sales models report</h1>", '<table class="meta">']
    out += [f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in header.items()]
    out.append("</table>")
    nav = ["<nav><h2>Contents</h2><ol>"]
    body = []
    if not models.empty:
        nav.append('<li><a href="#registered-models">Registered models</a></li>')
        body += ['<h2 id="registered-models">Registered models</h2>',
                 '<p class="caption">Versions in the MLflow registry; the one with alias champion is what the '
                 "service loads. Its primary metric was measured on held-out time when it was trained.</p>",
                 _table_html(models.drop(columns=["run_id"], errors="ignore"))]
    for s in sections:
        nav.append(f'<li><a href="#{s.key}">{html.escape(s.title)}</a><ol>')
        body.append(f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2><p class="caption">{html.escape(s.intro)}</p>')
        if s.error:
            body.append(f'<p class="error">This section could not be built from this data: {html.escape(s.error)}</p>')
        for b in s.blocks:
            anchor = _slug(s.key, b.title)
            nav.append(f'<li><a href="#{anchor}">{html.escape(b.title)}</a></li>')
            body.append(f'<h3 id="{anchor}">{html.escape(b.title)}</h3>')
            if isinstance(b, views.Plot):
                body.append(f'<figure><img class="plot" alt="{html.escape(b.title)}" '
                            f'src="data:image/png;base64,{views.png_base64(b.figure)}">'
                            f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
            elif isinstance(b, views.Table):
                body.append(f'<p class="caption">{html.escape(b.caption)}</p>{_table_html(b.frame)}')
            else:
                body.append('<ul class="lines">' + "".join(f"<li>{html.escape(line)}</li>" for line in b.lines)
                            + "</ul>")
        nav.append("</ol></li>")
        body.append("</section>")
    nav.append("</ol></nav>")
    out += nav + body + [f"<script>{SCRIPT}</script>", "</body></html>"]
    return "\n".join(out)


def model_versions(models: pd.DataFrame) -> str:
    """The champion versions in the registry, for the header ("none registered ..." without any)."""
    champions = [f"{r.name} v{r.version}" for r in models.itertuples() if "champion" in str(r.aliases).split(",")]
    return ", ".join(champions) or "none registered: every figure is computed from this data folder"


def _section(key: str, title: str, intro: str, build: Callable[[], list], echo) -> views.Section:
    t0 = time.perf_counter()
    try:
        blocks = build()
    except EXPECTED_ERRORS as e:
        msg = e.format_message() if isinstance(e, click.ClickException) else str(e)
        echo(f"  {title}: not built: {msg}")
        return views.Section(key, title, intro, [], error=msg)
    echo(f"  {title}: {len(blocks)} plots and tables ({time.perf_counter() - t0:.1f}s)")
    return views.Section(key, title, intro, blocks)


def build_report(data_dir: Path, out_dir: Path, settings: Settings, use: str = "auto",
                 echo: Callable[[str], None] = click.echo) -> Path:
    """Compute every section from ``data_dir`` and write ``out_dir/report.html``; returns its path."""
    t_start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = load_for_command(data_dir, out_dir, echo)
    first, last = ds.time_span()
    state: dict = {}

    def step(i: int, name: str):
        echo(f"[{i}/{len(catalogue.MODELS)}] {name}")
        return lambda s: echo(f"      {s}")

    def rv_blocks(progress):
        view = views.return_volume_view(ds, settings, progress=True, echo=progress)
        return views.return_volume_blocks(view)

    def sr_blocks(progress):
        view = views.serial_returners_view(ds, data_dir, settings, use=use, echo=progress)
        state["accounts"] = view.accounts
        return views.serial_returners_blocks(view)

    def mr_blocks(progress):
        view = views.merchant_risk_view(ds, settings, use=use, echo=progress)
        state["merchants"] = views.merchant_percentiles(view)
        return views.merchant_risk_blocks(view)

    def tt_blocks(progress):
        view = views.ticket_triage_view(ds, settings, accounts=state.get("accounts"),
                                        merchants=state.get("merchants"), echo=progress)
        return views.ticket_triage_blocks(view)

    # Per catalogued model (features/catalogue.py, whose order this follows: triage reads the accounts and merchants
    # the two before it scored): the progress label and the function that builds its blocks.
    builders = {"return_volume": ("holiday return volume", rv_blocks),
                "serial_returners": ("serial returners", sr_blocks),
                "merchant_risk": ("merchant complaint risk", mr_blocks),
                "ticket_triage": ("ticket triage", tt_blocks)}
    sections = []
    for i, m in enumerate(catalogue.MODELS, start=1):
        label, build = builders[m.name]
        sections.append(_section(m.cli, m.title, m.intro, lambda b=build, i=i, label=label: b(step(i, label)), echo))
    models = views.registered_models(settings)
    header = {
        "data folder": str(Path(data_dir).resolve()),
        "data covers": f"{first.date()} to {last.date()}",
        "rows rejected by the input contract": f"{ds.n_rejected:,} (details in {out_dir / 'rejects.csv'})",
        "built": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "build time": f"{time.perf_counter() - t_start:.0f}s on {platform.node() or 'this machine'}",
        "model versions": model_versions(models),
        "models used": "evaluations on held-out later time; queue and ranking from "
                       + ("registered champions where they fit, else models fitted on this data"
                          if use == "auto" and (models["aliases"] != "").any() else "models fitted on this data"),
    }
    path = out_dir / REPORT_FILE
    echo("writing the HTML")
    path.write_text(render(sections, header, models), encoding="utf-8")
    return path


@click.command("report")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Data folder holding the contract tables (default: AFTERSALES_DATA_DIR or data/default).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write report.html (and rejects.csv) into; created if missing.")
@click.option("--model", "use", type=click.Choice(["auto", "fit"]), default="auto", show_default=True,
              help=USE_HELP)
def report_cmd(data_dir: Path | None, out_dir: Path, use: str) -> None:
    """Write a static HTML report of every model's results: OUT/report.html, one file that opens in a browser
    with no server.

    For each model, computed from the data folder on the held-out design training uses (settings as for `aftersales
    train`: AFTERSALES_RETURN_VOLUME_HORIZON, ..._BACKTEST_ORIGINS, AFTERSALES_REVIEW_CAPACITY ...): the return
    history with events, the backtest against the baselines, the forecast fan and the staffing plan for the next
    major event; the serial-returner metrics, precision against review capacity, patterns and the review queue with
    reasons; the merchant ranking quality, lift and the ranking with reasons; the ticket triage calibration, slices,
    policy mix and scoring latency. The registered model versions are listed when a registry exists. A section the
    data cannot support (e.g. no tickets) says why; the others are still written. Takes about a minute on a small
    world, several on the default one.
    """
    settings = get_settings()
    data_dir = Path(data_dir or settings.data_dir)
    if not data_dir.is_dir():
        raise click.ClickException(f"data folder {data_dir} not found: make one with `aftersales generate --out "
                                   f"{data_dir}` or import real data with `aftersales import-online-retail`")
    click.secho(f"== report on {data_dir} -> {out_dir / REPORT_FILE}", bold=True)
    t0 = time.perf_counter()
    path = build_report(data_dir, out_dir, settings, use=use)
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.0f}s; open it in a "
               f"browser: file://{path.resolve()}")
