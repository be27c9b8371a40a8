"""The report on a connected run's directory (`make demo`, local_platform/connected): no
simulation files; the fleet, failures and maintenance come from the gateways' machine lists,
the lake's maintenance tables and the plan, the predictions from the gateways' predictors'
alerts on the anomaly stream, the quarantine from the gateways' SensorBuffer databases.

The directory is made with the connected run's own writers where they are cheap (the plan, the
CMMS's landing and its lake tables, the SensorBuffer's store) and in the documented schema
(local_platform/README.md) for the rest."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from local_platform.report.html import write_report
from local_platform.report.run_data import collect

H = 3_600_000
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
QUARANTINED = {"F01": {"unit": 2, "value": 1}, "F02": {"payload": 1}}


def _stored_risk(
    lake: Path, machines: list, start_ms: int, hours: int, final: dict[str, float]
) -> None:
    """The gateways' failure_probability rows in silver.readings: every 5 minutes from 0.05
    up to `final` per machine."""
    import pyarrow as pa
    from deltalake import write_deltalake

    times = np.arange(start_ms, start_ms + hours * H, 5 * 60_000)
    rows: dict[str, list] = {k: [] for k in ("factory_id", "machine_id", "timestamp", "value")}
    for machine in machines:
        rows["factory_id"] += [machine.factory_id] * len(times)
        rows["machine_id"] += [machine.machine_id] * len(times)
        rows["timestamp"] += times.tolist()
        rows["value"] += np.linspace(0.05, final[machine.machine_id], len(times)).tolist()
    n = len(rows["value"])
    table = pa.table(
        {
            "factory_id": rows["factory_id"],
            "machine_id": rows["machine_id"],
            "metric": ["failure_probability"] * n,
            "timestamp": pa.array(rows["timestamp"], pa.int64()),
            "value": rows["value"],
            "is_anomaly": [False] * n,
        }
    )
    write_deltalake(str(lake / "silver" / "readings"), table, mode="append")


def _silver_readings(lake: Path, machines: list, start_ms: int, hours: int) -> None:
    """A small silver.readings in the lake job's column types (strings, the z-score flag)."""
    import pyarrow as pa
    from deltalake import write_deltalake

    rng = np.random.default_rng(3)
    rows: dict[str, list] = {
        k: [] for k in ("factory_id", "machine_id", "metric", "timestamp", "value")
    }
    for machine in machines:
        for t in range(start_ms, start_ms + hours * H, 10 * 60_000):
            for metric, mean in (("temperature", 70.0), ("pressure", 6.0), ("vibration", 3.0)):
                rows["factory_id"].append(machine.factory_id)
                rows["machine_id"].append(machine.machine_id)
                rows["metric"].append(metric)
                rows["timestamp"].append(t)
                rows["value"].append(float(mean + rng.normal(0, mean / 20)))
    value = np.array(rows["value"])
    flag = np.zeros(len(value), dtype=bool)
    flag[::97] = True
    table = pa.table({**rows, "value": value, "is_anomaly": flag})
    half = table.num_rows // 2
    write_deltalake(str(lake / "silver" / "readings"), table.slice(0, half))
    # the lake's later appends write their strings as string_view (delta-rs's anti-join), so
    # silver's files mix the two types
    later = table.slice(half)
    for name in ("machine_id", "metric"):
        index = later.schema.get_field_index(name)
        later = later.set_column(index, name, later.column(name).cast(pa.string_view()))
    write_deltalake(str(lake / "silver" / "readings"), later, mode="append")


def _anomaly(machine, kind: str, state: str, t: int, value: float, source: str) -> str:
    data = {
        "factory_id": machine.factory_id,
        "machine_id": machine.machine_id,
        "metric": "failure_probability" if source == "model" else "temperature",
        "anomaly_type": kind,
        "severity": "WARNING",
        "value": value,
        # a RAISED prediction alert carries the alert threshold, a CLEARED one the clear one
        "threshold": (0.7 if state == "RAISED" else 0.5) if source == "model" else 90.0,
        "timestamp": t,
        "source": source,
        "sensor_id": None,
        "state": state,
        "message": "",
    }
    return json.dumps({"sequence": "1", "arrival": 0.0, "data": json.dumps(data)})


@pytest.fixture(scope="module")
def connected_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from sensor_buffer.store import QuarantineItem, Store

    from local_platform.connected import maintenance
    from local_platform.connected.plan import Plan

    run = tmp_path_factory.mktemp("connected-run")
    plan = Plan(
        work_dir=run,
        factories=2,
        machines_per_factory=2,
        hours=24.0,
        history_hours=48,
        mtbf_hours=12.0,
        interval_ms=60_000,
        live_start=datetime(2026, 1, 7, tzinfo=UTC),
    )
    plan.write()
    jobs, failures, machines = maintenance.schedule(plan)
    live = [f for f in failures if plan.live_start_ms <= f["failed_at_ms"] < plan.live_end_ms]
    assert live, "the fixture's fleet fails in its live hours"
    # what the runner lands before the live hours (runner.py), as the lake's tables
    maintenance.land(
        plan,
        [j for j in jobs if j["completed_at_ms"] <= plan.live_start_ms],
        [f for f in failures if f["repaired_at_ms"] <= plan.live_start_ms],
    )
    maintenance.build_tables(plan)
    for factory in plan.factory_ids:
        (plan.gateway_dir(factory)).mkdir(parents=True)
        (plan.gateway_dir(factory) / "machines.json").write_text(
            json.dumps(
                {
                    m.machine_id: {"model": m.model, "installedOn": m.installed_on}
                    for m in machines
                    if m.factory_id == factory
                }
            )
        )
        store = Store(
            plan.gateway_dir(factory) / "sensor_buffer" / "sensor_buffer.sqlite3", producer=factory
        )
        items = [
            QuarantineItem(0, f"factory/{factory}/readings", f"{reason}: rejected", None, b"x")
            for reason, n in QUARANTINED[factory].items()
            for _ in range(n)
        ]
        empty = np.zeros(0)
        store.append(empty.astype(np.int32), empty.astype(np.int64), empty, quarantine=items)
        store.close()
    _silver_readings(plan.lake_dir, machines, plan.live_start_ms - 6 * H, 12)
    # the gateways' predictors: an alert 2 h before the first live failure (caught), and one
    # raised then cleared on another machine
    caught = live[0]
    by_id = {m.machine_id: m for m in machines}
    quiet = next(m for m in machines if m.machine_id != caught["machine_id"])
    # and the failure_probability series their SensorBuffers stored: a rise to 0.97 on the
    # caught machine, 0.3 at the end on the quiet one, 0.1 on the others
    final = {m.machine_id: 0.1 for m in machines} | {
        caught["machine_id"]: 0.97,
        quiet.machine_id: 0.3,
    }
    _stored_risk(plan.lake_dir, machines, plan.live_start_ms, 24, final)
    plan.cloud_dir.mkdir()
    (plan.cloud_dir / "anomaly-stream-records.jsonl").write_text(
        "\n".join(
            [
                _anomaly(
                    by_id[caught["machine_id"]],
                    "FAILURE_PREDICTED",
                    "RAISED",
                    caught["failed_at_ms"] - 2 * H,
                    0.9,
                    "model",
                ),
                _anomaly(
                    quiet, "FAILURE_PREDICTED", "RAISED", plan.live_start_ms + H, 0.75, "model"
                ),
                _anomaly(
                    quiet, "FAILURE_PREDICTED", "CLEARED", plan.live_start_ms + 2 * H, 0.3, "model"
                ),
                _anomaly(
                    quiet, "TEMPERATURE_HIGH", "RAISED", plan.live_start_ms + H, 95.0, "stream"
                ),
            ]
        )
        + "\n"
    )
    total: dict[str, int] = {}
    for reasons in QUARANTINED.values():
        for reason, n in reasons.items():
            total[reason] = total.get(reason, 0) + n
    (run / "reconciliation.json").write_text(
        json.dumps(
            {
                "ok": True,
                "failed": [],
                "checks": [
                    {
                        "check": "readings published = valid + invalid",
                        "left": 9,
                        "right": 9,
                        "ok": True,
                    }
                ],
                "readings": {
                    "published": 1000,
                    "malformed_payloads": {"garbage": 1, "unit_mismatch": 2},
                    "quarantined_at_gateways": sum(total.values()),
                    "quarantined_at_gateways_by_reason": total,
                    "silver": {"rows": 900, "history_rows": 5000},
                },
            }
        )
    )
    (run / "faults.json").write_text(json.dumps([{"fault": "outage", "factory": "F01"}]))
    return run, {"plan": plan, "failures": failures, "live": live, "caught": caught, "quiet": quiet}


def test_every_panel_reads_a_connected_run(connected_run: tuple[Path, dict]):
    run, truth = connected_run
    plan = truth["plan"]
    data = collect(run)
    overview = data["overview"]
    assert overview["machines"] == 4
    assert overview["factories"] == ["F01", "F02"]
    assert overview["readings"] == 5900
    assert overview["malformed_payloads"] == 3
    assert overview["seed"] == plan.seed

    rel = data["reliability"]
    assert rel["available"], rel.get("reason")
    assert rel["span_h"] == plan.history_hours + plan.hours
    in_span = [f for f in truth["failures"] if f["failed_at_ms"] < plan.live_end_ms]
    assert len(rel["failures"]) + rel["failures_before"] == len(in_span)
    # the lake's maintenance tables are read (what the CMMS had reported)
    assert "lake/silver/failures" in rel["source"]
    assert {m["machine_id"] for m in rel["machines"]} == {
        f"F0{f}-M00{m}" for f in (1, 2) for m in (1, 2)
    }
    assert any(m["downtime_h"] > 0 for m in rel["machines"])
    # only the live hours' failures are judged: the predictors ran then
    outcome = {f["failure_id"]: f for f in rel["failures"]}
    caught = outcome[truth["caught"]["failure_id"]]
    assert caught["caught"] is True
    assert caught["lead_h"] == pytest.approx(2.0, abs=0.05)
    assert rel["caught"] + rel["missed"] == len(truth["live"])
    for failure in rel["failures"]:
        if failure["caught"] is None:
            assert "before the live hours" in failure["not_judged"]

    risk = data["risk"]
    assert risk["available"]
    assert "stored failure_probability" in risk["source"]
    # the risk over time is the stored series (288 predictions a machine, drawn at most 300),
    # not the three alert events; a machine without an alert has one too
    quiet = risk["machines"][truth["quiet"].machine_id]
    assert quiet["last"] == pytest.approx(0.3)
    assert len(quiet["probabilities"]) == 24 * 12
    assert quiet["probabilities"][0] == pytest.approx(0.05)
    start = datetime.fromtimestamp(plan.live_start_ms / 1000, tz=UTC)
    assert quiet["times"][0] == start.strftime("%Y-%m-%d %H:%M")
    silent = [m for m in risk["machines"].values() if not m["alerts"]]
    assert silent
    assert all(m["last"] == pytest.approx(0.1) for m in silent)
    assert risk["machines"][truth["caught"]["machine_id"]]["alerts"]  # the stream's alerts kept
    plan_panel = data["plan"]
    assert plan_panel["available"], plan_panel.get("reason")
    assert plan_panel["alert_threshold"] == 0.7  # the predictors' own threshold
    assert len(plan_panel["ranking"]) == 4
    top = plan_panel["ranking"][0]
    assert top["machine_id"] == truth["caught"]["machine_id"]
    assert "when" in top  # p 0.97: at or above the job threshold, 0.95
    assert plan_panel["job_threshold"] == 0.95

    precision = {row["source"]: row for row in data["precision"]["rows"]}
    assert precision["gateways' failure predictors (anomaly stream)"]["alerts"] == 2
    assert precision["stream rules (anomaly stream)"]["alerts"] == 1

    assert data["readings"]["available"]
    assert len(data["readings"]["series"]) == 4
    scatter = data["scatter"]
    assert scatter["available"], scatter.get("reason")
    assert scatter["points"] > 0
    assert scatter["anomalies"] > 0
    counts = data["anomalies"]["counts"]
    assert counts[truth["quiet"].machine_id]["stream rule alerts"] == 1

    health = data["data_path"]
    assert health["gateway_quarantine"] == {
        f: dict(sorted(r.items(), key=lambda kv: -kv[1])) for f, r in QUARANTINED.items()
    }
    assert health["lake_tables"]["silver.failures"] > 0
    assert health["reconciliation"]["reconciliation.json"]["ok"] is True

    html = write_report(run).read_text()
    assert "gateway_quarantine" in html
    assert "before the live hours (no predictor ran)" in html


def test_without_the_sensor_buffers_the_quarantine_comes_from_the_reconciliation(
    connected_run: tuple[Path, dict], tmp_path: Path
):
    run, _ = connected_run
    (tmp_path / "reconciliation.json").write_text((run / "reconciliation.json").read_text())
    health = collect(tmp_path)["data_path"]
    assert health["gateway_quarantine"] == {"gateways": {"unit": 2, "value": 1, "payload": 1}}


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (scripts/bootstrap.sh test)"
)
def test_the_connected_runs_panels_draw_in_chromium(connected_run: tuple[Path, dict]):
    run, _ = connected_run
    report = write_report(run)
    assert CHROMIUM is not None
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=30000",
            "--dump-dom",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert [line for line in console if re.search(r"error|uncaught", line, re.I)] == []
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body is not None
    assert 'data-ready="1"' in body.group(0)
    assert "data-errors" not in body.group(0), body.group(0)
    for name in ("readings", "scatter", "anomalies", "risk", "risk-trend", "quarantine"):
        tag = re.search(rf'<div class="chart[^"]*" data-panel="{name}"[^>]*>', dom.stdout)
        assert tag is not None, f"panel {name} is missing"
        drawn = re.search(r'data-rendered="(\d+)"', tag.group(0))
        assert drawn is not None, f"panel {name} was not drawn"
        assert int(drawn.group(1)) > 0, f"panel {name} drew nothing"
