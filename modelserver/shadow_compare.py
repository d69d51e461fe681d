"""How two answers of a model compare: per output tensor, within tolerances, and for classifiers.

A shadow (:mod:`modelserver.shadow`) has three answers to each copied request: the primary's
(what the client got), the secondary's (the same version run again) and the candidate's. Two
comparisons are made, candidate vs primary ("raw") and secondary vs primary ("noise"), each with
the same rules:

* a float value differs only when its absolute error exceeds ``atol`` *and* its relative error
  exceeds ``rtol`` (Polygraphy's element-wise check): 1e-7 on 0.3 is no difference, 1e-3 on 1e-9
  is one; NaN equals NaN, an infinity only itself; any other dtype (ints, strings) must be equal;
* a tensor of another shape or dtype differs everywhere;
* a float tensor of rank 2 with at least two columns is read as a classifier's scores, one row
  per input: its top-1 class must agree, and its top-k classes overlap by some fraction.

Counting is per input row (the first dimension), since clients batch freely: "5 % of inputs
differ" must not depend on how many a request carried.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np


@dataclass
class TensorDiff:
    """One output tensor of one request: candidate (raw) and secondary (noise) vs the primary."""

    rows: int
    values: int
    raw_values: int = 0          # values differing beyond tolerance
    noise_values: int = 0
    raw_rows: list[int] = field(default_factory=list)   # rows holding such a value
    noise_rows: int = 0
    max_abs: float = 0.0         # of candidate vs primary
    max_rel: float = 0.0
    classifier: bool = False
    top1_raw: list[int] = field(default_factory=list)   # rows whose top class changed
    top1_noise: int = 0
    topk_raw: float = 0.0        # summed top-k overlap (1.0 per row when the same)
    topk_noise: float = 0.0


def differing(reference: np.ndarray, other: np.ndarray, atol: float, rtol: float) -> np.ndarray | None:
    """A boolean array of the values of ``other`` that differ from ``reference``; None when the
    shapes or dtypes do not match (everything differs)."""
    with np.errstate(all="ignore"):
        return _compared(reference, other, atol, rtol, shortcut=False)[0]


def _error(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``|other - reference|`` in float64 (a complex value's real part, as numpy casts it)."""
    if reference.dtype.kind == "f":     # one pass: no float64 copies of the inputs
        error = np.asarray(np.subtract(other, reference, dtype=np.float64))
    else:
        error = np.asarray(other.astype(np.float64) - reference.astype(np.float64))
    return np.abs(error, out=error)


def _beyond(error: np.ndarray, reference: np.ndarray, other: np.ndarray, atol: float,
            rtol: float) -> np.ndarray:
    """The values whose absolute ``error`` exceeds ``atol`` and relative error exceeds ``rtol``;
    NaN in one answer differs, NaN in both does not."""
    # error 0 over |reference| 0 is NaN, which exceeds nothing: no difference, as it should be;
    # an infinite error (a finite value against an infinite one) exceeds every tolerance
    relative = error / np.abs(reference.astype(np.float64, copy=False))
    out = (error > atol) & ((relative > rtol) | np.isinf(error))
    # A NaN's error is NaN, which exceeds nothing; a complex value's NaN may be in the imaginary part.
    if reference.dtype.kind == "c" or np.isnan(error).any():
        out |= np.isnan(reference) != np.isnan(other)
    return out


def _within(error: np.ndarray, atol: float) -> bool:
    """No value can differ: every absolute error at most ``atol`` (a NaN error is not)."""
    return error.size == 0 or bool(error.max() <= atol)


def is_classifier(tensor: np.ndarray) -> bool:
    return tensor.ndim == 2 and tensor.shape[1] >= 2 and tensor.dtype.kind == "f"


def _rows_of(mask: np.ndarray) -> np.ndarray:
    """Which rows (first dimension) hold a True."""
    if mask.ndim == 0:
        return np.nonzero(mask.reshape(1))[0]
    return np.nonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0]


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Summed over rows: the share of ``a``'s top-k classes also in ``b``'s."""
    k = a.shape[1]     # in numpy, not a loop over rows: a long Python loop would hold the GIL
    return float((a[:, :, None] == b[:, None, :]).any(axis=2).sum()) / k


def _compared(reference: np.ndarray, other: np.ndarray, atol: float, rtol: float,
              shortcut: bool = True) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(mask, error)``: :func:`differing`'s mask, None for a mismatch of shape or dtype, or
    ``False`` (no value differs) straight from the largest error when it is within ``atol``: a
    candidate within tolerance, the common case, costs four numpy calls, not a dozen. The float64
    error comes with it for inexact dtypes. numpy's floating-point warnings are the caller's to
    silence (:func:`compare` does, once for all the tensors of an answer)."""
    if reference.shape != other.shape or reference.dtype != other.dtype:
        return None, None
    if reference.dtype.kind not in "fc":     # not inexact: ints, bools, strings must be equal
        return np.asarray(reference != other).reshape(reference.shape), None
    error = _error(reference, other)
    if shortcut and reference.dtype.kind == "f" and _within(error, atol):   # a complex NaN may hide in its imaginary part
        return False, error
    return _beyond(error, reference, other, atol, rtol), error


def compare_tensor(primary: np.ndarray, secondary: np.ndarray | None, candidate: np.ndarray,
                   atol: float, rtol: float, topk: int) -> TensorDiff:
    """``secondary`` None: the secondary failed, no noise is known for this request."""
    rows = primary.shape[0] if primary.ndim else 1
    diff = TensorDiff(rows=rows, values=int(primary.size))
    raw, error = _compared(primary, candidate, atol, rtol)
    if raw is None:
        diff.raw_values, diff.raw_rows = diff.values, list(range(rows))
        diff.max_abs = diff.max_rel = float("inf")
    elif raw is not False:
        diff.raw_values = int(raw.sum())
        diff.raw_rows = _rows_of(raw).tolist()
        if diff.raw_values and error is not None:
            error = error[raw]
            scale = np.abs(primary.astype(np.float64, copy=False))[raw]
            diff.max_abs = float(np.nanmax(error, initial=0.0))
            diff.max_rel = float(np.nanmax(np.where(scale == 0, np.inf, error / scale), initial=0.0))
    if secondary is not None:
        noise, _ = _compared(primary, secondary, atol, rtol)
        if noise is None:
            diff.noise_values, diff.noise_rows = diff.values, rows
        elif noise is not False:
            diff.noise_values, diff.noise_rows = int(noise.sum()), int(len(_rows_of(noise)))
    if topk > 0 and is_classifier(primary) and raw is not None:
        diff.classifier = True
        k = min(topk, primary.shape[1])
        first = np.argmax(primary, axis=1)
        diff.top1_raw = np.nonzero(np.argmax(candidate, axis=1) != first)[0].tolist()
        noisy = secondary is not None and secondary.shape == primary.shape
        if noisy:
            diff.top1_noise = int(np.count_nonzero(np.argmax(secondary, axis=1) != first))
        if k == primary.shape[1]:       # the top k of k classes are all of them, in any answer
            diff.topk_raw = diff.topk_noise = float(rows)
        else:
            top = _topk(primary, k)
            diff.topk_raw = _overlap(top, _topk(candidate, k))
            diff.topk_noise = _overlap(top, _topk(secondary, k)) if noisy else float(rows)
    return diff


def compare(primary: Mapping[str, np.ndarray], secondary: Mapping[str, np.ndarray] | None,
            candidate: Mapping[str, np.ndarray], atol: float, rtol: float, topk: int) -> dict[str, TensorDiff]:
    """Every output tensor of the primary's answer compared; a tensor the candidate lacks
    differs everywhere (compared with an empty array of another shape)."""
    missing = np.empty((0,), dtype=np.uint8)
    with np.errstate(all="ignore"):    # inf - inf, 0 / 0: NaNs the rules handle, not warnings
        return {alias: compare_tensor(np.asarray(value),
                                      None if secondary is None else np.asarray(secondary.get(alias, missing)),
                                      np.asarray(candidate.get(alias, missing)), atol, rtol, topk)
                for alias, value in sorted(primary.items())}


def significant(raw: float, noise: float, total: float, relative: float = 0.2, absolute: float = 0.0003) -> bool:
    """Diffy's noise cancelling, on counts out of ``total``: a difference counts when the
    candidate differs from the primary more often than the primary differs from itself, by at
    least ``absolute`` of all rows and ``relative`` of the raw count. A model whose answers vary
    from run to run (dropout at inference) differs from itself as often as from the candidate."""
    if total <= 0 or raw <= noise:
        return False
    excess = raw - noise
    return excess / total >= absolute and excess / raw >= relative
