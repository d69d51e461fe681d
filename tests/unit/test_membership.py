"""Membership -> EDS: who the serving nodes are, and the files Envoy reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from appliance import membership
from appliance.config import NodePaths, load_config
from appliance.errors import ConfigError
from tests.pem import FAKE_CA_OVERRIDES


def test_a_lone_serving_node_balances_over_itself() -> None:
    assert membership.members(load_config(None, ["node.address=127.0.0.9"])) == ["127.0.0.9"]
    assert membership.members(load_config(None, ["node.role=repo"])) == []


def test_static_members_and_dns_are_joined() -> None:
    config = load_config(None, ["cluster.members=127.0.0.2,127.0.0.3", "cluster.dns=localhost",
                                *FAKE_CA_OVERRIDES])
    found = membership.members(config)
    assert found[:2] == ["127.0.0.2", "127.0.0.3"] and "127.0.0.1" in found


def test_unresolvable_dns_gives_no_members_rather_than_failing() -> None:
    config = load_config(None, ["cluster.dns=no-such-host.invalid", *FAKE_CA_OVERRIDES])
    assert membership.members(config) == []


def test_a_node_with_peers_and_no_cluster_ca_sends_them_nothing_and_says_so() -> None:
    """Not a config error (a config of a release before inter-node mTLS must still start, for a
    rolling upgrade): the node serves through its own model server only."""
    alone = load_config(None, ["node.address=127.0.0.2", "cluster.members=127.0.0.2,127.0.0.3"])
    assert membership.peers_left_out(alone) == ["127.0.0.3"]
    for text in membership.eds_documents(alone, membership.members(alone)).values():
        [assignment] = yaml.safe_load(text)["resources"]
        [hosts] = [[e["endpoint"]["hostname"] for e in group["lb_endpoints"]]
                   for group in assignment["endpoints"]]
        assert hosts == ["127.0.0.2"]
    assert "cluster-ca" in membership.no_ca_warning(alone, ["127.0.0.3"])
    with_ca = load_config(None, ["node.address=127.0.0.2", "cluster.members=127.0.0.2,127.0.0.3",
                                 *FAKE_CA_OVERRIDES])
    assert membership.peers_left_out(with_ca) == []
    assert load_config(None, ["node.address=127.0.0.2", "cluster.members=127.0.0.2"]).cluster.members
    with pytest.raises(ConfigError) as err:
        load_config(None, [FAKE_CA_OVERRIDES[0]])
    assert [key for key, _ in err.value.problems] == ["cluster.ca.key"]
    with pytest.raises(ConfigError) as err:
        load_config(None, ["cluster.ca.cert=secret-not-a-pem"])
    assert "secret-not-a-pem" not in str(err.value)


@pytest.mark.parametrize("bad", ["cluster.members=node-a", "cluster.members=127.0.0.2,127.0.0.2",
                                 "cluster.dns=bad_name!"])
def test_bad_membership_values_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [bad])
    assert err.value.problems[0][0] == bad.split("=")[0]


def test_eds_files_reach_this_node_on_loopback_and_peers_over_mtls(tmp_path: Path) -> None:
    """This node's own model server on 127.0.0.1 (plain, health-checked on its REST port); a
    peer on its internode listener, marked for the mTLS transport socket; each named by node."""
    config = load_config(None, ["node.address=127.0.0.2", "cluster.members=127.0.0.2,127.0.0.3",
                                "serving.rest.port=18501", "serving.grpc.port=18500",
                                "cluster.port=17443", *FAKE_CA_OVERRIDES])
    paths = NodePaths(tmp_path)
    changed = membership.write_endpoints(config, paths)
    assert sorted(p.name for p in changed) == ["eds_model_server_grpc.yaml", "eds_model_server_rest.yaml"]
    grpc = yaml.safe_load(membership.eds_path(paths, "model_server_grpc").read_text())
    (assignment,) = grpc["resources"]
    assert assignment["cluster_name"] == "model_server_grpc"
    local, peer = assignment["endpoints"][0]["lb_endpoints"]
    assert local == {"endpoint": {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 18500}},
        "hostname": "127.0.0.2", "health_check_config": {"port_value": 18501}}}
    assert peer == {"endpoint": {
        "address": {"socket_address": {"address": "127.0.0.3", "port_value": 17443}},
        "hostname": "127.0.0.3"}, "metadata": {"filter_metadata": membership.INTERNODE_MATCH}}
    assert membership.write_endpoints(config, paths) == []          # unchanged: not rewritten
    empty = membership.eds_documents(load_config(None, ["node.role=repo"]), [])
    assert yaml.safe_load(empty["model_server_rest"])["resources"][0]["endpoints"] == []


@pytest.mark.parametrize("rate", ["rate.node=50", "rate.cluster=90"])
def test_a_membership_change_renders_only_endpoints_and_never_a_listener(tmp_path: Path, rate: str) -> None:
    """A member joining or leaving rewrites the EDS files (and, for rate.cluster, the routes'
    bucket), nothing else: a changed listener, route or cluster file is validated first by
    ``envoy --mode validate`` (about a second of CPU), which held a members edit back (the
    member count in a comment of lds.yaml did that, on every node at once)."""
    from appliance.render import render_all

    config = load_config(None, ["node.address=127.0.0.2", "cluster.members=127.0.0.2,127.0.0.3",
                                "ip.allow=10.0.0.0/8", rate, *FAKE_CA_OVERRIDES])
    paths = NodePaths(tmp_path)
    three, four = ({f.path.name: f.content for f in render_all(config, paths, members)}
                   for members in (["127.0.0.2", "127.0.0.3", "127.0.0.4"],
                                   ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]))
    changed = sorted(name for name in three if three[name] != four[name])
    routes = ["rds.yaml"] if rate.startswith("rate.cluster") else []
    assert changed == sorted(["eds_model_server_grpc.yaml", "eds_model_server_rest.yaml", *routes])
