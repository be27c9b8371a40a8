"""A source subtask that never reads anything must not hold the rules' watermark back.

The readings table's `WATERMARK` is not pushed into the source: neither the filesystem
connector nor the Kinesis connector the deployed application uses
(`flink-sql-connector-kinesis` 5.0.0-1.20: its table source implements no
`SupportsWatermarkPushDown`) takes it. The planner puts a watermark assigner after the source,
one per source subtask, fed by every split (file, shard) that subtask reads, and each operator
behind the hash exchange takes the minimum over all source subtasks. A source subtask without
a split (prod runs 12 subtasks on 9 shards; here 2 subtasks on 1 file) never sees a reading,
so it never emits a watermark and the minimum stays at its start: no window and no debounced
severity run would ever be emitted. Measured at HEAD before the fix: the job below with no idle
timeout raised nothing in the 260 s after it had read its file; with
`table.exec.source.idle-timeout` the idle subtask is left out of the minimum after that time
(`kda_sql/runner.py` DEFAULTS, so the deployed application has it too; kda_sql/README.md).

The job is the runner's own (`kda_sql/runner.py` with its defaults, as on the service) on a
continuous file source, the source the connected run's live job uses.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from iiot.anomaly import decode_anomaly
from kda_sql.flink_env import RUNNER, run_rules, source_properties
from kda_sql.runner import DEFAULTS
from local_platform.connected.stream import SENTINEL, end_of_stream_row, holds_sentinel

START_MS = 1_767_830_400_000


def _rows() -> bytes:
    """Two machines' rpm every 5 s for 20 minutes; M1 stops for 5 minutes at minute 8 (its
    stop and restart raise RAPID_CHANGE); then the end of stream with its sentinels."""
    rows = []
    for step in range(240):
        t = START_MS + step * 5_000
        for machine in ("M0", "M1"):
            stopped = machine == "M1" and 96 <= step < 156
            value = (0.0 if stopped else 1500.0) + (step % 3) * 2.0
            rows.append(
                {
                    "timestamp": t,
                    "factory_id": "F01",
                    "machine_id": machine,
                    "sensor_id": f"{machine}-rpm",
                    "metric": "rpm",
                    "value": value,
                    "unit": "rpm",
                }
            )
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows) + end_of_stream_row()


def _anomalies(lines: list[bytes]) -> Counter[tuple[str, str, int, float]]:
    found = (decode_anomaly(line) for line in lines if line.strip())
    return Counter(
        (a.machine_id, a.anomaly_type, a.timestamp, round(a.value, 6))
        for a in found
        if a.factory_id != SENTINEL
    )


def _committed(folder: Path) -> list[bytes]:
    return [
        line
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.name.startswith(".")
        for line in path.read_bytes().splitlines()
    ]


@pytest.mark.slow
def test_a_source_subtask_without_a_split_does_not_stop_the_rules(
    flink_python: Path, tmp_path: Path
) -> None:
    assert "flink.table.exec.source.idle-timeout" in DEFAULTS
    data = _rows()
    together = tmp_path / "rows.jsonl"
    together.write_bytes(data)
    bounded = _anomalies(run_rules(together, tmp_path / "bounded").output_lines)
    assert {key[0] for key in bounded if key[1] == "RAPID_CHANGE"} == {"M1"}

    source, sink = tmp_path / "live" / "readings", tmp_path / "live" / "anomalies"
    source.mkdir(parents=True)
    sink.mkdir(parents=True)
    (source / "part-1.jsonl").write_bytes(data)  # one file: one split, for one of 2 subtasks
    properties = {
        **source_properties(source, batches=False),
        "source.source.monitor-interval": "200 ms",  # continuous, like a stream
        "sink.connector": "filesystem",
        "sink.path": str(sink),
        "sink.format": "json",
        "sink.sink.rolling-policy.rollover-interval": "1 s",
        "sink.sink.rolling-policy.check-interval": "1 s",
        "deadletter.connector": "filesystem",
        "deadletter.path": str(tmp_path / "live" / "deadletters"),
        "deadletter.format": "json",
        "parallelism": "2",
        "flink.execution.checkpointing.interval": "1 s",  # the file sink commits on checkpoints
    }
    log = (tmp_path / "job.log").open("w")
    job = subprocess.Popen(  # the runner's defaults apply (its main), as on the service
        [str(flink_python), str(RUNNER), *(f"--property={k}={v}" for k, v in properties.items())],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 900
        while not holds_sentinel(sink) and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.5)
        done = holds_sentinel(sink)
    finally:
        job.terminate()
        try:
            job.wait(30)
        except subprocess.TimeoutExpired:
            job.kill()
            job.wait(30)
        log.close()
    assert done, (
        f"the job emitted no end of stream (exit {job.poll()}): the source subtask without a "
        f"split held the watermark back; log: {(tmp_path / 'job.log').read_text()[-2000:]}"
    )
    assert _anomalies(_committed(sink)) == bounded
