"""Render `<schema>.normalize_phone(raw text)`: the one SQL definition of a phone number's equivalence key.

The key is the digits of the E.164 number without '+', with WhatsApp's legacy
forms collapsed onto the modern number, or NULL when the input is not a phone
number. Triggers and batch code both call this function, so they always agree;
`phone_audit` compares it with the `phonenumbers` library.

Rules, in the order the SQL applies them (`raw` → key):

1. Strip separators anywhere: ASCII blanks (space, tab, CR, LF, FF, VT),
   Unicode blanks (NBSP, U+1680, U+2000–U+200B, U+2028/9, U+202F, U+205F,
   U+3000, BOM), invisible marks that copy-paste from chat apps adds (U+200C–
   U+200F, U+202A–U+202E, U+2060–U+2069), dashes (ASCII, U+2010–U+2015,
   U+2212, soft hyphen), dots, brackets `()[]` and slashes.
2. What is left must be ASCII digits after at most one leading '+', else NULL
   (letters, extensions, 'unknown', '' → NULL).
3. The default region applies ONLY to national format: input that starts with
   the region's trunk prefix (RW, GB: '0') and not with an international
   prefix gets the region's calling code in place of the trunk prefix
   (`0788123456` → `250788123456`). Regions without a trunk prefix (IT, MX)
   have no national format: all their input is read as international.
   Caveat: where the trunk prefix is a digit that also starts calling codes
   (RU, BY, TM: '8'), a bare WhatsApp id such as `81…` (Japan) reads as
   national; with '0' (RW and most regions) or '1' (NANP) that cannot happen.
4. International prefixes: '+', '00' (in every region: the ITU default, and
   what exports and spreadsheets use), and the default region's own dialling
   prefix from phonenumbers (RW/GB '00'; US '011'; KE '000'; BR '00'+carrier).
   Decision on '011': international only where it is the default region's
   prefix (NANP). With RW as default, '011…' is a national number (trunk '0'
   + '11…'), which is also how phonenumbers reads it.
5. Everything else (bare digits: no '+', no international or trunk prefix) is
   international: WhatsApp ids are bare international digits (`447911…`).
6. A trunk '0' written after the calling code (`+44 (0)7911…`, `+250 0788…`)
   is dropped, unless that leaves fewer than 8 digits (phonenumbers too keeps
   it then), for calling codes whose trunk prefix is '0' and whose
   national-prefix pattern strips just that '0' in front of their example
   numbers (derived from phonenumbers' metadata at render time; this leaves
   out e.g. CO, where '0'+digit is a carrier code).
7. WhatsApp legacy forms (these are WhatsApp ids, so mobiles):
   - Brazil: `55` + area code + 8-digit subscriber starting 6–9 is a mobile
     from before the 9th digit → insert '9' (`551188887777` →
     `5511988887777`). Landlines start 2–5 and are left alone.
   - Argentina: E.164 for mobiles is `549` + 10 digits; numbers are met both
     with and without the 9. `54` + 10 digits starting 1–3 (area codes 11,
     2x, 3x) → `549…`. Trade-off: a landline `54 11 2345 6789` gets the key
     `5491123456789`, which is not its E.164. That is safe for matching:
     Argentina allocates each 10-digit national number to ONE line, fixed or
     mobile (the 9 is only a dialling marker), so no two subscribers share a
     key; and the audit applies the same rule. Toll-free/premium (`54 800…`,
     `54 6…`) are not touched.
   - Mexico: since 2019 `521` + 10 digits is the old mobile form of
     `52` + 10 digits → drop the '1'.
8. The result must start with an assigned country calling code (phonenumbers'
   list, rendered as a regex trie) and have 8–15 digits (E.164 caps at 15; 8 is
   the shortest subscriber number of all but a few micro-territories), else
   NULL.

Implementation: PL/pgSQL with `SET search_path = pg_catalog`. Measured per
row (PG 16): an inlined `LANGUAGE sql` body of nested regexp calls (no CASE,
so STRICT still inlines) cost ~3.0 µs, this PL/pgSQL ~1.6–1.9 µs, because
plain `left()`/`length()` tests skip most regexp calls; the SET clause costs
nothing measurable on a PL/pgSQL function, which is never inlined anyway. The
rendered body records the phonenumbers version: re-rendering after an upgrade
can change keys (new calling codes), so treat that as a migration.

Deliberate disagreements with phonenumbers (`phone_audit.reference_key`),
i.e. classes the audit may report that are NOT bugs (phone_audit.DELIBERATE):

- D1 per-country length: SQL checks 8–15 digits, not each country's possible
  lengths (`+250 788 123` → key; phonenumbers: impossible). A stored key must
  not change when a later phonenumbers release changes a country's lengths
  (the function is IMMUTABLE, keys are compared across tables and time), and
  the same odd number in both tables should still match itself. The audit
  lists such numbers instead.
- D2 short numbers: under 8 digits → NULL, although phonenumbers calls some
  possible (service numbers, 4–5 digit numbers of Niue, Tokelau, St Helena,
  local-only lengths such as GB `0 23199`): far likelier junk than WhatsApp ids.
- D3 over 15 digits → NULL (E.164's limit), although phonenumbers accepts
  longer numbers for DE, ID, JP, KR, NG, UY.
- D4 bare digits: SQL reads them as international (rule 5). phonenumbers,
  given a default region, may read them as a national number written without
  its trunk prefix (`788123456` → `250788123456`). That includes national
  formats written without a trunk prefix by convention: Rwandan landlines
  (`250 123 456`), US `(415) 555-0123`. WhatsApp ids are bare international
  digits and Rwandan mobiles are written `07…`, so the spec's rule wins; the
  audit reports these rows.
- D5 letters and non-ASCII: vanity letters (`1-800-FLOWERS`), extensions
  (`… ext 12`), `tel:` URIs, fullwidth '＋'/digits and Arabic-Indic digits →
  NULL here; phonenumbers converts or strips them.
- D6 regional parsing rules that need more than a trunk prefix are not
  modelled: carrier-selection codes and national-prefix transforms (AR
  `0 11 15…`, BR `0 xx 11…`, CO `03…`, KR `08x…`, short local numbers that
  phonenumbers completes for NF/SM/MG), and a non-'0' trunk written after the
  calling code (`+7 8 …`, `+36 06 …`). They matter only when that region is
  the default, or for malformed or incomplete international input.
- D7 an international prefix followed by '0' (`000…`, `+0…`) → NULL: no
  calling code starts with 0. phonenumbers falls back to reading such junk as
  a national number of the default region.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneMetadata
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE
from psycopg import sql

FUNCTION_NAME = "normalize_phone"
MIN_DIGITS = 8
MAX_DIGITS = 15  # ITU-T E.164

# Rule 1. Written with ARE escapes (not literal characters) so the body stays ASCII and loads in any
# server encoding; explicit characters, not [[:space:]], so the result does not depend on the locale.
_SEPARATORS = (
    r"[ \t\n\r\f\v\u00a0\u00ad\u1680\u2000-\u200f\u2028-\u202f\u205f-\u2069\u3000\ufeff"
    r"().\[\]/\u2010-\u2015\u2212-]+"
)
# What phonenumbers' international-prefix patterns are made of; anything else is refused, not embedded.
_SAFE_PATTERN = re.compile(r"[0-9d\\()?:|\[\]{},\-]+")


@dataclass(frozen=True)
class RegionRules:
    """Dialling facts of the default region that the SQL function bakes in."""

    region: str
    calling_code: str
    national_prefix: str | None  # trunk prefix: '0' for RW and GB, None where there is none (IT)
    international_prefix: str  # phonenumbers' pattern: '00', '011', '00(?:1[245]|…)'


@functools.cache
def region_rules(region: str) -> RegionRules:
    """Return the dialling facts of REGION from phonenumbers' metadata; ValueError if unknown."""
    code = region.strip().upper() if isinstance(region, str) else ""
    meta = PhoneMetadata.metadata_for_region(code) if code in phonenumbers.SUPPORTED_REGIONS else None
    if meta is None:
        raise ValueError(
            f"unknown phone region {region!r}: use an ISO 3166-1 alpha-2 code that phonenumbers knows, e.g. 'RW'"
        )
    trunk = meta.national_prefix or None
    if trunk is not None and not trunk.isdigit():
        raise ValueError(f"phone region {code!r} has an unsupported national prefix {trunk!r}")
    idd = meta.international_prefix or "00"
    if not _SAFE_PATTERN.fullmatch(idd):
        raise ValueError(f"phone region {code!r} has an unsupported international prefix pattern {idd!r}")
    return RegionRules(code, str(meta.country_code), trunk, idd)


@functools.cache
def calling_codes() -> tuple[str, ...]:
    """Return every assigned country calling code phonenumbers knows (geographic and non-geographic)."""
    return tuple(sorted(str(cc) for cc in COUNTRY_CODE_TO_REGION_CODE))


@functools.cache
def trunk_zero_calling_codes() -> tuple[str, ...]:
    """Return the calling codes after which a written trunk '0' is dropped (rule 6)."""
    out = []
    for cc, regions in sorted(COUNTRY_CODE_TO_REGION_CODE.items()):
        meta = PhoneMetadata.metadata_for_region_or_calling_code(cc, regions[0])
        if meta is None or meta.national_prefix != "0":
            continue
        # phonenumbers strips the national prefix after the calling code too; keep the calling codes
        # where, in front of real (example) numbers, that means exactly one '0'.
        pattern = re.compile(meta.national_prefix_for_parsing or "0")
        examples = [
            desc.example_number
            for region in regions
            for m in [PhoneMetadata.metadata_for_region(region)]
            if m is not None
            for desc in (m.fixed_line, m.mobile)
            if desc is not None and desc.example_number
        ]
        matches = [pattern.match("0" + nsn) for nsn in examples]
        if matches and all(m is not None and m.end() == 1 for m in matches):
            out.append(str(cc))
    return tuple(out)


def _digit_class(digits: list[str]) -> str:
    if len(digits) == 1:
        return digits[0]
    runs: list[list[str]] = []
    for d in sorted(digits):
        if runs and int(d) == int(runs[-1][1]) + 1:
            runs[-1][1] = d
        else:
            runs.append([d, d])
    return "[" + "".join(a if a == b else a + b if int(b) == int(a) + 1 else f"{a}-{b}" for a, b in runs) + "]"


def prefix_regex(codes: tuple[str, ...]) -> str:
    """Return a regex matching exactly one of CODES (a prefix-free set), factored as a digit trie."""
    # A flat 215-way alternation costs ~7 µs per match in Postgres' regex engine (it rebuilds DFA
    # states on every call); the trie form costs ~0.3 µs.
    trie: dict = {}
    for code in codes:
        node = trie
        for ch in code:
            node = node.setdefault(ch, {})

    def render(node: dict) -> str:
        leaves = [d for d, child in node.items() if not child]
        parts = [_digit_class(leaves)] if leaves else []
        parts += [d + render(child) for d, child in sorted(node.items()) if child]
        return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"

    return render(trie)


def _literal(text: str) -> str:
    """Quote TEXT as a string literal that reads the same whatever standard_conforming_strings says."""
    if "'" in text:
        raise ValueError(f"refusing to embed {text!r} in the function body")
    return f"E'{text.replace(chr(92), chr(92) * 2)}'" if "\\" in text else f"'{text}'"


def function_body(default_region: str = "RW") -> str:
    """Return the PL/pgSQL body of normalize_phone for DEFAULT_REGION."""
    rules = region_rules(default_region)
    clean = _literal("^[+]?[0-9]+$")
    backref1, backref1_9 = _literal("\\1"), _literal("\\19")  # regexp_replace backrefs are one digit: \1 then 9
    trunk_zero = _literal(f"^({prefix_regex(trunk_zero_calling_codes())})0")
    add_nine = _literal("^(55[1-9][1-9](?=[6-9][0-9]{7}$)|54(?=[1-3][0-9]{9}$))")
    calling_code = _literal("^" + prefix_regex(calling_codes()))
    lines = [
        f"-- pgconverge phone equivalence key; default region {rules.region} (+{rules.calling_code}, "
        f"trunk {rules.national_prefix or 'none'}); phonenumbers {phonenumbers.__version__} metadata",
        "DECLARE",
        "  s text := raw;",
        "BEGIN",
        "  -- 1-2: strip blanks and separators; then only ASCII digits after an optional '+' may remain",
        f"  IF s !~ {clean} THEN",
        f"    s := regexp_replace(s, {_literal(_SEPARATORS)}, '', 'g');",
        f"    IF s !~ {clean} THEN",
        "      RETURN NULL;",
        "    END IF;",
        "  END IF;",
        "  -- 3-5: international prefix, national format of the default region, or bare international digits",
        "  IF left(s, 1) = '+' THEN",
        "    s := substr(s, 2);",
    ]
    if rules.international_prefix != "00":
        # Before '00': the region's own prefix may extend it (KE '000', BR '00'+carrier code).
        idd = _literal(f"^(?:{rules.international_prefix})")
        lines += [f"  ELSIF s ~ {idd} THEN", f"    s := regexp_replace(s, {idd}, '');"]
    lines += ["  ELSIF left(s, 2) = '00' THEN", "    s := substr(s, 3);"]
    if rules.national_prefix and rules.national_prefix != rules.calling_code:
        trunk = rules.national_prefix
        lines += [
            f"  ELSIF left(s, {len(trunk)}) = '{trunk}' THEN",
            f"    s := '{rules.calling_code}' || substr(s, {len(trunk) + 1});",
        ]
    lines += [
        "  END IF;",
        "  -- 6: trunk '0' written after the calling code: +44 (0)7911 ..., +250 0788 ...",
        f"  IF length(s) > {MIN_DIGITS} THEN  -- like phonenumbers: never strip down to a too-short number",
        f"    s := regexp_replace(s, {trunk_zero}, {backref1});",
        "  END IF;",
        "  -- 7: WhatsApp legacy mobile forms: BR and AR without the 9, MX with the old 1",
        "  IF left(s, 1) = '5' THEN",
        f"    s := regexp_replace(s, {add_nine}, {backref1_9});",
        f"    s := regexp_replace(s, {_literal('^521(?=[0-9]{10}$)')}, '52');",
        "  END IF;",
        f"  -- 8: {MIN_DIGITS}-{MAX_DIGITS} digits starting with an assigned country calling code",
        f"  IF length(s) < {MIN_DIGITS} OR length(s) > {MAX_DIGITS} "
        f"OR s !~ {calling_code} THEN",
        "    RETURN NULL;",
        "  END IF;",
        "  RETURN s;",
        "END",
    ]
    return "\n".join(lines)


def normalize_function_sql(schema: str, default_region: str = "RW") -> sql.Composed:
    """Return the CREATE OR REPLACE FUNCTION statement for <schema>.normalize_phone(raw text)."""
    if not isinstance(schema, str) or not schema:
        raise ValueError(f"invalid schema name {schema!r} for {FUNCTION_NAME}")
    body = function_body(default_region)
    if "$normalize_phone$" in body:  # cannot happen with metadata-derived digits; keep the quoting honest
        raise ValueError("function body contains its own dollar-quote tag")
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {schema}.{name}(raw text)\n"
        "RETURNS text\n"
        "LANGUAGE plpgsql\n"
        "IMMUTABLE STRICT PARALLEL SAFE\n"
        "SET search_path = pg_catalog\n"
        "AS $normalize_phone$\n{body}\n$normalize_phone$"
    ).format(schema=sql.Identifier(schema), name=sql.Identifier(FUNCTION_NAME), body=sql.SQL(body))
