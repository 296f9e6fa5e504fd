"""planning/shapes.py without a database: what is mirrored, listed or refused, and how expressions are rewritten."""

from __future__ import annotations

import pytest

from pgconverge.catalog.model import (
    Catalog, Column, Constraint, Dependent, ForeignKey, Function, Index, Table, Trigger, View,
)
from pgconverge.config import QualifiedName as Q, Spec
from pgconverge.config import from_dict
from pgconverge.planning import shapes

SPEC = Spec()
CUSTOMERS, PROFILES = Q("public", "customers"), Q("public", "profiles")


def _table(name: Q, columns, pk=(), constraints=(), indexes=(), triggers=(), fks=(), owner="app") -> Table:
    return Table(name, 1, tuple(Column(c, t, nn, default, gen) for c, t, nn, default, gen in columns), pk, (),
                 tuple(indexes), tuple(fks), tuple(triggers), False, False, owner, 0, tuple(constraints))


def _fk(table: Q, col="customer_id", on_delete="CASCADE", on_update="NO ACTION", deferrable=False, extra=""):
    return ForeignKey(f"{table.name}_{col}_fkey", table, (col,), CUSTOMERS, ("id",), on_delete, on_update, True,
                      deferrable, f"FOREIGN KEY ({col}) REFERENCES customers(id){extra}")


def _index(table: Q, name: str, definition: str, unique=False, primary=False) -> Index:
    return Index(Q(table.schema, name), table, (), definition, unique, primary, True, None, "btree")


def _catalog(*deps: Dependent, views=(), functions=(), legacy_fks=(), user="", roles=frozenset()) -> Catalog:
    # with the default config's match and copied columns, as plan's catalog always has them
    legacy = _table(CUSTOMERS, [("id", "bigint", True, None, False), ("wa_id", "text", False, None, False),
                                ("display_name", "text", False, None, False)], pk=("id",), fks=legacy_fks)
    canonical = _table(PROFILES, [("user_id", "uuid", True, None, False), ("whatsapp_e164", "text", False, None, False),
                                  ("display_name", "text", False, None, False)], pk=("user_id",))
    return Catalog("db", 160000, legacy, canonical, tuple(deps), (), tuple(functions), None, None, tuple(views),
                   user=user, user_roles=roles)


def _dep(table: Table, **fk) -> Dependent:
    return Dependent(table, _fk(table.name, **fk))


def _actions(cat, spec=SPEC):
    return {(f.object, f.action) for f in shapes.findings(spec, cat)}


def test_rename_rewrites_the_parse_tree_not_the_text():
    out = shapes.rename("((customer_id IS NOT NULL) OR (customer_id_note IS NOT NULL))", {"customer_id": "profile_id"})
    assert out == "profile_id IS NOT NULL OR customer_id_note IS NOT NULL"


@pytest.mark.parametrize("expr, unsafe", [
    ("customer_id IS NOT NULL OR guest_token IS NOT NULL", []),
    ("num_nonnulls(customer_id, guest_token) = 1", []),
    ("customer_id > 0", ["customer_id"]),
    ("(customer_id)::text <> '0'", ["customer_id"]),
    ("coalesce(customer_id, 0) > 0", ["customer_id"]),
])
def test_a_check_is_mirrored_only_where_it_asks_whether_the_column_is_null(expr, unsafe):
    assert shapes._unsafe(shapes._expression(expr), {"customer_id"}) == unsafe


def test_join_table_primary_key_is_mirrored_and_kept_not_null_until_contract():
    t = Q("public", "customer_tags")
    table = _table(t, [("customer_id", "bigint", True, None, False), ("tag", "text", True, None, False)],
                   pk=("customer_id", "tag"),
                   constraints=[Constraint("customer_tags_pkey", "primary key", ("customer_id", "tag"),
                                           "PRIMARY KEY (customer_id, tag)", True, "customer_tags_pkey")],
                   indexes=[_index(t, "customer_tags_pkey", "CREATE UNIQUE INDEX customer_tags_pkey ON "
                                   "public.customer_tags USING btree (customer_id, tag)", True, True)])
    d = _dep(table)
    cat = _catalog(d)
    assert shapes.in_primary_key(d)
    [m] = shapes.key_mirrors(SPEC, cat, d)
    assert (m.constraint.name, m.mirror) == ("customer_tags_pkey", "profile_tags_pkey")
    assert ("primary key customer_tags_pkey on public.customer_tags", shapes.MIRRORED) in _actions(cat)


def test_a_key_other_tables_reference_is_refused_with_its_referrers():
    t = Q("public", "customer_tags")
    table = _table(t, [("customer_id", "bigint", True, None, False), ("tag", "text", True, None, False)],
                   pk=("customer_id", "tag"),
                   constraints=[Constraint("customer_tags_pkey", "primary key", ("customer_id", "tag"),
                                           "PRIMARY KEY (customer_id, tag)", True, "customer_tags_pkey",
                                           referenced_by=("public.notes.notes_fkey",))],
                   indexes=[_index(t, "customer_tags_pkey", "CREATE UNIQUE INDEX customer_tags_pkey ON "
                                   "public.customer_tags USING btree (customer_id, tag)", True, True)])
    [f] = shapes.refused(SPEC, _catalog(_dep(table)))
    assert "public.notes.notes_fkey" in f.detail and "public.notes.notes_fkey" in f.fix


def test_checks_mirrored_or_refused():
    t = Q("public", "guest_carts")
    table = _table(t, [("customer_id", "bigint", False, None, False), ("guest_token", "text", False, None, False)],
                   constraints=[
                       Constraint("guest_carts_owner_check", "check", ("customer_id", "guest_token"), "CHECK (…)",
                                  expression="((customer_id IS NOT NULL) OR (guest_token IS NOT NULL))"),
                       Constraint("guest_carts_positive", "check", ("customer_id",), "CHECK (…)",
                                  expression="(customer_id > 0)")])
    cat = _catalog(_dep(table, on_delete="SET NULL"))
    [m] = shapes.check_mirrors(SPEC, cat, table)
    assert (m.name, m.expression) == ("guest_carts_owner_check_profile",
                                      "profile_id IS NOT NULL OR guest_token IS NOT NULL")
    assert _actions(cat) >= {("check constraint guest_carts_owner_check on public.guest_carts", shapes.MIRRORED),
                             ("check constraint guest_carts_positive on public.guest_carts", shapes.REFUSED)}


def test_every_refused_shape_is_named_at_once():
    t = Q("public", "orders")
    table = _table(
        t, [("id", "bigint", True, None, False), ("customer_id", "bigint", True, None, False),
            ("label", "text", False, "('c'::text || (customer_id)::text)", True)], pk=("id",),
        constraints=[Constraint("orders_excl", "exclusion", ("customer_id",), "EXCLUDE USING btree (customer_id WITH =)",
                                index="orders_excl")],
        indexes=[_index(t, "orders_excl", "CREATE INDEX orders_excl ON public.orders USING btree (customer_id)"),
                 _index(t, "orders_plus", "CREATE INDEX orders_plus ON public.orders USING btree ((customer_id + 1))"),
                 _index(t, "orders_text", "CREATE INDEX orders_text ON public.orders USING btree "
                                          "(((customer_id)::text)) WHERE (customer_id IS NOT NULL)")],
        triggers=[Trigger("orders_moved", t, Q("public", "touch"), "CREATE TRIGGER orders_moved BEFORE UPDATE OF "
                          "customer_id ON public.orders FOR EACH ROW EXECUTE FUNCTION touch()", "O"),
                  Trigger(" first", t, Q("public", "touch"), 'CREATE TRIGGER " first" BEFORE INSERT ON public.orders '
                          "FOR EACH ROW EXECUTE FUNCTION touch()", "O"),
                  Trigger("later", t, Q("public", "audit"), "CREATE TRIGGER later BEFORE INSERT ON public.orders "
                          "FOR EACH ROW EXECUTE FUNCTION audit()", "O")])
    view = View(Q("public", "owners"), "view", "SELECT id, customer_id FROM orders", ((t, "customer_id"),))
    audit = Function(Q("public", "audit"), "public.audit()", "", "trigger", "plpgsql", "v", False, (),
                     "begin if new.customer_id is null then raise exception 'x'; end if; return new; end", "")
    cat = _catalog(_dep(table, on_delete="SET DEFAULT"), views=[view], functions=[audit], user="migrator",
                   roles=frozenset({"migrator"}))
    refused = {f.object for f in shapes.refused(SPEC, cat)}
    assert refused == {
        "exclusion constraint orders_excl on public.orders", "generated column public.orders.label",
        "index public.orders_plus", "trigger orders_moved on public.orders", 'trigger " first" on public.orders',
        "view public.owners", "foreign key orders_customer_id_fkey on public.orders",
        "table public.customers", "table public.profiles", "table public.orders"}  # owned by app, not migrator
    assert ("trigger later on public.orders", shapes.LISTED) in _actions(cat)
    assert ("function public.audit()", shapes.LISTED) in _actions(cat)
    with pytest.raises(shapes.ShapesRefused) as e:
        from pgconverge.catalog.baseline import Catalogs
        shapes.refuse(SPEC, Catalogs({}, cat))
    assert e.value.problem.count("\n  - ") == len(refused)


def test_accepted_views_are_listed_not_refused():
    t = Q("public", "orders")
    table = _table(t, [("id", "bigint", True, None, False), ("customer_id", "bigint", True, None, False)], pk=("id",))
    view = View(Q("public", "owners"), "view", "SELECT id, customer_id FROM orders", ((t, "customer_id"),))
    spec = from_dict({"migration": {"accept_views": ["public.owners"]}})
    assert ("view public.owners", shapes.LISTED) in _actions(_catalog(_dep(table), views=[view]), spec)
    assert shapes.refused(spec, _catalog(_dep(table), views=[view])) == []


def test_self_reference_and_fk_options():
    t = Q("public", "orders")
    table = _table(t, [("id", "bigint", True, None, False), ("customer_id", "bigint", True, None, False)], pk=("id",))
    self_fk = ForeignKey("customers_referred_by_fkey", CUSTOMERS, ("referred_by",), CUSTOMERS, ("id",), "SET NULL",
                         "NO ACTION", True, False, "")
    d = _dep(table, on_update="CASCADE", deferrable=True, extra=" DEFERRABLE INITIALLY DEFERRED")
    cat = _catalog(d, legacy_fks=[self_fk])
    assert shapes.fk_deferral(d) == (True, True)
    found = {f.object: f for f in shapes.findings(SPEC, cat)}
    assert found["foreign key customers_referred_by_fkey on public.customers"].action == shapes.LISTED
    fk = found["foreign key orders_customer_id_fkey on public.orders"]
    assert fk.action == shapes.MIRRORED and "ON UPDATE CASCADE" in fk.detail and "INITIALLY DEFERRED" in fk.detail


def test_view_readers_are_the_views_that_read_the_legacy_column_or_table():
    """What pg_depend records decides, not which tables a view reads: a view of other columns, a count(*) and a view
    of the canonical table pass; a whole row of a dependent counts as its legacy column, and views over a reader are
    named with it, to any depth."""
    t = Q("public", "orders")
    table = _table(t, [("id", "bigint", True, None, False), ("customer_id", "bigint", True, None, False),
                       ("total", "int", False, None, False)], pk=("id",))
    views = [
        View(Q("public", "totals"), "view", "SELECT id, total FROM public.orders", ((t, "id"), (t, "total")), (t,)),
        View(Q("public", "n"), "view", "SELECT count(*) AS n FROM public.orders", (), (t,)),
        View(Q("public", "names"), "view", "SELECT user_id FROM public.profiles", ((PROFILES, "user_id"),),
             (PROFILES,)),
        View(Q("public", "rows"), "view", "SELECT to_jsonb(o.*) AS j FROM public.orders o", (), (t,), (t,)),
        View(Q("public", "legacy_n"), "view", "SELECT count(*) AS n FROM public.customers", (), (CUSTOMERS,)),
        View(Q("public", "rows_2"), "view", "SELECT j FROM public.rows", ((Q("public", "rows"), "j"),),
             (Q("public", "rows"),)),
        View(Q("public", "rows_3"), "materialized view", "SELECT 1 FROM public.rows_2", (), (Q("public", "rows_2"),)),
        View(Q("public", "big"), "view", "SELECT id FROM public.totals", ((Q("public", "totals"), "id"),),
             (Q("public", "totals"),)),
    ]
    found = {str(v.name): reads for v, reads in shapes.view_readers(_catalog(_dep(table), views=views))}
    assert found == {
        "public.rows": ["the whole row of public.orders, so public.orders.customer_id"],
        "public.legacy_n": ["the legacy table public.customers"],
        "public.rows_2": ["view public.rows, which reads the whole row of public.orders, so public.orders.customer_id"],
        "public.rows_3": ["view public.rows_2, which reads view public.rows, which reads the whole row of "
                          "public.orders, so public.orders.customer_id"]}


def test_a_mirrored_index_name_swaps_the_columns_last_mention():
    from pgconverge.planning.index_mirror import mirrored_name, mirrored_names

    assert mirrored_name("idx_carts_customer_status", "customer_id", "profile_id", set()) == "idx_carts_profile_status"
    # the table named by the column's word too: only the column's mention changes
    assert mirrored_name("user_roles_user_id_role_key", "user_id", "account_id", set()) == \
        "user_roles_account_id_role_key"
    assert mirrored_name("orders_pkey", "customer_id", "profile_id", set()) == "orders_pkey_profile"
    assert mirrored_name("carts_user_id_username_idx", "user_id", "profile_id", set()) == \
        "carts_profile_id_username_idx"
    assert mirrored_names("transfers_buyer_id_seller_id_key", {"buyer_id": "buyer_profile_id",
                                                               "seller_id": "seller_profile_id"}, set()) == \
        "transfers_buyer_profile_id_seller_profile_id_key"
