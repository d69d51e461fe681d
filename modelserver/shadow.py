"""Shadow traffic: copies of live requests run on a candidate version, off the client's path.

While a model's settings hold a ``shadow`` (:class:`ShadowSettings`), a sample of its requests
that name no version (REST and gRPC Predict) is handed here *after* the client's answer was
computed: the request's decoded inputs and the primary's outputs go into a bounded queue, and
the client's request goes on at once. Copies of models whose runs are cheap (inline.py: the
ones the server itself runs on its event loop) are worked through *on the event loop*, one step
per idle loop turn (:meth:`ShadowTap._tick`): no thread to wake, no GIL to hand over while a
client's request waits (session 10; before, a worker thread's wake-ups and GIL hand-offs cost
each copy ~270 us of server CPU for ~35 us of work). Other copies go to a worker thread, which
nothing on the request path wakes: it looks for copies every :data:`EMPTY_POLL` when it has none
(a wake-up handed it the GIL while the request still had its answer to write: bench/README.md,
issue 18, session 9). Either way each copy runs on the candidate and
once more on the primary (the "secondary", Diffy's trick: a model that answers differently
from run to run must not look like a regression; a model that proved bit for bit deterministic
gets its secondary on one copy in :data:`SECONDARY_EVERY` only), compares the three
answers (:mod:`modelserver.shadow_compare`) and adds them to the model's report. When the queue
is full the copy is dropped and counted: the shadow never makes a client wait.

Each step of a copy (the secondary's run, the candidate's, the comparison) waits until the server
has had no request for :data:`IDLE_GAP` (``monitoring.idle_seconds``), so copies use the idle
time between clients' requests and do not compete for the core or the GIL with them. On a
server with no idle time the queue fills and copies are dropped, counted: a shadow measures
nothing there rather than slowing the clients. The thread keeps the normal CPU priority on
purpose: a low one (the nice 19 it had) throttles only its Python parts -- the model runs on the
runtime's own threads anyway -- which are exactly where it holds the GIL, and a low-priority
thread preempted while holding the GIL (by Envoy, by other processes) stalls the event loop that
waits for it: the clients' tail. The comparison is numpy on whole tensors (the GIL is released
in the large operations); nothing in it loops over rows in Python.

The report (:meth:`ShadowTap.report`, ``GET /appliance/v1/shadow`` on the REST port, loopback
peers only) sums the comparisons per output tensor and keeps the :data:`EXAMPLES` most
different requests with their inputs. A changed shadow setting starts a new report; after the
shadow is stopped its last report stays readable until the model gets a new one.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import heapq
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import numpy as np

from modelserver import monitoring
from modelserver.core.status import ServingError
from modelserver.model_settings import ShadowSettings
from modelserver.shadow_compare import TensorDiff, compare, significant

if TYPE_CHECKING:
    from modelserver.manager import ModelManager, VersionState

log = logging.getLogger(__name__)

SHADOW_PATH = "/appliance/v1/shadow"
QUEUE_SIZE = 64          # copies waiting for the worker; more are dropped
# How often the worker looks for copies when it has none: the request path never wakes it (a
# wake-up there hands the GIL to the worker while the request still has its answer to write).
EMPTY_POLL = 0.02
EXAMPLES = 10            # most different requests kept per model
EXAMPLE_VALUES = 4096    # an input with more values is shown by its shape only
IDLE_GAP = 0.0005        # seconds without a request before a copy's next step runs
IDLE_POLL_MAX = 0.01     # the longest sleep between two looks while the server is busy
# A model whose secondary answered bit for bit as its primary this many copies in a row is taken
# as deterministic: its secondary then runs on one copy in SECONDARY_EVERY only (a copy costs one
# model run instead of two); the first secondary that differs makes it run on every copy again.
DETERMINISTIC_AFTER = 32
SECONDARY_EVERY = 16


@dataclass
class _Copy:
    name: str
    api: str
    primary: VersionState
    signature: str
    inputs: Mapping[str, np.ndarray]
    outputs: Mapping[str, np.ndarray]
    run: "_Run"


@dataclass
class _TensorTotals:
    rows: int = 0
    values: int = 0
    raw_values: int = 0
    noise_values: int = 0
    raw_rows: int = 0
    noise_rows: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    classifier_rows: int = 0
    top1_raw: int = 0
    top1_noise: int = 0
    topk_raw: float = 0.0
    topk_noise: float = 0.0

    def add(self, diff: TensorDiff) -> None:
        self.rows += diff.rows
        self.values += diff.values
        self.raw_values += diff.raw_values
        self.noise_values += diff.noise_values
        self.raw_rows += len(diff.raw_rows)
        self.noise_rows += diff.noise_rows
        self.max_abs = max(self.max_abs, diff.max_abs)
        self.max_rel = max(self.max_rel, diff.max_rel)
        if diff.classifier:
            self.classifier_rows += diff.rows
            self.top1_raw += len(diff.top1_raw)
            self.top1_noise += diff.top1_noise
            self.topk_raw += diff.topk_raw
            self.topk_noise += diff.topk_noise

    def as_dict(self, topk: int) -> dict[str, Any]:
        """The totals (what :meth:`from_dict` reads back, to sum nodes) and what they mean."""
        rows = self.rows or 1
        out: dict[str, Any] = {
            "rows": self.rows, "values": self.values,
            "differing_rows": self.raw_rows, "noise_rows": self.noise_rows,
            "differing_values": self.raw_values, "noise_values": self.noise_values,
            "differing_percent": _percent(self.raw_rows, rows), "noise_percent": _percent(self.noise_rows, rows),
            "max_abs_error": _finite(self.max_abs), "max_rel_error": _finite(self.max_rel),
            "regression": significant(self.raw_rows, self.noise_rows, self.rows)}
        if self.classifier_rows:
            n = self.classifier_rows
            out["classifier"] = {
                "rows": n, "top1_changed": self.top1_raw, "top1_noise": self.top1_noise,
                "topk_overlap": self.topk_raw, "topk_noise_overlap": self.topk_noise, "k": topk,
                "top1_agreement_percent": _percent(n - self.top1_raw, n),
                "top1_changed_percent": _percent(self.top1_raw, n),
                "top1_noise_percent": _percent(self.top1_noise, n),
                "topk_overlap_percent": _percent(self.topk_raw, n),
                "topk_noise_overlap_percent": _percent(self.topk_noise, n),
                "regression": significant(self.top1_raw, self.top1_noise, n)}
        return out

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> _TensorTotals:
        classifier = doc.get("classifier") or {}
        return cls(rows=doc["rows"], values=doc["values"], raw_values=doc["differing_values"],
                   noise_values=doc["noise_values"], raw_rows=doc["differing_rows"], noise_rows=doc["noise_rows"],
                   max_abs=float(doc["max_abs_error"]), max_rel=float(doc["max_rel_error"]),
                   classifier_rows=classifier.get("rows", 0), top1_raw=classifier.get("top1_changed", 0),
                   top1_noise=classifier.get("top1_noise", 0), topk_raw=classifier.get("topk_overlap", 0.0),
                   topk_noise=classifier.get("topk_noise_overlap", 0.0))

    def merge(self, other: _TensorTotals) -> None:
        for name in ("rows", "values", "raw_values", "noise_values", "raw_rows", "noise_rows", "classifier_rows",
                     "top1_raw", "top1_noise", "topk_raw", "topk_noise"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.max_abs, self.max_rel = max(self.max_abs, other.max_abs), max(self.max_rel, other.max_rel)


def _percent(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 3) if whole else 0.0


def _finite(value: float) -> float | str:
    return value if np.isfinite(value) else "inf"


@dataclass
class _Run:
    """One shadow of one model, from its start to its stop: counters, totals and examples."""

    model: str
    settings: ShadowSettings
    started: float = field(default_factory=time.time)
    stopped: float | None = None
    seen: int = 0            # requests without a version while it ran
    sampled: int = 0
    dropped: int = 0         # the queue was full
    compared: int = 0
    skipped: int = 0         # the candidate was not loaded (yet), or was the primary itself
    candidate_errors: int = 0
    secondary_errors: int = 0
    secondary_runs: int = 0
    cpu_seconds: float = 0.0  # the comparing thread's CPU in the copies' steps (runs, comparisons)
    identical: int = 0       # copies in a row whose secondary answered exactly as the primary
    noisy: bool = False      # a secondary differed: it runs on every copy from then on
    primary_versions: set[int] = field(default_factory=set)
    tensors: dict[str, _TensorTotals] = field(default_factory=dict)
    examples: list[tuple[tuple, int, dict]] = field(default_factory=list)   # a min-heap on the score
    last_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def deterministic(self) -> bool:
        """Whether the model answered bit for bit alike so far (its secondary then runs on few copies)."""
        return not self.noisy and self.identical >= DETERMINISTIC_AFTER

    def wants_secondary(self) -> bool:
        return not self.deterministic() or self.compared % SECONDARY_EVERY == 0

    def saw_secondary(self, primary: Mapping[str, np.ndarray], secondary: Mapping[str, np.ndarray]) -> None:
        """Count a secondary's answer toward (or against) the model being deterministic."""
        self.secondary_runs += 1
        if all(np.array_equal(value, secondary.get(alias)) for alias, value in primary.items()):
            self.identical += 1
        else:
            self.noisy = True

    def report(self) -> dict[str, Any]:
        with self.lock:
            return summarize({
                "model": self.model, "candidate": self.settings.version,
                "primary": sorted(self.primary_versions),
                "settings": {"sample": self.settings.sample, "atol": self.settings.atol,
                             "rtol": self.settings.rtol, "topk": self.settings.topk},
                "started": self.started, "stopped": self.stopped, "running": self.stopped is None,
                "requests": {"seen": self.seen, "sampled": self.sampled, "dropped": self.dropped,
                             "compared": self.compared, "skipped": self.skipped,
                             "candidate_errors": self.candidate_errors,
                             "secondary_errors": self.secondary_errors,
                             "secondary_runs": self.secondary_runs},
                "deterministic": self.deterministic(),
                "cpu_seconds": round(self.cpu_seconds, 6),
                "last_error": self.last_error,
                "outputs": {alias: totals.as_dict(self.settings.topk) for alias, totals in sorted(self.tensors.items())},
                "examples": [example for _, _, example in sorted(self.examples, key=lambda e: e[:2], reverse=True)]})


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with its verdict: which outputs regressed (beyond their noise), which are noisy."""
    tensors = report["outputs"]
    regressions = [alias for alias, t in tensors.items()
                   if t["regression"] or t.get("classifier", {}).get("regression")]
    report["regressions"] = regressions
    report["noisy"] = [alias for alias, t in tensors.items() if t["noise_rows"]]
    report["verdict"] = _verdict(report["requests"]["compared"], report["requests"]["candidate_errors"], regressions)
    report["agreement_percent"] = _agreement(report)
    return report


def _agreement(report: dict[str, Any]) -> float | None:
    """The share of compared inputs whose answer the candidate agreed with, beyond the noise:
    a classifier output by its top-1 class, any other by its values within tolerance; the worst
    output counts, and a candidate error is a disagreement. None before anything was compared."""
    compared = report["requests"]["compared"]
    if not compared:
        return None
    worst = 0.0
    for out in report["outputs"].values():
        top = out.get("classifier")
        changed, noise, rows = ((top["top1_changed"], top["top1_noise"], top["rows"]) if top
                                else (out["differing_rows"], out["noise_rows"], out["rows"]))
        worst = max(worst, max(changed - noise, 0) / rows if rows else 0.0)
    return _percent((1 - worst) * (1 - report["requests"]["candidate_errors"] / compared), 1)


def merge(reports: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The nodes' reports of one model's shadow as one (the most recently started shadow's
    candidate only): counts and totals summed, the most different examples of all nodes."""
    if not reports:
        return None
    latest = max(reports, key=lambda r: r["started"])
    same = [r for r in reports if r["candidate"] == latest["candidate"]]
    topk = latest["settings"]["topk"]
    totals: dict[str, _TensorTotals] = {}
    for report in same:
        for alias, doc in report["outputs"].items():
            totals.setdefault(alias, _TensorTotals()).merge(_TensorTotals.from_dict(doc))
    requests = {key: sum(r["requests"].get(key, 0) for r in same) for key in latest["requests"]}
    examples = sorted(({**e, "node": r.get("node", "")} for r in same for e in r["examples"]),
                      key=lambda e: e.get("score", []), reverse=True)
    return summarize({
        **{key: latest[key] for key in ("model", "candidate", "settings")},
        "primary": sorted({v for r in same for v in r["primary"]}),
        "started": min(r["started"] for r in same),
        "stopped": None if any(r["running"] for r in same) else max(r["stopped"] or 0 for r in same),
        "running": any(r["running"] for r in same),
        "nodes": sorted(r.get("node", "") for r in same), "requests": requests,
        "deterministic": all(r.get("deterministic", False) for r in same),
        "cpu_seconds": round(sum(r.get("cpu_seconds", 0.0) for r in same), 6),
        "last_error": next((r["last_error"] for r in same if r["last_error"]), ""),
        "outputs": {alias: t.as_dict(topk) for alias, t in sorted(totals.items())},
        "examples": examples[:EXAMPLES]})


def _verdict(compared: int, candidate_errors: int, regressions: list[str]) -> str:
    if candidate_errors:
        return "fails"
    if not compared:
        return "no data"
    return "differs" if regressions else "agrees"


class ShadowTap:
    """The model server's shadows: takes copies on the request path, compares them on its thread."""

    def __init__(self, manager: ModelManager, queue_size: int = QUEUE_SIZE) -> None:
        self.manager = manager
        self.runs: dict[str, _Run] = {}       # the current or last shadow of each model
        # A deque, not a queue.Queue: its append signals no one (see EMPTY_POLL); appends and
        # pops are atomic, and the size check before an append may let one or two more in.
        self._queue: collections.deque[_Copy] = collections.deque()
        self._capacity = queue_size
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._threaded: collections.deque[_Copy] = collections.deque()   # copies too costly for the loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._ticking = False
        self._job: Iterator[None] | None = None     # the copy the loop is stepping through
        self._job_run: _Run | None = None
        self._next: asyncio.Handle | None = None    # the loop's one next tick

    # ---------------------------------------------------------------- request path

    def offer(self, name: str, api: str, primary: VersionState, signature: str,
              inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        """A request without a version was answered by ``primary``; maybe copy it. Never blocks."""
        model = self.manager.models.get(name)
        settings = model.settings.shadow if model is not None and model.settings is not None else None
        run = self.runs.get(name)
        if settings is None:
            if run is not None and run.stopped is None:
                self._current(name, None)
            return
        if run is None or run.settings != settings or run.stopped is not None:
            run = self._current(name, settings)
        copied = random.random() * 100.0 < settings.sample
        with run.lock:   # request threads and the event loop count at once
            run.seen += 1
            run.sampled += copied
        if not copied:
            return
        if len(self._queue) >= self._capacity:
            with run.lock:
                run.dropped += 1
            return
        self._queue.append(_Copy(name, api, primary, signature, inputs, outputs, run))
        if self._loop is not None:
            if not self._ticking:
                self._kick()
        elif self._thread is None:
            self._start()

    def _current(self, name: str, settings: ShadowSettings | None) -> _Run | None:
        """The model's run for ``settings`` (None: its shadow stopped), started when new."""
        with self._lock:
            run = self.runs.get(name)
            if run is not None and run.settings == settings and run.stopped is None:
                return run
            if run is not None and run.stopped is None:
                run.stopped = time.time()
                log.info("Shadow of model %s (candidate version %d) stopped after %d compared requests",
                         name, run.settings.version, run.compared)
            if settings is None:
                return None
            run = _Run(name, settings)
            self.runs[name] = run
            log.info("Shadow of model %s: %.3g%% of its unversioned requests copied to version %d",
                     name, settings.sample, settings.version)
            return run

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="shadow", daemon=True)
                self._thread.start()

    # ---------------------------------------------------------------- worker

    # ---------------------------------------------------------------- on the event loop

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the copies of cheap models on ``loop`` (the server's), in its idle turns."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def _kick(self) -> None:
        """Start the loop's ticks (from the request path: the loop thread, or a pool thread)."""
        with self._lock:
            if self._ticking:
                return
            self._ticking = True
        self._from_any_thread(0.0)

    def _from_any_thread(self, delay: float) -> None:
        """:meth:`_after`, from the loop's thread or another (a pool thread ending a request)."""
        if threading.get_ident() == self._loop_thread:
            self._after(delay)
        else:
            self._loop.call_soon_threadsafe(self._after, delay)

    def _after(self, delay: float) -> None:
        """Make the ticks' one next tick run after ``delay`` seconds (on the loop's thread): the
        tick it replaces is cancelled, so there is never more than one."""
        if self._next is not None:
            self._next.cancel()
        self._next = self._loop.call_later(delay, self._tick) if delay > 0 else self._loop.call_soon(self._tick)

    def _request_ended(self) -> None:
        """A request ended while a copy's step waited for a busy server: look once the server
        has been idle for :data:`IDLE_GAP` (called by :func:`monitoring.record_request`)."""
        self._from_any_thread(IDLE_GAP)

    def _tick(self) -> None:
        """One step of a copy when the server is idle, then the next tick: at once after a step;
        while a request runs, when one ends (:meth:`_request_ended`: no timer fires meanwhile; a
        look every :data:`EMPTY_POLL` all the same, should a request never be recorded as ended);
        every :data:`EMPTY_POLL` when no copy waits. A copy whose models do not run inline
        (inline.py: a few hundred microseconds at most, a small input) goes to the worker thread
        instead, as all copies do without a loop."""
        self._next = None    # this tick was it
        if self._job is None:
            if not self._queue:
                self._after(EMPTY_POLL)
                return
            copy = self._queue.popleft()
            if not self._inline(copy):
                self._threaded.append(copy)
                if self._thread is None:
                    self._start()
                self._after(0.0)
                return
            self._job, self._job_run = self._steps(copy), copy.run
        idle = monitoring.idle_seconds()
        if idle < IDLE_GAP:
            if idle > 0:    # no request runs: idle enough by then, unless one comes meanwhile
                self._after(IDLE_GAP - idle)
            else:           # one runs: look again when a request ends, not on a timer meanwhile
                self._after(EMPTY_POLL)
                monitoring.when_request_ends(self._request_ended)
            return
        self._step(self._job, self._job_run)
        self._after(0.0)

    def _step(self, job: Iterator[None], run: _Run) -> bool:
        """One step of a copy, its CPU time counted to ``run``; False once the copy is done."""
        start = time.thread_time()
        try:
            next(job)
            return True
        except StopIteration:
            pass
        except Exception:  # noqa: BLE001 - one bad copy never stops the shadow
            log.exception("shadow comparison of model %s failed", run.model)
        finally:
            spent = time.thread_time() - start
            with run.lock:
                run.cpu_seconds += spent
        if job is self._job:
            self._job = None
        return False

    def _inline(self, copy: _Copy) -> bool:
        """Whether every run of the copy may go on the event loop (its models' runs are cheap)."""
        from modelserver.core.inline import runs_inline

        size = sum(getattr(value, "nbytes", 0) for value in copy.inputs.values())
        try:
            candidate = self.manager.lookup(copy.name, version=copy.run.settings.version)
        except ServingError:
            return True    # nothing to run: the copy is skipped at once
        models = [copy.primary.model, candidate.model if candidate is not None else None]
        return all(model is None or runs_inline(model, size) for model in models)

    # ---------------------------------------------------------------- worker thread

    def _work(self) -> None:
        queue = self._threaded if self._loop is not None else self._queue
        while True:
            if not queue:
                time.sleep(EMPTY_POLL)
                continue
            copy = queue.popleft()    # the one consumer
            steps = self._steps(copy)
            while self._step(steps, copy.run):
                _when_idle()

    def _steps(self, copy: _Copy) -> Iterator[None]:
        """Compare one copy, yielding before each model run and before the comparison: whoever
        drives it (the loop's ticks, the worker thread) waits there for the server's idle time."""
        run, settings = copy.run, copy.run.settings
        try:
            candidate = self.manager.lookup(copy.name, version=settings.version)
        except ServingError:
            candidate = None
        if candidate is None or candidate.version == copy.primary.version or copy.primary.model is None:
            with run.lock:
                run.skipped += 1
            return
        secondary: Mapping[str, np.ndarray] | str | None = None
        if run.wants_secondary():
            yield
            secondary = self._run(copy.primary, copy)
        yield
        answer = self._run(candidate, copy)
        yield
        with run.lock:
            run.primary_versions.add(copy.primary.version)
            if isinstance(secondary, str):
                run.secondary_errors += 1
                secondary = None
            elif secondary is not None:
                run.saw_secondary(copy.outputs, secondary)
            if isinstance(answer, str):
                run.candidate_errors += 1
                run.last_error = answer
                run.compared += 1
                self._keep(run, (float("inf"), 0.0, 0.0), copy, {}, answer)
                return
        diffs = compare(copy.outputs, secondary, answer, settings.atol, settings.rtol, settings.topk)
        with run.lock:
            run.compared += 1
            for alias, diff in diffs.items():
                run.tensors.setdefault(alias, _TensorTotals()).add(diff)
            score = _score(diffs)
            if score > (0.0, 0.0, 0.0):
                self._keep(run, score, copy, diffs, "", secondary, answer)

    @staticmethod
    def _run(state: VersionState, copy: _Copy) -> Mapping[str, np.ndarray] | str:
        """The outputs of ``state`` on the copy's inputs, or the error's text."""
        model = state.model
        if model is None:
            return "the version was unloaded"
        try:
            return model.run(copy.signature, copy.inputs)
        except ServingError as exc:
            return exc.to_string()
        except Exception as exc:  # noqa: BLE001 - a failing candidate is what a shadow is for
            return f"{type(exc).__name__}: {exc}"

    @staticmethod
    def _keep(run: _Run, score: tuple, copy: _Copy, diffs: Mapping[str, TensorDiff], error: str,
              secondary: Mapping[str, np.ndarray] | None = None,
              candidate: Mapping[str, np.ndarray] | None = None) -> None:
        """Keep the copy among the run's most different (caller holds ``run.lock``)."""
        if len(run.examples) >= EXAMPLES and score <= run.examples[0][0]:
            return
        example = _example(copy, diffs, error, secondary, candidate)
        example["score"] = [min(part, 1e300) for part in score]   # JSON has no inf
        entry = (score, run.compared, example)
        if len(run.examples) < EXAMPLES:
            heapq.heappush(run.examples, entry)
        else:
            heapq.heapreplace(run.examples, entry)

    # ---------------------------------------------------------------- report

    def report(self) -> dict[str, Any]:
        """Every model's current or last shadow, as ``GET /appliance/v1/shadow`` answers it."""
        for name, run in list(self.runs.items()):
            model = self.manager.models.get(name)
            settings = model.settings.shadow if model is not None and model.settings is not None else None
            if run.stopped is None and settings != run.settings:
                self._current(name, settings)
        return {"models": {name: run.report() for name, run in sorted(self.runs.items())},
                "queue": {"size": len(self._queue), "capacity": self._capacity}}


def _when_idle() -> None:
    """Return once the server has had no request for :data:`IDLE_GAP` (the copy waits as long as
    it takes: the bounded queue drops the copies that come meanwhile)."""
    pause = IDLE_GAP
    while (idle := monitoring.idle_seconds()) < IDLE_GAP:
        time.sleep(max(IDLE_GAP - idle, pause))
        pause = min(pause * 2, IDLE_POLL_MAX)


def _score(diffs: Mapping[str, TensorDiff]) -> tuple[float, float, float]:
    """How different a request's answers are: rows whose top class changed beyond the noise,
    rows with values beyond tolerance beyond the noise, then the largest relative error."""
    top1 = sum(len(d.top1_raw) - d.top1_noise for d in diffs.values())
    rows = sum(len(d.raw_rows) - d.noise_rows for d in diffs.values())
    return (float(max(top1, 0)), float(max(rows, 0)), max((d.max_rel for d in diffs.values()), default=0.0))


def _example(copy: _Copy, diffs: Mapping[str, TensorDiff], error: str,
             secondary: Mapping[str, np.ndarray] | None, candidate: Mapping[str, np.ndarray] | None) -> dict:
    """A request as the report shows it: inputs, and for its differing rows the three answers."""
    example: dict[str, Any] = {"time": time.time(), "api": copy.api, "primary_version": copy.primary.version,
                               "signature": copy.signature,
                               "inputs": {alias: _json_tensor(value) for alias, value in copy.inputs.items()}}
    if error:
        example["candidate_error"] = error
        return example
    rows = sorted({row for diff in diffs.values() for row in (*diff.raw_rows, *diff.top1_raw)})[:8]
    example["rows"] = rows
    example["outputs"] = {}
    for alias, diff in diffs.items():
        if not diff.raw_rows and not diff.top1_raw:
            continue
        shown = {"primary": copy.outputs[alias], "candidate": (candidate or {}).get(alias),
                 "secondary": (secondary or {}).get(alias)}
        example["outputs"][alias] = {
            who: _json_tensor(value[rows] if value is not None and value.ndim and value.shape[0] > max(rows, default=0)
                              else value) for who, value in shown.items() if value is not None}
        if diff.classifier:
            example["outputs"][alias]["top1"] = [
                {"row": row, "primary": int(np.argmax(copy.outputs[alias][row])),
                 "candidate": int(np.argmax(candidate[alias][row]))} for row in diff.top1_raw[:8]]
    return example


def _json_tensor(value: Any) -> Any:
    """A tensor as JSON: nested lists (bytes as base64), or its shape when it is large."""
    array = np.asarray(value)
    if array.size > EXAMPLE_VALUES:
        return {"dtype": str(array.dtype), "shape": list(array.shape)}
    if array.dtype == object or array.dtype.kind == "S":
        return [_json_scalar(item) for item in array.reshape(-1).tolist()]
    return array.tolist()   # NaN and inf as json.dumps writes them (NaN, Infinity)


def _json_scalar(item: Any) -> Any:
    if isinstance(item, bytes):
        return {"b64": base64.b64encode(item).decode("ascii")}
    return item
