"""A partitioned dependent whose partitions change while the migration runs.

`orders` is partitioned by range of created_at (one partition sub-partitioned; see _zoo.build(partitioned=…)).
While expand runs, with old- and new-code writers at work, two tables full of rows that only old code could
have written (a legacy id, no new id) are attached as partitions: the first after the planned partitions were
backfilled and before the step that walks partitions the plan does not list, the second after that step.
The first is filled in the same run; the second is named by the invariants gate, and the next
`pgconverge run expand` fills it. Then switch, contract and the rollback to align, checked after every phase.
"""

from __future__ import annotations

import psycopg

from _support import cli, write_config
from _zoo import NewWriter, OldWriter, ZooRun, build, load
from pgconverge.execution import killpoint

LATE = {  # partition → (its range, the step after which it is attached)
    "public.orders_2030": (("2030-01-01", "2031-01-01"), ("expand.orders.backfill.orders_recent", "after")),
    "public.orders_2031": (("2031-01-01", "2032-01-01"), ("expand.orders.backfill_attached", "after")),
}


def _attach(dsn: str, run: ZooRun, table: str, bounds: tuple[str, str]) -> None:
    """Create TABLE like orders (it has the new column by now), fill it as old code would, attach it."""
    lo, hi = bounds
    with psycopg.connect(dsn, autocommit=True) as c:
        keys = [r[0] for r in c.execute("select id::text from public.customers order by id limit 6")]
        c.execute(f"create table {table} (like public.orders including defaults)")
        c.execute(f"insert into {table} (id, created_at, customer_id) select "
                  "nextval(pg_get_serial_sequence('public.orders', 'id')), %s::timestamptz + n * interval '1 day', "
                  "k::bigint from unnest(%s::text[]) with ordinality as x(k, n)", (lo, keys))
        c.execute(f"alter table public.orders attach partition {table} for values from ('{lo}') to ('{hi}')")
        for rid, lk in c.execute(f"select id::text, customer_id::text from {table}"):
            run.original[("public.orders", "customer_id", rid)] = lk
            run.__dict__.setdefault("late", set()).add(("public.orders", "customer_id", rid))
        assert c.execute(f"select count(*) from {table} where profile_id is null").fetchone()[0] == len(keys)


def test_partitions_attached_while_expand_runs(make_db, tmp_path, monkeypatch):
    zoo = build(partitioned="range")
    dsn = make_db()
    load(dsn, zoo)
    args = ("--dsn", dsn, "--config", write_config(tmp_path, zoo.config))
    cli("plan", *args)
    run = ZooRun(dsn, zoo)
    at = {step: (table, bounds) for table, (bounds, step) in LATE.items()}
    real = killpoint.reached

    def reached(step_id: str, point: str) -> None:  # the test's hook at step boundaries: attach a partition
        hit = at.pop((step_id, point), None)
        if hit is not None:
            _attach(dsn, run, *hit)
        real(step_id, point)

    monkeypatch.setattr(killpoint, "reached", reached)
    old = run.start(OldWriter(run))
    try:
        old.wrote(2)
        cli("run", "align", *args)
        assert run.check("align") == []
        # The first partition is filled by the walk of partitions the plan does not list; the second, attached
        # after it, is named by the gate, which sends that walk back ...
        out = " ".join(cli("run", "expand", *args, expect=2).split())
        assert not at, f"not attached: {at}"
        assert "public.orders: 6 rows have customer_id but no profile_id" in out, out
        assert "orders_2031 (0,1)" in out, out  # the rows named, with the partition they are in
        with psycopg.connect(dsn, autocommit=True) as c:
            assert c.execute("select count(*) from public.orders_2030 where profile_id is null").fetchone()[0] == 0
            assert c.execute("select count(*) from public.orders_2031 where profile_id is null").fetchone()[0] == 6
            # Postgres gave both the sync trigger and the new column's index with their ATTACH.
            assert c.execute("select count(*) from pg_trigger where tgrelid in ('public.orders_2030'::regclass, "
                             "'public.orders_2031'::regclass) and tgname = '!pgconverge_sync'").fetchone()[0] == 2
        # ... and the next run fills it.
        cli("run", "expand", *args)
        new = run.start(NewWriter(run))
        new.wrote(2)
        problems = run.check("expand")
        assert problems == [] and run.failures() == [], "\n".join(problems + run.failures())
        with psycopg.connect(dsn, autocommit=True) as c:
            assert c.execute("select count(*) from pg_index i join pg_class c on c.oid = i.indexrelid where "
                             "i.indrelid = any(array(select relid from pg_partition_tree('public.orders'))) "
                             "and not i.indisvalid").fetchone()[0] == 0
            fks = c.execute("select count(*) from pg_constraint where conname = 'orders_profile_id_fkey' and "
                            "convalidated and conrelid = any(array(select relid from pg_partition_tree("
                            "'public.orders')))").fetchone()[0]
            assert fks == 1 + 2 + 2 + 1 + 2  # the table, 2024 and its halves, old, recent, and the two attached
        cli("run", "switch", *args)
        new.switched.set()
        old.stop()
        problems = run.check("switch")
        assert problems == [] and run.failures() == [], "\n".join(problems + run.failures())
        cli("run", "contract", "--accept-code-references", "--accept-runtime-use", *args)
        new.stop()
        problems = run.check("contract")
        assert problems == [] and run.failures() == [], "\n".join(problems + run.failures())
        cli("rollback", "align", *args)
        # Everything is back, the attached partitions too (with their legacy ids and indexes); they are the
        # test's own, so they go before the schema is compared with the one before the migration.
        with psycopg.connect(dsn, autocommit=True) as c:
            for table in LATE:
                assert c.execute(f"select count(*) from {table} where customer_id is null").fetchone()[0] == 0
                c.execute(f"alter table public.orders detach partition {table}")
                c.execute(f"drop table {table}")
        for key in run.late:
            del run.original[key]
        problems = run.check("rollback")
        assert problems == [], "\n".join(problems)
    finally:
        for w in run.writers:
            w.stop()
    assert run.failures() == [], "\n".join(run.failures())


REFUSED_SQL = """
create table public.ledger (id bigint generated always as identity, customer_id bigint not null
  references public.customers (id)) partition by hash (customer_id);
create table public.ledger_0 partition of public.ledger for values with (modulus 2, remainder 0);
create table public.ledger_1 partition of public.ledger for values with (modulus 2, remainder 1);
create table public.events (id bigint, customer_id bigint, created_at date not null) partition by range (created_at);
create table public.events_2024 partition of public.events for values from ('2024-01-01') to ('2025-01-01');
alter table public.events_2024 add constraint events_2024_customer_fkey foreign key (customer_id)
  references public.customers (id);
create table public.notes (id bigint, customer_id bigint references public.customers (id));
create table public.notes_archive () inherits (public.notes);
create table public.events_log (id bigint, customer_id bigint, at date);  -- a parent with no key of its own
create table public.order_events (kind text) inherits (public.events_log);
alter table public.order_events add foreign key (customer_id) references public.customers (id);
create index orders_old_local on public.orders_old (customer_id, total);
create function public.touch_leaf() returns trigger language plpgsql as $f$ begin return new; end $f$;
create trigger " leaf first" before insert on public.orders_old for each row execute function public.touch_leaf();
alter table public.transfers add column referrer_of_the_buyer_in_the_marketplace_loyalty_program_id bigint
  references public.customers (id);
create table public.usage (customer_id bigint not null references public.customers (id), day date not null,
  primary key (customer_id, day)) partition by range (day);
create table public.usage_2024 partition of public.usage for values from ('2024-01-01') to ('2025-01-01');
"""


def test_partition_shapes_refused_at_plan(make_db, tmp_path):
    """Every reference shape expand cannot carry is named at once by `plan` (and `run`), which changes nothing."""
    from _zoo import snapshot

    zoo = build(partitioned="range", transfers=True,
                new_columns={"public.transfers.buyer_id": "seller_profile_id", "public.nope.customer_id": "x"})
    dsn = make_db()
    load(dsn, zoo)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(REFUSED_SQL)
    args = ("--dsn", dsn, "--config", write_config(tmp_path, zoo.config))
    before = snapshot(dsn)
    for cmd in (("plan",), ("run", "align")):
        out = " ".join(cli(*cmd, *args, expect=2).split())
        assert "Traceback" not in out, out
        for needle in (
                "table public.ledger: is partitioned by HASH (customer_id), which contains the legacy column",
                "foreign key events_2024_customer_fkey on public.events_2024: is declared on that partition alone",
                "the partitioned table public.events", "table public.notes: has inheritance children "
                "(public.notes_archive)", "index public.orders_old_local on the partition public.orders_old",
                'trigger " leaf first" on public.orders_old: a BEFORE row trigger that fires before',
                "ALTER TRIGGER \" leaf first\" ON public.orders_old RENAME TO",
                "references public.transfers.buyer_id and public.transfers.seller_id: would all get the new column "
                "'seller_profile_id'", "migration.new_columns entry 'public.nope.customer_id'",
                "referrer_of_the_buyer_in_the_marketplace_loyalty_program_profile_id' would be longer than 63 bytes",
                "table public.order_events: inherits customer_id from public.events_log (INHERITS): contract could "
                "not drop an inherited column",
                "fix:"):
            assert needle in out, f"{needle!r} not in: {out}"
        # A partitioned table's key containing the legacy column: contract could not put the mirror in its place
        # (no ADD … USING INDEX on a partitioned table), said once.
        assert out.count("primary key usage_pkey") == 1 and "public.usage is partitioned, and Postgres cannot make an index the " \
            "primary key of a partitioned table" in out, out
        assert snapshot(dsn) == before


def test_partitioned_expand_killed_at_every_kind_of_step_resumes(make_db, tmp_path):
    """SIGKILLed after its first change, in a leaf's backfill, in the walk of a partition attached meanwhile and
    inside the partitioned table's foreign key, expand resumes each time and ends with every row linked right."""
    from _killer import Killer, wait_runner_gone

    zoo = build(partitioned="range")
    dsn = make_db()
    load(dsn, zoo)
    args = ["--dsn", dsn, "--config", write_config(tmp_path, zoo.config)]
    run = ZooRun(dsn, zoo)
    cli("run", "align", *args)
    killer = Killer(tmp_path)
    try:
        for kill_at in ("expand.orders.add_column:after", "expand.orders.backfill.orders_recent:batch:1",
                        "expand.orders.backfill_attached:batch:1", "expand.orders.index_1.orders_old:before",
                        "expand.orders.attach_foreign_key:commit", None):
            answer, log = killer.run(["run", "expand", *args], kill_at)
            if kill_at is None:
                assert answer["code"] == 0, log
            else:
                assert answer["signal"] == 9, f"{kill_at}: {answer} {log}"
                wait_runner_gone(dsn)
            if kill_at == "expand.orders.add_column:after":  # the plan is made: this partition is not in it
                _attach(dsn, run, "public.orders_2030", ("2030-01-01", "2031-01-01"))
    finally:
        killer.close()
    problems = run.check("expand")
    assert problems == [], "\n".join(problems)
    cli("rollback", "align", *args)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("alter table public.orders detach partition public.orders_2030")
        c.execute("drop table public.orders_2030")
    for key in run.late:
        del run.original[key]
    problems = run.check("rollback")
    assert problems == [], "\n".join(problems)


def test_writes_to_a_partitioned_dependent_are_application_traffic(make_db, tmp_path):
    """The runtime gate's proof that the application ran reads the statistics of the canonical table and every
    dependent. A partitioned table's own statistics row counts nothing (its rows are in its partitions): the writes
    to its partitions are its traffic, or a window in which the application wrote only there reads as quiet."""
    import time

    from _support import cli_json

    zoo = build(partitioned="hash", legacy_key="uuid", canonical_key="uuid")
    dsn = make_db()
    load(dsn, zoo)
    args = ("--dsn", dsn, "--config", write_config(tmp_path, zoo.config.replace(
        "[migration]", '[migration]\nobservation_window = "2s"', 1)))
    for ph in ("align", "expand", "switch"):
        cli("run", ph, *args)
    cli("audit", "runtime", *args, "--rebaseline")
    time.sleep(2.3)
    with psycopg.connect(dsn, autocommit=True) as c:  # new code writes an order, and only that
        profile = c.execute("select id from public.profiles limit 1").fetchone()[0]
        c.execute("insert into public.orders (profile_id) values (%s)", (profile,))
        c.execute("select pg_stat_force_next_flush()")
    seen = cli_json("audit", "runtime", *args)
    assert seen["traffic"]["public.orders"]["writes"] == 1, seen["traffic"]
    assert seen["not_measured"] == [], seen["not_measured"]
    cli("audit", "runtime", *args, "--fail-on-use")
