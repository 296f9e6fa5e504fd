"""People old code creates during the migration that pgconverge cannot place, and the rows it writes for them.

An optional e-mail (Django's `auth_user.email`, NOT NULL default '') gives no match key, and a canonical table whose
e-mail is NOT NULL cannot take a row without one: unmatched is "refuse" in effect. From expand on, old code's write of
a dependent row for such a person used to fail in the sync trigger ("could not create a … row"), and a sign-up
that wrote the user and its first row in one transaction lost both. Now the row is written with its legacy id and
no new id where the reference is nullable, the legacy row waits in the pending table, and `verify` names both with
the way out; `plan` says so before align. Where the reference is NOT NULL, the new column's NOT NULL refuses the
row, as it will after contract: `plan` says that too.
"""

from __future__ import annotations

import psycopg
import pytest

from _support import cli, schema_db
from test_no_helper import CONFIG

SCHEMA = """
create table users (id serial primary key, email text not null default '', name text);
create table accounts (id bigserial primary key, email text not null, display_name text);
create unique index accounts_email on accounts (lower(email));
create table posts (id serial primary key, user_id int not null references users(id), title text);
create table admin_log (id serial primary key, user_id int references users(id) on delete set null, what text);
insert into users (email, name) select 'person' || g || '@plain.org', 'User ' || g from generate_series(1, 6) g;
insert into accounts (email, display_name) values ('person1@plain.org', 'Account 1');
insert into posts (user_id, title) select 1 + g % 6, 'post ' || g from generate_series(1, 12) g;
insert into admin_log (user_id, what) select 1 + g % 6, 'log ' || g from generate_series(1, 12) g;
"""



@pytest.mark.parametrize("deferred", [False, True], ids=["immediate", "deferrable"])
def test_old_codes_person_without_a_usable_email_after_expand(make_db, tmp_path, deferred):
    """DEFERRED: every foreign key DEFERRABLE INITIALLY DEFERRED, as Django makes them (the row is filled, or its NOT
    NULL checked, at commit by pgconverge's deferred trigger)."""
    schema = SCHEMA.replace("references users(id)", "references users(id) deferrable initially deferred") \
        .replace("deferred on delete set null", "deferred") if deferred else SCHEMA
    dsn, args = schema_db(make_db, tmp_path, schema, CONFIG)
    out = " ".join(cli("plan", *args).split())
    assert "public.users rows old code writes without a usable" in out, out[-3000:]
    assert "public.admin_log (user_id)" in out and "public.posts (user_id)" in out, out[-3000:]
    assert "pgconverge align --decisions FILE" in out, out[-3000:]
    cli("run", "align", *args)
    cli("run", "expand", *args)
    with psycopg.connect(dsn, application_name="app") as app:
        # a sign-up with no e-mail, and its first admin-log row, in one transaction
        uid = app.execute("insert into users (name) values ('No Mail') returning id").fetchone()[0]
        log = app.execute("insert into admin_log (user_id, what) values (%s, 'signed up') returning id",
                          (uid,)).fetchone()[0]
        app.commit()
        # a later row, in a transaction of its own
        later = app.execute("insert into admin_log (user_id, what) values (%s, 'later') returning id",
                            (uid,)).fetchone()[0]
        app.commit()
        # posts.user_id is NOT NULL, and so is account_id from expand on: no row without an owner
        with pytest.raises(psycopg.errors.NotNullViolation, match="account_id"):
            app.execute("insert into posts (user_id, title) values (%s, 'x')", (uid,))
            app.commit()  # checked at commit where the key is deferrable
        app.rollback()
    with psycopg.connect(dsn, autocommit=True) as c:
        rows = c.execute("select id, user_id, account_id from admin_log where id = any(%s) order by id",
                         ([log, later],)).fetchall()
        assert rows == [(log, uid, None), (later, uid, None)], rows
        pending = c.execute("select reason from pgconverge.pending_legacy_rows where legacy_id = %s",
                            (str(uid),)).fetchone()
        assert pending is not None and "accounts" in pending[0], pending
    out = " ".join(cli("verify", *args, expect=1).split())
    assert f"{uid} has no mapping" in out, out
    assert "public.admin_log: 2 rows have user_id but no account_id" in out, out
    assert "pgconverge align --decisions FILE" in out, out[-3000:]
    # the switch's first gate refuses before any change, naming the person and the way to place them (new code,
    # reading by the new column, would not see their rows)
    out = " ".join(cli("run", "switch", *args, expect=2).split())
    assert f"{uid} has no mapping" in out and "pgconverge align --decisions FILE" in out, out[-3000:]
    # the way out the checks give: a usable value (its trigger maps the person), then the UPDATE they name
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("update users set email = 'nomail@plain.org' where id = %s", (uid,))
        c.execute("update admin_log d set account_id = m.account_id from pgconverge.legacy_user_account m "
                  "where m.user_id = d.user_id and d.account_id is null")
        assert c.execute("select count(*) from admin_log where account_id is null").fetchone()[0] == 0
    cli("run", "switch", *args)
    cli("verify", *args)
