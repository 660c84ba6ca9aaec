"""The Lua data-literal parser: what Prosody writes, every escape, and hostile input (bounded, no code)."""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshxmpp.importer.lua import FALSE, TRUE, LuaDataError, parse_file, parse_value

DATA = Path(__file__).parent / "data" / "prosody"
PROSODY_LIB = Path("/usr/lib/prosody")


# -- what Prosody writes ---------------------------------------------------------------------------


def test_real_accounts_file() -> None:
    got = parse_file((DATA / "example%2eorg" / "accounts" / "alice.dat").read_bytes())
    assert isinstance(got, dict)
    assert got["iteration_count"] == 10000
    assert isinstance(got["salt"], str) and len(got["salt"]) == 36
    assert isinstance(got["stored_key"], str) and len(got["stored_key"]) == 40


def test_real_roster_file() -> None:
    got = parse_file((DATA / "example%2eorg" / "roster" / "alice.dat").read_bytes())
    assert isinstance(got, dict)
    meta = got[FALSE]
    assert isinstance(meta, dict) and meta["version"] == 7
    pending = meta["pending"]
    assert isinstance(pending, dict) and pending["erin@example.org"] is True
    stanza = pending["dave@remote.example"]
    assert isinstance(stanza, dict)
    assert stanza["name"] == "presence" and stanza["attr"] == {
        "id": "s1", "to": "alice@example.org", "from": "dave@remote.example", "type": "subscribe"}
    assert stanza[1] == {1: "Hi Alice, it's \"Dave\"\n\u2014 ok?", "name": "status", "attr": {}}
    assert got["bob.smith@example.org"] == {
        "name": 'Bob "B" Smith', "groups": {"Friends": True, "W\u00f6rk": True}, "subscription": "both"}
    grace = got["grace@remote.example"]
    assert isinstance(grace, dict) and grace["name"] == "Tab\tand \\ back\x01"


def test_prosody_layout_with_tabs_and_semicolons() -> None:
    text = 'return {\n\t["a"] = {\n\t\t"x";\n\t\t"y";\n\t};\n\t[false] = true;\n\t[1] = 2;\n};\n'
    assert parse_file(text) == {"a": {1: "x", 2: "y"}, FALSE: True, 1: 2}


# -- the language: values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("nil", None), ("true", True), ("false", False),
        ("0", 0), ("42", 42), ("-7", -7), ("- 7", -7), ("3.5", 3.5), ("-0.25", -0.25), ("1e3", 1000.0),
        ("1E-2", 0.01), (".5", 0.5), ("5.", 5.0), ("0x10", 16), ("0XfF", 255), ("0xffffffffffffffff", -1),
        ("9223372036854775807", 2**63 - 1), ("9223372036854775808", 9.223372036854775808e18),
        ("(1/0)", math.inf), ("(-1/0)", -math.inf), ("( - 1 / 0 )", -math.inf),
        ('"plain"', "plain"), ("'single'", "single"), ('""', ""),
        (r'"\a\b\f\n\r\t\v\\\"\'"', "\a\b\f\n\r\t\v\\\"'"),
        (r'"\065\66\0677"', "ABC7"), (r'"\x41\x6a"', "Aj"), ('"a\\z  \n\t b"', "ab"),
        (r'"\u{48}\u{e9}\u{20AC}\u{1F600}"', "H\u00e9\u20ac\U0001f600"),
        ('"line\\\nbreak"', "line\nbreak"), ('"crlf\\\r\nx"', "crlf\nx"),
        (r'"\226\128\148"', "\u2014"),  # UTF-8 bytes escaped one by one, as util.serialization does
        ("[[long]]", "long"), ("[==[a]]b]=]c]==]", "a]]b]=]c"), ("[[\nfirst newline dropped]]", "first newline dropped"),
        ("{}", {}), ("{ 1, 2, 3 }", {1: 1, 2: 2, 3: 3}), ("{1,2,}", {1: 1, 2: 2}), ("{a=1;b=2;}", {"a": 1, "b": 2}),
        ("{ [1.0] = 'x' }", {1: "x"}), ("{ [1.5] = 'x' }", {1.5: "x"}), ('{["a b"]={}}', {"a b": {}}),
        ("{ x = nil, y = 1 }", {"y": 1}), ("{ nil, 2 }", {2: 2}),
    ],
)
def test_values(text: str, value: object) -> None:
    assert parse_value(text) == value


def test_nan() -> None:
    got = parse_value("(0/0)")
    assert isinstance(got, float) and math.isnan(got)


def test_not_utf8_string_is_bytes() -> None:
    assert parse_value(r'"\255\254"') == b"\xff\xfe"
    assert parse_value('{ ["\\128"] = 1 }') == {b"\x80": 1}


def test_boolean_keys_stay_apart_from_numbers() -> None:
    got = parse_value("{ [false] = 'f', [0] = 'zero', [true] = 't', [1] = 'one' }")
    assert got == {FALSE: "f", 0: "zero", TRUE: "t", 1: "one"}


def test_comments_and_whitespace() -> None:
    text = "-- written by hand\nreturn --[[ a\nlong ]] { --[==[ x ]==] a = 1 -- trailing\n } ; -- end"
    assert parse_file(text) == {"a": 1}


def test_bom_and_shebang() -> None:
    assert parse_file(b"\xef\xbb\xbf#!/usr/bin/lua\nreturn 1") == 1


# -- errors: clear, with a position --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected 'return'"),
        ("return", "expected a value, got end of input"),
        ("return 1 2", "expected end of input"),
        ("return {", "unfinished table"),
        ("return { 1 2 }", "expected ',', ';' or '}'"),
        ('return "abc', "unfinished string"),
        ('return "a\nb"', "unfinished string"),
        ("return [[abc", "unfinished long string"),
        (r'return "\q"', "invalid escape"),
        (r'return "\256"', "decimal escape too large"),
        (r'return "\xZZ"', "hexadecimal digit expected"),
        (r'return "\u{110000000}"', "malformed"),
        ("return { [nil] = 1 }", "table key is nil"),
        ("return { [(0/0)] = 1 }", "table key is NaN"),
        ("return { [{}] = 1 }", "a table is not accepted as a table key"),
        ("return { a = 1, a = 2 }", "given twice"),
        ("return { 'x', [1] = 'y' }", "given twice"),
        ("return 1x", "malformed number"),
        ("return 1..2", "malformed number"),
        ("return 0x", "malformed number"),
        ("return 1 + 1", "expected end of input"),
        ('return "a" .. "b"', "expected end of input"),
        ("return -'a'", "expected a number"),
        ("return (1)", "expressions are not data"),
        ("return x", "names are not data: 'x'"),
        ("return { a = b }", "names are not data: 'b'"),
        ("return { [a] = 1 }", "names are not data"),
        ("return { a == 1 }", "names are not data: 'a'"),
        ("return function() end", "names are not data: 'function'"),
        ("return {1}{2}", "expected end of input"),
        ("return 1;;", "expected end of input"),
        ("return 1" + "0" * 500, "longer than 400"),
    ],
)
def test_errors(text: str, message: str) -> None:
    with pytest.raises(LuaDataError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_file(text)


def test_error_names_line_column_and_source() -> None:
    with pytest.raises(LuaDataError) as info:
        parse_file('return {\n\t["a"] = 1;\n\t["b"] = oops;\n}', source="x.dat")
    assert info.value.line == 3 and info.value.column == 10
    assert str(info.value).startswith("x.dat: line 3, column 10: names are not data: 'oops'")


# -- hostile input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        'return os.execute("touch {marker}")',
        'return { x = os.execute("touch {marker}") }',
        'return (function() os.execute("touch {marker}") end)()',
        'return { [io.open("{marker}", "w")] = 1 }',
        'return setmetatable({}, {__index = function() os.execute("touch {marker}") end})',
        'return load("os.execute(\'touch {marker}\')")()',
        'return require("os").execute("touch {marker}")',
        'os.execute("touch {marker}") return 1',
        'return 1; os.execute("touch {marker}")',
    ],
)
def test_code_is_refused_never_run(tmp_path: Path, text: str) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(LuaDataError):
        parse_file(text.replace("{marker}", str(marker)))
    assert not marker.exists()


def test_deep_nesting_is_bounded_without_recursion_error() -> None:
    with pytest.raises(LuaDataError, match="nested deeper than 100"):
        parse_value("{" * 100_000 + "}" * 100_000)
    assert parse_value("{" * 100 + "}" * 100, max_depth=100) is not None
    with pytest.raises(LuaDataError, match="nested deeper than 5"):
        parse_value("{{{{{{}}}}}}", max_depth=5)
    with pytest.raises(LuaDataError, match="nested deeper"):
        parse_value("{ [" * 200 + "1" + "] = 1 }" * 200)  # nesting through keys counts too


def test_size_is_bounded() -> None:
    with pytest.raises(LuaDataError, match="larger than the limit of 100"):
        parse_file("return '" + "a" * 200 + "'", max_size=100)


def test_number_of_values_is_bounded() -> None:
    with pytest.raises(LuaDataError, match="more than 1000 values"):
        parse_value("{" + "1," * 2000 + "}", max_values=1000)
    with pytest.raises(LuaDataError, match="more than 1000 values"):
        parse_value("{" + "".join(f"a{i}=1," for i in range(2000)) + "}", max_values=1000)


def test_large_input_is_linear() -> None:
    # 100 000 roster-like entries (~7 MB) parse in well under the time a quadratic parser would take.
    entry = '\t["user{0}@example.org"] = {{\n\t\t["groups"] = {{}};\n\t\t["subscription"] = "both";\n\t}};\n'
    text = "return {\n" + "".join(entry.format(i) for i in range(100_000)) + "};\n"
    start = time.monotonic()
    got = parse_file(text)
    assert isinstance(got, dict) and len(got) == 100_000
    assert time.monotonic() - start < 20
    # A long string full of escapes is linear too.
    start = time.monotonic()
    assert parse_value('"' + "\\065" * 500_000 + '"') == "A" * 500_000
    assert time.monotonic() - start < 10


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_value_or_lua_data_error(data: bytes) -> None:
    try:
        parse_file(b"return " + data)
    except LuaDataError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="{}[]=,;\"'\\-0123456789.xeE()/ \nabtrufalsenil", max_size=120))
def test_arbitrary_near_lua_text_gives_a_value_or_lua_data_error(text: str) -> None:
    try:
        parse_value(text)
    except LuaDataError:
        pass


# -- round trip through Prosody's own serializer ---------------------------------------------------

_lua_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=True) | st.binary(max_size=20),
    lambda children: st.dictionaries(st.binary(max_size=8) | st.integers(-5, 5), children, max_size=4),
    max_leaves=15,
)


def _lua_literal(v: object) -> str:
    """A Lua expression building ``v`` without util.serialization (the script's input)."""
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v) if v != -(2**63) else "math.mininteger"
    if isinstance(v, float):
        if math.isinf(v):
            return "(1/0)" if v > 0 else "(-1/0)"
        return f"({v.hex()}+0.0)" if v != 0 else ("(-0.0)" if math.copysign(1, v) < 0 else "0.0")
    if isinstance(v, bytes):
        return '"' + "".join(f"\\{b}" for b in v) + '"'
    assert isinstance(v, dict)
    return "{" + "".join(f"[{_lua_literal(k)}]={_lua_literal(x)}," for k, x in v.items()) + "}"


def _normalise(v: object) -> object:
    """What parse_value returns for ``v``: nil fields dropped, valid UTF-8 as str, 2.0 keys as 2."""
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return v
    if isinstance(v, dict):
        return {_normalise(k): _normalise(x) for k, x in v.items() if x is not None}
    return v


@pytest.mark.skipif(shutil.which("lua5.4") is None or not (PROSODY_LIB / "util" / "serialization.lua").exists(),
                    reason="needs lua5.4 and Prosody's util/serialization.lua (apt-get install prosody)")
@settings(max_examples=40, deadline=None)
@given(_lua_values)
def test_prosody_serializer_round_trip(value: object) -> None:
    script = (
        f'package.path = "{PROSODY_LIB}/?.lua;" .. package.path\n'
        'local s = require "util.serialization"\n'
        f"io.write('return ' .. s.serialize({_lua_literal(value)}) .. ';\\n')\n"
    )
    out = subprocess.run(["lua5.4", "-"], input=script.encode(), capture_output=True, timeout=30, check=True)
    got = parse_file(out.stdout)
    want = _normalise(value)
    if isinstance(want, float) and isinstance(got, float):
        assert got == want or (math.isnan(got) and math.isnan(want))
    else:
        assert got == want, out.stdout
