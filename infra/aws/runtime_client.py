"""Invoke an ensemble through the SageMaker runtime API (AWS or the local endpoint).

Bodies are built with ``tritonclient.http``'s own encoder, the same bytes a user of the seed's
sample sends: binary+json (``application/vnd.sagemaker-triton.binary+json;json-header-size=N``)
by default, or plain KServe-v2 JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import httpx
import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import np_to_triton_dtype

# The runtime client and its botocore Config come from the one AWS client factory.
from infra.aws.clients import READ_TIMEOUT_S, RuntimeClient, runtime_client_for, runtime_config  # noqa: F401
from infra.jsontypes import JsonObject

BINARY_CT = "application/vnd.sagemaker-triton.binary+json"
HEADER_SIZE = re.compile(r"json-header-size\s*=\s*(\d+)")


def encode_request(inputs: dict[str, np.ndarray], *, binary: bool = True,
                   outputs: list[str] | None = None,
                   classify: Mapping[str, int] | None = None) -> tuple[bytes, str]:
    """Return (body, content type) for a KServe-v2 inference request. ``classify``: outputs
    asked as Triton's classification extension (output name -> k): the answer for each is
    its k best classes per row, as BYTES ``"score:index[:label]"`` strings, instead of the
    scores (the label is there when the output has a ``label_filename`` on the server). Both
    body kinds carry it (the output's ``"parameters": {"classification": k}``); when
    ``outputs`` or ``classify`` names any output, only those are answered."""
    wanted = [(o, 0) for o in outputs or []] + [(o, int(k)) for o, k in (classify or {}).items()]
    if not binary:
        doc: dict[str, object] = {"inputs": [_json_input(name, arr) for name, arr in inputs.items()]}
        if wanted:
            doc["outputs"] = [{"name": o, "parameters": {"classification": k}} if k else {"name": o}
                              for o, k in wanted]
        return json.dumps(doc).encode(), "application/json"
    infer_inputs = []
    for name, arr in inputs.items():
        ii = httpclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        ii.set_data_from_numpy(arr, binary_data=True)
        infer_inputs.append(ii)
    req_outputs = [httpclient.InferRequestedOutput(o, binary_data=True, class_count=k)
                   for o, k in wanted] or None
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        infer_inputs, outputs=req_outputs)
    if json_size is None:
        return body, "application/json"
    return body, f"{BINARY_CT};json-header-size={json_size}"


def _json_input(name: str, arr: np.ndarray) -> JsonObject:
    dtype = np_to_triton_dtype(arr.dtype)
    flat = arr.reshape(-1)
    if dtype == "BYTES":
        data = [x.decode() if isinstance(x, bytes) else str(x) for x in flat]
    else:
        data = flat.tolist()
    return {"name": name, "shape": [*arr.shape], "datatype": dtype, "data": data}


def decode_response(body: bytes, content_type: str) -> dict[str, np.ndarray]:
    """Parse a KServe-v2 response (JSON or binary+json) into numpy arrays by output name."""
    m = HEADER_SIZE.search(content_type or "")
    header = int(m.group(1)) if m else None
    result = httpclient.InferenceServerClient.parse_response_body(body, header_length=header)
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}


def pack_images(blobs: list[bytes]) -> np.ndarray:
    """Encoded images as one UINT8 [B, N] tensor: each padded with trailing zeros to the
    longest (image decoders ignore bytes after the end of the image)."""
    out = np.zeros((len(blobs), max(len(b) for b in blobs)), dtype=np.uint8)
    for i, b in enumerate(blobs):
        out[i, :len(b)] = np.frombuffer(b, dtype=np.uint8)
    return out


def triton_headers(content_type: str) -> dict[str, str]:
    """The headers Triton's own HTTP API wants for a body made by :func:`encode_request`
    (SageMaker carries the JSON header size in the content type, Triton in a header)."""
    m = HEADER_SIZE.search(content_type or "")
    if not m:
        return {"Content-Type": "application/json"}
    return {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": m.group(1)}


def decode_triton_response(response: httpx.Response) -> dict[str, np.ndarray]:
    """Parse a response of Triton's own HTTP API (an ``httpx.Response``)."""
    size = response.headers.get("inference-header-content-length")
    return decode_response(response.content, f"{BINARY_CT};json-header-size={size}" if size else "")


def infer_direct(client: httpx.Client, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One inference straight to Triton (``client``: an ``httpx.Client`` on its URL)."""
    body, ct = encode_request(inputs, binary=True)
    r = client.post(f"/v2/models/{model}/infer", content=body, headers=triton_headers(ct))
    if r.status_code != 200:
        raise RuntimeError(f"Triton answered {r.status_code} for {model!r}: {r.text}")
    return decode_triton_response(r)


def invoke(runtime_client: RuntimeClient, endpoint: str, target_model: str, inputs: dict[str, np.ndarray],
           *, binary: bool = True, classify: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """``invoke_endpoint`` with a TargetModel; works against SageMaker and the local endpoint.
    ``classify``: outputs to answer as their top-k classes (:func:`encode_request`)."""
    body, ct = encode_request(inputs, binary=binary, classify=classify)
    resp = runtime_client.invoke_endpoint(EndpointName=endpoint, TargetModel=target_model,
                                          ContentType=ct, Body=body)
    return decode_response(resp["Body"].read(), resp["ContentType"])
