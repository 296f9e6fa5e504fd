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
            t.add_row(v["kind"], v["name"], ", ".join(v["columns"]) or "reads the legacy table")
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
    for w in data["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
