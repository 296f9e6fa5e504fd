"""Batched work as SQL: one procedure that loops over batches with COMMIT between them, and its CALLs."""

from __future__ import annotations

from psycopg import sql

from pgconverge.config import QualifiedName, Spec
from pgconverge.execution.sql import body, qn, text
from pgconverge.operations.batched import Batched

PROCEDURE = "run_batches"


def procedure_name(spec: Spec) -> QualifiedName:
    return QualifiedName(spec.migration.private_schema, PROCEDURE)


def create_procedure(spec: Spec) -> list[sql.Composable]:
    """CREATE OR REPLACE PROCEDURE running a batch statement until it reports an empty batch.

    The statement takes $1 (the last key done, as text, NULL at the start), $2 (the last key to
    visit, NULL for no bound) and $3 (the batch size), and returns (rows scanned, last key, rows
    changed), as the runner's batched operations do. Each batch is committed before the next one
    starts, so no transaction holds row locks for more than one batch. Transaction control is only
    allowed in a procedure without SET clauses and not SECURITY DEFINER, so every name inside the
    statement is schema-qualified instead.
    """
    name = procedure_name(spec)
    code = sql.SQL("""
declare
  after text;
  upper text;
  scanned bigint;
  last_key text;
  changed bigint;
  rows_done bigint := 0;
  rows_changed bigint := 0;
  i integer;
begin
  if upper_query is not null then
    execute upper_query into upper;  -- read once: rows added later are the triggers' job
  end if;
  loop
    for i in 1 .. coalesce(pg_catalog.array_length(setting_names, 1), 0) loop
      perform pg_catalog.set_config(setting_names[i], setting_values[i], true);
    end loop;
    execute batch into scanned, last_key, changed using after, upper, batch_size;
    exit when coalesce(scanned, 0) = 0;
    after := last_key;
    rows_done := rows_done + scanned;
    rows_changed := rows_changed + coalesce(changed, 0);
    commit;
    raise notice '%: % rows visited, % changed', what, rows_done, rows_changed;
    if pause_ms > 0 then
      perform pg_catalog.pg_sleep(pause_ms / 1000.0);
    end if;
  end loop;
  raise notice '%: done, % rows visited, % changed', what, rows_done, rows_changed;
end""")
    return [
        sql.SQL("create or replace procedure {p}(what text, batch text, upper_query text, batch_size integer, "
                "setting_names text[] default '{{}}', setting_values text[] default '{{}}', pause_ms integer "
                "default 0) language plpgsql as {b}").format(p=qn(name), b=body(code)),
        sql.SQL("revoke all on procedure {}(text, text, text, integer, text[], text[], integer) from public"
                ).format(qn(name)),
    ]


def positional(stmt: sql.Composable) -> str:
    """The batch statement with the runner's named parameters turned into $1, $2, $3 for EXECUTE … USING."""
    s = text(stmt)
    for name, n in (("after", 1), ("upper", 2), ("n", 3)):
        s = s.replace(f"%({name})s", f"${n}")
    return s.replace("%%", "%")


def call(spec: Spec, op: Batched) -> sql.Composable:
    """CALL of the batch procedure for one batched operation."""
    names = [n for n, _ in op.settings]
    values = [v for _, v in op.settings]
    return sql.SQL("call {p}({what}, {batch}, {upper}, {n}, {names}::text[], {values}::text[], {pause})").format(
        p=qn(procedure_name(spec)), what=sql.Literal(op.what), batch=_dollar(positional(op.batch)),
        upper=_dollar(text(op.upper_bound)) if op.upper_bound is not None else sql.SQL("null"),
        n=sql.Literal(op.batch_size), names=sql.Literal(names), values=sql.Literal(values),
        pause=sql.Literal(spec.migration.batch_pause_ms))


def sweep_call(spec: Spec, op: Batched) -> sql.Composable:
    """CALL of the batch procedure for the sweep after a walk by pages (planning/expand.py sweep_batch): no
    position, each batch reads the whole table for the rows still missed, until one finds none."""
    return sql.SQL("call {p}({what}, {batch}, null, {n}, {names}::text[], {values}::text[], {pause})").format(
        p=qn(procedure_name(spec)), what=sql.Literal(f"{op.what}: sweep"), batch=_dollar(positional(op.sweep)),
        n=sql.Literal(op.batch_size), names=sql.Literal([n for n, _ in op.settings]),
        values=sql.Literal([v for _, v in op.settings]), pause=sql.Literal(spec.migration.batch_pause_ms))


def _dollar(code: str) -> sql.SQL:
    tag, n = "$b$", 0
    while tag in code:
        n += 1
        tag = f"$b{n}$"
    return sql.SQL(tag + code + tag)
