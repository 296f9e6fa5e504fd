"""Name resolution inside a policy expression: which FROM item a column reference belongs to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pglast import ast

from pgconverge.config import QualifiedName
from pgconverge.planning.rls_ast import strings


@dataclass
class Item:
    """One FROM item visible to an expression: a table, a sub-query, a function, a CTE."""

    name: str  # how it is referenced: its alias, else the relation's own name
    table: QualifiedName | None = None  # the base table, when it is one and its columns keep their names
    aliased: bool = False
    columns: frozenset[str] | None = None  # known output columns; None = unknown
    note: str | None = None  # why the item's table is unsure (shown when it matters)
    own: bool = False  # the policy's own table

    def matches(self, qual: tuple[str, ...]) -> bool:
        if len(qual) == 1:
            return self.name == qual[0]
        if self.aliased or self.table is None:
            return False
        return (self.table.schema, self.table.name) == qual[-2:]

    def label(self) -> str:
        return str(self.table) if self.table else self.name


@dataclass
class Resolution:
    item: Item | None  # the owner, when certain
    depth: int  # scope depth of the owner (0 = the policy's own scope), -1 if unresolved
    candidates: tuple[Item, ...] = ()  # when several items could own the column


class Scopes:
    """A stack of FROM-clause scopes, innermost last; the bottom one holds only the policy's table."""

    def __init__(self, own: QualifiedName, known_tables: set[QualifiedName],
                 columns: Mapping[QualifiedName, frozenset[str]], legacy_columns: set[tuple[QualifiedName, str]],
                 column_refs: set[tuple[QualifiedName, str]]):
        self.stack: list[list[Item]] = [[Item(own.name, own, own=True)]]
        self.ctes: list[dict[str, frozenset[str] | None]] = []
        self.known_tables = known_tables
        self.table_columns = columns
        self.legacy_columns = legacy_columns
        self.column_refs = column_refs

    # -- building ----------------------------------------------------------------------------

    def table_item(self, rv: ast.RangeVar) -> Item:
        alias = rv.alias.aliasname if rv.alias else None
        colnames = strings(rv.alias.colnames) if rv.alias and rv.alias.colnames else None
        if not rv.schemaname:
            for ctes in reversed(self.ctes):
                if rv.relname in ctes:
                    return Item(alias or rv.relname, None, bool(alias), ctes[rv.relname] if colnames is None
                                else frozenset(colnames))
        table, note = self.resolve_table(rv)
        if colnames is not None:
            # Renamed columns no longer carry the table's names: nothing through it can be mapped back.
            return Item(alias or rv.relname, None, bool(alias), frozenset(colnames),
                        note=f"{rv.relname} is read with column aliases {', '.join(colnames)}")
        return Item(alias or rv.relname, table, bool(alias), note=note)

    def resolve_table(self, rv: ast.RangeVar) -> tuple[QualifiedName | None, str | None]:
        if rv.schemaname:
            return QualifiedName(rv.schemaname, rv.relname), None
        # Unqualified: only search_path decides. Accept it when one known table has that name.
        same = sorted(t for t in self.known_tables if t.name == rv.relname)
        if len(same) == 1:
            return same[0], None
        if not same:
            return None, None
        return None, f"unqualified table {rv.relname} could be any of {', '.join(map(str, same))}"

    # -- resolving ---------------------------------------------------------------------------

    def has(self, item: Item, col: str) -> bool | None:
        if item.own or (item.table and (item.table, col) in self.legacy_columns):
            return True
        if item.columns is not None:
            return col in item.columns
        if item.table in self.table_columns:
            return col in self.table_columns[item.table]
        return None

    def resolve(self, qual: tuple[str, ...], col: str) -> Resolution:
        if qual:
            for depth in range(len(self.stack) - 1, -1, -1):
                found = [it for it in self.stack[depth] if it.matches(qual)]
                if len(found) == 1:
                    return Resolution(found[0], depth)
                if found:
                    return Resolution(None, depth, tuple(found))
            return Resolution(None, -1)
        # Unqualified: the innermost scope with an item that has the column wins, as in Postgres;
        # items whose columns are unknown may also own it, at their level or any inner one.
        maybe: list[tuple[int, Item]] = []
        definite: list[tuple[int, Item]] = []
        for depth in range(len(self.stack) - 1, -1, -1):
            for it in self.stack[depth]:
                has = self.has(it, col)
                if has is None:
                    maybe.append((depth, it))
                elif has:
                    definite.append((depth, it))
            if definite:
                break
        cands = definite + maybe
        if self.column_refs:
            # Postgres recorded every column the policy reads (pg_depend): a table column that is
            # not among them is not what this reference means.
            cands = [(d, it) for d, it in cands if it.table is None or (it.table, col) in self.column_refs]
        if len(cands) == 1:
            return Resolution(cands[0][1], cands[0][0])
        return Resolution(None, -1, tuple(it for _, it in cands))
