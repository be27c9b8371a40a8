"""PyFlink's own virtual environment (`.venv-flink`) and running the rules in it.

PyFlink pins older pandas/pyarrow than the project, so it cannot live in `.venv`. The
environment is created at set-up, never inside a test: `scripts/bootstrap.sh test` (and the
demo and bench set-up) runs `python -m kda_sql.flink_env`, which creates it from
`kda_sql/requirements-flink.txt` (about 30 s with uv) and records a stamp. Tests call
`require_flink_env()`, which only checks the stamp and fails with the command to run.
`run_rules()` runs `kda_sql/runner.py` with that interpreter on local files: JSON lines (one
reading per line) or, with `batches=True`, compact batches (one base64 batch per line, decoded
by the `iiot-batch` format of `kda_sql/decoder`, whose jar `decoder_jar()` builds).

`FLINK_VERSION` is the one place that names the Flink version: the streaming stack deploys the
Managed Flink runtime of this version (`FLINK-1_20`) with the Kinesis connector built for it,
and the local environment pins `apache-flink` of the same minor version
(tests/stream/test_flink_version.py checks all three).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = Path(__file__).resolve().parent / "requirements-flink.txt"
RUNNER = Path(__file__).resolve().parent / "runner.py"
DEFAULT_ENV_DIR = PROJECT_ROOT / ".venv-flink"
ENV_DIR_VAR = "IIOT_FLINK_VENV"
_STAMP = ".installed-requirements"
# Managed Service for Apache Flink's runtime is FLINK-<major>_<minor>; apache-flink on PyPI is
# <major>.<minor>.<patch>.
FLINK_VERSION = "1.20"
CREATE_COMMAND = "scripts/bootstrap.sh test  (or: .venv/bin/python -m kda_sql.flink_env)"


def managed_flink_runtime(version: str = FLINK_VERSION) -> str:
    """The Managed Flink `RuntimeEnvironment` of a Flink version: "1.20" -> "FLINK-1_20"."""
    return "FLINK-" + version.replace(".", "_")


class FlinkEnvError(RuntimeError):
    """The PyFlink environment could not be created or a job failed; the message says why."""


def flink_env_dir() -> Path:
    return Path(os.environ.get(ENV_DIR_VAR) or DEFAULT_ENV_DIR)


def _digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]


def _python_in(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def _is_current(env_dir: Path) -> bool:
    stamp = env_dir / _STAMP
    return stamp.exists() and stamp.read_text() == _digest() and _python_in(env_dir).exists()


def require_flink_env(env_dir: Path | None = None) -> Path:
    """The PyFlink environment's interpreter, if it exists and matches the requirements file;
    otherwise FlinkEnvError with the command that creates it (nothing is installed here)."""
    env_dir = env_dir or flink_env_dir()
    if not _is_current(env_dir):
        state = "is stale" if (env_dir / _STAMP).exists() else "does not exist"
        raise FlinkEnvError(
            f"PyFlink's environment {env_dir} {state} (kda_sql/requirements-flink.txt pins "
            f"apache-flink {FLINK_VERSION}.x); create it with: {CREATE_COMMAND}"
        )
    return _python_in(env_dir)


def ensure_flink_env(env_dir: Path | None = None) -> Path:
    """Create (or reuse) the PyFlink environment; return its Python interpreter.

    Idempotent and safe to call from parallel processes (a file lock serialises creation). An
    environment made from other requirements is replaced, not patched, so that it holds
    exactly the pinned set.
    """
    env_dir = env_dir or flink_env_dir()
    python = _python_in(env_dir)
    if _is_current(env_dir):
        return python
    digest = _digest()
    stamp = env_dir / _STAMP
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = env_dir.parent / f".{env_dir.name}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_current(env_dir):
            return python
        if env_dir.exists():
            shutil.rmtree(env_dir)
        _run([sys.executable, "-m", "venv", str(env_dir)], "create the virtual environment")
        uv = Path(sys.executable).parent / "uv"
        uv_path = str(uv) if uv.exists() else shutil.which("uv")
        if uv_path:
            command = [uv_path, "pip", "install", "--quiet", "--python", str(python)]
        else:
            command = [str(python), "-m", "pip", "install", "--quiet"]
        _run([*command, "-r", str(REQUIREMENTS)], "install PyFlink")
        stamp.write_text(digest)
    return python


def _run(command: Sequence[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603 (our own argv)
    if done.returncode != 0:
        raise FlinkEnvError(
            f"could not {what} ({' '.join(command[:3])} ...): {done.stderr.strip()[-2000:]}\n"
            "Java 17 and network access to the package index are needed the first time."
        )


@dataclass(frozen=True)
class FlinkRun:
    """The outcome of one local job: output rows and dead letters (JSON lines), its duration."""

    output_lines: list[bytes]
    seconds: float
    log: str
    dead_letter_lines: list[bytes] = field(default_factory=list)


def decoder_jar(out_dir: Path | None = None) -> Path:
    """The compact-batch decoder's jar, compiled against `.venv-flink`'s Flink jars (cached
    by content in `out_dir`, default `.venv-flink/decoder-jars`)."""
    from kda_sql.decoder.build import build_jar, flink_lib_jars

    env_dir = flink_env_dir()
    return build_jar(out_dir or env_dir / "decoder-jars", flink_lib_jars(env_dir))


def dead_letter_dir(output_dir: Path) -> Path:
    """Where a local run's dead letters go: beside the anomalies, `<output_dir>-deadletters`."""
    return output_dir.with_name(output_dir.name + "-deadletters")


def source_properties(path: Path, *, batches: bool, jar: Path | None = None) -> dict[str, str]:
    """The filesystem source of the rules: JSON lines, or one base64 compact batch per line
    decoded by the `iiot-batch` format (the filesystem connector reads a file line by line;
    Kinesis gives the format each record's raw bytes)."""
    if not batches:
        return {
            "source.connector": "filesystem",
            "source.path": str(path),
            "source.format": "json",
            "source.json.ignore-parse-errors": "true",
        }
    return {
        "source.connector": "filesystem",
        "source.path": str(path),
        "source.format": "iiot-batch",
        "source.iiot-batch.encoding": "base64",
        "pipeline.jars": (jar or decoder_jar()).resolve().as_uri(),
    }


def local_file_properties(
    input_path: Path,
    output_dir: Path,
    extra: Mapping[str, str] | None = None,
    *,
    batches: bool = False,
    jar: Path | None = None,
) -> dict[str, str]:
    """Runner properties for local files in and out (JSON lines, or base64 batches with
    `batches`), dead letters beside the output, with per-reading watermarks."""
    properties = {
        **source_properties(input_path, batches=batches, jar=jar),
        "sink.connector": "filesystem",
        "sink.path": str(output_dir),
        "sink.format": "json",
        "deadletter.connector": "filesystem",
        "deadletter.path": str(dead_letter_dir(output_dir)),
        "deadletter.format": "json",
        # A watermark after every reading: which readings are late no longer depends on timing.
        "watermark.interval.ms": "0",
    }
    properties.update(extra or {})
    return properties


def _json_lines(folder: Path) -> list[bytes]:
    lines: list[bytes] = []
    if folder.exists():
        for part in sorted(folder.rglob("*")):
            if part.is_file() and not part.name.startswith("."):
                lines.extend(line for line in part.read_bytes().splitlines() if line.strip())
    return lines


def run_rules(
    input_path: Path,
    output_dir: Path,
    *,
    sql_dir: Path | None = None,
    extra_properties: Mapping[str, str] | None = None,
    timeout_s: float = 900.0,
    batches: bool = False,
    jar: Path | None = None,
) -> FlinkRun:
    """Run the rules over a JSON-lines file (or folder), or with `batches` a file of base64
    compact batches, on local PyFlink; return the anomalies and dead letters.

    The environment must exist (`ensure_flink_env()` or the set-up command creates it)."""
    python = require_flink_env()
    for folder in (output_dir, dead_letter_dir(output_dir)):
        if folder.exists():
            shutil.rmtree(folder)
    properties = local_file_properties(
        input_path, output_dir, extra_properties, batches=batches, jar=jar
    )
    command = [str(python), str(RUNNER)]
    if sql_dir is not None:
        command += ["--sql-dir", str(sql_dir)]
    for key, value in properties.items():
        command += ["--property", f"{key}={value}"]
    began = time.perf_counter()
    done = subprocess.run(  # noqa: S603 (argv built here, no shell)
        command, capture_output=True, text=True, timeout=timeout_s, check=False, cwd=PROJECT_ROOT
    )
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        # The Java exceptions' own messages first: a long stack trace buries them.
        causes = [
            line.removeprefix(": ").strip()
            for line in done.stderr.splitlines()
            if line.startswith(("Caused by: ", ": ")) and "Exception: " in line
        ]
        raise FlinkEnvError(
            f"the Flink job failed ({done.returncode}): "
            + "".join(f"{cause}\n" for cause in causes[-5:])
            + done.stderr[-4000:]
        )
    return FlinkRun(
        _json_lines(output_dir), seconds, done.stderr, _json_lines(dead_letter_dir(output_dir))
    )


def main() -> int:
    """`python -m kda_sql.flink_env`: create (or check) `.venv-flink`; the set-up step."""
    import time

    began = time.perf_counter()
    try:
        python = ensure_flink_env()
    except FlinkEnvError as error:
        print(f"kda_sql.flink_env: {error}", file=sys.stderr)
        return 1
    print(
        f"PyFlink {FLINK_VERSION}.x environment ready: {python} "
        f"({time.perf_counter() - began:.1f} s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
