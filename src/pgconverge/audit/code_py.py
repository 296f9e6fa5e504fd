"""Python, read with tree-sitter."""

from __future__ import annotations

import re
from dataclasses import replace
from functools import lru_cache

import tree_sitter
import tree_sitter_python

from pgconverge.audit.code_bindings import Binding, Grammar, legacy_value, substitute, uses
from pgconverge.audit.code_common import CODE_HELPER, COLUMN, HELPER, Hit, Names
from pgconverge.audit.code_strings import StringContext, before_placeholder, classify, string_hits

SUFFIXES = {".py": "python", ".pyi": "python"}

_WRAPPERS = {"parenthesized_expression", "concatenated_string"}
_ESCAPE = re.compile(rb"\\(?:N\{[^}]*\}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|x[0-9a-fA-F]{2}|[0-7]{1,3}|[nrtbfva]|\r?\n"
                     rb"|(.))", re.DOTALL)


@lru_cache(maxsize=None)
def _parser() -> tree_sitter.Parser:
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_python.language()))


def hits(src: bytes, suffix: str, names: Names, candidates: list[tuple[int, int]]) -> list[Hit]:
    root = _parser().parse(src).root_node
    out: list[Hit] = []
    seen: set[int] = set()
    bindings: dict[str, Binding] = {}
    for start, end in candidates:
        node = root.descendant_for_byte_range(start, end)
        if node is None:
            continue
        if node.type == "identifier":
            if node.start_byte == start and node.end_byte == end:
                hit = _identifier(node, src[start:end].decode(), names)
                if hit:
                    out.append(hit)
            continue
        string = _enclosing_string(node)
        if string is None or string.start_byte in seen:
            continue  # a comment: not a reference
        seen.add(string.start_byte)
        out.extend(_string(string, src, names, bindings))
    if bindings:
        out.extend(uses(_GRAMMAR, root, src, names, bindings))
    return out


def _enclosing_string(node: tree_sitter.Node) -> tree_sitter.Node | None:
    for _ in range(3):
        if node is None:
            return None
        if node.type == "string":
            return node
        if node.type not in ("string_content", "escape_sequence"):
            return None
        node = node.parent
    return None


def _identifier(node: tree_sitter.Node, text: str, names: Names) -> Hit | None:
    at = node.start_byte
    if text in names.code_helpers:
        return Hit(at, CODE_HELPER, text, names.code_helpers[text])
    if text in names.columns:
        return Hit(at, COLUMN, text, names.canon_column)
    if names.helper and text == names.helper:
        return Hit(at, HELPER, text, names.canon_helper)
    return None


def _quote(node: tree_sitter.Node) -> str:
    return node.child(0).text.decode().lstrip("rRbBuUfFtT")[:1] or "'"


def _string(node: tree_sitter.Node, src: bytes, names: Names, bindings: dict[str, Binding] | None = None) -> list[Hit]:
    content = _content(node, src)
    if content is None:
        return []
    quote = _quote(node)
    ctx = _context(node, quote, src)
    text = content.decode("utf-8", "replace")
    if not ctx.skip and legacy_value(text, names):
        shown, uses = _bound_to(node, src)
        if shown:
            ctx = replace(ctx, bound_to=shown)
            line = node.start_point[0] + 1
            for name, at in uses:
                if bindings is not None:
                    bindings.setdefault(name, Binding(name, text.strip(), line, quote, at))
    return string_hits(node.child(0).end_byte, content, ctx, names)


_COLLECTIONS = {"dictionary", "pair", "list", "tuple", "set", "parenthesized_expression", "keyword_argument"}


def _bound_to(node: tree_sitter.Node, src: bytes) -> tuple[str | None, list[tuple[str, int]]]:
    """The name the string literal NODE is the whole value of (a variable, a default argument, a dict value), and
    the names (with their offsets there) a use of it may be written as."""
    child, parent = node, node.parent
    while parent is not None and parent.type == "parenthesized_expression":
        child, parent = parent, parent.parent
    if parent is None:
        return None, []
    kind = parent.type
    if kind in ("assignment", "named_expression", "default_parameter", "typed_default_parameter"):
        target, value = ("left", "right") if kind == "assignment" else ("name", "value")
        left = parent.child_by_field_name(target)
        if parent.child_by_field_name(value) != child or left is None:
            return None, []
        text = re.sub(r"\s+", "", left.text.decode())
        if left.type == "identifier":
            uses = [(text, left.start_byte)]
            cls = _class_of(parent)
            if cls is not None:  # a class attribute: read as self.X, cls.X or Class.X
                uses += [(f"{o}.{text}", left.start_byte) for o in ("self", "cls", cls)]
            return text, uses
        if left.type == "attribute":
            return text, [(text, left.start_byte)]
        return text, []  # a subscript or a pattern: named, not followed
    if kind == "pair" and parent.child_by_field_name("value") == child:
        # A dict written as a call's argument (a row, options) or formatted with `%` is judged by that call.
        up = parent.parent
        while up is not None and up.type in _COLLECTIONS:
            up = up.parent
        if up is None or up.type == "argument_list" or (up.type == "binary_operator" and _is_percent(up)):
            return None, []
        key = parent.child_by_field_name("key")
        if key is None:
            return None, []
        text = "".join(c.text.decode() for c in key.children if c.type == "string_content") \
            if key.type == "string" else key.text.decode()
        return text, []
    return None, []


def _is_percent(node: tree_sitter.Node) -> bool:
    op = node.child_by_field_name("operator")
    return op is not None and op.type == "%"


def _class_of(assignment: tree_sitter.Node) -> str | None:
    """The class whose body ASSIGNMENT is a statement of, if any."""
    stmt = assignment.parent
    block = stmt.parent if stmt is not None and stmt.type == "expression_statement" else None
    cls = block.parent if block is not None and block.type == "block" else None
    if cls is None or cls.type != "class_definition":
        return None
    name = cls.child_by_field_name("name")
    return name.text.decode() if name is not None else None


# Places where a bound name is written but not read: its own (re)binding, a parameter, a keyword's name.
_NOT_A_USE = {"global_statement", "nonlocal_statement", "import_statement", "import_from_statement",
              "aliased_import", "dotted_name", "parameters", "lambda_parameters", "keyword_argument",
              "default_parameter", "typed_default_parameter", "typed_parameter", "named_expression",
              "assignment", "augmented_assignment", "for_statement", "for_in_clause", "delete_statement",
              "pattern_list", "tuple_pattern", "list_pattern", "as_pattern", "function_definition",
              "class_definition"}
# ... except as the value there: `alias = LEGACY`, `f(t=LEGACY)`, `def f(t=LEGACY)`, `for t in LEGACY`.
_VALUE_FIELD = {"assignment": "right", "augmented_assignment": "right", "for_statement": "right",
                "for_in_clause": "right"}


def _alias_of(node: tree_sitter.Node, parent: tree_sitter.Node) -> tuple[str, int] | None:
    """`alias = NODE`: the alias's name and offset."""
    left = parent.child_by_field_name("left") if parent.type == "assignment" else None
    if left is None or parent.child_by_field_name("right") != node or left.type not in ("identifier", "attribute"):
        return None
    return re.sub(r"\s+", "", left.text.decode()), left.start_byte


def _interpolated(string: tree_sitter.Node, src: bytes, names: Names, bindings: dict[str, Binding]) -> list[Hit]:
    """An f-string read with each {substitution} of a bound name replaced by the name it holds: what lands in
    a substitution is reported there."""
    content = _content(string, src)
    if content is None:
        return []
    base = string.child(0).end_byte
    spans = []
    for child in string.children:
        if child.type != "interpolation":
            continue
        expr = child.child_by_field_name("expression")
        binding = bindings.get(re.sub(r"\s+", "", expr.text.decode())) \
            if expr is not None and expr.type in ("identifier", "attribute") else None
        spans.append((child.start_byte - base, child.end_byte - base, binding, expr.start_byte if expr else 0))
    ctx = _context(string, _quote(string), src)
    if ctx.skip:
        return []
    text, ranges = substitute(content, spans)
    out = []
    for r in classify(text, replace(ctx, bound_to=None), names):
        out += [Hit(at, r.category, r.name, r.suggestion, binding.reason())
                for a, b, binding, at in ranges if a <= r.offset < b]
    return out


def _content(node: tree_sitter.Node, src: bytes) -> bytes | None:
    """The string's content, escapes blanked and each f-string {expr} made $1 padded (a parameter to the
    SQL parser); None for a string tree-sitter could not close."""
    opening = node.child(0)
    closing = node.child(node.child_count - 1)
    if opening is None or closing is None or opening.type != "string_start" or closing.type != "string_end":
        return None
    prefix = opening.text.decode()
    start, end = opening.end_byte, closing.start_byte
    raw = src[start:end]
    content = bytearray(raw if "r" in prefix.lower() else _ESCAPE.sub(
        lambda m: b" " + m.group(1) if m.group(1) else b" " * len(m.group()), raw))
    for child in node.children:
        if child.type == "interpolation":
            a, b = child.start_byte - start, child.end_byte - start
            content[a:b] = b"$1".ljust(b - a)
    return bytes(content)


def _unwrap(node: tree_sitter.Node | None) -> tree_sitter.Node | None:
    while node is not None and node.type == "parenthesized_expression":
        node = node.named_children[0] if node.named_children else None
    return node


def _literal(node: tree_sitter.Node | None, src: bytes) -> str | None:
    node = _unwrap(node)
    if node is not None and node.type == "concatenated_string" and node.named_children:
        node = node.named_children[-1]
    if node is None or node.type != "string":
        return None
    content = _content(node, src)
    return content.decode("utf-8", "replace") if content is not None else None


def _is_plus(node: tree_sitter.Node) -> bool:
    op = node.child_by_field_name("operator")
    return node.type == "binary_operator" and op is not None and op.type == "+"


def _concatenated_onto(node: tree_sitter.Node, src: bytes) -> str | None:
    """The string literal NODE continues: the one before it in an implicit concatenation ('a ' 'b'),
    else in `a + b` the string A, or the last string of A = `x + 'from '`."""
    parent = node.parent
    if parent is not None and parent.type == "concatenated_string":
        siblings = parent.named_children
        i = next((i for i, c in enumerate(siblings) if c == node), 0)
        if i > 0:
            return _literal(siblings[i - 1], src)
    child, parent = node, node.parent
    while parent is not None and parent.type in _WRAPPERS:
        child, parent = parent, parent.parent
    formatted = _formatted_into(child, parent, src)
    if formatted is not None:
        return formatted
    if parent is None or not _is_plus(parent) or parent.child_by_field_name("right") != child:
        return None
    left = _unwrap(parent.child_by_field_name("left"))
    while left is not None and _is_plus(left):
        left = _unwrap(left.child_by_field_name("right"))
    return _literal(left, src)


def _formatted_into(child: tree_sitter.Node, parent: tree_sitter.Node | None, src: bytes) -> str | None:
    """The SQL text before the placeholder CHILD fills: `"select * from %s" % "customers"` (or one element of a
    tuple or a dict after `%`), `"select * from {}".format("customers")` or `.format(t="customers")` with `{t}`."""
    if parent is None:
        return None
    which: int | str = 0
    held = parent.type in ("pair", "tuple")  # an element of the `%` operand, never a `.format` argument
    if parent.type == "pair" and parent.child_by_field_name("value") == child and parent.parent is not None:
        key = _literal(parent.child_by_field_name("key"), src)  # `"... %(t)s" % {"t": "customers"}`
        if key is None:
            return None
        which, child, parent = key, parent.parent, parent.parent.parent
    elif parent.type == "tuple":
        which, child, parent = parent.named_children.index(child), parent, parent.parent
    while parent is not None and parent.type == "parenthesized_expression":
        child, parent = parent, parent.parent
    if parent is None:
        return None
    op = parent.child_by_field_name("operator")
    if parent.type == "binary_operator" and op is not None and op.type == "%" \
            and parent.child_by_field_name("right") == child:
        fmt = _literal(parent.child_by_field_name("left"), src)
        return before_placeholder(fmt, which, "printf") if fmt is not None else None
    if held:
        return None
    if parent.type == "keyword_argument":
        name = parent.child_by_field_name("name")
        which, parent = (name.text.decode() if name is not None else ""), parent.parent
    elif parent.type == "argument_list":
        which = sum(1 for c in parent.named_children[:parent.named_children.index(child)]
                    if c.type != "keyword_argument")
    else:
        return None
    fn = parent.parent.child_by_field_name("function") if parent is not None and parent.parent is not None else None
    if fn is None or fn.type != "attribute" or _call_name(parent.parent) != "format":
        return None
    fmt = _literal(fn.child_by_field_name("object"), src)
    return before_placeholder(fmt, which, "braces") if fmt is not None else None


def _call_name(call: tree_sitter.Node | None) -> str | None:
    fn = call.child_by_field_name("function") if call is not None else None
    if fn is not None and fn.type == "attribute":
        attr = fn.child_by_field_name("attribute")
        return attr.text.decode() if attr is not None else None
    if fn is not None and fn.type == "identifier":
        return fn.text.decode()
    return None


def _prev_literal(child: tree_sitter.Node, siblings: list[tree_sitter.Node], src: bytes) -> str | None:
    i = next((i for i, c in enumerate(siblings) if c == child), 0)
    return _literal(siblings[i - 1], src) if i > 0 else None


def _context(node: tree_sitter.Node, quote: str, src: bytes) -> StringContext:
    sql_before = _concatenated_onto(node, src)
    child, parent = node, node.parent
    while parent is not None and parent.type in _WRAPPERS:
        child, parent = parent, parent.parent
    if parent is None:
        return StringContext(quote=quote, sql_before=sql_before)
    kind = parent.type
    if kind == "expression_statement":  # a docstring or a bare string: documentation
        return StringContext(skip=True)
    if kind == "argument_list":
        index = next((i for i, c in enumerate(parent.named_children) if c == child), -1)
        return StringContext(method=_call_name(parent.parent), arg_index=index, quote=quote,
                             prev_arg=_prev_literal(child, parent.named_children, src), sql_before=sql_before)
    if kind in ("list", "tuple") and parent.parent is not None and parent.parent.type == "argument_list":
        return StringContext(list_of=_call_name(parent.parent.parent), quote=quote,
                             prev_arg=_prev_literal(child, parent.named_children, src), sql_before=sql_before)
    if kind == "subscript" and parent.child_by_field_name("subscript") == child:
        obj = parent.child_by_field_name("value")
        if obj is not None and obj.type == "attribute":
            obj = obj.child_by_field_name("attribute")
        return StringContext(key=obj.text.decode() if obj is not None else None, quote=quote, sql_before=sql_before)
    if kind in ("keyword_argument", "pair", "assignment"):
        field = {"keyword_argument": "name", "pair": "key", "assignment": "left"}[kind]
        key = parent.child_by_field_name(field)
        if key is not None and key.type == "attribute":
            key = key.child_by_field_name("attribute")
        if key is not None and key.type == "string":
            text = "".join(c.text.decode() for c in key.children if c.type == "string_content")
        else:
            text = key.text.decode() if key is not None else None
        owner = None
        if kind == "pair" and parent.parent is not None and parent.parent.type == "dictionary" \
                and parent.parent.parent is not None and parent.parent.parent.type == "argument_list":
            owner = _call_name(parent.parent.parent.parent)
        return StringContext(key=text, quote=quote, owner=owner, sql_before=sql_before)
    return StringContext(quote=quote, sql_before=sql_before)


# The walk over uses of bound names (code_bindings.uses), in this grammar's words.
_GRAMMAR = Grammar(("identifier", "attribute"), "interpolation", "string", frozenset(_NOT_A_USE), _VALUE_FIELD,
                   member="attribute", alias_of=_alias_of, context=_context, interpolated=_interpolated)
