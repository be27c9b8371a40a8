"""The Grafana dashboards in dashboards/: generated from the metric catalog, valid for
grafana-foundation-sdk's typed dashboard model, and consistent in themselves."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from local_platform.report.grafana import DASHBOARDS_DIR, _drop_nulls, dashboards

register_default_plugins()


def lost_in_round_trip(data: dict[str, Any]) -> list[str]:
    """Keys or values the SDK's typed model does not keep: what Grafana's schema lacks."""
    back = _drop_nulls(json.loads(json.dumps(Dashboard.from_json(data), cls=JSONEncoder)))
    problems: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict):
            if not isinstance(b, dict):
                problems.append(f"{path}: became {type(b).__name__}")
                return
            for key, value in a.items():
                if key not in b:
                    problems.append(f"{path}/{key}: not in the schema")
                else:
                    walk(value, b[key], f"{path}/{key}")
        elif isinstance(a, list):
            if not isinstance(b, list) or len(a) != len(b):
                problems.append(f"{path}: list changed")
                return
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{path}[{i}]")
        elif a != b:
            problems.append(f"{path}: {a!r} became {b!r}")

    walk(data, back, "")
    return problems


@pytest.fixture(scope="module")
def generated() -> dict[str, dict[str, Any]]:
    return dashboards()


def test_committed_dashboards_match_the_catalog(generated):
    for name, data in generated.items():
        committed = json.loads((DASHBOARDS_DIR / name).read_text())
        assert committed == data, f"dashboards/{name} is stale: run `iiot dashboards`"


def test_the_sdk_keeps_every_key(generated):
    for name, data in generated.items():
        assert lost_in_round_trip(data) == [], name


def test_the_check_finds_a_key_grafana_does_not_know(generated):
    planted = copy.deepcopy(generated["pumps.json"])
    planted["panels"][1]["fieldConfig"]["defaults"]["thresholdz"] = {}
    planted["refresh_rate"] = "1m"
    found = lost_in_round_trip(planted)
    assert any("thresholdz" in problem for problem in found)
    assert any("refresh_rate" in problem for problem in found)


def test_every_panel_queries_a_declared_data_source(generated):
    for name, data in generated.items():
        variables = {v["name"] for v in data["templating"]["list"]}
        ids = [panel["id"] for panel in data["panels"]]
        assert len(ids) == len(set(ids)), name
        occupied: set[tuple[int, int]] = set()
        for panel in data["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] >= 0, panel["title"]
            assert pos["x"] + pos["w"] <= 24, panel["title"]
            cells = {
                (x, y)
                for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])
            }
            assert not cells & occupied, f"{name}: {panel['title']} overlaps another panel"
            occupied |= cells
            if panel["type"] == "row":
                continue
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                uid = target["datasource"]["uid"]
                assert uid.startswith("${"), uid
                assert uid[2:-1] in variables, uid
                assert target.get("query") or target.get("rawSQL")


def test_each_catalog_metric_has_its_panels_and_limits(generated, catalog):
    panels = generated["pumps.json"]["panels"]
    for metric_name in catalog.derived:  # the fleet dashboard's, not a pump's reading
        assert not [p for p in panels if metric_name in json.dumps(p.get("targets", []))]
    for metric_name, metric in catalog.measured.items():
        series = [
            p for p in panels if p["type"] == "timeseries" and p["title"].startswith(metric_name)
        ]
        assert len(series) == 1, metric_name
        query = series[0]["targets"][0]["query"]
        assert f'r._measurement == "{metric_name}"' in query
        steps = [s["value"] for s in series[0]["fieldConfig"]["defaults"]["thresholds"]["steps"]]
        for limit in (metric.edge.min, metric.edge.max):
            if limit is not None:
                assert limit in steps
        stats = [p for p in panels if p["type"] == "stat" and p["title"] == f"latest {metric_name}"]
        assert len(stats) == 1
        assert stats[0]["fieldConfig"]["defaults"]["unit"] == metric.unit
    titles = [p["title"] for p in panels]
    assert any("Temperature vs pressure" in t for t in titles)
    assert any("per machine" in t for t in titles)
    fleet = generated["fleet.json"]["panels"]
    risk = [p for p in fleet if "failure_probability" in json.dumps(p.get("targets", []))]
    assert any("Fleet risk" in p["title"] for p in risk)
    for panel in risk:  # the data path writes it now: no "shows no data" caveat
        assert "no data" not in panel["description"]
        assert 'r._measurement == "failure_probability"' in panel["targets"][0]["query"]


def test_every_warehouse_query_reads_a_table_the_warehouse_has(generated):
    """The SQL panels read the lake's tables through the warehouse's external schema, by the
    names and columns the stacks give them (a panel over a view nobody creates shows an error
    in Grafana, not data)."""
    import re

    from stacks.lake_stack import TABLES
    from stacks.warehouse_stack import EXTERNAL_SCHEMA, kpi_views

    columns = {
        f"{EXTERNAL_SCHEMA}.{t.name}": {c.name for c in (*t.columns, *t.partition_keys)}
        for t in TABLES
    }
    # The warehouse's KPI views: the columns each one's SELECT names (or aliases).
    for view in kpi_views():
        created = re.match(r"CREATE OR REPLACE VIEW (\S+) AS SELECT (.+) FROM ", view)
        if created:
            selected = [item.strip() for item in created[2].split(",")]
            columns[created[1]] = {re.findall(r"\w+", item)[-1] for item in selected}
    queries = [
        target["rawSQL"]
        for data in generated.values()
        for panel in data["panels"]
        for target in panel.get("targets", [])
        if "rawSQL" in target
    ]
    assert queries
    assert any("FROM kpi." in sql for sql in queries)
    for sql in queries:
        tables = re.findall(r"\bFROM\s+([\w.]+)", sql)
        assert tables, sql
        for name in tables:
            assert name in columns, f"{name} is not a table of the warehouse: {sql}"
            words = set(re.findall(r"\b[a-z_]+\b", sql.split("FROM")[0]))
            used = {w for w in words if w.endswith(("_count", "_machines", "_id", "_date"))}
            assert used <= columns[name], (name, used - columns[name])
            if name.startswith("kpi."):  # every column a KPI panel selects is the view's
                aliases = set(re.findall(r"\bAS (\w+)", sql.split("FROM")[0]))
                selected = words - {"as"} - {a.lower() for a in aliases}
                assert selected <= columns[name], (name, selected - columns[name])


def test_dashboards_command_writes_the_files(tmp_path: Path):
    from typer.testing import CliRunner

    from local_platform.cli import app

    result = CliRunner().invoke(app, ["dashboards", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.json", "pumps.json"]
