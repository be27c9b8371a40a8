"""The stream rules' feed and output in a connected run.

`python -m local_platform.connected.stream --plan PLAN` is a consumer of the telemetry stream of
its own (its own iterator, like a second application on the stream). The Flink job reads
compact batches, as the deployed application reads the telemetry stream: the `iiot-batch`
format (`kda_sql/decoder`) decodes them inside the job's source, and a record that fails the
contract's checks goes to the job's dead letters (`stream/deadletters/`), never fails it. The
feed writes those batches to `stream/readings/` (one base64 batch per line: the filesystem
source reads lines). It checks each batch once (by batch id, the contract's checks as
everywhere) only to order them: a batch that fails the checks is passed on as it came, for the
job's decoder to dead-letter. The InfluxDB writer does not feed the rules, so a stopped
InfluxDB does not stop them.

Ordering: accelerated time packs minutes of simulated time into each gateway upload, far more
than the job's 5 s watermark delay, so the feed hands the job the readings of every factory in
event-time order: the valid readings up to the slowest active factory's newest event time,
sorted and cut into compact batches of at most `BATCH_READINGS` (re-encoded; the format emits
each batch's readings in time order).

It also forwards what the job writes (`stream/anomalies/`, committed files) to the anomaly
stream, where the alert router reads them, and records for every anomaly its delay: the
simulated time between the readings that raised it and the moment it reached the anomaly
stream.

Late readings: a reading that reaches the feed more than the watermark delay behind the newest
event time it has seen is late for the job's windows (the event-time windows and the severity
rules' runs drop it). The feed keeps each factory's late spans (`late_spans` in
its status) for the lake's batch evaluation of the same rules at the end of the run. When the
runner asks (`stream/finish`), the feed writes an end-of-stream batch: far ahead in event time,
dropped by the rules' own filter, it moves the watermark past every open window; then sentinel
readings that raise one anomaly in every rule (`sentinel_anomalies`). Each rule's INSERT is its
own sink, committed by its own task, so the output is complete only once every rule's sentinel
is committed (`holds_sentinel`): with one sentinel (the severity rule's) a loaded CI run read
the output while the window rule's last 40 RAPID_CHANGE windows were still uncommitted.

File order: the job's continuous file source hands it the files it finds in one scan of the
folder in no particular order (Flink's split assigner keeps unassigned files in a hash set), so
two files on the folder before the job opened the first (the job's start-up, a slow scan, a
reader busy with an earlier file) could be read newest first, and every reading of the older
one is then behind the watermark: its windows are dropped whole, with no error (a connected run
lost the RAPID_CHANGE windows of 10-12 of its 13 stops and restarts that way). `FileFeed`
writes the next file only once the job has opened the previous one, so a scan never finds more
than one unread file; rows released meanwhile go into that next file.
"""

from __future__ import annotations

import argparse
import base64
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from iiot.anomaly import decode_anomaly
from iiot.catalog import load_catalog
from iiot.contract import ReadingColumns, SeriesKey, Validator
from iiot.wire import WireFormatError, encode_batch, validate_batch
from local_platform.connected.clock import SimClock
from local_platform.connected.kinesis import ShardReader, client
from local_platform.connected.plan import ANOMALY_STREAM, TELEMETRY_STREAM, Plan, read_json
from local_platform.connected.service import Service

END_OF_STREAM_MS = 4_102_444_800_000  # 2100-01-01: beyond any window of the run
IDLE_S = 2.0  # a factory silent this long does not hold the others' rows back
FLINK_DELAY_MS = 5_000  # the deployed watermark delay (kda_sql runner default)
BATCH_READINGS = 20_000  # a gateway's largest upload (SensorBuffer batch_max_readings)


class _Row(msgspec.Struct):
    timestamp: int
    factory_id: str
    machine_id: str
    sensor_id: str
    metric: str
    value: float
    unit: str


_encode = msgspec.json.Encoder().encode


def write_rows(folder: Path, number: int, content: bytes, suffix: str = "jsonl") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".part-{number:07d}.partial"
    partial.write_bytes(content)
    partial.replace(folder / f"part-{number:07d}.{suffix}")


def _reads_update_atime(folder: Path) -> bool:
    """Whether reading a file in `folder` moves its access time past its modification time
    (Linux's default `relatime` does on the first read after a write; `noatime` never)."""
    probe = folder / ".atime-probe"
    probe.write_bytes(b"probe")
    time.sleep(0.05)  # past the file system's timestamp granularity
    probe.read_bytes()
    stat = probe.stat()
    probe.unlink()
    return stat.st_atime_ns > stat.st_mtime_ns


class FileFeed:
    """The job's input folder, written one file at a time in the order the job must read them.

    `ready()` is true once the job has opened the last file written (its access time moved past
    its modification time), so that the source's next scan finds one unread file only and
    cannot read two out of order. On a file system that does not record reads (`noatime`) it
    falls back to `fallback_s` between files, which is enough only while the job keeps up."""

    def __init__(self, folder: Path, fallback_s: float = 2.0) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.files = 0
        self.last: Path | None = None
        self.written_at = 0.0
        self.fallback_s = fallback_s
        self.reads_visible = _reads_update_atime(folder)

    def ready(self) -> bool:
        if self.last is None:
            return True
        if not self.reads_visible:
            return time.time() - self.written_at >= self.fallback_s
        stat = self.last.stat()
        return stat.st_atime_ns > stat.st_mtime_ns

    def write(self, content: bytes, suffix: str = "b64") -> Path:
        if not self.ready():
            raise RuntimeError(f"{self.last} is not read yet: writing now could reorder them")
        self.files += 1
        write_rows(self.folder, self.files, content, suffix=suffix)
        self.last = self.folder / f"part-{self.files:07d}.{suffix}"
        self.written_at = time.time()
        return self.last


def batch_lines(payloads: list[bytes]) -> bytes:
    """Compact batches as the job's source reads them from files: one base64 batch per line."""
    return b"".join(base64.b64encode(payload) + b"\n" for payload in payloads)


def sorted_batches(columns: ReadingColumns) -> list[bytes]:
    """Readings in event-time order, cut into compact batches of at most `BATCH_READINGS`."""
    order = np.argsort(columns.timestamp, kind="stable")
    ordered = columns.take(order)
    return [
        encode_batch(ordered.take(slice(start, start + BATCH_READINGS)), producer="stream-feed")
        for start in range(0, len(ordered), BATCH_READINGS)
    ]


SENTINEL = "SENTINEL"
SENTINEL_RAPID = "SENTINEL-RAPID"  # the rapid-change sentinels' machine: their own OVER partitions
SENTINEL_CHANGES = 6  # readings alternating between a metric's valid limits, 1 s apart


def sentinel_anomalies() -> frozenset[tuple[str, str]]:
    """(metric, anomaly type) of every anomaly the end of stream raises: one per metric with a
    severity rule (<METRIC>_HIGH) and one per metric with a rapid-change rule (RAPID_CHANGE),
    so that every rule's INSERT (each its own sink) commits one."""
    catalog = load_catalog().measured
    return frozenset(
        [(name, f"{name.upper()}_HIGH") for name, m in catalog.items() if m.stream is not None]
        + [(name, "RAPID_CHANGE") for name, m in catalog.items() if m.rapid_change is not None]
    )


def _end_of_stream_rows() -> list[_Row]:
    """The end of the rules' input, in event-time order: a row the rules' view drops (no such
    metric) whose event time moves the watermark past every window of the run; then sentinels
    that raise one anomaly per rule and metric (`sentinel_anomalies`); and a second dropped row
    that moves the watermark past the sentinels' windows and runs, so the rules emit them.

    - Severity: per metric with a stream rule, its valid maximum (above the critical level)
      for as many readings as its debounce (`Metric.stream_debounce`: the rule raises only on
      such a run, and emits it once the watermark passes it).
    - Rapid change: per metric with a rapid-change rule, `SENTINEL_CHANGES` readings 1 s apart
      alternating between its valid minimum and maximum (without the farthest reading the
      window's standard deviation stays above half the range, far above any limit; the
      calibrated rules look a limit up by series and fall back to the catalog's for these).

    Each rule's INSERT is its own sink, committed by its own task at each checkpoint, and each
    emits its sentinels after all its other output (they are the last windows and runs in event
    time). So the sentinels of every rule in committed files (`holds_sentinel`) tell that all
    output is committed; one rule's sentinel does not tell it of another rule's output (the
    window rule's last output could still be uncommitted, and was, in a loaded CI run)."""
    catalog = load_catalog().measured
    start = END_OF_STREAM_MS + 1
    rows = [_Row(END_OF_STREAM_MS, "END", "END", "END", "end_of_stream", 0.0, "none")]
    longest_s = 0
    for name, metric in catalog.items():
        limits = metric.valid_range
        if metric.stream is not None:
            key = (SENTINEL, SENTINEL, f"SENTINEL-{name}", name)
            run = metric.stream_debounce or 1
            rows += [_Row(start + i, *key, limits.max, metric.unit) for i in range(run)]
        if metric.rapid_change is not None:
            key = (SENTINEL, SENTINEL_RAPID, f"{SENTINEL_RAPID}-{name}", name)
            rows += [
                _Row(start + 1_000 * i, *key, limits.max if i % 2 else limits.min, metric.unit)
                for i in range(SENTINEL_CHANGES)
            ]
            longest_s = max(longest_s, metric.rapid_change.window_seconds)
    last = max(row.timestamp for row in rows)
    past = last + longest_s * 1_000 + FLINK_DELAY_MS + 1_000
    rows.append(_Row(past, "END", "END", "END", "end_of_stream", 0.0, "none"))
    return sorted(rows, key=lambda row: row.timestamp)


def end_of_stream_row() -> bytes:
    """The end of a bounded input (`_end_of_stream_rows`) as JSON rows."""
    return b"".join(msgspec.json.encode(row) + b"\n" for row in _end_of_stream_rows())


def end_of_stream_batch() -> bytes:
    """`end_of_stream_row`'s rows as one compact batch (the live job reads batches)."""
    rows = _end_of_stream_rows()
    keys: dict[SeriesKey, int] = {}
    index = [
        keys.setdefault(
            SeriesKey(r.factory_id, r.machine_id, r.sensor_id, r.metric, r.unit), len(keys)
        )
        for r in rows
    ]
    columns = ReadingColumns(
        list(keys),
        np.array(index, dtype=np.int32),
        np.array([r.timestamp for r in rows], dtype=np.int64),
        np.array([r.value for r in rows]),
    )
    return encode_batch(columns, producer="stream-feed")


def holds_sentinel(folder: Path) -> bool:
    """Whether the job's committed output holds every sentinel anomaly (`sentinel_anomalies`):
    then every rule's output before them is committed too."""
    marker = f'"factory_id":"{SENTINEL}"'.encode()
    found: set[tuple[str, str]] = set()
    for path in folder.rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        content = path.read_bytes()
        if marker not in content:
            continue
        for line in content.splitlines():
            if marker in line:
                anomaly = decode_anomaly(line)
                found.add((anomaly.metric, anomaly.anomaly_type))
    return sentinel_anomalies() <= found


def main(argv: list[str] | None = None) -> int:
    from iiot import logs

    parser = argparse.ArgumentParser(description="The stream rules' feed and output")
    parser.add_argument("--plan", type=Path, required=True)
    args = parser.parse_args(argv)
    logs.configure("INFO")
    plan = Plan.read(args.plan)
    service = Service(plan.status_dir / "stream.json")
    kinesis = client("kinesis")
    reader = ShardReader(TELEMETRY_STREAM, kinesis)
    reader.refresh()
    validator = Validator(load_catalog())
    readings_dir = plan.stream_dir / "readings"
    feed = FileFeed(readings_dir)
    anomalies_dir = plan.stream_dir / "anomalies"
    dead_letters_dir = plan.stream_dir / "deadletters"  # flink_job.py: beside the anomalies
    counted_files: set[str] = set()
    ledger = (plan.stream_dir / "anomalies-forwarded.jsonl").open("ab")
    seen: set[Any] = set()
    forwarded_files: set[str] = set()
    sentinels: set[tuple[str, str]] = set()  # (metric, anomaly type) of the sentinels forwarded
    late_spans: dict[str, list[int]] = {}  # factory -> [first, last, readings]
    counters: dict[str, Any] = {
        "batches": 0,
        "duplicate_batches": 0,
        "refused_batches": 0,
        "dead_letters": 0,
        "batches_written": 0,
        "rows": 0,
        "late_rows": 0,
        "files": 0,
        "waits_for_job": 0,  # releases held because the job had not opened the last file
        "reads_visible": feed.reads_visible,
        "max_event_ms": 0,
        "anomalies_forwarded": 0,
        "last_activity": 0.0,
        "finished": False,
        "sentinel_seen": False,
        "late_spans": late_spans,
    }
    service.counters = counters
    clock: SimClock | None = None

    def sim_now() -> int:
        nonlocal clock
        if clock is None:
            document = read_json(plan.status_dir / "clock.json")
            if document is None:
                return 0
            clock = SimClock(int(document["start_ms"]), document["wall0"], document["speed"])
        return clock.sim_ms()

    # readings received and not yet given to the job; refused batches, passed on as they came
    pending: list[ReadingColumns] = []
    refused: list[bytes] = []
    last_seen: dict[str, float] = {}  # factory -> wall time of its last batch
    newest: dict[str, int] = {}  # factory -> newest event time received
    released = 0  # event time up to which rows went to the job, in order

    def receive() -> bool:
        got = False
        for shard in reader.shards.values():
            records = reader.read(shard, 100)
            for record in records:
                # The gateways upload compact batches only; anything else on the stream is the
                # decoder's to dead-letter, as in the deployed job.
                payload = bytes(record["Data"])
                try:
                    batch, validated = validate_batch(payload, validator)
                except WireFormatError:
                    batch = None
                if batch is None:  # refused whole: the job's decoder dead-letters it
                    refused.append(payload)
                    counters["refused_batches"] += 1
                    got = True
                    continue
                if batch.batch_id in seen:
                    counters["duplicate_batches"] += 1
                    continue
                seen.add(batch.batch_id)
                counters["batches"] += 1
                columns = validated.columns
                if not len(columns):
                    continue
                if not last_seen:  # every factory is expected from the first batch on
                    for expected in plan.factory_ids:
                        last_seen[expected] = time.time()
                        newest[expected] = 0
                pending.append(columns)
                factories = np.array([key.factory_id for key in columns.series])
                for factory in set(factories[np.unique(columns.series_index)].tolist()):
                    of_factory = factories[columns.series_index] == factory
                    last_seen[factory] = time.time()
                    newest[factory] = max(
                        newest.get(factory, 0), int(columns.timestamp[of_factory].max())
                    )
                counters["rows"] += len(columns)
                got = True
            if records:
                reader.checkpoint(shard, records[-1]["SequenceNumber"])
        return got

    def release(everything: bool = False) -> bool:
        """Readings up to the slowest active factory's newest event time, in event-time order,
        as compact batches; a factory silent for `IDLE_S` does not hold the others back
        (source idleness). Refused batches go on at once, as they came."""
        nonlocal released
        if not pending and not refused:
            return False
        if not feed.ready():  # the rows wait for the next file (FileFeed)
            counters["waits_for_job"] += 1
            return False
        out = list(refused)
        refused.clear()
        ready_count = 0
        if pending:
            now = time.time()
            active = [f for f, at in last_seen.items() if now - at <= IDLE_S]
            if everything:
                threshold = 2**62
            elif active:
                threshold = min(newest[f] for f in active)
            else:
                threshold = max(newest.values())
            columns = ReadingColumns.concat(pending)
            ready = columns.timestamp <= threshold
            ready_count = int(ready.sum())
            if ready_count:
                taken = columns.take(ready)
                late = taken.timestamp < released - FLINK_DELAY_MS
                if late.any():
                    factories = np.array([key.factory_id for key in taken.series])
                    late_factories = factories[taken.series_index[late]]
                    late_times = taken.timestamp[late]
                    for factory in np.unique(late_factories).tolist():
                        times = late_times[late_factories == factory]
                        span = late_spans.setdefault(factory, [2**62, 0, 0])
                        span[0], span[1] = (
                            min(span[0], int(times.min())),
                            max(span[1], int(times.max())),
                        )
                        span[2] += len(times)
                    counters["late_rows"] += int(late.sum())
                released = max(released, int(taken.timestamp.max()))
                out.extend(sorted_batches(taken))
                pending.clear()
                if ready_count < len(columns):
                    pending.append(columns.take(~ready))
        if not out:
            return False
        feed.write(batch_lines(out))
        counters["files"] = feed.files
        counters["batches_written"] += len(out)
        counters["released_ms"] = released
        counters["last_activity"] = time.time()
        return True

    def count_dead_letters() -> None:
        """The job's committed dead letters (records its decoder refused)."""
        if not dead_letters_dir.is_dir():
            return
        for path in sorted(dead_letters_dir.rglob("*")):
            if not path.is_file() or path.name.startswith(".") or str(path) in counted_files:
                continue
            counted_files.add(str(path))
            counters["dead_letters"] += sum(
                1 for line in path.read_bytes().splitlines() if line.strip()
            )

    def forward() -> bool:
        count_dead_letters()
        if not anomalies_dir.is_dir():
            return False
        moved = False
        for path in sorted(anomalies_dir.rglob("*")):
            if not path.is_file() or path.name.startswith(".") or str(path) in forwarded_files:
                continue
            forwarded_files.add(str(path))
            for line in path.read_bytes().splitlines():
                if not line.strip():
                    continue
                anomaly = decode_anomaly(line)
                if anomaly.factory_id == SENTINEL:
                    sentinels.add((anomaly.metric, anomaly.anomaly_type))
                    counters["sentinel_seen"] = sentinel_anomalies() <= sentinels
                    continue
                kinesis.put_record(
                    StreamName=ANOMALY_STREAM,
                    Data=line,
                    PartitionKey=f"{anomaly.factory_id}/{anomaly.machine_id}",
                )
                now_sim = sim_now()
                ledger.write(
                    msgspec.json.encode(
                        {
                            "anomaly_id": anomaly.anomaly_id,
                            "factory_id": anomaly.factory_id,
                            "anomaly_type": anomaly.anomaly_type,
                            "timestamp": anomaly.timestamp,
                            "forwarded_wall": time.time(),
                            "delay_s": round((now_sim - anomaly.timestamp) / 1000, 1),
                        }
                    )
                    + b"\n"
                )
                counters["anomalies_forwarded"] += 1
                moved = True
        if moved:
            ledger.flush()
            counters["last_activity"] = time.time()
        return moved

    def step() -> float:
        finishing = (plan.stream_dir / "finish").exists()
        busy = receive()
        busy = release(everything=finishing) or busy
        busy = forward() or busy
        if finishing and not counters["finished"] and not pending and not refused and feed.ready():
            feed.write(batch_lines([end_of_stream_batch()]))
            counters["files"] = feed.files
            counters["finished"] = True
        return 0.0 if busy else 0.2

    service.run(step, on_stop=ledger.close)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
