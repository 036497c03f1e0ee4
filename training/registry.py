"""Every MLflow call of the project: model logging, the model registry and the promotion gate here, tracking (runs,
parameters, metrics, artifacts) in :mod:`training.tracking`, re-exported here.

Other modules never import mlflow; they go through this API::

    with registry.start_run("return_volume", run_name="train", settings=settings):
        registry.log_params({...}); registry.log_metrics({...})
        result = registry.log_and_register("return_volume", model, X.head(5), primary_metric="holiday_wape",
                                           metric_value=0.12, higher_is_better=False, settings=settings)
    loaded = registry.load_champion("return_volume", settings=settings)

Models are our own fitted python objects (scikit-learn contract); they are logged with the ``mlflow.sklearn`` flavor in
cloudpickle format, so ``load_champion`` returns the very object training fitted (with its native booster). Serving
resolves the ``champion`` alias to a version number once and pins it. Stages are not used (deprecated in MLflow 3).

mlflow is imported inside functions: importing this module does no I/O and costs nothing, so the CLI starts fast.
"""

from __future__ import annotations

import logging
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd

from features import catalogue
from features.settings import Settings, get_settings
from training import model_card
from training.tracking import (  # noqa: F401 — re-exported: callers log through the registry module
    _client,
    _local_path,
    _scalar,
    configure,
    log_artifact,
    log_figure,
    log_metrics,
    log_params,
    log_table,
    log_text,
    start_run,
)

CHAMPION = "champion"
MODEL_ARTIFACT = "model"  # name= of the logged model inside its run

# Model-version tags written by log_and_register and read back by the gate and by list_models.
TAG_METRIC = "primary_metric"
TAG_VALUE = "primary_metric_value"
TAG_HIGHER = "higher_is_better"
TAG_VALIDATED = "data_validated"
TAG_GATE = "gate_reason"
TAG_CARD = "model_card"  # the version's card: artifact path within its run
CARD_ARTIFACT_DIR = "model_card"
# Registered-model tag written by the gate right before it moves the alias (compare-and-set, see _compare_and_set).
GATE_LOCK = "gate_lock"
GATE_SETTLE_S = 0.5  # wait between taking the lock and checking it is still ours (longer than one registry write)

# Packages recorded as the model's pip requirements. Passing them explicitly skips MLflow's requirement inference,
# which re-loads the model in a subprocess (seconds per model) and guesses no better than the lock file does.
_MODEL_REQUIREMENTS = ("scikit-learn", "lightgbm", "pandas", "numpy", "scipy", "cloudpickle")


class ModelNotFound(LookupError):
    """No registered champion (or no registered model) under the requested name."""


@dataclass(frozen=True)
class RegisterResult:
    """Outcome of :func:`log_and_register`: the new version and what the promotion gate decided."""

    name: str
    version: int
    promoted: bool
    reason: str
    champion_version: int | None  # the champion after the gate ran
    champion_value: float | None  # its primary metric value
    card_path: Path | None = None  # the model card written under models/cards/, when a card was given
    decision: Any = None  # training.evidence.Decision, when the trainer gave evidence


@dataclass(frozen=True)
class LoadedModel:
    """A champion resolved to a pinned version, with the fitted python object and the metrics of its run."""

    name: str
    version: int
    model: Any
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    input_columns: tuple[str, ...] | None = None  # the logged signature's input columns (None: no signature)


# --------------------------------------------------------------------------------------------------------------------
# Model logging, registration and the promotion gate


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in _MODEL_REQUIREMENTS:
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    return reqs


def _signature(model: Any, input_example: pd.DataFrame) -> tuple[Any, bool]:
    """(signature, predict_ok): inputs from the example, outputs from model.predict(example) when it works."""
    from mlflow.models import infer_signature

    predict = getattr(model, "predict", None)
    if callable(predict):
        try:
            return infer_signature(input_example, predict(input_example)), True
        except Exception as e:  # noqa: BLE001 — a predict needing other arguments still deserves an input schema
            logging.getLogger(__name__).warning(
                "%s.predict(input_example) failed (%s); logging an input-only signature",
                type(model).__name__, e,
            )
    return infer_signature(input_example), False


def _better(challenger: float, champion: float, higher_is_better: bool) -> bool:
    return challenger > champion if higher_is_better else challenger < champion


def _version_value(client, name: str, mv, metric: str) -> float | None:
    """A version's value of ``metric``: its gate tag when it was registered on that metric, else its run's metric."""
    if mv.tags.get(TAG_METRIC) == metric and TAG_VALUE in mv.tags:
        return _scalar(mv.tags[TAG_VALUE])
    if mv.run_id:
        return _scalar(client.get_run(mv.run_id).data.metrics.get(metric))
    return None


def _champion(client, name: str):
    """The model version holding the champion alias, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def log_and_register(model_name: str, model: Any, input_example: pd.DataFrame, primary_metric: str,
                     metric_value: float, higher_is_better: bool, settings: Settings | None = None,
                     extra_metrics: dict | None = None, data_validated: bool = True,
                     card: dict | None = None, evidence: Any = None) -> RegisterResult:
    """Log a fitted model with signature and input example, register a new version and run the promotion gate.

    The ``champion`` alias moves to the new version only when the data it trained on passed validation and either
    there is no champion yet or the new version is strictly better on ``primary_metric`` than the champion.
    Uses the active run, or opens one in the model's experiment when none is active.

    ``card``: the model card's content (:mod:`training.model_card`); rendered with the version and the gate's
    decision, logged to the run, set as the version's description and written to ``models/cards/<model>/v<N>.md``.

    ``evidence`` (a :class:`training.evidence.Evidence`): the challenger's held-out rows. The gate then loads the
    champion, scores it on the same rows with the same metric and decides by :func:`training.evidence.decide`
    (at least as good promotes; a champion that cannot be scored is replaced only by a challenger that beats every
    baseline). Without it, the logged figures are compared (strictly better promotes). Either way the alias moves by
    compare-and-set: if another registration moved it while this gate ran, this version is refused and says so.
    """
    import mlflow
    import mlflow.sklearn

    settings = settings or get_settings()
    if not isinstance(input_example, pd.DataFrame):
        raise TypeError(f"input_example must be a pandas DataFrame, got {type(input_example).__name__}")
    if mlflow.active_run() is None:
        with start_run(model_name, run_name="register", settings=settings):
            return log_and_register(model_name, model, input_example, primary_metric, metric_value,
                                    higher_is_better, settings, extra_metrics, data_validated, card, evidence)

    client = _client(settings)
    value = _scalar(metric_value)
    signature, predict_ok = _signature(model, input_example)
    example = input_example if predict_ok else None  # MLflow would try (and fail) to predict on it
    if example is None:
        log_table(input_example, "model_input_example.csv")
    info = mlflow.sklearn.log_model(
        model, name=MODEL_ARTIFACT, signature=signature, input_example=example,
        serialization_format="cloudpickle",  # skops (the 3.x default) cannot store arbitrary classes
        pip_requirements=_requirements(), registered_model_name=model_name,
    )
    version = int(info.registered_model_version)
    # Logged with model_id: the values belong to this logged model (MLflow 3 LoggedModel), not only to the run,
    # so two versions registered from one run keep their own metrics.
    model_metrics = {str(k): f for k, v in {primary_metric: value, **(extra_metrics or {})}.items()
                     if (f := _scalar(v)) is not None}
    if model_metrics:
        mlflow.log_metrics(model_metrics, model_id=info.model_id)

    tags = {TAG_METRIC: primary_metric, TAG_HIGHER: str(bool(higher_is_better)).lower(),
            TAG_VALIDATED: str(bool(data_validated)).lower()}
    if value is not None:
        tags[TAG_VALUE] = repr(value)
    for k, v in tags.items():
        client.set_model_version_tag(model_name, str(version), k, v)

    # The promotion gate.
    current = _champion(client, model_name)
    champ_version = int(current.version) if current is not None else None
    expected = champ_version  # compare-and-set: the alias must still point here when we move it
    decision = None
    champ_value = _version_value(client, model_name, current, primary_metric) if current is not None else None
    if evidence is not None:
        for k, v in evidence.tags().items():
            client.set_model_version_tag(model_name, str(version), k, v)
    if not data_validated:
        promoted, reason = False, "refused: trained on data that failed validation"
    elif value is None:
        promoted, reason = False, f"refused: {primary_metric} is missing or not finite ({metric_value!r})"
    elif evidence is not None:
        decision = _decide_on_evidence(client, model_name, current, evidence, list(input_example.columns))
        promoted, reason = decision.promoted, decision.reason
        if decision.champion_scored:
            champ_value = decision.champion
    else:  # no held-out rows given (older callers): the logged figures are compared, as before
        direction = "higher" if higher_is_better else "lower"
        if current is None:
            promoted, reason = True, f"promoted: no champion yet ({primary_metric}={value:.6g})"
        elif champ_value is None:
            promoted, reason = True, (f"promoted: champion v{champ_version} has no {primary_metric} to compare "
                                      f"(challenger {value:.6g})")
        elif _better(value, champ_value, higher_is_better):
            promoted, reason = True, (f"promoted: {primary_metric} {value:.6g} beats champion v{champ_version} "
                                      f"{champ_value:.6g} ({direction} is better)")
        else:
            promoted, reason = False, (f"refused: {primary_metric} {value:.6g} does not beat champion "
                                       f"v{champ_version} {champ_value:.6g} ({direction} is better)")
    if promoted:
        moved = _compare_and_set(client, model_name, version, expected)
        if moved is not None:
            promoted, reason = False, f"refused: {moved}"
            if decision is not None:
                decision.promoted, decision.reason = False, reason
                decision.rule += "; compare-and-set on the champion alias failed"
            current = _champion(client, model_name)
            champ_version = int(current.version) if current is not None else None
            champ_value = _version_value(client, model_name, current, primary_metric) if current is not None else None
        else:
            champ_version, champ_value = version, value
    if decision is not None:
        for k, v in decision.tags().items():
            client.set_model_version_tag(model_name, str(version), k, v)
        mlflow.set_tags(decision.tags())
        mlflow.log_metrics(decision.metrics())
    client.set_model_version_tag(model_name, str(version), TAG_GATE, reason)
    mlflow.set_tags({"registered_version": version, "promoted": str(promoted).lower(), TAG_GATE: reason})
    card_path = None
    if card is not None:
        run_id = mlflow.active_run().info.run_id
        text = model_card.render(card, model_name, version, promoted=promoted, reason=reason,
                                 champion_version=champ_version, champion_value=champ_value,
                                 primary_metric=primary_metric, higher_is_better=higher_is_better, run_id=run_id,
                                 registered_at=pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d %H:%M UTC"),
                                 decision=decision.card_lines(primary_metric, higher_is_better) if decision else None)
        artifact = f"{CARD_ARTIFACT_DIR}/v{version}.md"
        mlflow.log_text(text, artifact)
        card_path = card_file(model_name, version, settings)
        card_path.parent.mkdir(parents=True, exist_ok=True)
        card_path.write_text(text, encoding="utf-8")
        client.update_model_version(model_name, str(version), description=model_card.summary(
            text, pointer=f"`aftersales card {model_name} --version {version}`"))
        client.set_model_version_tag(model_name, str(version), TAG_CARD, artifact)
    return RegisterResult(model_name, version, promoted, reason, champ_version, champ_value, card_path, decision)


def _decide_on_evidence(client, name: str, current, evidence, columns: list[str]):
    """Load the champion (when there is one) and let :func:`training.evidence.decide` rule on the evidence."""
    from training.evidence import decide

    if current is None:
        return decide(evidence, None)
    version = int(current.version)
    seen_until = None
    if evidence.data_source and current.tags.get("gate_data_source") == evidence.data_source:
        # Trained on this same data folder: rows up to its data end may be in its training set.
        seen_until = pd.Timestamp(current.tags.get("gate_data_end") or "2200-01-01T00:00:00+00:00")
    elif not current.tags.get("gate_data_source"):
        seen_until = None  # registered before the gate recorded data folders: nothing known, rows taken as unseen
    model, why = None, None
    uri = f"models:/{name}/{version}"
    try:
        import mlflow.sklearn

        needs = _input_columns(uri)
        missing = [c for c in (needs or ()) if c not in columns]
        if missing:
            why = (f"its logged signature no longer fits the features this code builds (it needs "
                   f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})")
        else:
            model = mlflow.sklearn.load_model(uri)
    except Exception as e:  # noqa: BLE001 — a champion that cannot be loaded is reported, not fatal
        why = f"it failed to load ({type(e).__name__}: {e})"
    return decide(evidence, version, model, seen_until, why)


def _compare_and_set(client, name: str, version: int, expected: int | None) -> str | None:
    """Move the champion alias to ``version`` only if it still points at ``expected``; None when moved, else why not.

    MLflow has no atomic compare-and-set on an alias, so the gate takes a lock first: it writes a unique token in the
    registered model's ``gate_lock`` tag, waits :data:`GATE_SETTLE_S`, and goes on only if the token is still its own
    (a concurrent gate that wrote after it wins; the loser refuses) and the alias has not moved. A gate that dies
    holding the lock blocks nobody: every gate overwrites it.
    """
    token = f"v{version}:{uuid.uuid4().hex}"
    client.set_registered_model_tag(name, GATE_LOCK, token)
    time.sleep(GATE_SETTLE_S)
    holder = client.get_registered_model(name).tags.get(GATE_LOCK)
    if holder != token:
        return (f"another registration of {name} ({(holder or '?').split(':')[0]}) ran its promotion gate at the "
                "same moment and holds the gate lock; retrain to compare against whichever became champion")
    now = _champion(client, name)
    now_version = int(now.version) if now is not None else None
    if now_version != expected:
        return (f"the champion alias moved from {f'v{expected}' if expected else 'none'} to v{now_version} while "
                "this gate ran (another registration was promoted); retrain to compare against the new champion")
    client.set_registered_model_alias(name, CHAMPION, str(version))
    return None


def load_version(model_name: str, version: int, settings: Settings | None = None) -> LoadedModel:
    """Load one pinned version (what a served generation names), with its metrics and signature columns."""
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException

    settings = settings or get_settings()
    client = _client(settings)
    try:
        mv = client.get_model_version(model_name, str(int(version)))
    except MlflowException:
        raise ModelNotFound(f"no version {version} of '{model_name}' in {settings.tracking_uri}") from None
    uri = f"models:/{model_name}/{mv.version}"
    return LoadedModel(model_name, int(mv.version), mlflow.sklearn.load_model(uri), _version_metrics(client, mv),
                       mv.run_id, _input_columns(uri))


def card_file(model_name: str, version: int, settings: Settings | None = None) -> Path:
    """Where registration writes a version's model card: ``models/cards/<model>/v<version>.md``."""
    return (settings or get_settings()).cards_dir / model_name / f"v{int(version)}.md"


def load_card(model_name: str, version: int | None = None, settings: Settings | None = None) -> tuple[int, str]:
    """(version, Markdown) of a version's model card, read from MLflow (the team's copy, not a local file).

    Without ``version``: the champion's card, or the latest version's when there is no champion.
    """
    from mlflow.exceptions import MlflowException

    settings = settings or get_settings()
    client = _client(settings)
    cmd = catalogue.cli_name(model_name)
    if version is None:
        mv = _champion(client, model_name)
        if mv is None:
            try:
                versions = list(client.search_model_versions(f"name = '{model_name}'"))
            except MlflowException:
                versions = []
            if not versions:
                raise ModelNotFound(f"no registered versions of '{model_name}' in {settings.tracking_uri}; "
                                    f"run `aftersales train {cmd}`")
            mv = max(versions, key=lambda v: int(v.version))
    else:
        try:
            mv = client.get_model_version(model_name, str(int(version)))
        except MlflowException:
            raise ModelNotFound(f"no version {version} of '{model_name}' in {settings.tracking_uri}; "
                                "`aftersales models` lists the registered versions") from None
    artifact = mv.tags.get(TAG_CARD)
    if not artifact or not mv.run_id:
        raise ModelNotFound(f"'{model_name}' version {mv.version} has no model card (registered before cards "
                            f"existed); run `aftersales train {cmd}` to register a version with one")
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(mv.run_id, artifact, tmp)
        return int(mv.version), Path(local).read_text(encoding="utf-8")


def load_champion(model_name: str, settings: Settings | None = None) -> LoadedModel:
    """Resolve the ``champion`` alias to a version number and load that pinned version's fitted python object."""
    import mlflow.sklearn

    settings = settings or get_settings()
    client = _client(settings)
    mv = _champion(client, model_name)
    if mv is None:
        raise ModelNotFound(
            f"no champion for '{model_name}' in {settings.tracking_uri}; "
            f"run `aftersales train {catalogue.cli_name(model_name)}`"
        )
    # Loading by version, not by alias: the alias may move while we load, the version may not.
    uri = f"models:/{model_name}/{mv.version}"
    model = mlflow.sklearn.load_model(uri)
    return LoadedModel(model_name, int(mv.version), model, _version_metrics(client, mv), mv.run_id,
                       _input_columns(uri))


def _input_columns(uri: str) -> tuple[str, ...] | None:
    """The input column names of a logged model's signature (None when it was logged without one)."""
    from mlflow.models import get_model_info

    signature = get_model_info(uri).signature
    if signature is None or signature.inputs is None:
        return None
    return tuple(str(n) for n in signature.inputs.input_names())


def _version_metrics(client, mv) -> dict[str, float]:
    """Metrics of a version: its run's, overridden by those logged on its own logged model, then its gate value."""
    metrics = dict(client.get_run(mv.run_id).data.metrics) if mv.run_id else {}
    if getattr(mv, "model_id", None):
        logged = client.get_logged_model(mv.model_id).metrics or []
        for m in sorted(logged, key=lambda m: m.timestamp):
            metrics[m.key] = m.value
    if mv.tags.get(TAG_METRIC) and (value := _scalar(mv.tags.get(TAG_VALUE))) is not None:
        metrics[mv.tags[TAG_METRIC]] = value
    return metrics


def list_models(settings: Settings | None = None) -> pd.DataFrame:
    """Every registered model version with its aliases and primary metric (newest version first per model)."""
    from mlflow.exceptions import MlflowException

    columns = ["name", "version", "aliases", "created", "primary_metric", "value", "run_id"]
    settings = settings or get_settings()
    db = _local_path(settings.tracking_uri)
    if urlparse(settings.tracking_uri).scheme == "sqlite" and db is not None and not db.exists():
        return pd.DataFrame(columns=columns)  # nothing registered yet; don't create a database just to say so
    client = _client(settings)
    rows = []
    try:
        versions = list(client.search_model_versions(max_results=10_000))
    except MlflowException:
        versions = []
    aliases: dict[str, dict[str, list[str]]] = {}
    for name in {mv.name for mv in versions}:
        by_version: dict[str, list[str]] = {}
        for alias, ver in client.get_registered_model(name).aliases.items():
            by_version.setdefault(str(ver), []).append(alias)
        aliases[name] = by_version
    for mv in versions:
        rows.append({
            "name": mv.name,
            "version": int(mv.version),
            "aliases": ",".join(sorted(aliases.get(mv.name, {}).get(str(mv.version), []))),
            "created": pd.Timestamp(mv.creation_timestamp, unit="ms", tz="UTC").floor("s"),
            "primary_metric": mv.tags.get(TAG_METRIC, ""),
            "value": _scalar(mv.tags.get(TAG_VALUE)),
            "run_id": mv.run_id,
        })
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["name", "version"], ascending=[True, False], ignore_index=True)
