"""Single-ticket scoring latency and throughput: the BentoML service against a bare FastAPI app, in one run.

What it does (loopback only, at most ~30 s of load in total):

1. Uses a registered ``ticket_triage`` champion: ``--models-dir DIR`` if it has one, else builds a small world in a
   temporary folder, trains and registers the model there (about a minute on 2 cores) and writes its snapshots.
2. Starts the BentoML service (``bentoml serve serving.service:AfterSalesService``) and a bare FastAPI app under
   uvicorn that only assembles the same feature vector and runs the same LightGBM booster (no validation, no policy,
   no online-store abstraction, no middleware): the floor of what Python serving can do here.
3. Sends the same real tickets to both with an asyncio keep-alive HTTP/1.1 load generator, at concurrency 1 and 16,
   in interleaved rounds (BentoML, bare, BentoML, bare) so both see the same background load on a shared machine.
4. Prints p50/p99 latency and requests/s of each, their throughput ratio, and the time to score 10,000 tickets
   through ``POST /v1/tickets/score-batch``.

Usage: ``python benchmarks/bench_serving.py [--models-dir models] [--seconds 26] [--batch 10000]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from fastapi import Request  # module level: FastAPI resolves the endpoint's string annotations here
from fastapi.responses import JSONResponse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

SCORE = "/v1/tickets/score"
BATCH = "/v1/tickets/score-batch"
TARGET_P99_MS = 25.0
TARGET_RATIO = 0.60
TARGET_BATCH_S = 1.0
TICKET_FIELDS = ("ticket_id", "created_at", "account_id", "merchant_id", "order_id", "case_type", "channel", "amount",
                 "text")


# --------------------------------------------------------------------------------------------------------------------
# Load generator: raw asyncio streams (an HTTP client library would cost more CPU than the servers under test)


def _api_key() -> str | None:
    """The first configured API key (AFTERSALES_API_KEYS), which the service then requires."""
    from features.settings import get_settings

    keys = get_settings().api_keys
    return keys[0] if keys else None


def _request(port: int, path: str, body: bytes) -> bytes:
    key = _api_key()
    auth = f"X-API-Key: {key}\r\n" if key else ""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{auth}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader, timeout: float | None = None) -> int:
    """Read one HTTP/1.1 response (head and Content-Length body) off a keep-alive connection; its status code."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return int(head[9:12])


async def _connection(port: int, requests: Sequence[bytes], offset: int, start_at: float, stop_at: float,
                      latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while (t0 := time.perf_counter()) < stop_at:
            writer.write(requests[i % len(requests)])
            i += 1
            status = await read_response(reader)
            t1 = time.perf_counter()
            if status != 200:
                errors.append(status)
            elif t0 >= start_at:
                latencies.append(t1 - t0)
    finally:
        writer.close()


async def _load(port: int, requests: Sequence[bytes], concurrency: int, seconds: float, warmup: float
                ) -> tuple[list[float], list[int], float]:
    latencies: list[float] = []
    errors: list[int] = []
    t0 = time.perf_counter()
    start_at, stop_at = t0 + warmup, t0 + warmup + seconds
    step = max(1, len(requests) // concurrency)
    await asyncio.gather(*[_connection(port, requests, k * step, start_at, stop_at, latencies, errors)
                           for k in range(concurrency)])
    return latencies, errors, max(time.perf_counter() - start_at, 1e-9)


def run_load(port: int, requests: Sequence[bytes], concurrency: int, seconds: float, warmup: float = 0.3
             ) -> tuple[list[float], list[int], float]:
    """Closed-loop load: ``concurrency`` keep-alive connections, each sending its next request on each answer."""
    gc.disable()  # the load generator's own GC pauses would show up as server latency
    try:
        return asyncio.run(_load(port, requests, concurrency, seconds, warmup))
    finally:
        gc.enable()


def summarize(latencies: list[float], errors: list[int], seconds: float) -> dict[str, float]:
    """p50/p99 in ms, requests/s and the error count of one or more pooled rounds."""
    lat = sorted(latencies)
    if not lat:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "rps": 0.0, "errors": len(errors)}

    def q(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000

    return {"n": len(lat), "p50": q(0.50), "p99": q(0.99), "rps": len(lat) / seconds, "errors": len(errors)}


# --------------------------------------------------------------------------------------------------------------------
# The bare FastAPI reference (run in its own process by ``--serve-reference``)


def reference_app(models_dir: Path):
    """A FastAPI app that only builds the feature vector and runs the champion's LightGBM booster on it."""
    import math

    import numpy as np
    from fastapi import FastAPI

    from features.settings import Settings
    from features.tickets import assemble_one, load_serving_snapshots
    from training import registry

    model = registry.load_champion("ticket_triage", settings=Settings(models_dir=models_dir)).model
    snaps = load_serving_snapshots(Settings(models_dir=models_dir).snapshots_dir)
    booster, calendar = model.booster_, model.calendar_
    app = FastAPI()

    @app.post(SCORE)
    async def score(request: Request) -> JSONResponse:
        t = await request.json()
        v = assemble_one(t, snaps.orders.get(t.get("order_id")), snaps.accounts.get(t.get("account_id")),
                         snaps.merchants.get(t.get("merchant_id")), calendar)
        margin = float(booster.predict(np.array([v]), raw_score=True, num_threads=1)[0])
        if model.platt_ is not None:
            p = 1.0 / (1.0 + math.exp(-(model.platt_[0] * margin + model.platt_[1])))
        else:
            p = float(np.interp(margin, model.cal_x_, model.cal_y_))
        return JSONResponse({"ticket_id": t["ticket_id"], "escalation_probability": p})

    # Same treatment of the loaded heap as the service gets: the comparison is about the request path.
    gc.collect()
    gc.freeze()
    return app


def serve_reference(models_dir: Path, port: int) -> None:
    """Run the reference app with uvicorn on loopback (blocks)."""
    import uvicorn

    uvicorn.run(reference_app(models_dir), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --------------------------------------------------------------------------------------------------------------------
# Set-up: a registered model, the servers, the payloads


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def has_champion(models_dir: Path) -> bool:
    """Whether ``models_dir`` holds a ticket_triage champion and its snapshots."""
    from features.settings import Settings
    from training import registry

    settings = Settings(models_dir=models_dir)
    if not (models_dir / "mlflow.db").exists() or not settings.snapshots_dir.exists():
        return False
    versions = registry.list_models(settings)
    return bool(((versions["name"] == "ticket_triage") & versions["aliases"].str.contains("champion")).any())


def build_models(work: Path) -> tuple[Path, Path]:
    """Generate a small world in ``work`` and train/register ticket triage there; returns (data_dir, models_dir)."""
    from features.settings import Settings
    from features.synthetic import generate_world

    data, models = work / "world", work / "models"
    print(f"building a small world and a ticket_triage champion in {work} ...", flush=True)
    generate_world(data, seed=7, accounts=3000, merchants=60, days=300, start="2024-01-01", progress=False)
    settings = Settings(models_dir=models)
    try:
        from training.ticket_triage import train
    except ImportError:
        train = None
    if train is not None:
        train(data, settings)
    else:  # the training module is not in this build: fit and register directly
        _train_directly(data, settings)
    return data, models


def _train_directly(data: Path, settings) -> None:
    from features import tickets as T
    from features.contract import load_dataset
    from training import registry

    ds = load_dataset(data)
    tf = T.build_training_features(ds, T.CalendarTable(settings.market))
    lab = tf.meta["escalated"].notna().to_numpy()
    model = T.TicketTriageModel(num_boost_round=300, num_threads=2).fit(
        tf.X[lab], tf.meta["escalated"][lab].astype(int).to_numpy())
    registry.log_and_register("ticket_triage", model, tf.X[list(T.FEATURES)].head(5), "roc_auc", 0.5, True,
                              settings=settings)
    settings.snapshots_dir.mkdir(parents=True, exist_ok=True)
    for kind, frame in T.feature_snapshots(ds, T.data_end(ds)).items():
        frame.to_parquet(settings.snapshots_dir / T.SNAPSHOT_FILES[kind], index=False)


def sample_tickets(data_dir: Path | None, n: int) -> list[dict]:
    """Up to ``n`` real tickets (contract fields the API takes) from the data folder, as JSON-ready dicts."""
    import pandas as pd

    if data_dir is None or not any(data_dir.glob("tickets.*")):
        return [{"ticket_id": f"T{i:07d}", "created_at": "2024-11-11T10:00:00Z", "case_type": "refund",
                 "channel": "chat", "amount": 20.0 + i % 90, "text": "my parcel never arrived, I want a refund"}
                for i in range(n)]
    t = pd.read_parquet(next(data_dir.glob("tickets.*")))
    t = t.tail(n)[list(TICKET_FIELDS)]
    t["created_at"] = t["created_at"].dt.strftime("%Y-%m-%dT%H:%M:%S%z")
    t = t.astype(object).where(t.notna(), None)
    return t.to_dict("records")


def wait_ready(port: int, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    """Wait until ``POST /v1/tickets/score`` answers 200 on ``port``."""
    import httpx

    probe = {"ticket_id": "probe", "created_at": "2024-11-11T10:00:00Z", "case_type": "refund", "channel": "chat"}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode} before it was ready")
        try:
            key = _api_key()
            headers = {"X-API-Key": key} if key else None
            if httpx.post(f"http://127.0.0.1:{port}{SCORE}", json=probe, headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{what} was not ready within {timeout:.0f} s")


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """Start a server process with its output in ``log``."""
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """Stop a server process (SIGTERM, then SIGKILL) and its children (BentoML's workers)."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def time_batch(port: int, tickets: list[dict], n: int, repeats: int = 2) -> tuple[float, int]:
    """Seconds to score ``n`` tickets in one batch request (best of ``repeats``) and the response status."""
    import httpx

    rows = [dict(tickets[i % len(tickets)], ticket_id=f"B{i:06d}") for i in range(n)]
    body = json.dumps({"tickets": rows}).encode()
    best, status = float("inf"), 0
    with httpx.Client(timeout=120) as client:
        for _ in range(repeats):
            t0 = time.perf_counter()
            key = _api_key()
            r = client.post(f"http://127.0.0.1:{port}{BATCH}", content=body,
                            headers={"content-type": "application/json", **({"X-API-Key": key} if key else {})})
            best, status = min(best, time.perf_counter() - t0), r.status_code
            if status != 200:
                print(f"  batch answered {status}: {r.text[:300]}")
                break
    return best, status


# --------------------------------------------------------------------------------------------------------------------
# Main


def main() -> None:
    """Run the comparison and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=Path, default=None,
                    help="A models folder with a ticket_triage champion (default: build one in a temp folder).")
    ap.add_argument("--data", type=Path, default=None, help="Data folder to take sample tickets from.")
    ap.add_argument("--seconds", type=float, default=24.0, help="Total seconds of single-ticket load (<= 30).")
    ap.add_argument("--rounds", type=int, default=2, help="Interleaved rounds per server and concurrency.")
    ap.add_argument("--batch", type=int, default=10_000, help="Tickets in the batch-endpoint timing.")
    ap.add_argument("--keep-logs", action="store_true", help="Print where the server logs are kept.")
    ap.add_argument("--serve-reference", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_reference:
        serve_reference(args.models_dir, args.port)
        return
    if args.seconds > 30:
        raise SystemExit("--seconds must be at most 30 (bounded load)")

    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_serving_")))
        models_dir, data_dir = args.models_dir, args.data
        if models_dir is None or not has_champion(models_dir.resolve()):
            if models_dir is not None:
                print(f"{models_dir} has no ticket_triage champion with snapshots; building one")
            data_dir, models_dir = build_models(work)
        models_dir = models_dir.resolve()
        if data_dir is None:
            from features.settings import get_settings

            data_dir = get_settings().data_dir
        tickets = sample_tickets(data_dir if data_dir and data_dir.exists() else None, 500)

        env = dict(os.environ, AFTERSALES_MODELS_DIR=str(models_dir), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        bento_port, ref_port = free_port(), free_port()
        bin_dir = Path(sys.executable).parent
        bento = start([str(bin_dir / "bentoml"), "serve", "serving.service:AfterSalesService", "--host",
                       "127.0.0.1", "--port", str(bento_port)], env, work / "bentoml.log")
        stack.callback(stop, bento)
        ref = start([sys.executable, str(Path(__file__).resolve()), "--serve-reference", "--models-dir",
                     str(models_dir), "--port", str(ref_port)], env, work / "reference.log")
        stack.callback(stop, ref)
        wait_ready(bento_port, bento, "the BentoML service")
        wait_ready(ref_port, ref, "the bare FastAPI reference")

        servers = {"bentoml service": bento_port, "bare fastapi": ref_port}
        bodies = {name: [_request(port, SCORE, json.dumps(t).encode()) for t in tickets]
                  for name, port in servers.items()}
        per_round = args.seconds / (2 * 2 * args.rounds)  # 2 concurrencies x 2 servers x rounds
        print(f"\nsingle-ticket scoring, {len(tickets)} distinct tickets cycled, {args.rounds} interleaved rounds "
              f"of {per_round:.1f} s per server and concurrency (loopback, this machine)")
        print(f"{'server':<18}{'conc':>5}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'errors':>8}")
        results: dict[tuple[str, int], dict] = {}
        for conc in (1, 16):
            pooled = {name: ([], [], 0.0) for name in servers}
            for _ in range(args.rounds):
                for name, port in servers.items():
                    lat, err, secs = run_load(port, bodies[name], conc, per_round)
                    pl, pe, ps = pooled[name]
                    pooled[name] = (pl + lat, pe + err, ps + secs)
            for name in servers:
                r = summarize(*pooled[name])
                results[(name, conc)] = r
                print(f"{name:<18}{conc:>5}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['rps']:>9.0f}{r['errors']:>8}")

        print()
        for conc in (1, 16):
            b, f = results[("bentoml service", conc)], results[("bare fastapi", conc)]
            ratio = b["rps"] / f["rps"] if f["rps"] else float("nan")
            print(f"concurrency {conc:>2}: BentoML throughput = {ratio:.0%} of bare FastAPI "
                  f"(p99 {b['p99']:.1f} ms vs {f['p99']:.1f} ms)")
        b16, f16 = results[("bentoml service", 16)], results[("bare fastapi", 16)]
        ratio16 = b16["rps"] / f16["rps"] if f16["rps"] else 0.0
        print(f"target c=16: p99 <= {TARGET_P99_MS:.0f} ms -> {'OK' if b16['p99'] <= TARGET_P99_MS else 'MISSED'}; "
              f"throughput >= {TARGET_RATIO:.0%} of bare -> {'OK' if ratio16 >= TARGET_RATIO else 'MISSED'}")

        secs, status = time_batch(bento_port, tickets, args.batch)
        if status == 200:
            print(f"batch: {args.batch:,} tickets through {BATCH} in {secs:.2f} s "
                  f"({args.batch / secs:,.0f} tickets/s); target < {TARGET_BATCH_S:.0f} s -> "
                  f"{'OK' if secs < TARGET_BATCH_S else 'MISSED'}")
        if args.keep_logs:
            keep = Path(tempfile.mkdtemp(prefix="bench_serving_logs_"))
            for log in ("bentoml.log", "reference.log"):
                (keep / log).write_bytes((work / log).read_bytes())
            print(f"server logs: {keep}")


if __name__ == "__main__":
    main()
