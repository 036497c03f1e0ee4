"""Process life of `aftersales serve`: the signal a supervisor sends (SIGTERM) or Ctrl-C (SIGINT) to the process it
started stops the server and every worker within 10 s, and frees the port."""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import psutil
import pytest
from _service import ROOT, Service

STOP_WITHIN_S = 10.0


def _alive(pids: list[int]) -> list[str]:
    """The processes among ``pids`` still running (a zombie waiting for its reaper has stopped)."""
    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return out


def _port_free(port: int) -> bool:
    """Nothing accepts connections on the port and a new server could listen on it."""
    with socket.socket() as c:
        c.settimeout(1)
        if c.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT of closed connections is no listener
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def _links_answer(svc: Service) -> None:
    """Every page of the service that the README and `aftersales demo` send users to exists (not 404)."""
    text = (ROOT / "README.md").read_text() + (ROOT / "training" / "cli.py").read_text()
    paths = set(re.findall(r"http://127\.0\.0\.1:3000(/[\w./{}-]*)", text))
    assert "/" in paths and "/docs.json" in paths, paths
    for path in sorted(p for p in paths if "{" not in p):
        status = svc.client.get(path).status_code
        assert status != 404, f"{path} answers 404 (linked from the README or the demo output)"
    assert svc.client.get("/").headers["content-type"].startswith("text/html")
    assert "/v1/tickets/score" in svc.client.get("/docs.json").json()["paths"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_aftersales_serve_stops_the_server_and_every_worker_and_frees_the_port(
        sig, deployment_shared, tmp_path):
    d = deployment_shared
    svc = Service(d["settings"].models_dir, d["world"], tmp_path / "serve.log", via_cli=True)
    try:
        svc.wait_ready()
        assert svc.client.get("/v1/health").json()["models"], svc.tail()
        if sig == signal.SIGTERM:
            _links_answer(svc)
        pids = svc.worker_pids()
        assert len(pids) >= 2, f"expected the server and at least one worker, found {pids}"
        svc.client.close()

        svc.proc.send_signal(sig)  # to the started process only, as a supervisor does (not its process group)
        t0 = time.monotonic()
        while time.monotonic() - t0 < STOP_WITHIN_S and (_alive(pids) or not _port_free(svc.port)):
            svc.proc.poll()  # reap it when it exits
            time.sleep(0.1)
        took = time.monotonic() - t0
        left = _alive(pids)
        assert not left, f"still running {took:.1f}s after {sig.name}: {left}\n{svc.tail()}"
        assert _port_free(svc.port), f"port {svc.port} still taken {took:.1f}s after {sig.name}\n{svc.tail()}"
        assert svc.proc.wait(1) is not None
    finally:
        svc.kill()
        try:  # what a failed run left behind (the group outlives its exited leader)
            os.killpg(svc.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
