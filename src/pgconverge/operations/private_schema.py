"""Create the private schema and ledger, closed to PUBLIC and the API roles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.config import Spec
from pgconverge.ledger import schema as ledger_schema
from pgconverge.operations.base import Lock, Operation


@dataclass(frozen=True)
class CreatePrivateSchema(Operation):
    """Safe alone: a schema closed to the API roles."""

    safe_alone: ClassVar[bool] = True

    spec: Spec
    roles: frozenset[str]

    @property
    def description(self) -> str:
        return (f"create schema {self.spec.migration.private_schema} (ledger) with no privileges for PUBLIC or "
                f"{', '.join(r for r in self.spec.migration.api_roles if r in self.roles)}")

    @property
    def lock(self) -> Lock:
        return Lock.NONE

    def statements(self) -> list[sql.Composable]:
        return ledger_schema.statements(self.spec, self.roles)
