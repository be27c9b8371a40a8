"""The deployed rules take a rapid-change calibration when the environment names one
(`<env>:stream_calibration`): the package's SQL is rendered with it; a named file that is
missing or invalid fails the synth; unset, the package carries the checked-in SQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from config.environments import ConfigError, environments
from kda_sql.calibration import Calibration, SeriesLimit

LIMIT = SeriesLimit("F01", "F01-M003", "temperature", 10_000, 120, 0.8125, 400)


def calibration_file(tmp_path: Path) -> Path:
    return Calibration((LIMIT,), {"learned_from": "test"}).save(tmp_path / "calibration.json")


def test_a_named_calibration_is_validated_with_the_environment(tmp_path: Path) -> None:
    path = calibration_file(tmp_path)
    dev = environments({"dev:stream_calibration": str(path)})["dev"]
    assert dev.stream_calibration == path
    with pytest.raises(ConfigError, match=r"stream_calibration .*missing\.json.* is not a file"):
        environments({"dev:stream_calibration": str(tmp_path / "missing.json")})
    assert environments()["dev"].stream_calibration is None


def test_an_invalid_calibration_fails_the_synth(tmp_path: Path) -> None:
    """The stack loads the named file with kda_sql.calibration: an invalid one is a
    ConfigError naming the file and the problem (config/ cannot import kda_sql)."""
    from stacks.streaming_stack import load_calibration

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"version": 1, "series": [{"metric": "temperature"}]}))
    prod = environments({"prod:stream_calibration": str(broken)})["prod"]
    with pytest.raises(ConfigError, match=r"broken\.json.*a series entry is incomplete"):
        load_calibration(prod)
    dev = environments({"dev:stream_calibration": str(calibration_file(tmp_path))})["dev"]
    loaded = load_calibration(dev)
    assert loaded is not None
    assert loaded.series == (LIMIT,)
    assert load_calibration(environments()["dev"]) is None


def test_the_package_carries_the_calibrated_rules_or_the_catalogs(tmp_path: Path) -> None:
    from stacks.streaming_stack import rendered_sql, stage_code

    checked_in = Path("kda_sql/sql").resolve()
    assert rendered_sql(None) == checked_in
    calibrated = rendered_sql(Calibration.load(calibration_file(tmp_path)))
    # The calibrated series' window (120 s) gets its own rapid-change file; the others stay.
    assert {p.name for p in checked_in.glob("*.sql")} < {p.name for p in calibrated.glob("*.sql")}
    changed = [
        p.name
        for p in calibrated.glob("*.sql")
        if not (checked_in / p.name).exists() or p.read_text() != (checked_in / p.name).read_text()
    ]
    assert "21_rapid_change_120s.sql" in changed
    text = "".join((calibrated / name).read_text() for name in changed)
    assert "F01-M003" in text
    assert "0.8125" in text
    plain, tuned = stage_code(), stage_code(Calibration.load(calibration_file(tmp_path)))
    assert plain.content_hash != tuned.content_hash  # a new package key: the app restarts
    staged = tuned.directory / "kda_sql" / "sql"
    for name in changed:
        assert (staged / name).read_text() == (calibrated / name).read_text()
