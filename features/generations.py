"""Served feature snapshots that belong to model versions, grouped into generations selected by one pointer file.

Layout under ``settings.snapshots_dir`` (``models/snapshots``)::

    <model>/v<N>/             the snapshots a training run of <model> wrote for its registered version N
                              (+ meta.json: as-of, data folder, written at)
    generations/<id>/         one served set: every snapshot file the service loads, and manifest.json naming
                              each model version it pins and where each file came from (a training run or a
                              ``refresh-features`` run), the as-of dates and when the generation was made
    CURRENT                   the id of the generation served; replaced atomically (write + rename)

Only a promotion (``aftersales train``) or an explicit ``aftersales refresh-features`` makes a generation and moves
``CURRENT``; a refused challenger, ``flag-accounts``, ``rank-merchants`` and ``score-all`` change nothing served.
A running service polls ``CURRENT`` and swaps its whole snapshot set at once (serving/app.py).

Without ``CURRENT`` (a models folder from before generations) the flat files in ``snapshots_dir`` are served.
Files only: no MLflow, no HTTP.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from features import catalogue

CURRENT = "CURRENT"
GENERATIONS = "generations"
MANIFEST = "manifest.json"
VERSION_META = "meta.json"
KEEP_GENERATIONS = 10  # older generations (never the current one) are deleted when a new one is made

# The snapshot files each model's training writes (return_volume serves none: it reads the data folder).
FILES_BY_MODEL: dict[str, tuple[str, ...]] = {m.name: m.files for m in catalogue.MODELS}


class GenerationError(RuntimeError):
    """A generation cannot be read or made (named folder and why)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def version_dir(snapshots_dir: Path, model: str, version: int) -> Path:
    """Where a training run writes the snapshots of ``model`` version ``version``."""
    return Path(snapshots_dir) / model / f"v{int(version)}"


def write_version_meta(folder: Path, model: str, version: int, as_of: Any, source: str) -> None:
    """Record what a version's snapshot folder holds: model, version, as-of day, data folder, when."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"model": model, "version": int(version), "as_of": str(as_of), "source": source, "written_at": _now(),
            "files": sorted(p.name for p in folder.glob("*.parquet"))}
    (folder / VERSION_META).write_text(json.dumps(meta, indent=2))


def current_id(snapshots_dir: Path) -> str | None:
    """The id of the generation served now, or None when there is none (legacy flat layout)."""
    path = Path(snapshots_dir) / CURRENT
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def generation_dir(snapshots_dir: Path, gen_id: str) -> Path:
    return Path(snapshots_dir) / GENERATIONS / gen_id


def served_dir(snapshots_dir: Path) -> Path:
    """The folder whose snapshot files are served: the current generation's, else ``snapshots_dir`` itself."""
    gen = current_id(snapshots_dir)
    return generation_dir(snapshots_dir, gen) if gen else Path(snapshots_dir)


def read_manifest(folder: Path) -> dict:
    """A generation's manifest (empty for the legacy flat folder)."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise GenerationError(f"{path}: unreadable generation manifest ({e})") from e


def current_manifest(snapshots_dir: Path) -> dict:
    """The manifest of the current generation ({} when none)."""
    gen = current_id(snapshots_dir)
    return read_manifest(generation_dir(snapshots_dir, gen)) if gen else {}


@contextmanager
def lock(snapshots_dir: Path) -> Iterator[None]:
    """Exclusive lock on making generations in ``snapshots_dir`` (a promotion and a refresh running at once would
    otherwise each build on the same base and the later swap would drop the other's change)."""
    Path(snapshots_dir).mkdir(parents=True, exist_ok=True)
    with (Path(snapshots_dir) / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # same file system: no copy, and the file can never change under the generation
    except OSError:
        shutil.copy2(src, dst)


def stage(snapshots_dir: Path, models: Mapping[str, Mapping[str, Any]], reason: str) -> tuple[str, Path]:
    """Build (but do not serve) a new generation: the current one's models, with ``models`` replacing theirs.

    ``models``: name -> {"version": N, "dir": folder holding that model's files (or None: no files), "as_of",
    "source", optional "origin": what to record as each file's origin (default: its path in "dir")}. Returns (id,
    folder). :func:`activate` makes it current. Call under :func:`lock`.
    """
    snapshots_dir = Path(snapshots_dir)
    base = current_manifest(snapshots_dir)
    base_dir = served_dir(snapshots_dir)
    gen_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:6]
    final = generation_dir(snapshots_dir, gen_id)
    tmp = final.with_name(f".{gen_id}.tmp")
    tmp.mkdir(parents=True)
    entries: dict[str, dict] = {}
    try:
        for name, files in FILES_BY_MODEL.items():
            new = models.get(name)
            if new is not None:
                src = Path(new["dir"]) if new.get("dir") else None
                entry = {"version": int(new["version"]) if new.get("version") is not None else None,
                         "source": new.get("source", ""), "as_of": str(new.get("as_of", "")),
                         "written_at": _now(), "files": {}}
            elif name in base.get("models", {}):
                src, entry = base_dir, dict(base["models"][name])
                entry["files"] = dict(entry.get("files", {}))
            elif not base and any((base_dir / f).exists() for f in files):
                # The legacy flat folder: its files are kept, with no version known.
                src = base_dir
                entry = {"version": None, "source": f"flat snapshot folder {base_dir}", "as_of": "",
                         "written_at": "", "files": {}}
            else:
                continue
            carried = new is None and bool(base)
            for f in files:
                if src is not None and (src / f).exists():
                    _link_or_copy(src / f, tmp / f)
                    if not carried:  # where the file was written (a carried entry keeps its own provenance)
                        entry["files"][f] = (new or {}).get("origin") or str(src / f)
            entries[name] = entry
        manifest = {"generation": gen_id, "created_at": _now(), "reason": reason, "previous": base.get("generation"),
                    "models": entries}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return gen_id, final


def update_manifest(snapshots_dir: Path, gen_id: str, **fields: Any) -> None:
    """Add fields to a staged generation's manifest (before it is activated), atomically."""
    folder = generation_dir(snapshots_dir, gen_id)
    manifest = read_manifest(folder) | fields
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(folder / MANIFEST)


def activate(snapshots_dir: Path, gen_id: str) -> None:
    """Serve generation ``gen_id``: replace CURRENT atomically (a reader sees the old id or the new, never half)."""
    snapshots_dir = Path(snapshots_dir)
    if not (generation_dir(snapshots_dir, gen_id) / MANIFEST).exists():
        raise GenerationError(f"{generation_dir(snapshots_dir, gen_id)}: no such generation")
    tmp = snapshots_dir / f".{CURRENT}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(gen_id + "\n")
    os.replace(tmp, snapshots_dir / CURRENT)
    prune(snapshots_dir)


def publish(snapshots_dir: Path, models: Mapping[str, Mapping[str, Any]], reason: str) -> str:
    """:func:`stage` then :func:`activate` under :func:`lock`; returns the new generation's id."""
    with lock(snapshots_dir):
        gen_id, _ = stage(snapshots_dir, models, reason)
        activate(snapshots_dir, gen_id)
    return gen_id


def record_version(snapshots_dir: Path, model: str, version: int, promoted: bool, folder: Path | None, as_of: Any,
                   source: str) -> str | None:
    """After a training run registered ``model`` v``version``: describe its snapshot folder, and when the gate
    promoted it, serve it (a new generation with this version and its files). Returns the new generation's id, or
    None when nothing served changed (a refused challenger)."""
    if folder is not None:
        write_version_meta(Path(folder), model, version, as_of, source)
    if not promoted:
        return None
    return publish(snapshots_dir, {model: {"version": version, "dir": folder, "as_of": as_of,
                                           "source": f"training run of {model} v{version} on {source}"}},
                   reason=f"{model} v{version} promoted")


def prune(snapshots_dir: Path, keep: int = KEEP_GENERATIONS) -> list[str]:
    """Delete the oldest generations beyond ``keep`` (never the current one); returns the ids deleted."""
    root = Path(snapshots_dir) / GENERATIONS
    if not root.is_dir():
        return []
    current = current_id(snapshots_dir)
    gens = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    old = [g for g in gens[:-keep] if g != current] if len(gens) > keep else []
    for g in old:
        shutil.rmtree(root / g, ignore_errors=True)
    return old
