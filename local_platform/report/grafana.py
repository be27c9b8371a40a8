"""Grafana dashboards as code, generated from the metric catalog with grafana-foundation-sdk.

Two dashboards for Amazon Managed Grafana, written as JSON under `dashboards/`
(`iiot dashboards` regenerates them; a test fails when they drift from the catalog):

* **Pumps** (`iiot-pumps`): the oil-pump case study's four panels over Timestream for
  InfluxDB (Flux): each measured catalog metric (derived series are the fleet dashboard's)
  over time per machine with its edge limits and stream severities as thresholds;
  temperature against pressure, with readings beyond a limit as their own series; readings
  beyond the edge limits per machine; the latest reading of each sensor as KPI stats
  coloured by the same limits. Variables: factory and machine.
* **Fleet risk and anomalies** (`iiot-fleet`): the failure predictor's latest probability per
  machine and its trend (InfluxDB measurement `failure_probability`: the catalog's derived
  series, which each gateway's SensorBuffer stores from the predictor's local predictions
  topic, deadband-bounded, and uploads with the readings; the InfluxDB writer writes it like
  any reading), anomalies and readings per machine-day and factory-day from the lake's gold
  tables through the warehouse (Redshift Spectrum, schema `lake`), and availability,
  downtime, MTBF and MTTR per factory-day and machine-day from the warehouse's KPI views
  (schema `kpi`, stacks/warehouse_stack.py).

The data sources are template variables (`${influxdb}`, `${redshift}`), so the same JSON
works in every environment's workspace. The InfluxDB bucket and the readings' measurement
layout are the InfluxDB writer's (`lambdas/influx_writer/line_protocol.py`: one measurement
per metric, tags factory_id, machine_id, sensor_id, unit, field `value`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import stat, table, timeseries, xychart
from grafana_foundation_sdk.builders.barchart import Panel as BarChart
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model

from iiot.catalog import Metric, MetricCatalog, load_catalog

DASHBOARDS_DIR = Path(__file__).resolve().parents[2] / "dashboards"
BUCKET = "telemetry"  # the InfluxDB writer's bucket (stacks/timeseries_stack.py BUCKET)
INFLUX = model.DataSourceRef(type_val="influxdb", uid="${influxdb}")
# The derived series the risk panels read (config/metrics.yaml, `derived: failure_predictor`).
RISK_METRIC = "failure_probability"
RISK_SOURCE = (
    "The failure predictor's probability of a failure within its horizon: InfluxDB measurement "
    "failure_probability (tags factory_id, machine_id; field value). Each gateway's "
    "SensorBuffer stores it from the predictor's predictions when it moved by the deadband "
    "(predictionDeadband) or predictionMaxIntervalSeconds passed, and uploads it with the "
    "readings (at least once)."
)
REDSHIFT = model.DataSourceRef(type_val="grafana-redshift-datasource", uid="${redshift}")
MACHINE_FILTER = (
    "  |> filter(fn: (r) => r.factory_id =~ /^${factory:regex}$/ and "
    "r.machine_id =~ /^${machine:regex}$/)\n"
)


class FluxQuery(cogvariants.Dataquery):
    """An InfluxDB (Flux) target: the SDK has no builder for the InfluxDB plugin's query."""

    def __init__(self, ref_id: str, query: str) -> None:
        self.ref_id = ref_id
        self.query = query

    def to_json(self) -> dict[str, object]:
        return {"refId": self.ref_id, "datasource": INFLUX.to_json(), "query": self.query}


class SqlQuery(cogvariants.Dataquery):
    """A Redshift (SQL) target."""

    def __init__(self, ref_id: str, sql: str, table_format: bool = True) -> None:
        self.ref_id = ref_id
        self.sql = sql
        self.table_format = table_format

    def to_json(self) -> dict[str, object]:
        return {
            "refId": self.ref_id,
            "datasource": REDSHIFT.to_json(),
            "rawSQL": self.sql,
            "format": 1 if self.table_format else 0,  # 1: table, 0: time series
        }


class Target(cogbuilder.Builder[cogvariants.Dataquery]):
    def __init__(self, query: cogvariants.Dataquery) -> None:
        self.query = query

    def build(self) -> cogvariants.Dataquery:
        return self.query


def _flux(measurement: str, body: str) -> str:
    return (
        f'from(bucket: "{BUCKET}")\n'
        "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n"
        f'  |> filter(fn: (r) => r._measurement == "{measurement}" and r._field == "value")\n'
        + MACHINE_FILTER
        + body
    )


def _beyond(metric: Metric) -> str | None:
    """A Flux predicate for a reading beyond the metric's edge limits, or None."""
    parts = []
    if metric.edge.min is not None:
        parts.append(f"r._value < {metric.edge.min:g}")
    if metric.edge.max is not None:
        parts.append(f"r._value > {metric.edge.max:g}")
    return " or ".join(parts) or None


def _thresholds(metric: Metric) -> dash.ThresholdsConfig:
    """Green inside the edge limits, amber beyond them, red at the stream's critical level."""
    steps = [model.Threshold(value=None, color="green" if metric.edge.min is None else "red")]
    if metric.edge.min is not None:
        steps.append(model.Threshold(value=metric.edge.min, color="green"))
    if metric.edge.max is not None:
        steps.append(model.Threshold(value=metric.edge.max, color="orange"))
    if metric.stream is not None:
        steps.append(model.Threshold(value=metric.stream.critical, color="red"))
    steps.sort(key=lambda s: float("-inf") if s.value is None else s.value)
    return dash.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps)


def _variables() -> list[cogbuilder.Builder[model.VariableModel]]:
    influx = dash.DatasourceVariable("influxdb").label("InfluxDB").type("influxdb")
    factory = (
        dash.QueryVariable("factory")
        .label("factory")
        .datasource(INFLUX)
        .query(
            f'import "influxdata/influxdb/schema"\nschema.tagValues(bucket: "{BUCKET}", '
            'tag: "factory_id")'
        )
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    machine = (
        dash.QueryVariable("machine")
        .label("machine")
        .datasource(INFLUX)
        .query(
            f'import "influxdata/influxdb/schema"\nschema.tagValues(bucket: "{BUCKET}", '
            'tag: "machine_id", predicate: (r) => r.factory_id =~ /^${factory:regex}$/)'
        )
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    return [influx, factory, machine]


def pumps_dashboard(catalog: MetricCatalog) -> dict[str, Any]:
    """The case study's four panels, one time series per measured catalog metric."""
    metrics = catalog.measured
    builder = (
        dash.Dashboard("Pumps: readings, anomalies, KPIs")
        .uid("iiot-pumps")
        .tags(["iiot", "generated from config/metrics.yaml"])
        .time("now-24h", "now")
        .refresh("1m")
        .timezone("utc")
        .editable()
    )
    for variable in _variables():
        builder = builder.with_variable(variable)
    y = 0
    builder = builder.with_row(
        dash.Row("Readings per machine over time").grid_pos(_pos(0, y, 24, 1))
    )
    y += 1
    for index, (name, metric) in enumerate(metrics.items()):
        panel = (
            timeseries.Panel()
            .title(f"{name} ({metric.unit})")
            .datasource(INFLUX)
            .unit(metric.unit)
            .thresholds(_thresholds(metric))
            .with_target(
                Target(
                    FluxQuery(
                        "A",
                        _flux(
                            name,
                            "  |> aggregateWindow(every: v.windowPeriod, fn: mean, "
                            'createEmpty: false)\n  |> group(columns: ["machine_id"])',
                        ),
                    )
                )
            )
            .grid_pos(_pos((index % 2) * 12, y + (index // 2) * 8, 12, 8))
        )
        builder = builder.with_panel(panel)
    y += ((len(metrics) + 1) // 2) * 8
    builder = builder.with_row(dash.Row("Anomalies and KPIs").grid_pos(_pos(0, y, 24, 1)))
    y += 1
    scatter_flux = (
        f'from(bucket: "{BUCKET}")\n'
        "  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n"
        '  |> filter(fn: (r) => (r._measurement == "temperature" or r._measurement == '
        '"pressure") and r._field == "value")\n'
        + MACHINE_FILTER
        + "  |> aggregateWindow(every: 1m, fn: mean, createEmpty: false)\n"
        '  |> pivot(rowKey: ["_time", "machine_id"], columnKey: ["_measurement"], '
        'valueColumn: "_value")\n'
        "  |> map(fn: (r) => ({r with anomaly: " + _anomaly_expression(catalog) + "}))\n"
        '  |> group(columns: ["anomaly"])\n'
        '  |> keep(columns: ["pressure", "temperature", "anomaly"])'
    )
    builder = builder.with_panel(
        xychart.Panel()
        .title("Temperature vs pressure, coloured by anomaly (beyond an edge limit)")
        .datasource(INFLUX)
        .with_target(Target(FluxQuery("A", scatter_flux)))
        .grid_pos(_pos(0, y, 12, 10))
    )
    count_body = '  |> group(columns: ["machine_id"])\n  |> count()'
    counts = "\n".join(
        f"{name} = " + _flux(name, f"  |> filter(fn: (r) => {beyond})\n" + count_body)
        for name, metric in metrics.items()
        if (beyond := _beyond(metric)) is not None
    )
    names = ", ".join(name for name, metric in metrics.items() if _beyond(metric))
    counts += (
        f"\nunion(tables: [{names}])\n"
        '  |> group(columns: ["machine_id"])\n  |> sum()\n  |> group()\n'
        '  |> sort(columns: ["machine_id"])'
    )
    builder = builder.with_panel(
        BarChart()
        .title("Readings beyond the edge limits, per machine")
        .datasource(INFLUX)
        .with_target(Target(FluxQuery("A", counts)))
        .grid_pos(_pos(12, y, 12, 10))
    )
    y += 10
    width = 24 // len(metrics) if len(metrics) <= 6 else 4
    for index, (name, metric) in enumerate(metrics.items()):
        builder = builder.with_panel(
            stat.Panel()
            .title(f"latest {name}")
            .datasource(INFLUX)
            .unit(metric.unit)
            .thresholds(_thresholds(metric))
            .with_target(
                Target(FluxQuery("A", _flux(name, "  |> last()\n  |> group()\n  |> mean()")))
            )
            .grid_pos(_pos((index * width) % 24, y + (index * width) // 24 * 5, width, 5))
        )
    return _json(builder)


def _anomaly_expression(catalog: Mapping[str, Metric]) -> str:
    checks = []
    for name in ("temperature", "pressure"):
        if name in catalog and (beyond := _beyond(catalog[name])):
            checks.append("(" + beyond.replace("r._value", f"r.{name}") + ")")
    return ("if " + " or ".join(checks) + ' then "anomaly" else "normal"') if checks else '"normal"'


def fleet_dashboard(catalog: MetricCatalog) -> dict[str, Any]:
    """Fleet risk (the predictor's probabilities) and anomalies from the warehouse."""
    redshift = (
        dash.DatasourceVariable("redshift").label("Redshift").type("grafana-redshift-datasource")
    )
    builder = (
        dash.Dashboard("Fleet risk and anomalies")
        .uid("iiot-fleet")
        .tags(["iiot", "generated"])
        .time("now-7d", "now")
        .refresh("5m")
        .timezone("utc")
    )
    for variable in [*_variables(), redshift]:
        builder = builder.with_variable(variable)
    if RISK_METRIC not in catalog.derived:
        raise ValueError(f"the catalog has no derived series {RISK_METRIC} for the risk panels")
    latest = _flux(
        RISK_METRIC,
        '  |> last()\n  |> group()\n  |> keep(columns: ["machine_id", "factory_id", "_value"])\n'
        '  |> sort(columns: ["_value"], desc: true)',
    )
    risk_steps = [
        model.Threshold(value=None, color="green"),
        model.Threshold(value=0.5, color="orange"),
        model.Threshold(value=0.8, color="red"),
    ]
    risk = dash.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(risk_steps)
    builder = builder.with_panel(
        BarChart()
        .title("Fleet risk: latest failure probability per machine (24 h horizon)")
        .description(RISK_SOURCE)
        .datasource(INFLUX)
        .min(0)
        .max(1)
        .thresholds(risk)
        .with_target(Target(FluxQuery("A", latest)))
        .grid_pos(_pos(0, 0, 12, 9))
    )
    trend = _flux(
        RISK_METRIC,
        "  |> aggregateWindow(every: v.windowPeriod, fn: max, createEmpty: false)\n"
        '  |> group(columns: ["machine_id"])',
    )
    builder = builder.with_panel(
        timeseries.Panel()
        .title("Failure probability over time")
        .description(RISK_SOURCE)
        .datasource(INFLUX)
        .min(0)
        .max(1)
        .thresholds(risk)
        .with_target(Target(FluxQuery("A", trend)))
        .grid_pos(_pos(12, 0, 12, 9))
    )
    # The warehouse reads the lake's gold tables through its external schema (`lake`,
    # stacks/warehouse_stack.py; tables: stacks/lake_stack.py TABLES), and the reliability KPIs
    # through its views (`kpi`, over gold machine_day_kpis: spark_jobs/maintenance.py).
    anomalies = (
        "SELECT event_date, factory_id, machine_id, SUM(anomaly_count) AS anomalies,\n"
        "  SUM(reading_count) AS readings\nFROM lake.gold_machine_daily\n"
        "WHERE $__timeFilter(event_date)\n  AND factory_id ~ '^${factory:regex}$'\n"
        "  AND machine_id ~ '^${machine:regex}$'\nGROUP BY 1, 2, 3\nORDER BY anomalies DESC"
    )
    builder = builder.with_panel(
        table.Panel()
        .title("Anomalies and readings per machine-day (warehouse: lake.gold_machine_daily)")
        .description(
            "The lake's z-score anomalies and the readings that arrived, per machine and day."
        )
        .datasource(REDSHIFT)
        .with_target(Target(SqlQuery("A", anomalies)))
        .grid_pos(_pos(0, 9, 24, 10))
    )
    affected = (
        "SELECT event_date AS time, factory_id,\n"
        "  machines_with_anomalies::float / NULLIF(active_machines, 0) AS share\n"
        "FROM lake.gold_factory_daily\nWHERE $__timeFilter(event_date)\nORDER BY 1"
    )
    builder = builder.with_panel(
        timeseries.Panel()
        .title("Share of machines with anomalies per factory-day (lake.gold_factory_daily)")
        .datasource(REDSHIFT)
        .unit("percentunit")
        .min(0)
        .max(1)
        .with_target(Target(SqlQuery("A", affected, table_format=False)))
        .grid_pos(_pos(0, 19, 24, 8))
    )
    availability = (
        "SELECT event_date AS time, factory_id, availability\nFROM kpi.factory_day\n"
        "WHERE $__timeFilter(event_date)\n  AND factory_id ~ '^${factory:regex}$'\nORDER BY 1"
    )
    builder = builder.with_panel(
        timeseries.Panel()
        .title("Availability per factory-day (warehouse: kpi.factory_day)")
        .description(
            "1 - downtime / observed hours of the factory's machines (planned and unplanned "
            "stops), from the maintenance system's records in the lake."
        )
        .datasource(REDSHIFT)
        .unit("percentunit")
        .min(0)
        .max(1)
        .with_target(Target(SqlQuery("A", availability, table_format=False)))
        .grid_pos(_pos(0, 27, 24, 8))
    )
    reliability = (
        "SELECT event_date, factory_id, machine_id, availability, downtime_h, unplanned_h,\n"
        "  failures, mtbf_h, repairs, mttr_h\nFROM kpi.machine_day\n"
        "WHERE $__timeFilter(event_date)\n  AND factory_id ~ '^${factory:regex}$'\n"
        "  AND machine_id ~ '^${machine:regex}$'\nORDER BY availability ASC, downtime_h DESC"
    )
    builder = builder.with_panel(
        table.Panel()
        .title("Availability, downtime, MTBF and MTTR per machine-day (warehouse: kpi.machine_day)")
        .description(
            "Per machine and day: availability, hours down (all, and unplanned), failures and "
            "operating hours per failure (MTBF), repairs begun and their mean hours (MTTR)."
        )
        .datasource(REDSHIFT)
        .with_target(Target(SqlQuery("A", reliability)))
        .grid_pos(_pos(0, 35, 24, 10))
    )
    return _json(builder)


def _drop_nulls(value: Any) -> Any:
    """Unset options come out of the SDK as null; Grafana wants them absent. A threshold's
    base step keeps its null value (it means minus infinity)."""
    if isinstance(value, dict):
        return {
            k: _drop_nulls(v)
            for k, v in value.items()
            if v is not None or (k == "value" and "color" in value)
        }
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _pos(x: int, y: int, w: int, h: int) -> model.GridPos:
    return model.GridPos(x=x, y=y, w=w, h=h)


def _json(builder: dash.Dashboard) -> dict[str, Any]:
    built = builder.build()
    data: dict[str, Any] = _drop_nulls(json.loads(json.dumps(built, cls=JSONEncoder)))
    for panel_id, panel in enumerate(data.get("panels", []), start=1):
        panel["id"] = panel_id  # unique within the dashboard, stable
    return data


def dashboards(catalog: MetricCatalog | None = None) -> dict[str, dict[str, Any]]:
    """File name -> dashboard JSON."""
    catalog = catalog or load_catalog()
    return {"pumps.json": pumps_dashboard(catalog), "fleet.json": fleet_dashboard(catalog)}


def write_dashboards(out_dir: Path = DASHBOARDS_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in dashboards().items():
        path = out_dir / name
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
