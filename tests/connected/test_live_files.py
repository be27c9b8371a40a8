"""The connected run's live Flink job (`flink_job.py`: a continuous file source over the folder
the feed writes) raises the same anomalies as a bounded run of the same rules over the same
files read in order.

The source reads the files one scan of the folder finds in no particular order; a file read
after its successor is behind the watermark and its windows are dropped without an error. The
feed (`stream.FileFeed`) writes a file only once the job has opened the one before. Here the
files are written from the moment the job's process starts, while its JVM is still starting:
written all at once, several would wait for the first scan together (the connected run lost
most of its RAPID_CHANGE windows that way).

The output is read once every rule's sentinel is committed (`stream.holds_sentinel`): each
rule's INSERT is its own sink, committed by its own task, and a clean-clone CI run beside a demo
read it once the severity rule's sentinel was there, while the window rule's last windows (40
RAPID_CHANGE of 3 machines' restarts, the latest in event time) were not committed yet.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from iiot.anomaly import decode_anomaly
from iiot.contract import ReadingColumns, SeriesKey
from kda_sql.flink_env import run_rules
from local_platform.connected import flink_job
from local_platform.connected.stream import (
    SENTINEL,
    FileFeed,
    batch_lines,
    end_of_stream_batch,
    holds_sentinel,
    sorted_batches,
)

START_MS = 1_767_830_400_000
FILES = 8
METRICS = [  # metric, unit, level, noise
    ("temperature", "degC", 70.0, 0.5),
    ("vibration", "mm/s", 5.0, 0.2),
    ("rpm", "rpm", 1500.0, 5.0),
    ("pressure", "bar", 50.0, 0.5),
    ("flow_rate", "L/min", 400.0, 3.0),
]


def _fleet_files() -> list[bytes]:
    """Two hours of 3 factories x 2 machines, a reading every 5 s per sensor; every machine
    stops (its readings drop to 0) for 20 minutes at its own time, so each stop and restart
    raises RAPID_CHANGE windows. Cut in time order into `FILES` files, then the end of stream."""
    rng = np.random.default_rng(16)
    steps = 2 * 3600 // 5
    keys: list[SeriesKey] = []
    index, stamps, values = [], [], []
    for f in range(3):
        for m in range(2):
            factory, machine = f"F{f:02d}", f"F{f:02d}-M{m:03d}"
            stop = START_MS + int(rng.uniform(0.1, 1.5) * 3600_000)
            for metric, unit, level, noise in METRICS:
                keys.append(SeriesKey(factory, machine, f"{machine}-{metric}", metric, unit))
                times = START_MS + np.arange(steps, dtype=np.int64) * 5000 + 700 * f + 90 * m
                value = level + rng.normal(0.0, noise, steps)
                stopped = (times >= stop) & (times < stop + 20 * 60_000)
                value[stopped] = rng.normal(0.0, noise, int(stopped.sum())) + (
                    20.0 if metric == "temperature" else 0.0
                )
                index.append(np.full(steps, len(keys) - 1, dtype=np.int32))
                stamps.append(times)
                values.append(value)
    columns = ReadingColumns(
        keys, np.concatenate(index), np.concatenate(stamps), np.concatenate(values)
    )
    ordered = columns.take(np.argsort(columns.timestamp, kind="stable"))
    per = -(-len(ordered) // FILES)
    files = [
        batch_lines(sorted_batches(ordered.take(slice(i * per, (i + 1) * per))))
        for i in range(FILES)
    ]
    return [*files, batch_lines([end_of_stream_batch()])]


def _anomalies(lines: list[bytes]) -> Counter[tuple[str, str, str, int, float]]:
    """The fleet's anomalies (the end of stream's sentinels left out)."""
    found = (decode_anomaly(line) for line in lines)
    return Counter(
        (a.machine_id, a.metric, a.anomaly_type, a.timestamp, round(a.value, 6))
        for a in found
        if a.factory_id != SENTINEL
    )


def _committed_lines(folder: Path) -> list[bytes]:
    return [
        line
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.name.startswith(".")
        for line in path.read_bytes().splitlines()
        if line.strip()
    ]


def test_the_feed_writes_a_file_only_once_the_job_opened_the_last(tmp_path: Path) -> None:
    feed = FileFeed(tmp_path / "readings")
    assert feed.reads_visible, "this file system records no reads (noatime): the feed paces by time"
    assert feed.ready()
    first = feed.write(b"one\n")
    assert first.name == "part-0000001.b64"
    time.sleep(0.05)
    assert not feed.ready()
    with pytest.raises(RuntimeError, match="not read yet"):
        feed.write(b"two\n")
    assert first.read_bytes() == b"one\n"  # what the job's reader does
    assert feed.ready()
    assert feed.write(b"two\n").name == "part-0000002.b64"
    assert not feed.ready()


@pytest.mark.slow
def test_the_live_job_raises_what_a_bounded_run_of_the_same_files_raises(
    flink_python: Path, tmp_path: Path
) -> None:
    files = _fleet_files()
    together = tmp_path / "all.b64"
    together.write_bytes(b"".join(files))
    bounded = _anomalies(run_rules(together, tmp_path / "bounded", batches=True).output_lines)
    rapid = {key[0] for key in bounded if key[2] == "RAPID_CHANGE"}
    assert len(rapid) == 6  # the scenario: every machine's stop and restart raise it

    source, sink = tmp_path / "live" / "readings", tmp_path / "live" / "anomalies"
    sink.mkdir(parents=True)
    feed = FileFeed(source)
    log = (tmp_path / "live-job.log").open("w")
    job = subprocess.Popen(
        [
            str(flink_python),
            flink_job.__file__,
            *("--source", str(source), "--sink", str(sink), "--watermark-delay-s", "5"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 600
        pending = list(files)
        while pending and time.monotonic() < deadline and job.poll() is None:
            if feed.ready():
                feed.write(pending.pop(0))
            else:
                time.sleep(0.05)
        while not holds_sentinel(sink) and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.5)
        assert holds_sentinel(sink), (
            f"no end of stream from the live job: {len(pending)} files unwritten, exit "
            f"{job.poll()}, log: {(tmp_path / 'live-job.log').read_text()[-3000:]}"
        )
    finally:
        job.terminate()
        try:
            job.wait(30)
        except subprocess.TimeoutExpired:
            job.kill()
            job.wait(30)
        log.close()
    live = _anomalies(_committed_lines(sink))
    missing, extra = bounded - live, live - bounded
    print(f"bounded {sum(bounded.values())}, live {sum(live.values())}", file=sys.stderr)
    assert not missing, (
        f"the live job missed {sum(missing.values())} of the bounded run's "
        f"{sum(bounded.values())} anomalies, of {sorted({k[0] for k in missing})}"
    )
    assert not extra, f"the live job raised {sum(extra.values())} the bounded run did not"
