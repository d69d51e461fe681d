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
    cost = RunCost()
    cost.observe_run(900, 30, waited=False)   # 900 us of wall clock, 30 computing: preempted once
    assert cost.mean == pytest.approx(30)
    cost = RunCost()
    cost.observe_run(900, 30, waited=True)    # waited for another thread (TF's pool, a lock)
    assert cost.mean == 900
    cost = RunCost()
    cost.observe_run(40, 500, waited=False)   # never more than the wall time
    assert cost.mean == 40


def test_runs_computed_here_cost_their_cpu_time_and_probes_bring_a_cheap_model_back() -> None:
    """A slow spell (GIL waits, a busy core) no longer keeps a cheap model off the event loop."""
    cost = RunCost()
    for _ in range(inline.MIN_SAMPLES):       # first runs in TF's pool, measured slow on a busy core
        assert not cost.computes_here()
        cost.observe_run(inline.INLINE_MAX_MICROS * 5, 20, waited=True)
    assert not cost.cheap()
    probes = 0
    for _ in range(inline.PROBE_EVERY * 40):
        if cost.cheap():
            break
        here = cost.computes_here()
        probes += here
        cost.observe_run(inline.INLINE_MAX_MICROS * 5, 20, waited=True)   # pool runs stay slow
    assert cost.cheap() and probes >= 1
    for _ in range(50):                       # inline: a GIL wait after the run costs no CPU
        assert cost.computes_here()
        cost.observe_run(5000, 25, waited=True)
    assert cost.cheap()


def test_a_lone_spike_computed_here_leaves_a_cheap_model_inline() -> None:
    cost = RunCost()
    for micros in [30] * inline.MIN_SAMPLES + [8000] + [30] * 5 + [8000] + [30]:
        cost.computes_here()
        cost.observe_run(micros, micros, waited=False)
        assert cost.samples < inline.MIN_SAMPLES or cost.cheap()
    for _ in range(10):                       # a model that turned heavy leaves within a few runs
        cost.computes_here()
        cost.observe_run(8000, 8000, waited=False)
    assert not cost.cheap()


def test_a_heavy_model_measures_heavy_in_its_probes() -> None:
    cost = RunCost()
    for _ in range(inline.PROBE_EVERY * 10):
        cost.computes_here()
        cost.observe_run(20000, 15000, waited=True)
    assert not cost.cheap()
    assert sum(cost.computes_here() for _ in range(inline.PROBE_EVERY * 4)) == 4   # one run in 16 probes
