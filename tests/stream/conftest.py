"""Stream-rule fixtures: PyFlink's own environment, created once and cached (stamp file)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kda_sql.flink_env import ensure_flink_env


@pytest.fixture(scope="session")
def flink_python() -> Path:
    """The `.venv-flink` interpreter; creating it the first time takes about 30 s."""
    began = time.perf_counter()
    python = ensure_flink_env()
    print(f"\n.venv-flink ready in {time.perf_counter() - began:.1f} s")
    return python
