"""A row with no owner at all stays refused through expand, where the legacy column was NOT NULL.

Expand drops the legacy column's NOT NULL early (new code writes the new column alone), and the new column's own
comes only after the backfill. An application can rely on that NOT NULL to refuse a row whose owner it could not
find: here a BEFORE trigger fills `user_id` from an editor's e-mail and leaves it NULL for an unknown one. In between
the same insert used to succeed with neither id; expand then stopped at its VALIDATE with a raw error, and `rollback
expand` stopped the same way, so the migration could go neither forward nor back. Now the row is refused all along,
with the NOT NULL's own SQLSTATE and message, and both directions finish.
"""

from __future__ import annotations

import psycopg
import pytest

from _support import cli, schema_db
from pgconverge.execution import killpoint

SCHEMA = """
create table users (id uuid primary key default gen_random_uuid(), email text not null);
create table people (id uuid primary key default gen_random_uuid(), email text not null unique);
create table posts (id bigserial{pk}, user_id uuid not null references users(id), body text, editor_email text){part};
{partitions}
create function posts_set_owner() returns trigger language plpgsql as $$
begin
  if new.user_id is null and new.editor_email is not null then
    new.user_id := (select id from users where lower(email) = lower(new.editor_email));
  end if;
  return new;
end $$;
create trigger posts_set_owner before insert on posts for each row execute function posts_set_owner();
insert into users (email) select 'u' || g || '@x.test' from generate_series(1, 40) g;
insert into people (email) select 'U' || g || '@x.test' from generate_series(1, 25) g;
insert into posts (user_id, body) select id, 'seed' from users;
"""

SHAPES = {
    "plain": dict(pk=" primary key", part="", partitions=""),
    "partitioned": dict(pk="", part=" partition by range (id)",
                        partitions="create table posts_low partition of posts for values from (0) to (1000);\n"
                                   "create table posts_high partition of posts for values from (1000) to (100000);"),
}

CONFIG = """
[legacy]
table = "public.users"
key = "id"
match_column = "email"
match = "email"
helper = ""

[canonical]
table = "public.people"
key = "id"
match_column = "email"
copy_columns = []

[migration]
new_column = "person_id"
"""

ORPHAN = "insert into posts (editor_email, body) values ('nobody@x.test', 'unknown editor')"
KNOWN = "insert into posts (editor_email, body) values ('u3@x.test', 'known editor')"


def _try(dsn: str, statement: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as c:
        try:
            c.execute(statement)
            return "ok"
        except psycopg.Error as exc:
            return f"{exc.sqlstate} {exc.diag.message_primary}"


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_row_with_no_owner_is_refused_all_through_expand(make_db, tmp_path, monkeypatch, shape):
    dsn, args = schema_db(make_db, tmp_path, SCHEMA.format(**SHAPES[shape]), CONFIG)
    before = _try(dsn, ORPHAN)
    assert before.startswith("23502 null value in column \"user_id\""), before
    cli("run", "align", *args)
    seen: dict[str, tuple[str, str]] = {}
    real = killpoint.reached

    def reached(step_id: str, point: str) -> None:  # the application's two inserts at every step boundary of expand
        if step_id.startswith("expand.") and point == "before":
            seen[step_id] = (_try(dsn, ORPHAN), _try(dsn, KNOWN))
        real(step_id, point)

    monkeypatch.setattr(killpoint, "reached", reached)
    cli("run", "expand", *args)
    monkeypatch.setattr(killpoint, "reached", real)
    assert "expand.posts.backfill" in seen or any(s.startswith("expand.posts.backfill.") for s in seen), seen
    # Refused as before, until the new column's NOT NULL stands alone (then the same SQLSTATE, naming person_id)
    # (the final checks come after the guard is dropped: the new column's NOT NULL then refuses the row)
    guarded = [s for s in seen if s not in ("expand.references", "expand.invariants")
               and not s.endswith(".drop_owner_check")]
    wrong = {s: r for s, r in seen.items() if r[1] != "ok" or not r[0].startswith("23502")
             or (s in guarded and r[0] != before)}
    assert not wrong, f"the application's inserts at expand's steps, where the first must fail as before: {wrong}"
    assert _try(dsn, ORPHAN).startswith("23502 null value in column \"person_id\""), "after expand"
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("select count(*) from posts where user_id is null and person_id is null").fetchone()[0] == 0
        left = c.execute("select tgname from pg_catalog.pg_trigger where tgname like 'pgconverge_owner%'").fetchall()
    assert left == [], f"the guard outlives expand: {left}"
    cli("rollback", "expand", *args)
    assert _try(dsn, ORPHAN) == before
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("select count(*) from pg_catalog.pg_proc where proname like 'owner\\_%' and "
                         "pronamespace = 'pgconverge'::regnamespace").fetchone()[0] == 0
