"""How TF Serving reads and writes JSON text: rapidjson parsing rules, error texts, decimals.

TF Serving parses request bodies with rapidjson (``kParseNanAndInfFlag``, the first complete
value wins, trailing bytes ignored) and quotes offending JSON in error messages with rapidjson's
``PrettyWriter`` (4-space indent). Floats in responses go through ``WriteDecimal``: ``%g`` with 6
significant digits, widened to ``max_digits10`` when that does not round-trip, and ``.0``
appended to whole numbers. Clients (and TF Serving's own tests) compare those texts, so they
are reproduced here. Parsing uses orjson first because it is several times faster than ``json``;
``json`` is the fallback for NaN/Infinity, trailing data and precise error messages.

rapidjson (TF Serving pins v1.1.0) does not validate UTF-8: string bytes reach the model as
sent. The fallback decodes such a body with ``surrogateescape`` and :func:`string_bytes` turns
the escapes back into those bytes. It refuses what rapidjson refuses: a number beyond a double
("Number too big to be stored in double.", also every integer of over 4,300 digits, which
Python would refuse to convert) and a ``\\ud800``-``\\udbff`` escape without its low half.
Of a repeated key, the first value counts, as with rapidjson's ``FindMember``.
"""

from __future__ import annotations

import codecs
import json
import math
import re
import struct
from decimal import Decimal
from itertools import chain
from typing import Any

import numpy as np
import orjson

from modelserver.budget import charge_decode
from modelserver.core.status import invalid_argument

FLT_MAX = float(np.finfo(np.float32).max)

_JSON_ERRORS = {
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid control character at": "Invalid encoding in string.",
    "Invalid \\escape": "Invalid escape character in string.",
    "Invalid \\uXXXX escape": "Incorrect hex digit after \\u escape in string.",
}
_WHITESPACE = b" \t\r\n"


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Parse a request body as ``json_tensor.cc ParseJson`` does; raise its exact errors."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    charge_decode(body)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = _parse_slow(body)
    else:
        if type(doc) is dict and _has_colons_beyond(body, len(doc)) and _may_repeat_keys(doc, body.count(b":")):
            doc = _parse_slow(body)
    if type(doc) is not dict:
        raise invalid_argument(f"JSON Value: {json_value_to_string(doc)} Is not object")
    return doc


def _has_colons_beyond(body: bytes, count: int) -> bool:
    """Whether ``body`` has more than ``count`` colons. A large body takes ``count + 1`` memchr
    scans, 25x faster than ``bytes.count`` when its colons are few (a body of numbers)."""
    if len(body) < 4096:
        return body.count(b":") > count
    pos = -1
    for _ in range(count + 1):
        pos = body.find(b":", pos + 1)
        if pos < 0:
            return False
    return True


def _may_repeat_keys(doc: dict[str, Any], colons: int) -> bool:
    """Whether the body that orjson parsed to ``doc`` may repeat a key of an object.

    orjson keeps a repeated key's last value, rapidjson's ``FindMember`` (so TF Serving) its
    first. Every member of every object in the body holds one of its ``colons``; the rest are
    inside strings. When ``doc``'s objects have as many members as the body has colons, no member
    was dropped: most bodies are settled at the top level (:func:`_has_colons_beyond`) without
    this walk, and the walk stops as soon as the count is reached. Lists of scalars are not searched for objects, so a body
    it cannot settle (or with ``:`` inside strings) takes the exact parse, never a wrong one.
    """
    count = 0
    pending: list[Any] = [doc]
    while pending:
        node = pending.pop()
        if type(node) is dict:
            count += len(node)
            if count >= colons:
                return False
            pending.extend(node.values())
        elif type(node) is list and node:
            kind = type(node[0])
            if kind is dict:  # rows of objects: their members at C speed, then all their values as one list
                try:
                    count += sum(map(dict.__len__, node))  # TypeError unless all are objects
                    if count >= colons:
                        return False
                    pending.append(list(chain.from_iterable(map(dict.values, node))))
                except TypeError:  # not all objects: let the exact parse judge
                    return True
            elif kind is list:
                pending.extend(node)
    return True


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


class _NumberTooBig(Exception):
    """A number literal beyond a double: rapidjson's ``kParseErrorNumberTooBig``."""


def _parse_int(text: str) -> int:
    # Checked before int(): a literal of over 4,300 digits would raise ValueError (CVE-2020-10735).
    if len(text) > 308 and math.isinf(float(text)):
        raise _NumberTooBig
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NumberTooBig
    return value


_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float, object_pairs_hook=_first_wins)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?')
_LONE_HIGH_SURROGATE = re.compile(r'(?<!\\)(?:\\\\)*(\\u[dD][89abAB][0-9a-fA-F]{2})(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})')


def _parse_slow(body: bytes) -> Any:
    """json-module parse: accepts NaN/Infinity, ignores trailing data, maps error texts."""
    text = body.decode("utf-8", errors="surrogateescape")
    bom = 1 if text.startswith("\ufeff") else 0  # rapidjson's EncodedInputStream skips a UTF-8 BOM
    start = len(text) - len(text[bom:].lstrip(" \t\r\n"))
    if start == len(text):
        raise invalid_argument(f"JSON Parse error: The document is empty. at offset: {len(body)}")
    surrogate = _LONE_HIGH_SURROGATE.search(text) if "\\u" in text else None
    try:
        value, end = _DECODER.raw_decode(text, start)
        error, pos = "", end
    except json.JSONDecodeError as exc:
        error, pos = _rapidjson_message(exc), exc.pos
    except _NumberTooBig:
        error, pos = "Number too big to be stored in double.", _too_big_offset(text, start)
    except RecursionError:
        raise invalid_argument("JSON Parse error: Terminate parsing due to Handler error. at offset: 0")
    if surrogate is not None and surrogate.start(1) < pos:   # the first error in the text is reported
        error, pos = "The surrogate pair in string is invalid.", surrogate.start(1)
    if error:
        offset = len(text[:pos].encode("utf-8", "surrogateescape"))
        raise invalid_argument(f"JSON Parse error: {error} at offset: {offset}")
    return value


def _too_big_offset(text: str, start: int) -> int:
    """Where the first number literal beyond a double starts (rapidjson reports where it starts)."""
    for token in _TOKEN.finditer(text, start):
        literal = token.group()
        if literal[0] != '"' and math.isinf(float(literal)):
            return token.start()
    return start


def _rapidjson_message(exc: json.JSONDecodeError) -> str:
    if exc.msg == "Expecting ',' delimiter":
        return ("Missing a comma or '}' after an object member." if _innermost_open(exc.doc, exc.pos) == "{"
                else "Missing a comma or ']' after an array element.")
    for prefix, message in _JSON_ERRORS.items():
        if exc.msg.startswith(prefix):
            return message
    return "Invalid value."


def _innermost_open(text: str, pos: int) -> str:
    """The bracket enclosing ``pos`` (strings skipped): tells a ``,`` error's container."""
    stack: list[str] = []
    in_string = escaped = False
    for ch in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append(ch)
        elif ch in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


# ---------------------------------------------------------------------------------------------
# Writing values the way TF Serving writes them


def json_type_string(value: Any) -> str:
    """``JsonTypeString``: rapidjson's type names, as quoted in type errors."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def json_value_to_string(value: Any) -> str:
    """``JsonValueToString``: PrettyWriter text; a top-level decimal goes through WriteDecimal."""
    if type(value) is float:
        if -FLT_MAX <= value <= FLT_MAX or not math.isfinite(value):
            return format_float32(value)
        return format_float64(value)
    parts: list[str] = []
    _pretty(value, 0, parts)
    return "".join(parts)


def _pretty(value: Any, depth: int, out: list[str]) -> None:
    if isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        inner = "\n" + "    " * (depth + 1)
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            out.append(("," if i else "") + inner + dump_string(key) + ": ")
            _pretty(item, depth + 1, out)
        out.append("\n" + "    " * depth + "}")
    elif isinstance(value, list):
        if not value:
            out.append("[]")
            return
        inner = "\n" + "    " * (depth + 1)
        out.append("[")
        for i, item in enumerate(value):
            out.append(("," if i else "") + inner)
            _pretty(item, depth + 1, out)
        out.append("\n" + "    " * depth + "]")
    elif isinstance(value, str):
        out.append(dump_string(value))
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif value is None:
        out.append("null")
    elif type(value) is float:
        out.append(_rapidjson_double(value))
    else:
        out.append(str(value))


def _rapidjson_double(value: float) -> str:
    """rapidjson ``Writer::Double`` (Grisu shortest digits + ``Prettify``) for nested decimals."""
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("-Infinity" if value < 0 else "Infinity")
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    _s, digit_tuple, exp = Decimal(repr(abs(value))).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0") or "0"
    exp += len(digit_tuple) - len(digits)
    length = len(digits)
    kk = length + exp
    if 0 <= exp and kk <= 21:
        text = digits + "0" * exp + ".0"
    elif 0 < kk <= 21:
        text = digits[:kk] + "." + digits[kk:]
    elif -6 < kk <= 0:
        text = "0." + "0" * (-kk) + digits
    elif length == 1:
        text = f"{digits}e{kk - 1}"
    else:
        text = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return sign + text


def _raw_bytes(error: UnicodeError) -> tuple[bytes, int]:
    """Encoding error handler: U+DC80..U+DCFF (a byte the body had that is not UTF-8, see
    ``surrogateescape``) is that byte again; any other surrogate (a lone low ``\\udc00`` escape)
    is its 3-byte form, as rapidjson writes it."""
    chunk = error.object[error.start:error.end]
    return b"".join(bytes([ord(ch) - 0xDC00]) if "\udc80" <= ch <= "\udcff" else ch.encode("utf-8", "surrogatepass")
                    for ch in chunk), error.end


RAW_BYTES = "appliance.raw_bytes"
codecs.register_error(RAW_BYTES, _raw_bytes)


def string_bytes(text: str) -> bytes:
    """A decoded JSON string as the bytes rapidjson hands to TF: ``"\\xff\\xfe"`` in the body is 2 bytes."""
    return text.encode("utf-8", RAW_BYTES)


def dump_string(text: str) -> str:
    """A JSON string literal, non-ASCII kept as UTF-8 like rapidjson's writer."""
    return json.dumps(text, ensure_ascii=False)


def _finish_decimal(text: str) -> str:
    if "." not in text and "e" not in text:
        return text + ".0"
    return text


def format_float32(value: float) -> str:
    """``WriteDecimal<float>`` for one value."""
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("-Infinity" if value < 0 else "Infinity")
    f32 = np.float32(value)
    text = "%g" % f32
    if np.float32(float(text)) != f32:
        text = "%.9g" % f32
    return _finish_decimal(text)


def format_float64(value: float) -> str:
    """``WriteDecimal<double>`` for one value."""
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("-Infinity" if value < 0 else "Infinity")
    text = "%g" % value
    if float(text) != value:
        text = "%.17g" % value
    return _finish_decimal(text)


_SMALL = 64                      # below this many values, numpy's per-call overhead dominates
_F32 = struct.Struct("f")


def _to_float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (``inf`` beyond its range, as a C cast does)."""
    try:
        return _F32.unpack(_F32.pack(value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def _format_small(values: list[float], is_double: bool) -> list[str]:
    """:func:`format_decimals` one value at a time: ~1 us per value instead of ~10 us per call."""
    texts = []
    for v in values:
        if v != v or v in (math.inf, -math.inf):
            texts.append("NaN" if v != v else ("-Infinity" if v < 0 else "Infinity"))
            continue
        text = "%g" % v
        if (float(text) if is_double else _to_float32(float(text))) != v:
            text = ("%.17g" if is_double else "%.9g") % v
        texts.append(text if ("." in text or "e" in text) else text + ".0")
    return texts


def format_decimals(arr: np.ndarray) -> list[str]:
    """``WriteDecimal`` over a whole float array (flattened, C order).

    ``%g`` per value (Python's ``%`` is C's printf), then one vectorised round-trip check; only
    values that do not round-trip are re-formatted with ``max_digits10``. About 10x faster than
    ``np.char.mod`` on large outputs; small outputs (most predictions) are checked per value.
    """
    flat = arr.ravel()
    if flat.size == 0:
        return []
    is_double = flat.dtype == np.float64
    if flat.size <= _SMALL:
        return _format_small(flat.tolist() if is_double else flat.astype(np.float32, copy=False).tolist(),
                             is_double)
    if not is_double:
        flat = flat.astype(np.float32, copy=False)
    values = flat.tolist()
    texts = ["%g" % v for v in values]
    back = np.array(list(map(float, texts)), dtype=np.float64)
    if not is_double:
        back = back.astype(np.float32)
    with np.errstate(invalid="ignore"):
        redo = back != flat
    if redo.any():
        wide = "%.17g" if is_double else "%.9g"
        for i in np.flatnonzero(redo).tolist():
            if math.isfinite(values[i]):
                texts[i] = wide % values[i]
    texts = [t if ("." in t or "e" in t or "n" in t) else t + ".0" for t in texts]
    if not np.isfinite(flat).all():
        for i in np.flatnonzero(~np.isfinite(flat)).tolist():
            v = values[i]
            texts[i] = "NaN" if math.isnan(v) else ("-Infinity" if v < 0 else "Infinity")
    return texts
