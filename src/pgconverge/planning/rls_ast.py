"""pglast helpers shared by the RLS rewriter and the helper derivation: parse, walk, build, print."""

from __future__ import annotations

import copy
from collections.abc import Iterator

from pglast import ast, enums, parse_sql
from pglast.parser import ParseError
from pglast.stream import RawStream

from pgconverge.config import QualifiedName

__all__ = [
    "ParseError", "children", "column_ref", "const_text", "deparse", "dup", "func_call",
    "parse_expression", "parse_type", "range_var", "replace_child", "same_type", "select_of",
    "strings", "walk",
]  # fmt: skip


def parse_expression(text: str) -> ast.Node:
    """Parse one SQL expression (such as pg_get_expr output) into its raw parse tree."""
    # The newline keeps a trailing "--" comment from swallowing the closing parenthesis.
    stmts = parse_sql(f"SELECT ({text}\n)")
    sel = stmts[0].stmt if len(stmts) == 1 else None
    if (not isinstance(sel, ast.SelectStmt) or len(sel.targetList or ()) != 1 or sel.fromClause
            or sel.whereClause or sel.op != enums.SetOperation.SETOP_NONE or sel.targetList[0].name):
        raise ParseError(f"not a single expression: {text!r}", 0)
    return sel.targetList[0].val


def parse_type(text: str) -> ast.TypeName:
    """Parse a type name as format_type() prints it ("bigint", "character varying(20)")."""
    stmts = parse_sql(f"SELECT NULL::{text}\n")
    sel = stmts[0].stmt if len(stmts) == 1 else None
    val = sel.targetList[0].val if isinstance(sel, ast.SelectStmt) and len(sel.targetList or ()) == 1 else None
    if (not isinstance(val, ast.TypeCast) or not isinstance(val.arg, ast.A_Const) or not val.arg.isnull
            or sel.fromClause or sel.whereClause):
        raise ParseError(f"not a type name: {text!r}", 0)
    return val.typeName


def same_type(a: ast.TypeName, b: ast.TypeName) -> bool:
    """Tell whether two type names denote the same type, ignoring typmods (int8 = bigint = pg_catalog.int8)."""
    def key(t: ast.TypeName) -> tuple:
        parts = strings(t.names)
        if len(parts) == 2 and parts[0] == "pg_catalog":
            parts = parts[1:]
        return parts, bool(t.arrayBounds), bool(t.setof)
    return key(a) == key(b)


def strings(nodes) -> tuple[str, ...]:
    """The texts of a tuple of String nodes (name lists)."""
    return tuple(n.sval for n in nodes or () if isinstance(n, ast.String))


def deparse(node: ast.Node) -> str:
    """Print a parse tree node back to SQL."""
    return RawStream()(node)


def dup(node: ast.Node) -> ast.Node:
    """A deep copy of NODE, safe to graft elsewhere in a tree."""
    return copy.deepcopy(node)


def children(node: ast.Node) -> Iterator[tuple[str, int | None, ast.Node]]:
    """Yield (attribute, index or None, child) for every direct child node of NODE."""
    for attr in node.__slots__:
        value = getattr(node, attr, None)
        if isinstance(value, ast.Node):
            yield attr, None, value
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                if isinstance(item, ast.Node):
                    yield attr, i, item
                elif isinstance(item, tuple):  # e.g. sql_body, valuesLists: lists of lists
                    for sub in item:
                        if isinstance(sub, ast.Node):
                            yield attr, i, sub


def walk(node: ast.Node) -> Iterator[ast.Node]:
    """Yield NODE and every node below it, depth first."""
    yield node
    for _, _, child in children(node):
        yield from walk(child)


def replace_child(parent: ast.Node, attr: str, index: int | None, new: ast.Node) -> None:
    """Put NEW where PARENT.ATTR (or its INDEX-th item) was."""
    if index is None:
        setattr(parent, attr, new)
    else:
        items = list(getattr(parent, attr))
        items[index] = new
        setattr(parent, attr, tuple(items))


def select_of(node: ast.Node) -> ast.SelectStmt | None:
    return node if isinstance(node, ast.SelectStmt) else None


# --- construction ---------------------------------------------------------------------------


def _names(*parts: str) -> tuple[ast.String, ...]:
    return tuple(ast.String(p) for p in parts)


def const_text(value: str) -> ast.A_Const:
    return ast.A_Const(isnull=False, val=ast.String(value))


def column_ref(*parts: str) -> ast.ColumnRef:
    return ast.ColumnRef(fields=_names(*parts))


def func_call(name: QualifiedName | tuple[str, ...], *args: ast.Node) -> ast.FuncCall:
    parts = (name.schema, name.name) if isinstance(name, QualifiedName) else name
    return ast.FuncCall(funcname=_names(*parts), args=args or None,
                        funcformat=enums.CoercionForm.COERCE_EXPLICIT_CALL)


def range_var(name: QualifiedName, alias: str | None = None) -> ast.RangeVar:
    return ast.RangeVar(schemaname=name.schema, relname=name.name, inh=True, relpersistence="p",
                        alias=ast.Alias(aliasname=alias) if alias else None)
