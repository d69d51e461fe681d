"""Server-side batching (``--enable_batching``): TF Serving's BatchingSession, around ``LoadedModel.run``.

Concurrent ``run`` calls on one signature of one model version wait in that signature's queue
and are executed as one runtime call: inputs are concatenated along dimension 0, outputs are
split back so each caller gets exactly its own rows. Because the wrapper *is* a
:class:`LoadedModel`, the REST and gRPC paths get batching without knowing about it.

Scheduling follows TF's ``SharedBatchScheduler``: one pool of ``num_batch_threads`` workers for
every queue of the server; a queue holds up to ``max_enqueued_batches`` batches of at most
``max_batch_size`` rows; the open batch is processed when it is full, when a newer batch exists,
or when it is ``batch_timeout_micros`` old (0: as soon as a worker is free, so batches grow only
while every worker is busy). A full queue answers UNAVAILABLE with TF's message.

Where TF fails a request, we prefer to answer it correctly: a call that cannot be merged (a rank-0
input, inputs with different dim-0 sizes, more rows than ``max_batch_size``) runs alone; calls
whose other dims or dtypes differ run in separate groups of the same batch; a signature whose
outputs cannot be split along dim 0 stops being batched. With ``allowed_batch_sizes`` a merged
batch is padded up to the next allowed size by repeating its first row, and the padding is cut
from the outputs. ``pad_variable_length_inputs`` is accepted but not implemented (such calls
simply run in separate groups).

With ``--model_settings_file`` a model may have its own scheduler (its own threads and
parameters). Its batching can change while it serves: :meth:`BatchingModel.detach` closes the
old queues (what they hold is still run, a call arriving after runs unbatched) while the
model's versions already go through the new scheduler, and :meth:`BatchScheduler.stop` ends the
old scheduler's threads once its last queue is gone.
"""

from __future__ import annotations

import bisect
import collections
import logging
import threading
import time
from typing import Any, Mapping

import numpy as np

from modelserver import monitoring
from modelserver.config_protos import BatchingSettings
from modelserver.core.status import Code, ServingError
from modelserver.runtimes.base import LoadedModel, Signature

log = logging.getLogger(__name__)

QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"
DRAIN_SECONDS = 30.0


class _Task:
    """One caller's ``run``: its inputs, its row count, and where its answer goes."""

    __slots__ = ("inputs", "size", "enqueued", "done", "result", "error")

    def __init__(self, inputs: Mapping[str, np.ndarray], size: int) -> None:
        self.inputs = inputs
        self.size = size
        self.enqueued = time.perf_counter()
        self.done = threading.Event()
        self.result: dict[str, np.ndarray] | None = None
        self.error: ServingError | None = None

    def finish(self, result: dict[str, np.ndarray] | None = None, error: ServingError | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class _Batch:
    __slots__ = ("tasks", "size", "opened")

    def __init__(self) -> None:
        self.tasks: list[_Task] = []
        self.size = 0
        self.opened = time.perf_counter()


class _Queue:
    """The batches waiting for one signature of one loaded model version."""

    def __init__(self, model: LoadedModel, signature: Signature) -> None:
        self.model = model
        self.signature = signature
        self.input_names = tuple(signature.inputs)
        self.batches: collections.deque[_Batch] = collections.deque()
        self.in_flight = 0
        self.closed = False
        self.splittable = True


def _rows(inputs: Mapping[str, np.ndarray], names: tuple[str, ...]) -> int:
    """The common dim-0 size of the inputs, or 0 when this call cannot be merged with others."""
    if len(inputs) != len(names):
        return 0
    size = -1
    for name in names:
        value = inputs.get(name)
        if value is None or not isinstance(value, np.ndarray) or value.ndim == 0:
            return 0
        if size < 0:
            size = value.shape[0]
        elif value.shape[0] != size:
            return 0
    return max(size, 0)


def _merge_key(task: _Task, names: tuple[str, ...]) -> tuple:
    return tuple((task.inputs[n].dtype.str, task.inputs[n].shape[1:]) for n in names)


class BatchScheduler:
    """One pool of batch threads shared by every batching queue of the server (or of one model)."""

    def __init__(self, settings: BatchingSettings, model_name: str | None = None) -> None:
        self.settings = settings
        self.model_name = model_name       # a model's own scheduler: its metrics may be muted
        self._stopped = False
        self.max_batch_size = settings.max_batch_size
        self.timeout = settings.batch_timeout_micros / 1_000_000
        self._allowed = settings.allowed_batch_sizes
        self._queues: list[_Queue] = []
        self._next = 0
        self._cond = threading.Condition()
        self._queuing_latency = monitoring.QUEUING_LATENCY.cell(settings.thread_pool_name)
        self._threads = [threading.Thread(target=self._work, name=f"{settings.thread_pool_name}-{i}", daemon=True)
                         for i in range(settings.threads)]
        for thread in self._threads:
            thread.start()
        if settings.pad_variable_length_inputs:
            log.warning("pad_variable_length_inputs is not implemented: calls with different shapes run in "
                        "separate batches")
        log.info("Batching: %d thread(s) '%s', max_batch_size %d, batch_timeout_micros %d, max_enqueued_batches %d",
                 len(self._threads), settings.thread_pool_name, settings.max_batch_size,
                 settings.batch_timeout_micros, settings.max_enqueued_batches)

    def wrap(self, model: LoadedModel) -> LoadedModel:
        """``model`` with batching on every signature that has outputs."""
        return BatchingModel(model, self)

    # ---------------------------------------------------------------- queues

    def _add_queue(self, queue: _Queue) -> None:
        with self._cond:
            self._queues.append(queue)

    def _close_queue(self, queue: _Queue) -> None:
        """Stop accepting calls, then wait (bounded) until the queued ones have been answered."""
        deadline = time.monotonic() + DRAIN_SECONDS
        with self._cond:
            queue.closed = True
            self._cond.notify_all()
            while (queue.batches or queue.in_flight) and time.monotonic() < deadline:
                self._cond.wait(0.1)
            if queue in self._queues:
                self._queues.remove(queue)
                self._cond.notify_all()

    def stop(self) -> None:
        """No new queues come: the threads end once the queues they serve are closed and drained."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def submit(self, queue: _Queue, inputs: Mapping[str, np.ndarray], rows: int) -> _Task | None:
        """Enqueue one call; None when the queue is closed (the caller then runs it directly)."""
        task = _Task(inputs, rows)
        with self._cond:
            if queue.closed:
                return None
            batches = queue.batches
            if not batches or batches[-1].size + rows > self.max_batch_size:
                if len(batches) >= self.settings.max_enqueued_batches:
                    raise ServingError(Code.UNAVAILABLE, QUEUE_FULL)
                batches.append(_Batch())
            batch = batches[-1]
            batch.tasks.append(task)
            batch.size += rows
            self._cond.notify()
        return task

    # ---------------------------------------------------------------- workers

    def _ready(self) -> tuple[_Queue | None, _Batch | None, float | None]:
        """The next batch to process, round-robin over queues; else how long until one is due."""
        now = time.perf_counter()
        wait: float | None = None
        count = len(self._queues)
        for i in range(count):
            queue = self._queues[(self._next + i) % count]
            if not queue.batches:
                continue
            batch = queue.batches[0]
            age = now - batch.opened
            if (len(queue.batches) > 1 or batch.size >= self.max_batch_size or age >= self.timeout
                    or queue.closed):
                queue.batches.popleft()
                queue.in_flight += 1
                self._next = (self._next + i + 1) % count
                return queue, batch, None
            remaining = self.timeout - age
            wait = remaining if wait is None else min(wait, remaining)
        return None, None, wait

    def _work(self) -> None:
        while True:
            with self._cond:
                queue, batch, wait = self._ready()
                while batch is None:
                    if self._stopped and not self._queues:
                        return
                    self._cond.wait(wait)
                    queue, batch, wait = self._ready()
            try:
                self._process(queue, batch)
            except Exception:  # noqa: BLE001 - a worker never dies; its callers still get an answer
                log.exception("batch processing failed")
                for task in batch.tasks:
                    if not task.done.is_set():
                        task.finish(error=ServingError(Code.INTERNAL, "batch processing failed"))
            finally:
                with self._cond:
                    queue.in_flight -= 1
                    self._cond.notify_all()

    def _process(self, queue: _Queue, batch: _Batch) -> None:
        now = time.perf_counter()
        if monitoring.recording(self.model_name):
            for task in batch.tasks:
                self._queuing_latency.add(int((now - task.enqueued) * 1_000_000))
        groups: dict[tuple, list[_Task]] = {}
        for task in batch.tasks:
            groups.setdefault(_merge_key(task, queue.input_names), []).append(task)
        for tasks in groups.values():
            if queue.splittable:
                self._run_merged(queue, tasks)
            else:
                for task in tasks:
                    self._run_alone(queue, task)

    def _execute(self, queue: _Queue, inputs: Mapping[str, np.ndarray], rows: int, padded: int) -> dict:
        if monitoring.recording(self.model_name):
            monitoring.WRAPPED_RUN_COUNT.increment()
            monitoring.INPUT_BATCH_SIZE.observe(value=rows)
            monitoring.PROCESSED_BATCH_SIZE.observe(value=padded)
            if padded > rows:
                monitoring.PADDING_SIZE.observe(str(padded), value=padded - rows)
        return queue.model.run(queue.signature.name, inputs)

    def _run_alone(self, queue: _Queue, task: _Task) -> None:
        try:
            task.finish(self._execute(queue, task.inputs, task.size, task.size))
        except ServingError as err:
            task.finish(error=err)

    def _padded_size(self, rows: int) -> int:
        if not self._allowed:
            return rows
        index = bisect.bisect_left(self._allowed, rows)
        return self._allowed[index] if index < len(self._allowed) else rows

    def _run_merged(self, queue: _Queue, tasks: list[_Task]) -> None:
        rows = sum(task.size for task in tasks)
        padded = self._padded_size(rows)
        merged = {}
        for name in queue.input_names:
            parts = [task.inputs[name] for task in tasks]
            if padded > rows:
                parts.append(np.repeat(parts[0][:1], padded - rows, axis=0))
            merged[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        try:
            outputs = self._execute(queue, merged, rows, padded)
        except ServingError as err:
            for task in tasks:
                task.finish(error=err)
            return
        if len(tasks) == 1 and padded == rows:
            tasks[0].finish(outputs)  # nothing was merged: whatever the outputs are, they are this call's
            return
        if any(not isinstance(v, np.ndarray) or v.ndim == 0 or v.shape[0] != padded for v in outputs.values()):
            log.warning("model %s signature %s: outputs cannot be split along dimension 0; not batching it any more",
                        queue.model.path, queue.signature.name)
            queue.splittable = False
            for task in tasks:
                self._run_alone(queue, task)
            return
        offset = 0
        for task in tasks:
            end = offset + task.size
            task.finish({alias: value[offset:end] for alias, value in outputs.items()})
            offset = end


class BatchingModel(LoadedModel):
    """A loaded model whose ``run`` goes through the scheduler's per-signature queues."""

    waits_for_batch = True

    def __init__(self, inner: LoadedModel, scheduler: BatchScheduler) -> None:
        super().__init__(inner.path, inner.signatures)
        self.inner = inner
        self.scheduler = scheduler
        self._queues = {name: _Queue(inner, sig) for name, sig in inner.signatures.items() if sig.outputs}
        for queue in self._queues.values():
            scheduler._add_queue(queue)

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        queue = self._queues.get(signature_name)
        if queue is not None and queue.splittable:
            rows = _rows(inputs, queue.input_names)
            if 0 < rows <= self.scheduler.max_batch_size:
                task = self.scheduler.submit(queue, inputs, rows)
                if task is not None:
                    task.done.wait()
                    if task.error is not None:
                        raise task.error
                    return task.result
        return self.inner.run(signature_name, inputs)

    def _run(self, signature: Signature, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.inner._run(signature, inputs)

    def signature_def_map(self) -> Any:
        return self.inner.signature_def_map()

    def detach(self) -> None:
        """Stop batching: what is queued still runs; later calls run unbatched on ``inner``."""
        for queue in self._queues.values():
            self.scheduler._close_queue(queue)

    def close(self) -> None:
        self.detach()
        self.inner.close()
