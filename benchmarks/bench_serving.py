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

With ``--wrk``, first the same comparison with ``wrk`` (what operators use; it loads a server harder than the
asyncio generator): interleaved rounds at concurrency 1 (1 thread) and 16 (2 threads), requests/s, p50 and p99 of
both servers and the service/reference ratios against the targets (>= 80% of the reference's requests/s at
concurrency 16, p99 <= 1.5x at 1 and 16). ``--workers N`` starts the service with ``aftersales serve --workers N``.

Usage: ``python benchmarks/bench_serving.py [--models-dir models] [--seconds 24] [--batch 10000] [--wrk]
[--workers 1]``
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
from typing import Any

from fastapi import Request  # module level: FastAPI resolves the endpoint's string annotations here
from fastapi.responses import JSONResponse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

SCORE = "/v1/tickets/score"
BATCH = "/v1/tickets/score-batch"
TARGET_P99_MS = 25.0
TARGET_RATIO = 0.60
TARGET_BATCH_S = 1.0
WRK_TARGET_RPS, WRK_TARGET_P99 = 0.80, 1.5  # service vs reference with wrk: req/s at c=16; p99 at c=1 and c=16
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
# wrk: the load generator operators use (C, event-driven; loads a server harder than the asyncio one above)

# Each wrk thread reads the request bodies (one JSON per line) and cycles through them; at the end the main thread
# prints one machine-readable line. Latency figures are wrk's own (microseconds, coordinated-omission naive, as the
# asyncio generator is: both are closed loops).
WRK_SCRIPT = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies, n, i = {}, 0, 0
function init(args)
  if args[3] ~= nil and args[3] ~= "" then wrk.headers["X-API-Key"] = args[3] end
  local f = assert(io.open(args[1], "r"))
  for line in f:lines() do
    n = n + 1
    bodies[n] = wrk.format("POST", args[2], nil, line)
  end
  f:close()
  i = math.random(n) - 1
end
function request()
  i = i % n + 1
  return bodies[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKJSON {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, " ..
    "\"mean_us\": %f, \"status\": %d, \"connect\": %d, \"read\": %d, \"write\": %d, \"timeout\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    e.status, e.connect, e.read, e.write, e.timeout))
end
"""


def run_wrk(port: int, bodies_file: Path, script: Path, concurrency: int, seconds: float) -> dict[str, float]:
    """One wrk run against ``POST /v1/tickets/score`` on ``port``: requests/s, p50/p99 ms and errors.

    2 threads (1 at concurrency 1: wrk needs a connection per thread), ``concurrency`` keep-alive connections."""
    threads = 2 if concurrency >= 2 else 1
    cmd = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
           "-s", str(script), f"http://127.0.0.1:{port}{SCORE}", "--", str(bodies_file), SCORE, _api_key() or ""]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({out.returncode}): {out.stderr.strip()[-500:] or out.stdout[-500:]}")
    r = json.loads(line[len("WRKJSON "):])
    secs = r["duration_us"] / 1e6
    errors = r["status"] + r["connect"] + r["read"] + r["write"] + r["timeout"]
    return {"rps": (r["requests"] - r["status"]) / secs, "p50": r["p50_us"] / 1000, "p99": r["p99_us"] / 1000,
            "errors": errors, "n": r["requests"]}


def wrk_rounds(servers: dict[str, int], tickets: list[dict], rounds: int, seconds: float, work: Path
               ) -> dict[tuple[str, int], list[dict]]:
    """Interleaved wrk rounds (service, reference, service, ...) at concurrency 1 and 16; every round's figures."""
    import shutil

    if shutil.which("wrk") is None:
        raise SystemExit("--wrk needs wrk on the PATH (apt-get install wrk)")
    script, bodies_file = work / "bench.lua", work / "bodies.jsonl"
    script.write_text(WRK_SCRIPT)
    bodies_file.write_text("".join(json.dumps(t) + "\n" for t in tickets))
    out: dict[tuple[str, int], list[dict]] = {}
    for conc in (1, 16):
        for _ in range(rounds):
            for name, port in servers.items():
                out.setdefault((name, conc), []).append(run_wrk(port, bodies_file, script, conc, seconds))
    return out


def print_wrk(results: dict[tuple[str, int], list[dict]], service: str, references: list[str]) -> None:
    """The wrk table (median of the rounds, and their range) and the service/reference ratios against targets."""
    import statistics

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print(f"{'server':<18}{'conc':>5}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'errors':>8}   req/s per round")
    for (name, conc), rows in results.items():
        per_round = ", ".join(f"{x['rps']:.0f}" for x in rows)
        print(f"{name:<18}{conc:>5}{med(rows, 'p50'):>9.2f}{med(rows, 'p99'):>9.2f}{med(rows, 'rps'):>9.0f}"
              f"{sum(r['errors'] for r in rows):>8}   {per_round}")
    for reference in references:
        for conc in (1, 16):
            s, r = results[(service, conc)], results[(reference, conc)]
            # Ratios of adjacent rounds (same background load), then their median.
            rps = statistics.median(a["rps"] / b["rps"] for a, b in zip(s, r, strict=True) if b["rps"])
            p99 = statistics.median(a["p99"] / b["p99"] for a, b in zip(s, r, strict=True) if b["p99"])
            p50 = statistics.median(a["p50"] / b["p50"] for a, b in zip(s, r, strict=True) if b["p50"])
            verdict = (f"req/s {rps:.0%} (target >= {WRK_TARGET_RPS:.0%}) -> "
                       f"{'OK' if rps >= WRK_TARGET_RPS else 'MISSED'}; " if conc == 16 else f"req/s {rps:.0%}; ")
            print(f"vs {reference}, concurrency {conc:>2}: {verdict}p50 {p50:.2f}x; p99 {p99:.2f}x "
                  f"(target <= {WRK_TARGET_P99:.1f}x) -> {'OK' if p99 <= WRK_TARGET_P99 else 'MISSED'}")


# --------------------------------------------------------------------------------------------------------------------
# Where a request's time goes: py-spy samples the service worker under wrk load, each sample goes to a stage

# (stage, test on (file, function)); a sample goes to the first stage that matches, from its innermost frame outwards.
STAGES: tuple[tuple[str, Any], ...] = (
    ("socket writes (send on loopback)", lambda f, fn: fn == "_SelectorSocketTransport.write"),
    ("booster (LightGBM predict)", lambda f, fn: "lightgbm" in f),
    ("request validation (pydantic, TicketIn)",
     lambda f, fn: fn.rsplit(".", 1)[-1] in ("model_validate_json", "deserialize_model", "parse_request")
     or f.endswith("serving/schemas.py")),
    ("response model + JSON (pydantic)",
     lambda f, fn: fn.rsplit(".", 1)[-1] in ("model_dump_json", "model_dump", "serialize_model", "to_http_response")
     or ("pydantic" in f and fn.rsplit(".", 1)[-1] in ("__init__", "model_construct"))),
    ("feature vector, calibration, reasons (score_one)",
     lambda f, fn: "features/" in f and ("ticket" in f or f.endswith(("pit.py", "live_counts.py")))),
    ("policy + notes (features/triage*.py)", lambda f, fn: "features/triage" in f),
    ("online-store lookup", lambda f, fn: f.endswith("serving/online_store.py")),
    ("runtime, service method", lambda f, fn: f.endswith(("serving/runtime.py", "serving/service.py"))),
    ("metrics middleware (prometheus)", lambda f, fn: "prometheus_client" in f or f.endswith("instruments.py")),
    ("timeout middleware", lambda f, fn: f.endswith("traffic.py") or "timeouts.py" in f
     or (f.endswith("bentoml_patches.py") and "__call__" in fn)),
    ("tracing middleware (OpenTelemetry)", lambda f, fn: "opentelemetry" in f),
    ("fast path dispatch (serving/fast_path.py)", lambda f, fn: f.endswith("serving/fast_path.py")),
    ("guard middleware", lambda f, fn: f.endswith(("serving/middleware.py", "serving/bentoml_patches.py"))),
    ("BentoML request dispatch", lambda f, fn: "bentoml" in f),
    ("Starlette (routing, request, response)", lambda f, fn: "starlette" in f),
    ("HTTP protocol (uvicorn, h11)", lambda f, fn: "uvicorn" in f or "/h11/" in f),
    ("event loop (asyncio)", lambda f, fn: "asyncio" in f),
)


def classify(stack: str) -> str:
    """The stage of one py-spy raw stack (``func (file:line);...`` outermost first)."""
    for frame in reversed(stack.split(";")):
        fn, _, rest = frame.partition(" (")
        f = rest.rsplit(":", 1)[0]
        for stage, test in STAGES:
            if test(f, fn):
                return stage
    return "other"


def worker_pid(server: subprocess.Popen) -> int:
    """The BentoML API worker under a ``bentoml serve`` process (the process that answers requests)."""
    import psutil

    for child in psutil.Process(server.pid).children(recursive=True):
        if any("worker" in part for part in child.cmdline()):
            return child.pid
    raise SystemExit("no BentoML worker process found")


def profile(port: int, pid: int, tickets: list[dict], seconds: float, work: Path, concurrency: int = 16
            ) -> dict[str, float]:
    """Microseconds of worker CPU per request by stage: py-spy samples ``pid`` while wrk loads ``port``."""
    import shutil

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("--profile needs py-spy (pip install py-spy; it is in the dev extra)")
    script, bodies_file = work / "bench.lua", work / "bodies.jsonl"
    script.write_text(WRK_SCRIPT)
    bodies_file.write_text("".join(json.dumps(t) + "\n" for t in tickets))
    raw = work / "profile.txt"
    rate = 250
    spy_proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", str(rate), "--duration",
                                 str(int(seconds)), "--format", "raw", "--nonblocking", "--output", str(raw)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    load = run_wrk(port, bodies_file, script, concurrency, seconds - 1)
    spy_proc.wait(seconds + 30)
    samples: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stage = classify(stack)
            samples[stage] = samples.get(stage, 0) + int(count)
    requests = load["rps"] * (seconds - 1)
    per_request = {stage: n / rate / requests * 1e6 for stage, n in samples.items()}
    return dict(sorted(per_request.items(), key=lambda kv: -kv[1])) | {"_rps": load["rps"]}


# --------------------------------------------------------------------------------------------------------------------
# The bare FastAPI reference (run in its own process by ``--serve-reference``)


REFERENCE_SCORERS = ("model", "vector")


def reference_app(models_dir: Path, scorer: str = "model"):
    """A FastAPI app that scores with the champion's booster and nothing else of the service.

    ``scorer="model"``: the model's own ``score_one`` (the feature vector the booster was trained on, text score
    included, calibration and reasons) on the served generation's snapshot rows; ``"vector"``: only
    ``assemble_one`` and the booster (no text score, no reasons: less than the model computes, a floor). Neither
    validates, applies the policy, or runs middleware.
    """
    import math

    import numpy as np
    from fastapi import FastAPI

    from features import generations
    from features.settings import Settings
    from features.tickets import assemble_one, load_serving_snapshots
    from training import registry

    settings = Settings(models_dir=models_dir)
    model = registry.load_champion("ticket_triage", settings=settings).model
    gen = generations.current_id(settings.snapshots_dir)  # the generation the service serves, as it reads it
    snaps = load_serving_snapshots(generations.generation_dir(settings.snapshots_dir, gen) if gen
                                   else settings.snapshots_dir)
    calendar = model.calendar_
    app = FastAPI()

    @app.post(SCORE)
    async def score(request: Request) -> JSONResponse:
        t = await request.json()
        order, account = snaps.orders.get(t.get("order_id")), snaps.accounts.get(t.get("account_id"))
        merchant = snaps.merchants.get(t.get("merchant_id"))
        if scorer == "model":
            out = model.score_one(t, account, merchant, order)
            return JSONResponse({"ticket_id": t["ticket_id"], "escalation_probability": out["escalation_probability"],
                                 "reasons": out["reasons"]})
        v = assemble_one(t, order, account, merchant, calendar)
        margin = float(model._margins(np.array([v]), 1)[0])
        if model.platt_ is not None:
            p = 1.0 / (1.0 + math.exp(-(model.platt_[0] * margin + model.platt_[1])))
        else:
            p = float(np.interp(margin, model.cal_x_, model.cal_y_))
        return JSONResponse({"ticket_id": t["ticket_id"], "escalation_probability": p})

    # Same treatment of the loaded heap as the service gets: the comparison is about the request path.
    gc.collect()
    gc.freeze()
    return app


def serve_reference(models_dir: Path, port: int, scorer: str = "model") -> None:
    """Run the reference app with uvicorn on loopback (blocks)."""
    import uvicorn

    uvicorn.run(reference_app(models_dir, scorer), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)


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


def own_generator(servers: dict[str, int], bodies: dict[str, list[bytes]], tickets: list[dict], seconds: float,
                  rounds: int) -> None:
    """The asyncio load generator's comparison (interleaved rounds at concurrency 1 and 16) and its table."""
    per_round = seconds / (2 * 2 * rounds)  # 2 concurrencies x 2 servers x rounds
    print(f"\nown load generator, single-ticket scoring, {len(tickets)} distinct tickets cycled, {rounds} interleaved "
          f"rounds "
          f"of {per_round:.1f} s per server and concurrency (loopback, this machine)")
    print(f"{'server':<18}{'conc':>5}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'errors':>8}")
    results: dict[tuple[str, int], dict] = {}
    for conc in (1, 16):
        pooled = {name: ([], [], 0.0) for name in servers}
        for _ in range(rounds):
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


def main() -> None:
    """Run the comparison and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=Path, default=None,
                    help="A models folder with a ticket_triage champion (default: build one in a temp folder).")
    ap.add_argument("--data", type=Path, default=None, help="Data folder to take sample tickets from.")
    ap.add_argument("--seconds", type=float, default=24.0, help="Total seconds of single-ticket load (<= 30).")
    ap.add_argument("--rounds", type=int, default=2, help="Interleaved rounds per server and concurrency.")
    ap.add_argument("--batch", type=int, default=10_000, help="Tickets in the batch-endpoint timing.")
    ap.add_argument("--wrk", action="store_true",
                    help="Also load both servers with wrk (interleaved rounds at concurrency 1 and 16).")
    ap.add_argument("--wrk-rounds", type=int, default=3, help="wrk rounds per server and concurrency.")
    ap.add_argument("--wrk-seconds", type=float, default=5.0, help="Seconds of each wrk round.")
    ap.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                    help="Sample the service worker with py-spy under wrk load (concurrency 16) for SECONDS and print "
                         "the microseconds per request of each stage (validation, middleware, JSON, booster...).")
    ap.add_argument("--workers", type=int, default=1, help="Service worker processes (`aftersales serve --workers`).")
    ap.add_argument("--keep-logs", action="store_true", help="Print where the server logs are kept.")
    ap.add_argument("--serve-reference", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--reference-scorer", choices=REFERENCE_SCORERS, default="model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_reference:
        serve_reference(args.models_dir, args.port, args.reference_scorer)
        return
    if args.seconds > 30 or args.wrk_rounds * args.wrk_seconds > 60:
        raise SystemExit("--seconds must be at most 30 and --wrk-rounds x --wrk-seconds at most 60 (bounded load)")

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
        bento_port, ref_port, vec_port = free_port(), free_port(), free_port()
        # Through `aftersales serve` (what operators run; it sets the worker count), which becomes `bentoml serve`.
        bento = start([sys.executable, "-m", "training.cli", "serve", "--host", "127.0.0.1", "--port",
                       str(bento_port), "--workers", str(args.workers)], env, work / "bentoml.log")
        stack.callback(stop, bento)
        refs = {"bare fastapi": (ref_port, "model")} | ({"bare vector-only": (vec_port, "vector")} if args.wrk else {})
        for port, scorer in refs.values():
            proc = start([sys.executable, str(Path(__file__).resolve()), "--serve-reference", "--models-dir",
                          str(models_dir), "--port", str(port), "--reference-scorer", scorer], env,
                         work / f"reference-{scorer}.log")
            stack.callback(stop, proc)
            wait_ready(port, proc, f"the bare FastAPI reference ({scorer})")
        wait_ready(bento_port, bento, "the BentoML service")

        servers = {"bentoml service": bento_port, "bare fastapi": ref_port}
        every = {"bentoml service": bento_port, **{name: port for name, (port, _) in refs.items()}}
        bodies = {name: [_request(port, SCORE, json.dumps(t).encode()) for t in tickets]
                  for name, port in servers.items()}
        if args.profile:
            split = profile(bento_port, worker_pid(bento), tickets, args.profile, work)
            rps = split.pop("_rps")
            print(f"\nwhere a request's time goes: py-spy on the service worker under wrk (concurrency 16, "
                  f"{args.profile:.0f} s, {rps:.0f} req/s); worker CPU per request, by stage")
            for stage, us in split.items():
                print(f"  {stage:<52}{us:>8.0f} us")
            print(f"  {'total':<52}{sum(split.values()):>8.0f} us")
        if args.wrk:
            print(f"\nwrk, single-ticket scoring: {len(tickets)} distinct tickets cycled, {args.wrk_rounds} "
                  f"interleaved rounds of {args.wrk_seconds:.0f} s per server and concurrency (2 threads; 1 at "
                  f"concurrency 1), service with {args.workers} worker(s), loopback, this machine")
            print_wrk(wrk_rounds(every, tickets, args.wrk_rounds, args.wrk_seconds, work), "bentoml service",
                      [name for name in every if name != "bentoml service"])
        if args.seconds > 0:
            own_generator(servers, bodies, tickets, args.seconds, args.rounds)
        if args.batch > 0:
            secs, status = time_batch(bento_port, tickets, args.batch)
            if status == 200:
                    print(f"batch: {args.batch:,} tickets through {BATCH} in {secs:.2f} s "
                      f"({args.batch / secs:,.0f} tickets/s); target < {TARGET_BATCH_S:.0f} s -> "
                      f"{'OK' if secs < TARGET_BATCH_S else 'MISSED'}")
        if args.keep_logs:
            keep = Path(tempfile.mkdtemp(prefix="bench_serving_logs_"))
            for log in ("bentoml.log", "reference-model.log", "reference-vector.log", "profile.txt"):
                if (work / log).exists():
                    (keep / log).write_bytes((work / log).read_bytes())
            print(f"server logs: {keep}")


if __name__ == "__main__":
    main()
