"""Replace a function's definition; the reverse restores the original text (or drops a new function)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from psycopg import sql

from pgconverge.config import QualifiedName
from pgconverge.connection import OWN_APPLICATION_NAMES
from pgconverge.execution.sql import qn
from pgconverge.operations import objects
from pgconverge.operations.base import Lock, Operation


@dataclass(frozen=True)
class ReplaceFunction(Operation):
    """Safe alone: each replacement keeps the function's answers for every caller that exists at that point: the
    bridged legacy helper answers old tokens as before and maps new ones, the canonical helper is called by no
    policy until the policy rewrite, and the retired-helper stub is installed only once contract's checks found no
    caller."""

    safe_alone: ClassVar[bool] = True

    name: QualifiedName
    arg_types: str
    definition: str  # a complete CREATE OR REPLACE FUNCTION statement
    original: str | None  # pg_get_functiondef before the change; None when the function is new
    # Roles that get EXECUTE (as the function it is modelled on grants it); None leaves grants alone.
    execute_for: tuple[str, ...] | None = None
    why: str = ""

    @property
    def description(self) -> str:
        verb = "replace" if self.original else "create"
        return f"{verb} function {self.name}({self.arg_types})" + (f": {self.why}" if self.why else "")

    @property
    def lock(self) -> Lock:
        return Lock.NONE

    def statements(self) -> list[sql.Composable]:
        # The definition is catalog text or pglast output, spliced verbatim.
        out: list[sql.Composable] = [sql.SQL(self.definition)]
        if self.execute_for is not None:
            fn = sql.SQL("{}({})").format(qn(self.name), sql.SQL(self.arg_types))
            out.append(sql.SQL("revoke all on function {} from public").format(fn))
            for role in self.execute_for:
                grantee = sql.SQL("public") if role == "PUBLIC" else sql.Identifier(role)
                out.append(sql.SQL("grant execute on function {} to {}").format(fn, grantee))
        return out

    def saved(self) -> list[tuple[str, str, str]]:
        return [("function", f"{self.name}({self.arg_types})", self.original)] if self.original else []

    def redefines(self) -> tuple[sql.Composable, ...]:
        return (objects.function(self.name, self.arg_types),)

    def reverse(self) -> Operation:
        if self.original is None:
            from pgconverge.operations.create_function import DropFunction

            return DropFunction(self.name, self.arg_types)
        return ReplaceFunction(self.name, self.arg_types, self.original, None, why="restore the original definition")



SETTLE_SECONDS = 20  # within the DDL statement timeout (execution/session.py)


@dataclass(frozen=True)
class MakeDefiner(Operation):
    """Safe alone: the function keeps its body and answers the same as its owner (a body that tells callers apart
    by their role is refused before this is planned: planning/rls_helper.py), with search_path pinned to nothing
    unless it sets its own (the derived bodies qualify every name; no caller's search_path may reach a function
    that runs as its owner). It exists so that the body can later be replaced by one that needs the owner's rights
    once SettleCalls has waited for the statements calling it the old way."""

    safe_alone: ClassVar[bool] = True

    name: QualifiedName
    arg_types: str
    original: str  # pg_get_functiondef before the change
    pin_search_path: bool = True
    why: str = ""

    @property
    def description(self) -> str:
        return f"make function {self.name}({self.arg_types}) SECURITY DEFINER, body unchanged" + (
            f": {self.why}" if self.why else "")

    @property
    def lock(self) -> Lock:
        return Lock.NONE

    def statements(self) -> list[sql.Composable]:
        return [sql.SQL("alter function {}({}) security definer{}").format(
            qn(self.name), sql.SQL(self.arg_types), sql.SQL(" set search_path = ''" if self.pin_search_path else ""))]

    def redefines(self) -> tuple[sql.Composable, ...]:
        return (objects.function(self.name, self.arg_types),)

    def reverse(self) -> Operation:
        return ReplaceFunction(self.name, self.arg_types, self.original, None, why="restore the original definition")


@dataclass(frozen=True)
class SettleCalls(Operation):
    """Safe alone: it changes nothing; it waits until every application transaction open when it began has ended.

    Postgres decides how a statement calls a function (through the SECURITY DEFINER wrapper or not) when it builds
    the call, at the statement's start, and reads the wrapper's owner and settings at the first call; PL/pgSQL (and
    SQL functions from Postgres 18) compile whatever body the catalog holds at each call. A statement begun while a
    function was SECURITY INVOKER, calling it after a body that reads what only the owner may read committed, would
    run that body as its caller and fail. So MakeDefiner first makes the function a definer on its old body; this
    waits for the transactions that may still call it the old way (each built call lives no longer than its
    transaction); after it, the body may change. Transactions are found by the virtual transaction id each one
    holds (pg_locks: readable by any role, unlike other sessions' pg_stat_activity rows); pgconverge's own sessions,
    and processes with no user (autovacuum), are not waited for. After SECONDS it gives up, naming them.

    Sessions on a hot standby are not seen from here: a read replica serving the API may still run a statement the
    old way (README, switch)."""

    safe_alone: ClassVar[bool] = True
    reads_only: ClassVar[bool] = True  # waits only

    functions: tuple[tuple[QualifiedName, str], ...]  # (name, argument types)
    seconds: int = SETTLE_SECONDS
    # What the functions became, and what a transaction open since before would do: the wait's description and its
    # message when it gives up. Empty: made SECURITY DEFINER (MakeDefiner), as above.
    became: str = ""
    risk: str = ""

    @property
    def description(self) -> str:
        fns = ", ".join(f"{n}({a})" for n, a in self.functions)
        if self.became:
            return f"wait for the transactions open before {fns} {self.became} to end (at most {self.seconds} s)"
        return (f"wait for the transactions that may call {fns} the "
                f"way it was before it became SECURITY DEFINER to end (at most {self.seconds} s)")

    @property
    def lock(self) -> Lock:
        return Lock.NONE

    def statements(self) -> list[sql.Composable]:
        fns = sql.SQL(", ").join(sql.Literal(f"{n}({a})") for n, a in self.functions)
        own = sql.SQL(", ").join(sql.Literal(a) for a in OWN_APPLICATION_NAMES)
        return [sql.SQL("""do $pgc$
declare
  fns constant text[] := array[{fns}];
  bad text;
  open text[];
  left_open text;
  deadline constant timestamptz := pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => {secs});
begin
  -- Made a definer by an earlier, committed transaction: waiting in the one that did it would prove nothing.
  select pg_catalog.string_agg(f, ', ') into bad from pg_catalog.unnest(fns) f
   where not coalesce((select p.prosecdef and pg_catalog.age(p.xmin) > 0 from pg_catalog.pg_proc p
                        where p.oid = pg_catalog.to_regprocedure(f)), false);
  if bad is not null then
    raise exception using errcode = 'object_not_in_prerequisite_state', message = pg_catalog.format(
      '%s must be SECURITY DEFINER, made so by an earlier transaction, before this waits for its callers: apply '
      'the previous step (or migration file) on its own first', bad);
  end if;
  perform pg_catalog.pg_stat_clear_snapshot();
  select pg_catalog.array_agg(l.virtualxid) into open
    from pg_catalog.pg_locks l join pg_catalog.pg_stat_activity a on a.pid = l.pid
   where l.locktype = 'virtualxid' and l.mode = 'ExclusiveLock' and l.granted
     and l.pid <> pg_catalog.pg_backend_pid() and a.usesysid is not null
     and a.datid = (select d.oid from pg_catalog.pg_database d where d.datname = pg_catalog.current_database())
     and coalesce(a.application_name, '') not like all (array[{own}]);
  loop
    select pg_catalog.array_agg(v) into open from pg_catalog.unnest(open) v
     where exists (select from pg_catalog.pg_locks l where l.locktype = 'virtualxid' and l.virtualxid = v
                   and l.granted);
    exit when open is null;
    if pg_catalog.clock_timestamp() > deadline then
      perform pg_catalog.pg_stat_clear_snapshot();
      select pg_catalog.string_agg(pg_catalog.format('pid %s (%s%s)', a.pid,
               coalesce(nullif(a.application_name, ''), 'no application_name'),
               coalesce(', transaction open since ' || a.xact_start::timestamptz(0)::text, '')), ', ')
        into left_open
        from pg_catalog.pg_locks l join pg_catalog.pg_stat_activity a on a.pid = l.pid
       where l.locktype = 'virtualxid' and l.granted and l.virtualxid = any (open);
      raise exception using errcode = 'object_in_use', message = pg_catalog.format(
        {message}
        pg_catalog.array_to_string(fns, ', '), {secs}, left_open);
    end if;
    perform pg_catalog.pg_sleep(0.1);
  end loop;
end $pgc$""").format(fns=fns, secs=sql.Literal(self.seconds), own=own, message=self._message())]

    def _message(self) -> sql.Composable:
        if not self.became:
            return sql.SQL("""'%s became SECURITY DEFINER, but transactions open since before then have not ended in %s s: %s. A '
        'statement of theirs would run its new body as its caller and fail. Let them finish (or end them with '
        'pg_terminate_backend), then run the phase (or apply this file) again: it resumes here.',""")
        return sql.SQL("{},").format(sql.Literal(
            f"%s {self.became}, but transactions open since before then have not ended in %s s: %s. {self.risk} Let "
            "them finish (or end them with pg_terminate_backend), then run the command again: it resumes here."))
