"""``model_platform: auto``'s parts that need no runtime: its settings, the agreement check, the
runtime cache (atomic entries, bounded, leftovers of a crash removed) and the report's line."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from modelserver.autoplatform import compare
from modelserver.core.choice import Candidate, Choice
from modelserver.model_settings import AutoSettings, parse_model_settings
from modelserver.runtimes.artefacts import TEMP_PREFIX, ArtefactCache, content_hash


def test_auto_settings_parse_with_per_output_tolerances() -> None:
    settings, errors = parse_model_settings({"models": {"resnet": {"auto": {
        "runtimes": ["tensorflow", "openvino"], "precisions": ["f32", "bf16"], "atol": 1e-3, "top1": False,
        "outputs": {"probabilities": {"atol": 0.02, "rtol": 0.1}}}}}})
    assert errors == []
    auto = settings["resnet"].auto
    assert auto.runtimes == ("tensorflow", "openvino") and auto.precisions == ("f32", "bf16") and not auto.top1
    assert auto.tolerance("probabilities") == (0.02, 0.1) and auto.tolerance("classes") == (1e-3, 1e-3)
    assert "auto.precisions=f32,bf16" in settings["resnet"].load_context()
    assert parse_model_settings({"models": {"plain": {}}})[0]["plain"].load_context() == ""


def test_auto_settings_errors_name_their_key() -> None:
    _, errors = parse_model_settings({"models": {"m": {"auto": {
        "runtimes": ["tensorflow", "mxnet"], "precisions": [], "rtol": -1, "outputs": {"y": {"atol": "x"}},
        "speed": 1}}}})
    assert errors == [
        "models.m.auto.speed: unknown key; valid: runtimes, precisions, atol, rtol, outputs, top1, ignore",
        "models.m.auto.runtimes: must be a non-empty list of tensorflow, onnx, openvino, not ['tensorflow', 'mxnet']",
        "models.m.auto.precisions: must be a non-empty list of f32, bf16, not []",
        "models.m.auto.outputs.y.atol: must be a number >= 0, not 'x'",
        "models.m.auto.rtol: must be a number >= 0, not -1",
    ]


def _tolerance(atol: float, rtol: float = 0.0):
    return lambda alias: (atol, rtol)


def test_compare_within_and_outside_tolerance() -> None:
    want = {"0/y": np.array([[1.0], [2.0]], np.float32)}
    assert compare(want, {"0/y": want["0/y"] + 1e-5}, _tolerance(1e-4), True)[2] == ""
    max_abs, max_rel, why = compare(want, {"0/y": want["0/y"] * 1.01}, _tolerance(1e-4), True)
    assert max_abs == pytest.approx(0.02, rel=1e-3) and max_rel == pytest.approx(0.01, rel=1e-3)
    assert why.startswith("output y: 2 of 2 values outside atol 0.0001 + rtol 0")
    assert "shape [1, 1]" in compare(want, {"0/y": want["0/y"][:1]}, _tolerance(1), True)[2]
    ints = {"0/classes": np.array([3, 4])}
    assert compare(ints, {"0/classes": np.array([3, 5])}, _tolerance(10), True)[2] == "output classes: 1 of 2 values " \
        "outside atol 0 + rtol 0 (at [1]: 5 vs 4)"


def test_top1_counts_only_classes_the_tolerance_tells_apart() -> None:
    want = {"0/probabilities": np.array([[0.50, 0.49, 0.01], [0.9, 0.05, 0.05]], np.float32)}
    near_tie = {"0/probabilities": np.array([[0.49, 0.50, 0.01], [0.9, 0.05, 0.05]], np.float32)}
    assert compare(want, near_tie, _tolerance(0.02), True)[2] == ""       # 0.01 apart: undecided at 0.02
    flipped = {"0/probabilities": np.array([[0.50, 0.49, 0.01], [0.45, 0.5, 0.05]], np.float32)}
    assert compare(want, flipped, _tolerance(0.5), True)[2] == "output probabilities: top class differs on 1 of 2 rows"
    assert compare(want, flipped, _tolerance(0.5), False)[2] == ""
    # classes, the arg-max of the probabilities, is left to the top-1 check when ignored.
    want["0/classes"], near_tie["0/classes"] = np.array([0, 0]), np.array([1, 0])
    assert compare(want, near_tie, _tolerance(0.02), True)[2].startswith("output classes: 1 of 2 values")
    assert compare(want, near_tie, _tolerance(0.02), True, ignore=("classes",))[2] == ""


def test_cache_entries_appear_whole_and_stay_bounded(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / f"{TEMP_PREFIX}crashed-123").mkdir()   # a fill a crash interrupted
    cache = ArtefactCache(str(tmp_path / "cache"), max_bytes=2500)
    assert not list((tmp_path / "cache").iterdir())
    with pytest.raises(RuntimeError):
        cache.put("broken", lambda d: (_ for _ in ()).throw(RuntimeError("fill failed")))
    assert cache.get("broken") is None and not list((tmp_path / "cache").iterdir())
    for i, key in enumerate(("a", "b", "c")):
        cache.put(key, lambda d: (d / "data").write_bytes(b"x" * 1000))
        os.utime(tmp_path / "cache" / key, (i, i))
    # "a" was least recently used: gone once "c" made the cache pass 2500 bytes; a hit refreshes.
    assert cache.get("a") is None and cache.get("b") is not None
    cache.put("d", lambda d: (d / "data").write_bytes(b"x" * 1000))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["b", "d"]


def test_content_hash_is_the_files_not_where_they_are(tmp_path: Path) -> None:
    for where in ("one", "two"):
        (tmp_path / where / "variables").mkdir(parents=True)
        (tmp_path / where / "saved_model.pb").write_bytes(b"graph")
        (tmp_path / where / "variables" / "v").write_bytes(b"weights")
    assert content_hash(str(tmp_path / "one")) == content_hash(str(tmp_path / "two"))
    (tmp_path / "two" / "variables" / "v").write_bytes(b"weightz")
    assert content_hash(str(tmp_path / "one")) != content_hash(str(tmp_path / "two"))


def test_the_choice_in_one_line() -> None:
    choice = Choice("openvino", "f32", "measured", [
        Candidate("tensorflow", "f32", "reference", seconds_per_pass=0.02, max_abs_diff=0.0, max_rel_diff=0.0),
        Candidate("openvino", "f32", "agrees", seconds_per_pass=0.01, max_abs_diff=1.5e-6, max_rel_diff=2e-5),
        Candidate("openvino", "bf16", "disagrees", "output y: ...", 0.005, 0.011, 0.077)], 2)
    assert choice.describe() == ("openvino f32 (measured); tensorflow f32: reference, 20.0 ms/pass; openvino f32: "
                                 "agrees, 10.0 ms/pass, max abs diff 1.5e-06, rel 2e-05; openvino bf16: disagrees, "
                                 "5.0 ms/pass, max abs diff 0.011, rel 0.077, output y: ...")
    assert Choice.from_json(choice.to_json()) == choice
    assert AutoSettings().tolerance("y") == (1e-4, 1e-3)


def test_status_prints_the_runtime_under_its_version() -> None:
    from appliance.node import NodeStatus, _runtime

    choice = Choice("tensorflow", "f32", "measured", [
        Candidate("tensorflow", "f32", "reference", seconds_per_pass=0.02),
        Candidate("openvino", "f32", "failed", "OpenVINO cannot convert ...")], 1)
    status = NodeStatus(root="/", role="serving", models={"m": [
        {"version": "1", "state": "AVAILABLE", "error": "", "note": "", "runtime": _runtime(choice)}]})
    lines = status.text().splitlines()
    assert lines[-1].strip() == ("runtime: tensorflow f32 (measured); tensorflow f32: reference, 20.0 ms/pass; "
                                 "openvino f32: failed, OpenVINO cannot convert ...")
    assert status.as_dict()["models"]["m"][0]["runtime"]["candidates"][1]["verdict"] == "failed"
