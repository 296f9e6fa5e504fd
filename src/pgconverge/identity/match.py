"""Match kinds: how a legacy row and a canonical row are recognised as one person.

Each kind turns a column's value (as text) into an equivalence key, or NULL when the value cannot
identify anybody (NULL, blank, unreadable):

- ``phone``: `<private>.normalize_phone` (see identity/phone.py); a created canonical row stores
  ``'+' || key`` (E.164);
- ``email``: trimmed and case-folded, when it has the shape something@something (else no key); never
  passed through the phone rules; a created row stores the trimmed value as written;
- ``exact``: the value itself, byte for byte (blank is no value); a created row stores it as it is.

Several columns matched together (``match_column = ["first_name", "birth_date"]``) give one key made of
each column's key, length-prefixed so that no two different tuples give the same key, and NULL when any
part is NULL. Columns are compared as text, so a match column must be of a type whose cast to text
does not depend on session settings (the key is in an index): text-like, integer, numeric, uuid, boolean.
"""

from __future__ import annotations

import re

from psycopg import sql

from pgconverge.catalog.model import Column
from pgconverge.config import QualifiedName, Spec

# Types whose ::text is immutable (date and timestamp casts read DateStyle/TimeZone, so no index can use them).
TEXT_LIKE = {"text", "character varying", "character", "citext", "name"}
KEYABLE = TEXT_LIKE | {"bigint", "integer", "smallint", "numeric", "uuid", "boolean"}
_BLANKS = "E' \\t\\r\\n'"
KINDS_BY_LIKELIHOOD = ("email", "phone")  # kinds to suggest when the configured one reads too little
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def part_key(kind: str, value: sql.Composable, normalize: QualifiedName) -> sql.Composable:
    """The key of one column's text VALUE under KIND (NULL when it identifies nobody)."""
    if kind == "phone":
        return sql.SQL("{}({})").format(sql.Identifier(normalize.schema, normalize.name), value)
    if kind == "email":  # something@something, trimmed and case-folded; anything else identifies nobody
        return sql.SQL("(case when pg_catalog.btrim({v}, {b}) ~ '^[^@[:space:]]+@[^@[:space:]]+$' "
                       "then pg_catalog.lower(pg_catalog.btrim({v}, {b})) end)").format(v=value, b=sql.SQL(_BLANKS))
    if kind == "exact":
        return sql.SQL("nullif({}, '')").format(value)
    raise ValueError(f"unknown match kind {kind!r}")


def stored_value(kind: str, key: sql.Composable, raw: sql.Composable) -> sql.Composable:
    """What a created canonical row stores in its match column, given the legacy value's KEY and RAW text."""
    if kind == "phone":
        return sql.SQL("'+' || {}").format(key)
    if kind == "email":
        return sql.SQL("pg_catalog.btrim({}, {})").format(raw, sql.SQL(_BLANKS))
    return raw


def preferred_form(kind: str, key: sql.Composable) -> sql.Composable | None:
    """The canonical spelling of KEY: among several canonical rows with one key, the one stored so wins."""
    return sql.SQL("'+' || {}").format(key) if kind == "phone" else key


def key_expr(kinds: tuple[str, ...], values: list[sql.Composable], normalize: QualifiedName) -> sql.Composable:
    """The match key of VALUES (one text per match column), as an expression.

    Rendered in place, not wrapped in a function of ours: a SQL function is inlined by name, so an
    application role writing the canonical table (whose index holds the key) would need USAGE on the
    private schema; an expression in an index refers to normalize_phone by OID, which needs EXECUTE only.
    """
    parts = [part_key(k, v, normalize) for k, v in zip(kinds, values)]
    if len(parts) == 1:
        return parts[0]
    nulls = sql.SQL(" or ").join(sql.SQL("{} is null").format(p) for p in parts)
    joined = sql.SQL(" || ").join(sql.SQL("pg_catalog.length({p})::text || ':' || {p}").format(p=p) for p in parts)
    return sql.SQL("(case when {} then null else {} end)").format(nulls, joined)


def as_text(alias: str | None, col: Column) -> sql.Composable:
    """COL's value as text under ALIAS (None: the bare name, as in an index), under the database's default
    collation: Postgres runs no regular expression under a nondeterministic one (a case-insensitive ICU collation),
    and lower() under another collation ("C") folds other letters; either side of a match is keyed alike."""
    ref = sql.Identifier(col.name) if alias is None else sql.SQL("{}.{}").format(sql.Identifier(alias),
                                                                                 sql.Identifier(col.name))
    out = ref if col.type == "text" else sql.SQL("({})::text").format(ref)
    return sql.SQL('({} collate pg_catalog."default")').format(out) if col.collation else out


def key_of(spec: Spec, alias: str | None, columns: tuple[Column, ...], normalize: QualifiedName) -> sql.Composable:
    """The match key of one side's match COLUMNS under ALIAS (None: bare names, as in an index)."""
    return key_expr(spec.legacy.match_kinds, [as_text(alias, c) for c in columns], normalize)


def reads(kind: str, value: str, region: str) -> bool:
    """Whether KIND can make a key of VALUE (used to suggest a better kind; the SQL key decides)."""
    if kind == "email":
        return bool(_EMAIL.match(value.strip()))
    if kind == "phone":
        from pgconverge.identity.phone_audit import reference_key

        return reference_key(value, region) is not None
    return bool(value)
