"""Shared by the service tests: a models folder built the way training builds it, and the real ``bentoml serve``.

:func:`build_deployment` writes a small world and every champion the service loads (the real ticket-triage model and
snapshots, the serial-returner model, snapshot and queue, a merchant ranking, a return-volume forecaster);
:class:`Service` runs ``bentoml serve`` on a free loopback port against it, with its output in a log file.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
WORLD = dict(seed=21, accounts=900, merchants=25, start="2024-01-01", days=240, market="CN", progress=False)
TICKET_COLUMNS = ["ticket_id", "created_at", "account_id", "merchant_id", "order_id", "case_type", "channel",
                  "amount", "text"]


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A ``bentoml serve`` subprocess on loopback, with its log for failure messages (started at construction,
    waited for by :meth:`wait_ready`, so two services can boot while the test builds its models)."""

    def __init__(self, models_dir: Path, data_dir: Path, log: Path, api_key: str | None = None,
                 port: int | None = None, via_cli: bool = False, **env: str):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        # A BentoML home of its own: each `bentoml serve` wipes $BENTOML_HOME/prometheus_multiproc_dir at start,
        # which would erase the metrics of every other service running on the machine (parallel tests).
        home = log.parent / f"bentoml-home-{self.port}"
        full_env = dict(os.environ, AFTERSALES_MODELS_DIR=str(models_dir), AFTERSALES_DATA_DIR=str(data_dir),
                        BENTOML_HOME=str(home), **env)
        bentoml = Path(sys.executable).parent / "bentoml"
        address = ["--host", "127.0.0.1", "--port", str(self.port)]
        # via_cli: `aftersales serve` (what the README and a process supervisor run), this checkout's code
        cmd = ([sys.executable, "-m", "training.cli", "serve", *address] if via_cli else
               [str(bentoml), "serve", "serving.service:AfterSalesService", *address])
        with log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.client = httpx.Client(base_url=self.url, timeout=60,
                                   headers={"X-API-Key": api_key} if api_key else None)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"service exited ({self.proc.returncode}):\n{self.tail()}"
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"service not ready in {timeout:.0f}s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def worker_pids(self) -> list[int]:
        """The server process and its children (BentoML's API workers)."""
        import psutil

        try:
            parent = psutil.Process(self.proc.pid)
            return [parent.pid, *(c.pid for c in parent.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown hook runs (a crash, or the OOM killer)."""
        self.client.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def build_deployment(root: Path, world_params: dict | None = None) -> dict:
    """A world under ``root/world`` and a models folder ``root/models`` holding every champion the service loads,
    built the way training builds them. Returns settings, paths, the triage version and 60 recent tickets."""
    from sklearn.dummy import DummyRegressor

    from features import merchants as merchant_features
    from features.accounts import SerialReturnerModel, dataset_features
    from features.contract import load_dataset
    from features.forecast_ensemble import HolidayForecaster
    from features.return_volume import build_history
    from features.settings import Settings
    from features.synthetic import generate_world
    from features.tickets import FEATURES, CalendarTable, TicketTriageModel, build_training_features
    from training import registry
    from training.merchant_risk import write_snapshots as write_merchant_snapshot
    from training.return_volume import _input_example
    from training.serial_returners import write_snapshots as write_serial_snapshot
    from training.ticket_triage import model_params, write_snapshots

    world = root / "world"
    generate_world(world, **(world_params or WORLD))
    settings = Settings(models_dir=root / "models", data_dir=world)
    ds = load_dataset(world)

    # Ticket triage: the real model class on the world's labelled tickets, and the snapshots training writes.
    feats = build_training_features(ds, CalendarTable("CN", first_year=2023, last_year=2025))
    labelled = feats.meta["escalated"].notna().to_numpy()
    triage = TicketTriageModel(**model_params(settings)).fit(
        feats.X[labelled], feats.meta["escalated"][labelled].astype(int).to_numpy())
    v_triage = registry.log_and_register("ticket_triage", triage, feats.X[list(FEATURES)].head(5), "roc_auc", 0.70, True,
                                         settings=settings).version
    write_snapshots(ds, settings)

    # Serial returners: cold-start model on the accounts as of the last day; its snapshot and review queue.
    X = dataset_features(ds, ds.time_span()[1], "CN", settings)
    returners = SerialReturnerModel().fit(X)
    write_serial_snapshot(X, returners, settings, capacity=12)
    registry.log_and_register("serial_returners", returners, X.head(5), "pr_auc", 0.3, True, settings=settings)

    # Merchant risk: a ranking in the layout rank-merchants writes (scores known to the test), and its snapshot;
    # the registered model is a stand-in with the real feature signature (serving reads only the snapshot).
    merchants = sorted(ds.orders["merchant_id"].astype(str).unique())
    score = np.linspace(1.0, 0.1, len(merchants))
    ranking = pd.DataFrame({"merchant_id": merchants, "score": score, "rank": np.arange(1, len(merchants) + 1),
                            "expected_complaints": score * 10, "late_delivery_rate": score / 4,
                            "complaint_rate_90d": score / 50,
                            "reasons": [f"complaints {s:.0%} of orders; late deliveries" for s in score]})
    write_merchant_snapshot(ranking.sample(frac=1.0, random_state=0), settings)  # shuffled: the service sorts
    example = pd.DataFrame({f: [0.0, 1.0, 2.0] for f in merchant_features.FEATURES})
    stand_in = DummyRegressor().fit(example, [0.0, 1.0, 2.0])
    registry.log_and_register("merchant_risk", stand_in, example, "ndcg_at_50", 0.5, True, settings=settings)

    # Return volume: a short-horizon holiday forecaster (what train registers) fitted on the history up to the last day.
    history = build_history(ds, "CN")
    forecaster = HolidayForecaster.from_params(horizon=7, market="CN", n_estimators=40, max_rows=4000).fit(history)
    registry.log_and_register("return_volume", forecaster, _input_example(forecaster, history), "holiday_wape",
                              0.3, False, settings=settings)

    tickets = ds.tickets.drop(columns=["escalated", "resolved_at"]).tail(60).reset_index(drop=True)
    return {"settings": settings, "world": world, "tickets": tickets, "triage_version": v_triage,
            "history_end": history.days[-1], "root": root}


def json_ticket(row: pd.Series) -> dict:
    """A contract ticket row as the JSON the ticket system sends (nulls left out)."""
    out = {}
    for k in TICKET_COLUMNS:
        v = row[k]
        if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
            continue
        out[k] = v.isoformat() if isinstance(v, pd.Timestamp) else (float(v) if k == "amount" else str(v))
    return out


def shared_deployment(base: Path) -> dict:
    """One deployment per test session, shared by every xdist worker (built by the first to ask, under a lock).

    Read only by convention: tests that write decisions point the service at their own review database
    (``AFTERSALES_REVIEW_DB_URL``); tests that register models build their own deployment.
    """
    import fcntl

    from features.settings import Settings

    root = base / "shared-deployment"
    root.mkdir(parents=True, exist_ok=True)
    meta = root / "deployment.json"
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not meta.exists():
            d = build_deployment(root)
            meta.write_text(json.dumps({"triage_version": d["triage_version"],
                                        "history_end": d["history_end"].isoformat(),
                                        "tickets": [json_ticket(r) for _, r in d["tickets"].iterrows()]}))
    info = json.loads(meta.read_text())
    return {"settings": Settings(models_dir=root / "models", data_dir=root / "world"), "world": root / "world",
            "root": root, "triage_version": info["triage_version"],
            "history_end": pd.Timestamp(info["history_end"]), "json_tickets": info["tickets"]}
