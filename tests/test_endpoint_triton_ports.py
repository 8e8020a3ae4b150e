"""Triton's own ports under the local endpoint can be set, and its Prometheus metrics are
served through the endpoint (``GET /triton/metrics``): a dashboard or perf_analyzer can reach
Triton at a known address, a scraper needs only the endpoint's."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import httpx
import pytest

from fixtures.local_endpoint import call, start_endpoint
from fixtures.tiny_models import publish_pipe
from infra.triton.process import PortInUse, free_port

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pytriton tritonserver is Linux-only"),
]


def test_set_triton_ports_are_used_and_its_metrics_come_through_the_endpoint(tmp_path: Path) -> None:
    http, grpc, metrics = free_port(), free_port(), free_port()
    e = start_endpoint(tmp_path, triton_http_port=http, triton_grpc_port=grpc, triton_metrics_port=metrics)
    try:
        t = e.ep.triton
        assert (t.http_port, t.grpc_port, t.metrics_port) == (http, grpc, metrics)
        assert httpx.get(f"http://127.0.0.1:{http}/v2/health/live", timeout=10).status_code == 200
        publish_pipe(e.store_dir, "pipe-ports.tar.gz", 2.0)
        call(e.url, "pipe-ports.tar.gz")
        r = httpx.get(f"{e.url}/triton/metrics", timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        success = [line for line in r.text.splitlines()
                   if line.startswith("nv_inference_request_success{") and "pipe-ports" in line]
        assert success and all(float(line.rsplit(" ", 1)[1]) >= 1 for line in success), r.text[:2000]
    finally:
        e.ep.stop()


def test_without_triton_metrics_the_route_says_so(tmp_path: Path) -> None:
    e = start_endpoint(tmp_path, triton_metrics_port=None)
    try:
        assert e.ep.triton.metrics_port is None
        r = httpx.get(f"{e.url}/triton/metrics", timeout=10)
        assert r.status_code == 404 and "without metrics" in r.text
    finally:
        e.ep.stop()


def test_a_taken_triton_port_is_refused_naming_the_setting(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(PortInUse, match=f"127.0.0.1:{port}.*triton_grpc_port"):
            start_endpoint(tmp_path, triton_grpc_port=port)
