"""The rows each identity may update and delete, compared across the switch.

A chat's shape: every signed-in user reads every message, so the read comparison shows nothing of whose a message is;
only the UPDATE and DELETE policies keep a person's messages its own. The owner's DELETE policy calls the legacy
helper (the switch rewrites it); the moderator's passes the helper to a function taking the legacy key
(`authorize('messages.delete', auth_customer_id())`), which the switch leaves to the user (accept_policies). Before,
`verify --rls` and contract's gate read and inserted only: a hand rewrite `using (true)` that lets anyone delete any
message passed both, and contract went through.
"""

from __future__ import annotations

import psycopg

from _support import IDENTITY_CONFIG, IDENTITY_TABLES, cli, shim_db

SCHEMA = IDENTITY_TABLES + r"""
create table public.messages (id bigserial primary key, customer_id bigint not null references public.customers(id),
  body text);
alter table public.messages enable row level security;
create function public.authorize(permission text, who bigint) returns boolean language sql stable as $$
  select coalesce(nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'app_role', '')
         = 'moderator' $$;
grant execute on function public.authorize(text, bigint) to authenticated;
create policy messages_read on public.messages for select to authenticated using (true);
create policy messages_insert on public.messages for insert to authenticated
  with check (customer_id = auth_customer_id());
create policy messages_update on public.messages for update to authenticated using (customer_id = auth_customer_id());
create policy messages_delete_own on public.messages for delete to authenticated
  using (customer_id = auth_customer_id());
create policy messages_delete_moderator on public.messages for delete to authenticated
  using (public.authorize('messages.delete', auth_customer_id()));
grant select, insert, update, delete on public.messages to authenticated;
grant usage on sequence public.messages_id_seq to authenticated;
insert into auth.users (id) select ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid
  from generate_series(1, 20) i;
insert into public.customers (wa_id, display_name, auth_user_id)
  select '0788' || lpad(i::text, 6, '0'), 'c' || i, ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid
  from generate_series(1, 20) i;
insert into public.messages (customer_id, body) select 1 + (i % 20), 'm' || i from generate_series(1, 60) i;
"""
CONFIG = IDENTITY_CONFIG + 'accept_policies = ["public.messages.messages_delete_moderator"]\n'
ACCEPT = ("--accept-code-references", "--accept-runtime-use")
# The team's hand rewrite of the moderator policy: the role test alone (the helper was an unused argument).
GOOD = """create function public.authorize(permission text) returns boolean language sql stable as $$
  select coalesce(nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'app_role', '')
         = 'moderator' $$;
grant execute on function public.authorize(text) to authenticated;
alter policy messages_delete_moderator on public.messages using (public.authorize('messages.delete'));"""
# The same rewrite gone wrong: every signed-in user may delete every message.
WRONG = "alter policy messages_delete_moderator on public.messages using (true)"


def _switched(make_db, tmp_path):
    dsn, args = shim_db(make_db, tmp_path, SCHEMA, CONFIG)
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    return dsn, args


def _deleted_by_a_stranger(dsn: str) -> int:
    """Messages of customer 2 that customer 1's canonical token deletes (rolled back)."""
    with psycopg.connect(dsn) as c, c.transaction(force_rollback=True):
        pid = c.execute("select profile_id::text from public.messages where customer_id = 1 limit 1").fetchone()[0]
        c.execute("select set_config('request.jwt.claims', %s, true)", (f'{{"profile_id": "{pid}"}}',))
        c.execute("set local role authenticated")
        return c.execute("with d as (delete from public.messages where customer_id = 2 returning 1) "
                         "select count(*) from d").fetchone()[0]


def test_a_correct_hand_rewrite_of_a_delete_policy_passes(make_db, tmp_path):
    dsn, args = _switched(make_db, tmp_path)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(GOOD)
    out = " ".join(cli("verify", "--rls", *args).split())
    assert "pass rls" in out, out
    assert "UPDATE/DELETE reach compared" in out and "public.messages DELETE: 2" in out, out
    assert "public.messages UPDATE: 2" in out, out
    cli("run", "contract", *ACCEPT, *args)
    with psycopg.connect(dsn) as c:
        assert c.execute("select to_regclass('public.customers')").fetchone()[0] is None


def test_a_hand_rewrite_letting_anyone_delete_any_message_fails_verify_and_stops_contract(make_db, tmp_path):
    dsn, args = _switched(make_db, tmp_path)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(WRONG)
    assert _deleted_by_a_stranger(dsn) == 3  # the hole: anyone deletes anyone's messages
    out = " ".join(cli("verify", "--rls", *args, expect=1).split())
    assert "FAIL rls" in out and "may delete public.messages row" in out, out
    assert "which it could not delete under the policies as the switch began" in out, out
    out = " ".join(cli("run", "contract", *ACCEPT, *args, expect=2).split())
    assert "switch verified" in out and "may delete public.messages row" in out, out
    with psycopg.connect(dsn) as c:
        assert c.execute("select to_regclass('public.customers')").fetchone()[0] is not None  # nothing archived


def test_a_rewrite_keeping_owners_from_deleting_their_own_messages_fails_verify(make_db, tmp_path):
    dsn, args = _switched(make_db, tmp_path)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(GOOD)
        c.execute("alter policy messages_delete_own on public.messages using (false)")
    out = " ".join(cli("verify", "--rls", *args, expect=1).split())
    assert "may no longer delete public.messages row" in out, out
    assert "may delete public.messages row" not in out and "update public.messages" not in out, out
