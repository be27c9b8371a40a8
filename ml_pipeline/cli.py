"""`iiot ml`: features, training, evaluation, compilation, C-MAPSS and the SageMaker pipeline.

Heavy libraries (xgboost, treelite, sagemaker) are imported inside the commands so that
`iiot --help` stays fast.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Predictive maintenance: labels, features, training, evaluation, compilation.",
    no_args_is_help=True,
)


def _print(figures: object) -> None:
    typer.echo(json.dumps(figures, indent=2, sort_keys=True, default=str))


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


@app.command()
def features(
    data: Annotated[Path, typer.Option(help="Run directory (readings.parquet, failures.csv...).")],
    out: Annotated[Path, typer.Option(help="Where to write features.npz.")] = Path("features.npz"),
    horizon_hours: Annotated[float, typer.Option(help="Label horizon H.")] = 24.0,
) -> None:
    """Compute labelled feature rows from a run directory (the pipeline's processing step)."""
    from ml_pipeline.dataset import build_table
    from ml_pipeline.train import save_table

    try:
        table = build_table(data, horizon_ms=int(horizon_hours * 3_600_000))
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    save_table(table, out)
    label = table.extra["label"]
    _print({"rows": len(label), "positive": int((label == 1).sum()), "out": str(out)})


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Run directory or features.npz.")],
    model_dir: Annotated[Path, typer.Option("--out", help="Model directory to write.")] = Path(
        "model"
    ),
    rounds: Annotated[int, typer.Option(help="Boosting rounds.")] = 150,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Alert threshold (default: chosen by cross-validation on training when it holds"
            " enough failures, else 0.8; training.json records which as threshold_source)."
        ),
    ] = None,
) -> None:
    """Train XGBoost (split by time and machine; max_bin and the alert threshold chosen by
    cross-validation on the training machines, the threshold only on enough evidence) and write
    the model and metrics.json."""
    from ml_pipeline.train import load_input, train_and_evaluate

    try:
        metrics = train_and_evaluate(
            load_input(data), model_dir, rounds=rounds, threshold=threshold
        )
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    metrics.pop("split", None)
    _print(metrics)


@app.command()
def evaluate(
    model_dir: Annotated[Path, typer.Option("--model", help="Trained model directory.")],
    data: Annotated[Path, typer.Option(help="Run directory or features.npz.")],
    out: Annotated[Path, typer.Option(help="Metrics JSON to write.")] = Path("metrics.json"),
) -> None:
    """Score the held-out machines' future of `data` and write the metrics JSON."""
    from ml_pipeline.evaluate_job import evaluate_model_dir

    metrics = evaluate_model_dir(model_dir, data, out)
    _print(metrics)


@app.command(name="compile")
def compile_command(
    model_dir: Annotated[Path, typer.Option("--model", help="Trained model directory.")] = Path(
        "model"
    ),
    out: Annotated[Path, typer.Option(help="FailureModel artifact directory.")] = Path(
        "failure_model"
    ),
    arch: Annotated[str, typer.Option(help="Comma-separated: x86_64,aarch64.")] = "x86_64,aarch64",
    zip_path: Annotated[
        Path | None, typer.Option("--zip", help="Also write the component's artifact zip.")
    ] = None,
) -> None:
    """Compile the model to native libraries (TL2cgen + gcc) with a manifest."""
    from ml_pipeline.compile import CompileError, compile_model

    arches = tuple(a.strip() for a in arch.split(",") if a.strip())
    try:
        manifest = compile_model(model_dir, out, arches)
    except (CompileError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    if zip_path is not None:
        zip_path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(out.iterdir()):
                archive.write(file, f"failure_model/{file.name}")
    _print({"out": str(out), "libraries": manifest["libraries"], "zip": str(zip_path or "")})


@app.command()
def cmapss(
    data: Annotated[Path, typer.Option(help="Folder with train/test/RUL_<subset>.txt.")] = Path(
        "../shared/datasets/cmapss"
    ),
    subset: Annotated[str, typer.Option(help="FD001, FD002, FD003 or FD004.")] = "FD001",
    out: Annotated[Path | None, typer.Option(help="Write the figures as JSON here.")] = None,
    folds: Annotated[int, typer.Option(help="Cross-validation folds over training engines.")] = 5,
) -> None:
    """NASA C-MAPSS: choose by CV on training engines, then the test figures once."""
    from ml_pipeline.cmapss import run, subset_files

    try:
        subset_files(data, subset.upper())
        figures = run(data, subset=subset.upper(), folds=folds)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    if out is not None:
        out.write_text(json.dumps(figures, indent=2) + "\n")
    _print(figures)


@app.command(name="anomaly-train")
def anomaly_train(
    data: Annotated[Path, typer.Option(help="Run directory (readings.parquet, failures.csv...).")],
    out: Annotated[Path, typer.Option(help="Folder to write anomaly_model.json into.")] = Path(
        "anomaly_model"
    ),
    zip_path: Annotated[
        Path | None, typer.Option("--zip", help="Also write the AnomalyModel component's zip.")
    ] = None,
    horizon_hours: Annotated[
        float, typer.Option(help="Hours before each failure that are not normal operation.")
    ] = 24.0,
    version: Annotated[str | None, typer.Option(help="Model version (default: now, UTC).")] = None,
) -> None:
    """Train the per-machine anomaly detector on normal operation (the AnomalyModel component)."""
    from ml_pipeline.anomaly import train_from_run, write_artifact
    from ml_pipeline.train import model_version

    try:
        models = train_from_run(
            data, version=version or model_version(), horizon_ms=int(horizon_hours * 3_600_000)
        )
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    path = write_artifact(models, out, zip_path)
    training = models.training
    _print(
        {
            "out": str(path),
            "zip": str(zip_path or ""),
            "model_version": models.model_version,
            "machines": len(models.machines),
            "sensors": training["sensors"],
            "screening": training["screening"],
            "machines_without_enough_normal_rows": training["machines_without_enough_normal_rows"],
        }
    )


@app.command()
def skab(
    data: Annotated[Path, typer.Option(help="The SKAB folder (with data/valve1, ...).")] = Path(
        "../shared/datasets/skab"
    ),
    out: Annotated[Path | None, typer.Option(help="Write the figures as JSON here.")] = None,
    cross_validate: Annotated[
        bool, typer.Option(help="Also estimate a label-chosen smoothing by cross-validation.")
    ] = True,
    candidates: Annotated[
        bool,
        typer.Option(
            help="Also score the other detector families (Hotelling T², MSET, MLP autoencoder, "
            "forecast residuals) under the shipped pipeline (about 2 minutes more)."
        ),
    ] = False,
) -> None:
    """SKAB by its outlier protocol: the anomaly detector and the Isolation Forest baselines."""
    from ml_pipeline.skab import run

    try:
        figures = run(data, cross_validate=cross_validate, candidates=candidates)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    if out is not None:
        out.write_text(json.dumps(figures, indent=2) + "\n")
    _print(figures)


@app.command()
def pipeline(
    out: Annotated[Path, typer.Option(help="Pipeline definition JSON to write.")] = Path(
        "pipeline.json"
    ),
) -> None:
    """Generate the SageMaker pipeline definition offline (no AWS account needed)."""
    from ml_pipeline.sagemaker_pipeline import definition_json

    out.write_text(definition_json())
    steps = [s["Name"] for s in json.loads(out.read_text())["Steps"]]
    _print({"out": str(out), "steps": steps})
