"""Rewrite RLS policies from the legacy helper and columns to the canonical ones, on pglast parse trees.

Pure: no connection. The input is the catalog's pg_get_expr text; the output is the new text, the
ALTER POLICY that applies it, and the ALTER POLICY that restores the original text verbatim.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from psycopg import sql

from pgconverge.catalog.model import Catalog, Policy
from pgconverge.config import QualifiedName, Spec, parse_qualified
from pgconverge.execution.sql import policy_clauses, text
from pgconverge.planning.rls_ast import ParseError, deparse, parse_expression
from pgconverge.planning.rls_helper import HelperDerivation, derive_canonical_helper
from pgconverge.planning.rls_walk import Context, Walker, suspicious_call

__all__ = ["HelperDerivation", "PolicyRewrite", "derive_canonical_helper", "policy_statement",
           "rewrite_policies", "rewrite_policy"]


@dataclass(frozen=True)
class PolicyRewrite:
    """One policy's rewrite: new expression texts, the statements both ways, and what changed or is unsure."""

    name: str
    table: QualifiedName
    changed: bool
    new_using: str | None
    new_with_check: str | None
    statement: str  # ALTER POLICY with the new expressions; "" when nothing changes
    reverse_statement: str  # ALTER POLICY re-applying the original pg_get_expr text verbatim
    changes: tuple[str, ...] = ()
    uncertain: tuple[str, ...] = ()
    original_using: str | None = None
    original_with_check: str | None = None

    @property
    def automatic(self) -> bool:
        """True when the rewrite changes something and nothing about it is unsure: safe to apply unreviewed."""
        return self.changed and not self.uncertain


def rewrite_policy(
    policy: Policy,
    *,
    legacy_helper: QualifiedName,
    canonical_helper: QualifiedName,
    columns: Mapping[tuple[QualifiedName, str], str],
    suspicious_functions: Iterable[str] = (),
    legacy_table: QualifiedName | None = None,
    legacy_claim: str | None = None,
    table_columns: Mapping[QualifiedName, Iterable[str]] | None = None,
    domains: Mapping[tuple[QualifiedName, str], str] | None = None,
) -> PolicyRewrite:
    """Rewrite POLICY's USING and WITH CHECK to the canonical helper and columns.

    columns maps (dependent table, legacy column) to the new column. suspicious_functions are
    regprocedure texts of functions whose bodies use the legacy column: a call to one makes the
    rewrite uncertain. table_columns (every column of tables the policy may read) sharpens the
    resolution of unqualified names in sub-queries; without it such names may be reported unsure.
    """
    columns = dict(columns)
    suspicious = {sig: _signature_name(sig) for sig in suspicious_functions}
    known_columns = {t: frozenset(cs) for t, cs in (table_columns or {}).items()}
    known_tables = {policy.table, *(t for t, _ in columns), *known_columns}
    if legacy_table:
        known_tables.add(legacy_table)
    refs = set(policy.column_refs)
    ctx = Context(policy.table, legacy_helper, canonical_helper, columns, legacy_table, legacy_claim, suspicious,
                  known_tables, known_columns, refs, dict(domains or {}))
    if legacy_table and policy.table == legacy_table:
        # Its rows are legacy ids: the legacy helper (reverse-mapped after the switch) is what it must call.
        return PolicyRewrite(policy.name, policy.table, False, policy.using, policy.with_check, "", "",
                             uncertain=(f"the policy is on the legacy table {legacy_table} itself: left as is, it "
                                        f"keeps calling {legacy_helper}() (reverse-mapped) until contract",),
                             original_using=policy.using, original_with_check=policy.with_check)
    changes: list[str] = []
    uncertain: list[str] = []
    new = {}
    for clause, text in (("USING", policy.using), ("WITH CHECK", policy.with_check)):
        if text is None:
            new[clause] = None
            continue
        try:
            root = parse_expression(text)
        except ParseError as exc:
            uncertain.append(f"{clause}: cannot parse {text!r}: {exc}")
            new[clause] = text
            continue
        walker = Walker(ctx, clause)
        walker.run(root)
        changes += walker.changes
        uncertain += walker.uncertain
        new[clause] = deparse(root) if walker.changes else text
        if walker.changes and _reparse(new[clause]) != root:
            # The printed text must mean exactly the rewritten tree; never ship a lossy deparse.
            uncertain.append(f"{clause}: the rewritten expression does not print back to the same tree")
    # What the walk already said of a clause is not said again for the policy as a whole (a call of a function whose
    # body uses the legacy column is seen by both).
    uncertain += [u for u in _catalog_cross_checks(policy, ctx, suspicious)
                  if not any(w.endswith(f": {u}") for w in uncertain)]
    changed = bool(changes)
    return PolicyRewrite(
        name=policy.name, table=policy.table, changed=changed,
        new_using=new["USING"], new_with_check=new["WITH CHECK"],
        statement=policy_statement(policy.name, policy.table, new["USING"], new["WITH CHECK"]) if changed else "",
        reverse_statement=policy_statement(policy.name, policy.table, policy.using, policy.with_check)
        if changed else "",
        changes=tuple(changes), uncertain=tuple(dict.fromkeys(uncertain)),
        original_using=policy.using, original_with_check=policy.with_check,
    )


def _reparse(text: str):
    try:
        return parse_expression(text)
    except ParseError:
        return None


def _catalog_cross_checks(policy: Policy, ctx: Context, suspicious: dict[str, tuple[str, ...]]) -> list[str]:
    """Compare what the walk found with the dependencies Postgres recorded for the policy (pg_depend)."""
    out = []
    for table, col in policy.column_refs:
        if (table, col) in ctx.columns and (table, col) not in ctx.found_columns:
            out.append(f"Postgres records that the policy reads {table}.{col}, but the rewrite did not find that "
                       "reference")
        if ctx.legacy_table and table == ctx.legacy_table:
            out.append(f"the policy reads the legacy table {table} ({col})")
    if policy.column_refs:
        for table, col in sorted(ctx.found_columns - set(policy.column_refs)):
            out.append(f"rewrote {table}.{col}, but Postgres records no such dependency for the policy")
    legacy = (ctx.legacy_helper.schema, ctx.legacy_helper.name)
    for ref in policy.function_refs:
        if _signature_name(ref) == legacy and not ctx.found_helper:
            out.append(f"Postgres records that the policy calls {ref}, but the rewrite did not find the call")
        if ref in suspicious:
            out.append(suspicious_call(ref))
    return out


def _signature_name(signature: str) -> tuple[str, ...]:
    """('public', 'f') from a regprocedure text such as 'public.f(bigint)'."""
    cut, in_quote = len(signature), False
    for i, ch in enumerate(signature):
        if ch == '"':
            in_quote = not in_quote
        elif ch == "(" and not in_quote:
            cut = i
            break
    try:
        name = parse_qualified(signature[:cut])
    except ValueError:
        return (signature[:cut],)
    return name.schema, name.name


def policy_statement(name: str, table: QualifiedName, using: str | None, with_check: str | None) -> str:
    """ALTER POLICY name ON table USING (…) WITH CHECK (…), with the clauses given (roles, command stay)."""
    return text(sql.SQL("ALTER POLICY {} ON {}").format(sql.Identifier(name), sql.Identifier(table.schema, table.name))
                + policy_clauses(using, with_check))


def rewrite_policies(catalog: Catalog, spec: Spec) -> list[PolicyRewrite]:
    """Rewrite every policy of CATALOG for SPEC's migration (the planner's entry point)."""
    from pgconverge.planning.references import new_columns

    # Each reference's own new column: buyer_id → buyer_profile_id, seller_id → seller_profile_id.
    columns = {k: v for k, v in new_columns(spec, catalog).items()}
    # A partition of a partitioned dependent has the same columns, the new one included: a policy of its own (read
    # where the application queries the partition by name) is rewritten as the table's would be.
    columns.update({(p.table.name, d.fk.columns[0]): columns[(d.table.name, d.fk.columns[0])]
                    for d in catalog.dependents for p in d.partitions})
    # Every other function that mentions the legacy table, helper or columns may hide them from the walk.
    suspicious = {f.signature for f in catalog.functions if f.name not in (spec.legacy.helper, spec.canonical.helper)}
    tables = {t.name: [c.name for c in t.columns]
              for t in (catalog.legacy, catalog.canonical, *(d.table for d in catalog.dependents),
                        *(p.table for d in catalog.dependents for p in d.partitions), *catalog.tables)}
    # Legacy columns of a domain type, and the type Postgres casts them to in comparisons.
    domains = {(t.name, c.name): c.base_type
               for t in (t for d in catalog.dependents for t in (d.table, *(p.table for p in d.partitions)))
               for c in t.columns if c.base_type and (t.name, c.name) in columns}
    return [rewrite_policy(p, legacy_helper=spec.legacy.helper, canonical_helper=spec.canonical.helper,
                           columns=columns, suspicious_functions=suspicious, legacy_table=spec.legacy.table,
                           legacy_claim=spec.legacy.claim, table_columns=tables, domains=domains)
            for p in catalog.policies]
