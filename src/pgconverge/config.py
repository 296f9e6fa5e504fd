"""Spec: pgconverge.toml turned into validated, frozen dataclasses.

Only the file's shape and values are checked here; whether the named objects exist
is checked against the catalog by `catalog.introspect.load_catalog`.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import phonenumbers

from pgconverge.errors import ConfigError

DEFAULT_FILE = "pgconverge.toml"
MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1: Postgres would silently truncate longer names


@dataclass(frozen=True, order=True)
class QualifiedName:
    """A schema-qualified object name, kept as its two unquoted parts."""

    schema: str
    name: str

    def __str__(self) -> str:
        return f"{show_identifier(self.schema)}.{show_identifier(self.name)}"


def show_identifier(part: str) -> str:
    """PART as the configuration and messages spell it: bare when it can be, else double-quoted (capitals, other
    characters). The one spelling: configuration values (accept_policies, rls_hidden_from_owners) are compared
    with it."""
    simple = part.isidentifier() and part == part.lower() and part.isascii()
    return part if simple else '"' + part.replace('"', '""') + '"'


MATCH_KINDS = ("phone", "email", "exact")
UNMATCHED_RULES = ("auto", "create", "refuse")


@dataclass(frozen=True)
class LegacySide:
    table: QualifiedName = QualifiedName("public", "customers")
    key: str = "id"
    # one column, or several matched together (a tuple); `match` is one kind for all or one per column
    match_column: str | tuple[str, ...] = "wa_id"
    match: str | tuple[str, ...] = "phone"
    # The function the RLS policies call for the caller's legacy id; None (legacy.helper = "") where the database
    # has none: no policy identifies the caller, the application filters by user itself.
    helper: QualifiedName | None = QualifiedName("public", "auth_customer_id")
    claim: str = "customer_id"

    @property
    def match_columns(self) -> tuple[str, ...]:
        return _as_tuple(self.match_column)

    @property
    def match_kinds(self) -> tuple[str, ...]:
        kinds = _as_tuple(self.match)
        return kinds * len(self.match_columns) if len(kinds) == 1 else kinds


@dataclass(frozen=True)
class CanonicalSide:
    table: QualifiedName = QualifiedName("public", "profiles")
    key: str = "user_id"
    match_column: str | tuple[str, ...] = "whatsapp_e164"
    helper: QualifiedName | None = QualifiedName("public", "auth_profile_id")  # None where legacy.helper is ""
    claim: str = "profile_id"
    # legacy column -> canonical column, copied when a canonical row is created for a legacy row
    copy_columns: tuple[tuple[str, str], ...] = (("display_name", "display_name"),)

    @property
    def match_columns(self) -> tuple[str, ...]:
        return _as_tuple(self.match_column)


@dataclass(frozen=True)
class Settings:
    new_column: str = "profile_id"
    mapping_table: str = ""  # default: legacy_<legacy singular>_<canonical singular>, e.g. legacy_customer_profile
    private_schema: str = "pgconverge"
    archive_schema: str = "archive"
    default_region: str = "RW"
    # Legacy rows whose match value is NULL, empty or unreadable: "create" a canonical row each, "refuse"
    # to start (plan lists them), or "auto": create unless such a row would break a canonical constraint.
    unmatched: str = "auto"
    batch_size: int = 1000
    batch_pause_ms: int = 0
    # Connections that backfill one table at once, each over its own key ranges (1: one at a time).
    backfill_workers: int = 1
    max_replica_lag_ms: int = 0  # batches pause while a streaming replica lags more than this (0: off)
    lock_timeout_ms: int = 100
    lock_retries: int = 30
    api_roles: tuple[str, ...] = ("anon", "authenticated", "service_role")
    legacy_helper_after_contract: str = "stub"  # or "drop"
    # RLS equivalence: how many identities to check (0 = all), and the claims every token carries
    # besides the identity claim (the application's own role claim, say).
    rls_sample: int = 50
    token_claims: tuple[tuple[str, str], ...] = (("app_role", "customer"),)
    # Application identifiers the code audit reports, with the name to use instead; and more legacy
    # column names it reports besides the foreign-key column (a denormalized copy in JSON, say).
    code_helpers: tuple[tuple[str, str], ...] = (("ensureCustomer", "ensureProfile"),)
    code_columns: tuple[str, ...] = ()
    # Policies the switch may leave as they are although it cannot rewrite them with certainty,
    # as "schema.table.policy"; the user takes care of them.
    accept_policies: tuple[str, ...] = ()
    # The new column of a reference, where the naming rule (planning/references.py) does not suit:
    # ((schema, table, legacy column), new column) pairs, from { "schema.table.column" = "new" }.
    new_columns: tuple[tuple[tuple[str, str, str], str], ...] = ()
    # Views and materialized views that read a legacy column or the legacy table, as "schema.view", that the
    # user drops or re-creates before contract (plan refuses the others; contract refuses while any remains).
    accept_views: tuple[str, ...] = ()
    # Canonical columns whose default reads who is calling (auth.uid(), say) that rows align creates may take from
    # the writer of the legacy row: the user says every legacy row is written by the person it is for.
    accept_caller_defaults: tuple[str, ...] = ()
    # Compared tables whose policies are meant to hide an owner's own rows from the owner's token (readable only
    # with an admin claim, insert-only), as "schema.table": the RLS check does not fail them as proving nothing,
    # and its verdict names them as not proven.
    rls_hidden_from_owners: tuple[str, ...] = ()
    # Seconds that must pass between the runtime baseline (taken by the switch, or again by
    # `audit runtime --rebaseline`) and contract, so that old code has had the time to show itself.
    observation_window: float = 900.0


@dataclass(frozen=True)
class Spec:
    legacy: LegacySide = field(default_factory=LegacySide)
    canonical: CanonicalSide = field(default_factory=CanonicalSide)
    migration: Settings = field(default_factory=Settings)
    source: str = "built-in defaults"

    @property
    def mapping_table(self) -> QualifiedName:
        name = self.migration.mapping_table or f"legacy_{_singular(self.legacy.table.name)}_{_singular(self.canonical.table.name)}"
        return QualifiedName(self.migration.private_schema, name)

    @property
    def mapping_legacy_column(self) -> str:
        """The mapping's legacy-id column, named as a dependent table would name its FK (customer_id)."""
        return f"{_singular(self.legacy.table.name)}_id"

    @property
    def has_helper(self) -> bool:
        """Whether the database has an RLS identity helper (legacy.helper is not "")."""
        return self.legacy.helper is not None

    def as_dict(self) -> dict:
        def conv(v: Any) -> Any:
            if v is None:
                return ""
            if isinstance(v, QualifiedName):
                return str(v)
            if isinstance(v, tuple):
                return [conv(x) for x in v]
            return v

        out: dict[str, Any] = {}
        for section in ("legacy", "canonical", "migration"):
            obj = getattr(self, section)
            out[section] = {f.name: conv(getattr(obj, f.name)) for f in fields(obj)}
        out["canonical"]["copy_columns"] = {a: b for a, b in self.canonical.copy_columns}
        out["migration"]["token_claims"] = dict(self.migration.token_claims)
        out["migration"]["code_helpers"] = dict(self.migration.code_helpers)
        out["migration"]["new_columns"] = {".".join(show_identifier(p) for p in k): v for k, v in self.migration.new_columns}
        return out


# --- parsing -----------------------------------------------------------------------------------

_SECTIONS = {"legacy": LegacySide, "canonical": CanonicalSide, "migration": Settings}
_QUALIFIED = {"table", "helper"}
_IDENT = {"key", "new_column", "private_schema", "archive_schema", "mapping_table"}
_CLAIM = {"claim"}
_CODE_NAME = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_POSITIVE_INT = {"batch_size": (1, 1_000_000), "lock_timeout_ms": (1, 60_000), "lock_retries": (0, 10_000),
                 "batch_pause_ms": (0, 600_000), "rls_sample": (0, 1_000_000), "backfill_workers": (1, 64),
                 "max_replica_lag_ms": (0, 3_600_000)}


def load(path: str | Path | None = None) -> Spec:
    """Read and validate PATH (or ./pgconverge.toml if present, else the defaults)."""
    if path is None:
        default = Path.cwd() / DEFAULT_FILE
        if not default.exists():
            return Spec()
        path = default
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist",
                          fix=f"create it, or omit --config to use ./{DEFAULT_FILE} or the built-in defaults")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", fix="correct the syntax at the position shown") from exc
    return from_dict(data, source=str(path))


def from_dict(data: dict[str, Any], source: str = "<dict>") -> Spec:
    """Validate a parsed config mapping and build the Spec."""
    for section in data:
        if section not in _SECTIONS:
            raise ConfigError(f"{source}: unknown section [{section}]",
                              fix=f"use only {', '.join(f'[{s}]' for s in _SECTIONS)}{_suggest(section, _SECTIONS)}")
        if not isinstance(data[section], dict):
            raise ConfigError(f"{source}: {section} must be a table ([{section}]), got {data[section]!r}",
                              fix=f"write it as a [{section}] section with key = value lines")
    parts: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        given = data.get(section, {})
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in given.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown key {section}.{key}",
                                  fix=f"valid keys in [{section}] are {', '.join(known)}{_suggest(key, known)}")
            kwargs[key] = _value(source, section, key, value)
        parts[section] = cls(**kwargs)
    spec = Spec(**parts, source=source)
    spec = _no_helper(spec, data)
    _cross_check(spec)
    return spec


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _bad(source: str, section: str, key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{source}: {section}.{key} = {value!r} is invalid: expected {expected}",
                       fix=f"set {section}.{key} to {expected}, or remove it to use the default")


def _value(source: str, section: str, key: str, value: Any) -> Any:
    where = (source, section, key, value)
    if key == "helper" and value == "":
        return None  # no RLS identity helper in this database (legacy.helper = "")
    if key in _QUALIFIED:
        if not isinstance(value, str):
            raise _bad(*where, "a string like \"public.customers\"")
        try:
            return parse_qualified(value)
        except ValueError as exc:
            raise _bad(*where, f"a schema-qualified name like \"public.customers\" ({exc})") from None
    if key in _IDENT or key in _CLAIM:
        if not isinstance(value, str):
            raise _bad(*where, "a string")
        try:
            check_identifier(value)
        except ValueError as exc:
            raise _bad(*where, f"a valid Postgres identifier ({exc})") from None
        return value
    if key in _POSITIVE_INT:
        lo, hi = _POSITIVE_INT[key]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise _bad(*where, f"an integer from {lo} to {hi}")
        return value
    if key == "default_region":
        if not isinstance(value, str) or value.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise _bad(*where, "an ISO 3166 two-letter region known to phonenumbers, such as \"RW\" or \"GB\"")
        return value.upper()
    if key == "copy_columns":
        return _copy_columns(where, value)
    if key == "match_column":
        names = value if isinstance(value, list) else [value]
        if not names or not all(isinstance(v, str) for v in names) or len(set(names)) < len(names):
            raise _bad(*where, "a column name, or a list of distinct column names matched together")
        _identifiers(where, names, "valid column names")
        return names[0] if isinstance(value, str) else tuple(names)
    if key == "match":
        kinds = value if isinstance(value, list) else [value]
        if not kinds or not all(k in MATCH_KINDS for k in kinds):
            raise _bad(*where, " or ".join(f'"{k}"' for k in MATCH_KINDS) + " (or a list of them, one per column)")
        return kinds[0] if isinstance(value, str) else tuple(kinds)
    if key == "unmatched":
        if value not in UNMATCHED_RULES:
            raise _bad(*where, '"auto" (create a canonical row unless it would be invalid, else refuse), '
                               '"create" or "refuse"')
        return value
    if key == "api_roles":
        if not isinstance(value, list) or not value or not all(isinstance(r, str) for r in value):
            raise _bad(*where, "a non-empty list of role names")
        _identifiers(where, value, "a list of valid role names")
        return tuple(value)
    if key == "token_claims":
        if not isinstance(value, dict) or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                                  for v in value.values()):
            raise _bad(*where, "a table of claim names to string or integer values, e.g. { app_role = \"customer\" }")
        return tuple((str(k), str(v)) for k, v in value.items())
    if key == "code_helpers":
        if not isinstance(value, dict) or not all(isinstance(v, str) and v and _CODE_NAME.match(k) and
                                                  _CODE_NAME.match(v) for k, v in value.items()):
            raise _bad(*where, "a table of application identifiers to their replacements, e.g. "
                               "{ ensureCustomer = \"ensureProfile\" }")
        return tuple(value.items())
    if key == "code_columns":
        if not isinstance(value, list) or not all(isinstance(v, str) and _CODE_NAME.match(v) for v in value):
            raise _bad(*where, "a list of column names, e.g. [\"customer_ref\"]")
        return tuple(value)
    if key == "accept_views":
        if not isinstance(value, list) or not all(isinstance(v, str) and "." in v for v in value):
            raise _bad(*where, "a list of \"schema.view\" names")
        return tuple(value)
    if key == "accept_caller_defaults":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise _bad(*where, "a list of column names of the canonical table, e.g. [\"owner_id\"]")
        return tuple(value)
    if key == "rls_hidden_from_owners":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _bad(*where, "a list of \"schema.table\" names")
        try:
            return tuple(str(parse_qualified(v)) for v in value)
        except ValueError as exc:
            raise _bad(*where, f"a list of \"schema.table\" names ({exc})") from None
    if key == "accept_policies":
        if not isinstance(value, list) or not all(isinstance(v, str) and v.count(".") >= 2 for v in value):
            raise _bad(*where, "a list of \"schema.table.policy\" names")
        return tuple(value)
    if key == "new_columns":
        return _new_columns(where, value)
    if key == "observation_window":
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ConfigError(
                f"{source}: {section}.{key} = {value!r} is invalid: {exc}",
                fix=f"set {section}.{key} to a number of seconds (900) or a duration such as \"15m\", \"1h30m\" "
                    f"or \"45s\", at most {MAX_OBSERVATION_WINDOW_S // 86400} days; 0 lets contract follow the "
                    "switch at once; or remove it to use the default (15 minutes)") from None
    if key == "legacy_helper_after_contract":
        if value not in ("stub", "drop"):
            raise _bad(*where, "\"stub\" (replace by a function that raises a clear error) or \"drop\"")
        return value
    raise AssertionError(f"unhandled config key {section}.{key}")  # every field is typed above


MAX_OBSERVATION_WINDOW_S = 30 * 86400
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(d|h|min|ms|m|s)?\s*", re.IGNORECASE)
_DURATION_UNIT_S = {"d": 86400.0, "h": 3600.0, "min": 60.0, "m": 60.0, "s": 1.0, "ms": 0.001, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or a string such as "15m", "1h30m", "90s", "2 h" (ValueError if not)."""
    if isinstance(value, bool):
        raise ValueError("expected a number of seconds or a duration string, not a boolean")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text, pos, seconds, parts = value.strip(), 0, 0.0, 0
        while pos < len(text):
            m = _DURATION_PART.match(text, pos)
            if m is None or m.end() == pos:
                raise ValueError(f"cannot read {text[pos:]!r} as a duration (units: d, h, m or min, s, ms)")
            unit = m.group(2).lower() if m.group(2) else None
            if unit is None and m.end() < len(text):
                raise ValueError(f"{text[m.end():]!r} after {m.group(1)} is not a unit (d, h, m or min, s, ms)")
            seconds += float(m.group(1)) * _DURATION_UNIT_S[unit]
            pos, parts = m.end(), parts + 1
        if not parts:
            raise ValueError("empty duration")
    else:
        raise ValueError(f"expected a number of seconds or a duration string, got {type(value).__name__}")
    if not 0 <= seconds <= MAX_OBSERVATION_WINDOW_S:
        raise ValueError(f"{seconds:g} seconds is outside 0 to {MAX_OBSERVATION_WINDOW_S} seconds "
                         f"({MAX_OBSERVATION_WINDOW_S // 86400} days)")
    return seconds


def format_duration(seconds: float) -> str:
    """SECONDS the way a person reads them: "15 min", "1 h 30 min", "3 s", "2.5 s"."""
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.0f} s" if s >= 10 or s == int(s) else f"{s:.1f} s"
    out, rest = [], round(s)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size} {unit}")
            rest %= size
    return " ".join(out)


def _identifiers(where: tuple, names: list[str], expected: str) -> None:
    """Refuse the first of NAMES that cannot be an identifier, saying which and why."""
    for n in names:
        try:
            check_identifier(n)
        except ValueError as exc:
            raise _bad(*where, f"{expected} ({n!r}: {exc})") from None


def _copy_columns(where: tuple, value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, list):
        pairs = [(v, v) for v in value]
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        raise _bad(*where, "a list of column names, or a table {legacy_column = \"canonical_column\"}")
    out = []
    for a, b in pairs:
        if not isinstance(a, str) or not isinstance(b, str):
            raise _bad(*where, "column names as strings")
        for n in (a, b):
            try:
                check_identifier(n)
            except ValueError as exc:
                raise _bad(*where, f"valid column names ({n!r}: {exc})") from None
        out.append((a, b))
    return tuple(out)


def _new_columns(where: tuple, value: Any) -> tuple[tuple[tuple[str, str, str], str], ...]:
    expected = ('a table of "schema.table.column" (a foreign key to the legacy key) to the name of its new column, '
                'e.g. { "public.transfers.buyer_id" = "buyer_profile_id" }')
    if not isinstance(value, dict):
        raise _bad(*where, expected)
    out = []
    for k, v in value.items():
        if not isinstance(v, str):
            raise _bad(*where, expected)
        try:
            parts = _dotted(k)
            if len(parts) != 3:
                raise ValueError(f"{k!r} has {len(parts)} dotted part(s), not schema.table.column")
            check_identifier(v)
        except ValueError as exc:
            raise _bad(*where, f"{expected} ({exc})") from None
        out.append((tuple(parts), v))
    # One name for two references of one table would be one column; on two tables it is two columns, as the
    # default rule (migration.new_column) makes them.
    news = [(k[0], k[1], v) for k, v in out]
    dup = sorted({f"{v!r} on {s}.{t}" for s, t, v in news if news.count((s, t, v)) > 1})
    if dup:
        raise _bad(*where, f"{expected}, each new column of a table named once ({', '.join(dup)} is given twice)")
    return tuple(out)


def _as_tuple(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _no_helper(spec: Spec, data: dict[str, Any]) -> Spec:
    """Without a legacy helper (legacy.helper = ""), there is no canonical helper either."""
    if spec.legacy.helper is not None:
        if spec.canonical.helper is None:
            raise ConfigError(f"{spec.source}: canonical.helper = \"\" but legacy.helper names "
                              f"{spec.legacy.helper}: the switch derives the canonical helper from the legacy one",
                              fix="name the canonical helper the switch creates (e.g. public.auth_profile_id), or "
                                  "set legacy.helper = \"\" too where the database has no RLS identity helper")
        return spec
    if data.get("canonical", {}).get("helper", ""):
        raise ConfigError(f"{spec.source}: canonical.helper is set but legacy.helper = \"\" says the database has no "
                          "RLS identity helper: the canonical helper is derived from the legacy one",
                          fix="remove canonical.helper, or set legacy.helper to the function your RLS policies call "
                              "for the caller's legacy id")
    return replace(spec, canonical=replace(spec.canonical, helper=None))


def _cross_check(spec: Spec) -> None:
    lc, cc, kinds = spec.legacy.match_columns, spec.canonical.match_columns, _as_tuple(spec.legacy.match)
    if len(lc) != len(cc):
        raise ConfigError(f"{spec.source}: legacy.match_column names {len(lc)} column(s) ({', '.join(lc)}) but "
                          f"canonical.match_column names {len(cc)} ({', '.join(cc)})",
                          fix="list the same number of columns on both sides, in matching order")
    if len(kinds) not in (1, len(lc)):
        raise ConfigError(f"{spec.source}: legacy.match lists {len(kinds)} kinds for {len(lc)} match columns",
                          fix="give one kind for all columns, or one per column in legacy.match_column's order")
    targets = [c for _, c in spec.canonical.copy_columns]
    twice = sorted({c for c in targets if targets.count(c) > 1 or c in cc})
    if twice:  # align's INSERT would name the column twice, and a copy would overwrite the match value
        raise ConfigError(
            f"{spec.source}: canonical.copy_columns writes {', '.join(twice)} of {spec.canonical.table}, which "
            + ("canonical.match_column already fills" if any(c in cc for c in twice) else "it names twice")
            + ": a created row can take one value per column",
            fix=f"leave {', '.join(twice)} out of canonical.copy_columns (a created row gets the legacy row's match "
                "value in canonical.match_column already)" if any(c in cc for c in twice) else
                "copy one legacy column into each canonical column")
    if spec.legacy.table == spec.canonical.table:
        raise ConfigError(f"{spec.source}: legacy.table and canonical.table are both {spec.legacy.table}",
                          fix="point legacy.table at the table to retire and canonical.table at the one to keep")
    if spec.migration.private_schema == spec.migration.archive_schema:
        raise ConfigError(f"{spec.source}: migration.private_schema and migration.archive_schema are both "
                          f"{spec.migration.private_schema!r}",
                          fix="use two different schemas: the private one holds the ledger, the archive one the retired table")
    if system_schema(spec.migration.private_schema):
        raise ConfigError(f"{spec.source}: migration.private_schema = {spec.migration.private_schema!r} is a schema "
                          "of Postgres or of the platform, not one pgconverge may own",
                          fix="use a schema of its own, such as \"pgconverge\"")
    archive = spec.migration.archive_schema
    if system_schema(archive) or archive in ("public", spec.legacy.table.schema, spec.canonical.table.schema):
        raise ConfigError(f"{spec.source}: migration.archive_schema = {archive!r} is "
                          + ("a schema of Postgres or of the platform" if system_schema(archive) else
                             "an application schema, where the API roles still reach what contract archives"),
                          fix="use a schema of its own, such as \"archive\"")
    helper = spec.canonical.helper
    if helper is None:
        pass
    elif helper == spec.legacy.helper:
        raise ConfigError(f"{spec.source}: canonical.helper and legacy.helper are both {helper}: the switch gives "
                          "the canonical helper a new body and keeps the legacy one working beside it",
                          fix=f"name a new function for canonical.helper, e.g. {new_helper_example(spec)}")
    elif system_schema(helper.schema):
        raise ConfigError(f"{spec.source}: canonical.helper = {str(helper)!r} is in schema {helper.schema}, which "
                          "belongs to Postgres or the platform: the switch would make that function SECURITY DEFINER "
                          "and replace its body, changing every policy and function that calls it",
                          fix=f"name a new function for canonical.helper, e.g. {new_helper_example(spec)} (the "
                              "switch creates it)")
    if spec.migration.private_schema in ("public", spec.legacy.table.schema, spec.canonical.table.schema):
        raise ConfigError(f"{spec.source}: migration.private_schema = {spec.migration.private_schema!r} is an "
                          "application schema; the mapping would be exposed through the Data API",
                          fix="use a schema of its own, such as \"pgconverge\"")
    if spec.legacy.claim == spec.canonical.claim:
        raise ConfigError(f"{spec.source}: legacy.claim and canonical.claim are both {spec.legacy.claim!r}",
                          fix="the canonical claim must be a different JWT claim name, e.g. \"profile_id\"")


# Schemas of Postgres and of the platform (Supabase) that pgconverge does not own: the canonical helper, the private
# schema and the archive schema may not be in one.
PLATFORM_SCHEMAS = frozenset({
    "information_schema", "auth", "extensions", "storage", "realtime", "graphql", "graphql_public", "vault",
    "pgsodium", "pgsodium_masks", "net", "supabase_functions", "supabase_migrations", "cron", "pgbouncer", "pgtle"})


def system_schema(name: str) -> bool:
    return name in PLATFORM_SCHEMAS or name.startswith("pg_")


def new_helper_example(spec: Spec) -> str:
    """A name the canonical helper could take instead of a function it may not replace."""
    name = f"auth_{_singular(spec.canonical.table.name)}_id"
    taken = {spec.canonical.helper, spec.legacy.helper}
    out = QualifiedName("public", name)
    return str(out if out not in taken else QualifiedName("public", name + "_new"))


def check_identifier(name: str) -> None:
    """Raise ValueError unless NAME can be used, quoted, as a Postgres identifier."""
    if not name:
        raise ValueError("empty")
    if "\x00" in name:
        raise ValueError("contains a NUL character")
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise ValueError(f"longer than {MAX_IDENTIFIER_BYTES} bytes")


def parse_qualified(text: str, default_schema: str = "public") -> QualifiedName:
    """Split 'schema.name' (parts may be double-quoted) into a QualifiedName."""
    parts = _dotted(text)
    if len(parts) == 1:
        return QualifiedName(default_schema, parts[0])
    if len(parts) == 2:
        return QualifiedName(parts[0], parts[1])
    raise ValueError("has more than two dotted parts")


def _dotted(text: str) -> list[str]:
    """The dotted parts of TEXT (each may be double-quoted), checked as identifiers."""
    parts: list[str] = []
    i, n = 0, len(text)
    while i <= n:
        if i < n and text[i] == '"':
            j, buf = i + 1, []
            while True:
                if j >= n:
                    raise ValueError("unterminated double quote")
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(text[j])
                j += 1
            part, i = "".join(buf), j + 1
        else:
            j = text.find(".", i)
            j = n if j == -1 else j
            part = text[i:j].strip()
            if part != part.lower() or not part.replace("_", "a").replace("$", "a").isalnum():
                # Unquoted names fold to lower case in SQL; refusing anything else avoids surprises.
                raise ValueError(f"{part!r} must be lower-case letters, digits and underscores, or double-quoted")
            i = j
        check_identifier(part)
        parts.append(part)
        if i >= n:
            break
        if text[i] != ".":
            raise ValueError(f"unexpected {text[i]!r} after {part!r}")
        i += 1
        if i == n:
            raise ValueError("ends with a dot")
    return parts


def _singular(word: str) -> str:
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word
