"""Canary rollouts: the split (modelserver.rollout), the settings keys, the cluster settings'
layering over a node's own overrides (appliance.fleet) and the guards (appliance.rollout)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import fleet
from appliance.config import NodePaths, load_config
from appliance.errors import ConfigError
from modelserver import rollout
from modelserver.model_settings import parse_model_settings


def test_the_split_sends_the_share_to_the_candidate_and_the_rest_to_the_newest_other() -> None:
    served = {1: "v1", 2: "v2", 3: "v3"}
    picks = [rollout.choose((2, 10.0), served) for _ in range(20000)]
    assert set(picks) == {2, 3}
    assert 0.08 < picks.count(2) / len(picks) < 0.12
    assert rollout.choose(None, served) is None
    assert rollout.choose((4, 50.0), served) == 3          # the candidate is not served (yet)
    assert rollout.choose((2, 100.0), {2: "v2"}) == 2       # nothing else served


def test_a_canary_key_decides_alone_and_stays_in_as_the_share_grows() -> None:
    served = {1: "v1", 2: "v2"}
    keys = [f"user-{i}" for i in range(2000)]
    inside = {}
    for percent in (5.0, 25.0):
        inside[percent] = set()
        for key in keys:
            rollout.set_split_key(key)
            versions = {rollout.choose((2, percent), served) for _ in range(3)}
            assert len(versions) == 1
            if versions == {2}:
                inside[percent].add(key)
        rollout.set_split_key(None)
    assert inside[5.0] <= inside[25.0]
    assert 0.03 < len(inside[5.0]) / len(keys) < 0.07
    assert all(rollout.slot(k) < 5.0 for k in inside[5.0])


def test_counts_and_p99() -> None:
    counts = rollout.Counts()
    for ms in [1.0] * 98 + [50.0, 60.0]:
        counts.record("m", 1, ms / 1000, ok=True)
    counts.record("m", 2, 0.001, ok=False)
    snap = counts.snapshot()
    assert snap["m"]["1"]["requests"] == 100 and snap["m"]["2"]["errors"] == 1
    assert 45 < rollout.p99_ms(snap["m"]["1"]["buckets"]) < 65


def test_model_server_settings_read_the_rollout() -> None:
    settings, errors = parse_model_settings({"models": {"m": {"rollout": {"version": 2, "percent": 10}}}})
    assert not errors and settings["m"].rollout == (2, 10.0)
    _, errors = parse_model_settings({"models": {"m": {"rollout": {"version": 0, "percent": 101}}}})
    assert errors


def test_rollout_keys_are_checked_against_the_versions_served() -> None:
    config = load_config(None, ["model.name=m", "models.m.versions=specific:1,2",
                                "models.m.rollout.version=2", "models.m.rollout.percent=10"])
    assert config.model.settings["m"].runtime_settings()["rollout"] == {"version": 2, "percent": 10.0}
    assert "rollout" not in load_config(None, ["model.name=m"]).model.settings["m"].runtime_settings()
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["model.name=m", "models.m.versions=specific:1", "models.m.rollout.version=2",
                           "models.m.rollout.percent=120"])
    assert {key for key, _ in exc.value.problems} == {"models.m.rollout.version", "models.m.rollout.percent"}


def test_cluster_settings_layer_over_the_nodes_own_and_replace_their_previous_revision(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    first = fleet.FleetSettings(1, {"m": {"rollout.version": 2, "rollout.percent": 5},
                                    "other": {"warmup": False}})
    fleet.record_applied(paths, first)
    own = ["http.port=8081", "models.m.rollout.percent=50"]
    assert fleet.layered(paths, own, ["m"]) == [
        "http.port=8081", "models.m.rollout.percent=5", "models.m.rollout.version=2"]
    recorded = fleet.layered(paths, own, ["m"])
    second = fleet.FleetSettings(2, {"m": {"versions": "specific:1"}})
    # The keys of the previous revision are the cluster's: dropped, not kept as the node's own.
    assert fleet.layered(paths, recorded, ["m"], current=second) == [
        "http.port=8081", "models.m.versions=specific:1"]
    assert fleet.applied(paths) == first
    assert fleet.FleetSettings.from_json(second.to_json(), "x") == second
