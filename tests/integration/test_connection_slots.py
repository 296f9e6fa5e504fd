"""No connection slot left (max_connections, a role's or database's CONNECTION LIMIT used up by an application's
pool): the error says so and what to raise or close, not to check the host, port, user and password."""

from __future__ import annotations

import uuid

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from _support import cli


def test_no_connection_slot_left_names_the_limit_not_the_address(make_db, template_factory):
    dsn = make_db(template_factory(0.1))
    role = f"pool_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("create role {} login connection limit 1").format(sql.Identifier(role)))
        try:
            limited = make_conninfo(**{**conninfo_to_dict(dsn), "user": role})
            with psycopg.connect(limited):  # the application's pool holds the role's only slot
                out = " ".join(cli("status", "--dsn", limited, expect=2).split())
        finally:
            admin.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))
    assert "too many connections for role" in out and "no connection slot left" in out, out
    assert "max_connections" in out and "CONNECTION LIMIT" in out and "close idle sessions" in out, out
    assert "password" not in out, out
