"""Legacy names reached through a binding: `LEGACY = "customers"`, then `f"select * from {LEGACY}"` or
`supabase.table(LEGACY)`.

A string literal that is exactly a legacy name (the table, qualified or not, a column, the helper) and is the
value of a variable, a constant, a default argument, a class field, a dict value or an object property is
a reference where it is written (code_strings reads it so). Each later use of that variable in the same file
is read as if the literal stood there: passed to `.from()`, concatenated or formatted onto SQL, or
substituted into an f-string or template literal. Names are matched by their text in the file, whatever the
scope: a reviewer's reading, not data-flow analysis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable

from pgconverge.audit.code_common import Hit, Names
from pgconverge.audit.code_strings import classify


@dataclass(frozen=True)
class Binding:
    """A string literal holding a legacy name, and a name a use of it is written as."""

    name: str  # as written at a use: LEGACY, self.table, this.table, Tables.legacy
    value: str  # the literal's text: customers, public.customers, customer_id
    line: int  # 1-based line of the binding
    quote: str  # the literal's quote character
    at: int  # byte offset of the name at the binding, which is not a use
    via: "Binding | None" = None  # for `alias = LEGACY`, LEGACY's binding

    def reason(self) -> str:
        if self.via is not None:
            return f"reached through {self.name} (line {self.line}) and " + self.via.reason().removeprefix(
                "reached through ")
        return f"reached through {self.name}, bound to {self.quote}{self.value}{self.quote} at line {self.line}"

    def alias(self, name: str, line: int, at: int) -> "Binding":
        """NAME, bound at LINE to this binding's name."""
        return Binding(name, self.value, line, self.quote, at, self)


def legacy_value(text: str, names) -> bool:
    """TEXT (a literal's content) is exactly a legacy name a binding can carry."""
    word = text.strip()
    schema, _, rel = word.rpartition(".")
    if rel == names.table and schema in ("", names.table_schema):
        return True
    if names.helper and rel == names.helper and schema in ("", names.helper_schema):
        return True
    return word in names.columns


def use_regex(bindings: dict[str, Binding]) -> re.Pattern[bytes]:
    """Bytes regex for a whole-word occurrence of any bound name that is not a member of something else."""
    alt = b"|".join(re.escape(n.encode()) for n in sorted(bindings, key=len, reverse=True))
    return re.compile(rb"(?<![\w$.])(?:" + alt + rb")(?![\w$])")


def substitute(content: bytes, spans: list[tuple[int, int, Binding | None, int]]
               ) -> tuple[str, list[tuple[int, int, Binding, int]]]:
    """CONTENT (a string's neutralised content) with each span (byte offsets A, B into it) that a binding fills
    replaced by the binding's value; the text, and the character range each value occupies in it with the span's
    TAG (where its use is reported). Spans without a binding keep their `$1` padding."""
    out: list[str] = []
    ranges: list[tuple[int, int, Binding, int]] = []
    pos, length = 0, 0
    for a, b, binding, tag in sorted(spans, key=lambda s: s[0]):
        if binding is None:
            continue
        before = content[pos:a].decode("utf-8", "replace")
        out.append(before)
        length += len(before)
        out.append(binding.value)
        ranges.append((length, length + len(binding.value), binding, tag))
        length += len(binding.value)
        pos = b
    out.append(content[pos:].decode("utf-8", "replace"))
    return "".join(out), ranges


def follow(bindings: dict[str, Binding], uses_of) -> list:
    """The hits of every use of a bound name, then of the names it is copied to (`alias = LEGACY`), and so on, until
    no new alias turns up. USES_OF(pending, aliases) returns the hits of the names in PENDING and records in ALIASES
    the aliases it meets; BINDINGS gains them (a string read again gives the same hits, so each is read once per
    round)."""
    out: list = []
    pending = dict(bindings)
    while pending:
        aliases: dict[str, Binding] = {}
        out += uses_of(pending, aliases)
        pending = {k: b for k, b in aliases.items() if k not in bindings}
        bindings.update(pending)
    return out


@dataclass(frozen=True)
class Grammar:
    """What a language's tree calls the pieces the walk over uses needs (code_py, code_ts)."""

    use: tuple[str, ...]  # node types a use of a bound name is: ("identifier", "attribute")
    substitution: str  # a substitution in a string: "interpolation", "template_substitution"
    template: str  # the string holding it: "string", "template_string"
    not_a_use: frozenset[str]  # parents where a name is declared, assigned or imported, not used ...
    value_field: dict[str, str] = field(default_factory=dict)  # ... except as their value (default field "value")
    member: str | None = None  # a member access whose member part is no use of a bound name (Python's attribute)
    # (node, parent) -> (alias, offset) for `alias = NODE`; (node, quote, src) -> its StringContext;
    # (string, src, names, bindings) -> the hits of a string read with its substitutions filled in
    alias_of: Callable = None  # type: ignore[assignment]
    context: Callable = None  # type: ignore[assignment]
    interpolated: Callable = None  # type: ignore[assignment]


def uses(grammar: Grammar, root, src: bytes, names: Names, bindings: dict[str, Binding]) -> list[Hit]:
    """Each use of a bound name read as the legacy name it holds (an argument, an operand of `+` or `%`, a
    `.format()` argument, a substitution in a string), then of the names it is copied to, each reported where it
    is used with how the name was reached."""
    def uses_of(pending: dict[str, Binding], aliases: dict[str, Binding]) -> list:
        out: list[Hit] = []
        strings: set[int] = set()  # strings read with their substitutions: once each
        defs = {b.at for b in bindings.values()}
        for m in use_regex(pending).finditer(src):
            node = root.descendant_for_byte_range(m.start(), m.end())
            if node is None or node.start_byte != m.start() or node.end_byte != m.end() \
                    or node.type not in grammar.use or node.start_byte in defs:
                continue
            binding = pending[re.sub(rb"\s+", b"", m.group()).decode()]
            parent = node.parent
            if parent is None:
                continue
            alias = grammar.alias_of(node, parent)
            if alias is not None:
                aliases.setdefault(alias[0], binding.alias(alias[0], parent.start_point[0] + 1, alias[1]))
            if parent.type == grammar.substitution:
                string = parent.parent
                if string is not None and string.type == grammar.template and string.start_byte not in strings:
                    strings.add(string.start_byte)
                    out.extend(grammar.interpolated(string, src, names, bindings))
                continue
            if parent.type in grammar.not_a_use and node != parent.child_by_field_name(
                    grammar.value_field.get(parent.type, "value")):
                continue
            if grammar.member and parent.type == grammar.member and parent.child_by_field_name(grammar.member) == node:
                continue
            ctx = replace(grammar.context(node, binding.quote, src), bound_to=None)
            if ctx.skip:
                continue
            out += [Hit(node.start_byte, r.category, r.name, r.suggestion, binding.reason())
                    for r in classify(binding.value, ctx, names)]
        return out

    return follow(bindings, uses_of)
