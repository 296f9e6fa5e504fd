"""Archive a table: move it to the archive schema under a dated name (O(1): data, keys and indexes kept)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.config import QualifiedName
from pgconverge.execution.sql import body, ident, qn, text
from pgconverge.operations import objects
from pgconverge.operations.base import Lock, Operation
from pgconverge.operations.grant import GrantColumn


def _grantee(role: str) -> sql.Composable:
    return sql.SQL("public") if role == "PUBLIC" else ident(role)


def _grants(kind: str, name: QualifiedName, grants) -> list[sql.Composable]:
    return [sql.SQL("grant {} on {} {} to {}{}").format(
        sql.SQL(priv), sql.SQL(kind), qn(name), _grantee(role),
        sql.SQL(" with grant option") if option and option[0] else sql.SQL(""))
        for role, priv, *option in grants]


@dataclass(frozen=True)
class ArchiveTable(Operation):
    """Safe alone: moves the legacy table (or the mapping) out of the API's reach in one catalog change; contract's
    gates and dependency check ran first, so nothing the application still calls reads it.

    The archive schema is created here when it does not exist, without any privilege for PUBLIC or the API roles.
    A schema that exists already keeps its privileges (the application may use it): only what is archived loses
    those roles' privileges, the table's and those of the sequences its columns own."""

    safe_alone: ClassVar[bool] = True

    table: QualifiedName
    archived: QualifiedName  # schema = archive schema, name = <table>_<UTC timestamp>
    revoke_from: tuple[str, ...]  # roles that must not reach the archive
    # (grantee, privilege[, with grant option]) the table had: restored by the reverse
    grants: tuple[tuple, ...] = ()
    # (column, its privileges as Column.privileges) of the roles revoked: restored by the reverse
    columns: tuple[tuple[str, tuple[tuple[str, str, bool], ...]], ...] = ()
    # (a sequence the table's columns own, by its name before the move; its grants as `grants`): revoked before the
    # move (its name goes with the table), restored by the reverse
    sequences: tuple[tuple[QualifiedName, tuple[tuple, ...]], ...] = ()
    # more roles without any privilege on the archive schema where this step creates it (besides revoke_from)
    schema_revoke_from: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        return f"archive {self.table} as {self.archived} (SET SCHEMA and RENAME: no data is copied)"

    @property
    def lock_target(self) -> str:
        return str(self.table)

    def statements(self) -> list[sql.Composable]:
        roles = sql.SQL(", ").join([sql.SQL("public"), *map(ident, self.revoke_from)])
        s = ident(self.archived.schema)
        denied = sql.SQL(", ").join([sql.SQL("public"), *map(ident, dict.fromkeys(
            (*self.revoke_from, *self.schema_revoke_from)))])
        made = sql.SQL("begin\n  if pg_catalog.to_regnamespace({}) is null then\n    create schema {};\n"
                       "    revoke all on schema {} from {};\n  end if;\nend").format(
            sql.Literal(text(s)), s, s, denied)
        return [
            sql.SQL("do {}").format(body(made)),
            *(sql.SQL("revoke all on sequence {} from {}").format(qn(seq), roles) for seq, _ in self.sequences),
            sql.SQL("alter table {} set schema {}").format(qn(self.table), s),
            sql.SQL("alter table {} rename to {}").format(qn(QualifiedName(self.archived.schema, self.table.name)),
                                                         ident(self.archived.name)),
            sql.SQL("revoke all on table {} from {}").format(qn(self.archived), roles),
        ]

    def reverse(self) -> Operation:
        return RestoreTable(self.archived, self.table, self.grants, self.columns, self.sequences)


@dataclass(frozen=True)
class RestoreTable(Operation):
    """Safe alone: puts an archived table back, grants included, in one transaction: what it restores is what the
    application used before.

    Where the table was never archived (the archive step failed, so it never committed) it is still in place with
    its grants, and nothing is done."""

    safe_alone: ClassVar[bool] = True

    archived: QualifiedName
    table: QualifiedName
    grants: tuple[tuple, ...] = ()
    columns: tuple[tuple[str, tuple[tuple[str, str, bool], ...]], ...] = ()
    sequences: tuple[tuple[QualifiedName, tuple[tuple, ...]], ...] = ()

    @property
    def description(self) -> str:
        return f"restore {self.archived} as {self.table} (nothing to do where it was never archived)"

    @property
    def lock_target(self) -> str:
        return str(self.archived)

    def moves(self) -> tuple[sql.Composable, ...]:
        return (objects.moved(self.table, self.archived),)

    def statements(self) -> list[sql.Composable]:
        restore = [
            sql.SQL("alter table {} rename to {}").format(qn(self.archived), ident(self.table.name)),
            sql.SQL("alter table {} set schema {}").format(qn(QualifiedName(self.archived.schema, self.table.name)),
                                                           ident(self.table.schema)),
            *_grants("table", self.table, self.grants),
            *(s for column, privileges in self.columns
              for s in GrantColumn(self.table, column, privileges).statements()),
            *(s for seq, grants in self.sequences for s in _grants("sequence", seq, grants)),
        ]
        never = sql.SQL("pg_catalog.to_regclass({}) is null and pg_catalog.to_regclass({}) is not null").format(
            sql.Literal(text(qn(self.archived))), sql.Literal(text(qn(self.table))))
        code = sql.SQL("begin\n  if not ({}) then\n{}\n  end if;\nend").format(
            never, sql.SQL("\n").join(sql.SQL("    {};").format(s) for s in restore))
        return [sql.SQL("do {}").format(body(code))]
