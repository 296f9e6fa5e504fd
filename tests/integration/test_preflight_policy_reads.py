"""The preflight's copy holds what the policies read through the functions they call.

A policy that calls a SECURITY DEFINER function reading a membership table (basejump's has_role_on_account()
reading account_user): no policy names that table and nothing refers to it, so a copy of the tables the plan
touches and their foreign-key closure left it empty, nobody saw their own rows there, and the preflight refused
every `run` with advice about token claims that did not apply. The copy now samples the tables those functions
read (through their callees too), with the rows naming the sampled people; where a function's reads cannot be
told from its body (dynamic SQL), the preflight says so and names it instead of refusing.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import conninfo

from _small import AUTH_SQL, base_sql, config, roles_sql
from _support import cli, cli_json, write_config


# The legacy helper finds the caller's customer by its auth user (the tokens carry `sub`), as basejump's does.
HELPER = ("create function public.auth_customer_id() returns bigint language sql stable security definer "
          "set search_path = '' as $$ select c.id from public.customers c where c.auth_user_id = auth.uid() $$;")

# Each customer is a member of its carts' team through its auth user (a member reads the team's carts); 3,000
# memberships more, of auth users without a customer, so that a random few hundred of team_members would hold hardly
# any of the customers' own.
TEAMS_SQL = """
delete from public.carts where customer_id = (select id from public.customers where wa_id = '0780000001');
delete from public.customers where wa_id = '0780000001';  -- one person, one auth user
create table auth.users (id uuid primary key);
insert into auth.users (id) select auth_user_id from public.customers;
alter table public.customers add foreign key (auth_user_id) references auth.users (id);
create table public.teams (id int primary key, name text);
insert into public.teams select i, 'team ' || i from generate_series(1, 5) i;
alter table public.carts add column team_id int references public.teams (id);
update public.carts set team_id = customer_id % 5 + 1;
create table public.team_members (team_id int not null references public.teams (id),
  user_id uuid not null references auth.users (id), primary key (team_id, user_id));
insert into public.team_members select distinct k.team_id, c.auth_user_id from public.carts k
  join public.customers c on c.id = k.customer_id;
insert into auth.users (id) select ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid
  from generate_series(1, 3000) i;
insert into public.team_members select i % 5 + 1, ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid
  from generate_series(1, 3000) i;
revoke all on public.team_members from anon, authenticated;
grant usage on schema auth to authenticated;
"""

# The only way to one's own carts: a membership of the cart's team, read by a SECURITY DEFINER function (the
# caller cannot read team_members itself) that the policy calls, through a second function.
DEFINER_SQL = """
create function public.member_of(team int) returns boolean language sql stable security definer
  set search_path = public as $$
  select exists (select 1 from team_members m where m.team_id = team and m.user_id = auth.uid()) $$;
create function public.can_read_team(team int) returns boolean language sql stable as
  $$ select public.member_of(team) $$;
"""

# The same membership, looked up with SQL built at run time: the copy cannot tell it reads team_members.
DYNAMIC_SQL = """
create function public.can_read_team(team int) returns boolean language plpgsql stable security definer as $$
declare found boolean;
begin
  execute format('select exists (select 1 from %I.%I m where m.team_id = $1 and m.user_id = auth.uid())',
                 'public', 'team_members') into found using team;
  return found;
end $$;
"""

POLICIES_SQL = """
alter table public.carts enable row level security;
create policy carts_read on public.carts for select to authenticated using (public.can_read_team(team_id));
create policy carts_write on public.carts for insert to authenticated
  with check (customer_id = public.auth_customer_id());
grant execute on function public.can_read_team(int) to authenticated;
analyze;
"""


pytestmark = pytest.mark.usefixtures("preflight_on")


def _db(make_db, tmp_path, functions: str) -> tuple[str, str]:
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(roles_sql() + AUTH_SQL + base_sql() + HELPER + TEAMS_SQL + functions + POLICIES_SQL)
    return dsn, write_config(tmp_path, config("public.auth_customer_id"))


def _memberships(dsn: str) -> dict[str, set[int]]:
    """Each customer's auth user -> the teams it is a member of."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select c.auth_user_id::text, m.team_id from public.customers c "
                            "join public.team_members m on m.user_id = c.auth_user_id").fetchall()
    out: dict[str, set[int]] = {}
    for user, team in rows:
        out.setdefault(user, set()).add(team)
    return out


def test_a_membership_read_only_by_a_definer_function_is_in_the_copy(make_db, admin_dsn, tmp_path):
    dsn, cfg = _db(make_db, tmp_path, DEFINER_SQL)
    check = cli_json("plan", "--check", "--keep-preflight-copy", "--dsn", dsn, "--config", cfg)
    copy = conninfo.make_conninfo(admin_dsn, dbname=check["database"])
    try:
        assert check["verdict"] == "passed", check
        assert check["unread_functions"] == [] and check["rls_not_proven"] == [], check
        per = check["sample"]["per_table"]
        assert per.get("public.team_members"), per
        # every sampled customer keeps its memberships, as on the target (not a random few of the 3,000 others)
        mine, theirs = _memberships(copy), _memberships(dsn)
        with psycopg.connect(copy) as conn:
            sampled = {r[0] for r in conn.execute("select auth_user_id::text from public.customers "
                                                  "where auth_user_id is not null")}
        assert sampled and all(mine.get(u) == theirs.get(u) for u in sampled), (sampled, mine, theirs)
        assert per["public.team_members"] < 3000, per  # a sample, not the whole table
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{check["database"]}" with (force)')
    out = cli("run", "align", "--dsn", dsn, "--config", cfg)
    assert "preflight phases: ok" in out and "align finished" in out, out


def test_a_function_whose_reads_cannot_be_told_is_named_not_refused(make_db, tmp_path):
    """Dynamic SQL: the copy may lack what it reads, the check there sees nothing; the preflight goes on, names the
    function and says the check on the target still runs, which it does (and passes on the target's rows)."""
    dsn, cfg = _db(make_db, tmp_path, DYNAMIC_SQL)
    check = cli_json("plan", "--check", "--dsn", dsn, "--config", cfg)
    assert check["verdict"] == "passed", check
    assert any("can_read_team" in f and "EXECUTE" in f for f in check["unread_functions"]), check
    assert check["rls_not_proven"] and "proves nothing" in check["rls_not_proven"][0], check
    phases = next(s for s in check["stages"] if s["stage"] == "phases")
    assert "can_read_team" in phases["detail"] and "still runs" in phases["detail"], phases
    out = cli("run", "align", "--dsn", dsn, "--config", cfg)
    assert "preflight phases: ok" in out and "can_read_team" in out and "align finished" in out, out
    cli("run", "expand", "--skip-preflight", "--dsn", dsn, "--config", cfg)
    out = cli("run", "switch", "--skip-preflight", "--dsn", dsn, "--config", cfg)
    assert "switch finished" in out, out
