"""The node's scrape page pieces without processes: labels, the strict reader, the token, the
logviewer route's auth, file_sd targets and the capacity arithmetic."""

from __future__ import annotations

import math
import stat

import pytest

from appliance import capacity, nodemetrics, promtext, scrapeconfig
from appliance.config import NodePaths, load_config
from tests.unit.test_logviewer_app import Site, site  # noqa: F401 - the fixture


def test_with_label_adds_the_label_first_to_every_sample() -> None:
    page = ('# TYPE a counter\na 1\nb{x="1"} 2\nc{} 3\nd{y="}, z=\\"q\\""} 4 1700000000\n'
            '# HELP e with {braces}\n')
    assert nodemetrics.with_label(page, "node", 'n"1') == (
        '# TYPE a counter\na{node="n\\"1"} 1\nb{node="n\\"1",x="1"} 2\nc{node="n\\"1"} 3\n'
        'd{node="n\\"1",y="}, z=\\"q\\""} 4 1700000000\n# HELP e with {braces}\n')
    assert [s.labels["node"] for s in promtext.parse(nodemetrics.with_label(page, "node", "x"))] == ["x"] * 4


@pytest.mark.parametrize("page", [
    "a 1",                                     # no trailing newline
    "a{x=1} 1\n",                              # unquoted value
    'a{x="1",x="2"} 1\n',                      # label twice
    "a 1\na 2\n",                              # repeated sample
    "a 1\n# TYPE a counter\n",                 # TYPE after its samples
    "a one\n",                                 # not a number
    '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_count 1\n',   # not cumulative
    '# TYPE h histogram\nh_bucket{le="1"} 1\nh_count 1\n',                            # no +Inf
    '# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_count 3\n',                        # count != +Inf
])
def test_the_reader_refuses_what_prometheus_refuses(page: str) -> None:
    with pytest.raises(promtext.ParseError):
        promtext.parse(page)


def test_the_token_is_generated_once_private_and_config_wins(tmp_path) -> None:
    paths = NodePaths(tmp_path)
    config = load_config(None)
    token = nodemetrics.scrape_token(config, paths)
    assert len(token) >= 32 and nodemetrics.scrape_token(config, paths) == token
    assert stat.S_IMODE(nodemetrics.token_file(paths).stat().st_mode) == 0o600
    assert nodemetrics.authorized(config, paths, f"Bearer {token}")
    assert not nodemetrics.authorized(config, paths, f"Basic {token}")
    assert not nodemetrics.authorized(config, paths, "Bearer ")
    shared = load_config(None, ["metrics.token=" + "s" * 32])
    assert nodemetrics.authorized(shared, paths, "Bearer " + "s" * 32)
    assert not nodemetrics.authorized(shared, paths, f"Bearer {token}")
    with pytest.raises(Exception, match="at least 16"):
        load_config(None, ["metrics.token=short"])


def test_the_route_needs_the_token_or_a_login(site: Site) -> None:
    fresh = site.app.test_client()
    resp = fresh.get("/metrics")
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert fresh.get("/metrics", headers={"Authorization": "Bearer " + "x" * 43}).status_code == 401
    token = nodemetrics.token_file(site.paths).read_text().strip()
    assert token not in resp.get_data(as_text=True)
    resp = fresh.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200 and resp.content_type.startswith("text/plain; version=0.0.4")
    samples = promtext.parse(resp.get_data(as_text=True))
    assert promtext.total(samples, "appliance_node_info", role="serving") == 1
    assert all("node" in s.labels for s in samples)
    site.login()
    assert site.client.get("/metrics").status_code == 200


def test_file_sd_targets_are_the_members_and_a_node_that_is_none() -> None:
    repo = load_config(None, ["node.role=repo", "node.address=10.0.0.9", "logviewer.port=9100"])
    assert scrapeconfig.targets(repo, ["10.0.0.1", "fd00::2"]) == [
        {"targets": ["10.0.0.1:9100", "[fd00::2]:9100"], "labels": {"role": "serving"}},
        {"targets": ["10.0.0.9:9100"], "labels": {"role": "repo"}}]
    member = load_config(None, ["node.address=10.0.0.1"])
    assert scrapeconfig.targets(member, ["10.0.0.1"]) == [
        {"targets": ["10.0.0.1:8090"], "labels": {"role": "serving"}}]


def test_quantile_interpolates_like_histogram_quantile() -> None:
    buckets = {10.0: 50.0, 20.0: 90.0, 40.0: 100.0, math.inf: 100.0}
    assert capacity.quantile(0.5, buckets) == 10.0
    assert capacity.quantile(0.7, buckets) == pytest.approx(15.0)
    assert capacity.quantile(0.95, buckets) == pytest.approx(30.0)
    assert capacity.quantile(0.99, {10.0: 0.0, math.inf: 0.0}) is None


def _loads(*loads: float) -> list[capacity.NodeLoad]:
    return [capacity.NodeLoad(f"10.0.0.{i}", rate=100.0, load=load, can_take=100.0 / load if load else None)
            for i, load in enumerate(loads, 1)]


def test_recommendations() -> None:
    config = load_config(None)
    past = capacity.recommend(config, _loads(1.5, 0.9))
    assert (past.action, past.nodes, past.target_nodes) == ("add", 1, 3)
    assert capacity.recommend(config, _loads(5.0, 5.0)).nodes == 2     # at most doubling
    assert capacity.recommend(config, _loads(0.6, 0.7)).action == "none"
    idle = capacity.recommend(config, _loads(0.0, 0.0))
    assert (idle.action, idle.headroom_rps) == ("none", None)          # capacity.min.nodes 2
    quiet = capacity.recommend(config, _loads(0.1, 0.1, 0.2, 0.1))
    assert (quiet.action, quiet.nodes, quiet.target_nodes) == ("remove", 2, 2)
    assert quiet.headroom_rps == pytest.approx(sum(100 / x - 100 for x in (0.1, 0.1, 0.2, 0.1)), abs=0.5)
    assert "recommendation: remove 2 serving node(s) (4 -> 2)" in capacity.report(quiet)


def test_doctor_wants_one_token_in_a_cluster(cluster_ca: dict[str, str]) -> None:
    from appliance.doctor_node import check_metrics

    peers = ["node.address=10.0.0.1", "cluster.members=10.0.0.1,10.0.0.2",
             *(f"{k}={v}" for k, v in cluster_ca.items())]
    [alone] = check_metrics(load_config(None, ["node.address=10.0.0.1"]))
    [own] = check_metrics(load_config(None, peers))
    [shared] = check_metrics(load_config(None, [*peers, "metrics.token=" + "t" * 32]))
    assert alone.ok and not own.ok and "metrics.token" in own.fix and shared.ok
