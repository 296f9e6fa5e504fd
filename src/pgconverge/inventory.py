"""Inventory: everything that references the legacy table, its key or its RLS helper (pure: Catalog → dict)."""

from __future__ import annotations

from pgconverge.catalog import mentions
from pgconverge.catalog.model import Catalog, Function, Policy, Table
from pgconverge.config import QualifiedName, Spec
from pgconverge.planning import shapes


def build(spec: Spec, cat: Catalog) -> dict:
    """Describe what the migration will touch, as plain data for JSON and tables."""
    legacy_cols = {(cat.legacy.name, c.name) for c in cat.legacy.columns}
    fk_cols = {(d.table.name, d.fk.columns[0]) for d in cat.dependents}
    watched_fns = {f.signature for f in cat.functions}
    names = {spec.legacy.table.name, spec.legacy.helper.name, *(c for _, c in fk_cols)}

    policies = []
    for p in cat.policies:
        reasons = _policy_reasons(p, legacy_cols, fk_cols, watched_fns, cat.legacy_helper)
        if reasons:
            policies.append(_policy(p, reasons))

    functions = [_function(f, cat.legacy_helper, names) for f in cat.functions if f != cat.canonical_helper]
    mention_fn = {f.name for f in cat.functions}
    triggers = []
    for t in (cat.legacy, *(d.table for d in cat.dependents)):
        for trg in t.triggers:
            why = []
            if t.name == cat.legacy.name:
                why.append("on the legacy table")
            if trg.function in mention_fn:
                why.append(f"its function {trg.function} mentions legacy names")
            if mentions.find(trg.definition, names):
                why.append("its definition names a legacy column")
            if why:
                triggers.append({"table": str(t.name), "name": trg.name, "function": str(trg.function),
                                 "definition": trg.definition, "reasons": why})

    return {
        "database": cat.database,
        "server_version": cat.server_version,
        "legacy": _side(cat.legacy, spec.legacy.key, ", ".join(spec.legacy.match_columns)),
        "canonical": _side(cat.canonical, spec.canonical.key, ", ".join(spec.canonical.match_columns)),
        "foreign_keys": [_foreign_key(d) for d in cat.dependents],
        "policies": policies,
        "functions": functions,
        "views": [{"name": str(v.name), "kind": v.kind, "definition": v.definition.strip(),
                   "columns": sorted(f"{t}.{c}" for t, c in v.column_refs if (t, c) in legacy_cols | fk_cols)}
                  for v in cat.views],
        "triggers": triggers,
        "grants": _grants(cat),
        "rls": _rls(cat, policies),
        "warnings": _warnings(spec, cat),
        # Keys, constraints, indexes, views, triggers and functions that depend on the legacy key, and their fate:
        # mirrored, listed, or refused by `plan` (planning/shapes.py).
        "dependent_objects": [f.as_dict() for f in shapes.findings(spec, cat)],
    }


def _side(t: Table, key: str, match: str) -> dict:
    col = t.column(key)
    return {"table": str(t.name), "key": key, "key_type": col.type if col else None, "match_column": match,
            "rows_estimate": t.row_estimate, "rls_enabled": t.rls_enabled}


def _foreign_key(d) -> dict:
    col = d.column
    return {
        "name": d.fk.name, "table": str(d.table.name), "column": col.name, "column_type": col.type,
        "nullable": not col.not_null, "references": f"{d.fk.ref_table}({', '.join(d.fk.ref_columns)})",
        "on_delete": d.fk.on_delete, "on_update": d.fk.on_update, "validated": d.fk.validated,
        "definition": d.fk.definition,
        "indexes": [{"name": str(i.name), "columns": list(i.columns), "unique": i.unique, "valid": i.valid,
                     "predicate": i.predicate, "definition": i.definition}
                    for i in d.table.indexes if col.name in i.columns],
    }


def _policy_reasons(p: Policy, legacy_cols, fk_cols, watched_fns, helper: Function | None) -> list[dict]:
    reasons = []
    for fn in p.function_refs:
        if helper and fn == helper.signature:
            reasons.append({"kind": "legacy helper", "name": fn})
        elif fn in watched_fns:
            reasons.append({"kind": "function mentioning legacy names", "name": fn})
    for table, col in p.column_refs:
        if (table, col) in fk_cols or (table, col) in legacy_cols:
            kind = "legacy foreign key column" if (table, col) in fk_cols else "legacy table column"
            via = "direct" if table == p.table else "sub-query"
            reasons.append({"kind": kind, "name": f"{table}.{col}", "via": via})
    return reasons


def _policy(p: Policy, reasons: list[dict]) -> dict:
    return {"table": str(p.table), "name": p.name, "command": p.command,
            "permissive": p.permissive, "roles": list(p.roles), "using": p.using, "with_check": p.with_check,
            "reasons": reasons}


def _function(f: Function, helper: Function | None, names: set[str]) -> dict:
    found = sorted({(m.name, m.in_string) for m in mentions.find(f.source, names)})
    return {"name": str(f.name), "signature": f.signature, "returns": f.returns, "language": f.language,
            "security_definer": f.security_definer,
            "role": "legacy helper" if helper and f == helper else "mentions legacy names",
            "mentions": [{"name": n, "in_string": s} for n, s in found]}


def _grants(cat: Catalog) -> list[dict]:
    merged: dict[tuple, list[str]] = {}
    for g in cat.grants:
        merged.setdefault((g.object_kind, g.object_name, g.grantee), []).append(g.privilege)
    return [{"object_kind": k, "object": o, "grantee": r, "privileges": sorted(p)}
            for (k, o, r), p in sorted(merged.items())]


def _rls(cat: Catalog, policies: list[dict]) -> list[dict]:
    roles: dict[QualifiedName, str] = {cat.legacy.name: "legacy", cat.canonical.name: "canonical"}
    for d in cat.dependents:
        roles.setdefault(d.table.name, "dependent")
    for t in cat.tables:
        roles.setdefault(t.name, "reaches a dependent through a policy")
    out = []
    for name, role in roles.items():
        t = cat.table(name)
        if t is not None:
            out.append({"table": str(name), "role": role, "enabled": t.rls_enabled, "forced": t.rls_forced,
                        "policies": sum(1 for p in policies if p["table"] == str(name))})
    return out


def _warnings(spec: Spec, cat: Catalog) -> list[str]:
    from pgconverge.planning import references

    out = []
    for d in cat.dependents:
        col = d.fk.columns[0]
        if not any(i.columns and i.columns[0] == col for i in d.table.indexes):
            out.append(f"{d.table.name}.{col} has no index led by it: a delete on {cat.legacy.name} scans "
                       f"{d.table.name}; expand gives {references.new_column(spec, cat, d)} an index")
        if not d.table.rls_enabled:
            out.append(f"{d.table.name} has row level security disabled: the API roles see every row")
        if not d.fk.validated:
            out.append(f"foreign key {d.fk.name} on {d.table.name} is NOT VALID: existing rows were never checked")
    if not cat.legacy.rls_enabled:
        out.append(f"{cat.legacy.name} has row level security disabled")
    if cat.canonical_helper is not None:
        out.append(f"{spec.canonical.helper} already exists; switch will replace it (its definition is saved)")
    return out
