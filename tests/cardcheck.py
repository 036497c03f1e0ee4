"""Checks every model's tests run on the model card its training registered (imported by the test modules)."""

from __future__ import annotations

import re

from features.settings import Settings
from training import registry
from training.model_card import SECTIONS, fmt


def section(text: str, title: str) -> str:
    """The body of one ``## title`` section."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert m, f"section {title!r} missing from the card"
    return m.group(1)


def table_row(text: str, first_cell: str) -> list[str]:
    """The cells of the table row whose first cell starts with ``first_cell``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].startswith(first_cell):
            return cells
    raise AssertionError(f"no table row starting with {first_cell!r}")


def assert_card(name: str, version: int, settings: Settings, metrics: dict[str, tuple[str, ...]],
                slices: tuple[str, ...], promoted: bool) -> str:
    """The card of ``name`` v``version``: in MLflow (run artifact and version description) and under models/cards/,
    every section present, each ``metrics`` row (label -> MLflow metric keys of its cells) showing exactly the values
    logged to the version's run, and a slice row for each of ``slices``. Returns the card."""
    from mlflow import MlflowClient

    path = settings.cards_dir / name / f"v{version}.md"
    assert path.exists(), f"no card written at {path}"
    text = path.read_text()
    got_version, from_mlflow = registry.load_card(name, version, settings)
    assert got_version == version and from_mlflow == text  # the MLflow artifact is the same card
    for title in SECTIONS:
        assert f"\n## {title}\n" in text, title
    client = MlflowClient(settings.tracking_uri)
    mv = client.get_model_version(name, str(version))
    assert mv.description.startswith("# Model card: ") and f"`{name}` version {version}" in mv.description
    run_metrics = client.get_run(mv.run_id).data.metrics
    body = section(text, "Metrics against baselines")
    for label, keys in metrics.items():
        cells = table_row(body, label)
        assert f"(`{keys[0]}`)" in cells[0], cells
        for key in keys:
            assert fmt(run_metrics[key]) in cells[1:], (label, key, run_metrics[key], cells)
    slice_body = section(text, "Slices")
    for s in slices:
        table_row(slice_body, s)
    gate = section(text, "Promotion decision")
    assert ("promoted to champion" in gate) == promoted
    data = section(text, "Training data")
    assert "rows_in" in data and "period seen" in data
    assert section(text, "Known limits").count("\n- ") >= 2
    return text
