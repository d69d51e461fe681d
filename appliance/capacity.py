"""``appliance capacity``: how busy each serving node is, what the cluster can still take at the
latency objective, and how many serving nodes to add or remove.

Measured, not modelled from specs: every serving member's scrape page (``GET /metrics``, the
node's token) is read twice, ``capacity.window.seconds`` apart, and per node over that window:

* ``rate``: inference requests answered OK per second (``request_count`` with an ``API``:
  status and metadata calls, health checks among them, are not load);
* ``latency``: the ``capacity.latency.percentile`` of the model server's ``request_latency``
  over the window (all models), in ms;
* ``cpu``: CPU seconds per second of the node's model server and Envoy over the CPUs they may use.

A node's *load* is how close it is to the objective, in units of one node at the objective:
``max(latency / objective, cpu / capacity.cpu.target.percent)``. It can take ``rate / load``
requests/s (load grows about linearly with rate below saturation; unknown without load). The
cluster needs ``sum(load)`` nodes:

* a node past the objective (load > 1): add ``max(1, ceil(sum(load)) - N)``, at most N per call
  (past saturation latency grows faster than load; the next call measures the bigger cluster);
* every node below half of it, and the load would fit on fewer nodes at half load each: remove
  down to ``max(capacity.min.nodes, ceil(2 * sum(load)))``;
* else no change.

The hook (``capacity.hook``, a command line split like a shell's, run without a shell) gets the
recommendation as JSON on stdin and in ``APPLIANCE_CAPACITY_ACTION`` (``add``, ``remove``,
``none``), ``APPLIANCE_CAPACITY_NODES`` (how many to add or remove) and
``APPLIANCE_CAPACITY_TARGET`` (serving nodes wanted); it runs on every call, "none" included, so
a pager can resolve what an earlier call raised.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from . import promtext, subp
from .config import Config, NodePaths
from .errors import ApplianceError, ProcessError
from .membership import members
from .nodemetrics import read_page

COUNT = ":tensorflow:serving:request_count"
LATENCY = ":tensorflow:serving:request_latency"
SERVING_PROCESSES = ("model_server", "envoy")
HOOK_TIMEOUT = 60.0


@dataclass
class NodeLoad:
    node: str
    rate: float = 0.0                  # inference requests OK per second
    latency_ms: float | None = None    # the objective's percentile; None without requests
    cpu_percent: float = 0.0
    load: float = 0.0                  # 1.0 = at the objective
    can_take: float | None = None      # requests/s at the objective; None without load
    error: str = ""


@dataclass
class Recommendation:
    action: str                        # add | remove | none
    nodes: int                         # how many to add or remove
    serving_nodes: int
    target_nodes: int
    reason: str
    headroom_rps: float | None         # what the cluster can still take at the objective
    objective: dict = field(default_factory=dict)
    per_node: list[dict] = field(default_factory=list)


def _read(config: Config, paths: NodePaths, address: str) -> tuple[list[promtext.Sample] | None, str]:
    text, error = read_page(config, paths, address)
    if text is None:
        return None, error
    try:
        return promtext.parse(text), ""
    except promtext.ParseError as exc:
        return None, f"unreadable metrics: {exc}"


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """``histogram_quantile``: cumulative counts by upper bound -> the q-quantile, linearly
    interpolated within its bucket; None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return lower


def _buckets(samples: list[promtext.Sample]) -> dict[float, float]:
    out: dict[float, float] = {}
    for s in samples:
        if s.name == LATENCY + "_bucket" and s.labels.get("API"):
            bound = float(s.labels["le"].replace("+Inf", "inf"))
            out[bound] = out.get(bound, 0.0) + s.value
    return out


def _measure(node: str, before: list[promtext.Sample], after: list[promtext.Sample],
             seconds: float, config: Config) -> NodeLoad:
    settings = config.capacity
    ok = [sum(s.value for s in page if s.name == COUNT and s.labels.get("status") == "OK"
              and s.labels.get("API")) for page in (before, after)]
    rate = max(0.0, ok[1] - ok[0]) / seconds
    first, last = _buckets(before), _buckets(after)
    window = {b: last[b] - first.get(b, 0.0) for b in last}
    micros = quantile(settings.latency_percentile / 100.0, window)
    cpu = [sum(promtext.total(page, "appliance_process_cpu_seconds_total", process=p)
               for p in SERVING_PROCESSES) for page in (before, after)]
    cores = promtext.total(after, "appliance_node_cpu_cores") or 1.0
    cpu_percent = 100.0 * max(0.0, cpu[1] - cpu[0]) / seconds / cores
    latency_ms = None if micros is None else micros / 1000.0
    load = max(0.0 if latency_ms is None else latency_ms / settings.latency_objective_ms,
               cpu_percent / settings.cpu_target_percent)
    can_take = rate / load if load > 0 and rate > 0 else None
    return NodeLoad(node, round(rate, 2), None if latency_ms is None else round(latency_ms, 3),
                    round(cpu_percent, 1), round(load, 3),
                    None if can_take is None else round(can_take, 1))


def measure(config: Config, paths: NodePaths, sleep: Callable[[float], None] = time.sleep) -> list[NodeLoad]:
    """Every serving member's load over ``capacity.window.seconds``."""
    addresses = members(config)
    started = time.monotonic()
    before = {a: _read(config, paths, a) for a in addresses}
    sleep(config.capacity.window_seconds)
    seconds = time.monotonic() - started
    loads = []
    for address in addresses:
        after, error = _read(config, paths, address)
        first, first_error = before[address]
        if first is None or after is None:
            loads.append(NodeLoad(address, error=first_error or error))
        else:
            loads.append(_measure(address, first, after, seconds, config))
    return loads


def recommend(config: Config, loads: list[NodeLoad]) -> Recommendation:
    settings = config.capacity
    live = [n for n in loads if not n.error]
    count = len(live)
    need = sum(n.load for n in live)
    over = [n.node for n in live if n.load > 1.0]
    objective = {"latency_ms": settings.latency_objective_ms, "percentile": settings.latency_percentile,
                 "cpu_percent": settings.cpu_target_percent, "min_nodes": settings.min_nodes}
    known = [n for n in live if n.can_take is not None]
    headroom = round(sum(max(0.0, n.can_take - n.rate) for n in known), 1) if known else None
    if not live:
        action, nodes, reason = "none", 0, "no serving node answered"
    elif over:
        # At most double per call: past saturation latency is not linear in load, and the next
        # call measures the bigger cluster.
        nodes = min(count, max(1, math.ceil(need) - count))
        action, reason = "add", (f"{', '.join(over)} past the objective (load "
                                 f"{max(n.load for n in live):.2f}); the load needs {need:.2f} nodes")
    else:
        target = max(settings.min_nodes, math.ceil(2 * need))
        if all(n.load < 0.5 for n in live) and target < count:
            action, nodes = "remove", count - target
            reason = f"the load ({need:.2f} nodes) fits on {target} at half the objective each"
        else:
            action, nodes, reason = "none", 0, f"within the objective (load {need:.2f} nodes)"
    target_nodes = count + nodes if action == "add" else count - nodes if action == "remove" else count
    if count < settings.min_nodes and action != "add" and live:
        action, nodes, target_nodes = "add", settings.min_nodes - count, settings.min_nodes
        reason = f"fewer serving nodes ({count}) than capacity.min.nodes"
    return Recommendation(action, nodes, count, target_nodes, reason, headroom, objective,
                          [asdict(n) for n in loads])


def run_hook(config: Config, recommendation: Recommendation) -> None:
    """Call ``capacity.hook`` with the recommendation; raise when it fails."""
    command = config.capacity.hook
    if not command:
        return
    argv = shlex.split(command)
    env = dict(os.environ, APPLIANCE_CAPACITY_ACTION=recommendation.action,
               APPLIANCE_CAPACITY_NODES=str(recommendation.nodes),
               APPLIANCE_CAPACITY_TARGET=str(recommendation.target_nodes))
    try:
        subp.run(argv, input=json.dumps(asdict(recommendation)), env=env, timeout=HOOK_TIMEOUT)
    except ProcessError as exc:
        raise ApplianceError(f"the capacity hook {argv[0]} failed: {exc}") from None


def report(recommendation: Recommendation) -> str:
    o = recommendation.objective
    lines = [f"{'node':<22} {'req/s':>9} {'p' + format(o['percentile'], 'g') + ' ms':>9} "
             f"{'cpu %':>6} {'load':>6} {'can take req/s':>15}"]
    for n in recommendation.per_node:
        if n["error"]:
            lines.append(f"{n['node']:<22} unreachable: {n['error']}")
            continue
        latency = "-" if n["latency_ms"] is None else f"{n['latency_ms']:.2f}"
        can = "unknown" if n["can_take"] is None else f"{n['can_take']:.1f}"
        lines.append(f"{n['node']:<22} {n['rate']:>9.1f} {latency:>9} {n['cpu_percent']:>6.1f} "
                     f"{n['load']:>6.2f} {can:>15}")
    headroom = ("unknown (no load to measure)" if recommendation.headroom_rps is None
                else f"~{recommendation.headroom_rps:.1f} req/s more")
    lines.append(f"objective: p{o['percentile']:g} <= {o['latency_ms']:g} ms, cpu <= "
                 f"{o['cpu_percent']:g}%; the cluster can still take {headroom}")
    verb = {"add": f"add {recommendation.nodes} serving node(s)",
            "remove": f"remove {recommendation.nodes} serving node(s)", "none": "no change"}
    lines.append(f"recommendation: {verb[recommendation.action]} ({recommendation.serving_nodes} -> "
                 f"{recommendation.target_nodes}): {recommendation.reason}")
    return "\n".join(lines)
