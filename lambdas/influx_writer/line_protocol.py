"""InfluxDB line protocol for readings: one point per reading.

    <metric>,factory_id=..,machine_id=..,sensor_id=..,unit=.. value=<float> <timestamp ms>

The measurement is the metric (queries are per metric), the ids and the unit are tags (sorted by
key, as InfluxDB prefers), the value is always a float field (``100.0``, never ``100``: an integer
would clash with the float already stored in the series), and timestamps are milliseconds
(written with ``precision=ms``). Escaping follows the line protocol reference: commas and spaces
in measurements; commas, equals signs and spaces in tag keys, tag values and field keys.
A backslash stays literal (InfluxDB keeps it as is; the real-server test proves it).
"""

from __future__ import annotations

import math

from iiot.contract import ReadingColumns, SeriesKey

PRECISION = "ms"
FIELD = "value"


def escape_measurement(text: str) -> str:
    return text.replace(",", "\\,").replace(" ", "\\ ")


def escape_tag(text: str) -> str:
    """Tag keys, tag values and field keys."""
    return text.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def format_float(value: float) -> str:
    """A float field value: shortest round-trip text, always recognisable as a float."""
    if not math.isfinite(value):
        raise ValueError(f"line protocol has no representation for {value}")
    text = repr(value)
    return text if ("." in text or "e" in text or "n" in text) else text + ".0"


def series_prefix(key: SeriesKey) -> str:
    """Everything up to the field value for one series."""
    tags = (
        ("factory_id", key.factory_id),
        ("machine_id", key.machine_id),
        ("sensor_id", key.sensor_id),
        ("unit", key.unit),
    )
    tag_text = ",".join(f"{escape_tag(k)}={escape_tag(v)}" for k, v in tags if v)
    return f"{escape_measurement(key.metric)},{tag_text} {FIELD}="


def encode_point(
    measurement: str, tags: dict[str, str], fields: dict[str, float], timestamp_ms: int
) -> str:
    """One point with arbitrary tags and float fields (tests, ad-hoc writes)."""
    tag_text = "".join(f",{escape_tag(k)}={escape_tag(v)}" for k, v in sorted(tags.items()) if v)
    field_text = ",".join(f"{escape_tag(k)}={format_float(v)}" for k, v in fields.items())
    return f"{escape_measurement(measurement)}{tag_text} {field_text} {timestamp_ms}"


def encode_columns(columns: ReadingColumns) -> list[str]:
    """One line per reading; the validator has already refused non-finite values."""
    prefixes = [series_prefix(key) for key in columns.series]
    return [
        f"{prefixes[i]}{format_float(v)} {t}"
        for i, v, t in zip(
            columns.series_index.tolist(),
            columns.value.tolist(),
            columns.timestamp.tolist(),
            strict=True,
        )
    ]
