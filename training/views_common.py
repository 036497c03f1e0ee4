"""What every view shares (training/views.py): notebook data folders, loading, the report's blocks (Plot, Table, Text,
Section), the registry's model list, and PNG/notebook display."""

from __future__ import annotations

import base64
import io
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from features.contract import Dataset, load_dataset
from features.settings import Settings

Echo = Callable[[str], None]


NOTEBOOK_DATA_ENV = "AFTERSALES_NOTEBOOK_DATA"


SMALL_WORLD = dict(seed=7, accounts=1500, merchants=50, start="2023-05-01", days=540, market="CN")


QUEUE_HEAD = 20


RANKING_HEAD = 20


def _quiet(_: str) -> None:
    pass


def small_world(path: Path | str, echo: Echo = _quiet) -> Path:
    """A small synthetic world (1,500 accounts, 50 merchants, 540 days ending three weeks before 11.11) at ``path``,
    generated once: what the notebooks run on when no data folder is given."""
    from features.synthetic import generate_world

    path = Path(path)
    if not (path / "orders.parquet").exists():
        echo(f"generating a small synthetic world in {path}")
        generate_world(path, progress=False, **SMALL_WORLD)
    return path


def notebook_data(default: Path | str | None = None) -> Path:
    """The data folder a notebook reads: ``$AFTERSALES_NOTEBOOK_DATA``, else ``default``, else a small generated
    world in ``data/notebook-small`` (created on first use)."""
    from features.settings import PROJECT_ROOT

    chosen = os.environ.get(NOTEBOOK_DATA_ENV) or default
    if chosen:
        path = Path(chosen)
        if not path.is_dir():
            raise FileNotFoundError(f"data folder {path} not found: set {NOTEBOOK_DATA_ENV} to a folder made by "
                                    "`aftersales generate --out DIR` or `aftersales import-online-retail`")
        return path
    return small_world(PROJECT_ROOT / "data" / "notebook-small")


def load(data_dir: Path | str, rejects_dir: Path | str | None = None, echo: Echo = _quiet) -> Dataset:
    """Load and validate every table of ``data_dir``; rejected rows go to ``rejects_dir/rejects.csv`` (default: a
    folder under the system temp dir) and their count is reported."""
    ds = load_dataset(data_dir)
    rejects_dir = Path(rejects_dir or Path(tempfile.gettempdir()) / "aftersales-views" / Path(data_dir).name)
    path = ds.write_rejects(rejects_dir)
    echo(f"{ds.n_rejected:,} rows rejected by the input contract (details in {path})")
    return ds


def _lap(t0: float) -> str:
    return f"{time.perf_counter() - t0:.1f}s"


@dataclass
class Plot:
    """A figure with its title and a plain-language caption saying how to read it."""

    title: str
    figure: Any
    caption: str


@dataclass
class Table:
    """A table with its title and caption."""

    title: str
    frame: pd.DataFrame
    caption: str


@dataclass
class Text:
    """Lines of text (targets, notes)."""

    title: str
    lines: list[str]


@dataclass
class Section:
    """One model's part of the report."""

    key: str
    title: str
    intro: str
    blocks: list = field(default_factory=list)
    error: str | None = None


_NO_MODELS = pd.DataFrame(columns=["name", "version", "aliases", "created", "primary_metric", "value", "run_id"])


def registered_models(settings: Settings) -> pd.DataFrame:
    """The registry's model versions (``registry.list_models``); empty when there is no registry or it cannot be
    reached (the report then computes everything from the data and says so)."""
    from training import registry

    db = registry._local_path(settings.tracking_uri)
    if settings.tracking_uri.startswith("sqlite:") and db is not None and not db.exists():
        return _NO_MODELS.copy()  # no local registry: answer without importing mlflow (seconds)
    try:
        return registry.list_models(settings)
    except Exception as e:  # noqa: BLE001 — an unreachable tracking server must not stop a report built from data
        warnings.warn(f"model registry at {settings.tracking_uri} not readable ({e}): champions not used",
                      stacklevel=2)
        return _NO_MODELS.copy()


def _has_champion(name: str, settings: Settings) -> bool:
    from training import registry

    models = registered_models(settings)
    if models.empty:
        return False
    rows = models[models["name"] == name]
    return bool(rows["aliases"].str.split(",").map(lambda a: registry.CHAMPION in a).any())


def png(fig, dpi: int = 96, close: bool = True) -> bytes:
    """The figure as PNG bytes (closed afterwards, so building many figures holds no memory)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    if close:
        plt.close(fig)
    return buf.getvalue()


def png_base64(fig, dpi: int = 96) -> str:
    """The figure as a base64 PNG for an inline ``data:`` URI."""
    return base64.b64encode(png(fig, dpi)).decode("ascii")


def show(item):
    """Display a figure (as the PNG the report embeds), a block, or a list of blocks in a notebook."""
    from IPython.display import HTML, Image, Markdown, display

    if item is None:
        return None
    if isinstance(item, list):
        for b in item:
            show(b)
        return None
    if isinstance(item, Plot):
        display(Markdown(f"**{item.title}** — {item.caption}"))
        return show(item.figure)
    if isinstance(item, Table):
        display(Markdown(f"**{item.title}** — {item.caption}"))
        display(item.frame)
        return None
    if isinstance(item, Text):
        display(Markdown(f"**{item.title}**\n\n" + "\n".join(f"- {line}" for line in item.lines)))
        return None
    if isinstance(item, pd.DataFrame):
        display(item)
        return None
    if hasattr(item, "savefig"):
        display(Image(data=png(item)))
        return None
    display(HTML(str(item)))
    return None
