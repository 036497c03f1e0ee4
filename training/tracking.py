"""MLflow tracking for the project: where the tracking store is, and runs with their parameters, metrics and
artifacts. Model registration, the promotion gate and loading live in :mod:`training.registry`, which re-exports
these functions (callers write ``registry.start_run``, ``registry.log_metrics``, ...).

mlflow is imported inside functions: importing this module does no I/O and costs nothing, so the CLI starts fast.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd

from features.settings import Settings, get_settings

# --------------------------------------------------------------------------------------------------------------------
# Set-up


_quieted = False


def _quiet_mlflow() -> None:
    """Silence MLflow chatter that says nothing actionable here; real errors still surface."""
    global _quieted
    # Re-applied on every call (idempotent): test runners and notebooks reset warning filters.
    warnings.filterwarnings("ignore", message=".*Setuptools is replacing distutils.*")
    # Schema hint about int columns and missing values: our models are loaded as python objects, not through
    # pyfunc schema enforcement, so the hint does not apply.
    warnings.filterwarnings("ignore", category=UserWarning, message=r"Hint: Inferred schema contains integer")
    if _quieted:
        return
    # GitPython is optional for MLflow; without git it warns on every run.
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    # No progress bar on stderr for every artifact read (model loads, `aftersales card`).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # The SQLite store logs every alembic migration step at INFO when a fresh database is created.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    for name in ("mlflow.store.db.utils", "mlflow.tracking.fluent", "mlflow.store.model_registry.abstract_store"):
        logging.getLogger(name).setLevel(logging.WARNING)

    class _DropKnown(logging.Filter):
        # Warnings about choices this module makes on purpose: cloudpickle (our own trusted models, which skops
        # cannot serialize), objects without predict (logged without the pyfunc flavor), and the pyfunc JSON
        # serving-input check, which fails for pandas categoricals that JSON cannot carry; serving here never goes
        # through pyfunc JSON, it calls the loaded object's predict with frames it builds itself.
        noise = ("pickle or cloudpickle format", "Model was missing function", "Setuptools is replacing distutils",
                 "Failed to validate serving input example")

        def filter(self, record: logging.LogRecord) -> bool:
            return not any(n in record.getMessage() for n in self.noise)

    for name in ("mlflow.sklearn", "mlflow.models.model", "mlflow.utils.environment"):
        logging.getLogger(name).addFilter(_DropKnown())
    _quieted = True


def _local_path(uri: str) -> Path | None:
    """The local filesystem path behind a sqlite:/// or file: URI (None for remote stores)."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        # sqlite:////abs/path.db -> path "//abs/path.db"; sqlite:///rel.db -> "/rel.db"
        raw = uri[len("sqlite:///"):]
        return Path(unquote(raw)) if raw and raw != ":memory:" else None
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and uri:
        return Path(uri)
    return None


def configure(settings: Settings | None = None) -> str:
    """Point MLflow at the project's tracking store (SQLite under models/ by default), creating folders as needed.

    Returns the tracking URI in force. Safe to call many times.
    """
    import mlflow

    settings = settings or get_settings()
    _quiet_mlflow()
    uri = settings.tracking_uri
    db = _local_path(uri)
    if db is not None and urlparse(uri).scheme == "sqlite":
        db.parent.mkdir(parents=True, exist_ok=True)
    art = _local_path(settings.artifact_root) if settings.artifact_root else None
    if art is not None:
        art.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def _client(settings: Settings | None):
    from mlflow import MlflowClient

    uri = configure(settings)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(model_name: str, settings: Settings) -> str:
    """The experiment of a model (named after it), created with its artifacts under settings.artifact_root (or where
    the tracking server puts them, when there is no root: see :attr:`Settings.artifact_root`)."""
    from mlflow.exceptions import MlflowException

    client = _client(settings)
    exp = client.get_experiment_by_name(model_name)
    if exp is not None:
        return exp.experiment_id
    root = settings.artifact_root
    try:
        if root is None:
            return client.create_experiment(model_name)
        return client.create_experiment(model_name, artifact_location=f"{root.rstrip('/')}/{model_name}")
    except MlflowException:
        # A team member created it between our lookup and our create (shared server): use theirs.
        exp = client.get_experiment_by_name(model_name)
        if exp is None:
            raise
        return exp.experiment_id


# --------------------------------------------------------------------------------------------------------------------
# Runs and logging


@contextmanager
def start_run(model_name: str, run_name: str | None = None, settings: Settings | None = None,
              tags: dict | None = None) -> Iterator[Any]:
    """Open an MLflow run in the model's experiment; yields the active run, ends it (FAILED on exception)."""
    import mlflow

    settings = settings or get_settings()
    exp_id = _experiment_id(model_name, settings)
    str_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=str_tags) as run:
        yield run


def _scalar(value: Any) -> float | None:
    """A plain float, or None for values MLflow cannot store (None, NaN, inf, non-numbers)."""
    if value is None:
        return None
    try:
        f = float(value)  # numpy scalars, 0-d arrays, bools, numeric strings (tag values)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def log_params(params: dict) -> None:
    """Log run parameters; None values are skipped, numpy scalars and other objects are stringified."""
    import mlflow

    clean = {}
    for k, v in params.items():
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        clean[str(k)] = v.item() if hasattr(v, "item") and getattr(v, "ndim", 1) == 0 else v
    if clean:
        mlflow.log_params(clean)


def log_metrics(metrics: dict, step: int | None = None) -> None:
    """Log numeric metrics; None, NaN and infinite values are skipped (MLflow would reject or mislead with them)."""
    import mlflow

    clean = {str(k): f for k, v in metrics.items() if (f := _scalar(v)) is not None}
    if clean:
        mlflow.log_metrics(clean, step=step)


def log_figure(fig, path: str) -> None:
    """Log a matplotlib figure as a PNG artifact at ``path`` and close it (figures left open leak memory)."""
    import matplotlib.pyplot as plt
    import mlflow

    try:
        mlflow.log_figure(fig, path if path.endswith(".png") else f"{path}.png")
    finally:
        plt.close(fig)


def log_table(df: pd.DataFrame, path: str) -> None:
    """Log a data frame as a CSV artifact at ``path`` (index kept only when it is named)."""
    keep_index = any(n is not None for n in df.index.names)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(path).name
        df.to_csv(local, index=keep_index)
        log_artifact(local, str(Path(path).parent) if Path(path).parent != Path(".") else None)


def log_text(text: str, path: str) -> None:
    """Log a string as a text artifact at ``path``."""
    import mlflow

    mlflow.log_text(text, path)


def log_artifact(local_path, artifact_path: str | None = None) -> None:
    """Log a local file (or a folder, recursively) under ``artifact_path`` of the active run."""
    import mlflow

    local_path = Path(local_path)
    if local_path.is_dir():
        mlflow.log_artifacts(str(local_path), artifact_path)
    else:
        mlflow.log_artifact(str(local_path), artifact_path)
