"""Config parsing and validation: every bad value is named with what is expected."""

import pytest

from pgconverge import config
from pgconverge.config import QualifiedName, Spec, from_dict, parse_qualified
from pgconverge.errors import ConfigError


def test_defaults_are_the_seed_case():
    s = Spec()
    assert s.legacy.table == QualifiedName("public", "customers")
    assert (s.legacy.key, s.legacy.match_column, s.legacy.claim) == ("id", "wa_id", "customer_id")
    assert s.canonical.table == QualifiedName("public", "profiles")
    assert (s.canonical.key, s.canonical.match_column) == ("user_id", "whatsapp_e164")
    assert s.canonical.copy_columns == (("display_name", "display_name"),)
    assert s.migration.new_column == "profile_id"
    assert str(s.legacy.helper) == "public.auth_customer_id" and str(s.canonical.helper) == "public.auth_profile_id"
    assert str(s.mapping_table) == "pgconverge.legacy_customer_profile"
    assert s.mapping_legacy_column == "customer_id"
    assert s.migration.lock_timeout_ms == 100


def test_other_pair_from_config():
    s = from_dict({"legacy": {"table": "app.accounts", "helper": "app.auth_account_id", "claim": "account_id"},
                   "canonical": {"table": "app.users", "key": "id", "copy_columns": {"name": "full_name"}},
                   "migration": {"new_column": "user_id", "default_region": "gb"}})
    assert s.legacy.table == QualifiedName("app", "accounts")
    assert s.canonical.copy_columns == (("name", "full_name"),)
    assert s.migration.default_region == "GB"
    assert str(s.mapping_table) == "pgconverge.legacy_account_user"


@pytest.mark.parametrize("data, fragments", [
    ({"legacy": {"tabel": "x"}}, ["unknown key legacy.tabel", "did you mean 'table'"]),
    ({"legasy": {}}, ["unknown section [legasy]", "did you mean 'legacy'"]),
    ({"migration": {"batch_size": 0}}, ["migration.batch_size = 0", "an integer from 1 to 1000000"]),
    ({"migration": {"batch_size": "10"}}, ["migration.batch_size = '10'", "an integer"]),
    ({"migration": {"lock_timeout_ms": True}}, ["migration.lock_timeout_ms = True"]),
    ({"migration": {"default_region": "XX"}}, ["migration.default_region = 'XX'", "two-letter region"]),
    ({"legacy": {"table": "Public.Customers"}}, ["legacy.table = 'Public.Customers'", "double-quoted"]),
    ({"legacy": {"table": "a.b.c"}}, ["legacy.table = 'a.b.c'", "more than two dotted parts"]),
    ({"legacy": {"table": "customers; drop table x"}}, ["legacy.table", "double-quoted"]),
    ({"legacy": {"table": 5}}, ["legacy.table = 5", "a string"]),
    ({"migration": {"new_column": ""}}, ["migration.new_column = ''", "empty"]),
    ({"migration": {"new_column": "x" * 64}}, ["migration.new_column", "longer than 63 bytes"]),
    ({"canonical": {"copy_columns": "display_name"}}, ["canonical.copy_columns", "list of column names"]),
    ({"canonical": {"table": "public.customers"}}, ["legacy.table and canonical.table are both"]),
    ({"canonical": {"copy_columns": {"wa_id": "whatsapp_e164"}}},
     ["copy_columns writes whatsapp_e164", "canonical.match_column already fills"]),
    ({"canonical": {"copy_columns": {"name": "display_name", "nick": "display_name"}}},
     ["copy_columns writes display_name", "names twice"]),
    ({"migration": {"private_schema": "public"}}, ["private_schema = 'public'", "Data API"]),
    ({"migration": {"archive_schema": "pgconverge"}}, ["private_schema and migration.archive_schema"]),
    ({"canonical": {"claim": "customer_id"}}, ["legacy.claim and canonical.claim are both"]),
    ({"migration": {"legacy_helper_after_contract": "keep"}}, ["legacy_helper_after_contract = 'keep'"]),
    ({"migration": {"api_roles": []}}, ["migration.api_roles", "non-empty list"]),
    ({"legacy": "customers"}, ["legacy must be a table"]),
])
def test_invalid_values_name_key_value_and_expectation(data, fragments):
    with pytest.raises(ConfigError) as exc:
        from_dict(data, source="pgconverge.toml")
    text = str(exc.value)
    for f in fragments:
        assert f in text, text
    assert exc.value.fix


def test_quoted_identifiers_keep_their_exact_text():
    assert parse_qualified('"My Schema"."odd""name"') == QualifiedName("My Schema", 'odd"name')
    assert parse_qualified("customers") == QualifiedName("public", "customers")
    assert str(QualifiedName("My Schema", 'odd"name')) == '"My Schema"."odd""name"'
    assert parse_qualified('"ünïcode;--"') == QualifiedName("public", "ünïcode;--")


def test_load_file(tmp_path, monkeypatch):
    p = tmp_path / "pgconverge.toml"
    p.write_text('[migration]\nbatch_size = 250\n[legacy]\nmatch_column = "phone"\n')
    s = config.load(p)
    assert s.migration.batch_size == 250 and s.legacy.match_column == "phone" and s.source == str(p)
    monkeypatch.chdir(tmp_path)
    assert config.load().migration.batch_size == 250  # ./pgconverge.toml is picked up
    monkeypatch.chdir(tmp_path / "..")
    assert config.load() == Spec()


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[legacy\ntable = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad)


def test_no_helper():
    """legacy.helper = "": the database has no RLS identity helper, so there is no canonical one either."""
    spec = from_dict({"legacy": {"helper": ""}})
    assert spec.legacy.helper is None and spec.canonical.helper is None and not spec.has_helper
    assert spec.as_dict()["legacy"]["helper"] == "" and spec.as_dict()["canonical"]["helper"] == ""
    assert from_dict({"legacy": {"helper": ""}, "canonical": {"helper": ""}}).canonical.helper is None
    with pytest.raises(ConfigError, match="remove canonical.helper"):
        from_dict({"legacy": {"helper": ""}, "canonical": {"helper": "public.auth_profile_id"}})
    with pytest.raises(ConfigError, match="canonical.helper = \"\" but legacy.helper names"):
        from_dict({"canonical": {"helper": ""}})
    assert Spec().has_helper
