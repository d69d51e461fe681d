"""The dashboard's charts, computed from the store's rows (logviewer/samples.py).

Every chart shares one time axis (the ticks of the range); a series has one value per tick, or
None where it has no data (a node that did not answer, a model with no request that tick has a
rate of 0 but no latency). Requests, errors and latency are drawn three ways: per model, per
model version and per node. A latency percentile of several nodes is computed from their
summed histogram buckets (never an average of percentiles), interpolated inside the bucket
that holds it, as Prometheus' ``histogram_quantile`` does.
"""

from __future__ import annotations

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


def tick(nodes: dict[str, dict]) -> dict:
    """One tick of every node (samples.reduce's rows) as the values the charts draw.

    ``{"v": {"<metric>\\t<group>\\t<series>": value}, "ev": [[kind, text]], "down": {node: why}}``:
    computed once when the sample is taken, so drawing an hour only places stored numbers.
    """
    cells: dict[tuple[str, str], _Cell] = defaultdict(_Cell)
    values: dict[str, float] = {}
    events: list[list[str]] = []
    down: dict[str, str] = {}
    for node, row in sorted(nodes.items()):
        if "down" in row:
            down[node] = row["down"]
            continue
        seconds = row.get("dt", 0.0)
        for name, (requests, errors, buckets) in row.get("m", {}).items():
            model, _, version = name.partition("\t")
            if not model:
                continue   # requests for no model the server knows (TF's model_name="")
            for key in (("model", model), ("version", _label(model, version)), ("node", node)):
                cells[key].add(requests, errors, buckets, seconds)
        # A node that answered but served nothing this tick is at 0 requests/s, not missing.
        cells[("node", node)].rate += 0.0
        if "e" in row and seconds > 0:
            requests, failed = row["e"]
            values[f"rps\tedge\t{node}"] = round(requests / seconds, 3)
            if requests:
                values[f"errors\tedge\t{node}"] = round(100.0 * failed / requests, 2)
        for process, (cores, resident) in row.get("p", {}).items():
            values[f"cpu\tprocess\t{process}@{node}"] = round(cores * 100.0, 1)
            values[f"memory\tprocess\t{process}@{node}"] = round(resident / 2 ** 20, 1)
        events.extend([kind, text] for kind, text in row.get("ev", []))
    for (group, key), cell in cells.items():
        for metric, _, _ in METRICS:
            value = cell.value(metric)
            if value is not None:
                values[f"{metric}\t{group}\t{key}"] = value
    return {"v": values, "ev": events, "down": down}


CHARTS = [(metric, group, f"{title} {group_title}", unit)
          for group, group_title in GROUPS for metric, title, unit in METRICS] + [
    ("rps", "edge", "requests/s per node, as clients see them", "req/s"),
    ("errors", "edge", "5xx rate per node, as clients see it", "%"),
    ("cpu", "process", "CPU per process", "% of a core"),
    ("memory", "process", "resident memory per process", "MiB")]


def build(rows: Iterable[tuple[float, dict]], since: float, until: float) -> dict:
    """``{"times": [...], "charts": [...], "events": [...], "down": {node: problem}}`` of the
    store's ``(tick, row)`` pairs, oldest first; ``down`` is the newest tick's."""
    times: list[float] = []
    placed: dict[str, dict[int, float]] = defaultdict(dict)
    events: list[dict] = []
    down: dict[str, str] = {}
    for at, (moment, row) in enumerate(rows):
        times.append(moment)
        for key, value in row["v"].items():
            placed[key][at] = value
        for kind, what in row.get("ev", ()):
            events.append({"t": moment, "kind": kind, "text": what})
        down = row.get("down", {})
    by_chart: dict[tuple[str, str], list[tuple[str, dict[int, float]]]] = defaultdict(list)
    for key, by_tick in placed.items():
        metric, group, name = key.split("\t", 2)
        by_chart[(metric, group)].append((name, by_tick))
    count = len(times)
    charts = []
    for metric, group, title, unit in CHARTS:
        # A model with no request in a tick was sampled at 0 requests/s.
        missing = 0.0 if metric == "rps" and group in ("model", "version") else None
        series = [{"name": name, "values": [by_tick.get(at, missing) for at in range(count)]}
                  for name, by_tick in sorted(by_chart.get((metric, group), []))]
        charts.append({"id": f"{metric}-{group}", "title": title, "unit": unit, "series": series})
    return {"since": since, "until": until, "times": times, "charts": charts, "events": events,
            "down": down}
