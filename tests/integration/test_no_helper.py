"""A plain database with no RLS identity helper (legacy.helper = ""): no auth schema, no policies, the application
connects as one role and filters by user itself. Align, expand, switch and contract run under old-code writers
(the legacy column only) and new-code writers (the new column only), and every row ends on the right account; the
RLS checks say "not applicable" rather than pass; every rollback works; a policy reading the legacy column is
refused before any change; and the emitted files apply in order."""

from __future__ import annotations

import itertools
import random
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

from _support import cli, cli_json, schema_dump, write_config

PSQL = "/usr/lib/postgresql/15/bin/psql"
NOT_APPLICABLE = 'not applicable: no RLS identity helper (legacy.helper = "")'

# Persons 0..29: a user each; 0..14 have an account already, spelled another way; 3 and 4 have a second user row
# (the same person signed up twice): merged onto one account.
PEOPLE = 30
TWICE = (3, 4)


def _email(i: int) -> str:
    return f"person{i}@plain.org"


SCHEMA = (
    "create table users (id serial primary key, email text not null, name text);\n"
    "create table accounts (id bigserial primary key, email text unique, display_name text);\n"
    "create table orders (id serial primary key, user_id int not null references users(id) on delete cascade, "
    "total int);\n"
    + "".join(f"insert into users (email, name) values ('{_email(i)}', 'User {i}');\n" for i in range(PEOPLE))
    + "".join(f"insert into users (email, name) values (' {_email(i).upper()}', 'User {i} again');\n" for i in TWICE)
    + "".join(f"insert into accounts (email, display_name) values ('{_email(i).capitalize()}', 'Account {i}');\n"
              for i in range(15))
    + "insert into orders (user_id, total) select 1 + (g % 32), -g from generate_series(1, 200) g;\n")

CONFIG = """
[legacy]
table = "public.users"
match_column = "email"
match = "email"
helper = ""
[canonical]
table = "public.accounts"
key = "id"
match_column = "email"
copy_columns = { name = "display_name" }
[migration]
new_column = "account_id"
observation_window = 0
token_claims = {}
"""


def _db(make_db, tmp_path: Path, schema: str = SCHEMA, config: str = CONFIG) -> tuple[str, tuple[str, ...]]:
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(schema)
    return dsn, ("--dsn", dsn, "--config", write_config(tmp_path, config))


def _person(email: str) -> str:
    return email.strip().lower()


class Writers:
    """The application: old code writes orders with user_id only, new code with account_id only, in short autocommit
    transactions as the owner, each row tagged by its total. Every row written and every failure is recorded."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.tags = itertools.count(1)
        self.lock = threading.Lock()
        self.old: dict[int, int] = {}  # total -> user id written
        self.new: dict[int, int] = {}  # total -> account id written
        self.errors: list[str] = []
        self.threads: dict[str, tuple[threading.Thread, threading.Event]] = {}

    def start(self, kind: str) -> None:
        stop = threading.Event()
        t = threading.Thread(target=self._run, args=(kind, stop), daemon=True)
        self.threads[kind] = (t, stop)
        t.start()

    def stop(self, kind: str) -> None:
        t, stop = self.threads.pop(kind)
        stop.set()
        t.join(30)

    def _run(self, kind: str, stop: threading.Event) -> None:
        rnd = random.Random(kind)
        with psycopg.connect(self.dsn, autocommit=True, application_name=f"app-{kind}") as conn:
            ids = [r[0] for r in conn.execute(
                "select id from users" if kind == "old" else "select id from accounts").fetchall()]
            deadline = time.monotonic() + 300
            while not stop.is_set() and time.monotonic() < deadline:
                with self.lock:
                    tag = next(self.tags)
                who = rnd.choice(ids)
                try:
                    if kind == "old":
                        conn.execute("insert into orders (user_id, total) values (%s, %s)", (who, tag))
                        self.old[tag] = who
                    else:
                        conn.execute("insert into orders (account_id, total) values (%s, %s)", (who, tag))
                        self.new[tag] = who
                except psycopg.Error as exc:
                    self.errors.append(f"{kind} writer: {exc}")
                time.sleep(0.005)

    def wait_for_rows(self, kind: str, n: int = 5) -> None:
        rows = self.old if kind == "old" else self.new
        start = len(rows)
        deadline = time.monotonic() + 30
        while len(rows) < start + n and time.monotonic() < deadline:
            time.sleep(0.02)


def test_whole_cycle_under_old_and_new_writers(make_db, tmp_path):
    dsn, args = _db(make_db, tmp_path)
    with psycopg.connect(dsn, autocommit=True) as conn:
        emails = dict(conn.execute("select id, email from users").fetchall())
    plan = cli_json("plan", *args)
    ids = [s["id"] for s in plan["steps"]]
    assert not [i for i in ids if "helper" in i], ids  # nothing of a helper to derive, replace or retire
    app = Writers(dsn)
    app.start("old")
    app.wait_for_rows("old")
    cli("run", "align", *args)
    app.wait_for_rows("old")
    cli("run", "expand", *args)
    app.start("new")
    app.wait_for_rows("new")
    cli("run", "switch", *args)
    app.wait_for_rows("new")
    app.wait_for_rows("old")
    with psycopg.connect(dsn, autocommit=True) as conn:
        # A merged person's rows written by new code get the first legacy id by the key's order (no helper to ask).
        merged = conn.execute(
            "select m.account_id, min(m.user_id) from pgconverge.legacy_user_account m group by 1 "
            "having count(*) > 1").fetchall()
        assert len(merged) == len(TWICE), merged
        first = dict(merged)
        for account, user in conn.execute("select account_id, user_id from orders where account_id = any(%s)",
                                          ([a for a, _ in merged],)).fetchall():
            if user is not None and user != first[account]:
                # only old code writes another legacy row of the person
                assert user in {u for u, e in emails.items()
                                if _person(e) == _person(emails[first[account]])}, (account, user)
        new_merged = conn.execute(
            "select o.account_id, o.user_id from orders o where o.account_id = any(%s) and o.total = any(%s)",
            ([a for a, _ in merged], list(app.new))).fetchall()
    assert all(u == first[a] for a, u in new_merged), new_merged

    # verify --rls: not applicable, said so, with what it looked at; not a failure.
    out = cli_json("verify", "--rls", *args)
    rls = next(c for c in out["checks"] if c["step"] == "rls")
    assert out["passed"] and rls["passed"], out
    assert rls["not_applicable"].startswith(NOT_APPLICABLE), rls
    assert rls["coverage"]["tables"] == ["public.users", "public.accounts", "public.orders"], rls
    assert rls["coverage"]["policies"] == [], rls
    assert "n/a rls" in cli("verify", "--rls", *args)
    audit = cli_json("audit", "runtime", *args)
    assert audit["legacy_helper"].endswith(NOT_APPLICABLE), audit
    assert audit["legacy_helper_calls"] is None, audit

    # Old code retired: the runtime gate sees it written until now, so the baseline is taken again after it stops.
    app.stop("old")
    blocked = cli("run", "contract", *args, "--accept-code-references", expect=2)
    assert "written with user_id only" in blocked, blocked
    cli("audit", "runtime", "--rebaseline", *args)
    app.wait_for_rows("new")
    cli("run", "contract", *args, "--accept-code-references")
    app.wait_for_rows("new")
    app.stop("new")
    assert not app.errors, app.errors[:5]
    assert app.old and app.new

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("select o.total, o.account_id, a.email from orders o join accounts a "
                            "on a.id = o.account_id").fetchall()
        assert conn.execute("select count(*) from orders where account_id is null").fetchone()[0] == 0
    by_tag = {t: (acc, email) for t, acc, email in rows}
    for tag, user in app.old.items():  # old code's row: the account of that user's person
        assert _person(by_tag[tag][1]) == _person(emails[user]), (tag, user, by_tag[tag])
    for tag, account in app.new.items():  # new code's row: the account it named
        assert by_tag[tag][0] == account, (tag, account, by_tag[tag])
    for tag, acc, email in rows:  # the rows from before the migration too
        if tag <= 0:
            user = 1 + (-tag % 32)
            assert _person(email) == _person(emails[user]), (tag, user, email)

    # The report: the RLS check and the helper gate are "not applicable", and the verdict counts them as such.
    report = cli_json("report", *args)
    checks = {c["check"]: c for c in report["checks"]}
    eq = next(c for k, c in checks.items() if k.startswith("RLS equivalence"))
    assert eq["status"] == "not applicable" and NOT_APPLICABLE in eq["looked_at"], eq
    alone = checks["contract gate: canonical helper stands alone"]
    assert alone["status"] == "not applicable", alone
    assert report["verdict"]["status"] == "COMPLETE", report["verdict"]
    assert "not applicable" in report["verdict"]["verdict"], report["verdict"]


def test_rollback_through_every_phase(make_db, tmp_path):
    dsn, args = _db(make_db, tmp_path)
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = schema_dump(conn)
        emails = dict(conn.execute("select id, email from users").fetchall())
    for phase in ("align", "expand", "switch"):
        cli("run", phase, *args)
    with psycopg.connect(dsn, autocommit=True) as conn:  # those align created go with its rollback
        accounts = dict(conn.execute("select id, email from accounts").fetchall())
    app = Writers(dsn)
    app.start("new")
    app.wait_for_rows("new")
    cli("run", "contract", *args, "--accept-code-references")
    app.wait_for_rows("new")
    for phase in ("contract", "switch"):
        cli("rollback", phase, *args)
    app.wait_for_rows("new")
    app.stop("new")
    for phase in ("expand", "align"):
        cli("rollback", phase, *args)
    assert not app.errors, app.errors[:5]
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert schema_dump(conn) == before
        rows = dict(conn.execute("select total, user_id from orders").fetchall())
        emails = dict(conn.execute("select id, email from users").fetchall())
    # Every row new code wrote by the account alone has its legacy id back: a user of that account's person.
    assert app.new
    for tag, account in app.new.items():
        assert rows[tag] is not None and _person(emails[rows[tag]]) == _person(accounts[account]), (tag, account)
    assert cli_json("status", *args)["summary"]["state"] == "rolled back"


POLICY = ("alter table orders enable row level security;\n"
          "create policy own_orders on orders using (user_id = current_setting('app.user_id')::int);\n")


def test_policy_reading_the_legacy_column_is_refused(make_db, tmp_path):
    dsn, args = _db(make_db, tmp_path, SCHEMA + POLICY)
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = schema_dump(conn)
    for cmd in (("plan",), ("run", "align")):
        out = " ".join(cli(*cmd, *args, expect=2).split())
        assert "own_orders on public.orders" in out, out
        assert 'legacy.helper = ""' in out and "set legacy.helper to the function" in out, out
        assert "rewrite them first" in out, out
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert schema_dump(conn) == before
        assert conn.execute("select to_regnamespace('pgconverge')").fetchone()[0] is None


def test_missing_helper_fix_suggests_no_helper(make_db, tmp_path):
    """The default helper named but absent: with no policy on the migrated tables the fix says legacy.helper = "";
    with one, it does not."""
    config = CONFIG.replace('helper = ""\n', "")
    dsn, args = _db(make_db, tmp_path, config=config)
    out = " ".join(cli("plan", *args, expect=2).split())
    assert "public.auth_customer_id" in out and 'set legacy.helper = ""' in out, out
    dsn, args = _db(make_db, tmp_path, SCHEMA + POLICY, config=config)
    out = " ".join(cli("plan", *args, expect=2).split())
    assert "public.auth_customer_id" in out and 'legacy.helper = ""' not in out, out


def _apply(dsn: str, files: list[str]) -> None:
    for f in files:
        r = subprocess.run([PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", f], capture_output=True,
                           text=True)
        assert r.returncode == 0, f"{Path(f).name}:\n{r.stderr}"


@pytest.mark.parametrize("server", ["make_db", "make_db15"])
def test_emitted_files_apply(server, request, tmp_path):
    """On the embedded 16 and on 15 (Supabase's), where to_regprocedure('') raises rather than returning null."""
    dsn, args = _db(request.getfixturevalue(server), tmp_path)
    out = tmp_path / "project"
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = schema_dump(conn)
        emails = dict(conn.execute("select id, email from users").fetchall())
    written = []
    for phase in ("align", "expand", "switch", "contract"):
        data = cli_json("emit", str(out), *args, "--phase", phase)
        written += data["migrations"]
        _apply(dsn, data["migrations"])
    text = "".join(Path(f).read_text() for f in written)
    assert "auth_customer_id" not in text and "auth_profile_id" not in text
    assert "to_regprocedure('')" not in text
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select count(*) from orders where account_id is null").fetchone()[0] == 0
        for total, email in conn.execute(
                "select o.total, a.email from orders o join accounts a on a.id = o.account_id").fetchall():
            assert _person(email) == _person(emails[1 + (-total % 32)]), (total, email)
        assert conn.execute("select to_regclass('public.users')").fetchone()[0] is None
    assert cli_json("status", *args)["summary"]["state"] == "done"
    _apply(dsn, cli_json("emit", str(out), *args, "--rollback-to", "align")["migrations"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert schema_dump(conn) == before
