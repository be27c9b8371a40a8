"""The compact-batch decoder's jar, compiled once per test session (`build_jar`)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def decoder_jar(flink_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `iiot-batch` format's jar, built by `kda_sql.decoder.build.build_jar` against
    `.venv-flink`'s Flink jars into this session's temporary folder."""
    from kda_sql.decoder.build import build_jar, flink_lib_jars
    from kda_sql.flink_env import flink_env_dir

    return build_jar(tmp_path_factory.mktemp("decoder"), flink_lib_jars(flink_env_dir()))
