"""Configuration: validated component configuration, and the recipe agrees with the catalog."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sensor_buffer.cli import app
from sensor_buffer.config import ConfigError, default_configuration, from_component_config
from sensor_buffer.recipe import recipe_default_configuration
from typer.testing import CliRunner

from iiot.catalog import MetricCatalog
from iiot.wire import Limits

COMPONENT = Path(__file__).resolve().parents[2] / "edge_components" / "com.iiot.SensorBuffer"


def recipe() -> dict:
    return yaml.safe_load((COMPONENT / "recipe.yaml").read_text())


def test_recipe_default_configuration_is_generated_from_the_catalog(
    catalog: MetricCatalog,
) -> None:
    assert recipe_default_configuration(recipe()) == default_configuration(catalog)
    thresholds = recipe()["ComponentConfiguration"]["DefaultConfiguration"]["thresholds"]
    for name, metric in catalog.measured.items():
        assert thresholds[name]["max"] == metric.edge.max
        assert thresholds[name]["debounce"] == metric.edge.debounce
    # a derived series (the predictor's probability) is checked by no threshold
    assert catalog.derived
    assert not set(catalog.derived) & set(thresholds)


def test_recipe_access_control_lists_exact_topics() -> None:
    access = recipe()["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"]
    resources = [
        resource
        for service in access.values()
        for policy in service.values()
        for resource in policy["resources"]
    ]
    assert "factory/sensor/data" in resources
    assert "factory/anomalies" in resources
    assert "factory/local/alerts" in resources
    assert "factory/{iot:thingName}/predictions" in resources  # the derived series' input
    assert not [r for r in resources if "#" in r or r.endswith("*")]


def test_gdk_config_names_the_component() -> None:
    import json

    config = json.loads((COMPONENT / "gdk-config.json").read_text())
    assert "com.iiot.SensorBuffer" in config["component"]


def test_component_configuration_round_trip(catalog: MetricCatalog, tmp_path: Path) -> None:
    document = default_configuration(catalog)
    config = from_component_config(document, catalog=catalog, factory_id="F1", data_dir=tmp_path)
    assert config.full_policy == "drop_oldest"
    assert config.thresholds["temperature"].max == 100.0
    assert config.topics_in == ("factory/F1/readings", "factory/F1/predictions")
    assert (config.prediction_deadband, config.prediction_max_interval_s) == (0.01, 300.0)
    assert "failure_probability" not in config.thresholds
    assert config.limits == Limits()  # the core's defaults
    assert config.quarantine_max_bytes == document["quarantineMaxBytes"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fullPolicy": "panic"}, "full_policy"),
        ({"batchMaxBytes": 1_000_000}, "IoT Core"),
        ({"maxPublishesPerSecond": 0}, "max_publishes_per_s"),
        ({"maxDiskBytes": "lots"}, "max_disk_bytes"),
        ({"retentionDayz": 3}, "unknown configuration keys"),
        ({"thresholds": {"temperature": {"hysteresis": 1}}}, "thresholds.temperature"),
        ({"inputMaxItems": 0}, "input_max_items: must be a positive integer"),
        ({"inputMaxPayloadBytes": "1MB"}, "input_max_payload_bytes: expected an integer"),
        ({"inputMaxDepth": 2}, "input_max_depth: must be at least 3"),
        ({"quarantineMaxBytes": 1000}, "quarantine_max_bytes: must be at least"),
    ],
)
def test_invalid_configuration_names_the_key(
    catalog: MetricCatalog, tmp_path: Path, change: dict, message: str
) -> None:
    document = {**default_configuration(catalog), **change}
    with pytest.raises(ConfigError, match=message):
        from_component_config(document, catalog=catalog, factory_id="F1", data_dir=tmp_path)


def test_cli_refuses_a_bad_broker_url(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["run", "--factory", "F1", "--broker", "http://x", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "mqtt://" in result.output
