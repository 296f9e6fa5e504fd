"""The schema zoo: one small schema per case (see _zoo.build), migrated align → expand → switch → contract under
old- and new-code writers and rolled back to align, checked against its ground truth after every phase; or
refused at `plan`, changing nothing.

Each case has a database of its own (make_db) and shares nothing with the others, so the cases can run in
parallel (pytest-xdist).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

import psycopg
import pytest

from _support import cli, write_config
from _zoo import KEY_TYPES, NewWriter, OldWriter, ZooRun, build, load, snapshot


@dataclass(frozen=True)
class Case:
    name: str
    params: dict = field(default_factory=dict)
    expect: str = "migrates"  # or "refused"
    # For "refused": substrings the refusal must contain. "{unusable}" stands for each legacy key whose match
    # value is unusable.
    contains: tuple[str, ...] = ()
    slow: bool = False
    # "migrates" with accepted views: contract first refuses (exit 2, nothing dropped) naming these, until the
    # zoo's before_contract_sql has run.
    blocked_contract: tuple[str, ...] = ()
    plan_lists: tuple[str, ...] = ()  # what `plan` must say about objects depending on the legacy key


CASES = [
    # Every pair of key types, phone matching, helper style 1 (request.jwt.claims JSON).
    *(Case(f"keys_{lk}_{ck}", dict(legacy_key=lk, canonical_key=ck)) for lk in KEY_TYPES for ck in KEY_TYPES),
    # Match kinds.
    Case("match_email", dict(match="email")),
    Case("match_exact", dict(match="exact")),
    Case("match_multi", dict(match="multi", birth_date_type="text")),  # first name + birth date (ISO text)
    # A date column's text depends on DateStyle: refused as a match column (README, "Match kinds").
    Case("match_multi_date", dict(match="multi", birth_date_type="date"), expect="refused",
         contains=("public.customers.birth_date", "of type date")),
    # Helper styles and variants (1 is every case above).
    Case("helper_claim_setting", dict(helper_style="claim_setting")),
    Case("helper_auth_jwt", dict(helper_style="auth_jwt")),
    # auth.jwt() -> 'app_metadata' ->> 'customer_id': the check's test tokens carry the claims there too.
    Case("helper_app_metadata", dict(helper_style="app_metadata", legacy_key="uuid", canonical_key="text")),
    Case("helper_wrapper", dict(helper_style="wrapper")),  # reads the claim through jwt_claim('customer_id')
    Case("helper_wrapper_nested", dict(helper_style="wrapper_nested")),  # returns current_customer_id()
    Case("helper_lookup", dict(helper_style="lookup")),
    Case("helper_plpgsql", dict(helper_language="plpgsql")),
    Case("helper_security_definer", dict(helper_definer=True)),
    Case("helper_other_schema", dict(helper_schema="app_auth")),
    Case("helper_other_owner", dict(helper_owner="zoo_helper_owner")),
    # Unusable match values (NULL, '', 'n/a'): each gets a canonical row of its own where the column is
    # nullable; refused at plan, with the rows listed, where it is NOT NULL.
    Case("unusable_nullable", dict(unusable=True)),
    Case("unusable_not_null", dict(unusable=True, canonical_match_not_null=True), expect="refused",
         contains=("public.customers", "public.profiles.whatsapp_e164", "NOT NULL", "{unusable}")),
    Case("unusable_not_null_create", dict(unusable=True, canonical_match_not_null=True, unmatched="create"),
         expect="refused", contains=("public.profiles.whatsapp_e164", "NOT NULL", "{unusable}")),
    Case("not_null_all_usable", dict(canonical_match_not_null=True)),
    Case("unusable_refuse", dict(unusable=True, unmatched="refuse"), expect="refused",
         contains=("public.customers", 'unmatched = "refuse"', "{unusable}")),
    # Empty tables, more dependents.
    Case("empty_legacy", dict(legacy_empty=True)),
    Case("empty_dependent", dict(dependent_empty=True)),
    Case("two_dependents", dict(dependents=2)),
    # The README's example: public.accounts (bigint id, email) -> public.users (uuid id, email), by e-mail.
    Case("readme_accounts_users", dict(legacy_name="accounts", canonical_name="users", legacy_key="bigint",
                                       canonical_key="uuid", match="email", dependents=2,
                                       helper_names=("current_account_id", "current_user_id"),
                                       name_column="full_name")),
    # Every way a table depends on the legacy key (planning/shapes.py): mirrored onto the new column, each rule
    # probed on the new column after contract, and restored by the rollback...
    Case("shape_join_table_pk", dict(shapes=("join_pk",)),
         plan_lists=("mirrored primary key customer_tags_pkey on public.customer_tags: unique index profile_tags_pkey",)),
    Case("shape_unique_constraint", dict(shapes=("unique",)), plan_lists=(
        "mirrored unique constraint memberships_customer_id_program_key on public.memberships",
        "from expand on, the mirror holds for the person: old code writing such a row for one legacy row of a merged "
        "person",)),
    Case("shape_check", dict(shapes=("check",)), plan_lists=(
        "mirrored check constraint guest_carts_owner_check on public.guest_carts: mirrored as "
        "guest_carts_owner_check_profile: CHECK (profile_id IS NOT NULL OR guest_token IS NOT NULL)",)),
    Case("shape_partial_unique", dict(shapes=("partial_unique",)),
         plan_lists=("mirrored index public.baskets_customer_id_open",)),
    Case("shape_fk_deferrable_on_update", dict(shapes=("fk_deferrable",)), plan_lists=(
        "ON DELETE CASCADE, ON UPDATE CASCADE, DEFERRABLE INITIALLY DEFERRED kept on the new foreign key",
        "being deferrable, it lets old code write a row before its",
        "deferred to the commit, pgconverge_fill_at_commit")),
    Case("shape_expression_indexes", dict(shapes=("expression_index",), legacy_key="uuid", canonical_key="bigint")),
    Case("shape_user_trigger", dict(shapes=("user_trigger",)), plan_lists=(
        "listed trigger a_require_owner on public.orders", "listed function public.require_owner()")),
    # The owner filled in by the database when the writers leave it out (every third row): the legacy helper as
    # the column's default (carried to the new column at contract), or a BEFORE trigger reading the token that
    # fires after the sync trigger (the last sync trigger derives the other id).
    Case("shape_owner_default", dict(shapes=("owner_default",), legacy_key="uuid", canonical_key="text",
                                     helper_style="lookup"),
         plan_lists=("mirrored default of public.orders.customer_id: public.auth_customer_id(): contract gives "
                     'profile_id the default "public"."auth_profile_id"()',)),
    Case("shape_owner_trigger", dict(shapes=("owner_trigger",), legacy_key="text", canonical_key="bigint",
                                     match="email"),
         plan_lists=("listed trigger set_owner on public.orders",)),
    Case("shape_self_reference", dict(shapes=("self_reference",)),
         plan_lists=("listed foreign key customers_referred_by_fkey on public.customers",)),
    Case("shape_other_schema_owner", dict(dependent_schema="sales", dependent_owner="zoo_sales_owner",
                                          shapes=("join_pk",), legacy_key="text", canonical_key="integer")),
    Case("shape_views_accepted", dict(shapes=("views",), accept_views=(
        "public.order_owners", "public.legacy_count", "public.legacy_names")),
         blocked_contract=("view public.order_owners", "view public.legacy_count",
                           "materialized view public.legacy_names", "nothing was dropped"),
         plan_lists=("listed view public.order_owners", "listed view public.legacy_count",
                     "listed materialized view public.legacy_names")),
    # ... or refused at plan, every blocking object named at once.
    Case("shape_refused_all", dict(shapes=(
        "exclusion", "generated", "fk_set_default", "views", "check_value", "trigger_update_of", "trigger_first",
        "pk_referenced", "canonical_refs_legacy", "expression_value")), expect="refused", contains=(
        "exclusion constraint subscriptions_customer_id_excl on public.subscriptions",
        "generated column public.orders.owner_label",
        "foreign key reviews_customer_id_fkey on public.reviews", "ON DELETE SET DEFAULT",
        "view public.order_owners", "view public.legacy_count", "materialized view public.legacy_names",
        "check constraint guest_carts_positive on public.guest_carts",
        "trigger orders_owner_moved on public.orders", 'trigger " first" on public.orders',
        "primary key customer_tags_pkey on public.customer_tags", "public.tag_notes.tag_notes_customer_id_tag_fkey",
        "foreign key profiles_legacy_ref_fkey on public.profiles", "index public.orders_owner_len",
        "migration.accept_views")),
    Case("shape_views_refused", dict(shapes=("views",)), expect="refused", contains=(
        "view public.order_owners", "public.orders.customer_id", "view public.legacy_count",
        "materialized view public.legacy_names", "the legacy table public.customers", "migration.accept_views")),
    # Partitioned dependents: planned once on the partitioned table, each leaf backfilled and indexed on its own
    # (a partition attached while expand runs: test_partitions.py).
    Case("partitioned_range_subpartitioned", dict(partitioned="range", dependents=2)),
    # The application's owner trigger on one partition alone: the last sync trigger is needed all the same.
    Case("partitioned_owner_trigger_leaf", dict(partitioned="range", shapes=("owner_trigger_leaf",),
                                                legacy_key="text", canonical_key="bigint"),
         plan_lists=("listed trigger set_owner on public.orders_recent",)),
    Case("partitioned_hash_uuid", dict(partitioned="hash", legacy_key="uuid", canonical_key="uuid")),
    # The owner default on a partitioned table: each partition's copy of it goes with the column at contract, so the
    # gate does not count it as a use of the legacy helper.
    Case("partitioned_owner_default", dict(partitioned="range", shapes=("owner_default",))),
    # The deferred fill trigger on a partitioned table: cloned onto every partition, the row found by its partition.
    Case("partitioned_fk_deferrable", dict(partitioned="range", shapes=("fk_deferrable",))),
    # Two references from one table (transfers.buyer_id, seller_id), each with its own new column, a policy
    # reading both and an index holding both; one name set in the configuration.
    Case("two_references_one_table", dict(transfers=True)),
    # With an application BEFORE trigger on both tables: a last sync trigger for each of transfers' references.
    Case("two_references_owner_trigger", dict(transfers=True, shapes=("owner_trigger",), legacy_key="uuid")),
    Case("two_references_configured_name", dict(transfers=True, legacy_key="text", canonical_key="bigint",
                                                 new_columns={"public.transfers.buyer_id": "buyer_pid"})),
]


def _params(kind: str):
    return [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.slow else [])
            for c in CASES if c.expect == kind]


PHASES = ("align", "expand", "switch", "contract")


@pytest.mark.parametrize("case", _params("migrates"))
def test_zoo_migrates(case: Case, make_db, tmp_path):
    _migrates(case, make_db(), tmp_path)


# Supabase runs Postgres 15; the suite's own server is 16. Shapes whose SQL leans on version-dependent behaviour
# (row types of archived tables, function lookups by signature, partition indexes, plpgsql helpers) on 15 too.
ON_15 = ("keys_bigint_uuid", "helper_plpgsql", "helper_lookup", "partitioned_hash_uuid", "two_references_one_table",
         "shape_join_table_pk")


@pytest.mark.parametrize("case", [c for c in CASES if c.name in ON_15], ids=lambda c: c.name)
def test_zoo_migrates_on_postgres_15(case: Case, make_db15, tmp_path):
    _migrates(case, make_db15(), tmp_path)


def _migrates(case: Case, dsn: str, tmp_path) -> None:
    zoo = build(**case.params)
    load(dsn, zoo)
    cfg = write_config(tmp_path, zoo.config)
    args = ("--dsn", dsn, "--config", cfg)
    planned = " ".join(cli("plan", *args).split())
    missing = [n for n in case.plan_lists if n not in planned]
    assert missing == [], f"{missing} not in: {planned}"
    run = ZooRun(dsn, zoo)
    old = run.start(OldWriter(run))
    new = None
    try:
        old.wrote(2)  # old code is at work before align starts
        for phase in PHASES:
            if phase == "contract":
                if case.blocked_contract:
                    with ExitStack() as paused:  # the writers wait, so that any change is contract's
                        for w in run.writers:
                            if w.is_alive():
                                paused.enter_context(w.lock)
                        before = snapshot(dsn, skip=("pgconverge",))
                        out = cli("run", "contract", "--accept-code-references", "--accept-runtime-use", *args,
                                  expect=2)
                        flat = " ".join(out.split())
                        missing = [n for n in case.blocked_contract if n not in flat]
                        assert missing == [], f"{missing} not in: {flat}"
                        assert snapshot(dsn, skip=("pgconverge",)) == before, "a refused contract changed something"
                if zoo.before_contract_sql:
                    with psycopg.connect(dsn, autocommit=True) as conn:
                        conn.execute(zoo.before_contract_sql)
                cli("run", "contract", "--accept-code-references", "--accept-runtime-use", *args)
            else:
                cli("run", phase, *args)
            if phase == "expand":
                new = run.start(NewWriter(run))  # new code is deployed once expand is done
                new.wrote(2)
            elif phase == "switch":
                new.switched.set()  # new tokens carry the canonical claim only from now on
                old.stop()  # old code is retired once the switch is done
            elif phase == "contract":
                new.stop()
            problems = run.check(phase) + (run.probe() if phase == "contract" else [])
            assert problems == [] and run.failures() == [], "\n".join(problems + run.failures())
            if phase in ("switch", "contract"):  # `verify --rls` looked: its tokens saw their owners' rows
                out = " ".join(cli("verify", "--rls", "--sample", "0", *args).split())
                assert "pass rls" in out and "nothing was compared" not in out, out
        cli("rollback", "align", *args)
        problems = run.check("rollback")
        assert problems == [], "\n".join(problems)
        with psycopg.connect(dsn, autocommit=True) as conn:  # the ledger says so too: no later step is left done
            left = [r[0] for r in conn.execute(
                "select step from (select distinct on (step) step, phase, event from pgconverge.events "
                "where phase in ('expand', 'switch', 'contract') order by step, id desc) x where event = 'done'")]
        assert left == [], f"steps the rollback left done in the ledger: {left}"
    finally:
        for w in run.writers:
            w.stop()
    assert run.failures() == [], "\n".join(run.failures())
    assert {w.code for w in run.written()} == {"old", "new"}


@pytest.mark.parametrize("case", _params("refused"))
def test_zoo_refused(case: Case, make_db, tmp_path):
    zoo = build(**case.params)
    dsn = make_db()
    load(dsn, zoo)
    cfg = write_config(tmp_path, zoo.config)
    before = snapshot(dsn)
    out = cli("plan", "--dsn", dsn, "--config", cfg, expect=2)
    flat = " ".join(out.split())
    needles = []
    for n in case.contains:
        if n == "{unusable}":
            needles += list(zoo.unusable_keys)
        else:
            needles.append(n)
    assert "Traceback" not in out, out
    missing = [n for n in needles if n not in flat]
    assert missing == [], f"{missing} not in: {flat}"
    assert "fix:" in flat, flat
    assert snapshot(dsn) == before
    if case.name.startswith("shape_"):  # the plan refuses: run and emit, which build it, refuse alike
        for cmd in (("run", "align"), ("emit", str(tmp_path / "emitted"))):
            out = " ".join(cli(*cmd, "--dsn", dsn, "--config", cfg, expect=2).split())
            missing = [n for n in needles if n not in out]
            assert missing == [], f"{' '.join(cmd)}: {missing} not in: {out}"
        assert snapshot(dsn) == before
        assert not (tmp_path / "emitted").exists() or not any((tmp_path / "emitted").rglob("*.sql"))


def test_zoo_merge_collisions_refused_before_expand(make_db, tmp_path):
    """A unique rule on the legacy column ("one open basket per customer") mirrored on the new column would be
    broken by customers merged onto one profile when each has an open basket: once align has made the mapping,
    `plan` and `run expand` refuse, listing every such group of rows, and change nothing; once the user closes
    the extra baskets, expand goes through and rolls back."""
    zoo = build(shapes=("partial_unique_collide",))
    dsn = make_db()
    load(dsn, zoo)
    args = ("--dsn", dsn, "--config", write_config(tmp_path, zoo.config))
    cli("plan", *args)  # no mapping yet: nothing to group
    cli("run", "align", *args)
    with psycopg.connect(dsn, autocommit=True) as c:
        merged = c.execute(
            "select b.id::text, b.customer_id::text from public.baskets b join pgconverge.legacy_customer_profile m "
            "on m.customer_id = b.customer_id where b.status = 'open' and m.profile_id in (select profile_id from "
            "pgconverge.legacy_customer_profile group by profile_id having count(*) > 1)").fetchall()
    assert len(merged) >= 4, merged
    before = snapshot(dsn)
    for cmd in (("plan", "expand"), ("run", "expand")):
        out = " ".join(cli(*cmd, *args, expect=2).split())
        assert "Traceback" not in out, out
        missing = [f"({customer})" for _, customer in merged if f"customer_id = {customer})" not in out]
        assert missing == [], f"{missing} not in: {out}"
        assert "would share" in out and "baskets_customer_id_open" in out and "fix:" in out, out
        assert snapshot(dsn) == before
    with psycopg.connect(dsn, autocommit=True) as c:  # the user keeps one open basket per person
        c.execute("update public.baskets b set status = 'closed' where b.status = 'open' and exists (select 1 "
                  "from pgconverge.legacy_customer_profile m join pgconverge.legacy_customer_profile m2 "
                  "on m2.profile_id = m.profile_id and m2.customer_id < m.customer_id "
                  "where m.customer_id = b.customer_id)")
    cli("run", "expand", *args)
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("select count(*) from pg_indexes where indexname = 'baskets_profile_id_open'").fetchone()[0] == 1
    cli("rollback", "align", *args)


def test_zoo_contract_checks_everything_before_its_first_drop(make_db, tmp_path):
    """What appears after planning and would stop contract half-way (a SQL-standard function body that depends on
    the legacy column, a mirror index dropped by hand) is refused by contract's check before anything is dropped,
    every object named; once fixed, contract goes through and the rollback restores the schema."""
    zoo = build(shapes=("join_pk",))
    dsn = make_db()
    load(dsn, zoo)
    args = ("--dsn", dsn, "--config", write_config(tmp_path, zoo.config))
    run = ZooRun(dsn, zoo)
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create function public.order_count(p bigint) returns bigint language sql stable begin atomic "
                  "select count(*) from public.orders where customer_id = p; end")
        c.execute("drop index public.profile_tags_pkey")
    before = snapshot(dsn, skip=("pgconverge",))
    # The invariants gate comes first: what expand installed is checked against its plan, with the statement that
    # makes the index again.
    out = " ".join(cli("run", "contract", "--accept-code-references", "--accept-runtime-use", *args, expect=2).split())
    for needle in ("index public.profile_tags_pkey on public.customer_tags is missing",
                   "CREATE UNIQUE INDEX CONCURRENTLY profile_tags_pkey ON public.customer_tags (profile_id, tag)",
                   "nothing was dropped"):
        assert needle in out, out
    assert snapshot(dsn, skip=("pgconverge",)) == before
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create unique index concurrently profile_tags_pkey on public.customer_tags (profile_id, tag)")
    before = snapshot(dsn, skip=("pgconverge",))
    out = " ".join(cli("run", "contract", "--accept-code-references", "--accept-runtime-use", *args, expect=2).split())
    for needle in ("order_count(bigint) uses public.orders.customer_id", "nothing was dropped"):
        assert needle in out, out
    assert snapshot(dsn, skip=("pgconverge",)) == before
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("drop function public.order_count(bigint)")
    cli("run", "contract", "--accept-code-references", "--accept-runtime-use", *args)
    assert run.check("contract") == [] and run.probe() == []
    cli("rollback", "align", *args)
    assert run.check("rollback") == []
