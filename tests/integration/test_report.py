"""`pgconverge report`: Markdown, HTML and JSON built from the ledger of a real run."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import psycopg

from _support import cli, cli_json


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


def test_report_after_full_run(make_db, template_factory, tmp_path):
    dsn = make_db(template_factory(0.1))
    cli("run", "--all", "--accept-code-references", "--dsn", dsn)
    md, html = tmp_path / "report.md", tmp_path / "report.html"
    cli("report", "--md", str(md), "--html", str(html), "--dsn", dsn)

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

    page = html.read_text()
    assert page.count("<svg") == 2
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


def test_report_escapes_html(make_db, template_factory, tmp_path):
    """A value from the ledger reaches the HTML escaped, never as markup."""
    dsn = make_db(template_factory(0.1))
    cli("run", "align", "--dsn", dsn)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("insert into pgconverge.events (run_id, phase, step, event, message) "
                  "select max(id), 'align', 'align.match', 'note', '<script>alert(1)</script>' from pgconverge.runs")
    html = tmp_path / "r.html"
    cli("report", "--html", str(html), "--dsn", dsn)
    page = html.read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_report_without_ledger(make_db):
    dsn = make_db()
    out = cli("report", "--dsn", dsn, expect=2)
    assert "no pgconverge ledger in this database: nothing has run yet" in out
    data = cli_json("report", "--dsn", dsn, expect=2)
    assert "nothing has run yet" in data["problem"]
