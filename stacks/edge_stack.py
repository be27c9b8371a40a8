"""Greengrass v2 on the gateways: a component version per component folder and one deployment
per factory thing group, configured from the environment's metric catalog (`metrics_catalog`).

com.iiot.FailureModel carries the trained model, which exists only after the ML pipeline ran
and a model was approved; the ML stack's flow publishes its versions. A factory deployment
includes the predictor and the model once the environment names the model version to run
(`edge_model_version`, CDK context `<env>:edge_model_version`); until then it runs the buffer
alone. com.iiot.AnomalyModel, the predictor's multivariate anomaly detector, is published the
same way from its own model package group and deployed pinned with it once the environment names
its version (`edge_anomaly_model_version`, CDK context `<env>:edge_anomaly_model_version`, only
with a failure model); until then the deployments carry no anomaly model.

Each environment publishes its own component names (`com.iiot.<env>.SensorBuffer`: component
versions are account-wide in a region) and configures its own IoT Core topics, one set per
factory (`iiot/<env>/factory/<factory>/...`, the only ones the gateway's IoT policy lets it
publish): the components' defaults stay the local names, which the local platform runs with,
and the deployments set the environment's.

The sensor path: every factory deployment also runs AWS's client-device components (client
device auth with the factory's device group, the Moquette broker, the IP detector) and the
MQTT bridge, which hands `factory/<factory>/readings` from the local broker to the buffer
(`ClientDevices` in config/environments.py; docs/deploy.md shows a sensor connecting).
Factories whose PLCs speak OPC UA also run the OpcUaCollector, configured with the PLCs the
environment's `opcua_plcs` file lists for them.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from collections.abc import Mapping
from typing import Any

from aws_cdk import Stack
from aws_cdk import aws_greengrassv2 as greengrass
from aws_cdk import aws_iam as iam
from constructs import Construct

from config.environments import ConfigError, Environment, opcua_plcs
from iiot import topics
from iiot.catalog import MetricCatalog, load_catalog
from stacks import artifacts
from stacks.constructs.greengrass_component import GreengrassComponent
from stacks.iot_stack import GATEWAY_STATUS_TOPIC

SENSOR_BUFFER = "com.iiot.SensorBuffer"
FAILURE_PREDICTOR = "com.iiot.FailurePredictor"
# Keys each factory deployment resets to the recipe's defaults before its merge. Greengrass
# keeps a component's configuration on the device across versions, so a gateway first deployed
# when the recipe pinned the predictor's thresholds (0.8 / 0.6 / 0.95) would keep them as
# explicit overrides of the model's own threshold; the recipe no longer sets them.
CONFIGURATION_RESETS: dict[str, tuple[str, ...]] = {
    FAILURE_PREDICTOR: ("/alertThreshold", "/clearThreshold", "/shutdownThreshold"),
}
FAILURE_MODEL = "com.iiot.FailureModel"
ANOMALY_MODEL = "com.iiot.AnomalyModel"
# Components built from edge_components/<name>/src by edge_runtime.build (what `gdk component
# build` runs too).
OPCUA_COLLECTOR = "com.iiot.OpcUaCollector"
# Published in every environment; deployed to the factories that name PLCs (opcua_plcs).
BUILT_HERE = (SENSOR_BUFFER, FAILURE_PREDICTOR, OPCUA_COLLECTOR)
THING = "{iot:thingName}"
# AWS-provided components. The MQTT bridge relays the buffer's local status topic to IoT Core,
# where a rule turns the health snapshots into CloudWatch metrics (iot stack), and hands the
# sensors' readings from the local broker to the components' local publish/subscribe.
MQTT_BRIDGE = "aws.greengrass.clientdevices.mqtt.Bridge"
# The sensors' way in (ClientDevices in config/environments.py): client device auth with the
# factory's device group, a local broker, the IP detector. Published versions: Moquette 2.3.7
# is in the Greengrass developer guide ("MQTT 3.1.1 broker (Moquette)", which requires client
# device auth >=2.2.0 <2.6.0); Auth 2.5.5, Bridge 2.3.2 and IP detector 2.1.5 as public
# Greengrass deployments pin them. A new version is a reviewed change here.
CLIENT_DEVICE_AUTH = "aws.greengrass.clientdevices.Auth"
IP_DETECTOR = "aws.greengrass.clientdevices.IPDetector"
BROKERS = {"moquette": ("aws.greengrass.clientdevices.mqtt.Moquette", "2.3.7")}
VERSIONS = {
    MQTT_BRIDGE: "2.3.2",
    CLIENT_DEVICE_AUTH: "2.5.5",
    IP_DETECTOR: "2.1.5",
}
MQTT_BRIDGE_VERSION = VERSIONS[MQTT_BRIDGE]
DEVICE_GROUP = "FactorySensors"
DEVICE_POLICY = "FactorySensorPolicy"


def client_device_auth(env: Environment, factory: str) -> dict[str, Any]:
    """The factory's device group: sensors named `<env prefix>-<factory>-*` may connect and
    publish on their factory's readings topic, and do nothing else."""
    return {
        "deviceGroups": {
            "formatVersion": "2021-03-05",
            "definitions": {
                DEVICE_GROUP: {
                    "selectionRule": f"thingName: {env.sensor_thing_prefix(factory)}*",
                    "policyName": DEVICE_POLICY,
                }
            },
            "policies": {
                DEVICE_POLICY: {
                    "Connect": {
                        "statementDescription": "Sensors of this factory may connect.",
                        "operations": ["mqtt:connect"],
                        "resources": ["*"],
                    },
                    "PublishReadings": {
                        "statementDescription": "They may publish their factory's readings.",
                        "operations": ["mqtt:publish"],
                        "resources": [f"mqtt:topic:{topics.readings_topic(factory)}"],
                    },
                }
            },
        }
    }


def bridge_mapping(env: Environment, factory: str) -> dict[str, Any]:
    """The bridge's topic mappings: readings from the local broker to the components' local
    publish/subscribe, the buffer's health to the environment's IoT Core status topic."""
    return {
        "mqttTopicMapping": {
            "SensorReadings": {
                "topic": topics.readings_topic(factory),
                "source": "LocalMqtt",
                "target": "Pubsub",
            },
            "GatewayStatus": {
                "topic": GATEWAY_STATUS_TOPIC.format(factory_id=factory),
                "source": "Pubsub",
                "target": "IotCore",
                # The environment's cloud topic: iiot/<env>/factory/...
                "targetTopicPrefix": env.cloud_topic(""),
            },
        }
    }


# IPC services of the access-control policies: the local broker, and the relay to IoT Core.
LOCAL_PUBSUB = "aws.greengrass.ipc.pubsub"
IOT_CORE = "aws.greengrass.ipc.mqttproxy"
# The cloud topics of iiot/topics.py and the configuration keys that name them.
CLOUD_TOPIC_KEYS = {"uploadTopic": topics.SENSOR_DATA, "anomaliesTopic": topics.ANOMALIES}


def _with_factory_topics(access_control: Any, factory: str, env: Environment) -> Any:
    """Every `{iot:thingName}` topic also for the factory id the deployment sets, and the
    IoT Core topics as the environment's for this factory (only those: IoT Core refuses the
    others)."""
    result = copy.deepcopy(access_control)
    for service, policies in result.items():
        for policy in policies.values():
            resources = policy.get("resources", [])
            if service == IOT_CORE:
                policy["resources"] = [env.factory_topic(r, factory) for r in resources]
                continue
            extra = [r.replace(THING, factory) for r in resources if THING in r]
            policy["resources"] = resources + [r for r in extra if r not in resources]
    return result


def factory_configuration(
    default_configuration: Mapping[str, Any],
    factory: str,
    catalog: MetricCatalog,
    env: Environment,
) -> dict[str, Any]:
    """What a factory's deployment merges into a component's default configuration: the
    factory, the catalog's thresholds, and the environment's IoT Core topics of the factory."""
    merge: dict[str, Any] = {}
    if "factoryId" in default_configuration:
        merge["factoryId"] = factory
    if "thresholds" in default_configuration:
        merge["thresholds"] = catalog.edge_threshold_config()
    for key, topic in CLOUD_TOPIC_KEYS.items():
        if key in default_configuration:
            merge[key] = env.factory_topic(topic, factory)
    if "accessControl" in default_configuration:
        merge["accessControl"] = _with_factory_topics(
            default_configuration["accessControl"], factory, env
        )
    return merge


def collector_plcs(env: Environment, catalog: MetricCatalog) -> dict[str, Any]:
    """factory -> the OPC UA collector's `plcs` for the factories `<env>:opcua_plcs` names,
    each checked with the collector's own configuration rules (opcua_collector.config, loaded
    from its component folder): a bad node fails the synth, not the gateway."""
    plcs = opcua_plcs(env)
    if not plcs:
        return {}
    source = artifacts.COMPONENTS[OPCUA_COLLECTOR].require().parent / "src"
    spec = importlib.util.spec_from_file_location(
        "_opcua_collector_config", source / "opcua_collector" / "config.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    for factory, factory_plcs in plcs.items():
        try:
            module.from_mapping({"factoryId": factory, "plcs": factory_plcs}, catalog)
        except module.ConfigError as error:
            raise ConfigError(f"{env.name}:opcua_plcs, factory {factory}: {error}") from error
    return plcs


class EdgeStack(Stack):
    @staticmethod
    def _client_device_components(env: Environment, factory: str) -> dict[str, Any]:
        """The AWS components of the sensor path, each with its merged configuration."""
        broker, broker_version = BROKERS[env.client_devices.broker]
        merges: dict[str, tuple[str, dict[str, Any] | None]] = {
            CLIENT_DEVICE_AUTH: (VERSIONS[CLIENT_DEVICE_AUTH], client_device_auth(env, factory)),
            broker: (broker_version, None),
            IP_DETECTOR: (VERSIONS[IP_DETECTOR], None),
            MQTT_BRIDGE: (VERSIONS[MQTT_BRIDGE], bridge_mapping(env, factory)),
        }
        return {
            name: greengrass.CfnDeployment.ComponentDeploymentSpecificationProperty(
                component_version=version,
                configuration_update=greengrass.CfnDeployment.ComponentConfigurationUpdateProperty(
                    merge=json.dumps(merge, sort_keys=True)
                )
                if merge is not None
                else None,
            )
            for name, (version, merge) in merges.items()
        }

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
        # Every component of the project by its environment's name, for the recipes that
        # name each other (the predictor depends on the model).
        names = {
            name: env_config.component_name(name)
            for name, artifact in artifacts.COMPONENTS.items()
            if artifact.require()  # every component's folder is there (the names come from it)
        }
        self.component_names = names
        self.components: dict[str, GreengrassComponent] = {}
        # Factories whose PLCs the OPC UA collector reads (`<env>:opcua_plcs`), each factory's
        # configuration validated by the component's own rules.
        plcs = collector_plcs(env_config, catalog)
        for name in BUILT_HERE:
            component_dir = artifacts.COMPONENTS[name].require().parent
            self.components[name] = GreengrassComponent(
                self, name.rsplit(".", 1)[-1], component_dir=component_dir, names=names
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
            factory_components = deployed + ([OPCUA_COLLECTOR] if factory in plcs else [])
            specs: dict[str, Any] = {
                names[name]: greengrass.CfnDeployment.ComponentDeploymentSpecificationProperty(
                    component_version=self.components[name].version,
                    configuration_update=greengrass.CfnDeployment.ComponentConfigurationUpdateProperty(
                        merge=json.dumps(
                            factory_configuration(
                                self.components[name].default_configuration,
                                factory,
                                catalog,
                                env_config,
                            )
                            | ({"plcs": plcs[factory]} if name == OPCUA_COLLECTOR else {}),
                            sort_keys=True,
                        ),
                        reset=list(CONFIGURATION_RESETS[name])
                        if name in CONFIGURATION_RESETS
                        else None,
                    ),
                )
                for name in factory_components
            }
            specs.update(self._client_device_components(env_config, factory))
            # The model components: the versions the ML stack's flows published and the
            # environment names (none named: none deployed).
            for model, version in (
                (FAILURE_MODEL, env_config.edge_model_version),
                (ANOMALY_MODEL, env_config.edge_anomaly_model_version),
            ):
                if version:
                    specs[names[model]] = (
                        greengrass.CfnDeployment.ComponentDeploymentSpecificationProperty(
                            component_version=version
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
            for name in factory_components:
                self.deployments[factory].add_resource_dependency(
                    self.components[name].component_version
                )
