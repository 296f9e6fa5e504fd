"""Keys and match columns that compare case-insensitively: a text legacy key under a nondeterministic (ICU)
collation, a citext legacy key, and an e-mail match column under such a collation.

The legacy key is an e-mail address stored as 'Cust3@Shop.org'; old code's token, and the rows it writes, spell it
'cust3@shop.org', which the key's own equality takes for the same customer (its foreign key, its policy and its
helper do). Each shape runs the whole cycle, align to contract and back to before align, with old and new code
writing between the phases, and every row written checked for its owner.

The embedded server is built without ICU and ships no citext: these run on the PostgreSQL 15 server (the Debian
packages), which has both.
"""

from __future__ import annotations

import json

import psycopg
from psycopg import sql

from _small import roles_sql
from _support import PLAIN_CONFIG, cli, cli_json, write_config

STORED, SPELLED = "Cust3@Shop.org", "cust3@shop.org"  # customer 3's key as stored, and as old code spells it

_SCHEMA = """
create extension if not exists citext;
create collation if not exists public.ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
create table public.profiles (user_id uuid primary key default gen_random_uuid(), whatsapp_e164 text unique,
  email {email} unique, display_name text);
create table public.customers (id {key} primary key, wa_id text, email {email}, display_name text);
create function public.auth_customer_id() returns {helper} language sql stable as
  $$ select nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'customer_id', '')::{helper} $$;
grant execute on function public.auth_customer_id() to anon, authenticated, service_role;
create table public.orders (id serial primary key, customer_id {key} references public.customers (id), tag text);
create index on public.orders (customer_id);
alter table public.orders enable row level security;
create policy orders_own on public.orders for all to authenticated
  using (customer_id = auth_customer_id()) with check (customer_id = auth_customer_id());
grant usage on schema public to anon, authenticated, service_role;
grant select, insert, update, delete on public.orders to authenticated;
grant usage on all sequences in schema public to authenticated;
insert into public.customers (id, wa_id, email, display_name)
  select 'Cust' || i || '@Shop.org', '+25078' || lpad(i::text, 7, '0'), 'Person' || i || '@Example.ORG', 'c' || i
  from generate_series(1, 12) i;
-- half the customers have a profile already, its e-mail spelled in another case
insert into public.profiles (whatsapp_e164, email, display_name)
  select '+25078' || lpad(i::text, 7, '0'), 'person' || i || '@example.org', 'p' || i from generate_series(1, 6) i;
insert into public.orders (customer_id, tag) select id, 'seed' from public.customers, generate_series(1, 2);
"""

_EMAIL_MATCH = '[legacy]\nmatch_column = "email"\nmatch = "email"\n[canonical]\nmatch_column = "email"\n'

SHAPES = {
    # (legacy key column type, helper's type, e-mail columns' type, extra configuration)
    "ci_key": ("text collate public.ci", "text", "text", ""),
    "citext_key": ("public.citext", "public.citext", "text", ""),
    "ci_match": ("text", "text", "text collate public.ci", _EMAIL_MATCH),
}


def _setup(make_db15, tmp_path, shape: str) -> tuple[str, tuple[str, ...]]:
    key, helper, email, config = SHAPES[shape]
    dsn = make_db15()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(roles_sql() + _SCHEMA.format(key=key, helper=helper, email=email))
    return dsn, ("--dsn", dsn, "--config", write_config(tmp_path, config + PLAIN_CONFIG))


def _columns(conn) -> set[str]:
    return {r[0] for r in conn.execute("select attname from pg_attribute where attrelid = 'public.orders'::regclass "
                                       "and attnum > 0 and not attisdropped")}


def _profile(conn) -> str:
    return str(conn.execute("select profile_id from pgconverge.legacy_customer_profile where customer_id::text = %s",
                            (STORED,)).fetchone()[0])


def _as(conn, claims: dict) -> None:
    conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
    conn.execute("set local role authenticated")


def _write(dsn: str, tag: str, column: str, value: str) -> int:
    """Code that knows the caller by COLUMN (its token carries the claim of that name, VALUE) inserts a row tagged TAG
    with COLUMN alone, then counts the rows it sees. A refused insert fails the test."""
    with psycopg.connect(dsn) as conn:
        _as(conn, {column: value})
        conn.execute(sql.SQL("insert into public.orders ({}, tag) values (%s, %s)").format(sql.Identifier(column)),
                     (value, tag))
        n = conn.execute("select count(*) from public.orders").fetchone()[0]
        conn.commit()
    return n


def _old(dsn: str, tag: str, spelled: str) -> int:
    """Old code for customer 3, whose token spells the key SPELLED."""
    return _write(dsn, tag, "customer_id", spelled)


def _new_code(dsn: str, tag: str, profile: str) -> int:
    """New code for customer 3's profile: the new column only."""
    return _write(dsn, tag, "profile_id", profile)


def _owned(dsn: str, profile: str | None) -> int:
    """Customer 3's rows, as the owner reads them (superuser): each names customer 3 in every owner column there is
    (the key in either spelling, the profile); any row of customer 3's otherwise named fails the test."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cols = _columns(conn)
        rows = conn.execute(
            "select tag, {l}, {n} from public.orders".format(
                l="customer_id::text" if "customer_id" in cols else "null",
                n="profile_id::text" if "profile_id" in cols else "null")).fetchall()
    mine = [r for r in rows if (r[1] or "").lower() == SPELLED or (profile and r[2] == profile)]
    for tag, legacy, new in mine:
        if "customer_id" in cols:
            assert legacy is not None and legacy.lower() == SPELLED, (tag, legacy, new)
        if "profile_id" in cols:
            assert new == profile, (tag, legacy, new)
    return len(mine)


def _rls(args: tuple[str, ...], expect: int = 0) -> dict:
    """verify --rls over every identity: its RLS check."""
    result = cli_json("verify", "--rls", *args, "--sample", "0", expect=expect)
    return next(c for c in result["checks"] if c["step"] == "rls")


def _cycle(dsn: str, args: tuple[str, ...], spelled: str = SPELLED) -> None:
    """Every phase and back, old code (its token spelling the key SPELLED) and new code writing in between."""
    def _old_code(dsn, tag):
        return _old(dsn, tag, spelled)

    n = _owned(dsn, None)
    assert n == 2  # the seed rows
    assert _old_code(dsn, "old before") == n + 1
    cli("run", "align", *args)
    with psycopg.connect(dsn, autocommit=True) as conn:
        profile = _profile(conn)
    assert _old_code(dsn, "old after align") == _owned(dsn, None) == n + 2
    cli("run", "expand", *args)
    assert _old_code(dsn, "old after expand") == _owned(dsn, profile) == n + 3
    cli("run", "switch", *args)
    assert _old_code(dsn, "old after switch") == _owned(dsn, profile) == n + 4
    assert _new_code(dsn, "new after switch", profile) == _owned(dsn, profile) == n + 5
    assert _rls(args)["passed"]
    cli("run", "contract", *args, "--yes", "--accept-code-references", "--accept-runtime-use")
    assert _new_code(dsn, "new after contract", profile) == _owned(dsn, profile) == n + 6
    cli("rollback", "contract", *args, "--yes")
    assert _old_code(dsn, "old after rollback contract") == _owned(dsn, profile) == n + 7
    assert _new_code(dsn, "new after rollback contract", profile) == _owned(dsn, profile) == n + 8
    cli("rollback", "align", *args, "--yes")
    assert _old_code(dsn, "old after rollback align") == _owned(dsn, None) == n + 9
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert _columns(conn) == {"id", "customer_id", "tag"}
        # contract dropped it, its rollback wrote it back: as old code spelled it, not as its legacy row is stored
        assert conn.execute("select customer_id::text from public.orders where tag = 'old after expand'"
                            ).fetchone()[0] == spelled
        assert conn.execute("select to_regclass('pgconverge.legacy_customer_profile')").fetchone()[0] is None


def test_a_text_key_under_a_case_insensitive_collation(make_db15, tmp_path):
    """The mapping's legacy column compares as the key does: after the switch, old code's token spelling the key in
    another case still finds its rows, and may write them; the RLS check tries such a spelling itself."""
    dsn, args = _setup(make_db15, tmp_path, "ci_key")
    _cycle(dsn, args)


def test_verify_rls_spells_a_case_insensitive_key_otherwise(make_db15, tmp_path):
    """verify --rls builds old code's tokens with the key spelled in another case where the key's equality allows it,
    and says so: a mapping that compared case-sensitively would fail it."""
    dsn, args = _setup(make_db15, tmp_path, "ci_key")
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    rls = _rls(args)
    assert rls["passed"], rls
    assert rls["coverage"]["legacy_spelled_otherwise"] == rls["coverage"]["identities"] == 12, rls
    assert "spell the legacy key in another case" in rls["note"], rls
    # The mapping made case-sensitive again: old code's tokens spelled otherwise no longer see their rows.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute('alter table pgconverge.legacy_customer_profile alter column customer_id type text '
                     'collate pg_catalog."default"')
    rls = _rls(args, expect=1)
    assert not rls["passed"] and "see different rows" in str(rls["problems"]), rls


def test_a_citext_key(make_db15, tmp_path):
    """A citext key compared with citext's own = in the policy: the rewrite compares the new uuid column with the
    uuid's =, and the mapping's column is citext, so old code's token spelled otherwise finds its rows."""
    dsn, args = _setup(make_db15, tmp_path, "citext_key")
    cli("plan", *args)
    _cycle(dsn, args)


def test_an_email_match_column_under_a_case_insensitive_collation(make_db15, tmp_path):
    """The match key reads the e-mail columns under the default collation (Postgres runs no regular expression under
    a nondeterministic one): customers are matched to the profiles whose address differs only in case."""
    dsn, args = _setup(make_db15, tmp_path, "ci_match")
    cli("plan", *args)
    _cycle(dsn, args, spelled=STORED)  # a key of plain text: old code spells it as stored
    cli("run", "align", *args)
    with psycopg.connect(dsn, autocommit=True) as conn:
        matched = conn.execute("select count(*) from pgconverge.legacy_customer_profile "
                               "where method <> 'created'").fetchone()[0]
    assert matched == 6
