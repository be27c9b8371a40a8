"""The lake's work on raw bytes: cut landed files into payloads, verify them, decode one.

These run inside `mapInArrow` on the executors (and in the tests on their own, under an
address-space limit), so nothing here imports Spark. The one rule, as everywhere in the
platform (`iiot.wire`): **integrity before identity**. A compact batch is known by its header's
batch id only once the whole of it has been checked: its integrity (`wire.verified_batch_id`:
size, CRC-32, announced decompressed size) and then its decoding (`verify`), because a header
can lie about a body whose CRC is right (a miscounted header, an unsized zstd bomb). Anything
else is known by the SHA-256 of its bytes, so a damaged copy that lands first never shadows the
good one, and de-duplication is by content (`content_digest`), the id only naming it.

**Splitting** (`split_payloads`). Firehose concatenates the records of the telemetry stream into
one object without a delimiter; compact batches carry their own length. A file that starts with
the batch magic, or holds a batch that passes its integrity checks anywhere, is such a stream: it
is walked batch by batch, and at an offset where no whole batch passes, the splitter
resynchronizes at the next occurrence of the magic. The bytes in between are one piece of their
own, quarantined by silver with the reason `iiot.wire` gives, so a truncated or damaged batch
never takes the batches after it along. Any other file is JSON lines (the case study's format),
cut into chunks of `JSON_CHUNK_LINES` lines. Splitting checks integrity only (a CRC per batch):
it runs over the whole landing zone on every run, `verify` only over content bronze has not seen.

**Decoding** (`decode_one_payload`) never raises: every failure, foreseen (`iiot.wire`'s reasons)
or not (defence in depth), becomes a reject row with its reason, and in JSON lines each line
fails alone.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any, NamedTuple

from iiot import wire
from iiot.contract import ID_PATTERN, ID_RULE

JSON_CHUNK_LINES = 5_000
QUARANTINED_BYTES = 4_096  # of a whole payload kept as the quarantine's text (bronze keeps all)
CONTENT_ID_CHARS = 32  # hex characters of the digest in a content-derived batch id
_EXCEPTION_CHARS = 300
_ITEM_TEXT_BYTES = 64 * 1024  # as iiot.wire keeps of a rejected item
# Resynchronizing checks the batch each magic occurrence announces; a check that spans later
# occurrences and fails is work no other check reuses. A file crafted to make many such checks
# (headers announcing large bodies, back to back) is bounded by this much CRC per landed byte;
# past it, only checks within the next occurrence are made, which never overlap.
_RESYNC_BYTES_PER_BYTE = 4

# Source formats of a payload.
BATCH = "batch"
JSON = "json"

# Prefixes of the batch ids the lake derives from content (a verified batch keeps its own id).
JSON_ID = "json-"
DAMAGED_ID = "damaged-"
REUSED_ID = "reused-"


class LandedPayload(NamedTuple):
    """One payload cut from a landed file, with its identity.

    `batch_id` is the header's batch id for a compact batch that passed its checks (integrity
    when split, decoding once `verify`d), else derived from `content_digest` (the SHA-256 of
    `payload`, the de-duplication key); `reject_reason` says why the payload failed them (None
    when it passed, and for JSON, which silver checks line by line); `offset` is where it
    starts in the landed file.
    """

    batch_id: str
    source_format: str
    offset: int
    content_digest: str
    reject_reason: str | None
    payload: bytes


def digest_of(payload: bytes) -> str:
    """The content digest (SHA-256, hex) that identifies a payload's exact bytes."""
    return hashlib.sha256(payload).hexdigest()


def content_id(prefix: str, digest: str) -> str:
    """A batch id derived from content (JSON chunks, damaged bytes, a reused id's content)."""
    return prefix + digest[:CONTENT_ID_CHARS]


def identify(
    payload: bytes, offset: int = 0, limits: wire.Limits = wire.DEFAULT_LIMITS
) -> LandedPayload:
    """The identity of one payload as splitting gives it: integrity checked, not decoded."""
    digest = digest_of(payload)
    if not wire.is_batch(payload):
        return LandedPayload(content_id(JSON_ID, digest), JSON, offset, digest, None, payload)
    try:
        batch_id = wire.verified_batch_id(payload, limits).hex
    except wire.WireFormatError as exc:
        damaged = content_id(DAMAGED_ID, digest)
        return LandedPayload(damaged, BATCH, offset, digest, str(exc), payload)
    return LandedPayload(batch_id, BATCH, offset, digest, None, payload)


def verify(item: LandedPayload, limits: wire.Limits = wire.DEFAULT_LIMITS) -> LandedPayload:
    """A payload whose identity may stand: a batch that passed its integrity checks keeps its
    header's id only if it also decodes; else it is known by its digest, with the reason.
    Bounded like every decode (`wire.Limits`); never raises."""
    if item.source_format != BATCH or item.reject_reason is not None:
        return item
    try:
        wire.decode_batch(item.payload, limits)
    except wire.WireFormatError as exc:
        reason = str(exc)
    except Exception as exc:  # anything iiot.wire did not foresee
        reason = f"body: cannot be decoded ({_exception_text(exc)})"
    else:
        return item
    return item._replace(batch_id=content_id(DAMAGED_ID, item.content_digest), reject_reason=reason)


# ------------------------------------------------------------------------------- splitting


def split_payloads(
    content: bytes, limits: wire.Limits = wire.DEFAULT_LIMITS
) -> list[LandedPayload]:
    """Every payload in one landed file's bytes, each with its identity (module docstring)."""
    budget = _Budget(_RESYNC_BYTES_PER_BYTE * len(content) + limits.max_payload_bytes)
    if wire.is_batch(content) or _holds_a_batch(content, limits, budget):
        return _split_batches(content, limits, budget)
    return _split_json_lines(content)


class _Budget:
    def __init__(self, total: int) -> None:
        self.left = total


def _split_batches(content: bytes, limits: wire.Limits, budget: _Budget) -> list[LandedPayload]:
    out = []
    offset = 0
    magic = wire.BATCH_MAGIC
    while offset < len(content):
        following = content.find(magic, offset + 1)
        following = len(content) if following < 0 else following
        end = _batch_end(content, offset, following, limits, budget)
        if end is not None:
            payload = content[offset:end]
            batch_id = wire.read_header(payload).batch_id.hex  # verified by _batch_end
            out.append(LandedPayload(batch_id, BATCH, offset, digest_of(payload), None, payload))
            offset = end
        else:  # no whole batch here: the bytes up to the next magic are one piece
            piece = content[offset:following]
            if piece.strip():  # whitespace between records (a delimiter) carries nothing
                out.append(identify(piece, offset, limits))
            offset = following
    return out


def _batch_end(
    content: bytes, offset: int, following: int, limits: wire.Limits, budget: _Budget
) -> int | None:
    """Where the batch at `offset` ends if the whole of it passes its integrity checks."""
    if not content.startswith(wire.BATCH_MAGIC, offset):
        return None
    try:
        size = wire.read_header(content[offset : offset + wire.HEADER_SIZE]).size
    except wire.WireFormatError:
        return None
    end = offset + size
    if end > len(content) or size > limits.max_payload_bytes:
        return None  # truncated, or too large to pass: no need to look at the bytes
    spans = end > following  # the batch's body holds the magic, or its header lies
    if spans and budget.left < size:
        return None
    passed = wire.batch_integrity_problem(content[offset:end], limits) is None
    if spans and not passed:
        budget.left -= size
    return end if passed else None


def _holds_a_batch(content: bytes, limits: wire.Limits, budget: _Budget) -> bool:
    """Whether a file that does not start with the magic still holds a whole batch (a record
    that is not a batch landed first in a Firehose object)."""
    at = content.find(wire.BATCH_MAGIC)
    while at >= 0:
        following = content.find(wire.BATCH_MAGIC, at + 1)
        end_of_piece = len(content) if following < 0 else following
        if _batch_end(content, at, end_of_piece, limits, budget) is not None:
            return True
        at = following
    return False


def _split_json_lines(content: bytes) -> list[LandedPayload]:
    """JSON lines in chunks of `JSON_CHUNK_LINES` non-blank lines, each known by its digest, so
    the same landed file always yields the same chunks. A file with no line at all is one
    payload (silver quarantines it: an empty object is not what anything lands)."""
    lines = []  # (byte offset, line)
    at = 0
    for line in content.split(b"\n"):
        if line.strip():
            lines.append((at, line))
        at += len(line) + 1
    if not lines:
        return [identify(content)]
    chunks = []
    for start in range(0, len(lines), JSON_CHUNK_LINES):
        part = lines[start : start + JSON_CHUNK_LINES]
        chunk = b"\n".join(line for _, line in part)
        digest = digest_of(chunk)
        chunks.append(
            LandedPayload(content_id(JSON_ID, digest), JSON, part[0][0], digest, None, chunk)
        )
    return chunks


# -------------------------------------------------------------------------------- decoding

_READING_FIELDS = ("factory_id", "machine_id", "sensor_id", "metric", "unit")
_ID = re.compile(ID_PATTERN)


class _Rejects:
    """Reject rows collected while decoding: (position, item, reason, raw text)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, str, str]] = []

    def add(self, position: int, item: int, reason: str, raw: bytes) -> None:
        self.rows.append((position, item, reason, _text(raw)))


def decode_one_payload(
    batch_id: str,
    source_format: str,
    source_path: str,
    payload: bytes,
    ingest_seq: int,
    ingested_ms: int,
    reject_reason: str | None = None,
    limits: wire.Limits = wire.DEFAULT_LIMITS,
) -> Any:
    """One bronze payload decoded into an Arrow table with the `DECODED_COLUMNS` schema
    (`spark_jobs.transforms`): a row per reading, and a row per reject with its reason.

    Never raises. `reject_reason` (known at landing: failed integrity, reused batch id) makes
    the payload one reject without decoding it. Any exception while decoding, which
    `iiot.wire`'s own checks are meant to make unreachable, becomes a reject with its type and
    message; in JSON lines, only the line that raised.
    """
    meta = (batch_id, source_format, source_path, ingest_seq, ingested_ms)
    if reject_reason is not None:
        return _reject_table(meta, [(0, -1, reject_reason, _text(payload[:QUARANTINED_BYTES]))])
    try:
        if source_format == BATCH:
            return _decode_batch(meta, payload, limits)
        # Blank lines are no payload; a payload with no line at all is one (not valid JSON).
        lines = [(n, line) for n, line in enumerate(payload.split(b"\n")) if line.strip()]
        lines = lines or [(0, payload)]
        try:
            return _decode_json_lines(meta, lines, limits)
        except Exception:  # one line broke the chunk's table: each line alone
            return _concat([_decode_json_line_alone(meta, line, limits) for line in lines])
    except Exception as exc:  # defence in depth: never fail the job for a payload
        reason = f"payload: cannot be decoded ({_exception_text(exc)})"
        return _reject_table(meta, [(0, -1, reason, _text(payload[:QUARANTINED_BYTES]))])


def _decode_batch(meta: tuple[Any, ...], payload: bytes, limits: wire.Limits) -> Any:
    import numpy as np

    try:
        columns = wire.decode_batch(payload, limits).columns
    except wire.WireFormatError as exc:
        reason = str(exc)
    except Exception as exc:  # anything iiot.wire did not foresee
        reason = f"body: cannot be decoded ({_exception_text(exc)})"
    else:
        n = len(columns)
        positions = np.zeros(n, dtype=np.int32)
        return _reading_table(meta, columns, positions, np.arange(n, dtype=np.int32), None)
    return _reject_table(meta, [(0, -1, reason, _text(payload[:QUARANTINED_BYTES]))])


def _decode_json_line_alone(
    meta: tuple[Any, ...], line: tuple[int, bytes], limits: wire.Limits
) -> Any:
    try:
        return _decode_json_lines(meta, [line], limits)
    except Exception as exc:  # defence in depth (see decode_one_payload)
        reason = f"payload: cannot be decoded ({_exception_text(exc)})"
        return _reject_table(meta, [(line[0], -1, reason, _text(line[1][:QUARANTINED_BYTES]))])


def _decode_json_lines(
    meta: tuple[Any, ...], lines: Iterable[tuple[int, bytes]], limits: wire.Limits
) -> Any:
    """Numbered lines of a JSON chunk; a line that raises is one reject, the others go on."""
    import numpy as np

    from iiot.contract import ReadingColumns

    readings: list[Any] = []
    positions: list[int] = []
    items: list[int] = []
    raws: list[str | None] = []
    rejects = _Rejects()
    for line_no, line in lines:
        try:
            decoded = wire.decode_json(line, limits)
            good = decoded.readings
            if decoded.positions:  # the lenient path names each item's place and text
                good_items = list(decoded.positions)
                good_raws = [_text(raw) for raw in decoded.raws]
            else:
                good_items = list(range(len(good)))
                good_raws = [_text(line)] * len(good)
            refused = [
                (-1 if reject.index is None else reject.index, reject.reason, reject.payload)
                for reject in decoded.rejects
            ]
            if b"\\u" in line:  # only an escape can smuggle in text UTF-8 cannot carry
                problems = [_text_problem(reading) for reading in good]
                if any(problems):
                    refused += [
                        (item, problem, raw.encode("utf-8", "replace")[:_ITEM_TEXT_BYTES])
                        for item, raw, problem in zip(good_items, good_raws, problems, strict=True)
                        if problem
                    ]
                    keep = [problem is None for problem in problems]
                    good = [r for r, k in zip(good, keep, strict=True) if k]
                    good_items = [i for i, k in zip(good_items, keep, strict=True) if k]
                    good_raws = [t for t, k in zip(good_raws, keep, strict=True) if k]
        except Exception as exc:  # defence in depth (see decode_one_payload)
            reason = f"payload: cannot be decoded ({_exception_text(exc)})"
            rejects.add(line_no, -1, reason, line[:QUARANTINED_BYTES])
            continue
        readings.extend(good)
        positions.extend([line_no] * len(good))
        items.extend(good_items)
        raws.extend(good_raws)
        for item, reason, raw in refused:
            rejects.add(line_no, item, reason, raw)
    columns = ReadingColumns.from_readings(readings)  # keeps the order: positions stay aligned
    table = _reading_table(
        meta,
        columns,
        np.asarray(positions, dtype=np.int32),
        np.asarray(items, dtype=np.int32),
        raws,
    )
    return _concat([table, _reject_table(meta, rejects.rows)]) if rejects.rows else table


def _text_problem(reading: Any) -> str | None:
    """A string JSON can carry but UTF-8 cannot (a lone surrogate escape such as "\\ud800")."""
    for name in _READING_FIELDS:
        try:
            getattr(reading, name).encode("utf-8")
        except UnicodeEncodeError:
            return f"{name}: not valid Unicode (a lone surrogate escape)"
    return None


def _id_problem(key: Any) -> str | None:
    """The contract's id rule, once per series: ids become partition values and tags. (Whole
    match: the pattern's `$` alone would let a final newline through.)"""
    for name in ("factory_id", "machine_id", "sensor_id"):
        value = getattr(key, name)
        if not _ID.fullmatch(value):
            return f"{name}: {value!r} is not a valid id ({ID_RULE})"
    return None


def _reading_table(
    meta: tuple[Any, ...],
    columns: Any,
    positions: Any,
    items: Any,
    raws: list[str | None] | None,
) -> Any:
    import numpy as np
    import pyarrow as pa

    batch_id, source_format, source_path, ingest_seq, ingested_ms = meta
    n = len(columns)
    series = columns.series
    # Columns are gathered in Arrow (`take`) from one value per series or per payload: no
    # Python list of a row's worth (building those was half of a batch's decoding).
    series_index = pa.array(np.asarray(columns.series_index, dtype=np.int32))
    payload_index = pa.array(np.zeros(n, dtype=np.int32))

    def series_column(values: list[str | None]) -> Any:
        column = pa.array(values, pa.string())
        return column.take(series_index) if n else pa.array([], pa.string())

    def payload_column(value: str) -> Any:
        return pa.array([value], pa.string()).take(payload_index)

    problems = [_id_problem(key) for key in series]

    return pa.table(
        {
            "batch_id": payload_column(batch_id),
            "source_format": payload_column(source_format),
            "source_path": payload_column(source_path),
            "ingest_seq": pa.array(np.full(n, ingest_seq, dtype=np.int64)),
            "ingested_ms": pa.array(np.full(n, ingested_ms, dtype=np.int64)),
            "position": pa.array(positions, pa.int32()),
            "item": pa.array(items, pa.int32()),
            "timestamp": pa.array(columns.timestamp, pa.int64()),
            "factory_id": series_column([key.factory_id for key in series]),
            "machine_id": series_column([key.machine_id for key in series]),
            "sensor_id": series_column([key.sensor_id for key in series]),
            "metric": series_column([key.metric for key in series]),
            "unit": series_column([key.unit for key in series]),
            "value": pa.array(columns.value, pa.float64()),
            "reject_reason": series_column(problems) if any(problems) else pa.nulls(n, pa.string()),
            "raw": pa.array(raws, pa.string()) if raws is not None else pa.nulls(n, pa.string()),
        }
    )


def _reject_table(meta: tuple[Any, ...], rejects: list[tuple[int, int, str, str]]) -> Any:
    import pyarrow as pa

    batch_id, source_format, source_path, ingest_seq, ingested_ms = meta
    m = len(rejects)
    return pa.table(
        {
            "batch_id": pa.array([batch_id] * m, pa.string()),
            "source_format": pa.array([source_format] * m, pa.string()),
            "source_path": pa.array([source_path] * m, pa.string()),
            "ingest_seq": pa.array([ingest_seq] * m, pa.int64()),
            "ingested_ms": pa.array([ingested_ms] * m, pa.int64()),
            "position": pa.array([r[0] for r in rejects], pa.int32()),
            "item": pa.array([r[1] for r in rejects], pa.int32()),
            "timestamp": pa.nulls(m, pa.int64()),
            "factory_id": pa.nulls(m, pa.string()),
            "machine_id": pa.nulls(m, pa.string()),
            "sensor_id": pa.nulls(m, pa.string()),
            "metric": pa.nulls(m, pa.string()),
            "unit": pa.nulls(m, pa.string()),
            "value": pa.nulls(m, pa.float64()),
            "reject_reason": pa.array([r[2] for r in rejects], pa.string()),
            "raw": pa.array([r[3] for r in rejects], pa.string()),
        }
    )


def _concat(tables: list[Any]) -> Any:
    import pyarrow as pa

    return pa.concat_tables(tables)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _exception_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_EXCEPTION_CHARS]
