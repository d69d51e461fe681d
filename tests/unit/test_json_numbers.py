"""The large-numeric-array decoder gives exactly the normal path's tensor, or declines.

Each body is decoded twice: by the normal path (orjson, json_tensor) and through
``json_numbers`` with its size threshold lowered and its chunks made tiny, so chunk boundaries
fall everywhere. Both must give the same tensor (dtype, shape, bits) or the same error.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from modelserver import json_numbers
from modelserver import json_predict as jp
from modelserver.json_tensor import make_codec
from modelserver.json_text import parse_json_object
from modelserver.core.status import ServingError


@pytest.fixture(autouse=True)
def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_numbers, "MIN_BODY", 0)
    monkeypatch.setattr(json_numbers, "CHUNK", 40)


def outcome(decode) -> tuple:
    try:
        fmt, tensors = decode()
    except ServingError as exc:
        return ("error", exc.code, exc.message)
    return ("ok", fmt, {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in tensors.items()})


def both(body: bytes, dtype: str = "DT_FLOAT", names: tuple[str, ...] = ("x",)) -> tuple[tuple, tuple, bool]:
    codecs = {name: make_codec(dtype) for name in names}
    old = outcome(lambda: jp.decode_predict(parse_json_object(body), codecs))
    used = []

    def new():
        doc, numeric = json_numbers.parse_predict_body(body)
        if numeric is not None:
            used.append(json_numbers.decode(doc, numeric, codecs) is not None)
        return jp.decode_predict(doc, codecs, numeric)
    return old, outcome(new), bool(used and used[0])


@pytest.mark.parametrize("body", [
    b'{"instances": [1.0, 2.5, -3e2, 0.125, 1E-3, -0.0]}',
    b'{"instances": [[1.0, 2.0], [3.0, 4.0], [5.5, 6.5]]}',
    b'{"instances":[[[1.5],[2.5]],[[3.5],[4.5]]],"signature_name":"serving_default"}',
    b'{"signature_name": "", "inputs": [[1.0, 2.0, 3.0]]}',
    b' {"inputs" : [ 1.0 ,\n 2.0\t, 3.0 ] } ',
    b'{"instances": [1.0, 2, 3.0]}',
    b'{"instances": [0.1, 0.2, 0.30000000000000004, 1.7976931348623157e308]}',
    b'{"instances": [3.4028234663852886e38, 1e-400, 123.456e-7]}',
])
def test_valid_arrays_take_the_fast_path_with_the_same_tensor(body: bytes) -> None:
    for dtype in ("DT_FLOAT", "DT_DOUBLE"):
        old, new, used = both(body, dtype)
        assert new == old
        if dtype == "DT_DOUBLE" or b"e308" not in body:
            assert used, body


@pytest.mark.parametrize("body", [
    b'{"instances": [1.0, 1e999]}',                  # out of double range
    b'{"instances": [1.0, 3.5e38]}',                 # past float32
    b'{"instances": [16777217, 1.0]}',               # an integer the normal path judges for precision
    b'{"instances": [[1.0, 2.0], [3.0]]}',           # ragged
    b'{"instances": [[1.0, 2.0], 3.0]}',
    b'{"instances": [1.0, [2.0]]}',
    b'{"instances": [[], []]}',
    b'{"instances": []}',
    b'{"instances": [1.0, 2.0], "inputs": [1.0]}',
    b'{"instances": [1.0, 2.0], "instances": [3.0]}',
    b'{"instances": [3.0], "instances": [1.0, 2.0]}',
    b'{"a": {"instances": [1.0, 2.0]}, "instances": [5.0]}',
    b'{"a": "\\"instances\\": [1.0]", "instances": [5.0]}',
    b'{"instances": [1.0, 2.0]',
    b'{"instances": [1.0, 2.0]} trailing',
    b'{"instances": [1.0, 2.0], "signature_name": 5}',
    b'{"instances": [NaN, 1.0]}',
    b'{"instances": [1.0, Infinity]}',
])
def test_what_the_fast_path_declines_gives_the_normal_paths_answer(body: bytes) -> None:
    for dtype in ("DT_FLOAT", "DT_DOUBLE"):
        old, new, used = both(body, dtype)
        assert new == old
        assert not used or old[0] == "ok"
    assert not both(b'{"instances": [1.0, 1e999]}', "DT_DOUBLE")[2]


@pytest.mark.parametrize("bad", [
    "01", "-01", "1.", ".5", "+1", "1e", "1e+", "1.e5", "--1", "1-", "1.2.3", "1e5e3", "1e5.3", "-", "1 2",
    "1,,2", ",1", "1,", "[1]]", "[[1]", "0x10", "1e05.0",
])
def test_malformed_numbers_are_never_accepted(bad: str) -> None:
    body = ('{"instances": [1.0, ' + bad + ', 2.0]}').encode()
    old, new, used = both(body)
    assert new == old
    assert not used
    assert old[0] == "error"


def test_random_shapes_and_values_match() -> None:
    rng = random.Random(14)
    for _ in range(60):
        shape = [rng.randint(1, 4) for _ in range(rng.randint(1, 4))]
        values = np.array([rng.choice([rng.uniform(-1e6, 1e6), rng.random() * 10 ** rng.randint(-40, 38),
                                       float(rng.randint(-9, 9))]) for _ in range(int(np.prod(shape)))])
        nested = values.reshape(shape).tolist()
        text = json.dumps({"instances": nested}, separators=(rng.choice([",", ", "]), ":"))
        for dtype in ("DT_FLOAT", "DT_DOUBLE"):
            old, new, used = both(text.encode(), dtype)
            assert new == old and used


@pytest.mark.parametrize("body,dtypes,fast", [
    (b'{"instances": [[1, -2, 3], [0, 2147483647, -2147483648]]}', ("DT_INT32", "DT_INT64"), True),
    (b'{"inputs": [999999999999999999, -999999999999999999, -0]}', ("DT_INT64",), True),
    (b'{"instances": [1, 2147483648]}', ("DT_INT32",), False),          # past int32: the normal path's error
    (b'{"instances": [1, 2.0]}', ("DT_INT32", "DT_INT64"), False),     # a fraction for an integer input
    (b'{"instances": [1, 2e3]}', ("DT_INT64",), False),
    (b'{"instances": [1, 9223372036854775807]}', ("DT_INT64",), False),  # 19 digits: judged by the normal path
    (b'{"instances": [1, 99999999999999999999]}', ("DT_INT64",), False),
    (b'{"instances": [1, -9223372036854775809]}', ("DT_INT64",), False),
    (b'{"instances": [1, 2, 3]}', ("DT_UINT8", "DT_INT16", "DT_UINT64", "DT_BOOL", "DT_STRING"), False),
])
def test_integer_inputs(body: bytes, dtypes: tuple[str, ...], fast: bool) -> None:
    for dtype in dtypes:
        old, new, used = both(body, dtype)
        assert new == old and used == fast, dtype


@pytest.mark.parametrize("body,names,fast", [
    (b'{"inputs": {"x": [[1.0, 2.0], [3.0, 4.0]]}}', ("x",), True),
    (b'{"inputs": {"a": [1.0, 2.0], "b": [3, 4]}, "signature_name": ""}', ("a", "b"), True),
    (b'{"inputs" : { "b" : [1.0, 2.0] , "a": [[5.5]]}}', ("a", "b"), True),
    (b'{"inputs": {"a": [1.0, 2.0]}}', ("a", "b"), True),           # b is missing: the normal path's error
    (b'{"inputs": {"y": [1.0]}}', ("x",), False),
    (b'{"inputs": {"b64": [1.0]}}', ("b64",), False),
    (b'{"instances": {"x": [1.0]}}', ("x",), False),
    (b'{"inputs": {"x": [1.0, 2.0], "x": [3.0]}}', ("x",), True),   # the first of a repeated key counts (rapidjson): the array
    (b'{"inputs": {"\\u0078": [1.0]}}', ("x",), False),
    (b'{"inputs": {"x": [1.0]}, "instances": [1.0]}', ("x",), False),
])
def test_named_columnar_inputs(body: bytes, names: tuple[str, ...], fast: bool) -> None:
    old, new, used = both(body, "DT_FLOAT", names)
    assert new == old and used == fast


def test_several_inputs_take_the_normal_path() -> None:
    old, new, used = both(b'{"inputs": [1.0, 2.0]}', names=("a", "b"))
    assert new == old and not used and old[0] == "error"


@pytest.mark.parametrize("shape", [(7,), (9, 3), (2, 40), (10, 2, 2), (1, 50), (0,), (6, 0)])
def test_large_answers_written_in_pieces_are_the_same_text(monkeypatch: pytest.MonkeyPatch, shape) -> None:
    arr = np.random.default_rng(14).standard_normal(shape).astype(np.float32)
    whole = {fmt: jp.encode_predict_response({"y": arr}, fmt) for fmt in (jp.ROW, jp.COLUMNAR)}
    monkeypatch.setattr(jp, "PIECE_VALUES", 4)
    assert {fmt: jp.encode_predict_response({"y": arr}, fmt) for fmt in (jp.ROW, jp.COLUMNAR)} == whole
