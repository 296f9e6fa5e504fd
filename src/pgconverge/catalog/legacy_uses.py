"""Where a database function's body names a legacy name (the legacy table, a legacy column, the legacy helper), and,
for a legacy column, whether that name is the column: on the parse trees of the body's statements, a column
reference whose table is a dependent or the legacy table is one; a string constant (a JSON key, `event->>'user_id'`),
a PL/pgSQL variable or parameter of that name, or a column of another table is not. Where the parse trees cannot tell,
the mention is kept, and says why (contract's code-references gate blocks on it either way)."""

from __future__ import annotations

import re

from dataclasses import dataclass

from pglast import ast, parse_plpgsql, parse_sql
from pglast.parser import ParseError

from pgconverge.catalog import calls, mentions
from pgconverge.catalog.model import Function
from pgconverge.config import QualifiedName

EXCERPT = 100


@dataclass(frozen=True)
class Use:
    word: str
    line: int  # of the function's body (its source), as Postgres counts them in an error's "line N"
    excerpt: str
    sure: bool  # False: the parse trees could not tell whether the name is the legacy one
    why: str  # what the name is there (a use), or why it could not be told

    def describe(self) -> str:
        where = f"{self.word} at line {self.line} (`{self.excerpt}`)"
        return f"{where}: {self.why}" if self.sure else f"{where}: could not tell whether it is the legacy one ({self.why})"


def describe(uses: list[Use], shown: int = 5) -> str:
    """USES, one each (the same word at the same line once), the first SHOWN and how many more."""
    lines = list(dict.fromkeys(u.describe() for u in uses))
    more = len(lines) - shown
    return "; ".join(lines[:shown]) + (f"; and {more} more" if more > 0 else "")


def of_spec(fn: Function, spec, cat) -> list[Use]:
    """find() for the migration's legacy names: its table, its helper, and each dependent's legacy column."""
    columns: dict[str, set[QualifiedName]] = {}
    for d in cat.dependents:
        columns.setdefault(d.fk.columns[0], set()).add(d.table.name)
    return find(fn, {spec.legacy.table.name}, {spec.legacy.helper.name} if spec.has_helper else set(), columns,
                spec.legacy.table)


def _line(text: str, offset: int) -> tuple[int, str]:
    start = text.rfind("\n", 0, offset) + 1
    end = text.find("\n", offset)
    excerpt = " ".join(text[start:end if end >= 0 else len(text)].split())
    return text.count("\n", 0, offset) + 1, excerpt[:EXCERPT] + ("…" if len(excerpt) > EXCERPT else "")


def find(fn: Function, tables: set[str], helpers: set[str], columns: dict[str, set[QualifiedName]],
         legacy: QualifiedName) -> list[Use]:
    """The mentions in FN's body of TABLES (the legacy table's name), HELPERS (the legacy helper's) and COLUMNS
    (legacy column name → the tables that have it as their legacy column) that are, or may be, uses of them."""
    code = fn.code
    found = mentions.find(code, {*tables, *helpers, *columns})
    if not found:
        return []
    dynamic = calls.runs_dynamic_sql(fn)
    # The trigger's row made into JSON or keys (to_jsonb(new), row_to_json(old), hstore(new)): a string naming a
    # legacy column may be the key of that column's value, read by name.
    rows_by_name = re.search(r"\b(to_jsonb?|row_to_json|hstore)\s*\(\s*(new|old)\s*\)", code, re.I) is not None
    out: list[Use] = []
    column_hits: dict[str, list] = {}
    for m in found:
        line, excerpt = _line(code, m.offset)
        if m.in_string:
            if dynamic:
                out.append(Use(m.name, line, excerpt, False, "in a string of a body that runs SQL built at run time "
                                                             "(EXECUTE)"))
            elif not m.whole:
                out.append(Use(m.name, line, excerpt, False, "in SQL text inside a string, which may be run "
                                                             "elsewhere"))
            elif rows_by_name and m.name in columns:
                out.append(Use(m.name, line, excerpt, False, "a key in a body that reads rows as JSON or records "
                                                             "by their column names (to_jsonb(new) ->> …)"))
            # else: a string constant that is the name alone (a JSON key, `->> 'user_id'`): data, not a use
            continue
        if m.name in columns:
            column_hits.setdefault(m.name, []).append((line, excerpt))
        else:
            what = "the legacy helper" if m.name in helpers else "the legacy table"
            out.append(Use(m.name, line, excerpt, True, f"names {what}"))
    if column_hits:
        out += _columns(fn, column_hits, columns, legacy)
    return sorted(out, key=lambda u: (u.line, u.word))


def _columns(fn: Function, hits: dict[str, list], columns: dict[str, set[QualifiedName]],
             legacy: QualifiedName) -> list[Use]:
    def unsure(why: str) -> list[Use]:
        return [Use(w, line, ex, False, why) for w, xs in hits.items() for line, ex in xs]

    if fn.language not in ("sql", "plpgsql"):
        return unsure(f"its body is written in {fn.language}, which is not parsed")
    variables: set[str] = set()
    records: set[str] = set()
    try:
        parsed = list(_statements(fn))
        datums = parse_plpgsql(fn.definition)[0]["PLpgSQL_function"].get("datums", ()) \
            if fn.language == "plpgsql" else ()
    except (ParseError, IndexError, AttributeError, KeyError, ValueError) as exc:
        return unsure(f"its body does not parse: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    if fn.language == "plpgsql":
        for d in datums:
            if "PLpgSQL_var" in d:
                variables.add(d["PLpgSQL_var"]["refname"])
            elif "PLpgSQL_rec" in d:
                records.add(d["PLpgSQL_rec"]["refname"])
        conflict = "use_column" in fn.code or any("variable_conflict" in c and "use_column" in c for c in fn.config)
        if conflict:  # a column wins over a variable of the same name
            variables = set()
    params = {p.split()[0].strip('"') for p in fn.identity_args.split(",") if p.strip()} \
        if fn.language == "sql" else set()
    seen: dict[str, list[Use]] = {w: [] for w in hits}
    for stmt, text, base, shift in parsed:
        for word in hits:
            for use in _resolve(stmt, word, columns[word], legacy, variables, records, params, fn):
                loc, sure, why, counts = use
                offset = max(0, min(len(text) - 1, loc - shift)) if loc is not None and loc >= 0 else 0
                line = base + _line(text, offset)[0] - 1
                lines = fn.code.split("\n")
                excerpt = _line(lines[line - 1], 0)[1] if 0 < line <= len(lines) else _line(text, offset)[1]
                seen[word].append(Use(word, line, excerpt, sure, why) if counts
                                  else Use(word, 0, "", True, ""))
    out = []
    for word, xs in hits.items():
        counted = seen[word]
        out += [u for u in counted if u.line]  # uses, and mentions it could not tell
        extra = len(xs) - len(counted)
        if extra > 0 and word not in variables:
            # named where no parsed statement shows it (a declaration of something else, an unparsed construct)
            lines = {u.line for u in counted}
            out += [Use(word, line, ex, False, "named where the parse of its statements does not show what it is")
                    for line, ex in xs if line not in lines][:extra]
    return out


def _statements(fn: Function):
    """(statement, text it was parsed from, body line of that text's first line, offset of the text in the parsed
    string) for each statement of FN's body; for plpgsql each embedded expression or statement."""
    if fn.language == "sql":
        if not fn.source.strip():
            for stmt in calls.statements(fn) or ():
                yield stmt, fn.code, 1, 0
            return
        for raw in parse_sql(fn.source):
            yield raw.stmt, fn.source, 1, 0
        return
    tree = parse_plpgsql(fn.definition)
    for query, lineno in _queries(tree, 1):
        parsed = _expression(query)
        if parsed is None:
            raise ValueError(f"a statement at line {lineno} does not parse")
        for stmts, shift in parsed:
            for raw in stmts:
                yield raw.stmt, query, lineno, shift


def _expression(query: str):
    """[(statements, shift)] of a PL/pgSQL expression: as an expression, as a statement, or an assignment's target
    and value each as an expression; a location L in one is at L - shift in QUERY. None: none of them parses."""
    select = len("SELECT ")
    for text, shift in ((f"SELECT {query}\n", select), (query + "\n", 0)):
        try:
            return [(parse_sql(text), shift)]
        except ParseError:
            continue
    target, assign, value = query.partition(":=")
    if assign:
        try:
            return [(parse_sql(f"SELECT {target}\n"), select),
                    (parse_sql(f"SELECT {value}\n"), select - len(target) - len(assign))]
        except ParseError:
            return None
    return None


def _queries(value, lineno):
    if isinstance(value, dict):
        lineno = value.get("lineno", lineno)
        if "PLpgSQL_expr" in value:
            yield value["PLpgSQL_expr"]["query"], lineno
        for v in value.values():
            yield from _queries(v, lineno)
    elif isinstance(value, list):
        for v in value:
            yield from _queries(v, lineno)


def _resolve(stmt, word: str, owners: set[QualifiedName], legacy: QualifiedName, variables: set[str],
             records: set[str], params: set[str], fn: Function):
    """(location, sure, why, counts) for each place STMT names WORD. counts=False: not a use of the legacy column."""
    nodes = list(calls._walk(stmt))
    ctes = {n.ctename for n in nodes if isinstance(n, ast.CommonTableExpr)}
    rels: dict[str, set] = {}
    for n in nodes:
        if isinstance(n, ast.RangeVar) and not (n.schemaname is None and n.relname in ctes):
            rels.setdefault(n.alias.aliasname if n.alias else n.relname, set()).add((n.schemaname, n.relname))
    tables = {t for ts in rels.values() for t in ts}

    def legacyish(s, r) -> bool:
        return any(t.name == r and s in (None, t.schema) for t in owners) or (
            r == legacy.name and s in (None, legacy.schema))

    def named(ts) -> str:
        return ", ".join(sorted(f"{s}.{r}" if s else r for s, r in ts))

    def on(ts, loc):
        hit = sorted((s, r) for s, r in ts if legacyish(s, r))
        if hit:
            return loc, True, f"the column of {named(hit)}", True
        return loc, True, f"a column of {named(ts)}", False

    handled: set[int] = set()
    for n in nodes:
        if isinstance(n, ast.InsertStmt):
            target = {(n.relation.schemaname, n.relation.relname)}
            for rt in n.cols or ():
                if rt.name == word:
                    handled.add(id(rt))
                    yield on(target, rt.location)
            infer = n.onConflictClause.infer if n.onConflictClause is not None else None
            for el in (infer.indexElems or ()) if infer is not None else ():
                if isinstance(el, ast.IndexElem) and el.name == word:
                    handled.add(id(el))
                    yield on(target, None)
        elif isinstance(n, ast.UpdateStmt):
            for rt in n.targetList or ():
                if isinstance(rt, ast.ResTarget) and rt.name == word:
                    handled.add(id(rt))
                    yield on({(n.relation.schemaname, n.relation.relname)}, rt.location)
    for n in nodes:
        if isinstance(n, ast.ColumnRef):
            fields = [f.sval if isinstance(f, ast.String) else "*" for f in n.fields]
            if word in fields[:-1]:
                yield n.location, False, "a qualifier, not a column", True
                continue
            if fields[-1] != word:
                continue
            if len(fields) == 1:
                if word in variables:
                    yield n.location, True, "the PL/pgSQL variable or parameter of that name", False
                elif word in params and not any(legacyish(s, r) for s, r in tables):
                    yield n.location, True, "the parameter of that name", False
                elif tables:
                    yield on(tables, n.location)
                else:
                    yield n.location, False, "no table in its statement to resolve it to", True
                continue
            qual = fields[-2]
            if len(fields) >= 3:
                yield on({(fields[-3], qual)}, n.location)
            elif qual in rels:
                yield on(rels[qual], n.location)
            elif qual.lower() in ("new", "old") and fn.returns == "trigger":
                yield n.location, False, f"a field of {qual.upper()}, the row of the table its trigger fires on", True
            elif qual in records:
                yield n.location, False, f"a field of the record variable {qual}, whose table the body does not show", True
            elif qual == fn.name.name and word in variables:
                yield n.location, True, "the PL/pgSQL variable or parameter of that name", False
            else:
                yield n.location, False, f"{qual} is not a table of its statement", True
        elif isinstance(n, ast.ResTarget) and n.name == word and id(n) not in handled:
            yield n.location, True, "the name of an output column", False
        elif isinstance(n, ast.IndexElem) and n.name == word and id(n) not in handled:
            yield None, False, "named in an index element", True
        elif isinstance(n, ast.String) and n.sval == word and not _in_columnref(n, nodes):
            yield None, False, "named in a place other than a column reference", True
        elif isinstance(n, (ast.NamedArgExpr, ast.Alias, ast.RangeVar, ast.CommonTableExpr)) and word in (
                getattr(n, "name", None), getattr(n, "aliasname", None), getattr(n, "relname", None),
                getattr(n, "ctename", None)):
            yield None, True, "the name of something other than a column", False


def _in_columnref(node, nodes) -> bool:
    return any(isinstance(n, ast.ColumnRef) and any(f is node for f in n.fields) for n in nodes)
