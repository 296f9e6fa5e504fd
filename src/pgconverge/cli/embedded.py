"""`pgconverge embedded`: the project's own Postgres."""

from __future__ import annotations

import typer

from pgconverge import embedded as emb
from pgconverge.cli.common import JsonOpt, console, fail_cleanly, print_json

app = typer.Typer(help="Manage the embedded Postgres kept in ./.pgconverge/pgdata "
                       "(or $PGCONVERGE_EMBEDDED_DIR). Commands without --dsn start it on demand.",
                  no_args_is_help=True)


@app.command()
@fail_cleanly
def status(as_json: JsonOpt = False) -> None:
    """Say whether the embedded server exists and runs, and where."""
    st = emb.status()
    if as_json:
        print_json(st.as_dict())
        return
    state = "running" if st.running else ("stopped" if st.initialized else "not created yet")
    console.print(f"embedded Postgres: [bold]{state}[/] (data directory {st.data_dir})", highlight=False)
    if st.running:
        console.print(f"pid {st.pid}, connect with: {st.uri}", highlight=False)


@app.command()
@fail_cleanly
def start(as_json: JsonOpt = False) -> None:
    """Start the embedded server (creating it on first use) and print its URL."""
    uri = emb.ensure_running(database="postgres")
    print_json({"uri": uri}) if as_json else print(uri)


@app.command()
@fail_cleanly
def url(as_json: JsonOpt = False) -> None:
    """Print the connection URL of the embedded server, starting it if needed."""
    start(as_json=as_json)


@app.command()
@fail_cleanly
def stop(as_json: JsonOpt = False) -> None:
    """Stop the embedded server; its data stays for the next start."""
    stopped = emb.stop()
    if as_json:
        print_json({"stopped": stopped})
    else:
        console.print("stopped" if stopped else "the embedded server was not running")
