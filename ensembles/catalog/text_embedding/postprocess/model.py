"""Pooling step (Triton Python backend): attention-mask weighted mean, then L2 normalize.

This is what sentence-transformers does for all-MiniLM-L6-v2 (Pooling + Normalize modules).
numpy only, so on a GPU endpoint it runs in the Triton image's own Python, no packed env.
"""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                tokens = pb_utils.get_input_tensor_by_name(request, "token_embeddings").as_numpy()
                mask = pb_utils.get_input_tensor_by_name(request, "attention_mask").as_numpy()
                weights = mask[..., None].astype(np.float32)
                summed = (tokens.astype(np.float32) * weights).sum(axis=1)
                counts = np.clip(weights.sum(axis=1), 1e-9, None)
                pooled = summed / counts
                norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
                out = pb_utils.Tensor("embedding", (pooled / norms).astype(np.float32))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            except Exception as e:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"postprocess: {e}")))
        return responses
