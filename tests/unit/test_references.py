"""migration.new_columns and the naming rule of references (planning/references.py)."""

import pytest

from pgconverge.catalog.model import Catalog, Column, Dependent, ForeignKey, Function, Table
from pgconverge.config import QualifiedName, Spec, from_dict
from pgconverge.errors import ConfigError
from pgconverge.planning import expand, references

Q = QualifiedName


def _table(name: str, *cols: str) -> Table:
    return Table(Q("public", name), 1, tuple(Column(c, "bigint", False) for c in ("id", *cols)), ("id",), (), (), (),
                 (), True, False, "postgres", 0)


def _cat(*refs: tuple[str, str]) -> Catalog:
    tables = {}
    for t, c in refs:
        tables.setdefault(t, []).append(c)
    deps = tuple(Dependent(_table(t, *tables[t]), ForeignKey(f"{t}_{c}_fkey", Q("public", t), (c,),
                                                            Q("public", "customers"), ("id",), "NO ACTION",
                                                            "NO ACTION", True, False, ""))
                 for t, c in refs)
    legacy, canonical = _table("customers", "wa_id"), _table("profiles", "user_id", "whatsapp_e164")
    helper = Function(Q("public", "auth_customer_id"), "public.auth_customer_id()", "", "bigint", "sql", "s", False,
                      (), "select 1", "")
    return Catalog("db", 160000, legacy, canonical, deps, (), (), helper, None, ())


def test_new_columns_config_is_parsed_and_shown():
    s = from_dict({"migration": {"new_columns": {"public.transfers.buyer_id": "buyer_pid",
                                                 '"Odd Schema".t."Buyer Id"': "b"}}})
    assert s.migration.new_columns == ((("public", "transfers", "buyer_id"), "buyer_pid"),
                                       (("Odd Schema", "t", "Buyer Id"), "b"))
    assert s.as_dict()["migration"]["new_columns"] == {"public.transfers.buyer_id": "buyer_pid",
                                                       '"Odd Schema".t."Buyer Id"': "b"}


@pytest.mark.parametrize("value, fragments", [
    ({"transfers.buyer_id": "x"}, ["migration.new_columns", "not schema.table.column"]),
    ({"public.transfers.buyer_id": 5}, ["migration.new_columns", "a table of"]),
    ("buyer_pid", ["migration.new_columns = 'buyer_pid'", "a table of"]),
    ({"public.transfers.buyer_id": "x" * 64}, ["longer than 63 bytes"]),
    ({"public.transfers.Buyer": "x"}, ["double-quoted"]),
    ({"public.t.a": "same", "public.t.b": "same"}, ["each new column of a table named once", "'same' on public.t"]),
])
def test_bad_new_columns_are_named(value, fragments):
    with pytest.raises(ConfigError) as exc:
        from_dict({"migration": {"new_columns": value}}, source="pgconverge.toml")
    for f in fragments:
        assert f in str(exc.value), str(exc.value)
    assert exc.value.fix


def test_one_new_column_name_on_two_tables_is_two_columns():
    s = from_dict({"migration": {"new_columns": {"public.transactions.assigned_member_id": "assigned_id",
                                                 "public.tracker_entries.assigned_member_id": "assigned_id"}}})
    assert dict(s.migration.new_columns) == {("public", "transactions", "assigned_member_id"): "assigned_id",
                                             ("public", "tracker_entries", "assigned_member_id"): "assigned_id"}


def test_the_naming_rule():
    spec = Spec()
    cat = _cat(("orders", "customer_id"), ("carts", "owner_id"), ("transfers", "buyer_id"),
               ("transfers", "seller_customer_id"), ("transfers", "customer_id"), ("transfers", "agent"))
    got = {f"{t.name}.{c}": v for (t, c), v in references.new_columns(spec, cat).items()}
    assert got == {"orders.customer_id": "profile_id",
                   "carts.owner_id": "profile_id",  # alone on its table: migration.new_column as always
                   "transfers.buyer_id": "buyer_profile_id", "transfers.seller_customer_id": "seller_profile_id",
                   "transfers.customer_id": "profile_id", "transfers.agent": "agent_profile_id"}
    assert references.refusals(spec, cat) == []
    over = from_dict({"migration": {"new_columns": {"public.transfers.buyer_id": "buyer_pid"}}})
    assert references.new_columns(over, cat)[(Q("public", "transfers"), "buyer_id")] == "buyer_pid"


def test_everything_derived_is_named_from_the_reference():
    spec = Spec()
    cat = _cat(("transfers", "buyer_id"), ("transfers", "seller_id"))
    names = [n for _, n in expand.names_of(spec, cat)]
    assert [n.short for n in names] == ["transfers_buyer_id", "transfers_seller_id"]
    assert [n.trigger for n in names] == ["!pgconverge_sync_buyer_id", "!pgconverge_sync_seller_id"]
    assert [n.fk for n in names] == ["transfers_buyer_profile_id_fkey", "transfers_seller_profile_id_fkey"]
    assert len({n.sync_fn for n in names}) == len({n.not_null_check for n in names}) == 2
    ids = [s.id for s in expand.plan(spec, cat)]
    assert len(ids) == len(set(ids))
    assert "expand.transfers_buyer_id.add_column" in ids and "expand.transfers_seller_id.add_column" in ids
    labels = {references.label(cat, d) for d in cat.dependents}
    assert labels == {"public.transfers.buyer_id", "public.transfers.seller_id"}


def test_collisions_and_unknown_entries_are_refused():
    cat = _cat(("transfers", "buyer_id"), ("transfers", "seller_id"), ("orders", "customer_id"))
    spec = from_dict({"migration": {"new_columns": {"public.transfers.buyer_id": "seller_profile_id",
                                                    "public.nope.customer_id": "x",
                                                    "public.orders.customer_id": "customer_id"}}})
    found = {(o, p) for o, p, _ in references.refusals(spec, cat)}
    assert ("references public.transfers.buyer_id and public.transfers.seller_id",
            "would all get the new column 'seller_profile_id'") in found
    assert any(o == "migration.new_columns entry 'public.nope.customer_id'" for o, _ in found)
    assert any(o == "reference public.orders.customer_id" and "is the name of a legacy column" in p for o, p in found)
