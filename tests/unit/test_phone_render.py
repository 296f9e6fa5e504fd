"""Rendered normalize_phone SQL (no database) and the phonenumbers reference key."""

from __future__ import annotations

import re

import phonenumbers
import pytest

from pgconverge.identity import phone, phone_audit


def render(schema: str = "pgconverge", region: str = "RW") -> str:
    return phone.normalize_function_sql(schema, region).as_string(None)


def test_schema_is_a_quoted_identifier():
    text = render('we"ird')
    assert 'CREATE OR REPLACE FUNCTION "we""ird"."normalize_phone"(raw text)' in text


def test_function_attributes():
    text = render()
    assert "RETURNS text" in text
    assert "LANGUAGE plpgsql" in text
    assert "IMMUTABLE STRICT PARALLEL SAFE" in text
    assert "SET search_path = pg_catalog" in text
    assert "FROM" not in text  # no table lookups


@pytest.mark.parametrize(
    ("region", "calling_code", "trunk", "idd"),
    [
        ("RW", "250", "0", "00"),
        ("GB", "44", "0", "00"),
        ("BR", "55", "0", "00(?:1[245]|2[1-35]|31|4[13]|[56]5|99)"),
        ("US", "1", "1", "011"),
        ("IT", "39", None, "00"),
    ],
)
def test_region_rules_come_from_phonenumbers(region, calling_code, trunk, idd):
    rules = phone.region_rules(region)
    assert (rules.calling_code, rules.national_prefix, rules.international_prefix) == (calling_code, trunk, idd)


@pytest.mark.parametrize(("region", "calling_code"), [("RW", "250"), ("GB", "44"), ("BR", "55")])
def test_national_format_uses_the_regions_calling_code_and_trunk_prefix(region, calling_code):
    body = phone.function_body(region)
    assert f"ELSIF left(s, 1) = '0' THEN\n    s := '{calling_code}' || substr(s, 2);" in body
    assert f"default region {region} (+{calling_code}, trunk 0)" in body


def test_region_without_trunk_prefix_has_no_national_branch():
    assert "|| substr" not in phone.function_body("IT")


def test_region_specific_international_prefix_is_rendered_before_00():
    body = phone.function_body("KE")
    assert body.index("ELSIF s ~ '^(?:000)'") < body.index("ELSIF left(s, 2) = '00'")
    assert "ELSIF s ~" not in phone.function_body("RW")


def test_region_is_case_insensitive():
    assert render(region="rw") == render(region="RW")


@pytest.mark.parametrize("region", ["XX", "ZZ", "", "Rwanda", "001", "250"])
def test_unknown_region_raises_naming_it(region):
    with pytest.raises(ValueError, match=re.escape(repr(region))):
        phone.normalize_function_sql("pgconverge", region)


def test_every_supported_region_renders():
    for region in phonenumbers.SUPPORTED_REGIONS:
        assert "$normalize_phone$" in render(region=region)


def test_bad_schema_raises():
    with pytest.raises(ValueError):
        phone.normalize_function_sql("", "RW")


def test_prefix_regex_matches_exactly_the_calling_codes():
    codes = set(phone.calling_codes())
    pattern = re.compile(phone.prefix_regex(phone.calling_codes()))
    assert {"1", "7", "44", "250", "55", "52", "54", "800", "979"} <= codes
    assert {str(n) for n in range(1000) if pattern.fullmatch(str(n))} == codes


def test_trunk_zero_calling_codes():
    codes = set(phone.trunk_zero_calling_codes())
    assert {"44", "250", "33", "49", "55", "54", "254"} <= codes
    # IT: no trunk prefix; CO: '0'+digit is a carrier code; RU, US: trunk is not '0'.
    assert not {"39", "57", "7", "1"} & codes


def test_literals_survive_standard_conforming_strings_off():
    body = phone.function_body("RW")
    assert "E'\\\\1'" in body and "E'\\\\19'" in body  # backslashes doubled inside E'' literals
    assert not re.search(r"(?<!E)'[^']*\\", body)  # no backslash inside a plain '' literal


@pytest.mark.parametrize(
    ("raw", "region", "key"),
    [
        ("250788123456", "RW", "250788123456"),
        ("0788123456", "RW", "250788123456"),
        ("(+250) 788.123.456", "RW", "250788123456"),
        ("447911123456", "RW", "447911123456"),
        ("07911 123456", "GB", "447911123456"),
        ("551188887777", "RW", "5511988887777"),
        ("5215512345678", "RW", "525512345678"),
        ("+541123456789", "RW", "5491123456789"),
        ("788123456", "RW", "250788123456"),  # phonenumbers' national reading of bare digits (D4)
        ("0044 7911 123456", "US", "447911123456"),  # '00' is international everywhere
        ("unknown", "RW", None),
        ("+250 788 123", "RW", None),
        (None, "RW", None),
    ],
)
def test_reference_key(raw, region, key):
    assert phone_audit.reference_key(raw, region) == key


@pytest.mark.parametrize(
    ("raw", "region", "sql_key", "ref_key", "reason"),
    [
        ("+250 788 123", "RW", "250788123", None, phone_audit.SQL_ACCEPTS_IMPOSSIBLE),
        ("+683 4002", "RW", None, "6834002", phone_audit.SQL_REJECTS_SHORT),
        ("788123456", "RW", "788123456", "250788123456", phone_audit.BARE_DIGITS_READ_NATIONAL),
        ("+250788123456 ext 7", "RW", None, "250788123456", phone_audit.NON_DIGIT_TEXT),
        ("+49 30 1234567890123", "RW", None, "49301234567890123", phone_audit.SQL_REJECTS_LONG),
        ("+7 8 912 345 6789", "RW", "789123456789", "79123456789", phone_audit.SQL_KEEPS_REGIONAL_PREFIX),
        ("011 15-2345-6789", "AR", "54111523456789", "5491123456789", phone_audit.SQL_KEEPS_REGIONAL_PREFIX),
        ("000 250 788 123 456", "RW", None, "250000250788123456", phone_audit.PREFIX_THEN_ZERO),
        ("+250788123456", "RW", "250788123457", "250788123456", phone_audit.DIFFERENT_NATIONAL_NUMBER),
        ("+250788123456", "RW", "447911123456", "250788123456", phone_audit.DIFFERENT_COUNTRY),
        ("+250788123456", "RW", None, "250788123456", phone_audit.SQL_REJECTS_POSSIBLE),
    ],
)
def test_classify(raw, region, sql_key, ref_key, reason):
    assert phone_audit.classify(raw, sql_key, ref_key, region) == reason
    bugs = {phone_audit.DIFFERENT_NATIONAL_NUMBER, phone_audit.DIFFERENT_COUNTRY, phone_audit.SQL_REJECTS_POSSIBLE}
    assert phone_audit.Disagreement(raw, sql_key, ref_key, reason).deliberate == (reason not in bugs)
