"""`mme fleet deploy --plan`: a capacity plan's shard count becomes the fleet's endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from flows.cli.fleet_deploy import _endpoints
from tasks.planning.planfile import Autoscaling, PlanFile, write_plan_file


def _plan(tmp_path: Path, shards: int) -> Path:
    return write_plan_file(PlanFile(instance_type="ml.g4dn.xlarge", instance_count=2, shards=shards,
                                    autoscaling=Autoscaling(min=1, max=3, target=70)),
                           tmp_path / "plan.yaml")


def test_plan_shards_name_the_endpoints(tmp_path):
    assert _endpoints("ep", None, _plan(tmp_path, 3)) == ["ep-1", "ep-2", "ep-3"]
    assert _endpoints("ep", None, _plan(tmp_path, 1)) == ["ep"]
    assert _endpoints(None, "a,b", _plan(tmp_path, 2)) == ["a", "b"]
    assert _endpoints("ep", None, None) == ["ep"]


def test_plan_and_endpoint_count_must_agree(tmp_path, capsys):
    with pytest.raises(typer.Exit):
        _endpoints(None, "a,b,c", _plan(tmp_path, 2))
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert "has 2 shard(s) but --endpoints names 3" in err
