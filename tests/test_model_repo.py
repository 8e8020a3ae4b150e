"""Tests for infra.triton.model_repo: per-tarball namespacing of extracted Triton repositories."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ensembles.render import parse_pbtxt
from infra.triton.model_repo import ModelRepoError, find_models, namespace_for, namespace_repository


def _python_model(root: Path, name: str, body: str = "") -> Path:
    d = root / name
    (d / "1").mkdir(parents=True)
    (d / "1" / "model.py").write_text(f"# {root.name}/{name}\n")
    (d / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "python"\nmax_batch_size: 8\n{body}')
    return d


def _ensemble(root: Path, name: str, steps: list[str]) -> Path:
    d = root / name
    (d / "1").mkdir(parents=True)
    step_text = "".join(
        f'  step {{\n    model_name: "{s}"\n    model_version: -1\n'
        f'    input_map {{ key: "IN" value: "t{i}" }}\n'
        f'    output_map {{ key: "OUT" value: "t{i + 1}" }}\n  }}\n'
        for i, s in enumerate(steps)
    )
    (d / "config.pbtxt").write_text(
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: 8\n'
        f'ensemble_scheduling {{\n{step_text}}}\n')
    return d


def _tarball(root: Path, ensemble: str = "pipeline") -> Path:
    """An extracted tarball: preprocess -> postprocess behind an ensemble."""
    root.mkdir(parents=True)
    _python_model(root, "preprocess")
    _python_model(root, "postprocess")
    _ensemble(root, ensemble, ["preprocess", "postprocess"])
    return root


def _cfg(repo: Path, model: str):
    return parse_pbtxt((repo / model / "config.pbtxt").read_text())


def test_two_tarballs_share_model_names_without_collision(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    a = namespace_repository(_tarball(tmp_path / "x_a"), repo, "team/a.tar.gz")
    b = namespace_repository(_tarball(tmp_path / "x_b"), repo, "team/b.tar.gz")
    ns_a, ns_b = namespace_for("team/a.tar.gz"), namespace_for("team/b.tar.gz")
    assert ns_a != ns_b

    assert a.entry == f"{ns_a}_pipeline" and b.entry == f"{ns_b}_pipeline"
    assert a.original_entry == "pipeline"
    assert a.models == tuple(sorted(f"{ns_a}_{m}" for m in ("pipeline", "postprocess", "preprocess")))
    assert set(a.models).isdisjoint(b.models)
    assert sorted(p.name for p in repo.iterdir()) == sorted(a.models + b.models)

    for ns, res, src in ((ns_a, a, "x_a"), (ns_b, b, "x_b")):
        for model in res.models:
            assert _cfg(repo, model).name == model
        ens = _cfg(repo, res.entry)
        assert ens.platform == "ensemble"
        assert [s.model_name for s in ens.ensemble_scheduling.step] == [
            f"{ns}_preprocess", f"{ns}_postprocess"]
        # the rest of the config survives the rewrite
        assert ens.max_batch_size == 8
        assert dict(ens.ensemble_scheduling.step[0].input_map) == {"IN": "t0"}
        pre = _cfg(repo, f"{ns}_preprocess")
        assert pre.backend == "python" and pre.max_batch_size == 8
        # each tarball's own files went with it
        assert (repo / f"{ns}_preprocess" / "1" / "model.py").read_text() == f"# {src}/preprocess\n"
    # extracted folders are consumed
    assert list((tmp_path / "x_a").iterdir()) == []


def test_renamespacing_same_target_replaces_models(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    first = namespace_repository(_tarball(tmp_path / "x1"), repo, "m.tar.gz")
    second = namespace_repository(_tarball(tmp_path / "x2"), repo, "m.tar.gz")
    assert first == second
    assert sorted(p.name for p in repo.iterdir()) == sorted(first.models)
    pre = repo / f"{namespace_for('m.tar.gz')}_preprocess" / "1" / "model.py"
    assert pre.read_text() == "# x2/preprocess\n"


def test_root_level_config_is_single_model(tmp_path: Path) -> None:
    extracted = tmp_path / "x"
    extracted.mkdir()
    (extracted / "1").mkdir()
    (extracted / "1" / "model.onnx").write_bytes(b"onnx")
    (extracted / "config.pbtxt").write_text('name: "classifier"\nplatform: "onnxruntime_onnx"\n')
    assert find_models(extracted, "single.tar.gz") == (None, {"": extracted})

    repo = tmp_path / "repo"
    repo.mkdir()
    res = namespace_repository(extracted, repo, "single.tar.gz")
    internal = f"{namespace_for('single.tar.gz')}_model"
    assert res.entry == internal and res.models == (internal,)
    assert res.original_entry == "single.tar.gz"
    cfg = _cfg(repo, internal)
    assert cfg.name == internal and cfg.platform == "onnxruntime_onnx"
    assert (repo / internal / "1" / "model.onnx").read_bytes() == b"onnx"
    assert not extracted.exists()


def test_bls_only_repository_is_refused(tmp_path: Path) -> None:
    extracted = tmp_path / "x"
    extracted.mkdir()
    _python_model(extracted, "bls_entry")
    _python_model(extracted, "helper")
    repo = tmp_path / "repo"
    repo.mkdir()
    with pytest.raises(ModelRepoError) as exc:
        namespace_repository(extracted, repo, "bls.tar.gz")
    msg = str(exc.value)
    assert msg.startswith("bls.tar.gz: ") and "no ensemble model found" in msg
    assert "bls_entry" in msg and "helper" in msg
    assert list(repo.iterdir()) == []
    assert (extracted / "bls_entry" / "config.pbtxt").exists()


def test_no_model_folder_is_refused(tmp_path: Path) -> None:
    extracted = tmp_path / "x"
    (extracted / "just_a_dir").mkdir(parents=True)
    (extracted / "README").write_text("hi")
    with pytest.raises(ModelRepoError, match="no model folder"):
        namespace_repository(extracted, tmp_path, "empty.tar.gz")


def test_two_ensembles_are_refused(tmp_path: Path) -> None:
    extracted = _tarball(tmp_path / "x")
    _ensemble(extracted, "second", ["preprocess"])
    with pytest.raises(ModelRepoError) as exc:
        namespace_repository(extracted, tmp_path / "repo", "two.tar.gz")
    assert "more than one ensemble" in str(exc.value)
    assert "pipeline" in str(exc.value) and "second" in str(exc.value)


def test_ensemble_step_referencing_missing_model(tmp_path: Path) -> None:
    extracted = tmp_path / "x"
    extracted.mkdir()
    _python_model(extracted, "preprocess")
    _ensemble(extracted, "pipeline", ["preprocess", "encoder"])
    repo = tmp_path / "repo"
    repo.mkdir()
    with pytest.raises(ModelRepoError) as exc:
        namespace_repository(extracted, repo, "broken.tar.gz")
    msg = str(exc.value)
    assert msg.startswith("broken.tar.gz/pipeline: ")
    assert "'encoder'" in msg and "not in the tarball" in msg


def test_unparsable_config_names_the_file(tmp_path: Path) -> None:
    extracted = _tarball(tmp_path / "x")
    (extracted / "postprocess" / "config.pbtxt").write_text('name: "postprocess"\nbackend: python {{\n')
    with pytest.raises(ModelRepoError) as exc:
        namespace_repository(extracted, tmp_path / "repo", "bad.tar.gz")
    msg = str(exc.value)
    assert "bad.tar.gz/postprocess" in msg and "config.pbtxt" in msg and "cannot parse" in msg


def test_unparsable_root_config_names_the_file(tmp_path: Path) -> None:
    extracted = tmp_path / "x"
    extracted.mkdir()
    (extracted / "config.pbtxt").write_text("no_such_field: 3\n")
    with pytest.raises(ModelRepoError) as exc:
        namespace_repository(extracted, tmp_path / "repo", "root.tar.gz")
    msg = str(exc.value)
    assert msg.startswith("root.tar.gz: ") and "cannot parse config.pbtxt" in msg


@pytest.mark.parametrize(
    "target",
    ["a/b.tar.gz", "a_b.tar.gz", "model.tgz", "x.tar", "weird name!@#$.tar.gz", "___.tar.gz",
     "ünïcödé/модель.tar.gz", "a" * 200 + ".tar.gz", "nested/dir/with.dots.v2.tar.gz"],
)
def test_namespace_for_is_stable_and_triton_safe(target: str) -> None:
    ns = namespace_for(target)
    assert ns == namespace_for(target)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", ns)
    assert len(ns) <= 40 + 1 + 8
    assert not ns.startswith("_")


def test_namespace_for_distinguishes_same_stem() -> None:
    pairs = [("a/b.tar.gz", "a_b.tar.gz"), ("m.tar.gz", "m.tgz"), ("m.tar.gz", "m"),
             ("a b.tar.gz", "a_b.tar.gz"), ("x" * 60 + "1.tar.gz", "x" * 60 + "2.tar.gz")]
    for left, right in pairs:
        assert namespace_for(left) != namespace_for(right), (left, right)
    # readable: the stem is kept ahead of the digest
    assert namespace_for("a/b.tar.gz").startswith("a_b-")
    assert namespace_for("model.tgz").startswith("model-")


def test_refused_tarball_leaves_shared_repo_untouched(tmp_path: Path) -> None:
    # "aaa_helper" sorts before the ensemble, so a per-model move-as-you-go would already have
    # moved it into the shared repository when the ensemble's bad reference is found
    repo = tmp_path / "repo"
    repo.mkdir()
    previous = namespace_repository(_tarball(tmp_path / "x0"), repo, "m.tar.gz")
    before = {p.name: (p / "config.pbtxt").read_text() for p in repo.iterdir()}
    extracted = tmp_path / "x"
    extracted.mkdir()
    _python_model(extracted, "aaa_helper")
    _python_model(extracted, "preprocess")
    _ensemble(extracted, "zz_pipeline", ["preprocess", "missing"])
    with pytest.raises(ModelRepoError, match="'missing'"):
        namespace_repository(extracted, repo, "m.tar.gz")
    assert {p.name: (p / "config.pbtxt").read_text() for p in repo.iterdir()} == before
    assert sorted(before) == sorted(previous.models)
    assert (extracted / "aaa_helper" / "config.pbtxt").exists()
