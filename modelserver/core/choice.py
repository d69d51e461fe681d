"""What serves a model version and why: the runtime ``model_platform: auto`` chose, with what it measured.

Standard library only: the model server fills it in (:mod:`modelserver.autoplatform`) and answers
it at ``GET /appliance/v1/runtimes``; the appliance's ``status``, ``models ls`` and the log viewer
read it back and print :meth:`Choice.describe`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Candidate:
    """One runtime and precision as measured: how fast, how far from the reference, why not."""

    runtime: str
    precision: str
    verdict: str = ""                 # reference | agrees | disagrees | failed | not measured
    reason: str = ""
    seconds_per_pass: float | None = None   # median time of one pass over the warmup set
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None

    @property
    def name(self) -> str:
        return f"{self.runtime} {self.precision}"


@dataclass
class Choice:
    """What serves a version and why."""

    platform: str
    precision: str
    how: str                           # measured | measured earlier | configured | only candidate | not measured: ...
    candidates: list[Candidate] = field(default_factory=list)
    warmup_records: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Choice":
        return cls(**{**doc, "candidates": [Candidate(**c) for c in doc.get("candidates", [])]})

    def describe(self) -> str:
        """One line: the choice, then each candidate's speed and difference (the log's, the CLI's)."""
        parts = [f"{self.platform} {self.precision} ({self.how})"]
        for c in self.candidates:
            if c.verdict in ("reference", "agrees", "disagrees") and c.seconds_per_pass is not None:
                detail = f"{c.seconds_per_pass * 1000:.1f} ms/pass"
                if c.max_abs_diff is not None and c.verdict != "reference":
                    detail += f", max abs diff {c.max_abs_diff:.2g}, rel {c.max_rel_diff:.2g}"
            else:
                detail = ""
            text = ", ".join(x for x in (c.verdict, detail, c.reason) if x)
            parts.append(f"{c.name}: {text}")
        return "; ".join(parts)
