"""The dashboard's embedded store: every node's metrics page, sampled into a small SQLite file.

A trial node has no Prometheus, so the logviewer keeps its own short history. Every
``dashboard.sample.seconds`` it reads the metrics page (:mod:`appliance.nodemetrics`) of this
node (in-process) and of every member node (``nodemetrics.read_page``: their ``/metrics`` over
HTTPS with the cluster's ``metrics.token``). Each page is first reduced to one interval against the node's
previous page (kept in memory): per model and version the requests, the errors and the latency
buckets that filled; per process its CPU and resident memory; the sync and load events. A
counter that went down is a restarted process, and counts from zero. The nodes' intervals are
then combined into the values the charts draw (:func:`logviewer.charts.tick`: requests/s,
p50/p99 from the summed buckets, error rate, per model, version and node), and that is what is
stored: one JSON row per tick in SQLite (Python's own, nothing to install), ~2 KB for 3 nodes
and 2 models; 6 h at 10 s is ~2 200 rows. A row older than ``dashboard.retention.hours`` goes.

Why the work is done on the way in: drawing an hour (360 ticks) must cost well under 300 ms of
the logviewer's time, so the page only places stored numbers.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import orjson

from appliance import nodemetrics, promtext
from appliance.config import Config, NodePaths

from . import charts

log = logging.getLogger(__name__)

REQUESTS = ":tensorflow:serving:request_count"
LATENCY = ":tensorflow:serving:request_latency_bucket"
LOADS = ":tensorflow:cc:saved_model:load_attempt_count"
CPU = "appliance_process_cpu_seconds_total"
RSS = "appliance_process_resident_memory_bytes"
SYNC_BYTES = "appliance_agent_sync_bytes_total"
CYCLES = "appliance_agent_cycles_total"
EDGE = "envoy_http_downstream_rq_xx"     # Envoy's answers to clients, by class (1-5)
FAMILIES = frozenset((REQUESTS, LATENCY, LOADS, CPU, RSS, SYNC_BYTES, CYCLES, EDGE))

CACHED = 800   # decoded rows kept: two hours at the default interval
Raw = dict[tuple, float]


def parse(text: str) -> Raw:
    """The samples the dashboard uses, summed per the key it groups them by.

    A request is an inference (predict, classify, regress): a status or metadata request (API
    "", e.g. Envoy's health checks of every model) is left out of the counts and latency.
    """
    raw: Raw = {}
    for sample in promtext.parse(text):
        name, labels = sample.name, sample.labels
        if name not in FAMILIES:
            continue
        model, version = labels.get("model_name", ""), labels.get("version", "")
        if name in (REQUESTS, LATENCY) and not labels.get("API", "x"):
            continue
        if name == REQUESTS:
            key: tuple = ("n", model, version, labels.get("status") == "OK")
        elif name == LATENCY:
            key = ("le", model, version, labels.get("le", "+Inf"))
        elif name == LOADS:
            key = ("load", labels.get("model_path", ""), labels.get("status", ""))
        elif name == CYCLES:
            key = ("cycles", labels.get("result", ""))
        elif name == SYNC_BYTES:
            key = ("sync_bytes",)
        elif name == EDGE:
            # The public listeners only: an internode request was counted where it came in.
            if labels.get("envoy_http_conn_manager_prefix") not in ("rest", "grpc"):
                continue
            key = ("edge", labels.get("envoy_response_code_class") == "5")
        else:
            key = ("cpu" if name == CPU else "rss", labels.get("process", ""))
        raw[key] = raw.get(key, 0.0) + sample.value
    return raw


def _delta(now: float, before: float | None) -> float:
    if before is None:
        return now
    return now - before if now >= before else now   # went down: the process restarted


def _le(text: str) -> float:
    return math.inf if text in ("+Inf", "Inf", "inf") else float(text)


def reduce(node: str, before: Raw, after: Raw, seconds: float) -> dict:
    """One tick of one node: what happened between two pages ``seconds`` apart.

    ``m``: ``{"model\\tversion": [requests, errors, [[lower µs, upper µs, count], ...]]}``
    (only the latency buckets that filled); ``p``: ``{process: [cores, resident bytes]}``;
    ``e``: ``[requests, 5xx answers]`` of Envoy's public listeners (what clients saw);
    ``ev``: ``[[kind, text], ...]`` (sync, sync-failed, load, load-failed).
    """
    models: dict[str, list] = {}
    bounds: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for key, value in after.items():
        kind = key[0]
        if kind == "n":
            cell = models.setdefault(f"{key[1]}\t{key[2]}", [0, 0, []])
            changed = _delta(value, before.get(key))
            cell[0] += changed
            if not key[3]:
                cell[1] += changed
        elif kind == "le":
            bounds.setdefault((key[1], key[2]), []).append(
                (_le(key[3]), _delta(value, before.get(key))))
    for (model, version), cumulative in bounds.items():
        cumulative.sort()
        cell = models.setdefault(f"{model}\t{version}", [0, 0, []])
        lower, seen = 0.0, 0.0
        for upper, count in cumulative:
            if count > seen:
                cell[2].append([lower, upper if upper != math.inf else lower, count - seen])
            lower, seen = upper, max(seen, count)
    edge = [0.0, 0.0]
    for key, value in after.items():
        if key[0] == "edge":
            changed = _delta(value, before.get(key))
            edge[0] += changed
            edge[1] += changed if key[1] else 0.0
    processes = {}
    for key, value in after.items():
        if key[0] == "cpu":
            used = _delta(value, before.get(key))
            processes[key[1]] = [round(used / seconds, 4) if seconds > 0 else 0.0,
                                 after.get(("rss", key[1]), 0.0)]
    events = []
    downloaded = _delta(after.get(("sync_bytes",), 0.0), before.get(("sync_bytes",)))
    if before and downloaded > 0:
        events.append(["sync", f"{node}: synced {downloaded / 2**20:.1f} MiB from the repository"])
    for result in ("failed", "refused"):
        key = ("cycles", result)
        if before and key in after and _delta(after[key], before.get(key, 0.0)) > 0:
            events.append(["sync-failed", f"{node}: a sync cycle {result}"])
    for key, value in after.items():
        if key[0] == "load" and before and _delta(value, before.get(key, 0.0)) > 0:
            name = "/".join(Path(key[1]).parts[-2:])
            ok = key[2] == "success"
            events.append(["load" if ok else "load-failed",
                           f"{node}: {'loaded' if ok else 'failed to load'} {name}"])
    return {"dt": round(seconds, 3), "m": {k: [round(v[0]), round(v[1]), v[2]]
                                            for k, v in models.items() if v[0] or v[2]},
            "e": [round(edge[0]), round(edge[1])], "p": processes, "ev": events}


# ----------------------------------------------------------------------------- store


class Store:
    """One row per tick (:func:`logviewer.charts.tick`) in one SQLite file; one connection behind
    a lock (the sampler writes every few seconds, the page reads)."""

    def __init__(self, path: Path, retention_seconds: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.retention = retention_seconds
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS ticks (tick REAL PRIMARY KEY, row TEXT NOT NULL)")
        self._pruned = 0.0
        self._decoded: dict[float, dict] = {}

    def add(self, tick: float, row: dict) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("INSERT OR REPLACE INTO ticks VALUES (?, ?)",
                             (tick, orjson.dumps(row).decode()))
            if tick - self._pruned > 60:
                self._db.execute("DELETE FROM ticks WHERE tick < ?", (tick - self.retention,))
                self._pruned = tick
            self._db.execute("COMMIT")
            self._decoded[tick] = row
            self._trim()

    def rows(self, since: float) -> list[tuple[float, dict]]:
        """``(tick, row)`` from ``since`` on, oldest first.

        The newest CACHED rows are kept decoded: a dashboard left open asks for the same hour
        every interval, and decoding it was most of the page's time.
        """
        with self._lock:
            out = []
            for tick, text in self._db.execute("SELECT tick, row FROM ticks WHERE tick >= ? "
                                               "ORDER BY tick", (since,)):
                row = self._decoded.get(tick)
                if row is None:
                    row = self._decoded[tick] = orjson.loads(text)
                out.append((tick, row))
            self._trim()
            return out

    def _trim(self) -> None:
        if len(self._decoded) > CACHED:
            for tick in sorted(self._decoded)[:-CACHED]:
                del self._decoded[tick]

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ----------------------------------------------------------------------------- sampler


def member_nodes(config: Config, paths: NodePaths) -> list[str]:
    """This node and every serving node its agent last pointed Envoy at (else the config's)."""
    from appliance.agent.state import read_state, state_path

    try:
        state = read_state(state_path(paths)) or {}
    except ValueError:
        state = {}
    members = (state.get("membership") or {}).get("members") or list(config.cluster.members)
    own = config.connect_address()
    return [own] + sorted({str(m) for m in members} - {own})


class Sampler:
    """The thread that fills the store, one tick every ``dashboard.sample.seconds``."""

    def __init__(self, paths: NodePaths, config: Callable[[], Config], store: Store) -> None:
        self.paths = paths
        self.config = config
        self.store = store
        self._previous: dict[str, tuple[float, Raw]] = {}
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dashboard-fetch")
        self._thread = threading.Thread(target=self._run, name="dashboard-sampler", daemon=True)
        self._failing: dict[str, str] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._pool.shutdown(wait=False)

    def tick(self, now: float | None = None) -> dict[str, dict]:
        """Read every node's page once and store what changed since the last tick."""
        config = self.config()
        now = time.time() if now is None else now
        nodes = member_nodes(config, self.paths)
        timeout = max(1.0, config.dashboard.sample_seconds * 0.8)
        pages = dict(zip(nodes, self._pool.map(
            lambda node: nodemetrics.read_page(config, self.paths, node, timeout), nodes)))
        rows = {}
        for node, (text, problem) in pages.items():
            try:
                raw = parse(text) if text is not None else None
            except promtext.ParseError as exc:
                raw, problem = None, f"not a metrics page: {exc}"
            if raw is None:
                self._report(node, problem)
                rows[node] = {"down": problem[:300]}
                self._previous.pop(node, None)
                continue
            self._report(node, "")
            previous = self._previous.get(node)
            self._previous[node] = (now, raw)
            if previous is not None:
                rows[node] = reduce(node, previous[1], raw, now - previous[0])
        if rows:
            self.store.add(now, charts.tick(rows))
        return rows

    def _report(self, node: str, problem: str) -> None:
        """Log a node's page failing once, and once when it works again."""
        if problem and self._failing.get(node) != problem:
            log.warning("dashboard: cannot read the metrics page of %s: %s", node, problem)
        elif not problem and node in self._failing:
            log.info("dashboard: the metrics page of %s answers again", node)
        if problem:
            self._failing[node] = problem
        else:
            self._failing.pop(node, None)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - one bad tick never stops the history
                log.exception("dashboard: a sample failed")
            interval = self.config().dashboard.sample_seconds
            self._stop.wait(max(0.5, interval - (time.monotonic() - started)))
