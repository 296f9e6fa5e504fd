"""A policy of one partition of a partitioned dependent is rewritten with the table's.

Row security on a partition applies where the application reads that partition by name. Such a policy comparing the
legacy column with the helper used to be left out of the policies pgconverge reads: the switch then stopped at its
review gate ("cannot rewrite these with certainty") after align and expand had run, and had it been accepted,
contract's DROP COLUMN would have failed on it. Now it is rewritten onto the new column as the partitioned table's
policy is, checked by the RLS check, put back by the switch's rollback, and contract goes through.
"""

from __future__ import annotations

import json

import psycopg

from _small import PARTITIONED_EVENTS
from _support import cli, schema_db

SCHEMA = PARTITIONED_EVENTS + """
alter table public.events_low enable row level security;
create policy low_own on public.events_low for select to authenticated
  using (customer_id = public.auth_customer_id());
grant select on public.events_low to authenticated;
"""
CONFIG = "[migration]\nobservation_window = 0\ntoken_claims = {}\n"


def _policy(conn) -> str:
    return conn.execute("select pg_get_expr(polqual, polrelid) from pg_policy where polname = 'low_own'").fetchone()[0]


def _low_ids(conn, claims: dict) -> list[int]:
    with conn.transaction():
        conn.execute("set local role authenticated")
        conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        return [r[0] for r in conn.execute("select id from public.events_low order by id")]


def test_a_partitions_own_policy_is_rewritten_and_contract_goes_through(make_db, tmp_path):
    dsn, args = schema_db(make_db, tmp_path, SCHEMA, CONFIG)
    for phase in ("align", "expand"):
        cli("run", phase, *args)
    with psycopg.connect(dsn, autocommit=True) as conn:
        profile = str(conn.execute("select profile_id from public.events where id = 20").fetchone()[0])
        mine = _low_ids(conn, {"customer_id": "2"})
        assert mine == [20], mine
    out = " ".join(cli("run", "switch", *args).split())
    assert "public.events_low" in out, out
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert "profile_id" in _policy(conn) and "customer_id" not in _policy(conn), _policy(conn)
        assert _low_ids(conn, {"profile_id": profile}) == mine
    cli("rollback", "switch", *args, "--yes")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert "customer_id" in _policy(conn), _policy(conn)
        assert _low_ids(conn, {"customer_id": "2"}) == mine
    cli("run", "switch", *args)
    cli("run", "contract", "--yes", "--accept-runtime-use", "--accept-code-references", *args)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select to_regclass('public.customers') is null").fetchone()[0]
        assert _low_ids(conn, {"profile_id": profile}) == mine


def test_an_object_of_one_partition_using_the_legacy_column_blocks_contract_before_any_drop(make_db, tmp_path):
    """Contract's last gate reads what depends on the legacy column of each partition too: a publication listing the
    column of one partition is named, and nothing is dropped, where the partitioned table's DROP COLUMN used to fail
    on it after the legacy foreign keys had gone."""
    schema = PARTITIONED_EVENTS + "create publication events_low_feed for table public.events_low (id, customer_id);\n"
    dsn, args = schema_db(make_db, tmp_path, schema, CONFIG)
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    out = " ".join(cli("run", "contract", "--yes", "--accept-runtime-use", "--accept-code-references", *args,
                       expect=2).split())
    assert "events_low_feed" in out and "uses public.events_low.customer_id, which contract drops" in out, out
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select to_regclass('public.customers') is not null").fetchone()[0]
        assert conn.execute("select count(*) from pg_constraint where conrelid = 'public.events'::regclass "
                            "and contype = 'f' and 'customer_id' = any(array(select attname from pg_attribute "
                            "where attrelid = conrelid and attnum = any(conkey)))").fetchone()[0] == 1
        conn.execute("alter publication events_low_feed set table public.events_low (id, kind)")
    cli("run", "contract", "--yes", "--accept-runtime-use", "--accept-code-references", *args)
