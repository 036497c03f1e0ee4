"""The deployable Bento: ``bentoml build`` works and packages the runtime lock only, and the service runs with
nothing but what that lock installs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from _service import ROOT, Service

SERVE_LOCK = ROOT / "requirements-serve.lock"
SERVE_IN = ROOT / "requirements-serve.in"
# Dependencies of dev tools that are not themselves named in pyproject's extras (notebooks, Dask, the MLflow server).
NOT_SERVED = {"jupyter-client", "jupyter-core", "ipython", "matplotlib", "flask", "gunicorn",
              "dask", "distributed"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a requirements file, by normalised name."""
    return {_norm(m.group(1)): m.group(2) for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", text, re.M)}


def _names(requirements: list[str]) -> set[str]:
    return {_norm(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in requirements}


def _dev_tools() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = set().union(*(_names(reqs) for reqs in project["optional-dependencies"].values()))
    # A package both in an extra and in the main dependencies (statsforecast: the forecaster's AutoETS/MSTL) is served.
    return (extras - _names(project["dependencies"])) | NOT_SERVED


def test_bentoml_build_packages_the_service_with_the_runtime_lock_only(tmp_path):
    env = dict(os.environ, BENTOML_HOME=str(tmp_path / "bentoml"), PYTHONPATH=str(ROOT))
    bentoml = Path(sys.executable).parent / "bentoml"
    out = subprocess.run([str(bentoml), "build", "--output", "tag"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (bento,) = (tmp_path / "bentoml" / "bentos" / "aftersales").glob("*/bento.yaml")
    bento = bento.parent
    assert (bento / "src" / "serving" / "service.py").is_file() and (bento / "src" / "training" / "registry.py").is_file()
    assert (bento / "src" / "serving" / "templates" / "queue.html").is_file()  # the /ui/ pages' templates
    assert not (bento / "src" / "tests").exists() and not list((bento / "src").glob("models/*"))

    installed = _pins((bento / "env" / "python" / "requirements.txt").read_text())
    assert "bentoml" in installed and "lightgbm" in installed and "mlflow-skinny" in installed
    assert not installed.keys() & _dev_tools(), sorted(installed.keys() & _dev_tools())
    for tool in ("pytest", "ruff", "schemathesis"):
        assert tool not in installed
    # The holiday forecaster's AutoETS/MSTL components run at serving time: without them a served forecast would
    # silently drop components the weights were fitted with.
    assert "statsforecast" in installed
    assert not [n for n in installed if n.startswith("jupyter")]
    everything = _pins((ROOT / "requirements.lock").read_text())
    assert len(installed) < 0.7 * len(everything), (len(installed), len(everything))


def test_the_serve_lock_pins_what_the_test_suite_runs_and_every_direct_requirement():
    serve, everything = _pins(SERVE_LOCK.read_text()), _pins((ROOT / "requirements.lock").read_text())
    differ = {n: (v, everything[n]) for n, v in serve.items() if n in everything and everything[n] != v}
    assert not differ, f"re-lock requirements-serve.lock against requirements.lock: {differ}"
    direct = _names([line for line in SERVE_IN.read_text().splitlines() if line.strip() and not line.startswith("#")])
    assert direct <= serve.keys(), sorted(direct - serve.keys())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bound = [r for r in project if r.startswith("bentoml")]
    assert bound and "<" in bound[0], "bentoml needs an upper bound while serving/bentoml_patches.py patches its internals"


@pytest.mark.slow
def test_the_service_serves_every_route_with_only_the_serve_lock_installed(deployment_shared, tmp_path):
    """`bentoml serve` and its worker run with every package outside the serve lock made unimportable
    (tests/serve_only/sitecustomize.py): models load, and each route answers from them."""
    d = deployment_shared
    blocked = tmp_path / "blocked.txt"
    env = dict(PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "serve_only"), str(ROOT)]),
               SERVE_ONLY_LOCK=str(SERVE_LOCK), SERVE_ONLY_LOG=str(blocked),
               AFTERSALES_REVIEW_DB_URL=f"sqlite:///{tmp_path / 'reviews.db'}")
    svc = Service(d["settings"].models_dir, d["world"], tmp_path / "serve.log", **env)
    try:
        svc.wait_ready()
        refused = blocked.read_text() if blocked.exists() else ""
        health = svc.client.get("/v1/health").json()
        assert all(m["loaded"] for m in health["models"]), (health["models"], refused, svc.tail())
        ticket = d["json_tickets"][0]
        for method, path, body in [
            ("post", "/v1/tickets/score", ticket),
            ("post", "/v1/tickets/score-batch", {"tickets": d["json_tickets"][:5]}),
            ("post", "/v1/forecast", {"origin": d["history_end"].date().isoformat(), "horizon": 3}),
            ("get", "/v1/accounts/flagged", None),
            ("get", "/v1/merchants/risk", None),
        ]:
            r = svc.client.request(method.upper(), path, **({"json": body} if body else {}))
            assert r.status_code == 200, (path, r.text, refused, svc.tail())
        account = svc.client.get("/v1/accounts/flagged").json()["accounts"][0]["account_id"]
        r = svc.client.post(f"/v1/accounts/{account}/decision", json={"decision": "cleared", "reviewer": "li"})
        assert r.status_code == 201, (r.text, refused, svc.tail())
        # The /ui/ pages render with the serve lock only (Jinja2, form parsing): log in, then each page.
        import re

        login = svc.client.get("/ui/login")
        token = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)
        cookie = {"Cookie": f"aftersales_ui={login.cookies['aftersales_ui']}"}
        r = svc.client.post("/ui/login", data={"reviewer": "li", "csrf": token}, headers=cookie)
        assert r.status_code == 303, (r.text, refused, svc.tail())
        cookie = {"Cookie": f"aftersales_ui={r.cookies['aftersales_ui']}"}
        for path in ("/ui/queue", f"/ui/accounts/{account}", "/ui/forecast?horizon=3", "/ui/merchants",
                     "/ui/forecast/staffing.csv?horizon=3"):
            r = svc.client.get(path, headers=cookie)
            assert r.status_code == 200, (path, r.text[:2000], refused, svc.tail())
        # The check was in force in the server and in its worker (the process that loads the models).
        active = [line for line in blocked.read_text().splitlines() if line.startswith("# active")]
        assert any("bentoml serve" in line for line in active), active
        assert any("--worker-id" in line for line in active), active
    finally:
        svc.stop()


def test_moved_bentoml_internals_stop_the_start_with_a_message_naming_the_installed_version(monkeypatch):
    import bentoml
    from bentoml._internal.server.http import instruments, traffic

    from serving.bentoml_patches import cancel_timeout_timers, check_bentoml_internals, label_metrics_by_route

    check_bentoml_internals()  # the pinned 1.4 has them all
    monkeypatch.delattr(traffic.TimeoutMiddleware, "_set_timer_out")
    with pytest.raises(RuntimeError, match=re.escape(f"BentoML {bentoml.__version__} is installed")) as e:
        cancel_timeout_timers()  # what the service runs at import, before any worker starts
    assert "TimeoutMiddleware._set_timer_out" in str(e.value) and "bentoml>=1.4.30,<1.5" in str(e.value)
    monkeypatch.undo()
    monkeypatch.delattr(instruments, "RunnerTrafficMetricsMiddleware")
    with pytest.raises(RuntimeError, match="RunnerTrafficMetricsMiddleware"):
        label_metrics_by_route(lambda path: path)
