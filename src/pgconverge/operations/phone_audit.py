"""Compare the SQL phone key with the phonenumbers library on every distinct legacy number."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.config import QualifiedName
from pgconverge.execution.sql import ident, qn
from pgconverge.identity.phone import FUNCTION_NAME
from pgconverge.operations.base import Lock, Operation


@dataclass(frozen=True)
class PhoneAudit(Operation):
    """Safe alone: reads only."""

    safe_alone: ClassVar[bool] = True

    table: QualifiedName
    column: str
    schema: str
    region: str
    # The step after which it may start (the one creating the function it audits): the runner then runs it
    # beside the steps in between (execution/background.py).
    after: str = ""

    executor: ClassVar[str] = "phone_audit"

    @property
    def description(self) -> str:
        return (f"audit {self.schema}.normalize_phone against the phonenumbers library on every distinct "
                f"{self.table}.{self.column} (the run report lists each disagreement)")

    @property
    def lock(self) -> Lock:
        return Lock.ACCESS_SHARE

    def statements(self) -> list[sql.Composable]:
        # Every distinct number with its SQL key: read through a cursor, a chunk at a time (see the runner).
        return [sql.SQL("select v, {s}.{f}(v) from (select distinct {c}::text as v from {t} where {c} is not null) x"
                        ).format(c=ident(self.column), t=qn(self.table), s=ident(self.schema), f=ident(FUNCTION_NAME))]
