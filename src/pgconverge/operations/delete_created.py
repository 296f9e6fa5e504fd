"""Undo align's creations: delete the canonical rows align created, in batches, if nothing references them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.catalog.model import ForeignKey
from pgconverge.config import QualifiedName
from pgconverge.execution.sql import ident, qn
from pgconverge.operations.base import Cost, Lock
from pgconverge.operations.batched import Batched
from pgconverge.operations.check import Check


def referenced_check(canonical: QualifiedName, key: str, mapping: QualifiedName, new_column: str,
                     referencing: tuple[ForeignKey, ...]) -> Check:
    """Rows elsewhere that point at a canonical row align created: deleting it would break them."""
    parts = []
    for fk in referencing:
        if fk.ref_columns != (key,) or len(fk.columns) != 1:
            continue
        parts.append(sql.SQL(
            "select {label}, count(*)::text from {t} x where x.{c} in "
            "(select m.{mc} from {m} m where m.method = 'created') having count(*) > 0").format(
                label=sql.Literal(f"{fk.table}.{fk.columns[0]} references created {canonical} rows"),
                t=qn(fk.table), c=ident(fk.columns[0]), mc=ident(new_column), m=qn(mapping)))
    query = sql.SQL(" union all ").join(parts) if parts else sql.SQL("select null::text, null::text where false")
    return Check("created canonical rows unreferenced", query,
                 failure=f"{canonical} rows created by align are already in use",
                 fix="those rows now carry data of their own; roll back only to a later phase, or delete the "
                     "referencing rows first if they are test data")


@dataclass(frozen=True)
class DeleteCreated(Batched):
    """Delete, batch by batch, the canonical rows whose mapping says align created them.

    Safe alone: deletes, batch by batch, canonical rows only align created, after everything that pointed at them is
    undone.
    """

    safe_alone: ClassVar[bool] = True

    @property
    def cost(self) -> Cost:
        return Cost.ROWS


def delete_created(canonical: QualifiedName, canonical_key: str, mapping: QualifiedName, legacy_column: str,
                   legacy_type: str, new_column: str, batch_size: int) -> DeleteCreated:
    # Walk the mapping in legacy-key order; several legacy rows may share one created row.
    stmt = (sql.SQL(
        "b as (select m.{lc} as k, m.{mc} as v from {m} m where m.method = 'created' and "
        "(%(after)s::{ty} is null or m.{lc} > %(after)s::{ty}) order by m.{lc} limit %(n)s), "
        "d as (delete from {c} p using b where p.{ck} = b.v returning 1)").format(
            lc=ident(legacy_column), mc=ident(new_column), m=qn(mapping), ty=sql.SQL(legacy_type),
            c=qn(canonical), ck=ident(canonical_key)),
        sql.SQL("(select count(*) from b), (select b.k from b order by b.k desc limit 1), (select count(*) from d)"))
    return DeleteCreated(mapping, legacy_column, legacy_type, batch_size=batch_size,
                         what=f"delete the {canonical} rows that align created", row_lock=Lock.ROW_EXCLUSIVE, parts=stmt)
