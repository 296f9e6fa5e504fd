"""Operation: a migration step as data. It renders its SQL, knows its reverse, and declares its lock."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from psycopg import sql

from pgconverge.execution.sql import text


class Lock(StrEnum):
    """The strongest table lock a step takes, in Postgres' own names."""

    NONE = "none"
    ACCESS_SHARE = "ACCESS SHARE"
    ROW_EXCLUSIVE = "ROW EXCLUSIVE"
    SHARE_UPDATE_EXCLUSIVE = "SHARE UPDATE EXCLUSIVE"
    SHARE = "SHARE"
    SHARE_ROW_EXCLUSIVE = "SHARE ROW EXCLUSIVE"
    ACCESS_EXCLUSIVE = "ACCESS EXCLUSIVE"


class Cost(StrEnum):
    """How long a step holds its lock: a catalog change, a full read, or work per row."""

    INSTANT = "instant"
    SCANS = "scans table"
    ROWS = "rows"


@dataclass(frozen=True)
class Operation:
    """Base of all operations. Subclasses are frozen dataclasses and pure (no connection)."""

    # Which execution routine runs it; "sql" sends statements() in order.
    executor: ClassVar[str] = "sql"  # may be overridden by a property
    # Whether the state "this step done, the next steps of its phase not done" keeps the old and the new
    # application code working. Every operation declares it, with the reason in its docstring (no default:
    # a new operation has to think about it). When a step fails, the runner undoes the phase's done steps
    # before it that are not safe alone (see execution/runner.py); the planner pairs such a step with what
    # makes it safe in one transaction (Together) wherever it can.
    safe_alone: ClassVar[bool]
    # Whether it only reads (a gate, a check, a ledger snapshot) or waits: a rollback has nothing of it to undo.
    reads_only: ClassVar[bool] = False

    @property
    def description(self) -> str:
        raise NotImplementedError

    @property
    def lock(self) -> Lock:
        return Lock.ACCESS_EXCLUSIVE

    @property
    def lock_target(self) -> str:
        return ""

    @property
    def cost(self) -> Cost:
        return Cost.INSTANT

    @property
    def transactional(self) -> bool:
        return True

    @property
    def all_or_nothing(self) -> bool:
        """Whether a run of it that never recorded "done" changed nothing: its statements and its "done" record commit
        in one transaction (the runner's plain SQL steps, and the policy rewrite), so a run that failed or was killed
        before that COMMIT left nothing behind for a rollback to undo. Not so for what runs in several transactions or
        none (a batched fill, a concurrent index build or drop): a run stopped part way may have made part of its
        change."""
        return self.transactional and self.executor in ("sql", "policies")

    def statements(self) -> list[sql.Composable]:
        raise NotImplementedError

    def probe(self) -> sql.Composable | None:
        """A query returning one boolean: true when the effect is already in place (resume after a crash)."""
        return None

    def reverse(self) -> Operation | None:
        """The operation that undoes this one, or None when there is nothing to undo."""
        return None

    def saved(self) -> list[tuple[str, str, str]]:
        """Definitions to keep in the ledger when this runs, as (kind, name, original text)."""
        return []

    def drops(self) -> tuple[sql.Composable, ...]:
        """The catalog objects this drops, as queries of operations/objects.py: before a rollback's first change,
        nothing of the user's may depend on them (execution/prechecks.py)."""
        return ()

    def moves(self) -> tuple[sql.Composable, ...]:
        """The tables this puts under another name, as objects.moved rows: later steps find them by that name."""
        return ()

    def redefines(self) -> tuple[sql.Composable, ...]:
        """The objects (policies, functions) whose definition this replaces whole, in the same form: what they
        depended on through the definition they have now stops mattering."""
        return ()

    def makes_legacy_rows(self) -> tuple:
        """Where this step calls the reverse alignment (legacy_for_canonical), as planning/align.py ReverseAligned
        rows: a rollback checks, before its first change, that the legacy table takes the rows it would make
        (execution/prechecks.py)."""
        return ()

    def sql_text(self) -> list[str]:
        return [text(s) for s in self.statements()]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(type(self).__name__.encode())
        for s in self.sql_text():
            h.update(b"\0" + s.encode())
        return h.hexdigest()[:16]


def committed(state) -> bool:
    """Whether a step's change is in force by its ledger STATE (a StepState): done, or started again while an earlier
    run's done stands (the policy rewrite, recorded done before its check, runs again when the check never finished)."""
    return state.state == "done" or state.state == "pending" and state.earlier_done


@dataclass(frozen=True)
class Step:
    """One operation placed in a phase, with a stable id the ledger keys on."""

    id: str
    phase: str
    op: Operation
    reverts: tuple[str, ...] = ()  # rollback steps: the forward steps this one undoes
    when: tuple[str, ...] | None = None  # rollback steps: run only if one of these is done (default: reverts)
    # Rollback steps: the forward steps of `reverts` whose change this step's operation is the reverse of, where
    # each commits together with its "done" record (a failed or killed run of one changed nothing); None when not
    # known. The others of `reverts` (a gate, a snapshot) changed nothing this operation would undo.
    undoes: tuple[str, ...] | None = None
    # Rollback steps: those of `needs` whose operation changes something and is all or nothing (see
    # Operation.all_or_nothing): one started and never done changed nothing, so it calls for no undo.
    atomic: tuple[str, ...] = ()
    # Rollback steps: those of `needs` and `reverts` that leave nothing behind unless done (all or nothing, or only
    # reading): one still started and never done when the rollback ends is recorded undone (Runner._rollback_steps).
    leave_nothing: tuple[str, ...] = ()

    @property
    def needs(self) -> tuple[str, ...]:
        return self.reverts if self.when is None else self.when

    def live(self, states: dict) -> list[str]:
        """Those of `needs` whose change may be in place, by the ledger's STATES: done, or started and never done
        (killed or failed part way), unless it runs in one transaction (`atomic`) and no earlier run's change of it
        is still in force (the policy rewrite run again after a run that never proved it)."""
        return [r for r in self.needs if states.get(r) is not None and (
            committed(states[r]) or states[r].state == "pending" and r not in self.atomic)]

    def never_committed(self, states: dict) -> list[str]:
        """Those of `needs` that started and never committed anything: of one transaction, never done."""
        return [r for r in self.needs if r in self.atomic and states.get(r) is not None
                and states[r].state == "pending" and not committed(states[r])]

    def nothing_to_undo(self, states: dict) -> bool:
        """Whether this rollback step would undo what never happened, by the ledger's STATES: no forward step whose
        change it undoes is in force (one that failed or was killed before its COMMIT left nothing behind). It is then
        recorded, marking the steps it reverts undone, without running: its operation would restore, say, a helper
        the switch never changed, and fail where the role may not change it, or add a foreign key contract never
        dropped."""
        if self.undoes is not None:
            return not any(states.get(r) is not None and committed(states[r]) for r in self.undoes)
        return not self.live(states) and bool(self.never_committed(states))

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "phase": self.phase,
            "operation": type(self.op).__name__,
            "description": self.op.description,
            "lock": str(self.op.lock),
            "lock_target": self.op.lock_target,
            "cost": str(self.op.cost),
            "transactional": self.op.transactional,
            "sql": self.op.sql_text(),
            "reverse": type(self.op.reverse()).__name__ if self.op.reverse() else None,
            "fingerprint": self.op.fingerprint(),
            **({"reverts": list(self.reverts)} if self.reverts else {}),
        }


PHASES = ("align", "expand", "switch", "contract")


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]

    def phase(self, name: str) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.phase == name)

    def as_dict(self, phase: str | None = None) -> dict:
        steps = self.phase(phase) if phase else self.steps
        return {"phases": [p for p in PHASES if any(s.phase == p for s in steps)],
                "steps": [s.as_dict() for s in steps]}
