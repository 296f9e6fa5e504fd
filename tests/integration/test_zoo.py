"""The schema zoo: one small schema per case (see _zoo.build), migrated align → expand → switch → contract under
old- and new-code writers and rolled back to align, checked against its ground truth after every phase; or
refused at `plan`, changing nothing.

Each case has a database of its own (make_db) and shares nothing with the others, so the cases can run in
parallel (pytest-xdist).
"""

from __future__ import annotations

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
]


def _params(kind: str):
    return [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.slow else [])
            for c in CASES if c.expect == kind]


PHASES = ("align", "expand", "switch", "contract")


@pytest.mark.parametrize("case", _params("migrates"))
def test_zoo_migrates(case: Case, make_db, tmp_path):
    zoo = build(**case.params)
    dsn = make_db()
    load(dsn, zoo)
    cfg = write_config(tmp_path, zoo.config)
    args = ("--dsn", dsn, "--config", cfg)
    cli("plan", *args)
    run = ZooRun(dsn, zoo)
    old = run.start(OldWriter(run))
    new = None
    try:
        old.wrote(2)  # old code is at work before align starts
        for phase in PHASES:
            if phase == "contract":
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
            problems = run.check(phase)
            assert problems == [] and run.failures() == [], "\n".join(problems + run.failures())
        cli("rollback", "--to", "align", *args)
        problems = run.check("rollback")
        assert problems == [], "\n".join(problems)
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
