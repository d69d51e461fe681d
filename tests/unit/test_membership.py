"""Membership -> EDS: who the serving nodes are, and the files Envoy reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from appliance import membership
from appliance.config import NodePaths, load_config
from appliance.errors import ConfigError


def test_a_lone_serving_node_balances_over_itself() -> None:
    assert membership.members(load_config(None, ["node.address=127.0.0.9"])) == ["127.0.0.9"]
    assert membership.members(load_config(None, ["node.role=repo"])) == []


def test_static_members_and_dns_are_joined() -> None:
    config = load_config(None, ["cluster.members=127.0.0.2,127.0.0.3", "cluster.dns=localhost"])
    found = membership.members(config)
    assert found[:2] == ["127.0.0.2", "127.0.0.3"] and "127.0.0.1" in found


def test_unresolvable_dns_gives_no_members_rather_than_failing() -> None:
    config = load_config(None, ["cluster.dns=no-such-host.invalid"])
    assert membership.members(config) == []


@pytest.mark.parametrize("bad", ["cluster.members=node-a", "cluster.members=127.0.0.2,127.0.0.2",
                                 "cluster.dns=bad_name!"])
def test_bad_membership_values_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [bad])
    assert err.value.problems[0][0] == bad.split("=")[0]


def test_eds_files_name_every_member_with_the_rest_health_port(tmp_path: Path) -> None:
    config = load_config(None, ["cluster.members=127.0.0.2,127.0.0.3", "serving.rest.port=18501",
                                "serving.grpc.port=18500"])
    paths = NodePaths(tmp_path)
    changed = membership.write_endpoints(config, paths)
    assert sorted(p.name for p in changed) == ["eds_model_server_grpc.yaml", "eds_model_server_rest.yaml"]
    grpc = yaml.safe_load(membership.eds_path(paths, "model_server_grpc").read_text())
    (assignment,) = grpc["resources"]
    assert assignment["cluster_name"] == "model_server_grpc"
    endpoints = [e["endpoint"] for e in assignment["endpoints"][0]["lb_endpoints"]]
    assert [(e["address"]["socket_address"]["address"], e["address"]["socket_address"]["port_value"],
             e["health_check_config"]["port_value"]) for e in endpoints] == [
        ("127.0.0.2", 18500, 18501), ("127.0.0.3", 18500, 18501)]
    assert membership.write_endpoints(config, paths) == []          # unchanged: not rewritten
    empty = membership.eds_documents(load_config(None, ["node.role=repo"]), [])
    assert yaml.safe_load(empty["model_server_rest"])["resources"][0]["endpoints"] == []
