"""`pgconverge report`: Markdown, HTML and JSON built from the ledger of a real run."""

from __future__ import annotations

import re
import tomllib
from html.parser import HTMLParser

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from pgconverge import __version__

from _small import AUTH_SQL, base_sql, config, policy_sql, roles_sql
from _support import cli, cli_json, write_config

HELPER = ("create function public.auth_customer_id() returns bigint language sql stable as $$ "
          "select nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'customer_id', '')::bigint $$;")


class _Walker(HTMLParser):
    """Walks the document; records tags and checks every opened element (bar void ones) is closed in order."""

    VOID = {"meta", "br", "hr", "img", "input", "link", "rect", "circle", "line", "polyline"}

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()


def _step_ids(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as c:
        return [r[0] for r in c.execute("select distinct step from pgconverge.events").fetchall()]


# Contract follows the switch at once: the runtime gate's observation window is not what these tests are about.
CONFIG = "[migration]\nobservation_window = 0\n"


def test_report_after_full_run(make_db, template_factory, tmp_path):
    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, CONFIG)
    # A real failed attempt first: contract's code gate refuses without audited code or the acceptance.
    out = cli("run", "--all", "--dsn", dsn, "--config", cfg, expect=2)
    assert "contract is blocked" in out
    cli("run", "contract", "--accept-code-references", "--dsn", dsn, "--config", cfg)
    md, html = tmp_path / "report.md", tmp_path / "report.html"
    cli("report", "--md", str(md), "--html", str(html), "--dsn", dsn, "--config", cfg)

    text = md.read_text()
    for phase in ("align", "expand", "switch", "contract"):
        assert f"Phase {phase}: done" in text
    steps = _step_ids(dsn)
    assert "expand.carts.add_column" in steps and "expand.carts.backfill" in steps
    for step in steps:
        assert step in text, step
    # SQL of a known step, with its lock level in the step table.
    sql_block = text.split("**expand.carts.add_column**", 1)[1].split("```", 2)[1]
    assert "alter table" in sql_block.lower()
    assert re.search(r"\| expand\.carts\.add_column \| done \| ACCESS EXCLUSIVE \|", text)
    # Identity counts exactly as the align report recorded them.
    with psycopg.connect(dsn) as c:
        rep = c.execute("select data from pgconverge.snapshots where name = 'align_report' "
                        "order by id desc limit 1").fetchone()[0]
    for method, n in rep["methods"].items():
        assert f"| {method} | {n} |" in text
    assert f"| total | {sum(rep['methods'].values())} |" in text
    assert f"{rep['merged']['groups']} groups of legacy rows merged" in text
    assert "distinct numbers checked" in text
    assert re.search(r"RLS equivalence: passed — \d+ identities", text)
    assert "| carts |" in text  # backfill series of the carts table
    assert "no code references" in text  # contract gates
    assert "## Row counts before and after" in text

    _assert_verdict_block(dsn, text)

    page = html.read_text()
    assert page.count("<svg") == 3  # the timeline; the batches of align's mapping and of expand's backfills
    _assert_throughput_axes(page)
    _assert_rls_per_table(dsn, text)
    # The verdict leads; no Markdown mark is left raw in the page (inline code becomes <code>).
    assert page.index('id="verdict"') < page.index("<h2>") and "Verdict: COMPLETE" in page
    assert "`" not in re.sub(r"<pre>.*?</pre>", "", page, flags=re.S)
    assert "<code>pgconverge rollback contract</code>" in page
    assert 'class="st-passed">passed</td>' in page
    for ref in ("http://", "https://", "src=", "<script src", "<link"):
        assert ref not in page, ref
    walker = _Walker()
    walker.feed(page)
    walker.close()
    assert not walker.problems, walker.problems[:5]
    assert not walker.stack, walker.stack
    assert {"rect", "circle", "table", "style"} <= set(walker.tags)
    assert "expand.carts.add_column" in page and "RLS equivalence: passed" in page

    data = cli_json("report", "--dsn", dsn)
    assert [p["phase"] for p in data["phases"]] == ["align", "expand", "switch", "contract"]
    assert all(s["state"] == "done" for p in data["phases"] for s in p["steps"])
    carts = next(s for s in data["backfill"] if s["step"] == "expand.carts.backfill")
    assert carts["rows"] > 0 and all(b["rows_per_s"] > 0 for b in carts["batches"])
    assert data["identity"]["align_report"]["methods"] == rep["methods"]
    assert data["rls_equivalence"]["problems"] == []
    assert data["verdict"]["status"] == "COMPLETE"
    # The configuration block is pgconverge.toml text that reads back as the configuration the run recorded.
    block = text.split("```toml\n", 1)[1].split("\n```", 1)[0]
    assert tomllib.loads(block) == data["config"] and data["config"]["migration"]["observation_window"] == 0
    assert [a["step"] for a in data["attempts"]] == ["contract.gates"]
    assert not [c for c in data["checks"] if c["status"] in ("proves nothing", "FAILED")], data["checks"]


def _assert_throughput_axes(page: str) -> None:
    """Each throughput chart spans the batches it plots: its lines start at the x axis' left end and its last batch
    ends at the right end, whatever ran before (align's mapping has a chart of its own)."""
    charts = re.findall(r'<svg id="chart-throughput[^"]*" class="chart-throughput" data-phase="([^"]+)".*?</svg>',
                        page, re.S)
    assert charts == ["align", "expand"], charts
    for svg in re.findall(r'<svg id="chart-throughput.*?</svg>', page, re.S):
        x1, _, x2, _ = (float(v) for v in re.findall(
            r'<line x1="([\d.]+)" y1="([\d.]+)" x2="([\d.]+)" y2="([\d.]+)"', svg)[1])  # the x axis
        xs = [float(p.split(",")[0]) for pts in re.findall(r'points="([^"]+)"', svg) for p in pts.split()]
        xs += [float(v) for v in re.findall(r'<circle cx="([\d.]+)"', svg)]
        assert xs and min(xs) == pytest.approx(x1, abs=1) and max(xs) == pytest.approx(x2, abs=1), (x1, x2, xs)
        assert "seconds since the first batch of" in svg and "rows/s per batch" in svg
        assert re.search(r">(align|expand): \d+ batch(es)? in [\d.]+ s<", svg)


def _assert_rls_per_table(dsn: str, text: str) -> None:
    """The RLS section shows, per table, the policies rewritten and the rows compared; each policy before and after."""
    with psycopg.connect(dsn) as c:
        eq = c.execute("select data from pgconverge.snapshots where name = 'rls_equivalence' "
                       "order by id desc limit 1").fetchone()[0]
        saved = c.execute("select name from pgconverge.saved_definitions where step = 'switch.policies' "
                          "and kind = 'policy' order by name").fetchall()
    section = text.split("## Row level security", 1)[1].split("\n## ", 1)[0]
    assert ("| table | policies rewritten | rows compared | tokens checked | sampled owners seeing their rows |"
            in section)
    policies: dict[str, list[str]] = {}
    for (name,) in saved:
        schema, table, policy = name.split(".")
        policies.setdefault(f"{schema}.{table}", []).append(policy)
    assert set(eq["rows_by_table"]) <= set(policies) and len(policies) >= 3
    for table, rows in eq["rows_by_table"].items():
        row = next(r for r in section.splitlines() if r.startswith(f"| {table} |"))
        cells = [x.strip() for x in row.strip("|").split("|")]
        assert sorted(cells[1].split(", ")) == sorted(policies[table]) and cells[2] == str(rows), row
        cov = eq["coverage_by_table"][table]  # this table's sampled owners, and how many saw their own rows
        assert cells[4] == f"{cov['owners_seeing_own']} of {cov['owners']}" and cov["owners_seeing_own"] > 0, row
    for table, names in policies.items():
        for policy in names:
            block = section.split(f"**{table} policy {policy}: before and after**", 1)[1].split("```", 2)[1]
            before, after = block.split("-- after\n")
            assert "auth_customer_id" in before and "auth_profile_id" in after, block


def _assert_verdict_block(dsn: str, text: str) -> None:
    """The verdict block (everything before the runs) names the target, versions, configuration, next steps,
    every check with the rows it looked at (figures from the database and the ledger), and the failed attempt."""
    head = text.split("\n## Runs\n", 1)[0]
    assert head.splitlines()[2].startswith("**Verdict: COMPLETE: all 4 phases done;"), head[:400]
    with psycopg.connect(dsn) as c:
        db, version = c.execute("select current_database(), current_setting('server_version')").fetchone()
        archived = [r[0] for r in c.execute(
            "select format('%s.%s', schemaname, tablename) from pg_tables where schemaname = 'archive' "
            "order by tablename").fetchall()]
        legacy = c.execute(sql.SQL("select count(*) from {}").format(
            sql.Identifier(*archived[0].split(".")))).fetchone()[0]
        dependents = c.execute("select (select count(*) from public.carts) + (select count(*) from public.orders) "
                               "+ (select count(*) from public.sessions)").fetchone()[0]
        linked = c.execute("select (select count(profile_id) from public.carts) + (select count(profile_id) from "
                           "public.orders) + (select count(profile_id) from public.sessions)").fetchone()[0]
        eq = c.execute("select data from pgconverge.snapshots where name = 'rls_equivalence' "
                       "order by id desc limit 1").fetchone()[0]
        gates = c.execute("select data from pgconverge.snapshots where name = 'contract_gates' "
                          "order by id desc limit 1").fetchone()[0]
    assert f"| database | {db} |" in head and f"| server | PostgreSQL {version} |" in head
    assert f"| pgconverge | {__version__} |" in head
    assert "| migration | public.customers → public.profiles |" in head
    assert re.search(r"\nobservation_window = 0(\.0)?\n", head) and 'token_claims = { app_role = "customer" }' in head
    assert len(archived) == 2 and all(a in head for a in archived)
    assert "`pgconverge rollback contract`" in head and "`pgconverge rollback align`" in head
    # Coverage of each check: rows, tables, identities.
    assert f"| legacy rows have a mapping row | passed | {legacy:,} rows in 1 table(s): public.customers {legacy:,} |" \
        in head
    # the rows it judged: those with a legacy id (a guest's session has none)
    assert f"| expand invariants | passed | {linked:,} rows in 3 table(s): public.carts " in head
    assert (f"| final validation (every row's new id = its legacy id's owner) | passed | {linked:,} rows' new ids "
            f"checked against the mapping ({dependents - linked:,} with no legacy id") in head
    rls = next(line for line in head.splitlines() if line.startswith("| RLS equivalence"))
    assert f"| passed | {eq['identities']} identities;" in rls and f"{eq['rows_seen']:,} rows compared" in rls
    assert re.search(r"\d+ own rows, \d+ see their own with an old token \(\d+%\)", rls)
    assert sum(eq["rows_by_table"].values()) >= eq["rows_seen"] > 0
    for table, rows in eq["rows_by_table"].items():
        assert f"{table} {rows:,}" in rls
    # A gate whose signals could not be read is not "passed".
    runtime = next(g for g in gates if g["gate"] == "no runtime use since the switch")
    if any(d.startswith("unavailable:") for d in runtime["details"]):
        assert "| contract gate: no runtime use since the switch | not measured |" in head
        assert "| no runtime use since the switch | passed |" not in text
    # The failed attempt, with its error and duration; the lock hold apart from the step's duration.
    assert "### Interrupted and failed attempts (1 failed; all 1)" in head
    assert re.search(r"\| contract\.gates \| 1 \| failed \| [^|]+ \| [\d,.]+ \| no code references: ", head)
    step = re.search(r"\| switch\.policies \| done \| ACCESS EXCLUSIVE \| ([\d,.]+) \| ([\d,.]+) \|", text)
    took, held = (float(x.replace(",", "")) for x in step.groups())
    assert 0 < held < took and eq["lock_hold_ms"] == pytest.approx(held, abs=0.1)
    assert f"ACCESS EXCLUSIVE for {held:,.1f} ms by switch.policies" in head


def test_report_escapes_html(make_db, template_factory, tmp_path):
    """A value from the ledger reaches the HTML escaped, never as markup."""
    dsn = make_db(template_factory(0.1))
    cli("run", "align", "--dsn", dsn)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("insert into pgconverge.events (run_id, phase, step, event, message) "
                  "select max(id), 'align', 'align.match', 'note', '<script>alert(1)</script>' from pgconverge.runs")
        # A large sample is shown capped, with what it is a sample of.
        c.execute("insert into pgconverge.snapshots (name, data) values ('phone_audit', %s)",
                  (Jsonb({"checked": 9000, "disagreements": 4482, "unexplained": 0, "by_reason": {"x": 4482},
                          "sample": [{"raw": f"+1{i:09d}", "sql": "a", "phonenumbers": "b", "reason": "x"}
                                     for i in range(25)]}),))
    html = tmp_path / "r.html"
    cli("report", "--html", str(html), "--dsn", dsn)
    page = html.read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Disagreements (first 20 of 4,482):" in page and "+1000000019" in page and "+1000000020" not in page
    text = cli("report", "--dsn", dsn)
    assert "**Verdict: IN PROGRESS: align done; expand, switch, contract to run**" in text
    assert "- next: `pgconverge run expand`" in text and "`pgconverge rollback align`" in text
    assert "| phone key audit (SQL key vs phonenumbers) | passed | 9,000 distinct numbers, 4,482 disagree" in text
    assert "| RLS equivalence (old token before = old and new token after) | not run |" in text


def test_a_check_that_saw_no_rows_proves_nothing(make_db, tmp_path):
    """An empty legacy table: every phase runs, and the report says its checks proved nothing instead of passed."""
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(roles_sql() + AUTH_SQL + base_sql() + HELPER + policy_sql("public.auth_customer_id"))
        c.execute("delete from public.carts; delete from public.customers; analyze")
    cfg = write_config(tmp_path, config("public.auth_customer_id", extra="observation_window = 0"))
    # contract's switch gate compared nothing either: it goes ahead only when that is accepted on purpose
    cli("run", "--all", "--accept-code-references", "--accept-unproven-rls", "--dsn", dsn, "--config", cfg)
    text = cli("report", "--dsn", dsn, "--config", cfg)
    head = text.split("\n## Runs\n", 1)[0]
    assert "**Verdict: UNPROVEN: every phase finished, but " in head
    assert ("| legacy rows have a mapping row | proves nothing | 0 rows in 1 table(s): public.customers 0 — no rows, "
            "nothing was checked |") in head
    assert "| expand invariants | proves nothing | 0 rows in 1 table(s): public.carts 0" in head
    assert "| identity match (every legacy row placed) | proves nothing | 0 legacy rows: ;" in head
    assert "| phone key audit (SQL key vs phonenumbers) | proves nothing | 0 distinct numbers," in head
    assert "| owner linkage recorded before the migration | proves nothing |" in head
    assert ("| final validation (every row's new id = its legacy id's owner) | proves nothing | 0 rows' new ids "
            "checked against the mapping — no row has a legacy id, nothing was checked") in head
    assert "| RLS equivalence (old token before = old and new token after) | proves nothing | 0 identities;" in head
    assert "RLS equivalence: proves nothing — 0 identities" in text and "RLS equivalence: passed" not in text
    data = cli_json("report", "--dsn", dsn, "--config", cfg)
    assert data["verdict"]["status"] == "UNPROVEN"
    assert data["rls_equivalence"]["rows_seen"] == 0
    html = tmp_path / "r.html"
    cli("report", "--html", str(html), "--dsn", dsn, "--config", cfg)
    assert html.read_text().count('class="st-bad">proves nothing</td>') >= 4


def test_report_without_ledger(make_db):
    dsn = make_db()
    out = cli("report", "--dsn", dsn, expect=2)
    assert "no pgconverge ledger in this database: nothing has run yet" in out
    data = cli_json("report", "--dsn", dsn, expect=2)
    assert "nothing has run yet" in data["problem"]
