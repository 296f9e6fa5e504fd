"""Which functions a SQL or PL/pgSQL function body calls, by name as written (parse trees, not text), and whether it
may reach a column, a function or another named object (a rollback checks, before its first change, that no function
of the application reaches what it drops: Postgres records no dependency of such a body)."""

from __future__ import annotations

import re

from pglast import ast, parse_plpgsql, parse_sql
from pglast.parser import ParseError

from pgconverge.catalog import mentions
from pgconverge.catalog.model import Function
from pgconverge.config import QualifiedName


def statements(fn: Function) -> list[ast.Node] | None:
    """The parse trees of FN's body: SQL statements, or for plpgsql every embedded expression as a SELECT.

    None when the body cannot be parsed or the language is neither sql nor plpgsql.
    """
    try:
        if fn.language == "sql":
            if fn.source.strip():
                return [raw.stmt for raw in parse_sql(fn.source)]
            # BEGIN ATOMIC body (PG 14+): prosrc is empty, the statements are in the definition.
            body = parse_sql(fn.definition)[0].stmt.sql_body or ()
            flat: list = []
            for item in body:
                flat.extend(item if isinstance(item, tuple) else (item,))
            return [s for s in flat if s is not None]
        if fn.language == "plpgsql":
            out = []
            for query in _plpgsql_queries(parse_plpgsql(fn.definition)):
                for text in (f"SELECT {query}\n", query, query.partition(":=")[2]):
                    try:  # an expression, a statement, or an assignment's right-hand side
                        out += [raw.stmt for raw in parse_sql(text)]
                        break
                    except ParseError:
                        continue
            return out
    except (ParseError, IndexError, AttributeError):
        return None
    return None


def called(fn: Function) -> set[tuple[str, ...]]:
    """Names of the functions FN calls, as written: (name,) or (schema, name)."""
    out = set()
    for stmt in statements(fn) or ():
        for node in _walk(stmt):
            if isinstance(node, ast.FuncCall):
                out.add(tuple(n.sval for n in node.funcname if isinstance(n, ast.String)))
    return out


# PL/pgSQL statements that run SQL built at run time (EXECUTE, FOR ... IN EXECUTE, RETURN QUERY EXECUTE,
# OPEN ... FOR EXECUTE): what they read is not in the body.
_DYNAMIC = ("PLpgSQL_stmt_dynexecute", "PLpgSQL_stmt_dynfors", "dynquery")


def runs_dynamic_sql(fn: Function) -> bool:
    """Whether FN is plpgsql that runs SQL built at run time (EXECUTE in any form), or a body that does not parse."""
    if fn.language != "plpgsql":
        return False
    try:
        return any(k in _DYNAMIC for k in _keys(parse_plpgsql(fn.definition)))
    except (ParseError, IndexError, AttributeError):
        return True


def reads(fn: Function) -> tuple[set[tuple[str, ...]] | None, str]:
    """The relations FN's body names (FROM, JOIN, sub-queries, the tables it writes), as written: (name,) or
    (schema, name); a WITH query's own name is left out. (None, why) when that cannot be told from the body: it
    does not parse, it runs SQL built at run time, or it is in a language other than sql and plpgsql."""
    if fn.language not in ("sql", "plpgsql"):
        return None, f"is written in {fn.language}"
    stmts = statements(fn)
    if stmts is None:
        return None, "has a body that does not parse"
    if runs_dynamic_sql(fn):
        return None, "runs SQL built at run time (EXECUTE)"
    out: set[tuple[str, ...]] = set()
    for stmt in stmts:
        nodes = list(_walk(stmt))
        ctes = {n.ctename for n in nodes if isinstance(n, ast.CommonTableExpr)}
        into = {id(n.rel) for n in nodes if isinstance(n, ast.IntoClause)}
        for n in nodes:
            if isinstance(n, ast.RangeVar) and id(n) not in into and not (n.schemaname is None and n.relname in ctes):
                out.add((n.schemaname, n.relname) if n.schemaname else (n.relname,))
    return out, ""


def _keys(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _keys(v)
    elif isinstance(value, list):
        for v in value:
            yield from _keys(v)


def _plpgsql_queries(value):
    if isinstance(value, dict):
        if "PLpgSQL_expr" in value:
            yield value["PLpgSQL_expr"]["query"]
        for v in value.values():
            yield from _plpgsql_queries(v)
    elif isinstance(value, list):
        for v in value:
            yield from _plpgsql_queries(v)


def _walk(node):
    if isinstance(node, ast.Node):
        yield node
        for attr in node.__slots__:
            yield from _walk(getattr(node, attr, None))
    elif isinstance(node, tuple):
        for item in node:
            yield from _walk(item)


def from_definition(fn: Function, definition: str) -> Function:
    """FN as DEFINITION (a CREATE FUNCTION statement not yet run) would make it: language and body."""
    try:
        stmt = parse_sql(definition)[0].stmt
    except (ParseError, IndexError):
        return fn
    opts = {o.defname: o.arg for o in getattr(stmt, "options", None) or () if isinstance(o, ast.DefElem)}
    body = opts.get("as")
    source = body[0].sval if isinstance(body, tuple) and body and isinstance(body[0], ast.String) else ""
    language = opts["language"].sval if isinstance(opts.get("language"), ast.String) else fn.language
    return Function(fn.name, fn.signature, fn.identity_args, fn.returns, language, fn.volatility,
                    fn.security_definer, fn.config, source, definition, fn.oid, fn.owner)


def _word(name: str, text: str) -> bool:
    return re.search(r"(?<![\w$])" + re.escape(name) + r"(?![\w$])", text, re.I) is not None


def reads_column(fn: Function, table: QualifiedName, column: str, on_tables: frozenset = frozenset()) -> bool:
    """Whether FN may read or write TABLE's COLUMN when it runs: its body names the column, and the table (or FN is
    a trigger function on it, ON_TABLES, or takes or returns its rows). Not when every mention of the column, in its
    parse trees, is qualified by the alias of another table (`au.user_id` of `from account_user au`). Anything the
    parse trees do not account for (a body that does not parse, the name in SQL it builds and EXECUTEs, a mention
    outside the expressions found) counts as a read: unsure means yes. The name in a string of a body that runs no
    SQL of its own making is data, not a column Postgres resolves (`to_jsonb(new) ->> 'profile_id'` reads NULL
    once the column is gone): not a read."""
    found = mentions.find(fn.code, {column, table.name})
    hits = [m for m in found if m.name == column]
    if not hits:
        return False
    if not (table in on_tables or any(m.name == table.name for m in found)
            or _word(table.name, f"{fn.identity_args} {fn.returns}")):
        return False
    if any(m.in_string for m in hits):
        if runs_dynamic_sql(fn):
            return True
        hits = [m for m in hits if not m.in_string]
        if not hits:
            return False
    stmts = statements(fn)
    if stmts is None:
        return True
    seen = elsewhere = 0
    for stmt in stmts:
        aliases: dict[str, set] = {}
        for node in _walk(stmt):
            if isinstance(node, ast.RangeVar):
                key = node.alias.aliasname if node.alias else node.relname
                aliases.setdefault(key, set()).add((node.schemaname, node.relname))
        for node in _walk(stmt):
            if not isinstance(node, ast.ColumnRef):
                continue
            fields = [f.sval for f in node.fields if isinstance(f, ast.String)]
            if not fields or fields[-1] != column:
                continue
            seen += 1
            targets = aliases.get(fields[-2]) if len(fields) >= 2 else None
            if targets and not any(r == table.name and s in (None, table.schema) for s, r in targets):
                elsewhere += 1
    return not (seen == len(hits) and elsewhere == seen)


def calls_function(fn: Function, name: QualifiedName) -> bool:
    """Whether FN calls the function NAME (by its name alone, or qualified by its schema); a body that does not
    parse, or names it in dynamic SQL, counts as a call."""
    found = mentions.find(fn.code, {name.name})
    if not found:
        return False
    if any(m.in_string for m in found) or statements(fn) is None:
        return True
    called_names = called(fn)
    return (name.name,) in called_names or (name.schema, name.name) in called_names


def names(fn: Function, name: str) -> bool:
    """Whether FN's body names NAME (a table, an index, a constraint) as an identifier or in dynamic SQL."""
    return bool(mentions.find(fn.code, {name}))
