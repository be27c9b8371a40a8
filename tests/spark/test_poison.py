"""The shared poison corpus (`tests/poison.py`) through `iiot lake run`, as a user runs it.

The stream's payloads land the way the ingestion stack's delivery stream writes them: compact
batches back to back in Firehose objects (no delimiter), JSON payloads as JSON lines. Each run
asserts what every entry point asserts: every good reading in silver exactly once, every poison
quarantined with its reason, the job alive (it succeeds), and a second run changes nothing. The
bombs' memory is checked where it is spent, in the per-payload functions, under an
address-space limit.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from typer.testing import CliRunner

from iiot import wire
from spark_jobs import io
from spark_jobs.cli import app
from spark_jobs.payloads import decode_one_payload, split_payloads
from tests.poison import (
    HOUR_MS,
    Poison,
    Stream,
    _framed,  # the corpus's framing: tests may know the header's layout
    _with_header,
    build_stream,
    good_batch,
    good_json,
    good_readings,
    keys_of,
    poison_payloads,
    run_limited,
    shadow_copies,
)

NOW_MS = int(time.time() * 1000)
BATCHES_PER_FILE = 6  # Firehose objects hold many records; small ones cross more boundaries
LINES_PER_FILE = 6
# Firehose names objects <prefix><stream>-<version>-<time>-<uuid>, under the stack's date/hour prefix
FIREHOSE_OBJECT = "date=2026-11-30/hour=04/iiot-dev-telemetry-to-bronze-1-{:05d}"


# ------------------------------------------------------------------------------- landing


@dataclass
class Landed:
    """Where each payload of a stream landed (paths under the landing zone): (file, byte offset)
    of a batch, (file, lines) of a JSON payload (one with a newline byte takes two lines), or a
    file of its own."""

    batches: dict[int, tuple[str, int]] = field(default_factory=dict)
    lines: dict[int, tuple[str, list[int]]] = field(default_factory=dict)
    files: dict[int, str] = field(default_factory=dict)


def land_stream(stream: Stream, landing: Path) -> Landed:
    """Land a stream's payloads in order. A new Firehose object starts every `BATCHES_PER_FILE`
    batches and right after a CRC-damaged shadow copy, so that the damaged copy sits in an
    earlier file than the good one, and the truncated copy (then the shadows whose header
    checks pass) come before the good one in the same file. An empty payload cannot be a JSON
    line: it lands as an empty object."""
    landed = Landed()
    shadow_ends = {position for position, p in stream.poisons if p.name.startswith("shadow: CRC")}
    batch_file: list[bytes] = []
    json_file: list[bytes] = []
    files = {"batch": 0, "json": 0}

    def flush_batches() -> None:
        if batch_file:
            io.land_file(landing, FIREHOSE_OBJECT.format(files["batch"]), b"".join(batch_file))
            files["batch"] += 1
            batch_file.clear()

    def flush_lines() -> None:
        if json_file:
            io.land_file(landing, f"json/part-{files['json']:05d}.jsonl", b"".join(json_file))
            files["json"] += 1
            json_file.clear()

    for position, payload in enumerate(stream.payloads):
        if wire.is_batch(payload):
            offset = sum(len(b) for b in batch_file)
            landed.batches[position] = (FIREHOSE_OBJECT.format(files["batch"]), offset)
            batch_file.append(payload)
            if len(batch_file) == BATCHES_PER_FILE or position in shadow_ends:
                flush_batches()
        elif not payload.strip():
            relative = f"json/empty-{position:05d}.jsonl"
            io.land_file(landing, relative, payload)
            landed.files[position] = relative
        else:
            first = sum(b.count(b"\n") for b in json_file)
            taken = payload.count(b"\n") + 1
            path = f"json/part-{files['json']:05d}.jsonl"
            landed.lines[position] = (path, list(range(first, first + taken)))
            json_file.append(payload + b"\n")
            if len(json_file) == LINES_PER_FILE:
                flush_lines()
    flush_batches()
    flush_lines()
    return landed


def lake_poisons(now_ms: int) -> list[Poison]:
    """Poisons the lake met on its own: each failed `iiot lake run` before (a row Arrow cannot
    hold, a reading whose date no calendar has, an exception wire lets through) or put an id
    into a partition path."""
    reading = good_readings(1, start_ms=now_ms - HOUR_MS, sensor=80)[0]
    surrogate = good_json([reading]).replace(b'"F01"', b'"F\\ud800"', 1)
    batch = good_batch(good_readings(10, start_ms=now_ms - HOUR_MS, sensor=81))
    header = wire.read_header(batch)
    body = zstandard.ZstdDecompressor().decompress(batch[wire.HEADER_SIZE :])
    bad_text = zstandard.ZstdCompressor().compress(body.replace(b"-81", b"-\xff1", 1))
    return [
        Poison("a lone surrogate escape in an id", surrogate, "lone UTF-16 surrogate escape"),
        Poison("an id that is a path", good_json([{**reading, "factory_id": "F/.."}]), "valid id"),
        Poison(
            "a timestamp past any calendar",
            good_json([{**reading, "timestamp": 9_000_000_000_000_000_000}]),
            "(future)",
        ),
        Poison(
            "a batch with invalid UTF-8 in a series id",
            _framed(bad_text, count=header.readings),
            "utf-8",
        ),
    ]


# --------------------------------------------------------------------------------- reading


def run_cli(root: Path) -> str:
    result = CliRunner().invoke(app, ["run", "--root", str(root)])
    assert result.exit_code == 0, result.output
    return result.output


def versions(paths: io.LakePaths) -> dict[str, int | None]:
    return {t.name: t.version for t in io.describe_tables(paths)}


def silver_keys(paths: io.LakePaths) -> list[tuple[str, int]]:
    table = io.read_arrow(paths.silver, ["sensor_id", "timestamp"])
    return list(
        zip(
            table.column("sensor_id").to_pylist(),
            table.column("timestamp").to_pylist(),
            strict=True,
        )
    )


def rows(uri: str, columns: list[str]) -> list[dict[str, Any]]:
    return list(io.read_arrow(uri, columns).to_pylist())


def ends(path: str, relative: str) -> bool:
    """Whether an engine's file URI is the landed file at `relative` (under landing/)."""
    return path.endswith("/landing/" + relative)


# ---------------------------------------------------------------------------- the corpus


@pytest.fixture(scope="module")
def poisoned_lake(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The whole corpus (bombs included) plus the lake's own poisons, landed and run twice."""
    stream = build_stream(NOW_MS)
    for poison in lake_poisons(NOW_MS):
        stream.add_poison(poison)
    root = tmp_path_factory.mktemp("poisoned") / "lake"
    paths = io.LakePaths.from_root(root)
    landed = land_stream(stream, io.local_path(paths.landing))
    first = run_cli(root)
    after_first = versions(paths)
    second = run_cli(root)
    return {
        "stream": stream,
        "landed": landed,
        "paths": paths,
        "first": first,
        "second": second,
        "versions": (after_first, versions(paths)),
    }


def test_every_good_reading_lands_in_silver_exactly_once(poisoned_lake: dict[str, Any]) -> None:
    stream: Stream = poisoned_lake["stream"]
    keys = silver_keys(poisoned_lake["paths"])
    assert len(keys) == len(set(keys))
    assert set(keys) == stream.good
    assert not set(keys) & stream.edge_only_good  # the reused id's other content is refused


def test_every_poison_is_quarantined_with_its_reason(poisoned_lake: dict[str, Any]) -> None:
    stream: Stream = poisoned_lake["stream"]
    landed: Landed = poisoned_lake["landed"]
    paths: io.LakePaths = poisoned_lake["paths"]
    bronze = rows(paths.bronze, ["batch_id", "source_path", "source_offset", "payload_bytes"])
    quarantine = rows(paths.quarantine, ["batch_id", "source_path", "position", "reason"])
    accounted: set[int] = set()

    def quarantined(position: int, poison: Poison) -> list[int]:
        if position in landed.batches:
            path, offset = landed.batches[position]
            [stored] = [
                b for b in bronze if ends(b["source_path"], path) and b["source_offset"] == offset
            ]
            assert stored["payload_bytes"] == len(poison.payload), poison.name  # cut exactly
            return [i for i, q in enumerate(quarantine) if q["batch_id"] == stored["batch_id"]]
        if position in landed.lines:
            path, lines = landed.lines[position]
            return [
                i
                for i, q in enumerate(quarantine)
                if ends(q["source_path"], path) and q["position"] in lines
            ]
        return [
            i for i, q in enumerate(quarantine) if ends(q["source_path"], landed.files[position])
        ]

    for position, poison in stream.poisons:
        found = quarantined(position, poison)
        reasons = [quarantine[i]["reason"] for i in found]
        assert reasons, f"{poison.name}: not quarantined"
        assert all(reasons), poison.name
        assert any(poison.reason in reason for reason in reasons), (poison.name, reasons)
        accounted.update(found)
    # and nothing else: no good payload left a row in the quarantine
    assert accounted == set(range(len(quarantine)))


def test_the_job_succeeds_and_says_what_it_did(poisoned_lake: dict[str, Any]) -> None:
    first = " ".join(poisoned_lake["first"].split())  # the console wraps long lines
    landed: Landed = poisoned_lake["landed"]
    json_files = {path for path, _ in landed.lines.values()}
    payloads = len(landed.batches) + len(json_files) + len(landed.files)  # a chunk per file
    assert f"bronze: landed payloads: {payloads}" in first
    assert "bronze: new with a problem (silver quarantines them): body" in first
    assert "silver: quarantined by field: body" in first
    assert "batch_id 1" in first  # the reused id, refused once


def test_a_second_run_changes_nothing(poisoned_lake: dict[str, Any]) -> None:
    assert "no new batches" in poisoned_lake["second"]
    before, after = poisoned_lake["versions"]
    assert after == before


# ------------------------------------------------------------------ the reproductions


def test_a_damaged_copy_never_shadows_the_good_one(tmp_path: Path) -> None:
    """The issue's reproduction: damaged copies of a 1,000-reading batch land first and are
    quarantined (a CRC-damaged one, and one whose header miscounts a body with a good CRC);
    its good re-send lands in a later run, in a file where a truncated copy and an unsized zstd
    bomb under the same id come right before it. Before, silver got 0 of the 1,000 readings
    (reported as 0 new and 0 duplicates)."""
    root = tmp_path / "lake"
    paths = io.LakePaths.from_root(root)
    landing = io.local_path(paths.landing)
    readings = good_readings(1000, start_ms=NOW_MS - HOUR_MS, sensor=5)
    good = good_batch(readings)
    damaged, truncated, miscounted, bomb = shadow_copies(good)
    io.land_file(landing, FIREHOSE_OBJECT.format(0), damaged.payload + miscounted.payload)
    first = " ".join(run_cli(root).split())
    assert "new with a problem (silver quarantines them): body 2" in first
    assert versions(paths)["silver.readings"] is None  # nothing good landed yet

    later = good_readings(10, start_ms=NOW_MS - HOUR_MS, sensor=6)
    file = truncated.payload + bomb.payload + good + good_batch(later)
    io.land_file(landing, FIREHOSE_OBJECT.format(1), file)
    second = " ".join(run_cli(root).split())
    assert "new with a problem (silver quarantines them): body 2" in second
    assert set(silver_keys(paths)) == keys_of(readings) | keys_of(later)
    reasons = [q["reason"] for q in rows(paths.quarantine, ["reason"])]
    assert len(reasons) == 4, reasons
    for shadow in (damaged, truncated, miscounted, bomb):
        assert any(shadow.reason in reason for reason in reasons), (shadow.name, reasons)
    before = versions(paths)
    assert "no new batches" in run_cli(root)
    assert versions(paths) == before


def test_a_bad_row_already_in_bronze_no_longer_blocks_silver(tmp_path: Path, sail: Any) -> None:
    """What an earlier release left behind: bronze rows (its schema) that failed silver on every
    run, a JSON chunk with an invalid UTF-8 line and a 1,000-deep line among good lines, and a
    damaged copy stored under a good batch's id, whose good copy is still in the landing zone.
    The next run quarantines the bad rows, and silver gets every good reading."""
    from pyspark.sql import functions as F  # noqa: N812

    root = tmp_path / "lake"
    paths = io.LakePaths.from_root(root)
    json_readings = good_readings(3, start_ms=NOW_MS - HOUR_MS, sensor=10)
    lines = [good_json(json_readings[:2]), b'[{"factory_id":"F\xff"}]', b"[" * 1000 + b"]" * 1000]
    lines.append(good_json(json_readings[2:]))
    chunk = b"\n".join(lines)
    batch_readings = good_readings(50, start_ms=NOW_MS - HOUR_MS, sensor=11)
    good = good_batch(batch_readings)
    damaged = shadow_copies(good)[0].payload
    legacy = [
        ("json-" + "0" * 32, "json", "file:///old/a.jsonl", chunk),
        (wire.read_header(good).batch_id.hex, "batch", "file:///old/b", damaged),
    ]
    frame = sail.createDataFrame(
        legacy, "batch_id string, source_format string, source_path string, payload binary"
    ).select(
        "*",
        F.length("payload").cast("long").alias("payload_bytes"),
        F.lit(1).cast("long").alias("ingest_seq"),
        F.lit(NOW_MS).cast("long").alias("ingested_ms"),
        F.timestamp_millis(F.lit(NOW_MS)).alias("ingested_at"),
        F.date_from_unix_date(F.lit(NOW_MS // 86_400_000).cast("int")).alias("ingest_date"),
    )
    io.append(frame, paths.bronze, partition_by=("ingest_date",))
    io.land_file(io.local_path(paths.landing), FIREHOSE_OBJECT.format(0), good)

    run_cli(root)
    assert "content_digest" in io.read_arrow(paths.bronze).column_names
    assert set(silver_keys(paths)) == keys_of(json_readings) | keys_of(batch_readings)
    reasons = [q["reason"] for q in rows(paths.quarantine, ["reason"])]
    assert any("invalid UTF-8" in r for r in reasons), reasons
    assert any("nested 1000 deep" in r for r in reasons), reasons
    assert any("CRC-32 mismatch" in r for r in reasons), reasons
    before = versions(paths)
    assert "no new batches" in run_cli(root)
    assert versions(paths) == before


# --------------------------------------------------------------- per payload: no Spark needed


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(poison_payloads(NOW_MS))
def test_no_payload_breaks_the_splitter_or_the_decoder(payload: bytes) -> None:
    """Whatever precedes or follows a good batch in a landed file, the good batch comes out
    whole under its own id, and decoding any piece never raises."""
    good = good_batch(good_readings(5, start_ms=NOW_MS - HOUR_MS, sensor=70))
    good_id = wire.verified_batch_id(good).hex
    for content in (payload + good, good + payload):
        items = split_payloads(content)
        assert [i for i in items if i.batch_id == good_id and i.payload == good]
        if wire.is_batch(content):  # a batch stream is cut, never trimmed but for whitespace
            ends_at = 0
            for item in items:
                assert not content[ends_at : item.offset].strip()
                assert content[item.offset : item.offset + len(item.payload)] == item.payload
                ends_at = item.offset + len(item.payload)
            assert not content[ends_at:].strip()
        for item in items:
            table = decode_one_payload(
                item.batch_id, item.source_format, "x", item.payload, 1, NOW_MS, item.reject_reason
            )
            reasons = table.column("reject_reason")
            assert all(r for r in reasons.to_pylist() if r is not None)
            if item.reject_reason is not None or item.source_format == "batch":
                assert table.num_rows >= 1


def test_resynchronizing_costs_bounded_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file crafted to make resynchronizing slow: 2,000 headers back to back, each announcing
    a 512 KiB body that spans the rest of the file, before a good batch. Checking each would
    read 1 GB; the splitter's budget keeps the bytes it checks to a few times the file, and the
    good batch still comes out whole."""
    good = good_batch(good_readings(5, start_ms=NOW_MS - HOUR_MS, sensor=74))
    liar = _with_header(good, body_length=512 * 1024)[: wire.HEADER_SIZE]
    content = liar * 2000 + bytes(600_000) + good
    checked: list[int] = []
    real = wire.batch_integrity_problem

    def counting(payload: bytes, limits: wire.Limits = wire.DEFAULT_LIMITS) -> str | None:
        checked.append(len(payload))
        return real(payload, limits)

    monkeypatch.setattr(wire, "batch_integrity_problem", counting)
    items = split_payloads(content)
    assert items[-1].payload == good
    assert items[-1].reject_reason is None
    assert len(items) == 2001
    assert sum(checked) <= 6 * len(content) + 2 * wire.DEFAULT_LIMITS.max_payload_bytes


def test_decoding_never_raises_even_when_wire_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth: an exception wire did not foresee becomes a reject with its reason,
    and in JSON lines only the line that raised is lost."""
    lines = [good_json(good_readings(2, start_ms=NOW_MS - HOUR_MS, sensor=71)), b"[boom]"]
    real = wire.decode_json

    def explode(payload: bytes, limits: wire.Limits = wire.DEFAULT_LIMITS) -> Any:
        if payload == b"[boom]":
            raise RecursionError("maximum recursion depth exceeded")
        return real(payload, limits)

    monkeypatch.setattr(wire, "decode_json", explode)
    table = decode_one_payload("j", "json", "x", b"\n".join(lines), 1, NOW_MS)
    reasons = [r for r in table.column("reject_reason").to_pylist() if r is not None]
    assert table.num_rows == 3
    assert reasons == [
        "payload: cannot be decoded (RecursionError: maximum recursion depth exceeded)"
    ]

    monkeypatch.setattr(wire, "decode_batch", lambda *_: 1 / 0)
    table = decode_one_payload("b", "batch", "x", good_batch([]), 1, NOW_MS)
    assert table.column("reject_reason").to_pylist() == [
        "body: cannot be decoded (ZeroDivisionError: division by zero)"
    ]
    assert isinstance(table, pa.Table)


def test_newlines_between_batches_are_no_payload() -> None:
    """A delivery stream that appends a newline to each record still splits into the batches
    alone (and a newline-delimited file of batches is no JSON)."""
    batches = [good_batch(good_readings(3, start_ms=NOW_MS - HOUR_MS, sensor=s)) for s in (75, 76)]
    items = split_payloads(b"\n".join(batches) + b"\n")
    assert [item.payload for item in items] == batches
    assert all(item.reject_reason is None for item in items)


def test_a_batch_id_reused_with_other_content_is_refused_not_merged() -> None:
    """Exact copies are duplicates (same digest); the same verified id over other bytes is a
    conflict silver quarantines (the lake job's own test covers it end to end)."""
    batch_id = uuid.uuid4()
    first = good_batch(good_readings(3, start_ms=NOW_MS - HOUR_MS, sensor=72), batch_id=batch_id)
    other = good_batch(good_readings(3, start_ms=NOW_MS - HOUR_MS, sensor=73), batch_id=batch_id)
    items = split_payloads(first + first + other)
    assert [i.batch_id for i in items] == [batch_id.hex] * 3
    assert items[0].content_digest == items[1].content_digest != items[2].content_digest


@pytest.mark.slow
def test_bombs_cost_bounded_memory_in_the_lake() -> None:
    """The lake's per-payload work (cut the landed file, decode each piece) on every bomb, in a
    fresh interpreter limited to 450 MB of address space: about 330 MB is the interpreter with
    numpy, pyarrow and zstandard, so inflating any bomb (250 MB decompressed) raises MemoryError
    there, which the decoder would report instead of the bomb's reason. Arrow's system pool
    keeps the limit deterministic (its default allocator reserves what the limit allows)."""
    result = run_limited(
        """
        import time
        from spark_jobs.payloads import decode_one_payload, split_payloads
        from tests.poison import bombs
        now = int(time.time() * 1000)
        for poison in bombs(now):
            [item] = split_payloads(poison.payload)
            table = decode_one_payload(
                item.batch_id, item.source_format, "x", item.payload, 1, now, item.reject_reason
            )
            reasons = table.column("reject_reason").to_pylist()
            assert reasons and poison.reason in reasons[0], (poison.name, reasons)
            assert table.column("timestamp").null_count == table.num_rows, poison.name
            print("refused:", poison.name)
        """,
        address_space_mb=450,
        env={"ARROW_DEFAULT_MEMORY_POOL": "system"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("refused:") == 5


def test_landed_json_lines_keep_their_chunks() -> None:
    """The chunking is part of the ids bronze holds: the same file always gives the same
    chunks, with or without blank lines, and an empty file is one payload to quarantine."""
    lines = [json.dumps({"n": i}).encode() for i in range(3)]
    plain = split_payloads(b"\n".join(lines) + b"\n")
    spaced = split_payloads(b"\n\n".join(lines) + b"\n\n")
    assert [i.batch_id for i in plain] == [i.batch_id for i in spaced]
    assert [i.payload for i in plain] == [b"\n".join(lines)]
    [empty] = split_payloads(b"")
    assert empty.source_format == "json"
    table = decode_one_payload(empty.batch_id, "json", "x", b"", 1, NOW_MS)
    assert "not valid JSON" in table.column("reject_reason")[0].as_py()
