"""The severity rules' debounce: the catalog's `stream.debounce` (default `edge.debounce`), its
validation and rendering, and the real Flink job against a brute force of the rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from iiot.anomaly import decode_anomaly
from iiot.catalog import (
    DEFAULT_CATALOG_PATH,
    MAX_STREAM_DEBOUNCE,
    CatalogError,
    MetricCatalog,
    parse_catalog,
)
from kda_sql.generate import render, write_rendered

from .scenarios import T0_MS, Row, Streams, base64_lines

PROJECT_YAML = DEFAULT_CATALOG_PATH.read_text()
TEMPERATURE = "stream: {warning: 100.0, critical: 120.0}"
VIBRATION = "stream: {warning: 60.0, critical: 80.0}"


def catalog_with(temperature: str = TEMPERATURE, vibration: str = VIBRATION) -> MetricCatalog:
    assert TEMPERATURE in PROJECT_YAML
    assert VIBRATION in PROJECT_YAML
    text = PROJECT_YAML.replace(TEMPERATURE, temperature).replace(VIBRATION, vibration)
    return parse_catalog(text, source="test.yaml")


def test_stream_debounce_defaults_to_the_edge_and_can_differ(catalog):  # type: ignore[no-untyped-def]
    assert catalog["temperature"].stream.debounce is None
    assert catalog["temperature"].stream_debounce == catalog["temperature"].edge.debounce == 3
    assert catalog["pressure"].stream_debounce is None  # no severity rule
    own = catalog_with(temperature="stream: {warning: 100.0, critical: 120.0, debounce: 5}")
    assert own["temperature"].stream_debounce == 5
    assert own.digest != catalog.digest


@pytest.mark.parametrize("debounce", [0, -1, MAX_STREAM_DEBOUNCE + 1])
def test_a_debounce_outside_its_range_is_refused(debounce: int):
    with pytest.raises(CatalogError, match=r"temperature.*stream\.debounce"):
        catalog_with(
            temperature=f"stream: {{warning: 100.0, critical: 120.0, debounce: {debounce}}}"
        )


def test_the_edge_debounce_a_stream_rule_inherits_is_bounded_too():
    text = PROJECT_YAML.replace("hysteresis: 2.0, debounce: 3}", "hysteresis: 2.0, debounce: 500}")
    with pytest.raises(CatalogError, match=r"stream\.debounce \(edge\.debounce\)"):
        parse_catalog(text)


def test_each_debounce_renders_its_own_over_window(catalog):  # type: ignore[no-untyped-def]
    severity = render(catalog)["10_severity_rules.sql"]
    assert severity.count("OVER run") == 2
    assert "UNION ALL" not in severity
    assert "ROWS BETWEEN 2 PRECEDING AND CURRENT ROW" in severity
    assert "PARTITION BY factory_id, machine_id, metric" in severity
    assert "ORDER BY event_time" in severity
    assert "(metric = 'temperature' AND run_readings = 3 AND run_low > 100.0)" in severity
    mixed = catalog_with(
        temperature="stream: {warning: 100.0, critical: 120.0, debounce: 1}",
        vibration="stream: {warning: 60.0, critical: 80.0, debounce: 5}",
    )
    severity = render(mixed)["10_severity_rules.sql"]
    assert severity.count("UNION ALL") == 1
    assert "ROWS BETWEEN 0 PRECEDING AND CURRENT ROW" in severity
    assert "ROWS BETWEEN 4 PRECEDING AND CURRENT ROW" in severity
    assert "(metric = 'temperature' AND run_readings = 1 AND run_low > 100.0)" in severity
    assert "(metric = 'vibration' AND run_readings = 5 AND run_low > 60.0)" in severity
    assert "WHEN metric = 'vibration' AND run_low > 80.0 THEN 'CRITICAL'" in severity


# The real job: two debounces in one statement, against the rule worked out in Python.
DEBOUNCE = {"temperature": 1, "vibration": 4}
LEVELS = {"temperature": (100.0, 120.0, 70.0), "vibration": (60.0, 80.0, 20.0)}


def excursions() -> list[Row]:
    """Two factories' machine M-D (the same id), 10 s sampling for 30 min, baseline with runs
    of 1 to 6 readings above the warning level, some partly above the critical level."""
    rng = np.random.default_rng(17)
    rows = []
    for factory in ("F1", "F2"):
        for metric, (warning, critical, base) in LEVELS.items():
            values = np.full(180, base)
            start = 3
            while start < 170:
                length = int(rng.integers(1, 7))
                high = rng.uniform(warning + 1, critical + 15, length)
                values[start : start + length] = np.round(high, 2)
                start += length + int(rng.integers(1, 5))
            rows += [
                Row(10.0 * i, "M-D", metric, float(v), factory_id=factory)
                for i, v in enumerate(values)
            ]
    return rows


def brute_force(rows: list[Row]) -> list[tuple]:
    expected = []
    for key in sorted({(r.factory_id, r.metric) for r in rows}):
        series = sorted(
            (r for r in rows if (r.factory_id, r.metric) == key), key=lambda r: r.second
        )
        n = DEBOUNCE[key[1]]
        warning, critical, _ = LEVELS[key[1]]
        for i in range(n - 1, len(series)):
            low = min(r.value for r in series[i - n + 1 : i + 1])
            if low > warning:
                level = ("CRITICAL", critical) if low > critical else ("WARNING", warning)
                row = series[i]
                expected.append((key[0], key[1], int(row.second * 1000), *level, row.value))
    return sorted(expected)


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["json", "batches"])
def test_the_job_raises_exactly_the_debounced_runs(
    encoding: str, flink_python: Path, tmp_path: Path, request: pytest.FixtureRequest
):
    from kda_sql.flink_env import run_rules

    catalog = catalog_with(
        temperature="stream: {warning: 100.0, critical: 120.0, debounce: 1}",
        vibration="stream: {warning: 60.0, critical: 80.0, debounce: 4}",
    )
    sql_dir = tmp_path / "sql"
    write_rendered(catalog, sql_dir)
    for name in ("20_rapid_change_60s.sql",):  # only the severity rule under test
        (sql_dir / name).unlink()
    streams = Streams(excursions())
    if encoding == "json":
        source = tmp_path / "readings.jsonl"
        source.write_bytes(b"\n".join(streams.lines()) + b"\n")
        run = run_rules(source, tmp_path / "anomalies", sql_dir=sql_dir)
    else:
        source = tmp_path / "batches.b64"
        source.write_bytes(base64_lines(streams.batches()))
        jar = request.getfixturevalue("decoder_jar")
        run = run_rules(source, tmp_path / "anomalies", sql_dir=sql_dir, batches=True, jar=jar)
    got = sorted(
        (a.factory_id, a.metric, a.timestamp - T0_MS, a.severity, a.threshold, a.value)
        for a in map(decode_anomaly, run.output_lines)
    )
    expected = brute_force(streams.rows)
    assert got == expected
    # both rules fire, at both levels, and the 4-reading debounce holds back shorter runs
    assert {(m, s) for _, m, _, s, _, _ in got} == {
        (m, s) for m in DEBOUNCE for s in ("WARNING", "CRITICAL")
    }
    above = sum(r.value > 60.0 for r in streams.rows if r.metric == "vibration")
    assert 0 < sum(m == "vibration" for _, m, *_ in got) < above
