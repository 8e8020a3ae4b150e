"""Generic Triton Python-backend model that runs an ONNX file with ONNX Runtime.

The local-cpu target's stand-in for Triton's ``onnxruntime_onnx`` backend, which the CPU
tritonserver we run locally does not ship. Inputs and outputs are taken from config.pbtxt, so
the same file serves any ONNX step: only the model file changes.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


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
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}

    def execute(self, requests):
        responses = []
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
                results = self.session.run(self.outputs, feeds)
                tensors = [pb_utils.Tensor(n, np.ascontiguousarray(r)) for n, r in zip(self.outputs, results)]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as e:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"onnx model: {e}")))
        return responses
