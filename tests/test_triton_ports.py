"""The ports one Triton launch asks for are distinct, even when the OS hands the same free port
to two ``bind(0)`` calls in a row (Triton then refused to start: "cannot listen to HTTP
requests and metrics requests at the same address and port", seen in a `mme demo` run).
No Triton is started: the ports are chosen before the launch."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.triton.process import TritonPorts, TritonProcess, TritonStartError


def launch_with(picks: list[int], ports: TritonPorts, tmp_path: Path) -> TritonProcess:
    proc = TritonProcess(tmp_path, ports=ports)
    queue = list(picks)
    proc.port_picker = lambda: queue.pop(0)  # type: ignore[method-assign]
    proc._pick_ports()
    return proc


def test_each_free_port_of_a_launch_is_distinct(tmp_path: Path) -> None:
    proc = launch_with([5000, 5000, 5001, 5000, 5001, 5002], TritonPorts(http=0, grpc=0, metrics=0), tmp_path)
    assert (proc.http_port, proc.grpc_port, proc.metrics_port) == (5000, 5001, 5002)


def test_a_free_port_is_never_one_asked_for(tmp_path: Path) -> None:
    proc = launch_with([6000, 6001], TritonPorts(http=6000, grpc=None, metrics=0), tmp_path)
    assert (proc.http_port, proc.grpc_port, proc.metrics_port) == (6000, None, 6001)


def test_a_picker_that_only_repeats_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TritonStartError, match="no free port distinct from"):
        launch_with([7000] * 101, TritonPorts(http=0, metrics=0), tmp_path)
