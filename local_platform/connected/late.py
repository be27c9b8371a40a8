"""Late data, evaluated: the lake's batch evaluation of the stream rules over what came late.

A factory's backlog (after its uplink came back, or after its gateway restarted) reaches the
stream rules behind their watermark: the event-time windows (RAPID_CHANGE) and the debounced
severity rules' OVER windows (a series' readings older than its last emitted one) drop it. At
the end of the run the same Flink SQL runs once more, bounded,
over each late span's readings as the lake holds them (silver, in event-time order, with the
window's length of context on both sides): what it finds and the live stream did not is routed
as late alerts (the anomaly stream -> the alert router), each with its delay.

The same job evaluates a reference: the same span's readings regenerated from the simulator,
as a run without the fault would have seen them in order (their factory id prefixed `REF-`, so
they form their own windows; the calibrated rules carry each series' limit for its `REF-` copy
too, `models.calibrate_rules`). The reconciliation compares the two sets of anomalies.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from iiot.anomaly import decode_anomaly
from iiot.catalog import load_catalog
from iiot.contract import Validator
from iiot.wire import validate_payload
from local_platform.connected.plan import ANOMALY_STREAM, Plan
from local_platform.connected.sensors import factory_messages

CONTEXT_MS = 60_000  # the catalog rules' longest window
REFERENCE = "REF-"
CALIBRATION_FILE = "calibration/rapid_change_limits.json"  # under the stream dir (models.py)


def context_ms(plan: Plan) -> int:
    """The rules' longest window: the catalog's, or wider when the run's rules were calibrated
    with a wider window for a slowly sampled series (`kda_sql.calibration.window_for`)."""
    from kda_sql.calibration import Calibration

    longest = CONTEXT_MS
    path = plan.stream_dir / CALIBRATION_FILE
    if path.exists():
        windows = [s.window_seconds * 1000 for s in Calibration.load(path).series]
        longest = max([longest, *windows])
    return longest


class _Row(msgspec.Struct):
    timestamp: int
    factory_id: str
    machine_id: str
    sensor_id: str
    metric: str
    value: float
    unit: str


def _silver_rows(plan: Plan, factory: str, first: int, last: int) -> list[_Row]:
    import pyarrow.dataset as ds
    from deltalake import DeltaTable

    table = DeltaTable(str(plan.lake_dir / "silver" / "readings")).to_pyarrow_dataset()
    wanted = (
        (ds.field("factory_id") == factory)
        & (ds.field("timestamp") >= first)
        & (ds.field("timestamp") <= last)
    )
    columns = ["timestamp", "factory_id", "machine_id", "sensor_id", "metric", "value", "unit"]
    data = table.to_table(columns=columns, filter=wanted).to_pylist()
    return [_Row(**{k: row[k] for k in columns}) for row in data]


def _reference_rows(plan: Plan, factory: str, first: int, last: int) -> list[_Row]:
    validator = Validator(load_catalog())
    rows = []
    for message in factory_messages(plan, factory):
        if message.timestamp < first:
            continue
        if message.timestamp > last:
            break
        for r in validate_payload(message.payload, validator).readings:
            rows.append(
                _Row(r.timestamp, REFERENCE + factory, r.machine_id, r.sensor_id, r.metric,
                     r.value, r.unit)
            )  # fmt: skip
    return rows


def _key(anomaly: Any) -> tuple[Any, ...]:
    return (
        anomaly.factory_id.removeprefix(REFERENCE),
        anomaly.machine_id,
        anomaly.metric,
        anomaly.anomaly_type,
        anomaly.severity,
        anomaly.timestamp,
        round(anomaly.value, 6),
    )


def evaluate(
    plan: Plan,
    late_spans: dict[str, list[int]],
    clock: Any,
    wait_for_output: Callable[[Path], None],
) -> dict[str, Any]:
    """Run the rules over the late spans (silver and the reference) on the run's second Flink
    job (`flink_job.py --late-source`), route what the live stream missed, and compare;
    returns the figures for the reconciliation."""
    from local_platform.connected.kinesis import client
    from local_platform.connected.stream import SENTINEL, end_of_stream_row

    if not late_spans:
        return {"late_spans": {}, "evaluated": False}
    encoder = msgspec.json.Encoder()
    rows: list[_Row] = []
    spans = {}
    context = context_ms(plan)
    for factory, (first, last, _count) in sorted(late_spans.items()):
        begin, end = first - context, last + context
        rows.extend(_silver_rows(plan, factory, begin, end))
        rows.extend(_reference_rows(plan, factory, begin, end))
        spans[factory] = (first, last)
    rows.sort(key=lambda r: r.timestamp)
    folder = plan.stream_dir / "late"
    (folder / "readings").mkdir(parents=True, exist_ok=True)
    partial = folder / "readings" / ".backlog.partial"
    partial.write_bytes(b"".join(encoder.encode(r) + b"\n" for r in rows) + end_of_stream_row())
    partial.replace(folder / "readings" / "backlog.jsonl")
    began = time.perf_counter()
    wait_for_output(folder / "anomalies")
    seconds = time.perf_counter() - began
    lines = [
        line
        for path in sorted((folder / "anomalies").rglob("*"))
        if path.is_file() and not path.name.startswith(".")
        for line in path.read_bytes().splitlines()
        if line.strip()
    ]
    anomalies = [a for a in map(decode_anomaly, lines) if a.factory_id != SENTINEL]

    def inside(anomaly: Any) -> bool:
        span = spans.get(anomaly.factory_id.removeprefix(REFERENCE))
        return span is not None and span[0] <= anomaly.timestamp <= span[1]

    found = {_key(a): a for a in anomalies if inside(a) and not a.factory_id.startswith(REFERENCE)}
    reference = {_key(a) for a in anomalies if inside(a) and a.factory_id.startswith(REFERENCE)}
    live_ids = set()
    forwarded = plan.stream_dir / "anomalies-forwarded.jsonl"
    if forwarded.exists():
        live_ids = {json.loads(line)["anomaly_id"] for line in forwarded.read_text().splitlines()}
    live_keys = set()
    for path in sorted((plan.stream_dir / "anomalies").rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            for line in path.read_bytes().splitlines():
                if line.strip():
                    anomaly = decode_anomaly(line)
                    if inside(anomaly):
                        live_keys.add(_key(anomaly))
    missed_live = [a for k, a in found.items() if a.anomaly_id not in live_ids]
    kinesis = client("kinesis")
    routed = []
    for anomaly in missed_live:
        kinesis.put_record(
            StreamName=ANOMALY_STREAM,
            Data=msgspec.json.encode(anomaly),
            PartitionKey=f"{anomaly.factory_id}/{anomaly.machine_id}",
        )
        routed.append(
            {
                "anomaly_id": anomaly.anomaly_id,
                "anomaly_type": anomaly.anomaly_type,
                "timestamp": anomaly.timestamp,
                # the backlog is evaluated once it landed: at the end of the live hours at
                # the latest (the clock runs on through the drain, which is wall time)
                "delay_h": round(
                    (min(clock.sim_ms(), plan.live_end_ms) - anomaly.timestamp) / 3.6e6, 2
                ),
            }
        )
    return {
        "evaluated": True,
        "late_spans": {f: {"first_ms": s[0], "last_ms": s[1]} for f, s in spans.items()},
        "rows_evaluated": len(rows),
        "flink_seconds": round(seconds, 1),
        "anomalies_on_backlog": len(found),
        "anomalies_reference_run": len(reference),
        "anomalies_live_on_backlog": len(live_keys),
        "found_by_late_evaluation_only": len(missed_live),
        "routed_as_late": routed,
        "missing_from_backlog": len(reference - set(found)),
        "extra_on_backlog": len(set(found) - reference),
        "live_on_backlog_also_found_late": live_keys <= set(found),
        "equal_to_reference": set(found) == reference,
    }
