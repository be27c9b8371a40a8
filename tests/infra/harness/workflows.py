"""The AWS services that call AWS for the platform, replayed from what the stacks deploy.

Where the caller is not the project's own Python but a service working from a definition in
the templates, the calls come from that definition, resolved by `Cloud`:

- Step Functions (`state_machine_calls`): each Task state's integration, with the calls that
  AWS documents for it (a `.sync` integration also polls, cancels and manages its EventBridge
  rule); the state's `.$` parameters are taken from a sample input.
- SageMaker Pipelines (`pipeline_calls`): each step of the definition becomes the call the
  pipeline's role makes (CreateProcessingJob, CreateTrainingJob, CreateModelPackage, with
  their Describe and Stop) and, for a job, a `JobRun` whose own role pulls the image, reads
  the inputs, writes the outputs and its logs (`job_accesses`). Parameters take their
  defaults (what the schedule starts), step properties the outputs of earlier steps.
- CodeBuild (`run_buildspec`): the project's buildspec runs in bash on the staged source, with
  `aws` replaced by a recorder; what it asked of the CLI becomes the API calls the CLI makes.
- EventBridge (`rule_target_accesses`) and IoT (`topic_rule_accesses`): each target or action
  as the role it names.
- CDK's AwsCustomResource (`custom_resource_calls`): its SDK call, as its provider's role.
- Greengrass (`artifact_accesses`): the nucleus downloads every artifact of a deployed
  component version with the token-exchange role.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tests.infra.harness.access import Access, encryption_key
from tests.infra.harness.model import Cloud, Resource
from tests.infra.harness.recorder import Call

# Step Functions optimized integrations: service -> its botocore name and parameter casing.
CAMEL_CASE_SERVICES = {"emr-serverless", "codebuild"}
# What a `.sync` integration calls besides its own action (Step Functions' IAM documentation,
# "IAM policies for ..."), and the EventBridge rule it manages.
SYNC_CALLS = {
    ("emr-serverless", "StartJobRun"): (
        ["GetJobRun", "CancelJobRun"],
        "StepFunctionsGetEventsForEMRServerlessJobRule",
    ),
    ("codebuild", "StartBuild"): (
        ["StopBuild", "BatchGetBuilds"],
        "StepFunctionsGetEventForCodeBuildStartBuildRule",
    ),
}
# Job names SageMaker Pipelines gives the jobs it starts.
PIPELINE_JOB = "pipelines-a1b2c3d4e5f6-{step}-x1y2z3"


def _pascal(name: str) -> str:
    return name[:1].upper() + name[1:]


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def _path(document: Any, path: str) -> Any:
    """A JsonPath of the `$.a.b[0].c` kind, evaluated on `document`."""
    value = document
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path.removeprefix("$")):
        value = value[int(part[1:-1])] if part.startswith("[") else value[part]
    return value


def _parameters(parameters: Any, state_input: dict[str, Any]) -> Any:
    """Step Functions' `Parameters` with `.$` fields evaluated on `state_input`."""
    if isinstance(parameters, list):
        return [_parameters(item, state_input) for item in parameters]
    if not isinstance(parameters, dict):
        return parameters
    result = {}
    for key, value in parameters.items():
        if key.endswith(".$"):
            result[key[:-2]] = (
                _path(state_input, value) if value.startswith("$") else f"<{value[:20]}...>"
            )
        else:
            result[key] = _parameters(value, state_input)
    return result


def _states(definition: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, state in definition.get("States", {}).items():
        found.append((name, state))
        for branch in state.get("Branches", []):
            found += _states(branch)
        if "Iterator" in state or "ItemProcessor" in state:
            found += _states(state.get("ItemProcessor") or state["Iterator"])
    return found


def state_machine_calls(cloud: Cloud, machine: Resource, state_input: dict[str, Any]) -> list[Call]:
    """The calls a run of `machine` makes with `state_input` (every state sees it)."""
    definition = json.loads(cloud.resolve(machine.stack, machine.properties["DefinitionString"]))
    calls: list[Call] = []
    for name, state in _states(definition):
        if state.get("Type") != "Task":
            continue
        resource = state["Resource"]
        match = re.fullmatch(
            r"arn:[\w-]+:states:::(aws-sdk:)?([\w-]+):(\w+)(\.sync|\.waitForTaskToken)?", resource
        )
        if match is None:
            raise ValueError(f"{machine.logical_id}.{name}: no rule for {resource}")
        service, action, sync = match.group(2), match.group(3), match.group(4)
        params = _parameters(state.get("Parameters", {}), state_input)
        if service in CAMEL_CASE_SERVICES:
            params = {_camel(key): value for key, value in params.items()}
        operation = _pascal(action)
        calls.append(Call(service, operation, params, cloud.region))
        if sync == ".sync":
            follow_ups, rule = SYNC_CALLS[(service, operation)]
            for follow_up in follow_ups:
                calls.append(Call(service, follow_up, _follow_up(service, params), cloud.region))
            for action in ("PutTargets", "PutRule", "DescribeRule"):
                calls.append(Call("events", action, {"Name": rule}, cloud.region))
    return calls


def _follow_up(service: str, params: dict[str, Any]) -> dict[str, Any]:
    if service == "emr-serverless":
        return {"applicationId": params["applicationId"], "jobRunId": "00f1a2b3c4d5e6f7"}
    if service == "codebuild":
        return {"ids": [f"{params['projectName']}:0123-4567"]}
    raise ValueError(service)


# --- SageMaker Pipelines -----------------------------------------------------------------------


@dataclass
class JobRun:
    """A SageMaker job a pipeline step starts: the role it runs as and what it touches."""

    step: str
    role_arn: str
    image_uri: str
    inputs: list[str] = field(default_factory=list)  # S3 prefixes read
    outputs: list[str] = field(default_factory=list)  # S3 prefixes written
    log_group: str = ""


class _PipelineValues:
    """Evaluates a definition's `Get` / `Std:Join` values: parameters from their defaults (or
    `overrides`), step properties from earlier steps' outputs."""

    def __init__(self, definition: dict[str, Any], overrides: dict[str, Any]) -> None:
        self.parameters = {
            p["Name"]: overrides.get(p["Name"], p.get("DefaultValue"))
            for p in definition["Parameters"]
        }
        # The run's own id (SageMaker's `Execution.PipelineExecutionId`): the pipeline writes
        # its outputs under <OutputS3Uri>/<execution id>/ (7314a17).
        self.properties: dict[str, Any] = {
            "Execution.PipelineExecutionId": overrides.get(
                "Execution.PipelineExecutionId", "harness-execution"
            )
        }

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self(item) for item in value]
        if not isinstance(value, dict):
            return value
        if set(value) == {"Get"}:
            reference = value["Get"]
            if reference.startswith("Parameters."):
                found = self.parameters[reference.removeprefix("Parameters.")]
                if found is None:
                    raise ValueError(f"pipeline parameter {reference} has no default")
                return found
            if reference in self.properties:
                return self.properties[reference]
            raise ValueError(f"no value for {reference} (a step property not replayed)")
        if set(value) == {"Std:Join"}:
            join = value["Std:Join"]
            return join["On"].join(str(self(item)) for item in join["Values"])
        if set(value) == {"Std:JsonGet"}:
            return "<json value>"
        return {key: self(item) for key, item in value.items()}


def pipeline_calls(
    cloud: Cloud, pipeline: Resource, overrides: dict[str, Any] | None = None
) -> tuple[list[Call], list[JobRun]]:
    """What the pipeline's role calls to run every step (both branches of a condition), and
    the jobs it starts."""
    body = pipeline.properties["PipelineDefinition"]["PipelineDefinitionBody"]
    definition = json.loads(cloud.resolve(pipeline.stack, body))
    values = _PipelineValues(definition, overrides or {})
    calls: list[Call] = []
    jobs: list[JobRun] = []

    def steps(items: list[dict[str, Any]]) -> None:
        for step in items:
            name, kind, arguments = step["Name"], step["Type"], step.get("Arguments", {})
            job_name = PIPELINE_JOB.format(step=name.lower())
            if kind == "Processing":
                arguments = values(arguments)
                calls.extend(_job_calls("ProcessingJob", job_name, arguments, cloud))
                outputs = {
                    o["OutputName"]: o["S3Output"]["S3Uri"]
                    for o in arguments["ProcessingOutputConfig"]["Outputs"]
                }
                for output, uri in outputs.items():
                    key = f"Steps.{name}.ProcessingOutputConfig.Outputs['{output}'].S3Output.S3Uri"
                    values.properties[key] = uri
                jobs.append(
                    JobRun(
                        step=name,
                        role_arn=arguments["RoleArn"],
                        image_uri=arguments["AppSpecification"]["ImageUri"],
                        inputs=[
                            i["S3Input"]["S3Uri"] for i in arguments.get("ProcessingInputs", [])
                        ],
                        outputs=list(outputs.values()),
                        log_group="/aws/sagemaker/ProcessingJobs",
                    )
                )
            elif kind == "Training":
                arguments = values(arguments)
                calls.extend(_job_calls("TrainingJob", job_name, arguments, cloud))
                output = arguments["OutputDataConfig"]["S3OutputPath"].rstrip("/")
                values.properties[f"Steps.{name}.ModelArtifacts.S3ModelArtifacts"] = (
                    f"{output}/{job_name}/output/model.tar.gz"
                )
                jobs.append(
                    JobRun(
                        step=name,
                        role_arn=arguments["RoleArn"],
                        image_uri=arguments["AlgorithmSpecification"]["TrainingImage"],
                        inputs=[
                            c["DataSource"]["S3DataSource"]["S3Uri"]
                            for c in arguments.get("InputDataConfig", [])
                        ],
                        outputs=[output],
                        log_group="/aws/sagemaker/TrainingJobs",
                    )
                )
            elif kind == "RegisterModel":
                group = values(arguments["ModelPackageGroupName"])
                calls.append(
                    Call("sagemaker", "CreateModelPackage", {"ModelPackageGroupName": group},
                         cloud.region)
                )  # fmt: skip
            elif kind == "Condition":
                steps(arguments.get("IfSteps", []))
                steps(arguments.get("ElseSteps", []))
            else:
                raise ValueError(f"pipeline step {name}: no rule for {kind}")

    steps(definition["Steps"])
    return calls, jobs


def _job_calls(kind: str, job_name: str, arguments: dict[str, Any], cloud: Cloud) -> list[Call]:
    create = {f"{kind}Name": job_name, "RoleArn": arguments["RoleArn"]}
    return [
        Call("sagemaker", f"Create{kind}", create, cloud.region),
        Call("sagemaker", f"Describe{kind}", {f"{kind}Name": job_name}, cloud.region),
        Call("sagemaker", f"Stop{kind}", {f"{kind}Name": job_name}, cloud.region),
    ]


def job_accesses(cloud: Cloud, job: JobRun) -> list[Access]:
    """What a SageMaker job does as its role: pull its image from ECR, read its inputs, write
    its outputs (objects under each prefix, encrypted with the bucket's key) and its logs."""
    found: list[Access] = []
    why = f"SageMaker job of step {job.step}"
    host, _, repository = job.image_uri.partition("/")
    repository = repository.split("@")[0].split(":")[0]
    account, region = host.split(".")[0], host.split(".")[3]
    found.append(Access("ecr:GetAuthorizationToken", "*", f"{why}: image pull"))
    for action in (
        "ecr:BatchGetImage",
        "ecr:GetDownloadUrlForLayer",
        "ecr:BatchCheckLayerAvailability",
    ):
        found.append(
            Access(action, cloud.arn("ecr", f"repository/{repository}", region=region,
                                     account=account), f"{why}: image pull")
        )  # fmt: skip

    def objects(uri: str, write: bool) -> None:
        parsed = urlparse(uri)
        bucket_arn = f"arn:{cloud.partition}:s3:::{parsed.netloc}"
        key = parsed.path.lstrip("/").rstrip("/")
        key = key if key.endswith((".zip", ".gz", ".npz", ".json")) else f"{key}/part-0000"
        if write:
            found.append(Access("s3:PutObject", f"{bucket_arn}/{key}", f"{why}: writes {uri}"))
        else:
            found.append(Access("s3:ListBucket", bucket_arn, f"{why}: lists {uri}"))
            found.append(Access("s3:GetObject", f"{bucket_arn}/{key}", f"{why}: reads {uri}"))
        kms_key = encryption_key(cloud, bucket_arn)
        if kms_key:
            action = "kms:GenerateDataKey" if write else "kms:Decrypt"
            found.append(Access(action, kms_key, f"{why}: the key of {parsed.netloc}"))

    for uri in job.inputs:
        objects(uri, write=False)
    for uri in job.outputs:
        objects(uri, write=True)
    group = cloud.arn("logs", f"log-group:{job.log_group}:log-stream:{PIPELINE_JOB}")
    for action in ("logs:CreateLogStream", "logs:PutLogEvents"):
        found.append(Access(action, group, f"{why}: its logs"))
    return found


# --- CodeBuild -----------------------------------------------------------------------------------

_AWS_SHIM = 'aws() { "$IIOT_PYTHON" -c \'import json, sys; print(json.dumps(sys.argv[1:]))\' "$@" >> "$AWS_CALLS"; }'


def run_buildspec(
    cloud: Cloud, project: Resource, source: Path, overrides: dict[str, str], workdir: Path
) -> list[Call]:
    """Run the project's build phase in bash on a copy of `source`, with the project's and
    `overrides`' environment; returns the API calls its `aws` commands make."""
    spec = json.loads(project.properties["Source"]["BuildSpec"])
    variables = {
        v["Name"]: str(v["Value"])
        for v in cloud.resolve(project.stack, project.properties["Environment"].get("EnvironmentVariables", []))
    }  # fmt: skip
    shutil.copytree(source, workdir, dirs_exist_ok=True)
    calls_file = workdir / ".aws-calls"
    script = "\n".join(["set -euo pipefail", _AWS_SHIM, *spec["phases"]["build"]["commands"]])
    python_dir = str(Path(sys.executable).parent)
    env = {
        "PATH": f"{python_dir}:{os.environ['PATH']}",
        "HOME": str(workdir),
        "IIOT_PYTHON": sys.executable,
        "AWS_CALLS": str(calls_file),
        **variables,
        **overrides,
    }
    subprocess.run(["bash", "-c", script], cwd=workdir, env=env, check=True)
    calls = []
    for line in calls_file.read_text().splitlines():
        calls.append(_cli_call(json.loads(line), workdir, cloud))
    return calls


def _cli_call(argv: list[str], workdir: Path, cloud: Cloud) -> Call:
    """The API call an AWS CLI command makes (the few the project's buildspecs use)."""
    if argv[:2] == ["s3", "cp"] and all(a.startswith("s3://") for a in argv[2:4]):
        source, target = (urlparse(a) for a in argv[2:4])
        params = {
            "Bucket": target.netloc,
            "Key": target.path.lstrip("/"),
            "CopySource": {"Bucket": source.netloc, "Key": source.path.lstrip("/")},
        }
        return Call("s3", "CopyObject", params, cloud.region)
    if argv[:2] == ["greengrassv2", "create-component-version"]:
        recipe = argv[argv.index("--inline-recipe") + 1]
        text = (workdir / recipe.removeprefix("fileb://")).read_text()
        return Call("greengrassv2", "CreateComponentVersion", {"inlineRecipe": text}, cloud.region)
    raise ValueError(f"no rule for the AWS CLI command {argv}")


# --- EventBridge targets, IoT rule actions, custom resources, Greengrass --------------------------


def rule_target_accesses(cloud: Cloud, rule: Resource) -> list[tuple[str, Access]]:
    """(role ARN, access) for each target of the rule that EventBridge calls with a role."""
    found = []
    for target in cloud.resolve(rule.stack, rule.properties.get("Targets", [])):
        if "RoleArn" not in target:
            continue
        arn = target["Arn"]
        service = arn.split(":")[2]
        action = {
            "states": "states:StartExecution",
            "sagemaker": "sagemaker:StartPipelineExecution",
            "codebuild": "codebuild:StartBuild",
        }[service]
        found.append((target["RoleArn"], Access(action, arn, f"rule {rule.logical_id}")))
    return found


def topic_rule_accesses(cloud: Cloud, rule: Resource) -> list[tuple[str, Access]]:
    """(role ARN, access) for each action (and the error action) of an IoT topic rule."""
    payload = cloud.resolve(rule.stack, rule.properties["TopicRulePayload"])
    found = []
    why = f"IoT rule {rule.logical_id}"
    for action in [*payload["Actions"], payload.get("ErrorAction", {})]:
        for kind, props in action.items():
            role = props["RoleArn"]
            if kind == "Kinesis":
                stream = cloud.arn("kinesis", f"stream/{props['StreamName']}")
                found.append((role, Access("kinesis:PutRecord", stream, why)))
            elif kind == "CloudwatchMetric":
                found.append((role, Access("cloudwatch:PutMetricData", "*", why)))
            elif kind == "CloudwatchLogs":
                group = cloud.arn("logs", f"log-group:{props['LogGroupName']}:log-stream:x")
                for verb in ("logs:CreateLogStream", "logs:PutLogEvents"):
                    found.append((role, Access(verb, group, why)))
            elif kind == "DynamoDBv2":
                table = cloud.arn("dynamodb", f"table/{props['PutItem']['TableName']}")
                found.append((role, Access("dynamodb:PutItem", table, why)))
                key = encryption_key(cloud, table)
                if key is not None:  # DynamoDB reads the table's key with the caller's grant
                    found.append((role, Access("kms:Decrypt", key, f"{why} -> the table's key")))
            else:
                raise ValueError(f"{why}: no rule for the action {kind}")
    return found


def custom_resource_calls(cloud: Cloud, resource: Resource) -> tuple[str, list[Call]]:
    """The role of an AwsCustomResource's provider and the SDK calls it makes (create and
    update)."""
    token = cloud.resolve(resource.stack, resource.properties["ServiceToken"])
    (function,) = [
        f for f in cloud.resources("AWS::Lambda::Function")
        if f.stack == resource.stack and cloud.attributes(f)["Arn"] == token
    ]  # fmt: skip
    role = cloud.resolve(function.stack, function.properties["Role"])
    calls = []
    for phase in ("Create", "Update"):
        if phase not in resource.properties:
            continue
        sdk = json.loads(cloud.resolve(resource.stack, resource.properties[phase]))
        service = _botocore_service(sdk["service"])
        calls.append(Call(service, _pascal(sdk["action"]), sdk.get("parameters", {}), cloud.region))
    return role, calls


def _botocore_service(sdk_name: str) -> str:
    """botocore's name of a service as the JavaScript SDK names it (`RedshiftServerless`)."""
    import botocore.session

    wanted = sdk_name.lower().replace("-", "")
    for name in botocore.session.get_session().get_available_services():
        if name.replace("-", "") == wanted:
            return name
    raise ValueError(f"no botocore service is {sdk_name}")


def artifact_accesses(cloud: Cloud, recipe: dict[str, Any], why: str) -> list[Access]:
    """What the Greengrass nucleus does with the token-exchange role to install `recipe`:
    download each artifact (and decrypt it with the bucket's key)."""
    found = []
    for manifest in recipe.get("Manifests", []):
        for artifact in manifest.get("Artifacts", []):
            url = urlparse(artifact["URI"])
            if url.scheme != "s3":
                continue
            bucket_arn = f"arn:{cloud.partition}:s3:::{url.netloc}"
            found.append(Access("s3:GetObject", f"{bucket_arn}{url.path}", why))
            key = encryption_key(cloud, bucket_arn)
            if key:
                found.append(Access("kms:Decrypt", key, f"{why}: the key of {url.netloc}"))
    return found
