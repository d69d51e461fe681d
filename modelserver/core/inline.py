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

What a run costs, for a runtime that can compute a run in its calling thread (TensorFlow with
``inter_op_thread_pool = -1``, :meth:`RunCost.computes_here`), is that thread's CPU time: waiting
for the GIL after TF gave it back, or the kernel handing the core to Envoy meanwhile, costs no
CPU. Wall time used to be counted whenever the thread waited at all, and on a busy 2-core node
(Envoy doing TLS next to it) a GIL wait of a few milliseconds now and then pushed half_plus_two
off the event loop; in the pool every run waits for TF's inter-op threads and the GIL, so it
measured slow there too and stayed: 10-40% of requests took the pool path (under 2% now), and the
model server spent 288 instead of 171 us per request behind the TLS edge (bench/README.md), which
is mostly this. So once a version's
first runs are known, only runs computed in the calling thread are measured, and a version in
the pool has every :data:`PROBE_EVERY`-th run computed in its (pool) thread to measure it: a slow
spell no longer keeps a cheap model off the loop, and a heavy one measures heavy in any thread.
(TF's intra-op workers can still share an op of a run computed here: its thread's CPU time then
counts its own share, which matters only for graphs that cost a few hundred microseconds.)
"""

from __future__ import annotations

import threading
from typing import Any

INLINE_MAX_MICROS = 200.0
INLINE_MAX_BODY = 16 * 1024
MIN_SAMPLES = 8
PROBE_EVERY = 16  # a version in the pool computes one run in 16 in its calling thread, to measure it
_WEIGHT = 0.1  # of the newest run in the mean; a run 10x over the limit alone pushes it over
# What one run computed in its calling thread counts at most: it takes about six runs over the
# limit in a row to move a cheap model to the pool, not one. Under load a run of half_plus_two
# (30 us) now and then costs 1-10 ms of its thread's CPU (1 run in 30-50 behind Envoy with TLS
# on 2 busy cores); each such run alone used to send the next ~150 requests to the pool.
SPIKE_MICROS = 2 * INLINE_MAX_MICROS


class RunCost:
    """A version's recent run time: the exponentially weighted mean of its runs, in microseconds."""

    __slots__ = ("mean", "samples", "runs", "probing", "_here")

    def __init__(self) -> None:
        self.mean = 0.0
        self.samples = 0
        self.runs = 0
        self.probing = False              # the runtime computes runs here (computes_here)
        self._here = threading.local()    # whether this thread's current run computes here

    def computes_here(self) -> bool:
        """Asked by a runtime that can compute a run in the calling thread: whether this run
        should (a cheap version; every PROBE_EVERY-th run of one that is not)."""
        self.probing = True
        self.runs += 1
        here = self.cheap() or (self.samples >= MIN_SAMPLES and self.runs % PROBE_EVERY == 0)
        self._here.value = here
        return here

    def observe_run(self, wall_micros: float, cpu_micros: float, waited: bool) -> None:
        """Count one run: ``waited`` when its thread gave up the CPU voluntarily meanwhile.

        A run computed here costs its CPU time. Other runs (the first ones, and every run of a
        runtime that never computes here) cost their CPU time when their thread never waited:
        the kernel preempting a 20 us run for Envoy's time slice is not the model's cost; one
        that waited (TF's pools, a lock) keeps its wall time, so a heavy model is never
        under-counted.
        """
        here, self._here.value = getattr(self._here, "value", False), False
        if here:
            self.observe(min(cpu_micros, SPIKE_MICROS))
        elif not (self.probing and self.samples >= MIN_SAMPLES):   # the probes measure it now
            self.observe(wall_micros if waited else min(wall_micros, cpu_micros))

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
