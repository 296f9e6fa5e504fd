"""What the code audit looks for (Names), what a language module reports (Hit), offset helpers."""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable

from pgconverge.config import Spec

TABLE = "table"
COLUMN = "column"
HELPER = "helper"
CODE_HELPER = "code_helper"
CATEGORIES = (TABLE, COLUMN, HELPER, CODE_HELPER)


@dataclass(frozen=True)
class Hit:
    """One reference found by a language module: a byte offset into the file and what it is."""

    offset: int
    category: str
    name: str
    suggestion: str
    reason: str = ""  # how the name was reached, when not written where it is reported


@dataclass(frozen=True)
class Names:
    """The legacy names to look for and their canonical replacements, taken from a Spec."""

    table: str
    table_schema: str
    canon_table: str
    canon_schema: str
    columns: frozenset[str]
    canon_column: str
    key: str
    canon_key: str
    helper: str
    helper_schema: str
    canon_helper: str
    canon_helper_schema: str
    code_helpers: dict[str, str] = field(default_factory=dict, hash=False)

    @classmethod
    def from_spec(cls, spec: Spec, code_helpers: dict[str, str] | None = None,
                  extra_columns: Iterable[str] = ()) -> "Names":
        cols = {spec.mapping_legacy_column, *spec.migration.code_columns, *extra_columns}
        return cls(
            table=spec.legacy.table.name, table_schema=spec.legacy.table.schema,
            canon_table=spec.canonical.table.name, canon_schema=spec.canonical.table.schema,
            columns=frozenset(c for c in cols if c), canon_column=spec.migration.new_column,
            key=spec.legacy.key, canon_key=spec.canonical.key,
            # "" where the database has no RLS identity helper (legacy.helper = ""): no helper name to report
            helper=spec.legacy.helper.name if spec.has_helper else "",
            helper_schema=spec.legacy.helper.schema if spec.has_helper else "",
            canon_helper=spec.canonical.helper.name if spec.has_helper else "",
            canon_helper_schema=spec.canonical.helper.schema if spec.has_helper else "",
            code_helpers=dict(spec.migration.code_helpers if code_helpers is None else code_helpers),
        )

    # --- matching -----------------------------------------------------------------------------

    def all_names(self) -> list[str]:
        return sorted({self.table, self.helper, *self.columns, *self.code_helpers} - {""}, key=len, reverse=True)

    @cached_property
    def candidate_regex(self) -> re.Pattern[bytes]:
        """Bytes regex for a whole-word occurrence of any name, any case (SQL folds case)."""
        alt = b"|".join(re.escape(n.encode()) for n in self.all_names())
        return re.compile(rb"(?<![\w$])(?:" + alt + rb")(?![\w$])", re.IGNORECASE)

    @cached_property
    def candidate_text_regex(self) -> re.Pattern[str]:
        """The same as candidate_regex, for text."""
        alt = "|".join(re.escape(n) for n in self.all_names())
        return re.compile(r"(?<![\w$])(?:" + alt + r")(?![\w$])", re.IGNORECASE)

    def sql_category(self, name: str) -> str | None:
        """Category of an SQL identifier by its (folded) name."""
        if name == self.table:
            return TABLE
        if name in self.columns:
            return COLUMN
        if self.helper and name == self.helper:
            return HELPER
        return None

    # --- suggestions --------------------------------------------------------------------------

    def table_sql(self, qualified: bool) -> str:
        return f"{self.canon_schema}.{self.canon_table}" if qualified else self.canon_table

    def helper_sql(self, qualified: bool) -> str:
        return (f"{self.canon_helper_schema}." if qualified else "") + f"{self.canon_helper}()"

    def rewrite(self, text: str) -> str:
        """TEXT with every whole-word legacy SQL name replaced by its canonical counterpart."""
        repl = {self.table: self.canon_table, **({self.helper: self.canon_helper} if self.helper else {}),
                **{c: self.canon_column for c in self.columns}}
        pat = re.compile(r"(?<![\w$])(" + "|".join(re.escape(n) for n in sorted(repl, key=len, reverse=True))
                         + r")(?![\w$])")
        return pat.sub(lambda m: repl[m.group(1)], text)


class LineIndex:
    """Byte offset → (1-based line, 1-based character column, stripped line text)."""

    def __init__(self, src: bytes):
        self.src = src
        self.starts = [0] + [m.end() for m in re.finditer(rb"\n", src)]

    def locate(self, offset: int) -> tuple[int, int, str]:
        i = bisect_right(self.starts, offset) - 1
        start = self.starts[i]
        end = self.starts[i + 1] - 1 if i + 1 < len(self.starts) else len(self.src)
        column = len(self.src[start:offset].decode("utf-8", "replace")) + 1
        return i + 1, column, self.src[start:end].decode("utf-8", "replace").strip()


def char_to_byte_offsets(text: str, offsets: Iterable[int]) -> dict[int, int]:
    """Map character offsets into TEXT to UTF-8 byte offsets (identity for ASCII text)."""
    offs = sorted(set(offsets))
    if text.isascii():
        return {o: o for o in offs}
    out, pos, acc = {}, 0, 0
    for o in offs:
        acc += len(text[pos:o].encode("utf-8", "surrogatepass"))
        pos = o
        out[o] = acc
    return out


def byte_to_char_offsets(data: bytes, offsets: Iterable[int]) -> dict[int, int]:
    """Map UTF-8 byte offsets into DATA to character offsets (identity for ASCII data)."""
    offs = sorted(set(offsets))
    if data.isascii():
        return {o: o for o in offs}
    out, pos, acc = {}, 0, 0
    for o in offs:
        acc += len(data[pos:o].decode("utf-8", "replace"))
        pos = o
        out[o] = acc
    return out
