"""References: one foreign-key column pointing at the legacy key, the planner's unit (DESIGN, "Generality").

A table with `buyer_id` and `seller_id` has two references; a partitioned table has one per foreign key
declared on it, however many partitions carry a copy. Everything expand creates for a reference is named
from it.

The new column of a reference (README, "Configuration"):

1. `migration.new_columns["schema.table.column"]` when the configuration names the reference;
2. else, on a table with one reference: `migration.new_column` (`profile_id`), whatever the legacy column
   is called;
3. else, on a table with several: `migration.new_column` for the reference whose column is the mapping's
   legacy column name (`customer_id`), and `<stem>_<new_column>` for every other one, where the stem is
   the column without a trailing `_<mapping legacy column>` or `_id` (`buyer_customer_id` and `buyer_id`
   both give `buyer_profile_id`), or the whole column name when it has neither (`buyer` →
   `buyer_profile_id`).

A derived name longer than 63 bytes, two references of one table given the same name, or an override
naming no reference is refused at `plan`, naming the reference and the `new_columns` entry that fixes it.
"""

from __future__ import annotations

import re

from psycopg import sql

from pgconverge.catalog.model import Catalog, Dependent, Table
from pgconverge.config import MAX_IDENTIFIER_BYTES, QualifiedName, Spec
from pgconverge.errors import CatalogError
from pgconverge.execution.sql import ident


def key(d: Dependent) -> tuple[QualifiedName, str]:
    """What identifies a reference: its table and its legacy column."""
    return d.table.name, d.fk.columns[0]


def siblings(cat: Catalog, d: Dependent) -> list[Dependent]:
    """Every reference on D's table, D included, in catalog order."""
    return [x for x in cat.dependents if x.table.name == d.table.name]


def several(cat: Catalog, d: Dependent) -> bool:
    return len(siblings(cat, d)) > 1


def show_column(table: QualifiedName, column: str) -> str:
    """schema.table.column as the configuration's new_columns keys spell it (quoted where needed)."""
    plain = column.isidentifier() and column == column.lower() and column.isascii()
    return f"{table}." + (column if plain else '"' + column.replace('"', '""') + '"')


def derived_column(spec: Spec, legacy_column: str, alone: bool) -> str:
    """The rule's name for a reference whose column is LEGACY_COLUMN (ALONE: its table has no other)."""
    new = spec.migration.new_column
    if alone or legacy_column == spec.mapping_legacy_column:
        return new
    for suffix in (f"_{spec.mapping_legacy_column}", "_id"):
        if legacy_column.endswith(suffix) and len(legacy_column) > len(suffix):
            return f"{legacy_column[:-len(suffix)]}_{new}"
    return f"{legacy_column}_{new}"


def new_column(spec: Spec, cat: Catalog, d: Dependent) -> str:
    """The column expand adds for reference D (see the module's rule)."""
    override = dict(spec.migration.new_columns).get((d.table.name.schema, d.table.name.name, d.fk.columns[0]))
    return override or derived_column(spec, d.fk.columns[0], not several(cat, d))


def new_columns(spec: Spec, cat: Catalog) -> dict[tuple[QualifiedName, str], str]:
    """(table, legacy column) → new column, for every reference."""
    return {key(d): new_column(spec, cat, d) for d in cat.dependents}


def label(cat: Catalog, d: Dependent) -> str:
    """How snapshots (linkage, kept legacy ids) name the reference's rows: the table, plus the column when the
    table has several references."""
    return show_column(d.table.name, d.fk.columns[0]) if several(cat, d) else str(d.table.name)


def row_key(table: Table, partitioned: bool = False) -> tuple[str, ...] | None:
    """The columns that identify a row for snapshots: a single-column key, else the primary key, else a
    unique key of NOT NULL columns; None when there is none (rows are then named by their ctid)."""
    if len(table.primary_key) == 1:
        return table.primary_key
    for uk in table.unique_keys:
        if len(uk) == 1 and table.column(uk[0]) is not None and table.column(uk[0]).not_null:
            return uk
    if table.primary_key:
        return table.primary_key
    for uk in table.unique_keys:
        if all(table.column(c) is not None and table.column(c).not_null for c in uk):
            return uk
    return None


def row_id(d: Dependent, alias: str = "d", owners: dict[str, sql.Composable] | None = None) -> sql.Composable:
    """A text naming one row of D's table, the same whichever partition of it is read (see row_key).

    OWNERS: key columns that are legacy columns (a join table's primary key), each read as the text of its
    owner in canonical ids instead, so that the row keeps its name once contract has dropped the column."""
    assert alias.isidentifier() and alias == alias.lower(), alias  # our own aliases only: written as they are
    owners = owners or {}
    cols = row_key(d.table)
    if cols is None:
        if d.partitioned:  # a ctid is only unique within one partition
            return sql.SQL(f"({alias}.tableoid::regclass::text || {alias}.ctid::text)")
        return sql.SQL(f"{alias}.ctid::text")
    if len(cols) == 1:
        return owners[cols[0]] if cols[0] in owners else sql.SQL(f"{alias}.{{}}::text").format(ident(cols[0]))
    return sql.SQL("row({})::text").format(sql.SQL(", ").join(
        owners[c] if c in owners else sql.SQL(f"{alias}.{{}}").format(ident(c)) for c in cols))


# -- refusals -------------------------------------------------------------------------------------


def refusals(spec: Spec, cat: Catalog) -> list[tuple[str, str, str]]:
    """Every reference shape expand cannot handle, as (object, problem, fix); empty when there is none."""
    from pgconverge.planning.index_mirror import contains_column

    out: list[tuple[str, str, str]] = []
    refs = {(d.table.name.schema, d.table.name.name, d.fk.columns[0]) for d in cat.dependents}
    listed = ", ".join(sorted(show_column(d.table.name, d.fk.columns[0]) for d in cat.dependents))
    for (schema, table, column), name in spec.migration.new_columns:
        if (schema, table, column) not in refs:
            out.append((f"migration.new_columns entry {show_column(QualifiedName(schema, table), column)!r}",
                        f"names no foreign key to {cat.legacy.name}({spec.legacy.key})",
                        f"key migration.new_columns by one of: {listed}"))
    by_table: dict[QualifiedName, list[Dependent]] = {}
    for d in cat.dependents:
        by_table.setdefault(d.table.name, []).append(d)
    for table, deps in by_table.items():
        names: dict[str, list[str]] = {}
        for d in deps:
            new = new_column(spec, cat, d)
            where = show_column(table, d.fk.columns[0])
            names.setdefault(new, []).append(where)
            if len(new.encode()) > MAX_IDENTIFIER_BYTES:
                out.append((f"reference {where}", f"its new column {new!r} would be longer than "
                            f"{MAX_IDENTIFIER_BYTES} bytes",
                            f'name it in pgconverge.toml: [migration] new_columns = {{ "{where}" = "…" }}'))
            if new in {x.fk.columns[0] for x in deps}:
                out.append((f"reference {where}", f"its new column {new!r} is the name of a legacy column of {table}",
                            f'name it otherwise: [migration] new_columns = {{ "{where}" = "…" }}'))
        for new, wheres in names.items():
            if len(wheres) > 1:
                out.append((f"references {' and '.join(wheres)}", f"would all get the new column {new!r}",
                            "give each its own name in pgconverge.toml: [migration] new_columns = { "
                            + ", ".join(f'"{w}" = "…"' for w in wheres) + " }"))
    for d in cat.dependents:
        col = d.fk.columns[0]
        where = f"foreign key {d.fk.name} on {d.table.name}"
        if d.column.refuses_null:
            c = show_column(d.table.name, col)[len(str(d.table.name)) + 1:]
            out.append((f"column {show_column(d.table.name, col)}", f"is of the domain {d.column.type}, which refuses "
                        f"NULL: Postgres refuses a row that leaves the column out before a trigger could fill it, so "
                        f"new code writing {new_column(spec, cat, d)} alone would fail from the switch on",
                        f"give {show_column(d.table.name, col)} the type underneath, and the domain's rules as the "
                        f"column's own (ALTER TABLE {d.table.name} ALTER COLUMN {c} TYPE {d.column.base_type}, "
                        f"ALTER COLUMN {c} SET NOT NULL; a CHECK for any other rule of the domain)"))
        if d.partition_of is not None:
            out.append((where, f"is declared on that partition alone, not on the partitioned table "
                        f"{d.partition_of}: a partition cannot have a column its parent lacks",
                        f"declare the foreign key on {d.partition_of} (ALTER TABLE {d.partition_of} ADD FOREIGN KEY "
                        f"({col}) REFERENCES {cat.legacy.name} ({spec.legacy.key})) and drop {d.fk.name}"))
        if d.inherited_by:
            out.append((f"table {d.table.name}", f"has inheritance children ({', '.join(map(str, d.inherited_by))}): "
                        "rows read through it live in tables its triggers and constraints do not cover",
                        "convert it to declarative partitioning (pgconverge migrates partitioned tables), or "
                        "migrate these tables by hand"))
        if col in d.inherited_columns:
            out.append((f"table {d.table.name}", f"inherits {col} from {d.inherits_from} (INHERITS): contract could "
                        "not drop an inherited column, and rows read through the parent are not the child's own",
                        f"make {col} the child's own (ALTER TABLE {d.table.name} NO INHERIT …) or convert the "
                        "tables to declarative partitioning (pgconverge migrates partitioned tables), or migrate "
                        "these tables by hand"))
        if not d.partitioned:
            continue
        if cat.server_version and cat.server_version < 130000:
            out.append((f"table {d.table.name}", f"is partitioned, and PostgreSQL {cat.server_version // 10000} has "
                        "no row triggers on partitioned tables (13 has)", "upgrade the server to PostgreSQL 13 or later"))
        if col in d.partition_columns or re.search(rf"\b{re.escape(col)}\b", d.partition_key):
            out.append((f"table {d.table.name}", f"is partitioned by {d.partition_key}, which contains the legacy "
                        f"column {col}: contract could not drop it", "re-partition the table by another key first"))
        for p in d.partitions:
            for idx in p.table.indexes:
                if idx.primary or idx.name.name in dict(p.index_parents) or not contains_column(idx, col):
                    continue
                out.append((f"index {idx.name} on the partition {p.table.name}", f"contains {col} but belongs to no "
                            f"index of {d.table.name}: expand would not mirror it", f"create it on {d.table.name} "
                            "instead (it then covers every partition), or drop it"))
    return out


def check(spec: Spec, cat: Catalog) -> None:
    """Raise one CatalogError naming every reference shape expand cannot handle."""
    problems = refusals(spec, cat)
    if problems:
        raise CatalogError("expand cannot re-point these references: " + "; ".join(f"{o} {p}" for o, p, _ in problems),
                           fix=" / ".join(dict.fromkeys(f for _, _, f in problems)))
