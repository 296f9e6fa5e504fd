"""Mirror an index that contains the legacy column onto the new column, on the parse tree (pglast)."""

from __future__ import annotations

from dataclasses import dataclass

import pglast
from pglast import ast, stream, visitors

from pgconverge.catalog.model import Index

MAX_NAME = 63


@dataclass(frozen=True)
class Mirror:
    name: str
    statement: str  # CREATE [UNIQUE] INDEX CONCURRENTLY ...


class _Rename(visitors.Visitor):
    def __init__(self, old: str, new: str):
        super().__init__()
        self.old, self.new, self.hits = old, new, 0

    def visit_ColumnRef(self, ancestors, node):
        if node.fields and isinstance(node.fields[-1], ast.String) and node.fields[-1].sval == self.old:
            self.hits += 1
            return ast.ColumnRef(fields=(*node.fields[:-1], ast.String(sval=self.new)), location=node.location)
        return None

    def visit_IndexElem(self, ancestors, node):
        if node.name == self.old:
            self.hits += 1
            node.name = self.new
        return None


def contains_column(index: Index, column: str) -> bool:
    """Whether COLUMN appears anywhere in the index: a key, an INCLUDE column, an expression or the predicate."""
    stmt = pglast.parse_sql(index.definition)[0].stmt
    probe = _Rename(column, column)
    probe(stmt)
    return probe.hits > 0


def mirrored_name(name: str, old_column: str, new_column: str, taken: set[str]) -> str:
    """idx_carts_customer_status → idx_carts_profile_status: the column's stem swapped, else a suffix."""
    old_stem, new_stem = _stem(old_column), _stem(new_column)
    candidate = name.replace(old_stem, new_stem) if old_stem in name else f"{name}_{new_stem}"
    candidate = candidate[:MAX_NAME]
    n = 1
    while candidate in taken or candidate == name:
        n += 1
        suffix = f"_{n}"
        candidate = candidate[:MAX_NAME - len(suffix)] + suffix
    return candidate


def _stem(column: str) -> str:
    return column[:-3] if column.endswith("_id") and len(column) > 3 else column


def mirror(index: Index, old_column: str, new_column: str, taken: set[str]) -> Mirror:
    """The CREATE INDEX CONCURRENTLY statement of INDEX with OLD_COLUMN replaced by NEW_COLUMN everywhere."""
    stmt = pglast.parse_sql(index.definition)[0].stmt
    rename = _Rename(old_column, new_column)
    rename(stmt)
    name = mirrored_name(index.name.name, old_column, new_column, taken)
    stmt.idxname = name
    stmt.concurrent = True
    stmt.if_not_exists = False
    return Mirror(name, stream.RawStream()(stmt))


def recreate(index: Index) -> str:
    """INDEX's own definition as CREATE INDEX CONCURRENTLY, to rebuild it after a drop."""
    stmt = pglast.parse_sql(index.definition)[0].stmt
    stmt.concurrent = True
    return stream.RawStream()(stmt)
