"""The CMMS records' lake job (spark_jobs/maintenance.py) on real Sail + Delta: silver, the
rejects kept with their reasons, and gold machine_day_kpis against hand-worked numbers and the
fleet report's own figures for the same records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from spark_jobs import io, kpis
from spark_jobs.maintenance import LANDING, MaintenancePaths, run_maintenance

H = kpis.HOUR_MS
DAY = kpis.DAY_MS


def job(mid: str, machine: str, kind: str, start_h: float, end_h: float, **extra: Any) -> str:
    return json.dumps(
        {
            "record_type": "maintenance",
            "maintenance_id": mid,
            "factory_id": "f1" if machine != "c" else "f2",
            "machine_id": machine,
            "kind": kind,
            "started_at_ms": int(start_h * H),
            "completed_at_ms": int(end_h * H),
            "failure_id": extra.get("failure_id", ""),
            "averted_failure": False,
        }
    )


def failure(fid: str, machine: str, failed_h: float, repaired_h: float) -> str:
    return json.dumps(
        {
            "record_type": "failure",
            "failure_id": fid,
            "factory_id": "f1" if machine != "c" else "f2",
            "machine_id": machine,
            "failure_mode": "bearing_wear",
            "degradation_start_ms": 0,
            "failed_at_ms": int(failed_h * H),
            "repaired_at_ms": int(repaired_h * H),
        }
    )


# Two days (0-48 h), three machines:
# a: fails at 22:00 on day 1, repaired 22:00-03:00 (2 h day 1, 3 h day 2); a preventive stop
#    10:00-12:00 on day 2.
# b: fails at 06:00 on day 2, repaired 06:00-10:00; fails again at 20:00, repaired 20:00-22:00.
# c: never stops (named by a preventive job outside the window: it still has its two days).
RECORDS = [
    job("m1", "a", "corrective", 22, 27, failure_id="x1"),
    failure("x1", "a", 22, 27),
    job("m2", "a", "preventive", 34, 36),
    job("m3", "b", "corrective", 30, 34, failure_id="x2"),
    failure("x2", "b", 30, 34),
    job("m4", "b", "corrective", 44, 46, failure_id="x3"),
    failure("x3", "b", 44, 46),
    job("m5", "c", "preventive", 60, 61),
]
BAD = [
    "not json at all",
    json.dumps({"record_type": "maintenance", "machine_id": "a"}),
    job("m9", "a", "corrective", 10, 8),
    json.dumps({"record_type": "inspection", "factory_id": "f1"}),
]


def land(root: Path, name: str, lines: list[str]) -> None:
    folder = root / LANDING
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("\n".join(lines) + "\n")


def gold(sail: Any, root: Path) -> dict[tuple[str, str], dict[str, Any]]:
    uri = MaintenancePaths.of(io.LakePaths.from_root(root)).machine_day_kpis
    rows = sail.read.format("delta").load(uri).collect()
    return {(r["machine_id"], r["event_date"].isoformat()): r.asDict() for r in rows}


@pytest.fixture
def lake(sail: Any, tmp_path: Path) -> Path:
    land(tmp_path, "cmms-1.jsonl", RECORDS[:5] + BAD)
    land(tmp_path, "cmms-2.jsonl", RECORDS[4:])  # x2 arrives twice
    result = run_maintenance(sail, io.LakePaths.from_root(tmp_path), window=(0, 2 * DAY))
    assert result.skipped is None
    assert (result.maintenance_records, result.failures, result.rejected) == (5, 3, 4)
    assert result.machine_days == 6
    return tmp_path


def test_silver_holds_each_record_once_and_keeps_the_rejects_with_their_reason(
    sail: Any, lake: Path
) -> None:
    where = MaintenancePaths.of(io.LakePaths.from_root(lake))
    failures = sail.read.format("delta").load(where.failures).collect()
    assert sorted(r["failure_id"] for r in failures) == ["x1", "x2", "x3"]
    jobs = sail.read.format("delta").load(where.maintenance_records).collect()
    assert sorted(r["maintenance_id"] for r in jobs) == ["m1", "m2", "m3", "m4", "m5"]
    rejects = {
        r["raw"]: r["reject_reason"]
        for r in sail.read.format("delta").load(where.rejects).collect()
    }
    assert rejects == {
        BAD[0]: "not a JSON record with record_type",
        BAD[1]: "maintenance without maintenance_id, factory_id, machine_id, started_at_ms or "
        "completed_at_ms",
        BAD[2]: "maintenance ends before it starts",
        BAD[3]: "record_type is neither maintenance nor failure",
    }


def test_machine_day_kpis_match_the_hand_worked_numbers(sail: Any, lake: Path) -> None:
    rows = gold(sail, lake)
    day1, day2 = "1970-01-01", "1970-01-02"
    assert set(rows) == {(m, d) for m in "abc" for d in (day1, day2)}
    a1, a2 = rows[("a", day1)], rows[("a", day2)]
    # a, day 1: 2 h down (the repair's first part), 1 failure, the 5 h repair began that day.
    assert (a1["observed_h"], a1["downtime_h"], a1["unplanned_h"], a1["planned_h"]) == (24, 2, 2, 0)
    assert (a1["failures"], a1["repairs"], a1["repair_h"]) == (1, 1, 5.0)
    assert a1["availability"] == pytest.approx(22 / 24)
    assert a1["mtbf_h"] == pytest.approx(22.0)
    assert a1["mttr_h"] == pytest.approx(5.0)
    # a, day 2: the repair's last 3 h and a 2 h preventive stop; no failure, no repair begun.
    assert (a2["downtime_h"], a2["unplanned_h"], a2["planned_h"]) == (5, 3, 2)
    assert a2["availability"] == pytest.approx(19 / 24)
    assert (a2["mtbf_h"], a2["mttr_h"]) == (None, None)
    # b, day 2: two failures, 4 h + 2 h of repairs.
    b2 = rows[("b", day2)]
    assert (b2["downtime_h"], b2["failures"], b2["repairs"], b2["repair_h"]) == (6, 2, 2, 6.0)
    assert b2["availability"] == pytest.approx(18 / 24)
    assert b2["mtbf_h"] == pytest.approx(9.0)  # 18 operating hours / 2 failures
    assert b2["mttr_h"] == pytest.approx(3.0)
    assert rows[("b", day1)]["availability"] == 1.0
    for day in (day1, day2):
        c = rows[("c", day)]
        assert (c["factory_id"], c["availability"], c["downtime_h"]) == ("f2", 1.0, 0.0)


def test_summed_machine_days_give_the_fleet_reports_figures(sail: Any, lake: Path) -> None:
    from local_platform.report.run_data import reliability

    records = [json.loads(line) for line in RECORDS]
    history = {
        "machines": [
            {"machine_id": m, "factory_id": "f2" if m == "c" else "f1", "model": "P"} for m in "abc"
        ],
        "failures": [
            {k: str(v) for k, v in r.items()} for r in records if r["record_type"] == "failure"
        ],
        "maintenance": [
            {k: str(v) for k, v in r.items()}
            for r in records
            if r["record_type"] == "maintenance" and r["started_at_ms"] < 2 * DAY
        ],
        "start_ms": 0,
        "end_ms": 2 * DAY,
    }
    report = {row["machine_id"]: row for row in reliability(history, None)["machines"]}
    rows = gold(sail, lake)
    for machine in "abc":
        days = [r for (m, _), r in rows.items() if m == machine]
        totals = {k: sum(d[k] for d in days) for k in ("observed_h", "downtime_h", "failures",
                                                         "repairs", "repair_h")}  # fmt: skip
        row = report[machine]
        assert row["downtime_h"] == round(totals["downtime_h"], 2)
        assert row["failures"] == totals["failures"]
        assert row["availability"] == round(
            kpis.availability(totals["observed_h"], totals["downtime_h"]), 4
        )
        mtbf = kpis.mtbf_h(totals["observed_h"], totals["downtime_h"], totals["failures"])
        assert row["mtbf_h"] == (None if mtbf is None else round(mtbf, 1))
        mttr = kpis.mttr_h(totals["repair_h"], totals["repairs"])
        assert row["mttr_h"] == (None if mttr is None else round(mttr, 2))
    # and the hand-worked figures of machine a over the two days: 5 h repair + 2 h preventive
    assert (report["a"]["availability"], report["a"]["mtbf_h"], report["a"]["mttr_h"]) == (
        round(41 / 48, 4),
        41.0,
        5.0,
    )
    assert report["b"]["mtbf_h"] == 21.0  # (48 - 6) operating hours / 2 failures


def test_the_default_window_runs_from_the_first_records_midnight_to_its_latest_moment(
    sail: Any, tmp_path: Path
) -> None:
    land(tmp_path, "cmms-1.jsonl", [job("m1", "a", "preventive", 30, 33)])
    result = run_maintenance(sail, io.LakePaths.from_root(tmp_path))
    assert result.window == (DAY, 33 * H)
    (row,) = gold(sail, tmp_path).values()
    assert (row["observed_h"], row["downtime_h"]) == (9.0, 3.0)
    assert row["availability"] == pytest.approx(6 / 9)


def test_nothing_landed_is_skipped(sail: Any, tmp_path: Path) -> None:
    result = run_maintenance(sail, io.LakePaths.from_root(tmp_path))
    assert result.skipped is not None
    assert "nothing landed" in result.skipped


def test_hours_by_day_splits_a_stop_at_midnight_and_clips_it_to_the_window() -> None:
    assert kpis.hours_by_day(22 * H, 27 * H, 0, 2 * DAY) == [(0, 2.0), (DAY, 3.0)]
    assert kpis.hours_by_day(22 * H, 27 * H, 23 * H, 26 * H) == [(0, 1.0), (DAY, 2.0)]
    assert kpis.hours_by_day(5 * H, 6 * H, 10 * H, 20 * H) == []
    assert kpis.availability(0, 0) is None
    assert kpis.mtbf_h(24, 4, 0) is None


def _select_of(view: str) -> str:
    """A CREATE VIEW statement's query, reading gold from a temporary view of that name."""
    query = view.split(" AS ", 1)[1].removesuffix(" WITH NO SCHEMA BINDING")
    return query.replace("lake.gold_machine_day_kpis", "gold_machine_day_kpis")


def test_the_warehouse_kpi_views_compute_the_same_kpis_over_gold(sail: Any, lake: Path) -> None:
    """The warehouse stack's views, run on Sail over the gold table this job wrote."""
    from stacks.warehouse_stack import kpi_views

    uri = MaintenancePaths.of(io.LakePaths.from_root(lake)).machine_day_kpis
    sail.read.format("delta").load(uri).createOrReplaceTempView("gold_machine_day_kpis")
    statements = kpi_views()
    (machine_view,) = [s for s in statements if "VIEW kpi.machine_day " in s]
    (factory_view,) = [s for s in statements if "VIEW kpi.factory_day " in s]
    machine_days = sail.sql(_select_of(machine_view)).collect()
    assert {(r["machine_id"], r["event_date"].isoformat()) for r in machine_days} == set(
        gold(sail, lake)
    )
    factory_days = {
        (r["factory_id"], r["event_date"].isoformat()): r.asDict()
        for r in sail.sql(_select_of(factory_view)).collect()
    }
    # f1 on day 2: a (5 h down) and b (6 h down, 2 failures, 2 repairs of 4 h and 2 h).
    f1 = factory_days[("f1", "1970-01-02")]
    assert (f1["machines"], f1["observed_h"], f1["downtime_h"], f1["failures"]) == (2, 48, 11, 2)
    assert f1["availability"] == pytest.approx(kpis.availability(48, 11))
    assert f1["mtbf_h"] == pytest.approx(18.5)  # (48 - 11) / 2
    assert f1["mttr_h"] == pytest.approx(3.0)
    f2 = factory_days[("f2", "1970-01-01")]
    assert (f2["availability"], f2["mtbf_h"], f2["mttr_h"]) == (1.0, None, None)
