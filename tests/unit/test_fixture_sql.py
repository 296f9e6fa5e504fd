"""The fixture's SQL files, read without a database."""

from __future__ import annotations

import re

import pytest

from pgconverge import fixtures
from pgconverge.fixtures import _sql


def test_generator_steps_fill_exactly_the_reported_tables():
    counted = [s.name for s in _sql.steps("generate.sql") if s.counts_rows]
    assert sorted(counted) == sorted(fixtures.TABLES)
    assert all(s.sql and not s.sql.startswith("-- @step") for s in _sql.steps("generate.sql"))


@pytest.mark.parametrize("style", fixtures.HELPER_STYLES)
def test_every_helper_style_defines_the_three_helpers(style):
    text = _sql.read(f"helpers_{style}.sql")
    for signature in ("public.auth_claim(name text)", "public.auth_role()", "public.auth_customer_id()"):
        assert f"create function {signature}" in text
    assert re.search(r"\bstable\b", text) and "volatile" not in text


def _factors(n: int) -> set[int]:
    out, p = set(), 2
    while p * p <= n:
        while n % p == 0:
            out.add(p)
            n //= p
        p += 1
    return out | ({n} if n > 1 else set())


def test_number_permutations_are_bijections():
    # fx_perm(k, m) multiplies by 2654435761: a bijection of [0, m) only when m shares no
    # prime factor with it, i.e. m is built from 2s and 5s.
    moduli = {int(m) for m in re.findall(r"fx_perm\(\w+, (\d+)\)", _sql.read("generate.sql") + _sql.read("gen_functions.sql"))}
    assert moduli
    for m in moduli:
        assert _factors(m) <= {2, 5}, m
    assert not _factors(2654435761) & {2, 5}
    assert min(moduli) >= fixtures.MAX_CUSTOMERS


def test_small_scales_keep_the_floor():
    assert fixtures.customers_for(0.0001) == fixtures.MIN_CUSTOMERS == 200
    assert fixtures.customers_for(1) == 2000
    assert fixtures.customers_for(500) == 1_000_000
