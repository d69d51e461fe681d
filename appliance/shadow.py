"""``appliance shadow start|stop|report``: a candidate version's answers compared on live traffic.

A shadow is a change of cluster settings (:mod:`appliance.fleet`): ``start`` pushes
``models.<name>.shadow.*`` to every node, whose model server then loads the candidate and
copies a sample of the requests naming no version to it (:mod:`modelserver.shadow`); ``stop``
drops those keys again. No client ever gets the candidate's answer.

Each node's model server reports its comparisons on a loopback-only endpoint; the node's agent
(:class:`ReportPublisher`) writes that report next to the cluster settings, as
``.appliance/shadow/<node address>.json`` in the model repository, whenever it changed (at most
every :data:`PUBLISH_SECONDS`). ``report`` and the log browser's Shadow page read every node's
file and sum them (:func:`modelserver.shadow.merge`), so the report covers the traffic of all
nodes, whichever node it is asked on.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from typing import Any

from . import fleet, runconfig
from .config import Config, NodePaths, load_config
from .errors import ApplianceError
from .localhttp import get_json
from .modelstatus import ModelServerClient, local_rest_base

log = logging.getLogger(__name__)

COMMANDS = ("shadow",)
REPORTS = "shadow/"
PUBLISH_SECONDS = 1.0
AGREEMENT_SECONDS = 5.0
KEYS = ("shadow.version", "shadow.sample", "shadow.atol", "shadow.rtol", "shadow.topk")


# ----------------------------------------------------------------------------- the agent's part


class _NodeStore:
    """The repository of the node's running config, opened again only when that config changed."""

    def __init__(self, paths: NodePaths) -> None:
        self.paths = paths
        self._running = runconfig.Follower(paths)
        self._built_for: object = None
        self._fleet: fleet.Fleet | None = None

    def __call__(self) -> tuple[fleet.Fleet, Config]:
        running = self._running()
        if running is not self._built_for or self._fleet is None:
            self._fleet = fleet.Fleet.of_node(running.config, call_seconds=2.0, paths=self.paths)
            self._built_for = running
        return self._fleet, running.config


class ReportPublisher:
    """Copies the node's shadow report from its model server to the repository when it changed;
    runs on a thread of the agent (:meth:`run`), so a slow store holds up nothing else."""

    def __init__(self, paths: NodePaths) -> None:
        self._store = _NodeStore(paths)
        self._last = b""
        self._error = ""

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(PUBLISH_SECONDS):
            try:
                self.publish()
                self._error = ""
            except Exception as exc:  # noqa: BLE001 - the publisher must outlive a store outage
                if str(exc) != self._error:
                    log.error("cannot publish the shadow report (retrying): %s", exc)
                self._error = str(exc)

    def publish(self) -> bool:
        """Write the node's report when it changed; True when written."""
        from modelserver.shadow import SHADOW_PATH

        store, config = self._store()
        if config.node.role != "serving":
            return False
        code, doc = get_json(local_rest_base(config) + SHADOW_PATH, 2.0)
        if code != 200 or not isinstance(doc, dict) or not doc.get("models"):
            return False
        data = json.dumps({"node": config.node.address, "models": doc["models"]}, sort_keys=True).encode()
        if data == self._last:
            return False
        store.write_object(f"{REPORTS}{config.node.address}.json", data)
        self._last = data
        return True


class AgreementSource:
    """The canary's answer-agreement guard (``appliance.rollout.AGREEMENT_SOURCE``): how often
    the rollout's candidate agreed with the served version in the model's shadow, summed over
    the nodes, when a shadow of that candidate ran (0..1); else None. Read at most every
    :data:`AGREEMENT_SECONDS`."""

    def __init__(self, paths: NodePaths) -> None:
        self._store = _NodeStore(paths)
        self._cache: tuple[float, tuple[str, int], float | None] = (0.0, ("", 0), None)

    def __call__(self, rollout: Any) -> float | None:
        key = (rollout.model, rollout.candidate)
        read_at, cached_key, value = self._cache
        if cached_key == key and time.monotonic() - read_at < AGREEMENT_SECONDS:
            return value
        report = cluster_reports(self._store()[0]).get(rollout.model)
        percent = report["agreement_percent"] if report and report["candidate"] == rollout.candidate else None
        value = None if percent is None else percent / 100
        self._cache = (time.monotonic(), key, value)
        return value


# ----------------------------------------------------------------------------- reading reports


def cluster_reports(store: fleet.Fleet) -> dict[str, dict[str, Any]]:
    """Every model's shadow summed over the nodes' published reports, by model name."""
    from modelserver.shadow import merge

    per_model: dict[str, list[dict[str, Any]]] = {}
    for key in store.list_objects(REPORTS):
        try:
            doc = json.loads(store.read_object(key) or b"")
        except ValueError:
            continue
        for name, report in (doc.get("models") or {}).items():
            per_model.setdefault(name, []).append({**report, "node": doc.get("node", key)})
    return {name: merged for name, reports in sorted(per_model.items()) if (merged := merge(reports))}


def report_text(report: dict[str, Any]) -> str:
    """What ``appliance shadow report`` prints: the verdict, counts, each output, the top examples."""
    counts = report["requests"]
    state = "running" if report["running"] else f"stopped {_when(report['stopped'])}"
    lines = [f"shadow of {report['model']}: candidate version {report['candidate']} vs "
             f"{', '.join(map(str, report['primary'])) or '(none yet)'} -- {state}, since {_when(report['started'])}",
             f"verdict: {report['verdict'].upper()}"
             + (f" (regressions in: {', '.join(report['regressions'])})" if report["regressions"] else "")
             + (f"; agreement {report['agreement_percent']}% of inputs" if report["agreement_percent"] is not None
                else ""),
             f"nodes: {', '.join(report.get('nodes', [])) or '-'}; sample {report['settings']['sample']}%, "
             f"atol {report['settings']['atol']:g}, rtol {report['settings']['rtol']:g}",
             f"requests: {counts['seen']} seen, {counts['sampled']} copied, {counts['compared']} compared, "
             f"{counts['dropped']} dropped (busy), {counts['skipped']} skipped (candidate not loaded), "
             f"{counts['candidate_errors']} candidate errors",
             f"noise: the current version ran again on {counts.get('secondary_runs', 0)} copies"
             + (" (it answered bit for bit alike, so now on 1 copy in 16)" if report.get("deterministic") else ""),
             f"cost: {report.get('cpu_seconds', 0.0):.3f} s of CPU on the comparing threads"
             + (f", {report.get('cpu_seconds', 0.0) * 1e6 / counts['compared']:.0f} us per compared copy"
                if counts["compared"] else "")]
    if report["last_error"]:
        lines.append(f"last candidate error: {report['last_error']}")
    for alias, out in report["outputs"].items():
        lines.append(f"  output {alias}: {out['differing_percent']}% of {out['rows']} inputs differ "
                     f"(noise: {out['noise_percent']}%), max abs error {out['max_abs_error']}, "
                     f"max rel error {out['max_rel_error']}" + ("  REGRESSION" if out["regression"] else ""))
        top = out.get("classifier")
        if top:
            lines.append(f"    top-1 agreement {top['top1_agreement_percent']}% (changed {top['top1_changed_percent']}%,"
                         f" noise {top['top1_noise_percent']}%), top-{top['k']} overlap "
                         f"{top['topk_overlap_percent']}%" + ("  REGRESSION" if top["regression"] else ""))
    for example in report["examples"][:3]:
        lines.append(f"  example ({example['api']} via {example.get('node', '?')}): rows {example.get('rows', [])} "
                     f"inputs {_short(example['inputs'])}"
                     + (f" error {example['candidate_error']}" if example.get("candidate_error") else ""))
    if len(report["examples"]) > 3:
        lines.append(f"  ... {len(report['examples']) - 3} more examples: `appliance shadow report "
                     f"{report['model']} --json`")
    return "\n".join(lines)


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp)) if stamp else "-"


def _short(value: Any, limit: int = 200) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


# ----------------------------------------------------------------------------- the commands


def add_parsers(sub: argparse._SubParsersAction) -> None:
    shadow = sub.add_parser("shadow", help="copy live requests to a candidate version and compare "
                            "its answers (every node; clients never see them)")
    ssub = shadow.add_subparsers(dest="shadow_command", required=True)
    start = ssub.add_parser("start", help="start (or change) a model's shadow on every node")
    start.add_argument("model")
    start.add_argument("--version", type=int, required=True, help="the candidate version")
    start.add_argument("--sample", type=float, help="percent of requests naming no version copied (default 10)")
    start.add_argument("--atol", type=float, help="absolute tolerance (default 1e-5)")
    start.add_argument("--rtol", type=float, help="relative tolerance (default 1e-5)")
    start.add_argument("--topk", type=int, help="k of the classifier top-k overlap (default 5; 0: none)")
    start.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the nodes")
    stop = ssub.add_parser("stop", help="stop a model's shadow on every node (its report stays)")
    stop.add_argument("model")
    stop.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the nodes")
    report = ssub.add_parser("report", help="the comparison, summed over every node")
    report.add_argument("model", nargs="?", help="one model (default: every model with a report)")
    report.add_argument("--json", action="store_true", help="machine-readable, with every example")


def dispatch(args: argparse.Namespace, paths: NodePaths) -> int:
    config = runconfig.read(paths).config
    store = fleet.Fleet.of_node(config, paths=paths)
    if args.shadow_command == "report":
        return _report(store, args.model, args.json)
    if args.model not in config.model.names:
        raise ApplianceError(f"model {args.model!r} is not served here (model.name: "
                             f"{', '.join(config.model.names)})")
    if args.shadow_command == "start":
        wanted = {"version": args.version, "sample": args.sample, "atol": args.atol, "rtol": args.rtol,
                  "topk": args.topk}
        values = {f"shadow.{key}": value for key, value in wanted.items() if value is not None}
        # Checked here as every node will check it: a refused value would stay in the document.
        load_config(None, [f"model.name={args.model}", *(f"models.{args.model}.{k}={v}" for k, v in values.items())])
        new = store.push(args.model, values, unset=[k for k in KEYS if k not in values],
                         why=f"shadow of {args.model}: version {args.version}")
    else:
        new = store.push(args.model, unset=KEYS, why=f"shadow of {args.model} stopped")
    late = store.wait_applied(new.revision, _serving_nodes(store), timeout=args.timeout)
    for node, why in sorted(late.items()):
        print(f"node {node}: not applied yet: {why}")
    if args.shadow_command == "start" and config.node.role == "serving":
        _wait_loaded(config, args.model, args.version, args.timeout)
    print(f"shadow of {args.model} {'started: version ' + str(args.version) if args.shadow_command == 'start' else 'stopped'}"
          f" (cluster settings revision {new.revision}); `appliance shadow report {args.model}` shows the comparison")
    return 1 if late else 0


def _serving_nodes(store: fleet.Fleet) -> list[str]:
    """The serving nodes that reported to the cluster settings in the last minute."""
    now = time.time()
    return [name for name, doc in store.reports().items()
            if doc.get("role", "serving") == "serving" and now - float(doc.get("time", now)) < 60]


def _wait_loaded(config: Config, model: str, version: int, timeout: float) -> None:
    client = ModelServerClient.of_node(config)
    deadline = time.monotonic() + timeout
    while client.status(model).states().get(version) != "AVAILABLE":
        if time.monotonic() >= deadline:
            print(f"warning: this node has not loaded version {version} of {model} after {timeout:.0f}s "
                  f"(is it in the repository?); the shadow compares nothing until it has")
            return
        time.sleep(0.2)


def _report(store: fleet.Fleet, model: str | None, as_json: bool) -> int:
    reports = cluster_reports(store)
    if model is not None:
        reports = {model: reports[model]} if model in reports else {}
    if as_json:
        print(json.dumps(reports, indent=1))
    elif not reports:
        print(f"no shadow report{' of ' + model if model else ''} yet: `appliance shadow start MODEL "
              "--version N` starts one; nodes publish their report once requests were compared")
    else:
        print("\n\n".join(report_text(report) for report in reports.values()))
    return 0 if reports else 3
