"""Read the catalog into a Catalog for a Spec; say clearly what is missing or unsupported."""

from __future__ import annotations

import difflib
import re
from collections import defaultdict

import psycopg
from psycopg import sql
from pglast import ast, parse_sql, visitors
from pglast.parser import ParseError

from pgconverge.catalog import calls, mentions, queries as q
from pgconverge.catalog.model import (
    Catalog, Column, Constraint, Dependent, ForeignKey, Function, Grant, Index, Partition, Policy, Rule, Table,
    Trigger, View,
)
from pgconverge.config import QualifiedName, Spec
from pgconverge.errors import CatalogError

_ACTIONS = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}
_KINDS = {"p": "primary key", "u": "unique", "c": "check", "x": "exclusion"}
_COMMANDS = {"*": "ALL", "r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}


def load_catalog(conn: psycopg.Connection, spec: Spec) -> Catalog:
    """Introspect everything pgconverge needs for SPEC, in one consistent snapshot."""
    with conn.transaction():
        conn.execute("set transaction isolation level repeatable read, read only")
        conn.execute("set local search_path = pg_catalog")
        return _Reader(conn, spec).read()


def load_table(conn: psycopg.Connection, oid: int) -> Table:
    """One table as it is now, wherever it lives (the legacy table in the archive schema, say), read in the caller's
    transaction (with search_path = pg_catalog, as load_catalog reads, so that expressions come out qualified)."""
    return _Reader(conn, None)._tables([oid])[oid]


class _Reader:
    def __init__(self, conn: psycopg.Connection, spec: Spec):
        self.conn, self.spec = conn, spec

    def rows(self, query: str, **params) -> list[tuple]:
        return self.conn.execute(query, params).fetchall()

    def read(self) -> Catalog:
        spec = self.spec
        database, version, read_at, user = self.rows(q.SERVER)[0]
        legacy_oid = self._relation("legacy.table", spec.legacy.table)
        canonical_oid = self._relation("canonical.table", spec.canonical.table)
        base = self._tables([legacy_oid, canonical_oid])
        legacy, canonical = base[legacy_oid], base[canonical_oid]
        self._check_key("legacy", legacy, spec.legacy.key)
        self._check_key("canonical", canonical, spec.canonical.key)
        for c in spec.legacy.match_columns:
            self._check_column("legacy.match_column", legacy, c)
        for c in spec.canonical.match_columns:
            self._check_column("canonical.match_column", canonical, c)
        for lcol, ccol in spec.canonical.copy_columns:
            self._check_column("canonical.copy_columns", legacy, lcol)
            self._check_column("canonical.copy_columns", canonical, ccol)

        dependents = self._dependents(legacy)
        watched_cols = {(t.name, d.fk.columns[0]) for d in dependents for t in (d.table, *(p.table for p in d.partitions))}
        watched_cols |= {(legacy.name, c.name) for c in legacy.columns}

        legacy_helper, canonical_helper, functions = self._functions(dependents)
        callees = self._callees([f for f in (legacy_helper, canonical_helper) if f])
        policies = self._policies()
        helper_sigs = {f.signature for f in functions}
        relevant = [p for p in policies
                    if set(p.column_refs) & watched_cols or set(p.function_refs) & helper_sigs]
        policy_oids = self._policy_table_oids(relevant)
        known = {legacy.oid, canonical.oid, *(d.table.oid for d in dependents)}
        extra = self._tables([o for o in policy_oids if o not in known]) if set(policy_oids) - known else {}

        all_oids = [legacy.oid, canonical.oid, *(d.table.oid for d in dependents)]
        # Views over one partition of a partitioned dependent too: Postgres records them against that partition,
        # and the DROP COLUMN on the partitioned table fails on them as on a view over the whole table.
        views = self._views(all_oids + [p.table.oid for d in dependents for p in d.partitions])
        grants = self._grants(all_oids, [f for f in (legacy_helper, canonical_helper) if f], [legacy.oid])
        return Catalog(
            database=database, server_version=version, read_at=read_at, legacy=legacy, canonical=canonical,
            dependents=tuple(dependents), policies=tuple(policies), functions=tuple(functions),
            legacy_helper=legacy_helper, canonical_helper=canonical_helper, views=tuple(views),
            tables=tuple(extra.values()), grants=tuple(grants),
            roles=frozenset(r for (r,) in self.rows(q.ROLES)),
            canonical_referenced_by=tuple(_fk(r) for r in self.rows(q.CONSTRAINTS, oids=[canonical.oid])
                                          if r[2] == "f" and r[6] == canonical.oid
                                          and (r[0], r[1]) not in self._clones(canonical.oid)),
            schemas=frozenset(s for (s,) in self.rows(q.SCHEMAS)),
            helper_callees=tuple(callees), user=user,
            user_roles=frozenset(r for (r,) in self.rows(q.USER_ROLES)),
            user_member_roles=frozenset(r for (r,) in self.rows(q.USER_MEMBER_ROLES)),
            user_set_roles=frozenset(r for (r,) in self.rows(
                q.USER_SET_ROLES if version >= 160000 else q.USER_MEMBER_ROLES)),
            user_inherits=bool(self.rows(q.USER_INHERITS)[0][0]),
            user_create_schemas=frozenset(s for (s,) in self.rows(q.USER_CREATE_SCHEMAS)),
            canonical_writers=tuple(tuple(r) for r in self.rows(q.CANONICAL_WRITERS, canonical=canonical.oid,
                                                                pattern=_inserts_into(spec.canonical.table))),
            untyped_references=tuple(tuple(r) for r in self.rows(
                q.UNTYPED_REFERENCES, private=spec.migration.private_schema,
                key_type=legacy.column(spec.legacy.key).type)),
        )

    # -- tables ------------------------------------------------------------------------------

    def _relation(self, key: str, name: QualifiedName) -> int:
        found = self.rows(q.RELATION_OID, schema=name.schema, name=name.name)
        if not found:
            others = [r for (r,) in self.conn.execute(
                "select relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                "where n.nspname = %s and c.relkind in ('r', 'p')", (name.schema,)).fetchall()]
            close = difflib.get_close_matches(name.name, others, n=3)
            hint = f" (did you mean {', '.join(f'{name.schema}.{c}' for c in close)}?)" if close else ""
            raise CatalogError(
                f"{key} = {str(name)!r}: no such table in database {self._db()}{hint}",
                fix=f"set {key} in pgconverge.toml to an existing schema-qualified table, or connect to the "
                    "database that holds it (--dsn / DATABASE_URL)")
        oid, kind = found[0]
        if kind not in ("r", "p"):
            raise CatalogError(f"{key} = {str(name)!r} is not a table (relkind {kind!r})",
                               fix=f"point {key} at the base table, not a view or other relation")
        return oid

    def _null_refusing(self, domains: set[str]) -> set[str]:
        """The DOMAINS (as format_type() prints them) that refuse NULL: a NOT NULL, or a CHECK that fails on it
        (`value is not null`), which only casting NULL to the domain tells. Each in a savepoint of its own."""
        out = set()
        for domain in sorted(domains):
            try:
                with self.conn.transaction():
                    self.conn.execute(sql.SQL("select null::{}").format(sql.SQL(domain)))
            except psycopg.Error:
                out.add(domain)
        return out

    def _db(self) -> str:
        return self.rows("select current_database()")[0][0]

    def _tables(self, oids: list[int]) -> dict[int, Table]:
        if not oids:
            return {}
        cols: dict[int, list[Column]] = defaultdict(list)
        found = self.rows(q.COLUMNS, oids=oids)
        refusing = self._null_refusing({r[2] for r in found if r[9] is not None})
        for rel, name, typ, nn, default, gen, ident, num, acl, base, note, coll in found:
            cols[rel].append(Column(name, typ, nn, default, gen, ident, num, tuple((g, p, o) for g, p, o in acl),
                                    base, note, coll, refuses_null=typ in refusing))
        idx: dict[int, list[Index]] = defaultdict(list)
        for rel, ns, iname, tns, tname, icols, idef, uniq, prim, valid, pred, am, note in self.rows(q.INDEXES,
                                                                                                   oids=oids):
            idx[rel].append(Index(QualifiedName(ns, iname), QualifiedName(tns, tname), tuple(icols), idef,
                                  uniq, prim, valid, pred, am, note))
        pk: dict[int, tuple[str, ...]] = {}
        uniq_keys: dict[int, list[tuple[str, ...]]] = defaultdict(list)
        fks: dict[int, list[ForeignKey]] = defaultdict(list)
        for row in self.rows(q.CONSTRAINTS, oids=oids):
            rel, cname, ctype, ccols = row[0], row[1], row[2], tuple(row[3])
            if rel not in oids:
                continue
            if ctype == "p":
                pk[rel] = ccols
            elif ctype == "u":
                uniq_keys[rel].append(ccols)
            else:
                fks[rel].append(_fk(row))
        cons: dict[int, list[Constraint]] = defaultdict(list)
        for rel, cname, ctype, ccols, cdef, valid, cindex, expr, refd in self.rows(q.TABLE_CONSTRAINTS, oids=oids):
            cons[rel].append(Constraint(cname, _KINDS[ctype], tuple(ccols), cdef, valid, cindex, expr, tuple(refd)))
        trg: dict[int, list[Trigger]] = defaultdict(list)
        for rel, tname, fns, fname, tdef, enabled in self.rows(q.TRIGGERS, oids=oids):
            trg[rel].append(Trigger(tname, QualifiedName("", ""), QualifiedName(fns, fname), tdef, enabled))
        rules: dict[int, list[Rule]] = defaultdict(list)
        events = {"1": "SELECT", "2": "UPDATE", "3": "INSERT", "4": "DELETE"}
        for rel, rname, ev, instead, rdef, enabled in self.rows(q.RULES, oids=oids):
            rules[rel].append(Rule(rname, events.get(str(ev), str(ev)), instead, rdef, enabled))
        out = {}
        for oid, ns, name, rls, forced, owner, est in self.rows(q.TABLES, oids=oids):
            qn = QualifiedName(ns, name)
            out[oid] = Table(
                name=qn, oid=oid, columns=tuple(cols[oid]), primary_key=pk.get(oid, ()),
                unique_keys=tuple(uniq_keys[oid]), indexes=tuple(idx[oid]), foreign_keys=tuple(fks[oid]),
                triggers=tuple(Trigger(t.name, qn, t.function, t.definition, t.enabled) for t in trg[oid]),
                rls_enabled=rls, rls_forced=forced, owner=owner, row_estimate=est, constraints=tuple(cons[oid]),
                rules=tuple(rules[oid]))
        return out

    def _check_column(self, key: str, table: Table, column: str) -> None:
        if table.column(column) is None:
            close = difflib.get_close_matches(column, [c.name for c in table.columns], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            default = _defaulted(self.spec, key)
            if default:
                hint += f"; {key} is not set in {self.spec.source}, and this is its default, made for the bundled " \
                        "fixture"
            fix = f"set {key} to one of: {', '.join(c.name for c in table.columns)}"
            if key == "canonical.copy_columns":
                fix = ("set canonical.copy_columns to the legacy columns to copy into a canonical row align creates, "
                       "as { legacy_column = \"canonical_column\" } (columns of "
                       f"{table.name}: {', '.join(c.name for c in table.columns)}), or to [] to copy none")
            raise CatalogError(f"{key} = {column!r}: table {table.name} has no such column{hint}", fix=fix)

    def _check_key(self, side: str, table: Table, key: str) -> None:
        self._check_column(f"{side}.key", table, key)
        if (key,) != table.primary_key and (key,) not in table.unique_keys:
            raise CatalogError(
                f"{side}.key = {key!r}: {table.name}.{key} is neither the primary key nor unique"
                + ("" if table.primary_key else f"; {table.name} has no primary key at all"),
                fix=f"set {side}.key to the column foreign keys reference (a single-column primary key or "
                    f"unique constraint), or add one to {table.name}")

    def _dependents(self, legacy: Table) -> list[Dependent]:
        # The legacy table's own reference to itself (customers.referred_by) is not a dependent: it stays with
        # the table, archived by contract (planning/shapes.py lists it).
        refs = [r for r in self.rows(q.CONSTRAINTS, oids=[legacy.oid])
                if r[2] == "f" and r[6] == legacy.oid and r[0] != legacy.oid]
        # A partitioned table's foreign key is cloned onto every partition: the parent's is the reference.
        clones = {(rel, name) for rel, name, _ in self.rows(q.INHERITED_FOREIGN_KEYS, oids=[legacy.oid])}
        refs = [r for r in refs if (r[0], r[1]) not in clones]
        if not refs:
            raise CatalogError(
                f"no foreign key references {legacy.name}({self.spec.legacy.key}): there is nothing to re-point "
                "at the canonical table",
                fix="check legacy.table and legacy.key in pgconverge.toml; pgconverge finds dependent tables "
                    "through their foreign keys")
        key = self.spec.legacy.key
        for r in refs:
            cols, refcols = tuple(r[3]), tuple(r[9])
            where = f"foreign key {r[1]} on {QualifiedName(r[4], r[5])} {cols} → {legacy.name}{refcols}"
            if len(cols) != 1:
                raise CatalogError(f"{where} is composite; pgconverge re-points single-column foreign keys only",
                                   fix="migrate this table by hand, or replace the composite key first")
            if refcols != (key,):
                raise CatalogError(f"{where} references {refcols[0]}, not the legacy key {key!r}",
                                   fix=f"set legacy.key = {refcols[0]!r} if that is the identity key, or re-point "
                                       "this foreign key at the key first")
        tables = self._tables(sorted({r[0] for r in refs}))
        deps = [self._partitioning(Dependent(tables[r[0]], _fk(r))) for r in refs]
        return sorted(deps, key=lambda d: (d.table.name, d.fk.name))

    def _clones(self, oid: int) -> set[tuple[int, str]]:
        """Foreign keys to or from OID that partitions inherited (conparentid <> 0), as (table oid, name)."""
        return {(rel, name) for rel, name, _ in self.rows(q.INHERITED_FOREIGN_KEYS, oids=[oid])}

    def _partitioning(self, dep: Dependent) -> Dependent:
        """DEP with its partitions (a partitioned table), or what the planner refuses (see planning/references)."""
        from dataclasses import replace

        oid = dep.table.oid
        _, parent, child_ns, child_names, inherited, parents = self.rows(q.PARTITION_FLAGS, oids=[oid])[0]
        dep = replace(dep, partition_of=QualifiedName(*parent) if parent else None,
                      inherited_by=tuple(QualifiedName(a, b) for a, b in zip(child_ns, child_names)),
                      inherited_columns=tuple(inherited), inherits_from=parents or "")
        keys = self.rows(q.PARTITION_KEYS, oids=[oid])
        if not keys:
            return dep
        tree = self.rows(q.PARTITION_TREE, oids=[oid])
        oids = [r[1] for r in tree]
        tables = self._tables(oids)
        names = {oid: dep.table.name, **{o: t.name for o, t in tables.items()}}
        index_parents: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for rel, iname, pname in self.rows(q.INDEX_PARENTS, oids=oids):
            index_parents[rel].append((iname, pname))
        fk_parents: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for rel, cname, pname in self.rows(q.INHERITED_FOREIGN_KEYS, oids=oids):
            if rel in tables:
                fk_parents[rel].append((cname, pname))
        parts = tuple(Partition(tables[rel], names[parent_rel], leaf, tuple(sorted(index_parents[rel])),
                                tuple(sorted(fk_parents[rel])))
                      for _root, rel, parent_rel, leaf, _level in tree)
        _, keydef, keycols = keys[0]
        return replace(dep, partitions=parts, partition_key=keydef, partition_columns=tuple(keycols))

    # -- policies, functions, views, grants -------------------------------------------------

    def _policies(self) -> list[Policy]:
        rows = self.rows(q.POLICIES)
        deps = self._deps("pg_policy", [r[0] for r in rows])
        out = []
        self._policy_rel: dict[tuple[QualifiedName, str], int] = {}
        for oid, ns, rel, reloid, name, cmd, permissive, roles, using, check in rows:
            cols, fns = deps.get(oid, ((), ()))
            table = QualifiedName(ns, rel)
            self._policy_rel[(table, name)] = reloid
            out.append(Policy(name, table, _COMMANDS[cmd], permissive, tuple(roles), using, check, cols, fns))
        return out

    def _policy_table_oids(self, policies: list[Policy]) -> list[int]:
        return sorted({self._policy_rel[(p.table, p.name)] for p in policies})

    def _deps(self, classid: str, objids: list[int]) -> dict[int, tuple[tuple, tuple]]:
        cols: dict[int, set] = defaultdict(set)
        fns: dict[int, set] = defaultdict(set)
        for objid, ns, rel, att, fn in self.rows(q.DEPENDENCIES, classid=classid, objids=objids):
            if fn:
                fns[objid].add(fn)
            elif att:
                cols[objid].add((QualifiedName(ns, rel), att))
        return {o: (tuple(sorted(cols[o])), tuple(sorted(fns[o]))) for o in set(cols) | set(fns)}

    def _functions(self, dependents: list[Dependent]):
        spec = self.spec
        helpers = [h for h in (spec.legacy.helper, spec.canonical.helper) if h is not None]
        names = {spec.legacy.table.name, *(d.fk.columns[0] for d in dependents)}
        if spec.legacy.helper is not None:
            names.add(spec.legacy.helper.name)
        pattern = r"\m(" + "|".join(_regex_escape(n) for n in sorted(names)) + r")\M"
        rows = self.rows(q.FUNCTIONS, helper_schemas=[h.schema for h in helpers],
                         helper_names=[h.name for h in helpers], pattern=pattern)
        found: list[Function] = []
        by_name: dict[QualifiedName, list[Function]] = defaultdict(list)
        for oid, ns, name, sig, args, ret, lang, vol, secdef, config, src, fdef, owner in rows:
            fn = Function(QualifiedName(ns, name), sig, args, ret, lang, vol, secdef, tuple(config), src, fdef, oid,
                          owner)
            by_name[fn.name].append(fn)
            if fn.name in helpers or mentions.find(fn.code, names):
                found.append(fn)
        legacy_helper = self._helper("legacy.helper", spec.legacy.helper, by_name, required=True,
                                     tables=[d.table.oid for d in dependents])
        canonical_helper = self._helper("canonical.helper", spec.canonical.helper, by_name, required=False)
        found = [f for f in found if f.name != spec.canonical.helper or f == canonical_helper]
        return legacy_helper, canonical_helper, found

    def _callees(self, roots: list[Function], depth: int = 4) -> list[Function]:
        """Every sql or plpgsql function ROOTS call, and those they call (DEPTH levels), by the names written."""
        found: dict[int, Function] = {}
        seen = {f.oid for f in roots}
        frontier = roots
        for _ in range(depth):
            names = {n for f in frontier for n in calls.called(f)}
            if not names:
                break
            frontier = [f for f in self.named(sorted(n for n in names if len(n) == 2),
                                              sorted(n[0] for n in names if len(n) == 1)) if f.oid not in seen]
            for fn in frontier:
                seen.add(fn.oid)
                found[fn.oid] = fn
        return list(found.values())

    def named(self, qualified: list[tuple[str, ...]], bare: list[str] = ()) -> list[Function]:
        rows = self.rows(q.FUNCTIONS_NAMED, schemas=[n[0] for n in qualified], names=[n[1] for n in qualified],
                         bare=list(bare))
        return [Function(QualifiedName(ns, name), sig, args, ret, lang, vol, secdef, tuple(config), src, fdef, oid,
                         owner) for oid, ns, name, sig, args, ret, lang, vol, secdef, config, src, fdef, owner in rows]

    def _helper(self, key: str, name: QualifiedName | None, by_name, required: bool,
                tables: list[int] = ()) -> Function | None:
        if name is None:  # legacy.helper = "": the database has no RLS identity helper
            return None
        cands = by_name.get(name, [])
        if len(cands) > 1:
            no_args = [c for c in cands if not c.identity_args]
            if len(no_args) == 1:
                return no_args[0]
            raise CatalogError(f"{key} = {str(name)!r} is overloaded ({', '.join(c.signature for c in cands)})",
                               fix="give the helper a unique name, or drop the unused overloads")
        if not cands and required:
            fix = (f"set {key} to the function your RLS policies call to get the current identity (e.g. "
                   "public.auth_customer_id)")
            if not self._rls_policies([self._relation("legacy.table", self.spec.legacy.table),
                                       self._relation("canonical.table", self.spec.canonical.table), *tables]):
                fix = (f"no RLS policy is enabled on {self.spec.legacy.table}, {self.spec.canonical.table} or the "
                       f"tables referencing it: where the application filters by user itself, set {key} = \"\" "
                       f"(no RLS identity helper); else {fix}")
            raise CatalogError(f"{key} = {str(name)!r}: no such function in database {self._db()}", fix=fix)
        return cands[0] if cands else None

    def _rls_policies(self, oids: list[int]) -> int:
        """How many policies are in force on the tables OIDS (row level security enabled)."""
        return self.rows("select count(*) from pg_catalog.pg_policy p join pg_catalog.pg_class c on c.oid = p.polrelid "
                         "where c.relrowsecurity and p.polrelid = any(%(oids)s::oid[])", oids=list(oids))[0][0]

    def _views(self, oids: list[int]) -> list[View]:
        rows = self.rows(q.VIEWS_USING, oids=oids)
        view_oids = [r[0] for r in rows]
        refs: dict[int, set] = defaultdict(set)
        for voids, ns, rel, att in self.rows(q.VIEW_COLUMN_REFS, oids=view_oids):
            refs[voids].add((QualifiedName(ns, rel), att))
        relations: dict[int, set] = defaultdict(set)
        for voids, ns, rel in self.rows(q.VIEW_RELATION_REFS, oids=view_oids):
            relations[voids].add(QualifiedName(ns, rel))
        kinds = {"v": "view", "m": "materialized view"}
        return sorted((View(QualifiedName(ns, name), kinds[kind], definition, tuple(sorted(refs[oid])),
                            tuple(sorted(relations[oid])), tuple(sorted(whole_rows(definition, relations[oid]))))
                       for oid, ns, name, kind, definition in rows), key=lambda v: v.name)

    def _grants(self, oids: list[int], helpers: list[Function], sequences_of: list[int] = ()) -> list[Grant]:
        roles = set(self.spec.migration.api_roles) | {"PUBLIC"}
        out = [Grant("table", str(QualifiedName(ns, rel)), g, p, o)
               for ns, rel, g, p, o in self.rows(q.TABLE_GRANTS, oids=oids) if g in roles]
        # The legacy table's own sequences: contract archives them with it, out of those roles' reach too.
        out += [Grant("sequence", str(QualifiedName(ns, rel)), g, p, o)
                for ns, rel, g, p, o in self.rows(q.OWNED_SEQUENCE_GRANTS, oids=list(sequences_of)) if g in roles]
        fn_oids = [h.oid for h in helpers]
        out += [Grant("function", o, g, p) for o, g, p in self.rows(q.FUNCTION_GRANTS, oids=fn_oids) if g in roles]
        return out


class _WholeRows(visitors.Visitor):
    """The relations of a query (by the name it reads them under) and the names whose whole row it reads (`p.*`)."""

    def __init__(self):
        super().__init__()
        self.relations: dict[str, set[QualifiedName]] = defaultdict(set)
        self.rows: set[tuple[str, ...]] = set()

    def visit_RangeVar(self, ancestors, node):
        if node.schemaname:  # no schema: a CTE, or pg_catalog's own (read with search_path = pg_catalog)
            name = QualifiedName(node.schemaname, node.relname)
            self.relations[node.alias.aliasname if node.alias else node.relname].add(name)
            self.relations[f"{node.schemaname}.{node.relname}"].add(name)

    def visit_ColumnRef(self, ancestors, node):
        fields = node.fields or ()
        if len(fields) >= 2 and isinstance(fields[-1], ast.A_Star) and all(
                isinstance(f, ast.String) for f in fields[:-1]):
            self.rows.add(tuple(f.sval for f in fields[:-1]))


def whole_rows(definition: str, relations: set[QualifiedName]) -> set[QualifiedName]:
    """The tables and views whose whole row the view DEFINITION (pg_get_viewdef, which writes every whole-row
    reference as `alias.*` and expands a `*` of the select list into columns) reads: to_jsonb(p), row_to_json(p.*),
    `select p from posts p`. A reference to a sub-query's or a CTE's row is left out: what it holds of a table is
    recorded column by column. A definition that does not parse reads, for all one can tell, every row of RELATIONS,
    the relations Postgres recorded for it."""
    try:
        tree = parse_sql(definition)
    except ParseError:
        return set(relations)
    walk = _WholeRows()
    walk(tree)
    return {t for ref in walk.rows for t in walk.relations.get(".".join(ref), ())}


def function_and_callees(conn: psycopg.Connection,
                         name: QualifiedName | None) -> tuple[Function | None, list[Function]]:
    """The argument-less function NAME as it is now, and every function it calls (see Catalog.helper_callees); none
    where NAME is None (legacy.helper = "")."""
    if name is None:
        return None, []
    reader = _Reader(conn, None)  # type: ignore[arg-type]
    fn = next((f for f in reader.named([(name.schema, name.name)]) if not f.identity_args), None)
    return fn, (reader._callees([fn]) if fn else [])


def functions(conn: psycopg.Connection, oids: list[int]) -> list[Function]:
    """The functions OIDS as they are now, in any language."""
    return [Function(QualifiedName(ns, name), sig, args, ret, lang, vol, secdef, tuple(config), src, fdef, oid, owner)
            for oid, ns, name, sig, args, ret, lang, vol, secdef, config, src, fdef, owner
            in conn.execute(q.FUNCTIONS_BY_OID, {"oids": list(oids)}).fetchall()]


def callees(conn: psycopg.Connection, fns: list[Function]) -> list[Function]:
    """Every function FNS call, directly or through each other, as they are now."""
    return _Reader(conn, None)._callees(fns)  # type: ignore[arg-type]


def _fk(row: tuple) -> ForeignKey:
    (_rel, name, _t, cols, tns, tname, _ref, fns, fname, refcols, deltype, updtype, valid, deferrable, cdef,
     note) = row
    return ForeignKey(name, QualifiedName(tns, tname), tuple(cols), QualifiedName(fns, fname), tuple(refcols),
                      _ACTIONS[deltype], _ACTIONS[updtype], valid, deferrable, cdef, note)


def _regex_escape(name: str) -> str:
    # Postgres ARE syntax: escape every character that is not a letter, digit or underscore.
    return re.sub(r"([^A-Za-z0-9_])", r"\\\1", name)


def _inserts_into(table: QualifiedName) -> str:
    """A regular expression (case-insensitive) for `INSERT INTO table` in a function's code, qualified or not."""
    def name(n: str) -> str:
        return r'(?:"' + _regex_escape(n.replace('"', '""')) + r'"|' + _regex_escape(n) + ")"
    return r"\minsert\s+into\s+(?:" + name(table.schema) + r"\s*\.\s*)?" + name(table.name) + r"(?![a-z0-9_$])"


def _defaulted(spec: Spec, key: str) -> bool:
    """Whether the configuration KEY ("canonical.copy_columns") holds its built-in default: a file that does not set
    it, or sets it to the same value."""
    from pgconverge.config import CanonicalSide, LegacySide

    section, name = key.split(".", 1)
    side, default = (spec.legacy, LegacySide()) if section == "legacy" else (spec.canonical, CanonicalSide())
    return getattr(side, name, None) == getattr(default, name, object())
