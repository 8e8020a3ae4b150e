"""Tokenizer step (Triton Python backend): UTF-8 strings in, BERT token ids and mask out.

The tokenizer files are bundled in the model's version folder (``1/tokenizer``) by the build,
so the endpoint never reaches a model hub at load time (the seed's sample downloaded them at
start, which fails on an endpoint without internet).

The token dtype is the one config.pbtxt declares for each output: INT64 on local-cpu and on
TensorRT 10 releases, INT32 when the encoder is a TensorRT 8 plan (Triton before 24.05, whose
TensorRT has no INT64 I/O), as ensembles.render decides from the serving release.
"""

import json
import os

import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.max_length = int(params.get("max_length", "128"))
        path = os.path.join(args["model_repository"], args["model_version"], "tokenizer")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.input_name = config["input"][0]["name"]
        self.dtypes = {
            name: pb_utils.triton_string_to_numpy(
                pb_utils.get_output_config_by_name(config, name)["data_type"])
            for name in ("input_ids", "attention_mask")
        }

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                raw = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
                texts = []
                for item in raw.reshape(-1):
                    if isinstance(item, bytes):
                        try:
                            item = item.decode("utf-8")
                        except UnicodeDecodeError as e:
                            raise ValueError(f"input {self.input_name!r} is not valid UTF-8: {e}") from e
                    texts.append(str(item))
                enc = self.tokenizer(
                    texts, padding=True, truncation=True, max_length=self.max_length,
                    return_tensors="np",
                )
                outputs = [
                    pb_utils.Tensor(name, enc[name].astype(self.dtypes[name]))
                    for name in ("input_ids", "attention_mask")
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            except ValueError as e:  # the caller's input (e.g. not UTF-8): a 400, not a 500
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[],
                    error=pb_utils.TritonError(f"preprocess: {e}", pb_utils.TritonError.INVALID_ARG)))
            except Exception as e:  # one bad request must not fail the others in the batch
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"preprocess: {e}")))
        return responses
