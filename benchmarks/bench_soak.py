"""Soak: the BentoML service under steady mixed load on loopback for a bounded time; errors and memory growth.

What it does (at most 2 minutes of load):

1. Uses a registered ``ticket_triage`` champion (``--models-dir DIR``, else builds a small world and trains one in a
   temporary folder, as ``bench_serving.py`` does) and starts ``bentoml serve serving.service:AfterSalesService``.
2. Sends steady closed-loop load from ``--concurrency`` keep-alive connections: single tickets (most requests),
   batches of 20 tickets, the review queue and the health page, in a fixed rotation.
3. Samples the resident memory (RSS) of the server's processes (the ``bentoml serve`` parent and its workers)
   every 2 s; BentoML 1.4 has a reported memory leak under sustained traffic (bentoml/BentoML#4760) and the
   service carries a fix for a per-request timer leak (``serving.app.cancel_timeout_timers``), so growth is watched.
4. Prints, per window (``--window`` seconds): requests, errors, p50/p99 latency; then RSS per process at start
   (after a warm-up) and end, and the growth in MB per minute (least-squares slope of the worker's RSS).

Usage: ``python benchmarks/bench_soak.py [--models-dir models] [--seconds 120] [--concurrency 8]``
``soak()`` is also what ``tests/test_soak.py`` runs, for a shorter time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_serving, run as a script or imported by a test

import bench_serving as bs  # noqa: E402

MAX_SECONDS = 120.0
RSS_EVERY_S = 2.0
MB = 1024 * 1024


@dataclass
class SoakReport:
    """What one soak measured: per-request (end time, latency, status) and RSS samples per process."""

    seconds: float
    concurrency: int
    done: list[tuple[float, float, int]] = field(default_factory=list)  # (t since start, latency s, HTTP status)
    failures: list[str] = field(default_factory=list)  # connection errors, malformed answers
    rss: dict[int, list[tuple[float, int]]] = field(default_factory=dict)  # pid -> [(t, bytes)]
    names: dict[int, str] = field(default_factory=dict)  # pid -> process description

    @property
    def errors(self) -> int:
        return sum(1 for _, _, s in self.done if not 200 <= s < 300) + len(self.failures)

    def windows(self, width: float) -> list[dict]:
        """Requests, errors and p50/p99 latency (ms) per ``width`` seconds of the run."""
        out = []
        n = max(1, int(round(self.seconds / width)))
        for w in range(n):
            lo, hi = w * width, (w + 1) * width if w < n - 1 else float("inf")
            rows = [(lat, s) for t, lat, s in self.done if lo <= t < hi]
            lat = sorted(x for x, s in rows if 200 <= s < 300)
            p50, p99 = ((lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan"))
                        for p in (0.50, 0.99))
            out.append({"from_s": lo, "requests": len(rows), "errors": sum(1 for _, s in rows if not 200 <= s < 300),
                        "p50_ms": p50, "p99_ms": p99})
        return out

    def rss_mb(self, pid: int, at: str) -> float:
        """RSS of ``pid`` in MB after the warm-up (``at='start'``) or at the end (``'end'``)."""
        samples = self._steady(pid)
        return (samples[0] if at == "start" else samples[-1])[1] / MB

    def growth_mb_per_min(self, pid: int) -> float:
        """Least-squares slope of ``pid``'s RSS after the warm-up, in MB per minute."""
        pts = self._steady(pid)
        if len(pts) < 3:
            return float("nan")
        n = len(pts)
        mt, mr = sum(t for t, _ in pts) / n, sum(r for _, r in pts) / n
        var = sum((t - mt) ** 2 for t, _ in pts)
        return (sum((t - mt) * (r - mr) for t, r in pts) / var) / MB * 60 if var else float("nan")

    def total_growth_mb(self) -> float:
        """RSS of all server processes at the end minus after the warm-up, in MB."""
        return sum(self.rss_mb(p, "end") - self.rss_mb(p, "start") for p in self.rss if self._steady(p))

    def _steady(self, pid: int) -> list[tuple[float, int]]:
        # The first 15% is warm-up: lazy imports, caches and allocator arenas filling once.
        samples = self.rss.get(pid, [])
        return [s for s in samples if s[0] >= 0.15 * self.seconds] or samples

    def lines(self, width: float) -> list[str]:
        """The figures as printable lines."""
        total = len(self.done)
        out = [f"soak: {self.seconds:.0f} s at concurrency {self.concurrency}: {total:,} requests "
               f"({total / max(self.seconds, 1e-9):,.0f}/s), {self.errors} errors"]
        out.append(f"  {'window':>10} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8}")
        for w in self.windows(width):
            out.append(f"  {w['from_s']:>8.0f} s {w['requests']:>9,} {w['errors']:>7} {w['p50_ms']:>8.1f} "
                       f"{w['p99_ms']:>8.1f}")
        for pid in sorted(self.rss):
            if self.rss[pid]:
                out.append(f"  RSS {self.names.get(pid, pid)} (pid {pid}): {self.rss_mb(pid, 'start'):.1f} MB after "
                           f"warm-up -> {self.rss_mb(pid, 'end'):.1f} MB at end, "
                           f"{self.growth_mb_per_min(pid):+.2f} MB/min")
        out.append(f"  RSS growth of all server processes after warm-up: {self.total_growth_mb():+.1f} MB")
        for f in self.failures[:5]:
            out.append(f"  failure: {f}")
        return out


def _http(port: int, method: str, path: str, body: bytes | None, api_key: str | None) -> bytes:
    auth = f"X-API-Key: {api_key}\r\n" if api_key else ""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
    if body is None:
        return (head + "\r\n").encode()
    return (head + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def mixed_requests(port: int, tickets: Sequence[dict], api_key: str | None, queue: bool = True) -> list[bytes]:
    """The rotation each connection cycles through: 20 single tickets, one batch of 20, the review queue (when the
    serial-returner model is loaded) and the health page."""
    out: list[bytes] = []
    for k in range(0, max(len(tickets), 20), 20):
        group = [dict(tickets[(k + i) % len(tickets)]) for i in range(20)]
        out += [_http(port, "POST", bs.SCORE, json.dumps(t).encode(), api_key) for t in group]
        out.append(_http(port, "POST", bs.BATCH, json.dumps({"tickets": group}).encode(), api_key))
        if queue:
            out.append(_http(port, "GET", "/v1/accounts/flagged?limit=10", None, api_key))
        out.append(_http(port, "GET", "/v1/health", None, api_key))
    return out


async def _connection(port: int, requests: Sequence[bytes], offset: int, t0: float, stop_at: float,
                      report: SoakReport) -> None:
    i = offset
    while time.perf_counter() < stop_at:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as e:
            report.failures.append(f"connect: {e}")
            await asyncio.sleep(0.2)
            continue
        try:
            while (start := time.perf_counter()) < stop_at:
                writer.write(requests[i % len(requests)])
                i += 1
                status = await bs.read_response(reader, timeout=60)
                end = time.perf_counter()
                report.done.append((end - t0, end - start, status))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as e:
            report.failures.append(f"{type(e).__name__}: {e}")
        finally:
            writer.close()


def _sample_rss(root_pid: int, report: SoakReport, t0: float, stop: threading.Event) -> None:
    import psutil

    try:
        root = psutil.Process(root_pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        t = time.perf_counter() - t0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            try:
                rss = p.memory_info().rss
                if p.pid not in report.names:
                    cmd = " ".join(p.cmdline()[1:4])[:60]
                    report.names[p.pid] = "server" if p.pid == root_pid else f"worker [{cmd}]"
            except psutil.NoSuchProcess:
                continue
            report.rss.setdefault(p.pid, []).append((t, rss))
        stop.wait(RSS_EVERY_S)


def soak(port: int, server_pid: int, tickets: Sequence[dict], seconds: float, concurrency: int = 8,
         api_key: str | None = None) -> SoakReport:
    """Steady closed-loop mixed load on ``port`` for ``seconds`` (at most 2 minutes), with RSS sampling of the
    ``server_pid`` process tree."""
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be in (0, {MAX_SECONDS:.0f}] (a bounded soak), got {seconds}")
    import httpx

    health = httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=30).json()
    loaded = {m["name"] for m in health["models"] if m["loaded"]}
    requests = mixed_requests(port, tickets, api_key, queue="serial_returners" in loaded)
    report = SoakReport(seconds=seconds, concurrency=concurrency)
    stop = threading.Event()
    t0 = time.perf_counter()
    sampler = threading.Thread(target=_sample_rss, args=(server_pid, report, t0, stop), daemon=True)
    sampler.start()
    step = max(1, len(requests) // concurrency)

    async def run() -> None:
        await asyncio.gather(*[_connection(port, requests, k * step, t0, t0 + seconds, report)
                               for k in range(concurrency)])

    try:
        asyncio.run(run())
    finally:
        stop.set()
        sampler.join(5)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", type=Path, default=None,
                    help="A models folder with a ticket_triage champion (default: build one in a temp folder).")
    ap.add_argument("--data", type=Path, default=None, help="Data folder to take sample tickets from.")
    ap.add_argument("--seconds", type=float, default=MAX_SECONDS, help="Seconds of load (at most 120).")
    ap.add_argument("--concurrency", type=int, default=8, help="Keep-alive connections sending requests.")
    ap.add_argument("--window", type=float, default=30.0, help="Seconds per line of the latency table.")
    args = ap.parse_args()
    if not 0 < args.seconds <= MAX_SECONDS:
        raise SystemExit(f"--seconds must be in (0, {MAX_SECONDS:.0f}] (a bounded soak)")

    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_soak_")))
        models_dir, data_dir = args.models_dir, args.data
        if models_dir is None or not bs.has_champion(models_dir.resolve()):
            if models_dir is not None:
                print(f"{models_dir} has no ticket_triage champion with snapshots; building one")
            data_dir, models_dir = bs.build_models(work)
        models_dir = models_dir.resolve()
        tickets = bs.sample_tickets(data_dir if data_dir and data_dir.exists() else None, 400)
        port = bs.free_port()
        env = dict(os.environ, AFTERSALES_MODELS_DIR=str(models_dir), OMP_NUM_THREADS="1",
                   AFTERSALES_REVIEW_DB_URL=f"sqlite:///{work / 'reviews.db'}")
        if data_dir is not None:
            env["AFTERSALES_DATA_DIR"] = str(data_dir)
        bin_dir = Path(sys.executable).parent
        proc = bs.start([str(bin_dir / "bentoml"), "serve", "serving.service:AfterSalesService", "--host",
                         "127.0.0.1", "--port", str(port)], env, work / "bentoml.log")
        stack.callback(bs.stop, proc)
        bs.wait_ready(port, proc, "the BentoML service")
        load = os.getloadavg()
        print(f"soaking for {args.seconds:.0f} s at concurrency {args.concurrency} "
              f"(load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}) ...", flush=True)
        report = soak(port, proc.pid, tickets, args.seconds, args.concurrency, bs._api_key())
        print("\n".join(report.lines(args.window)))
        load = os.getloadavg()
        print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        if report.errors:
            raise SystemExit(f"{report.errors} errors during the soak; server log: {work / 'bentoml.log'}")


if __name__ == "__main__":
    main()
