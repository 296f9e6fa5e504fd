"""Attach a row trigger; its reverse drops it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.config import QualifiedName
from pgconverge.execution.sql import qn
from pgconverge.operations import objects
from pgconverge.operations.base import Lock, Operation


@dataclass(frozen=True)
class CreateTrigger(Operation):
    """Safe alone: its function exists (an earlier step, or the same one) and decides every row without raising,
    except the documented rejection of a row whose two ids disagree."""

    safe_alone: ClassVar[bool] = True

    name: str
    table: QualifiedName
    timing_events: sql.Composable  # e.g. "after insert or update of wa_id"
    function: QualifiedName
    why: str = ""
    when: sql.Composable | None = None
    # A constraint trigger, DEFERRABLE INITIALLY DEFERRED: an AFTER row trigger whose calls wait for the commit
    # (its WHEN is still judged when the row is written, so only rows it holds true for are queued).
    deferred: bool = False

    @property
    def description(self) -> str:
        kind = "constraint trigger (deferred to commit)" if self.deferred else "trigger"
        return f"create {kind} {self.name} on {self.table}" + (f": {self.why}" if self.why else "")

    @property
    def lock(self) -> Lock:
        # SHARE ROW EXCLUSIVE waits for in-flight writers, so no row slips in between "before" and "after".
        return Lock.SHARE_ROW_EXCLUSIVE

    @property
    def lock_target(self) -> str:
        return str(self.table)

    def statements(self) -> list[sql.Composable]:
        return [
            sql.SQL("drop trigger if exists {n} on {t}").format(n=sql.Identifier(self.name), t=qn(self.table)),
            sql.SQL("create {k}trigger {n} {te} on {t} {d}for each row {w}execute function {f}()").format(
                n=sql.Identifier(self.name), te=self.timing_events, t=qn(self.table), f=qn(self.function),
                k=sql.SQL("constraint " if self.deferred else ""),
                d=sql.SQL("deferrable initially deferred " if self.deferred else ""),
                w=sql.SQL("when ({}) ").format(self.when) if self.when is not None else sql.SQL("")),
        ]

    def reverse(self) -> Operation:
        return DropTrigger(self.name, self.table)


@dataclass(frozen=True)
class DropTrigger(Operation):
    """Safe alone: writes go on without it; what it filled is filled by the backfill or no longer needed by then."""

    safe_alone: ClassVar[bool] = True

    name: str
    table: QualifiedName

    @property
    def description(self) -> str:
        return f"drop trigger {self.name} on {self.table}"

    @property
    def lock_target(self) -> str:
        return str(self.table)

    def statements(self) -> list[sql.Composable]:
        return [sql.SQL("drop trigger if exists {} on {}").format(sql.Identifier(self.name), qn(self.table))]

    def drops(self) -> tuple[sql.Composable, ...]:
        return (objects.trigger(self.table, self.name),)
