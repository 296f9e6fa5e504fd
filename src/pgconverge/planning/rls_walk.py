"""Walk one policy expression: swap the legacy helper and legacy columns, note what is unsure."""

from __future__ import annotations

import re

from dataclasses import dataclass, field

from pglast import ast, enums

from pgconverge.config import QualifiedName
from pgconverge.planning.rls_ast import children, deparse, parse_type, replace_child, same_type, strings
from pgconverge.planning.rls_scope import Item, Scopes

_EQUALITY = {"=", "<>", "!="}
_TEXT_LIKE = {"varchar", "bpchar", "text"}  # parse tree names of character varying, character, text
_K = enums.A_Expr_Kind
_S = enums.SubLinkType

# Why a policy calling a function whose body uses the legacy column is left to a person, and the same text read
# back (plan lists such functions once, with the policies held back by them alone).
_SUSPICIOUS_CALL = "calls {}, whose body uses the legacy column; rewrite that function first"
SUSPICIOUS_CALL = re.compile(re.escape(_SUSPICIOUS_CALL).replace(r"\{\}", "(.+?)"))


def suspicious_call(signature: str) -> str:
    return _SUSPICIOUS_CALL.format(signature)


@dataclass
class Context:
    """What one policy's rewrite needs to know, shared by its USING and WITH CHECK walks."""

    table: QualifiedName
    legacy_helper: QualifiedName
    canonical_helper: QualifiedName
    columns: dict[tuple[QualifiedName, str], str]
    legacy_table: QualifiedName | None
    legacy_claim: str | None
    suspicious: dict[str, tuple[str, ...]]  # signature -> name parts it can be called by
    known_tables: set[QualifiedName]  # for unqualified table names
    table_columns: dict[QualifiedName, frozenset[str]]  # full column lists, where known
    column_refs: set[tuple[QualifiedName, str]]  # what pg_depend says the policy reads
    # Legacy columns of a domain type: (table, column) → the type underneath, which Postgres casts them to in a
    # comparison with a value of that type; pg_get_expr prints that cast, which the rewrite drops with the column.
    domains: dict[tuple[QualifiedName, str], str] = field(default_factory=dict)
    found_columns: set[tuple[QualifiedName, str]] = field(default_factory=set)
    found_helper: bool = False


class Walker:
    """Rewrite one expression tree in place; collect changes and reasons for doubt."""

    def __init__(self, ctx: Context, clause: str):
        self.ctx = ctx
        self.clause = clause
        self.scopes = Scopes(ctx.table, ctx.known_tables, ctx.table_columns, set(ctx.columns), ctx.column_refs)
        self.legacy_names = {c for _, c in ctx.columns}
        self.path: list[ast.Node] = []
        self.targets: dict[int, tuple[ast.Node, tuple[ast.Node, ...], str]] = {}
        self.changes: list[str] = []
        self.uncertain: list[str] = []

    def run(self, root: ast.Node) -> None:
        self.visit(root)
        for node, ancestors, what in self.targets.values():
            problem = self._use_problem(node, ancestors)
            if problem:
                self._doubt(f"{what} is {problem}")
            else:
                self._own_operator(node, ancestors)

    def _own_operator(self, node: ast.Node, ancestors: tuple[ast.Node, ...]) -> None:
        """A comparison whose two sides both changed compares canonical keys: with their type's own operator, not
        the legacy type's. pg_get_expr names an operator of another schema than pg_catalog with its schema
        (`customer_id OPERATOR(public.=) auth_customer_id()` on a citext key), which uuid does not have: the bare
        operator is what Postgres resolves for the canonical key's type."""
        parent = ancestors[-1] if ancestors else None
        if isinstance(parent, ast.A_Expr) and parent.kind == _K.AEXPR_OP:
            attr = "name"
        elif isinstance(parent, ast.SubLink) and parent.testexpr is node:
            attr = "operName"
        elif (isinstance(parent, ast.ResTarget) and len(ancestors) >= 3 and isinstance(ancestors[-3], ast.SubLink)
              and ancestors[-3].subLinkType == _S.ANY_SUBLINK):  # what the sub-query of an IN returns
            parent, attr = ancestors[-3], "operName"
        else:
            return
        name = strings(getattr(parent, attr))
        if len(name) == 2 and name[0] != "pg_catalog" and name[1] in _EQUALITY:
            setattr(parent, attr, (ast.String(name[1]),))
            self._change(f"OPERATOR({'.'.join(name)}) of the legacy key's type → {name[1]} of the canonical key's")

    def _doubt(self, reason: str) -> None:
        text = f"{self.clause}: {reason}"
        if text not in self.uncertain:
            self.uncertain.append(text)

    def _change(self, text: str) -> None:
        text = f"{self.clause}: {text}"
        if text not in self.changes:
            self.changes.append(text)

    # -- traversal ---------------------------------------------------------------------------

    def visit(self, node: ast.Node) -> None:
        if isinstance(node, ast.SelectStmt):
            self._select(node)
            return
        if isinstance(node, ast.ColumnRef):
            self._column(node)
        elif isinstance(node, ast.FuncCall):
            self._function(node)
        elif isinstance(node, ast.A_Const):
            self._constant(node)
        elif isinstance(node, ast.RangeVar):  # only outside FROM lists, which _from handles
            self._relation(node)
        self._descend(node)

    def _descend(self, node: ast.Node, skip: tuple[str, ...] = ()) -> None:
        self.path.append(node)
        for attr, _, child in children(node):
            if attr not in skip:
                self.visit(child)
        self.path.pop()

    def _select(self, sel: ast.SelectStmt) -> None:
        self.path.append(sel)
        ctes: dict[str, frozenset[str] | None] = {}
        if sel.withClause:
            for cte in sel.withClause.ctes or ():
                self.visit(cte.ctequery)
                names = strings(cte.aliascolnames) if cte.aliascolnames else _output_names(cte.ctequery)
                ctes[cte.ctename] = frozenset(names) if names is not None else None
        self.scopes.ctes.append(ctes)
        scope: list[Item] = []
        quals: list[ast.JoinExpr] = []
        for item in sel.fromClause or ():
            scope.extend(self._from(item, scope, quals))
        self.scopes.stack.append(scope)
        for join in quals:
            self.path.append(join)
            self.visit(join.quals)
            self.path.pop()
        for attr, _, child in children(sel):
            if attr not in ("fromClause", "withClause"):
                self.visit(child)
        self.scopes.stack.pop()
        self.scopes.ctes.pop()
        self.path.pop()

    def _from(self, node: ast.Node, siblings: list[Item], quals: list[ast.JoinExpr]) -> list[Item]:
        if isinstance(node, ast.RangeVar):
            self._relation(node)
            return [self.scopes.table_item(node)]
        if isinstance(node, ast.JoinExpr):
            inner = self._from(node.larg, siblings, quals)
            inner += self._from(node.rarg, siblings + inner, quals)
            if node.quals is not None:
                quals.append(node)
            joined = set(strings(node.usingClause))
            dependents = {t for t, _ in self.ctx.columns}
            if (node.isNatural and any(it.table in dependents for it in inner)) or joined & self.legacy_names:
                # The join condition names the column only implicitly: nothing here could follow it.
                self._doubt(f"joins {'NATURAL' if node.isNatural else 'USING (' + ', '.join(sorted(joined)) + ')'}"
                            " on what may be a legacy column")
            if node.alias:  # (a JOIN b) AS j hides a and b
                cols = strings(node.alias.colnames) if node.alias.colnames else None
                return [Item(node.alias.aliasname, aliased=True, columns=frozenset(cols) if cols else None)]
            return inner
        alias = getattr(node, "alias", None)
        lateral = bool(getattr(node, "lateral", False))
        if lateral:  # LATERAL sees the FROM items before it
            self.scopes.stack.append(list(siblings))
        self._descend(node, skip=("alias",))
        if lateral:
            self.scopes.stack.pop()
        cols = strings(alias.colnames) if alias and alias.colnames else None
        if cols is None and isinstance(node, ast.RangeSubselect):
            cols = _output_names(node.subquery)
        name = alias.aliasname if alias else ""
        return [Item(name, aliased=bool(alias), columns=frozenset(cols) if cols is not None else None)]

    # -- the nodes that matter ----------------------------------------------------------------

    def _relation(self, rv: ast.RangeVar) -> None:
        table, _ = self.scopes.resolve_table(rv)
        if self.ctx.legacy_table and table == self.ctx.legacy_table:
            self._doubt(f"reads the legacy table {table} itself")

    def _column(self, ref: ast.ColumnRef) -> None:
        names = strings(ref.fields)
        if len(names) != len(ref.fields or ()):  # tbl.* or a subscript
            return
        qual, col = names[:-1], names[-1]
        if col not in self.legacy_names:
            return
        shown = ".".join(names)
        res = self.scopes.resolve(qual, col)
        if res.item is None:
            if not res.candidates:
                self._doubt(f"cannot tell which table {shown} belongs to")
            elif any(it.note or (it.table, col) in self.ctx.columns for it in res.candidates):
                owners = ", ".join(it.label() for it in res.candidates)
                self._doubt(f"column {shown} could belong to any of {owners}")
            return
        item = res.item
        if item.note:
            self._doubt(f"column {shown}: {item.note}")
            return
        new = self.ctx.columns.get((item.table, col)) if item.table else None
        if new is None:
            return
        ref.fields = (*ref.fields[:-1], ast.String(new))
        ancestors = tuple(self.path)
        if self._unwrap_domain_cast(ref, item.table, col):
            ancestors = ancestors[:-1]
        self.ctx.found_columns.add((item.table, col))
        if res.depth == 0:
            via = f" (via table name {'.'.join(qual)})" if qual else ""
        elif item.aliased:
            via = f" (via sub-query alias {item.name})"
        else:
            via = f" (via sub-query table {item.name})"
        what = f"{item.table}.{col}"
        self._change(f"{what} → {new}{via}")
        self.targets[id(ref)] = (ref, ancestors, f"{what} ({shown})")

    def _unwrap_domain_cast(self, ref: ast.ColumnRef, table: QualifiedName, col: str) -> bool:
        """Drop the cast around REF that Postgres added itself: a legacy column of a domain type cast to the type
        underneath (`(customer_id)::integer = auth_customer_id()`). The old expression means the same without it,
        and the new column is of another type. True when it was dropped."""
        base = self.ctx.domains.get((table, col))
        cast = self.path[-1] if self.path else None
        if base is None or not isinstance(cast, ast.TypeCast) or cast.arg is not ref or len(self.path) < 2:
            return False
        # The cast is to the base type, or on through it to the type of the comparison's other side where the base
        # converts implicitly (a domain over varchar compared with text is cast to text).
        base_type = parse_type(base)
        if not (same_type(cast.typeName, base_type) or (
                _TEXT_LIKE & {strings(base_type.names)[-1]} and same_type(cast.typeName, parse_type("text")))):
            return False
        holder = self.path[-2]
        for attr, index, child in children(holder):
            if child is cast:
                replace_child(holder, attr, index, ref)
                self._change(f"the cast of {col} to {base}, its domain's type, dropped with it")
                return True
        return False

    def _function(self, call: ast.FuncCall) -> None:
        name = strings(call.funcname)
        legacy, canonical = self.ctx.legacy_helper, self.ctx.canonical_helper
        if name in ((legacy.schema, legacy.name), (legacy.name,)):
            unqualified = len(name) == 1 and canonical.schema == legacy.schema
            parts = (canonical.name,) if unqualified else (canonical.schema, canonical.name)
            call.funcname = tuple(ast.String(p) for p in parts)
            self.ctx.found_helper = True
            shown = ".".join(name)
            self._change(f"{shown}() → {'.'.join(parts)}()")
            self.targets[id(call)] = (call, tuple(self.path), f"the call {shown}()")
            return
        for signature, parts in self.ctx.suspicious.items():
            if name in (parts, parts[-1:]):
                self._doubt(suspicious_call(signature))

    def _constant(self, const: ast.A_Const) -> None:
        claim = self.ctx.legacy_claim
        if claim and isinstance(const.val, ast.String) and const.val.sval in (claim, f"request.jwt.claim.{claim}"):
            self._doubt(f"reads the legacy claim '{claim}' directly ({deparse(const)}), not through "
                        f"{self.ctx.legacy_helper}()")

    # -- how a rewritten value is used -------------------------------------------------------

    def _key_valued(self, node: ast.Node | None) -> bool:
        """Tell whether NODE is itself rewritten, or a scalar sub-query returning a rewritten value."""
        if node is None:
            return False
        if id(node) in self.targets:
            return True
        if isinstance(node, ast.SubLink) and node.subLinkType == _S.EXPR_SUBLINK:
            return self._key_valued(_single_value(node.subselect))
        return False

    def _use_problem(self, node: ast.Node, ancestors: tuple[ast.Node, ...]) -> str | None:
        """Return why rewriting NODE may change the policy's meaning, or None when both sides change together."""
        parent = ancestors[-1] if ancestors else None
        if isinstance(parent, ast.NullTest):
            return None
        if isinstance(parent, ast.A_Expr):
            op = strings(parent.name)[-1] if parent.name else ""
            if (parent.kind == _K.AEXPR_OP and op in _EQUALITY) or parent.kind in (_K.AEXPR_DISTINCT,
                                                                                 _K.AEXPR_NOT_DISTINCT):
                other = parent.rexpr if parent.lexpr is node else parent.lexpr
                return None if self._key_valued(other) else f"compared with {_short(deparse(other))}, which does not change"
            if parent.kind == _K.AEXPR_IN and op in _EQUALITY:
                values = (parent.lexpr, *parent.rexpr)
                if all(self._key_valued(v) for v in values):
                    return None
                return "in an IN list with values that do not change"
            kind = "" if parent.kind == _K.AEXPR_OP else f" {parent.kind.name.removeprefix('AEXPR_')}"
            return f"an operand of {op}{kind} (not a plain = comparison)"
        if isinstance(parent, ast.SubLink) and parent.testexpr is node:
            if parent.subLinkType == _S.ANY_SUBLINK and strings(parent.operName)[-1:] in ((), ("=",)):
                return None if self._key_valued(_single_value(parent.subselect)) else \
                    "compared with a sub-query whose value does not change"
            return "compared with a sub-query in a way other than = / IN"
        if (isinstance(parent, ast.ResTarget) and len(ancestors) >= 3 and isinstance(ancestors[-2], ast.SelectStmt)
                and isinstance(ancestors[-3], ast.SubLink) and ancestors[-3].subselect is ancestors[-2]):
            link = ancestors[-3]
            if link.subLinkType == _S.EXISTS_SUBLINK:
                return None  # EXISTS ignores the value
            if _single_value(ancestors[-2]) is not node:
                return "one of several values of a sub-query"
            if link.subLinkType == _S.ANY_SUBLINK and strings(link.operName)[-1:] in ((), ("=",)):
                return None if self._key_valued(link.testexpr) else "returned to an IN whose left side does not change"
            if link.subLinkType == _S.EXPR_SUBLINK:
                return self._use_problem(link, ancestors[:-3])
        return f"used inside {_describe(parent)}"


def _single_value(sel: ast.Node | None) -> ast.Node | None:
    if isinstance(sel, ast.SelectStmt) and sel.targetList and len(sel.targetList) == 1:
        return sel.targetList[0].val
    return None


def _output_names(sel: ast.Node) -> list[str] | None:
    """The column names a sub-query produces, or None when they cannot be told (SELECT *)."""
    while isinstance(sel, ast.SelectStmt) and sel.op != enums.SetOperation.SETOP_NONE:
        sel = sel.larg
    if not isinstance(sel, ast.SelectStmt) or not sel.targetList:
        return None
    names = []
    for target in sel.targetList:
        if target.name:
            names.append(target.name)
        elif isinstance(target.val, ast.ColumnRef) and isinstance(target.val.fields[-1], ast.String):
            names.append(target.val.fields[-1].sval)
        elif isinstance(target.val, ast.FuncCall):
            names.append(strings(target.val.funcname)[-1])
        elif isinstance(target.val, ast.ColumnRef):
            return None  # t.*
        else:
            names.append("?column?")
    return names


_KINDS = {"CoalesceExpr": "COALESCE()", "MinMaxExpr": "GREATEST()/LEAST()", "CaseExpr": "a CASE expression",
          "CaseWhen": "a CASE expression", "A_ArrayExpr": "an ARRAY[] constructor", "RowExpr": "a ROW() constructor",
          "BoolExpr": "AND/OR/NOT as a value", "A_Indirection": "a subscript"}


def _describe(node: ast.Node | None) -> str:
    if node is None:
        return "nothing: it is the whole expression"
    if isinstance(node, ast.FuncCall):
        return f"a call to {'.'.join(strings(node.funcname))}()"
    if isinstance(node, ast.TypeCast):
        return f"a cast to {deparse(node.typeName)}"
    if type(node).__name__ in _KINDS:
        return _KINDS[type(node).__name__]
    return _short(deparse(node))


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
