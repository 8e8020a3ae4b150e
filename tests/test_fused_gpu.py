"""A ``sagemaker-gpu`` fused shard: its model checked against the serving release's runtimes
(ONNX Runtime of the onnxruntime backend, TensorRT's ONNX parser), its ensemble rendered with
the native ``dali`` and ``onnxruntime`` members and ``TENANT`` wired; and, where a GPU and an
NGC Triton are at hand, built and verified in that Triton."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

import onnx
import pytest
import yaml
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2 as mc

from infra.triton.release import DEFAULT_RELEASE, ONNXRUNTIME_BY_RELEASE, onnxruntime_max_opset
from tasks.fleet.example import ExampleKind
from tasks.fleet.fused_gpu import FusedGpuError, check_fused_for_gpu, shard_release

COUNT = 4


def _fleet(root: Path, kind: ExampleKind, target: str) -> Path:
    """A ``COUNT``-tenant example fleet of ``kind`` (``mme fleet example``), fused, for ``target``."""
    from tasks.fleet.example import make_kind_example

    make_kind_example(kind, COUNT, (root / "models").as_uri(), seed=5, fleet_file=root / "fleet.yaml",
                      layout="fused")
    doc = yaml.safe_load((root / "fleet.yaml").read_text())
    path = root / f"fleet-{target}.yaml"
    path.write_text(yaml.safe_dump({**doc, "target": target, "shard_size": COUNT}))
    return path


def _models(root: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in sorted((root / "models" / "tenants").glob("*/model.onnx"))}


def _fused(models: dict[str, bytes]) -> bytes:
    from tasks.fleet.fusion import analyze_fleet, fuse

    analysis = analyze_fleet(models)
    assert len(analysis.fusable) == COUNT, analysis.refused
    return fuse(models, analysis.fusable, analysis).model


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory, mme_home: Path) -> Path:
    root = tmp_path_factory.mktemp("gpu-image")
    _fleet(root, "image", "sagemaker-gpu")
    return root


@pytest.fixture(scope="module")
def fused_image(image_root: Path) -> bytes:
    return _fused(_models(image_root))


@pytest.fixture(scope="module")
def fused_text(tmp_path_factory: pytest.TempPathFactory, mme_home: Path) -> bytes:
    root = tmp_path_factory.mktemp("gpu-text")
    _fleet(root, "text", "sagemaker-gpu")
    return _fused(_models(root))


def _with(model: bytes, edit: Any) -> onnx.ModelProto:
    proto = onnx.load_from_string(model)
    edit(proto)
    return proto


# ------------------------------------------------------------------------------ the tables


def test_the_default_release_bundles_an_onnx_runtime_whose_opset_is_known() -> None:
    assert ONNXRUNTIME_BY_RELEASE[str(DEFAULT_RELEASE)] == "1.19.2"
    assert onnxruntime_max_opset(DEFAULT_RELEASE) == 21
    assert onnxruntime_max_opset("23.04") == 18  # ONNX Runtime 1.14.1


@pytest.mark.parametrize(("release", "named"), [("22.12", "Triton 22.12"), ("25.05", "ONNX Runtime 1.22.0")])
def test_a_release_whose_runtime_is_not_in_the_tables_is_refused_not_guessed(
        fused_image: bytes, release: str, named: str) -> None:
    with pytest.raises(FusedGpuError, match=f"cannot check it for Triton {release}.*{named}"):
        check_fused_for_gpu(fused_image, release)


# ------------------------------------------------------------------------------ the check


@pytest.mark.parametrize("kind", ["image", "text"])
def test_the_example_fleets_fused_model_passes_for_the_default_release(
        kind: str, fused_image: bytes, fused_text: bytes) -> None:
    seen = check_fused_for_gpu(fused_image if kind == "image" else fused_text, DEFAULT_RELEASE)
    assert (seen.release, seen.backend, seen.runtime) == ("24.09", "onnxruntime", "ONNX Runtime 1.19.2")
    assert seen.opset <= seen.max_opset == 21
    assert seen.tenant_gathers == 2  # the head table's start and end rows, by the tenant's index
    assert {"Gather", "Slice", "Where", "Softmax"} <= set(seen.ops)
    trt = check_fused_for_gpu(fused_image if kind == "image" else fused_text, DEFAULT_RELEASE, "tensorrt")
    assert trt.runtime == "TensorRT 10.4.0" and trt.max_opset == 20


def test_an_opset_newer_than_the_releases_onnx_runtime_is_refused(fused_image: bytes) -> None:
    def bump(m: onnx.ModelProto) -> None:
        m.opset_import[0].version = 19

    assert check_fused_for_gpu(_with(fused_image, bump), "23.05").opset == 19  # ONNX Runtime 1.15: 19
    with pytest.raises(FusedGpuError, match=r"opset 19 is newer than Triton 23\.04's onnxruntime backend "
                                            r"\(ONNX Runtime 1\.14\.1, opset <= 18\)"):
        check_fused_for_gpu(_with(fused_image, bump), "23.04", where="shard s")


def test_a_com_microsoft_op_is_refused_naming_op_domain_opset_and_release(fused_text: bytes) -> None:
    def contrib(m: onnx.ModelProto) -> None:
        m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        m.graph.node.append(helper.make_node("FastGelu", [m.graph.output[0].name], ["gelu"],
                                             name="contrib", domain="com.microsoft"))

    with pytest.raises(FusedGpuError) as err:
        check_fused_for_gpu(_with(fused_text, contrib), "24.09", where="fused shard f-shard-000")
    text = str(err.value)
    for part in ("fused shard f-shard-000", "op FastGelu", "'com.microsoft'", "Triton 24.09",
                 "ONNX Runtime 1.19.2", "model opset 17"):
        assert part in text, text


def test_an_op_the_opset_does_not_define_is_refused(fused_image: bytes) -> None:
    def attention(m: onnx.ModelProto) -> None:  # Attention is a standard op from opset 23 only
        m.graph.node.append(helper.make_node("Attention", ["a", "b", "c"], ["d"], name="att"))

    with pytest.raises(FusedGpuError, match=r"op Attention \(node 'att'\) is not a standard ONNX op at "
                                            r"opset 17; Triton 24\.09"):
        check_fused_for_gpu(_with(fused_image, attention), "24.09")


def test_tensorrt_takes_only_the_ops_checked_for_its_parser(fused_image: bytes) -> None:
    def celu(m: onnx.ModelProto) -> None:
        m.graph.node.append(helper.make_node("Celu", [m.graph.output[0].name], ["c"], name="celu"))

    assert check_fused_for_gpu(_with(fused_image, celu), "24.09").backend == "onnxruntime"
    with pytest.raises(FusedGpuError, match=r"op Celu \(node 'celu'\) \(opset 17\) is not among the ops "
                                            r"checked for Triton 23\.04's tensorrt backend \(TensorRT 8\.6\.1"):
        check_fused_for_gpu(_with(fused_image, celu), "23.04", "tensorrt")


def test_the_tenant_input_must_be_int32_and_index_a_gather(image_root: Path, fused_image: bytes) -> None:
    def int64(m: onnx.ModelProto) -> None:
        next(i for i in m.graph.input if i.name == "TENANT").type.tensor_type.elem_type = TensorProto.INT64

    with pytest.raises(FusedGpuError, match="input TENANT must be INT32 .*got INT64"):
        check_fused_for_gpu(_with(fused_image, int64), "24.09")
    own = next(iter(_models(image_root).values()))  # a tenant's own model: no TENANT at all
    with pytest.raises(FusedGpuError, match="input TENANT must be INT32 .*got missing"):
        check_fused_for_gpu(own, "24.09")

    def unused(m: onnx.ModelProto) -> None:  # TENANT declared but selecting nothing
        for n in m.graph.node:
            n.input[:] = ["fused_zero" if i == "TENANT" else i for i in n.input]

    with pytest.raises(FusedGpuError, match="no Gather is indexed by TENANT"):
        check_fused_for_gpu(_with(fused_image, unused), "24.09")


# ------------------------------------------------------------------------------ the shard


def _stage(fleet_file: Path, work: Path, edit: Any = None) -> Any:
    """The fleet's one shard staged (fused, checked in ONNX Runtime, rendered, packed) for its
    target, its tenants' models edited by ``edit`` after fetching."""
    from ensembles.fleet_spec import load_fleet, resolve_variants
    from tasks.fleet.build import prepare_template
    from tasks.fleet.check import shared_reference
    from tasks.fleet.fused import fetch_all, stage_shard
    from tasks.fleet.fusion import analyze_fleet

    spec = load_fleet(str(fleet_file))
    variants = resolve_variants(spec).variants
    template = prepare_template(spec, variants)
    shared = shared_reference(template.spec, template.shared, template.target, template.owned)
    assert shared is not None
    got, failed = fetch_all(template, variants, work)
    assert not failed, failed
    if edit is not None:
        got = {n: t.__class__(variant=t.variant, model=edit(t.model), labels=t.labels, digest=t.digest)
               for n, t in got.items()}
    analysis = analyze_fleet({n: t.model for n, t in got.items()})
    return template, stage_shard(template, shared, "gpu-shard-000", [got[n] for n in analysis.fusable],
                                 analysis, work / "shard")


def test_a_sagemaker_gpu_shard_renders_native_dali_and_onnxruntime_with_tenant_wired(
        image_root: Path, tmp_path: Path) -> None:
    from ensembles.render import parse_pbtxt

    template, staged = _stage(image_root / "fleet-sagemaker-gpu.yaml", tmp_path)
    assert template.target == "sagemaker-gpu" and str(shard_release(template.spec)) == "24.09"
    assert [t.index for t in staged.sidecar.tenants] == list(range(COUNT))
    with tarfile.open(staged.tarball) as tar:
        names = tar.getnames()
    configs = {Path(n).parts[0]: parse_pbtxt(tar_member(staged.tarball, n).decode())
               for n in names if n.endswith("config.pbtxt")}
    ens = configs["gpu_shard_000"]
    pre, head = configs["gpu_shard_000__preprocess"], configs["gpu_shard_000__classifier"]
    assert (pre.backend, head.platform) == ("dali", "onnxruntime_onnx")  # Triton's native backends
    assert [g.kind for g in head.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert "gpu_shard_000__classifier/1/model.onnx" in names
    assert "gpu_shard_000__classifier/labels.txt" not in names  # the tenants' labels: in tenants.json
    assert json.loads(tar_member(staged.tarball, "tenants.json"))["shard"] == "gpu-shard-000"
    int32 = mc.DataType.Value("TYPE_INT32")
    assert [(i.name, i.data_type) for i in ens.input][-1] == ("TENANT", int32)
    assert ("TENANT", int32) in [(i.name, i.data_type) for i in head.input]
    step = next(s for s in ens.ensemble_scheduling.step if s.model_name.endswith("__classifier"))
    assert step.input_map["TENANT"] == "TENANT"


def tar_member(tarball: Path, name: str) -> bytes:
    with tarfile.open(tarball) as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read()


def _opset(version: int) -> Any:
    """A tenant's model converted to ``version`` (as a newer exporter would write it)."""
    from onnx import version_converter

    def edit(model: bytes) -> bytes:
        return version_converter.convert_version(onnx.load_from_string(model), version).SerializeToString()
    return edit


def test_a_gpu_shard_too_new_for_the_release_fails_before_it_is_packed(image_root: Path,
                                                                        tmp_path: Path) -> None:
    """Opset 22 runs in this machine's ONNX Runtime (every tenant checks out) but not in Triton
    24.09's ONNX Runtime 1.19.2: the sagemaker-gpu shard is refused, naming opset and release;
    the same tenants fused for local-cpu are staged."""
    with pytest.raises(FusedGpuError, match=r"fused shard gpu-shard-000.*opset 22 is newer than "
                                            r"Triton 24\.09's onnxruntime backend \(ONNX Runtime 1\.19\.2"):
        _stage(image_root / "fleet-sagemaker-gpu.yaml", tmp_path / "gpu", _opset(22))
    assert not (tmp_path / "gpu" / "shard" / "staging").exists()
    doc = yaml.safe_load((image_root / "fleet-sagemaker-gpu.yaml").read_text())
    (image_root / "fleet-local.yaml").write_text(yaml.safe_dump({**doc, "target": "local-cpu"}))
    _, staged = _stage(image_root / "fleet-local.yaml", tmp_path / "cpu", _opset(22))
    assert staged.tarball.is_file()


# ------------------------------------------------------------------------------ on a GPU


def _gpu_triton() -> str | None:
    """Why the GPU test cannot run here, or None: it needs a GPU (NVML) and an NGC Triton named
    by ``MME_TRITONSERVER`` / ``MME_TRITON_BACKENDS`` with the native dali and onnxruntime
    backends (the pip wheel's Triton has the Python backend only)."""
    from infra.triton.dist import ENV_TRITON_BACKENDS, ENV_TRITONSERVER
    from tasks.build.footprints import nvml_used_bytes

    if nvml_used_bytes() is None and shutil.which("nvidia-smi") is None:
        return "no GPU here (no NVML, no nvidia-smi)"
    backends = os.environ.get(ENV_TRITON_BACKENDS)
    if not os.environ.get(ENV_TRITONSERVER) or not backends:
        return (f"no NGC Triton: set {ENV_TRITONSERVER} and {ENV_TRITON_BACKENDS} (e.g. inside "
                f"nvcr.io/nvidia/tritonserver:{DEFAULT_RELEASE}-py3)")
    missing = [b for b in ("dali", "onnxruntime") if not (Path(backends) / b).is_dir()]
    return f"{ENV_TRITON_BACKENDS}={backends} lacks the {missing} backends" if missing else None


@pytest.mark.gpu
@pytest.mark.triton
def test_a_sagemaker_gpu_shard_is_built_and_verified_in_a_real_gpu_triton(
        image_root: Path, tmp_path: Path) -> None:
    reason = _gpu_triton()
    if reason is not None:
        print(f"skipped: {reason}")
        pytest.skip(f"sagemaker-gpu fused shard not run in Triton: {reason}")
    from ensembles.fleet_spec import load_fleet, resolve_variants
    from tasks.fleet.build import FleetIndex, prepare_template
    from tasks.fleet.check import shared_reference
    from tasks.fleet.fused_build import build_fused

    spec = load_fleet(str(image_root / "fleet-sagemaker-gpu.yaml"))
    variants = resolve_variants(spec).variants
    template = prepare_template(spec, variants)
    shared = shared_reference(template.spec, template.shared, template.target, template.owned)
    out = tmp_path / "out"
    done = build_fused(template, shared, variants, FleetIndex(fleet=spec.name, target=spec.target), out,
                       tmp_path, COUNT)
    assert not done.refused and [o.status for o in done.outcomes] == ["built"] * COUNT, done.outcomes
    (shard,) = done.shards
    manifest = json.loads((out / f"{shard}.manifest.json").read_text())
    assert manifest["target"] == "sagemaker-gpu" and manifest["validation"]["passed"]
    assert manifest["validation"]["tenants_checked_in_triton"] == 3
