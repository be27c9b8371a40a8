"""Where the stacks find the runtime parts' files, and the error when one is not there.

Stacks import runtime code only to locate its files. Every file a stack deploys is reached
through `Artifact.require()`, which returns its path or raises `MissingArtifactError` naming
the missing file and the command that creates it: synth fails loudly, and no part of an
environment is left out in silence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class MissingArtifactError(Exception):
    """A file the infrastructure deploys does not exist."""


@dataclass(frozen=True)
class Artifact:
    """A runtime part the infrastructure deploys.

    `files` are relative to `root` (the repository); an entry ending in "/" is a folder.
    `made_by` is the command that creates them; None for files that are part of the
    repository (restored with git).
    """

    name: str
    files: tuple[str, ...]
    made_by: str | None = None
    root: Path = ROOT

    def require(self) -> Path:
        """The first file's path; raises MissingArtifactError if any file is missing."""
        missing = [entry for entry in self.files if not self._exists(entry)]
        if missing:
            todo = (
                f"create it with `{self.made_by}`"
                if self.made_by
                else f"it is part of the repository: `git restore {' '.join(missing)}`"
            )
            raise MissingArtifactError(
                f"{self.name}: {', '.join(missing)} does not exist in {self.root}; {todo}"
            )
        return self.root / self.files[0]

    def _exists(self, entry: str) -> bool:
        path = self.root / entry
        return path.is_dir() if entry.endswith("/") else path.is_file()


ALERT_ROUTER = Artifact("alert router Lambda", ("lambdas/alert_router/handler.py",))
INFLUX_WRITER = Artifact("InfluxDB writer Lambda", ("lambdas/influx_writer/handler.py",))
FLINK_SQL = Artifact("Flink SQL application", ("kda_sql/runner.py", "kda_sql/sql/"))
SPARK_JOBS = Artifact("Spark lake jobs", ("spark_jobs/main.py",))
# Generated, and kept in sync with the SDK by tests/ml/test_sagemaker_pipeline.py.
ML_PIPELINE = Artifact(
    "SageMaker pipeline definition",
    ("ml_pipeline/pipeline_definition.json",),
    made_by="iiot ml pipeline --out ml_pipeline/pipeline_definition.json",
)
# The script the model publish flow runs in CodeBuild (stacks/constructs/model_publish_flow.py).
MODEL_PUBLISHER = Artifact("model publish script", ("ml_pipeline/publish_component.py",))


def _component(name: str, *, built_here: bool) -> Artifact:
    files = (f"edge_components/{name}/recipe.yaml", f"edge_components/{name}/gdk-config.json")
    return Artifact(
        f"Greengrass component {name}",
        (*files, f"edge_components/{name}/src/") if built_here else files,
    )


# Components whose code is in src/; FailureModel and AnomalyModel are data only (published from
# their recipes after a model is approved). All are here so that the recipes that name each
# other get the environment's names.
COMPONENTS = {
    "com.iiot.SensorBuffer": _component("com.iiot.SensorBuffer", built_here=True),
    "com.iiot.FailurePredictor": _component("com.iiot.FailurePredictor", built_here=True),
    "com.iiot.FailureModel": _component("com.iiot.FailureModel", built_here=False),
    "com.iiot.AnomalyModel": _component("com.iiot.AnomalyModel", built_here=False),
    "com.iiot.OpcUaCollector": _component("com.iiot.OpcUaCollector", built_here=True),
}
ALL = (
    ALERT_ROUTER,
    INFLUX_WRITER,
    FLINK_SQL,
    SPARK_JOBS,
    ML_PIPELINE,
    MODEL_PUBLISHER,
    *COMPONENTS.values(),
)
