"""Find which watched names a piece of SQL or PL/pgSQL source mentions, ignoring comments and prose."""

from __future__ import annotations

from dataclasses import dataclass

from pglast import parser

_SKIP = {"SQL_COMMENT", "C_COMMENT"}


@dataclass(frozen=True)
class Mention:
    name: str
    offset: int
    in_string: bool  # inside a string literal, e.g. dynamic SQL given to EXECUTE
    whole: bool = False  # the string literal is the name alone (a JSON key, 'user_id'), not SQL naming it


def _ident(text: str) -> str:
    if text.startswith('"') and text.endswith('"'):
        return text[1:-1].replace('""', '"')
    return text.lower()


def _literal(text: str) -> str:
    if text[:1] in "eE" and text[1:2] == "'":
        text = text[1:]
    if text.startswith("'") and text.endswith("'"):
        return text[1:-1].replace("''", "'")
    if text.startswith("$"):  # dollar-quoted
        tag_end = text.index("$", 1) + 1
        return text[tag_end:-tag_end]
    return text


def _literal_mentions(content: str, names: frozenset[str]) -> set[str]:
    """Names a string literal refers to: the literal is exactly a name, or is SQL that uses one."""
    if content.strip() in names:
        return {content.strip()}
    try:
        parser.parse_sql(content)
    except Exception:  # noqa: BLE001 - prose, format() templates, anything that is not SQL
        return set()
    return {m.name for m in find(content, names) if not m.in_string}


def find(source: str, names: frozenset[str] | set[str]) -> list[Mention]:
    """Return every mention of NAMES in SOURCE as identifiers or as SQL inside string literals."""
    names = frozenset(names)
    try:
        tokens = parser.scan(source)
    except Exception:  # noqa: BLE001 - unscannable source: fall back to nothing rather than guess
        return []
    out: list[Mention] = []
    for tok in tokens:
        if tok.name in _SKIP:
            continue
        text = source[tok.start:tok.end + 1]
        if tok.name == "SCONST":
            content = _literal(text)
            for n in sorted(_literal_mentions(content, names)):
                out.append(Mention(n, tok.start, True, content.strip() == n))
        elif tok.name == "IDENT" or tok.kind != "NO_KEYWORD":
            ident = _ident(text)
            if ident in names:
                out.append(Mention(ident, tok.start, False))
    return out
