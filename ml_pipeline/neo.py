"""Optional `neo` backend: the SageMaker ``CreateCompilationJob`` request for the model.

Kept for sites that want a Neo-compiled artifact for cloud instances. It is not the gateway path:
Neo compiles XGBoost models only up to XGBoost 1.3 for edge targets (``TargetDevice``), and this
project trains with XGBoost 3.x, whose JSON model format 1.3 cannot read; SageMaker Edge Manager,
which ran Neo artifacts on devices, is discontinued. Gateways get TL2cgen libraries instead
(`ml_pipeline.compile`). The client is injected (no AWS client at import time).
"""

from __future__ import annotations

import json
from typing import Any

NEO_MAX_XGBOOST = "1.3"


class NeoUnsupportedError(ValueError):
    """The request cannot work for this model and target; the message says why."""


def compilation_request(
    *,
    job_name: str,
    role_arn: str,
    model_s3_uri: str,
    output_s3_uri: str,
    n_features: int,
    xgboost_version: str,
    target_device: str | None = None,
    target_platform: dict[str, str] | None = None,
    max_runtime_seconds: int = 900,
) -> dict[str, Any]:
    """The CreateCompilationJob request (one of target_device / target_platform)."""
    if (target_device is None) == (target_platform is None):
        raise ValueError("give exactly one of target_device or target_platform")
    major_minor = tuple(int(p) for p in xgboost_version.split(".")[:2])
    limit = tuple(int(p) for p in NEO_MAX_XGBOOST.split("."))
    if major_minor > limit:
        raise NeoUnsupportedError(
            f"Neo compiles XGBoost models up to {NEO_MAX_XGBOOST}; this model is XGBoost "
            f"{xgboost_version}. Use `iiot ml compile` (TL2cgen) for the gateways."
        )
    output: dict[str, Any] = {"S3OutputLocation": output_s3_uri}
    if target_device is not None:
        output["TargetDevice"] = target_device
    else:
        output["TargetPlatform"] = target_platform
    return {
        "CompilationJobName": job_name,
        "RoleArn": role_arn,
        "InputConfig": {
            "S3Uri": model_s3_uri,
            "DataInputConfig": json.dumps({"data": [1, n_features]}),
            "Framework": "XGBOOST",
            "FrameworkVersion": xgboost_version,
        },
        "OutputConfig": output,
        "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime_seconds},
    }


def start_compilation(client: Any, request: dict[str, Any]) -> str:
    """Submit the request with an injected SageMaker client; returns the job ARN."""
    response = client.create_compilation_job(**request)
    return str(response["CompilationJobArn"])
