"""Export a Hugging Face encoder to ONNX with dynamic batch and sequence axes.

Uses torch's dynamo-based exporter: the legacy TorchScript tracer bakes the attention-mask
branch of recent transformers into constants, and its ONNX then disagrees with torch by
~1.0 on padded batches (measured here), while the dynamo export matches within 4e-6.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from infra.errors import MMEError


class ExportError(MMEError, RuntimeError):
    pass


def strip_debug_info(path: Path) -> None:
    """Drop the exporter's per-node debug metadata (stack traces with the build host's file
    paths), so the same model exported on two machines gives the same bytes and sha256."""
    import onnx

    model = onnx.load(str(path))
    for graph in [model.graph, *(f for f in model.functions)]:
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
    model.doc_string = ""
    onnx.save(model, str(path))


def export_transformer_onnx(out_dir: Path, *, model: Path, opset: int = 18,
                            check_tolerance: float = 1e-4) -> tuple[Path, dict]:
    """Export ``AutoModel(model)`` -> ``out_dir/model.onnx`` (inputs input_ids,
    attention_mask int64 [batch, seq]; output last_hidden_state fp32 [batch, seq, hidden]).

    The ONNX keeps INT64 token inputs for every target: ONNX Runtime (local-cpu) and TensorRT 10
    take them as they are, and TensorRT 8's parser casts them to INT32 bindings, which the
    render step matches by declaring INT32 for releases before 24.05
    (:func:`ensembles.render.int64_free_tensors`).

    The export is checked against torch on a padded batch before it is returned, so a wrong
    export fails here rather than at verification time.
    """
    import torch
    from transformers import AutoModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf = AutoModel.from_pretrained(str(model)).eval()

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.randint(100, 2000, (2, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 16, dtype=torch.int64)
    mask[1, 9:] = 0
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Encoder(hf), (ids, mask), str(dest),
            input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            opset_version=opset, dynamo=True, external_data=False, verbose=False,
        )
    strip_debug_info(dest)
    # check: ONNX Runtime vs torch on a different padded batch shape
    import onnxruntime as ort

    sess = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    ids2 = torch.randint(100, 2000, (3, 11), generator=torch.Generator().manual_seed(1))
    mask2 = torch.ones(3, 11, dtype=torch.int64)
    mask2[2, 4:] = 0
    got = sess.run(None, {"input_ids": ids2.numpy(), "attention_mask": mask2.numpy()})[0]
    with torch.no_grad():
        want = Encoder(hf)(ids2, mask2).numpy()
    err = float(np.abs((got - want) * mask2.numpy()[..., None]).max())
    if not err <= check_tolerance:
        dest.unlink(missing_ok=True)
        raise ExportError(f"{dest}: ONNX Runtime differs from torch by {err:.3g} "
                          f"(tolerance {check_tolerance})")
    return dest, {"opset": opset, "torch": torch.__version__, "max_abs_diff_vs_torch": err}
