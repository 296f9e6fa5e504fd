"""A legacy helper that looks the caller up by `(select auth.uid())`, as Supabase advises writing it.

The RLS checks give each sampled legacy identity a token that carries its auth user as `sub` where the legacy
helper finds the caller by auth.uid(). They recognised only a bare `auth.uid()`: with the scalar sub-query form
(Supabase's advice for policies, which whole schemas follow) the tokens carried no `sub`, the legacy helper
answered NULL for every sampled identity, the switch's comparison looked at nobody's own rows, and `verify --rls`
failed "proves nothing" with fixes that did not apply.
"""

from __future__ import annotations

import json

import psycopg

from _support import cli, write_config
from pgconverge.config import Spec
from pgconverge.verify import rls

HELPER = """
create or replace function public.auth_customer_id() returns bigint
language sql stable security definer
set search_path = ''
as $$
  select c.id from public.customers c where c.auth_user_id = (select auth.uid())
$$;
"""


def test_the_rls_checks_read_the_callers_auth_user_through_a_scalar_sub_query(make_db, template_factory, tmp_path):
    dsn = make_db(template_factory(0.1, "uid_lookup"))
    cfg = write_config(tmp_path, "[migration]\nrls_sample = 5\n")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(HELPER)
        assert rls.subject_column(conn, Spec()) == "auth_user_id"
    for ph in ("align", "expand"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    before = json.loads(cli("verify", "--rls", "--json", "--dsn", dsn, "--config", cfg))
    cli("run", "switch", "--dsn", dsn, "--config", cfg)
    after = json.loads(cli("verify", "--rls", "--json", "--dsn", dsn, "--config", cfg))
    for out in (before, after):
        text = json.dumps(out)
        assert out["passed"] is True and "proves nothing" not in text, text[:3000]
        (check,) = [c for c in out["checks"] if c["step"] == "rls"]
        by_table = check["coverage"]["by_table"]
        assert by_table and all(c["owners"] and c["owners_seeing_own"] == c["owners"] for c in by_table.values()), \
            by_table
