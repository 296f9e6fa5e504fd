"""Mirror an index that contains the legacy column onto the new column, on the parse tree (pglast)."""

from __future__ import annotations

from dataclasses import dataclass

import pglast
from pglast import ast, stream, visitors

from pgconverge.catalog.model import Index
from pgconverge.config import QualifiedName

MAX_NAME = 63


@dataclass(frozen=True)
class Mirror:
    name: str
    statement: str  # CREATE [UNIQUE] INDEX CONCURRENTLY ...


class _Rename(visitors.Visitor):
    """Rename columns (old → new, several at once) everywhere in an index statement."""

    def __init__(self, renames: dict[str, str]):
        super().__init__()
        self.renames, self.hits = renames, 0

    def visit_ColumnRef(self, ancestors, node):
        if node.fields and isinstance(node.fields[-1], ast.String) and node.fields[-1].sval in self.renames:
            self.hits += 1
            new = self.renames[node.fields[-1].sval]
            return ast.ColumnRef(fields=(*node.fields[:-1], ast.String(sval=new)), location=node.location)
        return None

    def visit_IndexElem(self, ancestors, node):
        if node.name in self.renames:
            self.hits += 1
            node.name = self.renames[node.name]
        return None


def contains_column(index: Index, column: str) -> bool:
    """Whether COLUMN appears anywhere in the index: a key, an INCLUDE column, an expression or the predicate."""
    stmt = pglast.parse_sql(index.definition)[0].stmt
    probe = _Rename({column: column})
    probe(stmt)
    return probe.hits > 0


def mirrored_name(name: str, old_column: str, new_column: str, taken: set[str]) -> str:
    """idx_carts_customer_status → idx_carts_profile_status: the column's stem swapped, else a suffix."""
    candidate = _swapped(name, old_column, new_column) or f"{name}_{_stem(new_column)}"
    candidate = candidate[:MAX_NAME]
    n = 1
    while candidate in taken or candidate == name:
        n += 1
        suffix = f"_{n}"
        candidate = candidate[:MAX_NAME - len(suffix)] + suffix
    return candidate


def mirrored_names(name: str, renames: dict[str, str], taken: set[str]) -> str:
    """mirrored_name for an index containing several legacy columns: each column's stem swapped in turn."""
    (first_old, first_new), *rest = renames.items()
    for old, new in rest:
        name = _swapped(name, old, new) or name
    return mirrored_name(name, first_old, first_new, taken)


def _swapped(name: str, old_column: str, new_column: str) -> str | None:
    """NAME with its last mention of the column (else of its stem) swapped for the new column's (None if it has
    none): only the last, which names the column where the name also names its table by the same word
    (user_roles_user_id_key → user_roles_profile_id_key, not profile_roles_profile_id_key)."""
    for old, new in ((old_column, new_column), (_stem(old_column), _stem(new_column))):  # the whole name first
        at = name.rfind(old)
        if at >= 0:
            return name[:at] + new + name[at + len(old):]
    return None


def index_statement(definition: str, *, name: str, table: QualifiedName, only: bool, concurrent: bool,
                    if_not_exists: bool = True, renames: dict[str, str] | None = None) -> str:
    """DEFINITION (a CREATE INDEX) named NAME on TABLE: ON ONLY (a partitioned table's own index, built empty
    and completed by attaching its partitions' indexes), or CONCURRENTLY on one partition; columns renamed."""
    stmt = pglast.parse_sql(definition)[0].stmt
    if renames:
        _Rename(renames)(stmt)
    stmt.idxname = name
    stmt.relation = ast.RangeVar(schemaname=table.schema, relname=table.name, inh=not only, relpersistence="p")
    stmt.concurrent = concurrent
    stmt.if_not_exists = if_not_exists
    return stream.RawStream()(stmt)


def _stem(column: str) -> str:
    return column[:-3] if column.endswith("_id") and len(column) > 3 else column


def mirror(index: Index, old_column: str, new_column: str, taken: set[str],
           others: dict[str, str] | None = None) -> Mirror:
    """The CREATE INDEX CONCURRENTLY statement of INDEX with OLD_COLUMN replaced by NEW_COLUMN everywhere
    (and each of OTHERS, the table's other legacy columns the index contains, by its own new column)."""
    stmt = pglast.parse_sql(index.definition)[0].stmt
    rename = _Rename({old_column: new_column, **(others or {})})
    rename(stmt)
    name = mirrored_names(index.name.name, {old_column: new_column, **(others or {})}, taken)
    stmt.idxname = name
    stmt.concurrent = True
    stmt.if_not_exists = False
    return Mirror(name, stream.RawStream()(stmt))


def recreate(index: Index) -> str:
    """INDEX's own definition as CREATE INDEX CONCURRENTLY, to rebuild it after a drop."""
    stmt = pglast.parse_sql(index.definition)[0].stmt
    stmt.concurrent = True
    return stream.RawStream()(stmt)


class _Qualify(visitors.Visitor):
    """Prefix every bare column name with a table alias."""

    def __init__(self, alias: str):
        super().__init__()
        self.alias = alias

    def visit_ColumnRef(self, ancestors, node):
        if len(node.fields) == 1 and isinstance(node.fields[0], ast.String):
            return ast.ColumnRef(fields=(ast.String(sval=self.alias), node.fields[0]), location=node.location)
        return None


def qualified_predicate(index: Index, alias: str) -> str | None:
    """The partial index's WHERE clause with its columns as ALIAS.column (None for an index without one)."""
    stmt = pglast.parse_sql(index.definition)[0].stmt
    if stmt.whereClause is None:
        return None
    qualify = _Qualify(alias)
    holder = ast.SelectStmt(whereClause=stmt.whereClause)
    qualify(holder)
    return stream.RawStream()(holder.whereClause)


def renamed(statement: str, name: str) -> str:
    """A CREATE INDEX statement building the same index under NAME."""
    stmt = pglast.parse_sql(statement)[0].stmt
    stmt.idxname = name
    return stream.RawStream()(stmt)
