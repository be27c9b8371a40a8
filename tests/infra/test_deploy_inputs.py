"""The deployment inputs, given as CDK context, through a synth of dev: the model versions
deploy the predictor, the failure model and the anomaly model (the edge stack's model branch,
which the session synth never takes), the alarm address is subscribed, and the thresholds come from the catalog named.

This is its own synth of dev alone, checked by the same gates (cdk-nag and cfn-lint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cfnlint.api import ManualArgs, lint_file

from config.environments import METRICS_CATALOG, environments
from iiot.catalog import load_catalog
from tests.infra.conftest import TEST_PINS, stack_templates
from tests.infra.test_gates import CFN_LINT_IGNORED, CFN_LINT_REGIONS

MODEL_VERSION = "1.0.7"
ANOMALY_MODEL_VERSION = "1.0.4"
ALARM_EMAIL = "operations@example.com"
ALERT_EMAILS = ("maintenance@example.com", "shift-lead@example.com")
ALERT_HTTPS = "https://alerts.example.com/iiot"
ESCALATION_EMAIL = "plant-manager@example.com"
SENSOR_BUFFER = "com.iiot.dev.SensorBuffer"
FAILURE_PREDICTOR = "com.iiot.dev.FailurePredictor"
FAILURE_MODEL = "com.iiot.dev.FailureModel"
ANOMALY_MODEL = "com.iiot.dev.AnomalyModel"
MQTT_BRIDGE = "aws.greengrass.clientdevices.mqtt.Bridge"
OPCUA_COLLECTOR = "com.iiot.dev.OpcUaCollector"
# factory-01's press line: one PLC, one node mapped to a catalog metric.
PLCS = {
    "press-line": {
        "endpoint": "opc.tcp://10.1.2.3:4840",
        "nodes": [
            {"nodeId": "ns=2;s=Press1.Temperature", "machineId": "press-1",
             "sensorId": "temp-1", "metric": "temperature"}
        ],
    }
}  # fmt: skip


class DevSynth:
    def __init__(self, outdir: Path, catalog: dict[str, Any], validation_error: str | None):
        self.outdir = outdir
        self.catalog = catalog
        self.validation_error = validation_error

    def template_path(self, concern: str) -> Path:
        return stack_templates(self.outdir)[f"iiot-dev-{concern}"]

    def resources(self, concern: str, kind: str) -> dict[str, dict[str, Any]]:
        template = json.loads(self.template_path(concern).read_text())
        return {name: body for name, body in template["Resources"].items() if body["Type"] == kind}


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevSynth:
    import aws_cdk as cdk

    from config.environments import is_deploy_input
    from stacks.environment_stacks import build_app, feature_flags

    # A catalog of this deployment's own: the pump line runs hotter than the default allows.
    catalog = yaml.safe_load(METRICS_CATALOG.read_text())
    catalog["metrics"]["temperature"]["edge"]["max"] = 111.0
    catalog_path = tmp_path_factory.mktemp("catalog") / "metrics.yaml"
    catalog_path.write_text(yaml.safe_dump(catalog))
    plcs_path = tmp_path_factory.mktemp("plcs") / "plcs.yaml"
    plcs_path.write_text(yaml.safe_dump({"factory-01": PLCS}))
    outdir = tmp_path_factory.mktemp("cdk.out")
    flags = {key: value for key, value in feature_flags().items() if not is_deploy_input(key)}
    app = cdk.App(
        outdir=str(outdir),
        context={
            **flags,
            **TEST_PINS,
            "dev:edge_model_version": MODEL_VERSION,
            "dev:edge_anomaly_model_version": ANOMALY_MODEL_VERSION,
            "dev:alarm_email": ALARM_EMAIL,
            "dev:alert_emails": ",".join(ALERT_EMAILS),
            "dev:alert_https": ALERT_HTTPS,
            "dev:escalation_emails": ESCALATION_EMAIL,
            "dev:metrics_catalog": str(catalog_path),
            "dev:opcua_plcs": str(plcs_path),
        },
    )
    build_app(app, ["dev"])
    error = None
    try:
        app.synth()
    except RuntimeError as exc:  # cdk-nag findings
        error = str(exc)
    return DevSynth(outdir, catalog, error)


def _recipe(inline_recipe: Any) -> dict[str, Any]:
    """An inline recipe as data; CloudFormation references inside it become "<ref>"."""
    if isinstance(inline_recipe, str):
        return json.loads(inline_recipe)
    separator, parts = inline_recipe["Fn::Join"]
    return json.loads(separator.join(p if isinstance(p, str) else "<ref>" for p in parts))


def _published_versions(synth: DevSynth) -> dict[str, str]:
    """Component name -> the version its CfnComponentVersion publishes."""
    recipes = [
        _recipe(body["Properties"]["InlineRecipe"])
        for body in synth.resources("edge", "AWS::GreengrassV2::ComponentVersion").values()
    ]
    return {recipe["ComponentName"]: recipe["ComponentVersion"] for recipe in recipes}


def test_the_model_versions_deploy_the_predictor_and_those_models_to_every_factory(
    dev: DevSynth,
) -> None:
    published = _published_versions(dev)
    assert set(published) == {SENSOR_BUFFER, FAILURE_PREDICTOR, OPCUA_COLLECTOR}
    deployments = dev.resources("edge", "AWS::GreengrassV2::Deployment").values()
    assert len(deployments) == len(environments()["dev"].factories)
    for deployment in deployments:
        components = deployment["Properties"]["Components"]
        assert {SENSOR_BUFFER, FAILURE_PREDICTOR, FAILURE_MODEL, MQTT_BRIDGE} <= set(components)
        assert {name for name in components if name.startswith("com.iiot.")} - {OPCUA_COLLECTOR} == {
            SENSOR_BUFFER, FAILURE_PREDICTOR, FAILURE_MODEL, ANOMALY_MODEL,
        }  # fmt: skip
        # The code components run the versions this stack publishes; the models, the versions
        # the ML stack's flows published and the environment names (pinned, not configured).
        assert components[SENSOR_BUFFER]["ComponentVersion"] == published[SENSOR_BUFFER]
        assert components[FAILURE_PREDICTOR]["ComponentVersion"] == published[FAILURE_PREDICTOR]
        assert components[FAILURE_MODEL] == {"ComponentVersion": MODEL_VERSION}
        assert components[ANOMALY_MODEL] == {"ComponentVersion": ANOMALY_MODEL_VERSION}


def test_the_predictor_is_configured_for_its_factory(dev: DevSynth) -> None:
    for deployment in dev.resources("edge", "AWS::GreengrassV2::Deployment").values():
        factory = deployment["Properties"]["DeploymentName"].removeprefix("iiot-dev-")
        predictor = deployment["Properties"]["Components"][FAILURE_PREDICTOR]
        merge = json.loads(predictor["ConfigurationUpdate"]["Merge"])
        assert merge["factoryId"] == factory
        assert f"factory/{factory}/" in json.dumps(merge["accessControl"])
        # An older version's pinned thresholds, kept on the device across versions, are reset
        # (to the recipe's defaults, which set none): the model's own threshold is in force.
        assert predictor["ConfigurationUpdate"]["Reset"] == [
            "/alertThreshold",
            "/clearThreshold",
            "/shutdownThreshold",
        ]
        assert not {"alertThreshold", "clearThreshold", "shutdownThreshold"} & merge.keys()


def test_deployments_wait_for_every_component_version_they_run(dev: DevSynth) -> None:
    versions = dev.resources("edge", "AWS::GreengrassV2::ComponentVersion")
    for deployment in dev.resources("edge", "AWS::GreengrassV2::Deployment").values():
        runs = {
            logical_id
            for logical_id in versions
            if f"com.iiot.dev.{logical_id.split('Version')[0]}"
            in deployment["Properties"]["Components"]
        }
        assert len(runs) >= 2  # the buffer and the predictor, and the collector if it runs
        assert set(deployment["DependsOn"]) >= runs


def test_the_deployments_set_the_named_catalogs_thresholds(dev: DevSynth) -> None:
    deployment = next(iter(dev.resources("edge", "AWS::GreengrassV2::Deployment").values()))
    merge = json.loads(
        deployment["Properties"]["Components"][SENSOR_BUFFER]["ConfigurationUpdate"]["Merge"]
    )
    assert merge["thresholds"]["temperature"]["max"] == 111.0
    for name, metric in dev.catalog["metrics"].items():
        if metric.get("derived"):  # the predictor's probability: no threshold checks it
            assert name not in merge["thresholds"]
            continue
        assert merge["thresholds"][name]["max"] == metric["edge"].get("max"), name


def test_the_alarm_address_is_subscribed(dev: DevSynth) -> None:
    (subscription,) = dev.resources("monitoring", "AWS::SNS::Subscription").values()
    assert subscription["Properties"]["Protocol"] == "email"
    assert subscription["Properties"]["Endpoint"] == ALARM_EMAIL


def test_factories_with_plcs_run_the_opcua_collector_with_them(dev: DevSynth) -> None:
    published = _published_versions(dev)
    assert OPCUA_COLLECTOR in published
    for deployment in dev.resources("edge", "AWS::GreengrassV2::Deployment").values():
        components = deployment["Properties"]["Components"]
        buffer = json.loads(components[SENSOR_BUFFER]["ConfigurationUpdate"]["Merge"])
        if buffer["factoryId"] != "factory-01":
            assert OPCUA_COLLECTOR not in components
            continue
        collector = components[OPCUA_COLLECTOR]
        assert collector["ComponentVersion"] == published[OPCUA_COLLECTOR]
        merge = json.loads(collector["ConfigurationUpdate"]["Merge"])
        assert merge["factoryId"] == "factory-01"
        assert merge["plcs"] == PLCS
        # It publishes the factory's readings on the local bus, where the buffer reads them.
        assert "factory/factory-01/readings" in json.dumps(merge["accessControl"])


def test_a_bad_plc_node_fails_the_synth_with_the_collectors_reason(tmp_path: Path) -> None:
    from config.environments import ConfigError, environments
    from stacks.edge_stack import collector_plcs

    bad = {"press-line": {"endpoint": "opc.tcp://10.1.2.3:4840",
                          "nodes": [{"nodeId": "ns=2;s=X", "machineId": "press-1",
                                     "sensorId": "t", "metric": "no-such-metric"}]}}  # fmt: skip
    path = tmp_path / "plcs.yaml"
    path.write_text(yaml.safe_dump({"factory-01": bad}))
    env = environments({"dev:opcua_plcs": str(path)})["dev"]
    with pytest.raises(ConfigError, match="dev:opcua_plcs, factory factory-01"):
        collector_plcs(env, load_catalog(METRICS_CATALOG))
    path.write_text(yaml.safe_dump({"factory-99": PLCS}))
    with pytest.raises(ConfigError, match=r"names factories \['factory-99'\]"):
        environments({"dev:opcua_plcs": str(path)})


def test_alerts_reach_the_subscribers_the_environment_names(dev: DevSynth) -> None:
    template = json.loads(dev.template_path("alerting").read_text())["Resources"]
    topics = {
        name: body["Properties"]["TopicName"]
        for name, body in template.items()
        if body["Type"] == "AWS::SNS::Topic"
    }
    subscribed = {
        (topics[body["Properties"]["TopicArn"]["Ref"]], body["Properties"]["Protocol"],
         body["Properties"]["Endpoint"])
        for body in template.values()
        if body["Type"] == "AWS::SNS::Subscription"
    }  # fmt: skip
    assert subscribed == {
        ("iiot-dev-alerts", "email", ALERT_EMAILS[0]),
        ("iiot-dev-alerts", "email", ALERT_EMAILS[1]),
        ("iiot-dev-alerts", "https", ALERT_HTTPS),
        ("iiot-dev-alerts-critical", "email", ESCALATION_EMAIL),
    }


def test_the_model_branch_passes_the_gates(dev: DevSynth) -> None:
    assert dev.validation_error is None
    report = dev.outdir / "validation-report.json"
    if report.exists():
        plugins = json.loads(report.read_text())["pluginReports"]
        assert [v for plugin in plugins for v in plugin["violations"]] == []
    config = ManualArgs(ignore_checks=CFN_LINT_IGNORED, regions=CFN_LINT_REGIONS)
    for concern in ("edge", "monitoring"):
        template = dev.template_path(concern)
        assert [str(match) for match in lint_file(template, config=config)] == [], concern
