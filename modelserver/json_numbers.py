"""Large, purely numeric ``instances``/``inputs`` arrays: from the body's text to numpy directly.

Why: a JSON DOM (orjson's, like any other) makes a Python float per value, 24 bytes plus an
8-byte list slot, from 4 bytes of text like ``1.0,``: a 240 MiB body of numbers took the model
server to 11.6 GB (issue 14). A body of at least :data:`MIN_BODY` bytes whose ``instances`` or
``inputs`` value is one array of numbers is therefore split: the rest of the document (usually a
few bytes) is parsed as usual with the array replaced by a placeholder, and the array's text is
checked and converted by numpy in bounded chunks, so the peak is the body, the tensor and a few
chunk-sized temporaries.

It takes only what it checks completely, with the same result as the normal path: the JSON
number grammar, brackets and commas (empty lists excluded), a rectangular shape, one float,
double, int32 or int64 input, finite values within the dtype's range, no integer that the
normal path would judge for precision and, for integer inputs, integers of at most 18 digits. Anything else declines (``None``) and the request takes the normal path
over the whole body, which gives its tensor or its exact error.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from modelserver.json_text import FLT_MAX, parse_json_object

MIN_BODY = 1 << 20
CHUNK = 4 << 20
MAX_RANK = 32
_PREFIX_SCAN = 64 * 1024  # the text before the array is checked in Python: keep it short
# "instances": [ or "inputs": [ or "inputs": {"<name>": [ (a name without escapes)
_KEY = re.compile(rb'"(instances|inputs)"[ \t\r\n]*:[ \t\r\n]*(?:\{[ \t\r\n]*"([^"\\]*)"[ \t\r\n]*:[ \t\r\n]*)?\[')
PLACEHOLDER = "\x00numeric array"
_PLACEHOLDER_JSON = b'"\\u0000numeric array"'

# Byte classes; 0 is anything that cannot be part of a numeric array.
_WS, _OPEN, _CLOSE, _COMMA, _DIGIT, _MINUS, _PLUS, _DOT, _EXP, _START = range(1, 11)
_NUM = _DIGIT  # a whole number token in the token stream
_CLASS = np.zeros(256, dtype=np.uint8)
for _ch in b" \t\r\n":
    _CLASS[_ch] = _WS
_CLASS[ord("[")], _CLASS[ord("]")], _CLASS[ord(",")] = _OPEN, _CLOSE, _COMMA
_CLASS[ord("0"):ord("9") + 1] = _DIGIT
_CLASS[ord("-")], _CLASS[ord("+")], _CLASS[ord(".")] = _MINUS, _PLUS, _DOT
_CLASS[ord("e")] = _CLASS[ord("E")] = _EXP
# Which token may follow which: "[" opens a list of lists or of numbers, never an empty one.
_FOLLOWS = np.zeros((11, 11), dtype=bool)
for _a, _b in [(_START, _OPEN), (_OPEN, _OPEN), (_OPEN, _NUM), (_NUM, _COMMA), (_NUM, _CLOSE),
               (_CLOSE, _COMMA), (_CLOSE, _CLOSE), (_COMMA, _OPEN), (_COMMA, _NUM)]:
    _FOLLOWS[_a, _b] = True
_BRACKETS_TO_SPACE = bytes.maketrans(b"[]", b"  ")
_INT_DIGITS = 18  # an integer of up to 18 digits fits int64 exactly (numpy saturates past it)


@dataclass(frozen=True)
class _Target:
    """How the normal path builds one dtype (json_tensor._checked_build), as far as it is taken here."""

    dtype: Any
    integer: bool         # integers only (no fraction or exponent), within [low, high]
    low: float
    high: float
    exact_int: int = 0    # floats: an integer token past this is judged one by one: decline


_TARGETS = {
    "DT_FLOAT": _Target(np.float32, False, -FLT_MAX, FLT_MAX, 2 ** 24 - 1),
    "DT_DOUBLE": _Target(np.float64, False, -math.inf, math.inf, 2 ** 53 - 1),
    "DT_INT32": _Target(np.int32, True, -(2 ** 31), 2 ** 31 - 1),
    "DT_INT64": _Target(np.int64, True, -(2 ** 63), 2 ** 63 - 1),
}


class NumericArray:
    """The text of one large numeric array in a request body, decoded on demand."""

    def __init__(self, body: bytes, key: str, name: str | None, start: int, end: int) -> None:
        self.body = body
        self.key = key      # "instances" or "inputs"
        self.name = name    # the input's name in {"inputs": {name: [...]}}, else None
        self.start = start
        self.end = end

    def placed(self, doc: Any) -> bool:
        """Whether the placeholder is where this array was in ``doc`` (not a duplicate key's value)."""
        holder = doc.get(self.key) if self.name is not None and type(doc) is dict else doc
        name = self.key if self.name is None else self.name
        return type(holder) is dict and holder.get(name) == PLACEHOLDER

    def tensor(self, dtype_name: str) -> np.ndarray | None:
        """The array as a tensor of ``dtype_name`` exactly as the normal path builds it, or None."""
        target = _TARGETS.get(dtype_name)
        if target is None:
            return None
        return _Decoder(self.body, target).run(self.start, self.end)


def parse_predict_body(body: bytes) -> tuple[dict[str, Any], NumericArray | None]:
    """``parse_json_object(body)``, with a large numeric ``instances``/``inputs`` array (or one
    named input of ``inputs``) left as text: the document holds :data:`PLACEHOLDER` in its place."""
    found = _find(body) if len(body) >= MIN_BODY else None
    if found is not None:
        try:
            doc = parse_json_object(body[:found.start] + _PLACEHOLDER_JSON + body[found.end:])
        except Exception:  # noqa: BLE001 - the whole body's parse below reports its own error
            doc = None
        if found.placed(doc):
            return doc, found
    return parse_json_object(body), None


def _find(body: bytes) -> NumericArray | None:
    match = _KEY.search(body, 0, _PREFIX_SCAN)
    if match is None or not _top_level(body[:match.start()]):
        return None
    key, name = match.group(1).decode("ascii"), match.group(2)
    if name is not None:
        if key != "inputs" or name == b"b64":  # {"b64": ...} is base64 data, not an input
            return None
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError:
            return None
    start = match.end() - 1
    end = _numeric_run_end(body, start)
    end = body.rfind(b"]", start, end) + 1
    return NumericArray(body, key, name, start, end) if end > start else None


def _top_level(prefix: bytes) -> bool:
    """Whether text following ``prefix`` is a member name of the top-level object (outside strings)."""
    stack: list[int] = []
    in_string = escaped = False
    for ch in prefix:
        if in_string:
            if escaped:
                escaped = False
            elif ch == 0x5C:  # backslash
                escaped = True
            elif ch == 0x22:
                in_string = False
        elif ch == 0x22:
            in_string = True
        elif ch in b"[{":
            stack.append(ch)
        elif ch in b"]}" and stack:
            stack.pop()
    return not in_string and stack == [0x7B]


def _numeric_run_end(body: bytes, start: int) -> int:
    """The offset of the first byte at or after ``start`` that cannot belong to a numeric array."""
    offset, size = start, 1 << 16  # a first look that is cheap when the array holds no numbers
    while offset < len(body):
        classes = _CLASS[np.frombuffer(body, np.uint8, min(size, len(body) - offset), offset)]
        other = classes == 0
        first = int(other.argmax())
        if other[first]:
            return offset + first
        offset, size = offset + classes.size, CHUNK
    return len(body)


class _Decoder:
    """One pass over the array's text in chunks that end at a comma, carrying state across them."""

    def __init__(self, body: bytes, target: _Target) -> None:
        self.body = body
        self.target = target
        self.last_token = _START
        self.depth = 0
        self.rank = 0
        self.values: list[np.ndarray] = []
        self.closes: list[np.ndarray] = []   # per leaf: how many lists close right after it
        self.biggest = 0.0
        self.has_int = False

    def run(self, start: int, end: int) -> np.ndarray | None:
        pos = start
        while pos < end:
            cut = end
            if end - pos > CHUNK:
                cut = self.body.rfind(b",", pos, pos + CHUNK) + 1
                if cut <= pos:
                    return None
            if not self._chunk(pos, cut, final=cut == end):
                return None
            pos = cut
        if self.depth != 0 or not self.values:
            return None
        if self.has_int and not self.target.integer and self.biggest > self.target.exact_int:
            return None  # a possibly lossy integer: the normal path judges each value
        shape = self._shape(np.concatenate(self.closes))
        if shape is None:
            return None
        values = np.concatenate(self.values)
        self.values.clear()
        return values.reshape(shape)

    def _chunk(self, pos: int, cut: int, final: bool) -> bool:
        raw = np.frombuffer(self.body, np.uint8, cut - pos, pos)
        cls = _CLASS[raw]
        tokens = self._grammar(cls, raw)
        if tokens is None or not tokens.size:
            return False
        kinds = cls[tokens]
        kinds[kinds >= _DIGIT] = _NUM
        if not _FOLLOWS[np.concatenate(([self.last_token], kinds[:-1])), kinds].all():
            return False
        self.last_token = int(kinds[-1])
        depth = np.cumsum((kinds == _OPEN).astype(np.int32) - (kinds == _CLOSE), dtype=np.int32) + self.depth
        inner = depth[:-1] if final else depth
        if inner.size and inner.min() < 1:
            return False
        leaf_at = np.flatnonzero(kinds == _NUM)
        if not self.rank:
            if not leaf_at.size:
                return False
            self.rank = int(depth[leaf_at[0]])
            if self.rank > MAX_RANK:
                return False
        if leaf_at.size and (depth[leaf_at] != self.rank).any():
            return False
        self.depth = int(depth[-1])
        if leaf_at.size:
            closing = np.cumsum(kinds == _CLOSE, dtype=np.int32)
            following = np.append(leaf_at[1:], kinds.size - 1)
            self.closes.append((closing[following] - closing[leaf_at]).astype(np.uint8))
        return self._numbers(pos, cut, final, leaf_at.size)

    def _grammar(self, cls: np.ndarray, raw: np.ndarray) -> np.ndarray | None:
        """The token positions of one chunk, or None when a number breaks JSON's grammar."""
        digit = cls == _DIGIT
        numeric = cls >= _DIGIT
        before = np.concatenate(([_COMMA], cls[:-1]))   # the chunk starts after a comma or at "["
        after = np.concatenate((cls[1:], [_COMMA]))
        starts = numeric & (before < _DIGIT)
        ends = numeric & (after < _DIGIT)
        after_digit = after == _DIGIT
        bad = (starts & ~(digit | (cls == _MINUS))) | (ends & ~digit)
        bad |= (cls == _MINUS) & ~((starts | (before == _EXP)) & after_digit)
        bad |= (cls == _PLUS) & ~((before == _EXP) & after_digit)
        bad |= (cls == _DOT) & ~((before == _DIGIT) & after_digit)
        bad |= (cls == _EXP) & ~((before == _DIGIT) & (after_digit | (after == _PLUS) | (after == _MINUS)))
        starts_before = np.concatenate(([False], starts[:-1]))
        integer_start = starts | ((before == _MINUS) & starts_before)
        bad |= integer_start & (raw == ord("0")) & after_digit   # a leading zero
        if bad.any():
            return None
        start_at = np.flatnonzero(starts)
        dots = np.flatnonzero(cls == _DOT)
        exps = np.flatnonzero(cls == _EXP)
        dot_ids, exp_ids = np.searchsorted(start_at, dots), np.searchsorted(start_at, exps)  # number index + 1
        if self.target.integer:
            if dots.size or exps.size:
                return None  # a fraction or exponent for an integer input: the normal path's error
            digits = np.flatnonzero(ends) + 1 - start_at - (raw[start_at] == ord("-"))
            if digits.size and digits.max() > _INT_DIGITS:
                return None
        if (np.diff(dot_ids) == 0).any() or (np.diff(exp_ids) == 0).any():
            return None  # two dots or two exponents in one number
        if dots.size and exps.size:
            at = np.minimum(np.searchsorted(exp_ids, dot_ids), exp_ids.size - 1)
            if ((exp_ids[at] == dot_ids) & (exps[at] < dots)).any():
                return None  # a dot in the exponent
        if not self._all_decimal(start_at.size, dot_ids, exp_ids):
            self.has_int = True
        return np.flatnonzero(starts | ((cls >= _OPEN) & (cls <= _COMMA)))

    @staticmethod
    def _all_decimal(count: int, dot_ids: np.ndarray, exp_ids: np.ndarray) -> bool:
        if not count:
            return True
        decimal = np.zeros(count + 1, dtype=bool)
        decimal[dot_ids] = True
        decimal[exp_ids] = True
        return bool(decimal[1:].all())

    def _numbers(self, pos: int, cut: int, final: bool, count: int) -> bool:
        target = self.target
        text = self.body[pos:cut if final else cut - 1].translate(_BRACKETS_TO_SPACE)
        kind = np.int64 if target.integer else np.float64
        wide = np.fromstring(text, dtype=kind, sep=",") if count else np.empty(0, kind)
        del text
        if wide.size != count:
            return False
        if count:
            low, high = float(wide.min()), float(wide.max())
            if not (target.low <= low and high <= target.high and math.isfinite(low) and math.isfinite(high)):
                return False  # 1e999, past float32, past int32: the normal path answers these
            self.biggest = max(self.biggest, float(max(-low, high)))
        self.values.append(wide.astype(target.dtype, copy=False))
        return True

    def _shape(self, closes: np.ndarray) -> list[int] | None:
        """The rectangular shape whose closing brackets fall exactly where ``closes`` says, or None."""
        rank, count = self.rank, closes.size
        if int(closes[-1]) != rank:
            return None
        spans = [1]  # spans[c]: leaves in one list c levels above the numbers
        for level in range(1, rank + 1):
            first = int(np.argmax(closes >= level)) + 1
            if first % spans[-1]:
                return None
            spans.append(first)
        if spans[-1] != count:
            return None
        expected = np.zeros(count, dtype=np.uint8)
        for span in spans[1:]:
            expected[span - 1::span] += 1
        if not np.array_equal(closes, expected):
            return None
        return [spans[level] // spans[level - 1] for level in range(rank, 0, -1)]


def decode(doc: dict[str, Any], numeric: NumericArray, codecs: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    """``{input name: tensor}`` from ``numeric`` when the normal path would build that tensor from
    it, else None. A top-level array is the single input; a named one, that input of several."""
    if "instances" in doc and "inputs" in doc:
        return None
    if numeric.name is None:
        if len(codecs) != 1:
            return None
        (name, codec), = codecs.items()
    else:
        name, codec = numeric.name, codecs.get(numeric.name)
        if codec is None:
            return None
    tensor = numeric.tensor(codec.dtype.enum_name)
    return None if tensor is None else {name: tensor}
