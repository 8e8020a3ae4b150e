"""Generic Triton Python-backend model that runs an ONNX file with ONNX Runtime.

The local-cpu target's stand-in for Triton's ``onnxruntime_onnx`` backend, which the CPU
tritonserver we run locally does not ship. Inputs and outputs are taken from config.pbtxt, so
the same file serves any ONNX step: only the model file changes.

Memory (issue 19: one stub per loaded model, hundreds per endpoint, so each one's private
memory is what limits how many fit): a template may turn off ONNX Runtime's CPU memory arena
(``cpu_mem_arena: "false"``; default on, as ONNX Runtime has it: the arena keeps the largest
batch's buffers for the life of the model, ~57 MiB after one batch of 8 SqueezeNet images, where
the session itself holds ~5 MiB) and run the session on one thread (``intra_op_threads``,
``inter_op_threads``; default 0, ONNX Runtime's choice: one per core): an endpoint's concurrency
comes from its many models, not from threads inside one. The model always hands the C heap's
free pages back to the kernel (``malloc_trim``) after loading and whenever a request is larger
than any before it (the session's build temporaries and a new largest batch's buffers; steady
traffic never pays for it). SqueezeNet's answers were bit-identical either way (measured).
"""

import ctypes
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _release_freed_memory():
    """Return the C heap's free pages to the kernel (glibc ``malloc_trim``; a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        # default_model_filename names the .py file for the Python backend, so the ONNX file
        # name comes from a parameter
        filename = params.get("onnx_file", "model.onnx")
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        options.inter_op_num_threads = int(params.get("inter_op_threads", "0"))
        options.enable_cpu_mem_arena = _flag(params.get("cpu_mem_arena", "true"))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}
        self.largest_rows = 0  # the most rows one request has brought so far
        _release_freed_memory()

    def execute(self, requests):
        responses = []
        rows = 0
        for request in requests:
            try:
                feeds = {}
                for name in self.inputs:
                    arr = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                    if self.input_types.get(name) == "tensor(int64)":
                        arr = arr.astype(np.int64, copy=False)
                    elif self.input_types.get(name) == "tensor(int32)":
                        arr = arr.astype(np.int32, copy=False)
                    feeds[name] = arr
                    rows = max(rows, arr.shape[0] if arr.ndim else 1)
                results = self.session.run(self.outputs, feeds)
                tensors = [pb_utils.Tensor(n, np.ascontiguousarray(r)) for n, r in zip(self.outputs, results)]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as e:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"onnx model: {e}")))
        if rows > self.largest_rows:
            self.largest_rows = rows
            _release_freed_memory()
        return responses
