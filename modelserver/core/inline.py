"""Where a request's inference runs: on the event loop for tiny models, in the runtime pool otherwise.

Why: for a model like ``half_plus_two`` one TensorFlow run costs 10-30 us, while handing the
request to a pool thread and back (executor submit, two futures, ``call_soon_threadsafe``, two
context switches and GIL hand-offs) costs more than the model itself; under load the pool
threads and the loop also fight over the GIL, which stretched p99 at concurrency 64 from ~20 ms
to 100-250 ms on the 2-core benchmark machine (bench/README.md). So a request runs inline when
all of these hold:

* its version's recent runs took under ``INLINE_MAX_MICROS`` on average (an exponentially
  weighted mean kept by :class:`RunCost`; a version's first ``MIN_SAMPLES`` runs always go to
  the pool, which is how its cost becomes known, and one slow run moves the mean at once);
* its body is at most ``INLINE_MAX_BODY`` bytes (the decode work is bounded too);
* the model never waits for other requests (server-side batching blocks until a batch fills:
  such a model always runs in the pool, where waiting is harmless).

Everything else (errors, metrics, timeouts) is the same on both paths: only the thread differs.
"""

from __future__ import annotations

from typing import Any

INLINE_MAX_MICROS = 200.0
INLINE_MAX_BODY = 16 * 1024
MIN_SAMPLES = 8
_WEIGHT = 0.1  # of the newest run in the mean; a run 10x over the limit alone pushes it over


class RunCost:
    """A version's recent run time: the exponentially weighted mean of its runs, in microseconds."""

    __slots__ = ("mean", "samples")

    def __init__(self) -> None:
        self.mean = 0.0
        self.samples = 0

    def observe(self, micros: float) -> None:
        self.samples += 1
        self.mean = micros if self.samples == 1 else self.mean + _WEIGHT * (micros - self.mean)

    def cheap(self) -> bool:
        return self.samples >= MIN_SAMPLES and self.mean < INLINE_MAX_MICROS


def runs_inline(model: Any, body_size: int) -> bool:
    """Whether a request of ``body_size`` bytes for loaded ``model`` should run on the event loop."""
    if body_size > INLINE_MAX_BODY or getattr(model, "waits_for_batch", False):
        return False
    cost = getattr(model, "run_cost", None)
    return cost is not None and cost.cheap()
