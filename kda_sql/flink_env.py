"""PyFlink's own virtual environment (`.venv-flink`) and running the rules in it.

PyFlink pins older pandas/pyarrow than the project, so it cannot live in `.venv`. Tests, the
demo and the benchmark call `ensure_flink_env()`, which creates the environment once from
`kda_sql/requirements-flink.txt` (about 30 s with uv) and records a stamp, so later calls return
at once. `run_rules()` runs `kda_sql/runner.py` with that interpreter on local JSON-lines files.
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
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = Path(__file__).resolve().parent / "requirements-flink.txt"
RUNNER = Path(__file__).resolve().parent / "runner.py"
DEFAULT_ENV_DIR = PROJECT_ROOT / ".venv-flink"
ENV_DIR_VAR = "IIOT_FLINK_VENV"
_STAMP = ".installed-requirements"


class FlinkEnvError(RuntimeError):
    """The PyFlink environment could not be created or a job failed; the message says why."""


def flink_env_dir() -> Path:
    return Path(os.environ.get(ENV_DIR_VAR) or DEFAULT_ENV_DIR)


def _digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]


def _python_in(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def ensure_flink_env(env_dir: Path | None = None) -> Path:
    """Create (or reuse) the PyFlink environment; return its Python interpreter.

    Idempotent and safe to call from parallel processes (a file lock serialises creation).
    """
    env_dir = env_dir or flink_env_dir()
    python = _python_in(env_dir)
    stamp = env_dir / _STAMP
    digest = _digest()
    if stamp.exists() and stamp.read_text() == digest and python.exists():
        return python
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = env_dir.parent / f".{env_dir.name}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text() == digest and python.exists():
            return python
        if not python.exists():
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
    """The outcome of one local job: output rows (JSON lines) and how long it took."""

    output_lines: list[bytes]
    seconds: float
    log: str


def local_file_properties(
    input_path: Path, output_dir: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Runner properties for JSON-lines files in and out, with per-reading watermarks."""
    properties = {
        "source.connector": "filesystem",
        "source.path": str(input_path),
        "source.format": "json",
        "source.json.ignore-parse-errors": "true",
        "sink.connector": "filesystem",
        "sink.path": str(output_dir),
        "sink.format": "json",
        # A watermark after every reading: which readings are late no longer depends on timing.
        "watermark.interval.ms": "0",
    }
    properties.update(extra or {})
    return properties


def run_rules(
    input_path: Path,
    output_dir: Path,
    *,
    sql_dir: Path | None = None,
    extra_properties: Mapping[str, str] | None = None,
    timeout_s: float = 900.0,
) -> FlinkRun:
    """Run the rules over a JSON-lines file (or folder) on local PyFlink; return the anomalies."""
    python = ensure_flink_env()
    if output_dir.exists():
        shutil.rmtree(output_dir)
    properties = local_file_properties(input_path, output_dir, extra_properties)
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
        raise FlinkEnvError(f"the Flink job failed ({done.returncode}): {done.stderr[-4000:]}")
    lines: list[bytes] = []
    if output_dir.exists():
        for part in sorted(output_dir.rglob("*")):
            if part.is_file() and not part.name.startswith("."):
                lines.extend(line for line in part.read_bytes().splitlines() if line.strip())
    return FlinkRun(lines, seconds, done.stderr)
