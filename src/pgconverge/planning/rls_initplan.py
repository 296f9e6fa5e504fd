"""Call the canonical helper once per query: `helper()` → `(SELECT helper())` in a rewritten policy.

A STABLE function called in a policy runs for every row the policy filters, unless the
expression gives the planner an uncorrelated sub-select, which it evaluates once (an InitPlan).
The bridged helper does more work than the original (a mapping lookup for old tokens), so the
rewrite wraps it: same result, since a STABLE function returns the same value within a
statement, at a fraction of the cost on tables whose policies cannot use an index.
"""

from __future__ import annotations

from pglast import ast, enums, visitors

from pgconverge.config import QualifiedName
from pgconverge.planning.rls_ast import deparse, parse_expression


class _Wrap(visitors.Visitor):
    def __init__(self, helper: QualifiedName):
        super().__init__()
        self.names = {(helper.schema, helper.name), (helper.name,)}

    def visit_FuncCall(self, ancestors, node):
        name = tuple(s.sval for s in node.funcname)
        if name not in self.names or node.args:
            return None
        parent = ancestors.parent.node if ancestors.parent is not None else None
        if isinstance(parent, ast.ResTarget):  # already alone in a SELECT list: nothing to gain
            return None
        sub = ast.SelectStmt(targetList=(ast.ResTarget(val=node),), limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT,
                             op=enums.SetOperation.SETOP_NONE)
        return ast.SubLink(subLinkType=enums.SubLinkType.EXPR_SUBLINK, subLinkId=0, subselect=sub)


def once_per_query(expression: str | None, helper: QualifiedName) -> str | None:
    """EXPRESSION with every argument-less call of HELPER wrapped in a scalar sub-select."""
    if expression is None:
        return None
    tree = parse_expression(expression)
    _Wrap(helper)(tree)
    return deparse(tree)
