"""`audit code` on real source files: the bundled sample's planted references, and focused cases."""

from __future__ import annotations

import re
from pathlib import Path

import pglast
import pytest

from pgconverge.audit import CATEGORIES, Finding, audit_code, sample_code_dir, scan
from pgconverge.config import Spec, from_dict

SAMPLE = sample_code_dir()
SOURCE_SUFFIXES = {".ts", ".tsx", ".js", ".py", ".sql"}
MARKER = re.compile(r"expect:\s*(.*?)\s*(?:\*/\s*\}?)?\s*$")


def planted(root: Path = SAMPLE) -> tuple[set[tuple[str, int, str, str]], set[tuple[str, int]]]:
    """(path, line, category, name) of every `expect:` marker, and (path, line) of every decoy line."""
    expected, decoys = set(), set()
    for p in sorted(root.rglob("*")):
        if p.suffix not in SOURCE_SUFFIXES:
            continue
        rel = p.relative_to(root).as_posix()
        for number, line in enumerate(p.read_text().splitlines(), 1):
            m = MARKER.search(line)
            if m:
                for part in m.group(1).split(","):
                    category, name = part.split()
                    expected.add((rel, number, category, name))
            if "decoy" in line:
                decoys.add((rel, number))
    return expected, decoys


@pytest.fixture(scope="module")
def sample_findings() -> list[Finding]:
    return audit_code(SAMPLE, Spec())


def keyed(findings: list[Finding]) -> set[tuple[str, int, str, str]]:
    return {(f.path, f.line, f.category, f.name) for f in findings}


def write(root: Path, rel: str, text: str) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


# --- the bundled sample -------------------------------------------------------------------------

def test_sample_findings_are_exactly_the_planted_references(sample_findings):
    expected, _ = planted()
    assert len(expected) > 60
    got = keyed(sample_findings)
    assert got - expected == set(), "found but not planted"
    assert expected - got == set(), "planted but not found"


def test_nothing_is_found_on_decoy_lines(sample_findings):
    _, decoys = planted()
    assert len(decoys) > 25
    assert {(f.path, f.line) for f in sample_findings} & decoys == set()


def test_sample_covers_every_category_and_language(sample_findings):
    assert {f.category for f in sample_findings} == set(CATEGORIES)
    assert {Path(f.path).suffix for f in sample_findings} == SOURCE_SUFFIXES
    for required in ("supabase/functions/flow-exchange/customer-cart.ts",
                     "supabase/functions/wa-webhook/exchange/helpers.ts", "supabase/functions/_shared/types.ts",
                     "supabase/functions/dine-in/service.ts", "scripts/report.py",
                     "supabase/migrations/20240101000000_orders.sql"):
        assert any(f.path == required for f in sample_findings), required


def test_findings_are_sorted_unique_and_positioned(sample_findings):
    assert sample_findings == sorted(sample_findings, key=lambda f: (f.path, f.line, f.column, f.name))
    assert len({(f.path, f.line, f.column, f.name) for f in sample_findings}) == len(sample_findings)
    for f in sample_findings:
        line = (SAMPLE / f.path).read_text().splitlines()[f.line - 1]
        assert f.code == line.strip()
        # the column points at the name itself (case-insensitively: SQL folds identifiers), or, for a name reached
        # through a variable, at the variable where it is used
        through = re.match(r"reached through (\S+), bound to ", f.reason)
        shown = through.group(1) if through else f.name
        assert line[f.column - 1:f.column - 1 + len(shown)].lower() == shown.lower(), f


@pytest.mark.parametrize("path, snippet, category, suggestion", [
    ("supabase/functions/wa-webhook/exchange/helpers.ts", '.from("customers")', "table", '.from("profiles")'),
    ("supabase/functions/wa-webhook/exchange/helpers.ts", ".from(`customers`)", "table", ".from(`profiles`)"),
    ("supabase/functions/flow-exchange/customer-cart.ts", ".from('customers')", "table", ".from('profiles')"),
    ("scripts/report.py", 'db.from_("customers")', "table", '.from_("profiles")'),
    ("supabase/functions/flow-exchange/customer-cart.ts", "owner:customers!inner", "table",
     "profiles!inner(id, wa_id, display_name)"),
    ("supabase/functions/wa-webhook/exchange/helpers.ts", "customers(wa_id)", "table", "profiles(wa_id)"),
    ("supabase/functions/wa-webhook/exchange/helpers.ts", "join public.customers c", "table", "public.profiles"),
    ("scripts/report.py", "from customers c join", "table", "profiles"),
    ("supabase/functions/dine-in/service.ts", 'table: "customers"', "table", '"profiles"'),
    ("supabase/migrations/20240101000000_orders.sql", "'public.customers'::regclass", "table",
     "'public.profiles'::regclass"),
    ("supabase/functions/flow-exchange/customer-cart.ts", '.eq("customer_id"', "column", "profile_id"),
    ("supabase/functions/_shared/types.ts", "customer_id: number;", "column", "profile_id"),
    ("scripts/report.py", "Row(customer_id=1", "column", "profile_id"),
    ("supabase/functions/wa-webhook/exchange/helpers.ts", 'rpc("auth_customer_id")', "helper",
     '.rpc("auth_profile_id")'),
    ("supabase/migrations/20240101000000_orders.sql", "using (customer_id = public.auth_customer_id())", "helper",
     "public.auth_profile_id()"),
    ("supabase/migrations/20240101000000_orders.sql", "k.customer_id = auth_customer_id()", "helper",
     "auth_profile_id()"),
    ("supabase/functions/flow-exchange/customer-cart.ts", "import { ensureCustomer }", "code_helper",
     "ensureProfile"),
    ("supabase/functions/dine-in/service.ts", "helpers.ensureCustomer(", "code_helper", "ensureProfile"),
])
def test_suggestions(sample_findings, path, snippet, category, suggestion):
    matches = [f for f in sample_findings if f.path == path and snippet in f.code and f.category == category]
    assert matches, f"no {category} finding on a line with {snippet!r} in {path}"
    assert {f.suggestion for f in matches} == {suggestion}


def test_sql_file_that_does_not_parse_is_read_with_the_scanner(sample_findings):
    seed = SAMPLE / "supabase/seed/legacy_seed.sql"
    with pytest.raises(pglast.parser.ParseError):
        pglast.parse_sql(seed.read_text())  # psql meta-commands
    found = {(f.line, f.category, f.name) for f in sample_findings if f.path == "supabase/seed/legacy_seed.sql"}
    assert found == {(3, "table", "customers"), (4, "column", "customer_id"), (5, "helper", "auth_customer_id")}


def test_sql_fallback_ignores_comments_and_string_literals(tmp_path):
    write(tmp_path, "x.sql", "\\connect app\n"
                             "-- customers customer_id auth_customer_id\n"
                             "/* customers */ select 'customers', $$ select customer_id from t $$;\n"
                             "update customers set x = 1;\n")
    assert keyed(audit_code(tmp_path, Spec())) == {("x.sql", 3, "column", "customer_id"),
                                                   ("x.sql", 4, "table", "customers")}


def test_sql_in_function_bodies_and_other_schemas(tmp_path):
    write(tmp_path, "m.sql", "create function f() returns bigint language plpgsql as $body$\n"
                             "declare v bigint;\n"
                             "begin\n"
                             "  select customer_id into v from public.carts;\n"
                             "  perform 1 from archive.customers;\n"
                             "  return v;\n"
                             "end $body$;\n"
                             "drop table if exists customers;\n"
                             "alter table carts drop column customer_id;\n")
    assert keyed(audit_code(tmp_path, Spec())) == {("m.sql", 4, "column", "customer_id"),
                                                   ("m.sql", 8, "table", "customers"),
                                                   ("m.sql", 9, "column", "customer_id")}


# --- TypeScript / TSX / JavaScript ----------------------------------------------------------------

def test_tsx_file(sample_findings, tmp_path):
    tsx = [f for f in sample_findings if f.path == "web/components/CartBadge.tsx"]
    assert {f.line for f in tsx} == {4, 7, 10, 12, 16}
    write(tmp_path, "Form.tsx", 'export const Form = () => (\n'
                                '  <form title="Edit customers">\n'
                                '    <p>customers and customer_id</p>\n'
                                '    <input name="customer_id" />\n'
                                '    <Owner customer_id={id} />\n'
                                '  </form>\n'
                                ');\n')
    assert keyed(audit_code(tmp_path, Spec())) == {("Form.tsx", 4, "column", "customer_id"),
                                                   ("Form.tsx", 5, "column", "customer_id")}


def test_js_file(sample_findings, tmp_path):
    js = keyed(f for f in sample_findings if f.path == "scripts/backfill.js")
    assert js == {("scripts/backfill.js", 7, "table", "customers"), ("scripts/backfill.js", 9, "column", "customer_id"),
                  ("scripts/backfill.js", 14, "table", "customers")}
    write(tmp_path, "a.mjs", "import x from './customers.js';\n"
                             "const { customers } = await import('./customers.mjs');\n"
                             "export default supabase.from('public.customers').select('*');\n")
    write(tmp_path, "b.cjs", "const c = require('./customers');\nmodule.exports = c;\n")
    assert keyed(audit_code(tmp_path, Spec())) == {("a.mjs", 3, "table", "customers")}


def test_identifiers_containing_the_word_are_not_findings(tmp_path):
    write(tmp_path, "ids.ts", "const customersCount = 1, customer = {}, myCustomers = [], customer_identity = 2;\n"
                              "const CUSTOMER_ID = 3, customerId = 4, ensureCustomerFast = () => 0;\n"
                              "type Customers = { customer: string; customerIds: number[]; customer_ids: 1 };\n"
                              "const url = '/customers/' + customerId, key = 'customer_ids';\n"
                              "obj.customers_total = x.customer;\n")
    write(tmp_path, "ids.py", "customers_count = 1\ncustomer = None\ndef ensure_customer(customerid): pass\n"
                              "x = {'customer': 1, 'customer_identity': 2}\n")
    assert audit_code(tmp_path, Spec()) == []


def test_comments_and_prose_are_not_findings(tmp_path):
    write(tmp_path, "c.ts", "// customers customer_id ensureCustomer auth_customer_id\n"
                            "/* .from('customers') */\n"
                            "/**\n * @see ensureCustomer\n * customer_id\n */\n"
                            "const a = 'Manage your customers easily', b = t('customers'), c = `Your customers`;\n"
                            "const d = 'Select customers', e = 'Do you want to update customers?';\n"
                            "const f = 'customers, in short', g = /customers/;\n")
    write(tmp_path, "c.py", "# customers customer_id\n"
                            "def f():\n    '''Select customer rows from customers.'''\n"
                            "    return _('customers') + 'Update your customers list'\n")
    assert audit_code(tmp_path, Spec()) == []


def test_sql_strings_report_the_exact_line_and_column(tmp_path):
    write(tmp_path, "q.ts", "const q = `\n"
                            "  select o.id\n"
                            "  from orders o\n"
                            "  join customers c on c.id = o.customer_id\n"
                            "  where o.id = ${id} and c.wa_id = 'it''s'`;\n"
                            "const r = 'select 1 from t\\nwhere x = \\'a\\' and customer_id = 1';\n")
    write(tmp_path, "q.py", 'Q = """\n'
                            "    update carts set status = %(s)s\n"
                            "    where customer_id = :cid\n"
                            '"""\n'
                            "R = ('select * '\n     'from customers')\n")
    found = {(f.path, f.line, f.column, f.category, f.name) for f in audit_code(tmp_path, Spec())}
    assert found == {("q.ts", 4, 8, "table", "customers"), ("q.ts", 4, 32, "column", "customer_id"),
                     ("q.ts", 6, 49, "column", "customer_id"),
                     ("q.py", 3, 11, "column", "customer_id"), ("q.py", 6, 12, "table", "customers")}


def test_columns_report_characters_not_bytes(tmp_path):
    write(tmp_path, "u.ts", "const é = 'ü'; db.from('customers');\n")
    [f] = audit_code(tmp_path, Spec())
    assert (f.line, f.column, f.category) == (1, 25, "table")


def test_supabase_strings(tmp_path):
    write(tmp_path, "s.ts", "db.from('orders').select(`\n"
                            "  id,\n"
                            "  buyer:customers!orders_customer_id_fkey ( id, wa_id ),\n"
                            "  customer_id::text\n"
                            "`);\n"
                            "db.from('orders').select('id').order('customer_id').or('and(customer_id.eq.1,x.gt.2)');\n"
                            "db.from('orders').select('id, customers.wa_id').eq('customers.wa_id', w);\n"
                            "db.from('carts').upsert(row, { onConflict: 'customer_id,status' });\n"
                            "db.from('carts').select('id').eq('carts.customer_id', 1);\n")
    found = {(f.line, f.category, f.name, f.suggestion) for f in audit_code(tmp_path, Spec())}
    assert found == {
        (3, "table", "customers", "profiles!orders_customer_id_fkey ( id, wa_id )"),
        (4, "column", "customer_id", "profile_id"),
        (6, "column", "customer_id", "profile_id"),
        (7, "table", "customers", "profiles.wa_id"),
        (8, "column", "customer_id", "profile_id"),
        (9, "column", "customer_id", "carts.profile_id"),
    }


# --- the bare table name where the code makes it a relation -----------------------------------------

def located(root: Path) -> set[tuple[str, int, int, str, str]]:
    return {(f.path, f.line, f.column, f.category, f.name) for f in audit_code(root, Spec())}


def test_identifier_builders_name_the_table(tmp_path):
    write(tmp_path, "i.py", "from psycopg import sql\n"
                            'a = sql.SQL("select * from {}").format(sql.Identifier("customers"))\n'
                            'b = sql.Identifier("public", "customers")\n'
                            'c = sql.Identifier("customers", "id")\n'
                            'd = sql.Identifier("archive", "customers")\n'     # another schema's table
                            'e = sql.Identifier("Customers")\n')               # quoted: another name
    write(tmp_path, "i.ts", "sql.identifier(['customers']);\n"
                            "sql.identifier(['public', 'customers']);\n"
                            "db.selectFrom(sql.id('customers'));\n"
                            "client.escapeIdentifier('customers');\n"
                            "sql`select * from ${sql('customers')}`;\n"
                            "sql.identifier(['archive', 'customers']);\n")
    assert located(tmp_path) == {("i.py", 2, 56, "table", "customers"), ("i.py", 3, 31, "table", "customers"),
                                 ("i.py", 4, 21, "table", "customers"),
                                 ("i.ts", 1, 18, "table", "customers"), ("i.ts", 2, 28, "table", "customers"),
                                 ("i.ts", 3, 23, "table", "customers"), ("i.ts", 4, 26, "table", "customers"),
                                 ("i.ts", 5, 26, "table", "customers")}


def test_table_declarations_of_orms_name_the_table(tmp_path):
    write(tmp_path, "m.py", "from sqlalchemy import Column, Integer, MetaData, Table\n"
                            "md = MetaData()\n"
                            'customers = Table("customers", md, Column("id", Integer))\n'
                            't = md.tables["customers"]\n'
                            'archive = Table("customers_archive", md)\n')
    write(tmp_path, "m.ts", "@Entity('customers')\nexport class Customer {}\n"
                            "@Entity({ name: 'customers', schema: 'public' })\nexport class Customer2 {}\n"
                            "export const customers = pgTable('customers', { id: serial('id') });\n"
                            "@Entity('customer_identity')\nexport class Identity {}\n"
                            "@Column({ name: 'customers' })\n")               # a column called so, not the table
    assert located(tmp_path) == {("m.py", 3, 20, "table", "customers"), ("m.py", 4, 16, "table", "customers"),
                                 ("m.ts", 1, 10, "table", "customers"), ("m.ts", 3, 18, "table", "customers"),
                                 ("m.ts", 5, 35, "table", "customers")}


def test_query_builders_called_with_the_table(tmp_path):
    write(tmp_path, "k.ts", "knex('customers').where('id', 1);\n"
                            "const q = knex('customers');\n"
                            "await trx('customers').insert(row);\n"
                            "db('customers').del();\n"
                            "t('customers').toUpperCase();\n"                 # i18n, then a string method
                            "cy.contains('customers').first();\n"             # a test's text lookup
                            "knex('orders').where('kind', 'customers');\n")   # a value
    assert located(tmp_path) == {("k.ts", 1, 7, "table", "customers"), ("k.ts", 2, 17, "table", "customers"),
                                 ("k.ts", 3, 12, "table", "customers"), ("k.ts", 4, 5, "table", "customers")}


def test_a_string_concatenated_onto_sql_text(tmp_path):
    write(tmp_path, "c.ts", "db.query('select * from ' + 'customers' + ' where id = ' + id);\n"
                            "const a = 'select ' + cols + ' from ' + 'customers';\n"
                            "const b = `select ${cols} from ` + 'public.customers';\n"
                            "const c = 'select * from ' + 'customers c join carts k on k.customer_id = c.id';\n"
                            "const d = 'delete from ' + ('customers');\n")
    write(tmp_path, "c.py", 'q = "select id from " + "customers"\n'
                            'r = "insert into " + "customers" + " (id) values (%s)"\n'
                            'S = ("select * from "\n     "customers")\n')
    assert located(tmp_path) == {("c.ts", 1, 30, "table", "customers"), ("c.ts", 2, 42, "table", "customers"),
                                 ("c.ts", 3, 44, "table", "customers"), ("c.ts", 4, 31, "table", "customers"),
                                 ("c.ts", 4, 61, "column", "customer_id"), ("c.ts", 5, 30, "table", "customers"),
                                 ("c.py", 1, 26, "table", "customers"), ("c.py", 2, 23, "table", "customers"),
                                 ("c.py", 4, 7, "table", "customers")}


def test_a_string_formatted_into_sql_text(tmp_path):
    write(tmp_path, "f.py", 'a = "select * from %s where id = %s" % ("customers", 5)\n'
                            'b = "delete from %s" % "customers"\n'
                            'c = "select * from {} join {}".format("orders", "customers")\n'
                            'd = "select * from {t}".format(t="customers")\n'
                            'e = "select * from %(t)s" % {"t": "customers"}\n'
                            'f = "select %s from t" % "customer_id"\n'
                            'g = "Hello %s" % "customers"\n'                     # prose
                            'h = "{} customers".format("customers")\n'
                            'i = "select * from {}".format(("x", "customers"))\n'  # a tuple's repr, not a name
                            'j = "label %(t)s" % {"t": "customers"}\n'
                            'k = "select %.2f as total, 100%% from %s" % (1.0, "customers")\n')
    write(tmp_path, "f.ts", "const q = format('select * from %I where id = %L', 'customers', id);\n"
                            "const r = util.format('%s loaded', 'customers');\n")
    assert located(tmp_path) == {("f.py", 1, 42, "table", "customers"), ("f.py", 2, 25, "table", "customers"),
                                 ("f.py", 3, 50, "table", "customers"), ("f.py", 4, 35, "table", "customers"),
                                 ("f.py", 5, 36, "table", "customers"), ("f.py", 6, 27, "column", "customer_id"),
                                 ("f.py", 11, 52, "table", "customers"),
                                 ("f.ts", 1, 53, "table", "customers")}


def test_the_bare_word_elsewhere_stays_prose(tmp_path):
    write(tmp_path, "p.ts", "const a = 'Update ' + 'customers', b = 'Manage your ' + 'customers';\n"
                            "const c = '/api/' + 'customers', d = 'Customers' + ' list', e = 'Select ' + 'customers';\n"
                            "const f = 'select * from t where kind = ' + \"'customers'\";\n"
                            "const g = \"select * from t where label = '\" + 'customers' + \"'\";\n"
                            "const h = rows['customers'], i = counts.customers_archive;\n"
                            "const j = sql.identifier(['Customers']), k = knex('customers_archive');\n"
                            "screen.getByText('customers').click();\n")
    write(tmp_path, "p.py", 'a = _("customers").upper()\n'
                            'b = "Update " + "customers"\n'
                            'c = "Manage your " "customers"\n'
                            'd = counts["customers"]\n'
                            'log.info("loaded " + "customers")\n'
                            'e = "select * from t where kind = " + "\'customers\'"\n'
                            'f = "select 1 -- from " + "customers"\n')
    assert audit_code(tmp_path, Spec()) == []


# --- names reached through a binding ----------------------------------------------------------------

def reached(root: Path) -> set[tuple[str, int, int, str, str, str]]:
    return {(f.path, f.line, f.column, f.category, f.name, f.reason) for f in audit_code(root, Spec())}


def test_python_names_reached_through_a_binding(tmp_path):
    write(tmp_path, "b.py", 'LEGACY = "customers"\n'                                            # 1
                            "def f(cur, cid):\n"
                            '    cur.execute(f"select * from {LEGACY} where id = %s", (cid,))\n'  # 3
                            "def h(supabase):\n"
                            '    t = "customers"\n'                                              # 5
                            '    return supabase.table(t).select("*").execute()\n'               # 6
                            'def g(db, rel="public.customers"):\n'                              # 7
                            "    return db.table(rel).select().execute()\n"                      # 8
                            "class Repo:\n"
                            '    TABLE = "customers"\n'                                          # 10
                            "    def all(self, cur):\n"
                            '        cur.execute("delete from " + self.TABLE)\n'                 # 12
                            'COL = "customer_id"\n'                                              # 13
                            'HELPER = "auth_customer_id"\n'                                      # 14
                            "def k(cur, db):\n"
                            '    cur.execute(f"select {COL} from carts where {COL} = {HELPER}()")\n'  # 16
                            '    db.table("carts").select("id").eq(COL, 1)\n'                    # 17
                            "    db.rpc(HELPER)\n"                                               # 18
                            '    cur.execute("select * from {}".format(LEGACY))\n'               # 19
                            'SOURCES = {"legacy": "customers", "qualified": "public.auth_customer_id"}\n'  # 20
                            "def p(db):\n"
                            "    alias = LEGACY\n"                                               # 22
                            "    return db.table(alias)\n")                                      # 23
    via = 'reached through {}, bound to "{}" at line {}'.format
    assert reached(tmp_path) == {
        ("b.py", 1, 11, "table", "customers", "bound to LEGACY"),
        ("b.py", 3, 34, "table", "customers", via("LEGACY", "customers", 1)),
        ("b.py", 5, 10, "table", "customers", "bound to t"),
        ("b.py", 6, 27, "table", "customers", via("t", "customers", 5)),
        ("b.py", 7, 23, "table", "customers", "bound to rel"),
        ("b.py", 8, 21, "table", "customers", via("rel", "public.customers", 7)),
        ("b.py", 10, 14, "table", "customers", "bound to TABLE"),
        ("b.py", 12, 38, "table", "customers", via("self.TABLE", "customers", 10)),
        ("b.py", 13, 8, "column", "customer_id", "bound to COL"),
        ("b.py", 14, 11, "helper", "auth_customer_id", "bound to HELPER"),
        ("b.py", 16, 27, "column", "customer_id", via("COL", "customer_id", 13)),
        ("b.py", 16, 50, "column", "customer_id", via("COL", "customer_id", 13)),
        ("b.py", 16, 58, "helper", "auth_customer_id", via("HELPER", "auth_customer_id", 14)),
        ("b.py", 17, 39, "column", "customer_id", via("COL", "customer_id", 13)),
        ("b.py", 18, 12, "helper", "auth_customer_id", via("HELPER", "auth_customer_id", 14)),
        ("b.py", 19, 43, "table", "customers", via("LEGACY", "customers", 1)),
        ("b.py", 20, 23, "table", "customers", "bound to legacy"),
        ("b.py", 20, 56, "helper", "auth_customer_id", "bound to qualified"),
        ("b.py", 23, 21, "table", "customers", 'reached through alias (line 22) and LEGACY, bound to "customers" at '
                                               "line 1"),
    }


def test_typescript_names_reached_through_a_binding(tmp_path):
    write(tmp_path, "b.ts", "export async function f(supabase: any) {\n"
                            "  const name = 'customers';\n"                                        # 2
                            "  return supabase.from(name).select('*');\n"                          # 3
                            "}\n"
                            'const LEGACY = "customers";\n'                                        # 5
                            "export const g = (sql: any) => sql.unsafe(`select * from ${LEGACY}`);\n"  # 6
                            "export const h = (db: any, t = 'customers') => db.from(t);\n"          # 7
                            "class Repo {\n"
                            "  table = 'public.customers';\n"                                      # 9
                            "  all(db: any) { return db.from(this.table).select(); }\n"            # 10
                            "}\n"
                            "const T = { legacy: 'customers', col: 'customer_id' } as const;\n"    # 12
                            "export const k = (db: any) => db.from(T.legacy).select().eq(T.col, 1);\n"  # 13
                            "let helper: string;\n"
                            "helper = 'auth_customer_id';\n"                                       # 15
                            "export const m = (db: any) => db.rpc(helper);\n"                      # 16
                            "export const n = (q: any) => q('select * from ' + LEGACY);\n"          # 17
                            "const again = name, more = again;\n"                                  # 18
                            "export const o = (db: any) => db.from(more);\n")                      # 19
    write(tmp_path, "b.js", "const who = 'customers';\n"
                            "module.exports = (db) => db.query(`delete from ${who} where id = $1`);\n")
    via = "reached through {}, bound to '{}' at line {}".format
    dvia = 'reached through {}, bound to "{}" at line {}'.format
    assert reached(tmp_path) == {
        ("b.ts", 2, 17, "table", "customers", "bound to name"),
        ("b.ts", 3, 24, "table", "customers", via("name", "customers", 2)),
        ("b.ts", 5, 17, "table", "customers", "bound to LEGACY"),
        ("b.ts", 6, 60, "table", "customers", dvia("LEGACY", "customers", 5)),
        ("b.ts", 7, 33, "table", "customers", "bound to t"),
        ("b.ts", 7, 56, "table", "customers", via("t", "customers", 7)),
        ("b.ts", 9, 19, "table", "customers", "bound to table"),
        ("b.ts", 10, 33, "table", "customers", via("this.table", "public.customers", 9)),
        ("b.ts", 12, 22, "table", "customers", "bound to legacy"),
        ("b.ts", 12, 40, "column", "customer_id", "bound to col"),
        ("b.ts", 13, 39, "table", "customers", via("T.legacy", "customers", 12)),
        ("b.ts", 13, 61, "column", "customer_id", via("T.col", "customer_id", 12)),
        ("b.ts", 15, 11, "helper", "auth_customer_id", "bound to helper"),
        ("b.ts", 16, 38, "helper", "auth_customer_id", via("helper", "auth_customer_id", 15)),
        ("b.ts", 17, 51, "table", "customers", dvia("LEGACY", "customers", 5)),
        ("b.ts", 19, 39, "table", "customers", "reached through more (line 18) and again (line 18) and name, bound "
                                               "to 'customers' at line 2"),
        ("b.js", 1, 14, "table", "customers", "bound to who"),
        ("b.js", 2, 50, "table", "customers", via("who", "customers", 1)),
    }


def test_a_bound_name_is_quiet_where_a_literal_would_be(tmp_path):
    """The binding of a legacy name is reported; its uses are reported only where the literal itself would be."""
    write(tmp_path, "q.ts", "const LABEL = 'customers';\n"
                            "console.log(LABEL); toast(`Manage your ${LABEL}`); nav.push('/' + LABEL);\n"
                            "db.from('orders').insert({ kind: 'customers' });\n"  # a row's value, judged by the call
                            "@Column({ name: 'customers' })\n"
                            "const x = other.LABEL, y = 'Customers', z = { LABEL: 1 };\n")
    write(tmp_path, "q.py", 'LABEL = "customers"\n'
                            'print(LABEL, f"Manage your {LABEL}", obj.LABEL)\n'
                            'db.table("orders").insert({"kind": "customers"})\n'
                            'j = "label %(t)s" % {"t": "customers"}\n'
                            "def f(LABEL=1): return g(LABEL=2)\n")
    assert {(f.path, f.line) for f in audit_code(tmp_path, Spec())} == {("q.ts", 1), ("q.py", 1)}


# --- configuration ----------------------------------------------------------------------------------

def test_names_come_from_the_spec_and_the_code_helpers(tmp_path):
    spec = from_dict({"legacy": {"table": "app.clients", "helper": "app.auth_client_id"},
                      "canonical": {"table": "app.accounts", "helper": "app.auth_account_id"},
                      "migration": {"new_column": "account_id"}})
    write(tmp_path, "x.ts", "await ensureClient(db);\n"                      # 1
                            "db.from('clients').select('id, client_id, legacy_ref');\n"  # 2
                            "db.from('customers').eq('customer_id', 1);\n"   # 3: not legacy under this spec
                            "ensureCustomer();\n"                            # 4: not a configured helper
                            "db.rpc('auth_client_id');\n")                   # 5
    write(tmp_path, "x.sql", "select app.auth_client_id() from app.clients where client_id = 1;\n")
    found = {(f.path, f.line, f.category, f.name, f.suggestion) for f in audit_code(
        tmp_path, spec, code_helpers={"ensureClient": "ensureAccount"}, extra_columns=["legacy_ref"])}
    assert found == {
        ("x.ts", 1, "code_helper", "ensureClient", "ensureAccount"),
        ("x.ts", 2, "table", "clients", ".from('accounts')"),
        ("x.ts", 2, "column", "client_id", "account_id"),
        ("x.ts", 2, "column", "legacy_ref", "account_id"),
        ("x.ts", 5, "helper", "auth_client_id", ".rpc('auth_account_id')"),
        ("x.sql", 1, "helper", "auth_client_id", "app.auth_account_id()"),
        ("x.sql", 1, "table", "clients", "app.accounts"),
        ("x.sql", 1, "column", "client_id", "account_id"),
    }


def test_default_code_helpers():
    assert {f.name for f in audit_code(SAMPLE, Spec()) if f.category == "code_helper"} == {"ensureCustomer"}
    assert [f for f in audit_code(SAMPLE, Spec(), code_helpers={}) if f.category == "code_helper"] == []


# --- walking --------------------------------------------------------------------------------------

def test_skipped_directories_and_large_files(tmp_path):
    line = "db.from('customers');\n"
    for rel in ("node_modules/x/index.js", ".git/hooks/a.js", "dist/a.js", "build/a.js", "venv/lib/a.py",
                "env2/lib/x.py", "src/notes.txt", "src/a.md"):
        write(tmp_path, rel, line)
    (tmp_path / "env2" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    write(tmp_path, "src/big.ts", "// padding\n" * 100_000 + line)  # > 1 MB
    write(tmp_path, "src/ok.ts", line)
    result = scan(tmp_path, Spec())
    assert keyed(result.findings) == {("src/ok.ts", 1, "table", "customers")}
    assert result.skipped == ["src/big.ts"] and result.files_scanned == 1


def test_a_single_file_can_be_audited():
    one = SAMPLE / "scripts/backfill.js"
    assert {f.path for f in audit_code(one, Spec())} == {"backfill.js"}


def test_a_large_file_is_read_whole(tmp_path):
    """Each sample file repeated to about 150 kB: every one is read, and its findings repeat with it (its speed is
    measured by bench/code_audit.py, not asserted here)."""
    sources = [p for p in SAMPLE.rglob("*") if p.suffix in SOURCE_SUFFIXES]
    once = scan(SAMPLE, Spec())
    for i, p in enumerate(sources):
        data = p.read_bytes()
        (tmp_path / f"{i}_{p.name}").write_bytes(data * max(1, 150_000 // len(data)))
    result = scan(tmp_path, Spec())
    assert result.files_scanned == len(sources) and len(result.findings) > 10 * len(once.findings)