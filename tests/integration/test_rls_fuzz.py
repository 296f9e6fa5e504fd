"""RLS leak fuzzing: identity A, acting through the Data API role, never reaches identity B's rows.

Pairs of identities (A, B) and tables under RLS are drawn at random (hypothesis, derandomized, so CI
is deterministic) at every phase boundary (after align, expand, switch, contract) and, with a seeded
generator, while a phase runs in another process. As A, with the legacy token and with the canonical
one, the probe tries to SELECT B's rows by key, UPDATE them, DELETE them and INSERT a copy of one of
B's rows (owned by B): it must see and affect 0 rows, or be refused. A's own rows stay visible to
every token that is valid at that point, and where A may insert a copy of its own row, the copy of
B's is refused by row level security itself. All four helper styles of the fixture are covered.

Tokens are formed as the switch's own equivalence check forms them (verify/rls.py); the probes here
are independent of that check: plain statements as role `authenticated` with request.jwt.claims.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from dataclasses import dataclass

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import errors, sql
from psycopg.types.json import Jsonb

from _support import cli, write_config
from pgconverge import config
from pgconverge.fixtures import HELPER_STYLES
from pgconverge.verify import rls
from pgconverge.verify.tokens import act_as

SMALL = 0.1
CONFIG = "[migration]\nrls_sample = 5\n"
STAGES = ("align", "expand", "switch", "contract")
DEPENDENT = ("carts", "cart_items", "orders", "order_items", "order_events", "sessions")
# The legacy table (its own row, by the legacy helper; archived by contract) and the canonical one (its own
# row, by the canonical claim) are under RLS too.
TABLES = DEPENDENT + ("customers", "profiles")
KEY = {"profiles": ("user_id", "uuid"), "sessions": ("id", "uuid")}  # others: id bigint
PARENT = {"cart_items": ("cart_id", "carts"), "order_items": ("order_id", "orders"),
          "order_events": ("order_id", "orders")}
# Tokens that identify their holder at each boundary: the canonical claim only once the policies read it,
# the legacy one until contract retires the legacy helper.
VALID = {"align": "L", "expand": "L", "switch": "LC", "contract": "C"}
FUZZ = settings(max_examples=25, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

PROBES = {"boundary": 0, "during": 0}


@dataclass
class World:
    """The identities of one fixture and the rows each owns, by key (fixed: nothing writes meanwhile)."""

    spec: config.Spec
    identities: list[rls.Identity]
    by_legacy: dict[tuple[str, str], list]  # (legacy id, table) -> keys
    by_profile: dict[tuple[str, str], list]  # (canonical id, table) -> keys


def _world(conn) -> World:
    spec = config.Spec()
    identities = [i for i in rls.sample(conn, spec, 0) if i.subjects is None or i.subjects[0]]
    by_legacy: dict[tuple[str, str], list] = {}
    for t in DEPENDENT:
        if t in PARENT:
            fk, parent = PARENT[t]
            rows = conn.execute(sql.SQL("select p.customer_id::text, c.id from {} c join {} p on p.id = c.{}").format(
                sql.Identifier("public", t), sql.Identifier("public", parent), sql.Identifier(fk))).fetchall()
        else:
            rows = conn.execute(sql.SQL("select customer_id::text, id from {} where customer_id is not null").format(
                sql.Identifier("public", t))).fetchall()
        for owner, key in rows:
            by_legacy.setdefault((owner, t), []).append(key)
    by_profile = {}
    for ident in identities:
        for t in DEPENDENT:
            by_profile[(ident.canonical, t)] = [k for lid in ident.legacy for k in by_legacy.get((lid, t), [])]
        by_profile[(ident.canonical, "customers")] = [int(lid) for lid in ident.legacy]
        by_profile[(ident.canonical, "profiles")] = [ident.canonical]
        for lid in ident.legacy:
            by_legacy[(lid, "customers")] = [int(lid)]
    # Identities that own dependent rows, so that "B's rows" is never an empty set.
    identities = [i for i in identities if any(by_profile[(i.canonical, t)] for t in DEPENDENT)]
    return World(spec, identities, by_legacy, by_profile)


@pytest.fixture(scope="module")
def lineages(admin_dsn, template_factory, tmp_path_factory):
    """Per helper style: a database per phase boundary of one migration, and that fixture's identities."""
    from conftest import _create_database, _drop_database

    cfg = write_config(tmp_path_factory.mktemp("rls_fuzz"), CONFIG)
    made: list[str] = []
    cache: dict[str, dict] = {}

    def get(style: str) -> dict:
        if style in cache:
            return cache[style]
        work = f"rf_{style}_{os.getpid()}"
        dsn = _create_database(admin_dsn, work, template_factory(SMALL, style))
        made.append(work)
        names = {"start": template_factory(SMALL, style)}
        for ph in STAGES:
            if ph == "contract" and style == "uid_lookup":
                with psycopg.connect(dsn, autocommit=True) as conn:
                    _canonical_helper_by_hand(conn)  # what contract's gate asks for (see the test below)
            cli("run", ph, "--dsn", dsn, "--config", cfg,
                *(("--accept-code-references", "--accept-runtime-use") if ph == "contract" else ()))
            if ph == "align":
                with psycopg.connect(dsn, autocommit=True) as conn:
                    world = _world(conn)
            names[ph] = f"{work}_{ph}"
            _create_database(admin_dsn, names[ph], work)
            made.append(names[ph])
        cache[style] = {"names": names, "world": world, "config": cfg}
        return cache[style]

    yield get
    for n in made:
        _drop_database(admin_dsn, n)


AUTH_LINK = """
create table public.profile_auth_users (auth_user_id uuid primary key, profile_id uuid not null
    references public.profiles (user_id));
insert into public.profile_auth_users
    select c.auth_user_id, m.profile_id from public.customers c
    join pgconverge.legacy_customer_profile m on m.customer_id = c.id where c.auth_user_id is not null;
create or replace function public.auth_profile_id() returns uuid language sql stable security definer
    set search_path = '' as $$ select l.profile_id from public.profile_auth_users l where l.auth_user_id = auth.uid() $$;
"""


def _canonical_helper_by_hand(conn) -> None:
    """The canonical side's own link to the auth user, and the canonical helper reading it (no legacy table)."""
    conn.execute(AUTH_LINK)


def test_contract_is_blocked_while_the_canonical_helper_reads_what_it_archives(make_db, template_factory, tmp_path):
    """A helper that finds the caller by auth.uid() through the legacy table cannot be rewritten to a claim: the
    canonical helper derived from it reads the legacy table and the mapping. Contract must not archive them
    under it (every policy would fail for every caller); it stops, names the helper, and goes on once the
    helper is rewritten."""
    dsn = make_db(template_factory(SMALL, "uid_lookup"))
    cfg = write_config(tmp_path, CONFIG)
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    accept = ("--accept-code-references", "--accept-runtime-use")
    with psycopg.connect(dsn, autocommit=True) as conn:
        from _support import schema_dump
        before = schema_dump(conn, ("public", "pgconverge"))
        out = " ".join(cli("run", "contract", *accept, "--dsn", dsn, "--config", cfg, expect=2).split())
        assert "canonical helper stands alone" in out and "public.auth_profile_id() reads" in out, out
        assert "customers" in out and "legacy_customer_profile" in out and "run contract again" in out, out
        assert "under a unique rule" in out and "then `select auth.uid()` is the helper" in out, out
        assert schema_dump(conn, ("public", "pgconverge")) == before  # nothing dropped, nothing archived
        _canonical_helper_by_hand(conn)
    cli("run", "contract", *accept, "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn) as conn:
        sub, profile = conn.execute(
            "select l.auth_user_id::text, l.profile_id from public.profile_auth_users l where exists "
            "(select 1 from public.carts c where c.profile_id = l.profile_id) order by 1 limit 1").fetchone()
        owned = conn.execute("select count(*) from public.carts where profile_id = %s", (profile,)).fetchone()[0]
        act_as(conn, {"sub": sub, "app_role": "customer"})
        assert conn.execute("select count(*) from public.carts").fetchone()[0] == owned > 0  # still finds its own
        conn.rollback()


def _dsn(admin_dsn: str, name: str) -> str:
    from pgconverge import embedded
    return embedded.with_database(admin_dsn, name)


def _token(world: World, ident: rls.Identity, kind: str) -> dict:
    return rls._legacy_token(world.spec, ident, 0) if kind == "L" else rls._canonical_token(world.spec, ident)


def _insert_columns(conn, table: str, key: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "select attname from pg_attribute where attrelid = %s::regclass and attnum > 0 and not attisdropped "
        "and attgenerated = '' and not (attname = %s and (attidentity <> '' or atthasdef)) order by attnum",
        (f"public.{table}", key))]


def _as(conn, world: World, claims: dict, query: sql.Composable, params=None):
    """QUERY as role authenticated with CLAIMS, in a savepoint rolled back after: (rowcount or rows, error)."""
    conn.execute("savepoint probe")
    try:
        act_as(conn, claims, clear=rls._clear(world.spec))
        cur = conn.execute(query, params)
        return (cur.fetchall() if cur.description else cur.rowcount), None
    except psycopg.Error as exc:
        return None, exc
    finally:
        conn.execute("rollback to savepoint probe")


def _copy_insert(conn, world: World, claims: dict, table: str, key) -> tuple[str, str]:
    """Insert, as the caller, a copy of row KEY (so owned by that row's owner): allowed, refused or error."""
    t = sql.Identifier("public", table)
    conn.execute("savepoint copy")
    try:  # as the migration role; the table may be gone (archived by a contract running meanwhile)
        row = conn.execute(sql.SQL("select to_jsonb(x) from {} x where {} = %s").format(
            t, sql.Identifier(KEY.get(table, ("id",))[0])), (key,)).fetchone()
        names = _insert_columns(conn, table, KEY.get(table, ("id",))[0])
    except errors.UndefinedTable:
        conn.execute("rollback to savepoint copy")
        return "gone", ""
    if row is None:
        return "gone", ""
    cols = sql.SQL(", ").join(map(sql.Identifier, names))
    _, exc = _as(conn, world, claims, sql.SQL("insert into {t} ({c}) select {c} from jsonb_populate_record("
                                              "null::{t}, %s)").format(t=t, c=cols), (Jsonb(row[0]),))
    if exc is None:
        return "allowed", ""
    if isinstance(exc, errors.InsufficientPrivilege) and "row-level security" in str(exc):
        return "refused", ""
    return "error", f"{exc.sqlstate} {exc}"


def probe(conn, world: World, a: rls.Identity, b: rls.Identity, table: str, kind: str, *, stage: str,
          valid: bool, strict: bool) -> list[str]:
    """Every way A (token KIND) reaches B's rows of TABLE at STAGE, or loses its own; [] when none.

    VALID: the token identifies A here, so A's own rows must be visible. STRICT: at a boundary, where
    nothing moves, a copy of B's row must be refused by RLS itself whenever A may insert a copy of its own.
    """
    claims, t = _token(world, a, kind), sql.Identifier("public", table)
    theirs = world.by_profile[(b.canonical, table)]
    problems = []
    key, key_type = KEY.get(table, ("id", "bigint"))
    k = sql.Identifier(key)
    keys = sql.SQL("{} = any(%s::{}[])").format(k, sql.SQL(key_type))
    with conn.transaction(force_rollback=True):
        if theirs:
            seen, exc = _as(conn, world, claims, sql.SQL("select {} from {} where {}").format(k, t, keys),
                            (theirs,))
            if seen:
                problems.append(f"{kind} token of {a.canonical} sees {len(seen)} {table} rows of {b.canonical}")
            for verb, q in (("updates", sql.SQL("update {t} set {k} = {k} where {w}")),
                            ("deletes", sql.SQL("delete from {t} where {w}"))):
                n, exc = _as(conn, world, claims, q.format(t=t, k=k, w=keys), (theirs,))
                if n:
                    problems.append(f"{kind} token of {a.canonical} {verb} {n} {table} rows of {b.canonical}")
            outcome, why = _copy_insert(conn, world, claims, table, theirs[0])
            if outcome == "allowed":
                problems.append(f"{kind} token of {a.canonical} inserts a {table} row owned by {b.canonical}")
        if valid:
            # Before the switch a legacy token is its own legacy row; after it, the whole canonical row. The
            # legacy row itself is the legacy token's (the legacy helper), the canonical row the canonical token's.
            if table == "customers":
                mine = [int(a.legacy[0])] if kind == "L" else []
            elif table == "profiles":
                mine = [a.canonical] if kind == "C" else []
            elif kind == "L" and stage in ("align", "expand"):
                mine = world.by_legacy.get((a.legacy[0], table), [])
            else:
                mine = world.by_profile[(a.canonical, table)]
            if mine:
                seen, exc = _as(conn, world, claims, sql.SQL("select {} from {} where {}").format(k, t, keys),
                                (mine,))
                if exc is not None or len(seen) != len(mine):
                    problems.append(f"{kind} token of {a.canonical} sees {0 if seen is None else len(seen)} of its "
                                    f"{len(mine)} {table} rows" + (f" ({exc.sqlstate} {exc})" if exc else ""))
                if strict and theirs:
                    own, why_own = _copy_insert(conn, world, claims, table, mine[0])
                    other, why_other = _copy_insert(conn, world, claims, table, theirs[0])
                    if own == "allowed" and other != "refused":
                        problems.append(f"{kind} token of {a.canonical} may insert its own {table} row, and B's "
                                        f"is {other}, not refused by RLS: {why_other}")
    return problems


@pytest.mark.parametrize("style", HELPER_STYLES)
@pytest.mark.parametrize("stage", STAGES)
def test_no_identity_reaches_another_at_the_phase_boundaries(admin_dsn, lineages, style, stage):
    lin = lineages(style)
    world = lin["world"]
    assert len(world.identities) >= 10
    tables = [t for t in TABLES if not (stage == "contract" and t == "customers")]  # archived by then
    with psycopg.connect(_dsn(admin_dsn, lin["names"][stage])) as conn:
        examples = []

        @FUZZ
        @given(a=st.integers(0, len(world.identities) - 1), b=st.integers(0, len(world.identities) - 1),
               table=st.sampled_from(tables), kind=st.sampled_from("LC"))
        def fuzz(a, b, table, kind):
            if a == b:
                b = (b + 1) % len(world.identities)
            A, B = world.identities[a], world.identities[b]
            examples.append(1)
            assert probe(conn, world, A, B, table, kind, stage=stage, valid=kind in VALID[stage],
                         strict=True) == []

        fuzz()
        PROBES["boundary"] += len(examples)
        # And every table, both token kinds, for one fixed pair: nothing left to chance for the basics.
        A, B = world.identities[0], world.identities[-1]
        for table in tables:
            for kind in "LC":
                assert probe(conn, world, A, B, table, kind, stage=stage, valid=kind in VALID[stage],
                         strict=True) == []


@pytest.mark.parametrize("phase, style", [("expand", "claims_json"), ("switch", "claims_json"),
                                          ("switch", "uid_lookup"), ("contract", "auth_jwt")])
def test_no_identity_reaches_another_while_a_phase_runs(admin_dsn, lineages, make_db, tmp_path, phase, style):
    lin = lineages(style)
    world = lin["world"]
    before = STAGES[STAGES.index(phase) - 1]
    dsn = make_db(lin["names"][before])
    cfg = write_config(tmp_path, "[migration]\nrls_sample = 5\nbatch_size = 25\nbatch_pause_ms = 5\n")
    extra = ("--accept-code-references", "--accept-runtime-use") if phase == "contract" else ()
    proc = subprocess.Popen([sys.executable, "-m", "pgconverge", "run", phase, *extra, "--dsn", dsn,
                             "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rnd = random.Random(f"{phase}-{style}")
    n, problems = 0, []
    try:
        with psycopg.connect(dsn) as conn:
            while proc.poll() is None or n < 20:
                a, b = rnd.sample(range(len(world.identities)), 2)
                table, kind = rnd.choice(TABLES), rnd.choice("LC")
                # The legacy token stays valid through expand and switch (no gap while policies swap);
                # during contract only B's rows are probed, for either token.
                valid = kind == "L" and phase in ("expand", "switch")
                problems += probe(conn, world, world.identities[a], world.identities[b], table, kind,
                                  stage=before, valid=valid, strict=False)
                n += 1
    finally:
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert problems == []
    assert n >= 20
    PROBES["during"] += n


def test_the_probe_catches_a_leak(admin_dsn, lineages, make_db):
    """A permissive policy slipped in: the same probes report the rows it leaks and the insert it lets through."""
    lin = lineages("claims_json")
    world = lin["world"]
    dsn = make_db(lin["names"]["switch"])
    a, b = world.identities[0], world.identities[-1]
    table = next(t for t in ("orders", "carts") if world.by_profile[(b.canonical, t)])
    with psycopg.connect(dsn) as conn:
        assert probe(conn, world, a, b, table, "C", stage="switch", valid=True, strict=True) == []
        conn.execute(sql.SQL("create policy leak on {} for all to authenticated using (true) with check (true)"
                             ).format(sql.Identifier("public", table)))
        conn.commit()
        found = " | ".join(probe(conn, world, a, b, table, "C", stage="switch", valid=True, strict=True))
    for what in ("sees", "updates", "deletes", "inserts"):
        assert f"C token of {a.canonical} {what}" in found, found


def test_zz_report_probe_counts():
    """Not a check: prints how many fuzz examples ran (the boundary ones are derandomized, so fixed)."""
    print(f"\nRLS fuzz: {PROBES['boundary']} boundary examples (+ {len(HELPER_STYLES) * (len(STAGES) * 2 * len(TABLES) - 2)} fixed "
          f"probes), {PROBES['during']} probes while phases ran")
