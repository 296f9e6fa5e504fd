"""Compare the SQL phone key with the phonenumbers library on every distinct legacy number."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.config import QualifiedName
from pgconverge.execution.sql import ident, qn
from pgconverge.operations.base import Lock, Operation

AUDIT_LIMIT = 500_000  # distinct numbers; beyond that a sample in key order


@dataclass(frozen=True)
class PhoneAudit(Operation):
    """Safe alone: reads only."""

    safe_alone: ClassVar[bool] = True

    table: QualifiedName
    column: str
    schema: str
    region: str

    executor: ClassVar[str] = "phone_audit"

    @property
    def description(self) -> str:
        return (f"audit {self.schema}.normalize_phone against the phonenumbers library on every distinct "
                f"{self.table}.{self.column} (the run report lists each disagreement)")

    @property
    def lock(self) -> Lock:
        return Lock.ACCESS_SHARE

    def statements(self) -> list[sql.Composable]:
        return [sql.SQL("select distinct {c} from {t} where {c} is not null limit {n}").format(
            c=ident(self.column), t=qn(self.table), n=sql.Literal(AUDIT_LIMIT))]
