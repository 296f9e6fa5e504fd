"""Every operation says whether the state "this step done, the next ones of its phase not done" is safe for the
application (Operation.safe_alone), by itself: a new operation cannot inherit the answer."""

from __future__ import annotations

import importlib
import pkgutil

import pgconverge.operations
from pgconverge.operations.base import Operation
from pgconverge.operations.drop_policies import DropPolicies
from pgconverge.operations.together import Together

# Operations defined outside operations/: the contract's own, the emitted files'.
ELSEWHERE = ("pgconverge.planning.contract", "pgconverge.emit.contract")


def _all_operations() -> list[type]:
    for m in pkgutil.iter_modules(pgconverge.operations.__path__):
        importlib.import_module(f"pgconverge.operations.{m.name}")
    for name in ELSEWHERE:
        importlib.import_module(name)
    out, todo = [], [Operation]
    while todo:
        for sub in todo.pop().__subclasses__():
            out.append(sub)
            todo.append(sub)
    return out


def test_every_operation_declares_safe_alone():
    ops = [c for c in _all_operations() if not c.__name__.startswith("_")]  # _TableOp etc.: shared fields only
    assert len(ops) > 30
    missing = sorted(f"{c.__module__}.{c.__name__}" for c in ops if "safe_alone" not in vars(c))
    assert missing == [], f"declare safe_alone (and say why in the docstring): {missing}"
    undocumented = sorted(c.__name__ for c in ops if "safe alone" not in (c.__doc__ or "").lower())
    assert undocumented == [], undocumented


def test_operations_without_a_default():
    """The base class has no value: an operation that forgot to declare it fails when asked."""
    assert "safe_alone" not in vars(Operation)


def test_policies_dropped_with_the_helper_in_one_step():
    """DropPolicies is not safe alone; in a Together with what makes it safe, the step is."""
    from pgconverge.catalog.model import Policy  # noqa: F401  (the type DropPolicies holds)
    from pgconverge.config import QualifiedName
    from pgconverge.planning.contract import RetireFunction

    drop = DropPolicies((), "test")
    assert drop.safe_alone is False
    both = Together((drop, RetireFunction(QualifiedName("public", "f"), "create function public.f() …")), "test")
    assert both.safe_alone is True
    back = both.reverse()
    assert [type(o).__name__ for o in back.ops] == ["ReplaceFunction", "CreatePolicies"]  # function first
