"""A fused fleet on moto's S3 + SageMaker: one changed head redeploys as one shard object.

Why this test: a fused fleet's promise on SageMaker is that a customer's new head costs one
shard upload and a routing-table write, never a SageMaker control-plane change. The fleet is
real (4 example tenants, shards of 2: two shards, built by ``fleet-build``: ONNX Runtime and
Triton); the MME is moto's, created as ``mme deploy`` makes it; ``mme fleet deploy --backend
sagemaker`` publishes to its moto S3 prefix (the shard, the prefix's sync index, the routing
table). moto's InvokeEndpoint cannot take the binary
bodies the shard's validation sends, so (as the other moto deploys with real models do,
``fixtures.sagemaker_moto`` ``runtime``) the runtime client is a local endpoint serving that
same S3 prefix: every validation answer is the real shard's. Every botocore call is counted
(``aws_calls``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fixtures.fused_heads import change_head
from fixtures.sagemaker_moto import EP, STORE, aws, existing_mme, runtime  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.triton, pytest.mark.prefect]

COUNT, SHARD = 4, 2
CHANGED = "tenant-0003"  # in the second shard (tenant-0003, tenant-0004)


def _cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from flows.cli import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})


def _fused_fleet(root: Path) -> Path:
    """The example fleet of COUNT tenants with ``layout: fused`` in shards of SHARD."""
    from tasks.fleet.example import make_example_fleet

    make_example_fleet(COUNT, (root / "models").as_uri(), seed=5, fleet_file=root / "fleet.yaml")
    doc = yaml.safe_load((root / "fleet.yaml").read_text())
    (root / "fleet.yaml").write_text(yaml.safe_dump({**doc, "layout": "fused", "shard_size": SHARD}))
    return root / "fleet.yaml"


def test_a_changed_head_publishes_one_shard_and_the_routes_and_no_control_plane_call(
        tmp_path: Path, mme_home: Path, prefect_harness: None, runtime: Any,  # noqa: F811 - the fixture
        aws_calls: list[tuple[str, str, dict[str, Any]]]) -> None:
    from flows.fleet_build import fleet_build
    from infra.store.sync import INDEX_NAME
    from tasks.fleet.build import INDEX_FILE, FleetIndex
    from tasks.fleet.routes import read_routes

    _, sm_client = runtime
    fleet_file, out = _fused_fleet(tmp_path), tmp_path / "build"
    fleet = yaml.safe_load(fleet_file.read_text())["name"]
    fleet_build(str(fleet_file), output_dir=str(out), triton_sample=1)
    existing_mme(EP, STORE)
    deploy = ("fleet", "deploy", str(fleet_file), "--endpoint", EP, "--backend", "sagemaker",
              "--build-dir", str(out))
    first = _cli(*deploy)
    assert first.exit_code == 0, first.output
    before = read_routes(STORE, fleet)
    tenants = sorted(n for n, r in before.variants.items() if r.tenant is not None)
    assert tenants == [f"tenant-{i:04d}" for i in range(1, COUNT + 1)]

    change_head(tmp_path / "models" / "tenants" / CHANGED / "model.onnx")
    rebuilt = fleet_build(str(fleet_file), output_dir=str(out), triton_sample=1)
    assert (rebuilt["built"], rebuilt["failed"]) == (SHARD, 0)  # the changed tenant's shard only
    shard = FleetIndex.read((out / INDEX_FILE).read_text(), "index").variants[CHANGED].shard
    aws_calls.clear()
    second = _cli(*deploy)
    assert second.exit_code == 0, second.output

    writes = sorted(p["Key"] for s, o, p in aws_calls
                    if s == "s3" and o in ("PutObject", "CreateMultipartUpload", "CopyObject"))
    tarballs = [k for k in writes if k.endswith(".tar.gz")]
    assert len(tarballs) == 1 and tarballs[0].startswith(f"mme/models/{EP}/{shard}-"), writes
    # beside it: the routing table, and the prefix's sync index (infra/store/sync.py INDEX_NAME)
    assert writes == sorted([f"mme/models/{EP}/{INDEX_NAME}", tarballs[0], f"mme/routes/{fleet}.json"])
    after = read_routes(STORE, fleet)
    moved = [n for n in tenants if after.variants[n].sha256 != before.variants[n].sha256]
    assert moved == [CHANGED, "tenant-0004"]  # the changed shard's tenants, routed to its new version
    assert {after.variants[n].target_model for n in moved} == {tarballs[0].rsplit("/", 1)[-1]}
    control = [o for s, o, _ in aws_calls if s == "sagemaker" and not o.startswith(("Describe", "List"))]
    assert control == [] and sm_client.updates == [], "no SageMaker control-plane call"
    invoked = {p["TargetModel"] for s, o, p in aws_calls if (s, o) == ("sagemaker-runtime", "InvokeEndpoint")}
    assert invoked == {after.variants[CHANGED].target_model}  # only the new shard is validated
