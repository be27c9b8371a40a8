"""The anomaly detector on the gateway path: SKAB F1 and latency per reading, state included.

Trains the shipped detector (`ml_pipeline.anomaly`, defaults) on the first 400 rows of each of
SKAB's 34 files, one machine per file, then replays every file through the gateway's
`edge_runtime.anomaly_detector.AnomalyDetector` one platform reading (one sensor value) at a
time, files interleaved row by row as one gateway serving 34 pumps would see them. The F1 is
SKAB's pooled outlier F1 of the detector's per-row alarm on the test rows; the case study's
Isolation Forest (StandardScaler + contamination 0.1) is scored the same way.

Latency: `p50_us`/`p99_us` are per SKAB reading, i.e. one timestamp of a pump: its 8 sensor
values fed as 8 platform readings, with the row assembly, moving averages, score, smoothing
and alert state updated (the stricter unit); the per platform reading figures come before the
last line. The last line is JSON: {"skab_f1", "isolation_forest_f1", "p50_us", "p99_us"}.

    .venv/bin/python bench/edge_anomaly.py [--data ../shared/datasets/skab]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from edge_runtime.anomaly_detector import AnomalyDetector
from ml_pipeline.anomaly import DetectorConfig
from ml_pipeline.skab import (
    SENSORS,
    TRAIN_ROWS,
    batch_alarms,
    isolation_forest_case_study,
    isolation_forest_skab_notebook,
    load_skab,
    pooled,
    train_per_file,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "skab"
    parser.add_argument("--data", type=Path, default=default)
    args = parser.parse_args()
    files = load_skab(args.data)
    models = train_per_file(files, DetectorConfig())
    machine = next(iter(models.machines.values()))
    print(
        f"trained {len(models.machines)} machines on {TRAIN_ROWS} rows each: sensors "
        f"{list(machine.sensors)}, {machine.parameter_count} parameters per machine"
    )

    detector = AnomalyDetector(models, raise_after=6, clear_after=60)
    update = detector.update
    clock = time.perf_counter_ns
    streams = [
        (f.name, f.timestamp.tolist(), f.values.tolist(), np.zeros(len(f.values), np.int8))
        for f in files
    ]
    per_row: list[int] = []
    per_reading: list[int] = []
    longest = max(len(values) for _, _, values, _ in streams)
    for i in range(longest):  # one row of every pump in turn
        for name, timestamps, values, alarms in streams:
            if i >= len(values):
                continue
            t, row = timestamps[i], values[i]
            row_began = clock()
            for metric, value in zip(SENSORS, row, strict=True):
                began = clock()
                update(t, name, metric, value)
                per_reading.append(clock() - began)
            per_row.append(clock() - row_began)
            alarms[i] = detector.machines[name].alarm
    gateway = [alarms[TRAIN_ROWS:] for _, _, _, alarms in streams]
    batch = batch_alarms(files, models)
    agree = sum(int((a == b).sum()) for a, b in zip(gateway, batch, strict=True))
    rows = sum(len(a) for a in gateway)
    overhead = []
    for _ in range(10_000):
        began = clock()
        overhead.append(clock() - began)

    detector_f1 = pooled(files, gateway).figures()
    case_study = pooled(files, isolation_forest_case_study(files)).figures()
    notebook = pooled(files, isolation_forest_skab_notebook(files)[0]).figures()
    row_us = np.array(per_row) / 1000
    reading_us = np.array(per_reading) / 1000
    print(f"gateway alarms equal the batch definition's on {agree}/{rows} test rows")
    print(
        "SKAB outlier F1 / FAR / MAR: detector "
        f"{detector_f1['f1']} / {detector_f1['far']} / {detector_f1['mar']}; Isolation Forest, "
        f"case study {case_study['f1']} / {case_study['far']} / {case_study['mar']}, SKAB's "
        f"notebook {notebook['f1']} / {notebook['far']} / {notebook['mar']} (published 0.29)"
    )
    print(
        f"per platform reading (one sensor value, {len(reading_us)}): "
        f"p50 {np.percentile(reading_us, 50):.2f} us, p99 {np.percentile(reading_us, 99):.2f} us;"
        f" timer overhead p50 {np.percentile(overhead, 50) / 1000:.2f} us"
    )
    print(
        f"per SKAB reading (one pump timestamp = 8 platform readings, {len(row_us)}): "
        f"p50 {np.percentile(row_us, 50):.2f} us, p99 {np.percentile(row_us, 99):.2f} us"
    )
    print(
        json.dumps(
            {
                "skab_f1": detector_f1["f1"],
                "isolation_forest_f1": case_study["f1"],
                "p50_us": round(float(np.percentile(row_us, 50)), 2),
                "p99_us": round(float(np.percentile(row_us, 99)), 2),
            }
        )
    )


if __name__ == "__main__":
    main()
