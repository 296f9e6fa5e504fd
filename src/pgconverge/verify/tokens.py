"""Act as an API caller inside a transaction: a role plus JWT claims, as PostgREST publishes them."""

from __future__ import annotations

import json
import re

import psycopg

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def act_as(conn: psycopg.Connection, claims: dict | None, role: str = "authenticated",
           clear: tuple[str, ...] = ()) -> None:
    """SET LOCAL role and claims (the JSON setting and one setting per claim, for every helper style).

    CLEAR names per-claim settings to blank first, so claims of an earlier identity in the same
    transaction cannot leak into this one. claims=None acts as the anonymous role.

    Also turns `row_security` on for the transaction: pgconverge's own sessions run with it off (so a
    policy can never hide rows from the tool, see connection.py), but acting as an application role is
    exactly to have the policies filter, as they do for the application.
    """
    if claims is None:
        claims, role = {}, "anon"
    payload = {"role": role, **claims}
    settings = {name: "" for name in clear}
    settings.update({k: json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in payload.items()
                     if _PLAIN.match(k)})
    names = ["request.jwt.claims", *(f"request.jwt.claim.{k}" for k in settings), "row_security", "role"]
    values = [json.dumps(payload, default=str), *settings.values(), "on", role]
    conn.execute("select pg_catalog.set_config(n, v, true) from unnest(%s::text[], %s::text[]) as t(n, v)",
                 (names, values))


def reset(conn: psycopg.Connection) -> None:
    conn.execute("reset role")
