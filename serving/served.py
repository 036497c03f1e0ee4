"""One served set: the pinned champion models and the online features of one snapshot generation.

:func:`load_served` loads the set ``models/snapshots/CURRENT`` names (model versions its manifest pins, the
``champion`` alias for the others) and refuses a model whose pickle or logged signature does not fit this code
(:func:`signature_mismatch`); :class:`serving.runtime.Runtime` swaps sets whole.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from features import catalogue
from features.live_counts import RecentTickets
from features.settings import Settings
from serving import online_store as ostore
from serving.errors import unavailable

log = logging.getLogger("aftersales.serving")

TICKET_TRIAGE, RETURN_VOLUME, SERIAL_RETURNERS, MERCHANT_RISK = (
    "ticket_triage", "return_volume", "serial_returners", "merchant_risk")
MODEL_NAMES = catalogue.NAMES  # every model the service loads (features/catalogue.py)


@dataclass(frozen=True)
class Served:
    """One served set: the pinned models and the online features of one snapshot generation.

    Swapped whole (one reference assignment in :class:`Runtime`): a request takes ``runtime.served`` once and uses
    only that, so no answer mixes two generations' models or snapshots.
    """

    generation: str | None  # models/snapshots/generations/<id>; None: the flat snapshot folder (no generation yet)
    models: dict[str, Any]  # name -> training.registry.LoadedModel
    problems: dict[str, str]  # name -> why it is not loaded
    store: ostore.OnlineStore | None
    snapshots: ostore.SnapshotStore | None
    manifest: dict = field(default_factory=dict)
    # The live load and contact counts of the ticket model (features/live_counts.py): seeded from this generation's
    # recent tickets, fed every ticket scored; a new generation's counter takes over what the old one saw since.
    recent: RecentTickets | None = None

    def model(self, name: str) -> Any:
        """The loaded model object of ``name``, or a 503 saying why it is not there."""
        loaded = self.models.get(name)
        if loaded is None:
            raise unavailable(name, self.problems.get(name, "not loaded"))
        return loaded.model

    def versions(self, *names: str) -> dict[str, int]:
        """Pinned versions of the named models that are loaded."""
        return {n: self.models[n].version for n in names if n in self.models}


def _check_loaded(name: str, loaded: Any) -> str | None:
    """Why a loaded version must not be served (None: it may): pickled by an older version of its class, or trained
    on other columns than this code builds (its answers would be wrong or fail)."""
    stale = _missing_params(loaded.model)
    mismatch = None if stale else signature_mismatch(name, loaded.input_columns)
    if not (stale or mismatch):
        return None
    why = (f"was saved by an older version of {type(loaded.model).__name__} (no {', '.join(stale[:3])})"
           if stale else
           f"was logged with a signature that does not match the features this service sends ({mismatch})")
    return f"v{loaded.version} {why}; retrain it with `aftersales train {catalogue.cli_name(name)}`"


def load_served(settings: Settings, previous: Served | None = None) -> Served:
    """The served set named by ``models/snapshots/CURRENT``: the model versions its manifest pins (the champion
    alias for models it does not pin) and its snapshot files. Models already loaded in ``previous`` at the same
    version are reused, not reloaded."""
    from features import generations
    from training import registry

    snapdir = settings.snapshots_dir
    gen = generations.current_id(snapdir)
    folder = generations.generation_dir(snapdir, gen) if gen else snapdir
    manifest = generations.read_manifest(folder) if gen else {}
    pins = {n: int(e["version"]) for n, e in manifest.get("models", {}).items() if e.get("version") is not None}
    models: dict[str, Any] = {}
    problems: dict[str, str] = {}
    champions: set[str] | None = None
    for name in MODEL_NAMES:
        t0 = time.perf_counter()
        before = previous.models.get(name) if previous is not None else None
        if before is not None and (name not in pins or before.version == pins[name]):
            models[name] = before
            continue
        if previous is not None and name not in pins:
            if name in previous.problems:
                problems[name] = previous.problems[name]
            continue
        try:
            if name in pins:
                loaded = registry.load_version(name, pins[name], settings=settings)
            else:
                if champions is None:
                    # Listing first: names without a champion are reported without touching MLflow further (and an
                    # absent SQLite store is not created just to find it empty).
                    listed = registry.list_models(settings)
                    champions = set(listed.loc[listed["aliases"].str.split(",").apply(
                        lambda a: registry.CHAMPION in a), "name"]) if not listed.empty else set()
                if name not in champions:
                    problems[name] = (f"no champion for '{name}' in {settings.tracking_uri}; "
                                      f"run `aftersales train {catalogue.cli_name(name)}`")
                    log.warning("serving: %s", problems[name])
                    continue
                loaded = registry.load_champion(name, settings=settings)
        except registry.ModelNotFound as e:  # the alias moved away between listing and loading
            problems[name] = str(e)
            log.warning("serving: %s", e)
            continue
        except Exception as e:  # a corrupt artifact must not take the other endpoints down
            problems[name] = f"failed to load ({type(e).__name__}: {e}); retrain or re-register it"
            log.exception("serving: loading %s failed", name)
            continue
        problem = _check_loaded(name, loaded)
        if problem:
            problems[name] = problem
            log.error("serving: %s", problem)
            continue
        models[name] = loaded
        log.info("serving: %s v%s loaded in %.1fs", name, loaded.version, time.perf_counter() - t0)
    store, snapshots = ostore.open_store(folder, settings.redis_url, prefix=manifest.get("redis_prefix"))
    return Served(gen, models, problems, store, snapshots, manifest, recent_counter(folder, manifest, previous))


def recent_counter(folder: Path, manifest: dict, previous: Served | None = None) -> RecentTickets:
    """The live counter of a served set: seeded from the folder's recent-tickets snapshot (as of the ticket model's
    as-of in the manifest), plus the tickets ``previous``'s counter saw since then; without the file, the previous
    set's counter (or an empty one: the load and contact counts then start from the tickets scored)."""
    from features.live_counts import counter_from_snapshot
    from features.tickets import SNAPSHOT_FILES

    old = previous.recent if previous is not None else None
    path = Path(folder) / SNAPSHOT_FILES["recent"]
    if not path.exists():
        return old if old is not None else RecentTickets()
    import pandas as pd
    import pyarrow.parquet as pq

    from features.live_counts import YEAR_EDGE_COLUMN

    columns = ["ticket_id", "account_id", "created_at"]
    if YEAR_EDGE_COLUMN in pq.read_schema(path).names:  # snapshots written before it have no year edge
        columns.append(YEAR_EDGE_COLUMN)
    frame = pd.read_parquet(path, columns=columns)
    as_of = manifest.get("models", {}).get(TICKET_TRIAGE, {}).get("as_of") or None
    try:
        counter = counter_from_snapshot(frame, pd.Timestamp(as_of) if as_of else None)
    except ValueError:  # an as-of that is not a time: the snapshot's latest ticket instead
        counter = counter_from_snapshot(frame)
    if old is not None:
        counter.merge_newer(old, counter.seeded_until if counter.seeded_until is not None else -math.inf)
    log.info("serving: live ticket counts seeded with %s tickets from %s", f"{len(counter):,}", path)
    return counter


def _missing_params(model: Any) -> list[str]:
    """Constructor parameters the object lacks (scikit-learn contract: ``__init__`` stores each one as is).

    A model pickled before its class gained a parameter has none of it, and fails later in the middle of a request.
    """
    import inspect

    try:
        params = inspect.signature(type(model).__init__).parameters
    except (TypeError, ValueError):
        return []
    return [p for p, v in params.items() if p != "self" and v.kind is v.POSITIONAL_OR_KEYWORD
            and not hasattr(model, p)]


def served_features(name: str) -> tuple[str, ...]:
    """The columns this code builds for (or, for snapshot-served models, scored with) model ``name``: what its
    logged MLflow signature must list."""
    if name == TICKET_TRIAGE:
        from features.tickets import FEATURES
    elif name == SERIAL_RETURNERS:
        from features.accounts import FEATURES
    elif name == MERCHANT_RISK:
        from features.merchants import FEATURES
    elif name == RETURN_VOLUME:
        from features.return_volume import FEATURES

        return (*FEATURES, "scale", "prior")  # predict() also takes each row's scale and prior
    else:
        raise KeyError(name)
    return tuple(FEATURES)


def signature_mismatch(name: str, logged: Sequence[str] | None) -> str:
    """What differs between a champion's logged input columns and :func:`served_features` ('' when they match)."""
    if logged is None:
        return "no signature was logged"
    expected = served_features(name)
    missing = [c for c in expected if c not in set(logged)]
    extra = [c for c in logged if c not in set(expected)]

    def some(cols: list[str]) -> str:
        return ", ".join(cols[:8]) + (f" and {len(cols) - 8} more" if len(cols) > 8 else "")

    return "; ".join(([f"missing {some(missing)}"] if missing else []) +
                     ([f"unexpected {some(extra)}"] if extra else []))
