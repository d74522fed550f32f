"""SQL statement fingerprinting.

Slow-query and N+1 detection must group spans by the *shape* of a statement, not by its text: the
same ORM query arrives with different literal values, different driver placeholder styles
(``%s``, ``$1``, ``?``, ``:name``) and different quoting, and grouping by raw text would explode the
number of groups and leak values (often personal data) into metric attributes and events.

The analysis is deliberately a tokenizer plus a few regular-expression passes rather than a SQL
parser: it runs in a span processor on the application's hot path, must accept every dialect
(and garbage) without raising, and only needs to be right about where literals, comments and
quoted identifiers start and end.  Everything after the first pass works on text that no longer
contains string literals or comments, which is what makes the later, simpler passes safe.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["MAX_STATEMENT_CHARS", "SqlShape", "parse_sql"]

#: Longer statements (typically bulk INSERTs with inlined values) are analysed by prefix only, so
#: that one pathological statement cannot cost milliseconds or pin megabytes in the cache.
MAX_STATEMENT_CHARS = 16384


@dataclass(frozen=True, slots=True)
class SqlShape:
    """What the detectors need to know about a statement, with every literal value removed.

    Frozen and slotted because instances are shared through the cache across threads and spans.
    """

    normalized: str
    fingerprint: str
    operation: str
    tables: tuple[str, ...]
    truncated: bool
    # The text had driver placeholders (``%s``, ``$1``, ``?``, ``:name``, ...): its values are
    # bound apart, so two runs of the same text may differ.  Without any, the text is the query.
    placeholders: bool


# --- pass 1: strings, comments and quoted identifiers, over the raw text -------------------------
#
# These are the only tokens whose insides can hide anything (a quote, `--`, a digit), so they are
# found first and in a single scan; every later pass works on text where they are gone.  Every
# branch starts with one literal character, with lookbehinds only after it: the regex engine then
# skips ordinary identifier and whitespace characters with a fast character-set scan instead of
# trying every branch at every position.  Quoted identifiers that are plain names ("users",
# `users`) are deliberately *not* matched: their insides are harmless, and their quotes are
# removed afterwards with one str.replace, which is much cheaper than a callback per identifier.
_SCAN_RE = re.compile(
    r"""
      --[^\n]*                                        # line comment
    | /\*[\s\S]*?(?:\*/|\Z)                           # block comment, sqlcommenter, optimizer hint
    | \#(?<![\w$]\#)(?![>-])[^\n]*                    # MySQL comment; #> #>> #- are PostgreSQL operators
    | '[^'\\]*(?:(?:\\[\s\S]|\\\Z|'')[^'\\]*)*'?      # string, with '' and MySQL backslash escapes
    | \$(?<![\w$]\$)(?P<tag>(?:[^\W\d]\w*)?)\$        # $$...$$ / $tag$...$tag$, not inside a$b$c
      [\s\S]*?(?:\$(?P=tag)\$|\Z)
    | `(?<![\w$]`)(?![A-Za-z_][\w$]*`)                # `odd name`
      (?P<bt>[^`]*(?:``[^`]*)*)`?
    | \[(?<![\w$\])]\[)(?P<br>[^\W\d][^\]'"\[\n]*)\]  # [name], but not arr[i] or ARRAY[...]
    | "(?<![\w$]")                                    # an opening quote, not the end of "name"
      (?: (?:(?<=[=<>]")|(?<=[=<>]\s")|(?<=[lL][iI][kK][eE]\s"))   # compared: a MySQL string
          [^"\\]*(?:(?:\\[\s\S]|\\\Z|"")[^"\\]*)*(?:"(?![.\w])|\Z)
        | (?![A-Za-z_][\w$]*")                        # "odd name" or MySQL string
          (?P<dq>[^"\\]*(?:(?:\\[\s\S]|\\\Z|"")[^"\\]*)*)"?
      )
    """,
    re.VERBOSE,
)
_STRING_RE = re.compile(r"'[^'\\]*(?:(?:\\[\s\S]|\\\Z|'')[^'\\]*)*'?")
# Driver placeholders in raw text whose strings and comments are gone: ?, $1, %s, %(name)s (and
# psycopg 3's %b %t), :name, :1, @name.  Generous on purpose: a false "has placeholders" only hides
# a repeated query; a missed one would call different values identical.
_PLACEHOLDER_RE = re.compile(
    r"\?(?![|&])|\$(?<![\w$]\$)\d|%(?<!%%)(?:\([^()\s]*\))?[sbt](?![\w$])"
    r"|:(?<![\w$:]:)(?:[^\W\d]|\d)|@(?<![\w$@]@)[^\W\d]"
)
# A plain name: what the scan leaves alone when quoted, as long as it is ASCII (the cheap check).
_NAME_RE = re.compile(r"[^\W\d][\w$]*\Z")
_TABLE_KEYWORD_BEFORE_RE = re.compile(r"(?:from|join|into|update|table)\s+\Z", re.IGNORECASE)


def _replace_token(m: re.Match[str]) -> str:
    """Map one pass-1 token to its shape (a callback, because the replacement depends on the kind)."""
    kind = m.lastgroup
    if kind is None or kind == "tag":
        return " " if m.group()[0] in "-/#" else "?"
    body = m.group(kind)
    if kind == "dq" and not _NAME_RE.match(body):
        # MySQL (without ANSI_QUOTES) also writes strings as "...".  An odd double-quoted name is
        # only trusted where nothing but an identifier can stand; elsewhere it is treated as a
        # value, because losing a column name is better than leaking a value.
        string, start, end = m.string, m.start(), m.end()
        if not (
            string[end : end + 1] == "."
            or string[start - 1 : start] == "."
            or _TABLE_KEYWORD_BEFORE_RE.search(string, max(0, start - 16), start)
        ):
            return "?"
    # The quotes go so that "Order Items", `order items` and [Order Items] group together.
    return body.replace("`", "").replace('"', "")


# --- later passes: on lower-cased text without strings, comments or quotes ----------------------

# Numbers and driver placeholders.  Same fast-scan design as pass 1: one small ASCII character set
# first (a Unicode class such as \d there triples the cost), lookbehinds after it, the most common
# kind first.  `.` is not a start character (it is everywhere in t.col), so `.5` is left as `.?`
# and fixed up afterwards; `?` is not one either (it is the commonest placeholder and needs no
# change), so JPA's `?1` becomes `??` and is fixed up the same way.
_VALUE_RE = re.compile(
    r"""
    [0-9$%:@](?<![\w$][0-9$%:@])                      # not the 1 of t1, nor a$1
    (?: (?<=0)(?:x[\da-f_]+|b[01_]+|o[0-7_]+)        # 0x1f 0b101 0o17
      | (?<=[0-9])[\d_]*(?:\.\d*)?(?:e[+-]?\d+)?     # 1 1.5 1e-3 1_000
      | (?<=\$)\d+                                   # $1
      | (?<=%)(?:\([^()\s]*\))?[sbt](?![\w$])        # %s %(name)s (psycopg 3: %b %t)
      | (?<=:)(?<!::)(?:[^\W\d][\w$]*|\d+)           # :name :1, not ::cast or :=
      | (?<=@)(?<!@@)[^\W\d][\w$]*                   # @p1 @name, not @@system_var
    )
    """,
    re.VERBOSE,
)
_LEADING_DOT_RE = re.compile(r"(?<![\w$])\.\?")
# E'..', N'..', X'..', B'..', R'..', U&'..' and MySQL's _utf8mb4'..' leave their prefix in front of
# the `?`.  The gate is cheap (it scans for `?` only); the full pattern is not.
_PREFIXED_GATE_RE = re.compile(r"\?(?<=[\w&]\?)")
_PREFIX_RE = re.compile(r"[enbxr](?<![\w$.][enbxr])\?|u&(?<![\w$.]u&)\?|_(?<![\w$.]_)[a-z0-9]+\?")
_BOOL_RE = re.compile(r"t(?<![\w$.]t)rue(?![\w$])|f(?<![\w$.]f)alse(?![\w$])")
# A minus (or plus) is a sign, not subtraction, after an operator, comma, paren or keyword.  The
# match starts at the sign (fast scan) and checks what precedes it with fixed-width lookbehinds.
_SIGN_RE = re.compile(
    r"[-+](?:"
    r"(?<=[(,=<>*/%+\-|^~][-+])|(?<=[(,=<>*/%+\-|^~] [-+])"
    r"|(?<=\b(?:or|in|is|by|on) [-+])"
    r"|(?<=\b(?:and|not|set|any|all) [-+])"
    r"|(?<=\b(?:then|else|when|like|case) [-+])"
    r"|(?<=\b(?:where|ilike|limit|array) [-+])"
    r"|(?<=\b(?:select|values|return|offset|having|exists) [-+])"
    r"|(?<=\bbetween [-+])|(?<=\breturning [-+])"
    r") ?\?"
)
# A multi-row VALUES list keeps only its first row: a bulk insert of N rows is one shape, even when
# some rows differ (e.g. a NULL where other rows have a value).
_ROW = r"\([^()]*(?:\([^()]*\)[^()]*)*\)"
_VALUES_ROWS_RE = re.compile(rf"values(?<![\w$]values) ({_ROW})(?:, {_ROW})+")
# IN and VALUES lists of placeholders (or of tuples of them) become `(?)`.  The match starts at the
# `(` (a literal, so a fast scan) and checks the keyword before it with lookbehinds.
_PLACEHOLDER_LIST_RE = re.compile(
    r"\((?:(?<=\bin \()|(?<=\bvalues \())"
    r"(?:\?|\((?:\?, )*\?\))(?:, (?:\?|\((?:\?, )*\?\)))*\)"
)
# `?` right after `?` or `.` needs a fix-up (see _VALUE_RE); looking for it scans for `?` only.
_FIXUP_GATE_RE = re.compile(r"\?(?<=[?.]\?)")


# --- operation and tables ------------------------------------------------------------------------

_OPERATIONS = frozenset(
    {
        "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "REPLACE", "CREATE", "DROP",
        "ALTER", "TRUNCATE", "RENAME", "COMMENT", "BEGIN", "START", "COMMIT", "ROLLBACK", "SAVEPOINT",
        "RELEASE", "END", "ABORT", "CALL", "EXEC", "EXECUTE", "DO", "SET", "RESET", "SHOW", "PRAGMA",
        "EXPLAIN", "DESCRIBE", "DESC", "USE", "GRANT", "REVOKE", "LOCK", "UNLOCK", "COPY", "VACUUM",
        "ANALYZE", "ANALYSE", "REINDEX", "CLUSTER", "REFRESH", "LISTEN", "NOTIFY", "UNLISTEN",
        "PREPARE", "DEALLOCATE", "DECLARE", "FETCH", "MOVE", "CLOSE", "DISCARD", "CHECKPOINT",
        "VALUES", "TABLE", "LOAD", "HANDLER", "OPTIMIZE", "REPAIR", "CHECKSUM", "FLUSH", "KILL",
        "PURGE", "ATTACH", "DETACH", "XA", "IMPORT", "SECURITY", "WITH",
    }
)  # fmt: skip
_FIRST_WORD_RE = re.compile(r"[\s({]*([a-z]+)")
_PAREN_GROUP_RE = re.compile(r"\([^()]*\)")
_MAIN_VERB_RE = re.compile(r"\b(?:select|insert|update|delete|merge|values|table)\b")

_NAME = r"[^\W\d][\w$]*(?:\.[^\W\d][\w$]*)*"
# Searched in " " + statement: normalized text has single spaces, so every table keyword is
# preceded by one, and a pattern starting with a literal space is scanned quickly.  `distinct
# from` is a comparison and `key update` is MySQL's ON DUPLICATE KEY UPDATE: no table follows.
_TABLE_RE = re.compile(
    r" (?P<kw>from|join|update|into|table|using|copy|truncate)(?<!distinct from)(?<!key update)"
    r"(?: (?:only|if not exists|if exists|lateral|low_priority|ignore|quick|table)(?![\w$]))*"
    rf" (?P<name>{_NAME})(?P<call> ?\()?"
)
# Further comma-separated tables (FROM a, b / UPDATE a, b), skipping an optional alias.
_MORE_TABLES_RE = re.compile(rf"(?: (?:as )?[^\W\d][\w$]*)?, (?P<name>{_NAME})(?P<call> ?\()?")
# FROM inside these calls is part of the call's syntax, not a table reference.
_FROM_CALL_RE = re.compile(r"\b(?:extract|substring|substr|trim|overlay|position) ?\((?:[^()]|\([^()]*\))*\)")
_CTE_NAME_RE = re.compile(
    rf"(?:with(?<![\w$]with) (?:recursive )?|\), )(?P<name>{_NAME})(?: ?\([^()]*\))? as (?:not )?"
    r"(?:materialized )?\("
)
# CREATE INDEX names its table after ON, a word that elsewhere mostly precedes a join condition.
_INDEX_TABLE_RE = re.compile(
    r"create (?:unique )?index (?:concurrently )?(?:if not exists )?(?:[^\W\d][\w$]* )?"
    rf"on (?:only )?(?P<name>{_NAME})"
)
_NOT_TABLES = frozenset(
    {
        "select", "values", "set", "where", "of", "skip", "nowait", "stdin", "stdout", "dual",
        "outfile", "dumpfile", "btree", "hash", "gist", "gin", "brin", "spgist", "lateral", "only",
        "table", "if", "as", "on", "with", "default", "unnest",
    }
)  # fmt: skip
_LIST_KEYWORDS = frozenset({"from", "update", "using", "table", "truncate"})
_CALL_DISQUALIFIES = frozenset({"from", "join", "using"})
_NO_TABLE_OPERATIONS = frozenset({"GRANT", "REVOKE", "SET", "RESET", "PRAGMA"})


def _operation(statement: str) -> str:
    m = _FIRST_WORD_RE.match(statement)
    if m is None:
        return ""
    verb = m.group(1).upper()
    if verb == "WITH":
        # The verb that matters is the one after the CTEs: drop parenthesized groups (CTE bodies,
        # column lists), innermost first, and anything after a parenthesis left open.
        rest = statement[m.end() :]
        while "(" in rest:
            flat = _PAREN_GROUP_RE.sub(" ", rest)
            if flat == rest:
                rest = rest[: rest.index("(")]
                break
            rest = flat
        main = _MAIN_VERB_RE.search(rest)
        return main.group().upper() if main else ""
    return verb if verb in _OPERATIONS else ""


def _tables(statement: str, found: dict[str, None]) -> None:
    """Add the statement's tables to `found`, a dict used as an ordered set across statements."""
    if "(" in statement and (
        "extract" in statement
        or "substr" in statement
        or "trim" in statement
        or "overlay" in statement
        or "position" in statement
    ):
        statement = _FROM_CALL_RE.sub("?", statement)
    ctes = {m.group("name") for m in _CTE_NAME_RE.finditer(statement)} if "with " in statement else ()
    if statement.startswith("create ") and " index " in statement:
        index = _INDEX_TABLE_RE.match(statement)
        if index is not None:
            found[index.group("name")] = None
    for m in _TABLE_RE.finditer(" " + statement):
        kw = m.group("kw")
        match: re.Match[str] | None = m
        while match is not None:
            name = match.group("name")
            if (
                name not in _NOT_TABLES
                and name not in ctes
                and not (match.group("call") and kw in _CALL_DISQUALIFIES)
            ):
                found[name] = None
            match = _MORE_TABLES_RE.match(m.string, match.end("name")) if kw in _LIST_KEYWORDS else None


# --- entry points --------------------------------------------------------------------------------


def _parse_sql_uncached(statement: str) -> SqlShape:
    """Analyse one statement; `parse_sql` is the cached entry point, this one exists for the bench."""
    truncated = len(statement) > MAX_STATEMENT_CHARS
    if truncated:
        # Cut at whitespace near the limit so the last identifier is not cut in half; a cut inside
        # a literal is harmless because unterminated literals run to the end.
        lo = MAX_STATEMENT_CHARS - 256
        cut = max(
            statement.rfind(" ", lo, MAX_STATEMENT_CHARS), statement.rfind("\n", lo, MAX_STATEMENT_CHARS)
        )
        statement = statement[: cut if cut > 0 else MAX_STATEMENT_CHARS]

    if (
        "--" in statement
        or "/*" in statement
        or "#" in statement
        or '"' in statement
        or "`" in statement
        or "[" in statement
        or "$" in statement
    ):
        text = _SCAN_RE.sub(_replace_token, statement)
        # Strings and comments become "?" above, so placeholders are looked for without them.
        placeholders = _PLACEHOLDER_RE.search(statement) is not None and (
            _PLACEHOLDER_RE.search(_SCAN_RE.sub(" ", statement)) is not None
        )
    elif "'" in statement:
        # Only plain strings can be present: same result as the full scan, without a callback.
        text = _STRING_RE.sub("?", statement)
        placeholders = _PLACEHOLDER_RE.search(statement) is not None and (
            _PLACEHOLDER_RE.search(_STRING_RE.sub(" ", statement)) is not None
        )
    else:
        text = statement
        placeholders = _PLACEHOLDER_RE.search(statement) is not None
    if '"' in text:
        text = text.replace('"', "")
    if "`" in text:
        text = text.replace("`", "")
    text = " ".join(text.lower().split())
    text = (
        text.replace(" ,", ",")
        .replace(",", ", ")
        .replace(",  ", ", ")
        .replace("( ", "(")
        .replace(" )", ")")
        .replace(" in(", " in (")
        .replace(" values(", " values (")
        .rstrip()
    )
    text = _VALUE_RE.sub("?", text)
    if "?" in text:
        if "'" in statement and _PREFIXED_GATE_RE.search(text):
            text = _PREFIX_RE.sub("?", text)
        if _FIXUP_GATE_RE.search(text):
            text = _LEADING_DOT_RE.sub("?", text.replace("??", "?"))
    if "true" in text or "false" in text:
        text = _BOOL_RE.sub("?", text)
    if "?" in text:
        if "-" in text or "+" in text:
            text = _SIGN_RE.sub("?", text)
        if "values" in text:
            text = _VALUES_ROWS_RE.sub(r"values \1", text)
        text = _PLACEHOLDER_LIST_RE.sub("(?)", text)

    if ";" in text:
        statements = [s for s in (part.strip() for part in text.split(";")) if s]
        text = "; ".join(statements)
    else:
        statements = [text] if text else []

    found: dict[str, None] = {}
    operation = ""
    for i, stmt in enumerate(statements):
        op = _operation(stmt)
        if i == 0:
            operation = op
        if op not in _NO_TABLE_OPERATIONS:
            _tables(stmt, found)

    fingerprint = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return SqlShape(text, fingerprint, operation, tuple(found), truncated, placeholders)


_parse_sql_cached = lru_cache(maxsize=4096)(_parse_sql_uncached)


def parse_sql(statement: str) -> SqlShape:
    """Return the shape of `statement`; cached because the same placeholder statements repeat.

    Over-long input is sliced before it becomes a cache key, so the cache never pins more than
    ``MAX_STATEMENT_CHARS + 1`` characters per entry; one extra character is kept so the uncached
    function still sees that the statement was too long and reports ``truncated``.
    """
    if len(statement) > MAX_STATEMENT_CHARS:
        statement = statement[: MAX_STATEMENT_CHARS + 1]
    return _parse_sql_cached(statement)
