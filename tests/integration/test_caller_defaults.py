"""A canonical column whose default reads who is calling (`owner_id uuid default auth.uid()`, makerkit's
`primary_owner_user_id`): a canonical row align's trigger creates for a legacy row takes it from whoever wrote the
legacy row. An admin registering someone would own the new identity. Refused before any change unless the column is
copied from the legacy table or accepted; a misspelt acceptance is refused too."""

from __future__ import annotations

import json

import psycopg

from _support import cli, write_config
from test_bad_input_schema import _refused

SMALL = 0.1
OWNER = """
alter table public.customers add column auth_user uuid;
update public.customers set auth_user = gen_random_uuid();
alter table public.profiles add column owner_id uuid default auth.uid(),
  add column made_by text not null default current_user;
"""
ADMIN = "0a0a0a0a-0000-4000-8000-00000000adad"


def _db(make_db, template_factory) -> str:
    dsn = make_db(template_factory(SMALL))
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(OWNER)
    return dsn


def test_a_canonical_default_that_reads_the_caller_is_refused_before_any_change(make_db, template_factory, tmp_path):
    dsn = _db(make_db, template_factory)
    cfg = write_config(tmp_path, "")
    for args in (["plan", "--config", cfg], ["run", "align", "--config", cfg], ["emit", str(tmp_path / "out"), "--config", cfg]):
        _refused(dsn, args, "public.profiles column(s) owner_id (default auth.uid()), made_by (default CURRENT_USER)",
                 "read who is calling", "an admin or a service registering someone would own the new identity",
                 'migration.accept_caller_defaults = ["owner_id", "made_by"]')
    (tmp_path / "bad").mkdir()
    bad = write_config(tmp_path / "bad", '[migration]\naccept_caller_defaults = ["owner", "made_by"]\n')
    _refused(dsn, ["run", "align", "--config", bad], "migration.accept_caller_defaults names 'owner'",
             "such columns of public.profiles: made_by, owner_id")


def test_copied_from_the_legacy_row_the_person_owns_the_row_whoever_wrote_it(make_db, template_factory, tmp_path):
    """The fix: copy the column from the legacy row (and accept the one that only names the database role). Then an
    admin registering a customer after align makes a profile that the customer owns, not the admin."""
    dsn = _db(make_db, template_factory)
    cfg = write_config(tmp_path, '[canonical]\ncopy_columns = { display_name = "display_name", auth_user = "owner_id" }'
                                 '\n[migration]\naccept_caller_defaults = ["made_by"]\nobservation_window = 0\n')
    cli("run", "align", "--dsn", dsn, "--config", cfg)
    person = "0b0b0b0b-0000-4000-8000-000000000001"
    with psycopg.connect(dsn, autocommit=True) as c, c.transaction():
        c.execute("set local role service_role")
        c.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps({"sub": ADMIN,
                                                                                     "role": "service_role"}),))
        lid = c.execute("insert into public.customers (wa_id, display_name, auth_user) values ('+250788123999', "
                        "'registered by an admin', %s) returning id", (person,)).fetchone()[0]
    with psycopg.connect(dsn, autocommit=True) as c:
        owner, method = c.execute(
            "select p.owner_id::text, m.method from pgconverge.legacy_customer_profile m "
            "join public.profiles p on p.user_id = m.profile_id where m.customer_id = %s", (lid,)).fetchone()
    assert (owner, method) == (person, "created")
