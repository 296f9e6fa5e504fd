"""Inventory: everything that references the legacy table, its key or its RLS helper (pure: Catalog → dict)."""

from __future__ import annotations

import json

from pglast import ast, parse_sql

from pgconverge.catalog import calls as fn_calls, mentions
from pgconverge.catalog.model import Catalog, Function, Policy, Table
from pgconverge.config import QualifiedName, Spec
from pgconverge.planning import shapes
from pgconverge.planning.rls_ast import ParseError, strings, walk
from pgconverge.planning.rls_claims import CLAIMS_SETTING, JWT, SETTING_PREFIX


def build(spec: Spec, cat: Catalog) -> dict:
    """Describe what the migration will touch, as plain data for JSON and tables."""
    legacy_cols = {(cat.legacy.name, c.name) for c in cat.legacy.columns}
    fk_cols = {(d.table.name, d.fk.columns[0]) for d in cat.dependents}
    watched_fns = {f.signature for f in cat.functions}
    names = {spec.legacy.table.name, *(c for _, c in fk_cols), *((spec.legacy.helper.name,) if spec.has_helper else ())}

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
        # Those that read the legacy table or a legacy column (a whole row, a view over such a view), not every
        # view over these tables.
        "views": [{"name": str(v.name), "kind": v.kind, "definition": v.definition.strip(),
                   "columns": sorted(f"{t}.{c}" for t, c in v.column_refs if (t, c) in legacy_cols | fk_cols),
                   "reads": reads}
                  for v, reads in shapes.view_readers(cat)],
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
    found = sorted({(m.name, m.in_string) for m in mentions.find(f.code, names)})
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


# --- JWT claims the policies and the functions they call read (parse trees, not text) ---------------------------

_GET = {"->", "->>"}
_PATH = {"#>", "#>>"}
# Supabase's auth schema reads these claims for the caller.
_AUTH_CLAIMS = {("auth", "uid"): "sub", ("auth", "role"): "role", ("auth", "email"): "email"}
# Claims the test tokens of the RLS check always carry: the identity's own, the auth user, the Postgres role.
_BUILT_IN = ("sub", "role")


def _op(node) -> str | None:
    if isinstance(node, ast.A_Expr) and node.name:
        names = [n.sval for n in node.name if isinstance(n, ast.String)]
        return names[-1] if names else None
    return None


def _const(node) -> str | None:
    while isinstance(node, ast.TypeCast):
        node = node.arg
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.String):
        return node.val.sval
    return None


def _is_claims(node) -> bool:
    """NODE is the token's claims as one JSON value: auth.jwt(), or the request.jwt.claims setting."""
    if _op(node) in _GET | _PATH:
        return False
    return any((isinstance(n, ast.FuncCall) and strings(n.funcname) in (JWT, ("jwt",)))
               or _const(n) == CLAIMS_SETTING for n in walk(node))


def _path(node) -> list[str] | None:
    """The claim path NODE reads from the token (["app_metadata", "customer_id"]); [] for the whole token."""
    op = _op(node)
    if op in _GET | _PATH:
        base = _path(node.lexpr)
        key = _const(node.rexpr)
        if base is None:
            return None
        if key is None:
            return base + ["?"]  # a key given at run time: an accessor's argument
        return base + (key.strip("{}").split(",") if op in _PATH else [key])
    return [] if _is_claims(node) else None


def _reads(trees: list) -> tuple[set[str], bool, list[tuple[tuple[str, ...], str]]]:
    """(claims read, whether a claim name comes from an argument, (function, first string argument) calls)."""
    found: set[str] = set()
    dynamic = False
    calls: list[tuple[tuple[str, ...], str]] = []
    for tree in trees:
        for node in walk(tree):
            if _op(node) in _GET | _PATH:
                p = _path(node)
                if p:
                    if "?" in p:
                        dynamic = True
                    else:
                        found.add(".".join(p))
            elif isinstance(node, ast.FuncCall):
                name = strings(node.funcname)
                args = node.args or ()
                first = _const(args[0]) if args else None
                if name in _AUTH_CLAIMS:
                    found.add(_AUTH_CLAIMS[name])
                elif name[-1:] == ("current_setting",) and args:
                    if first is not None and first.startswith(SETTING_PREFIX):
                        found.add(first[len(SETTING_PREFIX):])
                    elif first is None and any(_const(n) == SETTING_PREFIX for n in walk(args[0])):
                        dynamic = True  # 'request.jwt.claim.' || name
                # (function, its first argument: the string, "" when given at run time, None when it has none)
                calls.append((name, first if first is not None or not args else ""))
    # A path read whole and also deeper: keep the deeper one (app_metadata.customer_id, not app_metadata).
    return {c for c in found if not any(o.startswith(c + ".") for o in found)}, dynamic, calls


def _trees_of_expression(text: str | None) -> list:
    if not text:
        return []
    try:
        return [raw.stmt for raw in parse_sql(f"SELECT {text}")]
    except ParseError:
        return []


def claims(spec: Spec, cat: Catalog, functions: list[Function]) -> dict:
    """The JWT claims each policy and each function it calls read, and the token_claims line the check would use."""
    by_name: dict[tuple[str, ...], Function] = {}
    for f in functions:
        by_name.setdefault((f.name.schema, f.name.name), f)
        by_name.setdefault((f.name.name,), f)
    unique = {f.signature: f for f in functions}
    direct = {sig: _reads(fn_calls.statements(f) or []) for sig, f in unique.items()}
    # An accessor reads the claim its argument names; so does a function passing its own argument on to one.
    accessor = {sig: r[1] for sig, r in direct.items()}
    for _ in range(4):
        for sig, (_, _, called) in direct.items():
            accessor[sig] = accessor[sig] or any(
                first == "" and name in by_name and accessor[by_name[name].signature] for name, first in called)

    def resolve(reads, seen: frozenset[str]) -> dict[str, str]:
        """claim → where it is read ("inline" or the function that reads it)."""
        found, _, called = reads
        out = {c: "inline" for c in found}
        for name, first in called:
            f = by_name.get(name)
            if f is None or f.signature in seen:
                continue
            if accessor[f.signature] and first:
                out.setdefault(first, f"{f.name}('{first}')")
            for c in resolve(direct[f.signature], seen | {f.signature}):
                out.setdefault(c, f"{f.name}()")
        return out

    policies = []
    for p in cat.policies:
        read = resolve(_reads(_trees_of_expression(p.using) + _trees_of_expression(p.with_check)), frozenset())
        if read:
            policies.append({"table": str(p.table), "name": p.name,
                             "claims": [{"claim": c, "via": v} for c, v in sorted(read.items())]})
    funcs = []
    for sig, reads in direct.items():
        read = resolve(reads, frozenset({sig}))
        if read or accessor[sig]:
            f = unique[sig]
            funcs.append({"function": f"{f.name}({f.identity_args})",
                          "claims": [{"claim": c, "via": v} for c, v in sorted(read.items())],
                          "claim_from_argument": accessor[sig]})
    funcs.sort(key=lambda x: x["function"])
    every = sorted({c["claim"] for x in policies + funcs for c in x["claims"]})
    identity = {spec.legacy.claim, spec.canonical.claim, *_BUILT_IN}
    configured = dict(spec.migration.token_claims)
    # Top-level claims a test token carries besides the identity: those configured; read but not carried: missing.
    needed = sorted({c.split(".")[0] for c in every} - identity)
    missing = [c for c in needed if c not in configured]
    return {"read": every, "policies": policies, "functions": funcs, "identity": sorted(identity),
            "token_claims": configured, "token_claims_line": _line(configured), "missing": missing,
            "suggested_line": _line({**configured, **{c: "…" for c in missing}}) if missing else None,
            "unused": sorted(set(configured) - set(needed))}


def _line(claims_: dict) -> str:
    """CLAIMS as the migration.token_claims line of pgconverge.toml."""
    if not claims_:
        return "token_claims = {}"
    return "token_claims = { " + ", ".join(f"{_key(k)} = {json.dumps(v, ensure_ascii=False)}"
                                           for k, v in claims_.items()) + " }"


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)
