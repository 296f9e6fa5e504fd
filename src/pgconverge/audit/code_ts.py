"""TypeScript, TSX and JavaScript, read with tree-sitter."""

from __future__ import annotations

import re
from dataclasses import replace
from functools import lru_cache

import tree_sitter
import tree_sitter_javascript
import tree_sitter_typescript

from pgconverge.audit.code_bindings import Binding, Grammar, legacy_value, substitute, uses
from pgconverge.audit.code_common import CODE_HELPER, COLUMN, HELPER, TABLE, Hit, Names
from pgconverge.audit.code_strings import StringContext, before_placeholder, classify, string_hits

SUFFIXES = {".ts": "typescript", ".mts": "typescript", ".cts": "typescript", ".tsx": "tsx",
            ".js": "javascript", ".jsx": "javascript", ".mjs": "javascript", ".cjs": "javascript"}

_STRINGS = {"string", "template_string"}
_IDENTS = {"identifier", "property_identifier", "shorthand_property_identifier",
           "shorthand_property_identifier_pattern", "type_identifier"}
_WRAPPERS = {"parenthesized_expression", "as_expression", "satisfies_expression", "non_null_expression"}
# Escape sequences become blanks of the same length (a quote or backslash keeps its character),
# so offsets into the neutralised content are offsets into the source.
_ESCAPE = re.compile(rb"\\(?:u\{[0-9a-fA-F]+\}|u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|[nrtbfv0]|\r?\n|(.))", re.DOTALL)


@lru_cache(maxsize=None)
def _parser(lang: str) -> tree_sitter.Parser:
    if lang == "typescript":
        language = tree_sitter_typescript.language_typescript()
    elif lang == "tsx":
        language = tree_sitter_typescript.language_tsx()
    else:
        language = tree_sitter_javascript.language()
    return tree_sitter.Parser(tree_sitter.Language(language))


def neutralise_escapes(raw: bytes) -> bytes:
    return _ESCAPE.sub(lambda m: b" " + m.group(1) if m.group(1) else b" " * len(m.group()), raw)


def hits(src: bytes, suffix: str, names: Names, candidates: list[tuple[int, int]]) -> list[Hit]:
    root = _parser(SUFFIXES[suffix]).parse(src).root_node
    out: list[Hit] = []
    seen: set[int] = set()
    bindings: dict[str, Binding] = {}
    for start, end in candidates:
        node = root.descendant_for_byte_range(start, end)
        if node is None:
            continue
        if node.type in _IDENTS:
            if node.start_byte == start and node.end_byte == end:
                hit = _identifier(node, src[start:end].decode(), names)
                if hit:
                    out.append(hit)
            continue
        string = _enclosing_string(node)
        if string is None or string.start_byte in seen:
            continue  # a comment, JSX text, a regex: not a reference
        seen.add(string.start_byte)
        out.extend(_string(string, src, names, bindings))
    if bindings:
        out.extend(uses(_GRAMMAR, root, src, names, bindings))
    return out


def _enclosing_string(node: tree_sitter.Node) -> tree_sitter.Node | None:
    for _ in range(3):
        if node is None:
            return None
        if node.type in _STRINGS:
            return node
        if node.type not in ("string_fragment", "escape_sequence"):
            return None
        node = node.parent
    return None


def _identifier(node: tree_sitter.Node, text: str, names: Names) -> Hit | None:
    at = node.start_byte
    if text in names.code_helpers:
        return Hit(at, CODE_HELPER, text, names.code_helpers[text])
    if node.type == "type_identifier":
        return None
    if text in names.columns:
        return Hit(at, COLUMN, text, names.canon_column)
    if names.helper and text == names.helper:
        return Hit(at, HELPER, text, names.canon_helper)
    if text == names.table and node.type == "property_identifier" and _in_tables_type(node):
        return Hit(at, TABLE, text, names.canon_table)
    return None


def _in_tables_type(node: tree_sitter.Node) -> bool:
    """`customers` as a key of `Tables: { ... }` / `Views: { ... }` in Supabase's generated types."""
    sig = node.parent
    if sig is None or sig.type != "property_signature":
        return False
    p = sig.parent
    while p is not None and p.type != "property_signature":
        p = p.parent
    name = p.child_by_field_name("name") if p is not None else None
    return name is not None and name.text in (b"Tables", b"Views")


def _string(node: tree_sitter.Node, src: bytes, names: Names, bindings: dict[str, Binding]) -> list[Hit]:
    start, end = node.start_byte + 1, node.end_byte - 1
    if end < start:
        return []
    content = _content(node, src)
    ctx = _context(node, src)
    text = content.decode("utf-8", "replace")
    if not ctx.skip and legacy_value(text, names):
        shown, uses = _bound_to(node)
        if shown:
            ctx = replace(ctx, bound_to=shown)
            for name, at in uses:
                bindings.setdefault(name, Binding(name, text.strip(), node.start_point[0] + 1, ctx.quote, at))
    return string_hits(start, content, ctx, names)


_COLLECTIONS = {"object", "pair", "array", *_WRAPPERS}


def _bound_to(node: tree_sitter.Node) -> tuple[str | None, list[tuple[str, int]]]:
    """The name the string literal NODE is the whole value of (a variable, a default argument, a class field, an
    enum member, an object property), and the names (with their offsets there) a use of it may be written as."""
    child, parent = node, node.parent
    while parent is not None and parent.type in _WRAPPERS:
        child, parent = parent, parent.parent
    if parent is None:
        return None, []
    kind = parent.type
    target, value = {"variable_declarator": ("name", "value"), "assignment_expression": ("left", "right"),
                     "required_parameter": ("pattern", "value"), "optional_parameter": ("pattern", "value"),
                     "assignment_pattern": ("left", "right"), "object_assignment_pattern": ("left", "right"),
                     "public_field_definition": ("name", "value"), "field_definition": ("property", "value"),
                     "enum_assignment": ("name", "value"), "pair": ("key", "value")}.get(kind, (None, None))
    left = parent.child_by_field_name(target) if target else None
    if left is None or parent.child_by_field_name(value) != child:
        return None, []
    text = re.sub(r"\s+", "", left.text.decode())
    if kind in ("public_field_definition", "field_definition"):  # a class field: read as this.X or Class.X
        cls = parent.parent.parent if parent.parent is not None else None
        name = cls.child_by_field_name("name") if cls is not None else None
        return text, [(f"{o}.{text}", left.start_byte)
                      for o in ("this", *([name.text.decode()] if name is not None else []))]
    if kind == "enum_assignment":  # read as Enum.X
        enum = parent.parent.parent if parent.parent is not None else None
        name = enum.child_by_field_name("name") if enum is not None else None
        return text, [(f"{name.text.decode()}.{text}", left.start_byte)] if name is not None else []
    if kind == "pair":
        # An object written as a call's argument (a row, options) is judged by that call.
        up = parent.parent
        while up is not None and up.type in _COLLECTIONS:
            up = up.parent
        if up is None or up.type == "arguments":
            return None, []
        key = text.strip("'\"`")
        holder = _unwrap_up(parent.parent)
        if holder is not None and holder.type == "variable_declarator" and re.fullmatch(r"[A-Za-z_$][\w$]*", key):
            var = holder.child_by_field_name("name")
            if var is not None and var.type == "identifier":  # const Tables = { legacy: 'customers' }: Tables.legacy
                return key, [(f"{var.text.decode()}.{key}", left.start_byte)]
        return key, []
    if left.type in ("identifier", "shorthand_property_identifier_pattern", "member_expression"):
        return text, [(text, left.start_byte)]
    return text, []  # a subscript or a pattern: named, not followed


def _unwrap_up(node: tree_sitter.Node | None) -> tree_sitter.Node | None:
    """NODE's parent past parentheses and type assertions (`{ ... } as const`)."""
    parent = node.parent if node is not None else None
    while parent is not None and parent.type in _WRAPPERS:
        parent = parent.parent
    return parent


# Places where a bound name is written but not read: its own (re)binding, a parameter, an import.
_NOT_A_USE = {"variable_declarator", "assignment_expression", "augmented_assignment_expression", "required_parameter",
              "optional_parameter", "assignment_pattern", "object_assignment_pattern", "import_specifier",
              "export_specifier", "namespace_import", "import_clause", "formal_parameters", "for_in_statement",
              "function_declaration", "class_declaration", "update_expression", "labeled_statement",
              "type_annotation"}
# ... except as the value there: `const alias = LEGACY`, `function f(t = LEGACY)`.
_VALUE_FIELD = {"variable_declarator": "value", "assignment_expression": "right",
                "augmented_assignment_expression": "right", "required_parameter": "value",
                "optional_parameter": "value", "assignment_pattern": "right", "object_assignment_pattern": "right",
                "for_in_statement": "right"}


def _alias_of(node: tree_sitter.Node, parent: tree_sitter.Node) -> tuple[str, int] | None:
    """`const alias = NODE`, `alias = NODE`: the alias's name and offset."""
    target, value = {"variable_declarator": ("name", "value"),
                     "assignment_expression": ("left", "right")}.get(parent.type, (None, None))
    left = parent.child_by_field_name(target) if target else None
    if left is None or parent.child_by_field_name(value) != node \
            or left.type not in ("identifier", "member_expression"):
        return None
    return re.sub(r"\s+", "", left.text.decode()), left.start_byte


def _interpolated(string: tree_sitter.Node, src: bytes, names: Names, bindings: dict[str, Binding]) -> list[Hit]:
    """A template literal read with each ${substitution} of a bound name replaced by the name it holds: what
    lands in a substitution is reported there."""
    base = string.start_byte + 1
    spans = []
    for child in string.children:
        if child.type != "template_substitution":
            continue
        expr = next(iter(child.named_children), None)
        binding = bindings.get(re.sub(r"\s+", "", expr.text.decode())) \
            if expr is not None and expr.type in ("identifier", "member_expression") else None
        spans.append((child.start_byte - base, child.end_byte - base, binding, expr.start_byte if expr else 0))
    ctx = _context(string, src)
    if ctx.skip:
        return []
    text, ranges = substitute(_content(string, src), spans)
    out = []
    for r in classify(text, replace(ctx, bound_to=None), names):
        out += [Hit(at, r.category, r.name, r.suggestion, binding.reason())
                for a, b, binding, at in ranges if a <= r.offset < b]
    return out


def _content(node: tree_sitter.Node, src: bytes) -> bytes:
    """The string's content, escapes blanked and each ${expr} made $1 padded (a parameter to the SQL parser)."""
    start, end = node.start_byte + 1, node.end_byte - 1
    content = bytearray(neutralise_escapes(src[start:end]))
    for child in node.children:
        if child.type == "template_substitution":
            a, b = child.start_byte - start, child.end_byte - start
            content[a:b] = b"$1".ljust(b - a)
    return bytes(content)


def _unwrap(node: tree_sitter.Node | None) -> tree_sitter.Node | None:
    while node is not None and node.type in _WRAPPERS:
        node = node.named_children[0] if node.named_children else None
    return node


def _literal(node: tree_sitter.Node | None, src: bytes) -> str | None:
    node = _unwrap(node)
    if node is None or node.type not in _STRINGS:
        return None
    return _content(node, src).decode("utf-8", "replace")


def _is_plus(node: tree_sitter.Node) -> bool:
    op = node.child_by_field_name("operator")
    return node.type == "binary_expression" and op is not None and op.type == "+"


def _concatenated_onto(node: tree_sitter.Node, parent: tree_sitter.Node, src: bytes) -> str | None:
    """In `a + b`, B's literal left neighbour: the string A, or the last string of A = `x + 'from '`."""
    if parent.child_by_field_name("right") != node:
        return None
    left = _unwrap(parent.child_by_field_name("left"))
    while left is not None and _is_plus(left):
        left = _unwrap(left.child_by_field_name("right"))
    return _literal(left, src)


def _call_name(call: tree_sitter.Node | None) -> tuple[str | None, tree_sitter.Node | None]:
    fn = call.child_by_field_name("function") if call is not None else None
    if fn is not None and fn.type == "member_expression":
        prop = fn.child_by_field_name("property")
        return (prop.text.decode() if prop is not None else None), fn
    if fn is not None and fn.type in ("identifier", "import"):
        return fn.text.decode(), fn
    return None, fn


def _chained(call: tree_sitter.Node | None, fn: tree_sitter.Node | None) -> str | None:
    """The method called on the result of a plain function call: `db('t').where(...)` → where."""
    if call is None or fn is None or fn.type != "identifier" or fn.text == b"$":
        return None
    member = call.parent
    if member is None or member.type != "member_expression" or member.child_by_field_name("object") != call:
        return None
    outer = member.parent
    if outer is None or outer.type != "call_expression" or outer.child_by_field_name("function") != member:
        return None
    prop = member.child_by_field_name("property")
    return prop.text.decode() if prop is not None else None


def _prev_literal(child: tree_sitter.Node, siblings: list[tree_sitter.Node], src: bytes) -> str | None:
    i = next((i for i, c in enumerate(siblings) if c == child), 0)
    return _literal(siblings[i - 1], src) if i > 0 else None


def _context(node: tree_sitter.Node, src: bytes, quote: str | None = None) -> StringContext:
    """Where the string literal NODE stands (or a name used where a string could: QUOTE is then the bound
    literal's)."""
    quote = quote or src[node.start_byte:node.start_byte + 1].decode()
    child, parent = node, node.parent
    while parent is not None and parent.type in _WRAPPERS:
        child, parent = parent, parent.parent
    if parent is None:
        return StringContext(quote=quote)
    kind = parent.type
    if kind == "arguments":
        call = parent.parent
        method, fn = _call_name(call)
        if method in ("require", "import") or (call is not None and call.type == "new_expression"
                                               and method in ("URL", "Worker")):
            return StringContext(skip=True)
        index = next((i for i, c in enumerate(parent.named_children) if c == child), -1)
        fmt = _literal(parent.named_children[0], src) if method == "format" and index > 0 else None
        return StringContext(method=method, arg_index=index, quote=quote, chained=_chained(call, fn),
                             prev_arg=_prev_literal(child, parent.named_children, src),
                             # pg-format's and util.format's `format('select * from %I', 'customers')`
                             sql_before=before_placeholder(fmt, index - 1, "printf") if fmt is not None else None)
    if kind == "array" and parent.parent is not None and parent.parent.type == "arguments":
        method, _ = _call_name(parent.parent.parent)
        return StringContext(list_of=method, quote=quote, prev_arg=_prev_literal(child, parent.named_children, src))
    if _is_plus(parent):
        return StringContext(quote=quote, sql_before=_concatenated_onto(child, parent, src))
    if kind == "subscript_expression" and parent.child_by_field_name("index") == child:
        obj = parent.child_by_field_name("object")
        if obj is not None and obj.type == "member_expression":
            obj = obj.child_by_field_name("property")
        return StringContext(key=obj.text.decode() if obj is not None else None, quote=quote)
    if kind in ("import_statement", "export_statement", "import_require_clause"):
        return StringContext(skip=True)
    if kind in ("pair", "variable_declarator", "public_field_definition", "field_definition",
                "assignment_expression", "property_signature"):
        field = {"pair": "key", "assignment_expression": "left"}.get(kind, "name")
        key = parent.child_by_field_name(field)
        if key is not None and key.type == "member_expression":
            key = key.child_by_field_name("property")
        text = key.text.decode().strip("'\"`") if key is not None else None
        owner = None
        obj = parent.parent
        if kind == "pair" and obj is not None and obj.type == "object" and obj.parent is not None \
                and obj.parent.type == "arguments":
            owner, _ = _call_name(obj.parent.parent)
        return StringContext(key=text, quote=quote, owner=owner)
    if kind == "literal_type":
        return StringContext(in_type=True, quote=quote)
    return StringContext(quote=quote)


# The walk over uses of bound names (code_bindings.uses), in this grammar's words.
_GRAMMAR = Grammar(("identifier", "member_expression"), "template_substitution", "template_string",
                   frozenset(_NOT_A_USE), _VALUE_FIELD, alias_of=_alias_of,
                   context=lambda node, quote, src: _context(node, src, quote), interpolated=_interpolated)
