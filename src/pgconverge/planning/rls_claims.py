"""How a helper reads a JWT claim: find and swap the claim literal, name the mechanism, cast safely."""

from __future__ import annotations

from pglast import ast, enums, parse_plpgsql, parse_sql

from pgconverge.catalog.model import Function
from pgconverge.planning.rls_ast import ParseError, const_text, dup, func_call, strings, walk

SETTING_PREFIX = "request.jwt.claim."  # older PostgREST: one setting per claim
CLAIMS_SETTING = "request.jwt.claims"  # PostgREST 9+: every claim in one JSON setting
JWT = ("auth", "jwt")
UID = ("auth", "uid")

_TEXT_TYPES = {"text", "varchar", "bpchar", "name"}
# Before Postgres 16 (no pg_input_is_valid): values these patterns accept always cast without error.
_PATTERNS = {
    "int8": r"^\s*[-+]?[0-9]{1,18}\s*$",
    "int4": r"^\s*[-+]?[0-9]{1,9}\s*$",
    "int2": r"^\s*[-+]?[0-9]{1,4}\s*$",
    "uuid": r"^\{?[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}\}?$",
}


def swap_claim(tree: ast.Node, old: str, new: str) -> int:
    """Replace, in place, every string literal naming claim OLD by one naming NEW; return how many."""
    count = 0
    for node in walk(tree):
        if not (isinstance(node, ast.A_Const) and isinstance(node.val, ast.String)):
            continue
        value = node.val.sval
        if value == old:
            node.val = ast.String(new)
        elif value == SETTING_PREFIX + old:
            node.val = ast.String(SETTING_PREFIX + new)
        elif value.startswith("{") and value.endswith("}") and old in value[1:-1].split(","):
            # a json path such as '{app_metadata,customer_id}' for #>>
            node.val = ast.String("{" + ",".join(new if p == old else p for p in value[1:-1].split(",")) + "}")
        else:
            continue
        count += 1
    return count


def classify(body: ast.Node, claim: str, callees: list[Function]) -> tuple[str, str | None]:
    """Name how BODY reads CLAIM: claims_json, claim_setting, auth_jwt, or unknown (with a note)."""
    found = _style(body)
    if found:
        return found, None
    # The claim may be read through an accessor such as public.auth_claim('customer_id').
    for node in walk(body):
        if isinstance(node, ast.FuncCall) and any(
                isinstance(a, ast.A_Const) and isinstance(a.val, ast.String) and a.val.sval == claim
                for a in node.args or ()):
            name = strings(node.funcname)
            callee = next((f for f in callees if (f.name.schema, f.name.name) == name
                           or (len(name) == 1 and f.name.name == name[0])), None)
            inner = _style_of_function(callee) if callee else None
            if inner:
                return inner, f"the claim is read through {'.'.join(name)}(), which uses {inner}"
            return "unknown", (f"the claim is read through {'.'.join(name)}() (body not examined); the canonical "
                               "claim is read through the same function")
    return "unknown", "the claim literal was found, but not how it is read"


def _style(body: ast.Node) -> str | None:
    consts = {n.val.sval for n in walk(body) if isinstance(n, ast.A_Const) and isinstance(n.val, ast.String)}
    calls = {strings(n.funcname) for n in walk(body) if isinstance(n, ast.FuncCall)}
    if any(c.startswith(SETTING_PREFIX) for c in consts):
        return "claim_setting"
    if JWT in calls:
        return "auth_jwt"
    if CLAIMS_SETTING in consts:
        return "claims_json"
    return None


def _style_of_function(fn: Function) -> str | None:
    try:
        if fn.language == "sql" and fn.source.strip():
            trees = [raw.stmt for raw in parse_sql(fn.source)]
        elif fn.language == "plpgsql":
            exprs = [n["PLpgSQL_expr"]["query"] for n in _plpgsql_nodes(parse_plpgsql(fn.definition))
                     if isinstance(n, dict) and "PLpgSQL_expr" in n]
            trees = [raw.stmt for q in exprs for raw in parse_sql(f"SELECT {q}\n")]
        else:
            return None
    except ParseError:
        return None
    for tree in trees:
        found = _style(tree)
        if found:
            return found
    return None


def _plpgsql_nodes(value):
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from _plpgsql_nodes(v)
    elif isinstance(value, list):
        for v in value:
            yield from _plpgsql_nodes(v)


def safe_cast(arg: ast.Node, target: ast.TypeName, target_text: str, server_version: int) -> tuple[ast.Node, str | None]:
    """(arg)::target, but NULL instead of an error when the value does not convert."""
    plain = ast.TypeCast(arg=dup(arg), typeName=dup(target))
    base = strings(target.names)[-1]
    if base in _TEXT_TYPES and not target.typmods:
        return plain, None
    probe = dup(arg)
    if isinstance(probe, ast.A_Expr) and strings(probe.name)[-1:] in (("->",), ("#>",)):
        probe = ast.TypeCast(arg=probe, typeName=ast.TypeName(names=(ast.String("text"),), typemod=-1))
    if server_version >= 160000:
        test = func_call(("pg_catalog", "pg_input_is_valid"), probe, const_text(target_text))
    elif base in _PATTERNS and not target.arrayBounds:
        test = ast.A_Expr(kind=enums.A_Expr_Kind.AEXPR_OP, name=(ast.String("~"),), lexpr=probe,
                          rexpr=const_text(_PATTERNS[base]))
    else:
        return plain, (f"on Postgres < 16 a claim value that is not a valid {target_text} raises an error "
                       "(as in the legacy helper) instead of giving NULL")
    return ast.CaseExpr(args=(ast.CaseWhen(expr=test, result=plain),)), None


def as_expression(sel: ast.SelectStmt) -> ast.Node:
    """SELECT <expr> alone becomes <expr>; anything richer becomes a scalar sub-query."""
    bare = all(getattr(sel, a, None) in (None, (), False) for a in (
        "fromClause", "whereClause", "groupClause", "havingClause", "sortClause", "distinctClause", "withClause",
        "limitCount", "limitOffset", "windowClause", "valuesLists"))
    if bare and len(sel.targetList or ()) == 1:
        return sel.targetList[0].val
    return ast.SubLink(subLinkType=enums.SubLinkType.EXPR_SUBLINK, subselect=sel)


def mentions_claim(node: ast.Node, *claims: str) -> bool:
    wanted = {*claims, *(f"request.jwt.claim.{c}" for c in claims)}
    for n in walk(node):
        if isinstance(n, ast.A_Const) and isinstance(n.val, ast.String):
            v = n.val.sval
            if v in wanted or (v.startswith("{") and v.endswith("}") and set(v[1:-1].split(",")) & set(claims)):
                return True
    return False


def pinned_path(config: tuple[str, ...]) -> list[str] | None:
    """The schemas a function pins its search_path to, besides pg_catalog and pg_temp; None if it pins none."""
    for item in config:
        key, _, value = item.partition("=")
        if key.strip() == "search_path":
            parts = [p.strip().strip('"') for p in value.split(",")]
            return [p for p in parts if p and p not in ("pg_catalog", "pg_temp", "$user")]
    return None


def definition_options(definition: str) -> tuple[ast.DefElem, ...]:
    try:
        stmt = parse_sql(definition)[0].stmt
    except ParseError:
        return ()
    return tuple(o for o in (getattr(stmt, "options", None) or ()) if isinstance(o, ast.DefElem))
