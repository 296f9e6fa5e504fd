"""A step that fails keeps Postgres' HINT in its error; "out of shared memory" (the lock table full) says to raise
max_locks_per_transaction."""

from __future__ import annotations

import psycopg

from _support import cli, write_config


def test_out_of_shared_memory_keeps_the_hint_and_names_max_locks_per_transaction(make_db, template_factory,
                                                                                  tmp_path):
    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, "[migration]\nrls_sample = 5\n")
    with psycopg.connect(dsn, autocommit=True) as c:  # stands in for a full lock table at align's first DDL
        c.execute("create function public.full_lock_table() returns event_trigger language plpgsql as $$ begin "
                  "if current_query() ~ 'pgconverge_align' then raise exception using errcode = '53200', "
                  "message = 'out of shared memory', "
                  "hint = 'You might need to increase \"max_locks_per_transaction\".'; end if; end $$")
        c.execute("create event trigger full_lock_table on ddl_command_end execute function public.full_lock_table()")
    out = " ".join(cli("run", "align", "--dsn", dsn, "--config", cfg, expect=2).split())
    assert "out of shared memory" in out and "SQLSTATE 53200" in out, out
    assert 'You might need to increase "max_locks_per_transaction"' in out, out
    assert "step align.legacy_trigger failed" in out and "the server's lock table is full" in out, out
    assert "fix: raise max_locks_per_transaction" in out, out


def test_out_of_shared_memory_outside_a_step_names_max_locks_per_transaction(make_db, template_factory, tmp_path):
    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, "[migration]\nrls_sample = 5\n")
    with psycopg.connect(dsn, autocommit=True) as c:  # at the first DDL of all: the ledger's
        c.execute("create function public.full_lock_table() returns event_trigger language plpgsql as $$ begin "
                  "raise exception using errcode = '53200', message = 'out of shared memory', "
                  "hint = 'You might need to increase \"max_locks_per_transaction\".'; end $$")
        c.execute("create event trigger full_lock_table on ddl_command_end execute function public.full_lock_table()")
    out = " ".join(cli("run", "align", "--dsn", dsn, "--config", cfg, expect=2).split())
    assert "out of shared memory" in out and "max_locks_per_transaction" in out.split("fix:")[1], out
    assert "connection failed or was lost" not in out, out


def test_the_rls_snapshot_session_ended_is_named_as_the_cause(make_db, template_factory, tmp_path, monkeypatch):
    """The session holding the RLS check's snapshot is terminated after the rewrite, before the check imports the
    snapshot: the error says which session ended and what it means, not a bare 'invalid snapshot identifier'; the
    policies are the original ones, and the same command goes through."""
    import time

    from pgconverge.execution import policy_switch

    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, "[migration]\nrls_sample = 5\n")
    for ph in ("align", "expand"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as c:
        original = dict(c.execute("select policyname, qual from pg_policies"))
    at = policy_switch._at

    def terminated_first(runner, snapshot, name):
        if name == "pgconverge:rls-after":
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                          "where application_name = 'pgconverge:rls-snapshot'")
                while c.execute("select count(*) from pg_stat_activity "
                                "where application_name = 'pgconverge:rls-snapshot'").fetchone()[0]:
                    time.sleep(0.01)
        return at(runner, snapshot, name)

    monkeypatch.setattr(policy_switch, "_at", terminated_first)
    out = " ".join(cli("run", "switch", "--dsn", dsn, "--config", cfg, expect=2).split())
    assert "the session holding the snapshot the RLS equivalence check reads" in out, out
    assert "pgconverge:rls-snapshot" in out and "terminated" in out and "fix: run the same command again" in out, out
    with psycopg.connect(dsn, autocommit=True) as c:
        assert dict(c.execute("select policyname, qual from pg_policies")) == original
    monkeypatch.setattr(policy_switch, "_at", at)
    cli("run", "switch", "--dsn", dsn, "--config", cfg)
