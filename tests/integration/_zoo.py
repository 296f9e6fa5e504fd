"""The schema zoo: small schemas of many shapes, each with its own ground truth, migrated under live writers.

`build(**dimensions)` returns a `Zoo`: the SQL that creates one schema (Supabase-like pieces, a legacy and a
canonical table, dependent tables under RLS, the legacy claim helper, and the ground truth in schema
`zoo_truth`), the pgconverge.toml that names it, and what the checks need to know about it.

The ground truth says which *person* every legacy row and every pre-existing canonical row belongs to:

    zoo_truth.legacy_person(legacy_key text primary key, person text)
    zoo_truth.canonical_person(canonical_key text primary key, person text)

Persons come in kinds: a legacy row and a canonical row spelled differently ("both"), two legacy rows and a
canonical row ("merge_both"), two legacy rows and no canonical row ("merge": they must end on one created
row), a legacy row only ("legacy_only": a canonical row must be created), a canonical row only
("canonical_only"), a legacy row whose value is close to another person's canonical value but is not the same
person under the match kind ("trap"), and legacy rows whose match value is unusable (NULL, '', junk).

`ZooRun` drives the checks against a live database; `OldWriter` and `NewWriter` are the application's old and
new code, writing as `authenticated` with real claims while the phases run.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass

import psycopg
from psycopg import sql

from _support import schema_dump

KEY_TYPES = ("bigint", "integer", "uuid", "text")
MATCH_KINDS = ("phone", "email", "exact", "multi")
HELPER_STYLES = ("claims_json", "claim_setting", "auth_jwt", "app_metadata", "wrapper", "wrapper_nested", "lookup")
_NS = uuid.UUID("6f1c2d5e-8a4b-4c3d-9e2f-0a1b2c3d4e5f")
HELPER_OWNER = "zoo_helper_owner"  # the "owned by another role" variant


def _uuid(*parts) -> str:
    return str(uuid.uuid5(_NS, "/".join(map(str, parts))))


def _singular(word: str) -> str:  # as pgconverge names its mapping table and columns
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


def lit(v) -> str:
    """A SQL literal for the values the builder uses (text, date, None)."""
    if v is None:
        return "null"
    if isinstance(v, dt.date):
        return f"'{v.isoformat()}'"  # a date, or its ISO text where the column is text
    return "'" + str(v).replace("'", "''") + "'"


# -- match values ------------------------------------------------------------------------------------------------


def _nsn(i: int) -> str:
    """A Rwandan mobile number's national significant digits, one per person."""
    return "788123456" if i == 0 else f"7881{i:05d}"


def _phone(i: int, spelling: int) -> str:
    d = _nsn(i)
    return ["0" + d,                                   # national, with the trunk prefix
            "+250" + d,                                # E.164
            f"250 {d[:3]} {d[3:6]} {d[6:]}",           # international, no plus, grouped
            "00250" + d,                               # international call prefix
            f"0{d[:3]}-{d[3:6]}-{d[6:]}"][spelling % 5]


def _email(i: int, spelling: int) -> str:
    base = "john@x.org" if i == 0 else f"person{i}@zoo.org"
    local, domain = base.split("@")
    return [" " + local.capitalize() + "@" + domain.capitalize(),  # ' John@X.org'
            base + " ",                                            # 'john@x.org '
            base.upper(),
            base][spelling % 4]


def _code(i: int) -> str:
    return f"ZC-{i:04d}"


def _birth(i: int) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=97 * i)


@dataclass(frozen=True)
class Dependent:
    table: str  # qualified
    pk: str
    fk: str  # the legacy id column
    new: str = ""  # its new column, where it is not the zoo's new_column (a table with several references)


@dataclass
class Zoo:
    """One schema of the zoo: its SQL, its config, and the names the harness needs."""

    sql: str
    config: str
    legacy_table: str
    legacy_key: str  # the key column (its type: legacy_key_type)
    legacy_key_type: str
    canonical_table: str
    canonical_key: str  # the key column (its type: canonical_key_type)
    canonical_key_type: str
    legacy_match_columns: tuple[str, ...]
    canonical_match_columns: tuple[str, ...]
    match: str
    legacy_claim: str
    canonical_claim: str
    legacy_helper: str
    canonical_helper: str
    helper_style: str
    new_column: str
    mapping_table: str  # qualified
    mapping_legacy_column: str
    archive_schema: str
    dependents: tuple[Dependent, ...]
    app_schemas: tuple[str, ...]  # schemas whose objects a rollback must restore
    unusable_keys: tuple[str, ...]  # legacy keys whose match value is unusable
    name_column: str  # copied onto created canonical rows (copy_columns)
    canonical_only: tuple[tuple[str, str, tuple], ...]  # (person, canonical auth user, canonical match values)
    before_contract_sql: str = ""  # what the user must do before contract (a lookup helper's successor)
    # After contract, what must hold on the new column: (label, SQL run in a rolled-back transaction, the SQLSTATE
    # it must fail with, or None when it must succeed).
    probes: tuple[tuple[str, str, str | None], ...] = ()
    # Tables whose owner the database fills when an insert leaves it out (a default or a trigger from the token):
    # the writers leave it out now and then there.
    owner_filled: tuple[str, ...] = ()

    def new_of(self, d: Dependent) -> str:
        """The new column of reference D."""
        return d.new or self.new_column

    def groups(self) -> list[list[Dependent]]:
        """The dependents table by table: a table with several references is one group (a row names each)."""
        out: dict[str, list[Dependent]] = {}
        for d in self.dependents:
            out.setdefault(d.table, []).append(d)
        return list(out.values())

    def new_legacy_values(self, n: int) -> tuple:
        """Match values of the N-th legacy row old code creates during the migration (a new person)."""
        if self.match == "phone":
            return (f"0789{n:06d}",)
        if self.match == "email":
            return (f" New{n}@Zoo.org",)
        if self.match == "exact":
            return (f"NEW-{n:04d}",)
        return (f"Newbie{n}", dt.date(2001, 1, 1) + dt.timedelta(days=n))

    def joining_values(self, canonical_values: tuple) -> tuple:
        """The same person's match values as old code would spell them (for a canonical-only person)."""
        if self.match == "phone":
            digits = canonical_values[0].lstrip("+")[3:]
            return (f"0{digits[:3]} {digits[3:6]} {digits[6:]}",)
        if self.match == "email":
            return (" " + canonical_values[0].strip().upper(),)
        return canonical_values


def build(*, legacy_key: str = "bigint", canonical_key: str = "uuid", match: str = "phone",
          unusable: bool = False, canonical_match_not_null: bool = False, unmatched: str | None = None,
          helper_style: str = "claims_json", helper_language: str = "sql", helper_definer: bool = False,
          helper_schema: str = "public", helper_owner: str | None = None,
          legacy_empty: bool = False, dependent_empty: bool = False, dependents: int = 1,
          legacy_name: str = "customers", canonical_name: str = "profiles", new_column: str | None = None,
          birth_date_type: str = "date", helper_names: tuple[str, str] | None = None,
          name_column: str = "name", persons: int = 15, shapes: tuple[str, ...] = (),
          dependent_schema: str = "public", dependent_owner: str | None = None,
          partitioned: str | None = None, transfers: bool = False, new_columns: dict[str, str] | None = None,
          accept_views: tuple[str, ...] = ()) -> Zoo:
    """One zoo schema; every keyword is a dimension whose default gives a plain working case."""
    assert legacy_key in KEY_TYPES and canonical_key in KEY_TYPES and match in MATCH_KINDS
    assert helper_style in HELPER_STYLES and helper_language in ("sql", "plpgsql") and dependents in (1, 2)
    L, C = f"public.{legacy_name}", f"public.{canonical_name}"
    ls, cs = _singular(legacy_name), _singular(canonical_name)
    lclaim, cclaim = f"{ls}_id", f"{cs}_id"
    fk = f"{ls}_id"
    new_column = new_column or f"{cs}_id"
    lname, cname = helper_names or (f"auth_{ls}_id", f"auth_{cs}_id")
    lhelper, chelper = f"{helper_schema}.{lname}", f"{helper_schema}.{cname}"
    if match == "phone":
        lmatch, cmatch = ("wa_id",), ("whatsapp_e164",)
    elif match == "email":
        lmatch, cmatch = ("email",), ("email",)
    elif match == "exact":
        lmatch, cmatch = ("code",), ("code",)
    else:
        lmatch, cmatch = ("first_name", "birth_date"), ("first_name", "birth_date")

    def canonical_spelling(i: int) -> tuple:
        if match == "phone":
            return (_phone(i, 1),)
        if match == "email":
            return ("john@x.org " if i == 0 else _email(i, 3),)
        if match == "exact":
            return (_code(i),)
        return (f"Name{i}", _birth(i))

    def legacy_spelling(i: int, j: int) -> tuple:
        if match == "phone":
            if i == 0:
                return (["0788123456", "250 788 123 456"][j],)
            return (_phone(i, [0, 2, 3, 4, 1][(i + j) % 5]),)
        if match == "email":
            return ([" John@X.org", "JOHN@X.ORG"][j] if i == 0 else _email(i, (i + j) % 3),)
        return canonical_spelling(i)  # exact and multi: byte for byte

    def trap(i: int, of: int) -> tuple:
        """Close to person OF's canonical value, but another person under this match kind."""
        if match == "phone":
            return ("+254" + _nsn(of),)  # the same digits in Kenya
        if match == "email":
            return (f"person{of}@zoo.org.uk",)
        if match == "exact":
            return (_code(of).lower(),)
        return (f"name{of}", _birth(of))  # the same birth date, the name in another case

    kinds = ["merge_both", "both", "merge", "legacy_only", "canonical_only"]
    people = [(f"p{i:02d}", kinds[i % len(kinds)], i) for i in range(persons)]
    legacy_rows: list[tuple[str, str, tuple, str]] = []  # (key, person, values, auth user)
    canonical_rows: list[tuple[str, str, tuple, str]] = []
    lkey = _key_maker(legacy_key, "legacy")
    ckey = _key_maker(canonical_key, "canonical")
    for person, kind, i in people:
        auths = []
        if not legacy_empty and kind in ("merge_both", "both", "merge", "legacy_only"):
            for j in range(2 if kind.startswith("merge") else 1):
                auths.append(_uuid("auth", person, j))
                legacy_rows.append((lkey(len(legacy_rows) + 1), person, legacy_spelling(i, j), auths[-1]))
        if kind in ("merge_both", "both", "canonical_only"):
            canonical_rows.append((ckey(len(canonical_rows) + 1), person, canonical_spelling(i),
                                   auths[0] if auths else _uuid("auth", person, "canonical")))
    if not legacy_empty:
        target = next(i for p, k, i in people if k in ("both", "canonical_only"))
        legacy_rows.append((lkey(len(legacy_rows) + 1), "trap", trap(0, target), _uuid("auth", "trap")))
    unusable_keys = []
    if unusable and not legacy_empty:
        junk = {"phone": [None, "", "n/a"], "email": [None, "", "n/a"], "exact": [None, ""]}.get(match)
        values = [(v,) for v in junk] if junk else [(None, _birth(90)), ("Anon", None)]
        for n, v in enumerate(values):
            k = lkey(len(legacy_rows) + 1)
            legacy_rows.append((k, f"unusable{n}", v, _uuid("auth", "unusable", n)))
            unusable_keys.append(k)

    deps = [Dependent(f"{dependent_schema}.orders", "id", fk), Dependent("public.carts", "id", fk)][:dependents]
    lk_def = {"bigint": "bigint generated by default as identity (start with 1000) primary key",
              "integer": f"integer primary key default nextval('public.{legacy_name}_key_seq')",
              "uuid": "uuid primary key default gen_random_uuid()",
              "text": "text primary key default gen_random_uuid()::text"}[legacy_key]
    ck_def = {"bigint": "bigint generated by default as identity (start with 300000) primary key",
              "integer": f"integer primary key default nextval('public.{canonical_name}_key_seq')",
              "uuid": "uuid primary key default gen_random_uuid()",
              "text": f"text primary key default 'c' || nextval('public.{canonical_name}_key_seq')"}[canonical_key]
    col_type = {"wa_id": "text", "whatsapp_e164": "text", "email": "text", "code": "text", "first_name": "text",
                "birth_date": birth_date_type}
    nn = " not null" if canonical_match_not_null else ""
    out = [_SUPABASE]
    if helper_owner:
        out.append(_role_sql(helper_owner))
    if dependent_owner:
        out.append(_role_sql(dependent_owner))
    if dependent_schema != "public":
        out.append(f"create schema {dependent_schema};\n"
                   f"grant usage on schema {dependent_schema} to anon, authenticated, service_role;\n")
    if helper_schema != "public":
        out.append(f"create schema {helper_schema};\n"
                   f"grant usage on schema {helper_schema} to anon, authenticated, service_role;\n")
    if legacy_key == "integer":
        out.append(f"create sequence public.{legacy_name}_key_seq as integer start 1000;\n")
    if canonical_key in ("integer", "text"):
        out.append(f"create sequence public.{canonical_name}_key_seq start 300000;\n")
    lcols = ", ".join(f"{c} {col_type[c]}" for c in lmatch)
    ccols = ", ".join(f"{c} {col_type[c]}{nn}" for c in cmatch)
    out.append(f"""
create table {L} (id {lk_def}, {lcols}, {name_column} text, auth_user_id uuid,
  created_at timestamptz not null default now());
create table {C} (id {ck_def}, {ccols}, {name_column} text, auth_user_id uuid,
  created_at timestamptz not null default now(), unique ({', '.join(cmatch)}));
grant select on {L}, {C} to authenticated;
""")
    if legacy_key == "integer":
        out.append(f"alter sequence public.{legacy_name}_key_seq owned by {L}.id;\n")
    if canonical_key in ("integer", "text"):
        out.append(f"alter sequence public.{canonical_name}_key_seq owned by {C}.id;\n")
    # The legacy claim helper.
    out.append(_helper_sql(helper_style, helper_language, helper_definer, lhelper, legacy_key, lclaim, L,
                           helper_schema))
    if helper_owner:
        out.append(f"alter function {lhelper}() owner to {helper_owner};\n")
    out.append(f"grant execute on function {lhelper}() to anon, authenticated, service_role;\n")
    ltype = legacy_key
    for n, d in enumerate(deps):
        if n == 0 and partitioned:
            out.append(_partitioned_orders(partitioned, d.table, fk, ltype, L))
        elif n == 0:
            out.append(f"""
create table {d.table} (id bigint generated by default as identity primary key,
  {fk} {ltype} not null references {L} (id) on delete cascade, total integer not null default 0);
create index orders_{fk}_idx on {d.table} ({fk});
""")
            if dependent_owner:
                out.append(f"alter table {d.table} owner to {dependent_owner};\n")
        else:
            out.append(f"""
create table {d.table} (id uuid primary key default gen_random_uuid(),
  {fk} {ltype} references {L} (id) on delete set null, status text not null default 'open');
create index carts_{fk}_status_idx on {d.table} ({fk}, status);
""")
        pol = d.table.split(".")[1] + "_own"
        out.append(f"""alter table {d.table} enable row level security;
create policy {pol} on {d.table} for all to authenticated
  using ({fk} = {lhelper}()) with check ({fk} = {lhelper}());
grant select, insert, update, delete on {d.table} to authenticated;
""")
    shaped = _shapes(shapes, L=L, C=C, fk=fk, ltype=ltype, lhelper=lhelper, new=new_column, ckey=canonical_key,
                     orders=deps[0].table, chelper=chelper)
    out.append(shaped.schema)
    deps += shaped.dependents
    # Data and truth.
    out.append("create schema zoo_truth;\n"
               "create table zoo_truth.legacy_person (legacy_key text primary key, person text not null);\n"
               "create table zoo_truth.canonical_person (canonical_key text primary key, person text not null);\n")
    cm = ", ".join(cmatch)
    lm = ", ".join(lmatch)
    for k, p, v, a in canonical_rows:
        out.append(f"insert into {C} (id, {cm}, {name_column}, auth_user_id) values "
                   f"({lit(k)}, {', '.join(map(lit, v))}, {lit('canonical ' + p)}, {lit(a)});\n")
        out.append(f"insert into zoo_truth.canonical_person values ({lit(k)}, {lit(p)});\n")
    for n, (k, p, v, a) in enumerate(legacy_rows):
        out.append(f"insert into {L} (id, {lm}, {name_column}, auth_user_id, created_at) values "
                   f"({lit(k)}, {', '.join(map(lit, v))}, {lit('legacy ' + p)}, {lit(a)}, "
                   f"timestamptz '2020-01-01' + interval '{n} hours');\n")
        out.append(f"insert into zoo_truth.legacy_person values ({lit(k)}, {lit(p)});\n")
        for t, d in enumerate(deps):
            if t == 0 and dependent_empty:
                continue
            for _ in range((n + t) % 3):
                out.append(f"insert into {d.table} ({fk}) values ({lit(k)});\n")
        out.append(shaped.rows(n, k, p, merged=sum(q == p for _, q, _, _ in legacy_rows) > 1))
    out.append(shaped.after_data)
    if partitioned == "range" and deps and not dependent_empty:
        # Spread the rows over every partition (an UPDATE of the key moves a row to its partition).
        out.append(f"update {deps[0].table} set created_at = (array[timestamptz '2023-06-01', '2024-03-01', "
                   "'2024-09-01', '2026-01-01'])[1 + id % 4];\n")
    if transfers:
        # Two references from one table, each with its own new column, and a policy reading both.
        out.append(_transfers_sql(fk, ltype, L, lhelper, [k for k, _, _, _ in legacy_rows]))
        if "owner_trigger" in shapes:  # an application BEFORE trigger there too: a last sync trigger per reference
            out.append("create function public.transfer_amount() returns trigger language plpgsql as $f$ begin "
                       "new.amount := greatest(new.amount, 1); return new; end $f$;\n"
                       "create trigger set_amount before insert or update on public.transfers for each row "
                       "execute function public.transfer_amount();\n")
        names = dict(new_columns or {})
        deps += [Dependent("public.transfers", "id", c, names.get(f"public.transfers.{c}", f"{c[:-3]}_{new_column}"))
                 for c in ("buyer_id", "seller_id")]

    config = _config(L=L, C=C, lmatch=lmatch, cmatch=cmatch, match=match, lhelper=lhelper, chelper=chelper,
                     lclaim=lclaim, cclaim=cclaim, new_column=new_column, unmatched=unmatched,
                     name_column=name_column, new_columns=new_columns, accept_views=accept_views)
    before_contract = shaped.before_contract
    if helper_style == "lookup":
        # The README's contract gate: a helper that looks the caller up through the legacy table cannot be
        # rewritten to stand alone; the user writes its successor through the canonical table's own link.
        before_contract = (f"create or replace function {chelper}() returns {canonical_key} language sql stable "
                           f"security definer set search_path = '' as $$ select id from {C} "
                           f"where auth_user_id = auth.uid() limit 1 $$")
    return Zoo(
        sql="".join(out), config=config, legacy_table=L, legacy_key="id", legacy_key_type=legacy_key,
        canonical_table=C, canonical_key="id", canonical_key_type=canonical_key, legacy_match_columns=lmatch,
        canonical_match_columns=cmatch, match=match, legacy_claim=lclaim, canonical_claim=cclaim,
        legacy_helper=lhelper, canonical_helper=chelper, helper_style=helper_style, new_column=new_column,
        mapping_table=f"pgconverge.legacy_{ls}_{cs}", mapping_legacy_column=f"{ls}_id", archive_schema="archive",
        dependents=tuple(deps), app_schemas=tuple(dict.fromkeys(("public", "auth", helper_schema, dependent_schema))),
        unusable_keys=tuple(unusable_keys), name_column=name_column,
        canonical_only=tuple((p, a, v) for k, p, v, a in canonical_rows
                             if p not in {q for _, q, _, _ in legacy_rows}),
        before_contract_sql=before_contract, probes=shaped.probes, owner_filled=shaped.owner_filled)


# -- shapes of dependence on the legacy key (planning/shapes.py) ---------------------------------------------------

SHAPES = ("join_pk", "unique", "check", "partial_unique", "partial_unique_collide", "fk_deferrable",
          "expression_index", "user_trigger", "self_reference", "owner_default", "owner_trigger",
          "owner_trigger_leaf",
          # refused at plan
          "exclusion", "generated", "fk_set_default", "views", "check_value", "trigger_update_of", "trigger_first",
          "pk_referenced", "canonical_refs_legacy", "expression_value")


@dataclass
class _Shaped:
    schema: str = ""
    dependents: list = None
    after_data: str = ""
    probes: tuple = ()
    before_contract: str = ""
    row_sql: list = None  # callables (n, legacy key, person, merged) -> SQL
    owner_filled: tuple = ()  # tables whose owner a default or trigger fills in (Zoo.owner_filled)

    def rows(self, n: int, key: str, person: str, merged: bool) -> str:
        return "".join(f(n, key, person, merged) for f in self.row_sql)


def _rls(table: str, fk: str, helper: str) -> str:
    pol = table.split(".")[1] + "_own"
    return (f"alter table {table} enable row level security;\n"
            f"create policy {pol} on {table} for all to authenticated using ({fk} = {helper}()) "
            f"with check ({fk} = {helper}());\n"
            f"grant select, insert, update, delete on {table} to authenticated;\n")


def _shapes(shapes, *, L, C, fk, ltype, lhelper, new, ckey, orders, chelper="") -> _Shaped:
    """The schema pieces, data, extra dependents and after-contract probes of each shape asked for."""
    assert all(x in SHAPES for x in shapes), shapes
    out = _Shaped(dependents=[], row_sql=[])
    schema, probes, after = [], [], []
    missing = {"bigint": "-1", "integer": "-1", "uuid": "gen_random_uuid()", "text": "'no-such-id'"}[ckey]
    one = f"(select id from {C} order by id limit 1)"

    def constraint_is(table, contype, definition):
        return (f"do $p$ begin if not exists (select 1 from pg_constraint where conrelid = '{table}'::regclass "
                f"and contype = '{contype}' and pg_get_constraintdef(oid) = $d${definition}$d$) then raise exception "
                f"'no constraint {definition} on {table}: %', (select string_agg(pg_get_constraintdef(oid), '; ') "
                f"from pg_constraint where conrelid = '{table}'::regclass); end if; end $p$")

    if "join_pk" in shapes or "pk_referenced" in shapes:
        t = "public.customer_tags"
        schema.append(f"create table {t} ({fk} {ltype} not null references {L} (id) on delete cascade,\n"
                      f"  tag text not null default gen_random_uuid()::text, primary key ({fk}, tag));\n" + _rls(t, fk, lhelper))
        out.dependents.append(Dependent(t, "tag", fk))
        out.row_sql.append(lambda n, k, p, m, t=t: f"insert into {t} ({fk}, tag) values ({lit(k)}, 't{n}');\n")
        probes += [("primary key on the new column", constraint_is(t, "p", f"PRIMARY KEY ({new}, tag)"), None),
                   ("primary key enforced", f"insert into {t} ({new}, tag) values ({one}, 'dup'), ({one}, 'dup')",
                    "23505")]
        if "pk_referenced" in shapes:
            schema.append(f"create table public.tag_notes (id bigint generated by default as identity primary key,\n"
                          f"  {fk} {ltype}, tag text, note text, foreign key ({fk}, tag) references {t});\n")
    if "unique" in shapes:
        t = "public.memberships"
        schema.append(f"create table {t} (id bigint generated by default as identity primary key,\n"
                      f"  {fk} {ltype} references {L} (id) on delete cascade,\n"
                      f"  program text not null default gen_random_uuid()::text, unique ({fk}, program));\n"
                      + _rls(t, fk, lhelper))
        out.dependents.append(Dependent(t, "id", fk))
        out.row_sql.append(lambda n, k, p, m, t=t: f"insert into {t} ({fk}, program) values ({lit(k)}, 'p{n}');\n")
        probes += [("unique constraint on the new column", constraint_is(t, "u", f"UNIQUE ({new}, program)"), None),
                   ("unique enforced", f"insert into {t} ({new}, program) values ({one}, 'dup'), ({one}, 'dup')",
                    "23505")]
    if "check" in shapes or "check_value" in shapes:
        t = "public.guest_carts"
        rule = f"{fk} is not null or guest_token is not null" if "check" in shapes else f"{fk} is not null"
        value = f", constraint guest_carts_positive check ({fk}::text <> '0')" if "check_value" in shapes else ""
        schema.append(f"create table {t} (id bigint generated by default as identity primary key,\n"
                      f"  {fk} {ltype} references {L} (id) on delete set null, guest_token text,\n"
                      f"  constraint guest_carts_owner_check check ({rule}){value});\n" + _rls(t, fk, lhelper))
        out.dependents.append(Dependent(t, "id", fk))
        out.row_sql.append(lambda n, k, p, m, t=t: f"insert into {t} ({fk}) values ({lit(k)});\n")
        probes += [("check mirrored", f"do $p$ begin if not exists (select 1 from pg_constraint where conrelid = "
                                      f"'{t}'::regclass and contype = 'c' and pg_get_constraintdef(oid) like "
                                      f"'%{new} IS NOT NULL%') then raise exception 'no mirrored check'; end if; "
                                      "end $p$", None),
                   ("check enforced", f"insert into {t} (guest_token) values (null)", "23514"),
                   ("a guest row passes", f"insert into {t} (guest_token) values ('g')", None)]
    if "partial_unique" in shapes or "partial_unique_collide" in shapes:
        t = "public.baskets"
        collide = "partial_unique_collide" in shapes
        schema.append(f"create table {t} (id bigint generated by default as identity primary key,\n"
                      f"  {fk} {ltype} references {L} (id) on delete cascade, status text not null default 'closed');\n"
                      f"create unique index baskets_{fk}_open on {t} ({fk}) where status = 'open';\n"
                      + _rls(t, fk, lhelper))
        out.dependents.append(Dependent(t, "id", fk))
        # One open basket per customer; with "collide", merged customers' both rows have one.
        out.row_sql.append(lambda n, k, p, m, t=t: f"insert into {t} ({fk}, status) values ({lit(k)}, "
                                              f"'{'open' if collide or not m else 'closed'}'), ({lit(k)}, 'closed');\n")
        probes += [("one open basket per person",
                    f"insert into {t} ({new}, status) values ({one}, 'open'), ({one}, 'open')", "23505"),
                   ("closed baskets are not limited",
                    f"insert into {t} ({new}, status) values ({one}, 'closed'), ({one}, 'closed')", None)]
    if "fk_deferrable" in shapes:
        name = f"{orders.split('.')[1]}_{fk}_fkey"
        schema.append(f"alter table {orders} drop constraint {name}, add constraint {name} foreign key ({fk}) "
                      f"references {L} (id) on update cascade on delete cascade deferrable initially deferred;\n")
        probes += [("deferrable foreign key mirrored", f"do $p$ begin if not exists (select 1 from pg_constraint "
                    f"where conrelid = '{orders}'::regclass and contype = 'f' and pg_get_constraintdef(oid) like "
                    f"'FOREIGN KEY ({new}) REFERENCES %{C.split('.')[1]}(id) ON UPDATE CASCADE ON DELETE CASCADE DEFERRABLE "
                    f"INITIALLY DEFERRED') then raise exception 'not mirrored: %', (select string_agg("
                    f"pg_get_constraintdef(oid), '; ') from pg_constraint where conrelid = '{orders}'::regclass); "
                    "end if; end $p$", None),
                   ("checked at commit", f"insert into {orders} ({new}) values ({missing}); "
                                         f"delete from {orders} where {new} = {missing}", None),
                   ("still checked", f"insert into {orders} ({new}) values ({missing}); set constraints all immediate",
                    "23503")]
    if "expression_index" in shapes or "expression_value" in shapes:
        schema.append(f"create index orders_owner_text on {orders} (({fk}::text));\n"
                      f"create index orders_big on {orders} ({fk}) where total > 100;\n")
        if "expression_value" in shapes:
            schema.append(f"create index orders_owner_len on {orders} ((length({fk}::text) + {fk}::text::int));\n"
                          if ltype in ("bigint", "integer") else
                          f"create index orders_owner_len on {orders} ((md5({fk}::text)));\n")
        probes += [("expression index mirrored", f"do $p$ begin if not exists (select 1 from pg_indexes where "
                    f"indexdef like '%((({new})::text))%') or not exists (select 1 from pg_indexes where indexdef like "
                    f"'%({new}) WHERE (total > 100)') then raise exception 'not mirrored'; end if; end $p$", None)]
    if "user_trigger" in shapes:
        # Named to fire first among BEFORE triggers under the old sync trigger name (pgconverge_sync): it needs the
        # legacy id of a row new code wrote. It reads whichever owner column the table has, so it keeps working
        # after contract and after a rollback alike.
        schema.append(f"""create function public.require_owner() returns trigger language plpgsql as $f$
begin
  if to_jsonb(new) ? '{fk}' then
    if to_jsonb(new) ->> '{fk}' is null then raise exception 'owner required ({fk})'; end if;
  elsif to_jsonb(new) ->> '{new}' is null then
    raise exception 'owner required ({new})';
  end if;
  return new;
end $f$;
create trigger a_require_owner before insert on {orders} for each row execute function public.require_owner();
""")
        probes += [("the user trigger still runs", f"insert into {orders} ({new}) values (null)", "P0001")]
    if "owner_default" in shapes:
        # The owner from the caller's token by default (as `user_id uuid default auth.uid()`); after contract the
        # new column has the canonical helper's default.
        schema.append(f"alter table {orders} alter column {fk} set default {lhelper}();\n")
        out.owner_filled += (orders,)
        probes += [("the owner's default carried to the new column",
                    f"do $p$ begin if coalesce((select pg_get_expr(d.adbin, d.adrelid) from pg_attrdef d join "
                    f"pg_attribute a on a.attrelid = d.adrelid and a.attnum = d.adnum where d.adrelid = "
                    f"'{orders}'::regclass and a.attname = '{new}'), '') not like '%{chelper.split('.')[1]}()' then "
                    "raise exception 'no default'; "
                    "end if; end $p$", None)]
    if "owner_trigger" in shapes or "owner_trigger_leaf" in shapes:
        # The owner from the caller's token, set by a BEFORE trigger that fires after pgconverge's first sync trigger
        # (as its author would have it: the legacy helper while the legacy column exists, the canonical one after);
        # owner_trigger_leaf: on the partition the writers' rows go to alone (orders partitioned by range).
        on = orders if "owner_trigger" in shapes else f"{orders}_recent"
        schema.append(f"""create function public.owner_from_token() returns trigger language plpgsql as $f$
begin
  if to_jsonb(new) ? '{fk}' then
    if to_jsonb(new) ->> '{fk}' is null then
      new := jsonb_populate_record(new, jsonb_build_object('{fk}', {lhelper}()));
    end if;
  elsif to_jsonb(new) ->> '{new}' is null then
    new := jsonb_populate_record(new, jsonb_build_object('{new}', {chelper}()));
  end if;
  return new;
end $f$;
create trigger set_owner before insert on {on} for each row execute function public.owner_from_token();
""")
        out.owner_filled += (orders,)
    if "self_reference" in shapes:
        schema.append(f"alter table {L} add column referred_by {ltype} references {L} (id) on delete set null;\n")
        after.append(f"update {L} c set referred_by = (select r.id from {L} r where r.id <> c.id order by r.id "
                     f"limit 1) where c.id in (select id from {L} order by id desc limit 5);\n")
    if "exclusion" in shapes:
        schema.append(f"create table public.subscriptions (id bigint generated by default as identity primary key,\n"
                      f"  {fk} {ltype} references {L} (id), exclude using btree ({fk} with =));\n")
    if "generated" in shapes:
        schema.append(f"alter table {orders} add column owner_label text generated always as ('c' || {fk}::text) "
                      "stored;\n")
    if "fk_set_default" in shapes:
        schema.append(f"create table public.reviews (id bigint generated by default as identity primary key,\n"
                      f"  {fk} {ltype} references {L} (id) on delete set default);\n")
    if "views" in shapes:
        schema.append(f"create view public.order_owners as select id, {fk} from {orders};\n"
                      f"create view public.legacy_count as select count(*) as n from {L};\n"
                      f"create materialized view public.legacy_names as select id, wa_id from {L} with no data;\n")
        # Accepted (migration.accept_views): the user's part before contract.
        out.before_contract = ("drop view public.order_owners; drop view public.legacy_count; "
                               "drop materialized view public.legacy_names")
    if "trigger_update_of" in shapes or "trigger_first" in shapes:
        schema.append("create function public.touch() returns trigger language plpgsql as $f$ begin return new; "
                      "end $f$;\n")
        if "trigger_update_of" in shapes:
            schema.append(f"create trigger orders_owner_moved before update of {fk} on {orders} for each row "
                          "execute function public.touch();\n")
        if "trigger_first" in shapes:
            schema.append(f'create trigger " first" before insert on {orders} for each row '
                          "execute function public.touch();\n")
    if "canonical_refs_legacy" in shapes:
        schema.append(f"alter table {C} add column legacy_ref {ltype} references {L} (id);\n")
    out.schema, out.probes, out.after_data = "".join(schema), tuple(probes), "".join(after)
    return out


def _partitioned_orders(kind: str, table: str, fk: str, ltype: str, legacy: str) -> str:
    """orders partitioned by range of created_at (three partitions, the middle one sub-partitioned) or by hash
    of a uuid key (three partitions); its legacy column indexed on the partitioned table."""
    t = table.split(".")[1]
    if kind == "range":
        return f"""
create table {table} (id bigint generated by default as identity, created_at timestamptz not null default now(),
  {fk} {ltype} not null references {legacy} (id) on delete cascade, total integer not null default 0,
  primary key (id, created_at)) partition by range (created_at);
create table {table}_old partition of {table} for values from ('2000-01-01') to ('2024-01-01');
create table {table}_2024 partition of {table} for values from ('2024-01-01') to ('2025-01-01')
  partition by range (created_at);
create table {table}_2024_h1 partition of {table}_2024 for values from ('2024-01-01') to ('2024-07-01');
create table {table}_2024_h2 partition of {table}_2024 for values from ('2024-07-01') to ('2025-01-01');
create table {table}_recent partition of {table} for values from ('2025-01-01') to ('2030-01-01');
create index {t}_{fk}_idx on {table} ({fk}, created_at);
"""
    assert kind == "hash", kind
    return f"""
create table {table} (id uuid not null default gen_random_uuid() primary key,
  {fk} {ltype} not null references {legacy} (id) on delete cascade, total integer not null default 0)
  partition by hash (id);
create table {table}_h0 partition of {table} for values with (modulus 3, remainder 0);
create table {table}_h1 partition of {table} for values with (modulus 3, remainder 1);
create table {table}_h2 partition of {table} for values with (modulus 3, remainder 2);
create index {t}_{fk}_idx on {table} ({fk});
"""


def _transfers_sql(fk: str, ltype: str, legacy: str, helper: str, keys: list[str]) -> str:
    """public.transfers(buyer_id, seller_id): two foreign keys to the legacy key, one index holding both, and a
    policy letting either party see the row; a transfer or two per legacy row, sold by the row before it."""
    rows = "".join(f"insert into public.transfers (buyer_id, seller_id) values ({lit(k)}, {lit(keys[n - 1])});\n"
                   * (1 + n % 2) for n, k in enumerate(keys))
    return f"""
create table public.transfers (id bigint generated by default as identity primary key,
  buyer_id {ltype} not null references {legacy} (id) on delete cascade,
  seller_id {ltype} not null references {legacy} (id) on delete cascade, amount integer not null default 1);
create index transfers_buyer_id_idx on public.transfers (buyer_id);
create index transfers_seller_buyer_idx on public.transfers (seller_id, buyer_id);
alter table public.transfers enable row level security;
create policy transfers_party on public.transfers for all to authenticated
  using (buyer_id = {helper}() or seller_id = {helper}());
grant select, insert, update, delete on public.transfers to authenticated;
{rows}"""


def _key_maker(kind: str, side: str):
    if kind in ("bigint", "integer"):
        base = 100 if side == "legacy" else 20000
        return lambda n: str(base + n)
    if kind == "uuid":
        return lambda n: _uuid(side, n)
    return (lambda n: f"cust-{n:03d}") if side == "legacy" else (lambda n: f"c{n:03d}")


_SUPABASE = """
do $roles$
declare r text;
begin
  foreach r in array array['anon', 'authenticated', 'service_role'] loop
    if not exists (select from pg_catalog.pg_roles where rolname = r) then
      begin
        -- as Supabase has them (and the fixture makes them): service_role bypasses row level security
        execute format('create role %I nologin noinherit', r) || case r when 'service_role' then ' bypassrls' else '' end;
      exception when duplicate_object or unique_violation then null;  -- a concurrent loader made it first
      end;
    end if;
  end loop;
end
$roles$;
create schema if not exists auth;
do $auth$
begin
  if to_regprocedure('auth.jwt()') is null then
    create function auth.jwt() returns jsonb language sql stable as
      $f$ select nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb $f$;
  end if;
  if to_regprocedure('auth.uid()') is null then
    create function auth.uid() returns uuid language sql stable as
      $f$ select nullif(nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub',
                        '')::uuid $f$;
  end if;
end
$auth$;
grant usage on schema public to anon, authenticated, service_role;
grant usage on schema auth to anon, authenticated, service_role;
grant execute on function auth.jwt(), auth.uid() to anon, authenticated, service_role;
"""


def _role_sql(role: str) -> str:
    return f"""
do $r$
begin
  if not exists (select from pg_catalog.pg_roles where rolname = '{role}') then
    begin
      create role {role} nologin;
    exception when duplicate_object or unique_violation then null;
    end;
  end if;
end
$r$;
"""


def _helper_sql(style: str, language: str, definer: bool, name: str, key_type: str, claim: str, legacy: str,
                schema: str) -> str:
    pre = ""
    if style == "claims_json":
        expr = f"nullif(current_setting('request.jwt.claims', true)::jsonb ->> '{claim}', '')::{key_type}"
    elif style == "claim_setting":
        expr = f"nullif(current_setting('request.jwt.claim.{claim}', true), '')::{key_type}"
    elif style == "auth_jwt":
        expr = f"nullif(auth.jwt() ->> '{claim}', '')::{key_type}"
    elif style == "app_metadata":  # a custom claim where Supabase's auth hooks put them
        expr = f"nullif(auth.jwt() -> 'app_metadata' ->> '{claim}', '')::{key_type}"
    elif style == "wrapper":
        pre = (f"create function {schema}.jwt_claim(name text) returns text language sql stable as\n"
               f"  $f$ select nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> name $f$;\n"
               f"grant execute on function {schema}.jwt_claim(text) to anon, authenticated, service_role;\n")
        expr = f"nullif({schema}.jwt_claim('{claim}'), '')::{key_type}"
    elif style == "wrapper_nested":  # the helper calls another argument-less helper, which reads the claim
        inner = f"{schema}.current_{claim}"
        pre = (f"create function {inner}() returns {key_type} language sql stable as\n"
               f"  $f$ select nullif(current_setting('request.jwt.claims', true)::jsonb ->> '{claim}', "
               f"'')::{key_type} $f$;\n"
               f"grant execute on function {inner}() to anon, authenticated, service_role;\n")
        expr = f"{inner}()"
    else:
        expr = f"(select l.id from {legacy} l where l.auth_user_id = auth.uid())"
    options = "stable" + (" security definer set search_path = ''" if definer else "")
    if language == "plpgsql":
        body = f"begin\n  return {expr};\nend"
    else:
        body = expr[1:-1] if style == "lookup" else f"select {expr}"
    return pre + f"create function {name}() returns {key_type} language {language} {options} as\n$f$\n{body}\n$f$;\n"


def _config(*, L, C, lmatch, cmatch, match, lhelper, chelper, lclaim, cclaim, new_column, unmatched,
            name_column, accept_views=(), new_columns=None) -> str:
    def col(cols):
        return json.dumps(cols[0]) if len(cols) == 1 else json.dumps(list(cols))

    lines = ["[legacy]", f'table = "{L}"', 'key = "id"', f"match_column = {col(lmatch)}"]
    if match == "multi":
        lines.append('match = "exact"')
    elif match != "phone":  # phone is the default
        lines.append(f'match = "{match}"')
    lines += [f'helper = "{lhelper}"', f'claim = "{lclaim}"', "", "[canonical]", f'table = "{C}"', 'key = "id"',
              f"match_column = {col(cmatch)}", f'helper = "{chelper}"', f'claim = "{cclaim}"',
              f'copy_columns = ["{name_column}", "auth_user_id"]', "", "[migration]", f'new_column = "{new_column}"',
              "batch_size = 7", "batch_pause_ms = 20", "rls_sample = 0", "token_claims = {}"]
    if unmatched:
        lines.append(f'unmatched = "{unmatched}"')
    if accept_views:
        lines.append(f"accept_views = {json.dumps(list(accept_views))}")
    if new_columns:
        lines.append("new_columns = { " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}"
                                                    for k, v in new_columns.items()) + " }")
    return "\n".join(lines) + "\n"


def load(dsn: str, zoo: Zoo) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(zoo.sql)


# -- tokens ------------------------------------------------------------------------------------------------------


def set_token(conn: psycopg.Connection, zoo: Zoo, claims: dict) -> None:
    """Act, for the rest of the current transaction, as `authenticated` with CLAIMS (JSON and per-claim)."""
    payload = {"role": "authenticated", **claims}
    if zoo.helper_style == "app_metadata":  # the identity claims inside app_metadata, as the helpers read them
        payload["app_metadata"] = {k: payload.pop(k) for k in (zoo.legacy_claim, zoo.canonical_claim) if k in payload}
    names = ("role", "sub", zoo.legacy_claim, zoo.canonical_claim)
    keys = ["request.jwt.claims", *(f"request.jwt.claim.{n}" for n in names), "role"]
    values = [json.dumps(payload), *(str(payload.get(n, "")) for n in names), "authenticated"]
    conn.execute("select pg_catalog.set_config(n, v, true) from unnest(%s::text[], %s::text[]) t(n, v)",
                 (keys, values))


# -- writers -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    table: str
    key: str  # the row's primary key as text
    person: str
    legacy: str | None  # the legacy id written (old code), else None
    code: str  # "old" or "new"
    fk: str = ""  # the reference this is about, on a table with several ("" = the table's only one)


class _Writer(threading.Thread):
    """One application client: one short autocommit transaction per write, paused while checks run."""

    PAUSE_S = 0.02
    MAX_WRITES = 4000
    MAX_S = 300.0

    def __init__(self, run: "ZooRun", code: str):
        super().__init__(daemon=True, name=f"zoo-{code}-writer")
        self.run_, self.zoo, self.code = run, run.zoo, code
        self.lock = threading.Lock()  # held during each write; a check holds it to see a still database
        self.stopping = threading.Event()
        self.written: list[Write] = []
        self.failures: list[str] = []
        self.attempts = 0

    def run(self) -> None:
        deadline = time.monotonic() + self.MAX_S
        with psycopg.connect(self.run_.dsn, autocommit=True, application_name=f"zoo-{self.code}") as app, \
                psycopg.connect(self.run_.dsn, autocommit=True, application_name=f"zoo-{self.code}-owner") as own:
            while not self.stopping.is_set() and self.attempts < self.MAX_WRITES and time.monotonic() < deadline:
                with self.lock:
                    self.attempts += 1
                    try:
                        self.write(app, own, self.attempts)
                    except Exception as exc:  # every write must succeed: record what failed and go on
                        if len(self.failures) < 20:
                            self.failures.append(f"{self.code} write {self.attempts}: {type(exc).__name__}: {exc}")
                self.stopping.wait(self.PAUSE_S)

    def wrote(self, n: int = 1, timeout: float = 30.0) -> None:
        """Wait until N writes were made (so the next phase starts with this writer at work)."""
        end = time.monotonic() + timeout
        while len(self.written) < n and time.monotonic() < end and self.is_alive():
            time.sleep(0.01)
        assert len(self.written) >= n, f"{self.code} writer made {len(self.written)} writes: {self.failures}"

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=60)

    def insert(self, app, table: str, column: str, value: str, value_type: str, claims: dict) -> str:
        return self.insert_row(app, table, [(column, value, value_type)], claims)

    def insert_row(self, app, table: str, values: list[tuple[str, str, str]], claims: dict) -> str:
        """Insert one row of (column, value, type) into TABLE as the caller CLAIMS names; its key."""
        dep = next(d for d in self.zoo.dependents if d.table == table)
        with app.transaction():
            set_token(app, self.zoo, claims)
            q = sql.SQL("insert into {t} ({c}) values ({v}) returning {k}::text").format(
                t=sql.SQL(table), c=sql.SQL(", ").join(sql.Identifier(c) for c, _, _ in values),
                v=sql.SQL(", ").join(sql.SQL("{}::{}").format(sql.Placeholder(), sql.SQL(ty)) for _, _, ty in values),
                k=sql.Identifier(dep.pk)) if values else sql.SQL("insert into {t} default values returning {k}::text"
                                                                 ).format(t=sql.SQL(table), k=sql.Identifier(dep.pk))
            return app.execute(q, [v for _, v, _ in values]).fetchone()[0]

    def save_unchanged(self, app, table: str, columns: list[str], key: str, claims: dict) -> None:
        """Write row KEY back as an ORM saving a whole object does: its id columns set to what they hold."""
        dep = next(d for d in self.zoo.dependents if d.table == table)
        with app.transaction():
            set_token(app, self.zoo, claims)
            cur = app.execute(sql.SQL("update {t} set {s} where {k}::text = %s").format(
                t=sql.SQL(table), k=sql.Identifier(dep.pk),
                s=sql.SQL(", ").join(sql.SQL("{c} = {c}").format(c=sql.Identifier(c)) for c in columns)), (key,))
            assert cur.rowcount == 1, f"the caller's own row {table} {key} was not saved back ({cur.rowcount} rows)"

    def write_group(self, app, i: int, parties: list[tuple[str, str, str | None]], value_type: str,
                    claims: dict, new: bool) -> None:
        """One row into the I-th table group: the caller's id in its first reference, the next party's in any
        other (a transfer the caller buys from someone); PARTIES are (person, id, legacy id or None)."""
        groups = self.zoo.groups()
        group = groups[i % len(groups)]
        who = [parties[0]] + [parties[1]] * (len(group) - 1)
        columns = [self.zoo.new_of(d) if new else d.fk for d in group]
        values = [(c, v, value_type) for c, (_, v, _) in zip(columns, who)]
        if group[0].table in self.zoo.owner_filled and i % 3 == 0:
            values = []  # the database fills the caller's id in (a default or a trigger reading the token)
        rid = self.insert_row(app, group[0].table, values, claims)
        if i % 2 == 0:
            self.save_unchanged(app, group[0].table, columns, rid, claims)
        for d, (person, _, legacy) in zip(group, who):
            self.written.append(Write(d.table, rid, person, legacy, self.code, d.fk if len(group) > 1 else ""))


class OldWriter(_Writer):
    """Old code: a token with the legacy claim only; writes only the legacy column; now and then a new legacy
    row, as the table owner (the first one for a person who so far had only a canonical row)."""

    NEW_ROW_EVERY = 12

    def __init__(self, run: "ZooRun"):
        super().__init__(run, "old")
        legacy = run.truth_legacy()
        auth = run.legacy_auth()
        # A few legacy rows of several kinds of person, merged persons' second rows among them.
        by_person: dict[str, list[str]] = defaultdict(list)
        for k, p in sorted(legacy.items()):
            by_person[p].append(k)
        self.rows: list[tuple[str, str, str]] = []  # (legacy key, person, auth user)
        for p, ks in list(by_person.items())[:8]:
            k = ks[-1]
            self.rows.append((k, p, auth[k]))
        self.joins = list(run.zoo.canonical_only[:1])
        self.created = 0

    def write(self, app, own, i: int) -> None:
        zoo = self.zoo
        if not self.rows or i % self.NEW_ROW_EVERY == 1:
            self.created += 1
            if self.joins:
                person, auth, values = self.joins.pop(0)
                values = zoo.joining_values(values)
            else:
                person, auth, values = f"new{self.created}", str(uuid.uuid4()), zoo.new_legacy_values(self.created)
            values = tuple(v.isoformat() if isinstance(v, dt.date) else v for v in values)  # date or text column
            cols = [*zoo.legacy_match_columns, zoo.name_column, "auth_user_id"]
            with own.transaction():
                key = own.execute(sql.SQL("insert into {t} ({c}) values ({v}) returning id::text").format(
                    t=sql.SQL(zoo.legacy_table), c=sql.SQL(", ").join(map(sql.Identifier, cols)),
                    v=sql.SQL(", ").join(sql.Placeholder() * len(cols))),
                    (*values, f"created by old code for {person}", auth)).fetchone()[0]
                own.execute("insert into zoo_truth.legacy_person values (%s, %s)", (key, person))
            self.rows.append((key, person, auth))
            return
        key, person, auth = self.rows[i % len(self.rows)]
        peer_key, peer, _ = self.rows[(i + 1) % len(self.rows)]
        self.write_group(app, i, [(person, key, key), (peer, peer_key, peer_key)], zoo.legacy_key_type,
                         {"sub": auth, zoo.legacy_claim: key}, new=False)


class NewWriter(_Writer):
    """New code (deployed once expand is done): writes only the new column, for the canonical row it learns
    from the mapping; its token carries both claims until the switch is done, the canonical claim after."""

    def __init__(self, run: "ZooRun"):
        super().__init__(run, "new")
        self.switched = threading.Event()
        zoo = run.zoo
        legacy = run.truth_legacy()
        auth = run.legacy_auth()
        with psycopg.connect(run.dsn, autocommit=True) as c:
            mapping = dict(c.execute(sql.SQL("select {l}::text, {n}::text from {m}").format(
                l=sql.Identifier(zoo.mapping_legacy_column), n=sql.Identifier(zoo.new_column),
                m=sql.SQL(zoo.mapping_table))).fetchall())
            canon_auth = dict(c.execute(sql.SQL("select id::text, auth_user_id::text from {}").format(
                sql.SQL(zoo.canonical_table))).fetchall())
        by_person: dict[str, list[str]] = defaultdict(list)
        for k, p in sorted(legacy.items()):
            by_person[p].append(k)
        # Merged persons first: their writes need the caller's own legacy row back while old code still reads.
        order = sorted(by_person, key=lambda p: (-len(by_person[p]), p))[:8]
        self.rows = []  # (person, legacy key, canonical key, sub before the switch, sub after)
        for p in order:
            ks = by_person[p]
            ck = mapping[ks[0]]
            after = canon_auth[ck]
            if zoo.helper_style == "lookup":  # the legacy row the canonical row's auth user is
                k = next((k for k in ks if auth[k] == after), ks[-1])
            else:
                k = ks[-1]
            self.rows.append((p, k, ck, auth[k], after))

    def write(self, app, own, i: int) -> None:
        zoo = self.zoo
        person, lk, ck, sub_before, sub_after = self.rows[i % len(self.rows)]
        peer, _, peer_ck, _, _ = self.rows[(i + 1) % len(self.rows)]
        if self.switched.is_set():
            claims = {"sub": sub_after, zoo.canonical_claim: ck}
        else:
            claims = {"sub": sub_before, zoo.legacy_claim: lk, zoo.canonical_claim: ck}
        self.write_group(app, i // len(self.rows), [(person, ck, None), (peer, peer_ck, None)],
                         zoo.canonical_key_type, claims, new=True)


# -- the checks ------------------------------------------------------------------------------------------------


class ZooRun:
    """A zoo schema in a live database: its truth, its original rows, its writers, and the checks."""

    def __init__(self, dsn: str, zoo: Zoo):
        self.dsn, self.zoo = dsn, zoo
        self.writers: list[_Writer] = []
        with psycopg.connect(dsn, autocommit=True) as c:
            self.original: dict[tuple[str, str, str], str] = {}  # (table, legacy column, row key) -> legacy id
            for d in zoo.dependents:
                for rid, lk in c.execute(sql.SQL("select {k}::text, {f}::text from {t}").format(
                        k=sql.Identifier(d.pk), f=sql.Identifier(d.fk), t=sql.SQL(d.table))):
                    self.original[(d.table, d.fk, rid)] = lk
            self.schema_before = schema_dump(c, zoo.app_schemas)

    # truth -----------------------------------------------------------------------------------------------------

    def truth_legacy(self) -> dict[str, str]:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            return dict(c.execute("select legacy_key, person from zoo_truth.legacy_person").fetchall())

    def truth_canonical(self, c) -> dict[str, str]:
        return dict(c.execute("select canonical_key, person from zoo_truth.canonical_person").fetchall())

    def legacy_auth(self) -> dict[str, str]:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            return dict(c.execute(sql.SQL("select id::text, auth_user_id::text from {}").format(
                sql.SQL(self.zoo.legacy_table))).fetchall())

    # writers ---------------------------------------------------------------------------------------------------

    def start(self, writer: _Writer) -> _Writer:
        self.writers.append(writer)
        writer.start()
        return writer

    def written(self) -> list[Write]:
        return [w for wr in self.writers for w in wr.written]

    def failures(self) -> list[str]:
        return [f for wr in self.writers for f in wr.failures]

    def probe(self) -> list[str]:
        """Every probe (see Zoo.probes) that did not end as expected; each runs in a transaction rolled back."""
        problems = []
        with psycopg.connect(self.dsn) as c:
            for label, q, state in self.zoo.probes:
                got, msg = None, ""
                try:
                    with c.transaction(force_rollback=True):
                        c.execute(q)
                except psycopg.Error as exc:
                    got, msg = exc.sqlstate, str(exc).strip()
                if got != state:
                    problems.append(f"probe {label!r}: expected {state or 'success'}, got {got or 'success'} {msg}")
        return problems

    # helpers ---------------------------------------------------------------------------------------------------

    @staticmethod
    def _columns(c, table: str) -> set[str]:
        schema, name = table.split(".")
        return {r[0] for r in c.execute("select column_name from information_schema.columns "
                                        "where table_schema = %s and table_name = %s", (schema, name))}

    def _archived(self, c, prefix: str) -> str | None:
        row = c.execute("select format('%%I.%%I', n.nspname, c.relname) from pg_class c "
                        "join pg_namespace n on n.oid = c.relnamespace where n.nspname = %s and c.relkind = 'r' "
                        "and c.relname like %s order by c.relname desc limit 1",
                        (self.zoo.archive_schema, prefix.replace("_", r"\_") + r"\_%")).fetchone()
        return row[0] if row else None

    def _mapping(self, c, where: str) -> dict[str, str] | None:
        zoo = self.zoo
        if where == "live":
            table = zoo.mapping_table if c.execute("select to_regclass(%s)", (zoo.mapping_table,)).fetchone()[0] \
                else None
        else:
            table = self._archived(c, zoo.mapping_table.split(".")[1])
        if table is None:
            return None
        return dict(c.execute(sql.SQL("select {l}::text, {n}::text from {m}").format(
            l=sql.Identifier(zoo.mapping_legacy_column), n=sql.Identifier(zoo.new_column), m=sql.SQL(table))))

    # the check after each phase --------------------------------------------------------------------------------

    def check(self, phase: str) -> list[str]:
        """Every problem after PHASE (align, expand, switch, contract, rollback); writers paused meanwhile."""
        with ExitStack() as stack:
            for w in self.writers:
                if w.is_alive():
                    stack.enter_context(w.lock)
            with psycopg.connect(self.dsn, autocommit=True) as c:
                return self._check(c, phase)

    def _check(self, c, phase: str) -> list[str]:
        zoo = self.zoo
        problems: list[str] = []
        legacy_cols = phase in ("align", "expand", "switch", "rollback")
        new_cols = phase in ("expand", "switch", "contract")
        canonical_policies = phase in ("switch", "contract")
        old_tokens, new_tokens = phase != "contract", phase in ("switch", "contract")

        # The schema each phase leaves.
        for d in zoo.dependents:
            cols = self._columns(c, d.table)
            if (d.fk in cols) != legacy_cols:
                problems.append(f"{phase}: {d.table}.{d.fk} {'missing' if legacy_cols else 'still there'}")
            if (zoo.new_of(d) in cols) != new_cols:
                problems.append(f"{phase}: {d.table}.{zoo.new_of(d)} {'missing' if new_cols else 'still there'}")
        if problems:
            return problems

        truth_l = dict(c.execute("select legacy_key, person from zoo_truth.legacy_person").fetchall())
        truth_c = self.truth_canonical(c)
        legacy_table = zoo.legacy_table if phase != "contract" else self._archived(c, zoo.legacy_table.split(".")[1])
        if legacy_table is None:
            return [f"{phase}: the legacy table {zoo.legacy_table} is neither in place nor archived"]
        legacy_auth = dict(c.execute(sql.SQL("select id::text, auth_user_id::text from {}").format(
            sql.SQL(legacy_table))).fetchall())
        canon_auth = dict(c.execute(sql.SQL("select id::text, auth_user_id::text from {}").format(
            sql.SQL(zoo.canonical_table))).fetchall())
        if set(legacy_auth) != set(truth_l):
            problems.append(f"{phase}: legacy rows not in the truth {sorted(set(legacy_auth) - set(truth_l))}, "
                            f"missing {sorted(set(truth_l) - set(legacy_auth))}")

        # (a) the mapping against the truth.
        canonical_of: dict[str, str] = {}  # person -> canonical key
        if phase == "rollback":
            if self._mapping(c, "live") is not None:
                problems.append("rollback: the mapping table is still there")
            if set(canon_auth) != set(truth_c):
                problems.append(f"rollback: canonical rows align created are still there: "
                                f"{sorted(set(canon_auth) - set(truth_c))}; "
                                f"missing {sorted(set(truth_c) - set(canon_auth))}")
        else:
            mapping = self._mapping(c, "archived" if phase == "contract" else "live")
            if mapping is None:
                return problems + [f"{phase}: no mapping table"]
            problems += mapping_problems(phase, mapping, truth_l, truth_c, set(canon_auth))
            for lk, p in truth_l.items():
                if lk in mapping:
                    canonical_of.setdefault(p, mapping[lk])
        for ck, p in truth_c.items():
            canonical_of.setdefault(p, ck)
        person_of_canonical = {ck: p for p, ck in canonical_of.items()}

        # (b) every dependent row, original or written, owned by the right person.
        written = self.written()
        rows: dict[tuple[str, str], dict[str, tuple]] = {}  # (table, legacy column) -> key -> (legacy, new)
        for d in zoo.dependents:
            cols = [sql.Identifier(d.pk)]
            cols += [sql.SQL("{}::text").format(sql.Identifier(d.fk)) if legacy_cols else sql.SQL("null")]
            cols += [sql.SQL("{}::text").format(sql.Identifier(zoo.new_of(d))) if new_cols else sql.SQL("null")]
            got = {str(r[0]): (r[1], r[2]) for r in c.execute(sql.SQL("select {} from {}").format(
                sql.SQL(", ").join(cols), sql.SQL(d.table)))}
            rows[(d.table, d.fk)] = got
            expected: dict[str, tuple[str, str | None, str]] = {}  # key -> (person, exact legacy id, what)
            for (t, f, rid), lk in self.original.items():
                if (t, f) == (d.table, d.fk):
                    expected[rid] = (truth_l[lk], lk, "original")
            for w in written:
                if w.table == d.table and (w.fk or d.fk) == d.fk:
                    expected[w.key] = (w.person, w.legacy, f"{w.code}-code write")
            if len(got) != len(expected):
                problems.append(f"{phase}: {d.table} has {len(got)} rows, expected {len(expected)} "
                                f"(lost {sorted(set(expected) - set(got))[:5]}, "
                                f"unknown {sorted(set(got) - set(expected))[:5]})")
            wrong = []
            for rid, (person, exact_legacy, what) in expected.items():
                if rid not in got:
                    continue
                lk, ck = got[rid]
                if legacy_cols:
                    if exact_legacy is not None and lk != exact_legacy:
                        wrong.append(f"{what} {rid}: {d.fk} = {lk}, expected {exact_legacy} ({person})")
                    elif truth_l.get(lk) != person:
                        wrong.append(f"{what} {rid}: {d.fk} = {lk} (person {truth_l.get(lk)}), expected a row "
                                     f"of {person}")
                if new_cols and ck != canonical_of.get(person):
                    wrong.append(f"{what} {rid}: {zoo.new_of(d)} = {ck} (person {person_of_canonical.get(ck)}), "
                                 f"expected {canonical_of.get(person)} ({person})")
            if wrong:
                problems.append(f"{phase}: {d.table}: {len(wrong)} rows owned wrongly: {wrong[:6]}")

        # (c) RLS: what each token sees.
        tokens: list[tuple[str, dict, str]] = []  # (label, claims, what it must see: 'L:<key>' or 'P:<person>')
        if old_tokens:
            for lk, p in sorted(truth_l.items()):
                claims = {"sub": legacy_auth.get(lk), zoo.legacy_claim: lk}
                tokens.append((f"old token of {lk} ({p})", claims, f"P:{p}" if canonical_policies else f"L:{lk}"))
        if new_tokens:
            for ck in sorted(canon_auth):
                p = person_of_canonical.get(ck)
                claims = {"sub": canon_auth[ck], zoo.canonical_claim: ck}
                tokens.append((f"new token of {ck} ({p})", claims, f"P:{p}"))
        # A row of a table with several references is visible to each person any of them names.
        person_rows: dict[str, dict[str, set]] = {d.table: defaultdict(set) for d in zoo.dependents}
        legacy_rows: dict[str, dict[str, set]] = {d.table: defaultdict(set) for d in zoo.dependents}
        for d in zoo.dependents:
            for (t, f, rid), lk in self.original.items():
                if (t, f) == (d.table, d.fk):
                    person_rows[t][truth_l[lk]].add(rid)
            for w in written:
                if w.table == d.table and (w.fk or d.fk) == d.fk:
                    person_rows[w.table][w.person].add(w.key)
            for rid, (lk, _) in rows[(d.table, d.fk)].items():
                legacy_rows[d.table][lk].add(rid)
        rls = []
        for label, claims, want in tokens:
            with c.transaction():
                set_token(c, zoo, claims)
                for d in (g[0] for g in zoo.groups()):
                    seen = [r[0] for r in c.execute(sql.SQL("select {}::text from {}").format(
                        sql.Identifier(d.pk), sql.SQL(d.table)))]
                    kind, who = want.split(":", 1)
                    expect = (person_rows if kind == "P" else legacy_rows)[d.table].get(who, set())
                    if len(seen) != len(expect) or set(seen) != expect:
                        rls.append(f"{label} sees {len(seen)} rows of {d.table}, expected {len(expect)} "
                                   f"(extra {sorted(set(seen) - expect)[:3]}, "
                                   f"missing {sorted(expect - set(seen))[:3]})")
        if rls:
            problems.append(f"{phase}: RLS: {len(rls)} tokens see the wrong rows: {rls[:6]}")

        if phase == "rollback":
            after = schema_dump(c, zoo.app_schemas)
            if after != self.schema_before:
                gone = sorted(set(self.schema_before) - set(after))
                new = sorted(set(after) - set(self.schema_before))
                problems.append(f"rollback: the schema is not back: missing {gone[:8]}, extra {new[:8]}")
        return problems


def mapping_problems(phase: str, mapping: dict[str, str], truth_l: dict[str, str], truth_c: dict[str, str],
                     canonical_keys: set[str]) -> list[str]:
    """Every way MAPPING (legacy key -> canonical key) disagrees with the truth."""
    out = []
    unmapped = sorted(set(truth_l) - set(mapping))
    if unmapped:
        out.append(f"{phase}: legacy rows without a mapping: {unmapped[:8]}")
    extra = sorted(set(mapping) - set(truth_l))
    if extra:
        out.append(f"{phase}: mapping rows for unknown legacy rows: {extra[:8]}")
    truth_canon_of: dict[str, set] = defaultdict(set)
    for ck, p in truth_c.items():
        truth_canon_of[p].add(ck)
    got_of: dict[str, set] = defaultdict(set)
    persons_of: dict[str, set] = defaultdict(set)
    for lk, p in truth_l.items():
        if lk not in mapping:
            continue
        ck = mapping[lk]
        got_of[p].add(ck)
        persons_of[ck].add(p)
        if ck not in canonical_keys:
            out.append(f"{phase}: legacy {lk} ({p}) maps to {ck}, which is not a canonical row")
        if truth_canon_of[p] and ck not in truth_canon_of[p]:
            out.append(f"{phase}: legacy {lk} ({p}) maps to {ck} ({truth_c.get(ck, 'created')}), expected "
                       f"{sorted(truth_canon_of[p])}")
        elif not truth_canon_of[p] and ck in truth_c:
            out.append(f"{phase}: legacy {lk} ({p}) maps to {ck}, the canonical row of {truth_c[ck]}; expected a "
                       "created row")
    for p, cks in got_of.items():
        if len(cks) > 1:
            out.append(f"{phase}: person {p} split over canonical rows {sorted(cks)}")
    for ck, ps in persons_of.items():
        if len(ps) > 1:
            out.append(f"{phase}: canonical row {ck} shared by persons {sorted(ps)}")
    stray = canonical_keys - set(truth_c) - set(mapping.values())
    if stray:
        out.append(f"{phase}: canonical rows neither in the truth nor mapped: {sorted(stray)[:8]}")
    return out


# -- refused cases -------------------------------------------------------------------------------------------------


def snapshot(dsn: str, skip: tuple[str, ...] = ()) -> dict:
    """Schema (every non-system schema but SKIP) and every row of every table: what a refused command must not
    change."""
    with psycopg.connect(dsn, autocommit=True) as c:
        schemas = tuple(r[0] for r in c.execute("select nspname from pg_namespace where nspname !~ '^pg_' "
                                                "and nspname <> 'information_schema' and nspname <> all(%s) "
                                                "order by 1", (list(skip),)))
        rows = {}
        for s, t in c.execute("select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = "
                              "c.relnamespace where c.relkind = 'r' and n.nspname = any(%s) order by 1, 2",
                              (list(schemas),)).fetchall():
            rows[f"{s}.{t}"] = sorted(r[0] for r in c.execute(sql.SQL("select x::text from {} x").format(
                sql.Identifier(s, t))))
        return {"schemas": schemas, "schema": schema_dump(c, schemas), "rows": rows}
