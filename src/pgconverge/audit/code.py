"""`audit code`: every reference to the legacy names in application source.

TypeScript/JavaScript and Python are parsed with tree-sitter, SQL with pglast, so comments
never count and a string counts only where it names a table, a column or a helper (a `.from()`
argument, a select list, a filter, SQL) rather than being prose. Only the places where a legacy
name occurs as a whole word are looked at, so a file without one is not even parsed.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from pgconverge.audit import code_py, code_ts
from pgconverge.audit.code_common import (CATEGORIES, CODE_HELPER, COLUMN, HELPER, TABLE,
                                          Hit, LineIndex, Names, char_to_byte_offsets)
from pgconverge.audit.code_sql import refs_in_file
from pgconverge.config import Spec

__all__ = ["CATEGORIES", "CODE_HELPER", "COLUMN", "HELPER", "TABLE", "AuditResult",
           "Finding", "SUFFIXES", "audit_code", "audit_file", "sample_code_dir", "scan"]

MAX_FILE_BYTES = 1_000_000
SKIP_DIRS = frozenset({"node_modules", ".git", ".hg", ".svn", "dist", "build", ".next", ".nuxt",
                       ".svelte-kit", ".turbo", ".cache", "coverage", "__pycache__", ".venv", "venv",
                       ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache", "site-packages",
                       ".deno", "vendor"})
SUFFIXES = frozenset({*code_ts.SUFFIXES, *code_py.SUFFIXES, ".sql"})
# Source of languages the audit does not parse: such a file that names a legacy name as a whole word is listed as
# not read (a reference the audit cannot judge), so that a verdict over a Go or Ruby code base does not pass blind.
OTHER_CODE_SUFFIXES = frozenset({
    ".go", ".rb", ".erb", ".rake", ".java", ".kt", ".kts", ".scala", ".groovy", ".cs", ".fs", ".vb", ".php",
    ".ex", ".exs", ".erl", ".rs", ".swift", ".dart", ".vue", ".svelte", ".astro", ".lua", ".pl", ".pm", ".r",
    ".jl", ".clj", ".cljs", ".hs", ".ml", ".c", ".cc", ".cpp", ".h", ".hpp", ".m", ".sh", ".bash", ".zsh", ".ps1",
    ".graphql", ".gql", ".prisma", ".cr", ".nim", ".zig", ".sc"})


@dataclass(frozen=True, order=True)
class Finding:
    """One reference to a legacy name: where, what, and what to write instead."""

    path: str  # relative to the audited root, with forward slashes
    line: int  # 1-based
    column: int  # 1-based, in characters
    code: str  # the source line, stripped
    category: str  # table, column, helper or code_helper
    name: str  # the legacy name matched
    suggestion: str  # the replacement text
    # How the name was reached when it is not written where it is reported ("reached through LEGACY, bound to
    # 'customers' at line 3"), or that the literal is bound to a name ("bound to LEGACY"); else empty.
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AuditResult:
    root: Path
    findings: list[Finding]
    files_scanned: int
    skipped: list[str]  # files over the size limit or unreadable, relative to root
    # Files in languages the audit does not parse (OTHER_CODE_SUFFIXES) that name a legacy name, relative to root.
    unread: list[str] = ()  # type: ignore[assignment]
    # Skipped files not proven clean, each with why: one over the size limit that names a legacy name as a word
    # (its bytes are searched, not parsed), or one that could not be read at all (a dangling link, no permission).
    unproven: list[tuple[str, str]] = ()  # type: ignore[assignment]

    @property
    def proves_nothing(self) -> bool:
        """No file was read: the audit looked at nothing (a wrong path, or a code base in another language)."""
        return self.files_scanned == 0

    def counts(self) -> dict[str, int]:
        counts = {c: 0 for c in CATEGORIES}
        for f in self.findings:
            counts[f.category] = counts.get(f.category, 0) + 1
        return counts


def sample_code_dir() -> Path:
    """The bundled sample Supabase project (edge functions, scripts, migrations) with planted references."""
    return Path(__file__).resolve().parent.parent / "fixtures" / "sample_code"


def audit_code(root: Path, spec: Spec | None = None, code_helpers: dict[str, str] | None = None,
               extra_columns: Iterable[str] = ()) -> list[Finding]:
    """Findings in every source file under ROOT, sorted by path, line and column.

    CODE_HELPERS maps application identifiers to their replacements (default: the config's
    migration.code_helpers, {"ensureCustomer": "ensureProfile"}); EXTRA_COLUMNS are more legacy column
    names to report besides the foreign-key column and migration.code_columns.
    """
    return scan(root, spec, code_helpers, extra_columns).findings


def scan(root: Path, spec: Spec | None = None, code_helpers: dict[str, str] | None = None,
         extra_columns: Iterable[str] = ()) -> AuditResult:
    """Like audit_code, with the number of files read and the files skipped."""
    root = Path(root)
    names = Names.from_spec(spec or Spec(), code_helpers, extra_columns)
    findings: set[Finding] = set()
    scanned, skipped, unread, unproven = 0, [], [], []
    for path in _source_files(root, SUFFIXES | OTHER_CODE_SUFFIXES):
        rel = path.name if path == root else path.relative_to(root).as_posix()
        ours = path.suffix.lower() in SUFFIXES
        try:
            src = path.read_bytes()
        except OSError as exc:
            # Not read at all, so not proven clean, whatever its language.
            if ours:
                skipped.append(rel)
            unproven.append((rel, f"could not be read ({exc.strerror or exc.__class__.__name__})"))
            continue
        if len(src) > MAX_FILE_BYTES:
            # Too large to parse (a bundle, a generated client): a whole-word legacy name in it is not judged.
            if ours:
                skipped.append(rel)
                if names.candidate_regex.search(src):
                    unproven.append((rel, "is over 1 MB, not parsed, and names a legacy name"))
            elif b"\0" not in src[:8192] and names.candidate_regex.search(src):
                unread.append(rel)
            continue
        if not ours:
            if b"\0" not in src[:8192] and names.candidate_regex.search(src):
                unread.append(rel)
            continue
        scanned += 1
        findings.update(audit_file(rel, src, names))
    return AuditResult(root, sorted(findings, key=lambda f: (f.path, f.line, f.column, f.name)), scanned, skipped,
                       unread, unproven)


def audit_file(rel: str, src: bytes, names: Names) -> list[Finding]:
    """Findings in one file's bytes; REL names it in the findings and its suffix picks the language."""
    suffix = os.path.splitext(rel)[1].lower()
    candidates = [m.span() for m in names.candidate_regex.finditer(src)]
    if not candidates:
        return []
    if suffix in code_ts.SUFFIXES:
        hits = code_ts.hits(src, suffix, names, candidates)
    elif suffix in code_py.SUFFIXES:
        hits = code_py.hits(src, suffix, names, candidates)
    elif suffix == ".sql":
        hits = _sql_hits(src, names)
    else:
        return []
    lines = LineIndex(src)
    out: dict[tuple[int, str], Finding] = {}
    for h in hits:
        line, column, code = lines.locate(h.offset)
        out.setdefault((h.offset, h.name), Finding(rel, line, column, code, h.category, h.name, h.suggestion,
                                                            h.reason))
    return list(out.values())


def _sql_hits(src: bytes, names: Names) -> list[Hit]:
    text = src.decode("utf-8", "replace")
    refs = refs_in_file(text, names)
    offs = char_to_byte_offsets(text, (r.offset for r in refs))
    return [Hit(offs[r.offset], r.category, r.name, r.suggestion) for r in refs]


def _source_files(root: Path, suffixes: frozenset[str] = SUFFIXES) -> Iterable[Path]:
    if root.is_file():
        if root.suffix.lower() in suffixes:
            yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS
                             and not os.path.exists(os.path.join(dirpath, d, "pyvenv.cfg")))
        for name in sorted(filenames):
            if os.path.splitext(name)[1].lower() in suffixes:
                yield Path(dirpath, name)
