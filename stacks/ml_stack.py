"""Machine learning: the model registry (a SageMaker model package group), the training
pipeline from ml_pipeline/ with its role and container image (built during deployment from
ml_pipeline/container/Dockerfile), and the flow that turns an
approved model into a new com.iiot.FailureModel component version for the gateways.

Flow: the pipeline trains, evaluates, registers the model (PendingManualApproval) and compiles
it for the gateways (TL2cgen, x86_64 + aarch64: `<OutputS3Uri>/component/failure_model.zip`).
Approving the model package in the registry starts a state machine that describes the package,
publishes the compiled zip as a FailureModel component version `1.0.<package version>` with a
CodeBuild job (recipe from edge_components/com.iiot.FailureModel/recipe.yaml), and notifies the
ML topic. Deploying it to the gateways is a reviewed change: set the environment's model
version (CDK context `<env>:edge_model_version`, config/environments.py) and `cdk deploy` the
edge stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_cdk import ArnFormat, Duration, Fn, RemovalPolicy, Stack
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_sagemaker as sagemaker
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from config.environments import Environment
from stacks import artifacts
from stacks.artifacts import ROOT
from stacks.constructs.access import acknowledge, bucket_name, grant_bucket
from stacks.constructs.deploy_time_image import DeployTimeImage, stage_context
from stacks.constructs.python_bundle import project_requirements
from stacks.constructs.python_function import log_retention

MODEL_COMPONENT = "com.iiot.FailureModel"
ML_PYTHON = "3.11"  # the image's interpreter (ml_pipeline/container/Dockerfile)
PUBLISHED_PREFIX = f"greengrass/{MODEL_COMPONENT}/"

# CodeBuild: copy the pipeline's compiled zip next to the other artifacts and register the
# component version with the recipe from the repository.
PUBLISH_BUILDSPEC: dict[str, Any] = {
    "version": "0.2",
    "phases": {
        "install": {"commands": ["pip3 install --quiet pyyaml"]},
        "build": {
            "commands": [
                'OUTPUT="${MODEL_DATA_URL%%/model/*}"',
                'VERSION="1.0.${MODEL_PACKAGE_VERSION}"',
                'TARGET="s3://${ARTIFACT_BUCKET}/'
                + PUBLISHED_PREFIX
                + '${VERSION}/failure_model.zip"',
                'aws s3 cp "${OUTPUT}/component/failure_model.zip" "${TARGET}"',
                "python3 - <<'PY'\n"
                "import json, os, yaml\n"
                "recipe = yaml.safe_load(open('recipe.yaml'))\n"
                "recipe['ComponentVersion'] = os.environ['VERSION']\n"
                "recipe['ComponentConfiguration']['DefaultConfiguration']['modelVersion'] = "
                "os.environ['MODEL_PACKAGE_VERSION']\n"
                "for manifest in recipe['Manifests']:\n"
                "    manifest['Artifacts'] = [{'URI': os.environ['TARGET'], 'Unarchive': 'ZIP'}]\n"
                "json.dump(recipe, open('recipe.json', 'w'))\n"
                "PY",
                "aws greengrassv2 create-component-version --inline-recipe fileb://recipe.json",
            ]
        },
    },
}


def ml_image_context() -> Path:
    """The pipeline image's build context: ml_pipeline/container/Dockerfile, the project's
    packages (the pipeline trains on edge_runtime's feature definition) and the core + `ml`
    dependencies for x86_64 Linux, Python 3.11."""
    packages = ("iiot", "edge_runtime", "ml_pipeline", "config")
    return stage_context(
        "ml",
        dockerfile=ROOT / "ml_pipeline" / "container" / "Dockerfile",
        copies=[(ROOT / package, "") for package in packages],
        requirements=project_requirements("ml"),
        architecture="x86_64",
        python_version=ML_PYTHON,
    )


class MlStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        env_config: Environment,
        lake_key: kms.IKey,
        token_exchange_role: iam.IRole,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        prefix = env_config.prefix
        self.group_name = f"{prefix}-failure-model"
        self.model_group = sagemaker.CfnModelPackageGroup(
            self,
            "ModelPackageGroup",
            model_package_group_name=self.group_name,
            model_package_group_description="Failure-prediction models for the gateways",
        )
        self.image = DeployTimeImage(
            self,
            "PlatformImage",
            repository_name=f"{prefix}-ml",
            context=ml_image_context(),
            architecture="x86_64",
            keep_images=env_config.keep_data_on_delete,
        )
        self.image_repository = self.image.repository
        self.execution_role = self._execution_role(prefix, lake_key)
        self.pipeline = self._pipeline(artifacts.ML_PIPELINE.require().read_text(), env_config)
        self._publish_flow(env_config, lake_key)
        # Gateways download published models with the token-exchange role.
        model_access = iam.Policy(
            self,
            "GatewayModelAccess",
            roles=[token_exchange_role],
            statements=[
                iam.PolicyStatement(
                    actions=["s3:GetObject"],
                    resources=[
                        self.format_arn(
                            service="s3",
                            region="",
                            account="",
                            resource=f"{bucket_name(prefix, 'artifacts')}/{PUBLISHED_PREFIX}*",
                        )
                    ],
                ),
                iam.PolicyStatement(actions=["kms:Decrypt"], resources=[lake_key.key_arn]),
            ],
        )
        acknowledge(
            model_access,
            "Gateways fetch the FailureModel versions published after each approval; their "
            "keys (one folder per version) exist only at run time. Read-only, one prefix.",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::"
            f"{prefix}-artifacts-<AWS::AccountId>-<AWS::Region>/{PUBLISHED_PREFIX}*]",
        )

    def _execution_role(self, prefix: str, lake_key: kms.IKey) -> iam.Role:
        role = iam.Role(
            self,
            "PipelineExecutionRole",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description="SageMaker pipeline jobs: read silver, write ml/ artifacts, register",
        )
        grant_bucket(
            role, role, prefix=prefix, layer="lake", path="silver/", write=False, key=lake_key,
            why="the features job reads the silver readings",
        )  # fmt: skip
        grant_bucket(
            role, role, prefix=prefix, layer="artifacts", path="ml/", write=True, key=lake_key,
            why="pipeline jobs write features, models, evaluations and compiled components",
        )  # fmt: skip
        self.image_repository.grant_pull(role)
        model_packages = self.format_arn(
            service="sagemaker", resource="model-package", resource_name=f"{self.group_name}/*"
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["sagemaker:CreateModelPackage", "sagemaker:DescribeModelPackage"],
                resources=[
                    model_packages,
                    self.format_arn(
                        service="sagemaker",
                        resource="model-package-group",
                        resource_name=self.group_name,
                    ),
                ],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[
                    self.format_arn(
                        service="logs",
                        resource="log-group",
                        resource_name="/aws/sagemaker/*",
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                ],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["cloudwatch:PutMetricData", "ecr:GetAuthorizationToken"],
                resources=["*"],
            )
        )
        acknowledge(
            role,
            "ecr:GetAuthorizationToken and cloudwatch:PutMetricData (job metrics) have no "
            "resource-level permissions.",
            "AwsSolutions-IAM5[Resource::*]",
        )
        acknowledge(
            role,
            "SageMaker names each job's log group and stream at run time under /aws/sagemaker/.",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:<AWS::Region>:"
            "<AWS::AccountId>:log-group:/aws/sagemaker/*]",
        )
        acknowledge(
            role,
            "Registering creates numbered model package versions in this one group.",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:"
            f"<AWS::AccountId>:model-package/{self.group_name}/*]",
        )
        return role

    def _pipeline(self, definition: str, env_config: Environment) -> sagemaker.CfnPipeline:
        pipeline = sagemaker.CfnPipeline(
            self,
            "TrainingPipeline",
            pipeline_name=f"{env_config.prefix}-failure-model",
            pipeline_description="features -> train -> evaluate -> register -> compile",
            role_arn=self.execution_role.role_arn,
            pipeline_definition={
                "PipelineDefinitionBody": Fn.sub(
                    definition,
                    {
                        name: value
                        for name, value in {
                            "SageMakerExecutionRoleArn": self.execution_role.role_arn,
                            "SageMakerExecutionRoleName": self.execution_role.role_name,
                            "PlatformImageUri": self.image.image_uri,
                        }.items()
                        if f"${{{name}}}" in definition
                    },
                )
            },
        )
        self.execution_role.grant_pass_role(self.execution_role)
        return pipeline

    def _publish_flow(self, env_config: Environment, lake_key: kms.IKey) -> None:
        prefix = env_config.prefix
        key = kms.Key(
            self,
            "MlKey",
            alias=f"alias/{prefix}-ml",
            description="Encrypts the ML notifications topic",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.topic = sns.Topic(
            self,
            "ModelTopic",
            topic_name=f"{prefix}-ml-models",
            display_name="IIoT failure models published for the gateways",
            master_key=key,
            enforce_ssl=True,
        )
        recipe = s3_assets.Asset(
            self, "ModelRecipe", path=str(artifacts.COMPONENTS[MODEL_COMPONENT].require())
        )
        project = codebuild.Project(
            self,
            "PublishModel",
            description="Publishes an approved, compiled model as a FailureModel component",
            source=codebuild.Source.s3(bucket=recipe.bucket, path=recipe.s3_object_key),
            build_spec=codebuild.BuildSpec.from_object(PUBLISH_BUILDSPEC),
            environment=codebuild.BuildEnvironment(
                build_image=codebuild.LinuxBuildImage.STANDARD_7_0,
                compute_type=codebuild.ComputeType.SMALL,
            ),
            environment_variables={
                "ARTIFACT_BUCKET": codebuild.BuildEnvironmentVariable(
                    value=bucket_name(prefix, "artifacts")
                )
            },
            encryption_key=lake_key,
            timeout=Duration.minutes(15),
            logging=codebuild.LoggingOptions(
                cloud_watch=codebuild.CloudWatchLoggingOptions(
                    log_group=logs.LogGroup(
                        self,
                        "PublishLogs",
                        retention=log_retention(env_config.log_retention_days),
                        removal_policy=RemovalPolicy.DESTROY,
                    )
                )
            ),
        )
        assert project.role is not None
        grant_bucket(
            project.role, project.role, prefix=prefix, layer="artifacts", path="ml/",
            write=False, key=lake_key, why="the build reads the pipeline's compiled zip",
        )  # fmt: skip
        grant_bucket(
            project.role, project.role, prefix=prefix, layer="artifacts",
            path=PUBLISHED_PREFIX, write=True, key=lake_key,
            why="the build stores each published model version",
        )  # fmt: skip
        project.add_to_role_policy(
            iam.PolicyStatement(
                actions=["greengrass:CreateComponentVersion"],
                resources=[
                    self.format_arn(
                        service="greengrass",
                        resource="components",
                        resource_name=MODEL_COMPONENT,
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    ),
                    self.format_arn(
                        service="greengrass",
                        resource="components",
                        resource_name=f"{MODEL_COMPONENT}:versions:*",
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    ),
                ],
            )
        )
        project_id = self.resolve(self.get_logical_id(project.node.default_child))  # type: ignore[arg-type]
        acknowledge(
            project,
            "CDK's CodeBuild grants: reading the source zip from the CDK asset bucket "
            "(s3:GetObject*/GetBucket*/List*), the build's own log group and report groups "
            "(named per build at run time), and envelope encryption with the lake key.",
            "AwsSolutions-IAM5[Action::s3:GetObject*]",
            "AwsSolutions-IAM5[Action::s3:GetBucket*]",
            "AwsSolutions-IAM5[Action::s3:List*]",
            "AwsSolutions-IAM5[Action::kms:GenerateDataKey*]",
            "AwsSolutions-IAM5[Action::kms:ReEncrypt*]",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:<AWS::Region>:"
            f"<AWS::AccountId>:log-group:/aws/codebuild/<{project_id}>:*]",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:codebuild:<AWS::Region>:"
            f"<AWS::AccountId>:report-group/<{project_id}>-*]",
        )
        acknowledge(
            project,
            "Each approval publishes a new, numbered version of this one component; CodeBuild "
            "also names its log streams and report groups per build at run time.",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:greengrass:<AWS::Region>:"
            f"<AWS::AccountId>:components:{MODEL_COMPONENT}:versions:*]",
        )
        describe = tasks.CallAwsService(
            self,
            "DescribeModelPackage",
            service="sagemaker",
            action="describeModelPackage",
            parameters={"ModelPackageName": sfn.JsonPath.string_at("$.detail.ModelPackageArn")},
            iam_resources=[
                self.format_arn(
                    service="sagemaker",
                    resource="model-package",
                    resource_name=f"{self.group_name}/*",
                )
            ],
            result_selector={
                "modelDataUrl": sfn.JsonPath.string_at(
                    "$.InferenceSpecification.Containers[0].ModelDataUrl"
                ),
                "version": sfn.JsonPath.number_at("$.ModelPackageVersion"),
            },
            result_path="$.model",
        )
        publish = tasks.CodeBuildStartBuild(
            self,
            "PublishComponent",
            project=project,
            integration_pattern=sfn.IntegrationPattern.RUN_JOB,
            environment_variables_override={
                "MODEL_DATA_URL": codebuild.BuildEnvironmentVariable(
                    value=sfn.JsonPath.string_at("$.model.modelDataUrl")
                ),
                "MODEL_PACKAGE_VERSION": codebuild.BuildEnvironmentVariable(
                    value=sfn.JsonPath.format("{}", sfn.JsonPath.string_at("$.model.version"))
                ),
            },
            result_path=sfn.JsonPath.DISCARD,
        )
        notify = tasks.SnsPublish(
            self,
            "Notify",
            topic=self.topic,
            subject="FailureModel published",
            message=sfn.TaskInput.from_text(
                sfn.JsonPath.format(
                    f"{MODEL_COMPONENT} 1.0.{{}} is published. Deploy it to the gateways: "
                    f"npx cdk deploy -c {env_config.name}:edge_model_version=1.0.{{}} "
                    f"{prefix}-edge",
                    sfn.JsonPath.string_at("$.model.version"),
                    sfn.JsonPath.string_at("$.model.version"),
                )
            ),
        )
        flow_logs = logs.LogGroup(
            self,
            "PublishFlowLogs",
            retention=log_retention(env_config.log_retention_days),
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.publish_flow = sfn.StateMachine(
            self,
            "PublishFlow",
            definition_body=sfn.DefinitionBody.from_chainable(describe.next(publish).next(notify)),
            timeout=Duration.hours(1),
            tracing_enabled=True,
            logs=sfn.LogOptions(destination=flow_logs, level=sfn.LogLevel.ALL),
        )
        acknowledge(
            self.publish_flow,
            "X-Ray and CloudWatch Logs vended-log delivery actions have no resource-level "
            "permissions; the .sync CodeBuild task manages its own EventBridge rule.",
            "AwsSolutions-IAM5[Resource::*]",
        )
        acknowledge(
            self.publish_flow,
            "The approved model package is a numbered version in this one group, known only "
            "from the approval event.",
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:"
            f"<AWS::AccountId>:model-package/{self.group_name}/*]",
        )
        events.Rule(
            self,
            "OnApproval",
            description="An approved failure model starts the publish flow",
            event_pattern=events.EventPattern(
                source=["aws.sagemaker"],
                detail_type=["SageMaker Model Package State Change"],
                detail={
                    "ModelPackageGroupName": [self.group_name],
                    "ModelApprovalStatus": ["Approved"],
                },
            ),
            targets=[targets.SfnStateMachine(self.publish_flow)],
        )
