"""Python, read with tree-sitter."""

from __future__ import annotations

import re
from functools import lru_cache

import tree_sitter
import tree_sitter_python

from pgconverge.audit.code_common import CODE_HELPER, COLUMN, HELPER, Hit, Names
from pgconverge.audit.code_strings import StringContext, before_placeholder, string_hits

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
        out.extend(_string(string, src, names))
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
    if text == names.helper:
        return Hit(at, HELPER, text, names.canon_helper)
    return None


def _string(node: tree_sitter.Node, src: bytes, names: Names) -> list[Hit]:
    content = _content(node, src)
    if content is None:
        return []
    prefix = node.child(0).text.decode()
    quote = prefix.lstrip("rRbBuUfFtT")[:1] or "'"
    return string_hits(node.child(0).end_byte, content, _context(node, quote, src), names)


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
