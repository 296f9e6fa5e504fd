"""Audit the SQL phone key (`<schema>.normalize_phone`) against the `phonenumbers` library.

`reference_key` is phonenumbers' reading of a raw value under pgconverge's
input conventions, which phonenumbers itself leaves to the caller:

- '00' starts an international number in every region (phonenumbers knows
  only the region's own dialling prefix, e.g. '011' for US);
- bare digits are international (WhatsApp ids), unless only phonenumbers'
  national reading (default region, no trunk prefix) gives a *valid* number;
  then that reading wins here and the audit reports the row (class D4 in
  `phone`);
- Unicode blanks and invisible marks count as spaces (phonenumbers rejects
  e.g. U+202F inside a number; that is not a question about the number);
- WhatsApp legacy forms (BR/AR without the 9, MX `521`) are collapsed,
  implemented independently of the SQL so the audit can catch a slip in either.

`compare` evaluates the SQL function over many values in one round trip and
returns the values where the keys differ, each with a short reason. Reasons
listed in DELIBERATE are documented trade-offs of the SQL function (see the
module docstring of `pgconverge.identity.phone`); any other reason is a bug in
one of the two.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import phonenumbers
from psycopg import sql

from pgconverge.identity.phone import FUNCTION_NAME, MAX_DIGITS, MIN_DIGITS, region_rules

# Reasons. The D-numbers refer to the deliberate classes documented in phone.py.
SQL_ACCEPTS_IMPOSSIBLE = "sql key is not a possible number (phonenumbers rejects it or reads it otherwise)"  # D1
SQL_REJECTS_SHORT = f"sql rejects a short number (under {MIN_DIGITS} digits, or dialable only locally)"  # D2
SQL_REJECTS_LONG = f"sql rejects a number longer than E.164's {MAX_DIGITS} digits"  # D3
BARE_DIGITS_READ_NATIONAL = "bare digits: sql reads them as international, phonenumbers as national"  # D4
NON_DIGIT_TEXT = "letters, extension or non-ASCII characters: only one side reads a number"  # D5
SQL_KEEPS_REGIONAL_PREFIX = "same country: a regional dialling rule sql does not model (carrier code, trunk)"  # D6
PREFIX_THEN_ZERO = "international prefix followed by 0: sql rejects, phonenumbers reads a national number"  # D7
SQL_ACCEPTS_UNPARSEABLE = "sql accepts what phonenumbers cannot parse"
SQL_REJECTS_POSSIBLE = "sql rejects what phonenumbers accepts as a possible number"
DIFFERENT_COUNTRY = "different country read"
DIFFERENT_NATIONAL_NUMBER = "same country, different national number read"

DELIBERATE = frozenset(
    {
        SQL_ACCEPTS_IMPOSSIBLE,
        SQL_REJECTS_SHORT,
        SQL_REJECTS_LONG,
        BARE_DIGITS_READ_NATIONAL,
        NON_DIGIT_TEXT,
        SQL_KEEPS_REGIONAL_PREFIX,
        PREFIX_THEN_ZERO,
    }
)

# Separators phonenumbers and the SQL both ignore; used only to see the shape of the input.
_SEPARATORS = re.compile(
    r"[\s\u00a0\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff().\[\]/\-\u2010-\u2015\u2212]"
)
_BLANKS = re.compile(r"[\s\u00a0\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


@dataclass(frozen=True)
class Disagreement:
    """A raw value whose SQL key differs from phonenumbers' key."""

    raw: str | None
    sql_key: str | None
    reference_key: str | None
    reason: str

    @property
    def deliberate(self) -> bool:
        return self.reason in DELIBERATE


def _compact(raw: str) -> str:
    return _SEPARATORS.sub("", raw)


def _collapse_whatsapp(digits: str) -> str:
    """Map WhatsApp's legacy mobile forms onto the modern E.164 digits (independent of the SQL)."""
    if len(digits) == 12 and digits.startswith("55") and "0" not in digits[2:4] and digits[4] in "6789":
        return digits[:4] + "9" + digits[4:]  # BR mobile without the 9th digit
    if len(digits) == 12 and digits.startswith("54") and digits[2] in "123":
        return "549" + digits[2:]  # AR number without the mobile 9
    if len(digits) == 13 and digits.startswith("521"):
        return "52" + digits[3:]  # MX mobile with the pre-2019 1
    return digits


def _e164_digits(number: phonenumbers.PhoneNumber) -> str:
    return f"{number.country_code}{phonenumbers.national_significant_number(number)}"


def _parse(text: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None


def _is_bare(compact: str, default_region: str) -> bool:
    """Bare digits: no '+', no international prefix, no trunk prefix of the default region."""
    rules = region_rules(default_region)
    return (
        compact.isascii()
        and compact.isdigit()
        and not compact.startswith("00")
        and not re.match(rules.international_prefix, compact)
        and not (rules.national_prefix and compact.startswith(rules.national_prefix))
    )


def _national_format(compact: str, default_region: str) -> bool:
    trunk = region_rules(default_region).national_prefix
    return bool(trunk) and compact.startswith(trunk) and not compact.startswith("00")


def _complex_national_prefix(region: str) -> bool:
    """Whether REGION's national prefix rule is more than its trunk prefix (carrier codes, transforms)."""
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if meta is None:
        return False
    pattern = meta.national_prefix_for_parsing
    return bool(pattern) and (pattern != meta.national_prefix or bool(meta.national_prefix_transform_rule))


def _read(raw: str, default_region: str) -> phonenumbers.PhoneNumber | None:
    rules = region_rules(default_region)
    compact = _compact(raw)
    if compact.startswith("00") and compact[2:].isdigit() and not re.match(rules.international_prefix, compact):
        return _parse("+" + compact[2:], None)
    natural = _parse(_BLANKS.sub(" ", raw), rules.region)
    if _is_bare(compact, rules.region):
        international = _parse("+" + compact, None)
        for number, test in (
            (international, phonenumbers.is_valid_number),
            (natural, phonenumbers.is_valid_number),
            (international, phonenumbers.is_possible_number),
            (natural, phonenumbers.is_possible_number),
        ):
            if number is not None and test(number):
                return number
        return international
    return natural


def reference_key(raw: str | None, default_region: str) -> str | None:
    """Return phonenumbers' equivalence key for RAW (E.164 digits, legacy forms collapsed), or None."""
    if raw is None:
        return None
    number = _read(raw, default_region)
    if number is None:
        return None
    key = _collapse_whatsapp(_e164_digits(number))
    collapsed = _parse("+" + key, None)
    if collapsed is None or not phonenumbers.is_possible_number(collapsed):
        return None
    return _e164_digits(collapsed)


def _possible(key: str) -> bool:
    """Whether KEY is a possible complete number (a local-only length, dialable without area code, is not)."""
    number = _parse("+" + key, None)
    reason = phonenumbers.is_possible_number_with_reason(number) if number is not None else None
    return reason == phonenumbers.ValidationResult.IS_POSSIBLE


def _after_prefix(compact: str) -> str:
    """COMPACT without a leading '+' or '00': the digits the SQL reads as an international number."""
    return compact[1:] if compact.startswith("+") else compact[2:] if compact.startswith("00") else compact


def _prefix_then_zero(compact: str, default_region: str) -> bool:
    """International prefix followed by '0' ('000…', '+0…'): no calling code starts with 0."""
    idd = re.match(region_rules(default_region).international_prefix, compact)
    return any(compact.startswith(p + "0") for p in ("+", "00", idd.group(0) if idd else "00"))


def classify(raw: str | None, sql_key: str | None, ref_key: str | None, default_region: str) -> str:
    """Return the short reason why SQL_KEY and REF_KEY differ for RAW (first matching class wins)."""
    raw = raw or ""
    compact = _compact(raw)
    # D4 only when phonenumbers' key comes from its national reading, not from reading the digits
    # internationally as the SQL does: otherwise a slip in the SQL on bare input would hide behind D4.
    bare = _is_bare(compact, default_region) and ref_key != reference_key("+" + compact, default_region)
    if sql_key is None:
        if not re.fullmatch(r"\+?[0-9]*", compact):
            return NON_DIGIT_TEXT
        if bare:
            return BARE_DIGITS_READ_NATIONAL
        if _prefix_then_zero(compact, default_region):
            return PREFIX_THEN_ZERO
        if ref_key is not None and (len(ref_key) < MIN_DIGITS or not _possible(ref_key)):
            return SQL_REJECTS_SHORT
        if (ref_key is not None and len(ref_key) > MAX_DIGITS) or len(_after_prefix(compact)) > MAX_DIGITS:
            return SQL_REJECTS_LONG
        return SQL_REJECTS_POSSIBLE
    if bare and ref_key is not None:
        return BARE_DIGITS_READ_NATIONAL
    if not _possible(sql_key):
        # Whatever phonenumbers made of the input, the SQL key is not a possible number (D1).
        return SQL_ACCEPTS_IMPOSSIBLE
    if ref_key is None:
        return NON_DIGIT_TEXT if not raw.isascii() else SQL_ACCEPTS_UNPARSEABLE
    sql_number, ref_number = _parse("+" + sql_key, None), _parse("+" + ref_key, None)
    if sql_number is None or ref_number is None or sql_number.country_code != ref_number.country_code:
        return DIFFERENT_COUNTRY
    cc = str(sql_number.country_code)
    sql_nsn, ref_nsn = sql_key[len(cc) :], ref_key[len(cc) :]
    if len(sql_nsn) > len(ref_nsn) and sql_nsn.endswith(ref_nsn):
        return SQL_KEEPS_REGIONAL_PREFIX  # '+7 8 912…': a trunk or carrier code left in
    if _national_format(compact, default_region) and _complex_national_prefix(default_region):
        return SQL_KEEPS_REGIONAL_PREFIX  # AR '011 15-2345-6789', BR '0 21 11 …'
    if _complex_national_prefix(phonenumbers.region_code_for_country_code(sql_number.country_code)):
        return SQL_KEEPS_REGIONAL_PREFIX  # NF '+672 10971' → 672 3 10971

    return DIFFERENT_NATIONAL_NUMBER


def disagreements(pairs: Iterable[tuple[str | None, str | None]], default_region: str) -> list[Disagreement]:
    """Of (raw value, SQL key) PAIRS, those whose SQL key differs from phonenumbers' key, each with its reason."""
    out = []
    for raw, sql_key in pairs:
        ref_key = reference_key(raw, default_region)
        if sql_key != ref_key:
            out.append(Disagreement(raw, sql_key, ref_key, classify(raw, sql_key, ref_key, default_region)))
    return out


# Below this many values the audit runs in the calling process: starting worker processes costs more.
PARALLEL_FROM = 10_000
CHUNK = 10_000


@dataclass
class Audit:
    """What an audit of many values found: counts per reason and the first SAMPLE_LIMIT disagreements."""

    checked: int = 0
    disagreements: int = 0
    by_reason: dict[str, int] | None = None
    unexplained: int = 0
    sample: list[Disagreement] | None = None

    SAMPLE_LIMIT = 1000

    def add(self, checked: int, found: list[Disagreement]) -> None:
        self.checked += checked
        self.disagreements += len(found)
        self.by_reason = self.by_reason or {}
        self.sample = self.sample if self.sample is not None else []
        for d in found:
            self.by_reason[d.reason] = self.by_reason.get(d.reason, 0) + 1
            self.unexplained += not d.deliberate
        self.sample.extend(found[: max(0, self.SAMPLE_LIMIT - len(self.sample))])


def _quiet_worker() -> None:
    """A worker process leaves Ctrl-C to the command: the runner stops the audit between chunks. (A lower priority
    was measured and dropped: under load it tripled the audit's time and did not spare the application's clients.)"""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_workers() -> int:
    """Half the cores (at least one): the database and the application keep the rest."""
    import os

    return max(1, min(4, (os.cpu_count() or 1) // 2))


def worker_pool(workers: int | None = None):
    """The processes that compare large audits, already started (None where processes cannot be forked).

    Forked, not spawned: a spawned worker would import the caller's main module again. A forked one only runs
    phonenumbers (the interpreter renews its import lock in the child) and leaves with os._exit, so the
    connections it inherited are neither used nor closed there. Started here, from the calling thread, so a
    caller that compares in a thread of its own can fork from its main thread, before that thread exists."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_all_start_methods, get_context

    if "fork" not in get_all_start_methods():
        return None
    pool = ProcessPoolExecutor(workers or default_workers(), mp_context=get_context("fork"),
                               initializer=_quiet_worker)
    pool.submit(len, "").result()  # the first task starts every worker
    return pool


def audit(chunks: Iterable[list[tuple[str | None, str | None]]], default_region: str, *, workers: int | None = None,
          between: Callable[[int], None] | None = None, pool=None, fork: bool = True) -> Audit:
    """Compare every (raw value, SQL key) pair of CHUNKS, holding a few chunks at a time (memory does not grow with
    the table). Once PARALLEL_FROM values have come (a large audit), chunks are compared in WORKERS processes
    (default: half the cores, at least one, so the database and the application keep the rest), or in POOL
    (see worker_pool; the caller's to shut down); FORK=False compares in the calling process whatever the
    size. BETWEEN(values checked so far) is called after each chunk; it may raise to stop the audit."""
    result, pending, own, seen = Audit(), [], None, 0
    workers = workers or default_workers()
    try:
        for chunk in chunks:
            seen += len(chunk)
            if pool is None and fork and seen >= PARALLEL_FROM:
                pool = own = worker_pool(workers)
            if pool is None or seen < PARALLEL_FROM:  # nothing is in flight yet: results stay in chunk order
                result.add(len(chunk), disagreements(chunk, default_region))
            else:
                pending.append((len(chunk), pool.submit(disagreements, chunk, default_region)))
                while len(pending) > 2 * workers:  # results in chunk order, a bounded number in flight
                    n, fut = pending.pop(0)
                    result.add(n, fut.result())
            if between is not None:
                between(result.checked)
        for n, fut in pending:
            result.add(n, fut.result())
        pending = []
    finally:
        for _, fut in pending:
            fut.cancel()
        if own is not None:
            own.shutdown(wait=True, cancel_futures=True)
    return result


def compare(conn, values: Iterable[str | None], schema: str, default_region: str) -> list[Disagreement]:
    """Evaluate <schema>.normalize_phone on VALUES in one query; return each distinct value whose key differs."""
    distinct = list(dict.fromkeys(values))
    query = sql.SQL(
        "SELECT u.v, {}.{}(u.v) FROM unnest(%s::text[]) WITH ORDINALITY AS u(v, i) ORDER BY u.i"
    ).format(sql.Identifier(schema), sql.Identifier(FUNCTION_NAME))
    return disagreements(conn.execute(query, [distinct]).fetchall(), default_region)
