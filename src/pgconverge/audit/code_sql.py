"""SQL: pglast's parser says what a statement references, its scanner says where.

Both ignore comments. A file or string the parser rejects (psql meta-commands, a query cut in
two by string concatenation) is read with the scanner alone. Function bodies and DO blocks are
dollar-quoted strings to the outer statement: each is read again as SQL (or, for PL/pgSQL, with
the scanner), so references inside them are found too.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from collections import namedtuple
from dataclasses import dataclass

import pglast
from pglast import parser as pgparser

from pgconverge.audit.code_common import COLUMN, HELPER, TABLE, Names, byte_to_char_offsets


@dataclass(frozen=True)
class SqlRef:
    offset: int  # character offset into the text given
    category: str
    name: str
    suggestion: str


# A string that starts like a statement is tried with the parser; if the parser rejects it, it is
# still read with the scanner when it is unmistakably SQL (so "Update your customers" stays prose).
_SQL_START = re.compile(
    r"(?is)^\s*\(?\s*(?:select|insert|update|delete|with|create|alter|drop|grant|revoke|truncate|comment"
    r"|do|call|merge|copy|values|explain|table|refresh|lock|begin|analyze|vacuum)\b")
_STRICT_SQL = re.compile(
    r"""(?isx)^\s*\(?\s*(?:
        (?:select|with)\b.*\bfrom\s+[\w".]+ | select\s+[\w".]+\s*\( |
        insert\s+into\s | update\s+[\w".]+\s+set\s | delete\s+from\s |
        (?:create|alter|drop)\s+(?:or\s+replace\s+)?(?:table|view|function|policy|index|trigger)\s |
        grant\s | revoke\s | truncate\s | comment\s+on\s )""")
# Fragments of a query built piece by piece: parsed inside a minimal statement.
_FRAGMENTS = (
    (re.compile(r"(?is)^\s*from\s"), "SELECT * "),
    (re.compile(r"(?is)^\s*(?:(?:left|right|inner|full|cross)\s+(?:outer\s+)?)?join\s"), "SELECT * FROM _t "),
    (re.compile(r"(?is)^\s*(?:where|order\s+by|group\s+by|having)\s"), "SELECT * FROM _t "),
    (re.compile(r"(?is)^\s*(?:and|or)\s"), "SELECT * FROM _t WHERE true "),
    (re.compile(r"(?is)^\s*returning\s"), "DELETE FROM _t "),
)
# Client-side placeholders (%s, %(name)s, :name) become $1 of the same length so the parser accepts them.
_PLACEHOLDER = re.compile(r"%\(\w+\)s|%s|(?<![:\w]):[A-Za-z_]\w*")
_TABLE_CONTEXT = {"FROM", "JOIN", "INTO", "UPDATE", "TABLE", "ONLY", "REFERENCES"}
_COMMENTS = ("SQL_COMMENT", "C_COMMENT")
_Tok = namedtuple("_Tok", "start end name kind")  # a scanner token moved to its place in the whole text
_NAME_TOKEN_KINDS = {"NO_KEYWORD", "UNRESERVED_KEYWORD", "COL_NAME_KEYWORD", "TYPE_FUNC_NAME_KEYWORD"}


def refs_in_file(text: str, names: Names) -> list[SqlRef]:
    """References in a whole .sql file (or a function body)."""
    if not names.candidate_text_regex.search(text):
        return []
    targets = _parse(text, names)
    slices = _relevant_statements(text, names) if targets is not None else None
    return _refs(text, names, targets, strict=False, slices=slices)


def refs_in_string(text: str, names: Names) -> list[SqlRef] | None:
    """References in a string literal of application code; None when the string is not SQL."""
    prepared = _PLACEHOLDER.sub(lambda m: "$1".ljust(len(m.group())), text)
    if _SQL_START.match(prepared):
        parsed = _parse(prepared, names)
        if parsed is not None:
            return _refs(prepared, names, parsed, strict=True)
        if _STRICT_SQL.match(prepared):
            return _refs(prepared, names, None, strict=True)
        return None
    for pattern, prefix in _FRAGMENTS:
        if pattern.match(prepared):
            wrapped = prefix + prepared
            parsed = _parse(wrapped, names)
            if parsed is None:
                return None
            n = len(prefix)
            return [SqlRef(r.offset - n, r.category, r.name, r.suggestion)
                    for r in _refs(wrapped, names, parsed, strict=True) if r.offset >= n]
    return None


_NODE = re.compile(r'\{"(RangeVar|ColumnRef|ColumnDef|FuncCall)":\{')
_DECODER = json.JSONDecoder()


def _parse(text: str, names: Names) -> list[tuple[int, str, str]] | None:
    """None if the parser rejects TEXT, else (byte location, name, category) of each RangeVar, ColumnRef,
    ColumnDef and FuncCall that names the legacy table, a legacy column or the legacy helper.

    Only those nodes are decoded from the parser's JSON: the name they carry (relname, fields,
    colname, funcname) comes first in each, so a look at the next few hundred characters tells
    whether a node can be of interest.
    """
    try:
        data = pgparser.parse_sql_json(text)
    except Exception:  # pglast.parser.ParseError, and anything odd the C parser may raise
        return None
    quoted = [json.dumps(n, ensure_ascii=False) for n in (names.table, names.helper, *names.columns) if n]
    out: list[tuple[int, str, str]] = []
    for m in _NODE.finditer(data):
        head = data[m.end():m.end() + 400]
        if not any(q in head for q in quoted):
            continue
        node, _ = _DECODER.raw_decode(data, m.start())
        kind, val = m.group(1), node[m.group(1)]
        if "location" not in val:
            continue
        if kind == "RangeVar":
            if val.get("relname") == names.table and val.get("schemaname", names.table_schema) == names.table_schema:
                out.append((val["location"], names.table, TABLE))
        elif kind == "ColumnRef":
            last = (val.get("fields") or [{}])[-1].get("String", {}).get("sval")
            if last in names.columns:
                out.append((val["location"], last, COLUMN))
        elif kind == "ColumnDef":
            if val.get("colname") in names.columns:
                out.append((val["location"], val["colname"], COLUMN))
        else:  # FuncCall
            parts = [p.get("String", {}).get("sval") for p in val.get("funcname", [])]
            if parts and names.helper and parts[-1] == names.helper and (len(parts) == 1 or parts[-2] == names.helper_schema):
                out.append((val["location"], names.helper, HELPER))
    return out


def _relevant_statements(text: str, names: Names) -> list[tuple[int, int]] | None:
    """(start, end) of the statements that mention a legacy name: the only ones worth scanning."""
    try:
        slices = pglast.split(text, with_parser=True, only_slices=True)
    except Exception:
        return None
    rx = names.candidate_text_regex
    return [(sl.start, sl.stop) for sl in slices if rx.search(text, sl.start, sl.stop)]


def _tokens(text: str, slices: list[tuple[int, int]] | None) -> list:
    """Scanner tokens of TEXT, or of the SLICES of it, comments left out; offsets are into TEXT."""
    if slices is None:
        return [t for t in _scan(text) if t.name not in _COMMENTS]
    out = []
    for a, b in slices:
        out.extend(_Tok(t.start + a, t.end + a, t.name, t.kind) for t in _scan(text[a:b]) if t.name not in _COMMENTS)
    return out


def _scan(text: str) -> list:
    """The scanner's tokens; up to the error when it stops (an unterminated quote), as far as it got."""
    try:
        return pgparser.scan(text)
    except pgparser.ParseError as exc:
        at = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else 0
        return _scan(text[:at]) if 0 < at < len(text) else []
    except Exception:
        return []


def _ident(raw: str) -> str:
    if raw.startswith('"'):
        return raw[1:-1].replace('""', '"')
    return raw.lower()


def _refs(text: str, names: Names, targets: list[tuple[int, str, str]] | None, *, strict: bool,
          slices: list[tuple[int, int]] | None = None) -> list[SqlRef]:
    """STRICT (for strings of application code): the table name counts where the parser placed it, or
    right after FROM/JOIN/INTO/UPDATE/TABLE/ONLY/REFERENCES, so a label like "Select customers" is not SQL."""
    if not names.candidate_text_regex.search(text):
        return []
    tokens = _tokens(text, slices)
    wanted = {names.table, names.helper, *names.columns} - {""}
    out: list[SqlRef] = []
    cands: dict[int, tuple[int, str]] = {}  # token index -> (char offset, name)
    for i, t in enumerate(tokens):
        if t.kind in _NAME_TOKEN_KINDS and t.name != "SCONST":
            raw = text[t.start:t.end + 1]
            if raw[:1].isalpha() or raw[:1] in '"_':
                value = _ident(raw)
                if value in wanted:
                    cands[i] = (t.start, value)
        if t.name == "SCONST":
            out.extend(_sconst(text, tokens, i, names))

    def qualifier(i: int) -> str | None:
        if i >= 2 and tokens[i - 1].name == "ASCII_46" and tokens[i - 2].name == "IDENT":
            return _ident(text[tokens[i - 2].start:tokens[i - 2].end + 1])
        return None

    claimed: dict[int, str] = {}
    if targets:
        # Each AST node claims the first token of its name at or after the node's location
        # (RangeVar public.customers starts at "public"; ColumnRef c.customer_id at "c").
        by_name: dict[str, list[tuple[int, int]]] = {}
        for i, (offset, name) in sorted(cands.items()):
            by_name.setdefault(name, []).append((offset, i))
        locs = byte_to_char_offsets(text.encode("utf-8", "surrogatepass"), (loc for loc, _, _ in targets))
        for loc, name, category in sorted(targets):
            toks = by_name.get(name, [])
            k = bisect_left(toks, (locs[loc], -1))
            while k < len(toks) and toks[k][1] in claimed:
                k += 1
            if k < len(toks):
                claimed[toks[k][1]] = category

    for i, (offset, name) in cands.items():
        category = claimed.get(i) or names.sql_category(name)
        q = qualifier(i)
        if i not in claimed:
            if category in (TABLE, HELPER):
                schema = names.table_schema if category == TABLE else names.helper_schema
                if q is not None and q != schema:
                    continue  # another schema's object of the same name (archive.customers)
            if category == TABLE and i > 0 and tokens[i - 1].name == "AS":
                continue  # an alias that happens to be called like the table
            if strict and category == TABLE:
                j = i - 2 if q is not None else i - 1
                if j < 0 or tokens[j].name not in _TABLE_CONTEXT:
                    continue
        if category == TABLE:
            suggestion = names.table_sql(q is not None)
        elif category == HELPER:
            suggestion = names.helper_sql(q is not None)
        else:
            suggestion = names.canon_column
        out.append(SqlRef(offset, category, name, suggestion))
    return sorted(out, key=lambda r: r.offset)


def _sconst(text: str, tokens: list, i: int, names: Names) -> list[SqlRef]:
    """A dollar-quoted body read as SQL; a '...'::regclass naming the legacy table."""
    t = tokens[i]
    raw = text[t.start:t.end + 1]
    if raw.startswith("$"):
        tag_end = raw.find("$", 1)
        if tag_end < 0:
            return []
        body_start = tag_end + 1
        body = raw[body_start:len(raw) - body_start]
        shift = t.start + body_start
        return [SqlRef(r.offset + shift, r.category, r.name, r.suggestion) for r in refs_in_file(body, names)]
    if (raw.startswith("'") and i + 2 < len(tokens) and tokens[i + 1].name == "TYPECAST"
            and text[tokens[i + 2].start:tokens[i + 2].end + 1].lower() == "regclass"):
        value = raw[1:-1]
        schema, _, rel = value.rpartition(".")
        if _ident(rel) == names.table and (not schema or _ident(schema) == names.table_schema):
            return [SqlRef(t.start + 1 + (len(schema) + 1 if schema else 0), TABLE, names.table,
                           f"'{names.table_sql(bool(schema))}'::regclass")]
    return []
