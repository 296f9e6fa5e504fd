"""Contract's code-references gate reads a database function's body on its parse trees: the text of a legacy column's
name is a use of that column only where it is a column of a dependent (or of the legacy table). A Supabase access-token
hook reading its payload's own field (`event->>'customer_id'`) and a function with a local variable of that name
blocked contract ("mentions legacy names", without saying which or where), and the only way on,
--accept-code-references, waived real references too. A function that does read the legacy column still blocks, and
the gate names the word and its line."""

from __future__ import annotations

import psycopg

from _support import cli, write_config

HOOK = """
create function public.custom_access_token_hook(event jsonb) returns jsonb language plpgsql stable as $$
  declare claims jsonb;
  begin
    claims := jsonb_set(event->'claims', '{customer_id}', to_jsonb(event->>'customer_id'));
    return jsonb_build_object('customer_id', event->>'customer_id', 'claims', claims);
  end;
$$;
create function public.create_customer(wa text) returns uuid language plpgsql as $$
  declare customer_id uuid;
  begin
    customer_id := gen_random_uuid();
    select o.id into customer_id from public.orders o where o.id::text = wa;
    return customer_id;
  end;
$$;
"""

READER = """
create function public.orders_of(who bigint) returns bigint language plpgsql stable as $$
  begin
    return (select count(*) from public.orders o
            where o.customer_id = who);
  end;
$$;
"""


def test_a_json_key_and_a_variable_named_like_the_legacy_column_pass_and_a_real_read_is_named(
        make_db, template_factory, tmp_path):
    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, "[migration]\nobservation_window = 0\n")
    code = tmp_path / "app"
    code.mkdir()
    (code / "app.ts").write_text("export const greeting = 'hello';\n")
    for ph in ("align", "expand", "switch"):
        cli("run", ph, "--dsn", dsn, "--config", cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(READER)
        conn.execute(HOOK)
    out = " ".join(cli("run", "contract", "--yes", "--dsn", dsn, "--config", cfg, "--code", str(code),
                       expect=2).split())
    assert "no code references" in out, out
    assert ("database function public.orders_of(bigint) uses legacy names: customer_id at line 4 "
            "(`where o.customer_id = who);`): the column of public.orders") in out, out
    assert "custom_access_token_hook" not in out and "create_customer" not in out, out
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("drop function public.orders_of(bigint)")
    cli("run", "contract", "--yes", "--dsn", dsn, "--config", cfg, "--code", str(code))
