"""`rollback PHASE` undoes PHASE and every phase after it; the old `--to` spelling is refused naming the new one; a
phase that never ran is refused with nothing changed; one rolled back already is left as it is (not even pgconverge's schema created); on a terminal the
rollback asks first, and an answer of no changes nothing."""

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
        # Rolled back already: the same command again finds nothing left to undo and changes nothing.
        cli("rollback", "expand", "--dsn", dsn, "--config", cfg)
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
