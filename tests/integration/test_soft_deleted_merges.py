"""A merged person's legacy id, where one of their legacy rows is a soft-deleted account, is the live account's.

The legacy table holds e-mails unique among live accounts only (`unique (lower(email)) where deleted_at is null`), so
an account closed and opened again under the same e-mail is two legacy rows of one person. Wherever pgconverge gives
such a person one legacy id (new code's insert by the new id alone, the bridged legacy helper for a new token, a
contract rollback's legacy-row lookup) it now gives the live account's, whatever the keys' order: by uuid order it
used to be whichever came first, the closed account as often as not, and old code signed in as the live account then
did not see the person's new rows. Rows that had an id of their own keep it through contract and its rollback. A
canonical row align creates for such a person is made from the live account too (it maps the live rows first).
"""

from __future__ import annotations

import json

import psycopg

from _support import cli, shim_db

# Person 1's closed account sorts first by uuid, person 2's closed account last: only the live rule picks both right.
DEAD1, LIVE1 = "00000000-0000-4000-8000-000000000001", "ffffffff-0000-4000-8000-000000000001"
LIVE2, DEAD2 = "00000000-0000-4000-8000-000000000002", "ffffffff-0000-4000-8000-000000000002"

SCHEMA = f"""
create table public.accounts (id uuid primary key default gen_random_uuid(), email text not null,
  display_name text, deleted_at timestamptz);
create unique index accounts_live_email on public.accounts (lower(email)) where deleted_at is null;
create table public.people (id uuid primary key default gen_random_uuid(), email text unique, display_name text);
create function public.auth_account_id() returns uuid language sql stable set search_path = '' as $$
  select nullif(nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'account_id', '')::uuid $$;
grant execute on function public.auth_account_id() to anon, authenticated, service_role;
create table public.notes (id bigserial primary key, account_id uuid not null references public.accounts(id),
  body text);
alter table public.notes enable row level security;
create policy notes_own on public.notes for all to authenticated
  using (account_id = public.auth_account_id()) with check (account_id = public.auth_account_id());
grant select, insert, update, delete on public.notes to authenticated;
grant usage on sequence public.notes_id_seq to authenticated;
insert into public.accounts (id, email, display_name, deleted_at) values
  ('{DEAD1}', 'one@x.test', 'closed one', now() - interval '1 year'), ('{LIVE1}', 'One@x.test', 'open one', null),
  ('{LIVE2}', 'two@x.test', 'open two', null), ('{DEAD2}', 'TWO@x.test', 'closed two', now() - interval '1 year');
insert into public.accounts (email) select 'p' || g || '@x.test' from generate_series(1, 12) g;
insert into public.notes (account_id, body) select id, 'seed ' || email from public.accounts;
"""

CONFIG = """
[legacy]
table = "public.accounts"
key = "id"
match_column = "email"
match = "email"
helper = "public.auth_account_id"
claim = "account_id"

[canonical]
table = "public.people"
key = "id"
match_column = "email"
helper = "public.auth_person_id"
claim = "person_id"
copy_columns = ["display_name"]

[migration]
new_column = "person_id"
observation_window = 0
token_claims = {}
"""


def _person(conn, account: str) -> str:
    return str(conn.execute("select person_id from pgconverge.legacy_account_people where account_id = %s",
                            (account,)).fetchone()[0])


def _new_code_note(conn, person: str, body: str) -> str:
    """new code's insert by the new id alone, as the service (no caller): the legacy id the sync trigger gives."""
    return str(conn.execute("insert into public.notes (person_id, body) values (%s, %s) returning account_id",
                            (person, body)).fetchone()[0])


def test_a_merged_persons_new_rows_get_the_live_accounts_id(make_db, tmp_path):
    dsn, args = shim_db(make_db, tmp_path, SCHEMA, CONFIG)
    cli("run", "align", *args)
    cli("run", "expand", *args)
    with psycopg.connect(dsn, autocommit=True) as conn:
        p1, p2 = _person(conn, LIVE1), _person(conn, LIVE2)
        assert p1 == _person(conn, DEAD1) and p2 == _person(conn, DEAD2)  # each person merged
        # ... onto one canonical row, made from the live account (align maps the live rows first)
        names = dict(conn.execute("select id::text, display_name from public.people").fetchall())
        assert (names[p1], names[p2]) == ("open one", "open two"), names
        assert _new_code_note(conn, p1, "service for one") == LIVE1
        assert _new_code_note(conn, p2, "service for two") == LIVE2
    cli("run", "switch", *args)
    with psycopg.connect(dsn) as conn:
        # A new token carries the canonical claim alone: the bridged legacy helper names the live account, and so
        # does the sync trigger for the person's own insert (it prefers the caller's legacy row).
        conn.execute("set local role authenticated")
        conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps({"person_id": p1}),))
        assert str(conn.execute("select public.auth_account_id()").fetchone()[0]) == LIVE1
        assert _new_code_note(conn, p1, "self one") == LIVE1
        conn.commit()
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = dict(conn.execute("select id, account_id::text from public.notes").fetchall())
        assert before and all(v for v in before.values())
    cli("run", "contract", *args, "--accept-code-references", "--accept-runtime-use")
    with psycopg.connect(dsn, autocommit=True) as conn:
        late = conn.execute("insert into public.notes (person_id, body) values (%s, 'after contract') returning id",
                            (p2,)).fetchone()[0]
    cli("rollback", "contract", *args, "--yes")
    with psycopg.connect(dsn, autocommit=True) as conn:
        after = dict(conn.execute("select id, account_id::text from public.notes").fetchall())
    # Every row written before contract has its own legacy id back (the closed accounts' seed rows included), and
    # the row written with no legacy column gets the live account's.
    assert {k: after[k] for k in before} == before
    assert after[late] == LIVE2
