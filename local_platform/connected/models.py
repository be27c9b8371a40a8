"""The model lifecycle in a connected run: from the lake to the gateways.

`lifecycle(plan, version, until_ms)` does what the SageMaker pipeline and the publish flow do,
with their own commands:

1. the training set: silver readings (delta-rs) up to `until_ms`, the silver maintenance and
   failure tables and the asset register, exported as the run folder `iiot ml features` reads
   (the pipeline's Features step);
2. `iiot ml features`, `iiot ml train`, `iiot ml evaluate` (the pipeline's steps), then the gate
   (PR-AUC at least the pipeline's `MinPrAuc`, 0.3);
3. `iiot ml compile --zip` for the gateways' architectures;
4. publish: the zip and the component recipe (`ml_pipeline.publish_component`) of a new
   com.iiot.FailureModel version into the local component store (`components/`), which mirrors
   the artifacts bucket's layout.

`anomaly_lifecycle(plan, version, until_ms)` does the same for the anomaly detector (the
pipeline's TrainAnomalyModel step): the same training set from the lake, `iiot ml
anomaly-train` (per machine, on its normal operation only), and a new com.iiot.AnomalyModel
version published into the same store by the same `publish`.

`calibrate_rules(plan)` learns the stream rules' rapid-change limits from the same lake
(`iiot stream calibrate --silver`) and renders the SQL with them, which the run's Flink job runs
(the live rules and the late data's evaluation).

`deploy(plan, factory, store_dir, component)` is the deployment on one gateway: the version's
files are unpacked beside the current ones and moved into place one by one (a rename each), the
manifest last, which is what the running FailurePredictor watches: it loads the new model beside
the old one and swaps it in, keeping its per-machine feature state (the anomaly model is one
file, anomaly_model.json, which the predictor watches the same way).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from local_platform.connected import maintenance
from local_platform.connected.gateway import (
    ANOMALY_MODEL_COMPONENT,
    FAILURE_MODEL_COMPONENT,
    ROOT,
    model_dir,
)
from local_platform.connected.plan import Plan, write_json

MIN_PR_AUC = 0.3  # ml_pipeline/sagemaker_pipeline.py: MinPrAuc's default
STORE_URI = "s3://iiot-local-artifacts/components"


@dataclass(frozen=True)
class ModelComponent:
    """A model component: its name, and its artifact (`<artifact>.zip`, holding the folder
    `<artifact>/` that the gateway's nucleus unpacks and the predictor reads)."""

    name: str
    artifact: str

    @property
    def recipe(self) -> Path:
        return ROOT / "edge_components" / self.name / "recipe.yaml"

    @property
    def zip_name(self) -> str:
        return f"{self.artifact}.zip"


FAILURE_MODEL = ModelComponent(FAILURE_MODEL_COMPONENT, "failure_model")
ANOMALY_MODEL = ModelComponent(ANOMALY_MODEL_COMPONENT, "anomaly_model")


# The columns of the run folder's CSV files (local_platform/simulator.py writes the same).
FAILURE_FIELDS = [
    "failure_id", "factory_id", "machine_id", "failure_mode", "degradation_start_ms",
    "failed_at_ms", "repaired_at_ms",
]  # fmt: skip
MAINTENANCE_FIELDS = [
    "maintenance_id", "factory_id", "machine_id", "kind", "started_at_ms", "completed_at_ms",
    "failure_id", "averted_failure",
]  # fmt: skip
MACHINE_FIELDS = [
    "factory_id", "machine_id", "model", "installed_on", "vibration_sensitivity",
    "thermal_sensitivity", "load_factor",
]  # fmt: skip


class LifecycleError(RuntimeError):
    pass


def export_training_set(plan: Plan, out: Path, until_ms: int) -> dict[str, int]:
    """The run folder of the pipeline's Features step, from the lake."""
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq
    from deltalake import DeltaTable

    out.mkdir(parents=True, exist_ok=True)
    silver = DeltaTable(str(plan.lake_dir / "silver" / "readings")).to_pyarrow_dataset()
    columns = ["timestamp", "factory_id", "machine_id", "sensor_id", "metric", "value", "unit"]
    readings = silver.to_table(columns=columns, filter=ds.field("timestamp") < until_ms)
    if readings.num_rows == 0:  # e.g. a history no longer than the model's lag
        until = datetime.fromtimestamp(until_ms / 1000, UTC)
        raise LifecycleError(
            f"the lake holds no readings before {until:%Y-%m-%d %H:%M} UTC to train on: the "
            f"history ({plan.history_hours} h) must be longer than the model's lag "
            f"({plan.model_lag_hours} h)"
        )
    readings = readings.set_column(
        0, "timestamp", readings.column("timestamp").cast(pa.timestamp("ms", tz="UTC"))
    )
    pq.write_table(readings, out / "readings.parquet", compression="zstd")

    def table(name: str) -> list[dict[str, Any]]:
        path = plan.lake_dir / "silver" / name
        if not (path / "_delta_log").is_dir():
            return []
        rows: list[dict[str, Any]] = DeltaTable(str(path)).to_pyarrow_table().to_pylist()
        return rows

    failures = [f for f in table("failures") if int(f["failed_at_ms"]) < until_ms]
    jobs = [j for j in table("maintenance_records") if int(j["completed_at_ms"]) < until_ms]
    _write_csv(out / "failures.csv", failures, FAILURE_FIELDS)
    _write_csv(out / "maintenance_records.csv", jobs, MAINTENANCE_FIELDS)
    _, _, machines = maintenance.schedule(plan)
    _write_csv(out / "machines.csv", [vars(m) for m in machines], MACHINE_FIELDS)
    start = int(readings.column("timestamp").cast(pa.int64()).to_numpy().min())
    (out / "manifest.json").write_text(json.dumps({"start_ms": start, "end_ms": until_ms}))
    return {"readings": readings.num_rows, "failures": len(failures), "maintenance": len(jobs)}


def _write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _iiot(log: Path, *args: str) -> str:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        sink.write(f"$ iiot {' '.join(args)}\n".encode())
        done = subprocess.run(  # noqa: S603 - our interpreter and the project's command line
            [sys.executable, "-m", "local_platform.cli", "--no-log-json", *args],
            capture_output=True,
            check=False,
        )
        sink.write(done.stdout + done.stderr)
    if done.returncode != 0:
        raise LifecycleError(f"iiot {args[0]} {args[1]} failed; see {log}")
    return done.stdout.decode()


def lifecycle(plan: Plan, number: int, until_ms: int) -> dict[str, Any]:
    """Train, evaluate, gate, compile and publish FailureModel version 1.0.<number>."""
    began = time.perf_counter()
    work = plan.work_dir / "ml" / f"v{number}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = plan.run_dir / "logs" / f"model-v{number}.log"
    lake_tables = maintenance.build_tables(plan)
    data = export_training_set(plan, work / "training_set", until_ms)
    _iiot(log, "ml", "features", "--data", str(work / "training_set"),
          "--out", str(work / "features.npz"))  # fmt: skip
    version = f"local-{number}-{int(until_ms)}"
    _iiot(log, "ml", "train", "--data", str(work / "features.npz"), "--out", str(work / "model"),
          "--rounds", "80")  # fmt: skip
    _set_version(work / "model", version)
    training = json.loads((work / "model" / "training.json").read_text())
    _iiot(log, "ml", "evaluate", "--model", str(work / "model"),
          "--data", str(work / "features.npz"), "--out", str(work / "evaluation.json"))  # fmt: skip
    evaluation = json.loads((work / "evaluation.json").read_text())
    pr_auc = evaluation.get("pr_auc")
    figures: dict[str, Any] = {
        "component_version": f"1.0.{number}",
        "model_version": version,
        "trained_until_ms": until_ms,
        "training_set": data,
        "lake_maintenance_tables": lake_tables,
        "pr_auc": pr_auc,
        # the gateways alert at the model's threshold; on a short lake history it is the
        # documented default rather than cross-validation's noisy pick (train.threshold_rule)
        "threshold": training["threshold"],
        "threshold_source": training.get("threshold_source"),
        "gate": f"PR-AUC >= {MIN_PR_AUC}",
    }
    if pr_auc is None or pr_auc < MIN_PR_AUC:
        figures.update(published=False, seconds=round(time.perf_counter() - began, 1))
        return figures
    arches = "x86_64,aarch64" if shutil.which("aarch64-linux-gnu-gcc") else "x86_64"
    _iiot(log, "ml", "compile", "--model", str(work / "model"), "--out",
          str(work / "failure_model"), "--arch", arches, "--zip",
          str(work / "failure_model.zip"))  # fmt: skip
    store = publish(plan, number, work / "failure_model.zip")
    figures.update(
        published=True,
        store=str(store),
        compiled_for=arches.split(","),
        seconds=round(time.perf_counter() - began, 1),
    )
    return figures


def anomaly_lifecycle(plan: Plan, number: int, until_ms: int) -> dict[str, Any]:
    """Train and publish AnomalyModel version 1.0.<number> from the lake's history up to
    `until_ms`: the training set the failure model's Features step reads, then `iiot ml
    anomaly-train` (normal operation only: the hours before each failure, down times and
    maintenance jobs left out), then the zip into the local component store."""
    began = time.perf_counter()
    work = plan.work_dir / "ml" / f"anomaly-v{number}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = plan.run_dir / "logs" / f"anomaly-model-v{number}.log"
    maintenance.build_tables(plan)
    data = export_training_set(plan, work / "training_set", until_ms)
    version = f"local-anomaly-{number}-{int(until_ms)}"
    zip_path = work / ANOMALY_MODEL.zip_name
    output = _iiot(log, "ml", "anomaly-train", "--data", str(work / "training_set"),
                   "--out", str(work / ANOMALY_MODEL.artifact), "--zip", str(zip_path),
                   "--version", version)  # fmt: skip
    trained = json.loads(output)
    store = publish(plan, number, zip_path, ANOMALY_MODEL)
    return {
        "component": ANOMALY_MODEL.name,
        "component_version": f"1.0.{number}",
        "model_version": version,
        "trained_until_ms": until_ms,
        "training_set": data,
        "machines": trained["machines"],
        "sensors": trained["sensors"],
        "screened_out": (trained.get("screening") or {}).get("dropped", []),
        "machines_without_enough_normal_rows": trained["machines_without_enough_normal_rows"],
        "published": True,
        "store": str(store),
        "seconds": round(time.perf_counter() - began, 1),
    }


def calibrate_rules(plan: Plan) -> dict[str, Any]:
    """The stream rules' rapid-change limits from the lake's history (what a calibration job
    over the lake does before the Flink application is updated): `iiot stream calibrate
    --silver` over silver's normal operation before the live start, then `iiot stream render
    --calibration` into `stream/calibration/sql` (what `flink_job.py --sql-dir` takes). Series
    without a learned limit keep the catalog's."""
    from kda_sql.calibration import Calibration
    from local_platform.connected.late import CALIBRATION_FILE, REFERENCE

    began = time.perf_counter()
    folder = plan.stream_dir / "calibration"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    log = plan.run_dir / "logs" / "calibration.log"
    maintenance.build_tables(plan)
    limits = plan.stream_dir / CALIBRATION_FILE  # where late.context_ms reads it
    _iiot(log, "stream", "calibrate", "--silver", str(plan.lake_dir / "silver"),
          "--until-ms", str(plan.live_start_ms), "--out", str(limits))  # fmt: skip
    learned = Calibration.load(limits)
    series = learned.series
    # The late data's evaluation runs, in the same job, a reference copy of each late span under
    # the factory id REF-<factory> (`late.py`): it must meet the same rules, so each series'
    # limit is rendered for that name too.
    rendered = folder / "rendered_limits.json"
    Calibration(
        series + tuple(replace(s, factory_id=REFERENCE + s.factory_id) for s in series),
        learned.settings,
    ).save(rendered)
    _iiot(log, "stream", "render", "--calibration", str(rendered), "--out", str(folder / "sql"))
    return {
        "calibrated": True,
        "series": len(series),
        "windows_s": sorted({s.window_seconds for s in series}),
        "limits": str(limits),
        "sql_dir": str(folder / "sql"),
        "seconds": round(time.perf_counter() - began, 1),
    }


def _set_version(model: Path, version: str) -> None:
    """Name the model version (the pipeline names it after the model package)."""
    for name in ("training.json", "metrics.json"):
        path = model / name
        if path.exists():
            document = json.loads(path.read_text())
            if "model_version" in document:
                document["model_version"] = version
                path.write_text(json.dumps(document, indent=2))


def publish(
    plan: Plan, number: int, artifact: Path, component: ModelComponent = FAILURE_MODEL
) -> Path:
    """The version's zip and recipe in the local component store."""
    from ml_pipeline.publish_component import component_recipe

    component_version = f"1.0.{number}"
    folder = plan.work_dir / "components" / component.name / component_version
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(artifact, folder / component.zip_name)
    recipe = component_recipe(
        yaml.safe_load(component.recipe.read_text()),
        version=component_version,
        model_package_version=str(number),
        artifact_uri=f"{STORE_URI}/{component.name}/{component_version}/{component.zip_name}",
    )
    write_json(folder / "recipe.json", recipe)
    return folder


def deploy(
    plan: Plan, factory: str, store: Path, component: ModelComponent = FAILURE_MODEL
) -> None:
    """Put a published version in place on one gateway, the manifest last."""
    target = model_dir(plan, factory, component.name) / component.artifact
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        with zipfile.ZipFile(store / component.zip_name) as archive:
            archive.extractall(tmp)
        unpacked = Path(tmp) / component.artifact
        files = sorted(unpacked.iterdir(), key=lambda p: p.name == "manifest.json")
        for file in files:
            os.replace(file, target / file.name)
