"""Fleet declarations (ensembles/fleet_spec.py): the three variant sources resolve with their
fingerprints, every refusal names the file and row, and names map safely to files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import boto3
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from moto import mock_aws

from ensembles.fleet_spec import (
    MAX_VARIANT_NAME,
    FleetError,
    FleetSpec,
    check_fleet,
    load_fleet,
    load_template,
    resolve_variants,
    variant_ensemble_name,
    variant_name_problem,
)
from infra.store.objects import FileStore, S3Store

SHA = "ab" * 32
TEMPLATE = "image_classifier_tenant"


def _fleet_file(tmp_path: Path, doc: dict, name: str = "fleet.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"name": "f1", "template": TEMPLATE, **doc}, sort_keys=False))
    return path


def _tenant_files(root: Path, names: list[str], labels: bool = True) -> None:
    for n in names:
        folder = root / "tenants" / n
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(f"onnx of {n}".encode())
        if labels:
            (folder / "labels.txt").write_text(f"label of {n}\n")


PREFIX_PARAMS = {"classifier_onnx.source": "{match}", "labels.source": "tenants/{variant}/labels.txt"}


# ------------------------------------------------------------------------------ the three sources


def test_inline_variants_merge_defaults_and_fingerprint_their_sources(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model bytes")
    path = _fleet_file(tmp_path, {
        "defaults": {"labels.source": "https://example.com/labels.txt"},
        "variants": [
            {"name": "acme", "params": {"classifier_onnx.source": "m.onnx"}, "labels": {"tier": "gold"}},
            {"name": "globex", "params": {"classifier_onnx.source": "s3://b/globex.onnx",
                                          "classifier_onnx.sha256": SHA.upper()}},
        ]})
    fleet = load_fleet(path)
    got = resolve_variants(fleet)
    assert got.problems == []
    acme, globex = got.variants
    st_ = model.stat()
    # a relative local source is relative to the fleet file, and made a file:// URI
    assert acme.params == {"labels.source": "https://example.com/labels.txt",
                           "classifier_onnx.source": model.resolve().as_uri()}
    assert acme.labels == {"tier": "gold"} and acme.origin == f"{path} variants[0]"
    assert acme.fingerprints == {"classifier_onnx.source": f"size:{st_.st_size}:mtime_ns:{st_.st_mtime_ns}"}
    assert globex.fingerprints == {"classifier_onnx.source": f"sha256:{SHA}"}
    spec, _ = load_template(fleet)
    check_fleet(fleet, spec, got.variants)  # every param names an artifact of the template


def test_a_missing_local_source_is_that_variants_problem(tmp_path: Path) -> None:
    (tmp_path / "ok.onnx").write_bytes(b"x")
    path = _fleet_file(tmp_path, {"variants": [
        {"name": "gone", "params": {"classifier_onnx.source": "missing.onnx"}},
        {"name": "ok", "params": {"classifier_onnx.source": "ok.onnx"}}]})
    got = resolve_variants(load_fleet(path))
    assert [v.name for v in got.variants] == ["ok"]
    (name, reason), = got.problems
    assert name == "gone" and "variants[0]" in reason and "missing.onnx" in reason


def test_csv_table_resolves_params_and_labels(tmp_path: Path) -> None:
    (tmp_path / "tenants.csv").write_text(
        "variant,classifier_onnx.source,classifier_onnx.sha256,label.tier\n"
        f"acme,s3://b/acme.onnx,{SHA},gold\n"
        "globex,s3://b/globex.onnx,,\n")
    fleet = load_fleet(_fleet_file(tmp_path, {"table": "tenants.csv",
                                              "defaults": {"labels.source": "s3://b/labels.txt"}}))
    got = resolve_variants(fleet)
    acme, globex = got.variants
    assert acme.params == {"labels.source": "s3://b/labels.txt", "classifier_onnx.source": "s3://b/acme.onnx",
                           "classifier_onnx.sha256": SHA}
    assert acme.labels == {"tier": "gold"} and acme.origin == "tenants.csv line 2"
    assert acme.fingerprints == {"classifier_onnx.source": f"sha256:{SHA}"}
    assert globex.labels == {} and globex.fingerprints == {}  # S3 without a sha256: unknown
    assert globex.origin == "tenants.csv line 3"


def test_jsonl_table_resolves(tmp_path: Path) -> None:
    rows = [{"variant": "a", "classifier_onnx.source": "s3://b/a.onnx", "label.tier": "x"},
            {"variant": "b", "classifier_onnx.source": "s3://b/b.onnx", "label.tier": 2}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    got = resolve_variants(load_fleet(_fleet_file(tmp_path, {"table": "t.jsonl"})))
    assert [(v.name, v.labels, v.origin) for v in got.variants] == [
        ("a", {"tier": "x"}, "t.jsonl line 1"), ("b", {"tier": "2"}, "t.jsonl line 2")]


def test_file_prefix_resolves_with_fingerprints_and_reports_missing_siblings(tmp_path: Path) -> None:
    root = tmp_path / "models"
    _tenant_files(root, ["t1", "t2", "t3"])
    _tenant_files(root, ["nolabels"], labels=False)
    (root / "tenants" / "t1" / "notes.txt").write_text("not a model")
    fleet = load_fleet(_fleet_file(tmp_path, {"prefix": {
        "uri": root.as_uri() + "/", "pattern": "tenants/{variant}/model.onnx", "params": PREFIX_PARAMS,
        "labels": {"tenant": "{variant}"}}}))
    got = resolve_variants(fleet)
    assert [v.name for v in got.variants] == ["t1", "t2", "t3"]
    t1 = got.variants[0]
    model, labels = root / "tenants/t1/model.onnx", root / "tenants/t1/labels.txt"
    assert t1.params == {"classifier_onnx.source": model.as_uri(), "labels.source": labels.as_uri()}
    assert t1.labels == {"tenant": "t1"} and t1.origin == model.as_uri()
    assert t1.fingerprints == {
        k: f"size:{p.stat().st_size}:mtime_ns:{p.stat().st_mtime_ns}"
        for k, p in (("classifier_onnx.source", model), ("labels.source", labels))}
    (name, reason), = got.problems
    assert name == "nolabels" and "tenants/nolabels/labels.txt" in reason and "missing" in reason


def test_a_changed_model_file_changes_only_its_fingerprint(tmp_path: Path) -> None:
    root = tmp_path / "models"
    _tenant_files(root, ["t1", "t2"])
    fleet = load_fleet(_fleet_file(tmp_path, {"prefix": {
        "uri": root.as_uri(), "pattern": "tenants/{variant}/model.onnx", "params": PREFIX_PARAMS}}))
    before = {v.name: v.fingerprints for v in resolve_variants(fleet).variants}
    FileStore(root).put_bytes("tenants/t2/model.onnx", b"retrained, longer model bytes")
    after = {v.name: v.fingerprints for v in resolve_variants(fleet).variants}
    assert after["t1"] == before["t1"]
    assert after["t2"]["classifier_onnx.source"] != before["t2"]["classifier_onnx.source"]
    assert after["t2"]["labels.source"] == before["t2"]["labels.source"]


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="models")
        yield client


def test_s3_listing_and_head_carry_the_etag(s3) -> None:
    store = S3Store("models", client=s3)
    put = store.put_bytes("a/b.bin", b"payload")
    (listed,) = store.list("a/")
    assert listed.etag and '"' not in listed.etag
    assert listed.etag == put.etag == store.head("a/b.bin").etag


def test_file_listing_and_head_carry_mtime_ns(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.put_bytes("a/b.bin", b"payload")
    (listed,) = store.list("a/")
    assert listed.mtime_ns == store.head("a/b.bin").mtime_ns == (tmp_path / "a/b.bin").stat().st_mtime_ns


def test_s3_prefix_resolves_with_etag_fingerprints_in_one_listing(s3, tmp_path: Path) -> None:
    for n in ("t1", "t2"):
        s3.put_object(Bucket="models", Key=f"fleet/tenants/{n}/model.onnx", Body=f"m-{n}".encode())
        s3.put_object(Bucket="models", Key=f"fleet/tenants/{n}/labels.txt", Body=b"cat\n")
    s3.put_object(Bucket="models", Key="fleet/tenants/t3/model.onnx", Body=b"m-t3")
    fleet = load_fleet(_fleet_file(tmp_path, {"prefix": {
        "uri": "s3://models/fleet/", "pattern": "tenants/{variant}/model.onnx", "params": PREFIX_PARAMS}}))
    calls: list[str] = []
    s3.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    got = resolve_variants(fleet, s3_client=s3)
    assert calls == ["ListObjectsV2"]  # one listing for the fleet, nothing per variant
    t1 = got.variants[0]
    etag = s3.head_object(Bucket="models", Key="fleet/tenants/t1/model.onnx")["ETag"].strip('"')
    assert t1.params["classifier_onnx.source"] == "s3://models/fleet/tenants/t1/model.onnx"
    assert t1.fingerprints["classifier_onnx.source"] == f"size:{len(b'm-t1')}:etag:{etag}"
    assert [v.name for v in got.variants] == ["t1", "t2"]
    assert got.problems == [("t3", got.problems[0][1])]
    assert "s3://models/fleet/tenants/t3/labels.txt is missing" in got.problems[0][1]


def test_ten_thousand_row_table_resolves(tmp_path: Path) -> None:
    n = 10_000
    lines = ["variant,classifier_onnx.source,classifier_onnx.sha256,label.tier"]
    lines += [f"tenant-{i:05d},s3://b/t/{i}/model.onnx,{i:064x},t{i % 3}" for i in range(n)]
    (tmp_path / "big.csv").write_text("\n".join(lines) + "\n")
    fleet = load_fleet(_fleet_file(tmp_path, {"table": "big.csv"}))
    got = resolve_variants(fleet)
    assert len(got.variants) == n and got.problems == []
    assert len({v.name for v in got.variants}) == n
    assert got.variants[-1].fingerprints == {"classifier_onnx.source": f"sha256:{n - 1:064x}"}
    assert got.variants[-1].origin == f"big.csv line {n + 1}"
    check_fleet(fleet, load_template(fleet)[0], got.variants)


def test_a_bare_name_loads_the_catalog_fleet() -> None:
    fleet = load_fleet("tenants-example")
    assert fleet.file is not None and fleet.file.parent.name == "fleets"
    spec, folder = load_template(fleet)
    assert spec.name == TEMPLATE and folder.name == TEMPLATE
    check_fleet(fleet, spec)


# ------------------------------------------------------------------------------ refusals


def test_duplicate_names_refuse_the_fleet_naming_both_rows(tmp_path: Path) -> None:
    path = _fleet_file(tmp_path, {"variants": [{"name": "a"}, {"name": "b"}, {"name": "a"}]})
    with pytest.raises(FleetError, match=r"variants\[2\]: duplicate variant name 'a'.*variants\[0\]"):
        resolve_variants(load_fleet(path))
    (tmp_path / "t.csv").write_text("variant\nx\ny\nx\n")
    with pytest.raises(FleetError, match=r"t.csv line 4: duplicate variant name 'x' \(first declared "
                                         r"at t.csv line 2\)"):
        resolve_variants(load_fleet(_fleet_file(tmp_path, {"table": "t.csv"}, "f2.yaml")))


BAD_NAMES = ["", "a/b", "a b", "tab\tname", "new\nline", "bell\x07", "model.tar.gz", ".hidden",
             "back\\slash", "x" * (MAX_VARIANT_NAME + 1), "nbsp\u00a0name", "ünïcode", "名前",
             "a%20b", "a+b", "a?b", "a#b", "a:b", "_lead", "-lead"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_invalid_names_refuse_the_fleet_naming_the_row(tmp_path: Path, bad: str) -> None:
    path = _fleet_file(tmp_path, {"variants": [{"name": "fine"}, {"name": bad}]})
    with pytest.raises(FleetError, match=re.escape(f"{path} variants[1]: ")):
        resolve_variants(load_fleet(path))


def test_good_names_pass() -> None:
    for good in ("tenant-0001", "Acme_Corp", "a.b.c", "0", "9lives", "x" * MAX_VARIANT_NAME):
        assert variant_name_problem(good) is None, good


def test_the_longest_name_makes_a_versioned_target_model_of_exactly_1024() -> None:
    """At the cap the deploy's TargetModel '<name>-<sha12>.tar.gz' is SageMaker's header limit
    (1,024); one more character is refused, saying why."""
    from tasks.deploy.publish import versioned_target

    assert MAX_VARIANT_NAME == 1004
    at_cap = "n" * MAX_VARIANT_NAME
    assert variant_name_problem(at_cap) is None
    assert len(versioned_target(f"{at_cap}.tar.gz", "ab" * 32)) == 1024
    problem = variant_name_problem(at_cap + "n")
    assert problem is not None and "at most 1004 characters (got 1005)" in problem
    assert "'<name>-<sha12>.tar.gz' must fit in 1024" in problem


@pytest.mark.parametrize("char, unicode_name", [
    ("%", "PERCENT SIGN"), ("+", "PLUS SIGN"), ("?", "QUESTION MARK"), ("#", "NUMBER SIGN"),
    (":", "COLON"), (" ", "SPACE"), ("/", "SOLIDUS"), ("\\", "REVERSE SOLIDUS"), ("~", "TILDE"),
    ("é", "LATIN SMALL LETTER E WITH ACUTE"), ("名", "CJK UNIFIED IDEOGRAPH-540D"),
    ("\u00a0", "NO-BREAK SPACE"), ("\u200b", "ZERO WIDTH SPACE"), ("\x07", "U+0007"),
    ("\U0001F600", "GRINNING FACE"),
])
def test_each_refused_character_is_named(char: str, unicode_name: str) -> None:
    problem = variant_name_problem(f"tenant{char}1")
    assert problem is not None and f"{char!r} ({unicode_name})" in problem, problem
    assert "allowed: [A-Za-z0-9][A-Za-z0-9._-]*" in problem


@pytest.mark.parametrize("first", [".", "_", "-"])
def test_a_name_starts_with_a_letter_or_digit(first: str) -> None:
    problem = variant_name_problem(f"{first}tenant")
    assert problem is not None and f"must start with a letter or digit, not {first!r}" in problem


def test_an_invalid_name_in_a_prefix_is_that_variants_problem(tmp_path: Path) -> None:
    root = tmp_path / "models"
    _tenant_files(root, ["ok", "has space"])
    got = resolve_variants(load_fleet(_fleet_file(tmp_path, {"prefix": {
        "uri": root.as_uri(), "pattern": "tenants/{variant}/model.onnx", "params": PREFIX_PARAMS}})))
    assert [v.name for v in got.variants] == ["ok"]
    assert got.problems[0][0] == "has space" and "not allowed" in got.problems[0][1]


def test_params_naming_no_artifact_are_refused_naming_where(tmp_path: Path) -> None:
    path = _fleet_file(tmp_path, {"variants": [{"name": "a", "params": {"classifier.source": "x"}}]})
    fleet = load_fleet(path)
    spec, _ = load_template(fleet)
    with pytest.raises(FleetError, match=re.escape(f"{path} variants[0] ('a'): param 'classifier.source' "
                                                   f"names no artifact of template '{TEMPLATE}'")):
        check_fleet(fleet, spec)
    (tmp_path / "t.csv").write_text("variant,labels.source,nolabel.source\na,s3://b/x,s3://b/y\n")
    fleet2 = load_fleet(_fleet_file(tmp_path, {"table": "t.csv"}, "f2.yaml"))
    with pytest.raises(FleetError, match=r"t.csv line 2: param 'nolabel.source' names no artifact"):
        check_fleet(fleet2, spec, resolve_variants(fleet2).variants)
    fleet3 = load_fleet(_fleet_file(tmp_path, {"defaults": {"labels": "x"}, "variants": [{"name": "a"}]},
                                    "f3.yaml"))
    with pytest.raises(FleetError, match=r"f3.yaml defaults: param 'labels' names no artifact"):
        check_fleet(fleet3, spec)


def test_a_template_that_does_not_validate_is_refused_naming_it(tmp_path: Path) -> None:
    broken = tmp_path / "my_template"
    broken.mkdir()
    (broken / "ensemble.yaml").write_text("name: my_template\nmax_batch_size: 1\ninputs: []\n")
    fleet = load_fleet(_fleet_file(tmp_path, {"template": "my_template", "variants": [{"name": "a"}]}))
    with pytest.raises(FleetError, match=r"template 'my_template' is not a valid ensemble: .*outputs"):
        load_template(fleet)
    fleet2 = load_fleet(_fleet_file(tmp_path, {"template": "no_such", "variants": [{"name": "a"}]}, "f2.yaml"))
    with pytest.raises(FleetError, match=r"f2.yaml: template 'no_such' is neither a folder"):
        load_template(fleet2)


@pytest.mark.parametrize("sources, said", [
    ({}, "got none"),
    ({"variants": [{"name": "a"}], "table": "t.csv"}, "got variants, table"),
])
def test_none_or_two_variant_sources_are_refused(tmp_path: Path, sources: dict, said: str) -> None:
    path = _fleet_file(tmp_path, sources)
    with pytest.raises(FleetError, match=rf"{re.escape(str(path))}: invalid fleet: .*exactly one .*{said}"):
        load_fleet(path)


def test_file_shape_errors_name_the_field(tmp_path: Path) -> None:
    path = _fleet_file(tmp_path, {"variants": [{"name": "a", "parms": {}}], "name": "bad name!"})
    with pytest.raises(FleetError) as e:
        load_fleet(path)
    assert "variants.0.parms" in str(e.value) and "name:" in str(e.value) and str(path) in str(e.value)
    bad_pattern = _fleet_file(tmp_path, {"prefix": {"uri": "s3://b/", "pattern": "tenants/model.onnx"}}, "p.yaml")
    with pytest.raises(FleetError, match=r"prefix: .*'\{variant\}' exactly once"):
        load_fleet(bad_pattern)


def test_tables_without_a_variant_column_or_with_unknown_columns_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("name,classifier_onnx.source\nx,y\n")
    with pytest.raises(FleetError, match=r"a.csv line 1: no 'variant' column"):
        resolve_variants(load_fleet(_fleet_file(tmp_path, {"table": "a.csv"})))
    (tmp_path / "b.jsonl").write_text('{"variant": "x"}\n{"name": "y"}\n')
    with pytest.raises(FleetError, match=r"b.jsonl line 2: no 'variant' column"):
        resolve_variants(load_fleet(_fleet_file(tmp_path, {"table": "b.jsonl"}, "f2.yaml")))
    (tmp_path / "c.csv").write_text("variant,tier\nx,gold\n")
    with pytest.raises(FleetError, match=r"c.csv line 1: column 'tier' is neither"):
        resolve_variants(load_fleet(_fleet_file(tmp_path, {"table": "c.csv"}, "f3.yaml")))


def test_an_unknown_fleet_name_lists_the_catalog() -> None:
    with pytest.raises(FleetError, match=r"no file .*tenants-example"):
        load_fleet("no-such-fleet")


def test_fleet_made_in_code_resolves_relative_to_the_working_folder() -> None:
    fleet = FleetSpec(name="code", template=TEMPLATE, variants=[{"name": "a"}])  # type: ignore[list-item]
    assert fleet.file is None and resolve_variants(fleet).variants[0].name == "a"


# ------------------------------------------------------------------------------ safe names


TRICKY = ["a/b", "a_b", "a b", "a:b", "a?b", "A_B", "a\u00e9", "a\u00e8", "x" * 101, "x" * 100 + "y",
          "x" * 100, "tenant-0001", "tenant_0001", "tenant-0001-0123abcd", ".", "..", "é"]
_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")


def test_variant_ensemble_name_is_injective_on_tricky_names() -> None:
    mapped = [variant_ensemble_name(n) for n in TRICKY]
    assert len(set(mapped)) == len(TRICKY)
    assert all(_SAFE.match(m) and len(m) <= 109 for m in mapped)
    assert variant_ensemble_name("tenant-0001") == "tenant-0001"  # a safe name is kept as is


def test_a_name_spelling_anothers_safe_form_is_refused(tmp_path: Path) -> None:
    """'a_b-<8 hex of "a.b">' is a valid name in its own right, and 'a.b' maps onto it."""
    path2 = _fleet_file(tmp_path, {"variants": [{"name": "a.b"}, {"name": variant_ensemble_name("a.b")}]},
                        "f2.yaml")
    with pytest.raises(FleetError, match=r"variants\[1\]: variant 'a_b-[0-9a-f]{8}' has the same file-safe "
                                         r"name .* as 'a.b'"):
        resolve_variants(load_fleet(path2))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=120), min_size=2, max_size=30, unique=True))
def test_variant_ensemble_name_never_maps_two_names_to_one(names: list[str]) -> None:
    mapped = [variant_ensemble_name(n) for n in names]
    assert len(set(mapped)) == len(names)
    assert all(_SAFE.match(m) for m in mapped)


def test_a_prefix_that_lists_no_variant_is_refused_naming_it(s3, tmp_path: Path) -> None:
    """An empty or missing prefix, or one whose objects all miss the pattern, is a typo: a fleet
    of no variants would empty the fleet's index (and a deploy of it retire every variant)."""
    empty = load_fleet(_fleet_file(tmp_path, {"prefix": {
        "uri": "s3://models/nothing-here/", "pattern": "tenants/{variant}/model.onnx", "params": PREFIX_PARAMS}}))
    with pytest.raises(FleetError, match=r"prefix.uri 's3://models/nothing-here/': no objects there"):
        resolve_variants(empty, s3_client=s3)
    s3.put_object(Bucket="models", Key="fleet/tenants/t1/model.onnx.bak", Body=b"m")
    other = load_fleet(_fleet_file(tmp_path, {"prefix": {
        "uri": "s3://models/fleet/", "pattern": "tenants/{variant}/model.onnx", "params": PREFIX_PARAMS}}, "f2.yaml"))
    with pytest.raises(FleetError, match=r"f2\.yaml: no object under prefix.uri 's3://models/fleet/' matches "
                                         r"pattern 'tenants/\{variant\}/model.onnx' \(1 listed, e.g. "
                                         r"'tenants/t1/model.onnx.bak'\)"):
        resolve_variants(other, s3_client=s3)


# ------------------------------------------------------------------------------ serving release


def _te_fleet(tmp_path: Path, doc: dict, target: str = "sagemaker-gpu") -> FleetSpec:
    """A fleet of the catalog's text_embedding (its encoder_plan is a compile_tensorrt artifact
    for sagemaker-gpu: the serving release is known at build time)."""
    return load_fleet(_fleet_file(tmp_path, {"template": "text_embedding", "target": target, **doc}))


@pytest.mark.parametrize("release", ["21.08", "22.12", "23.03"])
def test_a_sagemaker_fleet_for_triton_before_23_04_is_refused_before_anything_is_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, release: str) -> None:
    """Variants keep the template's model names: only --model-namespacing (passed by SageMaker's
    serve script from 23.04) keeps them apart. The build refuses before making anything."""
    from tasks.fleet import build as fleet_build
    fleet = _te_fleet(tmp_path, {"variants": [
        {"name": "a"}, {"name": "b", "params": {"encoder_plan.triton_release": release}}]})
    spec, _ = load_template(fleet)
    variants = resolve_variants(fleet).variants
    said = (re.escape(f"{fleet.where} variants[1] (encoder_plan.triton_release): Triton {release} "
                      f"cannot serve a fleet") + r".*--model-namespacing.*from 23\.04 on.*not unique "
            r"across all model repositories.*use Triton 23\.04 or later")
    with pytest.raises(FleetError, match=said):
        check_fleet(fleet, spec, variants)  # mme fleet show

    def made(*a: object, **k: object) -> None:
        raise AssertionError("an artifact was made for a refused fleet")

    monkeypatch.setattr(fleet_build.cache, "produce_cached", made)
    with pytest.raises(FleetError, match=said):
        fleet_build.prepare_template(fleet, variants)


def test_the_release_check_reads_defaults_and_spares_23_04_and_local_fleets(tmp_path: Path) -> None:
    old = {"defaults": {"encoder_plan.triton_release": "23.03"}, "variants": [{"name": "a"}]}
    fleet = _te_fleet(tmp_path, old)
    spec, _ = load_template(fleet)
    with pytest.raises(FleetError, match=r"variants\[0\] \(encoder_plan.triton_release\): Triton 23.03"):
        check_fleet(fleet, spec, resolve_variants(fleet).variants)
    for ok in (_te_fleet(tmp_path, {**old, "defaults": {"encoder_plan.triton_release": "23.04"}}),
               _te_fleet(tmp_path, {"variants": [{"name": "a"}]}),  # the template's default, 24.09
               _te_fleet(tmp_path, old, target="local-cpu")):  # the local endpoint namespaces itself
        check_fleet(ok, spec, resolve_variants(ok).variants)
