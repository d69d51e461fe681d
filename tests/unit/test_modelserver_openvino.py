"""The OpenVINO runtime's compile settings: precision always explicit, refusals clear."""

from __future__ import annotations

import pytest

from modelserver.core.status import Code, ServingError
from modelserver.runtimes.base import LoadOptions
from modelserver.runtimes.openvino import compile_config

WITH_BF16 = ["WINOGRAD", "FP32", "BF16", "FP16", "INT8"]
WITHOUT_BF16 = ["WINOGRAD", "FP32", "FP16", "INT8"]


def test_default_is_f32_set_explicitly_with_the_throughput_hint() -> None:
    """Never OpenVINO's own default: on a CPU with bf16 it would silently run bf16."""
    assert compile_config(LoadOptions(), WITH_BF16) == {"INFERENCE_PRECISION_HINT": "f32",
                                                        "PERFORMANCE_HINT": "THROUGHPUT",
                                                        "ENABLE_CPU_PINNING": "False"}


def test_bf16_where_the_cpu_has_it_and_the_runtime_settings() -> None:
    options = LoadOptions(precision="bf16", runtime_options={"performance_hint": "latency", "streams": 2,
                                                             "threads": 4})
    assert compile_config(options, WITH_BF16) == {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY",
                                                  "ENABLE_CPU_PINNING": "False", "NUM_STREAMS": "2",
                                                  "INFERENCE_NUM_THREADS": "4"}


@pytest.mark.parametrize("options,code,message", [
    (LoadOptions(precision="bf16"), Code.FAILED_PRECONDITION,
     "precision bf16 needs a CPU with bf16 instructions (AVX512_BF16 or AMX); this CPU offers WINOGRAD, FP32, "
     "FP16, INT8: use precision f32"),
    (LoadOptions(precision="fp16"), Code.INVALID_ARGUMENT, "precision 'fp16' is not one of f32, bf16"),
    (LoadOptions(runtime_options={"performance_hint": "fast"}), Code.INVALID_ARGUMENT,
     "openvino.performance_hint 'fast' is not one of latency, throughput"),
    (LoadOptions(runtime_options={"streams": -1}), Code.INVALID_ARGUMENT,
     "openvino.streams must be a whole number >= 0, not -1"),
    (LoadOptions(runtime_options={"threads": True}), Code.INVALID_ARGUMENT,
     "openvino.threads must be a whole number >= 0, not True"),
])
def test_refused_settings(options: LoadOptions, code: Code, message: str) -> None:
    with pytest.raises(ServingError) as info:
        compile_config(options, WITHOUT_BF16)
    assert (info.value.code, info.value.message) == (code, message)
