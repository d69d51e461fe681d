"""Which requests run on the event loop (modelserver/core/inline.py): decisions, not timings."""

from __future__ import annotations

import pytest

from modelserver.core import inline
from modelserver.core.inline import RunCost, runs_inline


class _Model:
    def __init__(self, micros: float, runs: int, waits_for_batch: bool = False) -> None:
        self.run_cost = RunCost()
        self.waits_for_batch = waits_for_batch
        for _ in range(runs):
            self.run_cost.observe(micros)


def test_unknown_cost_runs_in_the_pool() -> None:
    assert not runs_inline(_Model(10, 0), 100)
    assert not runs_inline(_Model(10, inline.MIN_SAMPLES - 1), 100)
    assert not runs_inline(object(), 100)


def test_cheap_model_small_body_runs_inline() -> None:
    assert runs_inline(_Model(10, inline.MIN_SAMPLES), 100)


def test_big_body_or_slow_model_runs_in_the_pool() -> None:
    assert not runs_inline(_Model(10, 50), inline.INLINE_MAX_BODY + 1)
    assert not runs_inline(_Model(inline.INLINE_MAX_MICROS * 2, 50), 100)


def test_one_slow_run_moves_a_cheap_model_to_the_pool() -> None:
    model = _Model(10, 50)
    model.run_cost.observe(inline.INLINE_MAX_MICROS * 20)
    assert not runs_inline(model, 100)


def test_batching_models_never_run_inline() -> None:
    assert not runs_inline(_Model(10, 50, waits_for_batch=True), 100)


def test_batching_and_instrumented_models_say_whether_they_wait() -> None:
    from modelserver.batching import BatchingModel
    from modelserver.monitoring import InstrumentedModel
    from modelserver.runtimes.base import LoadedModel

    assert BatchingModel.waits_for_batch and not LoadedModel.waits_for_batch

    class Plain(LoadedModel):
        def _run(self, signature, inputs):  # noqa: ANN001, ANN202
            return {}

        def signature_def_map(self):  # noqa: ANN202
            return None

    assert not InstrumentedModel(Plain("/x", {}), "m", "tensorflow").waits_for_batch


def test_run_cost_is_cpu_time_only_for_runs_that_never_waited() -> None:
    """A preempted run that computed alone costs its CPU time; a run that waited keeps its wall time."""
    import resource

    from modelserver.monitoring import run_cost_micros

    def usage(cpu_s: float, voluntary: int, involuntary: int) -> resource.struct_rusage:
        fields = [0] * 16
        fields[0], fields[14], fields[15] = cpu_s, voluntary, involuntary  # ru_utime, ru_nvcsw, ru_nivcsw
        return resource.struct_rusage(fields)

    start = usage(1.0, 5, 7)
    # 900 us of wall clock, of which 30 us computing: preempted once, never waited
    assert run_cost_micros(900, start, usage(1.00003, 5, 8)) == pytest.approx(30)
    # waited for another thread (TF's pool, a lock): the wall clock is the cost
    assert run_cost_micros(900, start, usage(1.00003, 6, 8)) == 900
    assert run_cost_micros(40, start, usage(1.0005, 5, 7)) == 40   # never more than the wall time
