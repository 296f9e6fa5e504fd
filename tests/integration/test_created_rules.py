"""The canonical rows align would create, checked against the canonical table's rules before align changes anything.

A created row holds the match value in the canonical spelling and the copied columns. A CHECK constraint, NOT NULL,
a unique key or a foreign key that refuses one would stop align's match partway, after its first changes; so `plan`
and `run align` refuse first, naming the rule and the legacy rows, and leave the database as it was.
"""

from __future__ import annotations

import psycopg
import pytest

from _small import AUTH_SQL, base_sql, policy_sql, roles_sql
from _support import cli, schema_dump, write_config

SCHEMAS = ("public", "auth", "pgconverge")


def _config(copy: str) -> str:
    return f"""
[legacy]
helper = "public.auth_customer_id"
[canonical]
helper = "public.auth_profile_id"
copy_columns = {{ {copy} }}
[migration]
rls_sample = 0
batch_size = 7
"""


HELPER = """
create function public.auth_customer_id() returns bigint language sql stable as $fn$
  select nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'customer_id', '')::bigint $fn$;
"""

# Customers 1-12 have a profile (same number); 13-24, the merged one's partner aside, and the one without a number
# get a profile made by align. Each case breaks one rule with some of those.
CASES = {
    "check": ("""
alter table public.customers add column nickname text;
alter table public.profiles add column nickname text check (char_length(nickname) <= 8);
update public.customers set nickname = 'c' || id;
update public.customers set nickname = 'a name much too long' where wa_id = '+250780000015';
update public.customers set nickname = 'too long as well' where wa_id = '+250780000003';  -- matched: not created
""", 'nickname = "nickname"', ["check constraint profiles_nickname_check", "CHECK ((char_length(nickname) <= 8))"],
              ["+250780000015"], ["+250780000003"]),
    "not_null": ("""
alter table public.customers add column nickname text;
alter table public.profiles add column nickname text not null default 'friend';
update public.customers set nickname = 'c' || id where wa_id <> '+250780000018';
""", 'nickname = "nickname"', ["public.profiles.nickname is NOT NULL", "public.customers.nickname, which is NULL"],
                 ["+250780000018"], []),
    "unique": ("""
alter table public.customers add column email text;
alter table public.profiles add column email text unique;
update public.customers set email = 'c' || id || '@example.com';
update public.profiles set email = 'taken@example.com' where whatsapp_e164 = '+250780000002';
update public.customers set email = 'taken@example.com' where wa_id = '+250780000017';
update public.customers set email = 'twice@example.com' where wa_id in ('+250780000014', '+250780000016');
""", 'email = "email"', ["unique index profiles_email_key (email): a public.profiles row has the value already",
                         "unique index profiles_email_key (email): two created rows would have the same value"],
               ["+250780000017", "+250780000014", "+250780000016"], []),
    # A value its canonical column's type refuses, as align's INSERT converts it.
    "cast": ("""
alter table public.customers add column nickname text;
alter table public.profiles add column nickname character varying(8);
update public.customers set nickname = 'c' || id;
update public.customers set nickname = 'a name much too long' where wa_id = '+250780000021';
""", 'nickname = "nickname"', ["a copied value does not fit its public.profiles column",
                               "value too long for type character varying(8)"], [], []),
    # Types INSERT does not convert between at all.
    "type": ("""
alter table public.customers add column age text;
alter table public.profiles add column age integer;
""", 'age = "age"', ["canonical.copy_columns copies public.customers.age (text) into public.profiles.age "
                     "(integer)"], [], []),
    "foreign_key": ("""
create table auth.users (id uuid primary key);
insert into auth.users select auth_user_id from public.customers where wa_id is distinct from '+250780000019';
alter table public.profiles add column auth_user_id uuid references auth.users (id);
""", 'auth_user_id = "auth_user_id"', ["foreign key profiles_auth_user_id_fkey (auth_user_id → auth.users)",
                                       "no such row there"], ["+250780000019"], []),
}


def _build(conn: psycopg.Connection, extra: str, keys: tuple[str, str] = ("bigint", "uuid")) -> None:
    helper = HELPER.replace("::bigint", f"::{keys[0]}").replace("returns bigint", f"returns {keys[0]}")
    conn.execute(roles_sql() + AUTH_SQL + base_sql(*keys) + helper + extra + policy_sql("public.auth_customer_id"))


def _ids(conn: psycopg.Connection, numbers: list[str]) -> list[str]:
    return [conn.execute("select id::text from public.customers where wa_id = %s", (n,)).fetchone()[0]
            for n in numbers]


@pytest.mark.parametrize("name, keys", [*((n, ("bigint", "uuid")) for n in sorted(CASES)),
                                        ("unique", ("uuid", "text")), ("foreign_key", ("text", "bigint"))])
def test_a_created_row_the_canonical_table_refuses_stops_align_before_its_first_change(name, keys, make_db, tmp_path):
    extra, copy, says, bad, fine = CASES[name]
    dsn = make_db()
    cfg = write_config(tmp_path, _config(copy))
    with psycopg.connect(dsn, autocommit=True) as conn:
        _build(conn, extra, keys)
        bad_ids, fine_ids = _ids(conn, bad), _ids(conn, fine)
        before = schema_dump(conn, SCHEMAS)
    for verb in (("plan",), ("run", "align")):
        out = " ".join(cli(*verb, "--dsn", dsn, "--config", cfg, expect=2).split())
        assert "align would create public.profiles rows that public.profiles refuses" in out, out
        for s in says:
            assert s in out, (s, out)
        listed = out.split("refuses, and stop partway:")[1].split("fix:")[0]
        for i in bad_ids:
            assert f" {i}" in listed.replace(",", " "), (i, listed)
        for i in fine_ids:  # a matched row creates nothing
            assert f" {i}," not in listed and not listed.rstrip().endswith(f" {i}"), (i, listed)
        assert "canonical.copy_columns" in out and "--decisions" in out, out
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert schema_dump(conn, SCHEMAS) == before
        assert conn.execute("select to_regnamespace('pgconverge')").fetchone()[0] is None


def test_rows_that_keep_every_rule_are_created_and_what_was_not_checked_is_said(make_db, tmp_path):
    dsn = make_db()
    cfg = write_config(tmp_path, _config('nickname = "nickname"'))
    with psycopg.connect(dsn, autocommit=True) as conn:
        _build(conn, """
alter table public.customers add column nickname text;
alter table public.profiles add column nickname text check (char_length(nickname) <= 8),
  add column locale text not null default 'en',
  add constraint nickname_or_locale check (nickname is not null or locale = 'en');
update public.customers set nickname = 'c' || id;
""")
    out = " ".join(cli("plan", "--dsn", dsn, "--config", cfg).split())
    assert "the 13 public.profiles rows align would create keep the table's rules" in out, out
    assert "not checked against the rows align creates" in out and "check constraint nickname_or_locale" in out, out
    assert "profiles_nickname_check" not in out.split("not checked")[1], out
    cli("run", "align", "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        created = conn.execute("select count(*) from pgconverge.legacy_customer_profile "
                               "where method = 'created'").fetchone()[0]
        assert created >= 12
        assert conn.execute("select count(*) from public.profiles p join pgconverge.legacy_customer_profile m "
                            "on m.profile_id = p.user_id join public.customers c on c.id = m.customer_id "
                            "where m.method = 'created' and p.nickname is distinct from c.nickname").fetchone()[0] == 0
