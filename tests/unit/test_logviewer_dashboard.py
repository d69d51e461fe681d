"""The dashboard's store and charts: metrics pages reduced to ticks, ticks to chart series."""

from __future__ import annotations

from pathlib import Path

from logviewer import charts, samples

LIMITS = [10.0, 18.0, 32.4, 58.32, 104.976, 188.957, 340.122, 612.22, 1101.996]


def page(requests: int, errors: int = 0, cpu: float = 1.0, rss: int = 50 * 2**20, loads: int = 1,
         synced: int = 0, model: str = "half", version: str | None = "1", slow: int = 0) -> str:
    """A node's metrics page: ``requests`` at 20-32 µs, ``slow`` more at 600-1100 µs."""
    node = 'node="10.0.0.1",'
    ver = f',version="{version}"' if version is not None else ""
    lines = ["# TYPE :tensorflow:serving:request_count counter",
             f':tensorflow:serving:request_count{{{node}model_name="{model}",status="OK"{ver}}} {requests}',
             f':tensorflow:serving:request_count{{{node}model_name="{model}",status="NOT_FOUND"{ver}}} {errors}',
             "# TYPE :tensorflow:serving:request_latency histogram"]
    for api in ("predict", "classify"):   # two label sets of one model are summed
        for le in LIMITS:
            count = (0 if le < 32 else requests // 2) + (slow // 2 if le > 1000 else 0)
            lines.append(f':tensorflow:serving:request_latency_bucket{{{node}model_name="{model}",'
                         f'API="{api}",entrypoint="REST"{ver},le="{le:g}"}} {count}')
        lines.append(f':tensorflow:serving:request_latency_bucket{{{node}model_name="{model}",'
                     f'API="{api}",entrypoint="REST"{ver},le="+Inf"}} {requests // 2 + slow // 2}')
    lines += [f'appliance_process_cpu_seconds_total{{{node}process="model_server"}} {cpu}',
              f'appliance_process_resident_memory_bytes{{{node}process="model_server"}} {rss}',
              f'appliance_agent_sync_bytes_total{{{node}}} {synced}',
              f'appliance_agent_cycles_total{{{node}result="ok"}} 3',
              f':tensorflow:cc:saved_model:load_attempt_count{{{node}model_path="/data/models/half/1",'
              f'status="success"}} {loads}',
              'envoy_cluster_upstream_rq_total{node="10.0.0.1",envoy_cluster_name="x"} 99']
    for prefix, share in (("rest", 2), ("grpc", 1), ("internode", 5)):
        lines += [f'envoy_http_downstream_rq_xx{{{node}envoy_response_code_class="2",'
                  f'envoy_http_conn_manager_prefix="{prefix}"}} {share * requests}',
                  f'envoy_http_downstream_rq_xx{{{node}envoy_response_code_class="5",'
                  f'envoy_http_conn_manager_prefix="{prefix}"}} {share * errors}']
    return "\n".join(lines) + "\n"


def test_a_tick_is_what_changed_between_two_pages() -> None:
    before = samples.parse(page(100, errors=1, cpu=1.0))
    after = samples.parse(page(300, errors=5, cpu=3.5, loads=2, synced=2**20, slow=2))
    row = samples.reduce("10.0.0.1", before, after, 10.0)
    requests, errors, buckets = row["m"]["half\t1"]
    assert (requests, errors) == (204, 4)
    assert sum(c for _, _, c in buckets) == 202    # the histogram counts successes only
    assert buckets[0][:2] == [18.0, 32.4] and buckets[-1][:2] == [612.22, 1102.0]
    assert row["p"] == {"model_server": [0.25, 50 * 2**20]}
    assert row["e"] == [3 * 200 + 3 * 4, 3 * 4]     # REST and gRPC listeners, not internode
    assert sorted(kind for kind, _ in row["ev"]) == ["load", "sync"]
    assert "half/1" in dict(row["ev"])["load"]


def test_a_restarted_process_counts_from_zero() -> None:
    row = samples.reduce("n", samples.parse(page(500)), samples.parse(page(20)), 5.0)
    assert row["m"]["half\t1"][0] == 20


def test_charts_per_model_version_and_node(tmp_path: Path) -> None:
    store = samples.Store(tmp_path / "d.sqlite", 3600)
    pages = [page(100 * i, errors=i // 2, cpu=i, slow=2 * i) for i in range(5)]
    for i in range(1, 5):
        rows = {node: samples.reduce(node, samples.parse(pages[i - 1]), samples.parse(pages[i]), 10.0)
                for node in ("10.0.0.1", "10.0.0.2")}
        rows["10.0.0.3"] = {"down": "HTTP 0"}
        store.add(1000.0 + 10 * i, charts.tick(rows))
    data = charts.build(store.rows(0), 1000.0, 1050.0)
    assert data["times"] == [1010.0, 1020.0, 1030.0, 1040.0]
    by_id = {c["id"]: c for c in data["charts"]}
    rps = {s["name"]: s["values"] for s in by_id["rps-node"]["series"]}
    assert rps == {"10.0.0.1": [10.0, 10.1, 10.0, 10.1], "10.0.0.2": [10.0, 10.1, 10.0, 10.1]}
    assert {s["name"] for s in by_id["rps-version"]["series"]} == {"half v1"}
    assert [s["values"] for s in by_id["rps-model"]["series"]] == [[20.0, 20.2, 20.0, 20.2]]
    errors = by_id["errors-model"]["series"][0]["values"]
    assert errors[0] == 0.0 and errors[1] == round(100 * 2 / 202, 2)
    p50 = by_id["p50-model"]["series"][0]["values"]
    p99 = by_id["p99-model"]["series"][0]["values"]
    assert all(0.018 <= v <= 0.0324 for v in p50) and all(0.6 <= v <= 1.11 for v in p99)
    assert data["down"] == {"10.0.0.3": "HTTP 0"}
    edge = {s["name"]: s["values"] for s in by_id["errors-edge"]["series"]}
    assert edge["10.0.0.1"] == [0.0, round(100 * 3 / 303, 2), 0.0, round(100 * 3 / 303, 2)]
    cpu = {s["name"]: s["values"] for s in by_id["cpu-process"]["series"]}
    assert cpu["model_server@10.0.0.1"] == [10.0, 10.0, 10.0, 10.0]
    assert len(data["events"]) == 0
    # Only the asked range is read.
    assert charts.build(store.rows(1035.0), 1035.0, 1050.0)["times"] == [1040.0]


def test_a_page_without_version_labels_is_one_series_per_model() -> None:
    row = samples.reduce("n", samples.parse(page(1, version=None)), samples.parse(page(11, version=None)), 1.0)
    data = charts.build([(1.0, charts.tick({"n": row}))], 0, 2)
    version = next(c for c in data["charts"] if c["id"] == "rps-version")
    assert [s["name"] for s in version["series"]] == ["half (all versions)"]


def test_quantiles_interpolate_inside_the_bucket() -> None:
    buckets = {(0.0, 1000.0): 50.0, (1000.0, 3000.0): 50.0}
    assert charts.quantile(0.5, buckets) == 1.0
    assert charts.quantile(0.75, buckets) == 2.0
    assert charts.quantile(0.5, {}) is None


def test_the_store_keeps_a_bounded_number_of_rows_decoded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(samples, "CACHED", 5)
    store = samples.Store(tmp_path / "d.sqlite", 3600)
    for tick in range(20):
        store.add(float(tick), {"v": {"rps\tnode\tn": tick}, "ev": [], "down": {}})
    assert sorted(store._decoded) == [15.0, 16.0, 17.0, 18.0, 19.0]
    assert [row["v"]["rps\tnode\tn"] for _, row in store.rows(0)] == list(range(20))
    assert len(store._decoded) == 5
