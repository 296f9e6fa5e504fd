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
from dataclasses import dataclass


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
    if rel == names.helper and schema in ("", names.helper_schema):
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
