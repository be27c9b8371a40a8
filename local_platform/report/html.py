"""The fleet report: one self-contained HTML file from a run directory.

Charts are drawn by plotly.js, taken from the pinned `plotly` Python package (its
`package_data/plotly.min.js`) and inlined gzip-compressed (1.5 MB instead of 4.8 MB), unpacked
by the browser's DecompressionStream: the file opens offline, from disk or an attachment, with
no CDN. The data is embedded as JSON (series downsampled to 10-minute means, the scatter
sampled), and the tables are plain HTML, readable even without scripts.

    write_report(run_dir) -> Path     # run_dir/report.html
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import logging
import math
from importlib import resources
from pathlib import Path
from typing import Any

from local_platform.report.run_data import collect

log = logging.getLogger(__name__)

# Panels the browser test expects to draw (each a chart with data, or "not in this run").
CHART_PANELS = (
    "readings",
    "scatter",
    "anomalies",
    "indicators",
    "risk",
    "risk-trend",
    "quarantine",
    "cost",
    "whatif",
)


def plotly_js_gz() -> bytes:
    """plotly.min.js from the installed, pinned plotly package, gzip-compressed."""
    source = resources.files("plotly") / "package_data" / "plotly.min.js"
    return gzip.compress(source.read_bytes(), compresslevel=9, mtime=0)


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the report of `run_dir` (default `run_dir/report.html`) and return its path."""
    data = collect(run_dir)
    target = out or run_dir / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(data))
    log.info("report written", extra={"path": str(target), "bytes": target.stat().st_size})
    return target


# ----------------------------------------------------------------------------- HTML helpers


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _num(value: Any, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    if isinstance(value, int):
        return f"{value:,}{suffix}"
    return _e(value)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}">{thead}<tbody>{body}</tbody></table>'


def _missing(reason: str) -> str:
    return f'<p class="missing" data-missing="1">Not in this run: {_e(reason)}</p>'


def _chart(name: str, panel: dict[str, Any], height: int = 360) -> str:
    if not panel.get("available"):
        return (
            f'<div class="chart" data-panel="{name}" data-missing="1">'
            f"{_missing(panel.get('reason', 'no input'))}</div>"
        )
    return f'<div class="chart" data-panel="{name}" style="height:{height}px"></div>'


def _source(panel: dict[str, Any]) -> str:
    return f'<p class="source">Source: {_e(panel.get("source"))}</p>' if panel.get("source") else ""


def _json_block(value: Any) -> str:
    """A nested mapping as nested tables (the connected run's reconciliation and figures)."""
    if isinstance(value, dict):
        rows = [[f"<b>{_e(k)}</b>", _json_block(v)] for k, v in value.items()]
        return _table(["", ""], rows, "kv")
    if isinstance(value, list):
        return "<br>".join(_json_block(v) for v in value[:50])
    if isinstance(value, bool):
        return '<span class="ok">yes</span>' if value else '<span class="bad">no</span>'
    return _num(value, 2)


# ------------------------------------------------------------------------------ sections


def _overview(data: dict[str, Any]) -> str:
    o = data["overview"]
    rel = data["reliability"]
    plan = data["plan"]
    cost = data["cost"]
    cards = [
        ("machines", _num(o.get("machines"))),
        ("factories", _e(", ".join(o.get("factories") or []) or "-")),
        ("span", f"{_e(o.get('start'))} to {_e(o.get('end'))}" if o.get("start") else "-"),
        ("readings", _num(o.get("readings"))),
        (
            "failures in the run",
            _num(o.get("failures"))
            + (f" (+{o['failures_before']} before it)" if o.get("failures_before") else ""),
        ),
        ("maintenance jobs", _num(o.get("maintenance_jobs"))),
    ]
    if rel.get("available"):
        machine_hours = sum(r["downtime_h"] for r in rel["machines"])
        availability = 1 - machine_hours / (rel["span_h"] * max(len(rel["machines"]), 1))
        cards += [
            ("fleet availability", _pct(availability)),
            ("downtime", f"{machine_hours:,.1f} h"),
            (
                "failures caught / missed",
                f"{rel['caught']} / {rel['missed']}"
                + (f" (median lead {rel['median_lead_h']:.1f} h)" if rel["median_lead_h"] else ""),
            ),
        ]
    whatif = data["whatif"]
    if whatif.get("available"):
        cards.append(
            (
                "what-if: unplanned / total downtime",
                f"{whatif['unplanned_reduction'] * -100:+.0f}% / "
                f"{whatif['downtime_reduction'] * -100:+.1f}%",
            )
        )
    if plan.get("available"):
        cards.append(("planned jobs", f"{plan['planned']} ({plan['downtime_avoided_h']} h saved)"))
    if cost.get("available"):
        prod = cost["environments"]["prod"]
        cards.append(("prod cost per machine", f"${prod['per_machine']:,.2f}/month"))
    body = "".join(
        f'<div class="card"><div class="label">{_e(k)}</div><div class="value">{v}</div></div>'
        for k, v in cards
    )
    if not o.get("available"):
        body += _missing(o.get("reason", "no simulation"))
    return (
        f'<section id="overview"><h2>Fleet overview</h2><div class="cards">{body}</div></section>'
    )


def _case_study(data: dict[str, Any]) -> str:
    machines = sorted(data["readings"].get("series", {}) or data["risk"].get("machines", {}))
    factories = sorted({m.split("-")[0] for m in machines})
    options = '<option value="*">all machines</option>' + "".join(
        f'<option value="{_e(f)}-">factory {_e(f)}</option>' for f in factories
    )
    options += "".join(f'<option value="{_e(m)}">{_e(m)}</option>' for m in machines)
    metrics = sorted(data["readings"].get("limits", {}))
    metric_options = "".join(
        f"<option{' selected' if m == 'temperature' else ''}>{_e(m)}</option>" for m in metrics
    )
    panels = "".join(
        f"<div><h3>{title}</h3>{_chart(name, data[key], height)}{_source(data[key])}</div>"
        for title, name, key, height in (
            ("Readings per machine over time", "readings", "readings", 360),
            ("Temperature vs pressure, coloured by anomaly", "scatter", "scatter", 360),
            ("Anomalies per machine", "anomalies", "anomalies", 360),
            (
                "KPI indicators: latest reading per metric (mean over the machines in scope)",
                "indicators",
                "readings",
                300,
            ),
        )
    )
    return f"""<section id="pumps"><h2>The oil-pump case study's four panels</h2>
<p>Scope <select id="scope">{options}</select>
metric <select id="metric">{metric_options}</select></p>
<div class="grid2">{panels}</div></section>"""


def _reliability(data: dict[str, Any]) -> str:
    rel = data["reliability"]
    if not rel.get("available"):
        return f'<section id="kpis"><h2>Reliability KPIs</h2>{_missing(rel["reason"])}</section>'
    factory_rows = [
        [
            _e(f["factory_id"]),
            _num(f["machines"]),
            _pct(f["availability"]),
            _num(f["downtime_h"], 2),
            _num(f["failures"]),
            _num(f["mtbf_h"]),
            _num(f["mttr_h"], 2),
        ]
        for f in rel["factories"]
    ]
    machine_rows = [
        [
            _e(m["machine_id"]),
            _e(m["model"]),
            _pct(m["availability"]),
            _num(m["downtime_h"], 2),
            _num(m["unplanned_h"], 2),
            _num(m["planned_h"], 2),
            _num(m["failures"]),
            _num(m["mtbf_h"]),
            _num(m["mttr_h"], 2),
        ]
        for m in rel["machines"]
    ]
    failure_rows = [
        [
            _e(f["failure_id"]),
            _e(f["machine_id"]),
            _e(f["mode"]),
            _e(f["failed_at"]),
            {True: '<span class="ok">caught</span>', False: '<span class="bad">missed</span>'}.get(
                f["caught"], _e(f.get("not_judged", "no predictor in this run"))
            ),
            _num(f["lead_h"], 1, " h"),
        ]
        for f in rel["failures"]
    ]
    precision = data["precision"]
    precision_html = (
        _table(
            [
                "alert source",
                "alerts",
                "followed by a failure within 24 h",
                "open (less than 24 h before the run's end)",
                "precision (open alerts wrong - right)",
            ],
            [
                [
                    _e(r["source"]),
                    _num(r["alerts"]),
                    _num(r["followed"]),
                    _num(r.get("open")),
                    _pct(r["precision"])
                    + (
                        f" - {_pct(r['precision_open_right'])}"
                        if r.get("open") and r.get("precision_open_right") is not None
                        else ""
                    ),
                ]
                for r in precision["rows"]
            ],
        )
        if precision.get("available")
        else _missing(precision["reason"])
    )
    factory_table = _table(
        ["factory", "machines", "availability", "downtime h", "failures", "MTBF h", "MTTR h"],
        factory_rows,
    )
    failure_table = (
        _table(
            ["failure", "machine", "mode", "failed at (UTC)", "predictor", "lead time"],
            failure_rows,
        )
        if failure_rows
        else "<p>No failure in the run's span.</p>"
    )
    machine_table = _table(
        [
            "machine",
            "model",
            "availability",
            "downtime h",
            "unplanned h",
            "planned h",
            "failures",
            "MTBF h",
            "MTTR h",
        ],
        machine_rows,
    )
    return f"""<section id="kpis"><h2>Reliability KPIs</h2>
<p>Over the run's {rel["span_h"]:.1f} h. Availability = 1 - downtime / span;
MTBF = operating hours / failures; MTTR = mean repair time.</p>
<h3>Per factory</h3>{factory_table}
<h3>Failures caught vs missed (an alert within 24 h before the failure)</h3>{failure_table}
<h3>Alert precision</h3>{precision_html}
<details><summary>Per machine</summary>{machine_table}</details>
{_source(rel)}</section>"""


def _risk(data: dict[str, Any]) -> str:
    plan = data["plan"]
    if plan.get("available"):
        rows = [
            [
                _e(e["machine_id"]),
                _num(e["probability"], 3),
                _num(e["alerts"]),
                _e(e.get("when", "-")),
                _e(e.get("window", "-")),
                _e(e.get("action", "keep running, watch")),
                _num(e.get("downtime_avoided_h"), 2, " h"),
            ]
            for e in plan["ranking"]
        ]
        plan_html = (
            f"<p>{plan['planned']} machine(s) to service: those at or above the job "
            f"threshold (p &ge; {plan.get('job_threshold', plan['alert_threshold']):.2f} of a "
            f"failure within 24 h; the model alerts from {plan['alert_threshold']:.2f}, a job "
            f"stops production). "
            f"Each job starts at the first shift change (06:00, 14:00, 22:00 UTC) at least "
            f"{plan['lead_h']:g} h after the run's end, or after that lead alone at "
            f"p &ge; {plan['urgent_probability']:.2f}: the policy the downtime what-if below "
            f"measures. Expected downtime avoided {plan['downtime_avoided_h']} h "
            f"(probability x (mean repair {plan['repair_h']} h - a planned stop of 2 h)).</p>"
            + _table(
                [
                    "machine",
                    "failure probability (24 h)",
                    "alerts in run",
                    "when (UTC)",
                    "shift window",
                    "action",
                    "downtime avoided",
                ],
                rows,
                "plan",
            )
        )
    else:
        plan_html = _missing(plan["reason"])
    latest = _chart("risk", data["risk"])
    trend = _chart("risk-trend", data["risk"])
    return f"""<section id="risk"><h2>Risk ranking and maintenance plan</h2>
<div class="grid2"><div><h3>Latest failure probability per machine</h3>{latest}</div>
<div><h3>Failure probability over time, five riskiest machines</h3>{trend}</div></div>
{plan_html}{_source(plan)}</section>"""


def _whatif(data: dict[str, Any]) -> str:
    w = data["whatif"]
    text = ""
    if w.get("available"):
        rtf, pred = w["run_to_failure"], w["predictive"]
        text = (
            f"<p>The same fleet ({_e(w.get('fleet'))}), seeded identically, run twice. "
            f"Run to failure: {rtf['failures']} failures, {rtf['downtime_h']:.1f} h of "
            f"downtime. Acting on the predictor's alerts: {pred['failures']} failures, "
            f"{pred['unplanned_h']:.1f} h unplanned plus {pred['planned_h']:.1f} h of planned "
            f"jobs ({pred['planned_jobs']} jobs: {pred['averted']} averted a failure, "
            f"{pred['false_alarm_jobs']} found nothing)"
            + (
                f"; of the failures left, {pred['failures_missed']} had no alert in the 24 h "
                f"before and {pred['failures_late']} "
                f"{'was' if pred['failures_late'] == 1 else 'were'} alerted too late for their job"
                if "failures_missed" in pred
                else ""
            )
            + ".</p>"
            f"<p><b>Unplanned downtime {w['unplanned_reduction'] * -100:+.0f}%</b>, total "
            f"downtime including the planned jobs <b>{w['downtime_reduction'] * -100:+.1f}%"
            "</b> (the case study claims 50% less downtime"
            + (
                ": met for total downtime)."
                if w.get("meets_goal", w["downtime_reduction"] >= 0.5)
                else ": not met for total downtime, once the planned jobs count)."
            )
            + (
                " A planner that knew every failure time (a job an hour before each) would "
                f"reach <b>{w['ceiling_reduction'] * -100:+.1f}%</b>."
                if "ceiling_reduction" in w
                else ""
            )
            + "</p>"
        )
    return f"""<section id="whatif"><h2>Downtime what-if: run-to-failure vs acting on alerts</h2>
{text}{_chart("whatif", w, 320)}{_source(w)}</section>"""


def _reconciliation(document: Any) -> str:
    """The connected run's checks (each two counts that must agree) as a table, then the rest
    of its figures."""
    if not isinstance(document, dict) or not isinstance(document.get("checks"), list):
        return _json_block(document)
    verdict = (
        '<p class="ok">Every count reconciles.</p>'
        if document.get("ok")
        else f'<p class="bad">Failed: {_e(", ".join(document.get("failed", [])))}</p>'
    )
    rows = [
        [
            _e(c.get("check")),
            _num(c.get("left")),
            _num(c.get("right")),
            '<span class="ok">ok</span>' if c.get("ok") else '<span class="bad">differs</span>',
            _e(c.get("note", "")),
        ]
        for c in document["checks"]
        if isinstance(c, dict)
    ]
    rest = {k: v for k, v in document.items() if k not in {"ok", "failed", "checks"}}
    return (
        verdict
        + _table(["check", "count", "against", "", "note"], rows)
        + (f"<details><summary>figures</summary>{_json_block(rest)}</details>" if rest else "")
    )


def _data_path(data: dict[str, Any]) -> str:
    d = data["data_path"]
    if not d.get("available"):
        return f'<section id="health"><h2>Data-path health</h2>{_missing(d["reason"])}</section>'
    parts = []
    if d.get("lake_tables"):
        parts.append(
            "<h3>Lake tables (rows)</h3>"
            + _table(["table", "rows"], [[_e(k), _num(v)] for k, v in d["lake_tables"].items()])
        )
    if d.get("gateway_buffer"):
        parts.append(
            "<h3>Gateway buffer (rows in its store; blocks and outbox wait for upload, "
            "quarantine holds rejected readings)</h3>"
            + _table(["table", "rows"], [[_e(k), _num(v)] for k, v in d["gateway_buffer"].items()])
        )
    reconciliation = d.get("reconciliation") or {}
    parts.append(
        "<h3>Reconciliation</h3>"
        + (
            "".join(f"<h4>{_e(k)}</h4>{_reconciliation(v)}" for k, v in reconciliation.items())
            if reconciliation
            else _missing("no reconciliation (the connected run writes it)")
        )
    )
    others = {k: v for k, v in (d.get("documents") or {}).items() if k not in reconciliation}
    parts.append(
        "<h3>Backlogs and outages</h3>"
        + (
            "".join(f"<h4>{_e(k)}</h4>{_json_block(v)}" for k, v in others.items())
            if others
            else _missing("no backlog or outage figures (the connected run writes them)")
        )
    )
    rejected = bool(
        d.get("contract_quarantine") or d.get("lake_quarantine") or d.get("gateway_quarantine")
    )
    quarantine = _chart(
        "quarantine",
        {"available": rejected, "reason": "nothing quarantined in this run"},
        300,
    )
    return f"""<section id="health"><h2>Data-path health</h2>
<h3>Quarantine by reason</h3>{quarantine}
{"".join(parts)}{_source(d)}</section>"""


def _cost(data: dict[str, Any]) -> str:
    c = data["cost"]
    if not c.get("available"):
        return f'<section id="cost"><h2>Cost per machine</h2>{_missing(c["reason"])}</section>'
    rows = [
        [
            _e(name),
            _num(e["machines"]),
            f"${e['total']:,.0f}",
            f"${e['per_machine']:,.2f}",
        ]
        for name, e in c["environments"].items()
    ]
    prod = c["environments"]["prod"]
    drivers = "; ".join(
        f"{_e(d['service'])} {_e(d['item'])} ({d['share'] * 100:.0f}%)" for d in prod["drivers"]
    )
    warnings = "".join(f"<li>{_e(w)}</li>" for w in prod["warnings"])
    book = c.get("prices") or {}
    prices = (
        f"<p>Unit prices: {book['count']} AWS on-demand list prices, {_e(book['region'])}, "
        f"as of {_e(book['checked_on'])}, each with its source in config/prices.yaml; how sure: "
        + ", ".join(f"{n} {_e(status)}" for status, n in book["statuses"].items())
        + " (<code>iiot cost</code> lists the ones to check).</p>"
        if book
        else ""
    )
    table = _table(
        [
            "environment",
            "machines",
            "as deployed",
            "per machine",
        ],
        rows,
    )
    return f"""<section id="cost"><h2>Cost per machine (AWS, a month)</h2>
{table}
<p>Case study: $163,740/month for 10,000 machines, stated as $273 per machine ($16.37 by its own
total). Goal: at most $27 per machine at prod scale. Prod's largest lines: {drivers}.</p>
{prices}<ul>{warnings}</ul>
{_chart("cost", c, 380)}{_source(c)}</section>"""


ASSETS = Path(__file__).resolve().parent / "assets"


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def render(data: dict[str, Any]) -> str:
    payload = json.dumps(
        _finite(data), separators=(",", ":"), default=str, allow_nan=False
    ).replace("</", "<\\/")
    plotly = base64.b64encode(plotly_js_gz()).decode()
    css = (ASSETS / "report.css").read_text()
    script = (ASSETS / "report.js").read_text()
    o = data["overview"]
    nav = "".join(
        f'<a href="#{anchor}">{label}</a>'
        for anchor, label in (
            ("overview", "overview"),
            ("pumps", "pumps"),
            ("kpis", "KPIs"),
            ("risk", "risk and plan"),
            ("whatif", "what-if"),
            ("health", "data path"),
            ("cost", "cost"),
        )
    )
    sections = (
        _overview(data)
        + _case_study(data)
        + _reliability(data)
        + _risk(data)
        + _whatif(data)
        + _data_path(data)
        + _cost(data)
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Fleet report: {_e(o.get("run_dir"))}</title><style>{css}</style></head>
<body>
<header><h1>Fleet report</h1><p>Run {_e(o.get("run_dir"))} &middot;
generated {_e(data["generated_at"])} &middot; charts: plotly.js (inlined)</p></header>
<div id="errors"></div>
<nav>{nav}</nav>
{sections}
<script type="application/json" id="report-data">{payload}</script>
<script type="application/octet-stream" id="plotly-gz">{plotly}</script>
<script>{script}</script>
</body></html>
"""
