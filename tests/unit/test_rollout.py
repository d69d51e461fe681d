"""Canary rollouts: the split (modelserver.rollout), the settings keys, the cluster settings'
layering over a node's own overrides (appliance.fleet) and the guards (appliance.rollout)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance import fleet
from appliance.config import NodePaths, load_config
from appliance.errors import ApplianceError, ConfigError
from modelserver import rollout
from modelserver.model_settings import parse_model_settings


def test_the_split_sends_the_share_to_the_candidate_and_the_rest_to_the_stable() -> None:
    served = {1: "v1", 2: "v2", 3: "v3"}
    picks = [rollout.choose((3, 10.0), served, 2) for _ in range(20000)]
    assert set(picks) == {2, 3}          # never 1: the stable is what the policy serves, not the newest
    assert 0.08 < picks.count(3) / len(picks) < 0.12
    assert rollout.choose(None, served, 3) is None
    assert rollout.choose((4, 50.0), served, 3) == 3          # the candidate is not served (yet)
    assert rollout.choose((2, 100.0), {2: "v2"}, None) == 2   # nothing else served


def test_a_rollouts_candidate_is_loaded_on_top_of_the_policy_like_a_shadows() -> None:
    settings, errors = parse_model_settings({"models": {"m": {"rollout": {"version": 3, "percent": 10},
                                                              "shadow": {"version": 4}}}})
    assert not errors and settings["m"].candidates() == {3, 4}
    config = load_config(None, ["model.name=m", "models.m.versions=specific:1",
                                "models.m.rollout.version=2", "models.m.rollout.percent=10"])
    assert config.model.settings["m"].runtime_settings()["rollout"] == {"version": 2, "percent": 10.0}


def test_a_canary_key_decides_alone_and_stays_in_as_the_share_grows() -> None:
    served = {1: "v1", 2: "v2"}
    keys = [f"user-{i}" for i in range(2000)]
    inside = {}
    for percent in (5.0, 25.0):
        inside[percent] = set()
        for key in keys:
            rollout.set_request_slot(rollout.request_slot(key))
            versions = {rollout.choose((2, percent), served, 1) for _ in range(3)}
            assert len(versions) == 1
            if versions == {2}:
                inside[percent].add(key)
        rollout.set_request_slot(None)
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


def test_rollout_keys_are_checked() -> None:
    assert "rollout" not in load_config(None, ["model.name=m"]).model.settings["m"].runtime_settings()
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["model.name=m", "models.m.rollout.version=-2", "models.m.rollout.percent=120"])
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


# ----------------------------------------------------------------------------- the controller
# Its state and the node reports live in a real local repository directory (LocalSource).


class Nodes:
    """The serving nodes' reports, as their agents write them (counts of a real Counts)."""

    def __init__(self, store: fleet.Fleet, names: tuple[str, ...] = ("10.0.0.1", "10.0.0.2")) -> None:
        self.store = store
        self.counts = {name: rollout.Counts() for name in names}

    def serve(self, version: int, requests: int, errors: int = 0, ms: float = 1.0) -> None:
        for i in range(requests):
            node = list(self.counts)[i % len(self.counts)]
            self.counts[node].record("m", version, ms / 1000, ok=i >= errors)
        self.report()

    def report(self) -> None:
        """What each agent writes: the revision it applied (every node follows at once here)."""
        revision = self.store.read().revision
        for name, counts in self.counts.items():
            self.store.write_object(fleet.node_report_key(name), json.dumps(
                {"node": name, "role": "serving", "revision": revision, "counts": counts.snapshot()}).encode())

    def applied(self, canary, config) -> None:
        """Every node applied the last push and reported it; the controller took a look."""
        self.report()
        canary.tick(self.store, config)


@pytest.fixture
def repo(tmp_path: Path):
    from appliance import rollout as canary
    from appliance.sources.local import LocalSource

    store = fleet.Fleet(LocalSource(tmp_path))
    config = load_config(None, ["model.name=m", "node.address=10.0.0.1"])
    nodes = Nodes(store)
    nodes.report()
    return canary, store, config, nodes


def _start(repo, **guards):
    canary, store, config, nodes = repo
    settings = {"min_seconds": 0.0, "min_requests": 10, **guards}
    nodes.serve(1, 1000, errors=200)     # before the rollout: counts for no step
    started = canary.start(store, config, "m", 2, 1, [10, 50, 100], canary.Guards(**settings))
    nodes.applied(canary, config)
    return started


def test_a_rollout_holds_without_traffic_and_steps_on_when_it_comes(repo) -> None:
    canary, store, config, nodes = repo
    _start(repo)
    assert store.read().model("m") == {"rollout.version": 2, "rollout.percent": 10.0}   # versions untouched
    for _ in range(3):
        canary.tick(store, config)
    state = canary.read(store, "m")
    assert state.state == "holding" and "0 of the 10 requests" in state.reason
    nodes.serve(1, 90)
    nodes.serve(2, 10)
    canary.tick(store, config)
    state = canary.read(store, "m")
    assert (state.state, state.step) == ("running", 1)
    assert store.read().model("m")["rollout.percent"] == 50.0
    for _ in range(2):      # 50 %, then 100 %: promoted; latest serves it once no rollout names it
        nodes.applied(canary, config)
        nodes.serve(1, 20)
        nodes.serve(2, 20)
        canary.tick(store, config)
    state = canary.read(store, "m")
    assert state.state == "promoted"
    assert store.read().model("m") == {}
    assert [r.id for r in canary.history(store)] == [state.id]


def test_errors_on_the_candidate_roll_back_and_say_why(repo) -> None:
    canary, store, config, nodes = repo
    store.push("m", {"versions": "specific:1"})
    _start(repo)
    before = store.read().revision
    nodes.serve(1, 100, errors=1)
    nodes.serve(2, 5, errors=5)
    canary.tick(store, config)
    assert canary.read(store, "m").state == "holding"     # 5 requests: too few to judge
    nodes.serve(2, 10, errors=1)
    canary.tick(store, config)
    state = canary.read(store, "m")
    assert state.state == "rolled_back"
    assert state.reason.startswith("error rate 40.0% on v2 vs 1.0% on v1")
    settings = store.read()
    assert settings.model("m") == {"versions": "specific:1"} and settings.revision == before + 1
    assert "error rate" in settings.why
    assert any(line.startswith("state: rolled_back -- error rate") for line in canary.status_lines(state))


def test_a_slower_candidate_is_rolled_back_by_the_latency_guard_only_in_a_shared_window(repo) -> None:
    canary, store, config, nodes = repo
    _start(repo, p99_floor_ms=1.0)
    nodes.serve(1, 50, ms=10.0)
    nodes.serve(2, 10, ms=13.0)      # x1.3: passes; the step ends
    canary.tick(store, config)
    assert canary.read(store, "m").step == 1
    nodes.applied(canary, config)
    nodes.serve(1, 50, ms=10.0)
    nodes.serve(2, 20, ms=25.0)
    canary.tick(store, config)
    state = canary.read(store, "m")
    assert state.state == "rolled_back" and state.reason.startswith("p99 latency")
    assert store.read().model("m") == {"versions": "specific:1"}    # latest would serve v2 now
    assert "versions pinned to specific:1 on every node (the policy latest would serve v2)" in state.events[-1]["what"]


def test_a_candidate_twice_as_slow_in_the_median_is_rolled_back_though_stalls_hide_it_in_the_p99(repo) -> None:
    """A busy node stalls 2 % of every version's requests: both p99s are the stall's, yet the
    candidate's median is twice the stable's."""
    canary, store, config, nodes = repo
    _start(repo)
    for version, ms, requests in ((1, 6.0, 300), (2, 12.0, 100)):
        nodes.serve(version, requests - requests // 50, ms=ms)
        nodes.serve(version, requests // 50, ms=40.0)
    canary.tick(store, config)
    state = canary.read(store, "m")
    assert state.state == "rolled_back", state.reason
    assert state.reason.startswith("p50 latency 12.") and "vs 6." in state.reason and "(allowed: x1.5)" in state.reason
    window = state.window
    assert window["candidate"]["p99_ms"] == window["stable"]["p99_ms"]


def test_a_candidate_as_fast_passes_the_latency_guards(repo) -> None:
    canary, store, config, nodes = repo
    _start(repo, max_p50_ratio=1.2)
    nodes.serve(1, 300, ms=6.0)
    nodes.serve(2, 100, ms=6.5)
    canary.tick(store, config)
    state = canary.read(store, "m")
    assert state.state == "running" and state.step == 1, state.reason
    assert any("p50 6." in e["what"] for e in state.events)


def test_pause_resume_and_abort(repo) -> None:
    canary, store, config, nodes = repo
    _start(repo)
    canary.pause(store, "m")
    nodes.serve(1, 50)
    nodes.serve(2, 50)
    canary.tick(store, config)
    assert canary.read(store, "m").state == "paused" and canary.read(store, "m").step == 0
    with pytest.raises(ApplianceError):
        _start(repo)                   # one rollout of a model at a time
    canary.resume(store, "m")
    canary.abort(store, "m")
    state = canary.read(store, "m")
    assert state.state == "aborted" and store.read().model("m") == {"versions": "specific:1"}
    assert [e["what"].split(" ")[0] for e in state.events] == ["started:", "holding", "paused", "resumed", "aborted",
                                                               "versions"]


@pytest.mark.parametrize("policy, stable, candidate, promoted, rolled_back", [
    ("latest", 1, 2, "latest", "specific:1"),
    ("latest:2", 3, 2, "specific:2", "latest:2"),           # back to an older version
    ("specific:1", 1, 2, "specific:2", "specific:1"),
    ("specific:1,2", 1, 2, "specific:1,2", "specific:1"),
    ("all", 1, 2, "all", "specific:1"),
])
def test_the_end_of_a_rollout_pins_only_what_the_policy_would_not_serve(repo, policy, stable, candidate,
                                                                         promoted, rolled_back) -> None:
    canary, store, config, _ = repo
    for end, expected in (("promote", promoted), ("abort", rolled_back)):
        store.push("m", {"versions": policy})
        state = canary.start(store, config, "m", candidate, stable)
        if end == "promote":
            canary._promote(store, state)
            canary._write(store, state)
        else:
            canary.abort(store, "m")
        assert store.read().model("m") == {"versions": expected}
        state.state = "promoted"            # the next round may start
        canary._write(store, state)
