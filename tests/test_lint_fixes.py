"""Behaviour pinned where the typing clean-up (issue 9: ruff + mypy clean) rewrote code paths.

The restricted unpickler's allow-list became a typed table, and a packaged model without a
folder of its own now gets a clear error instead of a TypeError from ``Path(None)``.
"""

from __future__ import annotations

import io
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from tasks.producers import classifiers as C
from tasks.producers.fetch import FetchError, packaged_hf_model


def _load(data: bytes) -> object:
    return C._NumpyOnlyUnpickler(io.BytesIO(data)).load()


def test_numpy_unpickler_loads_arrays_pickled_under_either_numpy_module_name():
    weights = {"conv1": (np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, dtype=np.float64))}
    data = pickle.dumps(weights, protocol=3)  # GLOBAL opcodes: module names as plain text
    # numpy 1 writes ``numpy.core.multiarray``, numpy 2 ``numpy._core.multiarray``: both load
    old, new = b"numpy.core.multiarray", b"numpy._core.multiarray"
    variants = [data.replace(new, old), data.replace(old, new)]
    assert old in variants[0] and new in variants[1]
    for blob in variants:
        got = _load(blob)
        assert isinstance(got, dict) and list(got) == ["conv1"]
        kernel, bias = got["conv1"]
        np.testing.assert_array_equal(kernel, weights["conv1"][0])
        assert kernel.dtype == np.float32 and bias.dtype == np.float64


@pytest.mark.parametrize("blob, what", [
    (b"cos\nsystem\n(S'echo pwned'\ntR.", "os.system"),
    (b"cnumpy\nload\n(S'x.npy'\ntR.", "numpy.load"),
    (b"cnumpy.core.multiarray\nscalar\n(tR.", "numpy.core.multiarray.scalar"),
])
def test_numpy_unpickler_refuses_any_other_global(blob: bytes, what: str):
    with pytest.raises(pickle.UnpicklingError, match=f"refusing to load global {what}"):
        _load(blob)


def test_packaged_model_without_a_folder_is_a_clear_error(monkeypatch, tmp_path: Path):
    pkg = types.ModuleType("mme_namespace_model")
    pkg.__file__ = None  # what a namespace package has
    monkeypatch.setitem(sys.modules, "mme_namespace_model", pkg)
    with pytest.raises(FetchError, match="'mme-namespace-model'.*no __file__"):
        packaged_hf_model(tmp_path, package="mme-namespace-model", model_id="x")
