"""Greengrass v2 on the gateways: a component version per component folder and one deployment
per factory thing group, configured from the environment's metric catalog (`metrics_catalog`).

com.iiot.FailureModel carries the trained model, which exists only after the ML pipeline ran
and a model was approved; the ML stack's flow publishes its versions. A factory deployment
includes the predictor and the model once the environment names the model version to run
(`edge_model_version`, CDK context `<env>:edge_model_version`); until then it runs the buffer
alone.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from aws_cdk import Stack
from aws_cdk import aws_greengrassv2 as greengrass
from aws_cdk import aws_iam as iam
from constructs import Construct

from config.environments import Environment
from iiot.catalog import MetricCatalog, load_catalog
from stacks import artifacts
from stacks.constructs.greengrass_component import GreengrassComponent

SENSOR_BUFFER = "com.iiot.SensorBuffer"
FAILURE_PREDICTOR = "com.iiot.FailurePredictor"
FAILURE_MODEL = "com.iiot.FailureModel"
# Components built from edge_components/<name>/src by edge_runtime.build (what `gdk component
# build` runs too).
BUILT_HERE = (SENSOR_BUFFER, FAILURE_PREDICTOR)
THING = "{iot:thingName}"
# AWS-provided component that relays the buffer's local status topic to IoT Core, where a rule
# turns the health snapshots into CloudWatch metrics (iot stack).
MQTT_BRIDGE = "aws.greengrass.clientdevices.mqtt.Bridge"
MQTT_BRIDGE_VERSION = "2.3.0"


def _with_factory_topics(access_control: Any, factory: str) -> Any:
    """Every `{iot:thingName}` topic also for the factory id the deployment sets."""
    result = copy.deepcopy(access_control)
    for policies in result.values():
        for policy in policies.values():
            resources = policy.get("resources", [])
            extra = [r.replace(THING, factory) for r in resources if THING in r]
            policy["resources"] = resources + [r for r in extra if r not in resources]
    return result


def factory_configuration(
    default_configuration: Mapping[str, Any], factory: str, catalog: MetricCatalog
) -> dict[str, Any]:
    """What a factory's deployment merges into a component's default configuration."""
    merge: dict[str, Any] = {}
    if "factoryId" in default_configuration:
        merge["factoryId"] = factory
    if "thresholds" in default_configuration:
        merge["thresholds"] = catalog.edge_threshold_config()
    if "accessControl" in default_configuration:
        merge["accessControl"] = _with_factory_topics(
            default_configuration["accessControl"], factory
        )
    return merge


class EdgeStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        env_config: Environment,
        thing_group_arns: Mapping[str, str],
        token_exchange_role: iam.IRole,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        catalog = load_catalog(env_config.metrics_catalog)
        self.components: dict[str, GreengrassComponent] = {}
        for name in BUILT_HERE:
            component_dir = artifacts.COMPONENTS[name].require().parent
            self.components[name] = GreengrassComponent(
                self, name.rsplit(".", 1)[-1], component_dir=component_dir
            )
        # The gateways fetch artifacts with the token-exchange role: exactly these objects.
        iam.Policy(
            self,
            "ArtifactAccess",
            roles=[token_exchange_role],
            statements=[
                iam.PolicyStatement(
                    actions=["s3:GetObject"],
                    resources=[c.object_arn for c in self.components.values()],
                )
            ],
        )
        self.deployments: dict[str, greengrass.CfnDeployment] = {}
        deployed = [SENSOR_BUFFER]
        if env_config.edge_model_version:
            deployed.append(FAILURE_PREDICTOR)
        rollout = env_config.edge_rollout
        for factory, group_arn in thing_group_arns.items():
            specs: dict[str, Any] = {
                name: greengrass.CfnDeployment.ComponentDeploymentSpecificationProperty(
                    component_version=self.components[name].version,
                    configuration_update=greengrass.CfnDeployment.ComponentConfigurationUpdateProperty(
                        merge=json.dumps(
                            factory_configuration(
                                self.components[name].default_configuration, factory, catalog
                            ),
                            sort_keys=True,
                        )
                    ),
                )
                for name in deployed
            }
            specs[MQTT_BRIDGE] = greengrass.CfnDeployment.ComponentDeploymentSpecificationProperty(
                component_version=MQTT_BRIDGE_VERSION,
                configuration_update=greengrass.CfnDeployment.ComponentConfigurationUpdateProperty(
                    merge=json.dumps(
                        {
                            "mqttTopicMapping": {
                                "GatewayStatus": {
                                    "topic": f"factory/{factory}/gateway/status",
                                    "source": "Pubsub",
                                    "target": "IotCore",
                                }
                            }
                        }
                    )
                ),
            )
            if env_config.edge_model_version:
                specs[FAILURE_MODEL] = (
                    greengrass.CfnDeployment.ComponentDeploymentSpecificationProperty(
                        component_version=env_config.edge_model_version
                    )
                )
            self.deployments[factory] = greengrass.CfnDeployment(
                self,
                f"Deployment-{factory}",
                target_arn=group_arn,
                deployment_name=f"{env_config.prefix}-{factory}",
                components=specs,
                deployment_policies=greengrass.CfnDeployment.DeploymentPoliciesProperty(
                    failure_handling_policy="ROLLBACK",
                    component_update_policy=greengrass.CfnDeployment.DeploymentComponentUpdatePolicyProperty(
                        action="NOTIFY_COMPONENTS", timeout_in_seconds=60
                    ),
                    configuration_validation_policy=greengrass.CfnDeployment.DeploymentConfigurationValidationPolicyProperty(
                        timeout_in_seconds=60
                    ),
                ),
                iot_job_configuration=greengrass.CfnDeployment.DeploymentIoTJobConfigurationProperty(
                    job_executions_rollout_config=greengrass.CfnDeployment.IoTJobExecutionsRolloutConfigProperty(
                        maximum_per_minute=rollout.max_per_minute
                    ),
                    abort_config=greengrass.CfnDeployment.IoTJobAbortConfigProperty(
                        criteria_list=[
                            greengrass.CfnDeployment.IoTJobAbortCriteriaProperty(
                                action="CANCEL",
                                failure_type="FAILED",
                                min_number_of_executed_things=rollout.min_executed_things_before_abort,
                                threshold_percentage=rollout.failure_threshold_percent,
                            )
                        ]
                    ),
                    timeout_config=greengrass.CfnDeployment.IoTJobTimeoutConfigProperty(
                        in_progress_timeout_in_minutes=max(1, rollout.timeout_seconds // 60)
                    ),
                ),
            )
            for name in deployed:
                self.deployments[factory].add_resource_dependency(
                    self.components[name].component_version
                )
