"""TypeScript, TSX and JavaScript, read with tree-sitter."""

from __future__ import annotations

import re
from functools import lru_cache

import tree_sitter
import tree_sitter_javascript
import tree_sitter_typescript

from pgconverge.audit.code_common import CODE_HELPER, COLUMN, HELPER, TABLE, Hit, Names
from pgconverge.audit.code_strings import StringContext, string_hits

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
        out.extend(_string(string, src, names))
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
    if text == names.helper:
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


def _string(node: tree_sitter.Node, src: bytes, names: Names) -> list[Hit]:
    start, end = node.start_byte + 1, node.end_byte - 1
    if end < start:
        return []
    content = bytearray(neutralise_escapes(src[start:end]))
    for child in node.children:
        if child.type == "template_substitution":  # ${expr} → $1 padded: a parameter to the SQL parser
            a, b = child.start_byte - start, child.end_byte - start
            content[a:b] = b"$1".ljust(b - a)
    return string_hits(start, bytes(content), _context(node, src), names)


def _context(node: tree_sitter.Node, src: bytes) -> StringContext:
    quote = src[node.start_byte:node.start_byte + 1].decode()
    child, parent = node, node.parent
    while parent is not None and parent.type in _WRAPPERS:
        child, parent = parent, parent.parent
    if parent is None:
        return StringContext(quote=quote)
    kind = parent.type
    if kind == "arguments":
        call = parent.parent
        fn = call.child_by_field_name("function") if call is not None else None
        method = None
        if fn is not None and fn.type == "member_expression":
            prop = fn.child_by_field_name("property")
            method = prop.text.decode() if prop is not None else None
        elif fn is not None and fn.type in ("identifier", "import"):
            method = fn.text.decode()
        if method in ("require", "import") or (call is not None and call.type == "new_expression"
                                               and method in ("URL", "Worker")):
            return StringContext(skip=True)
        index = next((i for i, c in enumerate(parent.named_children) if c == child), -1)
        return StringContext(method=method, arg_index=index, quote=quote)
    if kind in ("import_statement", "export_statement", "import_require_clause"):
        return StringContext(skip=True)
    if kind in ("pair", "variable_declarator", "public_field_definition", "field_definition",
                "assignment_expression", "property_signature"):
        field = {"pair": "key", "assignment_expression": "left"}.get(kind, "name")
        key = parent.child_by_field_name(field)
        if key is not None and key.type == "member_expression":
            key = key.child_by_field_name("property")
        text = key.text.decode().strip("'\"`") if key is not None else None
        return StringContext(key=text, quote=quote)
    if kind == "literal_type":
        return StringContext(in_type=True, quote=quote)
    return StringContext(quote=quote)
