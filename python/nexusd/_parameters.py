"""Parameters as they appear in a statement's text, read the way SQLite's
tokenizer reads them: ``?``, ``?NNN``, ``:name``, ``@name``, ``#name`` and
``$name`` (with TCL's ``::`` and ``(...)`` suffixes) outside quotes,
comments and identifiers.

Statements are prepared in the daemon, so the driver reads their text here
for two things ``sqlite3`` gets from the prepared statement: which names a
mapping of parameters must supply (``names``), and the text a trace
callback sees, with the values written in (``expand``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

PREFIXES = ":@#$"


def _id_char(c: str) -> bool:
    """SQLite's IdChar: what may stand in an identifier or a name."""
    return c.isalnum() or c in "_$" or c >= "\x80"


def _name_end(sql: str, i: int) -> int:
    """Where the name whose prefix is at ``i`` ends, or ``i`` if SQLite
    would not read one there."""
    n = len(sql)
    j = i + 1
    letters = 0
    while j < n:
        c = sql[j]
        if _id_char(c):
            letters += 1
            j += 1
        elif c == "(" and letters:
            close = j
            while close < n and not sql[close].isspace() and sql[close] != ")":
                close += 1
            # Without its ")" SQLite calls the whole token illegal.
            return close + 1 if close < n and sql[close] == ")" else i
        elif c == ":" and sql.startswith("::", j):
            j += 2
        else:
            break
    return j if letters else i


def _tokens(sql: str):
    """Yields ``(start, end, key)`` for each parameter: ``key`` is the
    1-based index of a ``?`` or ``?NNN``, or the name with its prefix."""
    n = len(sql)
    i = 0
    next_index = 1
    while i < n:
        c = sql[i]
        if c in "'\"`":
            close = sql.find(c, i + 1)
            # A doubled quote inside is two quoted runs back to back.
            i = n if close < 0 else close + 1
        elif c == "[":
            close = sql.find("]", i + 1)
            i = n if close < 0 else close + 1
        elif c == "-" and sql.startswith("--", i):
            close = sql.find("\n", i)
            i = n if close < 0 else close + 1
        elif c == "/" and sql.startswith("/*", i):
            close = sql.find("*/", i + 2)
            i = n if close < 0 else close + 2
        elif c == "?":
            j = i + 1
            while j < n and sql[j].isdigit():
                j += 1
            index = int(sql[i + 1:j]) if j > i + 1 else next_index
            next_index = max(next_index, index + 1)
            yield i, j, index
            i = j
        elif c in PREFIXES and (j := _name_end(sql, i)) > i:
            yield i, j, sql[i:j]
            i = j
        elif _id_char(c):
            # A word (a keyword, an identifier such as a$b, a number): a
            # prefix inside it starts no parameter.
            j = i + 1
            while j < n and _id_char(sql[j]):
                j += 1
            i = j
        else:
            i += 1


@functools.lru_cache(maxsize=256)
def names(sql: str) -> tuple:
    """The statement's named parameters, each once, prefix included."""
    seen: dict = {}
    for _, _, key in _tokens(sql):
        if isinstance(key, str):
            seen.setdefault(key, None)
    return tuple(seen)


def by_name(sql: str, mapping: Mapping, error: Callable[[str], Exception]) -> dict:
    """The values of a mapping for ``sql``'s named parameters, keyed as the
    statement spells them, looked up as ``sqlite3`` looks them up: by the
    name without its prefix (the prefixed name is taken too). Keys the
    statement does not use are left out, as ``sqlite3`` ignores them."""
    out = {}
    for name in names(sql):
        bare = name[1:]
        if bare in mapping:
            out[name] = mapping[bare]
        elif name in mapping:
            out[name] = mapping[name]
        else:
            raise error(f"You did not supply a value for binding parameter {name}.")
    return out


def literal(value: Any) -> str:
    """A bound value as SQLite writes it into expanded SQL."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = "%.15g" % value
        if text in ("inf", "-inf", "nan"):
            return {"inf": "Inf", "-inf": "-Inf", "nan": "NULL"}[text]
        if not any(c in text for c in ".e"):
            text += ".0"
        return text
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "x'" + bytes(value).hex() + "'"
    return "'" + str(value).replace("'", "''") + "'"


def expand(sql: str, parameters: Any, adapt: Callable[[Any], Any]) -> str:
    """``sql`` with its parameters written in, as ``sqlite3_expanded_sql``
    writes them. A parameter with no value is written as NULL, as SQLite
    does for an unbound one."""
    if not parameters:
        return sql
    mapping = isinstance(parameters, Mapping)
    out: list = []
    start = 0
    for i, j, key in _tokens(sql):
        out.append(sql[start:i])
        if mapping and isinstance(key, str) and (key[1:] in parameters or key in parameters):
            value = parameters[key[1:]] if key[1:] in parameters else parameters[key]
            out.append(literal(adapt(value)))
        elif not mapping and isinstance(key, int) and key <= len(parameters):
            out.append(literal(adapt(parameters[key - 1])))
        else:
            out.append("NULL")
        start = j
    out.append(sql[start:])
    return "".join(out)
