"""A strict reader of Prometheus' text exposition format (0.0.4), for ``appliance capacity`` and
the tests.

Strict on purpose: a page that Prometheus would refuse must fail here too, with the line number.
Checked: metric and label names, quoting and escapes of label values, numbers, a ``# TYPE`` at
most once per family and before its samples, no sample line repeated, and for histograms that
buckets end with ``le="+Inf"``, are cumulative, and that ``_count`` equals the ``+Inf`` bucket.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")
_SUFFIXES = ("_bucket", "_sum", "_count")


class ParseError(ValueError):
    pass


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float

    def key(self) -> tuple[str, frozenset]:
        return self.name, frozenset(self.labels.items())


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], value)


def _number(text: str, where: str) -> float:
    if text in ("+Inf", "Inf"):
        return math.inf
    if text == "-Inf":
        return -math.inf
    if text == "NaN":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ParseError(f"{where}: {text!r} is not a number") from None


def _labels(text: str, where: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        match = _LABEL.match(text, pos)
        if match is None:
            raise ParseError(f"{where}: bad label at {text[pos:pos + 40]!r}")
        if match[1] in labels:
            raise ParseError(f"{where}: label {match[1]} given twice")
        labels[match[1]] = _unescape(match[2])
        pos = match.end()
        if pos < len(text):
            if text[pos] != ",":
                raise ParseError(f"{where}: expected ',' between labels")
            pos += 1
    return labels


def _family_of(name: str, types: dict[str, str]) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and types.get(name[:-len(suffix)]) in ("histogram", "summary"):
            return name[:-len(suffix)]
    return name


def parse(text: str) -> list[Sample]:
    """Every sample of a page; raises :class:`ParseError` on the first line Prometheus would refuse."""
    if text and not text.endswith("\n"):
        raise ParseError("the page does not end with a newline")
    types: dict[str, str] = {}
    seen_samples: set[str] = set()
    keys: set[tuple[str, frozenset]] = set()
    samples: list[Sample] = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"line {number}"
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 2 and parts[1] == "TYPE":
                if len(parts) != 4 or not _NAME.fullmatch(parts[2]) or parts[3] not in _TYPES:
                    raise ParseError(f"{where}: bad TYPE line {line!r}")
                if parts[2] in types:
                    raise ParseError(f"{where}: second TYPE for {parts[2]}")
                if parts[2] in seen_samples:
                    raise ParseError(f"{where}: TYPE for {parts[2]} after its samples")
                types[parts[2]] = parts[3]
            continue
        match = _NAME.match(line)
        if match is None:
            raise ParseError(f"{where}: no metric name in {line[:80]!r}")
        name, rest = match[0], line[match.end():]
        labels: dict[str, str] = {}
        if rest.startswith("{"):
            end = _closing_brace(rest, where)
            labels = _labels(rest[1:end], where)
            rest = rest[end + 1:]
        fields = rest.split()
        if not rest.startswith(" ") or len(fields) not in (1, 2):
            raise ParseError(f"{where}: expected a value (and a timestamp) after the labels")
        sample = Sample(name, labels, _number(fields[0], where))
        if sample.key() in keys:
            raise ParseError(f"{where}: sample {name}{labels} repeated")
        keys.add(sample.key())
        seen_samples.add(_family_of(name, types))
        samples.append(sample)
    _check_histograms(samples, types)
    return samples


def _closing_brace(rest: str, where: str) -> int:
    quoted, escaped = False, False
    for index, char in enumerate(rest):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "}" and not quoted:
            return index
    raise ParseError(f"{where}: unclosed label set")


def _check_histograms(samples: list[Sample], types: dict[str, str]) -> None:
    buckets: dict[tuple[str, frozenset], list[tuple[float, float]]] = defaultdict(list)
    counts: dict[tuple[str, frozenset], float] = {}
    for s in samples:
        family = _family_of(s.name, types)
        if types.get(family) != "histogram":
            continue
        if s.name == family + "_bucket":
            if "le" not in s.labels:
                raise ParseError(f"{s.name}: a bucket without le")
            rest = frozenset((k, v) for k, v in s.labels.items() if k != "le")
            buckets[(family, rest)].append((_number(s.labels["le"], s.name), s.value))
        elif s.name == family + "_count":
            counts[(family, frozenset(s.labels.items()))] = s.value
    for key, series in buckets.items():
        series.sort()
        if series[-1][0] != math.inf:
            raise ParseError(f"{key[0]}: buckets do not end with le=\"+Inf\"")
        values = [v for _, v in series]
        if values != sorted(values):
            raise ParseError(f"{key[0]}: buckets are not cumulative")
        if key in counts and counts[key] != values[-1]:
            raise ParseError(f"{key[0]}: _count {counts[key]} is not the +Inf bucket {values[-1]}")


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples that carry ``labels`` (and maybe more)."""
    wanted = set(labels.items())
    return sum(s.value for s in samples if s.name == name and wanted <= set(s.labels.items()))
