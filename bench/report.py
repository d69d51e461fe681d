"""Markdown tables and target ratios from ``serving_bench.py``'s results.json.

    .venv/bin/python bench/report.py bench/.work/results-*/results.json
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any

USER_GUIDE_PER_CORE = 88.95 / 16  # ResNet, batch 32, 16-core Xeon: 5.6 images/s per core


def _latency_table(rows: list[dict], extra: str = "") -> list[str]:
    head = ("| target | concurrency | requests/s (median of rounds) | min-max | p50 ms | p99 ms (median of rounds) | "
            "p99 ms (worst round) | errors | rounds (req/s) | rounds (p99 ms) | server counted (per round) | "
            "server CPU us/req | run-queue wait ms/s (per round) | steal ms (per round) |"
            + (" client | client CPU |" if extra else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        line = (f"| {row['target']} | {row['concurrency']} | {row['rps']:.0f} | {row['rps_min']:.0f}-"
                f"{row['rps_max']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['p99_worst_ms']:.2f} | "
                f"{row['errors']} | {', '.join(map(str, row['all_rps']))} | {', '.join(map(str, row['all_p99']))} | "
                f"{', '.join(f'{x:.0f}' for x in row.get('served', []))} | {row.get('server_us', float('nan')):.0f} | "
                f"{', '.join(map(str, row.get('all_runq', [])))} | {', '.join(map(str, row.get('all_steal_ms', [])))} |")
        if extra:
            cpu = row["client_cpu"]
            line += f" {row['client']} | {'-' if cpu != cpu else f'{cpu:.2f}'} |"
        lines.append(line)
    return lines


def _cell(rows: list[dict], target: str, concurrency: int) -> dict | None:
    """The cell measured by the C load generators (wrk, h2load) when there are several."""
    cells = [r for r in rows if r["target"] == target and r["concurrency"] == concurrency]
    return next((r for r in cells if r.get("client", "h2load") in ("h2load", "wrk")), cells[0] if cells else None)


def _top(results: dict) -> int:
    return max(r["concurrency"] for r in results["rest"]) if results["rest"] else 64


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each target of issue 15 (and the earlier ones still held)."""
    out: list[tuple[str, str, bool | None]] = []
    rest, grpc, top = results["rest"], results["grpc"], _top(results)
    envoy, direct = _cell(rest, "appliance via Envoy", top), _cell(rest, "appliance direct", top)
    peers = [r for r in (_cell(rest, "MLServer", top), _cell(rest, "KServe", top)) if r]
    if envoy and peers:
        best = max(peers, key=lambda r: r["rps"])
        ratio = envoy["rps"] / best["rps"]
        out.append((f"REST via Envoy c={top} >= 2.5x the better peer",
                    f"{ratio:.2f}x {best['target']} ({envoy['rps']:.0f} vs {best['rps']:.0f} req/s)", ratio >= 2.5))
        out.append(("... median per-round p99 below the better peer's, worst per-round p99 under 3x it",
                    f"median {envoy['p99_ms']:.1f} vs {best['p99_ms']:.1f} ms; worst {envoy['p99_worst_ms']:.1f} ms "
                    f"(limit {3 * best['p99_ms']:.1f})",
                    envoy["p99_ms"] < best["p99_ms"] and envoy["p99_worst_ms"] < 3 * best["p99_ms"]))
    floor = _cell(rest, "Envoy floor", top)
    if envoy and floor:
        ratio = envoy["rps"] / floor["rps"]
        same = [e <= f for e, f in zip(envoy["all_p99"], floor["all_p99"])]
        out.append((f"REST via Envoy >= 80% of the Envoy floor (c={top})",
                    f"{ratio:.0%} ({envoy['rps']:.0f} vs {floor['rps']:.0f} req/s)", ratio >= 0.8))
        out.append(("... p99 no worse than the floor's in the same round",
                    f"{sum(same)} of {len(same)} rounds (p99 via Envoy {envoy['all_p99']} vs floor "
                    f"{floor['all_p99']} ms)", all(same)))
    g_envoy, g_direct = _cell(grpc, "appliance via Envoy", top), _cell(grpc, "appliance direct", top)
    both = results.get("protocols", [])
    if both:  # REST and gRPC in the same rounds: the ratio from runs seconds apart
        envoy, direct = _cell(both, "REST appliance via Envoy", top), _cell(both, "REST appliance direct", top)
        g_envoy, g_direct = _cell(both, "gRPC appliance via Envoy", top), _cell(both, "gRPC appliance direct", top)
    for side, g, r in (("via Envoy", g_envoy, envoy), ("direct", g_direct, direct)):
        if g and r:
            out.append((f"gRPC >= REST ({side}, c={top}{', same rounds' if both else ''})",
                        f"{g['rps'] / r['rps']:.2f}x ({g['rps']:.0f} vs {r['rps']:.0f} req/s)", g["rps"] >= r["rps"]))
    if g_envoy and g_direct:
        ratio = g_envoy["rps"] / g_direct["rps"]
        out.append((f"gRPC via Envoy >= 80% of direct (c={top})",
                    f"{ratio:.0%} ({g_envoy['rps']:.0f} vs {g_direct['rps']:.0f} req/s)", ratio >= 0.8))
    if envoy and direct:
        ratio = envoy["rps"] / direct["rps"]
        out.append((f"REST via Envoy >= 80% of direct (c={top})",
                    f"{ratio:.0%} ({envoy['rps']:.0f} vs {direct['rps']:.0f} req/s)", ratio >= 0.8))
    ratios = results.get("rest_unpinned_ratios")
    if ratios:
        median = statistics.median(ratios)
        out.append((f"REST via Envoy >= 80% of direct (c={top}), no CPU pinning",
                    f"{median:.0%} (median of rounds {', '.join(f'{r:.0%}' for r in ratios)})", median >= 0.8))
    b32 = next((r for r in results["resnet"] if r["batch"] == 32), None)
    if b32:
        rounds = ", ".join(f"{r:.0%}" for r in b32.get("round_ratios", []))
        out.append(("resnet batch 32 via Envoy >= 90% of in-process",
                    f"{b32['ratio']:.0%} (median of rounds {rounds}; {b32['envoy_images_per_s']:.2f} vs "
                    f"{b32['inprocess_images_per_s']:.2f} images/s)", b32["ratio"] >= 0.9))
    checks = results.get("checks", [])
    if checks:
        failed = [c for c in checks if not c["ok"]]
        worst = max(checks, key=lambda c: c["gap"])
        out.append(("every figure confirmed: load tool vs the server's own counter (and h2load vs grpc_load.py)",
                    f"{len(checks) - len(failed)} of {len(checks)} checks agree; largest gap {worst['gap']:.1%} "
                    f"({worst['what']})", not failed))
    return out


def markdown(results: dict[str, Any]) -> str:
    m, s = results["machine"], results["settings"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['mem_gb']} GB, kernel {m['kernel']}, load average "
             f"at start {m['loadavg_at_start']}; {m.get('envoy', '')}; {m.get('wrk', '')}.",
             f"CPU split: servers on CPU {s['server_cpus']}, load generators on CPU {s['client_cpus']}; "
             f"Envoy workers: {s.get('envoy_workers', '?')}; {s['rounds']} interleaved rounds of {s['duration_s']:g} s "
             f"per cell (order rotating). Whole run: "
             f"{results['wall_s'] / 60:.1f} min.", ""]
    lines += ["### Targets", "", "| target | measured | met |", "|---|---|---|"]
    for name, measured, met in targets(results):
        lines.append(f"| {name} | {measured} | {'yes' if met else 'no'} |")
    lines += ["", "### 1. REST, saved_model_half_plus_two_mkl", ""] + _latency_table(results["rest"])
    if results.get("rest_unpinned"):
        lines += ["", "### 1b. REST, no CPU pinning (servers and wrk scheduled by the kernel on every core)", ""]
        lines += _latency_table(results["rest_unpinned"])
    lines += ["", "### 2. gRPC, saved_model_half_plus_two_mkl", ""] + _latency_table(results["grpc"], "cpu")
    if results.get("protocols"):
        lines += ["", "### 2b. REST and gRPC in the same rounds (wrk and h2load taking turns)", ""]
        lines += _latency_table(results["protocols"])
    lines += ["", "### 3. resnet (base64 JPEG, 320x240), one request at a time (REST), alternating rounds", "",
              "| batch | via Envoy images/s (median) | in-process images/s (median) | via Envoy / in-process (median "
              "of rounds) | per round | via Envoy p50 ms | p99 ms | errors | images/s per core (via Envoy) | "
              "user guide per core |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["resnet"]:
        per_round = ", ".join(f"{e:.1f}/{i:.1f} = {r:.0%}" for e, i, r in zip(
            row.get("envoy_rounds", []), row.get("inprocess_rounds", []), row.get("round_ratios", [])))
        lines.append(f"| {row['batch']} | {row['envoy_images_per_s']:.2f} | {row['inprocess_images_per_s']:.2f} | "
                     f"{row['ratio']:.0%} | {per_round or '-'} | {row['envoy_p50_ms']:.0f} | {row['envoy_p99_ms']:.0f} | "
                     f"{row['envoy_errors']} | {row['envoy_images_per_s'] / row['cores']:.2f} | "
                     f"{USER_GUIDE_PER_CORE:.2f} (batch 32) |")
    lines += ["", "### 4. Server-side batching, concurrency 64, direct to the model server", "",
              "| model | batching | requests/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    for row in results["batching"]:
        lines.append(f"| {row['model']} | {row['batching']} | {row['rps']:.1f} | {row['p50_ms']:.1f} | "
                     f"{row['p99_ms']:.1f} | {row['errors']} |")
    cold, memory = results.get("cold_start", {}), results["memory"]
    lines += ["", "### 5. Cold start and memory", "", "| what | value |", "|---|---|"]
    labels = {"first_predict_s": "`appliance up` to the first half_plus_two predict through Envoy (s)",
              "first_resnet_predict_s": "... to the first resnet predict through Envoy (s)",
              "appliance_up_returned_s": "`appliance up` returned, every check passed (s)",
              "model_server_rss_mb": "model server RSS, both models loaded, before traffic (MB)",
              "envoy_rss_mb": "Envoy RSS before traffic (MB)",
              "model_server_hpt_only_rss_mb": "model server RSS with half_plus_two only (MB)",
              "model_server_resnet_only_rss_mb": "model server RSS with resnet only (MB)",
              "node_model_server_rss_after_run_mb": "node's model server RSS after the whole run (MB)",
              "node_envoy_rss_after_run_mb": "node's Envoy RSS after the whole run (MB)",
              "mlserver_rss_mb": "MLServer RSS, half_plus_two loaded (MB)",
              "kserve_rss_mb": "KServe RSS, half_plus_two loaded (MB)"}
    for key, label in labels.items():
        value = cold.get(key, memory.get(key))
        if value is not None:
            lines.append(f"| {label} | {value:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(json.loads(open(sys.argv[1]).read())))
