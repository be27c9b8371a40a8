"""The Java decoder of the `iiot-batch` format against the Python contract (`iiot.wire`).

The jar's `DecodeLines` runs the format's decoder without Flink (one JVM for many batches):
good batches decode to the same readings as `iiot.wire.decode_batch`, in event-time order;
every poison of `tests/poison.py` that is a batch is refused with the contract's reason (the
integrity checks come first and in the same order); bodies mutated behind a valid CRC are
accepted or refused exactly when Python accepts or refuses them; and the bombs are refused by
a JVM whose heap is far smaller than what inflating them would take.
"""

from __future__ import annotations

import base64
import random
import struct
import subprocess
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
import zstandard

from iiot.catalog import load_catalog
from iiot.wire import HEADER_SIZE, WireFormatError, decode_batch, encode_batch
from kda_sql.decoder.build import DecoderBuildError, build_jar, flink_lib_jars, merge_jars
from local_platform.simulator import FleetConfig, FleetSimulator
from tests.poison import good_batch, good_readings

from .scenarios import T0_MS, batch_poisons

pytestmark = pytest.mark.slow


def java_decode(
    jar: Path, payloads: list[bytes], *, heap_mb: int = 256
) -> list[tuple[str, list[tuple]]]:
    """("OK", readings) or ("REJECT <reason>", []) per payload, from the jar's DecodeLines."""
    classpath = [jar, *flink_lib_jars()]
    done = subprocess.run(
        [
            "java",
            f"-Xmx{heap_mb}m",
            "-cp",
            ":".join(str(p) for p in classpath),
            "com.iiot.flink.DecodeLines",
        ],
        input=b"".join(base64.b64encode(p) + b"\n" for p in payloads),
        capture_output=True,
        timeout=300,
        check=True,
    )
    lines = done.stdout.decode().split("\n")[:-1]
    results: list[tuple[str, list[tuple]]] = []
    at = 0
    while at < len(lines):
        line = lines[at]
        at += 1
        if line.startswith("REJECT "):
            results.append((line, []))
            continue
        count = int(line.split()[1])
        rows = []
        for row in lines[at : at + count]:
            ts, *hexed, bits, unit = row.split("\t")
            factory, machine, sensor, metric = (bytes.fromhex(h[1:]).decode() for h in hexed)
            value = struct.unpack("<d", int(bits, 16).to_bytes(8, "little"))[0]
            rows.append(
                (int(ts), factory, machine, sensor, metric, value, bytes.fromhex(unit[1:]).decode())
            )
        at += count
        results.append(("OK", rows))
    assert len(results) == len(payloads)
    return results


def python_decode(payload: bytes) -> tuple[str, list[tuple]]:
    """The contract's decoding, readings in the order the format emits them (stable by time)."""
    try:
        batch = decode_batch(payload)
    except WireFormatError as exc:
        return f"REJECT {exc}", []
    c = batch.columns
    order = np.argsort(c.timestamp, kind="stable")
    rows = []
    for i in order.tolist():
        key = c.series[int(c.series_index[i])]
        rows.append(
            (int(c.timestamp[i]), key.factory_id, key.machine_id, key.sensor_id, key.metric,
             float(c.value[i]), key.unit)
        )  # fmt: skip
    return "OK", rows


def same_readings(a: list[tuple], b: list[tuple]) -> bool:
    """Equal row by row, values bit for bit (NaN included)."""
    return len(a) == len(b) and all(
        x[:5] == y[:5] and x[6] == y[6] and struct.pack("<d", x[5]) == struct.pack("<d", y[5])
        for x, y in zip(a, b, strict=True)
    )


def simulated_batches(count: int = 6) -> list[bytes]:
    """Gateway-sized batches of simulated readings (scaled and raw-float series, faults)."""
    config = FleetConfig(factories=1, machines_per_factory=40, hours=0.5, seed=3)
    simulator = FleetSimulator(config, load_catalog())
    batches = []
    for columns in simulator.chunks():
        for start in range(0, len(columns), 20_000):
            batches.append(encode_batch(columns.take(slice(start, start + 20_000))))
            if len(batches) == count:
                return batches
    return batches


def test_good_batches_decode_to_the_contracts_readings_in_time_order(decoder_jar: Path):
    payloads = simulated_batches()
    raw = np.arange(12, dtype=np.float64) / 7.0  # a series without a decimal resolution
    payloads.append(
        good_batch(
            [
                {**r, "value": float(v)}
                for r, v in zip(good_readings(12, start_ms=T0_MS, sensor=1), raw, strict=True)
            ]
        )
    )
    java_results = java_decode(decoder_jar, payloads)
    for java, python in zip(java_results, map(python_decode, payloads), strict=True):
        assert java[0] == python[0] == "OK"
        assert same_readings(java[1], python[1])
        assert [r[0] for r in java[1]] == sorted(r[0] for r in java[1])


def test_every_batch_poison_is_refused_with_the_contracts_reason(decoder_jar: Path):
    poisons = batch_poisons()
    for poison, (verdict, rows) in zip(
        poisons, java_decode(decoder_jar, [p.payload for p in poisons]), strict=True
    ):
        assert verdict.startswith("REJECT "), poison.name
        assert poison.reason in verdict, (poison.name, verdict)
        assert rows == []


def test_the_bombs_are_refused_by_a_small_heap_before_anything_is_inflated(decoder_jar: Path):
    bombs = [p for p in batch_poisons() if p.bomb]
    assert len(bombs) >= 3  # 250 MB and 64 MiB zstd bombs, 4 billion readings announced
    # 24 MiB of heap: inflating any of them (64-250 MB) would throw OutOfMemoryError
    verdicts = java_decode(decoder_jar, [p.payload for p in bombs], heap_mb=24)
    for poison, (verdict, _) in zip(bombs, verdicts, strict=True):
        assert poison.reason in verdict, (poison.name, verdict)


def _reframed(body: bytes, count: int) -> bytes:
    compressed = zstandard.ZstdCompressor(level=1).compress(body)
    return (
        b"IIOTB"
        + bytes([1, 1, 0])
        + uuid.UUID(int=count).bytes
        + struct.pack("<III", count, len(compressed), zlib.crc32(compressed))
        + compressed
    )


def test_bodies_mutated_behind_a_valid_crc_get_the_same_verdict(decoder_jar: Path):
    """A damaged body that passes the CRC (a producer's bug, or a forged batch) reaches the
    msgpack parser: Java must accept exactly what Python accepts, with the same readings."""
    rng = random.Random(16)
    base = [simulated_batches(1)[0]]
    base.append(good_batch(good_readings(30, start_ms=T0_MS, sensor=2)))
    payloads = []
    for payload in base:
        count = struct.unpack_from("<I", payload, 24)[0]
        body = zstandard.ZstdDecompressor().decompress(payload[HEADER_SIZE:])
        for _ in range(300):
            mutated = bytearray(body)
            kind = rng.randrange(4)
            at = rng.randrange(len(mutated))
            if kind == 0:
                mutated[at] ^= 1 << rng.randrange(8)
            elif kind == 1:
                mutated[at] = rng.randrange(256)
            elif kind == 2:
                del mutated[at:]
            else:
                mutated[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5)))
            payloads.append(_reframed(bytes(mutated), count))
    java = java_decode(decoder_jar, payloads)
    accepted = 0
    for payload, (verdict, rows) in zip(payloads, java, strict=True):
        expected, expected_rows = python_decode(payload)
        assert (verdict == "OK") == (expected == "OK"), (verdict, expected)
        if verdict == "OK":
            accepted += 1
            assert same_readings(rows, expected_rows)
    assert 0 < accepted < len(payloads)  # the corpus holds both kinds


def test_the_build_is_cached_by_content_and_fails_with_the_compilers_reason(
    decoder_jar: Path, tmp_path: Path
):
    assert build_jar(decoder_jar.parent, flink_lib_jars()) == decoder_jar  # same sources
    with pytest.raises(DecoderBuildError, match="javac failed"):
        build_jar(tmp_path, [tmp_path / "no-flink-here.jar"])  # Flink's classes are missing


def test_merged_jar_keeps_every_jars_table_factories(decoder_jar: Path, tmp_path: Path):
    """Managed Flink takes one `jarfile`: the connector and the decoder merged must still
    register both jars' factories (their service files concatenated)."""
    import zipfile

    json_format = next(j for j in flink_lib_jars() if j.name.startswith("flink-json"))
    merged = merge_jars(tmp_path / "app.jar", [json_format, decoder_jar])
    service = "META-INF/services/org.apache.flink.table.factories.Factory"
    with zipfile.ZipFile(merged) as jar:
        factories = jar.read(service).decode().split()
        names = set(jar.namelist())
    assert "com.iiot.flink.BatchFormatFactory" in factories
    assert "org.apache.flink.formats.json.JsonFormatFactory" in factories
    assert "com/iiot/flink/BatchDecoder.class" in names
    assert any(n.startswith("org/apache/flink/formats/json/") for n in names)


def test_a_reading_column_of_another_type_is_refused_when_the_job_is_planned(
    decoder_jar: Path, tmp_path: Path
):
    """A reading's row answers only its own column's getter (no boxed fields to cast), so the
    format refuses a table that declares a reading column with another type, naming it."""
    from kda_sql.flink_env import FlinkEnvError, run_rules
    from kda_sql.generate import RENDERED_DIR

    sql = tmp_path / "sql"
    sql.mkdir()
    for path in RENDERED_DIR.glob("*.sql"):
        (sql / path.name).write_text(path.read_text())
    table = sql / "00_readings_table.sql"
    assert "`value` DOUBLE," in table.read_text()
    table.write_text(table.read_text().replace("`value` DOUBLE,", "`value` FLOAT,"))
    batches = tmp_path / "batches.b64"
    batches.write_bytes(base64.b64encode(good_batch(good_readings(3, start_ms=T0_MS))) + b"\n")
    with pytest.raises(FlinkEnvError, match="iiot-batch: column value must be DOUBLE, not FLOAT"):
        run_rules(batches, tmp_path / "out", sql_dir=sql, batches=True, jar=decoder_jar)
