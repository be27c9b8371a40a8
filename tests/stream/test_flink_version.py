"""One Flink version for production and tests: the Managed Flink runtime the stack deploys, the
Kinesis connector built for it, the apache-flink the local environment pins, and the PyFlink
that environment actually runs are all `kda_sql.flink_env.FLINK_VERSION`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from kda_sql.flink_env import FLINK_VERSION, REQUIREMENTS, managed_flink_runtime


def _pinned(package: str) -> str:
    text = REQUIREMENTS.read_text()
    (version,) = re.findall(rf"^{re.escape(package)}==(\S+)$", text, re.MULTILINE)
    return version


def test_the_stack_deploys_the_runtime_and_connector_of_the_flink_version() -> None:
    from stacks import streaming_stack

    assert managed_flink_runtime("1.20") == "FLINK-1_20"
    assert managed_flink_runtime(FLINK_VERSION) == streaming_stack.RUNTIME
    # Flink connectors are versioned <connector>-<flink minor>.
    assert streaming_stack.CONNECTOR_VERSION.endswith(f"-{FLINK_VERSION}")


def test_the_local_environment_pins_the_same_flink() -> None:
    for package in ("apache-flink", "apache-flink-libraries"):
        assert _pinned(package).startswith(f"{FLINK_VERSION}."), package


def test_the_local_environment_runs_the_pinned_pyflink(flink_python: Path) -> None:
    done = subprocess.run(
        [str(flink_python), "-c", "import pyflink.version as v; print(v.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == _pinned("apache-flink")
