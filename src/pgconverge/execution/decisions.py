"""Manual identity decisions from a CSV: validated as a whole, then written to the mapping in one transaction."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from pgconverge.catalog.model import Catalog
from pgconverge.config import Spec
from pgconverge.errors import PgConvergeError
from pgconverge.execution.sql import ident, qn
from pgconverge.planning.align import legacy_key, names


@dataclass(frozen=True)
class DecisionResult:
    rows: int
    new: int
    changed: list[tuple[str, str, str]]  # legacy id, previous canonical id, new canonical id
    unchanged: int
    sha256: str


def read_csv(path: Path, spec: Spec) -> list[tuple[str, str]]:
    """Read (legacy id, canonical id) pairs; the header names the two columns."""
    legacy_col, canonical_col = spec.mapping_legacy_column, spec.migration.new_column
    if not path.exists():
        raise PgConvergeError(f"decisions file {path} does not exist",
                              fix=f"write a CSV with the header {legacy_col},{canonical_col}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if legacy_col not in header or canonical_col not in header:
            raise PgConvergeError(
                f"{path}: the header must name the columns {legacy_col!r} and {canonical_col!r}, found {header}",
                fix=f"put `{legacy_col},{canonical_col}` on the first line")
        pairs, seen = [], {}
        for n, row in enumerate(reader, start=2):
            lid, cid = (row.get(legacy_col) or "").strip(), (row.get(canonical_col) or "").strip()
            if not lid or not cid:
                raise PgConvergeError(f"{path}:{n}: both {legacy_col} and {canonical_col} need a value",
                                      fix="fill in or remove that line")
            if lid in seen and seen[lid] != cid:
                raise PgConvergeError(f"{path}:{n}: {legacy_col} {lid} is decided twice ({seen[lid]} and {cid})",
                                      fix="keep one line per legacy row")
            seen[lid] = cid
            pairs.append((lid, cid))
    return pairs


def check(conn: psycopg.Connection, spec: Spec, cat: Catalog, pairs: list[tuple[str, str]]) -> None:
    """Validate every pair against the database and change nothing: before the mapping table is made for them."""
    try:
        with conn.transaction():
            _validate(conn, spec, cat, pairs)
            raise psycopg.Rollback()
    except psycopg.DataError as exc:  # a value that does not cast, on servers without pg_input_is_valid
        raise PgConvergeError(f"decisions: {str(exc).strip()}", fix="correct the ids in the file") from exc


def apply(conn: psycopg.Connection, spec: Spec, cat: Catalog, pairs: list[tuple[str, str]],
          digest: str) -> DecisionResult:
    """Validate every pair against the database, then upsert them as method 'manual'; all or nothing."""
    n = names(spec)
    lk_type = cat.legacy.column(spec.legacy.key).value_type
    ck_type = cat.canonical.column(spec.canonical.key).value_type
    mlc, mcc = ident(spec.mapping_legacy_column), ident(spec.migration.new_column)
    try:
        return _apply(conn, spec, cat, pairs, digest, n, lk_type, ck_type, mlc, mcc)
    except psycopg.DataError as exc:  # a value that does not cast, on servers without pg_input_is_valid
        raise PgConvergeError(f"decisions: {str(exc).strip()}", fix="correct the ids in the file") from exc


def _validate(conn, spec, cat, pairs) -> None:
    """Load PAIRS into a temporary table (dropped at commit) and refuse ids that are not valid or name no row."""
    lk_type = cat.legacy.column(spec.legacy.key).value_type
    ck_type = cat.canonical.column(spec.canonical.key).value_type
    conn.execute("create temp table pgconverge_decisions (line int, lid text, cid text) on commit drop")
    with conn.cursor().copy("copy pgconverge_decisions from stdin") as cp:
        for i, (lid, cid) in enumerate(pairs, start=2):
            cp.write_row((i, lid, cid))
    for col, typ, what in (("lid", lk_type, "legacy"), ("cid", ck_type, "canonical")):
        bad = conn.execute(sql.SQL(
            "select line, {c} from pgconverge_decisions where pg_input_is_valid({c}, {t}) is not true "
            "order by line limit 5").format(c=sql.Identifier(col), t=sql.Literal(typ))).fetchall() \
            if cat.server_version >= 160000 else []
        if bad:
            raise PgConvergeError(
                f"decisions: {what} ids that are not valid {typ}: "
                + ", ".join(f"line {line}: {v!r}" for line, v in bad), fix="correct those lines")
    missing = conn.execute(sql.SQL(
        "select d.line, d.lid, 'legacy' from pgconverge_decisions d where not exists "
        "(select 1 from {lt} l where l.{lk} = d.lid::{lty}) union all "
        "select d.line, d.cid, 'canonical' from pgconverge_decisions d where not exists "
        "(select 1 from {ct} c where c.{ck} = d.cid::{cty}) order by 1 limit 10").format(
        lt=qn(cat.legacy.name), lk=ident(spec.legacy.key), lty=sql.SQL(lk_type), ct=qn(cat.canonical.name),
        ck=ident(spec.canonical.key), cty=sql.SQL(ck_type))).fetchall()
    if missing:
        raise PgConvergeError(
            "decisions name rows that do not exist: "
            + ", ".join(f"line {line}: {kind} id {v}" for line, v, kind in missing),
            fix=f"check the ids against {cat.legacy.name} and {cat.canonical.name}")


def _apply(conn, spec, cat, pairs, digest, n, lk_type, ck_type, mlc, mcc) -> DecisionResult:
    with conn.transaction():
        _validate(conn, spec, cat, pairs)
        before = dict(conn.execute(sql.SQL(
            "select m.{mlc}::text, m.{mcc}::text from {m} m join pgconverge_decisions d on m.{mlc} = d.lid::{lty}"
        ).format(mlc=mlc, mcc=mcc, m=qn(n["mapping"]), lty=sql.SQL(lk_type))).fetchall())
        conn.execute(sql.SQL(
            "insert into {m} as m ({mlc}, {mcc}, method, match_key) "
            "select d.lid::{lty}, d.cid::{cty}, 'manual', {lkey} from pgconverge_decisions d "
            "join {lt} l on l.{lk} = d.lid::{lty} "
            "on conflict ({mlc}) do update set {mcc} = excluded.{mcc}, method = 'manual', "
            "match_key = excluded.match_key, decided_at = clock_timestamp()").format(
            m=qn(n["mapping"]), mlc=mlc, mcc=mcc, lty=sql.SQL(lk_type), cty=sql.SQL(ck_type),
            lkey=legacy_key(spec, cat, "l"), lt=qn(cat.legacy.name),
            lk=ident(spec.legacy.key)))
    changed = [(lid, before[lid], cid) for lid, cid in pairs if lid in before and before[lid] != cid]
    unchanged = sum(1 for lid, cid in pairs if lid in before and before[lid] == cid)
    return DecisionResult(len(pairs), len(pairs) - len(before), changed, unchanged, digest)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
