"""Frozen dataclasses describing the catalog objects pgconverge reasons about."""

from __future__ import annotations

import re
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
    # Its own privileges (GRANT SELECT (col) …): (grantee, privilege, with grant option), grantee PUBLIC or a role.
    privileges: tuple[tuple[str, str, bool], ...] = ()
    # For a column of a domain type, the type underneath every domain (format_type()): what Postgres casts it to
    # when it compares it with a value of that type, as pg_get_expr then shows ("(customer_id)::integer").
    base_type: str | None = None
    comment: str | None = None  # COMMENT ON COLUMN (pg_graphql reads its directives there)
    # Its collation where it is not the database's default (quoted and qualified, e.g. `public.ci`): a column made
    # to hold its values (the mapping's legacy column) compares them as it does only with it.
    collation: str | None = None
    # For a column of a domain type: the domain refuses NULL (its NOT NULL, or a CHECK such as `value is not null`).
    # Postgres then refuses a row that leaves the column out before any trigger could fill it.
    refuses_null: bool = False

    @property
    def declared_type(self) -> str:
        """Its type as a column definition gives it: the type, and its collation where it is not the default."""
        return f"{self.type} collate {self.collation}" if self.collation else self.type

    @property
    def value_type(self) -> str:
        """The type pgconverge gives what it makes to hold this column's values (a column of its own tables, a
        variable, a function's argument or result, a cast): the type underneath every domain, where the column's is
        one. Those may hold NULL (a row not found, a variable not yet set, a batch's first bound), which a domain's
        NOT NULL or CHECK (value is not null) refuses; no value of the column is refused by it."""
        return self.base_type or self.type

    @property
    def declared_value_type(self) -> str:
        """value_type with the column's collation where it is not the default (a column made to hold its values
        compares them as it does only with it)."""
        return f"{self.value_type} collate {self.collation}" if self.collation else self.value_type


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
    comment: str | None = None


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
    comment: str | None = None

    @property
    def match_full(self) -> bool:
        return " MATCH FULL" in self.definition


@dataclass(frozen=True)
class Constraint:
    """A primary key, unique, check or exclusion constraint of a table (foreign keys are ForeignKey)."""

    name: str
    kind: str  # "primary key", "unique", "check", "exclusion"
    columns: tuple[str, ...]
    definition: str  # pg_get_constraintdef
    validated: bool = True
    index: str = ""  # the index that backs a primary key, unique or exclusion constraint
    expression: str = ""  # a check constraint's expression (pg_get_expr)
    referenced_by: tuple[str, ...] = ()  # foreign keys of any table that reference this key, "table.constraint"


@dataclass(frozen=True)
class Trigger:
    name: str
    table: QualifiedName
    function: QualifiedName
    definition: str
    enabled: str  # O (origin), D (disabled), R (replica), A (always)


@dataclass(frozen=True)
class Rule:
    """A rewrite rule on a table (CREATE RULE), not a view's own _RETURN."""
    name: str
    event: str  # SELECT, UPDATE, INSERT, DELETE
    instead: bool
    definition: str  # pg_get_ruledef
    enabled: str  # O, D, R, A


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
    constraints: tuple[Constraint, ...] = ()  # primary key, unique, check and exclusion constraints
    rules: tuple[Rule, ...] = ()

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

    @property
    def code(self) -> str:
        """What the function runs: its source, or for an SQL-standard body (BEGIN ATOMIC or RETURN, source empty)
        its definition from that body on (not the header, whose parameter and column names it does not run)."""
        if self.source.strip():
            return self.source
        body = re.search(r"^\s*(?:BEGIN\s+ATOMIC|RETURN)\b", self.definition, re.M | re.I)
        return self.definition[body.start():] if body else self.definition


@dataclass(frozen=True)
class View:
    name: QualifiedName
    kind: str  # "view" or "materialized view"
    definition: str
    # The columns it reads (pg_depend), including through sub-queries and a field of a whole row ((p).body).
    column_refs: tuple[tuple[QualifiedName, str], ...] = ()
    # Every table or view it reads, whichever columns (pg_depend): a count(*) reads no column but still the table.
    relation_refs: tuple[QualifiedName, ...] = ()
    # The tables or views whose whole row it reads (to_jsonb(p), p.*::posts), found on its definition's parse tree:
    # Postgres records no column for them, yet the row loses a column dropped from its table.
    whole_rows: tuple[QualifiedName, ...] = ()


@dataclass(frozen=True)
class Grant:
    object_kind: str  # table, function, schema
    object_name: str  # a table as str(QualifiedName), a function as regprocedure text
    grantee: str  # PUBLIC or a role's name, unquoted
    privilege: str
    grantable: bool = False  # WITH GRANT OPTION


@dataclass(frozen=True)
class Partition:
    """A partition of a partitioned dependent table, at any level (a sub-partitioned one is not a leaf)."""

    table: Table  # its own columns, keys and indexes
    parent: QualifiedName  # the table it is a partition of
    leaf: bool
    # (index of this partition, the parent's index it is attached to)
    index_parents: tuple[tuple[str, str], ...] = ()
    # (foreign key of this partition, the parent's foreign key it was cloned from)
    fk_parents: tuple[tuple[str, str], ...] = ()

    def index_of(self, parent_index: str) -> str | None:
        """The name of this partition's index attached to PARENT_INDEX of its parent, if any."""
        return next((i for i, p in self.index_parents if p == parent_index), None)

    def fk_of(self, parent_fk: str) -> str | None:
        return next((f for f, p in self.fk_parents if p == parent_fk), None)


@dataclass(frozen=True)
class Dependent:
    """One reference: a foreign key pointing at the legacy key (a table with two such keys has two)."""

    table: Table
    fk: ForeignKey
    # A declaratively partitioned table: every partition below it (top-down), and its partition key.
    partitions: tuple[Partition, ...] = ()
    partition_key: str = ""  # pg_get_partkeydef, "" for a plain table
    partition_columns: tuple[str, ...] = ()  # the plain columns of the partition key
    # Shapes the planner refuses: a key declared on one partition alone (the partitioned table it belongs
    # to), and a parent of old-style inheritance children (INHERITS).
    partition_of: QualifiedName | None = None
    inherited_by: tuple[QualifiedName, ...] = ()
    # An inheritance child (INHERITS): the columns it has from its parents, and those parents ("s.t, …").
    inherited_columns: tuple[str, ...] = ()
    inherits_from: str = ""

    @property
    def partitioned(self) -> bool:
        return bool(self.partition_key)

    @property
    def leaves(self) -> tuple[Partition, ...]:
        return tuple(p for p in self.partitions if p.leaf)

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
    # Roles whose privileges `user` has, inherited (every role for a superuser): who may ALTER whose tables.
    user_roles: frozenset[str] = frozenset()
    # Triggers on other tables whose function inserts into the canonical table (a sign-up trigger on auth.users
    # making a profile): (trigger, its table, the function's signature, its source; the source is missing in catalogs
    # saved before it was recorded).
    canonical_writers: tuple[tuple[str, ...], ...] = ()
    # Roles `user` may SET ROLE to, and those it is a member of at all, inheriting or not (both empty in catalogs
    # saved before they were recorded); whether `user` inherits its roles' privileges (INHERIT).
    user_set_roles: frozenset[str] = frozenset()
    user_member_roles: frozenset[str] = frozenset()
    user_inherits: bool = True
    # Schemas `user` may create objects in (None in catalogs saved before it was recorded).
    user_create_schemas: frozenset[str] | None = None
    # Columns that may hold legacy ids without a foreign key, beside a column naming what they point at (a
    # polymorphic reference, Rails' owner_id and owner_type): (table, id column, type column).
    untyped_references: tuple[tuple[str, str, str], ...] = ()

    def table(self, name: QualifiedName) -> Table | None:
        for t in (self.legacy, self.canonical, *(d.table for d in self.dependents), *self.tables):
            if t.name == name:
                return t
        return None
