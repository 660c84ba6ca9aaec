"""A parser for the Lua table literals Prosody's ``internal_plain`` storage writes, that runs no code.

Prosody stores each ``.dat`` file as ``return <value>;`` where the value is what its
``util.serialization`` produced: nested tables of strings, numbers and booleans. This module reads
that data *language*, not Lua: there are no names to look up, no calls, no operators (but a unary
minus on a number and Prosody's spellings of infinity and NaN, ``(1/0)``, ``(-1/0)``, ``(0/0)``).
Anything else is a `LuaDataError` naming the line and column. Input size, nesting depth and the
number of values are bounded, so a hostile file costs at most linear time and bounded memory.

Accepted (a superset of what any Prosody version writes, so hand-edited files load too):

* values: ``nil``, ``true``, ``false``, numbers (decimal integers and floats with exponents,
  hexadecimal integers), strings (``"..."``, ``'...'`` with every Lua 5.4 escape, and long
  brackets ``[[...]]``, ``[==[...]==]``), tables;
* table fields: ``[key] = value``, ``name = value``, positional ``value`` (keys 1, 2, ...),
  separated by ``,`` or ``;`` with an optional trailing separator;
* comments: ``-- line`` and ``--[[ long ]]``.

Python values: ``None``, ``bool``, ``int``, ``float``, ``str`` (a Lua string that is valid UTF-8),
``bytes`` (one that is not), ``dict`` (every table, positional fields under int keys). Lua keeps
``false`` and ``0`` (``true`` and ``1``) apart as table keys while Python's ``dict`` does not, so
boolean *keys* are the sentinels `FALSE` and `TRUE` (Prosody's roster keeps its metadata under
``[false]``). A field whose value is ``nil`` is left out, as in Lua. A key given twice is an error
(Lua would silently keep one of them).
"""

from __future__ import annotations

import enum
import math
import re
from typing import Union

__all__ = [
    "FALSE",
    "MAX_DEPTH",
    "MAX_SIZE",
    "MAX_VALUES",
    "TRUE",
    "LuaBoolKey",
    "LuaDataError",
    "LuaKey",
    "LuaTable",
    "LuaValue",
    "parse_file",
    "parse_value",
]

#: Default bounds: a roster of 100 000 contacts is far below each of them.
MAX_SIZE = 64 * 1024 * 1024  # bytes of input
MAX_DEPTH = 100  # nested tables (Prosody's serializer stops at 127)
MAX_VALUES = 5_000_000  # values and keys, all tables together


class LuaBoolKey(enum.Enum):
    """A boolean used as a table key (see the module docstring)."""

    FALSE = False
    TRUE = True

    def __repr__(self) -> str:
        return f"lua.{self.name}"


FALSE = LuaBoolKey.FALSE
TRUE = LuaBoolKey.TRUE

LuaKey = Union[str, bytes, int, float, LuaBoolKey]  # noqa: UP007 - a runtime alias
LuaTable = dict[LuaKey, "LuaValue"]
LuaValue = Union[None, bool, int, float, str, bytes, LuaTable]  # noqa: UP007


class LuaDataError(ValueError):
    """The input is not a Lua data literal this parser accepts, or exceeds a bound."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None,
                 source: str | None = None) -> None:
        self.message = message
        self.line = line
        self.column = column
        self.source = source
        where = ""
        if line is not None:
            where = f"line {line}, column {column}: "
        if source is not None:
            where = f"{source}: {where}"
        super().__init__(where + message)


_KEYWORDS = frozenset({
    b"and", b"break", b"do", b"else", b"elseif", b"end", b"false", b"for", b"function", b"goto", b"if",
    b"in", b"local", b"nil", b"not", b"or", b"repeat", b"return", b"then", b"true", b"until", b"while",
})
_NAME = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")
_SPACE = re.compile(rb"[ \t\r\n\f\v]+")
_DEC_NUMBER = re.compile(rb"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_HEX_NUMBER = re.compile(rb"0[xX][0-9A-Fa-f]+")
_LONG_OPEN = re.compile(rb"\[(=*)\[")
# Prosody's util.serialization spellings of the non-finite floats: (1/0), (-1/0), (0/0).
_SPECIAL_RE = re.compile(rb"\(\s*(-?)\s*([01])\s*/\s*0\s*\)")
_PLAIN_RUN = {ord('"'): re.compile(rb'[^"\\\r\n]*'), ord("'"): re.compile(rb"[^'\\\r\n]*")}
_DIGITS = re.compile(rb"[0-9]+")
_DEC_ESCAPE = re.compile(rb"[0-9]{1,3}")
_HEX_ESCAPE = re.compile(rb"[0-9A-Fa-f]{2}")
_UTF8_ESCAPE = re.compile(rb"\{([0-9A-Fa-f]{1,8})\}")
_SIMPLE_ESCAPES = {
    ord("a"): b"\a", ord("b"): b"\b", ord("f"): b"\f", ord("n"): b"\n", ord("r"): b"\r",
    ord("t"): b"\t", ord("v"): b"\v", ord("\\"): b"\\", ord('"'): b'"', ord("'"): b"'",
    ord("\n"): b"\n", ord("\r"): b"\n",
}
_MAX_NUMBER_LEN = 400  # characters of one numeric literal
_INT64 = 2**63


class _Parser:
    def __init__(self, data: bytes, *, max_depth: int, max_values: int, source: str | None) -> None:
        self.data = data
        self.pos = 0
        self.max_depth = max_depth
        self.max_values = max_values
        self.values = 0
        self.source = source

    # -- errors and positions -------------------------------------------------------------------

    def error(self, message: str, pos: int | None = None) -> LuaDataError:
        pos = self.pos if pos is None else pos
        line = self.data.count(b"\n", 0, pos) + 1
        column = pos - (self.data.rfind(b"\n", 0, pos) + 1) + 1
        return LuaDataError(message, line, column, self.source)

    def describe(self) -> str:
        if self.pos >= len(self.data):
            return "end of input"
        chunk = self.data[self.pos:self.pos + 12]
        return repr(chunk.decode("utf-8", "replace"))

    # -- lexical --------------------------------------------------------------------------------

    def skip(self) -> None:
        """Skip white space and comments."""
        data = self.data
        while True:
            m = _SPACE.match(data, self.pos)
            if m:
                self.pos = m.end()
            if data.startswith(b"--", self.pos):
                start = self.pos
                self.pos += 2
                m = _LONG_OPEN.match(data, self.pos)
                if m:
                    self.long_bracket(m, start)
                else:
                    end = data.find(b"\n", self.pos)
                    self.pos = len(data) if end < 0 else end + 1
                continue
            return

    def long_bracket(self, m: re.Match[bytes], start: int) -> bytes:
        close = b"]" + m.group(1) + b"]"
        end = self.data.find(close, m.end())
        if end < 0:
            raise self.error("unfinished long string or comment", start)
        body = self.data[m.end():end]
        self.pos = end + len(close)
        # Lua drops a newline (any of \n, \r, \r\n, \n\r) right after the opening bracket.
        for nl in (b"\r\n", b"\n\r", b"\n", b"\r"):
            if body.startswith(nl):
                return body[len(nl):]
        return body

    def expect(self, token: bytes, what: str) -> None:
        self.skip()
        if not self.data.startswith(token, self.pos):
            raise self.error(f"expected {what}, got {self.describe()}")
        self.pos += len(token)

    def count(self) -> None:
        self.values += 1
        if self.values > self.max_values:
            raise self.error(f"more than {self.max_values} values")

    # -- values ---------------------------------------------------------------------------------

    def value(self, depth: int) -> LuaValue:
        self.skip()
        self.count()
        data, pos = self.data, self.pos
        if pos >= len(data):
            raise self.error("expected a value, got end of input")
        c = data[pos]
        if c == ord("{"):
            return self.table(depth + 1)
        if c in (ord('"'), ord("'")):
            return _text(self.quoted())
        if c == ord("["):
            m = _LONG_OPEN.match(data, pos)
            if m:
                return _text(self.long_bracket(m, pos))
            raise self.error(f"expected a value, got {self.describe()}")
        if c == ord("("):
            m = _SPECIAL_RE.match(data, pos)
            if m:
                self.pos = m.end()
                if m.group(2) == b"0":
                    return math.nan
                return -math.inf if m.group(1) else math.inf
            raise self.error("expressions are not data: only (1/0), (-1/0) and (0/0) are accepted")
        if c == ord("-") or c == ord(".") or ord("0") <= c <= ord("9"):
            return self.number()
        m = _NAME.match(data, pos)
        if m:
            word = m.group()
            if word in (b"true", b"false", b"nil"):
                self.pos = m.end()
                return {b"true": True, b"false": False, b"nil": None}[word]
            raise self.error(f"names are not data: {word[:40].decode('ascii')!r} (only true, false and nil)")
        raise self.error(f"expected a value, got {self.describe()}")

    def number(self) -> int | float:
        start = self.pos
        negative = False
        if self.data.startswith(b"-", self.pos):
            negative = True
            self.pos += 1
            self.skip()
        m = _HEX_NUMBER.match(self.data, self.pos) or _DEC_NUMBER.match(self.data, self.pos)
        if not m:
            raise self.error(f"expected a number, got {self.describe()}", start)
        text = m.group()
        end = m.end()
        if end < len(self.data) and (self.data[end:end + 1].isalnum() or self.data[end:end + 1] in b"._"):
            raise self.error("malformed number", start)
        if len(text) > _MAX_NUMBER_LEN:
            raise self.error(f"numeric literal longer than {_MAX_NUMBER_LEN} characters", start)
        self.pos = end
        result: int | float
        if text[:2] in (b"0x", b"0X"):
            # Lua wraps hexadecimal integers modulo 2**64.
            result = int(text, 16) % (2 * _INT64)
            if result >= _INT64:
                result -= 2 * _INT64
        elif _DIGITS.fullmatch(text):
            result = int(text)
            if result >= _INT64:  # Lua 5.4 reads an overflowing decimal integer as a float
                result = float(text)
        else:
            result = float(text)
        return -result if negative else result

    def quoted(self) -> bytes:
        data = self.data
        quote = data[self.pos]
        start = self.pos
        self.pos += 1
        out = bytearray()
        while True:
            # Copy the run of ordinary bytes in one go.
            n = len(data)
            i = _PLAIN_RUN[quote].match(data, self.pos).end()  # type: ignore[union-attr]
            out += data[self.pos:i]
            self.pos = i
            if i >= n or data[i] in (0x0A, 0x0D):
                raise self.error("unfinished string", start)
            if data[i] == quote:
                self.pos = i + 1
                return bytes(out)
            # a backslash escape
            self.pos = i + 1
            if self.pos >= n:
                raise self.error("unfinished string", start)
            e = data[self.pos]
            if e in _SIMPLE_ESCAPES:
                out += _SIMPLE_ESCAPES[e]
                self.pos += 1
                if e in (0x0A, 0x0D) and self.pos < n and data[self.pos] in (0x0A, 0x0D) and data[self.pos] != e:
                    self.pos += 1  # \<CR><LF> or \<LF><CR> is one line break
            elif ord("0") <= e <= ord("9"):
                m = _DEC_ESCAPE.match(data, self.pos)
                assert m is not None
                code = int(m.group())
                if code > 255:
                    raise self.error("decimal escape too large", i)
                out.append(code)
                self.pos = m.end()
            elif e == ord("x"):
                m = _HEX_ESCAPE.match(data, self.pos + 1)
                if not m:
                    raise self.error("hexadecimal digit expected in \\x escape", i)
                out.append(int(m.group(), 16))
                self.pos = m.end()
            elif e == ord("z"):
                self.pos += 1
                m = _SPACE.match(data, self.pos)
                if m:
                    self.pos = m.end()
            elif e == ord("u"):
                m = _UTF8_ESCAPE.match(data, self.pos + 1)
                if not m:
                    raise self.error("malformed \\u{XXX} escape", i)
                code = int(m.group(1), 16)
                if code >= 2**31:
                    raise self.error("UTF-8 value too large in \\u escape", i)
                out += _lua_utf8(code)
                self.pos = m.end()
            else:
                raise self.error(f"invalid escape sequence \\{chr(e)!r}"[:40], i)

    def table(self, depth: int) -> LuaTable:
        if depth > self.max_depth:
            raise self.error(f"tables nested deeper than {self.max_depth}")
        start = self.pos
        self.pos += 1  # "{"
        result: LuaTable = {}
        index = 1
        while True:
            self.skip()
            if self.data.startswith(b"}", self.pos):
                self.pos += 1
                return result
            if self.pos >= len(self.data):
                raise self.error("unfinished table (no '}')", start)
            field_pos = self.pos
            key: LuaValue
            if self.data.startswith(b"[", self.pos) and not _LONG_OPEN.match(self.data, self.pos):
                self.pos += 1
                key = self.value(depth)
                self.expect(b"]", "']'")
                self.expect(b"=", "'='")
            else:
                m = _NAME.match(self.data, self.pos)
                eq = -1
                if m and m.group() not in _KEYWORDS:
                    after = _SPACE.match(self.data, m.end())
                    eq = after.end() if after else m.end()
                    if not self.data.startswith(b"=", eq) or self.data.startswith(b"==", eq):
                        eq = -1
                if m and eq >= 0:
                    key = m.group().decode("ascii")
                    self.pos = eq + 1
                    self.count()
                else:
                    key = index
                    index += 1
            value = self.value(depth)
            k = _key(key)
            if k is None:
                raise self.error(_bad_key(key), field_pos)
            if k in result:
                raise self.error(f"key {_show(k)} given twice in one table", field_pos)
            if value is not None:
                result[k] = value
            self.skip()
            if self.pos < len(self.data) and self.data[self.pos] in b",;":
                self.pos += 1
                continue
            if self.data.startswith(b"}", self.pos):
                continue
            if self.pos >= len(self.data):
                raise self.error("unfinished table (no '}')", start)
            raise self.error(f"expected ',', ';' or '}}', got {self.describe()}")


def _lua_utf8(code: int) -> bytes:
    # Lua's \u{} takes values up to 2**31 - 1 and encodes them in the original (up to 6-byte) UTF-8.
    if code < 0x80:
        return bytes([code])
    limits = [(0x800, 2), (0x10000, 3), (0x200000, 4), (0x4000000, 5), (0x80000000, 6)]
    n = next(length for limit, length in limits if code < limit)
    out = bytearray(n)
    for i in range(n - 1, 0, -1):
        out[i] = 0x80 | (code & 0x3F)
        code >>= 6
    out[0] = ((0xFF << (8 - n)) & 0xFF) | code
    return bytes(out)


def _text(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _key(key: LuaValue) -> LuaKey | None:
    if isinstance(key, bool):
        return TRUE if key else FALSE
    if isinstance(key, float):
        if math.isnan(key):
            return None
        if key.is_integer():
            return int(key)  # Lua normalises 2.0 to 2 as a key
        return key
    if isinstance(key, (int, str, bytes)):
        return key
    return None  # nil, or a table (not data: it cannot be looked up)


def _bad_key(key: LuaValue) -> str:
    if key is None:
        return "table key is nil"
    if isinstance(key, float):
        return "table key is NaN"
    return "a table is not accepted as a table key"


def _show(key: LuaKey) -> str:
    text = repr(key)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_size(data: bytes | str, max_size: int) -> bytes:
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) > max_size:
        raise LuaDataError(f"input of {len(raw)} bytes is larger than the limit of {max_size}")
    return raw


def parse_value(data: bytes | str, *, max_size: int = MAX_SIZE, max_depth: int = MAX_DEPTH,
                max_values: int = MAX_VALUES, source: str | None = None) -> LuaValue:
    """Parse one Lua data value (what ``util.serialization.serialize`` returns) and nothing else."""
    p = _Parser(_check_size(data, max_size), max_depth=max_depth, max_values=max_values, source=source)
    result = p.value(0)
    p.skip()
    if p.pos != len(p.data):
        raise p.error(f"expected end of input, got {p.describe()}")
    return result


def parse_file(data: bytes | str, *, max_size: int = MAX_SIZE, max_depth: int = MAX_DEPTH,
               max_values: int = MAX_VALUES, source: str | None = None) -> LuaValue:
    """Parse a Prosody data file: ``return <value>`` with an optional ``;``.

    A UTF-8 byte order mark and a first line starting with ``#`` (as Lua's loader allows) are
    skipped. ``source`` (a file name) prefixes error messages.
    """
    raw = _check_size(data, max_size)
    p = _Parser(raw, max_depth=max_depth, max_values=max_values, source=source)
    if raw.startswith(b"\xef\xbb\xbf"):
        p.pos = 3
    if raw.startswith(b"#", p.pos):
        end = raw.find(b"\n", p.pos)
        p.pos = len(raw) if end < 0 else end
    p.skip()
    m = _NAME.match(raw, p.pos)
    if not m or m.group() != b"return":
        raise p.error(f"expected 'return', got {p.describe()}")
    p.pos = m.end()
    result = p.value(0)
    p.skip()
    if raw.startswith(b";", p.pos):
        p.pos += 1
        p.skip()
    if p.pos != len(raw):
        raise p.error(f"expected end of input, got {p.describe()}")
    return result
