"""A connected run starts from its own outputs only: what an earlier run, or the step-by-step
demo, left in the same folder is removed before it starts, so the report never mixes them in."""

from __future__ import annotations

from pathlib import Path

from local_platform.connected.runner import clear_outputs


def test_an_earlier_runs_files_are_removed_and_the_users_are_kept(tmp_path: Path) -> None:
    stale = [
        "whatif/whatif.json",  # the what-if of an earlier model
        "simulation/machines.csv",  # `iiot demo --step simulate`
        "ml/failure_model/manifest.json",
        "edge/sensor_buffer.sqlite3",
        "quarantine.jsonl",
        "reconciliation.json",
        "report.html",
        "lake/silver/readings/part-0.parquet",
    ]
    for name in stale:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("old")
    (tmp_path / "notes.txt").write_text("mine")

    clear_outputs(tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
