"""Helpers shared by integration tests: invoking the CLI, checking results against the fixture's truth."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
import traceback
from pathlib import Path

import psycopg
from typer.testing import CliRunner

from pgconverge.cli import app

_runner = CliRunner()


def _failed(r, expect: int) -> str:
    tb = "".join(traceback.format_exception(r.exception)) if r.exception and r.exit_code not in (0, 2) else ""
    return f"exit {r.exit_code}, expected {expect}:\n{r.output}{tb}"


def cli(*args: str, expect: int = 0) -> str:
    """Run the CLI in-process and return its output; assert the exit code."""
    r = _runner.invoke(app, list(args))
    assert r.exit_code == expect, _failed(r, expect)
    return r.output


def cli_json(*args: str, expect: int = 0):
    r = _runner.invoke(app, [*args, "--json"])
    assert r.exit_code == expect, _failed(r, expect)
    return json.loads(r.stdout)


def write_config(tmp_path: Path, text: str) -> str:
    p = tmp_path / "pgconverge.toml"
    p.write_text(text)
    return str(p)


# A config for small hand-made schemas: contract may follow at once, and test tokens carry only the identity claim.
PLAIN_CONFIG = "[migration]\nobservation_window = 0\ntoken_claims = {}\n"


def schema_db(make_db, tmp_path: Path, schema: str, config: str = PLAIN_CONFIG) -> tuple[str, tuple[str, ...]]:
    """A new database holding SCHEMA, and the CLI's --dsn/--config arguments for it with CONFIG."""
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(schema)
    return dsn, ("--dsn", dsn, "--config", write_config(tmp_path, config))


def mapping_problems(conn: psycopg.Connection) -> list[str]:
    """Every way the mapping differs from the fixture's ground truth (empty = correct)."""
    rows = conn.execute("""
        select t.customer_id, t.case_name, t.expected_profile_id, t.expected_group, t.expected_key,
               m.profile_id, pgconverge.normalize_phone(p.whatsapp_e164), p.user_id is not null
        from fixture_truth.expected_mapping t
        left join pgconverge.legacy_customer_profile m on m.customer_id = t.customer_id
        left join public.profiles p on p.user_id = m.profile_id""").fetchall()
    problems = []
    group_profiles: dict[str, set] = {}
    profile_groups: dict = {}
    for cid, case, exp_pid, group, exp_key, pid, key, exists in rows:
        if pid is None:
            problems.append(f"customer {cid} ({case}) has no mapping")
            continue
        if not exists:
            problems.append(f"customer {cid} ({case}) maps to missing profile {pid}")
        if exp_pid is not None and pid != exp_pid:
            problems.append(f"customer {cid} ({case}) maps to {pid}, expected {exp_pid}")
        if exp_key is not None and key != exp_key:
            problems.append(f"customer {cid} ({case}) profile key {key}, expected {exp_key}")
        group_profiles.setdefault(group, set()).add(pid)
        profile_groups.setdefault(pid, set()).add(group)
    problems += [f"group {g} split over {len(p)} profiles" for g, p in group_profiles.items() if len(p) > 1]
    problems += [f"profile {p} shared by groups {sorted(g)}" for p, g in profile_groups.items() if len(g) > 1]
    return problems


def mapping_signature(conn: psycopg.Connection) -> list[tuple]:
    """The mapping with created profile ids replaced by the set of customers sharing them (ids are random)."""
    rows = conn.execute("""
        select m.customer_id, m.method, m.match_key,
               case when exists (select 1 from pgconverge.legacy_customer_profile m3
                                 where m3.profile_id = m.profile_id and m3.method = 'created')
                    then null else m.profile_id::text end,
               (select min(m2.customer_id) from pgconverge.legacy_customer_profile m2 where m2.profile_id = m.profile_id)
        from pgconverge.legacy_customer_profile m order by 1""").fetchall()
    return rows


def schema_dump(conn: psycopg.Connection, schemas: tuple[str, ...] = ("public",)) -> list[str]:
    """Columns, constraints, indexes, triggers and policies of SCHEMAS as text, for before/after comparisons."""
    rows = conn.execute("""
        select format('column %%s.%%s %%s %%s %%s', c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
                      case when a.attnotnull then 'not null' else 'null' end, pg_get_expr(d.adbin, d.adrelid))
        from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
        left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
        where n.nspname = any(%(s)s) and c.relkind in ('r', 'p') and a.attnum > 0 and not a.attisdropped
        union all
        select format('constraint %%s.%%s %%s', c.relname, con.conname, pg_get_constraintdef(con.oid))
        from pg_constraint con join pg_class c on c.oid = con.conrelid join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = any(%(s)s)
        union all
        select format('index %%s', pg_get_indexdef(i.indexrelid)) from pg_index i join pg_class c on c.oid = i.indrelid
        join pg_namespace n on n.oid = c.relnamespace where n.nspname = any(%(s)s)
        union all
        select format('trigger %%s', pg_get_triggerdef(t.oid)) from pg_trigger t join pg_class c on c.oid = t.tgrelid
        join pg_namespace n on n.oid = c.relnamespace where n.nspname = any(%(s)s) and not t.tgisinternal
        union all
        select format('policy %%s.%%s %%s %%s %%s', c.relname, p.polname, p.polcmd, pg_get_expr(p.polqual, p.polrelid),
                      pg_get_expr(p.polwithcheck, p.polrelid))
        from pg_policy p join pg_class c on c.oid = p.polrelid join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = any(%(s)s)
        union all
        select format('function %%s %%s', p.oid::regprocedure, md5(pg_get_functiondef(p.oid))) from pg_proc p
        join pg_namespace n on n.oid = p.pronamespace where n.nspname = any(%(s)s) and p.prokind = 'f'
        """, {"s": list(schemas)}).fetchall()
    return sorted(r[0] for r in rows)


DEPENDENTS = ("carts", "orders", "sessions")


def linkage_problems(conn: psycopg.Connection, new: str = "profile_id") -> list[str]:
    """Dependent rows whose new id is not the mapping of their legacy id (empty = every row linked right)."""
    out = []
    for t in DEPENDENTS:
        n = conn.execute(f"""select count(*) from public.{t} d
            left join pgconverge.legacy_customer_profile m on m.customer_id = d.customer_id
            where (d.customer_id is not null and d.{new} is distinct from m.profile_id)""").fetchone()[0]
        if n:
            out.append(f"{t}: {n} rows whose {new} is not the mapping of customer_id")
    return out


def row_owners(conn: psycopg.Connection) -> dict:
    """Each dependent row's owner: the canonical id where that column exists, else the legacy id."""
    out = {}
    for t in ("carts", "orders", "sessions"):
        cols = {r[0] for r in conn.execute("select column_name from information_schema.columns where "
                                           "table_schema = 'public' and table_name = %s", (t,))}
        owner = "profile_id::text" if "profile_id" in cols else "customer_id::text"
        out[t] = dict(conn.execute(f"select id::text, {owner} from public.{t}").fetchall())
    return out


# -- a schema whose every name needs quoting (odd-name tests) ----------------------------------------

def odd_names_schema(legacy: str, canonical: str, dependent: str) -> str:
    """A legacy table, a canonical one and a dependent under RLS, all with names that need quoting."""
    q = lambda n: '"' + n.replace('"', '""') + '"'  # noqa: E731
    s = '"App ""Data"""'
    roles = "".join(f"do $$ begin if not exists (select 1 from pg_roles where rolname = '{r}') then "
                    f"create role {r} nologin noinherit{' bypassrls' * (r == 'service_role')}; end if; end $$;\n" for r in ("anon", "authenticated", "service_role"))
    return roles + f'''
create schema {s};
create table {s}.{q(legacy)} ("ID" bigint generated by default as identity primary key, "Télé phone" text,
    name text);
create table {s}.{q(canonical)} ("Key" uuid primary key default gen_random_uuid(), "e164 #" text unique, name text);
create table {s}.{q(dependent)} (id bigint generated by default as identity primary key,
    "Kund ID" bigint not null references {s}.{q(legacy)} ("ID") on delete cascade, note text);
create index "order's kund" on {s}.{q(dependent)} ("Kund ID");
create function {s}."who's kund"() returns bigint language sql stable as
  $$ select nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'kund', '')::bigint $$;
insert into {s}.{q(legacy)} ("Télé phone", name)
  select case when i % 3 = 0 then '+25078' || lpad(i::text, 7, '0') else '078' || lpad(i::text, 7, '0') end, 'k' || i
  from generate_series(1, 60) i;
insert into {s}.{q(canonical)} ("e164 #", name) select '+25078' || lpad(i::text, 7, '0'), 'p' || i
  from generate_series(1, 30) i;
insert into {s}.{q(dependent)} ("Kund ID", note) select 1 + i % 60, 'n' from generate_series(1, 200) i;
alter table {s}.{q(dependent)} enable row level security;
create policy "own's; order" on {s}.{q(dependent)} for all to authenticated
  using ("Kund ID" = {s}."who's kund"()) with check ("Kund ID" = {s}."who's kund"());
grant usage on schema {s} to authenticated;
grant select, insert, update, delete on {s}.{q(dependent)} to authenticated;
create table public.x (id int);
'''


def odd_names_config(legacy: str, canonical: str) -> str:
    """The config naming the tables of odd_names_schema (a JSON string is a valid TOML basic string)."""
    q = lambda n: json.dumps('"App ""Data"""."' + n.replace('"', '""') + '"')  # noqa: E731
    return f"""
[legacy]
table = {q(legacy)}
key = "ID"
match_column = "Télé phone"
helper = {q("who's kund")}
claim = "kund"
[canonical]
table = {q(canonical)}
key = "Key"
match_column = "e164 #"
copy_columns = ["name"]
helper = {q("who's persön")}
claim = "persön"
[migration]
new_column = "Persön; Key"
private_schema = "pgc \\"private\\""
archive_schema = "pgc archive"
batch_size = 7
rls_sample = 0
"""


EXE = str(Path(sys.executable).with_name("pgconverge"))


def on_terminal(args: list[str], answer: bytes) -> tuple[int, str]:
    """Run `pgconverge ARGS` on a pseudo-terminal, answer its question with ANSWER: (exit code, what it printed)."""
    primary, replica = pty.openpty()
    proc = subprocess.Popen([EXE, *args], stdin=replica, stdout=replica, stderr=replica,
                            env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1"})
    os.close(replica)
    seen = b""
    deadline = time.monotonic() + 120
    while b"[y/N]" not in seen and time.monotonic() < deadline and proc.poll() is None:
        try:
            seen += os.read(primary, 4096)
        except OSError:
            break
    os.write(primary, answer)
    code = proc.wait(timeout=120)
    try:
        while chunk := os.read(primary, 4096):
            seen += chunk
    except OSError:
        pass
    os.close(primary)
    return code, seen.decode(errors="replace")


def has_private_schema(conn) -> bool:
    return conn.execute("select to_regnamespace('pgconverge') is not null").fetchone()[0]


def wait_disconnected(dsn: str, application_name: str, *, prefix: bool = False) -> None:
    """Until every session named APPLICATION_NAME (PREFIX: whose name starts so) has ended (a session hands its
    statistics over as it exits; one of a killed run may still commit what it had sent)."""
    name = application_name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ("%" if prefix else "")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(200):
            if not conn.execute("select exists (select 1 from pg_stat_activity where application_name like %s "
                                "and datname = current_database())", (name,)).fetchone()[0]:
                return
            time.sleep(0.05)
    raise AssertionError(f"{application_name} is still connected")


class RecordProgress:
    """A Progress that keeps the order of what it was told; ON_START(step id), if given, runs as a step starts."""

    def __init__(self, on_start=None):
        self.events: list[str] = []
        self.on_start = on_start

    def step_started(self, step) -> None:
        self.events.append(f"start {step.id}")
        if self.on_start is not None:
            self.on_start(step.id)

    def step_finished(self, step, status, seconds) -> None:
        self.events.append(f"{status} {step.id}")

    def batch(self, *args) -> None:
        pass

    def note(self, text: str) -> None:
        self.events.append(f"note {text.strip()}")


def one_person(conn: psycopg.Connection) -> tuple[int, str]:
    """A legacy id mapped alone onto its canonical row (no merge), with that canonical id."""
    return conn.execute(
        "select m.customer_id, m.profile_id::text from pgconverge.legacy_customer_profile m "
        "where (select count(*) from pgconverge.legacy_customer_profile x where x.profile_id = m.profile_id) = 1 "
        "order by m.customer_id limit 1").fetchone()


class ReaderAfter:
    """An application reader that begins its transaction (STATEMENT, then it stays open) once STEP of a run is done.

    The switch waits for the application transactions open when it makes its helpers SECURITY DEFINER
    (test_helper_replace_race.py); a reader meant to hold a table through a later step begins after that wait."""

    def __init__(self, dsn: str, step: str, statement: str, application_name: str = "app-report"):
        import threading

        self.dsn, self.step, self.statement = dsn, step, statement
        self.conn = psycopg.connect(dsn, application_name=application_name)
        self.pid = self.conn.info.backend_pid
        self.holding = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as poll:
            while not self._stop.is_set():
                if poll.execute("select to_regclass('pgconverge.events') is not null and exists (select 1 from "
                                "pgconverge.events where step = %s and event = 'done')", (self.step,)).fetchone()[0]:
                    self.conn.execute(self.statement)
                    self.holding.set()
                    return
                time.sleep(0.005)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.conn.rollback()
        self.conn.close()
