"""The delivery pipeline (stacks/pipeline_stack.py): source -> synth and test -> dev -> staging
-> manual approval -> prod, each environment smoke-tested after its deployment; its settings
(config/pipeline.py) validated; its own resources cdk-nag clean."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from config.environments import ConfigError, is_deploy_input
from config.pipeline import pipeline_settings
from tests.infra.conftest import TEST_PINS

CONNECTION = (
    "arn:aws:codeconnections:eu-west-1:111111111111:connection/12345678-1234-1234-1234-123456789012"
)
# Example account ids (the synth under test deploys nowhere).
PIPELINE_CONTEXT = {
    "pipeline:connection_arn": CONNECTION,
    "pipeline:repository": "example/iiot-platform",
    "pipeline:branch": "release",
    **{f"{env}:account": str(account) * 12 for env, account in (("dev", 2), ("staging", 3))},
    "prod:account": "444444444444",
    **{f"{env}:region": "eu-west-1" for env in ("dev", "staging", "prod")},
}


class Pipeline:
    def __init__(self, outdir: Path, error: str | None) -> None:
        self.outdir = outdir
        self.error = error
        self.template: dict[str, Any] = json.loads(
            (outdir / "iiot-pipeline.template.json").read_text()
        )
        self.resources: dict[str, Any] = self.template["Resources"]

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {k: v["Properties"] for k, v in self.resources.items() if v["Type"] == kind}

    def stages(self) -> list[dict[str, Any]]:
        (pipeline,) = self.of_type("AWS::CodePipeline::Pipeline").values()
        stages: list[dict[str, Any]] = pipeline["Stages"]
        return stages

    def buildspec(self, action: dict[str, Any]) -> dict[str, Any]:
        project = action["Configuration"]["ProjectName"]["Ref"]
        spec = self.resources[project]["Properties"]["Source"]["BuildSpec"]
        document: dict[str, Any] = json.loads(spec)
        return document

    def findings(self) -> list[tuple[str, str]]:
        path = self.outdir / "validation-report.json"
        if not path.exists():
            return []
        report = json.loads(path.read_text())
        return [
            (violation["ruleName"], construct["constructPath"])
            for plugin in report["pluginReports"]
            for violation in plugin["violations"]
            for construct in violation["violatingConstructs"]
        ]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    for variable in ("CDK_DEFAULT_ACCOUNT", "CDK_DEFAULT_REGION", "CDK_CONTEXT_JSON"):
        os.environ.pop(variable, None)
    import aws_cdk as cdk
    from cdk_nag import AwsSolutionsChecks

    from stacks.environment_stacks import feature_flags
    from stacks.pipeline_stack import build_pipeline

    outdir = tmp_path_factory.mktemp("pipeline.out")
    flags = {key: value for key, value in feature_flags().items() if not is_deploy_input(key)}
    app = cdk.App(outdir=str(outdir), context={**flags, **TEST_PINS, **PIPELINE_CONTEXT})
    assert build_pipeline(app) is not None
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    error = None
    try:
        app.synth()
    except RuntimeError as exc:  # cdk-nag findings: the report is in outdir
        error = str(exc)
    return Pipeline(outdir, error)


def test_source_synth_dev_staging_prod_in_that_order(pipeline: Pipeline) -> None:
    names = [stage["Name"] for stage in pipeline.stages()]
    assert names[:2] == ["Source", "Build"]
    deploys = [name for name in names if name.startswith("iiot-")]
    assert deploys == ["iiot-dev", "iiot-staging", "iiot-prod"]
    # Self-mutation and asset publishing come before the first deployment.
    assert names.index("UpdatePipeline") < names.index("iiot-dev")
    (source,) = pipeline.stages()[0]["Actions"]
    configuration = source["Configuration"]
    assert configuration["ConnectionArn"] == CONNECTION
    assert configuration["FullRepositoryId"] == "example/iiot-platform"
    assert configuration["BranchName"] == "release"


def test_the_synth_step_runs_the_readme_test_command_then_the_synth(pipeline: Pipeline) -> None:
    (build,) = next(s for s in pipeline.stages() if s["Name"] == "Build")["Actions"]
    spec = pipeline.buildspec(build)
    commands = spec["phases"]["build"]["commands"]
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "make test   # lint (ruff), type-check (mypy), and the whole test suite" in readme
    assert commands.index("make test") < commands.index("make synth")
    assert spec["artifacts"]["base-directory"] == "cdk.out"
    # The caches the synth needs: the component wheels and PyFlink's environment.
    cached = spec["cache"]["paths"]
    assert any("iiot-platform/wheels" in path for path in cached)
    assert any(path.startswith(".venv-flink") for path in cached)
    env = {e["Name"]: e["Value"] for e in pipeline.resources[
        build["Configuration"]["ProjectName"]["Ref"]
    ]["Properties"]["Environment"]["EnvironmentVariables"]}  # fmt: skip
    assert env["IIOT_WHEEL_CACHE"].endswith("iiot-platform/wheels")


def _deploy_and_smoke(pipeline: Pipeline, env: str) -> tuple[list[dict[str, Any]], list[Any]]:
    stage = next(s for s in pipeline.stages() if s["Name"] == f"iiot-{env}")
    actions = stage["Actions"]
    return actions, [a["RunOrder"] for a in actions]


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_each_environment_is_deployed_to_its_account_then_smoke_tested(
    pipeline: Pipeline, env: str
) -> None:
    actions, _ = _deploy_and_smoke(pipeline, env)
    deploys = [a for a in actions if a["ActionTypeId"]["Provider"] == "CloudFormation"]
    account = PIPELINE_CONTEXT[f"{env}:account"]
    assert {a["Configuration"]["StackName"] for a in deploys} >= {
        f"iiot-{env}-{concern}" for concern in ("lake", "iot", "timeseries", "ml", "smoke")
    }
    for action in deploys:
        assert f":{account}:" in json.dumps(action["RoleArn"])  # the target account's CDK role
        # CodePipeline leaves the region out when it is the pipeline's own.
        assert action.get("Region", "eu-west-1") == PIPELINE_CONTEXT[f"{env}:region"]
    (smoke,) = [
        a for a in actions
        if a["ActionTypeId"]["Provider"] == "CodeBuild" and a["Name"].startswith("Smoke")
    ]  # fmt: skip
    assert smoke["RunOrder"] > max(a["RunOrder"] for a in deploys)
    # It runs in the checkout (it installs the project), not in the synthesized cdk.out.
    (source,) = pipeline.stages()[0]["Actions"]
    assert smoke["InputArtifacts"] == source["OutputArtifacts"]
    commands = pipeline.buildspec(smoke)["phases"]["build"]["commands"]
    role = f"arn:aws:iam::{account}:role/iiot-{env}-smoke"
    (command,) = [c for c in commands if c.startswith(f"iiot smoke --env {env} ")]
    assert role in command
    # Every step, InfluxDB's through the environment's probe in its VPC.
    assert "--skip" not in command
    assert command.endswith(" --influx-via probe")


def test_a_manual_approval_comes_before_prod_only(pipeline: Pipeline) -> None:
    for env in ("dev", "staging", "prod"):
        actions, _ = _deploy_and_smoke(pipeline, env)
        approvals = [a for a in actions if a["ActionTypeId"]["Category"] == "Approval"]
        if env != "prod":
            assert approvals == []
            continue
        (approval,) = approvals
        first_deploy = min(
            a["RunOrder"] for a in actions if a["ActionTypeId"]["Provider"] == "CloudFormation"
        )
        assert approval["RunOrder"] < first_deploy


def test_artifacts_are_kms_encrypted_tls_only_and_logged(pipeline: Pipeline) -> None:
    (pipeline_props,) = pipeline.of_type("AWS::CodePipeline::Pipeline").values()
    store = pipeline_props["ArtifactStore"]
    assert store["EncryptionKey"]["Type"] == "KMS"
    bucket_id = store["Location"]["Ref"]
    bucket = pipeline.resources[bucket_id]["Properties"]
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert "LoggingConfiguration" in bucket
    policies = [
        p for p in pipeline.of_type("AWS::S3::BucketPolicy").values()
        if p["Bucket"] == {"Ref": bucket_id}
    ]  # fmt: skip
    statements = [s for p in policies for s in p["PolicyDocument"]["Statement"]]
    assert any(
        s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for s in statements
    )
    keys = pipeline.of_type("AWS::KMS::Key")
    assert keys
    assert all(k["EnableKeyRotation"] for k in keys.values())


def test_the_pipeline_and_every_pinned_environment_are_cdk_nag_clean(pipeline: Pipeline) -> None:
    # Pinned stacks name their account and region literally in findings: every acknowledgment
    # holds in that form too (stacks/constructs/access.py), the pipeline's own as well.
    assert pipeline.findings() == []
    assert pipeline.error is None


def test_settings_are_validated() -> None:
    assert pipeline_settings({"dev:account": "123456789012"}) is None
    settings = pipeline_settings(PIPELINE_CONTEXT)
    assert settings is not None
    assert (settings.account, settings.region) == ("111111111111", "eu-west-1")
    with pytest.raises(ConfigError, match="not a CodeConnections connection ARN"):
        pipeline_settings({**PIPELINE_CONTEXT, "pipeline:connection_arn": "arn:aws:iam::1:x"})
    with pytest.raises(ConfigError, match="pipeline:repository is required"):
        pipeline_settings({"pipeline:connection_arn": CONNECTION})
    with pytest.raises(ConfigError, match="without pipeline:connection_arn"):
        pipeline_settings({"pipeline:repository": "example/iiot-platform"})
    with pytest.raises(ConfigError, match="not a valid branch"):
        pipeline_settings({**PIPELINE_CONTEXT, "pipeline:branch": "a..b"})
    with pytest.raises(ConfigError, match="pipeline settings are"):
        pipeline_settings({**PIPELINE_CONTEXT, "pipeline:acount": "111111111111"})


def test_every_environment_must_be_pinned() -> None:
    import aws_cdk as cdk

    from stacks.pipeline_stack import build_pipeline

    unpinned = {k: v for k, v in PIPELINE_CONTEXT.items() if not k.startswith("staging:")}
    app = cdk.App(context={**TEST_PINS, **unpinned})
    with pytest.raises(ConfigError, match="staging:account and staging:region"):
        build_pipeline(app)
