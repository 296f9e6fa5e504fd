"""A dependent whose primary key is the legacy column alone, the 1:1 shape (`wallets(customer_id primary key
references customers)`, `user_settings(user_id primary key)`), through every phase and every rollback, with the
preflight on.

After contract the legacy column is gone and the mirror key on the new column is the table's primary key. The
rollback's refill gives the rows their legacy id back, so it cannot walk the table by the legacy column: every value
there is NULL until it is done. Walked so, it filled no row, the NOT NULL validation failed on every retry, and the
preflight, which runs that rollback on a copy, refused every `run` with a fix about rows that were fine.

Old code writes wallets by the legacy id, new code by the new one; after every step each wallet keeps its owner in
both columns (where each exists), each caller sees its own wallet alone, and `verify` passes.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from _small import CLEAR, PAIR_SQL, numbered_customers, owned, roles_sql
from _support import cli, schema_db

from pgconverge.verify.tokens import act_as

CONFIG = """
[canonical]
copy_columns = []
[migration]
rls_sample = 0
batch_size = 7
observation_window = 0
token_claims = {}
"""

SCHEMA = roles_sql() + PAIR_SQL + numbered_customers(20) + """
insert into public.profiles (whatsapp_e164, display_name)
  select '+25078' || lpad(i::text, 7, '0'), 'p' || i from generate_series(1, 10) i;
create table public.wallets (customer_id bigint primary key references public.customers (id),
  balance int not null default 0, note text not null unique);
insert into public.wallets (customer_id, note) select id, 'seed ' || id from public.customers;
""" + owned("wallets") + """
grant usage on schema public to anon, authenticated, service_role;
grant select, insert, update, delete on public.wallets to service_role;
grant usage on all sequences in schema public to anon, authenticated, service_role;
"""

# Two more customers with the numbers of customers 1 and 2 in national format, merged onto their profiles; the
# second of the first pair owns the wallet its profile has, the second of the other pair none: a rollback gives the
# first wallet back the legacy id it had (kept aside by contract, as every merged person's rows are), not the
# profile's first legacy row.
MERGED_APART = """
insert into public.customers (wa_id, display_name) values ('0780000001', 'again 1'), ('0780000002', 'again 2');
update public.wallets set customer_id = 21, note = 'seed 21' where customer_id = 1;
"""

# Two more customers with the numbers of customers 1 and 2 in national format: align merges each onto the same
# profile, and each owns a wallet, so the mirror of the key on the new column cannot hold.
MERGED = """
insert into public.customers (wa_id, display_name) values ('0780000001', 'again 1'), ('0780000002', 'again 2');
insert into public.wallets (customer_id, note) select id, 'seed ' || id from public.customers where id > 20;
"""

ACCEPT = ("--yes", "--accept-code-references", "--accept-runtime-use")


pytestmark = pytest.mark.usefixtures("preflight_on")


class Wallets:
    """What every wallet must hold: its owner's legacy id and canonical id, by its note."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.legacy: dict[str, int] = {}
        self.canonical: dict[str, str] = {}
        self.written = 0

    def columns(self, conn) -> set[str]:
        return {r[0] for r in conn.execute("select attname from pg_attribute where attrelid = 'public.wallets'::"
                                           "regclass and attnum > 0 and not attisdropped")}

    def old_code(self) -> None:
        """Old code: a new customer opens a wallet by the legacy id, and an existing one spends from theirs."""
        with psycopg.connect(self.dsn) as conn:
            self.written += 1
            note = f"old {self.written}"
            cid = conn.execute("insert into public.customers (wa_id, display_name) values (%s, %s) returning id",
                               (f"+2507891{self.written:05d}", note)).fetchone()[0]
            conn.commit()
            with conn.transaction():
                act_as(conn, {"customer_id": cid}, clear=CLEAR)
                conn.execute("insert into public.wallets (customer_id, note) values (%s, %s)", (cid, note))
                assert conn.execute("update public.wallets set balance = balance + 1").rowcount == 1
            with conn.transaction():
                act_as(conn, {"customer_id": 3}, clear=CLEAR)
                assert conn.execute("update public.wallets set balance = balance - 1").rowcount == 1
            self.legacy[note] = cid

    def new_code(self, as_caller: bool) -> None:
        """New code: a new person (a profile alone) opens a wallet by the new id; AS_CALLER: with the canonical
        token under the switched policies, else as a backend writer (service_role)."""
        with psycopg.connect(self.dsn) as conn:
            self.written += 1
            note = f"new {self.written}"
            pid = str(conn.execute("insert into public.profiles (whatsapp_e164, display_name) values (%s, %s) "
                                   "returning user_id", (f"+2507892{self.written:05d}", note)).fetchone()[0])
            conn.commit()
            with conn.transaction():
                if as_caller:
                    act_as(conn, {"profile_id": pid}, clear=CLEAR)
                else:
                    conn.execute("set local role service_role")
                conn.execute("insert into public.wallets (profile_id, note) values (%s, %s)", (pid, note))
                assert conn.execute("update public.wallets set balance = balance + 5 where profile_id = %s",
                                    (pid,)).rowcount == 1
            self.canonical[note] = pid
            if "customer_id" in self.columns(conn):  # the sync trigger gave it a legacy id: it must keep it
                self.legacy[note] = conn.execute("select customer_id from public.wallets where note = %s",
                                                 (note,)).fetchone()[0]

    def check(self, when: str) -> None:
        """Every wallet there, none else, each with its owner in every owner column the table has, readable by
        its owner's token alone."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cols = self.columns(conn)
            mapped = dict(conn.execute("select customer_id, profile_id::text from pgconverge.legacy_customer_profile"
                                       ).fetchall()) if conn.execute(
                "select to_regclass('pgconverge.legacy_customer_profile') is not null").fetchone()[0] else {}
            for note, cid in self.legacy.items():  # rows known by their legacy id get their canonical one once mapped
                if note not in self.canonical and cid in mapped:
                    self.canonical[note] = mapped[cid]
            have = [c for c in ("customer_id", "profile_id") if c in cols]
            assert have, when
            rows = {r[0]: r[1:] for r in conn.execute(sql.SQL("select note, {} from public.wallets").format(
                sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in have)))}
            assert set(rows) == set(self.legacy) | set(self.canonical), (when, sorted(set(rows) ^ set(self.legacy)))
            if "customer_id" in have:  # a row written by the new id alone after contract: given its legacy id by
                for note, got in rows.items():  # the rollback (checked against the mapping below), then kept
                    if note not in self.legacy and got[0] is not None:
                        self.legacy[note] = int(got[0])
            wrong = []
            for note, got in rows.items():
                want = {"customer_id": str(self.legacy.get(note)), "profile_id": self.canonical.get(note)}
                if tuple(got) != tuple(want[c] for c in have):
                    wrong.append((note, dict(zip(have, got)), want))
            assert not wrong, (when, wrong[:5])
            if "customer_id" in have and "profile_id" in have:  # the two agree through the mapping
                assert all(mapped.get(self.legacy[n]) == self.canonical[n] for n in rows), when
            pk = conn.execute("select pg_get_constraintdef(oid) from pg_constraint where conrelid = "
                              "'public.wallets'::regclass and contype = 'p'").fetchone()[0]
            assert pk in ("PRIMARY KEY (customer_id)", "PRIMARY KEY (profile_id)"), (when, pk)
            for note in ("seed 3", "old 1" if "old 1" in rows else "seed 15"):  # each sees its own wallet alone
                policy = conn.execute("select pg_get_expr(polqual, polrelid) from pg_policy where polrelid = "
                                      "'public.wallets'::regclass").fetchone()[0]
                claims = {"customer_id": self.legacy[note]} if "customer_id" in policy else \
                    {"profile_id": self.canonical[note]}
                with conn.transaction(force_rollback=True):
                    act_as(conn, claims, clear=CLEAR)
                    seen = [r[0] for r in conn.execute("select note from public.wallets")]
                assert seen == [note], (when, note, claims, seen)
        cli("verify", "--rls", "--dsn", self.dsn, "--config", self.config)


def test_a_table_keyed_by_the_legacy_column_alone_goes_through_every_phase_and_back(make_db, tmp_path):
    dsn, args = schema_db(make_db, tmp_path, SCHEMA + MERGED_APART, CONFIG)
    w = Wallets(dsn)
    w.config = args[-1]
    w.legacy.update({f"seed {i}": i for i in range(2, 22)})
    w.check("before")

    cli("run", "align", *args)  # with its preflight, which runs every phase and every rollback on a copy
    with psycopg.connect(dsn, autocommit=True) as conn:  # customers 1-10 found their profiles by phone
        by_phone = conn.execute("select count(*) from pgconverge.legacy_customer_profile m join public.profiles p "
                                "on p.user_id = m.profile_id and p.display_name = 'p' || m.customer_id").fetchone()[0]
    assert by_phone == 10
    w.old_code()
    w.check("after align")

    cli("run", "expand", *args)
    w.old_code()
    w.new_code(as_caller=False)
    w.check("after expand")

    cli("run", "switch", *args)
    w.old_code()
    w.new_code(as_caller=True)
    w.check("after switch")

    cli("run", "contract", *args, *ACCEPT)
    with psycopg.connect(dsn, autocommit=True) as conn:  # the merged persons' wallets' own legacy ids
        kept = conn.execute("select pk, legacy from pgconverge.legacy_owners").fetchall()
    assert sorted(kept) == sorted([(w.canonical["seed 21"], "21"), (w.canonical["seed 2"], "2")]), kept
    w.new_code(as_caller=True)
    w.check("after contract")

    cli("rollback", "contract", *args, "--yes")
    w.old_code()
    w.new_code(as_caller=True)
    w.check("after rollback contract")

    cli("rollback", "switch", *args, "--yes")
    w.old_code()
    w.new_code(as_caller=False)
    w.check("after rollback switch")

    cli("rollback", "expand", *args, "--yes")
    w.canonical.clear()  # the new column is gone: every row is known by its legacy id
    w.old_code()
    w.check("after rollback expand")

    cli("rollback", "align", *args, "--yes")
    w.old_code()
    w.check("after rollback align")


def test_merged_owners_of_one_wallet_each_are_refused_before_any_change_with_the_fix(make_db, tmp_path):
    """Two legacy rows align merges onto one profile, each owning a wallet: the mirror of the key on the new column
    cannot hold. The preflight of `run align` says so, names the rows and gives the fix, and nothing is changed."""
    dsn, args = schema_db(make_db, tmp_path, SCHEMA + MERGED, CONFIG)
    out = cli("run", "align", *args, expect=2)
    flat = " ".join(out.split())
    assert "would share" in flat and "wallets_pkey" in flat, out
    assert "keep at most one row of each group named" in flat and "align --decisions" in flat, out
    assert "validate_legacy_key_not_null" not in flat, out
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select to_regnamespace('pgconverge') is null").fetchone()[0]
