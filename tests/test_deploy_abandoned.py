"""A single-ensemble deploy killed after its upload leaves an object the next deploy collects.

The record names the object (state ``publishing``) before the upload, so the object is proven
ours; a deploy killed before it settled used to leave it named by nothing once the next deploy
replaced the entry: never served, never retired. Now the next deploy (under the endpoint lock,
where a ``publishing`` entry can only be a dead deploy's) keeps it in the entry's ``abandoned``
list, and its prune after validation deletes it, unless a line still names the object (the
same build deployed again, a kept version). A retire deletes it too.

The record, the uploads, the ledger and the prune are the deploy's own functions over a real
file store (the kill is simply a deploy that stops after its upload); no Triton, no Prefect.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.pipe_builds import build_pipe, deploy_by_hand, upload_by_hand

from infra.records import endpoint as record
from infra.store.objects import open_store
from tasks.deploy.backends.base import ABANDONED, delete_versions, prune_actions, prune_versions
from tasks.deploy.publish import model_data_url, read_ledger

EP = "abandoned-ep"


@pytest.fixture
def builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[int, Path]:
    """Builds of pipe answering X + k, for k = 1, 2, 3."""
    monkeypatch.setenv("MME_HOME", str(tmp_path / "home"))
    out = {}
    for k in (1, 2, 3):
        build_pipe(tmp_path / f"v{k}", k=k)
        out[k] = tmp_path / f"v{k}"
    return out


def names(store_uri: str) -> list[str]:
    store, _ = open_store(model_data_url(store_uri, EP))
    return sorted(i.key for i in store.list())


def finish(store_uri: str, folder: Path, keep: int = 1) -> list[str]:
    """The next deploy, validated: upload, settle, ledger, then its prune (the lines it says)."""
    from tasks.deploy.backends.base import write_deploy_ledger

    pub = upload_by_hand(EP, store_uri, folder)
    record.settle_ensembles(EP, ["pipe"], deployed=True)
    write_deploy_ledger(store_uri, EP, model_data_url(store_uri, EP), [pub])
    return [s.line for s in prune_versions(EP, store_uri, ["pipe"], keep)]


def test_the_next_deploy_deletes_what_a_killed_one_uploaded(builds: dict[int, Path], tmp_path: Path) -> None:
    store_uri = (tmp_path / "store").as_uri()
    v1 = deploy_by_hand(EP, store_uri, builds[1])
    v2 = upload_by_hand(EP, store_uri, builds[2]).key  # killed here: the record says publishing
    assert record.read_record(EP).ensembles["pipe"].state == "publishing"  # type: ignore[union-attr]
    assert names(store_uri) == sorted([v1, v2])

    from infra.records.manifest import load_manifest
    from tasks.deploy.backends.base import versioned_manifest

    plan = prune_actions(EP, store_uri, [versioned_manifest(load_manifest(builds[3] / "pipe.manifest.json"))], 1)
    assert any(v2 in line and ABANDONED in line for line in plan), plan  # the dry run says so

    lines = finish(store_uri, builds[3])
    v3 = record.read_record(EP).ensembles["pipe"].key  # type: ignore[union-attr]
    assert names(store_uri) == sorted([v1, v3]), "v2 deleted; v1 kept for rollback"
    assert [line for line in lines if v2 in line and ABANDONED in line and "deleted" in line], lines
    entry = record.read_record(EP).ensembles["pipe"]  # type: ignore[union-attr]
    assert entry.abandoned is None and [v.key for v in entry.kept_versions or []] == [v1]
    led = read_ledger(store_uri, EP).ensembles["pipe"]
    assert led.key == v3 and [v.key for v in led.kept_versions or []] == [v1]


def test_an_object_still_named_is_not_abandoned(builds: dict[int, Path], tmp_path: Path) -> None:
    store_uri = (tmp_path / "store").as_uri()
    v1 = deploy_by_hand(EP, store_uri, builds[1])
    upload_by_hand(EP, store_uri, builds[2])  # killed
    finish(store_uri, builds[2])  # the same build deployed again: its object is current
    v2 = record.read_record(EP).ensembles["pipe"].key  # type: ignore[union-attr]
    assert names(store_uri) == sorted([v1, v2])
    assert record.read_record(EP).ensembles["pipe"].abandoned is None  # type: ignore[union-attr]

    upload_by_hand(EP, store_uri, builds[1])  # a redeploy of the kept version v1, killed
    finish(store_uri, builds[3], keep=2)
    v3 = record.read_record(EP).ensembles["pipe"].key  # type: ignore[union-attr]
    assert names(store_uri) == sorted([v1, v2, v3]), "v1 is a kept version (keep 2): not abandoned"


def test_a_retire_deletes_what_a_killed_deploy_uploaded(builds: dict[int, Path], tmp_path: Path) -> None:
    store_uri = (tmp_path / "store").as_uri()
    v1 = deploy_by_hand(EP, store_uri, builds[1])
    v2 = upload_by_hand(EP, store_uri, builds[2]).key  # killed
    upload_by_hand(EP, store_uri, builds[3])  # killed too: v2 is abandoned, v3 publishing
    entry = record.read_record(EP).ensembles["pipe"]  # type: ignore[union-attr]
    assert [v.key for v in entry.abandoned or []] == [v2]
    record.settle_ensembles(EP, ["pipe"], deployed=False)  # a failed deploy: back to v1, v2 still listed
    entry = record.read_record(EP).ensembles["pipe"]  # type: ignore[union-attr]
    assert entry.key == v1 and [v.key for v in entry.abandoned or []] == [v2]
    step = delete_versions("pipe", entry)
    assert v2 in step.line and v1 in step.line and step.status == "deleted", step.line
    assert v2 not in names(store_uri) and v1 not in names(store_uri)
