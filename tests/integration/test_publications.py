"""Dependent tables published for logical replication (Supabase Realtime's publication, say).

A published table without a replica identity takes no UPDATE: the backfill (and a rollback) would stop half way.
A replica identity made of an index on the legacy column stops expand, which makes the column nullable, and would
go with the column at contract, after which every UPDATE and DELETE of the published table fails. `run` refuses
both before anything changes, naming the table and the fix, and goes through once it is applied.
"""

from __future__ import annotations

import psycopg

from _support import cli, cli_json, has_private_schema, schema_dump, write_config

SMALL = 0.1
NO_WINDOW = "[migration]\nobservation_window = 0\n"
ACCEPT = ("--accept-code-references", "--accept-runtime-use")


def test_a_published_table_without_replica_identity_is_refused_before_anything_changes(
        make_db, template_factory, tmp_path):
    dsn = make_db(template_factory(SMALL))
    cfg = write_config(tmp_path, NO_WINDOW)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table public.events (customer_id bigint references public.customers (id), what text)")
        conn.execute("insert into public.events select id, 'signed up' from public.customers")
        conn.execute("create publication app_changes for table public.events, public.orders")
        before = schema_dump(conn)
        out = cli_json("run", "align", "--dsn", dsn, "--config", cfg, expect=2)
        assert out["error"] == "Unidentified", out
        assert "public.events has no replica identity and publication app_changes" in out["problem"], out
        assert "orders" not in out["problem"]
        assert "ALTER TABLE public.events REPLICA IDENTITY FULL;" in out["fix"]
        assert schema_dump(conn) == before and not has_private_schema(conn)
        conn.execute("alter table public.events replica identity full")
        cli("run", "--all", *ACCEPT, "--dsn", dsn, "--config", cfg)
        assert conn.execute("select count(*) from public.events where profile_id is null").fetchone()[0] == 0
        conn.execute("update public.events set what = 'seen'")  # still published, still updatable


def test_a_replica_identity_on_the_legacy_column_is_refused_before_anything_changes(
        make_db, template_factory, tmp_path):
    dsn = make_db(template_factory(SMALL))
    cfg = write_config(tmp_path, NO_WINDOW)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table public.wallets (id bigint primary key, customer_id bigint not null "
                     "references public.customers (id), balance int not null default 0)")
        conn.execute("create unique index wallets_customer_key on public.wallets (customer_id)")
        conn.execute("alter table public.wallets replica identity using index wallets_customer_key")
        # One wallet per person: customers without a number each get a canonical row of their own.
        conn.execute("insert into public.wallets (id, customer_id) select id, id from public.customers "
                     "where wa_id is null")
        assert conn.execute("select count(*) from public.wallets").fetchone()[0] > 0
        conn.execute("create publication wallet_changes for table public.wallets")
        before = schema_dump(conn)
        out = cli_json("run", "align", "--dsn", dsn, "--config", cfg, expect=2)
        assert "public.wallets's replica identity is index public.wallets_customer_key on customer_id" in \
            out["problem"], out
        assert "ALTER TABLE public.wallets REPLICA IDENTITY FULL;" in out["fix"]
        assert schema_dump(conn) == before and not has_private_schema(conn)
        conn.execute("alter table public.wallets replica identity full")
        cli("run", "--all", *ACCEPT, "--dsn", dsn, "--config", cfg)
        conn.execute("update public.wallets set balance = balance + 1")  # published, and still updatable
        assert conn.execute("select relreplident from pg_class where oid = 'public.wallets'::regclass"
                            ).fetchone()[0] == "f"


def test_a_column_list_naming_the_legacy_column_stops_contract_before_its_first_drop(
        make_db, template_factory, tmp_path):
    dsn = make_db(template_factory(SMALL))
    args = ("--dsn", dsn, "--config", write_config(tmp_path, NO_WINDOW))
    with psycopg.connect(dsn, autocommit=True) as conn:
        # a column list and a row filter, both on the legacy column (Postgres 15 and later)
        # (inserts only: a row filter on a column outside the replica identity refuses every UPDATE otherwise)
        conn.execute("create publication order_feed for table public.orders (id, customer_id, status) "
                     "where (customer_id is not null) with (publish = 'insert')")
        for phase in ("align", "expand", "switch"):
            cli("run", phase, *args)
        out = " ".join(cli("run", "contract", *ACCEPT, *args, expect=2).split())
        said = "publication of table orders in publication order_feed uses public.orders.customer_id"
        assert out.count(said) == 1, out  # once, though the list and the filter each depend on the column
        assert "ALTER PUBLICATION … SET TABLE" in out, out
        assert conn.execute("select to_regclass('public.customers')").fetchone()[0] is not None  # nothing dropped
        conn.execute("alter publication order_feed set table public.orders (id, profile_id, status) "
                     "where (profile_id is not null)")
        cli("run", "contract", *ACCEPT, *args)
        assert conn.execute("select attnames from pg_publication_tables where pubname = 'order_feed'"
                            ).fetchone()[0] == ["id", "status", "profile_id"]
