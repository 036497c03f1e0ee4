"""Property-based fuzzing of every endpoint in the service's OpenAPI spec (schemathesis 4), against the real
``bentoml serve`` with every champion loaded and API keys configured.

For each operation schemathesis generates valid and invalid requests (wrong types, missing fields, odd
content types, huge numbers, unicode): whatever arrives, the answer is never a 5xx and never carries a stack trace
or a source path. Without the key, every route but health answers 401 before anything is parsed.
"""

from __future__ import annotations

import json
import re

import pytest
import schemathesis
from _service import ROOT, Service
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

API_KEY = "fuzz-key-7f3a9c1e5b"
HEALTH = {"/livez", "/readyz", "/healthz", "/v1/health"}
# A stack trace or a source file path in a body: internals a caller must never see.
LEAK = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+|site-packages|" + re.escape(str(ROOT)))
FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                database=None)
FUZZ_ANONYMOUS = settings(FUZZ, max_examples=8)


@pytest.fixture(scope="module")
def fuzz_service(deployment_shared, tmp_path_factory) -> Service:
    root = tmp_path_factory.mktemp("fuzz")
    d = deployment_shared
    svc = Service(d["settings"].models_dir, d["world"], root / "service.log",
                  AFTERSALES_API_KEYS=json.dumps([API_KEY]), AFTERSALES_MAX_BATCH_SIZE="50",
                  AFTERSALES_MAX_BODY_BYTES="2000000", AFTERSALES_REVIEW_DB_URL=f"sqlite:///{root / 'reviews.db'}")
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_service):
    return schemathesis.openapi.from_url(f"{fuzz_service.url}/docs.json", headers={"X-API-Key": API_KEY},
                                         timeout=30)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request):
    """schemathesis 4.32 reads ``request.node._nodeid`` (pytest 8), which pytest 9 no longer has."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def _no_leak(response, case) -> None:
    text = response.text
    assert not LEAK.search(text), f"{case.method} {case.formatted_path} leaked internals:\n{text[:2000]}"


@schema.parametrize()
@FUZZ
def test_no_server_error_nor_stack_trace_with_the_key(case, fuzz_service):
    response = case.call(base_url=fuzz_service.url, headers={"X-API-Key": API_KEY}, timeout=60)
    case.validate_response(response, checks=[not_a_server_error])
    _no_leak(response, case)


@schema.parametrize()
@FUZZ_ANONYMOUS
def test_without_the_key_only_health_answers(case, fuzz_service):
    headers = dict(case.headers or {})
    headers.pop("X-API-Key", None)
    headers.pop("x-api-key", None)
    case.headers = headers
    response = case.call(base_url=fuzz_service.url, timeout=60)
    if case.path in HEALTH:
        assert response.status_code < 500, response.text
    else:
        assert response.status_code == 401, (case.method, case.formatted_path, response.status_code, response.text)
    _no_leak(response, case)


def test_the_fuzzed_service_is_still_healthy_and_logged_no_key(fuzz_service):
    """After the fuzzing: the service answers, and neither the key nor an unexpected error reached its log."""
    r = fuzz_service.client.get("/v1/health")
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text
    log = fuzz_service.tail(10_000_000)
    assert API_KEY not in log
    assert "Exception on" not in log and "Traceback" not in log, log[-5000:]
