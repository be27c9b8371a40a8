"""The SQL is generated from the catalog, checked in up to date, and parameterised safely."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from iiot.catalog import parse_catalog
from kda_sql import runner
from kda_sql.cli import app
from kda_sql.generate import RENDERED_DIR, render, rule_summaries, stale_files

CATALOG_YAML = """
version: 1
metrics:
  temperature:
    unit: degC
    resolution: 0.01
    valid_range: {min: -40.0, max: 250.0}
    edge: {max: 100.0}
    stream: {warning: 77.5, critical: 91.25}
    rapid_change: {window_seconds: 30, stddev_limit: 4.5}
  vibration:
    unit: mm/s
    resolution: 0.01
    valid_range: {min: 0.0, max: 100.0}
    edge: {max: 50.0}
    rapid_change: {window_seconds: 120, stddev_limit: 7.0}
"""


def test_checked_in_sql_is_up_to_date_with_the_catalog(catalog):
    assert stale_files(catalog) == [], "run `iiot stream render` and commit kda_sql/sql/"


def test_every_threshold_comes_from_the_catalog():
    sql = render(parse_catalog(CATALOG_YAML, source="test.yaml"))
    severity = sql["10_severity_rules.sql"]
    # this catalog's edge names no debounce: 1 reading (the default), so one OVER window of 1
    assert "(metric = 'temperature' AND run_readings = 1 AND run_low > 77.5)" in severity
    assert "WHEN metric = 'temperature' AND run_low > 91.25 THEN 'CRITICAL'" in severity
    assert "ROWS BETWEEN 0 PRECEDING AND CURRENT ROW" in severity
    assert "vibration" not in severity  # no stream rule for vibration in this catalog
    # one HOP query per window size, each with its own metrics and limits
    assert set(sql) == {
        "00_readings_table.sql",
        "01_anomalies_table.sql",
        "02_valid_readings_view.sql",
        "03_deadletters_table.sql",
        "10_severity_rules.sql",
        "20_rapid_change_30s.sql",
        "21_rapid_change_120s.sql",
        "90_dead_letters.sql",
    }
    assert "INTERVAL '30' SECOND\n" in sql["20_rapid_change_30s.sql"]
    assert "INTERVAL '120' SECOND(3)" in sql["21_rapid_change_120s.sql"]  # past SQL's 2 digits
    assert "WHEN 'temperature' THEN 4.5" in sql["20_rapid_change_30s.sql"]
    assert "WHEN 'vibration' THEN 7.0" in sql["21_rapid_change_120s.sql"]
    assert "`value` BETWEEN 0.0 AND 100.0" in sql["02_valid_readings_view.sql"]


def test_no_severity_file_without_severity_rules():
    text = CATALOG_YAML.replace("    stream: {warning: 77.5, critical: 91.25}\n", "")
    assert "10_severity_rules.sql" not in render(parse_catalog(text))


def test_rule_summaries_name_their_catalog_source(catalog):
    rules = {(r.rule, r.metric): r for r in rule_summaries(catalog)}
    assert rules[("TEMPERATURE_HIGH", "temperature")].catalog_source == (
        "metrics.temperature.stream"
    )
    assert rules[("RAPID_CHANGE", "rpm")].condition == "stddev over 60 s > 300 rpm"
    assert rules[("TEMPERATURE_HIGH", "temperature")].condition == (
        "WARNING > 100 degC, CRITICAL > 120 degC, for 3 consecutive readings"
    )


def test_runner_fills_parameters_and_names_a_missing_one(tmp_path: Path):
    properties = dict(runner.DEFAULTS)
    properties.update({"source.connector": "kinesis", "source.stream.arn": "arn:x'y"})
    properties.update({"sink.connector": "print", "deadletter.connector": "blackhole"})
    statements = dict(runner.load_statements(RENDERED_DIR, runner.parameters(properties)))
    readings = statements["00_readings_table.sql"]
    assert "'connector' = 'kinesis'" in readings
    assert "'stream.arn' = 'arn:x''y'" in readings  # quotes escaped
    assert "INTERVAL '5' SECOND" in readings
    assert "INTERVAL '10' SECOND" in statements["20_rapid_change_60s.sql"]
    assert not any("--" in s.splitlines()[0] for s in statements.values())
    assert "'connector' = 'blackhole'" in statements["03_deadletters_table.sql"]
    # the dead letters are the rows the decoder refused, and only those
    assert "WHERE dead_letter_reason IS NOT NULL" in statements["90_dead_letters.sql"]

    (tmp_path / "x.sql").write_text("SELECT ${nope}")
    with pytest.raises(runner.RunnerError, match=r"x.sql: no value for parameter \$\{nope\}"):
        runner.load_statements(tmp_path, {})
    with pytest.raises(runner.RunnerError, match=r"no sink\.connector property"):
        runner.parameters({**runner.DEFAULTS, "source.connector": "x"})
    with pytest.raises(runner.RunnerError, match=r"no deadletter\.connector property"):
        runner.parameters({k: v for k, v in properties.items() if not k.startswith("dead")})
    with pytest.raises(runner.RunnerError, match=r"window\.slide\.seconds must be"):
        runner.parameters({**properties, "window.slide.seconds": "0"})


def test_application_properties_group_is_read(tmp_path: Path):
    path = tmp_path / "application_properties.json"
    path.write_text(
        '[{"PropertyGroupId": "other", "PropertyMap": {"a": "1"}},'
        ' {"PropertyGroupId": "StreamRules", "PropertyMap": {"source.connector": "kinesis"}}]'
    )
    assert runner.read_application_properties(path) == {"source.connector": "kinesis"}
    assert runner.read_application_properties(tmp_path / "missing.json") == {}


def test_cli_render_check_and_rules(tmp_path: Path):
    cli = CliRunner()
    result = cli.invoke(app, ["render", "--check"])
    assert result.exit_code == 0, result.output
    result = cli.invoke(app, ["render", "--out", str(tmp_path)])
    assert result.exit_code == 0
    (tmp_path / "10_severity_rules.sql").write_text("-- edited by hand\n")
    result = cli.invoke(app, ["render", "--check", "--out", str(tmp_path)])
    assert result.exit_code == 1
    result = cli.invoke(app, ["rules"])
    assert "RAPID_CHANGE" in result.output
    assert "VIBRATION_HIGH" in result.output


def test_cli_run_local_names_a_missing_input(tmp_path: Path):
    result = CliRunner().invoke(app, ["run-local", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 1
    assert "no such file or folder" in " ".join(result.output.split())
