"""`pgconverge inventory`: what references the legacy table, its key or its helper."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from pgconverge import inventory as inv
from pgconverge.catalog.introspect import load_catalog
from pgconverge.cli.common import ConfigOpt, DsnOpt, JsonOpt, console, fail_cleanly, load_spec, print_json, target
from pgconverge.connection import connect
from pgconverge.execution import privileges


@fail_cleanly
def inventory(dsn: DsnOpt = None, config_file: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List every foreign key, index, policy, function, view, trigger and grant that involves the legacy table.

    Nothing is changed. Policies are found from the dependencies Postgres records, so a policy
    that reaches a legacy column through a sub-query (cart_items via carts) is listed too.
    """
    spec = load_spec(config_file)
    with connect(target(dsn)) as conn:
        cat = load_catalog(conn, spec)
        data = inv.build(spec, cat)
        data["claims"] = inv.claims(spec, cat, _claim_functions(conn, cat))
        # Whether the role connected here sees every row pgconverge must read and write: a finding, not a
        # failure (`run` refuses, with the same fix, until it does).
        verdict = privileges.inspect(conn, privileges.tables_of(cat))
    data["row_security"] = verdict.as_dict()
    if not verdict.ok:
        data["warnings"].append(f"{verdict.problem()}; fix: {verdict.fix()}")
    if as_json:
        print_json(data)
    else:
        render(data)


def _claim_functions(conn, cat) -> list:
    """The helpers, the functions the policies call, and every function those call (as they are now)."""
    from pgconverge.catalog.introspect import callees
    from pgconverge.catalog.model import Function
    from pgconverge.config import QualifiedName

    exprs = [e for p in cat.policies for e in (p.using, p.with_check) if e]
    # One SQL body holding every policy expression stands for "the policies" when asking what they call.
    root = Function(QualifiedName("pg_temp", "policies"), "", "", "void", "sql", "s", False, (),
                    "select " + ", ".join(f"({e})" for e in exprs) if exprs else "", "")
    known = [f for f in (cat.legacy_helper, cat.canonical_helper, *cat.helper_callees, *cat.functions) if f]
    return known + callees(conn, [root, *known])


def _render_claims(c: dict) -> None:
    t = Table(title="JWT claims the policies and their functions read", title_justify="left")
    for col in ("policy or function", "claims (where they are read)"):
        t.add_column(col, overflow="fold")
    for p in c["policies"]:
        t.add_row(f"policy {p['name']} on {p['table']}",
                  ", ".join(f"{x['claim']} ({x['via']})" for x in p["claims"]))
    for f in c["functions"]:
        t.add_row(f"function {f['function']}", "; ".join(
            [", ".join(f"{x['claim']} ({x['via']})" for x in f["claims"])] * bool(f["claims"])
            + ["the claim named by its argument"] * f["claim_from_argument"]))
    console.print(t)
    console.print(f"claims read: {escape(', '.join(c['read']) or '(none found)')}; the RLS check's tokens carry "
                  f"the identity ({escape(', '.join(c['identity']))}) and migration.token_claims", highlight=False)
    console.print(f"pgconverge uses: [bold]{escape(c['token_claims_line'])}[/]", highlight=False)
    if c["missing"]:
        console.print(f"[yellow]read but carried by no test token:[/] {escape(', '.join(c['missing']))}; if the "
                      "identities' own rows depend on them, give them the value the application's tokens carry: "
                      f"[bold]{escape(c['suggested_line'])}[/]", highlight=False)
    if c["unused"]:
        console.print(f"configured but read by no policy or function: {escape(', '.join(c['unused']))}",
                      highlight=False)


def render(data: dict) -> None:
    """Print the inventory as Rich tables."""
    lg, cn = data["legacy"], data["canonical"]
    console.print(f"[bold]Inventory of {data['database']}[/] (server {data['server_version']})")
    console.print(f"legacy    {lg['table']} key {lg['key']} ({lg['key_type']}), match on {lg['match_column']}, "
                  f"~{lg['rows_estimate']} rows")
    console.print(f"canonical {cn['table']} key {cn['key']} ({cn['key_type']}), match on {cn['match_column']}, "
                  f"~{cn['rows_estimate']} rows")

    t = Table(title="Foreign keys to the legacy key", title_justify="left")
    for col in ("table", "column", "nullable", "on delete", "constraint", "indexes containing the column"):
        t.add_column(col, overflow="fold")
    for fk in data["foreign_keys"]:
        t.add_row(fk["table"], f"{fk['column']} {fk['column_type']}", "yes" if fk["nullable"] else "NOT NULL",
                  fk["on_delete"], fk["name"], "\n".join(i["name"] for i in fk["indexes"]) or "[yellow]none[/]")
    console.print(t)

    t = Table(title="RLS policies that depend on legacy names", title_justify="left")
    for col in ("table", "policy", "command", "roles", "why"):
        t.add_column(col, overflow="fold")
    for p in data["policies"]:
        why = "\n".join(f"{r['kind']} {r['name']}" + (f" ({r['via']})" if "via" in r else "") for r in p["reasons"])
        t.add_row(p["table"], p["name"], p["command"], ", ".join(p["roles"]), why)
    console.print(t)

    if data["functions"] or data["views"] or data["triggers"]:
        t = Table(title="Functions, views and triggers", title_justify="left")
        for col in ("kind", "name", "why"):
            t.add_column(col, overflow="fold")
        for f in data["functions"]:
            t.add_row("function", f["signature"], f["role"] + ": " + ", ".join(m["name"] for m in f["mentions"]))
        for v in data["views"]:
            t.add_row(v["kind"], v["name"], "reads " + ", ".join(v["reads"]))
        for trg in data["triggers"]:
            t.add_row("trigger", f"{trg['name']} on {trg['table']}", "; ".join(trg["reasons"]))
        console.print(t)

    t = Table(title="Row level security and API grants", title_justify="left")
    for col in ("table", "role", "RLS", "policies"):
        t.add_column(col, overflow="fold")
    for r in data["rls"]:
        t.add_row(r["table"], r["role"], ("on" if r["enabled"] else "[red]off[/]") + (", forced" if r["forced"] else ""),
                  str(r["policies"]))
    console.print(t)
    grants: dict[str, list[str]] = {}
    for g in data["grants"]:
        grants.setdefault(f"{g['grantee']}", []).append(f"{g['object']} ({', '.join(g['privileges'])})")
    for role, objs in sorted(grants.items()):
        console.print(f"[bold]{role}[/] may use: " + "; ".join(objs), highlight=False)
    rs = data.get("row_security")
    if rs is not None:
        how = ("superuser" if rs["superuser"] else "BYPASSRLS" if rs["bypassrls"] else
               "it owns each table with row level security, none forced, or RLS is off")
        console.print(f"connected as [bold]{escape(rs['role'])}[/]: " + (
            f"sees every row ({how})" if rs["ok"] else
            "[red]row level security hides rows from it[/] on " + ", ".join(t["table"] for t in rs["tables"])
            + " (see the warning below)"), highlight=False)
    for f in data.get("dependent_objects", ()):
        color = {"refused": "red", "mirrored": "green"}.get(f["action"], "yellow")
        console.print(f"[{color}]{f['action']}[/] {escape(f['object'])}: {escape(f['detail'])}"
                      + (f" — fix: {escape(f['fix'])}" if f.get("fix") else ""), highlight=False)
    if data.get("claims"):
        _render_claims(data["claims"])
    for w in data["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
