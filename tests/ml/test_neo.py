"""The optional Neo backend builds a valid CreateCompilationJob request and states its limit."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from ml_pipeline.neo import NeoUnsupportedError, compilation_request, start_compilation

ROLE = "arn:aws:iam::123456789012:role/test"  # a test fixture, not a real account


def request(**overrides):  # type: ignore[no-untyped-def]
    args = {
        "job_name": "failure-model-1",
        "role_arn": ROLE,
        "model_s3_uri": "s3://bucket/model.tar.gz",
        "output_s3_uri": "s3://bucket/neo/",
        "n_features": 48,
        "xgboost_version": "1.3",
        "target_platform": {"Os": "LINUX", "Arch": "ARM64"},
    }
    args.update(overrides)
    return compilation_request(**args)


def test_request_is_accepted_by_the_sagemaker_api_model() -> None:
    client = boto3.client(
        "sagemaker", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    body = request()
    with Stubber(client) as stub:
        # Stubber validates the parameters against the service model
        stub.add_response("create_compilation_job", {"CompilationJobArn": "arn:job"}, body)
        assert start_compilation(client, body) == "arn:job"
    assert body["InputConfig"]["Framework"] == "XGBOOST"
    assert body["InputConfig"]["DataInputConfig"] == '{"data": [1, 48]}'


def test_refuses_xgboost_newer_than_neo_supports() -> None:
    with pytest.raises(NeoUnsupportedError, match=r"up to 1\.3"):
        request(xgboost_version="3.2.0")


def test_needs_exactly_one_target() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        request(target_device="jetson_nano")
