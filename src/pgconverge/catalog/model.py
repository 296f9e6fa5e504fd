"""Frozen dataclasses describing the catalog objects pgconverge reasons about."""

from __future__ import annotations

from dataclasses import dataclass, field

from pgconverge.config import QualifiedName


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type(), e.g. "bigint", "uuid", "character varying(20)"
    not_null: bool
    default: str | None = None
    generated: bool = False
    identity: bool = False
    attnum: int = 0


@dataclass(frozen=True)
class Index:
    name: QualifiedName
    table: QualifiedName
    columns: tuple[str | None, ...]  # None marks an expression column
    definition: str
    unique: bool
    primary: bool
    valid: bool
    predicate: str | None
    method: str


@dataclass(frozen=True)
class ForeignKey:
    name: str
    table: QualifiedName
    columns: tuple[str, ...]
    ref_table: QualifiedName
    ref_columns: tuple[str, ...]
    on_delete: str  # NO ACTION, RESTRICT, CASCADE, SET NULL, SET DEFAULT
    on_update: str
    validated: bool
    deferrable: bool
    definition: str


@dataclass(frozen=True)
class Trigger:
    name: str
    table: QualifiedName
    function: QualifiedName
    definition: str
    enabled: str  # O (origin), D (disabled), R (replica), A (always)


@dataclass(frozen=True)
class Table:
    name: QualifiedName
    oid: int
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    unique_keys: tuple[tuple[str, ...], ...]
    indexes: tuple[Index, ...]
    foreign_keys: tuple[ForeignKey, ...]  # outgoing
    triggers: tuple[Trigger, ...]
    rls_enabled: bool
    rls_forced: bool
    owner: str
    row_estimate: int

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)


@dataclass(frozen=True)
class Policy:
    name: str
    table: QualifiedName
    command: str  # ALL, SELECT, INSERT, UPDATE, DELETE
    permissive: bool
    roles: tuple[str, ...]
    using: str | None
    with_check: str | None
    # Dependencies Postgres itself recorded (pg_depend), including those inside sub-queries.
    column_refs: tuple[tuple[QualifiedName, str], ...] = ()
    function_refs: tuple[str, ...] = ()  # regprocedure text, e.g. "public.auth_customer_id()"


@dataclass(frozen=True)
class Function:
    name: QualifiedName
    signature: str  # regprocedure text
    identity_args: str
    returns: str
    language: str
    volatility: str  # i, s, v
    security_definer: bool
    config: tuple[str, ...]
    source: str
    definition: str  # pg_get_functiondef
    oid: int = 0
    owner: str = ""


@dataclass(frozen=True)
class View:
    name: QualifiedName
    kind: str  # "view" or "materialized view"
    definition: str
    column_refs: tuple[tuple[QualifiedName, str], ...] = ()


@dataclass(frozen=True)
class Grant:
    object_kind: str  # table, function, schema
    object_name: str
    grantee: str
    privilege: str


@dataclass(frozen=True)
class Dependent:
    """A table whose foreign key points at the legacy key."""

    table: Table
    fk: ForeignKey

    @property
    def column(self) -> Column:
        col = self.table.column(self.fk.columns[0])
        assert col is not None
        return col


@dataclass(frozen=True)
class Catalog:
    database: str
    server_version: int
    legacy: Table
    canonical: Table
    dependents: tuple[Dependent, ...]
    policies: tuple[Policy, ...]  # every policy in user schemas
    functions: tuple[Function, ...]  # user functions whose source mentions a watched name
    legacy_helper: Function | None
    canonical_helper: Function | None
    views: tuple[View, ...]
    tables: tuple[Table, ...] = field(default=())  # every table carrying a policy, for sub-query reasoning
    grants: tuple[Grant, ...] = ()
    roles: frozenset[str] = frozenset()
    schemas: frozenset[str] = frozenset()
    canonical_referenced_by: tuple[ForeignKey, ...] = ()  # foreign keys pointing at the canonical table
    read_at: str = ""  # UTC time of the read, e.g. 20261124T031500Z
    # Functions the helpers call, directly or through each other (the legacy helper may wrap another).
    helper_callees: tuple[Function, ...] = ()
    user: str = ""  # the role pgconverge connects as ("" in catalogs saved before it was recorded)

    def table(self, name: QualifiedName) -> Table | None:
        for t in (self.legacy, self.canonical, *(d.table for d in self.dependents), *self.tables):
            if t.name == name:
                return t
        return None
