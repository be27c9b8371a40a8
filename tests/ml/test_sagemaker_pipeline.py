"""The SageMaker pipeline definition: generated offline, with the steps in the right order."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

COMMITTED = Path(__file__).parents[2] / "ml_pipeline" / "pipeline_definition.json"


def steps_by_name(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    steps = {s["Name"]: s for s in definition["Steps"]}
    for step in definition["Steps"]:
        if step["Type"] == "Condition":
            for branch in ("IfSteps", "ElseSteps"):
                steps.update({s["Name"]: s for s in step["Arguments"][branch]})
    return steps


def check_structure(definition: dict[str, Any]) -> None:
    steps = steps_by_name(definition)
    assert [(s["Name"], s["Type"]) for s in definition["Steps"]] == [
        ("Features", "Processing"),
        ("Train", "Training"),
        ("Evaluate", "Processing"),
        ("PrAucGate", "Condition"),
        ("TrainAnomalyModel", "Processing"),
        ("RegisterAnomalyModel", "RegisterModel"),
    ]
    text = json.dumps(steps["Train"])
    # training reads what the feature step wrote
    assert "Steps.Features.ProcessingOutputConfig.Outputs['features']" in text
    evaluate = json.dumps(steps["Evaluate"])
    assert "Steps.Train.ModelArtifacts.S3ModelArtifacts" in evaluate
    assert "ml_pipeline.evaluate_job" in evaluate
    gate = steps["PrAucGate"]["Arguments"]
    condition = gate["Conditions"][0]
    assert condition["Type"] == "GreaterThanOrEqualTo"
    assert condition["LeftValue"]["Std:JsonGet"]["Path"] == "pr_auc"
    assert condition["RightValue"] == {"Get": "Parameters.MinPrAuc"}
    assert [s["Name"] for s in gate["IfSteps"]] == ["Register", "CompileForGateways"]
    assert gate["ElseSteps"] == []
    register = steps["Register"]
    assert register["Type"] == "RegisterModel"
    assert register["Arguments"]["ModelApprovalStatus"] == "PendingManualApproval"
    compile_step = steps["CompileForGateways"]
    assert compile_step["DependsOn"] == ["Register"]
    assert "x86_64,aarch64" in json.dumps(compile_step)
    # the anomaly detector trains on the same silver input and registers in its own group
    anomaly = json.dumps(steps["TrainAnomalyModel"])
    assert '"anomaly-train"' in anomaly
    assert "Parameters.InputDataS3Uri" in anomaly
    assert "/opt/ml/processing/anomaly/anomaly_model.zip" in anomaly
    register_anomaly = steps["RegisterAnomalyModel"]["Arguments"]
    assert register_anomaly["ModelPackageGroupName"] == {
        "Get": "Parameters.AnomalyModelPackageGroupName"
    }
    assert register_anomaly["ModelApprovalStatus"] == "PendingManualApproval"
    assert "Steps.TrainAnomalyModel.ProcessingOutputConfig" in json.dumps(register_anomaly)
    # every run writes under its own folder (<OutputS3Uri>/<execution id>/...): a package's
    # ModelDataUrl, and the compiled zip the publish flow finds beside it, stay that run's
    # after a newer run (an older package approved later publishes its own models)
    run_folder = [{"Get": "Parameters.OutputS3Uri"}, {"Get": "Execution.PipelineExecutionId"}]
    outputs = [
        o["S3Output"]["S3Uri"]
        for step in steps.values()
        if step["Type"] == "Processing"
        for o in step["Arguments"]["ProcessingOutputConfig"]["Outputs"]
    ]
    outputs.append(steps["Train"]["Arguments"]["OutputDataConfig"]["S3OutputPath"])
    assert len(outputs) == 5  # features, evaluation, component, anomaly; the training job's
    for uri in outputs:
        assert uri["Std:Join"]["Values"][:2] == run_folder, uri
    # nothing account-specific: no 12-digit account ids, the role is a placeholder
    whole = json.dumps(definition)
    assert not re.search(r"\b\d{12}\b", whole)
    assert "${AWS::AccountId}" in steps["Train"]["Arguments"]["RoleArn"]
    names = {p["Name"] for p in definition["Parameters"]}
    assert {
        "InputDataS3Uri",
        "OutputS3Uri",
        "MinPrAuc",
        "ModelPackageGroupName",
        "AnomalyModelPackageGroupName",
    } <= names


def test_committed_definition_has_the_pipeline_structure() -> None:
    check_structure(json.loads(COMMITTED.read_text()))


@pytest.mark.slow
def test_sdk_generates_the_committed_definition_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # no account, no network: fake credentials and a region only so that boto3 builds clients
    # (the SDK creates some at import time)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")
    pytest.importorskip("sagemaker.mlops.workflow")
    from ml_pipeline.sagemaker_pipeline import definition_json

    generated = definition_json("eu-west-1")
    check_structure(json.loads(generated))
    assert json.loads(generated) == json.loads(COMMITTED.read_text()), (
        "the committed definition is stale: regenerate with "
        "`iiot ml pipeline --out ml_pipeline/pipeline_definition.json`"
    )
