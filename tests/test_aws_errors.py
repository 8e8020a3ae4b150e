"""AWS errors reach the user as one line: the call, the resource, AWS's message (no HTML),
and the CLI exits 1 (AWS's failure) or 2 (the caller's: access, credentials, invalid request)."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, NoCredentialsError
from moto import mock_aws

from infra.aws.errors import (
    AwsCallError,
    client_error,
    describe,
    exit_code,
    one_line,
    strip_html,
)
from infra.aws.sagemaker import SAGEMAKER, AwsCallFailed, Call, SageMakerDeployError, apply
from infra.store.objects import StoreError, open_store

REGION = "us-east-1"
HTML_403 = ("<html>\n<head><title>403 Forbidden</title><style>h1 {color: red}</style></head>\n"
            "<body><h1>Forbidden</h1><p>Request blocked by the proxy &amp; logged.</p>"
            "<script>var x = '<b>';</script></body>\n</html>")


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch):
    for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(var, value)
    with mock_aws():
        yield boto3.client("sagemaker", region_name=REGION)


def test_a_moto_error_from_a_control_plane_call_is_one_line(aws: Any) -> None:
    """CreateEndpoint on a config that does not exist: moto answers ValidationException."""
    call = Call(SAGEMAKER, "create_endpoint", {"EndpointName": "my-mme", "EndpointConfigName": "nope"})
    with pytest.raises(AwsCallFailed) as info:
        apply([call], {SAGEMAKER: aws}, log=lambda m: None)
    err = info.value
    text = str(err)
    assert "\n" not in text
    assert text.startswith("sagemaker.create_endpoint failed for endpoint my-mme: ")
    assert err.code == "ValidationException" and "nope" in err.message
    assert isinstance(err, SageMakerDeployError) and isinstance(err.__cause__, ClientError)
    assert exit_code(err) == 2, "an invalid request is the caller's to fix"


def test_an_html_error_body_is_reduced_to_its_text() -> None:
    exc = client_error("403", HTML_403, "PutObject", status=403)
    err = describe(exc, service="s3", resource="ensemble text_embedding (TargetModel text_embedding.tar.gz)")
    text = str(err)
    assert "<" not in text and "color: red" not in text and "var x" not in text
    assert text == ("s3.PutObject failed for ensemble text_embedding (TargetModel "
                    "text_embedding.tar.gz): 403: 403 Forbidden Forbidden Request blocked by the "
                    "proxy & logged.")
    assert exit_code(exc) == 2  # a bare 403 is access: the caller's
    assert exit_code(client_error("InternalFailure", "boom", "CreateModel", status=500)) == 1
    assert exit_code(client_error("ThrottlingException", "slow down", "CreateModel", status=400)) == 1
    assert exit_code(NoCredentialsError()) == 2
    assert strip_html("plain words, no markup") == "plain words, no markup"


def test_an_html_body_without_a_message_is_used() -> None:
    """botocore leaves Message empty when the body is not XML/JSON: the body is shown, stripped."""
    exc = client_error("502", "", "InvokeEndpoint", status=502, body=HTML_403.encode())
    err = describe(exc, service="sagemaker-runtime", resource="endpoint e")
    assert err.message.startswith("403 Forbidden Forbidden Request blocked") and exit_code(err) == 1


def test_a_wrapper_error_keeps_its_resource_and_loses_the_markup() -> None:
    """StoreError wraps the ClientError as text; the one line keeps the S3 URI it names."""
    raw = client_error("AccessDenied", HTML_403, "PutObject", status=403)
    try:
        try:
            raise raw
        except ClientError as e:
            raise StoreError(f"put s3://b/mme/models/ep/x.tar.gz failed: {e}") from e
    except StoreError as wrapped:
        line = one_line(wrapped)
    assert line.startswith("put s3://b/mme/models/ep/x.tar.gz failed: AccessDenied: 403 Forbidden")
    assert "<" not in line and "An error occurred" not in line


def test_s3_errors_from_moto_name_the_object(aws: Any) -> None:
    store, prefix = open_store("s3://no-such-bucket/mme")
    with pytest.raises(StoreError) as info:
        store.put_bytes(f"{prefix}/models/ep/x.tar.gz", b"x")
    line = one_line(info.value)
    assert "s3://no-such-bucket/mme/models/ep/x.tar.gz" in line and "NoSuchBucket" in line
    assert exit_code(info.value) == 2


class _HtmlForbidden(http.server.BaseHTTPRequestHandler):
    """What a proxy in front of AWS may answer: 403 with an HTML page."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = HTML_403.encode()
        self.send_response(403)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.prefect
def test_cli_prints_one_line_and_exits_2_for_an_html_403(tmp_path: Path) -> None:
    """`mme retire --backend sagemaker` against an AWS endpoint that answers HTML 403: one
    error line naming the call and the endpoint, no traceback, no markup, exit 2."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HtmlForbidden)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION=REGION,
                   AWS_ENDPOINT_URL=f"http://127.0.0.1:{server.server_port}",
                   AWS_MAX_ATTEMPTS="1", MME_HOME=str(tmp_path / "home"),
                   PREFECT_HOME=str(tmp_path / "pf"))
        r = subprocess.run([sys.executable, "-m", "flows.cli", "retire", "--endpoint", "my-mme",
                            "--backend", "sagemaker", "--stop"], capture_output=True, text=True,
                           timeout=300, env=env, cwd=Path(__file__).resolve().parents[1])
    finally:
        server.shutdown()
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "<html" not in r.stderr and "<h1>" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr[-3000:]
    assert "sagemaker.DescribeEndpoint failed for endpoint my-mme: 403: 403 Forbidden" in errors[0]


def test_aws_call_error_is_one_line_and_survives_pickling() -> None:
    import pickle

    err = AwsCallError("sagemaker.create_model", "model m", "AccessDeniedException", "not allowed")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) == "sagemaker.create_model failed for model m: AccessDeniedException: not allowed"
    assert again.is_user_error
