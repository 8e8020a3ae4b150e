"""Invoke an ensemble through the SageMaker runtime API (AWS or the local endpoint).

Bodies are built with ``tritonclient.http``'s own encoder, the same bytes a user of the seed's
sample sends: binary+json (``application/vnd.sagemaker-triton.binary+json;json-header-size=N``)
by default, or plain KServe-v2 JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import np_to_triton_dtype

BINARY_CT = "application/vnd.sagemaker-triton.binary+json"


def encode_request(inputs: dict[str, np.ndarray], *, binary: bool = True,
                   outputs: list[str] | None = None) -> tuple[bytes, str]:
    """Return (body, content type) for a KServe-v2 inference request."""
    if not binary:
        doc = {"inputs": [_json_input(name, arr) for name, arr in inputs.items()]}
        if outputs:
            doc["outputs"] = [{"name": o} for o in outputs]
        return json.dumps(doc).encode(), "application/json"
    infer_inputs = []
    for name, arr in inputs.items():
        ii = httpclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        ii.set_data_from_numpy(arr, binary_data=True)
        infer_inputs.append(ii)
    req_outputs = [httpclient.InferRequestedOutput(o, binary_data=True) for o in outputs] if outputs else None
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        infer_inputs, outputs=req_outputs)
    if json_size is None:
        return body, "application/json"
    return body, f"{BINARY_CT};json-header-size={json_size}"


def _json_input(name: str, arr: np.ndarray) -> dict[str, Any]:
    dtype = np_to_triton_dtype(arr.dtype)
    flat = arr.reshape(-1)
    if dtype == "BYTES":
        data = [x.decode() if isinstance(x, bytes) else str(x) for x in flat]
    else:
        data = flat.tolist()
    return {"name": name, "shape": list(arr.shape), "datatype": dtype, "data": data}


def decode_response(body: bytes, content_type: str) -> dict[str, np.ndarray]:
    """Parse a KServe-v2 response (JSON or binary+json) into numpy arrays by output name."""
    m = re.search(r"json-header-size=(\d+)", content_type or "")
    header = int(m.group(1)) if m else None
    result = httpclient.InferenceServerClient.parse_response_body(body, header_length=header)
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}


def invoke(runtime_client: Any, endpoint: str, target_model: str, inputs: dict[str, np.ndarray],
           *, binary: bool = True) -> dict[str, np.ndarray]:
    """``invoke_endpoint`` with a TargetModel; works against SageMaker and the local endpoint."""
    body, ct = encode_request(inputs, binary=binary)
    resp = runtime_client.invoke_endpoint(EndpointName=endpoint, TargetModel=target_model,
                                          ContentType=ct, Body=body)
    return decode_response(resp["Body"].read(), resp["ContentType"])


def runtime_client_for(url: str | None = None, region: str = "us-east-1") -> Any:
    """A boto3 ``sagemaker-runtime`` client; ``url`` points it at a local endpoint.

    The local endpoint does not check signatures, so dummy credentials are used when none
    are configured (boto3 refuses to send an unsigned request otherwise).
    """
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    kwargs: dict[str, Any] = {"region_name": session.region_name or region,
                              "config": Config(retries={"max_attempts": 1, "mode": "standard"},
                                               read_timeout=400, connect_timeout=10)}
    if url:
        kwargs["endpoint_url"] = url
        if session.get_credentials() is None:
            kwargs.update(aws_access_key_id="local", aws_secret_access_key="local")
    return session.client("sagemaker-runtime", **kwargs)
