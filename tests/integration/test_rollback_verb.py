"""`rollback PHASE` undoes PHASE and every phase after it; the old `--to` spelling is refused naming the new one; a
phase that never ran (not even pgconverge's schema created), or was rolled back already, is refused with nothing
changed; on a terminal the rollback asks first, and an answer of no changes nothing."""

from __future__ import annotations


import psycopg

from _support import cli, cli_json, has_private_schema, on_terminal, schema_dump, write_config

def test_rollback_phase_undoes_it_and_what_follows(fixture_db, tmp_path):
    dsn = fixture_db
    cfg = write_config(tmp_path, "[migration]\nrls_sample = 5\n")
    with psycopg.connect(dsn, autocommit=True) as conn:
        start = schema_dump(conn)
        out = " ".join(cli("rollback", "expand", "--dsn", dsn, "--config", cfg, expect=2).split())
        assert "nothing to roll back: expand never ran" in out and "nothing was changed" in out, out
        assert not has_private_schema(conn)  # refused before the ledger was made
        old = " ".join(cli("rollback", "--to", "expand", "--dsn", dsn, "--config", cfg, expect=2).split())
        assert "pgconverge rollback expand" in old, old

        cli("run", "align", "--dsn", dsn, "--config", cfg)
        after_align = schema_dump(conn)
        cli("run", "expand", "--dsn", dsn, "--config", cfg)
        assert schema_dump(conn) != after_align
        done = cli_json("rollback", "expand", "--dsn", dsn, "--config", cfg)
        assert done["undone"] == ["expand"] and done["phase"] == "expand"
        assert schema_dump(conn) == after_align  # align kept: the database is as it was when expand began
        assert cli_json("status", "--dsn", dsn, "--config", cfg)["summary"]["line"].startswith(
            "rolled back to the start of expand")
        # Rolled back already: the same command again is refused (exit 2), changing nothing; the dry run too.
        for args in ((), ("--dry-run",)):
            again = " ".join(cli("rollback", "expand", *args, "--dsn", dsn, "--config", cfg, expect=2).split())
            assert "nothing to roll back: no step of expand is left done" in again, again
            assert "rolled back already" in again, again
            assert "nothing was changed" in again and "pgconverge run expand" in again, again
        assert schema_dump(conn) == after_align

        # On a terminal it asks; "n" changes nothing.
        cli("run", "expand", "--dsn", dsn, "--config", cfg)
        expanded = schema_dump(conn)
        code, seen = on_terminal(["rollback", "align", "--dsn", dsn, "--config", cfg], b"n\n")
        assert "Undo expand, align" in seen, seen
        assert code == 1, seen
        assert "nothing was changed" in seen, seen
        assert schema_dump(conn) == expanded

        cli("rollback", "align", "--yes", "--dsn", dsn, "--config", cfg)
        assert schema_dump(conn) == start
        again = " ".join(cli("rollback", "align", "--yes", "--dsn", dsn, "--config", cfg, expect=2).split())
        assert "nothing to roll back: no step of" in again and "rolled back already" in again, again
        assert schema_dump(conn) == start


def test_objects_of_the_users_on_what_the_rollback_drops_refuse_it_before_any_change(fixture_db, tmp_path):
    """A policy written by hand on the new column or calling the canonical helper pgconverge made, a view on the
    private mapping: Postgres would refuse the rollback's DROP half way. The rollback refuses before its first change,
    naming each object and what it depends on; only what the phases undone drop counts."""
    dsn = fixture_db
    cfg = write_config(tmp_path, "[migration]\nrls_sample = 5\nobservation_window = 0\n")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("""create schema storage;
            create table storage.objects (id uuid primary key default gen_random_uuid(), name text);
            alter table storage.objects enable row level security;""")
        start = schema_dump(conn, ("public", "storage"))
        for ph in ("align", "expand", "switch", "contract"):
            cli("run", ph, "--dsn", dsn, "--config", cfg, *(("--accept-code-references",) if ph == "contract" else ()))
        conn.execute("""
            create policy own_files on storage.objects for select to authenticated
              using ((string_to_array(name, '/'))[1] = (select public.auth_profile_id())::text);
            create policy orders_mine on public.orders for select to authenticated using (profile_id = 0::text::uuid);
            create view public.identity_map as select * from archive.""" + conn.execute(
            "select quote_ident(relname) from pg_class where relnamespace = 'archive'::regnamespace "
            "and relname like 'legacy_customer_profile_%' and relkind = 'r'").fetchone()[0])
        contracted = schema_dump(conn, ("public", "storage", "pgconverge", "archive"))
        steps = cli_json("status", "--steps", "--dsn", dsn, "--config", cfg)

        out = " ".join(cli("rollback", "align", "--yes", "--dsn", dsn, "--config", cfg, expect=2).split())
        assert "nothing was changed" in out and "run the rollback again" in out, out
        for blocker in ("policy own_files on table storage.objects depends on function auth_profile_id()",
                        "policy orders_mine on table orders depends on column profile_id of table orders",
                        "view public.identity_map depends on"):
            assert blocker in out, out
        assert out.count(" depends on ") == 3, out  # pgconverge's own objects are not named
        # A dry run says the same: it shows what the rollback would do, and this one would do nothing.
        dry = " ".join(cli("rollback", "align", "--dry-run", "--dsn", dsn, "--config", cfg, expect=2).split())
        assert "view public.identity_map depends on" in dry and "rollback align on" not in dry, dry
        # Nor are such files written: applied, they would stop at the same DROP.
        (tmp_path / "project").mkdir()
        files = " ".join(cli("emit", str(tmp_path / "project"), "--rollback-to", "align", "--dsn", dsn, "--config",
                             cfg, expect=2).split())
        assert "view public.identity_map depends on" in files, files
        assert not list((tmp_path / "project").rglob("*.sql"))
        # Switch and contract alone: the view on the mapping does not stop them (align's rollback drops the mapping).
        out = " ".join(cli("rollback", "switch", "--yes", "--dsn", dsn, "--config", cfg, expect=2).split())
        assert "policy own_files on table storage.objects depends on function auth_profile_id()" in out, out
        assert "identity_map" not in out and "orders_mine" not in out, out
        assert schema_dump(conn, ("public", "storage", "pgconverge", "archive")) == contracted
        assert cli_json("status", "--steps", "--dsn", dsn, "--config", cfg) == steps

        conn.execute("drop policy own_files on storage.objects; drop policy orders_mine on public.orders; "
                     "drop view public.identity_map")
        cli("rollback", "align", "--yes", "--dsn", dsn, "--config", cfg)
        assert schema_dump(conn, ("public", "storage")) == start


def test_rollback_switch_refuses_when_a_rewritten_policy_is_gone(make_db, template_factory, tmp_path):
    """The application replaced a policy the switch rewrote (dropped carts_owner, made carts_owner_v2): the rollback
    cannot give carts_owner back its text. It refuses before its first change, the dry run too, naming the policy
    and the way out; done, the rollback goes through."""
    import psycopg

    from _support import cli, schema_dump, write_config

    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, "[migration]\nobservation_window = 0\nrls_sample = 5\n")
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("drop policy carts_owner on public.carts; create policy carts_owner_v2 on public.carts for all to "
                  "authenticated using (customer_id = auth_customer_id()) "
                  "with check (customer_id = auth_customer_id())")
        before = schema_dump(c)
        for args in (("--dry-run",), ("--yes",)):
            out = " ".join(cli("rollback", "switch", *args, "--dsn", dsn, "--config", cfg, expect=2).split())
            assert "policy carts_owner on public.carts" in out and "no longer exist" in out, out
            assert "nothing was changed" in out and "CREATE POLICY" in out and "does not exist" not in out, out
        assert schema_dump(c) == before
        c.execute("create policy carts_owner on public.carts for all to authenticated using (true)")
    cli("rollback", "switch", "--yes", "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as c:
        qual = c.execute("select qual from pg_policies where policyname = 'carts_owner'").fetchone()[0]
        assert "auth_customer_id()" in qual, qual
