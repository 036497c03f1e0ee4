"""The Bento's environment, simulated in this one: installed packages that the serve lock does not list cannot be
imported.

Python imports ``sitecustomize`` at start-up from the first folder on ``sys.path`` that has one, so every process of
a service started with this folder on ``PYTHONPATH`` (``bentoml serve`` and the workers it spawns) gets the check.
With ``SERVE_ONLY_LOCK`` set to a ``uv pip compile`` lock, an import whose file belongs only to distributions outside
the lock raises ``ModuleNotFoundError`` (as it would in the Bento, so optional imports fall back as they would there)
and is appended to ``SERVE_ONLY_LOG`` (which also gets a ``# active`` line per process). The check is per file, not per top-level name: ``mlflow`` files come from
``mlflow-skinny`` and the full ``mlflow`` wheel alike, and only the latter's own files are refused.
"""

from __future__ import annotations

import os
import re
import sys


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _install(lock: str, log: str | None) -> None:
    from importlib import metadata
    from importlib.machinery import PathFinder

    allowed = {"pip", "setuptools", "wheel", "aftersales"}  # the base image's own tools; the project itself
    with open(lock) as f:
        allowed |= {_norm(m.group(1)) for line in f if (m := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", line))}
    owners: dict[str, set[str]] = {}
    for dist in metadata.distributions():
        name = _norm(dist.metadata["Name"] or "")
        for f in dist.files or ():
            if f.suffix in (".py", ".so", ".pyd"):
                owners.setdefault(os.path.normpath(str(dist.locate_file(f))), set()).add(name)

    class ServeLockOnly:
        """Meta-path finder: refuses modules whose file only distributions outside the lock install."""

        @staticmethod
        def find_spec(fullname, path=None, target=None):
            spec = PathFinder.find_spec(fullname, path, target)
            origin = getattr(spec, "origin", None) if spec is not None else None
            if not origin:
                return None
            dists = owners.get(os.path.normpath(origin))
            if dists and not dists & allowed:
                if log:
                    with open(log, "a") as out:
                        out.write(f"{fullname}\t{','.join(sorted(dists))}\n")
                raise ModuleNotFoundError(f"No module named {fullname!r} ({', '.join(sorted(dists))} is not in "
                                          f"{os.path.basename(lock)})", name=fullname)
            return None  # the normal finders load it

    sys.meta_path.insert(0, ServeLockOnly())
    if log:  # so a test can tell the check was in force in each process
        with open(log, "a") as out:
            out.write(f"# active in pid {os.getpid()}: {' '.join(sys.argv)[:200]}\n")


if os.environ.get("SERVE_ONLY_LOCK"):
    _install(os.environ["SERVE_ONLY_LOCK"], os.environ.get("SERVE_ONLY_LOG"))
