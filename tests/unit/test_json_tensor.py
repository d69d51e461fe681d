"""JSON <-> tensor conversion against TF Serving's json_tensor.cc messages and formats."""

from __future__ import annotations

import numpy as np
import pytest

from modelserver import json_predict as jp
from modelserver.json_tensor import make_codec
from modelserver.json_text import (format_decimals, format_float32, format_float64,
                                             json_value_to_string, parse_json_object, string_bytes)
from modelserver.core.status import Code, ServingError


def codecs(**dtypes: str) -> dict:
    return {name: make_codec(dtypes[name]) for name in sorted(dtypes)}


def decode(body: bytes | str, **dtypes: str):
    raw = body.encode() if isinstance(body, str) else body
    doc = parse_json_object(raw)
    jp.request_signature_name(doc)
    return jp.decode_predict(doc, codecs(**dtypes))


def error_of(body: bytes | str, **dtypes: str) -> ServingError:
    with pytest.raises(ServingError) as info:
        decode(body, **dtypes)
    return info.value


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize("body,message", [
    (b"", "JSON Parse error: The document is empty"),
    (b"xyz", "JSON Parse error: Invalid value. at offset: 0"),
    (b'{"a": 1,}', "JSON Parse error: Missing a name for object member. at offset: 8"),
    (b'{"a": [1 2]}', "JSON Parse error: Missing a comma or ']' after an array element. at offset: 9"),
    (b'{"a" 1}', "JSON Parse error: Missing a colon after a name of object member. at offset: 5"),
    (b"[1]", "JSON Value: [\n    1\n] Is not object"),
    # rapidjson 1.1.0: beyond a double (also what Python's 4,300-digit int limit used to turn into a 500)
    (b'{"a": [1e999]}', "JSON Parse error: Number too big to be stored in double. at offset: 7"),
    (b'{"a": -' + b"9" * 5000 + b"}", "JSON Parse error: Number too big to be stored in double. at offset: 6"),
    (b'{"a": [1.5, ' + b"2" * 400 + b"]}", "JSON Parse error: Number too big to be stored in double. at offset: 12"),
    (b'{"a": "\xff\\ud800x"}', "JSON Parse error: The surrogate pair in string is invalid. at offset: 8"),
    (b'{"a": "\\ud800\\u0041"}', "JSON Parse error: The surrogate pair in string is invalid. at offset: 7"),
    (b'\xef\xbb\xbf{"a": 1e999}', "JSON Parse error: Number too big to be stored in double. at offset: 9"),
    (b'{"a": [1 2], "b": "\\ud800"}', "JSON Parse error: Missing a comma or ']' after an array element. at offset: 9"),
])
def test_parse_errors(body: bytes, message: str) -> None:
    with pytest.raises(ServingError) as info:
        parse_json_object(body)
    assert info.value.message == message
    assert info.value.code == Code.INVALID_ARGUMENT
    assert info.value.http_status == 400


def test_parse_accepts_nan_infinity_and_ignores_trailing_bytes() -> None:
    doc = parse_json_object(b'{"inputs": [NaN, Infinity, -Infinity]} trailing')
    values = doc["inputs"]
    assert np.isnan(values[0]) and values[1] == float("inf") and values[2] == float("-inf")


def test_parse_keeps_rapidjson_strings_numbers_and_first_keys() -> None:
    """Strings keep the body's bytes (``string_bytes``), a surrogate pair and an escaped backslash
    stay what they are, big numbers inside a double parse, and the first of a repeated key wins."""
    doc = parse_json_object(b'{"s": ["\xff\xfe", "\\udc00", "\\ud83d\\ude00", "\\\\ud800"], "n": [1e308, '
                            + b"1" * 308 + b"]}")
    assert [string_bytes(s) for s in doc["s"]] == [b"\xff\xfe", b"\xed\xb0\x80", "\U0001f600".encode(), b"\\ud800"]
    assert doc["n"] == [1e308, int("1" * 308)]
    for body in (b'{"a": 1, "a": 2, "b": {"c": 3, "c": 4}}', b'{"a": 1, "b": {"c": 3, "c": 4}, "a": 2}'):
        assert parse_json_object(body) == {"a": 1, "b": {"c": 3}}
    assert parse_json_object(b'{"i": [{"x": 1, "x": 2}, {"x": 3}], "s": "a:b"}') == {"i": [{"x": 1}, {"x": 3}],
                                                                                      "s": "a:b"}
    assert parse_json_object(b'{"i": [[{"b64": "YQ==", "b64": "Yg=="}]]}') == {"i": [[{"b64": "YQ=="}]]}
    assert parse_json_object(b'{"i": [{"a": 1, "a": 2}, [1, 2, 3]]}') == {"i": [{"a": 1}, [1, 2, 3]]}
    assert parse_json_object(b'\xef\xbb\xbf {"a": 1}') == {"a": 1}   # a UTF-8 BOM is skipped
    assert parse_json_object(b'{"i": [[{"a": {}, "b": "a:b"}, []]], "e": []}') == {"i": [[{"a": {}, "b": "a:b"}, []]],
                                                                                  "e": []}


def test_pretty_value_text_matches_rapidjson() -> None:
    assert json_value_to_string({"a": [1, 2.5, "x"], "b": {}}) == \
        '{\n    "a": [\n        1,\n        2.5,\n        "x"\n    ],\n    "b": {}\n}'
    assert json_value_to_string(1e30) == "1e+30"
    assert json_value_to_string(0.1) == "0.1"
    assert json_value_to_string([1e21, 1e-7, 100.0]) == "[\n    1e21,\n    1e-7,\n    100.0\n]"


# ------------------------------------------------------------------ row format


def test_row_single_input() -> None:
    fmt, tensors = decode('{"instances": [1.0, 2.0, 5.0]}', x="DT_FLOAT")
    assert fmt == jp.ROW
    assert tensors["x"].dtype == np.float32 and tensors["x"].tolist() == [1.0, 2.0, 5.0]


def test_row_nested_instances_stack() -> None:
    _, tensors = decode('{"instances": [[[1, 2]], [[3, 4]]]}', x="DT_INT32")
    assert tensors["x"].shape == (2, 1, 2) and tensors["x"].dtype == np.int32


def test_row_multiple_inputs_objects() -> None:
    _, tensors = decode('{"instances": [{"a": 1.0, "b": [1, 2]}, {"a": 2.0, "b": [3, 4]}]}',
                        a="DT_FLOAT", b="DT_INT64")
    assert tensors["a"].tolist() == [1.0, 2.0]
    assert tensors["b"].shape == (2, 2) and tensors["b"].dtype == np.int64


def test_row_single_input_as_objects() -> None:
    _, tensors = decode('{"instances": [{"x": 1.0}, {"x": 2.0}]}', x="DT_FLOAT")
    assert tensors["x"].tolist() == [1.0, 2.0]


def test_row_b64_and_strings() -> None:
    _, tensors = decode('{"instances": [{"b64": "aGVsbG8="}, "world"]}', s="DT_STRING")
    assert tensors["s"].tolist() == [b"hello", b"world"]
    _, tensors = decode('{"instances": ["a", "b"]}', s="DT_STRING")
    assert tensors["s"].dtype == object and tensors["s"].tolist() == [b"a", b"b"]


ROW_ERRORS = [
    ('{"instances": [1.0], "inputs": [1.0]}', {"x": "DT_FLOAT"},
     'JSON Value: {\n    "instances": [\n        1.0\n    ],\n    "inputs": [\n        1.0\n    ]\n} Not formatted '
     "correctly expecting only one of 'inputs' or 'instances' keys to exist "),
    ('{"foo": 1}', {"x": "DT_FLOAT"}, "Missing 'inputs' or 'instances' key"),
    ('{"signature_name": 1, "instances": [1]}', {"x": "DT_FLOAT"},
     'JSON Value: {\n    "signature_name": 1,\n    "instances": [\n        1\n    ]\n} not formatted correctly. '
     "'signature_name' key must be a string value."),
    ('{"instances": 1}', {"x": "DT_FLOAT"},
     "JSON Value: {\n    \"instances\": 1\n} Excepting 'instances' to be an list/array"),
    ('{"instances": []}', {"x": "DT_FLOAT"}, "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array"),
    ('{"instances": [1.0]}', {"a": "DT_FLOAT", "b": "DT_FLOAT"},
     "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
     "tensorinfo_map"),
    ('{"instances": [{"a": 1.0}]}', {"a": "DT_FLOAT", "b": "DT_FLOAT"},
     "Failed to process element: 0 of 'instances' list. JSON object: {\n    \"a\": 1.0\n} keys must be equal to: a,b"),
    ('{"instances": [{"a": 1.0, "c": 2.0}]}', {"a": "DT_FLOAT"},
     "Failed to process element: 0 key: c of 'instances' list. Error: INVALID_ARGUMENT: JSON object: does not "
     "have named input: c"),
    ('{"instances": [{"x": 1.0}, [2.0]]}', {"x": "DT_FLOAT"}, "Expecting object but got list at item 1 of input list"),
    ('{"instances": [1.0, {"x": 2.0}]}', {"x": "DT_FLOAT"},
     "Expecting value/list but got object at item 1 of input list"),
    ('{"instances": [[1.0], [1.0, 2.0]]}', {"x": "DT_FLOAT"},
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 1 but got: 2"),
    ('{"instances": [[1.0, 2.0], [[1.0], [2.0]]]}', {"x": "DT_FLOAT"},
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting shape [2] but got: [2,1]"),
    ('{"instances": ["x"]}', {"x": "DT_FLOAT"},
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: \"x\" Type: String "
     "is not of expected type: float"),
    ('{"instances": [[1, 2], [3]]}', {"x": "DT_INT32"},
     "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 2 but got: 1"),
]


@pytest.mark.parametrize("body,dtypes,message", ROW_ERRORS)
def test_row_errors(body: str, dtypes: dict, message: str) -> None:
    err = error_of(body, **dtypes)
    assert err.message == message
    assert err.code == Code.INVALID_ARGUMENT


# ------------------------------------------------------------------ columnar format


def test_columnar_scalar_and_nested() -> None:
    fmt, tensors = decode('{"inputs": 3.5}', x="DT_DOUBLE")
    assert fmt == jp.COLUMNAR and tensors["x"].shape == () and tensors["x"].dtype == np.float64
    _, tensors = decode('{"inputs": [[1, 2], [3, 4]]}', x="DT_FLOAT")
    assert tensors["x"].shape == (2, 2)


def test_columnar_multiple_inputs_extra_keys_ignored() -> None:
    _, tensors = decode('{"inputs": {"a": [1.0], "b": [[1, 2]], "zzz": 1}}', a="DT_FLOAT", b="DT_INT32")
    assert set(tensors) == {"a", "b"} and tensors["b"].shape == (1, 2)


@pytest.mark.parametrize("body,dtypes,message", [
    ('{"inputs": {"a": [1.0]}}', {"a": "DT_FLOAT", "b": "DT_FLOAT"}, "Missing named input: b in 'inputs' object."),
    ('{"inputs": [1.0]}', {"a": "DT_FLOAT", "b": "DT_FLOAT"},
     "inputs is a plain value/list, but expecting an object as multiple input tensors required as per tensorinfo_map"),
    ('{"inputs": [[1, 2], [3]]}', {"x": "DT_INT32"},
     "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
    ('{"inputs": [[1, 2], 3]}', {"x": "DT_INT32"},
     "JSON Value: 3 found at incorrect level: 2 in the JSON DOM. Expected at level: 2"),
    ('{"inputs": [1, [2]]}', {"x": "DT_INT32"}, "Encountered list at unexpected level: 1 expected < 1"),
])
def test_columnar_errors(body: str, dtypes: dict, message: str) -> None:
    assert error_of(body, **dtypes).message == message


# ------------------------------------------------------------------ dtypes (§1.7)


@pytest.mark.parametrize("dtype,value,expected", [
    ("DT_FLOAT", "1", np.float32(1)),
    ("DT_FLOAT", "NaN", None),
    ("DT_DOUBLE", "1.5", 1.5),
    ("DT_INT32", "-7", -7),
    ("DT_INT8", "300", np.int8(44)),   # stored as int32 and cast, like TF Serving
    ("DT_INT64", str(2 ** 62), 2 ** 62),
    ("DT_UINT32", str(2 ** 32 - 1), 2 ** 32 - 1),
    ("DT_UINT64", str(2 ** 64 - 1), 2 ** 64 - 1),
    ("DT_BOOL", "true", True),
])
def test_dtype_accepts(dtype: str, value: str, expected) -> None:
    for body in (f'{{"inputs": [{value}]}}', f'{{"instances": [{value}, {value}]}}'):
        _, tensors = decode(body, x=dtype)
        got = tensors["x"].ravel()[0]
        assert got.dtype == make_codec(dtype).dtype.numpy
        if expected is None:
            assert np.isnan(got)
        else:
            assert got == expected


@pytest.mark.parametrize("dtype,value,message", [
    ("DT_INT32", "1.0", "JSON Value: 1.0 Type: Number is not of expected type: int32"),
    ("DT_INT32", "3000000000", "JSON Value: 3000000000 Type: Number is not of expected type: int32"),
    ("DT_INT32", "true", "JSON Value: true Type: True is not of expected type: int32"),
    ("DT_INT64", str(2 ** 63), f"JSON Value: {2 ** 63} Type: Number is not of expected type: int64"),
    ("DT_UINT32", "-1", "JSON Value: -1 Type: Number is not of expected type: uint32"),
    ("DT_BOOL", "1", "JSON Value: 1 Type: Number is not of expected type: bool"),
    ("DT_FLOAT", "\"a\"", "JSON Value: \"a\" Type: String is not of expected type: float"),
    ("DT_FLOAT", "null", "JSON Value: null Type: Null is not of expected type: float"),
    ("DT_FLOAT", "false", "JSON Value: false Type: False is not of expected type: float"),
    ("DT_FLOAT", "16777216", "Cannot convert JSON value: 16777216 to float without loss of precision."),
    ("DT_FLOAT", "1e39", "Cannot convert JSON value: 1e+39 to float without loss of precision."),
    ("DT_DOUBLE", str(2 ** 53), f"Cannot convert JSON value: {2 ** 53} to double without loss of precision."),
    ("DT_STRING", "1", "JSON Value: 1 Type: Number is not of expected type: string"),
    ("DT_STRING", '{"b64": "!!!"}', "Unable to base64 decode"),
    ("DT_STRING", '{"b64": "YQ==", "x": 1}',
     'JSON Value: {\n    "b64": "YQ==",\n    "x": 1\n} not formatted correctly for base64 data'),
    ("DT_FLOAT", '{"b64": "YQ=="}', 'JSON Value: {\n    "b64": "YQ=="\n} Type: Object is not of expected type: float'),
])
def test_dtype_rejects(dtype: str, value: str, message: str) -> None:
    err = error_of(f'{{"inputs": [{value}]}}', x=dtype)
    assert err.message == message and err.code == Code.INVALID_ARGUMENT
    if value.startswith("{") and not value.startswith('{"b64": "YQ=="}'):
        return  # a non-b64 object in 'instances' names inputs instead
    wrapped = error_of(f'{{"instances": [{value}]}}', x=dtype)
    assert wrapped.message == f"Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: {message}"


def test_unsupported_dtype_is_unimplemented() -> None:
    err = error_of('{"inputs": [1.0]}', x="DT_HALF")
    assert err.code == Code.UNIMPLEMENTED and err.http_status == 501
    assert err.message == "Conversion of JSON Value: 1.0 to type: half"


def test_fast_and_slow_paths_agree() -> None:
    body = '{"instances": [[1, 2.5], [3, 4]]}'
    _, fast = decode(body, x="DT_FLOAT")
    _, slow = decode('{"instances": [[1, 2.5], [3, {"b64": "x"}]]}'.replace(', {"b64": "x"}', ", 4"), x="DT_FLOAT")
    assert fast["x"].tolist() == slow["x"].tolist() == [[1.0, 2.5], [3.0, 4.0]]
    _, big = decode('{"inputs": [1e10, 3e38]}', x="DT_FLOAT")
    assert big["x"].dtype == np.float32


# ------------------------------------------------------------------ responses (§1.3)


@pytest.mark.parametrize("value,text", [
    (3.0, "3.0"), (3.5, "3.5"), (0.1, "0.1"), (9e6, "9e+06"), (3e-5, "3e-05"), (123456.0, "123456.0"),
    (1234567.0, "1234567.0"), (1.0 / 3.0, "0.333333343"), (float("nan"), "NaN"), (float("inf"), "Infinity"),
    (float("-inf"), "-Infinity"), (-2.0, "-2.0"),
])
def test_float32_formatting(value: float, text: str) -> None:
    assert format_float32(value) == text
    arr = np.full(20, value, dtype=np.float32)        # the vectorised path
    assert format_decimals(arr) == [text] * 20


@pytest.mark.parametrize("value,text", [(0.1, "0.1"), (1.0 / 3.0, "0.33333333333333331"), (2.0, "2.0"),
                                        (1e100, "1e+100")])
def test_float64_formatting(value: float, text: str) -> None:
    assert format_float64(value) == text
    assert format_decimals(np.full(20, value)) == [text] * 20


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_and_large_outputs_format_alike(dtype: type) -> None:
    """Outputs up to 64 values are formatted one by one, larger ones vectorised: same text."""
    rng = np.random.default_rng(7)
    edge = [0.0, -0.0, 2.5, 1e-45, 5e-324, 3.4028235e38, 3.402825e38, 1e300, np.inf, -np.inf, np.nan,
            0.1, 1.0 / 3.0, 123456789.0]
    with np.errstate(all="ignore"):
        values = np.concatenate([edge, rng.standard_normal(30) * 10.0 ** rng.integers(-40, 38, 30),
                                 np.frombuffer(rng.bytes(8 * 20), np.float64)]).astype(dtype)
    one = format_float64 if dtype is np.float64 else format_float32
    for chunk in np.array_split(values, 2):                        # 32 values each: the small path
        assert format_decimals(chunk) == format_decimals(np.tile(chunk, 3))[:chunk.size] \
            == [one(float(v)) for v in chunk]


def test_predict_response_bytes() -> None:
    y = np.array([2.5, 3.0, 4.5], dtype=np.float32)
    assert jp.encode_predict_response({"y": y}, jp.ROW) == b'{"predictions": [2.5, 3.0, 4.5]}'
    assert jp.encode_predict_response({"y": y}, jp.COLUMNAR) == b'{"outputs": [2.5, 3.0, 4.5]}'


def test_predict_response_shapes_and_types() -> None:
    out = {"a": np.array([[1, 2], [3, 4]], dtype=np.int64), "b_bytes": np.array([b"ab", b"c"], dtype=object),
           "c": np.array([True, False]), "d": np.array(["x", "y"], dtype=object)}
    assert jp.encode_predict_response(out, jp.ROW) == (
        b'{"predictions": [{"a": [1, 2], "b_bytes": {"b64": "YWI="}, "c": true, "d": "x"}, '
        b'{"a": [3, 4], "b_bytes": {"b64": "Yw=="}, "c": false, "d": "y"}]}')
    assert jp.encode_predict_response({"s": np.float32(2.0).reshape(())}, jp.COLUMNAR) == b'{"outputs": 2.0}'
    assert jp.encode_predict_response({"z": np.zeros((2, 0), np.float32)}, jp.COLUMNAR) == b'{"outputs": [[], []]}'


def test_row_response_errors() -> None:
    with pytest.raises(ServingError) as info:
        jp.encode_predict_response({"y": np.float32(1).reshape(())}, jp.ROW)
    assert info.value.message == "Tensor name: y has no shape information "
    with pytest.raises(ServingError) as info:
        jp.encode_predict_response({"a": np.zeros(2), "b": np.zeros(3)}, jp.ROW)
    assert info.value.message == "Tensor name: b has inconsistent batch size: 3 expecting: 2"
    with pytest.raises(ServingError) as info:
        jp.encode_predict_response({"a": np.zeros(2, np.complex64)}, jp.ROW)
    assert info.value.message == "Failed to write JSON value for tensor type: complex64"
