"""Where the stacks find the runtime parts' files, and which of them are not there yet.

Stacks import runtime code only to locate its files. A part whose files are missing is not
deployed with a stand-in: the stack leaves it out, adds a warning to the synth output, and
`missing()` lists it (app.py prints the list; tests/infra asserts it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aws_cdk import Annotations
from constructs import IConstruct

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Artifact:
    """A runtime part the infrastructure deploys; `files` must all exist (relative to ROOT)."""

    name: str
    files: tuple[str, ...]

    def present(self) -> bool:
        return all((ROOT / file).is_file() for file in self.files)

    def path(self, index: int = 0) -> Path:
        return ROOT / self.files[index]

    def report_gap(self, scope: IConstruct, what_is_left_out: str) -> None:
        missing = ", ".join(file for file in self.files if not (ROOT / file).is_file())
        Annotations.of(scope).add_warning_v2(
            "iiot:missing-artifact",
            f"{self.name} is not deployed: {missing} does not exist yet ({what_is_left_out})",
        )


ALERT_ROUTER = Artifact("alert router Lambda", ("lambdas/alert_router/handler.py",))
INFLUX_WRITER = Artifact("InfluxDB writer Lambda", ("lambdas/influx_writer/handler.py",))
FLINK_SQL = Artifact("Flink SQL application", ("kda_sql/runner.py",))
SPARK_JOBS = Artifact("Spark lake jobs", ("spark_jobs/main.py",))
ML_PIPELINE = Artifact("SageMaker pipeline definition", ("ml_pipeline/sagemaker_pipeline.py",))
COMPONENT_NAMES = ("com.iiot.SensorBuffer", "com.iiot.FailurePredictor", "com.iiot.FailureModel")
COMPONENTS = {
    name: Artifact(
        f"Greengrass component {name}",
        (f"edge_components/{name}/recipe.yaml", f"edge_components/{name}/gdk-config.json"),
    )
    for name in COMPONENT_NAMES
}
FAILURE_MODEL_RECIPE = "edge_components/com.iiot.FailureModel/recipe.yaml"
ALL = (ALERT_ROUTER, INFLUX_WRITER, FLINK_SQL, SPARK_JOBS, ML_PIPELINE, *COMPONENTS.values())


def missing() -> list[Artifact]:
    """The runtime parts whose files are not there yet."""
    return [artifact for artifact in ALL if not artifact.present()]
