"""A fused shard's tenant that answers differently from its own model leaves the shard (the
shard is fused again without it) instead of failing the whole shard: the other tenants ship,
and the one left out keeps its previous version (issue 20's rule)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from tasks.fleet import fused as fused_mod
from tasks.fleet.fusion import FusedShard, FusionAnalysis, FusionError, TenantCheck


def _stubs(monkeypatch: pytest.MonkeyPatch, bad: set[str]) -> list[tuple[str, ...]]:
    """fuse/verify stand-ins: every fusion is recorded; the ``bad`` tenants answer differently."""
    fusions: list[tuple[str, ...]] = []

    def fuse(models: Mapping[str, bytes], members: Sequence[str], analysis: FusionAnalysis) -> FusedShard:
        fusions.append(tuple(members))
        return FusedShard(model=b"onnx", tenants=tuple(members), classes=tuple(3 for _ in members))

    def verify(shard: FusedShard, models: Mapping[str, bytes], inputs: Mapping[str, np.ndarray]
               ) -> list[TenantCheck]:
        return [TenantCheck(t, i, 3, 0.25 if t in bad else 0.0, t not in bad)
                for i, t in enumerate(shard.tenants)]

    monkeypatch.setattr(fused_mod, "fuse", fuse)
    monkeypatch.setattr(fused_mod, "verify_fused", verify)
    return fusions


def test_a_tenant_that_answers_differently_leaves_the_shard_and_the_rest_are_fused_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fusions = _stubs(monkeypatch, {"b"})
    got = fused_mod.fuse_checked({n: b"" for n in "abcd"}, list("abcd"), FusionAnalysis(None, None), {})
    assert fusions == [tuple("abcd"), tuple("acd")]  # fused again without it
    assert got.fused.tenants == tuple("acd") and [c.index for c in got.checks] == [0, 1, 2]
    assert list(got.left_out) == ["b"] and "max abs diff 0.25" in got.left_out["b"]
    assert "tolerance 1e-06" in got.left_out["b"]


def test_a_shard_whose_every_tenant_answers_differently_fails_naming_one() -> None:
    with pytest.MonkeyPatch.context() as mp:
        _stubs(mp, {"a", "b"})
        with pytest.raises(FusionError, match="every tenant answers differently fused: a .* and 1 more"):
            fused_mod.fuse_checked({"a": b"", "b": b""}, ["a", "b"], FusionAnalysis(None, None), {})


def test_a_shard_that_fuses_cleanly_leaves_no_one_out(monkeypatch: pytest.MonkeyPatch) -> None:
    fusions = _stubs(monkeypatch, set())
    got = fused_mod.fuse_checked({"a": b"", "b": b""}, ["a", "b"], FusionAnalysis(None, None), {})
    assert fusions == [("a", "b")] and got.left_out == {} and got.fused.tenants == ("a", "b")
