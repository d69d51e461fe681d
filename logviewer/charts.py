"""The dashboard's charts, computed from the store's rows (logviewer/samples.py).

Every chart shares one time axis (the ticks of the range); a series has one value per tick, or
None where it has no data (a node that did not answer, a model with no request that tick has a
rate of 0 but no latency). Requests, errors and latency are drawn three ways: per model, per
model version and per node. A latency percentile of several nodes is computed from their
summed histogram buckets (never an average of percentiles), interpolated inside the bucket
that holds it, as Prometheus' ``histogram_quantile`` does.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Iterable

GROUPS: tuple[tuple[str, str], ...] = (("model", "per model"), ("version", "per version"),
                                       ("node", "per node"))
METRICS: tuple[tuple[str, str, str], ...] = (("rps", "requests/s", "req/s"),
                                             ("p50", "p50 latency", "ms"),
                                             ("p99", "p99 latency", "ms"),
                                             ("errors", "error rate", "%"))


class _Cell:
    __slots__ = ("rate", "requests", "errors", "buckets")

    def __init__(self) -> None:
        self.rate = 0.0
        self.requests = 0
        self.errors = 0
        self.buckets: dict[tuple[float, float], float] = defaultdict(float)

    def add(self, requests: int, errors: int, buckets: list, seconds: float) -> None:
        self.rate += requests / seconds if seconds > 0 else 0.0
        self.requests += requests
        self.errors += errors
        for lower, upper, count in buckets:
            self.buckets[(lower, upper)] += count

    def value(self, metric: str) -> float | None:
        if metric == "rps":
            return round(self.rate, 3)
        if metric == "errors":
            return round(100.0 * self.errors / self.requests, 2) if self.requests else None
        return quantile(0.5 if metric == "p50" else 0.99, self.buckets)


def quantile(q: float, buckets: dict[tuple[float, float], float]) -> float | None:
    """The ``q`` quantile in ms of latency buckets (µs bounds, non-cumulative counts)."""
    total = sum(buckets.values())
    if total <= 0:
        return None
    rank, seen = q * total, 0.0
    for (lower, upper), count in sorted(buckets.items()):
        if seen + count >= rank:
            inside = (rank - seen) / count if count else 0.0
            return round((lower + (upper - lower) * inside) / 1000.0, 3)
        seen += count
    return round(max(upper for _, upper in buckets) / 1000.0, 3)


def _label(model: str, version: str) -> str:
    return f"{model} v{version}" if version else f"{model} (all versions)"


def build(rows: Iterable[tuple[float, str, str]], since: float, until: float) -> dict:
    """``{"times": [...], "charts": [...], "events": [...], "nodes": {node: problem}}``."""
    ticks: list[float] = []
    index: dict[float, int] = {}
    # (group, key) -> tick index -> cell
    cells: dict[tuple[str, str], dict[int, _Cell]] = defaultdict(dict)
    cpu: dict[str, dict[int, float]] = defaultdict(dict)
    memory: dict[str, dict[int, float]] = defaultdict(dict)
    events: list[dict] = []
    down: dict[str, str] = {}
    for tick, node, text in rows:
        at = index.get(tick)
        if at is None:
            at = index[tick] = len(ticks)
            ticks.append(tick)
        row = json.loads(text)
        if "down" in row:
            down[node] = row["down"]
            continue
        down.pop(node, None)
        seconds = row.get("dt", 0.0)
        for name, (requests, errors, buckets) in row.get("m", {}).items():
            model, _, version = name.partition("\t")
            if not model:
                continue   # requests for no model the server knows (TF's model_name="")
            for key in (("model", model), ("version", _label(model, version)), ("node", node)):
                cell = cells[key].get(at)
                if cell is None:
                    cell = cells[key][at] = _Cell()
                cell.add(requests, errors, buckets, seconds)
        # A node that answered but served nothing this tick is at 0 requests/s, not missing.
        cells[("node", node)].setdefault(at, _Cell())
        for process, (cores, resident) in row.get("p", {}).items():
            cpu[f"{process}@{node}"][at] = round(cores * 100.0, 1)
            memory[f"{process}@{node}"][at] = round(resident / 2 ** 20, 1)
        for kind, text_ in row.get("ev", []):
            events.append({"t": tick, "kind": kind, "text": text_})
    # Every model known at some tick counts 0 requests/s at the other ticks its nodes answered.
    answered = {at for (group, _), by_tick in cells.items() if group == "node" for at in by_tick}
    charts = []
    for group, group_title in GROUPS:
        keys_of_group = sorted(k for g, k in cells if g == group)
        for metric, title, unit in METRICS:
            series = []
            for key in keys_of_group:
                by_tick = cells[(group, key)]
                values = [(by_tick[at].value(metric) if at in by_tick
                           else (0.0 if metric == "rps" and at in answered else None))
                          for at in range(len(ticks))]
                series.append({"name": key, "values": values})
            charts.append({"id": f"{metric}-{group}", "title": f"{title} {group_title}",
                           "unit": unit, "series": series})
    for name, title, unit, data in (("cpu", "CPU per process", "% of a core", cpu),
                                    ("memory", "resident memory per process", "MiB", memory)):
        charts.append({"id": f"{name}-process", "title": title, "unit": unit,
                       "series": [{"name": key, "values": [data[key].get(at) for at in range(len(ticks))]}
                                  for key in sorted(data)]})
    return {"since": since, "until": until, "times": ticks, "charts": charts, "events": events,
            "down": down}
