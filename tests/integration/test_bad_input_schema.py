"""Bad input, second part: each case is refused with an error that names the problem and the fix, and
changes nothing (schema, row counts, no step recorded as done), or it is handled as the design says.

Covered: malformed config values; identifiers with quotes, semicolons, spaces and unicode (quoted all the
way through the four phases, or refused, never injected); schemas pgconverge cannot migrate as they are
(no key, composite foreign key, canonical key without a default); phone numbers of every odd shape; a
database already partly migrated by hand; a role without the privileges it needs.
"""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg import sql

from _support import cli, cli_json, mapping_problems, odd_names_config, odd_names_schema, schema_dump, write_config

SMALL = 0.1
COUNTED: set[str] = set()  # bad inputs exercised, printed at the end


def _count(name: str) -> None:
    COUNTED.add(name)


def _snapshot(conn) -> dict:
    """Everything a refused command must leave as it was."""
    counts = {}
    for (schema, table) in conn.execute(
            "select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where c.relkind = 'r' and n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast') "
            "order by 1, 2").fetchall():
        counts[f"{schema}.{table}"] = conn.execute(sql.SQL("select count(*) from {}").format(
            sql.Identifier(schema, table))).fetchone()[0]
    done = 0
    if conn.execute("select to_regclass('pgconverge.events')").fetchone()[0]:
        done = conn.execute("select count(*) from pgconverge.events where event = 'done'").fetchone()[0]
    schemas = [r[0] for r in conn.execute("select nspname from pg_namespace where nspname !~ '^pg_' "
                                          "and nspname <> 'information_schema'")]
    return {"schema": schema_dump(conn, tuple(schemas)), "counts": counts, "done": done}


def _refused(dsn: str, args: list[str], *needles: str, owner_dsn: str | None = None) -> str:
    """Run ARGS; it must exit 2 with NEEDLES and a fix in its message, no traceback, and change nothing
    (as seen through OWNER_DSN, by default DSN)."""
    with psycopg.connect(owner_dsn or dsn, autocommit=True) as conn:
        before = _snapshot(conn)
    out = cli(*args, "--dsn", dsn, expect=2)
    flat = " ".join(out.split())
    assert "Traceback" not in out, out
    for n in needles:
        assert n in flat, f"{n!r} not in: {flat}"
    assert "fix:" in flat, flat
    with psycopg.connect(owner_dsn or dsn, autocommit=True) as conn:
        assert _snapshot(conn) == before
    return flat


# -- configuration values ----------------------------------------------------------------------------------

BAD_CONFIG = [
    ("string for an integer", '[migration]\nbatch_size = "100"\n', ["migration.batch_size = '100' is invalid",
                                                                     "an integer from 1 to 1000000"]),
    ("negative batch size", "[migration]\nbatch_size = -5\n", ["migration.batch_size = -5 is invalid"]),
    ("zero batch size", "[migration]\nbatch_size = 0\n", ["migration.batch_size = 0 is invalid"]),
    ("float lock timeout", "[migration]\nlock_timeout_ms = 1.5\n", ["migration.lock_timeout_ms = 1.5 is invalid"]),
    ("boolean for an integer", "[migration]\nlock_retries = true\n", ["migration.lock_retries = True is invalid"]),
    ("negative sample", "[migration]\nrls_sample = -1\n", ["migration.rls_sample = -1 is invalid"]),
    ("above the maximum", "[migration]\nmax_replica_lag_ms = 99999999\n",
     ["migration.max_replica_lag_ms = 99999999 is invalid", "from 0 to 3600000"]),
    ("unknown region", '[migration]\ndefault_region = "XX"\n', ["migration.default_region = 'XX' is invalid",
                                                                 "two-letter region"]),
    ("bad enum", '[migration]\nlegacy_helper_after_contract = "keep"\n',
     ["migration.legacy_helper_after_contract = 'keep' is invalid", '"stub"', '"drop"']),
    ("unknown section", "[migrations]\nbatch_size = 10\n", ["unknown section [migrations]", "did you mean 'migration'"]),
    ("unknown key", "[migration]\nbatchsize = 10\n", ["unknown key migration.batchsize", "did you mean 'batch_size'"]),
    ("section that is not a table", "migration = 5\n", ["migration must be a table"]),
    ("not TOML", "[migration\nbatch_size = 1\n", ["is not valid TOML"]),
    ("upper case unquoted", '[legacy]\ntable = "public.Customers"\n',
     ["legacy.table = 'public.Customers' is invalid", "or double-quoted"]),
    ("three dotted parts", '[legacy]\ntable = "db.public.customers"\n', ["has more than two dotted parts"]),
    ("unterminated quote", '[legacy]\ntable = "\\"customers"\n', ["unterminated double quote"]),
    ("semicolon unquoted", '[legacy]\ntable = "public.a;drop table x"\n',
     ["legacy.table = 'public.a;drop table x' is invalid"]),
    ("empty identifier", '[migration]\nnew_column = ""\n', ["migration.new_column = '' is invalid", "empty"]),
    ("identifier too long", f'[migration]\nnew_column = "{"p" * 64}"\n', ["longer than 63 bytes"]),
    ("NUL in identifier", '[migration]\nnew_column = "a\\u0000b"\n', ["contains a NUL character"]),
    ("empty role list", "[migration]\napi_roles = []\n", ["migration.api_roles = [] is invalid"]),
    ("claim value of the wrong type", "[migration]\ntoken_claims = { app_role = true }\n",
     ["migration.token_claims", "is invalid"]),
    ("copy_columns not a list", "[canonical]\ncopy_columns = 5\n", ["canonical.copy_columns = 5 is invalid"]),
    ("policy name without its table", '[migration]\naccept_policies = ["carts_owner"]\n',
     ["migration.accept_policies", '"schema.table.policy"']),
    ("private schema that is public", '[migration]\nprivate_schema = "public"\n',
     ["migration.private_schema = 'public' is an application schema"]),
    ("same schema twice", '[migration]\nprivate_schema = "x"\narchive_schema = "x"\n',
     ["migration.private_schema and migration.archive_schema are both 'x'"]),
    ("same claim twice", '[canonical]\nclaim = "customer_id"\n', ["legacy.claim and canonical.claim are both"]),
    ("same table twice", '[canonical]\ntable = "public.customers"\n',
     ["legacy.table and canonical.table are both public.customers"]),
    ("quoted name that does not exist", '[legacy]\ntable = "public.\\"a;drop table x\\""\n',
     ["no such table"]),
    ("column that does not exist", '[legacy]\nmatch_column = "wa id"\n',
     ["legacy.match_column = 'wa id'", "has no such column"]),
    ("config file missing", None, ["does not exist"]),
    # The application's statement, not pgconverge's, would be the one Postgres cancels in a deadlock.
    ("lock timeout near the deadlock timeout", "[migration]\nlock_timeout_ms = 1000\n",
     ["migration.lock_timeout_ms = 1000 is more than half of this server's deadlock_timeout (1000 ms)",
      "set migration.lock_timeout_ms to at most 500"]),
]


@pytest.mark.parametrize("name", [c[0] for c in BAD_CONFIG])
def test_bad_config_value_is_refused_and_changes_nothing(make_db, template_factory, tmp_path, name):
    text, needles = next((t, n) for c, t, n in BAD_CONFIG if c == name)
    dsn = make_db(template_factory(SMALL))
    cfg = str(tmp_path / "missing.toml") if text is None else write_config(tmp_path, text)
    _refused(dsn, ["run", "align", "--config", cfg], *needles)
    # The JSON form says the same, machine-readably.
    r = cli_json("plan", "--dsn", dsn, "--config", cfg, expect=2)
    assert r["error"] in ("ConfigError", "CatalogError") and r["problem"] and r["fix"]
    _count(f"config: {name}")


def test_a_quoted_injection_attempt_in_a_column_name_is_a_column_name(make_db, template_factory, tmp_path):
    """A new_column that reads like SQL is just a (quoted) name: the migration works and nothing is run."""
    dsn = make_db(template_factory(SMALL))
    evil = 'p"; drop table public.products; --'
    cfg = write_config(tmp_path, f"[migration]\nnew_column = {json.dumps(evil)}\nrls_sample = 3\n")
    for ph in ("align", "expand"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select to_regclass('public.products') is not null").fetchone()[0]
        n = conn.execute(sql.SQL("select count(*) from public.carts where {} is null").format(sql.Identifier(evil))
                         ).fetchone()[0]
        assert n == 0
    assert cli_json("verify", "--dsn", dsn, "--config", cfg)["passed"]
    _count("identifier: SQL in a quoted column name")


# -- odd identifiers through all four phases, with RLS ------------------------------------------------------

@pytest.mark.parametrize("legacy, canonical, dependent", [
    ("Kund; drop table x;--", "Persön", "Order's"),
    ('cust"omers', "kundén", "a;drop table x"),
])
def test_odd_names_migrate_through_all_four_phases_and_back(empty_db, tmp_path, legacy, canonical, dependent):
    """The anonymous role has no grant on the schema at all: the RLS checks count that as seeing nothing."""
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(odd_names_schema(legacy, canonical, dependent))
        cfg = write_config(tmp_path, odd_names_config(legacy, canonical))
        before = schema_dump(conn, ("App \"Data\"", "public"))
        cli("run", "--all", "--accept-code-references", "--accept-runtime-use", "--dsn", empty_db, "--config", cfg)
        verdict = cli_json("verify", "--rls", "--dsn", empty_db, "--config", cfg)
        assert verdict["passed"], verdict
        assert conn.execute("select to_regclass('public.x') is not null").fetchone()[0]  # nothing injected
        quals = [r[0] for r in conn.execute("select qual from pg_policies where policyname = 'own''s; order'")]
        assert quals and '"Persön; Key"' in quals[0] and "who's persön" in quals[0], quals
        t = sql.Identifier("App \"Data\"", dependent)
        assert conn.execute(sql.SQL('select count(*) from {} where "Persön; Key" is null').format(t)
                            ).fetchone()[0] == 0
        cli("rollback", "align", "--dsn", empty_db, "--config", cfg)
        assert schema_dump(conn, ("App \"Data\"", "public")) == before
    _count(f"identifier: tables {legacy!r}, {canonical!r}, {dependent!r} through contract and back")


# -- schemas pgconverge cannot migrate as they are -------------------------------------------------------------

def _fixture_with(make_db, template_factory, ddl: str) -> str:
    dsn = make_db(template_factory(SMALL))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(ddl)
    return dsn


@pytest.mark.parametrize("name, ddl, needles", [
    ("legacy table without a primary key",
     "alter table public.customers drop constraint customers_pkey cascade",
     ["public.customers.id is neither the primary key nor unique", "has no primary key at all"]),
    ("composite foreign key to the legacy table",
     "alter table public.customers add column tenant int default 1, add unique (id, tenant); "
     "alter table public.sessions add column tenant int default 1, add foreign key (customer_id, tenant) "
     "references public.customers (id, tenant)", ["is composite"]),
    ("canonical key of a type with no default",
     "create table public.people (pid bigint primary key, whatsapp_e164 text, display_name text); "
     "alter table public.carts add column person bigint references public.people", None),
    ("canonical NOT NULL column without a default",
     "alter table public.profiles add column tier text not null default 'x'; "
     "alter table public.profiles alter column tier drop default", ["tier", "no default"]),
])
def test_schema_that_cannot_be_migrated_as_it_is(make_db, template_factory, tmp_path, name, ddl, needles):
    dsn = _fixture_with(make_db, template_factory, ddl)
    args = ["run", "align"]
    if needles is None:  # the canonical table is `people`, keyed by a bigint with no default
        cfg = write_config(tmp_path, '[canonical]\ntable = "public.people"\nkey = "pid"\nhelper = "public.auth_pid"\n'
                                     'claim = "pid"\n')
        args += ["--config", cfg]
        needles = ["canonical.key public.people.pid has no default", "gen_random_uuid()"]
    _refused(dsn, args, *needles)
    _count(f"schema: {name}")


def test_canonical_uuid_key_without_a_default_is_handled(make_db, template_factory):
    """A uuid key with no default: align makes the keys itself (gen_random_uuid()), nothing is refused."""
    dsn = _fixture_with(make_db, template_factory, "alter table public.profiles alter column user_id drop default")
    cli("run", "align", "--dsn", dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert mapping_problems(conn) == []
        created = conn.execute("select count(*) from pgconverge.legacy_customer_profile where method = 'created'"
                               ).fetchone()[0]
        assert created > 0
    _count("schema: canonical uuid key without a default")


# -- partly migrated by hand ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, ddl", [
    ("new column added by hand with another type", "alter table public.carts add column profile_id text"),
    ("new column added and half backfilled by hand",
     "alter table public.carts add column profile_id uuid; update public.carts d set profile_id = m.profile_id "
     "from pgconverge.legacy_customer_profile m where m.customer_id = d.customer_id and d.id % 2 = 0"),
    ("foreign key added by hand under another name",
     "alter table public.orders add column profile_id uuid; alter table public.orders add constraint "
     "orders_owner_by_hand foreign key (profile_id) references public.profiles (user_id)"),
])
def test_partly_migrated_by_hand_is_refused_clearly(make_db, template_factory, name, ddl):
    """pgconverge does not adopt a column it did not create (its type, contents and constraints are unknown)."""
    dsn = make_db(template_factory(SMALL))
    cli("run", "align", "--dsn", dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(ddl)
    table = "orders" if "orders" in ddl else "carts"
    _refused(dsn, ["run", "expand"], f"public.{table} already has a column 'profile_id' that pgconverge did not "
                                     "create", "set migration.new_column to another name")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select count(*) from pgconverge.events where phase = 'expand'").fetchone()[0] == 0
    _count(f"by hand: {name}")


# -- a role without the privileges it needs ---------------------------------------------------------------------------

def test_role_without_privileges_gets_a_clear_error_not_a_traceback(make_db, template_factory, admin_dsn):
    dsn = make_db(template_factory(SMALL))
    cli("run", "align", "--dsn", dsn)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("do $$ begin if not exists (select 1 from pg_roles where rolname = 'pgc_weak') then "
                     "create role pgc_weak login; end if; end $$")
    weak = psycopg.conninfo.make_conninfo(dsn, user="pgc_weak")
    for args in (["status"], ["verify"], ["run", "expand"]):
        flat = _refused(weak, list(args), "permission denied for schema pgconverge", "(SQLSTATE 42501)",
                        "lacks that privilege", owner_dsn=dsn)
        assert "Traceback" not in flat
        _count(f"privileges: {args[0]} {' '.join(args[1:])} as a role without grants")


# -- phone numbers of every shape ---------------------------------------------------------------------------------

# raw number -> equivalence key (default region RW), as identity/phone.py documents each rule
PHONES = [
    (None, None),                                   # NULL
    ("", None),                                     # empty
    ("   ", None),                                  # blanks only
    ("\u00a0\u2007", None),                         # Unicode blanks only
    ("unknown", None),                              # letters
    ("+250788123456", "250788123456"),              # E.164
    ("+250 788-123.456", "250788123456"),           # separators
    ("(+250) 788 123 456", "250788123456"),         # brackets
    ("00250788123456", "250788123456"),             # 00 prefix
    ("0788123456", "250788123456"),                 # national format, default region's trunk prefix
    ("788123456", "788123456"),                     # national without its trunk prefix: read as international (D4)
    ("+250 0788123456", "250788123456"),            # trunk 0 after the calling code (rule 6)
    ("+250788123456 x123", None),                   # extension (D5)
    ("+250788123456 ext. 12", None),                # extension, spelled out (D5)
    ("+", None),                                    # a lone plus
    ("++250788123456", None),                       # two pluses
    ("+0788123456", None),                          # international prefix then 0 (D7)
    ("1234", None),                                 # too short (D2)
    ("+2507881234567890123", None),                 # more than 15 digits (D3)
    ("9" * 200, None),                              # very long
    ("\u0660\u0667\u0668\u0668\u0661\u0662\u0663\u0664\u0665\u0666", None),  # Arabic-Indic digits (D5)
    ("\uff0b250788123456", None),                   # fullwidth plus (D5)
    ("+1 (415) 555-0123", "14155550123"),           # another country
    ("5511988887777", "5511988887777"),             # bare international digits (a WhatsApp id)
    ("551188887777", "5511988887777"),              # Brazil before the ninth digit (rule 7)
    ("tel:+250788123456", None),                    # a URI (D5)
]


def test_normalize_phone_treats_every_odd_shape_as_documented(make_db, template_factory):
    dsn = make_db(template_factory(SMALL))
    cli("run", "align", "--dsn", dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        got = [conn.execute("select pgconverge.normalize_phone(%s)", (raw,)).fetchone()[0] for raw, _ in PHONES]
    assert got == [key for _, key in PHONES]
    for raw, _ in PHONES:
        _count(f"phone: {raw!r}")


def test_odd_numbers_in_the_legacy_table_are_mapped_as_designed(empty_db):
    """Numbers with a key meet their canonical row whatever their spelling; NULL or unusable ones each get a
    canonical row of their own (never merged with one another), and the align report lists them."""
    from test_bad_input import MINIMAL
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(MINIMAL)
        conn.execute("create table public.carts (id bigint generated by default as identity primary key, "
                     "customer_id bigint references public.customers)")
        for i, (raw, _) in enumerate(PHONES, start=1):
            conn.execute("insert into public.customers (id, wa_id, display_name) values (%s, %s, %s)",
                         (i, raw, f"c{i}"))
        # Ordinary numbers besides: with odd shapes only, the phone kind would read too few values and
        # plan would refuse the kind itself (tested in test_match_kinds).
        conn.execute("insert into public.customers (id, wa_id, display_name) select 1000 + i, "
                     "'+25072' || lpad(i::text, 7, '0'), 'plain' from generate_series(1, 20) i")
        conn.execute("insert into public.profiles (whatsapp_e164) values ('+250788123456'), ('+14155550123')")
        out = cli_json("run", "align", "--dsn", empty_db)
        rows = dict(((cid, (pid, method, key)) for cid, pid, method, key in conn.execute(
            "select customer_id, profile_id, method, match_key from pgconverge.legacy_customer_profile")))
        profiles = dict(conn.execute("select whatsapp_e164, user_id from public.profiles "
                                     "where whatsapp_e164 in ('+250788123456', '+14155550123')").fetchall())
    rwanda = [i for i, (_, k) in enumerate(PHONES, start=1) if k == "250788123456"]
    assert {rows[i][0] for i in rwanda} == {profiles["+250788123456"]}  # every spelling, one person
    assert rows[rwanda[0]][1] == "exact" and {rows[i][1] for i in rwanda[1:]} == {"normalized"}
    assert rows[next(i for i, (r, _) in enumerate(PHONES, start=1) if r == "+1 (415) 555-0123")][0] == \
        profiles["+14155550123"]
    unusable = [i for i, (_, k) in enumerate(PHONES, start=1) if k is None]
    assert {rows[i][1] for i in unusable} == {"created"} and all(rows[i][2] is None for i in unusable)
    assert len({rows[i][0] for i in unusable}) == len(unusable)  # one canonical row each
    assert out["align"]["unusable_numbers"] == len(unusable)
    # The two Brazilian spellings are one number: they share one (created) canonical row.
    br = [i for i, (_, k) in enumerate(PHONES, start=1) if k == "5511988887777"]
    assert len({rows[i][0] for i in br}) == 1 and out["align"]["merged_groups"] >= 1
    _count("phone: odd numbers through align's mapping and report")


def test_zz_count(capsys):
    """Not a check: the number of bad inputs this module exercised."""
    with capsys.disabled():
        print(f"\nbad inputs exercised: {len(COUNTED)}")
