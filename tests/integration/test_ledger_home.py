"""The ledger knows the database it belongs to: its private schema restored on its own into a database that never
ran the migration is refused by every command that reads it, naming both databases and the fix, while a copy of the
whole database (CREATE DATABASE … TEMPLATE, as these tests make) is adopted."""

from __future__ import annotations

import subprocess

import psycopg
from psycopg.conninfo import conninfo_to_dict

from _support import cli, schema_dump
from pgconverge import rehearse


def _schema_dump_sql(dsn: str, schema: str) -> str:
    params = conninfo_to_dict(dsn)
    args = [str(rehearse.bin_path("pg_dump")), "--format=plain", "--no-password", "--inserts", "-n", schema]
    for key, flag in (("host", "--host"), ("port", "--port"), ("user", "--username")):
        if params.get(key):
            args.append(f"{flag}={params[key]}")
    return subprocess.run([*args, params["dbname"]], capture_output=True, check=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PGPASSWORD": params.get("password") or ""}).stdout


def test_a_ledger_restored_into_another_database_is_refused(make_db, template_factory):
    template = template_factory(0.1)
    src = make_db(template)
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", src)
    dst = make_db(template)  # never migrated
    dump = _schema_dump_sql(src, "pgconverge")
    with psycopg.connect(dst, autocommit=True) as c:
        c.execute(dump)
    with psycopg.connect(dst, autocommit=True) as c:  # the dump's session set its own search_path
        before = schema_dump(c, ("public",))
    for cmd in (("status",), ("verify",), ("run", "contract", "--accept-code-references", "--accept-runtime-use",
                                           "--yes"), ("rollback", "align", "--yes")):
        out = " ".join(cli(*cmd, "--dsn", dst, expect=2).split())
        assert "the private schema pgconverge was written in another database" in out, (cmd, out)
        assert "no trigger of its sync functions is on a table here" in out, (cmd, out)
        assert "drop schema pgconverge cascade" in out, (cmd, out)
    with psycopg.connect(dst, autocommit=True) as c:
        assert schema_dump(c, ("public",)) == before


def test_a_whole_copy_of_the_migrated_database_is_adopted(make_db, template_factory, admin_dsn):
    src = make_db(template_factory(0.1))
    for ph in ("align", "expand"):
        cli("run", ph, "--dsn", src)
    name = conninfo_to_dict(src)["dbname"]
    copy = make_db(name)  # CREATE DATABASE … TEMPLATE: another name and oid, the same ledger and objects
    assert "expand done" in " ".join(cli("status", "--dsn", copy).split())
    cli("run", "switch", "--dsn", copy)
    with psycopg.connect(copy, autocommit=True) as c:
        rows = c.execute("select data from pgconverge.snapshots where name = 'database_identity' order by id"
                         ).fetchall()
    assert rows[0][0]["database"] == name and rows[-1][0]["database"] == conninfo_to_dict(copy)["dbname"], rows
