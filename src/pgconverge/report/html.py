"""The report as ONE self-contained HTML file: inline CSS, inline SVG charts, no external references."""

from __future__ import annotations

import re
from datetime import datetime
from html import escape

from pgconverge.report.markdown import _v, blocks

_PALETTE = ("#2563eb", "#16a34a", "#d97706", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d")
_PHASE_COLORS = {"align": "#2563eb", "expand": "#16a34a", "switch": "#d97706", "contract": "#7c3aed"}
_STATUS = {"passed": "st-passed", "FAILED": "st-bad", "proves nothing": "st-bad", "not measured": "st-warn",
           "accepted": "st-warn", "attention": "st-warn", "not run": "st-muted", "rolled back": "st-muted",
           "not applicable": "st-muted"}
_STATE_COLORS = {"failed": "#dc2626", "reverted": "#9ca3af", "running": "#fbbf24", "interrupted": "#f97316",
                 "stopped": "#f97316", "unproven": "#f97316"}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;
color:#111827}
h1{font-size:1.6rem}h2{margin-top:2rem;border-bottom:1px solid #e5e7eb;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0 1rem;font-size:13px}
th,td{border:1px solid #e5e7eb;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f4f6}tr:nth-child(even) td{background:#fafafa}
pre{background:#f8fafc;border:1px solid #e5e7eb;padding:.6rem;overflow-x:auto;font-size:12px}
details summary{cursor:pointer;font-family:ui-monospace,monospace}
svg{background:#fff;border:1px solid #e5e7eb;margin:.5rem 0}
svg text{font:11px system-ui,sans-serif;fill:#374151}
.verdict{font-size:1.1rem;font-weight:600;padding:.6rem .8rem;border-left:5px solid;background:#f9fafb}
.verdict.ok{border-color:#16a34a}.verdict.bad{border-color:#dc2626;color:#991b1b}.verdict.warn{border-color:#d97706}
.st-muted{color:#6b7280}.st-passed{color:#15803d}.st-bad{color:#b91c1c;font-weight:600}
.st-warn{color:#b45309;font-weight:600}
code{font-family:ui-monospace,monospace;font-size:12px;background:#f3f4f6;padding:0 3px}
.state-done{color:#15803d}.state-failed{color:#b91c1c;font-weight:600}.state-interrupted{color:#c2410c;font-weight:600}
.state-stopped{color:#c2410c;font-weight:600}.state-unproven{color:#c2410c;font-weight:600}
"""


def _t(s: str) -> datetime:
    return datetime.fromisoformat(s)


def timeline_svg(bars: list[dict]) -> str:
    """Horizontal bars, one per step, placed by start and end time."""
    if not bars:
        return '<svg id="chart-timeline" width="400" height="30" role="img">' \
               '<text x="8" y="20">no step has finished yet</text></svg>'
    t0 = min(_t(b["start"]) for b in bars)
    t1 = max(_t(b["end"]) for b in bars)
    span = max((t1 - t0).total_seconds(), 1e-6)
    label_w, plot_w, row_h, top = 300, 760, 13, 24
    width, height = label_w + plot_w + 60, top + row_h * len(bars) + 24
    parts = [f'<svg id="chart-timeline" width="{width}" height="{height}" role="img" '
             f'aria-label="timeline of phases and steps">',
             f'<text x="{label_w}" y="14">0 s</text>',
             f'<text x="{label_w + plot_w}" y="14" text-anchor="end">{escape(f"{span:.2f}")} s</text>',
             f'<text x="{label_w + plot_w / 2}" y="14" text-anchor="middle">seconds since the first step started'
             '</text>']
    for i, b in enumerate(bars):
        y = top + i * row_h
        x = label_w + plot_w * (_t(b["start"]) - t0).total_seconds() / span
        w = max(plot_w * (_t(b["end"]) - _t(b["start"])).total_seconds() / span, 1.5)
        color = _STATE_COLORS.get(b["state"], _PHASE_COLORS.get(b["phase"], "#6b7280"))
        secs = (_t(b["end"]) - _t(b["start"])).total_seconds()
        parts.append(f'<text x="{label_w - 6}" y="{y + 10}" text-anchor="end">{escape(b["step"])}</text>')
        parts.append(f'<rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{row_h - 3}" fill="{color}">'
                     f'<title>{escape(b["step"])} ({escape(b["state"])}): {secs:.3f} s</title></rect>')
    ly = height - 8
    for j, (phase, color) in enumerate(_PHASE_COLORS.items()):
        parts.append(f'<rect x="{label_w + j * 110}" y="{ly - 9}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{label_w + j * 110 + 14}" y="{ly}">{escape(phase)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _legend_entry(x: float, y: float, color: str, label: str) -> str:
    return (f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{color}"/>'
            f'<text x="{x + 14}" y="{y}">{escape(label)}</text>')


def _phase_of(step: str) -> str:
    parts = step.split(".")
    return " ".join(parts[:2]) if parts[0] == "rollback" and len(parts) > 2 else parts[0]


def _ticks(hi: float, n: int = 4) -> list[float]:
    return [hi * i / n for i in range(n + 1)]


def throughput_svg(series: list[dict]) -> str:
    """Rows per second of each batch, one chart per phase (align's mapping, expand's backfills, a rollback's): each
    batch a level from its start to its end and a point at its end, one line per table; the x axis spans that
    phase's batches only, from the start of the first to the end of the last."""
    groups: dict[str, list[dict]] = {}
    for s in series:
        if any(b["rows_per_s"] is not None for b in s["batches"]):
            groups.setdefault(_phase_of(s["step"]), []).append(s)
    if not groups:
        return '<svg id="chart-throughput" width="400" height="30" role="img">' \
               '<text x="8" y="20">no batch recorded</text></svg>'
    return "".join(_throughput_one(phase, ss, i) for i, (phase, ss) in enumerate(groups.items()))


def _throughput_one(phase: str, series: list[dict], index: int) -> str:
    def span_of(b: dict) -> tuple[float, float]:
        end = _t(b["at"]).timestamp()
        return end - (b["batch_ms"] or 0) / 1000, end

    batches = [b for s in series for b in s["batches"] if b["rows_per_s"] is not None]
    t0 = min(span_of(b)[0] for b in batches)
    t1 = max(span_of(b)[1] for b in batches)
    span = max(t1 - t0, 1e-6)
    ymax = max(b["rows_per_s"] for b in batches) * 1.1 or 1.0
    left, top, pw, ph = 80, 28, 760, 220
    width, height = left + pw + 200, top + ph + 46
    cid = "chart-throughput" if index == 0 else f"chart-throughput-{index}"
    parts = [f'<svg id="{cid}" class="chart-throughput" data-phase="{escape(phase)}" width="{width}" '
             f'height="{height}" role="img" aria-label="{escape(phase)}: rows per second of each batch over time">',
             f'<text x="{left}" y="14" font-weight="600">{escape(phase)}: {len(batches)} '
             f'batch{"es" * (len(batches) != 1)} in '
             f'{escape(f"{span:.2f}")} s</text>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#9ca3af"/>',
             f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#9ca3af"/>']
    for v in _ticks(ymax):
        yy = top + ph - ph * v / ymax
        parts.append(f'<line x1="{left - 4}" y1="{yy:.1f}" x2="{left}" y2="{yy:.1f}" stroke="#9ca3af"/>'
                     f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{escape(f"{v:,.0f}")}</text>')
    for v in _ticks(span):
        xx = left + pw * v / span
        anchor = "start" if v == 0 else "end" if v == span else "middle"
        parts.append(f'<line x1="{xx:.1f}" y1="{top + ph}" x2="{xx:.1f}" y2="{top + ph + 4}" stroke="#9ca3af"/>'
                     f'<text x="{xx:.1f}" y="{top + ph + 16}" text-anchor="{anchor}">{escape(f"{v:.2f}")}</text>')
    parts += [f'<text x="{left + pw / 2}" y="{top + ph + 36}" text-anchor="middle">seconds since the first batch '
              f'of {escape(phase)} started</text>',
              f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle">rows/s per batch'
              '</text>']

    def x(at: float) -> float:
        return left + pw * (at - t0) / span

    def y(v: float) -> float:
        return top + ph - ph * v / ymax

    for i, s in enumerate(series):
        color = _PALETTE[i % len(_PALETTE)]
        own = [b for b in s["batches"] if b["rows_per_s"] is not None]
        if not own:
            continue
        # each batch a level over its own duration (a single batch too), its end a point
        line = " ".join(f"{x(a):.1f},{y(b['rows_per_s']):.1f} {x(z):.1f},{y(b['rows_per_s']):.1f}"
                        for b in own for a, z in [span_of(b)])
        parts.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        for b in own:
            parts.append(f'<circle cx="{x(span_of(b)[1]):.1f}" cy="{y(b["rows_per_s"]):.1f}" r="3" fill="{color}">'
                         f'<title>{escape(s["table"])}: {escape(_v(b["batch_rows"]))} rows in '
                         f'{escape(_v(b["batch_ms"]))} ms, {escape(_v(b["rows_per_s"]))} rows/s, ended '
                         f'{escape(b["at"])}</title></circle>')
        parts.append(_legend_entry(left + pw + 14, top + 10 + i * 16, color, s["table"]))
    parts.append("</svg>")
    return "".join(parts)


def latency_svg(clients: dict, phases: list[dict]) -> str:
    """Client transaction latency per second (median line, maximum dots) per kind of client, over the phases."""
    series = clients.get("series") or []
    if not series:
        return '<svg width="400" height="30" role="img"><text x="8" y="20">no client traffic recorded</text></svg>'
    spans = [(p["phase"], _t(p["started_at"]).timestamp(), _t(p["finished_at"]).timestamp())
             for p in phases if p.get("started_at") and p.get("finished_at")]
    t0 = min([b["at"] for b in series] + [a for _, a, _ in spans])
    t1 = max([b["at"] + 1 for b in series] + [z for _, _, z in spans])
    span = max(t1 - t0, 1e-6)
    ymax = max(b["max_ms"] for b in series) * 1.1 or 1.0
    left, top, pw, ph = 70, 16, 760, 240
    width, height = left + pw + 200, top + ph + 40
    parts = [f'<svg id="chart-latency" width="{width}" height="{height}" role="img" '
             f'aria-label="client transaction latency over time">']

    def x(at: float) -> float:
        return left + pw * (at - t0) / span

    def y(ms: float) -> float:
        return top + ph - ph * ms / ymax

    for name, a, z in spans:  # the phases as shaded bands behind the lines
        parts.append(f'<rect x="{x(a):.1f}" y="{top}" width="{max(x(z) - x(a), 1):.1f}" height="{ph}" '
                     f'fill="{_PHASE_COLORS.get(name, "#9ca3af")}" fill-opacity="0.12"><title>{escape(name)}</title></rect>'
                     + (f'<text x="{x(a) - 3:.1f}" y="{top + 12}" text-anchor="end">' if x(a) > left + pw - 70
                     else f'<text x="{x(a) + 3:.1f}" y="{top + 12}">') + f'{escape(name)}</text>')
    parts += [f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#9ca3af"/>',
              f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#9ca3af"/>',
              f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{escape(f"{ymax:,.0f}")} ms</text>',
              f'<text x="{left - 4}" y="{top + ph}" text-anchor="end">0</text>',
              f'<text x="{left}" y="{top + ph + 16}">0 s</text>',
              f'<text x="{left + pw}" y="{top + ph + 16}" text-anchor="end">{escape(f"{span:.1f}")} s</text>',
              f'<text x="{left + pw / 2}" y="{top + ph + 32}" text-anchor="middle">'
              'seconds since the first phase started (per second: median line, slowest transaction dot)</text>',
              f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle">'
              'transaction latency, ms</text>']
    for i, kind in enumerate(sorted({b["kind"] for b in series})):
        color = _PALETTE[i % len(_PALETTE)]
        pts = [b for b in series if b["kind"] == kind]
        line = " ".join(f"{x(b['at'] + 0.5):.1f},{y(b['p50_ms']):.1f}" for b in pts)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        for b in pts:
            fill = "#dc2626" if b["failed"] else color
            parts.append(f'<circle cx="{x(b["at"] + 0.5):.1f}" cy="{y(b["max_ms"]):.1f}" r="2" fill="{fill}"><title>'
                         f'{escape(kind)} clients: {b["flows"]} flows, {b["failed"]} failed, median '
                         f'{b["p50_ms"]} ms, max {b["max_ms"]} ms</title></circle>')
        parts.append(_legend_entry(left + pw + 14, top + 10 + i * 16, color, f"{kind} code"))
    parts.append("</svg>")
    return "".join(parts)


_CODE = re.compile(r"`([^`]+)`")


def _text(x) -> str:
    """Escaped text with `inline code` as <code>: no raw Markdown marks in the page."""
    return _CODE.sub(r"<code>\1</code>", escape(_v(x)))


def _status_class(h: str, c) -> str:
    if h in ("state", "outcome") and c in ("done", "failed", "interrupted", "stopped", "unproven"):
        return f' class="state-{escape(str(c))}"'
    if h == "status" and isinstance(c, str) and c in _STATUS:
        return f' class="{_STATUS[c]}"'
    return ""


def render(d: dict) -> str:
    charts = {"timeline": lambda: timeline_svg(d["timeline"]), "throughput": lambda: throughput_svg(d["backfill"]),
              "latency": lambda: latency_svg(d.get("clients") or {}, d["phases"])}
    body: list[str] = []
    for b in blocks(d):
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{_text(b[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_text(b[1])}</p>")
        elif kind == "verdict":
            cls = {"COMPLETE": "ok", "FAILED": "bad", "INTERRUPTED": "bad", "UNPROVEN": "bad"}.get(b[1], "warn")
            body.append(f'<p id="verdict" class="verdict {cls}">Verdict: {_text(b[2])}</p>')
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{_text(x)}</li>" for x in b[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{escape(h)}</th>" for h in b[1])
            rows = ["<tr>" + "".join(f"<td{_status_class(h, c)}>{_text(c)}</td>" for h, c in zip(b[1], r)) + "</tr>"
                    for r in b[2]]
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
        elif kind == "code":
            body.append(f"<details><summary>{_text(b[1])}</summary><pre><code>{escape(b[2])}</code></pre></details>")
        elif kind == "chart":
            body.append(charts[b[1]]())
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>pgconverge run report</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
