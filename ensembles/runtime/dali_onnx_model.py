"""One Triton Python-backend model that runs a DALI pre-processing pipeline and then an ONNX
classifier: the local-cpu image classifier in one stub instead of two (issue 19).

Why: every Python model instance is a stub process, and a bare stub (the interpreter, numpy, the
backend's utilities and shared-memory client) costs ~15-20 MiB private memory before it does
anything. The image classifier's two local-cpu steps (DALI pre-processing, ONNX Runtime) are two
stubs per variant; one stub that does both keeps every answer (the same pipeline, the same
session options, the same tensors in between) and pays for one interpreter.

It is a composition, not a copy: the pre-processing model (``preprocess_model.py`` beside this
file, the catalog's ``image_classifier/preprocess/model.py``) and the ONNX Runtime model
(``onnx_model.py`` beside it, ``runtime:onnx_model.py``) are imported from the version folder
(the Python backend puts it on ``sys.path``) and initialized with the parts of this model's
config each one reads, so bad images are refused with the very same messages and checks.

Tensors: the pre-processing model's input (config.pbtxt's first input, encoded images) and the
classifier's output (config.pbtxt's one output). Any further input goes to the ONNX model as it
comes (a fused shard's ``TENANT``, :mod:`ensembles.fused`: the stacked heads pick the tenant's rows
by it). Parameters: every parameter of both models
(``dali_file``, ``max_pixels``, ``num_threads``, ``onnx_file``, ``cpu_mem_arena``,
``intra_op_threads``, ...), plus ``preprocessed_dims`` (the pipeline's output per image,
``"3,227,227"``), ``onnx_input`` and ``onnx_output`` (the ONNX model's tensor names, default
``preprocessed`` and ``probabilities``: the template's names).
"""

import json

import numpy as np
import onnx_model
import preprocess_model
import triton_python_backend_utils as pb_utils


def _sub_args(args, config, inputs, outputs):
    """``args`` for one of the composed models: this model's, with its own inputs/outputs."""
    sub = dict(config, input=inputs, output=outputs)
    return dict(args, model_config=json.dumps(sub))


def _as_onnx_type(arr, onnx_type):
    """An integer input in the width the ONNX model declares (as ``onnx_model.py`` feeds it)."""
    if onnx_type == "tensor(int64)":
        return arr.astype(np.int64, copy=False)
    if onnx_type == "tensor(int32)":
        return arr.astype(np.int32, copy=False)
    return arr


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        dims = [int(d) for d in params.get("preprocessed_dims", "3,227,227").split(",")]
        onnx_in = params.get("onnx_input", "preprocessed")
        onnx_out = params.get("onnx_output", "probabilities")
        image, *extra = config["input"]
        self.extra = [t["name"] for t in extra]
        self.output_name = config["output"][0]["name"]
        between = {"name": onnx_in, "data_type": "TYPE_FP32", "dims": dims}
        self.pre = preprocess_model.TritonPythonModel()
        self.pre.initialize(_sub_args(args, config, [image], [between]))
        self.onnx = onnx_model.TritonPythonModel()
        self.onnx.initialize(_sub_args(args, config, [between, *extra],
                                       [dict(config["output"][0], name=onnx_out)]))

    def execute(self, requests):
        responses = []
        for request, pre in zip(requests, self.pre.execute(requests)):
            if pre.has_error():
                responses.append(pre)
                continue
            try:
                feeds = {self.onnx.inputs[0]: pre.output_tensors()[0].as_numpy()}
                for name in self.extra:
                    arr = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                    feeds[name] = _as_onnx_type(arr, self.onnx.input_types.get(name))
                (out,) = self.onnx.session.run(self.onnx.outputs, feeds)
            except Exception as e:  # noqa: BLE001 - ONNX Runtime raises several kinds
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"onnx model: {e}")))
                continue
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(self.output_name, np.ascontiguousarray(out))]))
        return responses

    def finalize(self):
        self.pre.finalize()
