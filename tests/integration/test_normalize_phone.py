"""normalize_phone on a real Postgres: explicit cases, agreement with phonenumbers, speed."""

from __future__ import annotations

import collections
import time

import phonenumbers
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from psycopg import sql

from pgconverge.identity import phone, phone_audit

# Default regions exercised: their national format starts with a trunk prefix ('0'); KE also has its
# own international prefix '000'.
DEFAULT_REGIONS = ("RW", "GB", "KE", "DE", "FR")
SCHEMA = {region: f"np_{region.lower()}" for region in DEFAULT_REGIONS}
SCHEMA["RW"] = "pgconverge"


@pytest.fixture
def db(empty_db):
    """Autocommit connection with normalize_phone created for every region in DEFAULT_REGIONS."""
    with psycopg.connect(empty_db, autocommit=True) as conn:
        for region, schema in SCHEMA.items():
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            conn.execute(phone.normalize_function_sql(schema, region))
        yield conn


def keys(conn, values, schema="pgconverge") -> dict:
    query = sql.SQL("SELECT v, {}.normalize_phone(v) FROM unnest(%s::text[]) v").format(sql.Identifier(schema))
    return dict(conn.execute(query, [list(values)]).fetchall())


RW_CASES = {
    "250788123456": "250788123456",
    "+250788123456": "250788123456",
    "00250788123456": "250788123456",
    "+250 788 123 456": "250788123456",
    "250-788-123-456": "250788123456",
    "(+250) 788.123.456": "250788123456",
    "0788123456": "250788123456",
    "0788 123 456": "250788123456",
    "  +250788123456  ": "250788123456",
    "\t+250\u00a0788\u2011123\u202f456\u202c": "250788123456",  # tab, NBSP, non-breaking hyphen, bidi mark
    "+250/788/123/456": "250788123456",
    "[+250] 788 123 456": "250788123456",
    "+250 (0)788 123 456": "250788123456",  # trunk written after the calling code
    "2500788123456": "250788123456",
    "447911123456": "447911123456",  # bare digits are international, not RW
    "+44 7911 123456": "447911123456",
    "+44 (0)7911 123456": "447911123456",
    "0044 7911 123456": "447911123456",
    "+14155550123": "14155550123",
    "+1 (415) 555-0123": "14155550123",
    "551188887777": "5511988887777",  # BR mobile without the 9th digit
    "+55 11 8888-7777": "5511988887777",
    "+5511988887777": "5511988887777",
    "+551123456789": "551123456789",  # BR landline (starts 2-5): untouched
    "5215512345678": "525512345678",  # MX legacy 521
    "+525512345678": "525512345678",
    "5491123456789": "5491123456789",  # AR mobile with the 9
    "+541123456789": "5491123456789",  # AR without the 9 → 549
    "+54 800 123 4567": "548001234567",  # AR toll-free: untouched
    "0118001234": "250118001234",  # '011' is not international with RW as default region
    "011447911123456": None,  # ... so this is an (overlong) RW national number
    None: None,
    "": None,
    "   ": None,
    "+": None,
    "unknown": None,
    "12": None,
    "1234567": None,
    "+2507881234567890123": None,
    "+250 788 123 456 ext 12": None,
    "tel:+250788123456": None,
    "+0250788123456": None,  # calling codes never start with 0
    "+999 1234 5678": None,  # unassigned calling code
    "+250+788123456": None,
    "２５０７８８１２３４５６": None,  # fullwidth digits (D5)
}


def test_explicit_cases_default_region_rw(db):
    assert keys(db, RW_CASES) == RW_CASES


def test_explicit_cases_default_region_gb(db):
    cases = {
        "07911 123456": "447911123456",
        "07911-123-456": "447911123456",
        "+44 7911 123456": "447911123456",
        "447911123456": "447911123456",
        "0788123456": "44788123456",  # national format now means GB
        "250788123456": "250788123456",
        "+250788123456": "250788123456",
        "00250788123456": "250788123456",
        "020 7946 0018": "442079460018",
    }
    assert keys(db, cases, SCHEMA["GB"]) == cases


def test_region_specific_international_prefix(db):
    cases = {
        "000 44 7911 123456": "447911123456",  # KE's own prefix
        "00 44 7911 123456": "447911123456",  # '00' is international in every region
        "0712 123456": "254712123456",
    }
    assert keys(db, cases, SCHEMA["KE"]) == cases


def test_function_attributes_in_catalog(db):
    row = db.execute(
        "SELECT p.provolatile, p.proisstrict, p.proparallel, l.lanname, p.proconfig"
        " FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang"
        " WHERE p.oid = 'pgconverge.normalize_phone(text)'::regprocedure"
    ).fetchone()
    assert row == ("i", True, "s", "plpgsql", ["search_path=pg_catalog"])


def test_keys_are_fixed_points(db):
    first = keys(db, [k for k in RW_CASES if k])
    again = keys(db, [v for v in first.values() if v])
    assert all(k == v for k, v in again.items())


def test_does_not_depend_on_search_path_or_string_settings(db):
    db.execute("CREATE SCHEMA evil")
    db.execute(
        "CREATE FUNCTION evil.regexp_replace(text, text, text, text) RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$"
    )
    db.execute("SET search_path = evil, pg_catalog, public")
    db.execute("SET standard_conforming_strings = off")
    try:
        assert keys(db, RW_CASES) == RW_CASES
    finally:
        db.execute("RESET search_path")
        db.execute("RESET standard_conforming_strings")


def test_audit_reports_deliberate_classes(db):
    odd = ["788123456", "+250 788 123", "+683 4002", "+250 788 123 456 ext 12", "+49 30 1234567890123"]
    values = [*RW_CASES, *odd]
    found = {d.raw: d for d in phone_audit.compare(db, values, "pgconverge", "RW")}
    assert found["788123456"].reason == phone_audit.BARE_DIGITS_READ_NATIONAL
    assert found["+250 788 123"].reason == phone_audit.SQL_ACCEPTS_IMPOSSIBLE
    assert found["+683 4002"].reason == phone_audit.SQL_REJECTS_SHORT
    assert found["+250 788 123 456 ext 12"].reason == phone_audit.NON_DIGIT_TEXT
    assert found["+49 30 1234567890123"].reason == phone_audit.SQL_REJECTS_LONG
    assert [d for d in found.values() if not d.deliberate] == []


# ---- agreement with phonenumbers on generated numbers ------------------------------------------

TARGET_REGIONS = (
    "RW", "GB", "US", "CA", "BR", "MX", "AR", "KE", "UG", "TZ", "BI", "CD", "NG", "ZA", "EG", "IN",
    "CN", "JP", "KR", "DE", "FR", "IT", "ES", "NL", "BE", "RU", "AU", "NZ", "CO", "AE", "SA", "JE",
)  # fmt: skip
TYPES = (PhoneNumberType.MOBILE, PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE)
SEPARATORS = (" ", " ", "-", ".", "\u00a0", "\t", "  ", "/")
TRUNK_ZERO = set(phone.trunk_zero_calling_codes())


def _legacy(digits: str) -> str:
    """Turn a modern BR/AR/MX mobile into the legacy form WhatsApp still uses (else return it unchanged)."""
    if digits.startswith("55") and len(digits) == 13 and digits[4] == "9" and digits[5] in "6789":
        return digits[:4] + digits[5:]
    if digits.startswith("549") and len(digits) == 13:
        return "54" + digits[3:]
    if digits.startswith("52") and len(digits) == 12:
        return "521" + digits[2:]
    return digits


def _scatter(text: str, rnd) -> str:
    """Insert random separators between characters and blanks around TEXT."""
    out = []
    for i, ch in enumerate(text):
        if i and rnd.random() < 0.25:
            out.append(rnd.choice(SEPARATORS))
        out.append(ch)
    return rnd.choice(["", " ", "\t"]) + "".join(out) + rnd.choice(["", " ", "\u00a0"])


@st.composite
def raw_numbers(draw, default: str):
    region = draw(st.sampled_from((*TARGET_REGIONS, default, default)))
    rnd = draw(st.randoms(use_true_random=False))
    ex = phonenumbers.example_number_for_type(region, rnd.choice(TYPES)) or phonenumbers.example_number(region)
    nsn = phonenumbers.national_significant_number(ex)
    keep = rnd.randint(min(len(nsn), 4), len(nsn))  # keep the valid leading digits, randomize the rest
    nsn = nsn[:keep] + "".join(rnd.choice("0123456789") for _ in nsn[keep:])
    cc = str(ex.country_code)
    number = phonenumbers.parse(f"+{cc}{nsn}")
    digits = _legacy(cc + nsn) if rnd.random() < 0.5 else cc + nsn
    idd = phone.region_rules(default).international_prefix
    formats = ["e164", "international", "00", "bare", "bare", "spaced"]
    if region == default:
        formats += ["national"] * 4
    if cc in TRUNK_ZERO:
        formats.append("trunk_after_cc")
    if idd.isdigit() and idd != "00":
        formats.append("idd")
    fmt = draw(st.sampled_from(formats))
    if fmt == "e164":
        return "+" + digits
    if fmt == "international":
        return phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
    if fmt == "national":
        return _scatter(phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL), rnd)
    if fmt == "00":
        return _scatter("00" + digits, rnd)
    if fmt == "idd":
        return _scatter(idd + digits, rnd)
    if fmt == "trunk_after_cc":
        return f"+{cc} (0){nsn}"
    if fmt == "bare":
        return digits
    return _scatter(rnd.choice(["+", "(+", ""]) + digits, rnd).replace("(+" + cc, "(+" + cc + ")", 1)


@st.composite
def batches(draw):
    default = draw(st.sampled_from(DEFAULT_REGIONS))
    return default, draw(st.lists(raw_numbers(default), min_size=30, max_size=60))


# Real numbers can only differ by these deliberate classes; the others need junk input.
EXPECTED_ON_REAL_NUMBERS = {
    phone_audit.BARE_DIGITS_READ_NATIONAL,  # e.g. RW landlines, written nationally without the trunk '0'
    phone_audit.SQL_REJECTS_SHORT,
    phone_audit.SQL_REJECTS_LONG,
}


def test_agrees_with_phonenumbers_on_generated_numbers(db):
    seen: collections.Counter = collections.Counter()

    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(batches())
    def check(batch):
        default, values = batch
        disagreements = phone_audit.compare(db, values, SCHEMA[default], default)  # one query per batch
        seen.update(d.reason for d in disagreements)
        seen["values"] += len(values)
        assert [d for d in disagreements if d.reason not in EXPECTED_ON_REAL_NUMBERS] == []

    check()
    print(f"\nphone audit on generated numbers: {dict(seen)}")
    assert seen["values"] >= 2000


junk = st.builds(
    lambda prefix, digits, suffix: prefix + digits + suffix,
    st.sampled_from(["", "", "+", "00", "0", "+0", "011", "000", "(+", "0 "]),
    st.text(alphabet="0123456789", min_size=1, max_size=18),
    st.sampled_from(["", "", " ", "-", ")", "x12", " ext 3", "\u00a0", "abc"]),
)


def test_disagreements_on_junk_are_all_deliberate(db):
    seen: collections.Counter = collections.Counter()

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(DEFAULT_REGIONS), st.lists(junk, min_size=30, max_size=60))
    def check(default, values):
        disagreements = phone_audit.compare(db, values, SCHEMA[default], default)
        seen.update(d.reason for d in disagreements)
        assert [d for d in disagreements if not d.deliberate] == []

    check()
    print(f"\nphone audit on junk: {dict(seen)}")


@pytest.mark.slow
def test_speed_on_a_million_rows(db):
    """Print (not assert) the time normalize_phone takes over 1M values in a mix of formats."""
    mix = (
        "format((array['250788%s', '+250 788 %s', '0788%s', '00250-788-%s', '+44 7911 %s', '5511888%s',"
        " '(+250) 788.%s', ' unknown%s '])[1 + i % 8], lpad(i::text, 6, '0'))"
    )

    def timed(query: str) -> tuple[float, int]:
        started = time.perf_counter()
        (count,) = db.execute(query).fetchone()
        return time.perf_counter() - started, count

    series = "SELECT count({}) FROM generate_series(1, 1000000) i"
    timed(series.format(mix))  # warm up
    baseline, _ = timed(series.format(mix))
    elapsed, count = timed(series.format(f"pgconverge.normalize_phone({mix})"))
    assert count == 875000  # the 'unknown…' eighth is NULL
    db.execute(f"CREATE TEMP TABLE phones AS SELECT {mix} AS v FROM generate_series(1, 1000000) i")
    table_elapsed, _ = timed("SELECT count(pgconverge.normalize_phone(v)) FROM phones")
    print(
        f"\nnormalize_phone over 1,000,000 rows: {elapsed:.2f} s with generate_series "
        f"({baseline:.2f} s of it generating the input); {table_elapsed:.2f} s over a table of the same values"
    )


def test_audit_in_worker_processes_finds_what_one_process_finds(db):
    """The chunked audit that compares large tables in several processes reports exactly the single-process result:
    the same counts per reason and the same first disagreements, in the order the values came."""
    import random

    rng = random.Random(7)
    shapes = ("+2507{}", "2507{}", "07{}", "+250 7{} ", "00 2507{}", "7{}", "+25{}", "{}x1")
    values = list(dict.fromkeys(rng.choice(shapes).format(rng.randrange(10**7, 10**8))
                                for _ in range(phone_audit.PARALLEL_FROM + 6000)))
    pairs = list(keys(db, values).items())
    one = phone_audit.disagreements(pairs, "RW")
    chunks = [pairs[i:i + 5000] for i in range(0, len(pairs), 5000)]
    seen = []
    many = phone_audit.audit(iter(chunks), "RW", workers=2, between=seen.append)
    assert many.checked == len(pairs) and len(seen) == len(chunks) and seen == sorted(seen)
    assert many.disagreements == len(one) > 0
    assert many.by_reason == dict(collections.Counter(d.reason for d in one))
    assert many.sample == one[:phone_audit.Audit.SAMPLE_LIMIT]
    assert many.unexplained == sum(not d.deliberate for d in one)
    # The same with a pool started beforehand (as the runner starts one before the audit's own thread).
    pool = phone_audit.worker_pool(2)
    try:
        given = phone_audit.audit(iter(chunks), "RW", workers=2, pool=pool)
        assert pool.submit(len, "ab").result() == 2  # the audit left the caller's pool running
    finally:
        pool.shutdown()
    assert (given.checked, given.by_reason, given.sample) == (many.checked, many.by_reason, many.sample)
