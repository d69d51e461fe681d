"""A small metrics registry with TF monitoring's semantics and Prometheus text exposition.

TF Serving keeps counters, gauges and samplers (histograms with fixed bucket limits) per label
tuple in TF's ``CollectionRegistry`` and prints them with ``util/prometheus_exporter.cc``. We
cannot read TF's C++ registry from Python, so this module mirrors it: same metric names (the TF
name with every ``[^a-zA-Z0-9_]`` turned into ``:``), same bucket rules (``Exponential(scale,
growth, count)`` limits plus a last ``DBL_MAX`` bucket, a value going to the first limit *above*
it), same text layout (``# TYPE`` line, ``_bucket{...,le="..."}`` lines ending in ``+Inf``,
``_sum`` and ``_count``, integers for counters and gauges).

Recording is on the request hot path, so a cell is found with one dict lookup on the label
tuple and updated under its own lock, held for a few arithmetic operations, never across I/O.
Scrapes copy each cell under the same lock.
"""

from __future__ import annotations

import bisect
import re
import sys
import threading
from typing import Callable, Iterable, Sequence

_METRIC_NAME = re.compile(r"[^a-zA-Z0-9_]")
_LABEL_NAME = re.compile(r"[^a-zA-Z0-9]")


def exponential_buckets(scale: float, growth_factor: float, count: int) -> tuple[float, ...]:
    """``monitoring::Buckets::Exponential``: ``scale * growth^i`` for ``i < count``."""
    limits, bound = [], float(scale)
    for _ in range(count):
        limits.append(bound)
        bound *= growth_factor
    return tuple(limits)


def prometheus_name(tf_name: str) -> str:
    name = _METRIC_NAME.sub(":", tf_name)
    return "_" + name if name[:1].isdigit() else name


def _label_name(name: str) -> str:
    name = _LABEL_NAME.sub("_", name)
    return "_" + name if name[:1].isdigit() else name


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _number(value: float) -> str:
    """``absl::StrCat(double)``: six significant digits, like ``%g``."""
    if value == float("inf"):
        return "inf"
    return f"{value:.6g}"


class _Metric:
    kind = "untyped"

    def __init__(self, tf_name: str, description: str, labels: Sequence[str]) -> None:
        self.tf_name = tf_name
        self.name = prometheus_name(tf_name)
        self.description = description
        self.labels = tuple(labels)
        self._label_text = tuple(_label_name(label) for label in self.labels)
        self._cells: dict[tuple[str, ...], object] = {}
        self._create = threading.Lock()

    def _new_cell(self) -> object:
        raise NotImplementedError

    def cell(self, *values: str) -> object:
        """The cell of one label tuple, created on first use."""
        cell = self._cells.get(values)
        if cell is None:
            if len(values) != len(self.labels):
                raise ValueError(f"{self.tf_name} takes labels {self.labels}, got {values}")
            with self._create:
                cell = self._cells.setdefault(values, self._new_cell())
        return cell

    def forget(self, gone: Callable[[tuple[str, ...]], bool]) -> None:
        """Drop the cells whose label tuple ``gone`` says is no more (a version unloaded)."""
        with self._create:
            for values in [v for v in self._cells if gone(v)]:
                del self._cells[values]

    def _labels(self, values: tuple[str, ...]) -> str:
        return ",".join(f'{n}="{_label_value(v)}"' for n, v in zip(self._label_text, values))

    def _points(self) -> list[tuple[tuple[str, ...], object]]:
        return list(self._cells.items())

    def lines(self) -> list[str]:
        raise NotImplementedError


class _ScalarCell:
    __slots__ = ("lock", "value")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value = 0

    def increment(self, by: int = 1) -> None:
        with self.lock:
            self.value += by

    def set(self, value: int) -> None:
        self.value = value


class Counter(_Metric):
    """A cumulative count per label tuple."""

    kind = "counter"

    def _new_cell(self) -> _ScalarCell:
        return _ScalarCell()

    def increment(self, *values: str, by: int = 1) -> None:
        self.cell(*values).increment(by)

    def value(self, *values: str) -> int:
        cell = self._cells.get(values)
        return cell.value if cell is not None else 0

    def lines(self) -> list[str]:
        out = [f"# TYPE {self.name} {self.kind}"]
        out += [f"{self.name}{{{self._labels(values)}}} {int(cell.value)}" for values, cell in self._points()]
        return out


class Gauge(Counter):
    """A value set per label tuple; may also be computed at scrape time by a callback."""

    kind = "gauge"

    def __init__(self, tf_name: str, description: str, labels: Sequence[str],
                 collect: Callable[[], Iterable[tuple[tuple[str, ...], int]]] | None = None) -> None:
        super().__init__(tf_name, description, labels)
        self.collect = collect

    def set(self, *values: str, value: int) -> None:
        self.cell(*values).set(value)

    def _points(self) -> list[tuple[tuple[str, ...], object]]:
        if self.collect is None:
            return super()._points()
        points = []
        for values, value in self.collect():
            cell = _ScalarCell()
            cell.value = value
            points.append((values, cell))
        return points


class _HistogramCell:
    __slots__ = ("lock", "limits", "counts", "sum")

    def __init__(self, limits: tuple[float, ...]) -> None:
        self.lock = threading.Lock()
        self.limits = limits
        self.counts = [0] * (len(limits) + 1)
        self.sum = 0.0

    def add(self, value: float) -> None:
        index = bisect.bisect_right(self.limits, value)  # TF: upper_bound over the limits
        with self.lock:
            self.counts[index] += 1
            self.sum += value

    def snapshot(self) -> tuple[list[int], float]:
        with self.lock:
            return list(self.counts), self.sum


class Histogram(_Metric):
    """A TF ``Sampler``: bucketed observations per label tuple, printed as a Prometheus histogram."""

    kind = "histogram"

    def __init__(self, tf_name: str, description: str, labels: Sequence[str], limits: Sequence[float]) -> None:
        super().__init__(tf_name, description, labels)
        limits = tuple(float(x) for x in limits)
        if limits and limits[-1] == sys.float_info.max:
            limits = limits[:-1]
        self.limits = limits  # the implicit last bucket is [limits[-1], DBL_MAX], printed as +Inf
        self._le = tuple(_number(x) for x in limits) + ("+Inf",)

    def _new_cell(self) -> _HistogramCell:
        return _HistogramCell(self.limits)

    def observe(self, *values: str, value: float) -> None:
        self.cell(*values).add(value)

    def snapshot(self, *values: str) -> tuple[list[int], float]:
        """Per-bucket counts (not cumulative) and the sum; zeros for an unseen label tuple."""
        cell = self._cells.get(values)
        if cell is None:
            return [0] * (len(self.limits) + 1), 0.0
        return cell.snapshot()

    def lines(self) -> list[str]:
        out = [f"# TYPE {self.name} histogram"]
        for values, cell in self._points():
            counts, total = cell.snapshot()
            labels = self._labels(values)
            prefix = f"{self.name}_bucket{{{labels}{',' if labels else ''}"
            cumulative = 0
            for le, count in zip(self._le, counts):
                cumulative += count
                out.append(f'{prefix}le="{le}"}} {cumulative}')
            out.append(f"{self.name}_sum{{{labels}}} {_number(total)}")
            out.append(f"{self.name}_count{{{labels}}} {cumulative}")
        return out


class Registry:
    """Metrics by TF name; the exposition lists them in TF name order, as TF's ``std::map`` does."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def add(self, metric: _Metric) -> _Metric:
        with self._lock:
            if metric.tf_name in self._metrics:
                raise ValueError(f"Cannot register 2 metrics with the same name: {metric.tf_name}")
            self._metrics[metric.tf_name] = metric
        return metric

    def get(self, tf_name: str) -> _Metric:
        return self._metrics[tf_name]

    def prometheus_text(self) -> str:
        """The whole page: lines joined by ``\\n`` plus a trailing newline (``GeneratePage``)."""
        lines: list[str] = []
        for tf_name in sorted(self._metrics):
            lines += self._metrics[tf_name].lines()
        return "\n".join(lines) + "\n"
