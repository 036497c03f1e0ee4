"""A short soak of the real service (``benchmarks/bench_soak.py``'s ``soak()``): steady mixed load on loopback with
every champion loaded; no request fails, and the server's resident memory does not run away.

The full 2-minute soak with per-window figures is ``python benchmarks/bench_soak.py``. This one runs 30 s: enough to
see a per-request leak (the BentoML timeout-timer leak grew the worker ~25 MB in 30 s), short for CI.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
from _service import ROOT, Service

sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_soak import soak  # noqa: E402

SECONDS = 30.0
CONCURRENCY = 4
MAX_GROWTH_MB = 50.0  # generous: allocator arenas and caches still settle; the timer leak alone was ~25 MB/30 s
API_KEY = "soak-key-2b9e"


@pytest.fixture(scope="module")
def soak_service(deployment_shared, tmp_path_factory) -> Service:
    root = tmp_path_factory.mktemp("soak")
    d = deployment_shared
    svc = Service(d["settings"].models_dir, d["world"], root / "service.log",
                  AFTERSALES_API_KEYS=json.dumps([API_KEY]),
                  AFTERSALES_REVIEW_DB_URL=f"sqlite:///{root / 'reviews.db'}")
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


def test_steady_load_has_no_errors_and_bounded_memory_growth(soak_service, deployment_shared):
    report = soak(soak_service.port, soak_service.proc.pid, deployment_shared["json_tickets"], SECONDS, CONCURRENCY,
                  api_key=API_KEY)
    load = os.getloadavg()
    print("\n" + "\n".join(report.lines(10.0)) + f"\n  load average: {load[0]:.2f}")
    assert len(report.done) > 200, f"too few requests to judge ({len(report.done)}):\n{soak_service.tail()}"
    assert report.errors == 0, (report.failures[:5], [s for _, _, s in report.done if not 200 <= s < 300][:20])
    assert report.rss, "no RSS samples of the server processes"
    growth = report.total_growth_mb()
    assert growth < MAX_GROWTH_MB, "\n".join(report.lines(10.0))
    assert soak_service.client.get("/v1/health").status_code == 200
