from pathlib import Path

import pytest

from iiot.catalog import CatalogError, load_catalog, parse_catalog

VALID = """
version: 1
metrics:
  temperature:
    unit: degC
    resolution: 0.01
    valid_range: {min: -40, max: 250}
    edge: {min: 20, max: 100, hysteresis: 2, debounce: 3}
    stream: {warning: 100, critical: 120}
    rapid_change: {window_seconds: 60, stddev_limit: 20}
"""


def test_project_catalog_has_the_case_study_metrics_and_thresholds(catalog):
    assert {"temperature", "vibration", "pressure", "rpm", "flow_rate"} <= set(catalog)
    temperature = catalog["temperature"]
    assert (temperature.edge.min, temperature.edge.max) == (20.0, 100.0)
    assert (temperature.stream.warning, temperature.stream.critical) == (100.0, 120.0)
    assert (catalog["vibration"].stream.warning, catalog["vibration"].stream.critical) == (
        60.0,
        80.0,
    )
    assert (catalog["pressure"].edge.min, catalog["pressure"].edge.max) == (10.0, 200.0)
    assert temperature.rapid_change.window_seconds == 60


def test_parse_valid_catalog_names_each_metric():
    catalog = parse_catalog(VALID, source="inline.yaml")
    assert list(catalog) == ["temperature"]
    assert catalog["temperature"].name == "temperature"
    assert catalog["temperature"].decimals == 2
    assert catalog.units == {"temperature": "degC"}


def test_digest_changes_with_content_only():
    first = parse_catalog(VALID, source="a.yaml")
    same = parse_catalog(VALID, source="b.yaml")
    changed = parse_catalog(VALID.replace("critical: 120", "critical: 130"), source="a.yaml")
    assert first.digest == same.digest
    assert first.digest != changed.digest


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("max: 100, hysteresis", "max: 300, hysteresis"),
            "metric 'temperature': edge.max (300.0) is outside valid_range",
        ),
        (
            ("min: 20, max: 100", "min: 100, max: 20"),
            "edge.min (100.0) must be below edge.max (20.0)",
        ),
        (
            ("hysteresis: 2", "hysteresis: 50"),
            "edge.hysteresis (50.0) must be less than half the band",
        ),
        (("debounce: 3", "debounce: 0"), "edge.debounce must be at least 1 reading"),
        (
            ("warning: 100, critical: 120", "warning: 130, critical: 120"),
            "stream.warning (130.0) must be below stream.critical (120.0)",
        ),
        (("stddev_limit: 20", "stddev_limit: -1"), "rapid_change.stddev_limit must be positive"),
        (
            ("window_seconds: 60", "window_seconds: 0"),
            "rapid_change.window_seconds must be at least 1",
        ),
        (("resolution: 0.01", "resolution: 0"), "resolution must be positive"),
        (
            ("min: -40, max: 250", "min: 250, max: -40"),
            "valid_range.min (250.0) must be below valid_range.max (-40.0)",
        ),
        (("unit: degC", "unit: ' '"), "unit must not be empty"),
    ],
)
def test_inconsistent_metric_is_rejected_naming_file_metric_and_problem(edit, message):
    with pytest.raises(CatalogError) as error:
        parse_catalog(VALID.replace(*edit), source="config/bad.yaml")
    assert str(error.value).startswith("config/bad.yaml: ")
    assert message in str(error.value)


def test_wrong_type_is_located_at_the_metric_and_field():
    with pytest.raises(CatalogError) as error:
        parse_catalog(
            VALID.replace("max: 100, hysteresis", "max: hot, hysteresis"), source="bad.yaml"
        )
    assert (
        str(error.value)
        == "bad.yaml: metric 'temperature': edge.max: Expected `float | null`, got `str`"
    )


def test_unknown_field_is_rejected():
    with pytest.raises(CatalogError, match="threshold"):
        parse_catalog(VALID.replace("unit: degC", "unit: degC\n    threshold: 5"), source="x.yaml")


def test_bad_metric_name_version_and_empty_catalog():
    with pytest.raises(CatalogError, match="metric 'Temp-1': name must be lower-case"):
        parse_catalog(VALID.replace("  temperature:", "  Temp-1:"), source="x.yaml")
    with pytest.raises(CatalogError, match="version 2 is not supported"):
        parse_catalog(VALID.replace("version: 1", "version: 2"), source="x.yaml")
    with pytest.raises(CatalogError, match="defines no metrics"):
        parse_catalog("version: 1\nmetrics: {}\n", source="x.yaml")
    with pytest.raises(CatalogError, match=r"x\.yaml: not valid YAML"):
        parse_catalog("version: [1", source="x.yaml")


def test_missing_file_and_environment_override(tmp_path: Path, monkeypatch):
    with pytest.raises(CatalogError, match="cannot read the metric catalog"):
        load_catalog(tmp_path / "absent.yaml")
    custom = tmp_path / "custom.yaml"
    custom.write_text(VALID)
    monkeypatch.setenv("IIOT_METRICS_CATALOG", str(custom))
    assert list(load_catalog()) == ["temperature"]


def test_to_builtins_round_trips(catalog):
    import yaml

    again = parse_catalog(yaml.safe_dump(catalog.to_builtins()), source="again")
    assert again.digest == catalog.digest
