"""Derive the canonical RLS helper (and a reverse-mapped legacy helper) from the legacy helper's own body.

The canonical helper reads the canonical claim exactly the way the legacy helper reads the legacy
one (the parse tree of the legacy body with the claim literal and the final cast swapped) and
bridges tokens minted before the switch through the private mapping.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pglast import ast, enums, parse_plpgsql, parse_sql

from pgconverge.catalog.model import Function
from pgconverge.config import QualifiedName
from pgconverge.planning.rls_ast import (
    ParseError, children, column_ref, const_text, deparse, dup, parse_type, range_var, replace_child,
    same_type, strings, walk,
)
from pgconverge.planning.rls_claims import (
    JWT, UID, as_expression, classify, definition_options, mentions_claim, pinned_path, safe_cast, swap_claim,
)

MECHANISMS = ("claims_json", "claim_setting", "auth_jwt", "uid_lookup", "unknown")
_M = "m"  # alias of the mapping table in the bridge sub-queries
_TEXT = {"text", "varchar", "bpchar"}
_PLATFORM = {"auth", "pg_catalog", "extensions"}  # their functions are the mechanisms recognised, never inlined
# Functions a helper may call unqualified; under a pinned empty search_path they are pg_catalog's.
_BUILTINS = {"current_setting", "nullif", "coalesce", "btrim", "trim", "lower", "upper", "jsonb_extract_path_text",
             "json_extract_path_text", "current_user", "session_user", "to_jsonb", "to_json"}


@dataclass(frozen=True)
class HelperDerivation:
    """The derived canonical helper, the bridged legacy helper, and the legacy helper's original text."""

    canonical_sql: str  # CREATE OR REPLACE FUNCTION <canonical>() ... (bridged through the mapping)
    legacy_bridge_sql: str  # CREATE OR REPLACE FUNCTION <legacy>() ... (reverse-mapped)
    legacy_original_sql: str  # pg_get_functiondef of the legacy helper, verbatim, for rollback
    mechanism: str  # one of MECHANISMS
    uncertain: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    canonical_direct_sql: str = ""  # the canonical helper without the bridge, for after contract


def derive_canonical_helper(
    legacy: Function,
    *,
    canonical_helper: QualifiedName,
    legacy_claim: str,
    canonical_claim: str,
    canonical_key_type: str,
    mapping: QualifiedName,
    mapping_legacy_column: str,
    mapping_canonical_column: str,
    callees: Iterable[Function] = (),
    server_version: int = 160000,
    auth_link: tuple[QualifiedName, str, str] | None = None,
    prefer: tuple[QualifiedName, str, str] | None = None,
) -> HelperDerivation:
    """Build the canonical helper from LEGACY's definition; report what cannot be derived with certainty.

    callees are the functions the legacy helper calls, directly or through each other (such as
    auth_claim(text)): they name the mechanism, and when the helper cannot be derived as written (a
    wrapper hiding the claim or the cast) their sql or plpgsql bodies are inlined. server_version picks
    how a non-castable claim becomes NULL (pg_input_is_valid from 16 on, a pattern before). AUTH_LINK (the canonical
    table, its key, and its column that holds the row's auth user, one row per user; the key itself where the key is
    the auth user's id) lets a helper that looks the caller up by auth.uid() find callers who have no legacy row (see
    _Derivation._lookup). PREFER (the legacy table, its key, and align.legacy_live over its rows aliased c) has the
    bridge give a merged person's new token the live one of their legacy ids, as the sync functions pick it.
    """
    args = (legacy, canonical_helper, legacy_claim, canonical_claim, canonical_key_type, mapping,
            mapping_legacy_column, mapping_canonical_column, list(callees), server_version, auth_link, prefer)
    first = _Derivation(*args).run()
    if not first.uncertain and first.canonical_sql:
        return first
    # A wrapper (select private.current_customer(), select claim_id('customer_id') returning the key) hides
    # the claim or the cast in the function it calls: derive again with those calls replaced by their bodies.
    inlined = _Derivation(*args, inline=True).run()
    return inlined if not inlined.uncertain and inlined.canonical_sql else first


def resolved_body(legacy: Function, callees: Iterable[Function] = ()) -> ast.SelectStmt | None:
    """The legacy helper's body as one SELECT, names qualified and wrapped functions inlined; None if it has none."""
    d = _Derivation(legacy, QualifiedName("", ""), "", "", "text", QualifiedName("", ""), "", "", list(callees),
                    160000, None, None, inline=True)
    return d.body() if not legacy.identity_args else None


# CURRENT_USER, CURRENT_ROLE and USER name the owner inside a SECURITY DEFINER function (SESSION_USER does not).
_CALLER_ROLE = {"SVFOP_CURRENT_USER", "SVFOP_CURRENT_ROLE", "SVFOP_USER"}


class _Derivation:
    def __init__(self, legacy, canonical, legacy_claim, canonical_claim, key_type, mapping, lcol, ccol, callees,
                 server_version, auth_link, prefer, inline=False):
        self.legacy, self.canonical, self.auth_link, self.prefer = legacy, canonical, auth_link, prefer
        self.legacy_claim, self.canonical_claim = legacy_claim, canonical_claim
        self.key_type_text, self.mapping, self.lcol, self.ccol = key_type, mapping, lcol, ccol
        self.callees, self.server_version, self.inline = callees, server_version, inline
        self.uncertain: list[str] = []
        self.notes: list[str] = []

    def result(self, mechanism: str, canonical: str = "", bridge: str = "", direct: str = "") -> HelperDerivation:
        return HelperDerivation(canonical, bridge or self.legacy.definition, self.legacy.definition, mechanism,
                                tuple(dict.fromkeys(self.uncertain)), tuple(dict.fromkeys(self.notes)), direct)

    def run(self) -> HelperDerivation:
        if self.legacy.identity_args:
            self.uncertain.append(f"{self.legacy.signature} takes arguments; only argument-less helpers are derived")
            return self.result("unknown")
        try:
            self.legacy_type = parse_type(self.legacy.returns)
            self.key_type = parse_type(self.key_type_text)
        except ParseError as exc:
            self.uncertain.append(f"cannot parse a type: {exc}")
            return self.result("unknown")
        self.header = definition_options(self.legacy.definition)
        body = self.body()
        if body is None:
            return self.result("unknown")
        self._check_caller_role(body)
        probe = dup(body)
        if swap_claim(probe, self.legacy_claim, self.canonical_claim) == 0:
            return self._lookup(body)
        mechanism, why = classify(body, self.legacy_claim, self.callees)
        if why:
            self.notes.append(why)
        legacy_read = self._read(body, None)
        canonical_read = self._read(body, self.canonical_claim)
        if legacy_read is None or canonical_read is None:
            return self.result(mechanism)
        from_mapping = self._mapping_lookup(self.ccol, self.lcol, legacy_read, several=False)
        canonical = _select(ast.CoalesceExpr(args=(canonical_read, from_mapping)))
        back = self._mapping_lookup(self.lcol, self.ccol, dup(canonical_read), several=True)
        bridge = _select(ast.CoalesceExpr(args=(dup(legacy_read), back)))
        self.notes.append(f"tokens without '{self.canonical_claim}' are bridged through {self.mapping}; after "
                          "contract, replace the canonical helper with canonical_direct_sql")
        return self.result(mechanism, self._function(self.canonical, self.key_type, canonical),
                           self._function(self.legacy.name, self.legacy_type, bridge,
                                          language="plpgsql" if self.legacy.language == "plpgsql" else "sql"),
                           self._function(self.canonical, self.key_type, _select(dup(canonical_read)),
                                          definer=False))

    def _check_caller_role(self, body: ast.SelectStmt) -> None:
        """The derived helpers run as SECURITY DEFINER (to read the private mapping): inside them, and inside any
        function they call, CURRENT_USER is their owner. A helper that tests the caller's role with it (`case when
        current_user = 'anon' then null …`) would stop telling callers apart, and a guard against the anonymous
        role would let it see another's rows. Such a helper is left to a person."""
        found = [(self.legacy, body)]
        found += [(fn, self._select_of(fn, quiet=True)) for fn in self.callees]
        for fn, tree in found:
            if tree is None:
                continue
            uses = sorted({n.op.name.removeprefix("SVFOP_").lower() for n in walk(tree)
                           if isinstance(n, ast.SQLValueFunction) and n.op.name in _CALLER_ROLE})
            if uses:
                self.uncertain.append(
                    f"{fn.signature} reads {', '.join(uses)}, which means the function's owner inside the SECURITY "
                    "DEFINER helpers the switch installs (they read the private mapping): it would no longer tell "
                    "callers apart; test the token's role claim instead (auth.role(), or auth.jwt() ->> 'role')")

    # -- the legacy body ---------------------------------------------------------------------

    def body(self) -> ast.SelectStmt | None:
        """The legacy body as one SELECT: names qualified, wrapped functions inlined (when asked), a bare
        scalar sub-query (plpgsql's RETURN (SELECT …)) unwrapped."""
        body = self._select_of(self.legacy)
        if body is None:
            return None
        self._check_qualified(body, self.legacy)
        if self.inline:
            self._inline_calls(body, 0)
        return _unwrap(body)

    def _select_of(self, fn: Function, *, quiet: bool = False) -> ast.SelectStmt | None:
        lang = fn.language
        try:
            if lang == "sql":
                stmts = self._sql_statements(fn)
            elif lang == "plpgsql":
                stmts = self._plpgsql_return(fn, quiet)
            else:
                if not quiet:
                    self.uncertain.append(f"{fn.signature} is written in {lang}; only sql and plpgsql helpers are "
                                          "derived")
                return None
        except ParseError as exc:
            if not quiet:
                self.uncertain.append(f"cannot parse the body of {fn.signature}: {exc}")
            return None
        if stmts is None:
            return None
        if len(stmts) != 1 or not isinstance(stmts[0], ast.SelectStmt):
            if not quiet:
                self.uncertain.append(f"the body of {fn.signature} is not a single SELECT")
            return None
        return stmts[0]

    @staticmethod
    def _sql_statements(fn: Function) -> list[ast.Node]:
        if fn.source.strip():
            return [raw.stmt for raw in parse_sql(fn.source)]
        # BEGIN ATOMIC body (PG 14+): prosrc is empty, the statements are in the definition.
        create = parse_sql(fn.definition)[0].stmt
        body = create.sql_body or ()
        flat = []
        for item in body:
            flat.extend(item if isinstance(item, tuple) else (item,))
        return [s for s in flat if s is not None]

    def _plpgsql_return(self, fn: Function, quiet: bool) -> list[ast.Node] | None:
        tree = parse_plpgsql(fn.definition)[0]["PLpgSQL_function"]
        block = tree["action"]["PLpgSQL_stmt_block"]
        stmts = block.get("body", [])
        params = len(_params(fn) or ())  # the arguments come first among the datums
        extra = [d for d in tree.get("datums", [])[params:] if next(iter(d.values())).get("refname") != "found"]
        if len(stmts) != 1 or "PLpgSQL_stmt_return" not in stmts[0] or extra or block.get("exceptions"):
            if not quiet:
                self.uncertain.append(f"the plpgsql body of {fn.signature} is not a single RETURN <expression>")
            return None
        query = stmts[0]["PLpgSQL_stmt_return"]["expr"]["PLpgSQL_expr"]["query"]
        # plpgsql evaluates RETURN's expression as "SELECT <expr>" itself.
        return [raw.stmt for raw in parse_sql(f"SELECT {query}\n")]

    def _check_qualified(self, body: ast.SelectStmt, fn: Function) -> None:
        """Qualify every name so it resolves as before under the derived helpers' empty search_path."""
        path = pinned_path(fn.config)
        home = path[0] if path and len(path) == 1 else None
        who = "the legacy helper" if fn is self.legacy else f"{fn.signature} (called by the legacy helper)"
        for node in walk(body):
            if isinstance(node, ast.FuncCall) and len(node.funcname) == 1:
                name = strings(node.funcname)[0]
                if name in _BUILTINS:
                    node.funcname = (ast.String("pg_catalog"), ast.String(name))
                elif home:
                    node.funcname = (ast.String(home), ast.String(name))
                    self.notes.append(f"{name}() qualified as {home}.{name}() ({who}'s search_path)")
                elif path != []:
                    self.uncertain.append(f"{who} calls {name}() unqualified (resolved through the "
                                          "search_path); the derived helpers pin search_path = '': qualify it first")
            elif isinstance(node, ast.RangeVar) and not node.schemaname:
                if home:
                    node.schemaname = home
                    self.notes.append(f"table {node.relname} qualified as {home}.{node.relname} ({who}'s "
                                      "search_path)")
                elif path != []:
                    self.uncertain.append(f"{who} reads table {node.relname} unqualified; the derived "
                                          "helpers pin search_path = '': qualify it first")

    # -- functions the legacy helper calls, replaced by their bodies ---------------------------

    def _inline_calls(self, node: ast.Node, depth: int) -> None:
        for attr, index, child in list(children(node)):
            self._inline_calls(child, depth)  # the arguments first
            if isinstance(child, ast.FuncCall):
                new = self._inlined(child, depth)
                if new is not None:
                    replace_child(node, attr, index, new)

    def _inlined(self, call: ast.FuncCall, depth: int) -> ast.Node | None:
        """CALL's function body as an expression, its parameters replaced by the arguments (cast to the
        parameters' types); None when that is not certain to mean the same."""
        name = strings(call.funcname)
        if (depth >= 4 or len(name) != 2 or name[0] in _PLATFORM or call.agg_star or call.agg_distinct or call.over
                or call.agg_filter or call.agg_order or call.func_variadic):
            return None
        args = tuple(call.args or ())
        found = [(f, p) for f in self.callees if (f.name.schema, f.name.name) == name
                 for p in [_params(f)] if p is not None and len(p) == len(args)]
        if len(found) != 1 or any(isinstance(a, ast.NamedArgExpr) for a in args):
            return None
        fn, params = found[0]
        body = self._select_of(fn, quiet=True)
        if body is None:
            return None
        self._check_qualified(body, fn)
        if not _substitute(body, fn, params, args):
            return None
        self._inline_calls(body, depth + 1)
        self.notes.append(f"{fn.signature} is called with its body inlined")
        return as_expression(_unwrap(body))

    # -- building blocks ---------------------------------------------------------------------

    def _read(self, body: ast.SelectStmt, claim: str | None) -> ast.Node | None:
        """The legacy body as an expression: for CLAIM instead of the legacy claim, cast to the key type safely."""
        sel = dup(body)
        if claim is not None:
            swap_claim(sel, self.legacy_claim, claim)
        target, target_text = (self.key_type, self.key_type_text) if claim else (self.legacy_type,
                                                                                  self.legacy.returns)
        found = self._replace_casts(sel, target, target_text)
        if not found and strings(self.legacy_type.names)[-1] in _TEXT and not self.legacy_type.arrayBounds:
            # A text key needs no cast: the value read is the claim itself.
            new, note = safe_cast(as_expression(sel), target, target_text, self.server_version)
            if note:
                self.notes.append(note)
            return new
        if not found:
            self.uncertain.append(f"no cast to {self.legacy.returns} around the read of '{self.legacy_claim}': "
                                  "cannot tell where the claim value becomes the key")
            return None
        return as_expression(sel)

    def _replace_casts(self, node: ast.Node, target: ast.TypeName, target_text: str) -> int:
        count = 0
        for attr, index, child in list(children(node)):
            if (isinstance(child, ast.TypeCast) and same_type(child.typeName, self.legacy_type)
                    and mentions_claim(child.arg, self.legacy_claim, self.canonical_claim)):
                self._replace_casts(child.arg, target, target_text)
                new, note = safe_cast(child.arg, target, target_text, self.server_version)
                if note:
                    self.notes.append(note)
                replace_child(node, attr, index, new)
                count += 1
            else:
                count += self._replace_casts(child, target, target_text)
        return count

    def _mapping_lookup(self, want: str, given: str, value: ast.Node, *, several: bool) -> ast.SubLink:
        """(SELECT m.<want> FROM <mapping> m WHERE m.<given> = <value>), the first by <want>'s order when several
        rows may match (ORDER BY … LIMIT 1, not min(): there is no min() for uuid). A legacy key of a type with an
        = of its own (citext's, which ignores case) is compared with that one, named with its schema: under the
        helper's empty search_path a bare = would be text's, reached through citext's cast to text."""
        op: tuple[str, ...] = ("=",)
        schema = strings(self.legacy_type.names)[:-1]
        if given == self.lcol and schema and schema[0] != "pg_catalog":
            op = (schema[0], "=")
        where = ast.A_Expr(kind=enums.A_Expr_Kind.AEXPR_OP, name=tuple(ast.String(p) for p in op),
                           lexpr=column_ref(_M, given), rexpr=value)
        sub = ast.SelectStmt(targetList=(ast.ResTarget(val=column_ref(_M, want)),),
                             fromClause=(range_var(self.mapping, _M),), whereClause=where,
                             limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT, op=enums.SetOperation.SETOP_NONE)
        if several:  # several legacy rows may have become one canonical row
            order = [column_ref(_M, want)]
            if self.prefer is not None:  # a live legacy row first, as the sync functions pick one
                table, key, live = self.prefer
                sub.fromClause = (ast.JoinExpr(
                    jointype=enums.JoinType.JOIN_INNER, larg=range_var(self.mapping, _M), rarg=range_var(table, "c"),
                    quals=ast.A_Expr(kind=enums.A_Expr_Kind.AEXPR_OP, name=(ast.String("="),),
                                     lexpr=column_ref("c", key), rexpr=column_ref(_M, want))),)
                order.insert(0, ast.CoalesceExpr(args=(parse_sql(f"select ({live})")[0].stmt.targetList[0].val,
                                                       ast.A_Const(isnull=False, val=ast.Boolean(False)))))
            sub.sortClause = tuple(ast.SortBy(node=o, sortby_dir=enums.SortByDir.SORTBY_DESC if i < len(order) - 1
                                              else enums.SortByDir.SORTBY_DEFAULT,
                                              sortby_nulls=enums.SortByNulls.SORTBY_NULLS_DEFAULT)
                                   for i, o in enumerate(order))
            sub.limitCount = ast.A_Const(isnull=False, val=ast.Integer(1))
            sub.limitOption = enums.LimitOption.LIMIT_OPTION_COUNT
        return ast.SubLink(subLinkType=enums.SubLinkType.EXPR_SUBLINK, subselect=sub)

    def _function(self, name: QualifiedName, returns: ast.TypeName, body: ast.SelectStmt, *,
                  definer: bool = True, language: str = "sql") -> str:
        """CREATE OR REPLACE FUNCTION name() RETURNS … LANGUAGE sql STABLE [SECURITY DEFINER] SET search_path = ''.

        LANGUAGE plpgsql (BODY, one row, as RETURN's scalar sub-query) for a function that replaces a PL/pgSQL one
        while the application calls it: a statement that looked the function up before the replacement commits
        keeps the old language's handler, which then compiles the new source (seen: the PL/pgSQL handler failing
        on a SQL body, under load). In the old language, that statement runs the new body.
        """
        text = deparse(body)
        if language == "plpgsql":
            text = f"begin\n    return ({text});\n  end"
        options = [ast.DefElem(defname="language", arg=ast.String(language)),
                   ast.DefElem(defname="volatility", arg=ast.String("stable"))]
        if definer:  # to read the private mapping, which the API roles cannot
            options.append(ast.DefElem(defname="security", arg=ast.Boolean(True)))
        options += [dup(o) for o in self.header if o.defname == "parallel"]
        options.append(ast.DefElem(defname="set", arg=ast.VariableSetStmt(
            kind=enums.VariableSetKind.VAR_SET_VALUE, name="search_path", args=(const_text(""),))))
        options.append(ast.DefElem(defname="as", arg=(ast.String(f"\n  {text}\n"),)))
        stmt = ast.CreateFunctionStmt(is_procedure=False, replace=True,
                                      funcname=(ast.String(name.schema), ast.String(name.name)),
                                      returnType=dup(returns), options=tuple(options))
        return deparse(stmt)

    # -- helpers that look the identity up instead of reading a claim -------------------------

    def _lookup(self, body: ast.SelectStmt) -> HelperDerivation:
        calls = {strings(n.funcname) for n in walk(body) if isinstance(n, ast.FuncCall)}
        consts = {n.val.sval for n in walk(body) if isinstance(n, ast.A_Const) and isinstance(n.val, ast.String)}
        if not body.fromClause:
            self.uncertain.append(f"{self.legacy.signature} mentions no '{self.legacy_claim}' claim and looks "
                                  "nothing up: the claim mechanism is not recognised")
            return self.result("unknown")
        if UID in calls or (JWT in calls and "sub" in consts):
            mechanism = "uid_lookup"
        else:
            mechanism = "unknown"
            self.uncertain.append(f"{self.legacy.signature} looks the caller up without auth.uid() or a "
                                  f"'{self.legacy_claim}' claim; the derived helper maps whatever it returns")
        sel = dup(body)
        if sel.limitCount is None:  # a SQL function returns its first row; a scalar sub-query must not see two
            sel.limitCount = ast.A_Const(isnull=False, val=ast.Integer(1))
            sel.limitOption = enums.LimitOption.LIMIT_OPTION_COUNT
        legacy_id = ast.SubLink(subLinkType=enums.SubLinkType.EXPR_SUBLINK, subselect=sel)
        mapped = self._mapping_lookup(self.ccol, self.lcol, legacy_id, several=False)
        self.notes.append("the legacy helper identifies the caller by a lookup, not a claim: the canonical helper "
                          f"maps the same caller's legacy row through {self.mapping}; the legacy helper needs no "
                          "bridge (legacy_bridge_sql is its original text)")
        subject = _subject(body) if self.auth_link else None
        if subject is not None and self.auth_link[1] == self.auth_link[2] and not is_auth_user(subject):
            subject = None  # where the key is the auth user's id, only the auth user's id finds the caller
        if subject is None:
            self.notes.append("no canonical_direct_sql: how the canonical table links to auth users is not in the "
                              "legacy helper; write it before contract archives the legacy table")
            return self.result(mechanism, self._function(self.canonical, self.key_type, _select(mapped)))
        # A caller with no legacy row (who signed up after the switch) is found through the canonical table's own
        # link to the auth user, which is how the helper finds everyone once the legacy table is archived; one with
        # a legacy row keeps the canonical row the mapping gives it, as the switch's RLS check compares.
        table, key, link = self.auth_link
        if link == key:
            # The canonical key is the auth user's id (the canonical table is auth.users, or its key references it):
            # the caller's id is the token's auth user, as in every policy that compares with auth.uid(). No table
            # read, so nothing for the helper's owner to be granted (auth.users is the auth service's).
            uid = ast.TypeCast(arg=subject, typeName=dup(self.key_type))
            self.notes.append(f"callers with no legacy row are their auth user ({table}.{key} is the auth user's "
                              "id); after contract the canonical helper is canonical_direct_sql, that id alone")
            return self.result(mechanism, self._function(self.canonical, self.key_type,
                                                         _select(ast.CoalesceExpr(args=(mapped, uid)))),
                               # as its owner, like the legacy lookup and the bridged one
                               direct=self._function(self.canonical, self.key_type, _select(dup(uid))))
        own = ast.SelectStmt(
            targetList=(ast.ResTarget(val=column_ref("c", key)),), fromClause=(range_var(table, "c"),),
            whereClause=ast.A_Expr(kind=enums.A_Expr_Kind.AEXPR_OP, name=(ast.String("="),),
                                   lexpr=column_ref("c", link), rexpr=subject),
            limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT, op=enums.SetOperation.SETOP_NONE)
        by_link = ast.SubLink(subLinkType=enums.SubLinkType.EXPR_SUBLINK, subselect=own)
        self.notes.append(f"callers with no legacy row are found by {table}.{link} (their auth user); after contract "
                          "the canonical helper is canonical_direct_sql, that lookup alone")
        return self.result(mechanism, self._function(self.canonical, self.key_type,
                                                     _select(ast.CoalesceExpr(args=(mapped, by_link)))),
                           # as its owner, like the bridged one: the canonical table's own policies may call it
                           direct=self._function(self.canonical, self.key_type, dup(own)))


def _params(fn: Function) -> list[tuple[str | None, ast.TypeName]] | None:
    """FN's parameters (name or None, type); None if one is not a plain IN parameter or cannot be read."""
    if not fn.identity_args:
        return []
    try:
        stmt = parse_sql(fn.definition)[0].stmt
    except (ParseError, IndexError):
        return None
    out = []
    for p in getattr(stmt, "parameters", None) or ():
        if p.mode not in (enums.FunctionParameterMode.FUNC_PARAM_IN, enums.FunctionParameterMode.FUNC_PARAM_DEFAULT):
            return None
        out.append((p.name, p.argType))
    return out


def _substitute(body: ast.SelectStmt, fn: Function, params, args: tuple[ast.Node, ...]) -> bool:
    """Replace FN's parameters in BODY by ARGS cast to their types; False when a name may mean a column."""
    values = [ast.TypeCast(arg=a, typeName=dup(t)) for a, (_, t) in zip(args, params)]
    by_name = {n: i for i, (n, _) in enumerate(params) if n}
    reads_tables = any(isinstance(n, ast.RangeVar) for n in walk(body))
    ok = True

    def visit(node: ast.Node) -> None:
        nonlocal ok
        for attr, index, child in list(children(node)):
            value = None
            if isinstance(child, ast.ParamRef) and 0 < child.number <= len(values):
                value = values[child.number - 1]
            elif isinstance(child, ast.ColumnRef):
                parts = strings(child.fields)
                if len(parts) == 2 and parts[0] == fn.name.name and parts[1] in by_name:
                    value = values[by_name[parts[1]]]
                elif len(parts) == 1 and parts[0] in by_name:
                    ok = ok and not reads_tables  # a column of that name would win over the parameter
                    value = values[by_name[parts[0]]]
            if value is not None:
                replace_child(node, attr, index, dup(value))
            else:
                visit(child)

    visit(body)
    return ok


def _unwrap(sel: ast.SelectStmt) -> ast.SelectStmt:
    """SELECT (SELECT …) alone is the inner SELECT."""
    while (len(sel.targetList or ()) == 1 and isinstance(sel.targetList[0].val, ast.SubLink)
           and sel.targetList[0].val.subLinkType == enums.SubLinkType.EXPR_SUBLINK
           and isinstance(sel.targetList[0].val.subselect, ast.SelectStmt)
           and all(getattr(sel, a, None) in (None, (), False) for a in (
               "fromClause", "whereClause", "groupClause", "havingClause", "sortClause", "distinctClause",
               "withClause", "limitCount", "limitOffset", "windowClause", "valuesLists"))):
        sel = sel.targetList[0].val.subselect
    return sel


def _token_comparison(body: ast.Node) -> tuple[ast.ColumnRef, ast.Node] | None:
    """(the column, the expression) of the first `column = expression` of BODY whose expression reads the token
    (`auth.uid()`, `(auth.jwt() ->> 'sub')::uuid`): where a lookup helper finds the caller; None if there is none."""
    for node in walk(body):
        if not (isinstance(node, ast.A_Expr) and strings(node.name) == ("=",)):
            continue
        for col, other in ((node.lexpr, node.rexpr), (node.rexpr, node.lexpr)):
            if isinstance(col, ast.ColumnRef) and not isinstance(other, ast.ColumnRef) and any(
                    isinstance(n, ast.FuncCall) and strings(n.funcname) in (UID, JWT) for n in walk(other)):
                return col, other
    return None


def _subject(body: ast.SelectStmt) -> ast.Node | None:
    """What a lookup helper compares a column with to find the caller (a copy), or None."""
    found = _token_comparison(body)
    return dup(found[1]) if found else None


def lookup_link(legacy: Function, callees: Iterable[Function] = ()) -> tuple[QualifiedName | None, str] | None:
    """Where a lookup helper finds the caller: (the table the column is read from, when BODY names it; the column)
    of the first `column = expression` whose expression reads the token (auth.uid(), auth.jwt() ->> 'sub'); None
    for a helper that reads a claim, or one whose body cannot be read."""
    body = resolved_body(legacy, callees)
    if body is None:
        return None
    tables = {}
    for node in walk(body):
        if isinstance(node, ast.RangeVar):
            name = QualifiedName(node.schemaname or "public", node.relname)
            tables[node.alias.aliasname if node.alias else node.relname] = name
    found = _token_comparison(body)
    if found is None:
        return None
    parts = strings(found[0].fields)
    table = tables.get(parts[-2]) if len(parts) > 1 else (next(iter(tables.values())) if len(tables) == 1 else None)
    return table, parts[-1]


def is_auth_user(node: ast.Node) -> bool:
    """Whether NODE is the caller's auth user id: `auth.uid()` or `auth.jwt() ->> 'sub'`, cast, in nullif(…, '') or in
    a scalar sub-query (`(select auth.uid())`). Not, say, `auth.jwt() ->> 'email'`, which a lookup may compare too."""
    while True:
        if isinstance(node, ast.TypeCast):
            node = node.arg
        elif (isinstance(node, ast.SubLink) and node.subLinkType == enums.SubLinkType.EXPR_SUBLINK
              and isinstance(node.subselect, ast.SelectStmt) and len(node.subselect.targetList or ()) == 1
              and not node.subselect.fromClause and node.subselect.whereClause is None):
            node = node.subselect.targetList[0].val
        elif (isinstance(node, ast.A_Expr) and node.kind == enums.A_Expr_Kind.AEXPR_NULLIF
              and isinstance(node.rexpr, ast.A_Const) and isinstance(node.rexpr.val, ast.String)
              and node.rexpr.val.sval == ""):
            node = node.lexpr
        else:
            break
    if isinstance(node, ast.FuncCall):
        return strings(node.funcname) == UID and not node.args
    return (isinstance(node, ast.A_Expr) and strings(node.name) == ("->>",) and isinstance(node.lexpr, ast.FuncCall)
            and strings(node.lexpr.funcname) == JWT and isinstance(node.rexpr, ast.A_Const)
            and isinstance(node.rexpr.val, ast.String) and node.rexpr.val.sval == "sub")


def _select(value: ast.Node) -> ast.SelectStmt:
    return ast.SelectStmt(targetList=(ast.ResTarget(val=value),), limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT,
                          op=enums.SetOperation.SETOP_NONE)
