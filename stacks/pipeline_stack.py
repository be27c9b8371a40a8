"""The delivery pipeline (CDK Pipelines): source -> synth and test -> dev -> staging -> manual
approval -> prod, each environment smoke-tested after its deployment.

* **Source**: the GitHub repository through a CodeConnections connection (config/pipeline.py:
  `pipeline:connection_arn`, `pipeline:repository`, `pipeline:branch`).
* **Synth and test**: the README's test command (`make test`: ruff, mypy, the whole suite)
  and then `make synth`, in one CodeBuild job on the standard image (root, so the bootstrap
  installs the Debian packages the tests need). The component wheels (`IIOT_WHEEL_CACHE`),
  pip's and uv's caches and PyFlink's environment (`.venv-flink`) are kept in the build's S3
  cache between runs, so a run downloads only what a changed pin needs.
* **dev, staging, prod**: each the same `cdk.Stage` `iiot-<env>` the direct `cdk deploy`
  builds (stacks/environment_stacks.py), deployed to its environment's pinned account and
  region, with the toolchain account trusted to assume its smoke role. A manual approval
  comes before prod.
* **Smoke tests** after each environment: `iiot smoke --env <env>` assuming the environment's
  `iiot-<env>-smoke` role (local_platform/smoke.py), every step: InfluxDB, private to the
  environment's VPC, is counted through the smoke stack's probe Lambda in that VPC.

The pipeline's artifacts bucket is KMS-encrypted with a rotating key that the target accounts'
CDK deploy roles may use (cross-account keys), refuses plain HTTP and logs its access.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import App, Aws, Duration, RemovalPolicy, Stack, pipelines
from aws_cdk import Environment as CdkEnvironment
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from config.environments import (
    ArtifactPins,
    ConfigError,
    Environment,
    LayerLifecycle,
    artifact_pins,
    environments,
)
from config.pipeline import PipelineSettings, pipeline_settings
from stacks.constructs.access import acknowledge
from stacks.constructs.secure_bucket import SecureBucket
from stacks.environment_stacks import EnvironmentStacks, build_environment
from stacks.smoke_stack import smoke_role_name

# The README's test command, then the synthesis the deployments read (make synth writes
# cdk.out). Both run scripts/bootstrap.sh first.
TEST_COMMAND = "make test"
SYNTH_COMMAND = "make synth"
PROMOTION = ("dev", "staging", "prod")
APPROVAL_BEFORE = "prod"
# What the synth job keeps between runs (paths relative to the checkout, or absolute).
CACHE_PATHS = (
    "/root/.cache/iiot-platform/wheels/**/*",
    "/root/.cache/pip/**/*",
    "/root/.cache/uv/**/*",
    ".venv-flink/**/*",
    "node_modules/**/*",
)
# Only what `iiot smoke` needs: boto3, paho-mqtt and deltalake are in these extras.
SMOKE_INSTALL = 'pip install --quiet -c constraints.txt -e ".[sim,lambdas,spark]"'


def smoke_command(env_config: Environment) -> str:
    """The smoke step's command in the toolchain account: assume the environment's smoke role
    and run every check. The InfluxDB instance is private to the environment's VPC: the
    influx step counts the batch through the environment's probe Lambda (the smoke stack's
    `SmokeInfluxProbe`), which the smoke role may invoke."""
    role = f"arn:aws:iam::{env_config.account}:role/{smoke_role_name(env_config)}"
    return (
        f"iiot smoke --env {env_config.name} --region {env_config.region} --role-arn {role} "
        "--influx-via probe"
    )


class PipelineStack(Stack):
    """The toolchain account's pipeline (module doc). `stages` are the environments' stacks as
    the pipeline deploys them, by name."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: PipelineSettings,
        environments: dict[str, Environment],
        pins: ArtifactPins,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        unpinned = [name for name in PROMOTION if not environments[name].pinned]
        if unpinned:
            raise ConfigError(
                f"the delivery pipeline deploys every environment to its own account: give "
                f"{', '.join(f'{n}:account and {n}:region' for n in unpinned)} as CDK context"
            )
        key = kms.Key(
            self,
            "ArtifactsKey",
            alias="iiot-pipeline-artifacts",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY,
            description="Encrypts the delivery pipeline's artifacts (shared with the target "
            "accounts' CDK deploy roles)",
        )
        logs = SecureBucket(
            self,
            "ArtifactsLogs",
            bucket_name=f"iiot-pipeline-logs-{Aws.ACCOUNT_ID}-{Aws.REGION}",
            lifecycle={"": LayerLifecycle(expire_after_days=90)},
            keep_on_delete=False,
        ).bucket
        acknowledge(
            logs,
            "This is the access-log target of the artifacts bucket; logging its own access "
            "into itself would loop.",
            "AwsSolutions-S1",
        )
        self.artifacts = SecureBucket(
            self,
            "Artifacts",
            bucket_name=f"iiot-pipeline-artifacts-{Aws.ACCOUNT_ID}-{Aws.REGION}",
            lifecycle={"": LayerLifecycle(expire_after_days=90)},
            keep_on_delete=False,
            key=key,
            access_logs=logs,
        ).bucket

        source = pipelines.CodePipelineSource.connection(
            settings.repository,
            settings.branch,
            connection_arn=settings.connection_arn,
            trigger_on_push=True,
        )
        self.synth_step = pipelines.CodeBuildStep(
            "SynthAndTest",
            input=source,
            commands=[TEST_COMMAND, SYNTH_COMMAND],
            primary_output_directory="cdk.out",
            env={
                "IIOT_WHEEL_CACHE": "/root/.cache/iiot-platform/wheels",
                "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
                "CDK_DISABLE_CLI_TELEMETRY": "true",
            },
            partial_build_spec=codebuild.BuildSpec.from_object(
                {"cache": {"paths": list(CACHE_PATHS)}}
            ),
            cache=codebuild.Cache.bucket(self.artifacts, prefix="synth-cache"),
            timeout=Duration.hours(2),
        )
        self.pipeline = pipelines.CodePipeline(
            self,
            "Pipeline",
            pipeline_name=settings.name,
            synth=self.synth_step,
            artifact_bucket=self.artifacts,
            code_build_defaults=pipelines.CodeBuildOptions(
                build_environment=codebuild.BuildEnvironment(
                    build_image=codebuild.LinuxBuildImage.STANDARD_7_0,
                    compute_type=codebuild.ComputeType.LARGE,
                    privileged=False,
                ),
            ),
            # The target accounts' CDK roles read the artifacts (bootstrapped with --trust).
            cross_account_keys=True,
            enable_key_rotation=True,
            publish_assets_in_parallel=False,
        )
        self.stages: dict[str, EnvironmentStacks] = {}
        self.smoke_steps: dict[str, pipelines.CodeBuildStep] = {}
        for name in PROMOTION:
            env_config = environments[name]
            built = build_environment(self, env_config, pins=pins, toolchain_account=self.account)
            self.stages[name] = built
            smoke = pipelines.CodeBuildStep(
                f"Smoke-{name}",
                # The checkout (the smoke tests are the project's own command), not cdk.out.
                input=source,
                commands=[SMOKE_INSTALL, smoke_command(env_config)],
                role_policy_statements=[
                    iam.PolicyStatement(
                        actions=["sts:AssumeRole"],
                        resources=[
                            f"arn:aws:iam::{env_config.account}:role/{smoke_role_name(env_config)}"
                        ],
                    )
                ],
                timeout=Duration.minutes(90),
            )
            self.smoke_steps[name] = smoke
            pre = (
                [
                    pipelines.ManualApprovalStep(
                        f"Promote-to-{name}",
                        comment=f"staging passed its smoke tests; deploy {name}?",
                    )
                ]
                if name == APPROVAL_BEFORE
                else []
            )
            self.pipeline.add_stage(built.stage, pre=pre, post=[smoke])
        self.pipeline.build_pipeline()
        self._acknowledge_generated_roles()

    def _acknowledge_generated_roles(self) -> None:
        """The wildcards of the roles CDK Pipelines generates, each with its reason."""
        bucket = self.get_logical_id(self.artifacts.node.default_child)  # type: ignore[arg-type]
        acknowledge(
            self.pipeline,
            "CDK Pipelines' artifact grants: every action reads and writes the artifacts of "
            "its execution, whose keys are made per run, in the pipeline's own bucket with its "
            "own key (S3 and KMS action groups as CDK's grants name them).",
            *(
                f"AwsSolutions-IAM5[Action::{action}]"
                for action in (
                    "s3:Abort*",
                    "s3:DeleteObject*",
                    "s3:GetBucket*",
                    "s3:GetObject*",
                    "s3:List*",
                    "kms:GenerateDataKey*",
                    "kms:ReEncrypt*",
                )
            ),
            f"AwsSolutions-IAM5[Resource::<{bucket}.Arn>/*]",
        )
        projects = [
            self.synth_step.project,
            *(step.project for step in self.smoke_steps.values()),
            self.pipeline.self_mutation_project,
        ]
        for project in projects:
            logical = self.get_logical_id(project.node.default_child)  # type: ignore[arg-type]
            acknowledge(
                project,
                "CodeBuild names each build's log stream and report at run time under its "
                "project's log group and report-group prefix.",
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:"
                f"{self.region}:{self.account}:log-group:/aws/codebuild/<{logical}>:*]",
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:codebuild:"
                f"{self.region}:{self.account}:report-group/<{logical}>-*]",
            )
        acknowledge(
            self.pipeline,
            "CDK Pipelines' asset publishing projects are created and named by CDK per asset, "
            "so their role covers the projects' log groups and report groups.",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:"
            f"{self.region}:{self.account}:log-group:/aws/codebuild/*]",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:codebuild:"
            f"{self.region}:{self.account}:report-group/*]",
        )
        acknowledge(
            self.pipeline,
            "The asset publishing actions start and poll the per-asset CodeBuild projects CDK "
            "generates; CodePipeline's CodeBuild action is granted that on any project.",
            "AwsSolutions-IAM5[Resource::*]",
        )
        acknowledge(
            self.pipeline.self_mutation_project,
            "Self-mutation runs `cdk deploy` of this stack: it reads any stack's outputs and "
            "assumes the account's CDK bootstrap roles (cdk-hnb659fds-*), whose names the "
            "bootstrap chooses.",
            "AwsSolutions-IAM5[Resource::*]",
            f"AwsSolutions-IAM5[Resource::arn:*:iam::{self.account}:role/*]",
        )


def build_pipeline(app: App) -> PipelineStack | None:
    """The pipeline stack `iiot-pipeline` in the toolchain account, when the app's context
    gives its settings (config/pipeline.py); None otherwise. The app's cdk-nag checks
    (build_app) cover it."""
    context = app.node.get_all_context()
    settings = pipeline_settings(context)
    if settings is None:
        return None
    return PipelineStack(
        app,
        settings.name,
        settings=settings,
        environments=environments(context),
        pins=artifact_pins(context),
        env=CdkEnvironment(account=settings.account, region=settings.region),
        description="IIoT platform: delivery pipeline (source, synth and test, dev, staging, "
        "approval, prod, smoke tests)",
    )
