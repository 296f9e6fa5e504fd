"""The preflight's RLS check on a sampled copy: memberships the policies read, and what a sample cannot keep.

Midday's team tables are read through one SECURITY DEFINER helper that reads the membership table, itself a
dependent of the legacy table (users_on_team.member_id). Its rows were sampled at random like any dependent's, so
once a few hundred people each had a team, the copy kept rows whose authors' memberships it left out: their owners
saw none of them there, the RLS check on the copy proved nothing, and the preflight refused align with a fix about
token claims, while the switch's check on the database itself passed. The copy now keeps, for a table the policies
read, the rows naming the rows chosen (every sampled person's memberships) even when it is a dependent; and where
the copy still lacks what the policies read (a membership joined on anything but a foreign key), a check that sees
nothing there is a note, not a refusal: the check on the database itself still runs, and still refuses.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import conninfo

from _small import AUTH_SQL, base_sql, config, roles_sql
from _support import cli, cli_json, write_config


# The legacy helper finds the caller's customer by its auth user (the tokens carry `sub`), as Midday's does.
HELPER = ("create function public.auth_customer_id() returns bigint language sql stable security definer "
          "set search_path = '' as $$ select c.id from public.customers c where c.auth_user_id = auth.uid() $$;")
N = 400  # customers, each with a team of its own: a random sample of team_members holds few of theirs

# Each customer is the member of its own team, and a cart is read by the members of its team only; the membership
# is read by a SECURITY DEFINER helper (the caller cannot read team_members itself).
ONE_EACH = """
delete from public.carts where customer_id = (select id from public.customers where wa_id = '0780000001');
delete from public.customers where wa_id = '0780000001';  -- one person, one auth user, one team
"""
BY_FOREIGN_KEY = ONE_EACH + """
create table public.teams (id bigint primary key, name text);
insert into public.teams select id, 'team ' || id from public.customers;
create table public.team_members (customer_id bigint not null references public.customers (id),
  team_id bigint not null references public.teams (id), primary key (customer_id, team_id));
insert into public.team_members select id, id from public.customers;
alter table public.carts add column team_id bigint references public.teams (id);
update public.carts set team_id = customer_id;
revoke all on public.team_members from anon, authenticated;
create function public.my_teams() returns setof bigint language sql stable security definer set search_path = ''
  as $$ select m.team_id from public.team_members m where m.customer_id = public.auth_customer_id() $$;
"""

# The same membership named by the customer's phone number and the team's id, without a foreign key: nothing ties
# it to the sampled rows.
BY_PHONE = ONE_EACH + """
create table public.teams (id bigint primary key, name text);
insert into public.teams select id, 'team ' || id from public.customers;
create table public.team_members (wa_id text not null, team_id bigint not null, primary key (wa_id, team_id));
insert into public.team_members select wa_id, id from public.customers where wa_id is not null;
alter table public.carts add column team_id bigint references public.teams (id);
update public.carts set team_id = customer_id;
revoke all on public.team_members from anon, authenticated;
create function public.my_teams() returns setof bigint language sql stable security definer set search_path = ''
  as $$ select m.team_id from public.team_members m join public.customers c on c.wa_id = m.wa_id
        where c.id = public.auth_customer_id() $$;
"""

POLICIES = """
alter table public.carts enable row level security;
create policy carts_read on public.carts for select to authenticated using (team_id in (select public.my_teams()));
create policy carts_write on public.carts for insert to authenticated with check (customer_id = auth_customer_id());
grant execute on function public.my_teams() to authenticated;
analyze;
"""


pytestmark = pytest.mark.usefixtures("preflight_on")


def _db(make_db, tmp_path, teams: str) -> tuple[str, str]:
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(roles_sql() + AUTH_SQL + base_sql(customers=N) + HELPER + teams + POLICIES)
    return dsn, write_config(tmp_path, config("public.auth_customer_id",
                                              extra='accept_policies = ["public.carts.carts_read"]\n'))


def _switch_for_real(dsn: str, cfg: str) -> None:
    """The database itself: align, expand and the switch with its RLS check pass."""
    for phase in ("align", "expand", "switch"):
        out = cli("run", phase, "--skip-preflight", "--dsn", dsn, "--config", cfg)
        assert f"{phase} finished" in out, out


def test_memberships_of_a_dependent_membership_table_come_with_the_sampled_people(make_db, admin_dsn, tmp_path):
    dsn, cfg = _db(make_db, tmp_path, BY_FOREIGN_KEY)
    check = cli_json("plan", "--check", "--keep-preflight-copy", "--dsn", dsn, "--config", cfg)
    copy = conninfo.make_conninfo(admin_dsn, dbname=check["database"])
    try:
        assert check["verdict"] == "passed", check
        assert check["rls_not_proven"] == [], check  # the check on the copy compared the sampled owners' rows
        with psycopg.connect(copy) as conn:
            # every cart on the copy is visible to its author: the author's membership of its team came along
            lost = conn.execute("select count(*) from public.carts k where not exists (select 1 from "
                                "public.team_members m where m.customer_id = k.customer_id and m.team_id = k.team_id)"
                                ).fetchone()[0]
            members = conn.execute("select count(*) from public.team_members").fetchone()[0]
        assert lost == 0 and members < N, (lost, members)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{check["database"]}" with (force)')
    _switch_for_real(dsn, cfg)


def test_a_check_that_sees_nothing_only_on_the_copy_is_a_note(make_db, tmp_path):
    """A membership the sample cannot follow (no foreign key): the check on the copy sees too few owners' rows and
    says so; the preflight passes, and the real switch's check, on every row, passes."""
    dsn, cfg = _db(make_db, tmp_path, BY_PHONE)
    check = cli_json("plan", "--check", "--dsn", dsn, "--config", cfg)
    assert check["verdict"] == "passed", check
    assert check["rls_not_proven"] and "proves nothing" in check["rls_not_proven"][0], check
    phases = next(s for s in check["stages"] if s["stage"] == "phases")
    assert "on the sampled copy the RLS check" in phases["detail"] and "target itself still runs" in phases["detail"], phases
    out = cli("run", "align", "--dsn", dsn, "--config", cfg)
    assert "preflight phases: ok" in out and "align finished" in out, out
    cli("run", "expand", "--skip-preflight", "--dsn", dsn, "--config", cfg)
    out = cli("run", "switch", "--skip-preflight", "--dsn", dsn, "--config", cfg)
    assert "switch finished" in out, out
