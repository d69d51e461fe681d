"""The shadow's comparison rules (modelserver/shadow_compare.py) and settings (model_settings.py)."""

from __future__ import annotations

import json
import math

import numpy as np

from modelserver.model_settings import ShadowSettings, parse_model_settings
from modelserver.shadow_compare import compare, differing, significant


def test_a_value_differs_only_when_both_errors_exceed_their_tolerances() -> None:
    reference = np.array([0.3, 1e-9, 0.0, 100.0, np.nan, 1.0], dtype=np.float32)
    other = np.array([0.3 + 1e-7, 1e-3, 0.0, 100.001, np.nan, np.nan], dtype=np.float32)
    # 1e-7 on 0.3: abs error below atol; 1e-3 on 1e-9: both over; 0.001 on 100: rel 1e-5 not over 1e-4
    assert differing(reference, other, atol=1e-5, rtol=1e-4).tolist() == [False, True, False, False, False, True]
    assert differing(reference, other.astype(np.float64), 1e-5, 1e-5) is None   # another dtype
    assert differing(np.array([b"a", b"b"], dtype=object), np.array([b"a", b"c"], dtype=object),
                     1e-5, 1e-5).tolist() == [False, True]


def _differs(reference: float, other: float, atol: float, rtol: float) -> bool:
    """The rule of one value, in plain Python: the definition the arrays are checked against."""
    if math.isnan(reference) or math.isnan(other):
        return math.isnan(reference) != math.isnan(other)
    if reference == other:
        return False
    error = abs(other - reference)
    if math.isinf(error):
        return True
    return error > atol and (reference == 0 or error / abs(reference) > rtol)


def test_whole_tensors_follow_the_rule_of_one_value() -> None:
    """Random answers seeded with NaNs, infinities, zeros and differences at and around the
    tolerances, in float16/32/64: counts, rows and the within-tolerance shortcut (a candidate
    whose every error is at most atol is taken as equal without the per-value masks) agree with
    the plain-Python rule."""
    rng = np.random.default_rng(15)
    specials = [np.nan, np.inf, -np.inf, 0.0]
    for trial in range(3000):
        dtype = (np.float16, np.float32, np.float64)[trial % 3]
        shape = [(6, 4), (5,), (3, 2, 2), (1, 3)][trial % 4]
        primary = rng.random(shape).astype(dtype)
        flat = primary.reshape(-1)
        if trial % 5 == 0:
            flat[rng.integers(flat.size)] = specials[trial % 4]
        candidate = primary.copy()
        step = [0.0, 1e-7, 1e-5, 1e-3, 0.5][trial % 5]
        candidate.reshape(-1)[rng.integers(flat.size, size=2)] += dtype(step)
        if trial % 7 == 0:
            candidate.reshape(-1)[rng.integers(flat.size)] = specials[(trial // 7) % 4]
        atol, rtol = [(1e-5, 1e-5), (1e-4, 1e-3), (0.0, 0.0), (1e-2, 0.0)][trial % 4]
        expected = [_differs(float(r), float(o), atol, rtol) for r, o in zip(primary.reshape(-1), candidate.reshape(-1))]
        assert differing(primary, candidate, atol, rtol).reshape(-1).tolist() == expected
        diff = compare({"y": primary}, {"y": primary.copy()}, {"y": candidate}, atol, rtol, topk=2)["y"]
        assert diff.raw_values == sum(expected) and diff.noise_values == 0 and diff.noise_rows == 0
        rows = np.array(expected).reshape(shape[0], -1).any(axis=1)
        assert diff.raw_rows == np.nonzero(rows)[0].tolist()


def test_rows_top1_and_topk_with_noise() -> None:
    primary = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]], dtype=np.float32)
    candidate = primary.copy()
    candidate[1] = [0.8, 0.05, 0.15]            # top class changed, top-2 half the same
    candidate[2] += 1e-7                        # within tolerance
    secondary = primary.copy()
    secondary[3] = [0.59, 0.31, 0.1]            # noise, same top class
    diffs = compare({"p": primary}, {"p": secondary}, {"p": candidate}, 1e-5, 1e-5, topk=2)
    diff = diffs["p"]
    assert diff.rows == 4 and diff.classifier
    assert diff.raw_rows == [1] and diff.top1_raw == [1]
    assert diff.noise_rows == 1 and diff.top1_noise == 0
    assert diff.topk_raw == 3.5 and diff.topk_noise == 4.0
    # k as many as the classes: every answer's top k are all of them
    every = compare({"p": primary}, {"p": secondary}, {"p": candidate}, 1e-5, 1e-5, topk=5)["p"]
    assert every.top1_raw == [1] and every.topk_raw == 4.0 and every.topk_noise == 4.0
    # within tolerance everywhere: the shortcut reports no difference and no largest error
    close = compare({"p": primary}, None, {"p": primary + np.float32(1e-7)}, 1e-5, 1e-5, topk=2)["p"]
    assert (close.raw_values, close.raw_rows, close.max_abs, close.top1_raw) == (0, [], 0.0, [])
    assert close.topk_raw == 4.0 and close.topk_noise == 4.0


def test_a_missing_or_reshaped_output_differs_everywhere() -> None:
    primary = {"y": np.ones((3, 1), np.float32), "z": np.zeros(3, np.int64)}
    diffs = compare(primary, None, {"y": np.ones((3, 2), np.float32)}, 1e-5, 1e-5, topk=5)
    assert diffs["y"].raw_rows == [0, 1, 2] and diffs["z"].raw_rows == [0, 1, 2]
    assert not diffs["y"].classifier


def test_noise_cancels_a_difference_the_primary_has_with_itself() -> None:
    assert significant(50, 0, 1000)                 # 5 % vs no noise
    assert not significant(980, 975, 1000)          # a nondeterministic model: as noisy as different
    assert not significant(0, 0, 1000)
    assert significant(600, 300, 1000)              # differs beyond its noise
    assert not significant(1, 0, 1_000_000)         # under the absolute threshold


def test_shadow_settings_are_checked_with_their_key_paths() -> None:
    doc = {"models": {"m": {"shadow": {"version": 2, "sample": 5}}}}
    settings, errors = parse_model_settings(doc)
    assert errors == [] and settings["m"].shadow == ShadowSettings(version=2, sample=5.0)
    assert settings["m"].candidates() == {2}
    bad = {"models": {"m": {"shadow": {"version": "x", "sample": 0, "atol": -1, "tol": 1}}}}
    _, errors = parse_model_settings(bad)
    assert [error.split(":")[0] for error in errors] == [
        "models.m.shadow.tol", "models.m.shadow.version", "models.m.shadow.sample", "models.m.shadow.atol"]


def test_node_reports_sum_into_one() -> None:
    from modelserver.shadow import _Run, _TensorTotals, merge

    reports = []
    for node, (rows, flipped) in {"a": (100, 5), "b": (300, 15)}.items():
        run = _Run("m", ShadowSettings(version=3, sample=100.0))
        run.compared = rows // 20
        run.primary_versions = {1}
        run.tensors["scores"] = _TensorTotals(rows=rows, values=4 * rows, raw_rows=flipped, raw_values=4 * flipped,
                                              classifier_rows=rows, top1_raw=flipped, topk_raw=rows - flipped / 2,
                                              topk_noise=float(rows))
        reports.append({**run.report(), "node": node})
    merged = merge(reports)
    assert merged["nodes"] == ["a", "b"] and merged["requests"]["compared"] == 20
    top1 = merged["outputs"]["scores"]["classifier"]
    assert top1["rows"] == 400 and top1["top1_changed_percent"] == 5.0 and top1["regression"]
    assert merged["verdict"] == "differs" and merged["regressions"] == ["scores"]


def test_the_report_is_answered_to_loopback_peers_only() -> None:
    import asyncio
    import json

    from modelserver.handlers import RestApi
    from modelserver.manager import ModelManager
    from modelserver.rollout import Rollout
    from modelserver.runtimes import LoadOptions
    from modelserver.shadow import SHADOW_PATH, ShadowTap

    manager = ModelManager([], LoadOptions(), poll_wait_seconds=0, load_threads=1)
    api = RestApi(manager, executor=None, hooks=Rollout(ShadowTap(manager)))   # type: ignore[arg-type]
    for peer, status in (("127.0.0.1", 200), ("::1", 200), ("127.0.16.3", 200), ("10.0.0.7", 404), ("", 404)):
        response = asyncio.run(api.handle("GET", SHADOW_PATH, {}, b"", peer=peer))
        assert response.status == status, peer
        if status == 200:
            assert json.loads(response.body)["models"] == {}


def test_agreement_for_the_canary_guard(tmp_path) -> None:
    from types import SimpleNamespace

    from appliance import fleet
    from appliance.config import NodePaths, load_config
    from appliance.shadow import AgreementSource
    from modelserver.shadow import _Run, _TensorTotals

    paths = NodePaths(tmp_path)
    config = load_config(None, ["model.name=m"])
    store = fleet.Fleet.of_node(config, paths=paths)
    run = _Run("m", ShadowSettings(version=3))
    run.compared = 10
    run.tensors["scores"] = _TensorTotals(rows=200, values=800, raw_rows=12, noise_rows=2, classifier_rows=200,
                                          top1_raw=10, top1_noise=0, topk_raw=200.0, topk_noise=200.0)
    assert run.report()["agreement_percent"] == 95.0        # 10 of 200 inputs changed class
    store.write_object("shadow/10.0.0.1.json", json.dumps({"node": "10.0.0.1", "models": {"m": run.report()}}).encode())
    source = AgreementSource(paths)
    source._store = lambda: (store, config)
    assert source(SimpleNamespace(model="m", candidate=3)) == 0.95
    assert source(SimpleNamespace(model="m", candidate=4)) is None   # no shadow of that candidate


def test_report_text_and_refused_settings(tmp_path) -> None:
    import argparse

    import pytest

    from appliance import shadow
    from appliance.config import NodePaths
    from appliance.errors import ConfigError
    from modelserver.shadow import _Run, _TensorTotals, merge

    run = _Run("m", ShadowSettings(version=3, sample=100.0))
    run.compared, run.primary_versions, run.candidate_errors, run.last_error = 10, {1}, 1, "INVALID_ARGUMENT: boom"
    run.tensors["scores"] = _TensorTotals(rows=200, values=800, raw_rows=10, classifier_rows=200, top1_raw=10,
                                          topk_raw=195.0, topk_noise=200.0)
    run.cpu_seconds = 0.0012
    merged = merge([{**run.report(), "node": "10.0.0.1"}, {**run.report(), "node": "10.0.0.2"}])
    assert merged["cpu_seconds"] == 0.0024 and merged["requests"]["compared"] == 20   # the nodes' sums
    text = shadow.report_text(merged)
    assert "cost: 0.002 s of CPU on the comparing threads, 120 us per compared copy" in text
    assert "candidate version 3 vs 1 -- running" in text and "verdict: FAILS" in text
    assert "agreement 85.5% of inputs" in text                     # 95 % of rows, 9 in 10 requests without error
    assert "top-1 agreement 95.0% (changed 5.0%, noise 0.0%), top-5 overlap 97.5%  REGRESSION" in text
    assert "last candidate error: INVALID_ARGUMENT: boom" in text

    from appliance import runconfig
    from appliance.config import load_config

    runconfig.publish(NodePaths(tmp_path), load_config(None, ["model.name=m"]), None, [])
    args = argparse.Namespace(shadow_command="start", model="m", version=3, sample=0.0, atol=None, rtol=None,
                              topk=None, timeout=1.0)
    with pytest.raises(ConfigError, match="shadow.sample"):
        shadow.dispatch(args, NodePaths(tmp_path))
