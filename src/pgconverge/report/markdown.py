"""The report as a list of neutral blocks (headings, paragraphs, tables, code), and their Markdown rendering."""

from __future__ import annotations

import json
from typing import Any

Block = tuple  # ("h1"|"h2"|"h3"|"p", text) | ("table", headers, rows) | ("code", label, text) | ("chart", name)


def _v(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:,.1f}"
    if isinstance(x, (dict, list)):
        return json.dumps(x, default=str, sort_keys=True)
    return str(x)


def rls_line(eq: dict | None) -> str:
    if eq is None:
        return "RLS equivalence: not checked (the switch has not run)"
    problems = eq.get("problems") or []
    verdict = "passed" if not problems else f"FAILED ({len(problems)} problems)"
    return (f"RLS equivalence: {verdict} — {eq.get('identities', 0)} identities, {eq.get('tokens', 0)} tokens, "
            f"{eq.get('write_probes', 0)} write probes over {len(eq.get('tables') or [])} tables")


def blocks(d: dict) -> list[Block]:
    out: list[Block] = [("h1", "pgconverge run report"),
                        ("p", f"Ledger: schema `{d['private_schema']}`, {len(d['runs'])} run(s).")]
    out.append(("table", ["run", "command", "started", "client"],
                [[r["id"], r["command"], r["started_at"], r["client"]] for r in d["runs"]]))
    if d.get("rehearsal"):
        out += _rehearsal(d["rehearsal"])
    out.append(("h2", "Phases"))
    out.append(("table", ["phase", "state", "steps", "started", "finished"],
                [[p["phase"], p["state"], len(p["steps"]), p["started_at"], p["finished_at"]] for p in d["phases"]]))
    out.append(("chart", "timeline"))
    for p in d["phases"]:
        out.append(("h3", f"Phase {p['phase']}: {p['state']}"))
        out.append(("table", ["step", "state", "lock", "duration ms", "attempts", "lock waits", "errors"],
                    [[s["id"], s["state"], s["lock"], s["duration_ms"], s["attempts"] or None,
                      _waits(s), "; ".join(_err(e) for e in s["errors"]) or None] for s in p["steps"]]))
        stopped = [(s, i, h) for s in p["steps"] for i, h in enumerate(s.get("history") or [], 1)
                   if h["outcome"] not in ("done", "running")]
        if stopped:
            # Every execution that did not finish: interrupted by a signal, failed, killed, or undone by its own check.
            out.append(("table", ["step", "execution", "outcome", "started", "duration ms", "error or where it stopped"],
                        [[s["id"], i, h["outcome"], h["started_at"], h["duration_ms"],
                          _err(h) if h.get("message") else None] for s, i, h in stopped]))
        notes = [f"{s['id']}: {n}" for s in p["steps"] for n in s["notes"]]
        if notes:
            out.append(("p", "Notes: " + "; ".join(notes)))
    out.append(("h2", "SQL sent"))
    for p in d["phases"]:
        for s in p["steps"]:
            if s["sql"]:
                out.append(("code", s["id"], s["sql"]))
    out += _backfill(d["backfill"])
    out += _clients(d.get("clients"))
    out += _identity(d["identity"])
    out.append(("h2", "Row level security"))
    out.append(("p", rls_line(d["rls_equivalence"])))
    for prob in (d["rls_equivalence"] or {}).get("problems") or []:
        out.append(("p", f"problem: {_v(prob)}"))
    out.append(("h2", "Contract gates"))
    gates = d["contract_gates"]
    if gates is None:
        out.append(("p", "Not evaluated (contract has not run)."))
    else:
        out.append(("table", ["gate", "passed", "accepted", "details"],
                    [[g.get("gate"), g.get("passed"), g.get("accepted"), "; ".join(map(str, g.get("details") or []))]
                     for g in gates]))
    out += _counts(d["counts"])
    return out


def _rehearsal(r: dict) -> list[Block]:
    """What `pgconverge rehearse` adds: where the copy came from and what was verified after each phase."""
    out: list[Block] = [("h2", "Rehearsal"),
                        ("p", f"Rehearsal {'passed' if r['passed'] else 'FAILED'}: a copy of {r['source']} "
                              f"(PostgreSQL {r['source_version']}) restored as database {r['database']} and "
                              "migrated there; the source was only read.")]
    for label, key in (("Roles created in the copy (NOLOGIN)", "roles_created"),
                       ("Extensions left out (the embedded server lacks them)", "extensions_skipped"),
                       ("Objects that could not be restored", "restore_errors")):
        if r.get(key):
            out.append(("p", f"{label}: " + "; ".join(map(str, r[key]))))
    out.append(("table", ["phase", "steps", "seconds", "verification", "verified after the phase"],
                [[p["phase"], p["steps"], p["seconds"], "passed" if p["passed"] else "FAILED",
                  ", ".join(p["invariants"]) + f", RLS of {p['rls_identities']} identities" if p["passed"]
                  else "; ".join(map(str, p["failed"]))] for p in r["phases"]]))
    return out


def _waits(s: dict) -> str | None:
    if not s["lock_waits"]:
        return "0"
    return f"{s['lock_waits']} (" + ", ".join(f"SQLSTATE {k} ×{n}" for k, n in s["retry_sqlstates"].items()) + ")"


def _err(e: dict) -> str:
    return f"[{e['sqlstate']}] {e['message']}" if e.get("sqlstate") else str(e.get("message"))


def _backfill(series: list[dict]) -> list[Block]:
    out: list[Block] = [("h2", "Backfill throughput")]
    if not series:
        return out + [("p", "No batched step has written a checkpoint.")]
    out.append(("table", ["step", "table", "batches", "rows", "batch time ms", "mean rows/s"],
                [[s["step"], s["table"], len(s["batches"]), s["rows"], s["total_ms"], s["mean_rows_per_s"]]
                 for s in series]))
    out.append(("chart", "throughput"))
    out.append(("table", ["step", "at", "batch rows", "rows done", "batch ms", "rows/s"],
                [[s["step"], b["at"], b["batch_rows"], b["rows_done"], b["batch_ms"], b["rows_per_s"]]
                 for s in series for b in s["batches"]]))
    return out


def _clients(c: dict | None) -> list[Block]:
    """Application traffic recorded during the run: per kind of client, flows, failures and latency."""
    if not c:
        return []
    out: list[Block] = [("h2", "Application traffic during the migration")]
    out.append(("table", ["clients", "flows", "failed", "p50 ms", "p99 ms", "max ms"],
                [[k, v["flows"], v["failed"], v["p50_ms"], v["p99_ms"], v["max_ms"]]
                 for k, v in c["summary"].items()]))
    out.append(("chart", "latency"))
    out.append(("p", f"{c.get('rows_written', 0)} rows written by the clients; "
                     f"{len(c.get('linkage_problems') or [])} lost or linked to the wrong person."))
    if c.get("events"):
        t0 = min(e["at"] for e in c["events"])
        out.append(("table", ["at s", "event"], [[round(e["at"] - t0, 1), e["what"]] for e in c["events"]]))
    for f in (c.get("failures") or []) + (c.get("linkage_problems") or []):
        out.append(("p", f"problem: {f}"))
    return out


def _identity(ident: dict) -> list[Block]:
    out: list[Block] = [("h2", "Identity decisions and conflicts")]
    rep = ident.get("align_report")
    if rep is None:
        out.append(("p", "No align report (align has not finished)."))
    else:
        methods = rep.get("methods") or {}
        out.append(("table", ["method", "legacy rows"], [[k, v] for k, v in sorted(methods.items())]
                    + [["total", sum(methods.values())]]))
        merged = rep.get("merged") or {}
        dup = rep.get("canonical_duplicates") or {}
        bad = rep.get("unusable_numbers") or {}
        out.append(("p", f"{merged.get('groups', 0)} groups of legacy rows merged onto one canonical row; "
                         f"{dup.get('groups', 0)} numbers with several canonical rows (preferred one chosen); "
                         f"{bad.get('rows', 0)} NULL or unparseable numbers."))
        if merged.get("sample"):
            out.append(("h3", "Merged groups (sample)"))
            out.append(("table", ["legacy rows", "canonical row"],
                        [[", ".join(map(str, g.get("legacy") or [])), g.get("canonical")] for g in merged["sample"]]))
        if dup.get("sample"):
            out.append(("h3", "Canonical duplicates (sample)"))
            out.append(("table", ["key", "canonical row", "number", "chosen"],
                        [[g.get("key"), r.get("id"), r.get("number"), r.get("chosen")]
                         for g in dup["sample"] for r in g.get("rows") or []]))
        if bad.get("sample"):
            out.append(("h3", "Unusable numbers (sample)"))
            out.append(("table", ["legacy row", "number"], [[r.get("legacy"), r.get("number")] for r in bad["sample"]]))
    audit = ident.get("phone_audit")
    out.append(("h3", "Phone key audit (SQL normalization vs phonenumbers)"))
    if audit is None:
        return out + [("p", "No phone audit recorded.")]
    out.append(("p", f"{audit.get('checked', 0)} distinct numbers checked, {audit.get('disagreements', 0)} disagree, "
                     f"{audit.get('unexplained', 0)} outside the documented classes."))
    if audit.get("by_reason"):
        out.append(("table", ["reason", "numbers"], [[k, v] for k, v in sorted(audit["by_reason"].items())]))
    if audit.get("sample"):
        out.append(("table", ["raw", "SQL key", "phonenumbers key", "reason"],
                    [[r.get("raw"), r.get("sql"), r.get("phonenumbers"), r.get("reason")] for r in audit["sample"]]))
    return out


def _counts(counts: dict) -> list[Block]:
    out: list[Block] = [("h2", "Row counts before and after")]
    before = (counts.get("before") or {}).get("rows") or {}
    after = (counts.get("after") or {}).get("rows") or {}
    if not before and not after:
        return out + [("p", "No counts recorded.")]
    rows = []
    for k in list(before) + [k for k in after if k not in before]:
        b, a = before.get(k), after.get(k)
        rows.append([k, b, a, (a - b) if isinstance(a, int) and isinstance(b, int) else None])
    return out + [("table", ["table", "before", "after", "change"], rows)]


def _cell(x: Any) -> str:
    return _v(x).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", "<br>")


def render(d: dict) -> str:
    lines: list[str] = []
    for b in blocks(d):
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + b[1], ""]
        elif kind == "p":
            lines += [b[1], ""]
        elif kind == "table":
            headers, rows = b[1], b[2]
            lines.append("| " + " | ".join(headers) + " |")
            lines.append("|" + "---|" * len(headers))
            lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
            lines.append("")
        elif kind == "code":
            fence = "````" if "```" in b[2] else "```"
            lines += [f"**{b[1]}**", "", fence + "sql", b[2].rstrip(), fence, ""]
    return "\n".join(lines)
