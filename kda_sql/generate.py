"""Render the Flink SQL rules from the metric catalog: one source of truth for every threshold.

The templates in `kda_sql/templates/` hold two kinds of placeholder:

* ``{{name}}``: catalog values (thresholds, valid ranges, window sizes), filled here;
* ``${name}``: deployment parameters (connector options of the source, the anomaly sink and the
  dead-letter sink, watermark delay, window slide), left in
  the rendered SQL and filled by `kda_sql.runner` from the application properties.

The rendered SQL for the project's catalog is checked in under `kda_sql/sql/` (what reviewers
read and what the Managed Flink application ships); a test asserts it is up to date, and
`iiot stream render` rewrites it after a catalog change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from iiot.catalog import DEFAULT_CATALOG_PATH, MetricCatalog
from kda_sql.calibration import Calibration, SeriesLimit

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
RENDERED_DIR = Path(__file__).resolve().parent / "sql"
# Execution order: the runner sorts the rendered files by name.
TABLE_FILES = (
    "00_readings_table.sql",
    "01_anomalies_table.sql",
    "02_valid_readings_view.sql",
    "03_deadletters_table.sql",
)
SEVERITY_FILE = "10_severity_rules.sql"
DEAD_LETTER_FILE = "90_dead_letters.sql"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_INDENT = "      "


@dataclass(frozen=True)
class RuleSummary:
    """One rendered rule and where its numbers come from, for `iiot stream rules` and notes."""

    rule: str
    metric: str
    condition: str
    catalog_source: str


def _number(value: float) -> str:
    """A DOUBLE literal Flink parses the same way on every locale (always with a decimal)."""
    text = repr(float(value))
    return text if ("e" in text or "." in text) else f"{text}.0"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _fill(template: str, values: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"template placeholder {{{{{name}}}}} has no catalog value")
        return values[name]

    return _PLACEHOLDER.sub(replace, template)


def _template(name: str) -> str:
    return (TEMPLATE_DIR / name).read_text()


def _catalog_values(catalog: MetricCatalog) -> dict[str, str]:
    # The project's catalog by its repository path (stable across machines), others by name.
    source = Path(catalog.source)
    shown = "config/metrics.yaml" if source == DEFAULT_CATALOG_PATH else source.name
    return {"catalog_source": shown, "catalog_digest": catalog.digest}


def _joined(lines: Iterable[str], separator: str) -> str:
    return separator.join(lines)


def _metric_case(limits: dict[str, float], *, indent: str) -> str:
    """`CASE metric WHEN 'm' THEN limit ... END` (NULL for a metric it does not name)."""
    cases = "\n".join(
        f"{indent}  WHEN {_quote(name)} THEN {_number(limit)}" for name, limit in limits.items()
    )
    return f"{indent}CASE metric\n{cases}\n{indent}END"


def _literal_map(entries: list[tuple[str, str]], value_type: str, *, indent: str) -> str:
    """`CAST(MAP['key', value, ...] AS MAP<STRING, type>)`: a constant of the query. The cast
    is not decoration: a map of literals has a NOT NULL value type, and Flink 1.20 then returns
    the type's default (-1, '', false), not NULL, for a key the map does not hold."""
    pairs = ",\n".join(f"{indent}  {key}, {value}" for key, value in entries)
    return f"{indent}CAST(MAP[\n{pairs}\n{indent}] AS MAP<STRING, {value_type}>)"


SERIES_KEY = "factory_id || '/' || machine_id || '/' || metric"


def _series_lookup(
    own: list[SeriesLimit], elsewhere: list[SeriesLimit], defaults: dict[str, float]
) -> str:
    """The limit of each learned series of this window, looked up in a literal map keyed by
    `factory/machine/metric`; NULL (never fires here) for a series learned with another window;
    else the catalog's default for this window's metrics.

    A map, not a `CASE` branch per series: a CASE of 190 series (the demo's fleet and its
    late-evaluation copies) took the rules over a day of 20 machines from 57 s (the catalog's
    limits) to 452 s, the map to 67 s (kda_sql/README.md). A join against a table of limits
    would hold every window's result in state (a regular join) or need a lookup connector (a
    lookup join); the map needs neither and is plain Flink SQL, so it runs on Managed Flink as
    rendered."""
    lines: list[str] = []
    key = SERIES_KEY
    lookup = ""
    if own:
        own_map = _literal_map(
            [(_quote(s.key), _number(s.stddev_limit)) for s in own], "DOUBLE", indent="      "
        )
        lookup = f"{own_map.lstrip()}[{key}]"
    if defaults:
        fallback = _metric_case(defaults, indent="      ")
        value = f"COALESCE(\n      {lookup},\n{fallback}\n    )" if lookup else fallback.lstrip()
    else:
        value = lookup or "CAST(NULL AS DOUBLE)"
    if elsewhere:
        other_map = _literal_map(
            [(_quote(s.key), str(s.window_seconds)) for s in elsewhere], "INT", indent="      "
        )
        lines.append(f"    CASE WHEN {other_map.lstrip()}[{key}] IS NOT NULL")
        lines.append("    THEN CAST(NULL AS DOUBLE)")
        lines.append(f"    ELSE {value}")
        lines.append("    END")
        return "\n".join(lines)
    return f"    {value}"


# The columns a severity anomaly is made of: the OVER window carries only these (with `SELECT *`
# every reading it buffers held the source's 13 columns, the dead-letter ones included, through
# the exchange and in the window's state).
_RUN_COLUMNS = ("factory_id", "machine_id", "metric", "sensor_id", "`value`", "`timestamp`")


def _run_queries(debounce: dict[str, int]) -> str:
    """Each reading of a severity-ruled metric with the lowest value and the number of the
    last `debounce` readings of its series (itself included), in event-time order: one OVER
    window per distinct debounce (Flink computes every OVER aggregate of a SELECT on one
    window), joined by UNION ALL."""
    by_size: dict[int, list[str]] = {}
    for name, size in debounce.items():
        by_size.setdefault(size, []).append(name)
    indent = "    "
    queries = [
        "\n".join(
            [
                f"{indent}SELECT",
                f"{indent}  {', '.join(_RUN_COLUMNS)},",
                f"{indent}  MIN(`value`) OVER run AS run_low,",
                f"{indent}  COUNT(*) OVER run AS run_readings",
                f"{indent}FROM valid_readings",
                f"{indent}WHERE metric IN ({', '.join(_quote(name) for name in names)})",
                f"{indent}WINDOW run AS (",
                f"{indent}  PARTITION BY factory_id, machine_id, metric",
                f"{indent}  ORDER BY event_time",
                f"{indent}  ROWS BETWEEN {size - 1} PRECEDING AND CURRENT ROW",
                f"{indent})",
            ]
        )
        for size, names in sorted(by_size.items())
    ]
    return f"\n{indent}UNION ALL\n".join(queries)


def render(catalog: MetricCatalog, calibration: Calibration | None = None) -> dict[str, str]:
    """File name -> rendered SQL (one statement per file) for this catalog, with the learned
    rapid-change limits and windows of `calibration` when given."""
    common = _catalog_values(catalog)
    rendered: dict[str, str] = {}
    rendered[TABLE_FILES[0]] = _template("readings_table.sql")
    rendered[TABLE_FILES[1]] = _template("anomalies_table.sql")
    rendered[TABLE_FILES[3]] = _template("deadletters_table.sql")
    rendered[DEAD_LETTER_FILE] = _template("dead_letters.sql")
    valid = [
        f"(metric = {_quote(name)} AND unit = {_quote(m.unit)} "
        f"AND `value` BETWEEN {_number(m.valid_range.min)} AND {_number(m.valid_range.max)})"
        for name, m in sorted(catalog.items())
    ]
    rendered[TABLE_FILES[2]] = _fill(
        _template("valid_readings_view.sql"),
        {**common, "valid_conditions": _INDENT + _joined(valid, f"\n{_INDENT}OR ")},
    )

    severity = {name: m.stream for name, m in sorted(catalog.items()) if m.stream is not None}
    if severity:
        debounce = {name: catalog[name].stream_debounce or 1 for name in severity}
        rendered[SEVERITY_FILE] = _fill(
            _template("severity_rules.sql"),
            {
                **common,
                "severity_cases": "\n".join(
                    f"{_INDENT}WHEN metric = {_quote(name)} AND run_low > "
                    f"{_number(rule.critical)} THEN 'CRITICAL'\n"
                    f"{_INDENT}WHEN metric = {_quote(name)} THEN 'WARNING'"
                    for name, rule in severity.items()
                ),
                "threshold_cases": "\n".join(
                    f"{_INDENT}WHEN metric = {_quote(name)} AND run_low > "
                    f"{_number(rule.critical)} THEN {_number(rule.critical)}\n"
                    f"{_INDENT}WHEN metric = {_quote(name)} THEN {_number(rule.warning)}"
                    for name, rule in severity.items()
                ),
                "run_queries": _run_queries(debounce),
                "severity_conditions": "    "
                + _joined(
                    (
                        f"(metric = {_quote(name)} AND run_readings = {debounce[name]} "
                        f"AND run_low > {_number(rule.warning)})"
                        for name, rule in severity.items()
                    ),
                    "\n    OR ",
                ),
            },
        )

    # HOP windows have one size per query: one query per distinct window size, from the
    # catalog's defaults and, when given, the learned per-series windows.
    defaults: dict[int, dict[str, float]] = {}
    for name, m in sorted(catalog.items()):
        if m.rapid_change is not None:
            defaults.setdefault(m.rapid_change.window_seconds, {})[name] = (
                m.rapid_change.stddev_limit
            )
    learned: dict[int, list[SeriesLimit]] = {}
    for series in calibration.series if calibration is not None else ():
        rule = catalog[series.metric].rapid_change if series.metric in catalog else None
        if rule is not None:
            learned.setdefault(series.window_seconds, []).append(series)
    windows = sorted(set(defaults) | set(learned))
    for position, window_seconds in enumerate(windows):
        limits = defaults.get(window_seconds, {})
        own = learned.get(window_seconds, [])
        metrics = sorted(set(limits) | {s.metric for s in own})
        if calibration is None:
            source = "the catalog's `rapid_change.stddev_limit`"
            expression = _metric_case(limits, indent="    ")
        else:
            source = (
                "the series' limit learned from normal operation\n-- (`kda_sql.calibration`, "
                f"{len(calibration.series)} series), else the catalog's `rapid_change.stddev_limit`"
            )
            elsewhere = [
                s
                for w, group in learned.items()
                if w != window_seconds
                for s in group
                if s.metric in metrics
            ]
            expression = _series_lookup(own, elsewhere, limits)
        rendered[f"{20 + position}_rapid_change_{window_seconds}s.sql"] = _fill(
            _template("rapid_change.sql"),
            {
                **common,
                "window_seconds": str(window_seconds),
                # SQL's default leading precision of SECOND is 2 digits: 100 s and more say so
                "window_unit": (
                    "SECOND" if window_seconds < 100 else f"SECOND({len(str(window_seconds))})"
                ),
                "limit_source": source,
                "metric_list": ", ".join(_quote(name) for name in metrics),
                "limit_expression": "\n".join(
                    "  " + line if line else line for line in expression.split("\n")
                ),
            },
        )
    return rendered


def rule_summaries(catalog: MetricCatalog) -> list[RuleSummary]:
    """Every rule the rendered SQL applies, with the catalog entry it comes from."""
    rules = []
    for name, m in sorted(catalog.items()):
        if m.stream is not None:
            rules.append(
                RuleSummary(
                    f"{name.upper()}_HIGH",
                    name,
                    f"WARNING > {m.stream.warning:g} {m.unit}, "
                    f"CRITICAL > {m.stream.critical:g} {m.unit}, "
                    f"for {m.stream_debounce} consecutive readings",
                    f"metrics.{name}.stream",
                )
            )
    for name, m in sorted(catalog.items()):
        if m.rapid_change is not None:
            rules.append(
                RuleSummary(
                    "RAPID_CHANGE",
                    name,
                    f"stddev over {m.rapid_change.window_seconds} s > "
                    f"{m.rapid_change.stddev_limit:g} {m.unit}",
                    f"metrics.{name}.rapid_change",
                )
            )
    return rules


def write_rendered(
    catalog: MetricCatalog, out_dir: Path = RENDERED_DIR, calibration: Calibration | None = None
) -> list[Path]:
    """Write the rendered SQL into `out_dir`, removing stale rendered files; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rendered = render(catalog, calibration)
    for stale in out_dir.glob("*.sql"):
        if stale.name not in rendered:
            stale.unlink()
    paths = []
    for name, text in rendered.items():
        path = out_dir / name
        path.write_text(text)
        paths.append(path)
    return paths


def stale_files(catalog: MetricCatalog, out_dir: Path = RENDERED_DIR) -> list[str]:
    """Names of rendered files that differ from (or are missing for, or extra to) the catalog."""
    rendered = render(catalog)
    present = {path.name: path.read_text() for path in out_dir.glob("*.sql")}
    names = sorted(set(rendered) | set(present))
    return [name for name in names if rendered.get(name) != present.get(name)]
