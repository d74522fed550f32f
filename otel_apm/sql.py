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
      --[^\n]*                                          # line comment
    | /\*[\s\S]*?(?:\*/|\Z)                             # block comment, sqlcommenter, optimizer hint
    | \#(?![>-])[^\n]*                                  # MySQL comment; #> #>> #- are PostgreSQL operators
    | '[^'\\]*(?:(?:\\[\s\S]?|'')[^'\\]*)*'?            # string, with '' and MySQL backslash escapes
    | \$(?<![\w$]\$)(?P<tag>(?:[^\W\d]\w*)?)\$          # $$...$$ / $tag$...$tag$, not inside a$b$c
      [\s\S]*?(?:\$(?P=tag)\$|\Z)
    | `(?<![\w$]`)(?![^\W\d][\w$]*`)(?P<bt>[^`]*(?:``[^`]*)*)`?        # `odd name`
    | \[(?<![\w$\])]\[)(?P<br>[^\W\d][^\]'"\[\n]*)\]    # [name], but not arr[i] or ARRAY[...]
    | "(?:(?<=[=<>]")|(?<=[=<>]\s")|(?<=[lL][iI][kK][eE]\s"))         # compared: a MySQL string
      [^"]*(?:""[^"]*)*(?:"(?![.\w])|\Z)
    | "(?<![\w$]")(?![^\W\d][\w$]*")(?P<dq>[^"]*(?:""[^"]*)*)"?        # "odd name" or MySQL string
    """,
    re.VERBOSE,
)
_TABLE_KEYWORD_BEFORE_RE = re.compile(r"(?:from|join|into|update|table)\s+\Z", re.IGNORECASE)


def _replace_token(m: re.Match[str]) -> str:
    """Map one pass-1 token to its shape (a callback, because the replacement depends on the kind)."""
    kind = m.lastgroup
    if kind is None or kind == "tag":
        return " " if m.group()[0] in "-/#" else "?"
    body = m.group(kind)
    if kind == "dq":
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

# Numbers and driver placeholders.  Same one-literal-character-first design as pass 1; `.` is not
# a start character (it is everywhere in t.col), so `.5` is left as `.?` and fixed up afterwards.
_VALUE_RE = re.compile(
    r"""
    [\d$?%:@](?<![\w$][\d$?%:@])                        # not the 1 of t1, nor a$1
    (?: (?<=0)x[\da-f_]+ | (?<=0)b[01_]+ | (?<=0)o[0-7_]+              # 0x1f 0b101 0o17
      | (?<=\d)[\d_]*(?:\.\d*)?(?:e[+-]?\d+)?                          # 1 1.5 1e-3 1_000
      | (?<=[$?])\d+                                                   # $1 ?1
      | (?<=%)(?:\([^()\s]*\))?[sbt](?![\w$])                          # %s %(name)s %b %t
      | (?<=:)(?<!::)(?:[^\W\d][\w$]*|\d+)                             # :name :1, not ::cast :=
      | (?<=@)(?<!@@)[^\W\d][\w$]*                                     # @p1 @name, not @@var
    )
    """,
    re.VERBOSE,
)
_LEADING_DOT_RE = re.compile(r"(?<![\w$])\.\?")
# E'..', N'..', X'..', B'..', R'..' leave their prefix letter in front of the `?`.
_PREFIX_RE = re.compile(r"[enbxr](?<![\w$.][enbxr])\?|u&(?<![\w$.]u&)\?")
_BOOL_RE = re.compile(r"t(?<![\w$.]t)rue(?![\w$])|f(?<![\w$.]f)alse(?![\w$])")
# A minus (or plus) is a sign, not subtraction, after an operator, comma, paren or keyword.
_SIGN_RE = re.compile(
    r"(?P<pre>[(,=<>*/%+\-|^~]|\b(?:select|where|and|or|not|then|else|when|values|in|between|return"
    r"|returning|like|ilike|is|by|limit|offset|set|having|on|case|array|exists|any|all))(?P<sp> ?)[-+] ?\?"
)
# A multi-row VALUES list keeps only its first row: a bulk insert of N rows is one shape, even when
# some rows differ (e.g. a NULL where other rows have a value).
_VALUES_ROWS_RE = re.compile(r"\bvalues ?(\((?:[^()]|\([^()]*\))*\))(?:, \((?:[^()]|\([^()]*\))*\))+")
_PLACEHOLDER_LIST_RE = re.compile(
    r"(?P<kw>in(?<![\w$]in)|values(?<![\w$]values)) ?\((?:\?|\((?:\?, )*\?\))(?:, (?:\?|\((?:\?, )*\?\)))*\)"
)


def _collapse_list(m: re.Match[str]) -> str:
    return m.group("kw") + " (?)"


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
_CTE_VERB_RE = re.compile(r"[()]|\b(?:select|insert|update|delete|merge|values|table)\b")

_NAME = r"[^\W\d][\w$]*(?:\.[^\W\d][\w$]*)*"
# The keyword alternatives start with a literal (fast scan, as above).  `distinct from` is a
# comparison and `key update` is MySQL's ON DUPLICATE KEY UPDATE, neither introduces a table.
_TABLE_RE = re.compile(
    r"(?P<kw>from(?<![\w$.]from)(?<!distinct from)|join(?<![\w$.]join)"
    r"|update(?<![\w$.]update)(?<!key update)|into(?<![\w$.]into)|table(?<![\w$.]table)"
    r"|using(?<![\w$.]using)|copy(?<![\w$.]copy)|truncate(?<![\w$.]truncate))"
    r"(?: (?:only|if not exists|if exists|lateral|low_priority|ignore|quick|table)(?![\w$]))*"
    rf" (?P<name>{_NAME})(?P<call> ?\()?"
)
# Further comma-separated tables (FROM a, b / UPDATE a, b), skipping an optional alias.
_MORE_TABLES_RE = re.compile(rf"(?: (?:as )?[^\W\d][\w$]*)?, (?P<name>{_NAME})(?P<call> ?\()?")
# FROM inside these calls is part of the call's syntax, not a table reference.
_FROM_CALL_RE = re.compile(r"\b(?:extract|substring|substr|trim|overlay|position) ?\((?:[^()]|\([^()]*\))*\)")
_FROM_CALLS = ("extract", "substr", "trim", "overlay", "position")
_CTE_NAME_RE = re.compile(
    rf"(?:with(?<![\w$]with) (?:recursive )?|\), )(?P<name>{_NAME})(?: ?\([^()]*\))? as (?:not )?"
    r"(?:materialized )?\("
)
_NOT_TABLES = frozenset(
    {
        "select", "values", "set", "where", "of", "skip", "nowait", "stdin", "stdout", "dual",
        "outfile", "dumpfile", "btree", "hash", "gist", "gin", "brin", "spgist", "lateral", "only",
        "table", "if", "as", "on", "with", "default", "unnest",
    }
)  # fmt: skip
_LIST_KEYWORDS = frozenset({"from", "update", "using"})
_CALL_DISQUALIFIES = frozenset({"from", "join", "using"})
_NO_TABLE_OPERATIONS = frozenset({"GRANT", "REVOKE", "SET", "RESET", "PRAGMA"})


def _operation(statement: str) -> str:
    m = _FIRST_WORD_RE.match(statement)
    if m is None:
        return ""
    verb = m.group(1).upper()
    if verb == "WITH":
        # The verb that matters is the one after the CTEs, at parenthesis depth zero.
        depth = 0
        for t in _CTE_VERB_RE.finditer(statement, m.end()):
            token = t.group()
            if token == "(":
                depth += 1
            elif token == ")":
                depth = max(depth - 1, 0)
            elif depth == 0:
                return token.upper()
        return ""
    return verb if verb in _OPERATIONS else ""


def _tables(statement: str, found: dict[str, None]) -> None:
    """Add the statement's tables to `found`, a dict used as an ordered set across statements."""
    if "(" in statement and any(call in statement for call in _FROM_CALLS):
        statement = _FROM_CALL_RE.sub("?", statement)
    ctes = {m.group("name") for m in _CTE_NAME_RE.finditer(statement)} if "with " in statement else ()
    for m in _TABLE_RE.finditer(statement):
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
            match = _MORE_TABLES_RE.match(statement, match.end("name")) if kw in _LIST_KEYWORDS else None


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

    text = _SCAN_RE.sub(_replace_token, statement)
    if '"' in text:
        text = text.replace('"', "")
    if "`" in text:
        text = text.replace("`", "")
    text = " ".join(text.lower().split())
    text = (
        text.replace(" ,", ",").replace(",", ", ").replace(",  ", ", ").replace("( ", "(").replace(" )", ")")
    )
    text = _VALUE_RE.sub("?", text)
    if "?" in text:
        if "'" in statement:
            text = _PREFIX_RE.sub("?", text)
        if ".?" in text:
            text = _LEADING_DOT_RE.sub("?", text)
    if "true" in text or "false" in text:
        text = _BOOL_RE.sub("?", text)
    if "?" in text:
        if "-?" in text or "+?" in text or "- ?" in text or "+ ?" in text:
            text = _SIGN_RE.sub(r"\g<pre>\g<sp>?", text)
        if "), (" in text and "values" in text:
            text = _VALUES_ROWS_RE.sub(r"values \1", text)
        if "(?" in text:
            text = _PLACEHOLDER_LIST_RE.sub(_collapse_list, text)

    if ";" in text:
        statements = [s for s in (part.strip() for part in text.split(";")) if s]
        text = "; ".join(statements)
    else:
        statements = [text] if text else []

    operation = _operation(statements[0]) if statements else ""
    found: dict[str, None] = {}
    for stmt in statements:
        if _operation(stmt) not in _NO_TABLE_OPERATIONS:
            _tables(stmt, found)

    fingerprint = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return SqlShape(text, fingerprint, operation, tuple(found), truncated)


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
