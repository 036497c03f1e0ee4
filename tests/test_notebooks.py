"""The notebooks in notebooks/ run top to bottom on a small generated world (a failing cell fails the test), and are
committed without outputs.

Each notebook runs in a fresh kernel of this venv's python: a kernelspec written to a temporary JUPYTER_PATH (which
Jupyter searches before the user's and the system's folders), so the test works from a clean clone with no kernel
installed and never picks up another python's "python3" kernel.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from training.views import NOTEBOOK_DATA_ENV, SMALL_WORLD

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = ["1.0-holiday-return-forecast.ipynb", "2.0-serial-returner-review.ipynb",
             "3.0-merchant-complaint-risk.ipynb", "4.0-ticket-triage.ipynb"]
KERNEL = "aftersales-test"
CELL_TIMEOUT_S = 240
# Settings that keep the run short on two shared cores: the same pipelines, fewer backtest origins and trees.
FAST_ENV = {"AFTERSALES_RETURN_VOLUME_HORIZON": "28", "AFTERSALES_RETURN_VOLUME_BACKTEST_ORIGINS": "2",
            "AFTERSALES_RETURN_VOLUME_PEERS": "false", "AFTERSALES_MERCHANT_MIN_LABEL_ORDERS": "10"}


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory, world_factory):
    """A small world, a models folder with nothing registered, and a kernelspec for this venv's python."""
    root = tmp_path_factory.mktemp("notebooks")
    world = world_factory(**SMALL_WORLD)
    spec = root / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "aftersales (test)", "language": "python"}))
    env = {NOTEBOOK_DATA_ENV: str(world), "AFTERSALES_MODELS_DIR": str(root / "models"),
           "JUPYTER_PATH": str(root / "jupyter"), **FAST_ENV}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield root


def test_every_notebook_is_listed():
    assert sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{name}: cells {dirty} have outputs; clear them before committing (Jupyter: Clear All Outputs)"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_uses_the_package_and_no_pipeline_of_its_own(name):
    nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "from training import views" in code
    assert "def " not in code and "class " not in code, f"{name} defines its own functions: put them in training/"
    assert "import lightgbm" not in code and "import sklearn" not in code


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(kernel_env, name):
    nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL,
                            resources={"metadata": {"path": str(kernel_env)}})
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(f"{name}: a cell failed:\n{e}")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    # Every plot the notebook shows came out as an image, and every table as HTML.
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    tables = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "<table" in str(o.get("data", {}).get("text/html", ""))]
    shows = sum(c.source.count("views.show(") for c in nb.cells if c.cell_type == "code")
    assert len(images) == shows, f"{name}: {shows} plots shown, {len(images)} images in the outputs"
    assert len(tables) >= 2, f"{name}: expected its tables as HTML outputs"
