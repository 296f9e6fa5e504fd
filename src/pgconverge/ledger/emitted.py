"""Ledger records written by emitted migration files, as SQL the files carry.

A file applied with psql or `supabase db push` has no runner to write the ledger, so it writes the
same rows the runner would, in SQL: a `runs` row naming the file, `start` and `done` events with each
step's fingerprint (and `reverted` events for the forward steps a rollback step undoes), the snapshots
a step records, and the catalog a phase is planned from, saved by the first file of that phase (the
catalog is known when the files are written, so it travels in the file as JSON). Then `pgconverge
status`, `plan`, `verify` and `run` read a database migrated by files as one migrated by `run`, and
a team can mix the two.

Everything is one DO block per point in a file: inside a transactional file the block runs in the
file's transaction, so the step and its record commit together or not at all; a file whose statement
cannot run in a transaction (CREATE INDEX CONCURRENTLY, a batched CALL) records `start` before that
statement and `done` right after it, each a statement of its own. Applying a file again only appends
rows: the ledger keeps the latest event per step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from pgconverge.config import Spec
from pgconverge.execution.sql import text

# The name the runner saves a phase's catalog under (catalog/baseline.py).
CATALOG_SNAPSHOT = "catalog_before_{}"


@dataclass(frozen=True)
class Record:
    """One step a file records: its `start` and/or `done` event, and what goes with it."""

    phase: str
    step: str
    fingerprint: str | None
    start: bool = True
    done: bool = True
    reverts: tuple[str, ...] = ()  # forward steps this (rollback) step undoes: `reverted` events with its done
    detail: dict | None = None  # on the done event
    snapshot: tuple[str, str] | None = None  # (snapshot name, SQL expression of its jsonb value), with done
    requires: tuple[str, ...] = ()  # recorded only when the ledger has these steps done (this one stands for them)


@dataclass
class Block:
    """What one DO block writes: a run row (or the file's run from its start block), events, snapshots."""

    source: str  # the file's name: runs.client, and how a done block finds its start block's run
    command: str  # runs.command
    records: list[Record] = field(default_factory=list)
    catalogs: list[tuple[str, Any]] = field(default_factory=list)  # (phase, catalog JSON) saved before anything
    discard: list[str] = field(default_factory=list)  # phases whose saved catalog a rollback discards
    events: str = "both"  # "start": start events only; "done": done events only; "both": start then done


def _lit(v: Any) -> str:
    return text(sql.Literal(v))


def _jsonb(v: Any) -> str:
    return _lit(json.dumps(v, separators=(",", ":"), sort_keys=True)) + "::jsonb"


def snapshot_expression(queries: list[tuple[str, str]]) -> str:
    """The jsonb object the runner stores for a Snapshot step: each label with its query's one value."""
    if not queries:
        return "'{}'::jsonb"
    return "pg_catalog.jsonb_build_object(" + ", ".join(
        f"{_lit(label)}, ({q.strip().rstrip(';')})" for label, q in queries) + ")"


def render(spec: Spec, block: Block) -> str:
    """BLOCK as one DO statement (no trailing semicolon)."""
    s = spec.migration.private_schema
    runs, events, snaps = (text(sql.Identifier(s, t)) for t in ("runs", "events", "snapshots"))
    lines = ["declare", "  run bigint;", "begin",
             # No ledger (a reverse file dropped the private schema before this): nothing to record in.
             f"  if pg_catalog.to_regclass({_lit(runs)}) is null then", "    return;", "  end if;"]
    if block.events == "done":
        # The run the file's start block opened, in this same session; a new one if it is not found.
        lines.append(f"  select max(id) into run from {runs} where client = {_lit(block.source)} "
                     "and pid = pg_catalog.pg_backend_pid();")
        lines.append("  if run is null then")
        lines.append(f"    insert into {runs} (command, client, spec) values ({_lit(block.command)}, "
                     f"{_lit(block.source)}, {_jsonb(spec.as_dict())}) returning id into run;")
        lines.append("  end if;")
    else:
        lines.append(f"  insert into {runs} (command, client, spec) values ({_lit(block.command)}, "
                     f"{_lit(block.source)}, {_jsonb(spec.as_dict())}) returning id into run;")
    for phase, cat in block.catalogs:
        lines.append(f"  insert into {snaps} (run_id, name, data) values (run, "
                     f"{_lit(CATALOG_SNAPSHOT.format(phase))}, {_jsonb(cat)});")
    for phase in block.discard:
        lines.append(f"  insert into {snaps} (run_id, name, data) values (run, "
                     f"{_lit(CATALOG_SNAPSHOT.format(phase))}, 'null'::jsonb);")

    def event(r: Record, kind: str, step: str | None = None, phase: str | None = None, message: str | None = None,
              detail: dict | None = None, fingerprint: bool = True) -> None:
        lines.append(f"  insert into {events} (run_id, phase, step, event, fingerprint, message, detail) values "
                     f"(run, {_lit(phase or r.phase)}, {_lit(step or r.step)}, {_lit(kind)}, "
                     f"{_lit(r.fingerprint if fingerprint else None)}, {_lit(message)}, "
                     f"{_jsonb(detail) if detail is not None else 'null'});")

    if block.events in ("start", "both"):
        for r in block.records:
            if r.start:
                event(r, "start", detail={"fresh": True, "file": block.source})
    if block.events in ("done", "both"):
        for r in block.records:
            if not r.done:
                continue
            if r.requires:
                latest = " and ".join(
                    f"(select e.event from {events} e where e.step = {_lit(q)} and e.event in "
                    "('start', 'done', 'reverted') order by e.id desc limit 1) is not distinct from 'done'"
                    for q in r.requires)
                lines.append(f"  if {latest} then")
            if r.snapshot:
                lines.append(f"  insert into {snaps} (run_id, name, data) values (run, {_lit(r.snapshot[0])}, "
                             f"{r.snapshot[1]});")
            event(r, "done", detail={"file": block.source, **(r.detail or {})})
            for original in r.reverts:
                event(r, "reverted", step=original, phase=original.split(".")[0], message=f"undone by {r.step}",
                      fingerprint=False, detail={"file": block.source})
            if r.requires:
                lines.append("  end if;")
    lines.append("end")
    code = "\n".join(lines)
    tag, n = "$ledger$", 0
    while tag in code:
        n += 1
        tag = f"$ledger{n}$"
    return f"do {tag}\n{code}\n{tag}"
