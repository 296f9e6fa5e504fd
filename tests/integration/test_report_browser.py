"""The HTML report in a real browser: headless Chromium loads it with no console error and no request
beyond the file itself, and draws the timeline and backfill charts and the tables."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from _cdp import Browser
from _support import cli, cli_json, write_config

ARTIFACT = Path(__file__).resolve().parents[2] / ".pgconverge" / "artifacts" / "report.png"

_INSPECT = r"""(() => {
  const chart = id => {
    const svg = document.getElementById(id);
    if (!svg) return null;
    const box = svg.getBoundingClientRect();
    const marks = [...svg.querySelectorAll('rect, path, polyline, circle')];
    const drawn = marks.filter(m => { const b = m.getBBox(); return b.width > 0 || b.height > 0; });
    const inside = drawn.every(m => { const b = m.getBoundingClientRect();
      return b.left >= box.left - 1 && b.right <= box.right + 1 && b.top >= box.top - 1 && b.bottom <= box.bottom + 1; });
    // Bars and points carry a <title> (the tooltip); legend swatches do not.
    const titled = sel => [...svg.querySelectorAll(sel)].filter(e => e.querySelector('title')).length;
    // Painted where it says it is: the element at the centre of some bar or point is that mark.
    svg.scrollIntoView({block: 'start'});
    const hit = [...svg.querySelectorAll('rect > title, circle > title')].map(t => t.parentElement).some(el => {
      el.scrollIntoView({block: 'center', inline: 'center'});  // a chart may be wider than the window
      const b = el.getBoundingClientRect();
      return document.elementFromPoint(b.left + b.width / 2, b.top + b.height / 2) === el;
    });
    // Where the data sits on the x axis (the second <line>), in screen pixels: first and last plotted x.
    const axis = svg.querySelectorAll('line')[1];
    const ctm = svg.getScreenCTM();
    const screenX = x => new DOMPoint(x, 0).matrixTransform(ctm).x;
    const xs = [...[...svg.querySelectorAll('polyline')].flatMap(p => [...p.points].map(q => q.x)),
                ...[...svg.querySelectorAll('circle')].filter(c => c.querySelector('title'))
                  .map(c => c.cx.baseVal.value)];
    const extent = axis && xs.length ? {axisLeft: screenX(axis.x1.baseVal.value),
                                        axisRight: screenX(axis.x2.baseVal.value),
                                        first: screenX(Math.min(...xs)), last: screenX(Math.max(...xs))} : null;
    return {width: box.width, height: box.height, marks: marks.length, drawn: drawn.length, inside, extent,
            bars: titled('rect'), points: titled('circle'), lines: svg.querySelectorAll('polyline').length,
            hit, labels: [...svg.querySelectorAll('text')].map(t => t.textContent)};
  };
  const tables = [...document.querySelectorAll('table')];
  return JSON.stringify({
    title: document.title,
    svgs: document.querySelectorAll('svg').length,
    timeline: chart('chart-timeline'),
    throughput: chart('chart-throughput'),
    throughputs: [...document.querySelectorAll('svg.chart-throughput')].map(s => [s.dataset.phase, chart(s.id)]),
    rlsTable: (() => { const t = tables.find(t => [...t.querySelectorAll('th')].some(th =>
        th.textContent === 'policies rewritten'));
      return t && [...t.tBodies[0].rows].map(r => [...r.cells].map(c => c.textContent)); })(),
    tables: tables.length,
    shownTables: tables.filter(t => t.getBoundingClientRect().height > 0 && t.rows.length > 1).length,
    headings: [...document.querySelectorAll('h2')].map(h => h.textContent),
    height: document.documentElement.scrollHeight,
    verdict: (() => { const v = document.getElementById('verdict'); const h = document.querySelector('h2');
      return v && {text: v.textContent, above: v.getBoundingClientRect().bottom <= h.getBoundingClientRect().top,
                   bordered: getComputedStyle(v).borderLeftWidth}; })(),
    // Markdown marks must not show: inline code is drawn as <code>, SQL sits in <pre>.
    backticks: [...document.querySelectorAll('h1, h2, h3, p, li, td, th, summary')]
      .filter(e => e.textContent.includes('`')).map(e => e.textContent.slice(0, 80)),
    statuses: [...document.querySelectorAll('td[class^="st-"]')].map(td => [td.textContent, td.className,
      getComputedStyle(td).color]),
    lists: [...document.querySelectorAll('ul')].map(u => u.children.length),
  });
})()"""


def _errors(browser: Browser, session: str) -> list[str]:
    """Console errors, uncaught exceptions and browser log errors seen on SESSION so far."""
    out = []
    for ev in browser.log:
        if ev.get("sessionId") != session:
            continue
        m, p = ev.get("method"), ev.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append("log: " + p["entry"].get("text", ""))
    return out


def _load(browser: Browser, url: str) -> str:
    session = browser.open_page()
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.call(f"{domain}.enable", session=session)
    browser.call("Page.navigate", {"url": url}, session=session)
    browser.wait_event("Page.loadEventFired", session)
    return session


def _evaluate(browser: Browser, session: str, expr: str):
    res = browser.call("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True},
                       session=session)
    assert "exceptionDetails" not in res, res
    return res["result"].get("value")


@pytest.fixture
def report(tmp_path, make_db, template_factory):
    """A finished migration's HTML report, with the ledger's own figures to check the drawing against."""
    dsn = make_db(template_factory(0.1))
    cfg = write_config(tmp_path, "[migration]\nobservation_window = 0\n")  # contract right after the switch
    cli("run", "--all", "--accept-code-references", "--dsn", dsn, "--config", cfg)
    path = tmp_path / "report.html"
    cli("report", "--html", str(path), "--dsn", dsn, "--config", cfg)
    return path, cli_json("report", "--dsn", dsn, "--config", cfg)


def test_report_renders_in_chromium(report, tmp_path):
    path, data = report
    with Browser(tmp_path / "profile") as browser:
        # The harness sees errors when there are some: a page that logs one and throws one.
        probe = _load(browser, "data:text/html,<script>console.error('probe-error');"
                               "setTimeout(() => { throw new Error('probe-throw') })</script>")
        _evaluate(browser, probe, "new Promise(r => setTimeout(r, 50))")
        seen = " | ".join(_errors(browser, probe))
        assert "probe-error" in seen and "probe-throw" in seen, seen

        session = _load(browser, path.as_uri())
        page = json.loads(_evaluate(browser, session, _INSPECT))
        assert _errors(browser, session) == []
        requested = [ev["params"]["request"]["url"] for ev in browser.log
                     if ev.get("sessionId") == session and ev.get("method") == "Network.requestWillBeSent"]
        assert requested == [path.as_uri()], requested  # self-contained: nothing else is fetched

        assert page["title"] == "pgconverge run report"
        timeline, throughput = page["timeline"], page["throughput"]
        assert timeline and throughput, page
        for chart in (timeline, throughput):
            assert chart["width"] > 300 and chart["height"] > 100, chart
            assert chart["drawn"] == chart["marks"] > 0 and chart["inside"] and chart["hit"], chart
        # One bar per step of the timeline, one point per batch, a line per table with several batches.
        assert timeline["bars"] == len(data["timeline"]) > 0
        assert set(data["timeline"][0]) >= {"step", "start", "end"}
        assert {"align", "expand", "switch", "contract"} <= set(timeline["labels"])
        # One throughput chart per phase that ran batches; each spans its own batches, edge to edge.
        charts = dict(page["throughputs"])
        assert list(charts) == ["align", "expand"] and charts["align"] == throughput, page["throughputs"]
        for phase, chart in charts.items():
            assert chart["drawn"] == chart["marks"] > 0 and chart["inside"] and chart["hit"], chart
            e = chart["extent"]
            assert abs(e["first"] - e["axisLeft"]) < 2 and abs(e["last"] - e["axisRight"]) < 2, (phase, e)
            assert e["axisRight"] - e["axisLeft"] > 500, e
            series = [s for s in data["backfill"] if s["step"].split(".")[0] == phase]
            batches = [b for s in series for b in s["batches"] if b["rows_per_s"] is not None]
            assert chart["points"] == len(batches) > 0
            assert chart["lines"] == sum(1 for s in series if any(b["rows_per_s"] is not None for b in s["batches"]))
            assert {s["table"] for s in series} <= set(chart["labels"])
            assert f"seconds since the first batch of {phase} started" in chart["labels"]
            assert "rows/s per batch" in chart["labels"]
        # The RLS check per table: the policies rewritten and the rows compared there.
        eq = data["rls_equivalence"]
        rls = {row[0]: row for row in page["rlsTable"] or []}
        assert set(rls) == set(eq["tables"]), page["rlsTable"]
        for table, rows in eq["rows_by_table"].items():
            assert rls[table][2] == str(rows) and rls[table][1], rls[table]
        assert sorted(p for row in rls.values() for p in row[1].split(", ")) == sorted(
            p["policy"] for p in data["rls_policies"])

        assert page["tables"] >= 10 and page["shownTables"] == page["tables"], page
        for heading in ("Phases", "Backfill throughput", "Row level security", "Contract gates"):
            assert heading in page["headings"]
        # The verdict block leads, drawn as one; the checks' statuses are coloured by what they mean.
        verdict = page["verdict"]
        assert verdict and verdict["above"] and verdict["bordered"] != "0px", verdict
        assert verdict["text"] == "Verdict: " + data["verdict"]["verdict"]
        assert page["backticks"] == [], page["backticks"]
        statuses = {text: (cls, color) for text, cls, color in page["statuses"]}
        assert statuses["passed"][0] == "st-passed" and statuses["passed"][1] == "rgb(21, 128, 61)"
        assert len(page["statuses"]) == len(data["checks"]) + len(data["contract_gates"])
        assert page["lists"] and page["lists"][0] == len(data["verdict"]["next"])

        metrics = browser.call("Page.getLayoutMetrics", session=session)
        height = min(int(metrics["cssContentSize"]["height"]), 12000)
        browser.call("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": height,
                                                            "deviceScaleFactor": 1, "mobile": False},
                     session=session)
        browser.call("Runtime.evaluate", {"expression": "window.scrollTo(0, 0)"}, session=session)
        png = base64.b64decode(browser.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 1280
    assert int.from_bytes(png[20:24], "big") == height > 1000
    shot = tmp_path / "report.png"
    shot.write_bytes(png)
    try:
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, ARTIFACT)
    except OSError:
        pass  # a read-only checkout: the copy under the test's tmp dir is the artifact
