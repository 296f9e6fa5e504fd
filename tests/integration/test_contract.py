"""Contract: gates, archive, final validation; rollback from every phase back to the start."""

from __future__ import annotations

import re
import threading

import psycopg
import pytest
from psycopg import errors

from _support import cli, cli_json, schema_dump, write_config

SMALL = 0.1
# Contract right after the switch: these tests do not wait for the observation window (default 15 min).
NO_WINDOW = "[migration]\nobservation_window = 0\n"


def _linkage(conn) -> dict:
    return {t: dict(conn.execute(f"select id::text, customer_id from public.{t}").fetchall())
            for t in ("carts", "orders", "sessions")}


def test_full_forward_run_archives_the_legacy_side(make_db, template_factory, tmp_path):
    dsn = make_db(template_factory(SMALL))
    out = cli_json("run", "--all", "--dsn", dsn, "--config", write_config(tmp_path, NO_WINDOW),
                   "--accept-code-references")
    assert out["phases"] == ["align", "expand", "switch", "contract"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        cols = conn.execute("select table_name from information_schema.columns where table_schema = 'public' "
                            "and column_name = 'customer_id'").fetchall()
        assert cols == [] and conn.execute("select to_regclass('public.customers')").fetchone()[0] is None
        archived = dict(conn.execute("""select c.relname, (select count(*) from pg_index i where i.indrelid = c.oid
            and i.indisprimary) from pg_class c where c.relnamespace = 'archive'::regnamespace and c.relkind = 'r'
            """).fetchall())
        assert len(archived) == 2 and all(v == 1 for v in archived.values())
        assert any(k.startswith("customers_") for k in archived) and any(
            k.startswith("legacy_customer_profile_") for k in archived)
        legacy = next(k for k in archived if k.startswith("customers_"))
        for role in ("anon", "authenticated"):
            with pytest.raises(errors.InsufficientPrivilege):
                with conn.transaction():
                    conn.execute(f"set local role {role}")
                    conn.execute(f'select * from archive."{legacy}" limit 1')
        with pytest.raises(errors.FeatureNotSupported, match="retired"):
            conn.execute("select public.auth_customer_id()")
        assert conn.execute("select data->'rows' from pgconverge.snapshots where name = 'counts_after'"
                            ).fetchone()[0]["legacy"] > 0
    assert cli_json("verify", "--dsn", dsn)["passed"]


def test_a_failing_gate_names_the_blocker_and_changes_nothing(make_db, template_factory):
    from pgconverge.audit import sample_code_dir

    dsn = make_db(template_factory(SMALL))
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(1, 7):  # more than any "first few": every one is named, with the count
            conn.execute(f"create function public.legacy_report_{i}() returns bigint language sql stable as "
                         "$$ select count(customer_id) from public.orders $$")
        before = schema_dump(conn, ("public", "archive"))
        out = cli("run", "contract", "--dsn", dsn, "--code", str(sample_code_dir()), expect=2)
        assert "contract is blocked, nothing was dropped" in out and "no code references" in out
        flat = " ".join(out.split())
        named = re.findall(r"database function (\S+) uses legacy names", flat)
        assert {f"public.legacy_report_{i}()" for i in range(1, 7)} <= set(named), flat
        assert f"{len(named)} database function(s) mention legacy names" in flat, flat
        assert any(ext in out for ext in (".ts:", ".py:", ".sql:", ".js:")) and "--accept-code-references" in out
        assert schema_dump(conn, ("public", "archive")) == before
        # Old code writing to the legacy table after the switch blocks it too.
        with psycopg.connect(dsn, autocommit=True) as app:
            app.execute("insert into public.customers (wa_id) values ('+250788000111')")
            app.execute("select pg_stat_force_next_flush()")
        out = cli("run", "contract", "--dsn", dsn, "--accept-code-references", expect=2)
        assert re.search(r"no runtime use since the switch: n_tup_ins \+1", out), out
        # And the default observation window (15 min) has not passed since the switch: said, with how to shorten it.
        flat = " ".join(out.split())
        assert re.search(r"observation window: \S+ s of 15 min observed", flat), flat
        assert "migration.observation_window (now 15 min)" in flat and "left" in flat, flat
        assert schema_dump(conn, ("public", "archive")) == before
    cli("run", "contract", "--dsn", dsn, "--accept-code-references", "--accept-runtime-use")


@pytest.mark.parametrize("last", ["align", "expand", "switch", "contract"])
def test_rollback_from_each_phase_returns_to_the_start(make_db, template_factory, last, tmp_path):
    dsn = make_db(template_factory(SMALL))
    cfg = write_config(tmp_path, NO_WINDOW)
    with psycopg.connect(dsn, autocommit=True) as conn:
        before, links = schema_dump(conn), _linkage(conn)
        for ph in ("align", "expand", "switch", "contract")[:("align", "expand", "switch", "contract").index(last) + 1]:
            cli("run", ph, "--dsn", dsn, "--config", cfg, *(("--accept-code-references",) if ph == "contract" else ()))
        cli("rollback", "align", "--dsn", dsn, "--config", cfg)
        assert schema_dump(conn) == before
        assert _linkage(conn) == links
        assert conn.execute("select count(*) from pg_class where relnamespace = to_regnamespace('archive')"
                            ).fetchone()[0] == 0
        # Expand's counters of old code's rows went with it.
        assert conn.execute("select count(*) from pg_class where relkind = 'S' and relname like 'old_writes_%'"
                            ).fetchone()[0] == 0
    cli("run", "--all", "--dsn", dsn, "--config", cfg, "--accept-code-references")  # and forward again


NOT_VALID_FK = ("alter table public.orders drop constraint orders_customer_id_fkey; "
                "alter table public.orders add constraint orders_customer_id_fkey foreign key (customer_id) "
                "references public.customers (id) on delete set null not valid")


@pytest.mark.parametrize("undo", ["contract", "align"])
def test_rollback_gives_a_not_valid_foreign_key_back_not_valid(make_db, template_factory, tmp_path, undo):
    """A legacy foreign key the user declared NOT VALID comes back NOT VALID: the rollback does not validate it."""
    dsn = make_db(template_factory(SMALL))
    cfg = write_config(tmp_path, NO_WINDOW)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(NOT_VALID_FK)
        before = schema_dump(conn)
        for ph in ("align", "expand", "switch"):
            cli("run", ph, "--dsn", dsn, "--config", cfg)
        after_switch = schema_dump(conn)
        cli("run", "contract", "--dsn", dsn, "--config", cfg, "--accept-code-references")
        cli("rollback", undo, "--dsn", dsn, "--config", cfg)
        assert conn.execute("select convalidated from pg_constraint where conname = 'orders_customer_id_fkey'"
                            ).fetchone() == (False,)
        assert schema_dump(conn) == (after_switch if undo == "contract" else before)


def test_dropping_the_legacy_helper_takes_the_legacy_tables_own_policies_and_rollback_restores_them(
        make_db, template_factory, tmp_path):
    dsn = make_db(template_factory(SMALL))
    cfg = write_config(tmp_path, NO_WINDOW + 'legacy_helper_after_contract = "drop"\n')
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = schema_dump(conn)
        cli("run", "--all", "--dsn", dsn, "--config", cfg, "--accept-code-references")
        assert conn.execute("select to_regprocedure('public.auth_customer_id()')").fetchone()[0] is None
        assert conn.execute("select count(*) from pg_policies where tablename like 'customers%'").fetchone()[0] == 0
        cli("rollback", "align", "--dsn", dsn, "--config", cfg)
        assert schema_dump(conn) == before  # helper and customers_self_select exactly as they were


def test_round_trip_with_writers_active_throughout(make_db, template_factory, tmp_path):
    """A writer that uses whichever column exists keeps writing while the migration goes to contract and back."""
    dsn = make_db(template_factory(SMALL))
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = _linkage(conn)
        people = conn.execute("select id from public.customers order by id limit 30").fetchall()
    written: list[tuple[str, int, int]] = []  # (table, row id, customer the writer meant)
    failures: list[str] = []
    stop = threading.Event()

    def writer():
        with psycopg.connect(dsn, autocommit=True) as c:
            i = 0
            while not stop.is_set():
                i += 1
                customer = people[i % len(people)][0]
                try:
                    has_legacy = c.execute("select count(*) from information_schema.columns where table_name = "
                                           "'carts' and column_name = 'customer_id'").fetchone()[0]
                    if has_legacy:
                        rid = c.execute("insert into public.carts (customer_id) values (%s) returning id",
                                        (customer,)).fetchone()[0]
                    else:  # new code: the profile the customer became
                        rid = c.execute("insert into public.carts (profile_id) values (%s) returning id",
                                        (profile_of[customer],)).fetchone()[0]
                    written.append(("carts", rid, customer))
                except errors.UndefinedColumn:
                    pass  # the column went between the client's look and its write: it switches code here
                except psycopg.Error as exc:
                    failures.append(str(exc))
                stop.wait(0.01)

    t = threading.Thread(target=writer)
    profile_of: dict = {}  # what new code knows: the profile each customer became
    t.start()
    try:
        cli("run", "align", "--dsn", dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            profile_of.update(conn.execute("select customer_id, profile_id from pgconverge.legacy_customer_profile"
                                           ).fetchall())
        for ph in ("expand", "switch"):
            cli("run", ph, "--dsn", dsn)
        cli("run", "contract", "--dsn", dsn, "--accept-code-references", "--accept-runtime-use")
        stop.wait(0.5)
        cli("rollback", "align", "--dsn", dsn)
        stop.wait(0.3)
    finally:
        stop.set()
        t.join()
    assert failures == []
    with psycopg.connect(dsn, autocommit=True) as conn:
        after = _linkage(conn)
        for table, rows in before.items():
            assert {k: after[table].get(k) for k in rows} == rows  # every original row, same owner
        got = dict(conn.execute("select id, customer_id from public.carts where id = any(%s)",
                                ([r for _, r, _ in written],)).fetchall())
        assert len(got) == len(written) and all(got[r] == c for _, r, c in written)


def _contract_refused(conn, dsn: str, cfg: str) -> str:
    """Align, expand and switch; then contract, which must refuse before its first drop: its output, flattened."""
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    before = schema_dump(conn)
    out = " ".join(cli("run", "contract", "--dsn", dsn, "--config", cfg, "--accept-code-references",
                       "--accept-runtime-use", expect=2).split())
    assert "nothing was dropped" in out and schema_dump(conn) == before, out
    return out


@pytest.mark.parametrize("after", ["stub", "drop"])
def test_contract_refuses_while_anything_still_calls_the_legacy_helper(make_db, template_factory, tmp_path, after):
    """A policy left to the user (accept_policies) that still calls the legacy helper: after contract every query on
    its table would raise, whether the helper is dropped or replaced by its raising stub. Contract refuses before its
    first drop, naming it; a legacy column's own default on the helper does not count (it goes with the column)."""
    dsn = make_db(template_factory(SMALL))
    cfg = write_config(tmp_path, NO_WINDOW + 'accept_policies = ["storage.objects.own_files"]\n'
                       f'legacy_helper_after_contract = "{after}"\n')
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("""
            create schema storage;
            create table storage.objects (id uuid primary key default gen_random_uuid(), bucket_id text, name text);
            alter table storage.objects enable row level security;
            create policy own_files on storage.objects for select to authenticated
              using (bucket_id = 'avatars' and (string_to_array(name, '/'))[1] = public.auth_customer_id()::text);
            grant usage on schema storage to authenticated;
            grant select on storage.objects to authenticated;
            alter table public.carts alter column customer_id set default public.auth_customer_id();""")
        out = _contract_refused(conn, dsn, cfg)
        assert "policy own_files on table storage.objects uses public.auth_customer_id()" in out, out
        assert "carts" not in out.split("uses public.auth_customer_id()")[0][-80:]
        conn.execute("drop policy own_files on storage.objects")
        conn.execute("create policy own_files on storage.objects for select to authenticated using "
                     "(bucket_id = 'avatars' and (string_to_array(name, '/'))[1] = public.auth_profile_id()::text)")
        cli("run", "contract", "--dsn", dsn, "--config", cfg, "--accept-code-references", "--accept-runtime-use")


def test_contract_refuses_while_a_policy_of_another_table_reads_the_legacy_table(make_db, template_factory, tmp_path):
    """A policy left to the user that reads the legacy table in a sub-query (no helper call): once contract archives
    the table out of the API roles' reach, every query on the policy's table fails. Contract refuses before its first
    drop, naming it."""
    dsn = make_db(template_factory(SMALL))
    cfg = write_config(tmp_path, NO_WINDOW + 'accept_policies = ["public.vouchers.vouchers_mine"]\n')
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("""
            create table public.vouchers (id bigint generated always as identity primary key, phone text);
            alter table public.vouchers enable row level security;
            create policy vouchers_mine on public.vouchers for select to authenticated
              using (exists (select 1 from public.customers c where c.wa_id = vouchers.phone));
            grant select on public.vouchers to authenticated;""")
        out = _contract_refused(conn, dsn, cfg)
        assert "policy vouchers_mine on table vouchers reads public.customers" in out, out
        conn.execute("drop policy vouchers_mine on public.vouchers")
        conn.execute("create policy vouchers_mine on public.vouchers for select to authenticated "
                     "using (exists (select 1 from public.profiles p where p.whatsapp_e164 = vouchers.phone))")
        cli("run", "contract", "--dsn", dsn, "--config", cfg, "--accept-code-references", "--accept-runtime-use")
        conn.execute("set role authenticated")
        conn.execute("select count(*) from public.vouchers")  # the table still answers the API role
        conn.execute("reset role")


def _compared(conn) -> dict:
    """What contract's final validation compared, per table (its done record)."""
    return conn.execute("select detail->'compared' from pgconverge.events where step = 'contract.final_validation' "
                        "and event = 'done' order by id desc limit 1").fetchone()[0]


def test_final_validation_leaves_the_applications_own_changes_alone(make_db, template_factory, tmp_path):
    """Rows the application re-assigns (old code before expand, new code after the switch) or unlinks (a customer
    deleted, ON DELETE SET NULL) since align's snapshot have another owner than it recorded: that is not a mis-link,
    and contract finishes. A row linked to another identity than its legacy id's is still named."""
    dsn = make_db(template_factory(SMALL))
    cfg = write_config(tmp_path, NO_WINDOW)
    cli("run", "align", "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        a, b, c, gone = [r[0] for r in conn.execute(
            "select customer_id from public.orders where customer_id is not null group by customer_id "
            "having count(*) >= 2 order by customer_id limit 4").fetchall()]
        first, second = [r[0] for r in conn.execute(
            "select id from public.orders where customer_id = %s order by id limit 2", (a,)).fetchall()]
        conn.execute("update public.orders set customer_id = %s where id = %s", (b, first))  # old code
    for ph in ("expand", "switch"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("update public.orders set profile_id = (select profile_id from pgconverge.legacy_customer_profile"
                     " where customer_id = %s) where id = %s", (c, second))  # new code
        unlinked = conn.execute("select (select count(*) from public.orders where customer_id = %s), "
                                "(select count(*) from public.sessions where customer_id = %s)",
                                (gone, gone)).fetchone()
        conn.execute("delete from public.customers where id = %s", (gone,))
    cli("run", "contract", "--dsn", dsn, "--config", cfg, "--accept-code-references", "--accept-runtime-use")
    with psycopg.connect(dsn, autocommit=True) as conn:
        compared = _compared(conn)
        assert compared["public.orders"]["moved"] == 2 + unlinked[0]
        assert compared["public.sessions"]["moved"] == unlinked[1]
        assert compared["public.carts"]["moved"] == 0 and compared["public.carts"]["kept"] > 0
        for t, n in compared.items():
            assert n["checked"] == conn.execute(f"select count(profile_id) from {t}").fetchone()[0]
        moved = sum(n["moved"] for n in compared.values())
        assert f"{moved:,} the application moved (another owner or none)" in cli("report", "--dsn", dsn, "--config", cfg)
        assert cli_json("verify", "--dsn", dsn, "--config", cfg)["passed"]
        # A row whose new id is not its legacy id's owner is named (verify reads the same snapshot again).
        pk = conn.execute("update pgconverge.linkage_after set owner = gen_random_uuid()::text "
                          "where tbl = 'public.carts' and pk = (select min(pk) from pgconverge.linkage_after "
                          "where tbl = 'public.carts') returning pk").fetchone()[0]
        out = cli_json("verify", "--dsn", dsn, "--config", cfg, expect=1)
    assert not out["passed"] and f"public.carts row {pk}: new id " in str(out)


def test_final_validation_of_a_dependent_without_a_key(make_db, template_factory, tmp_path):
    """A dependent with no key names its rows by ctid: the backfill's UPDATE moves every row, and rows inserted
    after a VACUUM take the freed slots. Its rows are checked each against the mapping, never matched with align's
    snapshot by ctid (which matched only rows inserted since, with other owners)."""
    dsn = make_db(template_factory(SMALL))
    cfg = write_config(tmp_path, NO_WINDOW)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table public.events (customer_id bigint not null references public.customers (id), "
                     "kind text not null default 'x'); "
                     "insert into public.events (customer_id) select id from public.customers, generate_series(1, 3) "
                     "order by id")
    cli("run", "align", "--dsn", dsn, "--config", cfg)
    cli("run", "expand", "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("vacuum public.events")
        conn.execute("insert into public.events (customer_id, kind) select id, 'later' from public.customers, "
                     "generate_series(1, 3) order by id desc")
        assert conn.execute("select count(*) from pgconverge.linkage_before b join public.events e "
                            "on e.ctid::text = b.pk where e.kind = 'later'").fetchone()[0] > 0  # slots taken over
    cli("run", "switch", "--dsn", dsn, "--config", cfg)
    cli("run", "contract", "--dsn", dsn, "--config", cfg, "--accept-code-references", "--accept-runtime-use")
    with psycopg.connect(dsn, autocommit=True) as conn:
        events = _compared(conn)["public.events"]
        rows = conn.execute("select count(*) from public.events").fetchone()[0]
        assert events == {"rows": rows, "checked": rows, "before": rows // 2, "keyless": True}
    assert "public.events (" in cli("report", "--dsn", dsn, "--config", cfg)


def test_rollback_from_contract_gives_the_legacy_column_its_comments_back(make_db, template_factory, tmp_path):
    """Contract drops the legacy column, its foreign key and its indexes, and their comments with them (pg_graphql
    reads its directives there): the rollback sets them again as they were."""
    dsn = make_db(template_factory(SMALL))
    cfg = write_config(tmp_path, NO_WINDOW)
    notes = {
        "column": ("comment on column public.carts.customer_id is %s", '@graphql({"name": "buyer"})'),
        "fk": ("comment on constraint carts_customer_id_fkey on public.carts is %s", "who owns the cart"),
        "index": ("comment on index public.idx_carts_customer_status is %s", "the cart list's index"),
    }
    read = ("select col_description('public.carts'::regclass, (select attnum from pg_attribute where attrelid = "
            "'public.carts'::regclass and attname = 'customer_id')), (select obj_description(oid, 'pg_constraint') "
            "from pg_constraint where conname = 'carts_customer_id_fkey'), "
            "obj_description(to_regclass('public.idx_carts_customer_status'), 'pg_class')")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for stmt, value in notes.values():
            conn.execute(stmt.replace("%s", "'" + value.replace("'", "''") + "'"))
        before = conn.execute(read).fetchone()
        assert before == tuple(v for _, v in notes.values())
        for ph in ("align", "expand", "switch", "contract"):
            cli("run", ph, "--dsn", dsn, "--config", cfg, "--skip-preflight",
                *(("--accept-code-references", "--yes") if ph == "contract" else ()))
        assert conn.execute("select to_regclass('public.idx_carts_customer_status')").fetchone()[0] is None
        cli("rollback", "contract", "--dsn", dsn, "--config", cfg, "--yes")
        assert conn.execute(read).fetchone() == before
