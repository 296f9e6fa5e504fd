"""Rehearsal: copy a real database into the embedded Postgres and run the migration on the copy.

The source is only ever read: every connection to it (the preflight queries and pg_dump) runs
with default_transaction_read_only = on, and the copy is refused when the target would be the
source database itself. The dump and restore use the pg_dump and pg_restore bundled with the
embedded server, so the copy is made by the same major version that then runs it.

Supabase databases name roles the embedded server does not have (anon, authenticated,
service_role, supabase_admin, ...). They are created NOLOGIN in the target before the
restore, with the source's INHERIT and BYPASSRLS attributes and the memberships between
them, so the copy keeps its owners, grants and policies: row level security checks on the
copy then mean what they mean on the source.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgconverge import embedded
from pgconverge.connection import CONNECT_TIMEOUT_S, MarkedCursor, Target, own_terms, redact, refuse_transaction_pooler
from pgconverge.errors import PgConvergeError

DEFAULT_DATABASE = "pgconverge_rehearsal"
# Admin DSN of another server to copy into instead of the embedded one (used by the test suite).
TARGET_ENV = "PGCONVERGE_REHEARSE_TARGET"
READ_ONLY = "-c default_transaction_read_only=on"
STDERR_TAIL = 2000


class RehearsalError(PgConvergeError):
    """The rehearsal could not copy the source or could not start."""

    exit_code = 1


@dataclass(frozen=True)
class Role:
    name: str
    inherit: bool
    bypassrls: bool
    superuser: bool


@dataclass(frozen=True)
class ServerIdentity:
    """What tells two connections apart: cluster, postmaster start and database."""

    system_identifier: int | None
    started: str
    database: str
    database_oid: int
    version_num: int
    version: str

    def same_database(self, other: ServerIdentity) -> bool:
        same_cluster = (self.system_identifier == other.system_identifier
                        if self.system_identifier is not None and other.system_identifier is not None else True)
        return same_cluster and self.started == other.started and self.database == other.database \
            and self.database_oid == other.database_oid


@dataclass
class Source:
    """What the preflight read from the source."""

    dsn: str
    identity: ServerIdentity
    extensions: list[tuple[str, str]]  # (name, version)
    roles: list[Role]
    memberships: list[tuple[str, str]]  # (role, member)
    size_bytes: int


@dataclass
class Copy:
    """The result of dump and restore."""

    dsn: str
    database: str
    dump_bytes: int
    dump_seconds: float
    restore_seconds: float
    roles_created: list[str] = field(default_factory=list)
    extensions_skipped: list[str] = field(default_factory=list)
    restore_errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"database": self.database, "dsn": redact(self.dsn), "dump_bytes": self.dump_bytes,
                "dump_seconds": round(self.dump_seconds, 2), "restore_seconds": round(self.restore_seconds, 2),
                "roles_created": self.roles_created, "extensions_skipped": self.extensions_skipped,
                "restore_errors": self.restore_errors}


def bin_path(program: str) -> Path:
    """Path of PROGRAM (pg_dump, pg_restore) bundled with the embedded server."""
    embedded._pgserver()  # imports pgserver quietly
    from pgserver import _commands

    path = Path(_commands.POSTGRES_BIN_PATH) / program
    if not path.exists():
        raise RehearsalError(f"{program} is missing from the embedded Postgres ({path})",
                             fix="reinstall pgserver: `bash scripts/setup.sh`")
    return path


def tool_version(program: str = "pg_dump") -> tuple[int, str]:
    """(major version, full version string) of a bundled client program."""
    out = subprocess.run([str(bin_path(program)), "--version"], capture_output=True, text=True, check=True).stdout
    version = out.strip().split()[-1]
    return int(version.split(".")[0]), version


def read_only_dsn(dsn: str) -> str:
    """DSN with default_transaction_read_only = on added to its options (a DSN's options override PGOPTIONS)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise RehearsalError(f"--from is not a valid connection string: {exc}",
                             fix="use a URI like postgresql://user:password@host:5432/dbname") from exc
    params["options"] = " ".join(p for p in (params.get("options"), READ_ONLY) if p)
    return make_conninfo(**params)


def connect_source(dsn: str) -> psycopg.Connection:
    """A read-only connection to the source; unreachable sources raise RehearsalError."""
    try:
        conn = psycopg.connect(read_only_dsn(dsn), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                               application_name="pgconverge rehearse (read-only)", cursor_factory=MarkedCursor)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise RehearsalError(f"could not connect to the source {redact(dsn)}: {reason}",
                             fix="check that the server runs and that host, port, user, password and database "
                                 "are right (the source is only read)") from exc
    try:  # its reads of large tables and its dump's snapshot are not cut short by the source's timeouts
        refuse_transaction_pooler(conn, Target(read_only_dsn(dsn), "--from"))
        own_terms(conn, row_security=True)
    except BaseException:
        conn.close()
        raise
    return conn


def identity(conn: psycopg.Connection) -> ServerIdentity:
    try:
        with conn.transaction():
            sysid = conn.execute("select system_identifier from pg_control_system()").fetchone()[0]
    except psycopg.Error:
        sysid = None  # not granted on some hosted servers: the postmaster start time still tells servers apart
    started, db, oid, num, version = conn.execute(
        "select pg_postmaster_start_time()::text, current_database(), d.oid::int, "
        "current_setting('server_version_num')::int, current_setting('server_version') "
        "from pg_database d where d.datname = current_database()").fetchone()
    return ServerIdentity(sysid, started, db, oid, num, version)


# Every role the dump names: owners, grantees of privileges, policy roles, default privileges.
_ROLES_QUERY = """
with acl_roles as (
  select (aclexplode(relacl)).grantee as r from pg_class where relacl is not null
  union select (aclexplode(relacl)).grantor from pg_class where relacl is not null
  union select (aclexplode(attacl)).grantee from pg_attribute where attacl is not null
  union select (aclexplode(nspacl)).grantee from pg_namespace where nspacl is not null
  union select (aclexplode(proacl)).grantee from pg_proc where proacl is not null
  union select (aclexplode(typacl)).grantee from pg_type where typacl is not null
  union select (aclexplode(defaclacl)).grantee from pg_default_acl
  union select (aclexplode(lanacl)).grantee from pg_language where lanacl is not null
  union select (aclexplode(fdwacl)).grantee from pg_foreign_data_wrapper where fdwacl is not null
  union select (aclexplode(srvacl)).grantee from pg_foreign_server where srvacl is not null
  union select (aclexplode(lomacl)).grantee from pg_largeobject_metadata where lomacl is not null
  union select (aclexplode(datacl)).grantee from pg_database where datname = current_database()
), used as (
  select r from acl_roles
  union select relowner from pg_class
  union select nspowner from pg_namespace
  union select proowner from pg_proc
  union select typowner from pg_type
  union select unnest(polroles) from pg_policy
  union select defaclrole from pg_default_acl
  union select evtowner from pg_event_trigger
  union select pubowner from pg_publication
  union select srvowner from pg_foreign_server
  union select fdwowner from pg_foreign_data_wrapper
  union select lomowner from pg_largeobject_metadata
  union select collowner from pg_collation
  union select conowner from pg_conversion
  union select oprowner from pg_operator
  union select opcowner from pg_opclass
  union select opfowner from pg_opfamily
  union select stxowner from pg_statistic_ext
  union select cfgowner from pg_ts_config
  union select dictowner from pg_ts_dict
)
select a.rolname, a.rolinherit, a.rolbypassrls, a.rolsuper
from used join pg_roles a on a.oid = used.r
where a.rolname !~ '^pg_'
order by a.rolname
"""


def inspect_source(dsn: str) -> Source:
    """Read what the copy needs from the source, read-only."""
    with connect_source(dsn) as conn:
        ident = identity(conn)
        extensions = [tuple(r) for r in conn.execute(
            "select extname, extversion from pg_extension order by extname").fetchall()]
        roles = [Role(*r) for r in conn.execute(_ROLES_QUERY).fetchall()]
        names = [r.name for r in roles]
        memberships = [tuple(r) for r in conn.execute(
            "select r.rolname, m.rolname from pg_auth_members am join pg_roles r on r.oid = am.roleid "
            "join pg_roles m on m.oid = am.member where r.rolname = any(%s) and m.rolname = any(%s) "
            "order by 1, 2", (names, names)).fetchall()]
        size = conn.execute("select pg_database_size(current_database())").fetchone()[0]
    return Source(dsn, ident, extensions, roles, memberships, size)


def check_version(source: Source) -> None:
    """Refuse a source newer than the bundled pg_dump, which cannot dump it."""
    major, version = tool_version("pg_dump")
    if source.identity.version_num // 10000 > major:
        raise RehearsalError(
            f"the source runs PostgreSQL {source.identity.version}, newer than the embedded server's pg_dump "
            f"{version}: pg_dump cannot dump a server of a later major version",
            fix=f"rehearse on a staging copy made with that server's own tools, or against a PostgreSQL "
                f"{major} (or older) replica of the source")


def target_admin_dsn() -> tuple[str, str]:
    """(admin DSN of the server holding the copy, how it was chosen)."""
    if os.environ.get(TARGET_ENV):
        return os.environ[TARGET_ENV], f"${TARGET_ENV}"
    return embedded.ensure_running(database="postgres"), f"embedded ({embedded.data_dir()})"


def refuse_same_database(source: Source, admin_dsn: str, database: str) -> None:
    """Refuse a target that is the source database itself (same cluster, same database)."""
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        ident = identity(conn)
        oid = conn.execute("select oid::int from pg_database where datname = %s", (database,)).fetchone()
    if oid is None:
        return
    target = ServerIdentity(ident.system_identifier, ident.started, database, oid[0], ident.version_num,
                            ident.version)
    if source.identity.same_database(target):
        raise RehearsalError(
            f"the copy would be written over the source: database {database!r} on the target server is the "
            "source database itself",
            fix="pass --database with another name, or point the rehearsal at another server")


def missing_extensions(source: Source, admin_dsn: str) -> list[str]:
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        available = {r[0] for r in conn.execute("select name from pg_available_extensions").fetchall()}
    return [name for name, _ in source.extensions if name not in available]


def dump(source: Source, path: Path, exclude_schemas: tuple[str, ...] = (), extra_args: tuple[str, ...] = ()) -> float:
    """pg_dump the source (custom format) into PATH with a read-only session; return seconds.

    EXTRA_ARGS go to pg_dump as they are (the preflight passes --schema-only)."""
    params = conninfo_to_dict(read_only_dsn(source.dsn))
    env = dict(os.environ, PGOPTIONS=READ_ONLY, PGCONNECT_TIMEOUT=str(CONNECT_TIMEOUT_S))
    if params.get("password"):
        env["PGPASSWORD"] = params.pop("password")  # not on the command line, where ps would show it
    cmd = [str(bin_path("pg_dump")), "--format=custom", "--no-password", "--no-subscriptions",
           *(f"--exclude-schema={s}" for s in exclude_schemas), *extra_args, f"--file={path}",
           f"--dbname={make_conninfo(**params)}"]
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RehearsalError(f"pg_dump of the source failed (exit {res.returncode}):\n"
                             + res.stderr.strip()[-STDERR_TAIL:],
                             fix="the message above is pg_dump's own; the source was not changed")
    return time.monotonic() - t0


def create_database(admin_dsn: str, database: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    return embedded.with_database(admin_dsn, database)


def drop_database(admin_dsn: str, database: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


def create_missing_roles(source: Source, admin_dsn: str) -> list[str]:
    """Create the source's roles the target lacks, NOLOGIN, with their attributes and memberships."""
    created = []
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        present = {r[0] for r in conn.execute("select rolname from pg_roles").fetchall()}
        for role in source.roles:
            if role.name in present:
                continue
            # A superuser stays one (event triggers must be owned by one); NOLOGIN all the same.
            opts = (["NOLOGIN", "INHERIT" if role.inherit else "NOINHERIT"] + ["BYPASSRLS"] * role.bypassrls
                    + ["SUPERUSER"] * role.superuser)
            conn.execute(sql.SQL("CREATE ROLE {} " + " ".join(opts)).format(sql.Identifier(role.name)))
            created.append(role.name)
        for group, member in source.memberships:
            if group in created or member in created:
                conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(member)))
    return created


def _toc_without(dump_path: Path, list_path: Path, extensions: list[str]) -> None:
    """Write pg_restore's table of contents of DUMP_PATH less the entries of EXTENSIONS."""
    listed = subprocess.run([str(bin_path("pg_restore")), "--list", str(dump_path)], capture_output=True, text=True)
    if listed.returncode != 0:
        raise RehearsalError(f"pg_restore could not list the dump {dump_path}: {listed.stderr.strip()[-500:]}",
                             fix="the dump may be incomplete: run the rehearsal again; if it repeats, run pg_dump "
                                 "by hand against the source to see why")
    toc = listed.stdout.splitlines()
    drop = {f"EXTENSION - {e} " for e in extensions} | {f"COMMENT - EXTENSION {e} " for e in extensions}
    list_path.write_text("\n".join(line for line in toc
                                   if not any(d in line + " " for d in drop)) + "\n", encoding="utf-8")


def restore(dump_path: Path, target_dsn: str, skip_extensions: list[str]) -> tuple[float, list[str]]:
    """pg_restore DUMP_PATH into TARGET_DSN with owners and grants; return seconds and pg_restore's errors.

    Without extensions to leave out, any error aborts (one transaction, nothing half restored).
    With them, objects that need those extensions fail one by one and are returned as errors.
    """
    params = conninfo_to_dict(target_dsn)
    env = dict(os.environ)
    if params.get("password"):
        env["PGPASSWORD"] = params.pop("password")
    cmd = [str(bin_path("pg_restore")), "--no-password", "--no-tablespaces", "--no-security-labels",
           f"--dbname={make_conninfo(**params)}"]
    if skip_extensions:
        list_path = dump_path.with_suffix(".list")
        _toc_without(dump_path, list_path, skip_extensions)
        cmd.append(f"--use-list={list_path}")
    else:
        cmd += ["--exit-on-error", "--single-transaction"]
    t0 = time.monotonic()
    res = subprocess.run([*cmd, str(dump_path)], capture_output=True, text=True, env=env)
    seconds = time.monotonic() - t0
    errors = [line for line in res.stderr.splitlines() if "error:" in line and "errors ignored" not in line]
    if res.returncode != 0 and not skip_extensions:
        raise RehearsalError("pg_restore into the copy failed:\n" + res.stderr.strip()[-STDERR_TAIL:],
                             fix="the copy was left empty; the source was not changed. If an object needs "
                                 "something the embedded server lacks, see the message above")
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        conn.execute("analyze")  # statistics are not dumped; batch and index planning read them
    return seconds, errors


def make_copy(source: Source, admin_dsn: str, database: str, *, skip_missing_extensions: bool = False,
              exclude_schemas: tuple[str, ...] = (), on_stage=None) -> Copy:
    """Dump SOURCE and restore it as DATABASE on the server of ADMIN_DSN; return what was done."""
    say = on_stage or (lambda *_: None)
    refuse_same_database(source, admin_dsn, database)
    missing = missing_extensions(source, admin_dsn)
    if missing and not skip_missing_extensions:
        raise RehearsalError(
            "the source uses extensions the embedded server cannot create: " + ", ".join(missing),
            fix="pass --skip-missing-extensions to copy without them (objects that need them are left out and "
                "listed), or --exclude-schema for schemas that only those extensions use")
    with tempfile.TemporaryDirectory(prefix="pgconverge-rehearse-") as tmp:
        path = Path(tmp) / "source.dump"
        say("dump", f"pg_dump of {redact(source.dsn)} ({source.identity.version}, "
                    f"{source.size_bytes / 1e6:,.1f} MB on disk), read-only")
        dump_seconds = dump(source, path, exclude_schemas)
        size = path.stat().st_size
        say("dump", f"done: {size / 1e6:,.2f} MB in {dump_seconds:.1f}s")
        target_dsn = create_database(admin_dsn, database)
        roles = create_missing_roles(source, admin_dsn)
        if roles:
            say("restore", "created missing roles (NOLOGIN): " + ", ".join(roles))
        if missing:
            say("restore", "left out extensions the embedded server lacks: " + ", ".join(missing))
        restore_seconds, errors = restore(path, target_dsn, missing)
        say("restore", f"done: database {database} in {restore_seconds:.1f}s"
                       + (f", {len(errors)} objects could not be restored" if errors else ""))
    return Copy(target_dsn, database, size, dump_seconds, restore_seconds, roles, missing, errors)
