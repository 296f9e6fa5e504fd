"""String literals of application code: which ones name the legacy table, column or helper.

A string is read according to where it stands (its StringContext) and what it looks like:
the table argument of `.from()`, a PostgREST select list, a PostgREST filter, SQL, a dotted
name, or exactly a legacy name. The bare table name is the table only where the code says it
is a relation: a query builder's table argument, an identifier builder's argument, an ORM's
table declaration, a value under a table-ish key, or the continuation of SQL text it is
concatenated onto. Anything else is prose (labels, descriptions, messages) and yields nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pgconverge.audit.code_common import COLUMN, HELPER, TABLE, Hit, Names, char_to_byte_offsets
from pgconverge.audit.code_sql import refs_in_string

# Calls whose first argument is a table name: supabase-js .from(), supabase-py .table()/.from_(),
# query builders (Kysely, Knex).
TABLE_METHODS = frozenset({"from", "from_", "table", "selectFrom", "insertInto", "updateTable", "deleteFrom",
                           "into", "join", "innerJoin", "leftJoin", "rightJoin", "fullJoin", "crossJoin"})
# Identifier builders: every string argument (or element of a list argument) is a part of a qualified
# name: psycopg `sql.Identifier("public", "customers")`, slonik/drizzle `sql.identifier(["customers"])`,
# Kysely `sql.id()`, pg-format `format.ident()`, node-postgres `escapeIdentifier()`, postgres.js `sql("customers")`.
IDENTIFIER_METHODS = frozenset({"Identifier", "identifier", "ident", "id", "sql", "escapeIdentifier",
                                "quoteIdentifier", "quoteIdent", "quote_ident", "quote_identifier"})
# Table declarations of ORMs and schema builders, whose first argument (or `name:` option) is the table:
# SQLAlchemy/pypika `Table("customers", ...)`, TypeORM `@Entity("customers")`, Drizzle `pgTable("customers", ...)`.
TABLE_DECLARATIONS = frozenset({"Table", "Entity", "ViewEntity", "pgTable", "pgView", "pgMaterializedView",
                                "mysqlTable", "sqliteTable"})
# A query builder called as a function with the table (`knex("customers")`, `db("customers").where(...)`):
# the call named knex, or any plain function call whose result gets one of these query methods.
QUERY_ROOTS = frozenset({"knex"})
QUERY_CHAIN_METHODS = frozenset({"where", "andWhere", "orWhere", "whereIn", "whereNot", "whereNull",
                                 "whereNotNull", "select", "insert", "update", "upsert", "del", "delete",
                                 "truncate", "returning", "pluck", "orderBy", "groupBy", "onConflict",
                                 "increment", "decrement", "join", "leftJoin", "innerJoin", "count"})
# PostgREST calls whose string arguments are column names or column paths.
FILTER_METHODS = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "is", "in", "contains",
                            "containedBy", "overlaps", "match", "filter", "not", "order", "textSearch",
                            "rangeGt", "rangeGte", "rangeLt", "rangeLte", "rangeAdjacent", "likeAllOf",
                            "likeAnyOf", "ilikeAllOf", "ilikeAnyOf", "isDistinct", "select"})
# Object keys, keyword arguments and variables whose string value is a table name
# (realtime `table:`, `referencedTable:`, `__tablename__`, `db_table`, `CUSTOMERS_TABLE`, `tableName`).
# A subscript of something called tables is a key too (`metadata.tables["customers"]`).
_TABLE_KEY = re.compile(r"(?i)tables?(?:_?name)?$")
_SELECT_KEY = re.compile(r"(?i)(?:select|columns)$")
_FILE_EXT = frozenset({"ts", "tsx", "js", "jsx", "mjs", "cjs", "py", "json", "sql", "csv", "md", "txt", "html",
                       "css", "yml", "yaml", "toml", "png", "svg", "jpg", "pdf", "xlsx"})
_DOTTED = re.compile(r"([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?\.([A-Za-z_]\w*|\*)")
_FILTER_OPS = ("eq|neq|gt|gte|lt|lte|like|ilike|match|imatch|is|isdistinct|in|cs|cd|ov|sl|sr|nxr|nxl|adj"
               "|fts|plfts|phfts|wfts")
_OR_ITEM = re.compile(r"(?:^|(?<=[,(]))\s*(?:not\.)?((?:[A-Za-z_]\w*\.)*?[A-Za-z_]\w*)\.(?:not\.)?(?:"
                      + _FILTER_OPS + r")\.")
_REALTIME_FILTER = re.compile(r"\s*([A-Za-z_]\w*)=(?:" + _FILTER_OPS + r")\.")


@dataclass(frozen=True)
class StringContext:
    method: str | None = None  # the call the string is an argument of: from, select, eq, rpc, ...
    arg_index: int = -1
    key: str | None = None  # object key, keyword or variable the string is the value of
    in_type: bool = False  # a TypeScript literal type: Tables<'customers'>, Database['public']['Tables']['customers']
    quote: str = "'"
    skip: bool = False  # an import path or a docstring
    prev_arg: str | None = None  # the string argument (or list element) just before this one, if a string
    list_of: str | None = None  # an element of a list or array that is an argument of this call
    chained: str | None = None  # the method called on the result of the call (a plain function call)
    owner: str | None = None  # the call whose argument the object holding this key: value is
    sql_before: str | None = None  # the string literal this one is concatenated onto ('select * from ' + ...)
    bound_to: str | None = None  # the variable, parameter, field or key the string is the whole value of


@dataclass(frozen=True)
class _StrRef:
    offset: int  # character offset into the string's content
    category: str
    name: str
    suggestion: str
    reason: str = ""


def string_hits(region_start: int, content: bytes, ctx: StringContext, names: Names) -> list[Hit]:
    """Hits for one string literal whose content (escapes and substitutions neutralised, same length
    in bytes as the source) starts at byte REGION_START."""
    if ctx.skip:
        return []
    text = content.decode("utf-8", "replace")
    refs = classify(text, ctx, names)
    if not refs:
        return []
    offs = char_to_byte_offsets(text, (r.offset for r in refs))
    return [Hit(region_start + offs[r.offset], r.category, r.name, r.suggestion, r.reason) for r in refs]


def classify(text: str, ctx: StringContext, names: Names) -> list[_StrRef]:
    q = ctx.quote
    lead = len(text) - len(text.lstrip())
    word = text.strip()
    schema, _, rel = word.rpartition(".")
    names_table = rel == names.table and (not schema or schema == names.table_schema)
    table_at = lead + (len(schema) + 1 if schema else 0)

    # A literal that is exactly a legacy name and the whole value of a variable, parameter, field or key
    # is a reference wherever it stands: its uses may be anywhere (code_bindings follows them in the file).
    why = f"bound to {ctx.bound_to}" if ctx.bound_to else ""
    if ctx.method in TABLE_METHODS and ctx.arg_index == 0 and names_table:
        return [_StrRef(table_at, TABLE, names.table, f".{ctx.method}({q}{names.table_sql(bool(schema))}{q})")]
    if names.helper and rel == names.helper and schema in ("", names.helper_schema):
        suggestion = (f".rpc({q}{names.canon_helper}{q})" if ctx.method == "rpc"
                      else f"{q}{names.helper_sql(bool(schema)).removesuffix('()')}{q}")
        return [_StrRef(lead + (len(schema) + 1 if schema else 0), HELPER, names.helper, suggestion, why)]
    if word in names.columns:
        return [_StrRef(lead, COLUMN, word, names.canon_column, why)]
    if names_table:
        if ctx.in_type or (ctx.key and _TABLE_KEY.search(ctx.key.strip("_"))) or _declares_relation(ctx, names):
            return [_StrRef(table_at, TABLE, names.table, f"{q}{names.table_sql(bool(schema))}{q}", why)]
        after = _after_sql(text, ctx, names)
        if after or not why:
            return after  # else the bare word: a label, an i18n key, a route
        return [_StrRef(table_at, TABLE, names.table, f"{q}{names.table_sql(bool(schema))}{q}", why)]

    if ctx.method in ("or", "and") or (ctx.method == "not" and ctx.arg_index == 0):
        refs = _filter_refs(text, names)
        if refs:
            return refs
    if ctx.key == "filter":
        m = _REALTIME_FILTER.match(text)
        if m and m.group(1) in names.columns:
            return [_StrRef(m.start(1), COLUMN, m.group(1), names.canon_column)]

    m = _DOTTED.fullmatch(word)
    if m:
        return _dotted(m, lead, ctx, names)

    sql = refs_in_string(text, names)
    if sql is not None:
        return [_StrRef(r.offset, r.category, r.name, r.suggestion) for r in sql]
    after = _after_sql(text, ctx, names)
    if after:
        return after

    sel = parse_select(text)
    if sel is not None:
        items, has_embed, refs = sel
        if ctx.method == "select" or (ctx.key and _SELECT_KEY.search(ctx.key)) or has_embed or items >= 2:
            return _select_refs(refs, text, names)
    return []


def _declares_relation(ctx: StringContext, names: Names) -> bool:
    """The bare table name where the code makes it a relation's name (see IDENTIFIER_METHODS,
    TABLE_DECLARATIONS, QUERY_ROOTS)."""
    if ctx.method in IDENTIFIER_METHODS or ctx.list_of in IDENTIFIER_METHODS:
        # the name's qualifier, when written as the argument before it, must be the legacy table's schema
        return ctx.prev_arg is None or ctx.prev_arg.strip() == names.table_schema
    if ctx.arg_index == 0 and (ctx.method in TABLE_DECLARATIONS or ctx.method in QUERY_ROOTS
                               or ctx.chained in QUERY_CHAIN_METHODS):
        return True
    return ctx.owner in TABLE_DECLARATIONS and ctx.key in ("name", "tableName")


def _after_sql(text: str, ctx: StringContext, names: Names) -> list[_StrRef]:
    """References in TEXT read as the continuation of the SQL string it is concatenated onto:
    `"select id from " + "customers"`. Only what falls in TEXT counts; the text before is read on its own."""
    before = ctx.sql_before
    if not before or not names.candidate_text_regex.search(text):
        return []
    refs = refs_in_string(before + text, names)
    n = len(before)
    return [_StrRef(r.offset - n, r.category, r.name, r.suggestion) for r in refs or () if r.offset >= n]


_PRINTF = re.compile(r"%%|%(?:\((\w+)\))?[-#0 +]*(?:\d+|\*)?(?:\.(?:\d+|\*))?[hlL]?[sdiouxXeEfFgGcraILQ]")
_BRACES = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


def before_placeholder(fmt: str, which: int | str, style: str) -> str | None:
    """FMT's text before the placeholder that takes argument WHICH (a position, or a name), read as the SQL
    the argument continues: `"select * from %s" % "customers"`, `"... {}".format("customers")`, pg-format's
    `format('... %I', 'customers')`. STYLE is "printf" or "braces"; earlier placeholders read as `x`.
    None when FMT has no such placeholder."""
    out, pos, auto = [], 0, 0
    for m in (_PRINTF if style == "printf" else _BRACES).finditer(fmt):
        if m.group(0) in ("%%", "{{", "}}"):  # an escaped sign: the text has it once
            out.append(fmt[pos:m.start()] + m.group(0)[0])
            pos = m.end()
            continue
        if style == "printf":
            key: int | str = m.group(1) if m.group(1) is not None else auto
            auto += m.group(1) is None
        else:
            field = re.split(r"[!:\[.]", m.group(1), maxsplit=1)[0]
            if field == "":
                key, auto = auto, auto + 1
            else:
                key = int(field) if field.isdigit() else field
        out.append(fmt[pos:m.start()])
        if key == which:
            return "".join(out)
        out.append("x")
        pos = m.end()
    return None


def _dotted(m: re.Match, lead: int, ctx: StringContext, names: Names) -> list[_StrRef]:
    """`customers.id`, `public.customers`, `public.customers.id`, `carts.customer_id`."""
    a, b, c = m.group(1), m.group(2), m.group(3)
    if b is None and c in _FILE_EXT:
        return []
    parts = [a, b, c] if b is not None else [a, c]
    starts = [lead]
    for p in parts[:-1]:
        starts.append(starts[-1] + len(p) + 1)
    out: list[_StrRef] = []
    last = parts[-1]
    new_last = names.canon_key if last == names.key else names.canon_column if last in names.columns else last
    # the table as the qualifier of a column: customers.id or public.customers.id
    if len(parts) == 3 and parts[0] == names.table_schema and parts[1] == names.table:
        out.append(_StrRef(starts[1], TABLE, names.table, f"{names.canon_schema}.{names.canon_table}.{new_last}"))
    elif len(parts) == 2 and parts[0] == names.table_schema and last == names.table:
        out.append(_StrRef(starts[1], TABLE, names.table, names.table_sql(True)))
    elif len(parts) == 2 and parts[0] == names.table and (
            ctx.method in FILTER_METHODS or ctx.method in TABLE_METHODS or last == names.key or last in names.columns):
        out.append(_StrRef(starts[0], TABLE, names.table, f"{names.canon_table}.{new_last}"))
    if last in names.columns:
        prefix = ".".join(names.canon_table if p == names.table else p for p in parts[:-1])
        out.append(_StrRef(starts[-1], COLUMN, last, f"{prefix}.{names.canon_column}"))
    return out


def _filter_refs(text: str, names: Names) -> list[_StrRef]:
    """PostgREST logical filters: `.or('customer_id.eq.5,customers.wa_id.eq.x')`."""
    out: list[_StrRef] = []
    for m in _OR_ITEM.finditer(text):
        path = m.group(1).split(".")
        pos = m.start(1)
        for i, p in enumerate(path):
            if i < len(path) - 1 and p == names.table:
                out.append(_StrRef(pos, TABLE, p, names.canon_table))
            elif i == len(path) - 1 and p in names.columns:
                out.append(_StrRef(pos, COLUMN, p, names.canon_column))
            pos += len(p) + 1
    return out


# --- PostgREST select lists -------------------------------------------------------------------

_NAME = re.compile(r'[A-Za-z_][\w$]*|"[^"]+"')
_JSON_KEY = re.compile(r"[A-Za-z_][\w$]*|\d+|'[^']*'")


class _Fail(Exception):
    pass


@dataclass(frozen=True)
class _SelRef:
    start: int
    name: str
    kind: str  # "column", "embed", "hint"
    item_end: int  # end of the embed's closing parenthesis


class _SelectParser:
    """`id, status, customer:customers!inner(id, wa_id), total::text, items(count), meta->>kind`."""

    def __init__(self, s: str):
        self.s, self.i, self.items, self.embed = s, 0, 0, False
        self.refs: list[_SelRef] = []

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i].isspace():
            self.i += 1

    def peek(self, text: str) -> bool:
        return self.s.startswith(text, self.i)

    def name(self, pattern: re.Pattern = _NAME) -> tuple[int, str]:
        m = pattern.match(self.s, self.i)
        if not m:
            raise _Fail
        self.i = m.end()
        return m.start(), m.group().strip('"')

    def parse(self) -> None:
        self.ws()
        self.select_list(0)
        self.ws()
        if self.i != len(self.s):
            raise _Fail

    def select_list(self, depth: int) -> None:
        self.item(depth)
        self.ws()
        while self.peek(","):
            self.i += 1
            self.item(depth)
            self.ws()

    def item(self, depth: int) -> None:
        self.ws()
        if depth == 0:
            self.items += 1
        if self.peek("..."):
            self.i += 3
            self.ws()
        if self.peek("*"):
            self.i += 1
            return
        start, name = self.name()
        self.ws()
        if self.peek(":") and not self.peek("::"):  # alias:name
            self.i += 1
            self.ws()
            start, name = self.name()
            self.ws()
        hints = []
        while self.peek("!"):
            self.i += 1
            self.ws()
            hints.append(self.name())
            self.ws()
        while self.peek("->"):
            self.i += 3 if self.peek("->>") else 2
            self.ws()
            self.name(_JSON_KEY)
            self.ws()
        if self.peek("::"):
            self.i += 2
            self.ws()
            self.name()
            self.ws()
        if self.peek(".") and not self.peek(".."):  # aggregate: amount.sum()
            self.i += 1
            self.name()
            if not self.peek("()"):
                raise _Fail
            self.i += 2
            self.ws()
        if self.peek("("):
            self.i += 1
            self.ws()
            if not self.peek(")"):
                self.select_list(depth + 1)
                self.ws()
            if not self.peek(")"):
                raise _Fail
            self.i += 1
            self.embed = True
            self.refs.append(_SelRef(start, name, "embed", self.i))
        else:
            self.refs.append(_SelRef(start, name, "column", self.i))
        for h_start, h in hints:
            self.refs.append(_SelRef(h_start, h, "hint", self.i))


def parse_select(text: str) -> tuple[int, bool, list[_SelRef]] | None:
    """(top-level items, has an embed, names) of a PostgREST select list, or None if TEXT is not one."""
    if not text.strip():
        return None
    p = _SelectParser(text)
    try:
        p.parse()
    except (_Fail, IndexError):
        return None
    return p.items, p.embed, p.refs


def _select_refs(refs: list[_SelRef], text: str, names: Names) -> list[_StrRef]:
    out = []
    for r in refs:
        if r.kind == "embed" and r.name == names.table:
            item = " ".join(text[r.start:r.item_end].split())
            out.append(_StrRef(r.start, TABLE, r.name, names.rewrite(item)))
        elif r.kind in ("column", "hint") and r.name in names.columns:
            out.append(_StrRef(r.start, COLUMN, r.name, names.canon_column))
    return out
