"""Rolling back contract on a table keyed by (legacy column, day): the key goes back to the legacy column in one
transaction, and the new column's unique index must stay in place meanwhile, or new code's
`ON CONFLICT (profile_id, day)` fails ("there is no unique or exclusion constraint matching the ON CONFLICT
specification") for as long as it is missing."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from _small import PAIR_SQL, roles_sql
from _support import cli, schema_db

SCHEMA = roles_sql() + PAIR_SQL + """
create table public.daily_usage (customer_id bigint not null references public.customers (id), day date not null,
  n int not null default 0, {pk} primary key (customer_id, day));
alter table public.daily_usage enable row level security;
create policy own on public.daily_usage for all to authenticated
  using (customer_id = public.auth_customer_id()) with check (customer_id = public.auth_customer_id());
grant select, insert, update, delete on public.daily_usage to authenticated;
insert into public.customers (wa_id, display_name) select '0788' || lpad(i::text, 6, '0'), 'c' || i
  from generate_series(1, 20) i;
insert into public.daily_usage (customer_id, day) select 1 + i % 20, date '2024-01-01' + i / 20
  from generate_series(0, 199) i;
"""


# A key name of 60 bytes without the legacy column's stem: its mirror's name is cut at 63 bytes, where a plain cut
# of the stand-in's name would be the mirror's own.
LONG_KEY = "usage_by_owner_and_day_kept_for_billing_and_reports_pk_00001"


@pytest.mark.parametrize("key", [None, LONG_KEY], ids=["default_key_name", "key_name_of_60_bytes"])
def test_new_code_upserts_keep_working_while_contract_is_rolled_back(make_db, tmp_path, key):
    dsn, args = schema_db(make_db, tmp_path, SCHEMA.replace("{pk}", f"constraint {key}" if key else ""))
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    cli("run", "contract", *args, "--yes", "--accept-code-references")
    with psycopg.connect(dsn, autocommit=True) as conn:
        people = [str(r[0]) for r in conn.execute("select user_id from public.profiles order by 1")]
    failures: list[str] = []
    done = [0]
    stop = threading.Event()

    def new_code() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                who = people[done[0] % len(people)]
                try:
                    conn.execute("insert into public.daily_usage (profile_id, day, n) values (%s, date '2024-06-01', 1) "
                                 "on conflict (profile_id, day) do update set n = daily_usage.n + 1", (who,))
                except psycopg.Error as exc:
                    failures.append(str(exc).splitlines()[0])
                done[0] += 1

    writer = threading.Thread(target=new_code, daemon=True)
    writer.start()
    time.sleep(0.3)
    try:
        cli("rollback", "contract", *args, "--yes")
        time.sleep(0.3)
    finally:
        stop.set()
        writer.join(timeout=30)
    assert done[0] > 50 and not failures, (done[0], sorted(set(failures)))
    with psycopg.connect(dsn, autocommit=True) as conn:
        indexes = {r[0] for r in conn.execute("select indexname from pg_indexes where tablename = 'daily_usage'")}
        legacy_key = key or "daily_usage_pkey"
        mirror = (f"{key}_profile"[:63]) if key else "daily_usage_pkey_profile"
        assert indexes == {legacy_key, mirror}, indexes
        assert conn.execute("select conname from pg_constraint where conrelid = 'public.daily_usage'::regclass "
                            "and contype = 'p'").fetchone()[0] == legacy_key


def test_a_rollback_stopped_before_the_key_swap_leaves_the_key_done_and_resumes(make_db, tmp_path):
    """Stopped after the stand-in index is built and before the keys are swapped, the ledger still shows contract's
    key as done (it is: the mirror's constraint is in place), and the same command goes on from there."""
    from pgconverge.execution import killpoint

    dsn, args = schema_db(make_db, tmp_path, SCHEMA.replace("{pk}", ""))
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    cli("run", "contract", *args, "--yes", "--accept-code-references")
    killpoint.fail_at("rollback.contract.daily_usage.legacy_key_1:before")
    try:
        cli("rollback", "contract", *args, "--yes", expect=2)
    finally:
        killpoint.fail_at(None)
    with psycopg.connect(dsn, autocommit=True) as conn:
        state = conn.execute("select event from pgconverge.events where step = 'contract.daily_usage.key_1' "
                             "and event in ('done', 'reverted') order by id desc limit 1").fetchone()[0]
        assert state == "done"
        assert conn.execute("select conname from pg_constraint where conrelid = 'public.daily_usage'::regclass "
                            "and contype = 'p'").fetchone()[0] == "daily_usage_pkey_profile"
        assert conn.execute("select to_regclass('public.daily_usage_pkey_profile_standin') is not null").fetchone()[0]
    cli("rollback", "contract", *args, "--yes")
    with psycopg.connect(dsn, autocommit=True) as conn:
        indexes = {r[0] for r in conn.execute("select indexname from pg_indexes where tablename = 'daily_usage'")}
        assert indexes == {"daily_usage_pkey", "daily_usage_pkey_profile"}, indexes
        state = conn.execute("select event from pgconverge.events where step = 'contract.daily_usage.key_1' "
                             "and event in ('done', 'reverted') order by id desc limit 1").fetchone()[0]
        assert state == "reverted"
