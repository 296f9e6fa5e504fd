"""The legacy RLS helper in every style real Supabase projects write it, end to end through every phase.

Each case is a small self-made schema whose carts policy calls the legacy helper in one style (JSON
claims, per-claim settings, auth.jwt(), a wrapper around another function, a lookup by auth.uid()) and
variant (schema, owner, SECURITY DEFINER, sql or plpgsql, key types). Every phase runs through the CLI;
after each, role authenticated with real claims must see exactly its own person's carts, with an old
token (until contract) and a new one (from switch on), and new code writing only profile_id must work
from expand on. Then `rollback align` must give back the schema as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
import pytest

from _small import (
    AUTH_SQL, base_sql, config, insert_cart, policy_sql, roles_sql, state, visible,
)
from _support import cli, schema_dump, write_config

OWNER = "helper_owner"
SCHEMAS = ("public", "app", "private", "link")
CLAIMS_JSON = "nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'customer_id', '')"
CLAIM_SETTING = "nullif(current_setting('request.jwt.claim.customer_id', true), '')"
LOOKUP = "select c.id from public.customers c where c.auth_user_id = auth.uid()"


@dataclass(frozen=True)
class Case:
    id: str
    helper: str  # schema.name of the legacy helper
    setup: str  # SQL creating it (and whatever it calls); {t} is the legacy key type
    lookup: bool = False  # identifies the caller by auth.uid() rather than a claim
    canonical_helper: str = "public.auth_profile_id"
    legacy_key: str = "bigint"
    canonical_key: str = "uuid"
    owner: bool = False  # the helper (and what it calls) belong to another role than the migration's


def fn(name: str, body: str, *, lang: str = "sql", definer: bool = False, returns: str = "{t}",
       args: str = "", path: bool = True) -> str:
    """CREATE FUNCTION text; a plpgsql BODY is the expression it returns."""
    src = f"begin return {body}; end" if lang == "plpgsql" else body
    return (f"create function {name}({args}) returns {returns} language {lang} stable"
            f"{' security definer' if definer else ''}{' set search_path = pg_catalog' if path else ''} "
            f"as $fn$ {src} $fn$;\n")


CASES = [
    Case("claims_json-sql", "public.auth_customer_id",
         fn("public.auth_customer_id", f"select {CLAIMS_JSON}::{{t}}", path=False)),
    Case("claims_json-plpgsql-definer-owner-app", "app.auth_customer_id",
         fn("app.auth_customer_id", f"{CLAIMS_JSON}::{{t}}", lang="plpgsql", definer=True), owner=True,
         canonical_helper="app.auth_profile_id"),
    Case("claim_setting-sql-owner-app", "app.current_customer_id",
         fn("app.current_customer_id", f"select {CLAIM_SETTING}::{{t}}"), owner=True),
    Case("claim_setting-plpgsql-definer", "public.auth_customer_id",
         fn("public.auth_customer_id", f"{CLAIM_SETTING}::{{t}}", lang="plpgsql", definer=True)),
    Case("auth_jwt-sql", "public.auth_customer_id",
         fn("public.auth_customer_id", "select (auth.jwt() ->> 'customer_id')::{t}")),
    Case("auth_jwt-plpgsql-definer-owner-app", "app.auth_customer_id",
         fn("app.auth_customer_id", "(auth.jwt() ->> 'customer_id')::{t}", lang="plpgsql", definer=True),
         owner=True),
    # A wrapper: the claim is read by another function, given the claim's name.
    Case("wrapper-claim_id-sql", "public.auth_customer_id",
         fn("public.claim_id", "select nullif(auth.jwt() ->> name, '')::{t}", args="name text")
         + fn("public.auth_customer_id", "select public.claim_id('customer_id')")),
    Case("wrapper-claim_text-plpgsql-definer-owner", "app.auth_customer_id",
         fn("private.claim_text", "select nullif(current_setting('request.jwt.claims', true)::jsonb ->> $1, '')",
            args="text", returns="text")
         + fn("app.auth_customer_id", "private.claim_text('customer_id')::{t}", lang="plpgsql", definer=True),
         owner=True),
    # A wrapper around an argument-less helper that reads the claim itself.
    Case("wrapper-current_customer-sql-definer-owner", "app.auth_customer_id",
         fn("private.current_customer", f"{CLAIM_SETTING}::{{t}}", lang="plpgsql")
         + fn("app.auth_customer_id", "select private.current_customer()", definer=True), owner=True),
    # Lookups: no claim, the caller's customer row is found by its auth user.
    Case("lookup-sql-definer", "public.auth_customer_id",
         fn("public.auth_customer_id", LOOKUP, definer=True), lookup=True),
    Case("lookup-plpgsql-owner-app", "app.auth_customer_id",
         fn("app.auth_customer_id", f"({LOOKUP})", lang="plpgsql", definer=True), lookup=True, owner=True,
         canonical_helper="app.auth_profile_id"),
    Case("lookup-wrapper-sql", "public.auth_customer_id",
         fn("private.current_customer", LOOKUP, definer=True)
         + fn("public.auth_customer_id", "select private.current_customer()"), lookup=True),
    # Key types other than bigint → uuid.
    Case("keys-uuid-bigint-claims_json", "public.auth_customer_id",
         fn("public.auth_customer_id", f"select {CLAIMS_JSON}::{{t}}"), legacy_key="uuid", canonical_key="bigint"),
    Case("keys-text-integer-claim_setting", "public.auth_customer_id",
         fn("public.auth_customer_id", f"select {CLAIM_SETTING}"), legacy_key="text", canonical_key="integer"),
    Case("keys-integer-text-auth_jwt-plpgsql", "app.auth_customer_id",
         fn("app.auth_customer_id", "(auth.jwt() ->> 'customer_id')::{t}", lang="plpgsql"), legacy_key="integer",
         canonical_key="text"),
]


def build(conn: psycopg.Connection, case: Case) -> None:
    owner = f"""
alter function {case.helper}() owner to {OWNER};
grant usage on schema public, private, auth to {OWNER};
grant select on public.customers to {OWNER};
do $$ declare f regprocedure; begin
  for f in select p.oid from pg_proc p where p.pronamespace = 'private'::regnamespace loop
    execute format('alter function %s owner to {OWNER}', f);
  end loop; end $$;
""" if case.owner else ""
    conn.execute(roles_sql(OWNER) + AUTH_SQL + base_sql(case.legacy_key, case.canonical_key) + """
create schema app; create schema private;
grant usage on schema app, private to anon, authenticated, service_role;
""" + case.setup.replace("{t}", case.legacy_key) + owner + policy_sql(case.helper))


class World:
    """Who owns what, from the start, and what each caller must see after each phase."""

    def __init__(self, conn: psycopg.Connection, case: Case):
        self.case = case
        self.customers = conn.execute("select id::text, auth_user_id::text from public.customers "
                                      "order by wa_id nulls last").fetchall()  # numbers 1-24, the merged one, none
        self.sub = dict(self.customers)
        self.owner = dict(conn.execute("select id::text, customer_id::text from public.carts").fetchall())
        self.person: dict[str, str] = {}  # customer → profile, from align on
        self.new: dict[str, str] = {}  # carts new code wrote → profile

    def legacy_token(self, customer: str) -> dict:
        return {"sub": self.sub[customer]} if self.case.lookup else {"customer_id": customer}

    def new_token(self, customer: str, *, both: bool) -> dict:
        claims = {"profile_id": self.person[customer]}
        if self.case.lookup:
            claims["sub"] = self.sub[customer]  # the auth user stays the caller's
        elif both:
            claims["customer_id"] = customer  # until the switch, new code's token carries both claims
        return claims

    def persons_carts(self, profile: str) -> set[str]:
        mine = {c for c, o in self.owner.items() if self.person[o] == profile}
        return mine | {c for c, p in self.new.items() if p == profile}

    def check(self, conn: psycopg.Connection, phase: str) -> None:
        switched = phase in ("switch", "contract")
        if phase == "align":
            self.person = dict(conn.execute(
                "select customer_id::text, profile_id::text from pgconverge.legacy_customer_profile").fetchall())
            assert set(self.person) == set(self.sub)
        legacy_ids = ({} if phase == "contract" else
                      dict(conn.execute("select id::text, customer_id::text from public.carts").fetchall()))
        for cart, customer in self.owner.items():  # old rows keep their owner in every phase
            assert legacy_ids.get(cart, customer) == customer, (cart, legacy_ids.get(cart), customer)
        for cart, profile in self.new.items():  # new code's rows get a legacy id of their person back
            if phase != "contract":
                assert self.person[legacy_ids[cart]] == profile, (cart, legacy_ids[cart], profile)
        assert visible(conn, None) == set(), "the anonymous caller sees carts"
        for customer, _ in self.customers:
            if phase != "contract":
                if switched:
                    want = self.persons_carts(self.person[customer])
                else:
                    want = {c for c, o in legacy_ids.items() if o == customer}
                got = visible(conn, self.legacy_token(customer))
                assert got == want, f"{phase}: old token of customer {customer}: {sorted(got)} != {sorted(want)}"
            if switched:
                want = self.persons_carts(self.person[customer])
                got = visible(conn, self.new_token(customer, both=False))
                assert got == want, f"{phase}: new token of customer {customer}: {sorted(got)} != {sorted(want)}"

    def new_code_writes(self, conn: psycopg.Connection, phase: str) -> None:
        """New code opens a cart for a merged person, a matched one and one whose profile align created."""
        picks = {"merged": next(c for c, _ in self.customers if list(self.person.values()).count(self.person[c]) > 1),
                 "matched": self.customers[1][0], "created": self.customers[20][0]}
        for customer in picks.values():
            profile = self.person[customer]
            cart = insert_cart(conn, self.new_token(customer, both=phase == "expand"), "profile_id", profile)
            self.new[cart] = profile


def _canonical_by_hand(conn: psycopg.Connection, case: Case, *, through_legacy: bool = False) -> None:
    """What contract's gate asks of a lookup helper: the canonical side's own link to the auth user.

    THROUGH_LEGACY writes a canonical helper that still reaches the legacy table, through a function it calls.
    """
    if through_legacy:
        conn.execute(f"""
create schema if not exists link;
create function link.profile_of(u uuid) returns {case.canonical_key} language sql stable security definer
  set search_path = '' as $$ select m.profile_id from public.customers c
  join pgconverge.legacy_customer_profile m on m.customer_id = c.id where c.auth_user_id = u $$;
create or replace function {case.canonical_helper}() returns {case.canonical_key} language sql stable
  security definer set search_path = '' as $$ select link.profile_of(auth.uid()) $$;
""")
        return
    conn.execute(f"""
create schema if not exists link;
create table link.profile_auth_users (auth_user_id uuid primary key, profile_id {case.canonical_key} not null);
insert into link.profile_auth_users select c.auth_user_id, m.profile_id from public.customers c
  join pgconverge.legacy_customer_profile m on m.customer_id = c.id;
create or replace function {case.canonical_helper}() returns {case.canonical_key} language sql stable
  security definer set search_path = '' as $$
  select l.profile_id from link.profile_auth_users l where l.auth_user_id = auth.uid() $$;
""")


def _language(conn, helper: str) -> str:
    return conn.execute("select l.lanname from pg_proc p join pg_language l on l.oid = p.prolang "
                        "where p.oid = %s::regproc", (helper,)).fetchone()[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_phase_and_rollback(case: Case, make_db, tmp_path):
    dsn = make_db()
    cfg = write_config(tmp_path, config(case.helper, canonical_helper=case.canonical_helper))
    accept = ("--accept-code-references", "--accept-runtime-use")
    with psycopg.connect(dsn, autocommit=True) as conn:
        build(conn, case)
        world = World(conn, case)
        before = schema_dump(conn, SCHEMAS), state(conn, SCHEMAS)
        world.check(conn, "start")
        language = _language(conn, case.helper)
        cli("plan", "--dsn", dsn, "--config", cfg)
        for phase in ("align", "expand", "switch", "contract"):
            if phase == "contract" and case.lookup:
                out = " ".join(cli("run", phase, *accept, "--dsn", dsn, "--config", cfg, expect=2).split())
                assert "canonical helper stands alone" in out and f"{case.canonical_helper}() reads" in out, out
                _canonical_by_hand(conn, case)
            cli("run", phase, *(accept if phase == "contract" else ()), "--dsn", dsn, "--config", cfg)
            world.check(conn, phase)
            if phase == "switch":
                # The bridge that replaced the helper while the application called it is in the helper's language:
                # a statement that looked the helper up just before keeps that language's handler for the new body.
                assert _language(conn, case.helper) == language
                # Its RLS check acted as real callers who saw rows, not as nobody.
                eq = conn.execute("select data from pgconverge.snapshots where name = 'rls_equivalence' "
                                  "order by id desc limit 1").fetchone()[0]
                assert eq["problems"] == [] and eq["rows_seen"] >= len(world.owner), eq
                out = " ".join(cli("verify", "--rls", "--dsn", dsn, "--config", cfg).split())
                assert "pass rls" in out and "nothing was compared" not in out, out
            if phase != "align":
                world.new_code_writes(conn, phase)
                world.check(conn, phase)
        cli("rollback", "align", "--dsn", dsn, "--config", cfg)
        if case.lookup:
            conn.execute("drop schema link cascade")
        world.check(conn, "start")
        assert (schema_dump(conn, SCHEMAS), state(conn, SCHEMAS)) == before
        if case.owner:  # the helper's owner read the mapping while the bridge stood, not after
            assert not conn.execute(f"select has_schema_privilege('{OWNER}', 'pgconverge', 'usage')").fetchone()[0]


def test_contract_gate_reads_the_helper_as_it_is_when_it_runs(make_db, tmp_path):
    """`run --all` plans contract from a catalog read before the switch created the canonical helper: the
    gate must still find that the derived lookup reads the legacy table and the mapping, and also a
    hand-written helper that reaches them through a function it calls, and pass once neither does."""
    case = next(c for c in CASES if c.id == "lookup-wrapper-sql")
    dsn = make_db()
    cfg = write_config(tmp_path, config(case.helper))
    accept = ("--accept-code-references", "--accept-runtime-use")
    with psycopg.connect(dsn, autocommit=True) as conn:
        build(conn, case)
        out = " ".join(cli("run", "--all", *accept, "--dsn", dsn, "--config", cfg, expect=2).split())
        assert "canonical helper stands alone" in out and "public.auth_profile_id() reads customers" in out, out
        assert "legacy_customer_profile" in out and "run contract again" in out, out
        _canonical_by_hand(conn, case, through_legacy=True)
        before = schema_dump(conn, SCHEMAS)
        out = " ".join(cli("run", "contract", *accept, "--dsn", dsn, "--config", cfg, expect=2).split())
        assert "through link.profile_of(u uuid)" in out, out
        assert schema_dump(conn, SCHEMAS) == before  # nothing dropped, nothing archived
        conn.execute("drop schema link cascade")
        _canonical_by_hand(conn, case)
        cli("run", "contract", *accept, "--dsn", dsn, "--config", cfg)
        assert conn.execute("select to_regclass('public.customers')").fetchone()[0] is None
        sub, profile = conn.execute("select auth_user_id::text, profile_id::text from link.profile_auth_users l "
                                    "where exists (select 1 from public.carts c where c.profile_id = l.profile_id) "
                                    "limit 1").fetchone()
        owned = {r[0] for r in conn.execute("select id::text from public.carts where profile_id = %s::uuid",
                                            (profile,))}
        assert visible(conn, {"sub": sub}) == owned != set()


UNDERIVABLE = {
    "plpgsql-with-logic": ("""
create function public.auth_customer_id() returns bigint language plpgsql stable as $fn$
declare v text;
begin
  v := current_setting('request.jwt.claim.customer_id', true);
  if v = '' then return null; end if;
  return v::bigint;
end $fn$;""", "not a single RETURN"),
    # CURRENT_USER means the owner inside the derived SECURITY DEFINER helpers: the guard would let anon in.
    "tests-the-callers-role": (fn("public.auth_customer_id",
                                  f"select case when current_user = 'anon' then null else {CLAIMS_JSON}::bigint end"),
                               "reads current_user"),
    "owned-by-an-api-role": (fn("public.auth_customer_id", f"select {CLAIMS_JSON}::bigint")
                             + "alter function public.auth_customer_id() owner to authenticated;", "an API role"),
}


@pytest.mark.parametrize("name", sorted(UNDERIVABLE))
def test_a_helper_that_cannot_be_derived_is_refused_before_the_switch_changes_anything(name, make_db, tmp_path):
    setup, reason = UNDERIVABLE[name]
    dsn = make_db()
    cfg = write_config(tmp_path, config("public.auth_customer_id"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        build(conn, Case(name, "public.auth_customer_id", setup))
        for args in (("plan",), ("plan", "switch")):
            out = " ".join(cli(*args, "--dsn", dsn, "--config", cfg, expect=2).split())
            assert "cannot derive public.auth_profile_id() from the legacy helper public.auth_customer_id()" in out
            assert reason in out and "fix: rewrite public.auth_customer_id() as one SELECT" in out, out
            assert "where no column of public.customers holds its person's auth user id" in out, out
        cli("plan", "align", "--dsn", dsn, "--config", cfg)  # align and expand do not depend on it
        for phase in ("align", "expand"):
            cli("run", phase, "--dsn", dsn, "--config", cfg)
        before = schema_dump(conn, SCHEMAS), state(conn, SCHEMAS)
        out = " ".join(cli("run", "switch", "--dsn", dsn, "--config", cfg, expect=2).split())
        assert "helper public.auth_customer_id" in out and reason in out and "rewrite public.auth_customer_id()" in out
        assert (schema_dump(conn, SCHEMAS), state(conn, SCHEMAS)) == before
        assert conn.execute("select to_regprocedure('public.auth_profile_id()')").fetchone()[0] is None
